# SPDX-License-Identifier: MIT
# fleet_lib.sh - helpers shared by the agent-side end-to-end tests (DESIGN 4):
# a PKI in $WORK/data/pki, a coordinator ("coord", log $WORK/coord.log) on a
# free agent port, reference agents started by name, and small readers of
# the coordinator's log, the MQTT topics and edgecoordctl --json. Source it
# after lib.sh and e2e_init.
#
#   fleet_init [HEARTBEAT_MS MISSES]   PKI + config file; the config also sets
#                                      [mqtt] status_events = all
#   issue NAME...                      agent certificates (CN = NAME)
#   start_coord [ARGS...]              the daemon; returns once it is on MQTT
#   start_agent NAME [ARGS...]         edgecoord-agent --id NAME (cert NAME)
#   wait_up NAME [COUNT] [TIMEOUT]     COUNT AGENT-UP lines for NAME
#   ctl ARGS...                        edgecoordctl on our store and broker
#   log_ms PATTERN [N]                 epoch ms of the Nth (default last)
#                                      coordinator log line matching PATTERN

fleet_init() {
	need_bin edgecoord
	need_bin edgecoord-agent
	need_bin edgecoord-pki
	need_bin edgecoordctl
	command -v python3 >/dev/null || fail "python3 is needed"
	HB_MS=${1:-200}
	HB_MISSES=${2:-3}
	BUDGET_MS=$((HB_MS * HB_MISSES))
	DATA=$WORK/data
	PKI=$DATA/pki
	"$EC_BIN/edgecoord-pki" init "$PKI" >/dev/null || fail "pki init"
	AGENT_PORT=$(free_port)
	CONF=$WORK/edgecoord.ini
	{
		echo "[agents]"
		echo "heartbeat_ms = $HB_MS"
		echo "heartbeat_misses = $HB_MISSES"
		echo "[mqtt]"
		echo "status_events = all"
		echo "[scheduler]"
		echo "initial_delay_s = 0"
		echo "jitter = false"
		echo "${FLEET_EXTRA_CONF:-}"
	} >"$CONF"
}

issue() {
	local n
	for n in "$@"; do
		"$EC_BIN/edgecoord-pki" issue "$PKI" "$n" >/dev/null || fail "pki issue $n"
	done
}

# Number of lines of the coordinator log matching the extended regex.
coord_count() {
	grep -cE -- "$1" "$WORK/coord.log" 2>/dev/null || true
}

_coord_has() {
	[ "$(coord_count "$1")" -ge "$2" ]
}

# Waits until the coordinator log has COUNT lines matching PATTERN.
#   coord_wait PATTERN [COUNT] [TIMEOUT_S]
coord_wait() {
	wait_until "${3:-10}" _coord_has "$1" "${2:-1}" ||
		fail "coordinator log: $(coord_count "$1") of ${2:-1} lines matching '$1' after ${3:-10}s"
}

# Starts the daemon and waits for its MQTT connection (the Nth such line,
# N counting earlier runs in the same log).
start_coord() {
	local before
	before=$(coord_count 'MQTT-CONNECTED')
	start_bg coord "$EC_BIN/edgecoord" -c "$CONF" --broker "$MQTT_URI" --data-dir "$DATA" \
		--node-id n1 --listen "127.0.0.1:$AGENT_PORT" "$@"
	coord_wait 'MQTT-CONNECTED' $((before + 1)) 15
	coord_wait 'AGENTS listening' $((before + 1)) 5
}

# Starts a reference agent NAME with NAME's certificate (CERT=OTHER to use
# another one, PKIDIR=DIR for another CA's directory); default caps
# echo,sleep and 2 slots unless ARGS give them.
start_agent() {
	local name=$1 cert=${CERT:-$1} dir=${PKIDIR:-$PKI}
	shift
	local args=("$@")
	[[ " ${args[*]} " == *" --caps "* ]] || args+=(--caps echo,sleep)
	[[ " ${args[*]} " == *" --slots "* ]] || args+=(--slots 2)
	start_bg "$name" "$EC_BIN/edgecoord-agent" --coordinator "127.0.0.1:$AGENT_PORT" \
		--server-name localhost --id "$name" --ca "$PKI/ca.crt" \
		--cert "$dir/$cert.crt" --key "$dir/$cert.key" "${args[@]}"
}

wait_up() {
	coord_wait "AGENT-UP agent=$1 " "${2:-1}" "${3:-10}"
}

ctl() {
	"$EC_BIN/edgecoordctl" --data-dir "$DATA" --broker "$MQTT_URI" "$@"
}

# Epoch milliseconds of the Nth (1-based; default: last) coordinator log line
# matching the extended regex PATTERN; the line starts with an ISO-8601 UTC
# time with milliseconds.
log_ms() {
	local line
	if [ -n "${2:-}" ]; then
		line=$(grep -E -- "$1" "$WORK/coord.log" | sed -n "${2}p")
	else
		line=$(grep -E -- "$1" "$WORK/coord.log" | tail -n 1)
	fi
	[ -n "$line" ] || fail "no coordinator log line matches '$1'"
	python3 -c 'import sys, datetime
t = sys.argv[1].split()[0]
d = datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
print(round(d.timestamp() * 1000))' "$line"
}

now_ms() {
	date +%s%3N
}

# Prints FIELD of the JSON object in `edgecoordctl --json show ID`; lists and
# maps come out as compact JSON.
show_field() {
	ctl --json show "$1" | python3 -c 'import sys, json
v = json.load(sys.stdin).get(sys.argv[1])
print(v if isinstance(v, str) else json.dumps(v, separators=(",", ":")))' "$2"
}

# Prints the task's history as lines "FROM TO AGENT DETAIL TS".
history() {
	ctl --json show "$1" | python3 -c 'import sys, json
for h in json.load(sys.stdin)["history"]:
    print(h["from"], h["to"], h["agent"] or "-", (h["detail"] or "-").replace(" ", "_"), h["ts"])'
}

# Whether task ID is in state S (from the store).
task_in() {
	[ "$(show_field "$1" state 2>/dev/null)" = "$2" ]
}
