#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_failover.sh - work moves off agents that die or go silent, and survives
# a coordinator restart (DESIGN 4 liveness and fencing, DESIGN 7 recovery).
# Heartbeat 200 ms x 3 misses: a liveness budget of 600 ms.
#
# 1. SIGKILL an agent running sleep tasks: they run again on the other agent,
#    each with exactly one result, its history shows "lost" then a second
#    dispatch, and the time from the kill to the new dispatch (printed, with
#    AGENT-OFFLINE and TASK-LOST) is within the budget plus one second.
# 2. SIGSTOP an agent past the budget: its tasks move; after SIGCONT its late
#    results are discarded (RESULT-STALE); every task has one result, from
#    the other agent.
# 3. SIGKILL the coordinator while an agent runs a long task; restart it: the
#    agent lists the lease in hello, the task is kept (one dispatch, no
#    "lost") and completes exactly once.
# 4. With h1 drained, SIGKILL the coordinator and the agent running a task
#    (h2); restart the coordinator only: after the budget the task is lost,
#    and it waits, because h1 is still drained (the drain is stored); undrain
#    h1 and it completes there.
# 5. SIGKILL the coordinator while h3 runs a task; restart it; h3 comes back
#    (hello lists the lease) and is SIGKILLed 2 s after the recovery: the
#    task is lost when h3's own budget ends, not at the recovery sweep 1 s
#    later (which is for agents that never came back: one that is merely
#    disconnected may still return with the task running).
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/fleet_lib.sh"

fleet_init 200 3
issue f1 f2 g1 g2 h1 h2 h3
start_mosquitto
start_coord --log-level debug
sub_start res 'edgecoord/tasks/+/result' -q 1

# Names of the tasks in "$@" that agent A runs now, per the store.
on_agent() {
	local a=$1 t
	shift
	for t in "$@"; do
		[ "$(show_field "$t" agent)" = "$a" ] && echo "$t"
	done
	return 0
}

# All of "$@" running (dispatched counts: the agent may not have said started).
all_running() {
	local t s
	for t in "$@"; do
		s=$(show_field "$t" state)
		[ "$s" = running ] || [ "$s" = dispatched ] || return 1
	done
}

# Checks that task T has exactly one result message, ok, from agent A.
one_result_from() {
	local t=$1 a=$2 n
	sub_wait res "^edgecoord/tasks/$t/result " 1 10
	n=$(sub_count res "^edgecoord/tasks/$t/result ")
	[ "$n" = 1 ] || fail "$t has $n results"
	sub_count res "^edgecoord/tasks/$t/result .*\"agent\":\"$a\",\"ok\":true" | grep -qx 1 ||
		fail "$t: result not from $a: $(grep "/$t/result" "$WORK/res.log")"
}

# ---- 1. SIGKILL an agent --------------------------------------------------------------------------
start_agent f1 --slots 2
start_agent f2 --slots 4
wait_up f1
wait_up f2
pub edgecoord/submit/e2e '[{"task_id":"k1","type":"sleep","payload":{"ms":3000}},
	{"task_id":"k2","type":"sleep","payload":{"ms":3000}},
	{"task_id":"k3","type":"sleep","payload":{"ms":3000}},
	{"task_id":"k4","type":"sleep","payload":{"ms":3000}}]' -q 1
wait_until 10 all_running k1 k2 k3 k4 || fail "k1..k4 are not all running"
mapfile -t lost < <(on_agent f1 k1 k2 k3 k4)
mapfile -t kept < <(on_agent f2 k1 k2 k3 k4)
[ "${#lost[@]}" -ge 1 ] || fail "f1 runs none of k1..k4: nothing to lose"
t_kill=$(now_ms)
kill_bg f1 KILL
for t in "${lost[@]}"; do
	coord_wait "TASK-LOST $t " 1 5
	one_result_from "$t" f2
	history "$t" >"$WORK/hist"
	grep -Eq '^ready dispatched f1 ' "$WORK/hist" || fail "$t: no first dispatch to f1: $(cat "$WORK/hist")"
	grep -Eq '^(dispatched|running) ready f1 .*lost' "$WORK/hist" ||
		fail "$t: no lost step in its history: $(cat "$WORK/hist")"
	grep -Eq '^ready dispatched f2 ' "$WORK/hist" || fail "$t: no second dispatch to f2: $(cat "$WORK/hist")"
	[ "$(show_field "$t" attempt)" = 1 ] || fail "$t: a lost attempt was charged"
