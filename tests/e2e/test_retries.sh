#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_retries.sh - retries, dead letters, attempt timeouts and deadlines as a
# user sees them (DESIGN 3.1, 3.4, 5): a real mosquitto, the daemon and the
# reference agent, short per-task retry policies.
#
#  1. a task failing twice then succeeding ends on attempt 3; its history
#     shows failed -> retry_wait -> ready with the exponential gaps;
#  2. a task that always fails is dead after max_attempts with its last
#     error, listed by `edgecoordctl dead`, with an ok:false result;
#     `edgecoordctl retry` brings it back with attempts reset and it
#     succeeds; retry of a task that is not dead, or unknown, is refused;
#  3. a hung task is failed by the coordinator's own timer at its timeout
#     (the agent is frozen meanwhile), its late result is discarded, it is
#     retried and dead with "timeout" after max_attempts;
#  4. deadlines: a task no agent can run is dead with deadline_exceeded
#     soon after its deadline; a running task past its deadline is dead and
#     cancelled on its agent;
#  5. the fleet summary's deadline_success_rate: tasks of a refused
#     submission do not count, and the summary published with (or after) a
#     task's ending already counts it.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/coord_lib.sh"
e2e_init

coord_start <<EOF
[mqtt]
status_events = all
[scheduler]
jitter = false
EOF
make_hang
agent_start a1 --slots 4 --caps echo,sleep,fail \
	--exec flaky="test -f '$WORK/flag'" --exec hang="sh '$WORK/hang.sh'"
sub_start tasks "$P/tasks/#"

# ---- 1. fails twice, then succeeds; the backoff is visible in history -------
submit s1 '{"task_id": "r1", "type": "fail", "payload": {"fail_attempts": 2},
  "retry_policy": {"max_attempts": 5, "backoff": "exponential",
                   "initial_delay": 0.4, "max_delay": 10, "jitter": false}}'
wait_state r1 succeeded 20
ctl --json show r1 >"$WORK/r1.json" || fail "show r1"
jcheck 'j["attempt"] == 3 and j["result"] == {"attempt": 3}' "r1 result" <"$WORK/r1.json"
sub_wait tasks "^$P/tasks/r1/result " 1 5
last_msg tasks "$P/tasks/r1/result" |
	jcheck 'j["ok"] is True and j["attempt"] == 3 and j["result"] == {"attempt": 3} and j["agent"] == "a1"' \
		"r1 result message"
# The transitions in order, and the two waits: >= 0.4 s then >= 0.8 s
# (exponential), each well under the next step (no jitter, so no shorter).
python3 - "$WORK/r1.json" <<'EOF' || fail "r1 history does not show the backoff"
import json, sys
h = json.load(open(sys.argv[1]))["history"]
seq = [e["to"] for e in h]
want = ["accepted", "ready", "dispatched", "failed", "retry_wait", "ready",
        "dispatched", "failed", "retry_wait", "ready", "dispatched", "succeeded"]
# running appears when the agent reports started; the fail type does not
seq = [s for s in seq if s != "running"]
if seq[-len(want):] != want:
    sys.exit("transitions: %s" % seq)
waits = []
for i, e in enumerate(h):
    if e["to"] == "retry_wait":
        nxt = next(x for x in h[i + 1:] if x["to"] == "ready")
        waits.append((e["attempt"], nxt["ts"] - e["ts"]))
    if e["to"] == "failed" and e["detail"] != "requested failure":
        sys.exit("failure detail %r" % e["detail"])
print("r1 waits (attempt, ms):", waits)
if [a for a, _ in waits] != [1, 2]:
    sys.exit("retry waits after attempts %s" % waits)
(_, w1), (_, w2) = waits
if not (400 <= w1 <= 1900 and 800 <= w2 <= 2300 and w2 >= w1 + 300):
    sys.exit("waits %d ms and %d ms, want about 400 and 800" % (w1, w2))
EOF
pass "a task failing twice succeeds on attempt 3 after 0.4 s and 0.8 s waits"

# ---- 2. always fails: dead, dead letters, retry brings it back ---------------
submit s1 '{"task_id": "r2", "type": "flaky",
  "retry_policy": {"max_attempts": 2, "backoff": "fixed", "initial_delay": 0.1}}'
wait_state r2 dead 15
ctl --json show r2 >"$WORK/r2.json" || fail "show r2"
jcheck 'j["attempt"] == 2 and j["error"] == "exit status 1"' "dead r2" <"$WORK/r2.json"
jcheck 'len([e for e in j["history"] if e["to"] == "failed"]) == 2' "r2 failures" <"$WORK/r2.json"
sub_wait tasks "^$P/tasks/r2/result " 1 5
last_msg tasks "$P/tasks/r2/result" |
	jcheck 'j["ok"] is False and j["error"] == "exit status 1" and j["attempt"] == 2' \
		"r2 result message"
sub_wait tasks "^$P/tasks/r2/status .*\"state\":\"dead\"" 1 5
ctl --json dead >"$WORK/dead.json" || fail "edgecoordctl --json dead"
jcheck '[(d["state"], d.get("error")) for d in j if d["task_id"] == "r2"] == [("dead", "exit status 1")]' \
	"r2 in the dead letters" <"$WORK/dead.json"
