#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_durability.sh - the durability promise (a submission the broker
# accepted at QoS 1 is never lost) under SIGKILL. A burst of 10,000
# single-task submissions is published at QoS 1 to P/submit/SOURCE; once the
# coordinator has accepted some of them it is killed with SIGKILL, the
# publisher keeps going (the broker queues for the coordinator's persistent
# session), and the coordinator is restarted on the same data directory with
# the same node id (same client id, same session). When everything is in,
# the store holds every task published exactly once: 10,000 distinct ids,
# exactly the ones sent. Three runs kill at three points: early, middle, late.
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/ingest_lib.sh"
need_bin edgecoordctl

N=10000
start_mosquitto
sub_start acc 'edgecoord/tasks/+/status' -F '%t %p' -q 1

accepted_of() { # RUN: accepted statuses seen of that run (duplicates count)
	sub_count acc "^edgecoord/tasks/r$1-[0-9]+/status .*\"state\":\"accepted\""
}
over() {
	[ "$(accepted_of "$1")" -ge "$2" ]
}
stored_ok() { # RUN: the store holds exactly r$RUN-1..r$RUN-N
	EC_DATA=$WORK/data-$1 "$EC_BIN/edgecoordctl" --data-dir "$WORK/data-$1" --json tasks |
		python3 -c '
import json, sys
run, n = sys.argv[1], int(sys.argv[2])
ids = [t["task_id"] for t in json.load(sys.stdin)]
want = {"r%s-%d" % (run, i) for i in range(1, n + 1)}
if len(ids) == n and set(ids) == want:
    sys.exit(0)
dup = len(ids) - len(set(ids))
print("%d listed, %d distinct, %d missing, %d foreign, %d duplicates" % (len(ids),
      len(set(ids)), len(want - set(ids)), len(set(ids) - want), dup), file=sys.stderr)
sys.exit(1)' "$1" "$N" 2>"$WORK/stored.err"
}

run=0
for kill_at in 300 4000 8500; do
	run=$((run + 1))
	export EC_DATA=$WORK/data-$run
	ec_start "ec$run"
	seq 1 "$N" | sed "s/.*/{\"task_id\":\"r$run-&\",\"type\":\"echo\"}/" >"$WORK/burst-$run"
	# mosquitto_pub -l reads stdin, which start_bg sets to /dev/null.
	start_bg "pub$run" sh -c 'exec mosquitto_pub -h 127.0.0.1 -p "$1" -q 1 -t edgecoord/submit/burst -l <"$2"' \
		sh "$MQTT_PORT" "$WORK/burst-$run"
	wait_until 60 over "$run" "$kill_at" || fail "run $run: $(accepted_of "$run") accepted, never reached $kill_at"
	kill_bg "ec$run" KILL
	[ "$LAST_STATUS" = 137 ] || fail "run $run: kill -KILL gave status $LAST_STATUS"
	at=$(accepted_of "$run")
	ec_start "ec$run"
	wait_bg "pub$run" 120
	[ "$LAST_STATUS" = 0 ] || fail "run $run: mosquitto_pub exited with $LAST_STATUS"
	# Every task has at least one accepted status once all are in (a
	# redelivered one may have two); only then read the whole store, which
	# is too heavy to poll.
	wait_until 120 over "$run" "$N" ||
		fail "run $run: only $(accepted_of "$run") accepted statuses after the restart"
	for ((i = 0; i < 30; i++)); do
		stored_ok "$run" && break
		sleep 1
	done
	stored_ok "$run" || fail "run $run (killed after $at accepted): $(cat "$WORK/stored.err")"
	kill_bg "ec$run" TERM
	[ "$LAST_STATUS" = 0 ] || fail "run $run: edgecoord exited with $LAST_STATUS on SIGTERM"
	pass "run $run: SIGKILL after $at of $N accepted; after the restart all $N stored exactly once"
done
