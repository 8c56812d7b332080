#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_many_agents.sh - 200 agents connected at once (DESIGN 4): 200 reference
# agents (each its own certificate) come up, fleet health lists 200 online,
# a batch of 400 echo tasks runs on them, and the coordinator's resident
# memory per connected agent is measured and printed (VmRSS before the first
# agent and with all 200 up, divided by 200). Agents start in groups of 20,
# each group up before the next, so that 200 handshakes do not all land on a
# two-core machine at once.
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/fleet_lib.sh"

N=200
GROUP=20
fleet_init 1000 3
names=()
for i in $(seq -w 1 $N); do names+=("m$i"); done
issue "${names[@]}"
start_mosquitto
start_coord
sub_start health 'edgecoord/fleet/health' -q 1
sub_start res 'edgecoord/tasks/+/result' -q 1

rss_kb() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/${BG_PIDS[coord]}/status"; }
sleep 0.5 # let the start-up settle before the baseline
rss0=$(rss_kb)
t0=$(now_ms)
for ((g = 0; g < N; g += GROUP)); do
	for name in "${names[@]:g:GROUP}"; do
		start_agent "$name" --caps echo --slots 2
	done
	coord_wait 'AGENT-UP ' $((g + GROUP)) 60
done
t1=$(now_ms)
sub_wait health "^edgecoord/fleet/health \{\"online\":$N,\"suspect\":0,\"offline\":0,\"draining\":0," 1 30
up=$(coord_count 'AGENT-UP ')
[ "$up" = "$N" ] || fail "$up AGENT-UP lines, want $N (reconnects?)"
python3 - "$WORK/health.log" "$N" <<'EOF' || fail "fleet health does not list $N online agents"
import json, sys
last = [l for l in open(sys.argv[1]) if l.startswith("edgecoord/fleet/health ")][-1]
h = json.loads(last.split(" ", 1)[1])
names = {a["agent"] for a in h["agents"] if a["state"] == "online"}
want = {"m%03d" % i for i in range(1, int(sys.argv[2]) + 1)}
sys.exit(0 if names == want else 1)
EOF
sleep 1 # a heartbeat round with everyone up
rss1=$(rss_kb)
echo "$N agents up in $((t1 - t0)) ms; coordinator VmRSS $rss0 kB -> $rss1 kB:" \
	"$(((rss1 - rss0) * 1000 / N)) bytes per agent"
pass "$N agents online, listed by fleet health"

batch='['
for i in $(seq 1 400); do batch+="{\"task_id\":\"e$i\",\"type\":\"echo\",\"payload\":$i},"; done
batch="${batch%,}]"
pub edgecoord/submit/e2e "$batch" -q 1
sub_wait res '^edgecoord/tasks/e[0-9]+/result .*"ok":true' 400 60
used=$(grep -o '"agent":"m[0-9]*"' "$WORK/res.log" | sort -u | wc -l)
echo "400 tasks ran on $used agents"
[ "$used" -ge 100 ] || fail "400 tasks ran on only $used of $N agents"
[ "$(coord_count 'AGENT-(DOWN|OFFLINE|SUSPECT) ')" = 0 ] || fail "an agent went down or silent"
pass "400 tasks spread over $used agents; none went silent"
