#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_harness.sh - a self-test of lib.sh: our own mosquitto on a free port,
# a subscription that is ready when sub_start returns, a retained message that
# survives a restart with persistence, exit statuses of background processes,
# and a cleanup that leaves no process and no directory, even when a test
# fails half-way.
source "$(dirname "$0")/lib.sh"
e2e_init

# Background processes lead their own process group.
start_bg sleeper sleep 300
own_group() {
	local stat pgid
	stat=$(cat "/proc/$1/stat") || return 1
	read -r _ _ pgid _ <<<"${stat##*) }"
	[ "$pgid" = "$1" ]
}
wait_until 5 own_group "${BG_PIDS[sleeper]}" ||
	fail "start_bg did not give sleeper its own process group"
kill_bg sleeper TERM
[ "$LAST_STATUS" = 143 ] || fail "kill_bg TERM: status $LAST_STATUS, want 143"
start_bg three sh -c 'exit 3'
wait_bg three
[ "$LAST_STATUS" = 3 ] || fail "wait_bg: status $LAST_STATUS, want 3"
# Killing a program also ends what it started.
start_bg parent sh -c 'sleep 300 & echo $! > "$0"; wait' "$WORK/child.pid"
wait_until 5 test -s "$WORK/child.pid" || fail "parent never started its child"
kill_bg parent KILL
child=$(cat "$WORK/child.pid")
wait_until 5 _gone "$child" || fail "the child of a killed program survived"
pass "background processes: groups, statuses, children"

start_mosquitto --persist
port=$MQTT_PORT
[ "$MQTT_URI" = "tcp://127.0.0.1:$port" ] || fail "MQTT_URI is $MQTT_URI"
sub_start s1 'test/#' -q 1
pub test/a hello -q 1
pub test/b 'two words' -q 1
sub_wait s1 '^test/a hello$' 1 5
sub_wait s1 '^test/b two words$' 1 5
[ "$(sub_count s1 .)" = 2 ] || fail "s1 saw $(sub_count s1 .) lines, want 2 (probes excluded)"
pass "publish and subscribe on port $port"

pub keep/x kept -r -q 1
restart_mosquitto
[ "$MQTT_PORT" = "$port" ] || fail "restart moved the broker from $port to $MQTT_PORT"
[ -s "$WORK/mosquitto/mosquitto.db" ] || fail "no persistence database was written"
sub_start s2 'keep/#'
sub_wait s2 '^keep/x kept$' 1 5
pass "a retained message survives a restart"

# A failing test still cleans up: run one, then look for its leftovers.
cat >"$WORK/inner.sh" <<EOF
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
e2e_init
start_mosquitto --persist
sub_start sub 'x/#'
echo "\$WORK \$MOSQ_PID \${BG_PIDS[sub]}" > "$WORK/inner.out"
false
echo "not reached"
EOF
inner=0
bash "$WORK/inner.sh" >"$WORK/inner.log" 2>&1 || inner=$?
[ "$inner" = 1 ] || fail "the failing inner test exited $inner, want 1"
! grep -q "not reached" "$WORK/inner.log" || fail "set -e was not in force"
read -r inner_work inner_mosq inner_sub <"$WORK/inner.out"
[ ! -e "$inner_work" ] || fail "the inner test left $inner_work"
_gone "$inner_mosq" || fail "the inner test left mosquitto $inner_mosq running"
_gone "$inner_sub" || fail "the inner test left mosquitto_sub $inner_sub running"
pass "a failed test leaves no process and no directory"

# need_bin and fail, in a subshell so that their exit is theirs.
st=0
(EC_BIN=$WORK need_bin no-such-program) >/dev/null 2>&1 || st=$?
[ "$st" = 1 ] || fail "need_bin of a missing program exited $st, want 1"
pass "need_bin refuses a missing program"
