#!/usr/bin/env bash
# Makes sure the services jiandu's tests need are running, starting them if not, and prints
# the environment to reach them on stdout:
#
#     eval "$(scripts/services.sh)"
#
# Today that is PostgreSQL, for the store's tests on both databases, and an S3 server (moto, see
# start_s3) for the evidence store. If nothing usable answers
# on 127.0.0.1:${PGPORT:-5432}, it installs Debian's `postgresql` package when the server
# binaries are missing, creates a private throw-away cluster (trust auth, user `postgres`) under
# ${JIANDU_SERVICES_DIR:-/tmp/jiandu-services}/pg, and starts it on 127.0.0.1 (port 5432 if
# free, else another free port). Idempotent: a second run finds the running cluster and only
# prints the export line. Progress goes to stderr; stdout carries only `export …` lines.
# The same package's initdb and pg_ctl also serve tests that stop their database (tests/acks.rs
# starts a private cluster of its own, as user postgres when root; with CI=true a missing
# initdb fails them).
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

# S3 for the evidence store's S3 path: moto's server (PyPI `moto[server]`), installed with pip
# if missing, started on a free port with its pid and port under $SERVICES_DIR, with the bucket
# `jiandu-test` created. Exports JIANDU_TEST_S3 (endpoint) and JIANDU_TEST_S3_BUCKET.
S3_PORT_FILE="$SERVICES_DIR/s3.port"
S3_BUCKET=jiandu-test
s3_usable() {
    python3 - "$1" "$S3_BUCKET" <<'PY' >/dev/null 2>&1
import sys, urllib.request
port, bucket = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
urllib.request.urlopen(f"{base}/moto-api/", timeout=5).read()
req = urllib.request.Request(f"{base}/{bucket}", method="PUT")
try:
    urllib.request.urlopen(req, timeout=5).read()
except urllib.error.HTTPError as e:
    if e.code != 409:
        raise
PY
}
start_s3() {
    mkdir -p "$SERVICES_DIR"
    if [[ -f $S3_PORT_FILE ]] && s3_usable "$(cat "$S3_PORT_FILE")"; then
        return 0
    fi
    if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
        log "installing moto[server] from PyPI"
        python3 -m pip install -q 'moto[server]' >&2 || die "pip install 'moto[server]' failed"
    fi
    local port
    for port in $(seq 54500 54600); do port_in_use "$port" || break; done
    log "starting moto S3 on 127.0.0.1:$port (log: $SERVICES_DIR/s3.log)"
    setsid nohup python3 -m moto.server -H 127.0.0.1 -p "$port" >"$SERVICES_DIR/s3.log" 2>&1 </dev/null &
    echo $! >"$SERVICES_DIR/s3.pid"
    for _ in $(seq 1 60); do
        if s3_usable "$port"; then
            echo "$port" >"$S3_PORT_FILE"
            return 0
        fi
        sleep 0.5
    done
    tail -n 20 "$SERVICES_DIR/s3.log" >&2
    die "moto S3 server did not answer on 127.0.0.1:$port"
}
start_s3
log "S3 (moto) ready on 127.0.0.1:$(cat "$S3_PORT_FILE"), bucket $S3_BUCKET"
echo "export JIANDU_TEST_S3=http://127.0.0.1:$(cat "$S3_PORT_FILE") JIANDU_TEST_S3_BUCKET=$S3_BUCKET"

# Eclipse Paho for Python: the third-party MQTT 5 client of the conformance tests (tests/mqtt5.rs
# runs tests/mqtt5/conformance.py with it). Installed from PyPI if missing.
if ! python3 -c 'import paho.mqtt.client' >/dev/null 2>&1; then
    log "installing paho-mqtt from PyPI for the MQTT 5 conformance tests"
    python3 -m pip install -q 'paho-mqtt>=2.1,<3' >&2 || die "pip install paho-mqtt failed"
fi

# Mosquitto: the reference broker of `jiandu bench ingest` (the bench starts its own instance on a
# free port; nothing here runs it).
if ! command -v mosquitto >/dev/null 2>&1 && [[ ! -x /usr/sbin/mosquitto ]]; then
    log "installing mosquitto (Debian) for the ingest benchmark's reference run"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto; } >&2 ||
        die "apt-get install mosquitto failed"
fi

# The browser tests (tests/web.rs drives tests/browser/*.mjs): Debian's Chromium, installed if
# missing, and playwright-core (no browser download) in tests/browser/node_modules.
# Exports JIANDU_TEST_CHROMIUM.
start_browser() {
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    # A CJK font, so the Chinese interface renders (and its screenshots are readable).
    if [[ ! -x /usr/bin/chromium || ! -d /usr/share/fonts/truetype/wqy ]]; then
        [[ $(id -u) -eq 0 ]] || die "Chromium or a CJK font is missing and we are not root; install 'chromium' and 'fonts-wqy-microhei'"
        log "installing Debian's chromium and fonts-wqy-microhei packages"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >&2
    fi
    # playwright-core, and the npm mqtt client of tests/websocket.rs (MQTT over WebSocket).
    if [[ ! -f $root/tests/browser/node_modules/playwright-core/package.json ||
          ! -f $root/tests/browser/node_modules/mqtt/package.json ]]; then
        log "installing playwright-core and mqtt for the browser and WebSocket tests"
        (cd "$root/tests/browser" && npm ci --no-audit --no-fund >&2) || die "npm ci in tests/browser failed"
    fi
}
start_browser
log "Chromium ready at /usr/bin/chromium"
echo "export JIANDU_TEST_CHROMIUM=/usr/bin/chromium"

PG_BIN=$(pg_bin_dir || true)
# The server binaries even when a usable server already answers: tests/acks.rs stops and starts
# a private cluster of its own with initdb and pg_ctl.
if [[ -z $PG_BIN && $(id -u) -eq 0 ]]; then
    install_postgres
    PG_BIN=$(pg_bin_dir || true)
fi

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
