#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_config_cli.sh - the daemon's command line and configuration as an
# operator meets them: config errors name the file and the line (unknown
# key, a value that does not parse, a 300-character line), --check-config
# prints "configuration OK" and exits 0, or the errors and 2; an unknown flag
# exits 2; --version and --help exit 0. Running: SIGHUP reloads [log] level
# (a RELOAD line; debug lines appear only after it), SIGTERM exits 0 and
# leaves a retained "offline" state on P/coordinator/NODE/state.
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/ingest_lib.sh"
EC=$EC_BIN/edgecoord

printf '[log]\nlevel = info\n[mqtt]\nbogus = 1\n[scheduler]\nmax_attempts = zero\n' >"$WORK/bad.conf"
python3 -c "print('[log]'); print('level = ' + 'x' * 292)" >"$WORK/long.conf"
printf '[coordinator]\nnode_id = cfg1\n[log]\nlevel = info\n' >"$WORK/ok.conf"

rc=0; "$EC" -c "$WORK/bad.conf" --check-config >"$WORK/out" 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "--check-config on errors exited $rc, want 2"
grep -q "bad.conf:4: .*bogus" "$WORK/out" || fail "unknown key not named with file:line: $(cat "$WORK/out")"
grep -q "bad.conf:6: .*max_attempts.*zero" "$WORK/out" || fail "bad value not named with file:line: $(cat "$WORK/out")"
grep -q "configuration OK" "$WORK/out" && fail "--check-config said OK on errors"
rc=0; "$EC" -c "$WORK/long.conf" --check-config >"$WORK/out" 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "a 300-character line: exit $rc, want 2"
grep -q "long.conf:2: .*long" "$WORK/out" || fail "long line not named with file:line: $(cat "$WORK/out")"
rc=0; "$EC" -c "$WORK/none.conf" --check-config >"$WORK/out" 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q "none.conf" "$WORK/out" || fail "a missing config file: exit $rc, $(cat "$WORK/out")"
"$EC" -c "$WORK/ok.conf" --check-config >"$WORK/out" 2>&1 || fail "--check-config on a good file failed: $(cat "$WORK/out")"
grep -qx "configuration OK" "$WORK/out" || fail "--check-config printed: $(cat "$WORK/out")"
pass "config errors name file and line; --check-config exits 0 or 2"

rc=0; "$EC" --frobnicate >"$WORK/out" 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "an unknown flag exited $rc, want 2"
grep -q "frobnicate" "$WORK/out" || fail "the unknown flag is not named: $(cat "$WORK/out")"
rc=0; "$EC" --log-level loud --check-config >"$WORK/out" 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "--log-level loud exited $rc, want 2"
"$EC" --version >"$WORK/out" 2>&1 || fail "--version failed"
grep -qE '^edgecoord [0-9]+\.[0-9]+\.[0-9]+' "$WORK/out" || fail "--version printed: $(cat "$WORK/out")"
"$EC" --help >"$WORK/out" 2>&1 || fail "--help failed"
grep -q -- "--check-config" "$WORK/out" && grep -q "max_pending_per_source" "$WORK/out" ||
	fail "--help does not list the flags and keys"
pass "unknown flag and bad flag value exit 2; --version and --help exit 0"

start_mosquitto
EC_NODE=cfg1 ec_start ec -c "$WORK/ok.conf"
pub edgecoord/submit/cli '{"task_id":"before","type":"echo"}' -q 1
sub_start state 'edgecoord/coordinator/cfg1/state'
sub_wait state '"state":"online"' 1 10
grep -q ' debug: ' "$WORK/ec.log" && fail "debug lines at level info"
sed -i 's/level = info/level = debug/' "$WORK/ok.conf"
kill -HUP "${BG_PIDS[ec]}"
wait_until 10 grep -q 'RELOAD log level is debug' "$WORK/ec.log" ||
	fail "no RELOAD line after SIGHUP"
pub edgecoord/submit/cli '{"task_id":"after","type":"echo"}' -q 1
wait_until 10 grep -q ' debug: ' "$WORK/ec.log" || fail "no debug line after the reload to debug"
bg_alive ec || fail "SIGHUP stopped the daemon"
printf '[log]\nlevel = shouty\n' >>"$WORK/ok.conf"
kill -HUP "${BG_PIDS[ec]}"
wait_until 10 grep -q 'RELOAD-FAILED' "$WORK/ec.log" || fail "a bad file on SIGHUP: no RELOAD-FAILED"
bg_alive ec || fail "a bad config on SIGHUP stopped the daemon"
pass "SIGHUP reloads [log] level (RELOAD), a bad file keeps the running configuration"

kill_bg ec TERM
[ "$LAST_STATUS" = 0 ] || fail "SIGTERM: exit status $LAST_STATUS, want 0"
sub_wait state '"state":"offline"' 1 10
kill_bg state
# Retained: a new subscriber gets the offline state at once.
sub_start state2 'edgecoord/coordinator/cfg1/state'
sub_wait state2 '"state":"offline"' 1 5
pass "SIGTERM exits 0 and leaves a retained offline state"
