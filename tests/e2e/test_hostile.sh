#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_hostile.sh - the daemon survives 1,000 hostile submissions published
# back to back at QoS 1: random bytes, truncated CBOR, CBOR heads claiming
# huge arrays and maps, nesting 100,000 deep (JSON and CBOR), a 10 MB
# payload, invalid UTF-8, JSON with NUL bytes and \u0000, indefinite CBOR
# without its break. Each one is refused on P/rejected/SOURCE (exactly one
# rejection per message), the daemon stays up, tasks accepted before are all
# still there, and a valid submission afterwards is accepted.
# The messages go out through a minimal MQTT 3.1.1 client written here (raw
# socket), since mosquitto_pub -l cannot carry newlines or NUL bytes.
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/ingest_lib.sh"
need_bin edgecoordctl

start_mosquitto
ec_start ec
xsub_start rej 'edgecoord/rejected/#'
sub_start acc 'edgecoord/tasks/+/status' -F '%t %p'

for i in $(seq 10); do
	pub edgecoord/submit/good "{\"task_id\":\"before-$i\",\"type\":\"echo\"}" -q 1
done
sub_wait acc '"state":"accepted"' 10 10

python3 - "$MQTT_PORT" edgecoord/submit/hostile 1000 <<'PY' || fail "the hostile publisher failed"
import os, random, socket, struct, sys
port, topic, count = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
rnd = random.Random(20261122)

def varint(n):
    out = b""
    while True:
        b, n = n % 128, n // 128
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out

def packet(kind, body):
    return bytes([kind]) + varint(len(body)) + body

def cbor_map_task():
    return bytes([0xa2, 0x67]) + b"task_id" + bytes([0x61]) + b"t" + bytes([0x64]) + b"type" + bytes([0x64]) + b"echo"

def hostile(i):
    k = i % 10
    if k == 0:
        return os.urandom(rnd.randrange(1, 600))
    if k == 1:  # truncated CBOR
        m = cbor_map_task()
        return m[:rnd.randrange(1, len(m))]
    if k == 2:  # heads that claim 2^32..2^64 items
        return rnd.choice([b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", b"\xbb\x00\x00\x00\x01\x00\x00\x00\x00",
                           b"\xba\xff\xff\xff\xff", b"\x7b\xff\xff\xff\xff\xff\xff\xff\xff"])
    if k == 3:
        return b"[" * 100000 if i % 20 == 3 else b"\x81" * 100000 + b"\xa0"
    if k == 4:  # invalid UTF-8 in JSON
        return b'{"task_id":"t","type":"echo","description":"\xc3\x28\xff\xfe"}'
    if k == 5:  # JSON with NUL bytes
        return rnd.choice([b'{"task_id":"t\x00x","type":"echo"}', b'{"task_id":"t","type":"echo"}\x00',
                           b'{"task_id":"t","type":"ec\\u0000ho"}'])
    if k == 6:  # indefinite map without break
        return b"\xbf\x67task_id\x61t" + os.urandom(rnd.randrange(0, 20))
    if k == 7:  # random mutation of a valid JSON task
        v = bytearray(b'[{"task_id":"m%d","type":"echo","depends_on":["x"]}]' % i)
        for _ in range(3):
            v[rnd.randrange(len(v))] = rnd.randrange(256)
        return bytes(v)
    if k == 8:
        return b"" if i % 20 == 8 else b"\xff\xfe{" + os.urandom(50)
    if i == 9:
        return b'{"task_id":"huge","type":"echo","payload":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    return b"{" * 50 + b"}" * 50

s = socket.create_connection(("127.0.0.1", port))
s.sendall(packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", 7) + b"hostile"))
buf = b""
def need(n):
    global buf
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("broker closed the connection")
        buf += chunk
need(4)
if buf[:2] != b"\x20\x02" or buf[3] != 0:
    sys.exit("CONNACK refused: %r" % buf[:4])
buf = buf[4:]
for i in range(count):
    body = struct.pack(">H", len(topic)) + topic + struct.pack(">H", i + 1) + hostile(i)
    s.sendall(packet(0x32, body))
acks = set()
while len(acks) < count:
    need(4)
    if buf[0] != 0x40:
        sys.exit("unexpected packet %r" % buf[:4])
    acks.add(struct.unpack(">H", buf[2:4])[0])
    buf = buf[4:]
s.sendall(b"\xe0\x00")
s.close()
PY
pass "1,000 hostile messages published and acknowledged by the broker"

sub_wait rej '^edgecoord/rejected/hostile ' 1000 60
bg_alive ec || fail "the daemon died"
pub edgecoord/submit/good '{"task_id":"after","type":"echo"}' -q 1
sub_wait acc '^edgecoord/tasks/after/status .*"state":"accepted"' 1 10
n=$(sub_count rej '^edgecoord/rejected/hostile ')
[ "$n" = 1000 ] || fail "$n rejections for 1,000 hostile messages"
ids=$("$EC_BIN/edgecoordctl" --data-dir "$WORK/data" --json tasks |
	python3 -c 'import json,sys; print(" ".join(sorted(t["task_id"] for t in json.load(sys.stdin))))')
want="after $(printf 'before-%s ' $(seq 10 | sort) | sed 's/ $//')"
[ "$ids" = "$want" ] || fail "stored tasks are '$ids', want '$want'"
grep -q 'SUBMIT-REJECTED source=hostile code=too_large' "$WORK/ec.log" ||
	fail "the 10 MB message was not refused as too_large"
pass "every hostile message refused exactly once, earlier tasks kept, a valid submission accepted"
kill_bg ec TERM
[ "$LAST_STATUS" = 0 ] || fail "edgecoord exited with $LAST_STATUS"
