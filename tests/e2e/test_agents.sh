#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_agents.sh - the agent side at work, end to end (DESIGN 3, 4, 5): real
# mosquitto, daemon, three reference agents over mutual TLS.
#
# 1. A 50-step workflow (a DAG of echo steps, five layers of ten) runs on
#    three agents: all 50 results reach P/tasks/ID/result exactly once, each
#    echoes its payload, each dependent's "inputs" holds exactly its
#    upstreams' results under their short ids, and every agent took work.
# 2. Drain: a drained agent's running tasks finish on it, it gets no new work
#    (its pinned task waits, others go elsewhere), health says "draining";
#    undrain brings it back and the pinned task runs there.
# 3. Cancel of running tasks reaches their agent: the agent stops the jobs
#    and reports at once (its late results are discarded: RESULT-STALE long
#    before the sleeps would have ended), the tasks stay cancelled with no
#    result, and the agent's slots are free again.
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/fleet_lib.sh"

fleet_init 200 5
issue a1 a2 a3
start_mosquitto
start_coord
for a in a1 a2 a3; do start_agent "$a" --caps echo,sleep --slots 2; done
for a in a1 a2 a3; do wait_up "$a"; done
sub_start res 'edgecoord/tasks/+/result' -q 1
sub_start wfs 'edgecoord/workflows/+/status' -q 1

# ---- 1. a 50-step workflow ------------------------------------------------------------------------
# Step sNN (NN = 1..50): layer (NN-1)/10; steps of layer 0 have no upstream,
# the others depend on the steps with the same and the next column in the layer
# above (a lattice: fan-in 2, fan-out 2, depth 5).
python3 - "$WORK/wf.json" <<'EOF'
import json, sys
steps = []
for n in range(1, 51):
    layer, col = (n - 1) // 10, (n - 1) % 10
    s = {"task_id": "s%02d" % n, "type": "echo", "payload": {"n": n}}
    if layer:
        up = {10 * (layer - 1) + col + 1, 10 * (layer - 1) + (col + 1) % 10 + 1}
        s["depends_on"] = ["s%02d" % u for u in sorted(up)]
    steps.append(s)
json.dump({"task_id": "w50", "type": "collaborative_task", "steps": steps},
          open(sys.argv[1], "w"))
EOF
mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -t edgecoord/submit/e2e -f "$WORK/wf.json"
sub_wait wfs '^edgecoord/workflows/w50/status .*"state":"succeeded"' 1 30
sub_wait res '^edgecoord/tasks/w50:s[0-9]+/result ' 50 10
python3 - "$WORK/res.log" "$WORK/wf.json" <<'EOF' || fail "workflow results (above)"
import json, sys
wf = json.load(open(sys.argv[2]))
res, errors = {}, []
for line in open(sys.argv[1]):
    topic, _, body = line.rstrip("\n").partition(" ")
    if not topic.startswith("edgecoord/tasks/w50:"):
        continue
    tid = topic.split("/")[2]
    if tid in res:
        errors.append("two results for " + tid)
    res[tid] = json.loads(body)
agents = {}
for s in wf["steps"]:
    tid = "w50:" + s["task_id"]
    r = res.get(tid)
    if r is None:
        errors.append("no result for " + tid)
        continue
    if not r.get("ok"):
        errors.append(tid + " failed: " + json.dumps(r))
        continue
    agents[r["agent"]] = agents.get(r["agent"], 0) + 1
    if r["result"].get("payload") != s["payload"]:
        errors.append(tid + ": payload " + json.dumps(r["result"].get("payload")))
    want = {u: res["w50:" + u]["result"] for u in s.get("depends_on", [])
            if "w50:" + u in res}
    if r["result"].get("inputs") != want:
        errors.append(tid + ": inputs " + json.dumps(r["result"].get("inputs"))
                      + " want " + json.dumps(want))
if sorted(agents) != ["a1", "a2", "a3"]:
    errors.append("tasks per agent: " + json.dumps(agents))
for e in errors[:10]:
    print(e, file=sys.stderr)
print("tasks per agent:", json.dumps(agents, sort_keys=True))
sys.exit(1 if errors else 0)
EOF
pass "50-step workflow on 3 agents: 50 results, each once, inputs = upstream results"

# ---- 2. drain and undrain -------------------------------------------------------------------------
sub_start fleet 'edgecoord/fleet/#' -q 1
pub edgecoord/submit/e2e '[{"task_id":"k1","type":"sleep","payload":{"ms":1500},"agent":"a1"},
	{"task_id":"k2","type":"sleep","payload":{"ms":1500},"agent":"a1"}]' -q 1
