/* SPDX-License-Identifier: MIT */
/*
 * test_mqttpkt.c - the MQTT packet codec: the wire bytes of what a client
 * sends are pinned against bytes written by hand from the MQTT 5.0 and 3.1.1
 * specs (not from the encoder), PUBLISH round-trips in both versions, the
 * broker's packets decode from hand-written bytes, and hostile input is
 * refused with the specific code and a reason: every truncation, lengths past
 * the end, five-byte integers, duplicated, unknown and misplaced properties,
 * bad topics, bad flags and packet types a client must not accept.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "edgecoord/err.h"
#include "mqttpkt.h"

#define LEN(a) (sizeof(a) / sizeof((a)[0]))

static void same_bytes(const struct mqttpkt_buf *b, const uint8_t *want, size_t n)
{
	assert_int_equal(b->len, n);
	assert_memory_equal(b->p, want, n);
}

/* Decoding must fail with err, name a reason and leave *out alone. */
static void refused(const uint8_t *pkt, size_t len, int version, int err)
{
	struct mqttpkt_in in;
	memset(&in, 0xa5, sizeof(in));
	const char *why = NULL;
	assert_int_equal(mqttpkt_decode(pkt, len, version, &in, &why), err);
	assert_non_null(why);
	assert_true(((const uint8_t *)&in)[0] == 0xa5);
}

static void decoded(const uint8_t *pkt, size_t len, int version, struct mqttpkt_in *in)
{
	const char *why = NULL;
	int rc = mqttpkt_decode(pkt, len, version, in, &why);
	if (rc)
		fail_msg("decode: %d (%s)", rc, why ? why : "no reason");
}

/* ---- encoders: bytes from the spec ------------------------------------ */

