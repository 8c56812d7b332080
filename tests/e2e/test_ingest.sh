#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_ingest.sh - submissions over MQTT, end to end, with the real daemon and
# a real mosquitto: a task, a workflow and a batch, each in JSON and in CBOR,
# get their `accepted` statuses on P/tasks/ID/status in the submitter's
# encoding (content type and payload bytes both checked) and appear in
# `edgecoordctl --json tasks`; MQTT 5 request/response answers on the Response
# Topic with the Correlation Data copied; and idempotency: a resubmission is
# one task, answered as a duplicate (on the response topic, or by publishing
# the status again), while the same id with other content is a conflict.
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/ingest_lib.sh"
need_bin edgecoordctl

start_mosquitto
ec_start ec
xsub_start st 'edgecoord/tasks/+/status' -t 'edgecoord/workflows/+/status' \
	-t 'edgecoord/rejected/#' -t 'resp/#'

# Publishes a submission to P/submit/SOURCE: submit SOURCE ENC JSON [args]
# (ENC json sends the text, cbor its CBOR encoding).
submit() {
	local src=$1 enc=$2 json=$3 f
	shift 3
	f=$WORK/msg.$RANDOM
	if [ "$enc" = cbor ]; then
		python3 "$CBOR_PY" enc "$json" >"$f" || fail "cbor.py could not encode $json"
	else
		printf '%s' "$json" >"$f"
	fi
	mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -t "edgecoord/submit/$src" -f "$f" "$@" ||
		fail "mosquitto_pub to edgecoord/submit/$src failed"
}

# Lines of the decoded subscriber log matching the extended regex PATTERN.
seen() {
	xsub_decoded st | grep -cE -- "$1" || true
}
seen_ge() {
	[ "$(seen "$1")" -ge "$2" ]
}
# Waits for COUNT (default 1) decoded lines matching PATTERN.
expect() {
	wait_until 10 seen_ge "$1" "${2:-1}" ||
		fail "want ${2:-1} line(s) matching '$1'; decoded messages:
$(xsub_decoded st)"
}

# 1. A task, a workflow and a batch, in JSON and in CBOR.
for enc in json cbor; do
	e=$enc
	submit "src-$e" "$e" "{\"task_id\":\"t-$e\",\"type\":\"echo\",\"payload\":{\"n\":[1,2.5,\"x\"]}}"
	submit "src-$e" "$e" "{\"task_id\":\"wf-$e\",\"type\":\"collaborative_task\",\"steps\":[{\"task_id\":\"a\",\"type\":\"echo\"},{\"task_id\":\"b\",\"type\":\"echo\",\"depends_on\":[\"a\"]}]}"
	submit "src-$e" "$e" "[{\"task_id\":\"b1-$e\",\"type\":\"echo\"},{\"task_id\":\"b2-$e\",\"type\":\"sleep\",\"depends_on\":[\"b1-$e\"]}]"
done
for e in json cbor; do
	for id in "t-$e" "wf-$e:a" "wf-$e:b" "b1-$e" "b2-$e"; do
		expect "^edgecoord/tasks/$id/status $e application/$e\\|\\S* \\{\"task_id\":\"$id\",.*\"state\":\"accepted\""
	done
	expect "^edgecoord/workflows/wf-$e/status $e application/$e\\|\\S* \\{\"workflow\":\"wf-$e\",\"state\":\"running\",\"total\":2"
done
# The CBOR statuses are CBOR, never JSON text, and the JSON ones JSON.
[ "$(seen '^edgecoord/tasks/[^ ]*-cbor[^ ]*/status json')" = 0 ] ||
	fail "a CBOR submission got a JSON status"
[ "$(seen '^edgecoord/tasks/[^ ]*-json[^ ]*/status cbor')" = 0 ] ||
	fail "a JSON submission got a CBOR status"
# The workflow step's status names its workflow.
expect '^edgecoord/tasks/wf-cbor:b/status cbor .*"workflow":"wf-cbor"'
[ "$(seen '^edgecoord/rejected/')" = 0 ] || fail "a valid submission was rejected"

tasks_json() {
	"$EC_BIN/edgecoordctl" --data-dir "$WORK/data" --json tasks
}
ids=$(tasks_json | python3 -c 'import json,sys; print(" ".join(sorted(t["task_id"] for t in json.load(sys.stdin))))')
want="b1-cbor b1-json b2-cbor b2-json t-cbor t-json wf-cbor:a wf-cbor:b wf-json:a wf-json:b"
[ "$ids" = "$want" ] || fail "edgecoordctl --json tasks lists '$ids', want '$want'"
tasks_json | grep -q '"task_id":"wf-json:b","state":"waiting"' ||
	fail "wf-json:b is not waiting for its upstream: $(tasks_json)"
pass "task, workflow and batch in JSON and CBOR: accepted statuses in the submitter's encoding, listed by edgecoordctl"

