#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_powercut.sh - a power cut undoes no commit that let anything out.
# The daemon's store syncs each commit's data but leaves its meta page to the
# next commit's sync (store.h, lazy_meta): a cut may undo the last commit, so
# its PUBACKs, statuses and frames to agents wait until it is durable
# (coord.h). powercut.so keeps the image of the store that a cut would leave
# and cuts at a chosen sync, or at a chosen time (tests/e2e/powercut.c); a
# SIGKILL alone would not do, the page cache keeps every write. Six cuts
# while submissions keep arriving and two agents work, each followed by a
# restart on that image.
# Then:
# - every task published is there and succeeded: a PUBACK let out for a
#   commit the cut undid would lose that submission for good (the broker
#   does not deliver an acknowledged message again);
# - every "succeeded" status a subscriber saw for a task carries the time of
#   the one success in the store's history: a status let out for a commit
#   the cut undid would show a success that the task then had again, later.
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/fleet_lib.sh"
need_bin powercut.so

N=3000
CUTS=6
fleet_init 1000 3
issue p1 p2
start_mosquitto
sub_start st 'edgecoord/tasks/+/status' -q 1
start_coord
start_agent p1 --slots 4
start_agent p2 --slots 4
wait_up p1
wait_up p2

# N tasks in arrays of 1 to 8, one array per line, fed to one publisher as
# the test goes: a run that ends in a cut always has work coming in.
python3 - "$N" >"$WORK/load.txt" <<'EOF'
import json, sys
n, i, k = int(sys.argv[1]), 0, 0
while i < n:
    m = min(1 + k % 8, n - i)
    tasks = [{"task_id": "p%d" % j, "type": "echo", "payload": {"j": j}} for j in range(i, i + m)]
    print(json.dumps(tasks[0] if m == 1 else tasks))
    i, k = i + m, k + 1
EOF
mapfile -t LINES <"$WORK/load.txt"
mkfifo "$WORK/feed"
start_bg load bash -c "exec mosquitto_pub -h 127.0.0.1 -p $MQTT_PORT -t edgecoord/submit/pc \
	-q 1 -l <'$WORK/feed'"
exec 3>"$WORK/feed"
next=0
feed() { # PAUSE: one more line to the publisher
	[ "$next" -lt "${#LINES[@]}" ] || fail "the load ran out before the cut"
	printf '%s\n' "${LINES[next]}" >&3
	next=$((next + 1))
	sleep "$1"
}

succeeded() { ctl --json tasks --state succeeded | python3 -c 'import sys, json; print(len(json.load(sys.stdin)))'; }

for i in $(seq 20); do feed 0.02; done
kill_bg coord
# From here on each run of the daemon ends in a cut, at a sync 20-100 or
# 400-1000 ms after its start, and the next starts on the image it left.
# The feed (50 lines a second) lasts well beyond six of them.
asan=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0
for cut in $(seq 1 "$CUTS"); do
	if [ $((cut % 2)) = 1 ]; then
		at=$((20 + RANDOM % 80))
		when="sync $at" how=POWERCUT_AT=$at
	else
		at=$((400 + RANDOM % 600))
		when="$at ms" how=POWERCUT_AT_MS=$at
	fi
	start_bg coord env LD_PRELOAD="$EC_BIN/powercut.so" POWERCUT_FILE=data.mdb \
		POWERCUT_IMAGE="$WORK/image.mdb" "$how" ASAN_OPTIONS="$asan" \
		"$EC_BIN/edgecoord" -c "$CONF" --broker "$MQTT_URI" --data-dir "$DATA" --node-id n1 \
		--listen "127.0.0.1:$AGENT_PORT" 3>&- # the feed's end is ours alone
	while ! _gone "${BG_PIDS[coord]}"; do feed 0.02; done
	wait_bg coord
	grep -q "power cut at $when\$" "$WORK/coord.log" || fail "cut $cut: no cut at $when"
	# the disk as the cut left it; LMDB rebuilds the lock file at open
	cp "$WORK/image.mdb" "$DATA/data.mdb"
	rm -f "$DATA/lock.mdb"
	echo "cut $cut at $when: $(succeeded) of $N succeeded on the disk, $next lines sent"
done
start_coord 3>&-
while [ "$next" -lt "${#LINES[@]}" ]; do feed 0.005; done
exec 3>&-
wait_bg load 120
wait_until 60 eval '[ "$(succeeded)" = "$N" ]' || fail "only $(succeeded) of $N succeeded"
ctl fsck >/dev/null || fail "fsck after the cuts"

# The statuses drain (the outbox may still hold the last ones), then compare.
seen() { grep -c '"state":"succeeded"' "$WORK/st.log" || true; }
wait_until 30 eval '[ "$(seen)" -ge "$N" ]' || fail "only $(seen) succeeded statuses for $N tasks"
for i in $(seq 0 $((N - 1))); do ctl --json show "p$i" || fail "show p$i"; echo; done >"$WORK/shows"
python3 - "$WORK/shows" "$WORK/st.log" "$N" <<'EOF' || fail "a status was let out for a commit the cut undid"
import json, sys
stored = {}
for line in open(sys.argv[1]):
    if line.strip():
        t = json.loads(line)
        ok = [h["ts"] for h in t["history"] if h["to"] == "succeeded"]
        if t["state"] != "succeeded" or len(ok) != 1:
            print("%s: %s, %d successes in its history" % (t["task_id"], t["state"], len(ok)))
            sys.exit(1)
        stored[t["task_id"]] = ok[0]
bad = published = 0
for line in open(sys.argv[2]):
    topic, _, payload = line.partition(" ")
    if not topic.startswith("edgecoord/tasks/") or '"succeeded"' not in payload:
        continue
    s = json.loads(payload)
    published += 1
    if stored.get(s["task_id"]) != s["ts"]:
        print("%s: published succeeded at %s, the store has %s"
              % (s["task_id"], s["ts"], stored.get(s["task_id"])))
        bad += 1
print("%d tasks; %d succeeded statuses published, %d from an undone commit"
      % (len(stored), published, bad))
sys.exit(bad or len(stored) != int(sys.argv[3]))
EOF
bg_alive coord || fail "the coordinator died"
pass "$CUTS power cuts under load: $N tasks, none lost, no status from an undone commit"
