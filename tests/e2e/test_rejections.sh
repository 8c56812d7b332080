#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_rejections.sh - every refusal code reaches P/rejected/SOURCE, in the
# submitter's encoding, with a detail that says what is wrong, and a
# SUBMIT-REJECTED log line: malformed (JSON and CBOR), unknown_field,
# invalid_field, too_large, cycle (the detail names the ids on the cycle),
# unknown_dependency, duplicate_id, conflict, quota_exceeded (per source,
# freed again by a cancel) and store_full (a second coordinator whose LMDB map
# may not grow beyond 2 MiB, filled up; what it stored stays intact and can
# still be cancelled).
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/ingest_lib.sh"
need_bin edgecoordctl

cat >"$WORK/ec.conf" <<CONF
[scheduler]
max_pending_per_source = 3
[limits]
max_message_bytes = 4096
max_payload_bytes = 1024
CONF
start_mosquitto
ec_start ec -c "$WORK/ec.conf"
xsub_start st 'edgecoord/rejected/#' -t 'edgecoord/tasks/+/status' \
	-t 'full/rejected/#' -t 'full/tasks/+/status'

submit() { # SOURCE JSON [mosquitto_pub args]
	local src=$1 json=$2
	shift 2
	pub "edgecoord/submit/$src" "$json" -q 1 "$@" || fail "mosquitto_pub failed"
}
submit_cbor() { # SOURCE JSON: its CBOR encoding
	python3 "$CBOR_PY" enc "$2" >"$WORK/msg.cbor" || fail "cbor.py enc $2"
	mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -t "edgecoord/submit/$1" \
		-f "$WORK/msg.cbor" || fail "mosquitto_pub failed"
}
seen() {
	xsub_decoded st | grep -cE -- "$1" || true
}
seen_ge() {
	[ "$(seen "$1")" -ge "$2" ]
}
expect() { # PATTERN [COUNT]
	wait_until 10 seen_ge "$1" "${2:-1}" ||
		fail "want ${2:-1} line(s) matching '$1'; decoded messages:
$(xsub_decoded st)"
}
# A rejection of SOURCE with CODE, in encoding ENC, whose detail matches the
# regex DETAIL and whose task_id is TASK (a JSON value: null or "id").
#   rejected SOURCE ENC CODE DETAIL TASK
rejected() {
	expect "^edgecoord/rejected/$1 $2 application/$2\\| \\{\"error\":\"$3\",\"detail\":\"$4\",\"task_id\":$5\\}\$"
	grep -qE "SUBMIT-REJECTED source=$1 code=$3 " "$WORK/ec.log" ||
		fail "no SUBMIT-REJECTED line for source $1 code $3"
}

submit m1 '{"task_id":"a",'
rejected m1 json malformed '[^"]*JSON[^"]*' null
printf '\xa2\x67task_id\x61' >"$WORK/trunc.cbor" # a map cut short
mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -t edgecoord/submit/m2 -f "$WORK/trunc.cbor"
rejected m2 cbor malformed '[^"]*CBOR[^"]*' null
submit m3 '"a string"' # neither { nor [: taken as CBOR, and not CBOR
rejected m3 cbor malformed '[^"]+' null
submit uf '{"task_id":"a","type":"echo","colour":"red"}'
rejected uf json unknown_field "[^\"]*colour[^\"]*" '"a"'
submit_cbor ufc '{"task_id":"a","type":"echo","prio":3}'
rejected ufc cbor unknown_field "[^\"]*prio[^\"]*" '"a"'
submit if1 '{"task_id":"a","type":"echo","priority":11}'
rejected if1 json invalid_field 'priority[^"]*' '"a"'
submit if2 '{"task_id":"a b","type":"echo"}'
rejected if2 json invalid_field 'task_id[^"]*' null
submit if3 '{"task_id":"a"}'
rejected if3 json invalid_field '[^"]*type[^"]*' '"a"'
submit if4 '[]'
rejected if4 json invalid_field '[^"]*empty[^"]*' null
submit tl1 "{\"task_id\":\"big\",\"type\":\"echo\",\"payload\":\"$(head -c 5000 /dev/zero | tr '\0' x)\"}"
rejected tl1 json too_large '[^"]*5[0-9]{3} bytes[^"]*4096[^"]*' null
submit tl2 "{\"task_id\":\"p\",\"type\":\"echo\",\"payload\":\"$(head -c 2000 /dev/zero | tr '\0' x)\"}"
rejected tl2 json too_large '[^"]*payload[^"]*' '"p"'
submit cy '{"task_id":"w","type":"collaborative_task","steps":[{"task_id":"a","type":"echo","depends_on":["c"]},{"task_id":"b","type":"echo","depends_on":["a"]},{"task_id":"c","type":"echo","depends_on":["b"]},{"task_id":"d","type":"echo"}]}'
# a depends on c, c on b, b on a: the detail walks that cycle, and only it.
rejected cy json cycle 'cycle: w:a -> w:c -> w:b -> w:a' '"w:a"'
submit_cbor cyc '[{"task_id":"x1","type":"echo","depends_on":["x2"]},{"task_id":"x2","type":"echo","depends_on":["x1"]}]'
rejected cyc cbor cycle 'cycle: x[12] -> x[12] -> x[12]' '"x[12]"'
submit ud '[{"task_id":"u1","type":"echo"},{"task_id":"u2","type":"echo","depends_on":["nope"]}]'
rejected ud json unknown_dependency '[^"]*nope[^"]*' '"u2"'
submit di '[{"task_id":"d1","type":"echo"},{"task_id":"d1","type":"echo"}]'
rejected di json duplicate_id '[^"]*d1[^"]*' '"d1"'
submit co '{"task_id":"k","type":"echo"}'
expect '^edgecoord/tasks/k/status json .*"state":"accepted"'
submit co '{"task_id":"k","type":"echo","priority":9}'
rejected co json conflict '[^"]*k[^"]*' '"k"'
# Nothing of a refused batch or workflow was stored.
for id in u1 u2 d1 w:a w:d x1 a big p; do
	"$EC_BIN/edgecoordctl" --data-dir "$WORK/data" show "$id" >/dev/null 2>&1 &&
		fail "task $id of a refused submission was stored"
