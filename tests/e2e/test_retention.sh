#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_retention.sh - coordinator.keep_final_s: finished tasks and whole
# finished workflows leave the store after that long, unfinished ones stay,
# and a deleted id can be submitted again as a new task.
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/fleet_lib.sh"

FLEET_EXTRA_CONF=$'[coordinator]\nkeep_final_s = 2' fleet_init 1000 3
issue a1
start_mosquitto
start_coord
sub_start res 'edgecoord/tasks/+/result' -q 1
start_agent a1 --slots 2
wait_up a1

pub edgecoord/submit/e2e '{"task_id":"done1","type":"echo","payload":1}' -q 1
pub edgecoord/submit/e2e '{"task_id":"wf1","type":"collaborative_task","steps":[{"task_id":"s1","type":"echo"},{"task_id":"s2","type":"echo","depends_on":["s1"]}]}' -q 1
# a long one: still running when the others are deleted
pub edgecoord/submit/e2e '{"task_id":"long1","type":"sleep","payload":{"ms":8000}}' -q 1
sub_wait res '^edgecoord/tasks/done1/result ' 1 10
sub_wait res '^edgecoord/tasks/wf1:s2/result ' 1 10
task_in done1 succeeded || fail "done1 is not succeeded"

# Deleted between 2 s and 2 s + one period (2 s) after they ended.
gone() { ! ctl show "$1" >/dev/null 2>&1; }
wait_until 8 gone done1 || fail "done1 is still stored"
wait_until 4 gone wf1:s1 || fail "wf1:s1 is still stored"
gone wf1:s2 || fail "wf1:s2 is still stored"
! ctl workflow wf1 >/dev/null 2>&1 || fail "workflow wf1 is still stored"
task_in long1 running || fail "long1 is not running any more: $(show_field long1 state)"
coord_wait 'PRUNE deleted [0-9]+ task' 1 5

# The id is free again: a new task, not a duplicate.
pub edgecoord/submit/e2e '{"task_id":"done1","type":"echo","payload":2}' -q 1
sub_wait res '^edgecoord/tasks/done1/result .*"payload":2\}\}$' 1 10
bg_alive coord || fail "the coordinator died"
pass "finished tasks and workflows left the store after keep_final_s; long1 stayed; done1 ran again"