jcheck '"r1" not in [d["task_id"] for d in j]' "a succeeded task in the dead letters" <"$WORK/dead.json"
ctl dead >"$WORK/dead.txt" || fail "edgecoordctl dead"
grep -q 'r2' "$WORK/dead.txt" || fail "edgecoordctl dead does not list r2: $(cat "$WORK/dead.txt")"
grep -q 'exit status 1' "$WORK/dead.txt" || fail "edgecoordctl dead does not say why"
pass "a task that always fails is dead after 2 attempts and in the dead letters"

touch "$WORK/flag"
ctl retry r2 >"$WORK/retry.out" 2>&1 || fail "retry r2 refused: $(cat "$WORK/retry.out")"
wait_state r2 succeeded 15
ctl --json show r2 | jcheck 'j["attempt"] == 1 and j["error"] is None' "retried r2"
sub_wait tasks "^$P/tasks/r2/result .*\"ok\":true" 1 5
ctl --json dead | jcheck '"r2" not in [d["task_id"] for d in j]' "r2 left the dead letters"
pass "retry brings a dead task back with attempts reset, and it succeeds"

st=0
ctl --json retry r2 >"$WORK/retry.out" 2>&1 || st=$?
[ "$st" = 1 ] || fail "retry of a succeeded task exited $st, want 1"
grep -q '"error":"not_dead"' "$WORK/retry.out" || fail "retry of a live task: $(cat "$WORK/retry.out")"
st=0
ctl retry no-such-task >"$WORK/retry.out" 2>&1 || st=$?
[ "$st" = 1 ] || fail "retry of an unknown task exited $st, want 1"
grep -q 'unknown_task' "$WORK/retry.out" || fail "retry of an unknown task: $(cat "$WORK/retry.out")"
[ "$(state_of r2)" = succeeded ] || fail "a refused retry changed r2"
pass "retry of a task that is not dead -> not_dead, of an unknown one -> unknown_task"

# ---- 3. a hung task times out on the coordinator's clock --------------------
submit s1 '{"task_id": "r3", "type": "hang", "timeout": 0.5,
  "retry_policy": {"max_attempts": 2, "backoff": "fixed", "initial_delay": 1.5,
                   "jitter": false}}'
wait_until 10 marked '^start r3 1$' || fail "r3 never started"
# Freeze the agent: whatever ends attempt 1 now is the coordinator's timer.
kill -STOP "${BG_PIDS[a1]}"
frozen_timeout() {
	grep -q 'TASK-TIMEOUT r3 attempt 1 on a1' "$WORK/coord.log" &&
		ctl --json show r3 | jpy '[e["attempt"] for e in j["history"] if e["to"] == "failed" and e["detail"] == "timeout"]' |
		grep -qx '\[1\]'
}
ok=0
wait_until 5 frozen_timeout || ok=$?
kill -CONT "${BG_PIDS[a1]}"
[ "$ok" = 0 ] || fail "attempt 1 of r3 did not time out while its agent was frozen"
# Thawed, the agent reads the cancel (or hits its own timer): the command
# gets SIGTERM, and the agent's late report of attempt 1 is discarded.
wait_until 10 marked '^term r3 1$' || fail "attempt 1 of r3 was not stopped on the agent"
wait_until 10 grep -q 'RESULT-STALE task=r3 ' "$WORK/coord.log" ||
	fail "the late result of attempt 1 was not discarded"
wait_state r3 dead 15
ctl --json show r3 >"$WORK/r3.json"
jcheck 'j["attempt"] == 2 and j["error"] == "timeout"' "r3 dead" <"$WORK/r3.json"
jcheck '[e["attempt"] for e in j["history"] if e["to"] == "failed" and e["detail"] == "timeout"] == [1, 2]' \
	"r3 failures" <"$WORK/r3.json"
marked '^start r3 2$' || fail "attempt 2 of r3 never ran"
wait_until 5 marked '^term r3 2$' || fail "attempt 2 of r3 was not stopped on the agent"
sub_wait tasks "^$P/tasks/r3/result .*\"error\":\"timeout\"" 1 5
pass "a hung task times out (coordinator's timer), is retried, dead with timeout"

# ---- 4. deadlines -----------------------------------------------------------
# A type no agent runs, deadline in 1-2 s as RFC 3339.
dl_s=$(($(date +%s) + 2))
dl=$(date -u -d "@$dl_s" +%Y-%m-%dT%H:%M:%SZ)
submit s1 "{\"task_id\": \"r4\", \"type\": \"nobody-runs-this\", \"deadline\": \"$dl\"}"
wait_state r4 ready 10
wait_state r4 dead 10
ctl --json show r4 >"$WORK/r4.json"
jcheck 'j["error"] == "deadline_exceeded" and j["attempt"] == 0' "r4 dead" <"$WORK/r4.json"
jcheck "[e for e in j['history'] if e['to'] == 'dead'][0]['ts'] >= $dl_s * 1000" \
	"r4 died before its deadline" <"$WORK/r4.json"
