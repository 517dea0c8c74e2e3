#!/usr/bin/env bash
# Starts demo upstreams and txmesh on etc/mesh.yaml, sends traffic through it, shows the admin counters.
# Usage: bash etc/demo.sh [--once]    (--once: exit after the demo traffic instead of running until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c 'import txmesh, twisted' 2>/dev/null || ! $PY -c "from twisted.scripts.twistd import run; run()" --help 2>/dev/null | grep -q txmesh; then
  [ -d .venv ] || python3 -m venv .venv
  .venv/bin/pip install -q .
  PY=.venv/bin/python
fi
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
$PY etc/demo_upstream.py 18080 18081 18082 & pids+=($!)
$PY -c "from twisted.scripts.twistd import run; run()" -n --pidfile= txmesh --config etc/mesh.yaml & pids+=($!)
for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:9901/ready && break; sleep 0.1; done
echo "== outbound listener (127.0.0.1:15001), Host demo.svc -> cluster demo (round robin over 18081, 18082)"
for i in 1 2 3 4; do curl -s -H 'Host: demo.svc' "http://127.0.0.1:15001/hello/$i"; done
echo "== inbound listener (127.0.0.1:15006) -> local app on 18080"
curl -s http://127.0.0.1:15006/from-the-mesh
echo "== a host no route knows: the proxy's own 404, naming the cause"
curl -s -i -H 'Host: nowhere.example' http://127.0.0.1:15001/ | sed -n '1p;/x-txmesh-error/p'
echo "== admin: http://127.0.0.1:9901/stats?format=text (listener and cluster counters)"
curl -s 'http://127.0.0.1:9901/stats?format=text' | grep -E 'downstream_rq(_xx)?\{|cluster_upstream_rq\{' || true
if [ "${1:-}" != "--once" ]; then
  echo "== running; try: curl -H 'Host: demo.svc' http://127.0.0.1:15001/  (Ctrl-C to stop)"
  wait "${pids[1]}"
fi