done
for t in "${kept[@]}"; do one_result_from "$t" f2; done
t_off=$(log_ms 'AGENT-OFFLINE f1 ')
t_lost=$(log_ms 'TASK-LOST ' 1)
t_redisp=$(log_ms "DISPATCH ${lost[0]} lease=[0-9]+ -> f2")
echo "SIGKILL f1 -> AGENT-OFFLINE $((t_off - t_kill)) ms, -> TASK-LOST $((t_lost - t_kill)) ms," \
	"-> dispatched to f2 $((t_redisp - t_kill)) ms (budget ${BUDGET_MS} ms + 1000)"
[ $((t_redisp - t_kill)) -le $((BUDGET_MS + 1000)) ] ||
	fail "re-dispatch $((t_redisp - t_kill)) ms after the kill, over the budget"
# A closed connection is silence, not death: nothing moves before the budget,
# counted from the last frame heard (at most one heartbeat before the kill).
[ $((t_lost - t_kill)) -ge $((BUDGET_MS - HB_MS - 50)) ] ||
	fail "TASK-LOST $((t_lost - t_kill)) ms after the kill: before the budget (${BUDGET_MS} ms)"
pass "SIGKILL: ${#lost[@]} task(s) moved to f2 and finished once each, within the budget"
kill_bg f2 TERM

# ---- 2. SIGSTOP an agent past the budget ------------------------------------------------------------
start_agent g1 --slots 2
start_agent g2 --slots 2
wait_up g1
wait_up g2
pub edgecoord/submit/e2e '[{"task_id":"s1","type":"sleep","payload":{"ms":1500},"priority":9},
	{"task_id":"s2","type":"sleep","payload":{"ms":1500},"priority":9}]' -q 1
wait_until 10 all_running s1 s2 || fail "s1, s2 are not running"
mapfile -t stopped < <(on_agent g1 s1 s2)
mapfile -t other < <(on_agent g2 s1 s2)
[ "${#stopped[@]}" -ge 1 ] || fail "g1 runs neither s1 nor s2"
kill -STOP "${BG_PIDS[g1]}"
coord_wait 'AGENT-OFFLINE g1 ' 1 5
for t in "${stopped[@]}"; do coord_wait "TASK-LOST $t " 1 5; done
# Keep it stopped until its own sleeps are over, so that it has results to send.
sleep 1.6
kill -CONT "${BG_PIDS[g1]}"
for t in "${stopped[@]}"; do
	coord_wait "RESULT-STALE task=$t .*agent=g1" 1 10
	one_result_from "$t" g2
done
for t in "${other[@]}"; do one_result_from "$t" g2; done
wait_up g1 2 10
pass "SIGSTOP/SIGCONT: g1's late results were discarded, ${#stopped[@]} task(s) finished once on g2"
kill_bg g1 TERM
kill_bg g2 TERM

