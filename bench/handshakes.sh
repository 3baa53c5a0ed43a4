#!/usr/bin/env bash
# Full TLS handshakes per second through the gateway, one run, five servers in
# front of the same nginx backend (see docs/benchmarks.md):
#
#   reloading  tlsgate's relay with ReloadingContextFactory (what ships)
#   static     the same relay with one context built at start-up
#   rebuild    the same relay building a new context per connection ("Hysteria-style")
#   stunnel    Debian's stunnel4, no session tickets (OPENSSL_CONF)
#   twistd     the real `twistd -n tlsgate --config X.ini`, session_resumption = off
#
# The server under test runs alone on core 0; the load generator (hsload, Go
# crypto/tls, no resumption) and nginx share core 1. Not run in CI.
#
# Usage: bench/handshakes.sh
# Knobs (environment): DURATION=5s WARMUP=2s CONC=32 ROUNDS=6
#   SERVERS="reloading static rebuild stunnel twistd"  RESULTS=bench/results/<time>
#   HSLOAD=/path/to/prebuilt/hsload  SERVER_CPU=0 LOAD_CPU=1
#   QUIET_MAX_BUSY=10 QUIET_TIMEOUT=20 (wait for other work to stop first)
#   OTHER_MAX=10 RETRIES=2 (redo a run during which other work took CPU)
#   DUELS="static2:static reloading:static twistd:reloading" DUEL_ROUNDS=4
#   DUEL_DURATION=10s (head to head: both servers of a pair loaded at once on
#     the server core; static2 is a second static process, the A/A control)
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH")"
TOOLS="${TOOLS:-$(cd "$REPO/../shared/tools" 2>/dev/null && pwd || echo /work/shared/tools)}"

DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-2s}"
CONC="${CONC:-32}"
ROUNDS="${ROUNDS:-6}"
SERVERS="${SERVERS:-reloading static rebuild stunnel twistd}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
QUIET_MAX_BUSY="${QUIET_MAX_BUSY:-10}"  # percent of one core, before each server
QUIET_TIMEOUT="${QUIET_TIMEOUT:-20}"    # seconds to wait for that
OTHER_MAX="${OTHER_MAX:-10}"  # percent of a core used by others during a run
RETRIES="${RETRIES:-2}"       # re-measurements of a run over OTHER_MAX
DUELS="${DUELS-static2:static reloading:static twistd:reloading}"  # "" for none
DUEL_ROUNDS="${DUEL_ROUNDS:-4}"
DUEL_DURATION="${DUEL_DURATION:-10s}"
RESULTS="${RESULTS:-$BENCH/results/$(date +%Y%m%d-%H%M%S)}"

PY="$(python3 -c 'import sys; print(sys.executable)')"
TWISTD="$(dirname "$PY")/twistd"
[ -x "$TWISTD" ] || TWISTD="$(command -v twistd)"
STUNNEL="$(command -v stunnel4 || command -v stunnel)"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
NOTICKETS="$TOOLS/openssl-notickets.cnf"

WORK="$(mktemp -d -t tlsgate-bench.XXXXXX)"
PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -d "$RESULTS" ]; then
        mkdir -p "$RESULTS/logs"
        cp "$WORK"/*.log "$WORK"/*.conf "$WORK"/*.ini "$RESULTS/logs/" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tool() { "$PY" "$BENCH/hstool.py" "$@"; }
free_port() { tool ports 1; }

mkdir -p "$RESULTS"
OUT="$RESULTS/results.jsonl"
: >"$OUT"

# -- the machine -------------------------------------------------------------
{
    echo "date: $(date -Is)"
    echo "tlsgate: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(
        [ -z "$(git -C "$REPO" status --porcelain -- src twisted 2>/dev/null)" ] || echo ' + uncommitted changes in src/')"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "kernel: $(uname -r)"
    echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0])')"
    "$PY" -c 'import twisted, OpenSSL, cryptography; from OpenSSL import SSL
print("twisted:", twisted.__version__)
print("pyopenssl:", OpenSSL.__version__, "cryptography:", cryptography.__version__)
print("gateway openssl:", SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode())'
    echo "system openssl: $(openssl version)"
    echo "stunnel: $("$STUNNEL" -version 2>&1 | grep -m1 '^stunnel') / $("$STUNNEL" -version 2>&1 | grep -m1 'Running  with\|Running with' | sed 's/^ *//')"
    echo "nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
    echo "go: $(go version 2>/dev/null | cut -d' ' -f3)"
    echo "settings: DURATION=$DURATION WARMUP=$WARMUP CONC=$CONC ROUNDS=$ROUNDS server core $SERVER_CPU, load+backend core $LOAD_CPU"
} | tee "$RESULTS/machine.txt" >&2
[ "$(nproc)" -ge 2 ] || log "warning: fewer than 2 cores; load and server will compete"