static void test_connect_bytes(void **state)
{
	struct mqttpkt_buf b = {0};
	struct mqttpkt_connect c = {
		.version = 5, .client_id = "c1", .clean_start = true, .keepalive_s = 60,
		.session_expiry_s = 3600, .receive_max = 100, .max_packet = 65536,
		.username = "u", .password = "pw", .will_topic = "w/t",
		.will_payload = "bye", .will_len = 3, .will_retain = true,
	};
	static const uint8_t v5[] = {
		0x10, 46,                               /* CONNECT, remaining 46 */
		0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05,   /* protocol name, level 5 */
		0xee,                                   /* user, pass, will retain, will QoS 1, will, clean */
		0x00, 0x3c,                             /* keep alive 60 */
		13,                                     /* properties */
		0x11, 0x00, 0x00, 0x0e, 0x10,           /* session expiry 3600 */
		0x21, 0x00, 0x64,                       /* receive maximum 100 */
		0x27, 0x00, 0x01, 0x00, 0x00,           /* maximum packet size 65536 */
		0x00, 0x02, 'c', '1',                   /* client id */
		0x00,                                   /* will properties: none */
		0x00, 0x03, 'w', '/', 't',              /* will topic */
		0x00, 0x03, 'b', 'y', 'e',              /* will payload */
		0x00, 0x01, 'u',                        /* user name */
		0x00, 0x02, 'p', 'w',                   /* password */
	};
	assert_int_equal(mqttpkt_connect(&b, &c), 0);
	same_bytes(&b, v5, sizeof(v5));

	/* 3.1.1: no properties; no will, no password, no clean session */
	b.len = 0;
	struct mqttpkt_connect c4 = {.version = 4, .client_id = "c1", .keepalive_s = 30,
				     .session_expiry_s = 9, .username = "u"};
	static const uint8_t v4[] = {
		0x10, 17, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x80, 0x00, 0x1e,
		0x00, 0x02, 'c', '1', 0x00, 0x01, 'u',
	};
	assert_int_equal(mqttpkt_connect(&b, &c4), 0);
	same_bytes(&b, v4, sizeof(v4));

	/* MQTT 5 with nothing optional: an empty property block */
	b.len = 0;
	struct mqttpkt_connect c5 = {.version = 5, .client_id = ""};
	static const uint8_t bare[] = {0x10, 13, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05,
				       0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
	assert_int_equal(mqttpkt_connect(&b, &c5), 0);
	same_bytes(&b, bare, sizeof(bare));

	/* refusals leave b as it was */
	struct mqttpkt_connect bad = {.version = 4, .client_id = "x", .password = "p"};
	assert_int_equal(mqttpkt_connect(&b, &bad), -EINVAL);
	bad.version = 3;
	assert_int_equal(mqttpkt_connect(&b, &bad), -EINVAL);
	same_bytes(&b, bare, sizeof(bare));
	mqttpkt_buf_fini(&b);
	mqttpkt_buf_fini(NULL);
}

static void test_subscribe_bytes(void **state)
{
	struct mqttpkt_buf b = {0};
	const char *filters[] = {"a/+", "b/#"};
	static const uint8_t v5[] = {
		0x82, 0x0f, 0x12, 0x34, 0x00,
		0x00, 0x03, 'a', '/', '+', 0x01,
		0x00, 0x03, 'b', '/', '#', 0x01,
	};
	static const uint8_t v4[] = {
		0x82, 0x08, 0x00, 0x07, 0x00, 0x03, 'a', '/', '+', 0x02,
	};
	assert_int_equal(mqttpkt_subscribe(&b, 5, 0x1234, filters, 2, 1), 0);
	same_bytes(&b, v5, sizeof(v5));
	b.len = 0;
	assert_int_equal(mqttpkt_subscribe(&b, 4, 7, filters, 1, 2), 0);
	same_bytes(&b, v4, sizeof(v4));
	assert_int_equal(mqttpkt_subscribe(&b, 4, 0, filters, 1, 1), -EINVAL);
	assert_int_equal(mqttpkt_subscribe(&b, 4, 1, filters, 0, 1), -EINVAL);
	assert_int_equal(mqttpkt_subscribe(&b, 4, 1, filters, 1, 3), -EINVAL);
	same_bytes(&b, v4, sizeof(v4));
	mqttpkt_buf_fini(&b);
}

static void test_small_packet_bytes(void **state)
{
	struct mqttpkt_buf b = {0};
	static const uint8_t want[] = {
		0x40, 0x02, 0xbe, 0xef, /* PUBACK 0xbeef */
		0xc0, 0x00,             /* PINGREQ */
		0xe0, 0x00,             /* DISCONNECT v5, reason 0: short form */
		0xe0, 0x02, 0x04, 0x00, /* DISCONNECT v5, with will message */
		0xe0, 0x00,             /* DISCONNECT 3.1.1: reason dropped */
	};
	assert_int_equal(mqttpkt_puback(&b, 0xbeef), 0);
	assert_int_equal(mqttpkt_pingreq(&b), 0);
	assert_int_equal(mqttpkt_disconnect(&b, 5, 0), 0);
	assert_int_equal(mqttpkt_disconnect(&b, 5, 4), 0);
	assert_int_equal(mqttpkt_disconnect(&b, 4, 4), 0);
	same_bytes(&b, want, sizeof(want));
	assert_int_equal(mqttpkt_puback(&b, 0), -EINVAL);
	assert_int_equal(b.len, sizeof(want));
	mqttpkt_buf_fini(&b);
}

static void test_publish_bytes(void **state)
{
	struct mqttpkt_buf b = {0};
	struct mqttpkt_pub p = {
		.topic = "t", .payload = "hi", .len = 2, .retain = true, .expiry_s = 10,
		.content_type = "a/b", .response_topic = "r", .correlation = "\x01\x02",
		.correlation_len = 2,
	};
	static const uint8_t v5[] = {
		0x3b, 0x1c,                         /* PUBLISH dup qos1 retain, 28 */
		0x00, 0x01, 't', 0x00, 0x05,        /* topic, id 5 */
		20,                                 /* properties */
		0x02, 0x00, 0x00, 0x00, 0x0a,       /* message expiry 10 */
		0x03, 0x00, 0x03, 'a', '/', 'b',    /* content type */
		0x08, 0x00, 0x01, 'r',              /* response topic */
		0x09, 0x00, 0x02, 0x01, 0x02,       /* correlation data */
		'h', 'i',
	};
	static const uint8_t v4[] = {0x33, 0x07, 0x00, 0x01, 't', 0x00, 0x05, 'h', 'i'};
	assert_int_equal(mqttpkt_publish(&b, 5, &p, 5, true), 0);
	same_bytes(&b, v5, sizeof(v5));
	assert_int_equal(mqttpkt_publish_size(5, &p), sizeof(v5));
	b.len = 0;
	assert_int_equal(mqttpkt_publish(&b, 4, &p, 5, false), 0);
	same_bytes(&b, v4, sizeof(v4));
	assert_int_equal(mqttpkt_publish_size(4, &p), sizeof(v4));
	mqttpkt_buf_fini(&b);
}

/* ---- PUBLISH round trips ------------------------------------------------ */

static void same_str(struct mqttpkt_str s, const char *want)
{
	if (!want) {
		assert_null(s.p);
		return;
	}
	assert_non_null(s.p);
	assert_int_equal(s.n, strlen(want));
	assert_memory_equal(s.p, want, s.n);
}

static void round_trip(int version, const struct mqttpkt_pub *p, uint16_t id, bool dup)
{
	struct mqttpkt_buf b = {0};
	struct mqttpkt_in in;
	size_t pkt_len = 0;
	assert_int_equal(mqttpkt_publish(&b, version, p, id, dup), 0);
	assert_int_equal(b.len, mqttpkt_publish_size(version, p));
	assert_int_equal(mqttpkt_frame(b.p, b.len, b.len, &pkt_len, NULL), 1);
	assert_int_equal(pkt_len, b.len);
	decoded(b.p, b.len, version, &in);
	assert_int_equal(in.type, MQTTPKT_PUBLISH);
	assert_int_equal(in.qos, 1);
	assert_int_equal(in.id, id);
	assert_int_equal(in.dup, dup);
	assert_int_equal(in.retain, p->retain);
	same_str(in.topic, p->topic);
	assert_int_equal(in.payload.n, p->len);
	if (p->len)
		assert_memory_equal(in.payload.p, p->payload, p->len);
	bool v5 = version == MQTTPKT_V5;
	same_str(in.content_type, v5 ? p->content_type : NULL);
	same_str(in.response_topic, v5 ? p->response_topic : NULL);
	if (v5 && p->correlation) {
		assert_int_equal(in.correlation.n, p->correlation_len);
		assert_memory_equal(in.correlation.p, p->correlation, p->correlation_len);
	} else {
		assert_null(in.correlation.p);
	}
	mqttpkt_buf_fini(&b);
}

static void test_publish_round_trip(void **state)
{
	static uint8_t big[70000];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7);
	struct mqttpkt_pub full = {
		.topic = "ec/v1/agent/\xc3\xa9t\xc3\xa9/\xf0\x9f\x98\x80", .payload = big,
		.len = sizeof(big), .retain = true, .expiry_s = 86400,
		.content_type = "application/cbor", .response_topic = "ec/v1/reply/7",
		.correlation = "\x00\xff\x00", .correlation_len = 3,
	};
	struct mqttpkt_pub bare = {.topic = "x"};
	struct mqttpkt_pub empty_props = {.topic = "y", .payload = "p", .len = 1,
					  .content_type = "", .correlation = "", .correlation_len = 0};
	for (int version = 4; version <= 5; version++) {
		round_trip(version, &full, 1, false);
		round_trip(version, &full, 65535, true);
		round_trip(version, &bare, 42, false);
		round_trip(version, &empty_props, 3, true);
	}
}

