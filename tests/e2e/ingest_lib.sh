# SPDX-License-Identifier: MIT
# ingest_lib.sh - helpers shared by the MQTT-side end-to-end tests (ingest,
# hostile input, durability, broker outage): starting the daemon without an
# agent listener, a subscriber that records payloads in hex with their MQTT 5
# properties (so CBOR answers survive the log), and a decoder that turns
# such a log into readable lines. Source it after lib.sh and e2e_init.

CBOR_PY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cbor.py"

# Starts the coordinator NAME (log $WORK/NAME.log) on our broker with its
# data in $EC_DATA (default $WORK/data) and node id $EC_NODE (default n1, so
# client id edgecoord-n1). No PKI: the agent listener is off. Returns once the
# daemon is connected to the broker (a new MQTT-CONNECTED line in its log).
#   ec_start NAME [edgecoord args...]
ec_start() {
	local name=$1 before
	shift
	need_bin edgecoord
	before=$(_ec_connects "$name")
	start_bg "$name" "$EC_BIN/edgecoord" --broker "$MQTT_URI" \
		--data-dir "${EC_DATA:-$WORK/data}" --node-id "${EC_NODE:-n1}" "$@"
	wait_until 20 _ec_connected "$name" "$before" ||
		fail "$name did not connect to the broker"
}

_ec_connects() {
	local n
	n=$(grep -c 'MQTT-CONNECTED' "$WORK/$1.log" 2>/dev/null) || true
	echo "${n:-0}"
}

_ec_connected() {
	bg_alive "$1" || fail "$1 exited (status check: see its log)"
	[ "$(_ec_connects "$1")" -gt "$2" ]
}

# Like sub_start, but with MQTT 5 and each message as one line
# "TOPIC HEXPAYLOAD CONTENT-TYPE|RESPONSE-TOPIC|CORRELATION-DATA".
#   xsub_start NAME TOPIC [mosquitto_sub args...]
xsub_start() {
	local name=$1 topic=$2 i
	shift 2
	start_bg "$name" mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -V mqttv5 \
		-F '%t %x %C|%R|%D' -t "$topic" -t "e2e-probe/$name" "$@"
	for ((i = 0; i < 100; i++)); do
		pub "e2e-probe/$name" ready
		grep -q "^e2e-probe/$name 7265616479 " "$WORK/$name.log" 2>/dev/null && return 0
		bg_alive "$name" || fail "mosquitto_sub $name exited"
		sleep 0.1
	done
	fail "xsub_start: $name never saw its probe"
}

# Prints NAME's messages (probes left out) as
# "TOPIC ENC CONTENT-TYPE|CORRELATION JSON", where ENC is json or cbor (the
# payload's encoding by its first byte) and JSON is the payload as compact
# JSON (CBOR decoded; a payload that decodes as neither prints "?HEX").
xsub_decoded() {
	python3 - "$CBOR_PY" "$WORK/$1.log" <<'EOF'
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("cbor", sys.argv[1])
cbor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cbor)
for line in open(sys.argv[2], errors="replace"):
    parts = line.rstrip("\n").split(" ", 2)
    if len(parts) < 3 or parts[0].startswith("e2e-probe/"):
        continue
    topic, hexp, props = parts
    ct, _, rest = props.partition("|")
    _, _, corr = rest.partition("|")
    try:
        raw = bytes.fromhex(hexp)
    except ValueError:
        continue
    try:
        if raw[:1] in (b"{", b"["):
            enc, val = "json", json.loads(raw.decode("utf-8"))
        else:
            enc, val = "cbor", cbor.decode(raw)
        text = json.dumps(val, separators=(",", ":"))
    except Exception:
        enc, text = "?", "?" + hexp
    print("%s %s %s|%s %s" % (topic, enc, ct, corr, text))
EOF
}

# Counts tasks in the store ($EC_DATA): edgecoordctl --json tasks [args].
ctl_task_count() {
	"$EC_BIN/edgecoordctl" --data-dir "${EC_DATA:-$WORK/data}" --json tasks "$@" |
		python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'
}
