#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# End-to-end test of edgecoord-pki: files and modes, chains, extensions,
# refusals that change nothing, usage errors, expiry, and a real mutual-TLS
# handshake with the openssl CLI (which only verifies here; the tool itself
# uses mbedtls). Everything lives in a mktemp -d directory removed on exit,
# and every openssl s_server started is stopped.
set -u

EC_BIN=${EC_BIN:-$(cd "$(dirname "$0")/../../build/bin" && pwd)}
PKI=$EC_BIN/edgecoord-pki
[ -x "$PKI" ] || { echo "no $PKI" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl CLI missing" >&2; exit 1; }

T=$(mktemp -d)
SERVERS=()
cleanup() {
	for pid in "${SERVERS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
	rm -rf "$T"
}
trap cleanup EXIT
umask 022

FAILED=0
ok() { echo "ok   $1"; }
fail() { echo "FAIL $1" >&2; FAILED=$((FAILED + 1)); }
check() { # check NAME COMMAND...: passes when COMMAND succeeds
	local name=$1; shift
	if "$@" >"$T/out" 2>&1; then ok "$name"; else fail "$name"; cat "$T/out" >&2; fi
}
check_rc() { # check_rc NAME RC COMMAND...: passes when COMMAND exits RC
	local name=$1 want=$2; shift 2
	"$@" >"$T/out" 2>&1
	local rc=$?
	cp "$T/out" "$T/last" # for a check on what it printed
	if [ "$rc" -eq "$want" ]; then ok "$name"; else fail "$name (exit $rc, want $want)"; cat "$T/out" >&2; fi
}
mode() { stat -c %a "$1"; }
sums() { (cd "$1" && ls -A | sort && sha256sum -- * 2>/dev/null); }

F=$T/fleet
# ---- init: files and modes ----
check_rc "init exits 0" 0 "$PKI" init "$F"
check "init makes exactly the four files" \
	test "$(ls -A "$F" | sort | tr '\n' ' ')" = "ca.crt ca.key coordinator.crt coordinator.key "
check "DIR is 0700" test "$(mode "$F")" = 700
check "ca.key is 0600" test "$(mode "$F/ca.key")" = 600
check "coordinator.key is 0600" test "$(mode "$F/coordinator.key")" = 600
check "ca.crt is 0644" test "$(mode "$F/ca.crt")" = 644
check "coordinator.crt is 0644" test "$(mode "$F/coordinator.crt")" = 644
check "init under a missing parent creates it" "$PKI" init "$T/a/b/pki"
check "nested DIR is 0700" test "$(mode "$T/a/b/pki")" = 700

# ---- keys ----
for k in ca coordinator; do
	check "$k.key parses with openssl pkey" openssl pkey -in "$F/$k.key" -noout
	check "$k.key is P-256" grep -q "prime256v1" <(openssl pkey -in "$F/$k.key" -noout -text)
	check "$k.key matches $k.crt" test "$(openssl pkey -in "$F/$k.key" -pubout)" = \
		"$(openssl x509 -in "$F/$k.crt" -noout -pubkey)"
done

# ---- the CA ----
openssl x509 -in "$F/ca.crt" -noout -text >"$T/ca.txt"
check "CA subject is the default CN" grep -q "Subject: CN = edgecoord fleet CA" "$T/ca.txt"
check "CA is self-signed" grep -q "Issuer: CN = edgecoord fleet CA" "$T/ca.txt"
check "CA basicConstraints critical" grep -A1 -q "Basic Constraints: critical" "$T/ca.txt"
check "CA:TRUE, pathlen:0" grep -q "CA:TRUE, pathlen:0" "$T/ca.txt"
check "CA key usage" grep -q "Certificate Sign, CRL Sign" "$T/ca.txt"
check "CA has key identifiers" grep -q "Subject Key Identifier" "$T/ca.txt"
check "CA verifies against itself" openssl verify -CAfile "$F/ca.crt" "$F/ca.crt"
check "CA lasts 9 years or more" openssl x509 -in "$F/ca.crt" -noout -checkend $((9 * 365 * 86400))

# ---- the coordinator ----
openssl x509 -in "$F/coordinator.crt" -noout -text >"$T/coord.txt"
check "coordinator.crt verifies against ca.crt" openssl verify -CAfile "$F/ca.crt" "$F/coordinator.crt"
check "coordinator CN" grep -q "Subject: CN = edgecoord-coordinator" "$T/coord.txt"
check "coordinator SAN has DNS:localhost" grep -q "DNS:localhost" "$T/coord.txt"
check "coordinator SAN has IP 127.0.0.1" grep -q "IP Address:127.0.0.1" "$T/coord.txt"
check "coordinator EKU serverAuth" grep -q "TLS Web Server Authentication" "$T/coord.txt"
check "coordinator EKU has no clientAuth" bash -c "! grep -q 'TLS Web Client Authentication' '$T/coord.txt'"
check "coordinator CA:FALSE" grep -q "CA:FALSE" "$T/coord.txt"
check "coordinator key usage" grep -q "Digital Signature, Key Agreement" "$T/coord.txt"
check "coordinator is good for localhost" \
	openssl verify -CAfile "$F/ca.crt" -verify_hostname localhost -purpose sslserver "$F/coordinator.crt"
check "coordinator is good for 127.0.0.1" \
	openssl verify -CAfile "$F/ca.crt" -verify_ip 127.0.0.1 "$F/coordinator.crt"
check_rc "coordinator is not good for another host" 2 \
	openssl verify -CAfile "$F/ca.crt" -verify_hostname evil.example "$F/coordinator.crt"
check "coordinator lasts 825 days by default" \
	openssl x509 -in "$F/coordinator.crt" -noout -checkend $((824 * 86400))
check_rc "... and not 826" 1 openssl x509 -in "$F/coordinator.crt" -noout -checkend $((826 * 86400))

# --san, --cn, --ca-cn, --days; long names need long-form DER lengths
LONG=$(printf 'a%.0s' {1..63}).$(printf 'b%.0s' {1..63}).$(printf 'c%.0s' {1..63}).example
S=$T/custom
check "init with --san --cn --ca-cn --days" "$PKI" init --san gw.example --san 10.9.8.7 \
	--san fd00::7 --san "$LONG" --cn coord-1 --ca-cn "Custom CA" --days 30 "$S"
openssl x509 -in "$S/coordinator.crt" -noout -text >"$T/custom.txt"
check "custom coordinator verifies" openssl verify -CAfile "$S/ca.crt" "$S/coordinator.crt"
check "--cn" grep -q "Subject: CN = coord-1" "$T/custom.txt"
check "--ca-cn" grep -q "Issuer: CN = Custom CA" "$T/custom.txt"
check "--san DNS" openssl verify -CAfile "$S/ca.crt" -verify_hostname gw.example "$S/coordinator.crt"
check "--san long DNS" openssl verify -CAfile "$S/ca.crt" -verify_hostname "$LONG" "$S/coordinator.crt"
check "--san IPv4" openssl verify -CAfile "$S/ca.crt" -verify_ip 10.9.8.7 "$S/coordinator.crt"
check "--san IPv6" openssl verify -CAfile "$S/ca.crt" -verify_ip fd00::7 "$S/coordinator.crt"
check "--san keeps localhost" grep -q "DNS:localhost" "$T/custom.txt"
check "--days 30 lasts 29 days" openssl x509 -in "$S/coordinator.crt" -noout -checkend $((29 * 86400))
check_rc "--days 30 ends before 31 days" 1 openssl x509 -in "$S/coordinator.crt" -noout -checkend $((31 * 86400))

# ---- issue: client certificates ----
check_rc "issue exits 0" 0 "$PKI" issue "$F" agent-001
check "agent key is 0600" test "$(mode "$F/agent-001.key")" = 600
check "agent cert is 0644" test "$(mode "$F/agent-001.crt")" = 644
check "agent key parses" openssl pkey -in "$F/agent-001.key" -noout
check "agent key matches its cert" test "$(openssl pkey -in "$F/agent-001.key" -pubout)" = \
	"$(openssl x509 -in "$F/agent-001.crt" -noout -pubkey)"
check "agent cert verifies against ca.crt" \
	openssl verify -CAfile "$F/ca.crt" -purpose sslclient "$F/agent-001.crt"
openssl x509 -in "$F/agent-001.crt" -noout -text >"$T/agent.txt"
check "agent CN = NAME" grep -q "Subject: CN = agent-001$" "$T/agent.txt"
check "agent EKU clientAuth" grep -q "TLS Web Client Authentication" "$T/agent.txt"
check "agent EKU has no serverAuth" bash -c "! grep -q 'TLS Web Server Authentication' '$T/agent.txt'"
check "agent CA:FALSE" grep -q "CA:FALSE" "$T/agent.txt"
check "agent key usage" grep -qx " *Digital Signature" "$T/agent.txt"
check_rc "agent cert is no server cert" 2 \
	openssl verify -CAfile "$F/ca.crt" -purpose sslserver "$F/agent-001.crt"
check_rc "coordinator cert is no client cert" 2 \
	openssl verify -CAfile "$F/ca.crt" -purpose sslclient "$F/coordinator.crt"
check "a 100-character NAME is accepted" "$PKI" issue "$F" "$(printf 'n%.0s' {1..100})"
check "NAME with . _ - is accepted" "$PKI" issue "$F" "Gw_2.site-A"
s1=$(openssl x509 -in "$F/agent-001.crt" -noout -serial | cut -d= -f2)
s2=$(openssl x509 -in "$F/Gw_2.site-A.crt" -noout -serial | cut -d= -f2)
check "serials are 16 positive bytes" bash -c "[[ $s1 =~ ^[4-7][0-9A-F]{31}$ && $s2 =~ ^[4-7][0-9A-F]{31}$ ]]"
check "serials differ" test "$s1" != "$s2"
check "issue with options after the arguments" "$PKI" issue "$F" agent-days --days 10
check "... --days 10 honoured" bash -c "openssl x509 -in '$F/agent-days.crt' -noout -checkend $((9 * 86400)) &&
	! openssl x509 -in '$F/agent-days.crt' -noout -checkend $((11 * 86400))"

# ---- a foreign CA ----
check "init a foreign CA (--ca-cn)" "$PKI" init --ca-cn "foreign CA" "$T/foreign"
check "issue from the foreign CA" "$PKI" issue "$T/foreign" agent-001
check_rc "foreign client cert does not verify against the fleet CA" 2 \
	openssl verify -CAfile "$F/ca.crt" "$T/foreign/agent-001.crt"
# same CN, different key: only the signature tells them apart
check "init a foreign CA with the default CN" "$PKI" init "$T/twin"
check "issue from the twin CA" "$PKI" issue "$T/twin" agent-001
check_rc "twin-CA client cert does not verify against the fleet CA" 2 \
	openssl verify -CAfile "$F/ca.crt" "$T/twin/agent-001.crt"

# ---- refusals change nothing ----
before=$(sums "$F")
check_rc "init again exits 1" 1 "$PKI" init "$F"
check "init again changed nothing" test "$before" = "$(sums "$F")"
check_rc "issue of an existing NAME exits 1" 1 "$PKI" issue "$F" agent-001
check "issue of an existing NAME changed nothing" test "$before" = "$(sums "$F")"
check_rc "issue ca exits 1 (would clash with ca.key)" 1 "$PKI" issue "$F" ca
check "issue ca changed nothing" test "$before" = "$(sums "$F")"
cp "$F/agent-001.key" "$F/half.key"
before=$(sums "$F")
check_rc "issue where only NAME.key exists exits 1" 1 "$PKI" issue "$F" half
check "... and writes no NAME.crt" test "$before" = "$(sums "$F")"
mkdir -m 700 "$T/partial" && echo x >"$T/partial/coordinator.key"
check_rc "init where coordinator.key exists exits 1" 1 "$PKI" init "$T/partial"
check "... and writes nothing" test "$(ls -A "$T/partial")" = "coordinator.key"
mkdir -m 700 "$T/mixed" && cp "$F/ca.crt" "$T/mixed/" && cp "$T/foreign/ca.key" "$T/mixed/"
check_rc "issue with a ca.key not ca.crt's exits 1" 1 "$PKI" issue "$T/mixed" agent-001
check "... and names the mismatch" grep -q "is not the key of" "$T/last"
check "... and writes nothing" test "$(ls -A "$T/mixed" | sort | tr '\n' ' ')" = "ca.crt ca.key "
check_rc "issue without a CA exits 1" 1 "$PKI" issue "$T/nowhere" agent-001
check "... and creates nothing" test ! -e "$T/nowhere"
chmod 500 "$S"
if [ ! -w "$S" ]; then # root writes anyway: then this case cannot be made
	check_rc "issue into a read-only DIR exits 1" 1 "$PKI" issue "$S" agent-ro
	check "... and leaves no key behind" test ! -e "$S/agent-ro.key"
fi
chmod 700 "$S"

# ---- usage ----
check_rc "NAME with / exits 2" 2 "$PKI" issue "$F" "a/b"
check_rc "NAME of 101 characters exits 2" 2 "$PKI" issue "$F" "$(printf 'n%.0s' {1..101})"
check_rc "empty NAME exits 2" 2 "$PKI" issue "$F" ""
check_rc "NAME with a space exits 2" 2 "$PKI" issue "$F" "a b"
check "no file for a bad NAME" test ! -e "$F/a/b.key"
check_rc "no command exits 2" 2 "$PKI"
check_rc "unknown command exits 2" 2 "$PKI" frob "$F"
check_rc "init without DIR exits 2" 2 "$PKI" init
check_rc "issue without NAME exits 2" 2 "$PKI" issue "$F"
check_rc "unknown option exits 2" 2 "$PKI" --frob init "$T/x"
check_rc "--days 0 exits 2" 2 "$PKI" --days 0 issue "$F" x
check_rc "--days abc exits 2" 2 "$PKI" --days abc issue "$F" x
check_rc "--not-after 20240230000000 exits 2" 2 "$PKI" --not-after 20240230000000 issue "$F" x
check_rc "--not-after before --not-before exits 2" 2 "$PKI" \
	--not-before 20250101000000 --not-after 20240101000000 issue "$F" x
check_rc "--san bad_name exits 2" 2 "$PKI" --san bad_name init "$T/x"
check_rc "--cn with a comma exits 2" 2 "$PKI" --cn "a,b" init "$T/x"
check_rc "--san with issue exits 2" 2 "$PKI" --san foo issue "$F" x
check "usage errors created nothing" test ! -e "$T/x" -a ! -e "$F/x.key"
"$PKI" frob 2>"$T/err"
check "bad usage: one line naming the problem, then usage" \
	bash -c "head -1 '$T/err' | grep -q 'unknown command: frob' && sed -n 2p '$T/err' | grep -q '^usage:'"
check "--help exits 0 with usage" bash -c "'$PKI' --help | grep -q '^usage:'"
check "--version" bash -c "'$PKI' --version | grep -Eq '^edgecoord-pki [0-9]+\.[0-9]+'"

# ---- expired and not-yet-valid certificates ----
check "issue an expired cert (--not-after only)" "$PKI" issue --not-after 20200101000000 "$F" old-agent
check_rc "expired cert fails openssl verify" 2 openssl verify -CAfile "$F/ca.crt" "$F/old-agent.crt"
check "... with certificate has expired" grep -q "certificate has expired" "$T/last"
check "... but is otherwise sound" \
	openssl verify -CAfile "$F/ca.crt" -no_check_time "$F/old-agent.crt"
check "issue an expired cert (both ends)" "$PKI" issue --not-before 20190101000000 \
	--not-after 20190201000000 "$F" old-agent-2
check "... validity as asked" bash -c "openssl x509 -in '$F/old-agent-2.crt' -noout -dates |
	tr '\n' ' ' | grep -q 'notBefore=Jan  1 00:00:00 2019 GMT notAfter=Feb  1 00:00:00 2019 GMT'"
check "issue a not-yet-valid cert" "$PKI" issue --not-before 20990101000000 "$F" future-agent
check_rc "not-yet-valid cert fails openssl verify" 2 openssl verify -CAfile "$F/ca.crt" "$F/future-agent.crt"
check "... with certificate is not yet valid" grep -q "certificate is not yet valid" "$T/last"

# ---- mutual TLS with openssl s_server / s_client ----
# handshake NAME WANT SERVER_DIR SERVER_NAME CLIENT_DIR CLIENT_NAME: a TLS 1.2
# session (the coordinator's mbedtls has no 1.3) where each side requires the
# other's certificate to chain to its own DIR's ca.crt with the right EKU.
handshake() {
	local name=$1 want=$2 sdir=$3 sname=$4 cdir=$5 cname=$6 port="" pid i rc
	: >"$T/srv.log"
	timeout 20 openssl s_server -accept 127.0.0.1:0 -naccept 1 -www \
		-cert "$sdir/$sname.crt" -key "$sdir/$sname.key" -CAfile "$sdir/ca.crt" \
		-Verify 1 -verify_return_error </dev/null >"$T/srv.log" 2>&1 &
	pid=$!
	SERVERS+=("$pid")
	for i in $(seq 50); do # s_server reports the port it bound
		port=$(sed -n 's/^ACCEPT .*:\([0-9][0-9]*\)$/\1/p' "$T/srv.log")
		[ -n "$port" ] && break
		sleep 0.1
	done
	if [ -z "$port" ]; then fail "$name (s_server did not start)"; cat "$T/srv.log" >&2; return; fi
	printf 'GET / HTTP/1.0\r\n\r\n' | timeout 20 openssl s_client -connect "127.0.0.1:$port" \
		-tls1_2 -cert "$cdir/$cname.crt" -key "$cdir/$cname.key" -CAfile "$cdir/ca.crt" \
		-verify_return_error -verify_hostname localhost -ign_eof >"$T/cli.log" 2>&1
	rc=$?
	# the page s_server sends back shows the client certificate it accepted
	if [ "$want" = ok ] && [ $rc -eq 0 ] && grep -q "Verify return code: 0 (ok)" "$T/cli.log" &&
		grep -q "Subject: CN=$cname\$" "$T/cli.log"; then
		ok "$name"
	elif [ "$want" = refused ] && ! grep -q "Subject: CN=$cname\$" "$T/cli.log"; then
		ok "$name"
	else
		fail "$name (client exit $rc)"; tail -n 20 "$T/cli.log" "$T/srv.log" >&2
	fi
	kill "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
}
handshake "mTLS: coordinator and agent-001 complete a handshake" ok "$F" coordinator "$F" agent-001
handshake "mTLS: a foreign CA's agent is refused" refused "$F" coordinator "$T/foreign" agent-001
grep -q "verify error\|certificate verify failed\|unknown ca" "$T/srv.log" &&
	ok "... because the server could not verify it" || fail "... server log gives no verify failure"
handshake "mTLS: an expired agent is refused" refused "$F" coordinator "$F" old-agent
grep -q "certificate has expired" "$T/srv.log" &&
	ok "... because it has expired" || fail "... server log does not say expired"
# a certificate of the wrong kind is refused on its EKU
handshake "mTLS: the coordinator's cert is refused as a client cert" refused "$F" coordinator "$F" coordinator
grep -Eq "(unsuitable|unsupported) certificate purpose" "$T/srv.log" &&
	ok "... because of its purpose (EKU)" || fail "... server log does not name the purpose"
handshake "mTLS: an agent's cert is refused as a server cert" refused "$F" agent-001 "$F" agent-001
grep -Eq "(unsuitable|unsupported) certificate purpose" "$T/cli.log" &&
	ok "... because of its purpose (EKU)" || fail "... client log does not name the purpose"

# no temporary files were left anywhere
check "no temporary files left" test -z "$(find "$T" -name '.*.??????' -print)"

if [ "$FAILED" -ne 0 ]; then
	echo "$FAILED check(s) failed" >&2
	exit 1
fi
echo "all checks passed"