/* The start of a PUBLISH too large to hold: topic, id and, when the prefix
 * holds them, properties and the payload's first bytes. */
static void test_decode_head(void **state)
{
	static uint8_t big[200000];
	memset(big, '{', sizeof(big));
	struct mqttpkt_pub p = {.topic = "ec/submit/s", .payload = big, .len = sizeof(big),
				.content_type = "application/json", .response_topic = "r/1"};
	struct mqttpkt_buf b = {0};
	struct mqttpkt_in in;
	const char *why = NULL;
	size_t size = 0;

	assert_int_equal(mqttpkt_publish(&b, MQTTPKT_V5, &p, 9, false), 0);
	assert_int_equal(mqttpkt_decode_head(b.p, 4096, MQTTPKT_V5, &in, &size, &why), 0);
	assert_int_equal(in.type, MQTTPKT_PUBLISH);
	assert_int_equal(in.qos, 1);
	assert_int_equal(in.id, 9);
	assert_memory_equal(in.topic.p, "ec/submit/s", in.topic.n);
	assert_int_equal(in.content_type.n, strlen("application/json"));
	assert_memory_equal(in.response_topic.p, "r/1", 3);
	assert_int_equal(size, sizeof(big));
	assert_true(in.payload.n > 0 && in.payload.p[0] == '{');
	/* A prefix that ends inside the property block: no properties, no payload. */
	assert_int_equal(mqttpkt_decode_head(b.p, 24, MQTTPKT_V5, &in, &size, &why), 0);
	assert_memory_equal(in.topic.p, "ec/submit/s", in.topic.n);
	assert_null(in.content_type.p);
	assert_null(in.payload.p);
	assert_true(size > sizeof(big));
	/* Not a PUBLISH; a prefix that ends inside the topic. */
	static const uint8_t suback[] = {0x90, 0x04, 0x00, 0x01, 0x00, 0x01};
	assert_int_equal(mqttpkt_decode_head(suback, sizeof(suback), MQTTPKT_V5, &in, &size, &why),
			 EC_EPROTO);
	assert_int_equal(mqttpkt_decode_head(b.p, 8, MQTTPKT_V5, &in, &size, &why), EC_EMALFORMED);
	assert_non_null(why);
	mqttpkt_buf_fini(&b);
}

