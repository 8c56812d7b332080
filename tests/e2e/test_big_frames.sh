#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_big_frames.sh - work frames near and over agents.max_frame (64 KiB):
#
#  1. eight tasks of 60 KB payload at once to one agent of eight slots: the
#     turn's frames are corked and together pass the session's buffer cap
#     (4 x max_frame); the link must write what it can before judging the
#     agent slow. Before, the healthy agent was closed as AGENT-SLOW, its
#     tasks counted as lost, and the same happened after each reconnect;
#  2. a step whose payload plus its upstream's result is over max_frame can
#     never be sent: it is dead at once, saying so, and the agent's slot
#     stays free. Before, the frame was never sent, the task sat dispatched
#     until its attempt timed out, and the timeout's cancel held the slot of
#     a lease the agent never knew.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/coord_lib.sh"
e2e_init

coord_start <<EOF
[scheduler]
jitter = false
EOF
agent_start a1 --slots 8 --caps echo,sleep

# 1. a corked turn over the buffer cap
python3 -c 'import json; print(json.dumps([{"task_id": "t%d" % i, "type": "sleep",
  "payload": {"ms": 200, "pad": "x" * 60000}} for i in range(8)]))' >"$WORK/batch.json"
mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -t "$P/submit/s1" -f "$WORK/batch.json" -q 1 ||
	fail "publish the batch"
for i in 0 1 2 3 4 5 6 7; do
	wait_state "t$i" succeeded 20
done
! grep -E "AGENT-SLOW|TASK-LOST" "$WORK/coord.log" || fail "a healthy agent was cut off"
[ "$(grep -c "AGENT-UP agent=a1" "$WORK/coord.log")" = 1 ] || fail "a1 reconnected"

# 2. payload + inputs over max_frame
A=$(python3 -c 'print("a" * 40000)')
B=$(python3 -c 'print("b" * 30000)')
submit s1 "{\"task_id\": \"wf\", \"type\": \"collaborative_task\", \"steps\": [
  {\"task_id\": \"a\", \"type\": \"echo\", \"payload\": {\"d\": \"$A\"}},
  {\"task_id\": \"b\", \"type\": \"echo\", \"depends_on\": [\"a\"], \"timeout\": 30,
   \"payload\": {\"d\": \"$B\"}}]}"
wait_state wf:a succeeded 10
wait_state wf:b dead 5
ctl --json show wf:b | jpy 'j["error"]' | grep -q "over agents.max_frame" ||
	fail "wf:b: no reason given: $(ctl --json show wf:b)"
grep -q "TASK-DEAD wf:b: work of about" "$WORK/coord.log" || fail "no TASK-DEAD line"
submit s1 '{"task_id": "c", "type": "echo"}'
wait_state c succeeded 10
pass "a corked turn over the cap is written, not cut off; work over max_frame is dead at once"
