#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_workflows.sh - workflow semantics as a user sees them (DESIGN 3.2,
# 3.4, 5): run_if and compensation steps (the saga pattern), `when`
# branches, skipped propagating to dependents, the workflow status topic
# (counts, percent, final state), and retry of a failed workflow, which
# brings its dead steps back and judges the steps skipped because of them
# again. The saga workflow is the one shown in docs/workflows.md.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/coord_lib.sh"
e2e_init

coord_start <<EOF
[scheduler]
jitter = false
EOF
agent_start a1 --slots 4 --caps echo,sleep \
	--exec charge="test -f '$WORK/card-ok'" \
	--exec inspect="echo '{\"verdict\": \"ok\", \"score\": 7}'"
sub_start wf "$P/workflows/#"
sub_start results "$P/tasks/+/result"

# state of every step of workflow W as "step=state ..." in step id order
steps_of() {
	ctl --json tasks --workflow "$1" |
		jpy '" ".join("%s=%s" % x for x in sorted((t["task_id"].split(":", 1)[1], t["state"]) for t in j))'
}
# the last status of workflow W, once it is in STATE
wf_final() {
	sub_wait wf "^$P/workflows/$1/status .*\"state\":\"$2\"" 1 "${3:-15}"
	last_msg wf "$P/workflows/$1/status"
}
result_of() {
	last_msg results "$P/tasks/$1/result"
}

# ---- 5. compensation: a payment that fails is refunded -----------------------
# The saga of docs/workflows.md (keep the two identical).
saga='{"task_id": "order-42", "type": "collaborative_task",
 "description": "Reserve, charge, ship; refund and release if the charge fails",
 "retry_policy": {"max_attempts": 2, "backoff": "fixed", "initial_delay": 0.2},
 "steps": [
  {"task_id": "reserve", "type": "echo", "payload": {"item": "valve-7", "qty": 2}},
  {"task_id": "charge", "type": "charge", "depends_on": ["reserve"]},
  {"task_id": "ship", "type": "echo", "depends_on": ["charge"]},
  {"task_id": "notify", "type": "echo", "depends_on": ["ship"]},
  {"task_id": "refund", "type": "echo", "depends_on": ["charge"],
   "run_if": "any_failed"},
  {"task_id": "release", "type": "echo", "depends_on": ["reserve", "charge"],
   "run_if": "any_failed"},
  {"task_id": "audit", "type": "echo", "depends_on": ["ship", "refund"],
   "run_if": "all_done"}
 ]}'
python3 - "$saga" "$EC_SRC/docs/workflows.md" <<'EOF' || fail "docs/workflows.md does not show the tested saga"
import json, re, sys
tested = json.loads(sys.argv[1])
doc = open(sys.argv[2]).read()
blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", doc, re.S)]
sys.exit(0 if tested in blocks else "not found")
EOF
submit shop "$saga"
wf_final order-42 failed >"$WORK/wf1.json"
want="audit=succeeded charge=dead notify=skipped refund=succeeded release=succeeded reserve=succeeded ship=skipped"
got=$(steps_of order-42)
[ "$got" = "$want" ] || fail "order-42 steps: $got, want $want"
ctl --json show order-42:charge |
	jcheck 'j["attempt"] == 2 and j["error"] == "exit status 1"' "charge dead after the workflow's 2 attempts"
# A compensation step gets the results of the upstreams that succeeded.
sub_wait results "^$P/tasks/order-42:release/result " 1 5
result_of order-42:release |
	jcheck 'j["result"]["inputs"] == {"reserve": {"payload": {"item": "valve-7", "qty": 2}, "inputs": {}}}' \
		"release inputs"
pass "upstream dead: the any_failed compensations run, all_done runs, the rest is skipped"

# ---- 6. the workflow status of a failed workflow ------------------------------
jcheck 'j["workflow"] == "order-42" and j["total"] == 7 and j["percent"] == 100 and
	j["counts"] == {"succeeded": 4, "dead": 1, "skipped": 2}' "order-42 final status" <"$WORK/wf1.json"
python3 - "$WORK/wf.log" order-42 <<'EOF' || fail "order-42 progress"
import json, sys
msgs = [json.loads(l.split(" ", 1)[1]) for l in open(sys.argv[1])
        if l.startswith("edgecoord/workflows/%s/status " % sys.argv[2])]
pct = [m["percent"] for m in msgs]
states = [m["state"] for m in msgs]
print("order-42 progress:", list(zip(states, pct)))
if any(b < a for a, b in zip(pct, pct[1:])):
    sys.exit("percent went down")
if not any(s == "running" and 0 < p < 100 for s, p in zip(states, pct)):
    sys.exit("no running status with partial progress")
if states[-1] != "failed" or set(states[:-1]) != {"running"}:
    sys.exit("states %s, want running ... failed" % states)
for m in msgs:
    done = sum(n for s, n in m["counts"].items() if s in ("succeeded", "dead", "cancelled", "skipped"))
    if sum(m["counts"].values()) != m["total"] or m["percent"] != done * 100 // m["total"]:
        sys.exit("inconsistent status %s" % m)
