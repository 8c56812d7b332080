#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_tls_refusals.sh - the agent listener refuses what it must and keeps
# serving (DESIGN 4, docs/protocol.md 1 and 4).
#
# 1. Each refused case is refused before any work is sent, and logged as
#    AGENT-REFUSED with its reason: plain TCP (not_tls), TLS without a client
#    certificate (no_client_certificate), a certificate from another CA
#    (foreign_ca), an expired one (certificate_expired), a hello id that is
#    not the certificate's CN (id_mismatch). None of them ever comes up as an
#    agent, and a good agent runs a task after each.
# 2. 1,000 sessions with a valid certificate each send one malformed frame
#    (zero or oversized length, bytes that are not CBOR, CBOR that is not one
#    definite map, missing or unknown type, duplicate keys, trailing bytes, a
#    bad hello, frames after a good hello that are malformed or go the wrong
#    way): the coordinator closes every one of them, logs it, and meanwhile
#    the good agent's session stays up and its tasks complete.
source "$(dirname "$0")/lib.sh"
e2e_init
source "$(dirname "$0")/fleet_lib.sh"
command -v openssl >/dev/null || fail "the openssl CLI is needed"

fleet_init 500 4
issue good m2 mal
"$EC_BIN/edgecoord-pki" issue --not-after 20200101000000 "$PKI" old >/dev/null || fail "pki: expired"
"$EC_BIN/edgecoord-pki" init --ca-cn "foreign CA" "$WORK/foreign" >/dev/null || fail "pki: foreign CA"
"$EC_BIN/edgecoord-pki" issue "$WORK/foreign" alien >/dev/null || fail "pki: foreign agent"
start_mosquitto
start_coord
start_agent good --caps echo --slots 2
wait_up good
sub_start res 'edgecoord/tasks/+/result' -q 1

n_task=0
good_still_serves() {
	n_task=$((n_task + 1))
	pub edgecoord/submit/e2e "{\"task_id\":\"g$n_task\",\"type\":\"echo\",\"payload\":$n_task}" -q 1
	sub_wait res "^edgecoord/tasks/g$n_task/result .*\"agent\":\"good\",\"ok\":true" 1 10
}

# refused REASON WHAT: the log names REASON, and the good agent still works.
refused() {
	coord_wait "AGENT-REFUSED .*reason=$1" 1 10
	good_still_serves
	pass "$2: refused ($1), logged; the good agent still runs tasks"
}

# ---- 1. refusals ------------------------------------------------------------------------------------
exec 3<>"/dev/tcp/127.0.0.1/$AGENT_PORT"
# In a subshell: should the coordinator have closed already, SIGPIPE ends
# only the subshell.
(printf 'GET / HTTP/1.0\r\nHost: x\r\n\r\n' >&3) 2>/dev/null || true
refused not_tls "plain TCP"
exec 3<&- 3>&-

timeout 10 openssl s_client -connect "127.0.0.1:$AGENT_PORT" -tls1_2 -CAfile "$PKI/ca.crt" \
	</dev/null >"$WORK/s_client.log" 2>&1 || true
refused no_client_certificate "TLS without a client certificate"

PKIDIR=$WORK/foreign start_agent alien --caps echo
refused foreign_ca "a certificate from another CA"
kill_bg alien

start_agent old --caps echo
refused certificate_expired "an expired certificate"
kill_bg old

CERT=m2 start_agent m3 --caps echo
refused 'id_mismatch hello_id=m3' "hello id m3 with the certificate of m2"
kill_bg m3

for who in alien old m2 m3; do
	[ "$(coord_count "AGENT-UP agent=$who ")" = 0 ] || fail "$who came up as an agent"
done
[ "$(coord_count 'AGENT-UP ')" = 1 ] || fail "AGENT-UP lines: $(coord_count 'AGENT-UP '), want 1 (good)"
[ "$(sub_count res '"agent":"good"')" = "$n_task" ] || fail "a task ran elsewhere than on good"

# ---- 2. 1,000 malformed frames ----------------------------------------------------------------------
cat >"$WORK/garbage.py" <<'EOF'
# One TLS session per malformed frame, with agent "mal"'s valid certificate;
# every session must be closed by the coordinator. Exit 0 when all were.
import random, socket, ssl, struct, sys

