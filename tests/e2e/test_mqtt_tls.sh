#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_mqtt_tls.sh - the coordinator's MQTT link over TLS (mqtts://) to a
# real mosquitto that requires client certificates: it connects, announces
# itself, takes a submission (published by a plain client on a second
# listener) and publishes the statuses; with a CA that did not sign the
# broker's certificate, or without a client certificate, it does not get in,
# says why in its log, and keeps retrying without dying.
# Certificates come from edgecoord-pki: the broker serves the
# coordinator certificate (SANs localhost and 127.0.0.1), the coordinator
# presents a client certificate of the same CA.
source "$(dirname "$0")/lib.sh"
e2e_init
need_bin edgecoord
need_bin edgecoord-pki

DATA=$WORK/data
PKI=$DATA/pki
"$EC_BIN/edgecoord-pki" init "$PKI" >/dev/null || fail "pki init"
"$EC_BIN/edgecoord-pki" issue "$PKI" mqtt-client >/dev/null || fail "pki issue"
"$EC_BIN/edgecoord-pki" init "$WORK/other" >/dev/null || fail "pki init other"

MQTT_PORT=$(free_port)
TLS_PORT=$(free_port)
{
	echo "per_listener_settings true"
	echo "set_tcp_nodelay true"
	echo "log_dest file $WORK/mosquitto.log"
	echo "log_type all"
	echo "listener $MQTT_PORT 127.0.0.1"
	echo "allow_anonymous true"
	echo "listener $TLS_PORT 127.0.0.1"
	echo "allow_anonymous true"
	echo "cafile $PKI/ca.crt"
	echo "certfile $PKI/coordinator.crt"
	echo "keyfile $PKI/coordinator.key"
	echo "require_certificate true"
	[ "$(id -u)" = 0 ] && echo "user root"
} >"$WORK/mosquitto.conf"
start_bg mosquitto mosquitto -c "$WORK/mosquitto.conf"
wait_until 10 port_open "$TLS_PORT" || fail "mosquitto did not open $TLS_PORT"
wait_until 10 port_open "$MQTT_PORT" || fail "mosquitto did not open $MQTT_PORT"

# start_ec NAME CA CERT KEY: a coordinator on the TLS listener.
start_ec() {
	local name=$1
	{
		echo "[mqtt]"
		echo "uri = mqtts://127.0.0.1:$TLS_PORT"
		echo "ca_file = $2"
		[ -n "$3" ] && echo "cert_file = $3"
		[ -n "$4" ] && echo "key_file = $4"
		echo "client_id = ec-$name"
	} >"$WORK/$name.ini"
	start_bg "$name" "$EC_BIN/edgecoord" -c "$WORK/$name.ini" --data-dir "$DATA-$name" \
		--node-id "$name" --listen "127.0.0.1:$(free_port)" \
		--ca "$PKI/ca.crt" --cert "$PKI/coordinator.crt" --key "$PKI/coordinator.key"
}
log_has() { grep -qE -- "$2" "$WORK/$1.log"; }

sub_start st 'edgecoord/#' -q 1
start_ec good "$PKI/ca.crt" "$PKI/mqtt-client.crt" "$PKI/mqtt-client.key"
wait_until 15 log_has good "MQTT-CONNECTED mqtts://127.0.0.1:$TLS_PORT" ||
	fail "no MQTT-CONNECTED over TLS"
sub_wait st '^edgecoord/coordinator/good/state .*"state":"online"' 1 10
pub edgecoord/submit/tls '{"task_id":"over-tls","type":"echo"}' -q 1
sub_wait st '^edgecoord/tasks/over-tls/status .*"state":"accepted"' 1 10
pass "mqtts:// with a client certificate: connected, online, a submission accepted"

# A CA that did not sign the broker's certificate: refused, logged, retried.
start_ec foreign "$WORK/other/ca.crt" "$PKI/mqtt-client.crt" "$PKI/mqtt-client.key"
wait_until 15 log_has foreign 'MQTT-TLS handshake with mqtts://127.0.0.1:[0-9]+ failed: foreign_ca' ||
	fail "a foreign CA was not refused as foreign_ca: $(tail -n 3 "$WORK/foreign.log")"
# No client certificate: the broker ends the handshake.
start_ec anon "$PKI/ca.crt" "" ""
wait_until 15 log_has anon 'MQTT-TLS handshake with .* failed|MQTT-CONNECT to .* failed' ||
	fail "no client certificate, yet no refusal: $(tail -n 3 "$WORK/anon.log")"
sleep 2
for n in foreign anon; do
	bg_alive "$n" || fail "$n exited instead of retrying"
	log_has "$n" MQTT-CONNECTED && fail "$n connected"
	[ "$(grep -cE 'MQTT-TLS|MQTT-CONNECT ' "$WORK/$n.log")" -ge 2 ] ||
		fail "$n did not retry: $(cat "$WORK/$n.log")"
done
bg_alive good || fail "the connected coordinator died"
pass "a foreign CA and a missing client certificate: refused with a reason, retried, nothing else hurt"

kill_bg good TERM
[ "$LAST_STATUS" = 0 ] || fail "edgecoord exited with $LAST_STATUS"
sub_wait st '^edgecoord/coordinator/good/state .*"state":"offline"' 1 10
pass "clean shutdown over TLS: offline announced"
