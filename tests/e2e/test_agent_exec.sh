#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_agent_exec.sh - the reference agent's --exec contract (DESIGN 1) seen
# from the topics: stdout that is JSON is the result, other stdout a string,
# empty stdout null, a non-zero exit a failure carrying stderr's tail; and on
# a timeout the whole process group gets SIGTERM, then SIGKILL after 2 s,
# even when the group's leader died of the SIGTERM and a member ignores it,
# or the leader had exited and a member it left in the background holds its
# stdout.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/coord_lib.sh"
e2e_init

coord_start <<'CONF'
[scheduler]
max_attempts = 1
CONF
sub_start res "$P/tasks/+/result" -q 1
# A member of the group that ignores SIGTERM, under a leader that does not.
stubborn='(trap "" TERM; exec sleep 47) & echo $! > '"$WORK/member.pid"'; echo $! >> '"$WORK/pids"'; sleep 40'
agent_start a1 --slots 4 \
	--exec json='echo "{\"n\": 7}"' \
	--exec text='echo plain words' \
	--exec quiet='true' \
	--exec broken='echo "disk on fire" >&2; exit 3' \
	--exec stubborn="$stubborn" \
	--exec bg='sleep 57 & echo $! > '"$WORK/bg.pid"'; echo 1' 

submit t '[{"task_id":"j","type":"json"},{"task_id":"s","type":"text"},
           {"task_id":"q","type":"quiet"},{"task_id":"b","type":"broken"}]'
for id in j s q; do wait_state "$id" succeeded; done
wait_state b dead
sub_wait res "^$P/tasks/b/result " 1 10
[ "$(last_msg res "$P/tasks/j/result" | jpy 'j["result"]')" = '{"n":7}' ] ||
	fail "JSON stdout is not the result: $(last_msg res "$P/tasks/j/result")"
[ "$(last_msg res "$P/tasks/s/result" | jpy 'j["result"]')" = 'plain words' ] ||
	fail "text stdout is not a string result: $(last_msg res "$P/tasks/s/result")"
[ "$(last_msg res "$P/tasks/q/result" | jpy 'j["result"]')" = 'null' ] ||
	fail "empty stdout is not null: $(last_msg res "$P/tasks/q/result")"
last_msg res "$P/tasks/b/result" | jcheck 'j["ok"] is False and j["error"] == "disk on fire"' \
	"a failing command's result"
pass "stdout as JSON, string or null; stderr's tail as the error"

# edgecoordctl agents reads what the fleet last published, from the store.
agents_counted() {
	ctl --json agents | jpy 'str(len(j) == 1 and j[0]["agent"] == "a1" and
		j[0]["state"] == "online" and j[0]["succeeded"] == 3 and j[0]["failed"] == 1 and
		"stubborn" in j[0]["caps"] and j[0]["slots"] == 4)' | grep -qx True
}
wait_until 5 agents_counted || fail "edgecoordctl agents: $(ctl --json agents)"
ctl agents | grep -Eq '^a1 +online +4 ' || fail "edgecoordctl agents (table): $(ctl agents)"
pass "edgecoordctl agents lists the agent with its state and outcome counts"

submit t '{"task_id":"g","type":"stubborn","timeout":1}'
wait_state g dead 15
ctl --json show g | jcheck 'j["error"] == "timeout"' "timed-out task"
member=$(cat "$WORK/member.pid") || fail "the stubborn command never started its member"
member_gone() { ! kill -0 "$member" 2>/dev/null; }
# SIGTERM at 1 s, SIGKILL for the group 2 s later: gone well within 6 s.
wait_until 6 member_gone ||
	fail "a group member that ignores SIGTERM survived the SIGKILL grace"
pass "after a timeout the whole process group is killed, stubborn members too"

# The shell exits at once; the sleep it left holds stdout open, so the job is
# not over: its timeout still applies, to the whole group.
submit t '{"task_id":"bgt","type":"bg","timeout":1}'
wait_state bgt dead 15
ctl --json show bgt | jcheck 'j["error"] == "timeout"' "timed-out background task"
bg=$(cat "$WORK/bg.pid") || fail "the bg command never started its child"
bg_gone() { ! kill -0 "$bg" 2>/dev/null; }
wait_until 6 bg_gone || fail "a child the shell left running survived the job's timeout"
pass "a timeout also stops what an exited command left running in its group"
