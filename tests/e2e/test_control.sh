#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_control.sh - operator control and scheduling order as a user sees them
# (DESIGN 3.4, 5, 6):
#  7. cancel of one running task (its command gets SIGTERM on the agent, its
#     dependent is skipped, its late report discarded), of a whole workflow
#     (running steps stopped, every non-final step cancelled, workflow state
#     cancelled), and of unknown ids;
#  9. priorities: on one agent with one slot, priority-10 tasks of a batch run
#     before priority 5, before priority 1, each level in submission order;
# 10. [concurrency] TYPE = 1 with two agents: that type never runs twice at
#     once, while an unlimited type on the same agents does;
# 11. max_pending_per_source: a batch or workflow crossing it is refused whole
#     with quota_exceeded, other sources are not affected, and finishing a
#     task frees room.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/coord_lib.sh"
e2e_init

coord_start <<EOF
[mqtt]
status_events = all
[scheduler]
max_pending_per_source = 12
[concurrency]
solo = 1
EOF
make_hang
agent_start c1 --slots 3 --caps echo --exec hang="sh '$WORK/hang.sh'"
sub_start tasks "$P/tasks/+/status"
sub_start wf "$P/workflows/#"
sub_start rejected "$P/rejected/#"

# ---- 7. cancel one running task ---------------------------------------------
submit ops '[{"task_id": "k1", "type": "hang", "timeout": 60},
  {"task_id": "k1-next", "type": "echo", "depends_on": ["k1"]}]'
wait_until 10 marked '^start k1 1$' || fail "k1 never started"
wait_state k1 running 5
ctl cancel k1 >"$WORK/cancel.out" 2>&1 || fail "cancel k1 refused: $(cat "$WORK/cancel.out")"
wait_until 5 marked '^term k1 1$' || fail "k1's command was not stopped on its agent"
wait_state k1 cancelled 5
wait_state k1-next skipped 5
ctl --json show k1 | jcheck 'j["attempt"] == 1 and j["history"][-1]["to"] == "cancelled"' "k1"
sub_wait tasks "^$P/tasks/k1/status .*\"state\":\"cancelled\"" 1 5
wait_until 10 grep -q 'RESULT-STALE task=k1 ' "$WORK/coord.log" ||
	fail "the agent's report of the cancelled k1 was not discarded"
[ "$(state_of k1)" = cancelled ] || fail "k1 moved after its agent's late report"
pass "cancel of a running task: stopped on its agent, cancelled, its dependent skipped"

st=0
ctl --json cancel no-such-task >"$WORK/cancel.out" 2>&1 || st=$?
[ "$st" = 1 ] && grep -q '"error":"unknown_task"' "$WORK/cancel.out" ||
	fail "cancel of an unknown task: exit $st, $(cat "$WORK/cancel.out")"
st=0
ctl cancel --workflow no-such-wf >"$WORK/cancel.out" 2>&1 || st=$?
[ "$st" = 1 ] && grep -q 'unknown_workflow' "$WORK/cancel.out" ||
	fail "cancel of an unknown workflow: exit $st, $(cat "$WORK/cancel.out")"
st=0
ctl retry k1 >"$WORK/retry.out" 2>&1 || st=$?
[ "$st" = 1 ] && grep -q 'not_dead' "$WORK/retry.out" ||
	fail "retry of a cancelled task: exit $st, $(cat "$WORK/retry.out")"
pass "cancel of unknown ids -> unknown_task / unknown_workflow; a cancelled task is not retried"

# ---- 7. cancel a whole workflow ----------------------------------------------
submit ops '{"task_id": "job", "type": "collaborative_task", "steps": [
  {"task_id": "a", "type": "hang", "timeout": 60},
  {"task_id": "b", "type": "hang", "timeout": 60},
  {"task_id": "c", "type": "echo", "depends_on": ["a", "b"]},
  {"task_id": "d", "type": "echo", "depends_on": ["c"], "run_if": "all_done"}]}'
wait_until 10 marked '^start job:a 1$' || fail "job:a never started"
wait_until 10 marked '^start job:b 1$' || fail "job:b never started"
ctl cancel --workflow job >"$WORK/cancel.out" 2>&1 ||
	fail "cancel --workflow refused: $(cat "$WORK/cancel.out")"
