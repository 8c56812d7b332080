#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench_e2e.sh - `tools/bench e2e`: the whole path, MQTT submit -> coordinator
# -> agents over TLS -> result on MQTT, with a mosquitto, a coordinator and
# reference agents of our own in a temporary directory (the e2e harness,
# tests/e2e/lib.sh). Workloads (defaults; override with the environment):
#   ceiling  mosquitto's own QoS 1 loopback rate, measured in the same run
#   idle     VmRSS of the coordinator plus one agent, idle
#   W1       W1_TASKS (20000) independent echo tasks on 2 agents x 4 slots,
#            in arrays of W1_BATCH (100); then W1_SINGLES (5000) one per message
#   latency  single tasks at half of the single-message peak, LAT_SECS (5) s
#   W2       W2_FLOWS (1000) workflows, each a chain of 5 echo steps, W2_RUNS
#            (5) times: the median is reported
#   W3       SIGKILL an agent 1 s into a 5 s task (heartbeat 1000 ms x 3):
#            time from the kill until the task runs elsewhere
# STATUS_EVENTS sets the coordinator's mqtt.status_events (which task states
# publish a status: broker messages per task are the ceiling of W1 and W2).
# For each, the coordinator's CPU time (utime+stime from /proc/PID/stat),
# VmRSS, and the bytes written to the store's device per task (or per
# workflow, for W2). Targets are reported, not asserted. BENCH_STRACE=1 adds
# a count of the coordinator's system calls during W1. Run by tools/bench
# after a build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export EC_BIN=${EC_BIN:-$ROOT/build/bin} EC_SRC=$ROOT
source "$ROOT/tests/e2e/lib.sh"
e2e_init
source "$ROOT/tests/e2e/fleet_lib.sh"
need_bin bench-e2e

W1_TASKS=${W1_TASKS:-20000}
W1_BATCH=${W1_BATCH:-100}
W1_SINGLES=${W1_SINGLES:-5000}
W2_FLOWS=${W2_FLOWS:-1000}
LAT_SECS=${LAT_SECS:-5}
TCK=$(getconf CLK_TCK)

fleet_init 1000 3
# STATUS_EVENTS=final|all|milestones (default: the default, milestones)
sed -i "s/^status_events = all$/status_events = ${STATUS_EVENTS:-milestones}/" "$CONF"
start_mosquitto

