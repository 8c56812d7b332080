#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench_ingest.sh - ingest throughput of the coordinator over a real
# mosquitto on loopback (run through `tools/bench ingest [SINGLE] [TASKS]`).
#
# Measures, in one run:
#  - ceiling: mosquitto alone, SINGLE QoS 1 messages from mosquitto_pub -l to
#    a QoS 1 mosquitto_sub -C SINGLE;
#  - single: SINGLE one-task submissions (mosquitto_pub -q 1 -l);
#  - batch: TASKS tasks in submissions of 100;
#  - the same batches to fresh coordinators counted on MQTT 5 responses (one
#    per submission) instead of statuses: with the default status_events,
#    and with status_events = final;
#  - the coordinator's VmRSS once TASKS (+ SINGLE) tasks are stored;
#  - the bytes written to the store's device per task, single and batched.
# "Accepted" is counted on a subscriber of P/tasks/+/status: the coordinator
# publishes a task's `accepted` status only after the LMDB commit that
# stores it, and acknowledges the submission (PUBACK) after that same commit,
# so the last status seen marks the last task committed and acknowledged.
# The clock runs from the first publish to the last status received.
set -euo pipefail
BIN=${EC_BIN:-build/bin}
SINGLE=${1:-10000}
TASKS=${2:-100000}
W=$(mktemp -d "${TMPDIR:-/tmp}/ec-bench-ingest.XXXXXX")
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{
	echo "listener $PORT 127.0.0.1"
	echo "allow_anonymous true"
	echo "set_tcp_nodelay true" # docs/mqtt.md, broker settings
	echo "max_queued_messages 1000000"
	echo "max_inflight_messages 100"
	echo "persistence false"
	[ "$(id -u)" = 0 ] && echo "user root"
} >"$W/mosquitto.conf"
mosquitto -c "$W/mosquitto.conf" >"$W/mosquitto.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

now() { date +%s.%N; }
# bytes written to the device holding the store (journal included), 0 if unknown
DISK_STAT=/sys/class/block/$(basename "$(df --output=source "$W" | tail -n 1)")/stat
disk_bytes() { [ -r "$DISK_STAT" ] && awk '{printf "%.0f\n", $7 * 512}' "$DISK_STAT" || echo 0; }
# Runs mosquitto_sub -C COUNT on TOPIC, publishes FILE (-l) to PUBTOPIC,
# prints the seconds from the first publish to the COUNT-th message.
timed() { # COUNT TOPIC PUBTOPIC FILE [mosquitto_pub args]
	local t0 t1
	mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -C "$1" -t "$2" >/dev/null &
	local sub=$!
	sleep 0.5 # subscribed (mosquitto_sub has no ready signal; 0.5 s is ample on loopback)
	t0=$(now)
	mosquitto_pub -h 127.0.0.1 -p "$PORT" -q 1 -t "$3" -l "${@:5}" <"$4"
	wait "$sub"
	t1=$(now)
	echo "$t1 - $t0" | bc -l
}

