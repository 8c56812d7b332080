#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_dispatch_crash.sh - work is sent to agents before its dispatch commits
# (fleet.c, send_work_early); nothing about that may show after a crash.
# Two agents work through 1,200 short tasks while the coordinator is SIGKILLed
# three times and restarted, on a 1 MiB map that has to grow meanwhile (a
# grown map reruns the turn's transaction: its early work is recalled).
# Then every task has succeeded exactly once: one "succeeded" in its history,
# recorded for the agent of its last dispatch (a result sent for a dispatch
# that never committed is not taken for a later one), and the lease counter
# skipped a gap at each restart.
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/fleet_lib.sh"

N=1200
FLEET_EXTRA_CONF=$'[coordinator]\nmap_size_mb = 1' fleet_init 1000 3
issue k1 k2
start_mosquitto
start_coord --log-level debug
start_agent k1 --slots 4
start_agent k2 --slots 4
wait_up k1
wait_up k2

# arrays of 100 tasks: sleeps of 30 ms (2.3 s of work for 8 slots) and echoes
# of 2 KB (their results make the map grow while work is dispatched)
for b in $(seq 0 $((N / 100 - 1))); do
	python3 -c 'import json, sys
b = int(sys.argv[1])
pad = "x" * 2000
print(json.dumps([{"task_id": "c%d" % (b * 100 + i), "type": "sleep", "payload": {"ms": 30}}
                  if i % 2 else
                  {"task_id": "c%d" % (b * 100 + i), "type": "echo", "payload": {"pad": pad}}
                  for i in range(100)]))' "$b" >"$WORK/batch.json"
	mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -t edgecoord/submit/e2e -q 1 -f "$WORK/batch.json" ||
		fail "publish batch $b"
done

succeeded() { ctl --json tasks --state succeeded | python3 -c 'import sys, json; print(len(json.load(sys.stdin)))'; }

for kill in 1 2 3; do
	# both agents back (after a restart they reconnect with backoff), then
	# a little work, then the kill
	coord_wait 'AGENT-UP agent=k1 ' "$kill" 15
	coord_wait 'AGENT-UP agent=k2 ' "$kill" 15
	sleep 0.$((1 + kill))
	kill_bg coord KILL
	echo "kill $kill: $(succeeded) of $N succeeded"
	start_coord --log-level debug
done
wait_until 60 eval '[ "$(succeeded)" = "$N" ]' || fail "only $(succeeded) of $N succeeded"

# Every task: one success, from the agent of its last dispatch.
for i in $(seq 0 $((N - 1))); do ctl --json show "c$i" || fail "show c$i"; echo; done >"$WORK/shows"
python3 - "$WORK/shows" "$N" <<'EOF' || fail "exactly-once check failed"
import json, sys
bad = n = dispatches = again = 0
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    t = json.loads(line)
    n += 1
    h = [(e["to"], e["agent"]) for e in t["history"]]
    ok = [a for to, a in h if to == "succeeded"]
    disp = [a for to, a in h if to == "dispatched"]
    dispatches += len(disp)
    again += len(disp) > 1
    if len(ok) != 1 or not disp or ok[0] != disp[-1] or t["state"] != "succeeded":
        print("%s: %s" % (t["task_id"], h)); bad += 1
print("%d tasks, %d dispatches, %d dispatched more than once" % (n, dispatches, again))
sys.exit(bad or n != int(sys.argv[2]))
EOF

# Leases after the restarts start past the gap (2^20 per restart).
max_lease=$(grep -o 'DISPATCH [^ ]* lease=[0-9]*' "$WORK/coord.log" | sed 's/.*lease=//' | sort -n | tail -1)
[ "$max_lease" -gt $((3 << 20)) ] || fail "no lease gap: highest lease $max_lease"
echo "map growths: $(coord_count STORE-GROW); early work recalled on the agents:" \
	"$(cat "$WORK/k1.log" "$WORK/k2.log" | grep -c 'dispatch not committed' || true)"
bg_alive coord || fail "the coordinator died"
pass "3 coordinator SIGKILLs during dispatch: $N tasks, each succeeded exactly once"
