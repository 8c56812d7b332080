#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_slot_refusal.sh - a cancelled job keeps its slot until its agent
# answers it (docs/protocol.md, Work; docs/scheduling.md): one agent with one
# slot, a hanging job on it and a task with max_attempts 1 waiting behind it.
#
#  1. operator cancel: the next task is not sent to the agent while the
#     cancelled job still runs there (the agent would refuse it with "no
#     free slot" and the refusal would cost its only attempt); it starts on
#     the same agent once the cancelled job is stopped and its late result
#     discarded;
#  2. the attempt timeout: the same, when the coordinator's timer ends the
#     running job (the agent is frozen meanwhile, so that its own timer for
#     the job cannot be first; heartbeat_misses leaves it online).
#
# Before the fix the coordinator freed the slot as soon as it cancelled, and
# both waiting tasks were dead after one attempt without having run.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/coord_lib.sh"
e2e_init

coord_start <<EOF
[agents]
heartbeat_misses = 20
[scheduler]
jitter = false
EOF
make_hang
agent_start a1 --slots 1 --exec hang="sh '$WORK/hang.sh'"

# Line number in marks.log of the first line matching REGEX (0: none).
mark_line() {
	grep -nE -- "$1" "$WORK/marks.log" | head -n 1 | cut -d: -f1 || true
}

# Asserts that task ID runs on a1, on its first attempt, after WAITED's
# command was stopped, and that a1 refused nothing.
#   runs_after ID WAITED
runs_after() {
	wait_until 10 marked "^start $1 1$" ||
		fail "$1 never started: $(ctl --json show "$1" 2>&1)"
	wait_state "$1" running 5
	ctl --json show "$1" |
		jcheck 'j["agent"] == "a1" and j["attempt"] == 1 and j["error"] is None' "$1"
	local stop start
	stop=$(mark_line "^term $2 1$")
	start=$(mark_line "^start $1 1$")
	[ -n "$stop" ] && [ "$stop" -lt "$start" ] ||
		fail "$1 started before $2 was stopped: $(cat "$WORK/marks.log")"
	! grep -q 'no free slot' "$WORK/a1.log" || fail "a1 refused work: no free slot"
	! grep -q "TASK-DEAD $1 " "$WORK/coord.log" || fail "$1 is dead"
}

# ---- 1. operator cancel -----------------------------------------------------
submit s1 '{"task_id": "t1", "type": "hang", "priority": 10}'
wait_until 10 marked '^start t1 1$' || fail "t1 did not start"
submit s1 '{"task_id": "t2", "type": "hang", "retry_policy": {"max_attempts": 1}}'
wait_state t2 ready 10
ctl cancel t1 >"$WORK/cancel.out" 2>&1 || fail "cancel t1: $(cat "$WORK/cancel.out")"
wait_state t1 cancelled 5
wait_until 10 grep -q 'RESULT-STALE task=t1 ' "$WORK/coord.log" ||
	fail "the agent's report of the cancelled t1 was not discarded"
runs_after t2 t1
pass "after a cancel, the next task waits for the agent's answer and runs on its slot"

# ---- 2. attempt timeout -----------------------------------------------------
ctl cancel t2 >"$WORK/cancel.out" 2>&1 || fail "cancel t2: $(cat "$WORK/cancel.out")"
wait_until 10 grep -q 'RESULT-STALE task=t2 ' "$WORK/coord.log" ||
	fail "the agent's report of the cancelled t2 was not discarded"
# One batch: t3 (priority 10) takes the slot, t4 waits.
submit s1 '[{"task_id": "t3", "type": "hang", "priority": 10, "timeout": 2,
   "retry_policy": {"max_attempts": 1}},
  {"task_id": "t4", "type": "hang", "priority": 1, "retry_policy": {"max_attempts": 1}}]'
wait_until 10 marked '^start t3 1$' || fail "t3 did not start"
kill -STOP "${BG_PIDS[a1]}"
ok=0
wait_until 10 grep -q 'TASK-TIMEOUT t3 attempt 1 on a1' "$WORK/coord.log" || ok=$?
sleep 0.5 # what the coordinator sends now waits in the frozen agent's socket
kill -CONT "${BG_PIDS[a1]}"
[ "$ok" = 0 ] || fail "t3 did not time out on the coordinator's timer"
ctl --json show t3 | jcheck 'j["state"] == "dead" and j["error"] == "timeout"' "t3"
wait_until 10 marked '^term t3 1$' || fail "t3 was not stopped on its agent"
wait_until 10 grep -q 'RESULT-STALE task=t3 ' "$WORK/coord.log" ||
	fail "the agent's report of the timed-out t3 was not discarded"
runs_after t4 t3
pass "after a timeout, the next task waits for the agent's answer and runs on its slot"