seq 1 "$SINGLE" | sed 's/.*/{"task_id":"s-&","type":"echo","payload":{"n":&}}/' >"$W/single"
python3 -c '
import json, sys
n = int(sys.argv[1])
for b in range(n // 100):
    print(json.dumps([{"task_id": "b-%d-%d" % (b, i), "type": "echo", "payload": {"n": i}}
                      for i in range(100)], separators=(",", ":")))' "$TASKS" >"$W/batch"
NB=$((TASKS / 100 * 100))

ceil_s=$(timed "$SINGLE" bench/ceiling bench/ceiling "$W/single")

"$BIN/edgecoord" --broker "tcp://127.0.0.1:$PORT" --data-dir "$W/data" --node-id bench \
	--log-level warn >"$W/ec.log" 2>&1 &
EC=$!
PIDS+=("$EC")
for _ in $(seq 100); do
	mosquitto_sub -h 127.0.0.1 -p "$PORT" -C 1 -W 1 -t edgecoord/coordinator/bench/state 2>/dev/null |
		grep -q online && break
done
d0=$(disk_bytes)
single_s=$(timed "$SINGLE" 'edgecoord/tasks/+/status' edgecoord/submit/bench "$W/single")
d1=$(disk_bytes)
batch_s=$(timed "$NB" 'edgecoord/tasks/+/status' edgecoord/submit/bench "$W/batch")
d2=$(disk_bytes)
sleep 1
rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$EC/status")
hwm_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$EC/status")
anon_kb=$(awk '/^RssAnon/ {print $2}' "/proc/$EC/status")
file_kb=$(awk '/^RssFile/ {print $2}' "/proc/$EC/status")
stored=$("$BIN/edgecoordctl" --data-dir "$W/data" --json tasks | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')

# The same batches to a fresh coordinator, counted on the MQTT 5 response
# (one per submission, published after its commit) instead of statuses:
# with the default status_events each task's `accepted` status still goes
# to the broker, but no subscriber's delivery rate bounds the count; with
# status_events = final there is no status per accepted task at all.
kill "$EC"
wait "$EC" 2>/dev/null || true
responses_run() { # NAME CONFIG-TEXT: seconds for the batches
	printf '%b' "$2" >"$W/$1.ini"
	"$BIN/edgecoord" -c "$W/$1.ini" --broker "tcp://127.0.0.1:$PORT" --data-dir "$W/data-$1" \
		--node-id "$1" --log-level warn >"$W/ec-$1.log" 2>&1 &
	local pid=$!
	PIDS+=("$pid")
	for _ in $(seq 100); do
		mosquitto_sub -h 127.0.0.1 -p "$PORT" -C 1 -W 1 -t "edgecoord/coordinator/$1/state" \
			2>/dev/null | grep -q online && break
	done
	timed "$((NB / 100))" "bench/responses-$1" edgecoord/submit/bench "$W/batch" \
		-V mqttv5 -D publish response-topic "bench/responses-$1"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
}
resp_s=$(responses_run default '')
final_s=$(responses_run final '[mqtt]\nstatus_events = final\n')

python3 - "$SINGLE" "$NB" "$ceil_s" "$single_s" "$batch_s" "$rss_kb" "$hwm_kb" "$stored" "$anon_kb" "$file_kb" "$final_s" \
	"$d0" "$d1" "$d2" "$resp_s" <<'PY'
import sys
single, nb = int(sys.argv[1]), int(sys.argv[2])
ceil_s, single_s, batch_s = map(float, sys.argv[3:6])
rss, hwm, stored = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
anon, filek = int(sys.argv[9]), int(sys.argv[10])
ceil = single / ceil_s
s_msgs = single / single_s
b_msgs, b_tasks = (nb // 100) / batch_s, nb / batch_s
def ok(v, t): return "met" if v >= t else "MISSED"
print("%-44s %12s %12s %10s" % ("cell", "msgs/s", "tasks/s", "target"))
print("%-44s %12.0f %12s %10s" % ("mosquitto ceiling (pub -l -> sub, QoS 1)", ceil, "-", "-"))
print("%-44s %12.0f %12.0f %10s" % ("single-task messages (%d)" % single, s_msgs, s_msgs, "3000 " + ok(s_msgs, 3000)))
print("%-44s %12.0f %12.0f %10s" % ("batches of 100 (%d tasks), on statuses" % nb, b_msgs, b_tasks, "-"))
for name, secs in (("  the same, on responses", float(sys.argv[15])),
                   ("  the same, status_events = final", float(sys.argv[11]))):
    t = nb / secs
    print("%-44s %12.0f %12.0f %10s" % (name, (nb // 100) / secs, t, "50000 " + ok(t, 50000)))
print()
print("single / ceiling: %.2f   batch tasks/s / single tasks/s: %.1f" % (s_msgs / ceil, b_tasks / s_msgs))
d0, d1, d2 = map(int, sys.argv[12:15])
print("device writes per task (journal included): single %.1f KB, batches of 100 %.1f KB"
      % ((d1 - d0) / 1024 / single, (d2 - d1) / 1024 / nb))
print("coordinator VmRSS with %d tasks stored: %.1f MiB (peak VmHWM %.1f MiB); target <= 16 MiB: %s"
      % (stored, rss / 1024, hwm / 1024, "met" if rss <= 16 * 1024 else "MISSED"))
print("  of which RssAnon (heap, stacks) %.1f MiB, RssFile (LMDB map pages, libraries) %.1f MiB"
      % (anon / 1024, filek / 1024))
PY