port, pki, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(pki + "/ca.crt")
ctx.load_cert_chain(pki + "/mal.crt", pki + "/mal.key")
rng = random.Random(4)

def t(s):
    b = s.encode()
    return bytes([0x60 + len(b)]) + b

def frame(body):
    return struct.pack(">I", len(body)) + body

HELLO = frame(b"\xa4" + t("t") + t("hello") + t("i") + t("mal") + t("v") + b"\x81\x01"
              + t("n") + b"\x01")

def garbage(i):
    k = i % 14
    if k == 0:
        return b"\x00\x00\x00\x00"                                # length 0
    if k == 1:
        return struct.pack(">I", 65537) + b"\xa0" * 64            # over max_frame
    if k == 2:
        return frame(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
    if k == 3:
        return frame(b"\x83\x01\x02\x03")                         # an array
    if k == 4:
        return frame(b"\xa1" + t("x") + b"\x01")                  # no "t"
    if k == 5:
        return frame(b"\xa1" + t("t") + t("zzz"))                 # unknown type
    if k == 6:
        return frame(b"\xa2" + t("t") + t("hello"))               # a key short
    if k == 7:
        return frame(b"\xa4" + t("t") + t("hello") + t("i") + t("mal") + t("v")
                     + b"\x81\x01" + t("n") + t("x"))             # n is text
    if k == 8:
        return frame(b"\xa2" + t("t") + t("hb") + t("t") + t("hb"))   # duplicate key
    if k == 9:
        return frame(b"\xbf" + t("t") + t("hb") + b"\xff")       # indefinite map
    if k == 10:
        return frame(b"\xa1" + t("t") + t("hb") + b"\x00")       # trailing byte
    if k == 11:
        return frame(b"\xa1" + t("t") + t("hb") + b"\x9f" * 40)  # more trailing junk
    if k == 12:                                                   # after hello: work
        return HELLO + frame(b"\xa5" + t("a") + b"\x01" + t("e") + b"\x01" + t("k")
                             + t("x") + t("t") + t("work") + t("y") + t("echo"))
    return HELLO + frame(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))

bad = 0
for i in range(count):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(garbage(i))
                while s.recv(4096):
                    pass
    except socket.timeout:
        bad += 1
        print("session %d (kind %d): not closed within 10 s" % (i, i % 14), file=sys.stderr)
    except (ssl.SSLError, OSError):
        pass                    # closed with a reset or a TLS alert: fine
print("sessions: %d, not closed: %d" % (count, bad))
sys.exit(1 if bad else 0)
EOF
rss_kb() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/${BG_PIDS[coord]}/status"; }
rss0=$(rss_kb)
refused0=$(coord_count 'AGENT-REFUSED ')
proto0=$(coord_count 'AGENT-PROTO ')
start_bg garbage python3 "$WORK/garbage.py" "$AGENT_PORT" "$PKI" 1000
# The good agent works all through the barrage.
while bg_alive garbage; do
	good_still_serves
	sleep 0.2
done
wait_bg garbage 5
[ "$LAST_STATUS" = 0 ] || fail "malformed-frame client: $(tail -n 5 "$WORK/garbage.log")"
grep -q '^sessions: 1000, not closed: 0$' "$WORK/garbage.log" || fail "$(cat "$WORK/garbage.log")"
good_still_serves
bg_alive coord || fail "the coordinator died"
refused=$(($(coord_count 'AGENT-REFUSED ') - refused0))
proto=$(($(coord_count 'AGENT-PROTO ') - proto0))
echo "1,000 malformed sessions: $refused refused at hello, $proto ended after hello;" \
	"coordinator RSS ${rss0} -> $(rss_kb) kB; $n_task tasks on the good agent"
[ $((refused + proto)) -ge 1000 ] || fail "only $((refused + proto)) of 1000 sessions logged"
[ "$(coord_count 'AGENT-UP agent=good ')" = 1 ] || fail "the good agent reconnected"
[ "$(coord_count 'AGENT-DOWN agent=good ')" = 0 ] || fail "the good agent went down"
pass "1,000 malformed frames: each session closed and logged; the good agent carried on"
