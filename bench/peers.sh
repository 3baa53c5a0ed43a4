#!/usr/bin/env bash
# tlsgate beside hitch, HAProxy, nginx stream and a bare Twisted forwarder, in
# one run: full handshakes (ECDSA, RSA), keep-alive requests, bulk transfer,
# memory per idle connection and CPU per request. See docs/benchmarks.md.
#
#   bench/peers.sh                 # 3 rounds of 10 s per cell (idle machine!)
#   bench/peers.sh --quick         # smoke run: 1 round, 3 s per cell
#   bench/peers.sh --quick --only tlsgate,hitch,ecdsa,ka
#   bench/peers.sh --help
#
# Needs (Debian): hitch haproxy nginx libnginx-mod-stream wrk curl golang-go.
# TOOLS=/path/to/shared/tools overrides ../shared/tools beside the repository.
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH")"
# The project's venv when there is one: tlsgate and the bare forwarder need
# Twisted and pyOpenSSL, and twistd is taken from beside this python.
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
exec "$PY" "$BENCH/peers.py" "$@"