done
[ "$(ctl_task_count)" = 1 ] || fail "want only task k stored, have $(ctl_task_count)"
pass "malformed, unknown_field, invalid_field, too_large, cycle, unknown_dependency, duplicate_id, conflict: refused whole, with details"

# quota_exceeded: at most 3 accepted, not final tasks per source.
submit q '[{"task_id":"q1","type":"echo"},{"task_id":"q2","type":"echo"}]'
expect '^edgecoord/tasks/q2/status json .*"state":"accepted"'
submit q '[{"task_id":"q3","type":"echo"},{"task_id":"q4","type":"echo"}]'
rejected q json quota_exceeded '[^"]*q[^"]*' null
submit other '[{"task_id":"o1","type":"echo"},{"task_id":"o2","type":"echo"}]'
expect '^edgecoord/tasks/o2/status json .*"state":"accepted"'
submit q '{"task_id":"q3","type":"echo"}'
expect '^edgecoord/tasks/q3/status json .*"state":"accepted"'
submit q '{"task_id":"q4","type":"echo"}'
expect '^edgecoord/rejected/q json .*"error":"quota_exceeded"' 2
"$EC_BIN/edgecoordctl" --broker "$MQTT_URI" cancel q1 >/dev/null || fail "cancel q1 failed"
submit q '{"task_id":"q4","type":"echo"}'
expect '^edgecoord/tasks/q4/status json .*"state":"accepted"'
pass "quota_exceeded per source, whole batches refused, a cancel frees a place"

# store_full: a second coordinator (prefix full/, node n2) with a tiny map.
cat >"$WORK/full.conf" <<CONF
[coordinator]
map_size_mb = 1
max_map_size_mb = 2
CONF
EC_DATA=$WORK/data-full EC_NODE=n2 ec_start full -c "$WORK/full.conf" --topic-prefix full
python3 - "$WORK/batches" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for b in range(40):  # 4,000 tasks of ~450 bytes: far beyond 2 MiB
        f.write(json.dumps([{"task_id": "f%d-%d" % (b, i), "type": "echo",
                             "payload": {"pad": "x" * 400}} for i in range(100)]) + "\n")
PY
mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -t full/submit/fill -l <"$WORK/batches" ||
	fail "mosquitto_pub of the fill batches failed"
expect '^full/rejected/fill json application/json\| \{"error":"store_full","detail":"[^"]+","task_id":null\}$'
grep -q 'SUBMIT-REJECTED source=fill code=store_full' "$WORK/full.log" ||
	fail "no SUBMIT-REJECTED store_full line"
# Let the last batches settle: every batch is either accepted or refused.
settled() {
	[ $(($(seen '^full/rejected/fill ') + $(seen '^full/tasks/f[0-9]+-0/status '))) -ge 40 ]
}
wait_until 20 settled || fail "not all 40 batches were answered"
stored=$(EC_DATA=$WORK/data-full ctl_task_count)
accepted=$(seen '^full/tasks/[^ ]+/status json .*"state":"accepted"')
refused=$(seen '^full/rejected/fill ')
[ "$stored" -gt 0 ] && [ "$refused" -gt 0 ] || fail "stored $stored, refused $refused batches"
[ "$stored" = $(((40 - refused) * 100)) ] ||
	fail "stored $stored tasks, but $refused of 40 batches were refused"
[ "$accepted" = "$stored" ] || fail "$accepted accepted statuses for $stored stored tasks"
bg_alive full || fail "the full coordinator died"
# What is stored still moves: a cancel goes through, in a full store.
"$EC_BIN/edgecoordctl" --broker "$MQTT_URI" --topic-prefix full cancel f0-1 >/dev/null ||
	fail "cancel in a full store failed: $(tail -3 "$WORK/full.log")"
"$EC_BIN/edgecoordctl" --data-dir "$WORK/data-full" --json show f0-1 | grep -q '"state":"cancelled"' ||
	fail "f0-1 is not cancelled"
expect '^full/tasks/f0-1/status json .*"state":"cancelled"'
pass "store_full: $refused of 40 batches refused, $stored tasks stored intact, cancel still works"

kill_bg full TERM
[ "$LAST_STATUS" = 0 ] || fail "the full coordinator exited with $LAST_STATUS"
kill_bg ec TERM
[ "$LAST_STATUS" = 0 ] || fail "edgecoord exited with $LAST_STATUS"
