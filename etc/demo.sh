#!/usr/bin/env bash
# Starts demo upstreams (HTTP/1.1, gRPC, Dubbo) and txmesh on etc/mesh.yaml, sends traffic of all three protocols
# through it, shows the admin counters.
# Usage: bash etc/demo.sh [--once]    (--once: exit after the demo traffic instead of running until Ctrl-C)
# Ports (127.0.0.1): txmesh 15001 (HTTP/1.1 outbound), 15006 (HTTP/1.1 inbound), 15002 (gRPC), 15003 (Dubbo),
# 9901 (admin); demo upstreams 18080-18082 (HTTP/1.1), 18090 (gRPC), 18091 (Dubbo).
# Every process it starts is ended by its PID when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
once=; [ "${1:-}" = "--once" ] && once=1

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
waitPort() { for _ in $(seq 100); do listening "$1" && return 0; sleep 0.1; done; echo "($2 did not start on :$1)"; return 1; }

busy=()
for port in 9901 15001 15002 15003 15006 18080 18081 18082 18090 18091; do listening $port && busy+=($port); done
if [ ${#busy[@]} -gt 0 ]; then
  echo "etc/demo.sh: port(s) ${busy[*]} already in use on 127.0.0.1 (another demo still running?)" >&2
  exit 1
fi

# Python: txmesh, Twisted and grpcio; PYTHON=... to use an interpreter that has them, else .venv (created here)
ready() { "$1" -c 'import txmesh, twisted, grpc' 2>/dev/null &&
          "$1" -c "from twisted.scripts.twistd import run; run()" --help 2>/dev/null | grep txmesh >/dev/null; }
PY=${PYTHON:-python3}
if ! ready "$PY"; then
  PY=.venv/bin/python
  if ! ready "$PY"; then
    echo "== installing txmesh and grpcio into .venv"
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check . 'grpcio>=1.60'
  fi
fi

# Dubbo: real third-party peers (sofa-rpc-node + dubbo-remoting) in tests/dubbo_peers, installed by `npm ci`
dubbo=
if ! command -v node >/dev/null 2>&1; then
  echo "== node is not installed: skipping the Dubbo part (apt-get install nodejs npm to see it)"
elif [ -d tests/dubbo_peers/node_modules/sofa-rpc-node ]; then
  dubbo=1
elif ! command -v npm >/dev/null 2>&1; then
  echo "== npm is not installed: skipping the Dubbo part (apt-get install npm to see it)"
else
  echo "== installing the Dubbo peers (npm ci in tests/dubbo_peers)"
  if (cd tests/dubbo_peers && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
    dubbo=1
  else
    echo "== npm ci in tests/dubbo_peers failed: skipping the Dubbo part"
  fi
fi

pids=()
cleanup() {  # TERM each process started here, give them 5 s, then KILL what is left
  trap '' INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ -n "$alive" ] || break; sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

$PY etc/demo_upstream.py 18080 18081 18082 & pids+=($!)
$PY etc/demo_grpc.py serve 18090 & pids+=($!)
if [ -n "$dubbo" ]; then node tests/dubbo_peers/provider.js 18091 >/dev/null & pids+=($!); fi
$PY -c "from twisted.scripts.twistd import run; run()" -n --pidfile= txmesh --config etc/mesh.yaml & mesh=$!
pids+=($mesh)
for _ in $(seq 100); do curl -s -m 1 -o /dev/null http://127.0.0.1:9901/ready && break; sleep 0.1; done
waitPort 18080 "HTTP/1.1 demo upstream" || true
waitPort 18090 "gRPC demo upstream" || true
[ -z "$dubbo" ] || waitPort 18091 "Dubbo provider" || true

echo "== HTTP/1.1 outbound listener (127.0.0.1:15001), Host demo.svc -> cluster demo (round robin over 18081, 18082)"
for i in 1 2 3 4; do curl -s -m 5 -H 'Host: demo.svc' "http://127.0.0.1:15001/hello/$i"; done
echo "== HTTP/1.1 inbound listener (127.0.0.1:15006) -> local app on 18080"
curl -s -m 5 http://127.0.0.1:15006/from-the-mesh
echo "== a host no route knows: the proxy's own 404, naming the cause"
curl -s -m 5 -i -H 'Host: nowhere.example' http://127.0.0.1:15001/ | sed -n '1p;/x-txmesh-error/p'

echo "== gRPC listener (127.0.0.1:15002), service demo.Echo -> cluster grpc_echo (gRPC app on 18090)"
$PY etc/demo_grpc.py call 127.0.0.1:15002 || echo "(the gRPC calls failed)"

if [ -n "$dubbo" ]; then
  echo "== Dubbo listener (127.0.0.1:15003), interface org.txmesh.peers.* -> cluster dubbo_provider (provider on 18091)"
  node etc/demo_dubbo.js 127.0.0.1:15003 || echo "(the Dubbo call failed)"
fi

sleep 1.1  # txmesh's access log (the lines in "..." above) reaches stdout within a second
echo "== admin: http://127.0.0.1:9901/stats?format=text (listener and cluster counters, zeros left out)"
curl -s -m 5 'http://127.0.0.1:9901/stats?format=text' |
  grep -E '^(downstream_rq(_xx)?|cluster_upstream_rq|downstream_grpc_status|dubbo_(requests|responses))\{' |
  grep -v ' 0$' || true
if [ -z "$once" ]; then
  echo "== running; try: curl -H 'Host: demo.svc' http://127.0.0.1:15001/  (Ctrl-C to stop)"
  wait "$mesh"
fi
