# SPDX-License-Identifier: MIT
# lib.sh - helpers for the end-to-end tests (bash; source it, then call
# e2e_init). Each test gets its own work directory, its own mosquitto on a
# free loopback port, and background processes that are all killed, with the
# directory removed, when the test exits for any reason.
#
# Processes are started in their own process group (setsid), so that cleanup
# also reaches their children (an agent's --exec commands, for instance).
# Call start_* helpers directly, never inside $(...): a subshell would record
# the pid where the cleanup cannot see it.
#
# Environment: EC_BIN (built programs), EC_SRC (source tree), both set by
# ctest. EC_E2E_KEEP=1 keeps the work directory of a failed test.

# Starts the test: strict mode, a work dir in $WORK, cleanup on exit.
e2e_init() {
	set -euo pipefail
	TEST_NAME=$(basename "$0" .sh)
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/ec-e2e-${TEST_NAME}.XXXXXX")
	declare -gA BG_PIDS=()
	declare -ga ALL_PIDS=()
	LAST_STATUS=0
	MOSQ_PID=
	trap e2e_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# Kills every process group we started (TERM, then KILL after 2 s) and
# removes the work dir. Runs from the EXIT trap.
e2e_cleanup() {
	local st=$? pid i
	set +e
	for pid in "${ALL_PIDS[@]}"; do
		kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
	done
	for pid in "${ALL_PIDS[@]}"; do
		for i in $(seq 20); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [ "$st" -ne 0 ] && [ "${EC_E2E_KEEP:-0}" = 1 ]; then
		echo "e2e: kept $WORK" >&2
	else
		rm -rf "$WORK"
	fi
	exit "$st"
}

# Prints a failure with the tail of every log in the work dir, and exits 1.
fail() {
	local f
	echo "FAIL: ${TEST_NAME:-e2e}: $*" >&2
	for f in "$WORK"/*.log; do
		[ -e "$f" ] || continue
		echo "---- ${f##*/} (last 20 lines)" >&2
		tail -n 20 "$f" >&2
	done
	exit 1
}

# Prints a passed step.
pass() {
	echo "PASS: ${TEST_NAME:-e2e}: $*"
}

# Fails unless $EC_BIN/NAME is an executable (a program the build makes).
need_bin() {
	[ -n "${EC_BIN:-}" ] || fail "EC_BIN is not set (run under ctest)"
	[ -x "$EC_BIN/$1" ] || fail "$EC_BIN/$1 is missing: build it first"
}

# Prints a TCP port that was free on 127.0.0.1 a moment ago.
free_port() {
	if command -v python3 >/dev/null 2>&1; then
		python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
		return
	fi
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}