static void test_publish_too_large(void **state)
{
	struct mqttpkt_buf b = {0};
	char *topic = malloc(65537);
	assert_non_null(topic);
	memset(topic, 'a', 65536);
	topic[65536] = '\0';
	struct mqttpkt_pub p = {.topic = topic, .payload = "x", .len = 1};
	assert_int_equal(mqttpkt_publish(&b, 5, &p, 1, false), -EMSGSIZE);
	assert_int_equal(b.len, 0);
	topic[65535] = '\0'; /* the longest a string may be */
	assert_int_equal(mqttpkt_publish(&b, 5, &p, 1, false), 0);
	assert_int_equal(b.len, mqttpkt_publish_size(5, &p));
	size_t before = b.len;
	p.topic = "t";
	p.content_type = topic; /* fine */
	assert_int_equal(mqttpkt_publish(&b, 5, &p, 1, false), 0);
	p.content_type = NULL;
	p.len = (size_t)MQTTPKT_MAX_REMAINING; /* never read: refused by count */
	assert_int_equal(mqttpkt_publish(&b, 5, &p, 1, false), -EMSGSIZE);
	assert_int_equal(mqttpkt_publish(&b, 5, &(struct mqttpkt_pub){.topic = ""}, 1, false),
			 -EINVAL);
	assert_true(b.len > before);
	const char *sub[] = {topic};
	topic[65535] = 'a';
	size_t len = b.len;
	assert_int_equal(mqttpkt_subscribe(&b, 5, 1, sub, 1, 1), -EMSGSIZE);
	assert_int_equal(b.len, len);
	free(topic);
	mqttpkt_buf_fini(&b);
}

/* ---- decoding the broker's packets ------------------------------------ */

static void test_connack(void **state)
{
	static const uint8_t v5[] = {
		0x20, 58, 0x01, 0x00, 55,
		0x11, 0x00, 0x00, 0x00, 0x3c,       /* session expiry */
		0x21, 0x00, 0x0a,                   /* receive maximum 10 */
		0x24, 0x01,                         /* maximum QoS 1 */
		0x25, 0x00,                         /* retain not available */
		0x27, 0x00, 0x00, 0x10, 0x00,       /* maximum packet 4096 */
		0x12, 0x00, 0x02, 'i', 'd',         /* assigned client id */
		0x22, 0x00, 0x05,                   /* topic alias maximum */
		0x1f, 0x00, 0x02, 'o', 'k',         /* reason string */
		0x26, 0x00, 0x01, 'k', 0x00, 0x01, 'v', /* user property */
		0x26, 0x00, 0x01, 'k', 0x00, 0x00,  /* ... may repeat */
		0x28, 0x01, 0x29, 0x00, 0x2a, 0x01, /* wildcard, sub ids, shared */
		0x13, 0x00, 0x1e,                   /* server keep alive 30 */
		0x1a, 0x00, 0x00,                   /* response information */
	};
	struct mqttpkt_in in;
	decoded(v5, sizeof(v5), 5, &in);
	assert_int_equal(in.type, MQTTPKT_CONNACK);
	assert_true(in.session_present);
	assert_int_equal(in.reason, 0);
	assert_int_equal(in.receive_max, 10);
	assert_int_equal(in.max_packet, 4096);
	assert_int_equal(in.server_keepalive, 30);
	assert_int_equal(in.max_qos, 1);
	same_str(in.reason_string, "ok");

	/* no properties: the defaults */
	static const uint8_t plain[] = {0x20, 0x03, 0x00, 0x87, 0x00};
	decoded(plain, sizeof(plain), 5, &in);
	assert_false(in.session_present);
	assert_int_equal(in.reason, 0x87);
	assert_int_equal(in.receive_max, 0);
	assert_int_equal(in.max_packet, 0);
	assert_int_equal(in.server_keepalive, -1);
	assert_int_equal(in.max_qos, 2);
	assert_null(in.reason_string.p);

	static const uint8_t v4[] = {0x20, 0x02, 0x00, 0x05};
	decoded(v4, sizeof(v4), 4, &in);
	assert_int_equal(in.type, MQTTPKT_CONNACK);
	assert_int_equal(in.reason, 5);
}