EOF
pass "workflow status: counts, percent that only grows, final state failed"

# ---- 8. retry of the failed workflow ------------------------------------------
touch "$WORK/card-ok"
ctl retry --workflow order-42 >"$WORK/retry.out" 2>&1 ||
	fail "retry --workflow refused: $(cat "$WORK/retry.out")"
wait_state order-42:notify succeeded 15
sub_wait wf "^$P/workflows/order-42/status .*\"state\":\"succeeded\"" 1 10
last_msg wf "$P/workflows/order-42/status" |
	jcheck 'j["state"] == "succeeded" and j["counts"] == {"succeeded": 7} and j["percent"] == 100' \
		"order-42 after retry"
ctl --json show order-42:charge | jcheck 'j["attempt"] == 1' "charge's attempts were reset"
# the steps skipped because of charge ran, with charge's result as input
sub_wait results "^$P/tasks/order-42:ship/result " 1 5
result_of order-42:ship | jcheck 'j["ok"] and j["result"]["inputs"] == {"charge": None}' "ship inputs"
sub_wait results "^$P/tasks/order-42:charge/result .*\"ok\":true" 1 5
# Nothing is dead any more: a second retry is refused.
st=0
ctl --json retry --workflow order-42 >"$WORK/retry.out" 2>&1 || st=$?
[ "$st" = 1 ] && grep -q '"error":"not_dead"' "$WORK/retry.out" ||
	fail "retry of a succeeded workflow: exit $st, $(cat "$WORK/retry.out")"
st=0
ctl retry --workflow no-such-wf >"$WORK/retry.out" 2>&1 || st=$?
[ "$st" = 1 ] && grep -q 'unknown_workflow' "$WORK/retry.out" ||
	fail "retry of an unknown workflow: exit $st, $(cat "$WORK/retry.out")"
pass "retry --workflow: the dead step succeeds, skipped steps run, the workflow succeeds"

# ---- 5. all upstreams succeeded: the compensation is skipped -----------------
submit shop '{"task_id": "order-43", "type": "collaborative_task", "steps": [
  {"task_id": "charge", "type": "charge"},
  {"task_id": "refund", "type": "echo", "depends_on": ["charge"], "run_if": "any_failed"},
  {"task_id": "after-refund", "type": "echo", "depends_on": ["refund"]},
  {"task_id": "audit", "type": "echo", "depends_on": ["refund"], "run_if": "all_done"}]}'
wf_final order-43 succeeded |
	jcheck 'j["counts"] == {"succeeded": 2, "skipped": 2} and j["percent"] == 100' "order-43 status"
got=$(steps_of order-43)
want="after-refund=skipped audit=succeeded charge=succeeded refund=skipped"
[ "$got" = "$want" ] || fail "order-43 steps: $got, want $want"
pass "no upstream dead: the compensation is skipped, and so is its dependent; all_done runs"

# ---- 5. when: branches on a field of the upstream's result -------------------
submit line '{"task_id": "part-9", "type": "collaborative_task", "steps": [
  {"task_id": "inspect", "type": "inspect"},
  {"task_id": "accept", "type": "echo", "depends_on": ["inspect"],
   "when": {"task": "inspect", "field": "verdict", "equals": "ok"}},
  {"task_id": "rework", "type": "echo", "depends_on": ["inspect"],
   "when": {"task": "inspect", "field": "verdict", "equals": "bad"}},
  {"task_id": "rework-report", "type": "echo", "depends_on": ["rework"]},
  {"task_id": "rework-log", "type": "echo", "depends_on": ["rework"], "run_if": "all_done"},
  {"task_id": "grade-a", "type": "echo", "depends_on": ["inspect"],
   "when": {"task": "inspect", "field": "score", "equals": 7}},
  {"task_id": "no-field", "type": "echo", "depends_on": ["inspect"],
   "when": {"task": "inspect", "field": "colour", "equals": "ok"}}]}'
wf_final part-9 succeeded >"$WORK/wf3.json"
got=$(steps_of part-9)
want="accept=succeeded grade-a=succeeded inspect=succeeded no-field=skipped rework=skipped rework-log=succeeded rework-report=skipped"
[ "$got" = "$want" ] || fail "part-9 steps: $got, want $want"
sub_wait results "^$P/tasks/part-9:accept/result " 1 5
result_of part-9:accept |
	jcheck 'j["result"]["inputs"] == {"inspect": {"verdict": "ok", "score": 7}}' "accept inputs"
jcheck 'j["counts"] == {"succeeded": 4, "skipped": 3}' "part-9 status" <"$WORK/wf3.json"
pass "when: the matching branch runs, the other is skipped with its dependents"

# ---- 6. the tree view names every step with its state --------------------------
ctl workflow part-9 >"$WORK/tree.txt" || fail "edgecoordctl workflow"
for s in inspect accept rework rework-report grade-a no-field; do
	grep -q "$s" "$WORK/tree.txt" || fail "edgecoordctl workflow part-9 does not show $s"
done
grep -q skipped "$WORK/tree.txt" || fail "edgecoordctl workflow part-9 shows no state"
pass "edgecoordctl workflow shows the steps"