wait_until 5 marked '^term job:a 1$' || fail "job:a was not stopped on its agent"
wait_until 5 marked '^term job:b 1$' || fail "job:b was not stopped on its agent"
sub_wait wf "^$P/workflows/job/status .*\"state\":\"cancelled\"" 1 10
last_msg wf "$P/workflows/job/status" |
	jcheck 'j["counts"] == {"cancelled": 4} and j["total"] == 4 and j["percent"] == 100' "job status"
for s in a b c d; do
	[ "$(state_of "job:$s")" = cancelled ] || fail "job:$s is $(state_of "job:$s"), not cancelled"
done
# c and d never went to an agent, and the all_done step d did not run
for s in c d; do
	ctl --json show "job:$s" |
		jcheck 'not [e for e in j["history"] if e["to"] in ("dispatched", "running", "succeeded")]' "job:$s"
done
# the agents' late reports of a and b arrive, and change nothing
wait_until 10 grep -q 'RESULT-STALE task=job:a ' "$WORK/coord.log" || fail "no late report of job:a"
wait_until 10 grep -q 'RESULT-STALE task=job:b ' "$WORK/coord.log" || fail "no late report of job:b"
last_msg wf "$P/workflows/job/status" | jcheck 'j["state"] == "cancelled"' "job after reports"
pass "cancel --workflow: running steps stopped on the agent, all 4 steps and the workflow cancelled"

# ---- 9. priorities ------------------------------------------------------------
agent_start p1 --slots 1 --caps sleep
# Keep the slot busy while the batch arrives, so that all of it is ready at once.
submit prio '{"task_id": "blocker", "type": "sleep", "payload": {"ms": 1000}}'
wait_state blocker running 10
submit prio '[
  {"task_id": "lo-1", "type": "sleep", "priority": 1, "payload": {"ms": 20}},
  {"task_id": "hi-1", "type": "sleep", "priority": 10, "payload": {"ms": 20}},
  {"task_id": "mid-1", "type": "sleep", "payload": {"ms": 20}},
  {"task_id": "lo-2", "type": "sleep", "priority": 1, "payload": {"ms": 20}},
  {"task_id": "hi-2", "type": "sleep", "priority": 10, "payload": {"ms": 20}},
  {"task_id": "lo-3", "type": "sleep", "priority": 1, "payload": {"ms": 20}},
  {"task_id": "hi-3", "type": "sleep", "priority": 10, "payload": {"ms": 20}}]'
wait_state lo-1 ready 5
[ "$(state_of blocker)" = running ] || fail "the blocker ended before the batch was in (raise its ms)"
for t in lo-1 lo-2 lo-3 mid-1 hi-1 hi-2 hi-3; do
	wait_state "$t" succeeded 15
done
order=$(for t in blocker lo-1 hi-1 mid-1 lo-2 hi-2 lo-3 hi-3; do
	ctl --json show "$t" | jpy '"%d %s" % ([e["ts"] for e in j["history"] if e["to"] == "dispatched"][0], j["task_id"])'
done | sort -n -k1,1 -s | cut -d' ' -f2 | tr '\n' ' ')
# the running-status stream agrees with the history
stream=$(grep -oE "^$P/tasks/[a-z0-9-]+/status .*\"state\":\"running\"" "$WORK/tasks.log" |
	sed -E "s|^$P/tasks/([a-z0-9-]+)/.*|\1|" | grep -E '^(blocker|lo-|hi-|mid-)' | tr '\n' ' ')
want="blocker hi-1 hi-2 hi-3 mid-1 lo-1 lo-2 lo-3 "
[ "$order" = "$want" ] || fail "dispatch order: $order, want $want"
[ "$stream" = "$want" ] || fail "running statuses in order: $stream, want $want"
pass "one slot: priority 10 first, then 5, then 1, each in submission order"

# ---- 10. per-type concurrency ----------------------------------------------------
agent_start w1 --slots 2 --exec solo="sleep 0.3" --exec duo="sleep 0.3"
agent_start w2 --slots 2 --exec solo="sleep 0.3" --exec duo="sleep 0.3"
submit conc '[{"task_id": "solo-1", "type": "solo"}, {"task_id": "solo-2", "type": "solo"},
  {"task_id": "solo-3", "type": "solo"}, {"task_id": "solo-4", "type": "solo"},
  {"task_id": "duo-1", "type": "duo"}, {"task_id": "duo-2", "type": "duo"},
  {"task_id": "duo-3", "type": "duo"}, {"task_id": "duo-4", "type": "duo"}]'