# -- load generator ------------------------------------------------------------
if [ -z "${HSLOAD:-}" ]; then
    HSLOAD="$WORK/hsload"
    log "building hsload"
    GO111MODULE=off go build -o "$HSLOAD" "$TOOLS/hsload/hsload.go"
fi
load() { GOMAXPROCS=1 taskset -c "$LOAD_CPU" "$HSLOAD" -addr "127.0.0.1:$1" -path /small -c "$CONC" -d "$2"; }

# -- certificate: ECDSA P-256 leaf, self-signed --------------------------------
CERT="$WORK/cert.pem" KEY="$WORK/key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -keyout "$KEY" -out "$CERT" -days 7 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
chmod 600 "$KEY"
# Files as old as a deployed certificate's: ReloadingContextFactory re-hashes
# files modified within the last 2 s on every connection ("racy" stamps).
touch -d '-1 hour' "$CERT" "$KEY"

# -- backend: nginx on core 1 ----------------------------------------------------
BACKEND_PORT="$(free_port)"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    keepalive_timeout 0;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location = /small { default_type text/plain; return 200 "ok\n"; }
        location / { return 404; }
    }
}
EOF
taskset -c "$LOAD_CPU" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
tool wait "$BACKEND_PORT" 10 --pid "$NGINX_PID" >/dev/null
log "nginx backend on 127.0.0.1:$BACKEND_PORT (pid ${PIDS[-1]})"

# -- the servers -------------------------------------------------------------------
# start_server NAME PORT: start it on the server core, set SERVER_PID.
start_server() {
    local name="$1" port="$2"
    case "$name" in
    reloading | static | rebuild | static2)
        # static2: a second, identical static process, the control of the
        # head-to-head runs (static2 vs static should come out at 1.0).
        PYTHONDONTWRITEBYTECODE=1 taskset -c "$SERVER_CPU" "$PY" "$BENCH/gateway_variant.py" \
            --variant "${name%2}" --cert "$CERT" --key "$KEY" \
            --listen "tcp:$port:interface=127.0.0.1" --backend "tcp:127.0.0.1:$BACKEND_PORT" \
            --log "$WORK/$name.log" >>"$WORK/$name.log" 2>&1 &
        ;;
    stunnel)
        cat >"$WORK/stunnel.conf" <<EOF
foreground = yes
pid = $WORK/stunnel.pid
output = $WORK/stunnel.log
; notice (5) logs four lines per connection and cuts stunnel to about a
; third of its rate here; the Twisted servers log none per connection.
debug = 4
[bench]
accept = 127.0.0.1:$port
connect = 127.0.0.1:$BACKEND_PORT
cert = $CERT
key = $KEY
EOF
        OPENSSL_CONF="$NOTICKETS" taskset -c "$SERVER_CPU" "$STUNNEL" "$WORK/stunnel.conf" \
            >>"$WORK/stunnel.log" 2>&1 &
        ;;
    twistd)
        cat >"$WORK/gateway.ini" <<EOF
[listener:bench]
listen = tcp:$port:interface=127.0.0.1
backend = tcp:127.0.0.1:$BACKEND_PORT
cert = $CERT
key = $KEY
session_resumption = off
EOF
        # <repo> on the path so that Twisted finds twisted/plugins/tlsgate_plugin.py.
        PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$REPO/src:$REPO" taskset -c "$SERVER_CPU" \
            "$TWISTD" -n --pidfile "$WORK/twistd.pid" --logfile "$WORK/twistd.log" \
            tlsgate --config "$WORK/gateway.ini" >>"$WORK/twistd.log" 2>&1 &
        ;;
    *) log "unknown server $name"; return 1 ;;
    esac
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    if ! tool wait "$port" 20 --pid "$SERVER_PID" >/dev/null || ! kill -0 "$SERVER_PID" 2>/dev/null; then
        log "$name did not start; its log:"
        tail -n 30 "$WORK/$name.log" >&2 || true
        return 1
    fi
}

