#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_ctl.sh - edgecoordctl against a daemon holding 20,000 ready tasks,
# where a listing is larger than a pipe holds:
#  - an edgecoordctl killed in the middle of a listing leaves its LMDB reader
#    slot; the daemon clears it (STORE-READERS) within its 10 s period;
#  - output that cannot be written (/dev/full, a pipe closed by its reader)
#    fails the command: exit 1 and "writing the output" on stderr, where it
#    used to exit 0, or die of SIGPIPE inside its read transaction;
#  - --json lists are streamed: 20,000 tasks list within 8 MB of data
#    (ulimit -d), where building the whole array took about 1 KB a task;
#  - a task id that starts with '-' is cancelled and retried after "--";
#  - ids are checked before use: empty or too long is bad usage (exit 2),
#    not "store failure" or a "malformed" answer; stray arguments of dead,
#    agents and fsck print the usage;
#  - text output escapes control characters of untrusted text (a
#    description, an agent's error in show, history and dead): one row per
#    item, no escape sequence reaches the terminal; JSON keeps the text.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/coord_lib.sh"
e2e_init

coord_start </dev/null

batch() { # batch PREFIX N: N tasks of a type nobody runs
	local i sep=
	printf '['
	for ((i = 1; i <= $2; i++)); do
		printf '%s{"task_id":"%s-%05d","type":"nobody"}' "$sep" "$1" "$i"
		sep=,
	done
	printf ']'
}
# (from a file: one argument holds at most 128 KiB)
for b in a b; do
	batch "$b" 10000 >"$WORK/batch.json"
	mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -t "$P/submit/load" -f "$WORK/batch.json" -q 1
done
wait_state b-10000 ready 60

# ---- a killed reader's slot ---------------------------------------------------
# The listing fills a fifo nobody reads (fd 3 only holds it open) and blocks
# inside its read transaction; SIGKILL leaves the slot. No edgecoordctl may
# run until the daemon has cleared it: its open clears stale slots too.
mkfifo "$WORK/fifo"
exec 3<>"$WORK/fifo"
"$EC_BIN/edgecoordctl" --data-dir "$DATA" tasks >"$WORK/fifo" 2>/dev/null &
stuck=$!
sleep 1
kill -0 "$stuck" 2>/dev/null || fail "the listing into a full fifo did not block"
kill -KILL "$stuck"
wait "$stuck" 2>/dev/null || true
exec 3<&-
# The daemon checks at most every 10 s, in a loop turn: submissions make turns.
_cleared() {
	submit load '{"task_id":"turn","type":"nobody"}'
	grep -q 'STORE-READERS cleared 1 stale reader slot' "$WORK/coord.log"
}
wait_until 25 _cleared || fail "the daemon did not clear the killed reader's slot"
pass "a reader killed in a transaction: the daemon clears its slot (STORE-READERS)"

# ---- output errors --------------------------------------------------------------
for args in "tasks" "--json tasks" "tasks --state ready" "dead" "--json dead" "agents" \
	"--json agents" "fsck" "show a-00001" "--json show a-00001"; do
	st=0
	# shellcheck disable=SC2086
	ctl $args >/dev/full 2>"$WORK/err" || st=$?
	[ "$st" = 1 ] && grep -q 'writing the output' "$WORK/err" ||
		fail "ctl $args >/dev/full: exit $st, $(cat "$WORK/err")"
done
pass "output to a full device: exit 1 with a message"
for args in "tasks" "--json tasks"; do
	# true reads nothing: the listing (over 1 MB) fills the pipe, then
	# writes into a pipe without a reader
	# shellcheck disable=SC2086
	{ st=0; ctl $args 2>"$WORK/err" || st=$?; echo "$st" >"$WORK/st"; } | true
	[ "$(cat "$WORK/st")" = 1 ] && grep -q 'writing the output: Broken pipe' "$WORK/err" ||
		fail "ctl $args | true: exit $(cat "$WORK/st"), $(cat "$WORK/err")"
done
pass "a pipe closed by its reader: exit 1 with a message, not SIGPIPE"

# ---- --json lists are streamed ----------------------------------------------------
# (An ASan build reserves far more than that for its shadow memory: there the
# listing is only checked for what it prints.)
if ldd "$EC_BIN/edgecoordctl" | grep -q libasan; then
	ctl --json tasks >"$WORK/all.json" || fail "--json tasks failed"
else
	(ulimit -d 8192 && ctl --json tasks >"$WORK/all.json") ||
		fail "--json tasks of 20,000 tasks does not fit in 8 MB of data"
fi
jcheck 'len(j) == 20001 and j[0]["task_id"] == "a-00001" and j[-1]["task_id"] == "turn"' \
	"--json tasks" <"$WORK/all.json"