static void test_suback_puback_disconnect(void **state)
{
	struct mqttpkt_in in;
	static const uint8_t suback5[] = {0x90, 0x0b, 0x00, 0x09, 0x05, 0x1f, 0x00, 0x02,
					  'n', 'o', 0x01, 0x00, 0x87};
	decoded(suback5, sizeof(suback5), 5, &in);
	assert_int_equal(in.type, MQTTPKT_SUBACK);
	assert_int_equal(in.id, 9);
	assert_int_equal(in.suback.n, 3);
	assert_memory_equal(in.suback.p, "\x01\x00\x87", 3);
	same_str(in.reason_string, "no");
	static const uint8_t suback4[] = {0x90, 0x04, 0x00, 0x09, 0x02, 0x80};
	decoded(suback4, sizeof(suback4), 4, &in);
	assert_int_equal(in.suback.n, 2);

	static const uint8_t puback_short[] = {0x40, 0x02, 0x01, 0x02};
	decoded(puback_short, sizeof(puback_short), 5, &in);
	assert_int_equal(in.type, MQTTPKT_PUBACK);
	assert_int_equal(in.id, 0x0102);
	assert_int_equal(in.reason, 0);
	decoded(puback_short, sizeof(puback_short), 4, &in);
	static const uint8_t puback_reason[] = {0x40, 0x03, 0x00, 0x07, 0x10};
	decoded(puback_reason, sizeof(puback_reason), 5, &in);
	assert_int_equal(in.reason, 0x10);
	static const uint8_t puback_props[] = {0x40, 0x0c, 0x00, 0x07, 0x97, 0x08, 0x1f,
					       0x00, 0x05, 'q', 'u', 'o', 't', 'a'};
	decoded(puback_props, sizeof(puback_props), 5, &in);
	assert_int_equal(in.reason, 0x97);
	same_str(in.reason_string, "quota");

	static const uint8_t pingresp[] = {0xd0, 0x00};
	decoded(pingresp, sizeof(pingresp), 4, &in);
	assert_int_equal(in.type, MQTTPKT_PINGRESP);

	static const uint8_t disc[] = {0xe0, 0x0e, 0x8b, 0x0c, 0x1f, 0x00, 0x04, 'b', 'y',
				       'e', '!', 0x1c, 0x00, 0x02, 'h', '2'};
	decoded(disc, sizeof(disc), 5, &in);
	assert_int_equal(in.type, MQTTPKT_DISCONNECT);
	assert_int_equal(in.reason, 0x8b);
	same_str(in.reason_string, "bye!");
	static const uint8_t disc_reason[] = {0xe0, 0x01, 0x9c};
	decoded(disc_reason, sizeof(disc_reason), 5, &in);
	assert_int_equal(in.reason, 0x9c);
	static const uint8_t disc0[] = {0xe0, 0x00};
	decoded(disc0, sizeof(disc0), 4, &in);
	decoded(disc0, sizeof(disc0), 5, &in);
	assert_int_equal(in.reason, 0);
}

static void test_publish_decode(void **state)
{
	struct mqttpkt_in in;
	/* QoS 0, MQTT 5: a subscription id, a user property, payload format */
	static const uint8_t q0[] = {0x30, 0x14, 0x00, 0x03, 'a', '/', 'b', 0x0c, 0x0b, 0x05,
				     0x0b, 0x81, 0x01, 0x01, 0x01, 0x26, 0x00, 0x00, 0x00, 0x00,
				     'x', 'y'};
	decoded(q0, sizeof(q0), 5, &in);
	assert_int_equal(in.qos, 0);
	assert_int_equal(in.id, 0);
	same_str(in.topic, "a/b");
	assert_int_equal(in.payload.n, 2);
	assert_ptr_equal(in.payload.p, q0 + 20);
	/* an empty payload is present, and points at the end */
	static const uint8_t empty[] = {0x30, 0x03, 0x00, 0x01, 't'};
	decoded(empty, sizeof(empty), 4, &in);
	assert_int_equal(in.payload.n, 0);
	assert_ptr_equal(in.payload.p, empty + sizeof(empty));
}

/* ---- hostile input ----------------------------------------------------- */

static void test_truncations(void **state)
{
	struct mqttpkt_buf b = {0};
	struct mqttpkt_pub p = {.topic = "a/b", .payload = "xyz", .len = 3, .expiry_s = 1,
				.content_type = "c", .response_topic = "r",
				.correlation = "k", .correlation_len = 1};
	assert_int_equal(mqttpkt_publish(&b, 5, &p, 9, false), 0);
	static const uint8_t connack[] = {0x20, 0x0a, 0x00, 0x00, 0x07, 0x21, 0x00, 0x0a,
					  0x1f, 0x00, 0x01, 'x'};
	static const uint8_t suback[] = {0x90, 0x04, 0x00, 0x09, 0x00, 0x01};
	static const uint8_t puback[] = {0x40, 0x08, 0x00, 0x07, 0x97, 0x04, 0x1f, 0x00, 0x01, 'q'};
	struct { const uint8_t *p; size_t n; } pkts[] = {
		{connack, sizeof(connack)}, {suback, sizeof(suback)},
		{puback, sizeof(puback)}, {b.p, b.len},
	};
	for (size_t k = 0; k < LEN(pkts); k++) {
		struct mqttpkt_in in;
		size_t pkt_len = 0;
		decoded(pkts[k].p, pkts[k].n, 5, &in);
		for (size_t len = 0; len < pkts[k].n; len++) {
			/* cut short: framing waits, the decoder refuses */
			assert_int_equal(mqttpkt_frame(pkts[k].p, len, 1024, &pkt_len, NULL), 0);
			refused(pkts[k].p, len, 5, EC_EMALFORMED);
			/* and with the remaining length made to agree: still refused,
			 * unless the cut falls on an optional tail (PUBACK, PUBLISH payload) */
			if (len < 2)
				continue;
			uint8_t cut[64];
			memcpy(cut, pkts[k].p, len);
			cut[1] = (uint8_t)(len - 2);
			const char *why = NULL;
			int rc = mqttpkt_decode(cut, len, 5, &in, &why);
			if (rc != 0) {
				assert_int_equal(rc, EC_EMALFORMED);
				assert_non_null(why);
			}
		}
		/* one byte more than the header says */
		uint8_t longer[64];
		memcpy(longer, pkts[k].p, pkts[k].n);
		longer[pkts[k].n] = 0;
		refused(longer, pkts[k].n + 1, 5, EC_EMALFORMED);
	}
	/* the property block longer than the packet, length agreeing */
	static const uint8_t cut_prop[] = {0x20, 0x05, 0x00, 0x00, 0x03, 0x21, 0x00};
	refused(cut_prop, sizeof(cut_prop), 5, EC_EMALFORMED);
	/* a value running past its (shorter) block */
	static const uint8_t value_past_block[] = {0x20, 0x06, 0x00, 0x00, 0x02, 0x21, 0x00, 0x0a};
	refused(value_past_block, sizeof(value_past_block), 5, EC_EMALFORMED);
	mqttpkt_buf_fini(&b);
}

