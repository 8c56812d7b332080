# SPDX-License-Identifier: MIT
# coord_lib.sh - a running coordinator for the scheduling and workflow
# end-to-end tests (test_retries.sh, test_workflows.sh, test_control.sh):
# source lib.sh first, call e2e_init, then these. One mosquitto, one daemon
# with its own development PKI and configuration, agents started by name,
# edgecoordctl bound to the daemon's data dir and broker, and small readers
# of the JSON that edgecoordctl --json prints (python3's json module).
#
# Agents' --exec commands run in process groups of their own; the agent kills
# them when it stops, and coord_cleanup (the EXIT trap installed by
# coord_start) also ends every command that wrote its pid to $WORK/pids.

P=edgecoord

# Starts mosquitto and the coordinator with the configuration read from
# stdin (an INI text; may be empty). Sets DATA, AGENT_PORT.
#   coord_start <<EOF ... EOF
coord_start() {
	need_bin edgecoord
	need_bin edgecoord-agent
	need_bin edgecoordctl
	need_bin edgecoord-pki
	command -v python3 >/dev/null || fail "python3 is required"
	trap coord_cleanup EXIT
	start_mosquitto
	DATA=$WORK/data
	"$EC_BIN/edgecoord-pki" init "$DATA/pki" >/dev/null || fail "pki init"
	cat >"$WORK/coord.conf"
	AGENT_PORT=$(free_port)
	start_bg coord "$EC_BIN/edgecoord" -c "$WORK/coord.conf" --broker "$MQTT_URI" \
		--data-dir "$DATA" --node-id n1 --listen "127.0.0.1:$AGENT_PORT"
	wait_until 15 grep -q MQTT-CONNECTED "$WORK/coord.log" ||
		fail "the coordinator did not connect to the broker"
	wait_until 5 grep -q 'AGENTS listening' "$WORK/coord.log" ||
		fail "the coordinator does not listen for agents"
}

coord_cleanup() {
	local st=$? p
	set +e
	# hang.sh shells, if still there (and still shells)
	for p in $(cat "$WORK/pids" 2>/dev/null); do
		case $(cat "/proc/$p/comm" 2>/dev/null) in
		sh) kill -KILL "$p" 2>/dev/null ;;
		esac
	done
	# a stopped agent would not hear the TERM of the general cleanup
	for p in "${ALL_PIDS[@]}"; do
		kill -CONT "$p" 2>/dev/null
	done
	(exit "$st")
	e2e_cleanup
}

# Starts agent NAME (log $WORK/NAME.log) and waits until the coordinator has
# it. The rest are edgecoord-agent arguments (--caps, --exec, --slots ...).
#   agent_start NAME ARGS...
agent_start() {
	local name=$1
	shift
	[ -e "$DATA/pki/$name.crt" ] ||
		"$EC_BIN/edgecoord-pki" issue "$DATA/pki" "$name" >/dev/null || fail "pki issue $name"
	local before
	before=$(grep -c "AGENT-UP agent=$name " "$WORK/coord.log" || true)
	start_bg "$name" "$EC_BIN/edgecoord-agent" --coordinator "127.0.0.1:$AGENT_PORT" \
		--server-name localhost --id "$name" --ca "$DATA/pki/ca.crt" \
		--cert "$DATA/pki/$name.crt" --key "$DATA/pki/$name.key" "$@"
	wait_until 15 _agent_up "$name" "$before" || fail "agent $name did not come up"
}

_agent_up() {
	[ "$(grep -c "AGENT-UP agent=$1 " "$WORK/coord.log" || true)" -gt "$2" ]
}

# edgecoordctl on our daemon: ctl [--json] COMMAND ARGS...
ctl() {
	"$EC_BIN/edgecoordctl" --data-dir "$DATA" --broker "$MQTT_URI" "$@"
}

# Submits MESSAGE from SOURCE (QoS 1).
#   submit SOURCE MESSAGE
submit() {
	pub "$P/submit/$1" "$2" -q 1
}

# Prints the state of task ID ("none" if the store does not have it).
state_of() {
	local out
	out=$(ctl --json show "$1" 2>/dev/null) || { echo none; return; }
	out=${out#*\"state\":\"}
	echo "${out%%\"*}"
}

_state_is() {
	[ "$(state_of "$1")" = "$2" ]
}

# Waits until task ID is in STATE (default timeout 15 s).
#   wait_state ID STATE [TIMEOUT_S]
wait_state() {
	wait_until "${3:-15}" _state_is "$1" "$2" ||
		fail "task $1 is $(state_of "$1"), not $2, after ${3:-15} s"
}

# Evaluates the python expression EXPR with `j` bound to the JSON document
# on stdin and prints the result (json.dumps for non-strings). Fails the
# test when the input is not JSON or the expression raises.
#   ... | jpy EXPR
jpy() {
	python3 -c '
import json, sys
j = json.loads(sys.stdin.read())
v = eval(sys.argv[1], {"j": j, "json": json})
print(v if isinstance(v, str) else json.dumps(v, separators=(",", ":")))' "$1" ||
		fail "jpy: cannot evaluate $1"
}

# Asserts that the python expression EXPR is true of the JSON on stdin;
# prints MESSAGE and the document otherwise.
#   ... | jcheck EXPR MESSAGE
jcheck() {
	local doc
	doc=$(cat)
	[ "$(printf '%s' "$doc" | jpy "bool($1)")" = true ] ||
		fail "$2: $1 is false of $doc"
}

# The last payload published on TOPIC as seen by subscriber NAME.
#   last_msg NAME TOPIC
last_msg() {
	grep -F -- "$2 " "$WORK/$1.log" | tail -n 1 | cut -d' ' -f2-
}

# Writes $WORK/hang.sh: an --exec command that appends "start ID ATTEMPT"
# to $WORK/marks.log when it starts and "term ID ATTEMPT" when it gets SIGTERM,
# and otherwise runs for 20 s. Use it as --exec TYPE="sh $WORK/hang.sh".
make_hang() {
	cat >"$WORK/hang.sh" <<EOF
in=\$(cat)
id=\$(printf '%s' "\$in" | sed -n 's/.*"task_id" *: *"\\([^"]*\\)".*/\\1/p')
att=\$(printf '%s' "\$in" | sed -n 's/.*"attempt" *: *\\([0-9]*\\).*/\\1/p')
# The agent closes our pipes once its child is gone; a shell reporting a
# killed job on a closed stderr would die of SIGPIPE before its trap ran.
exec >/dev/null 2>&1
echo \$\$ >> "$WORK/pids"
trap 'echo "term \$id \$att" >> "$WORK/marks.log"; exit 143' TERM
echo "start \$id \$att" >> "$WORK/marks.log"
# Short sleeps: the shell runs a trap between commands, so a TERM that
# ends the sleep first is still seen by the trap.
i=0
while [ \$i -lt 40 ]; do
	sleep 0.5 &
	wait \$!
	i=\$((i + 1))
done
EOF
	: >"$WORK/marks.log"
}

# Whether $WORK/marks.log has COUNT (default 1) lines matching the regex.
#   marked REGEX [COUNT]
marked() {
	[ "$(grep -cE -- "$1" "$WORK/marks.log" 2>/dev/null || true)" -ge "${2:-1}" ]
}

# Epoch milliseconds now.
now_ms() {
	date +%s%3N
}