[ "$(ctl --json dead)" = "[]" ] || fail "an empty --json list is not []"
pass "--json tasks streams: 20,000 tasks in 8 MB of data, one valid array"

# ---- ids that start with '-', and "--" ----------------------------------------------
submit load '{"task_id":"-neg","type":"nobody"}'
wait_state -neg ready 10
st=0
ctl cancel -neg >"$WORK/out" 2>&1 || st=$?
[ "$st" = 2 ] && grep -q -- "-- before an id" "$WORK/out" || fail "cancel -neg: exit $st, $(cat "$WORK/out")"
ctl cancel -- -neg >"$WORK/out" 2>&1 || fail "cancel -- -neg: $(cat "$WORK/out")"
grep -qx 'cancel task_id -neg: ok' "$WORK/out" || fail "cancel -- -neg printed $(cat "$WORK/out")"
[ "$(ctl --json show -- -neg | jpy 'j["state"]')" = cancelled ] || fail "-neg is not cancelled"
st=0
ctl retry -- -neg >"$WORK/out" 2>&1 || st=$?
[ "$st" = 1 ] && grep -q not_dead "$WORK/out" || fail "retry -- -neg: exit $st, $(cat "$WORK/out")"
pass "an id that starts with '-': cancel -- ID and retry -- ID reach the coordinator"

# ---- ids checked before use; stray arguments --------------------------------------------
long=$(printf 'x%.0s' $(seq 300))
longer=$(printf 'y%.0s' $(seq 600))
expect_usage() { # expect_usage GREP ARGS...: exit 2 and GREP on stderr
	local want=$1 st=0
	shift
	ctl "$@" >"$WORK/out" 2>"$WORK/err" || st=$?
	[ "$st" = 2 ] && grep -q -- "$want" "$WORK/err" ||
		fail "ctl $1 ...: exit $st, $(head -c 300 "$WORK/err")"
}
expect_usage "an id has 1 to 201" show ""
expect_usage "an id has 1 to 201" show "$long"
expect_usage "an id has 1 to 100" workflow ""
expect_usage "an id has 1 to 100" dot "$long"
expect_usage "an id has 1 to 100" tasks --workflow "$long"
expect_usage "an id has 1 to 201" cancel "$longer"
expect_usage "an id has 1 to 100" cancel --workflow "$long"
expect_usage "an id has 1 to 100" drain "$long"
for cmd in dead agents fsck; do
	expect_usage "usage:" "$cmd" x
done
st=0
ctl show no-such-task 2>"$WORK/err" || st=$?
[ "$st" = 1 ] && grep -q "no task 'no-such-task'" "$WORK/err" || fail "show of an unknown task: exit $st"
pass "empty and over-long ids, stray arguments: exit 2 with a message"

# ---- control characters in text output --------------------------------------------
printf '%s\n' "printf 'bad\\nline\\033[31mred\\\\' >&2" 'exit 3' >"$WORK/boom.sh"
agent_start b1 --slots 1 --exec boom="sh $WORK/boom.sh"
submit load '{"task_id":"esc-1","type":"boom","description":"one\ntwo\u001b[2Jthree\u009bx",
  "retry_policy":{"max_attempts":1}}'
wait_state esc-1 dead 15
ctl show esc-1 >"$WORK/show.txt"
ctl dead >"$WORK/dead.txt"
ctl agents >"$WORK/agents.txt"
for f in show dead agents; do
	if LC_ALL=C grep -q $'[\x01-\x09\x0b-\x1f\x7f]' "$WORK/$f.txt"; then
		fail "a control character in the text output of $f: $(cat -v "$WORK/$f.txt")"
	fi
done
grep -qxF 'description: one\ntwo\x1b[2Jthree\xc2\x9bx' "$WORK/show.txt" ||
	fail "the description is not escaped: $(cat -v "$WORK/show.txt")"
grep -qF 'error:       bad\nline\x1b[31mred\\' "$WORK/show.txt" ||
	fail "the error is not escaped: $(cat -v "$WORK/show.txt")"
grep -qF '  bad\nline\x1b[31mred' "$WORK/show.txt" || fail "a history detail is not escaped"
[ "$(wc -l <"$WORK/dead.txt")" = 2 ] && grep -qF 'bad\nline\x1b[31mred\\' "$WORK/dead.txt" ||
	fail "dead: not one escaped row: $(cat -v "$WORK/dead.txt")"
ctl --json show esc-1 |
	jcheck 'j["error"] == "bad\nline\x1b[31mred\\"' "JSON keeps the error as it is"
pass "text output escapes control characters; JSON keeps the text"