max_solo=0
for i in $(seq 40); do
	n=$(ctl --json tasks --state running | jpy 'len([t for t in j if t["type"] == "solo"])')
	[ "$n" -gt "$max_solo" ] && max_solo=$n
	[ "$(ctl --json tasks | jpy 'all(t["state"] == "succeeded" for t in j if t["type"] in ("solo", "duo"))')" = true ] && break
	sleep 0.1
done
[ "$max_solo" = 1 ] || fail "$max_solo solo tasks were seen running at once"
for i in 1 2 3 4; do
	wait_state "solo-$i" succeeded 15
	wait_state "duo-$i" succeeded 15
done
# Intervals from dispatch to success, from history: solo ones never overlap,
# duo ones (no limit, 4 free slots) do, which shows the check can see overlap.
for t in solo-1 solo-2 solo-3 solo-4 duo-1 duo-2 duo-3 duo-4; do
	ctl --json show "$t"
done >"$WORK/conc.json"
python3 - "$WORK/conc.json" <<'EOF' || fail "per-type concurrency"
import json, sys
iv = {}
agents = {}
for line in open(sys.argv[1]):
    j = json.loads(line)
    h = j["history"]
    start = [e["ts"] for e in h if e["to"] == "dispatched"][-1]
    end = [e["ts"] for e in h if e["to"] == "succeeded"][-1]
    iv.setdefault(j["type"], []).append((start, end))
    agents.setdefault(j["type"], set()).add(j["agent"])
def overlaps(v):
    v = sorted(v)
    return sum(1 for a, b in zip(v, v[1:]) if b[0] < a[1])
print("solo on", sorted(agents["solo"]), "overlaps", overlaps(iv["solo"]),
      "; duo overlaps", overlaps(iv["duo"]))
if overlaps(iv["solo"]):
    sys.exit("solo intervals overlap: %s" % sorted(iv["solo"]))
if not overlaps(iv["duo"]):
    sys.exit("duo never ran in parallel: %s" % sorted(iv["duo"]))
EOF
pass "[concurrency] solo = 1: one at a time across two agents; an unlimited type runs in parallel"

# ---- 11. quota per source ----------------------------------------------------------
batch() { # batch PREFIX N: N tasks of a type nobody runs
	local i sep=
	printf '['
	for ((i = 1; i <= $2; i++)); do
		printf '%s{"task_id": "%s-%d", "type": "nobody"}' "$sep" "$1" "$i"
		sep=,
	done
	printf ']'
}
submit quota "$(batch q 10)"
wait_state q-10 ready 10
submit quota "$(batch over 3)"
sub_wait rejected "^$P/rejected/quota .*\"error\":\"quota_exceeded\"" 1 10
submit quota '{"task_id": "wf-over", "type": "collaborative_task", "steps": [
  {"task_id": "x", "type": "nobody"}, {"task_id": "y", "type": "nobody"},
  {"task_id": "z", "type": "nobody"}]}'
sub_wait rejected "^$P/rejected/quota .*\"error\":\"quota_exceeded\"" 2 10
for t in over-1 over-2 over-3 wf-over:x; do
	[ "$(state_of "$t")" = none ] || fail "$t of a refused submission exists"
done
submit quota "$(batch fits 2)" # 12: exactly the limit
wait_state fits-2 ready 10
# another source has its own count
submit other "$(batch other 5)"
wait_state other-5 ready 10
submit quota '{"task_id": "one-more", "type": "nobody"}'
sub_wait rejected "^$P/rejected/quota .*\"error\":\"quota_exceeded\"" 3 10
[ "$(state_of one-more)" = none ] || fail "one-more was accepted over the quota"
[ "$(sub_count rejected "^$P/rejected/other ")" = 0 ] || fail "source other was refused"
# a final task no longer counts
ctl cancel q-1 >/dev/null 2>&1 || fail "cancel q-1"
submit quota '{"task_id": "one-more", "type": "nobody"}'
wait_state one-more ready 10
pass "max_pending_per_source: a crossing batch or workflow is refused whole; room comes back"