sub_wait tasks "^$P/tasks/r4/result .*\"error\":\"deadline_exceeded\"" 1 5
pass "a task nobody can run is dead with deadline_exceeded at its deadline"

# A running task with a long timeout: only the deadline can stop it.
dl_ms=$(($(now_ms) + 1500))
submit s1 "{\"task_id\": \"r5\", \"type\": \"hang\", \"timeout\": 60, \"deadline\": $dl_ms}"
wait_until 10 marked '^start r5 1$' || fail "r5 never started"
wait_state r5 dead 10
ctl --json show r5 | jcheck 'j["error"] == "deadline_exceeded" and j["attempt"] == 1' "r5 dead"
grep -q 'TASK-DEADLINE r5 ' "$WORK/coord.log" || fail "no TASK-DEADLINE line for r5"
wait_until 5 marked '^term r5 1$' || fail "r5 was not cancelled on its agent"
wait_until 10 grep -q 'RESULT-STALE task=r5 ' "$WORK/coord.log" ||
	fail "the agent's report of the cancelled r5 was not discarded"
[ "$(state_of r5)" = dead ] || fail "r5 moved after its agent's late report"
pass "a running task past its deadline is dead and cancelled on its agent"

# The fleet summary's deadline success rate: r4 and r5 missed theirs, r6
# (an hour to spare) makes it.
sub_start health "$P/fleet/health"
submit s1 "{\"task_id\": \"r6\", \"type\": \"echo\", \"deadline\": $(( $(now_ms) + 3600000 ))}"
wait_state r6 succeeded 10
rate_is_third() { last_msg health "$P/fleet/health" | grep -q '"deadline_success_rate":0\.333'; }
wait_until 5 rate_is_third ||
	fail "deadline_success_rate is not 1/3: $(last_msg health "$P/fleet/health")"
pass "deadlines feed the fleet's deadline success rate"

# ---- 5. the deadline success rate counts stored endings, at once ------------
# Subscriber "dl" reads the statuses and the summary on one connection, in
# the order the coordinator published them.
sub_start dl "$P/fleet/health" -t "$P/tasks/+/status"
sub_start rejected "$P/rejected/#"

# The deadline_success_rate of the first summary published after the status
# of task ID saying STATE; nothing while there is none yet.
rate_after() {
	python3 - "$WORK/dl.log" "$P" "$1" "$2" <<'EOF'
import json, sys
log, p, task, state = sys.argv[1:]
seen = False
for line in open(log):
    topic, _, body = line.rstrip("\n").partition(" ")
    if topic == "%s/tasks/%s/status" % (p, task) and json.loads(body)["state"] == state:
        seen = True
    elif seen and topic == p + "/fleet/health":
        print(json.loads(body)["deadline_success_rate"])
        break
EOF
}
_rate_after_seen() { [ -n "$(rate_after "$1" "$2")" ]; }

# Waits for that summary and checks its rate (3 decimals).
#   check_rate_after ID STATE WANT
check_rate_after() {
	wait_until 5 _rate_after_seen "$1" "$2" ||
		fail "no fleet summary after $1 was $2: $(last_msg dl "$P/fleet/health")"
	local got
	got=$(rate_after "$1" "$2")
	[ "$(printf '%.3f' "$got")" = "$3" ] ||
		fail "deadline_success_rate after $1 was $2: $got, want $3"
}

# q1 waits for x1, which no agent runs; once x1 is cancelled q1 is skipped
# the moment it is stored. Stored along with q2, whose dependency is
# unknown, it is not stored at all: the whole array is refused, after q1
# was judged inside the submission's own (discarded) transaction.
submit s1 '{"task_id": "x1", "type": "nobody-runs-this"}'
wait_state x1 ready 10
ctl cancel x1 >"$WORK/cancel.out" 2>&1 || fail "cancel x1 refused: $(cat "$WORK/cancel.out")"
wait_state x1 cancelled 10
submit s1 '[{"task_id": "q1", "type": "echo", "deadline": 9999999999999, "depends_on": ["x1"]},
  {"task_id": "q2", "type": "echo", "depends_on": ["nope"]}]'
sub_wait rejected "^$P/rejected/s1 .*\"error\":\"unknown_dependency\"" 1 10
[ "$(state_of q1)" = none ] || fail "q1 of a refused submission is $(state_of q1)"
# q3 makes its deadline: 2 of 4 (r4, r5 missed; r6, q3 made it).
submit s1 "{\"task_id\": \"q3\", \"type\": \"echo\", \"deadline\": $(( $(now_ms) + 3600000 ))}"
check_rate_after q3 succeeded 0.500
pass "a refused submission's tasks do not count in the deadline success rate"

# q4 is dead at its deadline by the coordinator's timer, in a turn of its
# own, over a second after the last summary: that turn publishes one, and
# it must already count q4 (2 of 5), not wait for the next periodic one.
submit s1 "{\"task_id\": \"q4\", \"type\": \"nobody-runs-this\", \"deadline\": $(( $(now_ms) + 2500 ))}"
wait_state q4 dead 10
check_rate_after q4 dead 0.400
pass "the summary published when a deadline task ends counts it"
