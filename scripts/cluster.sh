#!/usr/bin/env bash
# Runs jiandu scaled out on this machine, every role its own process on loopback, and drives
# simulated phones through it:
#
#   PostgreSQL   a fresh database on the server scripts/services.sh starts (or --pg URL)
#   S3           a fresh bucket with Object Lock (default COMPLIANCE retention, 1 day) on the
#                moto server scripts/services.sh starts (or --s3 ENDPOINT of another moto)
#   Mosquitto 2  with its dynamic-security plugin; jiandu keeps its clients in step
#   jiandu       oversight+web (and the continuous dynsec sync), ingest ×2 (evidence staged in
#                the database), dispatcher ×2 (one active by the advisory lock)
#   jiandu sim   --phones phones and a hotline integration sending tips
#
# It prints where everything is, runs the phones for --seconds (or until Ctrl-C), prints a
# summary and stops everything it started (also on Ctrl-C or an error). The last line on
# stdout is the summary as one JSON object; progress goes to stderr.
#
# Usage: scripts/cluster.sh [--seconds N] [--phones N] [--kill-after N] [--bin PATH]
#                           [--pg URL] [--s3 ENDPOINT] [--dir DIR] [--keep]
#   --seconds N     run the phones this long, then stop (default: until Ctrl-C)
#   --phones N      simulated phones (default 20)
#   --rate HZ       heartbeats per second per phone (default 1)
#   --kill-after N  N seconds into the run, kill -9 the first ingest process and the active
#                   dispatcher (the standby takes over; the summary says whether it did)
#   --bin PATH      the jiandu binary (default: target/debug/jiandu, else target/release/jiandu,
#                   else jiandu on PATH; build it first with `cargo build`)
#   --pg URL        PostgreSQL server URL whose user may CREATE DATABASE
#                   (default: $JIANDU_TEST_POSTGRES, else what scripts/services.sh prints)
#   --s3 ENDPOINT   moto S3 endpoint (default: $JIANDU_TEST_S3, else scripts/services.sh's)
#   --dir DIR       where data dirs and logs go (default: a new directory under /tmp)
#   --keep          keep DIR and the database afterwards (default: the database is dropped,
#                   and DIR removed if this script made it)
#   -h, --help      this text
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_TO_RUN=""
PHONES=20
RATE=1
KILL_AFTER=""
BIN=""
PG=${JIANDU_TEST_POSTGRES:-}
S3=${JIANDU_TEST_S3:-}
DIR=""
KEEP=false

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds) SECONDS_TO_RUN=$2; shift 2 ;;
        --phones) PHONES=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --kill-after) KILL_AFTER=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --pg) PG=$2; shift 2 ;;
        --s3) S3=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --keep) KEEP=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument $1" ;;
    esac
done
[[ -z $SECONDS_TO_RUN || $SECONDS_TO_RUN =~ ^[0-9]+$ ]] || die "--seconds: a whole number of seconds, got $SECONDS_TO_RUN"
[[ $PHONES =~ ^[1-9][0-9]*$ ]] || die "--phones: a positive number, got $PHONES"
[[ -z $KILL_AFTER || $KILL_AFTER =~ ^[0-9]+$ ]] || die "--kill-after: a whole number of seconds, got $KILL_AFTER"

if [[ -z $BIN ]]; then
    for b in "$ROOT/target/debug/jiandu" "$ROOT/target/release/jiandu" "$(command -v jiandu || true)"; do
        if [[ -n $b && -x $b ]]; then BIN=$b; break; fi
    done