static void test_bad_lengths(void **state)
{
	size_t pkt_len = 0;
	const char *why = NULL;
	/* five-byte remaining length */
	static const uint8_t vbi5[] = {0x30, 0xff, 0xff, 0xff, 0xff, 0x7f};
	assert_int_equal(mqttpkt_frame(vbi5, sizeof(vbi5), SIZE_MAX, &pkt_len, &why), EC_EMALFORMED);
	assert_non_null(why);
	refused(vbi5, sizeof(vbi5), 5, EC_EMALFORMED);
	/* four continuation bytes so far: wait for the fifth, then refuse */
	assert_int_equal(mqttpkt_frame(vbi5, 4, SIZE_MAX, &pkt_len, NULL), 0);
	/* the largest length there is, over our limit: its size is told */
	static const uint8_t huge[] = {0x30, 0xff, 0xff, 0xff, 0x7f};
	why = NULL;
	assert_int_equal(mqttpkt_frame(huge, sizeof(huge), 1 << 20, &pkt_len, &why), EC_ETOO_LARGE);
	assert_int_equal(pkt_len, 5 + (size_t)MQTTPKT_MAX_REMAINING);
	assert_non_null(why);
	static const uint8_t small[] = {0x30, 0x05};
	assert_int_equal(mqttpkt_frame(small, 2, 6, &pkt_len, NULL), EC_ETOO_LARGE);
	assert_int_equal(pkt_len, 7);
	assert_int_equal(mqttpkt_frame(small, 2, 7, &pkt_len, NULL), 0);
	/* a non-minimal remaining length is accepted (documented) */
	static const uint8_t loose[] = {0xd0, 0x80, 0x00};
	assert_int_equal(mqttpkt_frame(loose, 3, 16, &pkt_len, NULL), 1);
	assert_int_equal(pkt_len, 3);
	struct mqttpkt_in in;
	decoded(loose, 3, 5, &in);
	/* a five-byte property length */
	static const uint8_t prop5[] = {0x20, 0x07, 0x00, 0x00, 0x80, 0x80, 0x80, 0x80, 0x01};
	refused(prop5, sizeof(prop5), 5, EC_EMALFORMED);
	/* property length past the end */
	static const uint8_t past[] = {0x20, 0x05, 0x00, 0x00, 0x09, 0x24, 0x01};
	refused(past, sizeof(past), 5, EC_EMALFORMED);
	/* topic length past the end */
	static const uint8_t topic_past[] = {0x30, 0x04, 0x00, 0x09, 'a', 'b'};
	refused(topic_past, sizeof(topic_past), 4, EC_EMALFORMED);
	/* leftovers in fixed-layout packets */
	static const uint8_t connack4[] = {0x20, 0x03, 0x00, 0x00, 0x00};
	refused(connack4, sizeof(connack4), 4, EC_EMALFORMED);
	static const uint8_t puback4[] = {0x40, 0x03, 0x00, 0x01, 0x00};
	refused(puback4, sizeof(puback4), 4, EC_EMALFORMED);
	static const uint8_t pingresp[] = {0xd0, 0x01, 0x00};
	refused(pingresp, sizeof(pingresp), 5, EC_EMALFORMED);
	static const uint8_t disc4[] = {0xe0, 0x01, 0x00};
	refused(disc4, sizeof(disc4), 4, EC_EMALFORMED);
	static const uint8_t suback_none[] = {0x90, 0x03, 0x00, 0x01, 0x00};
	refused(suback_none, sizeof(suback_none), 5, EC_EMALFORMED);
	refused(NULL, 0, 5, EC_EMALFORMED);
	assert_int_equal(mqttpkt_decode(small, 2, 6, &in, &why), -EINVAL);
}

