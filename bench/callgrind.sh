#!/usr/bin/env bash
# Instructions per delivered event: the gateway release binary under callgrind, a fixed small
# fan-out (CLIENTS clients in one room, EVENTS events through the Redis function).
#
# Instrumentation is switched on only after every client is connected and joined, and the
# profile is dumped once every delivery arrived, so the count covers exactly the delivery work:
# reading the bus, relaying, encoding, writing (user-space instructions; the kernel's share of
# each write is not counted: see `scenario.py floor` for that).
#
#   bench/callgrind.sh                      # 200 clients x 200 events
#   CLIENTS=500 EVENTS=100 bench/callgrind.sh
#
# Prints one JSON line and writes bench/results/callgrind-<date>.json (+ .txt: top functions).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CLIENTS=${CLIENTS:-200}
EVENTS=${EVENTS:-200}
RATE=${RATE:-10}
SECRET=bench-secret-0123456789abcdef-0123456789
STAMP=$(date +%Y%m%d-%H%M%S)

[ "${NO_BUILD:-}" = 1 ] || cargo build --release --bin realtime-gateway --bin rtg-loadgen
GW=$ROOT/target/release/realtime-gateway
LG=$ROOT/target/release/rtg-loadgen

work=$(mktemp -d /tmp/rtg-callgrind.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
RPORT=$(free_port); GPORT=$(free_port); APORT=$(free_port)

setsid redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$RPORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done

env -u GATEWAY_LISTEN -u GATEWAY_ADMIN_LISTEN JWT_SECRET=$SECRET PUBLISH_API_KEYS=bench-publish-key-0123456789 \
  REDIS_URL="redis://127.0.0.1:$RPORT" GATEWAY_LOG=warn \
  setsid valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" \
  "$GW" --listen "127.0.0.1:$GPORT" --admin-listen "127.0.0.1:$APORT" >"$work/gateway.log" 2>&1 &
GWPID=$!
pids+=($GWPID)
for _ in $(seq 600); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GPORT/readyz" || true)" = 200 ] && break
  sleep 0.2
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GPORT/readyz" || true)" = 200 ] \
  || { echo "gateway under valgrind did not become ready; log: $work/gateway.log" >&2; exit 1; }

# Clients: connect and join, then wait for commands (mark / report / stop) on a fifo.
mkfifo "$work/ctl"
JWT_SECRET=$SECRET setsid "$LG" clients --control --target "127.0.0.1:$GPORT" -n "$CLIENTS" \
  --join batch:1 --ramp 200 --connect-timeout 120 --drain 600 --label callgrind \
  <"$work/ctl" >"$work/clients.out" 2>"$work/clients.log" &
pids+=($!)
exec 3>"$work/ctl"
for _ in $(seq 1200); do grep -q '"type":"ready"' "$work/clients.out" && break; sleep 0.1; done
grep -q '"type":"ready"' "$work/clients.out" || { echo "clients never got ready" >&2; exit 1; }
sleep 1

callgrind_control -i on "$GWPID" >/dev/null 2>&1
echo mark >&3
"$LG" publish --redis "redis://127.0.0.1:$RPORT" --room batch:1 --count "$EVENTS" --rate "$RATE" \
  --out "$work/publish.json" >/dev/null
echo "report $work/publish.json" >&3
for _ in $(seq 6000); do grep -q '"type":"report"' "$work/clients.out" && break; sleep 0.1; done
callgrind_control -d "$GWPID" >/dev/null 2>&1
callgrind_control -i off "$GWPID" >/dev/null 2>&1 || true
echo stop >&3

# The dump written by -d: callgrind.out.<n> (the final one at exit is not waited for).
for _ in $(seq 100); do ls "$work"/callgrind.out* >/dev/null 2>&1 && break; sleep 0.1; done
dump=$(ls -t "$work"/callgrind.out* | head -1)
mkdir -p bench/results
callgrind_annotate --threshold=99 "$dump" 2>/dev/null | head -60 >"bench/results/callgrind-$STAMP.txt" || true

python3 - "$work/clients.out" "$dump" "bench/results/callgrind-$STAMP.json" "$CLIENTS" "$EVENTS" <<'EOF'
import json, re, sys
clients_out, dump, out, clients, events = sys.argv[1:]
report = next(json.loads(l) for l in open(clients_out) if '"type":"report"' in l)
ir = 0
for line in open(dump, errors="replace"):
    m = re.match(r"(summary|totals):\s+(\d+)", line)
    if m:
        ir = max(ir, int(m.group(2)))
d = report["deliveries"]
doc = {
    "scenario": "callgrind", "clients": int(clients), "events": int(events),
    "expected": d["expected"], "received": d["received"], "lost": d["lost"],
    "instructions": ir,
    "ir_per_delivery": round(ir / d["received"]) if d["received"] else None,
    "ir_per_event": round(ir / int(events)) if int(events) else None,
}
json.dump(doc, open(out, "w"), indent=1)
print(json.dumps(doc))
EOF
if [ "${KEEP:-}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