bench() { "$EC_BIN/bench-e2e" --broker "$MQTT_URI" "$@"; }
val() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status"; }
# Bytes written to the device that holds the store (sectors written in its
# /sys/class/block stat, journal included: what an SD card wears), or 0 if
# that device cannot be found. Not /proc/PID/io: with large folios it charges
# a whole folio for every page dirtied.
DISK_STAT=/sys/class/block/$(basename "$(df --output=source "$WORK" | tail -n 1)")/stat
disk_bytes() { [ -r "$DISK_STAT" ] && awk '{printf "%.0f\n", $7 * 512}' "$DISK_STAT" || echo 0; }
# PSS: shared pages (libc, mbedtls) divided among the processes mapping them
pss_kb() { sed -n 's/^Pss:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/smaps_rollup"; }
met() { if awk "BEGIN{exit !($1)}"; then echo met; else echo MISSED; fi; }

# run NAME ARGS...: one bench-e2e run with the coordinator's CPU and RSS.
run() {
	local name=$1 c0 c1 d0 d1 out secs
	shift
	c0=$(cpu_ticks "$COORD")
	d0=$(disk_bytes)
	out=$(bench "$@") || fail "bench-e2e $*"
	c1=$(cpu_ticks "$COORD")
	d1=$(disk_bytes)
	secs=$(val secs "$out")
	LAST="$out coord_cpu_s=$(awk "BEGIN{printf \"%.2f\", ($c1 - $c0) / $TCK}")"
	LAST+=" coord_cpu_pct=$(awk "BEGIN{printf \"%.0f\", 100 * ($c1 - $c0) / $TCK / $secs}")"
	LAST+=" coord_rss_kb=$(rss_kb "$COORD")"
	LAST+=" disk_kb_per_item=$(awk "BEGIN{printf \"%.1f\", ($d1 - $d0) / 1024 / $(val n "$out")}")"
	printf '%-9s %s\n' "$name" "$LAST"
}

echo "== tools/bench e2e: $(nproc) cores, $(uname -r), mqtt.status_events=${STATUS_EVENTS:-milestones}"
out=$(bench loopback 20000) || fail "loopback"
ceiling=$(val rate "$out")
printf '%-9s %s\n' ceiling "$out"

issue x1 x2
start_coord
COORD=${BG_PIDS[coord]}
start_agent x1 --caps echo,sleep --slots 4
wait_up x1
sleep 2
idle_kb=$(($(rss_kb "$COORD") + $(rss_kb "${BG_PIDS[x1]}")))
idle_pss=$(($(pss_kb "$COORD") + $(pss_kb "${BG_PIDS[x1]}")))
printf '%-9s coord_rss_kb=%s agent_rss_kb=%s total_kb=%s total_pss_kb=%s\n' idle \
	"$(rss_kb "$COORD")" "$(rss_kb "${BG_PIDS[x1]}")" "$idle_kb" "$idle_pss"
start_agent x2 --caps echo,sleep --slots 4
wait_up x2

# BENCH_STRACE=1: count the coordinator's system calls during W1 (slows it).
[ "${BENCH_STRACE:-0}" = 1 ] && start_bg strace strace -c -f -p "$COORD" -o "$WORK/strace.txt" && sleep 1
run W1 tasks "$W1_TASKS" "$W1_BATCH"
w1=$(val rate "$LAST")
if [ "${BENCH_STRACE:-0}" = 1 ]; then
	kill_bg strace INT
	head -n 14 "$WORK/strace.txt"
fi
run W1-single tasks "$W1_SINGLES" 1
single=$(val rate "$LAST")
half=$((single / 2))
run latency tasks $((half * LAT_SECS)) 1 "$half"
p50=$(val p50_ms "$LAST")
p99=$(val p99_ms "$LAST")
# W2 lasts about half a second, so one run is noisy: W2_RUNS (5) runs, the
# median reported.
w2s=()
for _ in $(seq "${W2_RUNS:-5}"); do
	run W2 chains "$W2_FLOWS" 5
	w2s+=("$(val rate "$LAST")")
done
w2=$(printf '%s\n' "${w2s[@]}" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')

# W3: a 5 s task on x1 or x2; SIGKILL its agent after 1 s. Timed by the
# "running" statuses, which status_events=final does not publish.
w3_ms=-
if [ "${STATUS_EVENTS:-milestones}" != final ]; then
sub_start st 'edgecoord/tasks/w3/status' -q 1
pub edgecoord/submit/bench '{"task_id":"w3","type":"sleep","payload":{"ms":5000}}' -q 1
sub_wait st '^edgecoord/tasks/w3/status .*"state":"running"' 1 10
victim=$(sed -n 's/^edgecoord\/tasks\/w3\/status .*"state":"running".*"agent":"\(x[12]\)".*/\1/p' \
	"$WORK/st.log" | head -n 1)
[ -n "$victim" ] || fail "w3: no agent in $(cat "$WORK/st.log")"
other=x1
[ "$victim" = x1 ] && other=x2
sleep 1
t_kill=$(now_ms)
kill_bg "$victim" KILL
sub_wait st "^edgecoord/tasks/w3/status .*\"state\":\"running\".*\"agent\":\"$other\"" 1 15
t_run=$(sed -n "s/^edgecoord\/tasks\/w3\/status .*\"state\":\"running\".*\"agent\":\"$other\".*\"ts\":\([0-9]*\).*/\1/p" \
	"$WORK/st.log" | head -n 1)
w3_ms=$((t_run - t_kill))
printf '%-9s kill %s -> running on %s: %s ms (AGENT-OFFLINE +%s ms)\n' W3 "$victim" "$other" \
	"$w3_ms" $(($(log_ms "AGENT-OFFLINE $victim ") - t_kill))
fi

echo
echo "== targets (reported, not asserted)"
printf '  %-44s %8s  %s\n' "mosquitto loopback ceiling (msg/s)" "$ceiling" "-"
printf '  %-44s %8s  %s\n' "W1 tasks/s (arrays of $W1_BATCH) >= 10000" "$w1" "$(met "$w1 >= 10000")"
printf '  %-44s %8s  %s\n' "W1 tasks/s, one task per message" "$single" "-"
printf '  %-44s %8s  %s\n' "W2 workflows/s (chains of 5, median) >= 2000" "$w2" "$(met "$w2 >= 2000")"
printf '  %-44s %8s  %s\n' "p50 submit->result at $half/s <= 2 ms" "$p50" "$(met "$p50 <= 2")"
printf '  %-44s %8s  %s\n' "p99 submit->result at $half/s <= 10 ms" "$p99" "$(met "$p99 <= 10")"
printf '  %-44s %8s  %s\n' "W3 kill -> running elsewhere (ms) <= 3500" "$w3_ms" "$([ "$w3_ms" = - ] && echo "not run" || met "$w3_ms <= 3500")"
printf '  %-44s %8s  %s\n' "idle coordinator + agent RSS (kB) <= 5120" "$idle_kb" "$(met "$idle_kb <= 5120")"
printf '  %-44s %8s  %s\n' "  the same as PSS (shared pages split)" "$idle_pss" "-"