static void test_bad_properties(void **state)
{
	/* duplicated Maximum QoS */
	static const uint8_t dup[] = {0x20, 0x07, 0x00, 0x00, 0x04, 0x24, 0x00, 0x24, 0x01};
	refused(dup, sizeof(dup), 5, EC_EMALFORMED);
	/* Receive Maximum 0, Maximum Packet Size 0, Maximum QoS 2 */
	static const uint8_t rm0[] = {0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x00};
	refused(rm0, sizeof(rm0), 5, EC_EMALFORMED);
	static const uint8_t mp0[] = {0x20, 0x08, 0x00, 0x00, 0x05, 0x27, 0, 0, 0, 0};
	refused(mp0, sizeof(mp0), 5, EC_EMALFORMED);
	static const uint8_t mq2[] = {0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02};
	refused(mq2, sizeof(mq2), 5, EC_EMALFORMED);
	/* unknown identifiers: 0x04, 0x7f, and a two-byte one */
	static const uint8_t unk[] = {0x20, 0x05, 0x00, 0x00, 0x02, 0x04, 0x00};
	refused(unk, sizeof(unk), 5, EC_EMALFORMED);
	static const uint8_t unk2[] = {0x20, 0x05, 0x00, 0x00, 0x02, 0x7f, 0x00};
	refused(unk2, sizeof(unk2), 5, EC_EMALFORMED);
	static const uint8_t unk3[] = {0x20, 0x06, 0x00, 0x00, 0x03, 0x80, 0x01, 0x00};
	refused(unk3, sizeof(unk3), 5, EC_EMALFORMED);
	/* defined, but not in this packet: topic alias in CONNACK, content
	 * type in SUBACK, server keep alive in PUBLISH */
	static const uint8_t here1[] = {0x20, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01};
	refused(here1, sizeof(here1), 5, EC_EMALFORMED);
	static const uint8_t here2[] = {0x90, 0x07, 0x00, 0x01, 0x03, 0x03, 0x00, 0x00, 0x00};
	refused(here2, sizeof(here2), 5, EC_EMALFORMED);
	static const uint8_t here3[] = {0x30, 0x07, 0x00, 0x01, 't', 0x03, 0x13, 0x00, 0x01};
	refused(here3, sizeof(here3), 5, EC_EMALFORMED);
	/* a topic alias is well formed but not spoken */
	static const uint8_t alias[] = {0x30, 0x07, 0x00, 0x01, 't', 0x03, 0x23, 0x00, 0x01};
	refused(alias, sizeof(alias), 5, EC_EPROTO);
	/* subscription identifier 0; duplicated content type; bad UTF-8 in a
	 * reason string; a wildcard in the response topic */
	static const uint8_t subid0[] = {0x30, 0x06, 0x00, 0x01, 't', 0x02, 0x0b, 0x00};
	refused(subid0, sizeof(subid0), 5, EC_EMALFORMED);
	static const uint8_t ct2[] = {0x30, 0x0a, 0x00, 0x01, 't', 0x06, 0x03, 0x00, 0x00,
				      0x03, 0x00, 0x00};
	refused(ct2, sizeof(ct2), 5, EC_EMALFORMED);
	static const uint8_t rs[] = {0x40, 0x08, 0x00, 0x01, 0x80, 0x04, 0x1f, 0x00, 0x01, 0xff};
	refused(rs, sizeof(rs), 5, EC_EMALFORMED);
	static const uint8_t rt[] = {0x30, 0x09, 0x00, 0x01, 't', 0x05, 0x08, 0x00, 0x02, 'a', '#'};
	refused(rt, sizeof(rt), 5, EC_EMALFORMED);
}

