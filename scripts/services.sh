#!/usr/bin/env bash
# Makes sure the services jiandu's tests need are running, starting them if not, and prints
# the environment to reach them on stdout:
#
#     eval "$(scripts/services.sh)"
#
# Today that is PostgreSQL, for the store's tests on both databases. If nothing usable answers
# on 127.0.0.1:${PGPORT:-5432}, it installs Debian's `postgresql` package when the server
# binaries are missing, creates a private throw-away cluster (trust auth, user `postgres`) under
# ${JIANDU_SERVICES_DIR:-/tmp/jiandu-services}/pg, and starts it on 127.0.0.1 (port 5432 if
# free, else another free port). Idempotent: a second run finds the running cluster and only
# prints the export line. Progress goes to stderr; stdout carries only `export …` lines.
set -euo pipefail

SERVICES_DIR=${JIANDU_SERVICES_DIR:-/tmp/jiandu-services}
PG_DATA="$SERVICES_DIR/pg"
PG_PORT_FILE="$SERVICES_DIR/pg.port"
PG_LOG="$SERVICES_DIR/pg.log"
WANTED_PORT=${PGPORT:-5432}

log() { echo "services.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# The directory holding the newest installed PostgreSQL server binaries, if any.
pg_bin_dir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/pg_ctl" && -x "$dir/initdb" && -x "$dir/postgres" ]]; then
            echo "$dir"
            return 0
        fi
    done
    if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
        dirname "$(command -v pg_ctl)"
        return 0
    fi
    return 1
}

install_postgres() {
    [[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed and we are not root; install the 'postgresql' package"
    log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
}

# True if a server on 127.0.0.1:$1 lets user postgres in without a password.
usable() {
    local port=$1 bin=${PG_BIN:-}
    local psql=psql pg_isready=pg_isready
    if [[ -n $bin && -x $bin/psql ]]; then psql=$bin/psql; pg_isready=$bin/pg_isready; fi
    command -v "$pg_isready" >/dev/null || return 1
    "$pg_isready" -q -h 127.0.0.1 -p "$port" || return 1
    PGPASSWORD='' PGCONNECT_TIMEOUT=5 "$psql" -w -X -q -h 127.0.0.1 -p "$port" -U postgres \
        -d postgres -tAc 'SELECT 1' >/dev/null 2>&1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local port
    for port in "$WANTED_PORT" $(seq 54320 54420); do
        if ! port_in_use "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "no free TCP port found for PostgreSQL"
}

# Runs a command as the cluster's owner: `postgres` when we are root (the server refuses root).
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        if command -v runuser >/dev/null; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

print_env() {
    log "PostgreSQL ready on 127.0.0.1:$1"
    echo "export JIANDU_TEST_POSTGRES=postgres://postgres@127.0.0.1:$1/postgres"
}

PG_BIN=$(pg_bin_dir || true)

# 1. Our own cluster from an earlier run, or a usable server on the wanted port.
if [[ -f $PG_PORT_FILE ]] && usable "$(cat "$PG_PORT_FILE")"; then
    print_env "$(cat "$PG_PORT_FILE")"
    exit 0
fi
if usable "$WANTED_PORT"; then
    print_env "$WANTED_PORT"
    exit 0
fi

# 2. Server binaries.
if [[ -z $PG_BIN ]]; then
    install_postgres
    PG_BIN=$(pg_bin_dir) || die "postgresql installed but pg_ctl/initdb not found"
    # The package may have started its own cluster; it does not trust us, so we still make ours.
fi
log "using PostgreSQL binaries in $PG_BIN"

# 3. A private cluster.
mkdir -p "$SERVICES_DIR"
if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    log "creating OS user postgres"
    useradd --system --user-group --home-dir "$SERVICES_DIR" --shell /usr/sbin/nologin postgres
fi
if [[ -f $PG_DATA/PG_VERSION ]]; then
    binary_version=$("$PG_BIN/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)*.*/\1/')
    if [[ $(cat "$PG_DATA/PG_VERSION") != "$binary_version" ]]; then
        log "cluster in $PG_DATA is from PostgreSQL $(cat "$PG_DATA/PG_VERSION"), binaries are $binary_version; recreating it"
        as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$PG_DATA"
    fi
fi
if [[ ! -f $PG_DATA/PG_VERSION ]]; then
    log "creating a test cluster in $PG_DATA"
    rm -rf "$PG_DATA"
    mkdir -p "$PG_DATA"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$PG_DATA"
    chmod 700 "$PG_DATA"
    as_owner "$PG_BIN/initdb" -D "$PG_DATA" --auth=trust -U postgres -E UTF8 --locale=C.UTF-8 \
        >"$SERVICES_DIR/initdb.log" 2>&1 ||
        as_owner "$PG_BIN/initdb" -D "$PG_DATA" --auth=trust -U postgres -E UTF8 --no-locale \
            >"$SERVICES_DIR/initdb.log" 2>&1 ||
        die "initdb failed; see $SERVICES_DIR/initdb.log"
fi
touch "$PG_LOG"
[[ $(id -u) -eq 0 ]] && chown postgres: "$PG_LOG" "$SERVICES_DIR"

# 4. Start it (a stopped or crashed earlier instance is simply started again).
if as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    log "stopping our cluster, which runs but does not answer"
    as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >&2 || true
fi
port=$(free_port)
log "starting PostgreSQL on 127.0.0.1:$port (log: $PG_LOG)"
# A throw-away test cluster: durability off for speed, room for many parallel test pools.
as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start -o \
    "-h 127.0.0.1 -p $port -k $SERVICES_DIR -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    >&2 || { tail -n 20 "$PG_LOG" >&2; die "PostgreSQL did not start"; }
echo "$port" >"$PG_PORT_FILE"

for _ in $(seq 1 60); do
    if usable "$port"; then
        print_env "$port"
        exit 0
    fi
    sleep 0.5
done
tail -n 20 "$PG_LOG" >&2
die "PostgreSQL started but does not answer on 127.0.0.1:$port"