# All servers run from the start, idle while another is measured, so that
# rounds can alternate between them quickly; each is probed and warmed once.
declare -A PORT PID
# Servers only needed head to head (static2) start too, and are probed alike.
EXTRA="$(for pair in $DUELS; do printf '%s\n' "${pair%%:*}" "${pair##*:}"; done |
    grep -vxF -f <(printf '%s\n' $SERVERS) | sort -u | tr '\n' ' ')" || true
for name in $SERVERS $EXTRA; do
    PORT[$name]="$(free_port)"
    start_server "$name" "${PORT[$name]}"
    PID[$name]="$SERVER_PID"
    probe="$(tool probe "${PORT[$name]}")" || { log "$name: probe failed: $probe"; exit 1; }
    log "$name on 127.0.0.1:${PORT[$name]} (pid $SERVER_PID): $probe"
    [ "$WARMUP" = 0 ] || load "${PORT[$name]}" "$WARMUP" >/dev/null
done

# Rounds alternate the order (ABCDE, EDCBA, ...) so that a slow drift of the
# machine's speed does not favour whichever server comes first.
REVERSED="$(printf '%s\n' $SERVERS | tac | tr '\n' ' ')"
for round in $(seq "$ROUNDS"); do
    order="$SERVERS"
    [ $((round % 2)) -eq 1 ] || order="$REVERSED"
    for name in $order; do
        # A measurement during which something else took more than OTHER_MAX
        # percent of a core is thrown away (kept in rejected.jsonl) and redone,
        # up to RETRIES times; the last try is kept and marked noisy. Before
        # each, wait up to QUIET_TIMEOUT for other work (a test run) to stop.
        for try in $(seq 0 "$RETRIES"); do
            tool quiet --max-busy "$QUIET_MAX_BUSY" --timeout "$QUIET_TIMEOUT" ||
                log "machine busy; measuring $name anyway"
            accept=()
            [ "$try" -lt "$RETRIES" ] || accept=(--accept-noisy)
            rc=0
            line="$(taskset -c "$LOAD_CPU" "$PY" "$BENCH/hstool.py" measure --name "$name" \
                --round "$round" --pid "${PID[$name]}" --backend-pid "$NGINX_PID" \
                --out "$OUT" --rejected "$RESULTS/rejected.jsonl" --max-other "$OTHER_MAX" \
                "${accept[@]}" --server-cpu "$SERVER_CPU" --load-cpu "$LOAD_CPU" -- \
                env GOMAXPROCS=1 taskset -c "$LOAD_CPU" "$HSLOAD" -addr "127.0.0.1:${PORT[$name]}" \
                -path /small -c "$CONC" -d "$DURATION")" || rc=$?
            log "round $round/$ROUNDS $name: $line"
            [ "$rc" -eq 3 ] || break
            log "$name: other work on the machine during the run; again"
        done
        [ "$rc" -eq 0 ] || { log "$name: measurement failed"; exit 1; }
        kill -0 "${PID[$name]}" 2>/dev/null || { log "$name died"; exit 1; }
    done
done

# Head to head: two servers loaded at once on the same core. Each gets half of
# it, so the ratio of their rates is the ratio of their CPU per handshake,
# taken in the same seconds, which the machine's drift cannot skew.
for pair in $DUELS; do
    a="${pair%%:*}" b="${pair##*:}"
    [ -n "${PID[$a]:-}" ] && [ -n "${PID[$b]:-}" ] || continue
    for round in $(seq "$DUEL_ROUNDS"); do
        tool quiet --max-busy "$QUIET_MAX_BUSY" --timeout "$QUIET_TIMEOUT" || true
        line="$(taskset -c "$LOAD_CPU" "$PY" "$BENCH/hstool.py" duel \
            --a "$a:${PID[$a]}:${PORT[$a]}" --b "$b:${PID[$b]}:${PORT[$b]}" \
            --round "$round" --hsload "$HSLOAD" --conc "$CONC" --duration "$DUEL_DURATION" \
            --load-cpu "$LOAD_CPU" --out "$RESULTS/duels.jsonl")"
        log "head to head $round/$DUEL_ROUNDS $a vs $b: $line"
    done
done

echo
tool report "$OUT" ${DUELS:+--duels "$RESULTS/duels.jsonl"} | tee "$RESULTS/table.md"
echo
log "results in $RESULTS"