static void test_bad_publish(void **state)
{
	/* QoS 3 */
	static const uint8_t q3[] = {0x36, 0x05, 0x00, 0x01, 't', 0x00, 0x01};
	refused(q3, sizeof(q3), 4, EC_EPROTO);
	/* DUP at QoS 0 */
	static const uint8_t dup0[] = {0x38, 0x03, 0x00, 0x01, 't'};
	refused(dup0, sizeof(dup0), 4, EC_EMALFORMED);
	/* packet id 0 */
	static const uint8_t id0[] = {0x32, 0x05, 0x00, 0x01, 't', 0x00, 0x00};
	refused(id0, sizeof(id0), 4, EC_EMALFORMED);
	/* empty topic */
	static const uint8_t empty[] = {0x30, 0x03, 0x00, 0x00, 0x00};
	refused(empty, sizeof(empty), 5, EC_EPROTO);
	/* topics: wildcards, U+0000, and UTF-8 that is not */
	static const char *const bad[] = {
		"a/+", "#", "a/b#", "a\0b", "\x80", "\xc0\xaf", "\xc3", "\xe0\x80\xaf",
		"\xed\xa0\x80", "\xf4\x90\x80\x80", "\xf8\x88\x80\x80\x80", "\xff",
		"\xe2\x82", "\xf0\x9f\x98",
	};
	static const size_t bad_len[] = {3, 1, 4, 3, 1, 2, 1, 3, 3, 4, 5, 1, 2, 3};
	for (size_t i = 0; i < LEN(bad); i++) {
		uint8_t pkt[16] = {0x30, (uint8_t)(2 + bad_len[i]), 0x00, (uint8_t)bad_len[i]};
		memcpy(pkt + 4, bad[i], bad_len[i]);
		refused(pkt, 4 + bad_len[i], 4, EC_EMALFORMED);
	}
	/* but every valid form of UTF-8 passes */
	static const char good[] = "a\x7f\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80"
				   "\xf0\x90\x80\x80\xf4\x8f\xbf\xbf";
	uint8_t pkt[64] = {0x30, (uint8_t)(2 + sizeof(good) - 1), 0x00, (uint8_t)(sizeof(good) - 1)};
	memcpy(pkt + 4, good, sizeof(good) - 1);
	struct mqttpkt_in in;
	decoded(pkt, 4 + sizeof(good) - 1, 4, &in);
	assert_int_equal(in.topic.n, sizeof(good) - 1);
}

static void test_bad_types_and_flags(void **state)
{
	/* packet types a broker never sends */
	static const uint8_t never[][2] = {{0x00, 0x00}, {0x10, 0x00}, {0x82, 0x00},
					   {0xa2, 0x00}, {0xc0, 0x00}};
	for (size_t i = 0; i < LEN(never); i++)
		for (int v = 4; v <= 5; v++)
			refused(never[i], 2, v, EC_EMALFORMED);
	/* packet types we do not speak */
	static const uint8_t unspoken[][4] = {{0x50, 0x02, 0x00, 0x01}, {0x62, 0x02, 0x00, 0x01},
					      {0x70, 0x02, 0x00, 0x01}, {0xb0, 0x02, 0x00, 0x01}};
	for (size_t i = 0; i < LEN(unspoken); i++)
		for (int v = 4; v <= 5; v++)
			refused(unspoken[i], 4, v, EC_EPROTO);
	static const uint8_t auth[] = {0xf0, 0x00};
	refused(auth, 2, 5, EC_EPROTO);
	refused(auth, 2, 4, EC_EMALFORMED); /* reserved in 3.1.1 */
	/* wrong fixed-header flags */
	static const uint8_t flags[][5] = {
		{0x21, 0x02, 0x00, 0x00}, {0x42, 0x02, 0x00, 0x01}, {0x60, 0x02, 0x00, 0x01},
		{0x98, 0x03, 0x00, 0x01, 0x00}, {0xd1, 0x00}, {0xe4, 0x00},
	};
	static const size_t flags_len[] = {4, 4, 4, 5, 2, 2};
	for (size_t i = 0; i < LEN(flags); i++)
		refused(flags[i], flags_len[i], 4, EC_EMALFORMED);
	/* CONNACK reserved flag bits; SUBACK codes neither version defines */
	static const uint8_t ca[] = {0x20, 0x02, 0x02, 0x00};
	refused(ca, sizeof(ca), 4, EC_EMALFORMED);
	static const uint8_t sa4[] = {0x90, 0x03, 0x00, 0x01, 0x87};
	refused(sa4, sizeof(sa4), 4, EC_EMALFORMED);
	static const uint8_t sa5[] = {0x90, 0x04, 0x00, 0x01, 0x00, 0x03};
	refused(sa5, sizeof(sa5), 5, EC_EMALFORMED);
	static const uint8_t ack0[] = {0x40, 0x02, 0x00, 0x00};
	refused(ack0, sizeof(ack0), 4, EC_EMALFORMED);
	/* the remaining length disagrees with the packet size */
	static const uint8_t lie[] = {0xd0, 0x01};
	refused(lie, sizeof(lie), 4, EC_EMALFORMED);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_connect_bytes),
		cmocka_unit_test(test_subscribe_bytes),
		cmocka_unit_test(test_small_packet_bytes),
		cmocka_unit_test(test_publish_bytes),
		cmocka_unit_test(test_publish_round_trip),
		cmocka_unit_test(test_decode_head),
		cmocka_unit_test(test_publish_too_large),
		cmocka_unit_test(test_connack),
		cmocka_unit_test(test_suback_puback_disconnect),
		cmocka_unit_test(test_publish_decode),
		cmocka_unit_test(test_truncations),
		cmocka_unit_test(test_bad_lengths),
		cmocka_unit_test(test_bad_properties),
		cmocka_unit_test(test_bad_publish),
		cmocka_unit_test(test_bad_types_and_flags),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
