#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_outage.sh - store-and-forward across broker outages.
#
# This test once found a heap-use-after-free inside libpaho-mqtt3as 1.3.12
# (subscribers got statuses whose first 8 bytes were garbage), when the
# coordinator still used paho; see docs/mqtt.md.
#
# mosquitto runs
# with persistence; a persistent subscriber (clean session off, QoS 1)
# collects task statuses and reconnects by itself. With status_events = all,
# every task of a batch has two statuses (accepted, ready).
#  1. Submit 5 batches of 1,000 tasks, stop the broker right away while the
#     coordinator's outbox is still draining, start it again: every status
#     arrives, per task in order (duplicates allowed: at least once), and the
#     last one seen is the current state.
#  2. Submit more, stop the broker, restart the COORDINATOR while the broker
#     is down (SIGTERM must still exit 0), then start the broker: the outbox
#     of the new process drains everything.
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/ingest_lib.sh"

printf '[mqtt]\nstatus_events = all\n' >"$WORK/ec.conf"
start_mosquitto --persist
sub_start st 'edgecoord/tasks/+/status' -F '%t %p' -c -i e2e-status-sub -q 1 -V mqttv311
ec_start ec -c "$WORK/ec.conf"

batches() { # PREFIX: 5 lines, each a batch of 1,000 tasks PREFIX-B-I
	python3 -c '
import json, sys
for b in range(5):
    print(json.dumps([{"task_id": "%s-%d-%d" % (sys.argv[1], b, i), "type": "echo"}
                      for i in range(1000)], separators=(",", ":")))' "$1" >"$WORK/$1.batches"
}
# Checks the subscriber's log for PREFIX: all 5,000 tasks have accepted
# then ready, and end on ready.
check_order() {
	python3 - "$WORK/st.log" "$1" 5000 <<'PY'
import json, sys
log, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
seq = {}
for line in open(log, "rb"):
    topic, _, payload = line.rstrip(b"\n").partition(b" ")
    parts = topic.decode("utf-8", "replace").split("/")
    if len(parts) != 4 or not parts[2].startswith(prefix + "-"):
        continue
    try:
        st = json.loads(payload)
    except ValueError:
        print("corrupt status payload on %s: %r" % (topic, payload[:40]))
        sys.exit(1)
    if st.get("task_id") != parts[2]:
        print("status of %s on the topic of %s" % (st.get("task_id"), parts[2]))
        sys.exit(1)
    seq.setdefault(parts[2], []).append(st["state"])
bad = [(t, s) for t, s in seq.items()
       if s[0] != "accepted" or s[-1] != "ready" or "ready" not in s
       or s.index("ready") < s.index("accepted")]
if len(seq) != n or bad:
    print("%d of %d tasks seen; out of order: %s" % (len(seq), n, bad[:3]))
    sys.exit(1)
dups = sum(len(s) - 2 for s in seq.values())
print("%d statuses, %d duplicates" % (sum(len(s) for s in seq.values()), dups))
PY
}
statuses() {
	sub_count st "^edgecoord/tasks/$1-"
}
have_all() {
	check_order "$1" >"$WORK/order.out" 2>&1
}

# 1. Broker outage while the outbox drains.
batches o1
mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -t edgecoord/submit/out -l <"$WORK/o1.batches" ||
	fail "mosquitto_pub failed"
stop_mosquitto
before=$(statuses o1)
wait_until 10 grep -q MQTT-LOST "$WORK/ec.log" || fail "the coordinator did not notice the outage"
start_mosquitto --persist
wait_until 60 have_all o1 || fail "after the outage: $(cat "$WORK/order.out")"
bg_alive ec || fail "the coordinator died"
pass "broker outage with $before of 10000 statuses delivered before it: all arrive, in order per task ($(cat "$WORK/order.out"))"

# 2. The coordinator restarts while the broker is down.
batches o2
mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -t edgecoord/submit/out -l <"$WORK/o2.batches" ||
	fail "mosquitto_pub failed"
stop_mosquitto
before=$(statuses o2)
kill_bg ec TERM
[ "$LAST_STATUS" = 0 ] || fail "SIGTERM with the broker down: exit status $LAST_STATUS"
start_bg ec "$EC_BIN/edgecoord" -c "$WORK/ec.conf" --broker "$MQTT_URI" \
	--data-dir "$WORK/data" --node-id n1
sleep 1 # the new process tries the absent broker first
bg_alive ec || fail "the coordinator does not wait for an absent broker"
start_mosquitto --persist
wait_until 60 have_all o2 || fail "after the restart: $(cat "$WORK/order.out")"
pass "coordinator restarted during the outage ($before of 10000 statuses out before): all arrive, in order ($(cat "$WORK/order.out"))"
[ "$(ctl_task_count)" = 10000 ] || fail "want 10000 tasks stored, have $(ctl_task_count)"
kill_bg ec TERM
[ "$LAST_STATUS" = 0 ] || fail "edgecoord exited with $LAST_STATUS"
