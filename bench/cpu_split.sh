#!/bin/bash
# CPU per request of one running proxy process, split into user and system time (issue 10: where the CPU goes).
#   bench/cpu_split.sh PID PORT [SECONDS] [CONNS]
# Runs `wrk -t1 -cCONNS -dSECONDS` against 127.0.0.1:PORT/ and reads PID's utime and stime from /proc before and
# after: µs of user and of system CPU per request.  Run it for nginx, Envoy and txmesh on the same upstream, in
# turn, in the same minutes (docs/performance.md "Where the CPU goes: user space").
set -eu
PID=$1; PORT=$2; SECONDS_=${3:-5}; CONNS=${4:-16}
TICK=$(getconf CLK_TCK)
read u0 s0 < <(awk '{print $14, $15}' /proc/$PID/stat)
out=$(wrk -t1 -c"$CONNS" -d"${SECONDS_}s" "http://127.0.0.1:$PORT/")
read u1 s1 < <(awk '{print $14, $15}' /proc/$PID/stat)
n=$(echo "$out" | awk '/requests in/{print $1}')
python3 -c "
tick=$TICK; n=$n
u=($u1-$u0)*1e6/tick/n; s=($s1-$s0)*1e6/tick/n
print('requests %d  user %.1f µs/req  system %.1f µs/req  total %.1f' % (n, u, s, u + s))"
