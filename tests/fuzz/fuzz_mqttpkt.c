/* SPDX-License-Identifier: MIT */
/*
 * fuzz_mqttpkt.c - libFuzzer target for the MQTT packet decoder, the reader
 * of every byte a broker sends us. The first input byte picks the version
 * (odd: MQTT 5, even: 3.1.1); the rest is what arrived on the socket. It is
 * framed, then decoded as the chosen version and as the other one. A decode
 * returns only 0, EC_EMALFORMED or EC_EPROTO, names its reason on refusal,
 * and hands back views that lie inside the packet; a decoded PUBLISH encodes
 * again (as QoS 1) and decodes to the same fields.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "edgecoord/err.h"
#include "mqttpkt.h"

#define CHECK(c)                                                               \
	do {                                                                   \
		if (!(c))                                                      \
			abort();                                               \
	} while (0)

static void inside(const void *p, size_t n, const uint8_t *pkt, size_t len)
{
	const uint8_t *q = p;
	if (!q) {
		CHECK(n == 0);
		return;
	}
	CHECK(q >= pkt && q <= pkt + len && n <= (size_t)(pkt + len - q));
}

/* A view as a NUL-terminated copy; the decoder refuses U+0000 in every
 * string, so the copy is the whole string. NULL stays NULL. */
static char *dup_str(struct mqttpkt_str s)
{
	if (!s.p)
		return NULL;
	char *c = malloc(s.n + 1);
	CHECK(c);
	memcpy(c, s.p, s.n);
	c[s.n] = '\0';
	CHECK(strlen(c) == s.n);
	return c;
}

static void same_str(struct mqttpkt_str a, struct mqttpkt_str b)
{
	CHECK(!a.p == !b.p && a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0));
}

static void same_bin(struct mqttpkt_bin a, struct mqttpkt_bin b)
{
	CHECK(!a.p == !b.p && a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0));
}

/* Encode a decoded PUBLISH at QoS 1 and decode it again. */
static void republish(const struct mqttpkt_in *in, int version)
{
	struct mqttpkt_pub p = {
		.topic = dup_str(in->topic),
		.payload = in->payload.p,
		.len = in->payload.n,
		.retain = in->retain,
		.content_type = dup_str(in->content_type),
		.response_topic = dup_str(in->response_topic),
		.correlation = in->correlation.p,
		.correlation_len = in->correlation.n,
	};
	uint16_t id = in->id ? in->id : 1;
	struct mqttpkt_buf b = {0};
	struct mqttpkt_in out;
	const char *why = NULL;
	CHECK(mqttpkt_publish(&b, version, &p, id, in->dup) == 0);
	CHECK(b.len == mqttpkt_publish_size(version, &p));
	CHECK(mqttpkt_decode(b.p, b.len, version, &out, &why) == 0);
	CHECK(out.type == MQTTPKT_PUBLISH && out.qos == 1 && out.id == id);
	CHECK(out.dup == in->dup && out.retain == in->retain);
	same_str(out.topic, in->topic);
	same_bin(out.payload, in->payload);
	same_str(out.content_type, in->content_type);
	same_str(out.response_topic, in->response_topic);
	same_bin(out.correlation, in->correlation);
	mqttpkt_buf_fini(&b);
	free((char *)p.topic);
	free((char *)p.content_type);
	free((char *)p.response_topic);
}

/* Any bytes as the prefix of an oversize PUBLISH: a clean answer, views
 * inside the input, and a payload size that fits the announced length. */
static void decode_head(const uint8_t *pkt, size_t len, int version)
{
	struct mqttpkt_in in;
	const char *why = NULL;
	size_t size = 0;
	int rc = mqttpkt_decode_head(pkt, len, version, &in, &size, &why);
	if (rc != 0) {
		CHECK(rc == EC_EMALFORMED || rc == EC_EPROTO);
		CHECK(why != NULL);
		return;
	}
	CHECK(in.type == MQTTPKT_PUBLISH && size <= MQTTPKT_MAX_REMAINING);
	inside(in.topic.p, in.topic.n, pkt, len);
	inside(in.payload.p, in.payload.n, pkt, len);
	inside(in.content_type.p, in.content_type.n, pkt, len);
	CHECK(in.payload.n <= size);
}

static void decode(const uint8_t *pkt, size_t len, int version)
{
	struct mqttpkt_in in;
	const char *why = NULL;
	decode_head(pkt, len, version);
	int rc = mqttpkt_decode(pkt, len, version, &in, &why);
	if (rc != 0) {
		CHECK(rc == EC_EMALFORMED || rc == EC_EPROTO);
		CHECK(why != NULL);
		return;
	}
	inside(in.topic.p, in.topic.n, pkt, len);
	inside(in.payload.p, in.payload.n, pkt, len);
	inside(in.content_type.p, in.content_type.n, pkt, len);
	inside(in.response_topic.p, in.response_topic.n, pkt, len);
	inside(in.correlation.p, in.correlation.n, pkt, len);
	inside(in.suback.p, in.suback.n, pkt, len);
	inside(in.reason_string.p, in.reason_string.n, pkt, len);
	if (version == MQTTPKT_V311)
		CHECK(!in.content_type.p && !in.response_topic.p && !in.correlation.p &&
		      !in.reason_string.p);
	if (in.type == MQTTPKT_PUBLISH) {
		CHECK(in.qos <= 2 && in.topic.n > 0 && in.payload.p);
		republish(&in, version);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	int version = data[0] & 1 ? MQTTPKT_V5 : MQTTPKT_V311;
	const uint8_t *buf = data + 1;
	size_t len = size - 1, pkt_len = 0;
	const char *why = NULL;
	int rc = mqttpkt_frame(buf, len, 4096, &pkt_len, &why);
	if (rc == 1) {
		CHECK(pkt_len >= 2 && pkt_len <= len && pkt_len <= 4096);
		len = pkt_len;
	} else if (rc == EC_ETOO_LARGE) {
		CHECK(why && pkt_len > 4096);
	} else {
		CHECK(rc == 0 || (rc == EC_EMALFORMED && why));
	}
	/* Decode even what framing would not pass: the decoder must not
	 * rely on its caller having framed the bytes. */
	decode(buf, len, version);
	decode(buf, len, version == MQTTPKT_V5 ? MQTTPKT_V311 : MQTTPKT_V5);
	return 0;
}