# 2. MQTT 5 request/response: answers on the response topic, correlation data
# copied, in the submitter's encoding.
rr() { # SOURCE ENC JSON CORRELATION
	submit "$1" "$2" "$3" -V mqttv5 -D publish response-topic "resp/$1" \
		-D publish correlation-data "$4"
}
rr rq json '{"task_id":"r1","type":"echo"}' C-json-1
rr rq cbor '[{"task_id":"r2","type":"echo"},{"task_id":"r3","type":"echo"}]' C-cbor-1
rr rq cbor '{"task_id":"rw","type":"collaborative_task","steps":[{"task_id":"x","type":"echo"}]}' C-cbor-2
rr rq json '{"task_id":"r4","type":"echo","bogus":true}' C-json-2
expect '^resp/rq json application/json\|C-json-1 \{"ok":true,"task_id":"r1","task_ids":\["r1"\],"state":"accepted"\}$'
expect '^resp/rq cbor application/cbor\|C-cbor-1 \{"ok":true,"task_id":null,"task_ids":\["r2","r3"\],"state":"accepted"\}$'
expect '^resp/rq cbor application/cbor\|C-cbor-2 \{"ok":true,"task_id":"rw","task_ids":\["rw:x"\],"state":"accepted"\}$'
expect '^resp/rq json application/json\|C-json-2 \{"ok":false,"error":"unknown_field","detail":"[^"]*bogus[^"]*"\}$'
# A refusal answered on the response topic is also published as a rejection.
expect '^edgecoord/rejected/rq json .*"error":"unknown_field"'
pass "request/response: ok with task_ids, refusals with error and detail, correlation data copied"

# 4. Idempotency.
before=$(ctl_task_count)
# Same content with other key order and whitespace, and JSON versus CBOR.
submit dup json '{"type": "echo",  "task_id": "t-json", "payload": {"n": [1, 2.5, "x"]}}'
submit dup cbor '{"task_id":"t-json","type":"echo","payload":{"n":[1,2.5,"x"]}}'
# Without a response topic the status is published again, each time in the
# encoding of the task's own submission (its status topic is retained: one
# encoding per topic).
expect '^edgecoord/tasks/t-json/status json application/json\|\S* \{"task_id":"t-json"' 3
[ "$(seen '^edgecoord/tasks/t-json/status cbor')" = 0 ] ||
	fail "t-json's status topic got a CBOR message"
rr dup json '{"task_id":"r1","type":"echo"}' D-1
rr dup cbor '[{"task_id":"r2","type":"echo"},{"task_id":"r3","type":"echo"}]' D-2
rr dup json '{"task_id":"wf-json","type":"collaborative_task","steps":[{"task_id":"a","type":"echo"},{"task_id":"b","type":"echo","depends_on":["a"]}]}' D-3
expect '^resp/dup json application/json\|D-1 \{"ok":true,"duplicate":true,"task_id":"r1","state":"[a-z_]+"\}$'
expect '^resp/dup cbor application/cbor\|D-2 \{"ok":true,"duplicate":true,"task_id":null,"state":"[a-z_]+"\}$'
expect '^resp/dup json application/json\|D-3 \{"ok":true,"duplicate":true,"task_id":"wf-json","state":"running"\}$'
# A resubmitted workflow without response topic: its workflow status again.
submit dup cbor '{"task_id":"wf-cbor","type":"collaborative_task","steps":[{"task_id":"a","type":"echo"},{"task_id":"b","type":"echo","depends_on":["a"]}]}'
expect '^edgecoord/workflows/wf-cbor/status cbor ' 2
# Same id, other content: conflict, the stored task unchanged.
submit dup json '{"task_id":"t-json","type":"echo","payload":{"n":2}}'
rr dup cbor '{"task_id":"b1-json","type":"sha256"}' D-4
expect '^edgecoord/rejected/dup json .*"error":"conflict","detail":"[^"]*t-json[^"]*","task_id":"t-json"'
expect '^resp/dup cbor application/cbor\|D-4 \{"ok":false,"error":"conflict","detail":"[^"]*b1-json[^"]*"\}$'
[ "$(seen '"duplicate":true')" = 3 ] || fail "want exactly 3 duplicate answers"
after=$(ctl_task_count)
[ "$after" = "$before" ] || fail "resubmissions changed the task count from $before to $after"
"$EC_BIN/edgecoordctl" --data-dir "$WORK/data" --json show t-json | grep -q '"n":\[1,2.5,"x"\]' ||
	fail "the conflicting submission changed t-json: $("$EC_BIN/edgecoordctl" --data-dir "$WORK/data" --json show t-json)"
pass "idempotency: duplicates answered (response or status again), no new task; other content is a conflict"

bg_alive ec || fail "the daemon died"
kill_bg ec TERM
[ "$LAST_STATUS" = 0 ] || fail "edgecoord exited with $LAST_STATUS on SIGTERM"
pass "clean stop"