# Succeeds once CMD... succeeds, polling every 0.1 s; fails after TIMEOUT_S.
#   wait_until TIMEOUT_S CMD...
wait_until() {
	local timeout=$1 i
	shift
	for ((i = 0; i < timeout * 10; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	"$@"
}

port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Waits until 127.0.0.1:PORT accepts connections (default 10 s).
#   wait_for_port PORT [TIMEOUT_S]
wait_for_port() {
	wait_until "${2:-10}" port_open "$1" || fail "nothing listens on port $1"
}

# Starts CMD... in the background, in its own process group, with stdout and
# stderr in $WORK/NAME.log; its pid is in BG_PIDS[NAME].
#   start_bg NAME CMD...
start_bg() {
	local name=$1
	shift
	[ -z "${BG_PIDS[$name]:-}" ] || fail "start_bg: $name is already running"
	setsid "$@" >>"$WORK/$name.log" 2>&1 </dev/null &
	BG_PIDS[$name]=$!
	ALL_PIDS+=("$!")
}

# Whether NAME is still running.
bg_alive() {
	local pid=${BG_PIDS[$1]:-}
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# Sends SIGNAL (default TERM) to NAME, waits for it to exit (KILL after 10 s),
# and leaves its exit status in LAST_STATUS (128+N for a signal N).
#   kill_bg NAME [SIGNAL]
kill_bg() {
	local name=$1 sig=${2:-TERM} pid=${BG_PIDS[$1]:-}
	[ -n "$pid" ] || fail "kill_bg: no process $name"
	kill "-$sig" "$pid" 2>/dev/null || true
	wait_until 10 _gone "$pid" || kill -KILL -- "-$pid" 2>/dev/null || true
	_reap "$name" "$pid"
}

# Waits until NAME exits by itself (default 10 s, then fails) and leaves its
# exit status in LAST_STATUS.
#   wait_bg NAME [TIMEOUT_S]
wait_bg() {
	local name=$1 pid=${BG_PIDS[$1]:-}
	[ -n "$pid" ] || fail "wait_bg: no process $name"
	wait_until "${2:-10}" _gone "$pid" || fail "$name did not exit within ${2:-10} s"
	_reap "$name" "$pid"
}

# Whether PID has exited (a zombie counts: it waits only for our wait).
_gone() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	stat=${stat##*) }
	[[ $stat == Z* || $stat == X* ]]
}

# Reaps PID of NAME into LAST_STATUS and forgets it, so that the cleanup never
# signals a pid number the system may have given to someone else.
# Leftovers of its process group (children it left) get SIGTERM first; the
# zombie still holds the pid, so the group number cannot have been reused.
_reap() {
	local name=$1 pid=$2 p keep=()
	kill -TERM -- "-$pid" 2>/dev/null || true
	LAST_STATUS=0
	wait "$pid" 2>/dev/null || LAST_STATUS=$?
	unset "BG_PIDS[$name]"
	for p in "${ALL_PIDS[@]}"; do
		[ "$p" = "$pid" ] || keep+=("$p")
	done
	ALL_PIDS=("${keep[@]}")
}

# Starts a mosquitto of our own on a free loopback port (the same port again
# when MQTT_PORT is set by restart_mosquitto). --persist keeps retained
# messages and sessions in $WORK/mosquitto/ across restarts. Exports
# MQTT_PORT and MQTT_URI; its log is $WORK/mosquitto.log.
#   start_mosquitto [--persist]
start_mosquitto() {
	local persist=false
	[ "${1:-}" = --persist ] && persist=true
	[ -z "$MOSQ_PID" ] || fail "start_mosquitto: already running"
	MQTT_PORT=${MQTT_PORT:-$(free_port)}
	MOSQ_PERSIST=$persist
	mkdir -p "$WORK/mosquitto"
	{
		echo "listener $MQTT_PORT 127.0.0.1"
		echo "allow_anonymous true"
		# Nagle on the broker's sockets holds a small PUBLISH behind an
		# unacknowledged one for ~40 ms (docs/mqtt.md, broker settings).
		echo "set_tcp_nodelay true"
		# The default of 1000 drops messages to a slow persistent
		# subscriber (LIBNOTES 7).
		echo "max_queued_messages 100000"
		echo "max_inflight_messages 100"
		echo "persistence $persist"
		echo "persistence_location $WORK/mosquitto/"
		echo "autosave_interval 0"
		echo "log_dest file $WORK/mosquitto.log"
		echo "log_type error"
		echo "log_type warning"
		echo "log_type notice"
		echo "log_type information"
		echo "connection_messages true"
		# As root mosquitto drops to the "mosquitto" user, which can
		# neither reach our 0700 work dir nor write its database.
		[ "$(id -u)" = 0 ] && echo "user root"
	} >"$WORK/mosquitto.conf"
	start_bg mosquitto mosquitto -c "$WORK/mosquitto.conf"
	MOSQ_PID=${BG_PIDS[mosquitto]}
	wait_until 10 port_open "$MQTT_PORT" ||
		fail "mosquitto did not open port $MQTT_PORT"
	export MQTT_PORT MQTT_URI="tcp://127.0.0.1:$MQTT_PORT"
}

# Stops our mosquitto (SIGTERM; it saves its database when persistent).
stop_mosquitto() {
	[ -n "$MOSQ_PID" ] || fail "stop_mosquitto: not running"
	kill_bg mosquitto TERM
	MOSQ_PID=
	[ "$LAST_STATUS" = 0 ] || fail "mosquitto exited with status $LAST_STATUS"
}

# Stops and starts our mosquitto on the same port, with the same persistence.
restart_mosquitto() {
	local persist=$MOSQ_PERSIST
	stop_mosquitto
	if [ "$persist" = true ]; then
		start_mosquitto --persist
	else
		start_mosquitto
	fi
}

# Publishes to our mosquitto: pub TOPIC MESSAGE [mosquitto_pub args...]
pub() {
	local topic=$1 msg=$2
	shift 2
	mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -t "$topic" -m "$msg" "$@"
}

# Starts "mosquitto_sub -v" on TOPIC into $WORK/NAME.log ("TOPIC PAYLOAD"
# per line) and returns once it is subscribed: it also listens on a probe
# topic e2e-probe/NAME, which is published until seen. sub_wait ignores
# probe lines.
#   sub_start NAME TOPIC [mosquitto_sub args...]
sub_start() {
	local name=$1 topic=$2 i
	shift 2
	start_bg "$name" mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -v \
		-t "$topic" -t "e2e-probe/$name" "$@"
	for ((i = 0; i < 100; i++)); do
		pub "e2e-probe/$name" ready
		grep -q "^e2e-probe/$name ready" "$WORK/$name.log" 2>/dev/null && return 0
		bg_alive "$name" || fail "mosquitto_sub $name exited"
		sleep 0.1
	done
	fail "sub_start: $name never saw its probe"
}

# Prints how many lines of NAME's output match the extended regex PATTERN.
#   sub_count NAME PATTERN
sub_count() {
	grep -v "^e2e-probe/" "$WORK/$1.log" 2>/dev/null | grep -cE -- "$2" || true
}

# Waits until NAME's output has COUNT (default 1) lines matching PATTERN
# (extended regex), for at most TIMEOUT_S (default 10) seconds.
#   sub_wait NAME PATTERN [COUNT] [TIMEOUT_S]
sub_wait() {
	local name=$1 pattern=$2 count=${3:-1} timeout=${4:-10}
	wait_until "$timeout" _sub_has "$name" "$pattern" "$count" ||
		fail "$name: $(sub_count "$name" "$pattern") of $count lines matching '$pattern' after ${timeout}s"
}

_sub_has() {
	[ "$(sub_count "$1" "$2")" -ge "$3" ]
}