wait_until 10 task_in k1 running || fail "k1 never ran"
wait_until 10 task_in k2 running || fail "k2 never ran"
ctl drain a1 >"$WORK/ctl.out" 2>&1 || fail "edgecoordctl drain a1: $(cat "$WORK/ctl.out")"
sub_wait fleet '^edgecoord/fleet/agents/a1 .*"state":"draining"' 1 5
sub_wait fleet '^edgecoord/fleet/health .*"draining":1' 1 5
# Work for the fleet goes elsewhere; work pinned to a1 waits.
batch='['
for i in $(seq -w 1 12); do batch+="{\"task_id\":\"d$i\",\"type\":\"echo\"},"; done
batch+='{"task_id":"p1","type":"echo","agent":"a1"}]'
pub edgecoord/submit/e2e "$batch" -q 1
sub_wait res '^edgecoord/tasks/d[0-9]+/result ' 12 10
[ "$(sub_count res '^edgecoord/tasks/d[0-9]+/result .*"agent":"a1"')" = 0 ] ||
	fail "a drained agent got new work: $(grep '"agent":"a1"' "$WORK/res.log" | grep '/d[0-9]')"
# Its running work finishes, on it.
sub_wait res '^edgecoord/tasks/k1/result .*"agent":"a1","ok":true' 1 10
sub_wait res '^edgecoord/tasks/k2/result .*"agent":"a1","ok":true' 1 10
task_in p1 ready || fail "p1, pinned to drained a1, is $(show_field p1 state), want ready"
[ "$(sub_count res '^edgecoord/tasks/p1/result')" = 0 ] || fail "p1 ran on a drained agent"
pass "drain: running work finished on a1, new work went elsewhere, health shows draining"

ctl undrain a1 >"$WORK/ctl.out" 2>&1 || fail "edgecoordctl undrain a1: $(cat "$WORK/ctl.out")"
sub_wait res '^edgecoord/tasks/p1/result .*"agent":"a1","ok":true' 1 10
sub_wait fleet '^edgecoord/fleet/health .*"online":3,"suspect":0,"offline":0,"draining":0' 1 5
pass "undrain: a1 is online again and runs its pinned task"

# ---- 3. cancel of running tasks ---------------------------------------------------------------------
pub edgecoord/submit/e2e '[{"task_id":"c1","type":"sleep","payload":{"ms":20000},"agent":"a2"},
	{"task_id":"c2","type":"sleep","payload":{"ms":20000},"agent":"a2"}]' -q 1
wait_until 10 task_in c1 running || fail "c1 never ran"
wait_until 10 task_in c2 running || fail "c2 never ran"
t0=$(now_ms)
ctl cancel c1 >"$WORK/ctl.out" 2>&1 || fail "edgecoordctl cancel c1: $(cat "$WORK/ctl.out")"
ctl cancel c2 >"$WORK/ctl.out" 2>&1 || fail "edgecoordctl cancel c2: $(cat "$WORK/ctl.out")"
# The agent stops the jobs and reports them: their results come back (and
# are discarded) long before the 20 s sleeps end.
coord_wait 'RESULT-STALE task=c1 .*agent=a2' 1 5
coord_wait 'RESULT-STALE task=c2 .*agent=a2' 1 5
echo "cancel of c1 -> its stale result from the agent: $(($(log_ms "RESULT-STALE task=c1 ") - $(log_ms "CONTROL cancel task_id=c1"))) ms"
# Its two slots are free again: two pinned tasks run now, not in 20 s.
pub edgecoord/submit/e2e '[{"task_id":"c3","type":"sleep","payload":{"ms":10},"agent":"a2"},
	{"task_id":"c4","type":"sleep","payload":{"ms":10},"agent":"a2"}]' -q 1
sub_wait res '^edgecoord/tasks/c3/result .*"ok":true' 1 5
sub_wait res '^edgecoord/tasks/c4/result .*"ok":true' 1 5
for t in c1 c2; do
	task_in "$t" cancelled || fail "$t is $(show_field "$t" state), want cancelled"
	[ "$(show_field "$t" result)" = null ] || fail "$t has a result: $(show_field "$t" result)"
	[ "$(sub_count res "^edgecoord/tasks/$t/result .*\"ok\":true")" = 0 ] ||
		fail "a successful result was published for cancelled $t"
done
pass "cancel reached the agent: jobs stopped, tasks cancelled without a result, slots free"

bg_alive coord || fail "the coordinator died"