fi
[[ -n $BIN && -x $BIN ]] || die "no jiandu binary; run cargo build (or pass --bin PATH)"
for tool in mosquitto mosquitto_ctrl psql curl; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] ||
        die "$tool is not installed; run scripts/services.sh (Debian packages mosquitto, postgresql-client, curl)"
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
PLUGIN=$(ls /usr/lib/*-linux-gnu/mosquitto_dynamic_security.so 2>/dev/null | head -n1)
[[ -n $PLUGIN ]] || die "mosquitto_dynamic_security.so not found (Debian package mosquitto)"

if [[ -z $PG || -z $S3 ]]; then
    log "starting the services (scripts/services.sh)"
    eval "$("$ROOT/scripts/services.sh")"
    PG=${PG:-$JIANDU_TEST_POSTGRES}
    S3=${S3:-$JIANDU_TEST_S3}
fi

# Everything started is stopped on the way out, by pid.
PIDS=()
DB_NAME=""
MADE_DIR=false
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local alive=false
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=true; done
        $alive || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if ! $KEEP; then
        [[ -n $DB_NAME ]] && psql "$PG" -qtAc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
        if $MADE_DIR && [[ -d $DIR ]]; then rm -rf "$DIR"; fi
    else
        log "kept $DIR and database $DB_NAME"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MADE_DIR=false
if [[ -z $DIR ]]; then
    DIR=$(mktemp -d /tmp/jiandu-cluster.XXXXXX)
    MADE_DIR=true
elif [[ ! -e $DIR ]]; then
    mkdir -p "$DIR"
    MADE_DIR=true
fi
chmod 0777 "$DIR"   # Mosquitto started as root drops to its own user and writes its dynsec file here
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# PostgreSQL: a fresh database.
DB_NAME="jd_cluster_$(date +%s)_$$"
psql "$PG" -qtAc "CREATE DATABASE $DB_NAME" >/dev/null || die "cannot create a database on $PG"
DB="${PG%/*}/$DB_NAME"

# S3: a fresh bucket with Object Lock and a default COMPLIANCE retention.
BUCKET="jd-cluster-$(random_hex 6)"
curl -fsS -X PUT -H 'x-amz-bucket-object-lock-enabled: true' "$S3/$BUCKET" >/dev/null ||
    die "cannot create bucket $BUCKET on $S3"
curl -fsS -X PUT -H 'Content-Type: application/xml' "$S3/$BUCKET?object-lock" --data-binary \
    '<ObjectLockConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>1</Days></DefaultRetention></Rule></ObjectLockConfiguration>' \
    >/dev/null || die "cannot set Object Lock on $BUCKET"

# Mosquitto with dynamic security.
MQ_PORT=$(free_port)
MQ_ADMIN_PASSWORD=$(random_hex 16)
mkdir -p "$DIR/mosquitto" && chmod 0777 "$DIR/mosquitto"
mosquitto_ctrl dynsec init "$DIR/mosquitto/dynsec.json" admin "$MQ_ADMIN_PASSWORD" >/dev/null
chmod 0666 "$DIR/mosquitto/dynsec.json"
cat >"$DIR/mosquitto/mosquitto.conf" <<EOF
listener $MQ_PORT 127.0.0.1
allow_anonymous false
persistence false
max_packet_size 307200
log_dest stderr
plugin $PLUGIN
plugin_opt_config_file $DIR/mosquitto/dynsec.json
EOF
"$MOSQUITTO" -c "$DIR/mosquitto/mosquitto.conf" 2>"$DIR/mosquitto/mosquitto.log" &
PIDS+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MQ_PORT") 2>/dev/null && break; sleep 0.1; done
(exec 3<>"/dev/tcp/127.0.0.1/$MQ_PORT") 2>/dev/null || die "mosquitto did not listen; see $DIR/mosquitto/mosquitto.log"
MQTT="mqtt://127.0.0.1:$MQ_PORT"

# The operator's data dir: init, the broker credential key and service client, the phones.
CORE="$DIR/core"
mkdir -p "$CORE"
# The CLI's notes (key files made, "shown only once") go to setup.log; the summary has what matters.
jd() { JIANDU_DATA_DIR="$1" JIANDU_DB="$DB" RUST_LOG=warn "$BIN" "${@:2}" 2>>"$DIR/setup.log"; }
INIT=$(jd "$CORE" init | tail -n1)
ADMIN_USER=$(sed -E 's/.*"username":"([^"]*)".*/\1/' <<<"$INIT")
ADMIN_PASSWORD=$(sed -E 's/.*"password":"([^"]*)".*/\1/' <<<"$INIT")
SVC_PASSWORD=$(random_hex 16)
SHARED="broker = \"$MQTT\"
broker_username = \"jiandu-svc\"
broker_password = \"$SVC_PASSWORD\"
object_store = \"s3://$BUCKET\"
s3_endpoint = \"$S3\""
SECTIONS="[evidence]
staging = \"database\""
printf '\n%s\nmosquitto_dynsec = true\nmosquitto_admin_password = "%s"\n%s\n' \
    "$SHARED" "$MQ_ADMIN_PASSWORD" "$SECTIONS" >>"$CORE/jiandu.toml"
jd "$CORE" broker sync >/dev/null
jd "$CORE" device add-bulk "$PHONES" --out "$DIR/phones.jsonl" >/dev/null
jd "$CORE" integration add hotline --publish jd/v1/reports | tail -n1 >>"$DIR/phones.jsonl"
jd "$CORE" broker sync >/dev/null

# Every role its own process, each with its own data dir (same settings and keys).
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
declare -A ROLE_PID
start_role() {
    local name=$1 roles=$2 dir="$DIR/$1"
    shift 2
    if [[ $name != core ]]; then
        mkdir -p "$dir"
        printf '%s\n%s\n' "$SHARED" "$SECTIONS" >"$dir/jiandu.toml"
        cp "$CORE/platform.key" "$CORE/broker.key" "$dir/"
    fi
    JIANDU_DATA_DIR="$dir" JIANDU_DB="$DB" RUST_LOG=${RUST_LOG:-info} \
        "$BIN" serve --roles "$roles" "$@" 2>>"$dir/serve.log" &
    PIDS+=($!)
    ROLE_PID[$name]=$!
}
wait_for() { # file-or-log pattern seconds
    local file=$1 pattern=$2 limit=$3
    for _ in $(seq 1 $((limit * 10))); do
        if [[ -f $file ]] && grep -q "$pattern" "$file"; then return 0; fi
        sleep 0.1
    done
    die "'$pattern' did not appear in $file within ${limit}s"
}
start_role core oversight,web --http-listen 127.0.0.1:0
start_role ingest-1 ingest --http-listen off
start_role ingest-2 ingest --http-listen off
start_role dispatcher-1 dispatcher --http-listen off
wait_for "$DIR/dispatcher-1/serve.log" "dispatcher active" 90
start_role dispatcher-2 dispatcher --http-listen off
wait_for "$DIR/dispatcher-2/serve.log" "standing by" 90
for r in core ingest-1 ingest-2; do wait_for "$DIR/$r/serve.json" '"pid"' 90; done
HTTP=$(sed -nE 's/.*"http": "([^"]*)".*/\1/p' "$DIR/core/serve.json")

cat >&2 <<EOF
cluster.sh: running
  web (oversight+web)  $HTTP   admin $ADMIN_USER / $ADMIN_PASSWORD
  mosquitto (dynsec)   $MQTT   pid ${PIDS[0]}, log $DIR/mosquitto/mosquitto.log
  postgresql           $DB
  s3 (moto)            $S3/$BUCKET (Object Lock, COMPLIANCE)
  ingest-1, ingest-2   pids ${ROLE_PID[ingest-1]}, ${ROLE_PID[ingest-2]}
  dispatcher-1, -2     pids ${ROLE_PID[dispatcher-1]} (active), ${ROLE_PID[dispatcher-2]} (standby)
  logs                 $DIR/*/serve.log
  phones               $PHONES ($DIR/phones.jsonl), a hotline tip every 5 s
EOF

# The phones.
SIM_ARGS=(sim --devices "$PHONES" --credentials "$DIR/phones.jsonl" --rate "$RATE" --tip-every 5 --coverage 0)
[[ -n $SECONDS_TO_RUN ]] && SIM_ARGS+=(--duration "$SECONDS_TO_RUN")
JIANDU_DATA_DIR="$CORE" JIANDU_DB="$DB" RUST_LOG=warn "$BIN" "${SIM_ARGS[@]}" >"$DIR/sim.json" 2>"$DIR/sim.log" &
SIM_PID=$!
PIDS+=("$SIM_PID")
KILLED=false
if [[ -n $KILL_AFTER ]]; then
    sleep "$KILL_AFTER"
    log "kill -9 ingest-1 (pid ${ROLE_PID[ingest-1]}) and dispatcher-1 (pid ${ROLE_PID[dispatcher-1]})"
    kill -KILL "${ROLE_PID[ingest-1]}" "${ROLE_PID[dispatcher-1]}"
    wait "${ROLE_PID[ingest-1]}" "${ROLE_PID[dispatcher-1]}" 2>/dev/null || true
    KILLED=true
fi
# `jiandu sim` stops by itself after --seconds, or with the Ctrl-C the whole group gets.
wait "$SIM_PID" || true
sleep 2   # the last batches and acks

q() { psql "$DB" -qtAc "$1"; }
TAKEOVER=false
grep -q "dispatcher active" "$DIR/dispatcher-2/serve.log" && TAKEOVER=true
SIM=$(tail -n1 "$DIR/sim.json" 2>/dev/null || true)
[[ $SIM == \{* ]] || SIM=null
SUMMARY=$(printf '{"phones":%s,"heartbeats_stored":%s,"devices_with_position":%s,"reports":%s,"offers":%s,"offers_expired":%s,"evidence_stored":%s,"killed":%s,"standby_took_over":%s,"sim":%s}' \
    "$PHONES" \
    "$(q 'SELECT count(*) FROM position_history')" \
    "$(q 'SELECT count(*) FROM device_position')" \
    "$(q 'SELECT count(*) FROM reports')" \
    "$(q "SELECT count(*) FROM assignment_log WHERE status = 'offered'")" \
    "$(q "SELECT count(*) FROM assignment_log WHERE status = 'expired'")" \
    "$(q 'SELECT count(*) FROM evidence')" \
    "$KILLED" "$TAKEOVER" "$SIM")
log "summary: $SUMMARY"
echo "$SUMMARY"