# ---- 3. coordinator restart: the agent keeps its task --------------------------------------------
# A longer budget here, so that the agent's reconnect backoff fits in it.
sed -i 's/^heartbeat_ms = .*/heartbeat_ms = 1000/' "$CONF"
kill_bg coord TERM
start_coord --log-level debug
start_agent h1 --slots 2
wait_up h1
pub edgecoord/submit/e2e '{"task_id":"r1","type":"sleep","payload":{"ms":4000}}' -q 1
wait_until 10 all_running r1 || fail "r1 is not running"
kill_bg coord KILL
start_coord --log-level debug
coord_wait 'AGENT-UP agent=h1 .* leases=1' 1 10
one_result_from r1 h1
history r1 >"$WORK/hist"
[ "$(grep -c ' dispatched ' "$WORK/hist")" = 1 ] || fail "r1 was dispatched again: $(cat "$WORK/hist")"
! grep -q lost "$WORK/hist" || fail "r1 was lost: $(cat "$WORK/hist")"
[ "$(coord_count 'TASK-LOST r1 ')" = 0 ] || fail "TASK-LOST r1 in the log"
[ "$(show_field r1 attempt)" = 1 ] || fail "r1: attempt $(show_field r1 attempt), want 1"
pass "coordinator SIGKILL + restart: h1 listed its lease, r1 kept and finished once"

# ---- 4. coordinator restart without the agent ------------------------------------------------------
start_agent h2 --slots 2
wait_up h2
ctl drain h1 >"$WORK/ctl.out" 2>&1 || fail "drain h1: $(cat "$WORK/ctl.out")"
pub edgecoord/submit/e2e '{"task_id":"r2","type":"sleep","payload":{"ms":2000}}' -q 1
wait_until 10 all_running r2 || fail "r2 is not running"
[ "$(show_field r2 agent)" = h2 ] || fail "r2 went to $(show_field r2 agent), not h2"
kill_bg h2 KILL
kill_bg coord KILL
t_kill=$(now_ms)
# The restarted coordinator remembers the drain: r2 waits for an undrain.
start_coord --log-level debug
coord_wait 'TASK-LOST r2 ' 1 10
sleep 1
task_in r2 ready || fail "r2 is $(show_field r2 state) on drained h1 after the restart"
ctl undrain h1 >"$WORK/ctl.out" 2>&1 || fail "undrain h1: $(cat "$WORK/ctl.out")"
one_result_from r2 h1
t_lost=$(log_ms 'TASK-LOST r2 ')
echo "coordinator restart without h2: TASK-LOST r2 $((t_lost - t_kill)) ms after the kill (budget 3000 ms)"
history r2 >"$WORK/hist"
grep -Eq '^(dispatched|running) ready h2 .*lost' "$WORK/hist" || fail "r2: no lost step: $(cat "$WORK/hist")"
grep -Eq '^ready dispatched h1 ' "$WORK/hist" || fail "r2: not dispatched to h1: $(cat "$WORK/hist")"
pass "coordinator restart: h2 never came back, r2 was lost after the budget, waited for drained h1 and ran there once undrained"

# ---- 5. coordinator restart: an agent back and gone again has its own budget -------------------------
start_agent h3 --slots 1
wait_up h3
pub edgecoord/submit/e2e '{"task_id":"r3","type":"sleep","agent":"h3","payload":{"ms":30000}}' -q 1
wait_until 10 all_running r3 || fail "r3 is not running"
kill_bg coord KILL
start_coord --log-level debug
coord_wait 'AGENT-UP agent=h3 .* leases=1' 1 10
t_rec=$(log_ms 'RECOVERED ')
while [ "$(now_ms)" -lt $((t_rec + 2000)) ]; do sleep 0.05; done
kill_bg h3 KILL
t_kill=$(now_ms)
[ $((t_kill - t_rec)) -lt 2700 ] || fail "h3 was killed $((t_kill - t_rec)) ms after the recovery: too late to tell"
coord_wait 'TASK-LOST r3 ' 1 10
t_lost=$(log_ms 'TASK-LOST r3 ')
echo "h3 back after the restart, then killed: TASK-LOST r3 $((t_lost - t_kill)) ms after the kill (budget 3000 ms, sweep $((t_rec + 3000 - t_kill)) ms after it)"
[ $((t_lost - t_kill)) -ge 1500 ] ||
	fail "r3 was lost $((t_lost - t_kill)) ms after h3's kill: the recovery sweep took it before h3's own budget"
pass "coordinator restart: h3 came back, then went; r3 was lost by h3's own budget, not the sweep"

bg_alive coord || fail "the coordinator died"
