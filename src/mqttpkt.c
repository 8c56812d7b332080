/* SPDX-License-Identifier: MIT */
/*
 * mqttpkt.c - MQTT 5.0 and 3.1.1 control packets (mqttpkt.h): the decoder of
 * what a broker sends a client and the encoders of what a client sends.
 *
 * The decoder reads through a cursor (struct rd) that never moves past the
 * packet's end: every length the broker states is checked against what
 * remains before it is trusted, and the first refusal's reason is kept. MQTT 5
 * properties are walked once, against one table of each identifier's type and
 * a per-packet set of the identifiers allowed there.
 *
 * The encoders run each packet's body writer twice: once only counting, to
 * learn the remaining length and refuse an oversize packet before the buffer
 * is touched, then writing into space reserved up front. So a failure never
 * leaves half a packet behind, and mqttpkt_publish_size is the counting pass
 * itself rather than a second account of the layout that could drift.
 *
 * Does not: check the caller's own strings for UTF-8 (they are ours, not the
 * broker's), check a PUBLISH payload against its Payload Format Indicator
 * (the spec lets a receiver skip that), or keep any state.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "edgecoord/err.h"
#include "mqttpkt.h"

#define BIT(id) (UINT64_C(1) << (id))

static void set_why(const char **why, const char *text)
{
	if (why)
		*why = text;
}

/* ---- variable byte integers ----------------------------------------- */

/*
 * Reads a variable byte integer from p[0..n) into *v. Returns its length
 * (1-4), 0 when p ends inside it, -1 when a fifth byte would follow.
 * A non-minimal encoding (0x80 0x00 for 0) is accepted: [MQTT-1.5.5-1] binds
 * the sender, the value is the same either way, and four bytes still bound it.
 */
static int vbi_get(const uint8_t *p, size_t n, uint32_t *v)
{
	uint32_t val = 0;
	for (size_t i = 0; i < 4; i++) {
		if (i >= n)
			return 0;
		val |= (uint32_t)(p[i] & 0x7f) << (7 * i);
		if (!(p[i] & 0x80)) {
			*v = val;
			return (int)i + 1;
		}
	}
	return -1;
}

static size_t vbi_size(size_t v)
{
	return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4;
}

int mqttpkt_frame(const uint8_t *buf, size_t len, size_t max, size_t *pkt_len,
		  const char **why)
{
	uint32_t rem;
	if (len < 2)
		return 0;
	int k = vbi_get(buf + 1, len - 1, &rem);
	if (k == 0)
		return 0;
	if (k < 0) {
		set_why(why, "remaining length is longer than four bytes");
		return EC_EMALFORMED;
	}
	size_t total = 1 + (size_t)k + rem;
	if (total > max) {
		/* Said as soon as the header is in, so the caller need not
		 * buffer a packet it will refuse anyway. */
		*pkt_len = total;
		set_why(why, "packet is larger than the maximum packet size");
		return EC_ETOO_LARGE;
	}
	if (len < total)
		return 0;
	*pkt_len = total;
	return 1;
}

/* ---- the reader ------------------------------------------------------ */

struct rd {
	const uint8_t *p, *end;
	const char *why; /* the first refusal */
};

static bool rd_fail(struct rd *r, const char *why)
{
	if (!r->why)
		r->why = why;
	return false;
}

static int refuse(struct rd *r, int err, const char *why)
{
	rd_fail(r, why);
	return err;
}

static size_t rd_left(const struct rd *r)
{
	return (size_t)(r->end - r->p);
}

static bool rd_bytes(struct rd *r, size_t n, const uint8_t **out, const char *why)
{
	if (n > rd_left(r))
		return rd_fail(r, why);
	*out = r->p;
	r->p += n;
	return true;
}

/* A big-endian integer of width 1, 2 or 4 bytes. */
static bool rd_uint(struct rd *r, size_t width, uint32_t *v, const char *why)
{
	const uint8_t *b;
	if (!rd_bytes(r, width, &b, why))
		return false;
	*v = 0;
	for (size_t i = 0; i < width; i++)
		*v = *v << 8 | b[i];
	return true;
}

/* A packet id, which is never 0 [MQTT-2.2.1-3]. */
static bool rd_id(struct rd *r, uint16_t *id, const char *why_short, const char *why_zero)
{
	uint32_t v;
	if (!rd_uint(r, 2, &v, why_short))
		return false;
	*id = (uint16_t)v;
	return v != 0 || rd_fail(r, why_zero);
}

static bool rd_vbi(struct rd *r, uint32_t *v, const char *why)
{
	int k = vbi_get(r->p, rd_left(r), v);
	if (k < 0)
		return rd_fail(r, "variable byte integer is longer than four bytes");
	if (k == 0)
		return rd_fail(r, why);
	r->p += k;
	return true;
}

/* Binary data: a two-byte length, then that many bytes. */
static bool rd_bin(struct rd *r, struct mqttpkt_bin *b, const char *why)
{
	uint32_t n;
	if (!rd_uint(r, 2, &n, why) || !rd_bytes(r, n, &b->p, why))
		return false;
	b->n = n;
	return true;
}

/*
 * Well-formed UTF-8 without U+0000 [MQTT-1.5.4-1, -2]. The range allowed for
 * the byte after the lead is what shuts out overlong forms (E0, F0),
 * surrogates (ED) and code points past U+10FFFF (F4).
 */
static bool utf8_ok(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		uint8_t c = s[i];
		size_t more = c < 0x80 ? 0 : c < 0xc2 ? 4 : c < 0xe0 ? 1 : c < 0xf0 ? 2 : c < 0xf5 ? 3 : 4;
		if (c == 0 || more > 3 || n - i <= more)
			return false;
		uint8_t lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
		uint8_t hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
		if (more && (s[i + 1] < lo || s[i + 1] > hi))
			return false;
		for (size_t k = 2; k <= more; k++)
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
		i += more + 1;
	}
	return true;
}

static bool rd_str(struct rd *r, struct mqttpkt_str *s, const char *why_short,
		   const char *why_bad)
{
	struct mqttpkt_bin b;
	if (!rd_bin(r, &b, why_short))
		return false;
	if (!utf8_ok(b.p, b.n))
		return rd_fail(r, why_bad);
	s->p = (const char *)b.p;
	s->n = b.n;
	return true;
}

/* A topic name has at least one character [MQTT-4.7.3-1] and no wildcard
 * [MQTT-3.3.2-2]. The bytes are valid UTF-8 already, and '+' or '#' never
 * occur inside a multi-byte sequence, so a byte search is enough. */
static bool topic_name_ok(struct mqttpkt_str s)
{
	return s.n > 0 && !memchr(s.p, '+', s.n) && !memchr(s.p, '#', s.n);
}

static bool rd_end(struct rd *r, const char *why)
{
	return r->p == r->end || rd_fail(r, why);
}

/* ---- MQTT 5 properties ------------------------------------------------ */

/* A property's value type; the fixed-width integers are their width. */
enum ptype { PT_NONE = 0, PT_BYTE = 1, PT_U16 = 2, PT_U32 = 4, PT_VBI, PT_STR, PT_BIN, PT_PAIR };

/*
 * Every property MQTT 5.0 defines (its table 2-4): the type of its value and,
 * where the value is restricted, the refusal when it is out of range. A
 * restricted byte must be 0 or 1; a restricted integer must not be 0.
 */
static const struct {
	uint8_t type;
	const char *bad;
} prop_defs[] = {
	[0x01] = {PT_BYTE, "Payload Format Indicator is not 0 or 1"},
	[0x02] = {PT_U32, NULL},  [0x03] = {PT_STR, NULL}, [0x08] = {PT_STR, NULL},
	[0x09] = {PT_BIN, NULL},  [0x0B] = {PT_VBI, "Subscription Identifier is 0"},
	[0x11] = {PT_U32, NULL},  [0x12] = {PT_STR, NULL}, [0x13] = {PT_U16, NULL},
	[0x15] = {PT_STR, NULL},  [0x16] = {PT_BIN, NULL},
	[0x17] = {PT_BYTE, "Request Problem Information is not 0 or 1"},
	[0x18] = {PT_U32, NULL},
	[0x19] = {PT_BYTE, "Request Response Information is not 0 or 1"},
	[0x1A] = {PT_STR, NULL},  [0x1C] = {PT_STR, NULL}, [0x1F] = {PT_STR, NULL},
	[0x21] = {PT_U16, "Receive Maximum is 0"},
	[0x22] = {PT_U16, NULL},  [0x23] = {PT_U16, NULL},
	[0x24] = {PT_BYTE, "Maximum QoS is not 0 or 1"},
	[0x25] = {PT_BYTE, "Retain Available is not 0 or 1"},
	[0x26] = {PT_PAIR, NULL},
	[0x27] = {PT_U32, "Maximum Packet Size is 0"},
	[0x28] = {PT_BYTE, "Wildcard Subscription Available is not 0 or 1"},
	[0x29] = {PT_BYTE, "Subscription Identifiers Available is not 0 or 1"},
	[0x2A] = {PT_BYTE, "Shared Subscription Available is not 0 or 1"},
};

/* User Property and Subscription Identifier may repeat; nothing else may. */
#define PROP_REPEATABLE (BIT(0x26) | BIT(0x0B))

/* Which properties one packet type may carry, and its refusals. */
struct prop_rule {
	uint64_t allowed;
	const char *past_end, *unknown, *not_here, *twice, *bad_str, *left_over;
};

#define PROP_RULE(pkt, allowed)                                                \
	{ (allowed), pkt ": properties run past the packet end",               \
	  pkt ": unknown property identifier",                                 \
	  pkt ": property not allowed in this packet",                         \
	  pkt ": property given twice",                                        \
	  pkt ": property string is not valid UTF-8 or holds U+0000",          \
	  pkt ": bytes left over at the end" }

static const struct prop_rule connack_rule = PROP_RULE("CONNACK",
	BIT(0x11) | BIT(0x21) | BIT(0x24) | BIT(0x25) | BIT(0x27) | BIT(0x12) |
	BIT(0x22) | BIT(0x1F) | BIT(0x26) | BIT(0x28) | BIT(0x29) | BIT(0x2A) |
	BIT(0x13) | BIT(0x1A) | BIT(0x1C) | BIT(0x15) | BIT(0x16));
static const struct prop_rule publish_rule = PROP_RULE("PUBLISH",
	BIT(0x01) | BIT(0x02) | BIT(0x23) | BIT(0x08) | BIT(0x09) | BIT(0x26) |
	BIT(0x0B) | BIT(0x03));
static const struct prop_rule puback_rule = PROP_RULE("PUBACK", BIT(0x1F) | BIT(0x26));
static const struct prop_rule suback_rule = PROP_RULE("SUBACK", BIT(0x1F) | BIT(0x26));
/* Session Expiry from a server is a protocol error [MQTT-3.14.2-2], but the
 * connection is ending anyway: refusing would only lose the reason. */
static const struct prop_rule disconnect_rule = PROP_RULE("DISCONNECT",
	BIT(0x11) | BIT(0x1F) | BIT(0x26) | BIT(0x1C));

struct pval {
	uint32_t u;
	struct mqttpkt_str s;
	struct mqttpkt_bin b;
};

static bool rd_prop_value(struct rd *r, enum ptype t, struct pval *v,
			  const struct prop_rule *rule)
{
	struct mqttpkt_str key;
	switch (t) {
	case PT_VBI:
		return rd_vbi(r, &v->u, rule->past_end);
	case PT_STR:
		return rd_str(r, &v->s, rule->past_end, rule->bad_str);
	case PT_BIN:
		return rd_bin(r, &v->b, rule->past_end);
	case PT_PAIR:
		return rd_str(r, &key, rule->past_end, rule->bad_str) &&
		       rd_str(r, &v->s, rule->past_end, rule->bad_str);
	default:
		return rd_uint(r, t, &v->u, rule->past_end);
	}
}

/* Keep what a client acts on; the rest is checked and dropped. */
static int prop_keep(struct rd *r, uint32_t id, const struct pval *v, struct mqttpkt_in *in)
{
	switch (id) {
	case 0x03:
		in->content_type = v->s;
		break;
	case 0x08:
		if (!topic_name_ok(v->s))
			return refuse(r, EC_EMALFORMED, "Response Topic is empty or holds a wildcard");
		in->response_topic = v->s;
		break;
	case 0x09:
		in->correlation = v->b;
		break;
	case 0x13:
		in->server_keepalive = (int32_t)v->u;
		break;
	case 0x1F:
		in->reason_string = v->s;
		break;
	case 0x21:
		in->receive_max = (uint16_t)v->u;
		break;
	case 0x23:
		/* We announce no Topic Alias Maximum, which means 0: a broker
		 * that sends an alias anyway is not one we can follow. */
		return refuse(r, EC_EPROTO, "PUBLISH: topic alias (we allow none)");
	case 0x24:
		in->max_qos = (uint8_t)v->u;
		break;
	case 0x27:
		in->max_packet = v->u;
		break;
	}
	return 0;
}

/* A property block: its length (a VBI), then identifier/value pairs. */
static int rd_props(struct rd *r, const struct prop_rule *rule, struct mqttpkt_in *in)
{
	uint32_t len;
	if (!rd_vbi(r, &len, rule->past_end))
		return EC_EMALFORMED;
	if (len > rd_left(r))
		return refuse(r, EC_EMALFORMED, rule->past_end);
	/* Narrow the reader to the block so no value can run past it. */
	const uint8_t *outer = r->end;
	r->end = r->p + len;
	uint64_t seen = 0;
	while (r->p < r->end) {
		uint32_t id;
		struct pval v = {0};
		if (!rd_vbi(r, &id, rule->past_end))
			return EC_EMALFORMED;
		if (id >= sizeof(prop_defs) / sizeof(prop_defs[0]) || !prop_defs[id].type)
			return refuse(r, EC_EMALFORMED, rule->unknown);
		if (!(rule->allowed & BIT(id)))
			return refuse(r, EC_EMALFORMED, rule->not_here);
		if (seen & BIT(id) & ~PROP_REPEATABLE)
			return refuse(r, EC_EMALFORMED, rule->twice);
		seen |= BIT(id);
		enum ptype t = prop_defs[id].type;
		if (!rd_prop_value(r, t, &v, rule))
			return EC_EMALFORMED;
		if (prop_defs[id].bad && (t == PT_BYTE ? v.u > 1 : v.u == 0))
			return refuse(r, EC_EMALFORMED, prop_defs[id].bad);
		int rc = prop_keep(r, id, &v, in);
		if (rc)
			return rc;
	}
	r->end = outer;
	return 0;
}

/* ---- the packets a broker sends ---------------------------------------- */

typedef int dec_fn(struct rd *r, unsigned flags, int version, struct mqttpkt_in *in);

static int dec_connack(struct rd *r, unsigned hdr_flags, int version, struct mqttpkt_in *in)
{
	uint32_t flags, reason;
	in->server_keepalive = -1;
	in->max_qos = 2;
	if (!rd_uint(r, 1, &flags, "CONNACK: shorter than its flags and reason code") ||
	    !rd_uint(r, 1, &reason, "CONNACK: shorter than its flags and reason code"))
		return EC_EMALFORMED;
	if (flags & 0xfe)
		return refuse(r, EC_EMALFORMED, "CONNACK: reserved flag bits are set");
	in->session_present = flags & 1;
	in->reason = (uint8_t)reason;
	int rc = version == MQTTPKT_V5 ? rd_props(r, &connack_rule, in) : 0;
	return rc ? rc : rd_end(r, connack_rule.left_over) ? 0 : EC_EMALFORMED;
}

/* Flags, topic and packet id: what even an oversize PUBLISH must show. */
static int dec_publish_head(struct rd *r, unsigned flags, struct mqttpkt_in *in)
{
	in->type = MQTTPKT_PUBLISH;
	in->dup = flags & 8;
	in->qos = (uint8_t)(flags >> 1 & 3);
	in->retain = flags & 1;
	if (in->qos == 3)
		return refuse(r, EC_EPROTO, "PUBLISH: QoS 3");
	if (in->dup && in->qos == 0)
		return refuse(r, EC_EMALFORMED, "PUBLISH: DUP set at QoS 0");
	if (!rd_str(r, &in->topic, "PUBLISH: topic runs past the packet end",
		    "PUBLISH: topic is not valid UTF-8 or holds U+0000"))
		return EC_EMALFORMED;
	/* An empty topic is how MQTT 5 says "use the alias", which we refuse. */
	if (in->topic.n == 0)
		return refuse(r, EC_EPROTO, "PUBLISH: empty topic (topic aliases are not spoken)");
	if (!topic_name_ok(in->topic))
		return refuse(r, EC_EMALFORMED, "PUBLISH: topic holds a wildcard");
	if (in->qos > 0 && !rd_id(r, &in->id, "PUBLISH: packet id runs past the packet end",
				  "PUBLISH: packet id 0"))
		return EC_EMALFORMED;
	return 0;
}

static int dec_publish(struct rd *r, unsigned flags, int version, struct mqttpkt_in *in)
{
	int rc = dec_publish_head(r, flags, in);
	if (rc)
		return rc;
	rc = version == MQTTPKT_V5 ? rd_props(r, &publish_rule, in) : 0;
	/* p stays non-NULL for an empty payload: it is present, only empty. */
	in->payload.p = r->p;
	in->payload.n = rd_left(r);
	r->p = r->end;
	return rc;
}

/* MQTT 5 lets a PUBACK or DISCONNECT end before its reason code (then 0)
 * or before its properties (then none) [MQTT 5.0 3.4.2.1, 3.14.2.1];
 * 3.1.1 has neither. */
static int rd_reason_props(struct rd *r, int version, const struct prop_rule *rule,
			   struct mqttpkt_in *in)
{
	int rc = 0;
	if (version == MQTTPKT_V5 && rd_left(r) > 0) {
		in->reason = *r->p++;
		rc = rd_left(r) > 0 ? rd_props(r, rule, in) : 0;
	}
	return rc ? rc : rd_end(r, rule->left_over) ? 0 : EC_EMALFORMED;
}

static int dec_puback(struct rd *r, unsigned flags, int version, struct mqttpkt_in *in)
{
	if (!rd_id(r, &in->id, "PUBACK: packet id runs past the packet end", "PUBACK: packet id 0"))
		return EC_EMALFORMED;
	return rd_reason_props(r, version, &puback_rule, in);
}

static int dec_disconnect(struct rd *r, unsigned flags, int version, struct mqttpkt_in *in)
{
	return rd_reason_props(r, version, &disconnect_rule, in);
}

static int dec_suback(struct rd *r, unsigned flags, int version, struct mqttpkt_in *in)
{
	if (!rd_id(r, &in->id, "SUBACK: packet id runs past the packet end", "SUBACK: packet id 0"))
		return EC_EMALFORMED;
	int rc = version == MQTTPKT_V5 ? rd_props(r, &suback_rule, in) : 0;
	if (rc)
		return rc;
	if (rd_left(r) == 0)
		return refuse(r, EC_EMALFORMED, "SUBACK: no reason codes");
	/* Codes 3..0x7F are defined by neither version, and 3.1.1 knows only
	 * 0x80 as a failure: refusing the rest keeps "below 0x80 is the
	 * granted QoS" true for the caller. */
	for (const uint8_t *c = r->p; c < r->end; c++)
		if (*c > 2 && (*c < 0x80 || (version == MQTTPKT_V311 && *c != 0x80)))
			return refuse(r, EC_EMALFORMED, "SUBACK: undefined reason code");
	in->suback.p = r->p;
	in->suback.n = rd_left(r);
	r->p = r->end;
	return 0;
}

static int dec_pingresp(struct rd *r, unsigned flags, int version, struct mqttpkt_in *in)
{
	return rd_end(r, "PINGRESP: remaining length is not 0") ? 0 : EC_EMALFORMED;
}

/* What a client does with each packet type: decode it, or refuse it. */
static const struct {
	dec_fn *dec;
	int err;
	const char *why;
} types[16] = {
	[0] = {NULL, EC_EMALFORMED, "packet type 0 is reserved"},
	[MQTTPKT_CONNECT] = {NULL, EC_EMALFORMED, "CONNECT: a broker never sends one"},
	[MQTTPKT_CONNACK] = {dec_connack, 0, NULL},
	[MQTTPKT_PUBLISH] = {dec_publish, 0, NULL},
	[MQTTPKT_PUBACK] = {dec_puback, 0, NULL},
	[MQTTPKT_PUBREC] = {NULL, EC_EPROTO, "PUBREC: QoS 2 is not spoken here"},
	[MQTTPKT_PUBREL] = {NULL, EC_EPROTO, "PUBREL: QoS 2 is not spoken here"},
	[MQTTPKT_PUBCOMP] = {NULL, EC_EPROTO, "PUBCOMP: QoS 2 is not spoken here"},
	[MQTTPKT_SUBSCRIBE] = {NULL, EC_EMALFORMED, "SUBSCRIBE: a broker never sends one"},
	[MQTTPKT_SUBACK] = {dec_suback, 0, NULL},
	[MQTTPKT_UNSUBSCRIBE] = {NULL, EC_EMALFORMED, "UNSUBSCRIBE: a broker never sends one"},
	[MQTTPKT_UNSUBACK] = {NULL, EC_EPROTO, "UNSUBACK: we never unsubscribe"},
	[MQTTPKT_PINGREQ] = {NULL, EC_EMALFORMED, "PINGREQ: a broker never sends one"},
	[MQTTPKT_PINGRESP] = {dec_pingresp, 0, NULL},
	[MQTTPKT_DISCONNECT] = {dec_disconnect, 0, NULL},
	[MQTTPKT_AUTH] = {NULL, EC_EPROTO, "AUTH: enhanced authentication is not spoken here"},
};

/* The fixed header's flag bits are fixed for every type but PUBLISH. */
static unsigned required_flags(unsigned type)
{
	return type == MQTTPKT_PUBREL || type == MQTTPKT_SUBSCRIBE ||
	       type == MQTTPKT_UNSUBSCRIBE ? 2 : 0;
}

static int dec_packet(struct rd *r, int version, struct mqttpkt_in *in)
{
	uint32_t first, rem;
	if (!rd_uint(r, 1, &first, "packet is empty") ||
	    !rd_vbi(r, &rem, "remaining length runs past the packet end"))
		return EC_EMALFORMED;
	if (rem != rd_left(r))
		return refuse(r, EC_EMALFORMED, "remaining length does not match the packet size");
	unsigned type = first >> 4, flags = first & 0x0f;
	if (type == MQTTPKT_AUTH && version == MQTTPKT_V311)
		return refuse(r, EC_EMALFORMED, "packet type 15 is reserved in MQTT 3.1.1");
	if (type != MQTTPKT_PUBLISH && flags != required_flags(type))
		return refuse(r, EC_EMALFORMED, "fixed header flags are not the ones the type requires");
	if (!types[type].dec)
		return refuse(r, types[type].err, types[type].why);
	in->type = (enum mqttpkt_type)type;
	return types[type].dec(r, flags, version, in);
}

int mqttpkt_decode(const uint8_t *pkt, size_t len, int version, struct mqttpkt_in *out,
		   const char **why)
{
	struct mqttpkt_in in = {0};
	if (version != MQTTPKT_V311 && version != MQTTPKT_V5) {
		set_why(why, "MQTT version is neither 4 nor 5");
		return -EINVAL;
	}
	if (len == 0) { /* pkt may then be NULL, and NULL + 0 is undefined */
		set_why(why, "packet is empty");
		return EC_EMALFORMED;
	}
	struct rd r = {pkt, pkt + len, NULL};
	int rc = dec_packet(&r, version, &in);
	if (rc) {
		set_why(why, r.why);
		return rc;
	}
	*out = in;
	return 0;
}

int mqttpkt_decode_head(const uint8_t *pre, size_t have, int version, struct mqttpkt_in *out,
			size_t *payload_size, const char **why)
{
	struct mqttpkt_in in = {0};
	if (version != MQTTPKT_V311 && version != MQTTPKT_V5) {
		set_why(why, "MQTT version is neither 4 nor 5");
		return -EINVAL;
	}
	if (have == 0) {
		set_why(why, "packet is empty");
		return EC_EMALFORMED;
	}
	struct rd r = {pre, pre + have, NULL};
	uint32_t first, rem, plen;
	int rc = EC_EMALFORMED;
	if (!rd_uint(&r, 1, &first, "packet is empty") ||
	    !rd_vbi(&r, &rem, "remaining length runs past the prefix"))
		goto out;
	if (first >> 4 != MQTTPKT_PUBLISH) {
		rc = refuse(&r, EC_EPROTO, "not a PUBLISH");
		goto out;
	}
	const uint8_t *end = r.p + rem; /* the announced end, maybe past the prefix */
	if (rem < rd_left(&r))
		r.end = end;
	if ((rc = dec_publish_head(&r, first & 0x0f, &in)) != 0)
		goto out;
	/* The property block, and the payload's start behind it, only when the
	 * prefix holds the whole block. */
	struct rd probe = r;
	bool props_held = version == MQTTPKT_V311 ||
			  (rd_vbi(&probe, &plen, "") && plen <= rd_left(&probe));
	if (props_held) {
		if (version == MQTTPKT_V5 && (rc = rd_props(&r, &publish_rule, &in)) != 0)
			goto out;
		in.payload.p = r.p;
		in.payload.n = rd_left(&r);
	}
	*payload_size = (size_t)(end - r.p);
	*out = in;
	return 0;
out:
	set_why(why, r.why);
	return rc;
}

/* ---- encoders ---------------------------------------------------------- */

void mqttpkt_buf_fini(struct mqttpkt_buf *b)
{
	if (!b)
		return;
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* Make room for n more bytes; b is unchanged on failure. */
static int reserve(struct mqttpkt_buf *b, size_t n)
{
	if (n <= b->cap - b->len)
		return 0;
	size_t cap = b->cap ? b->cap : 64;
	while (cap - b->len < n) {
		if (cap > SIZE_MAX / 2)
			return -ENOMEM;
		cap *= 2;
	}
	uint8_t *p = realloc(b->p, cap);
	if (!p)
		return -ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

/* A writer that either writes at p or, with p NULL, only counts. */
struct wr {
	uint8_t *p;
	size_t n;
	bool too_long; /* a string or binary field over 65,535 bytes */
};

typedef void body_fn(struct wr *w, const void *ctx);

static void put(struct wr *w, const void *src, size_t n)
{
	if (w->p && n)
		memcpy(w->p + w->n, src, n);
	/* Saturate so a huge payload counts as too large, never wraps. */
	w->n = n > SIZE_MAX - w->n ? SIZE_MAX : w->n + n;
}

/* A big-endian integer of width 1, 2 or 4 bytes. */
static void put_uint(struct wr *w, uint32_t v, size_t width)
{
	uint8_t b[4];
	for (size_t i = 0; i < width; i++)
		b[i] = (uint8_t)(v >> 8 * (width - 1 - i));
	put(w, b, width);
}

static void put_vbi(struct wr *w, uint32_t v)
{
	do {
		put_uint(w, (v & 0x7f) | (v > 0x7f ? 0x80 : 0), 1);
		v >>= 7;
	} while (v);
}

static void put_bin(struct wr *w, const void *p, size_t n)
{
	if (n > 0xffff) {
		w->too_long = true;
		n = 0;
	}
	put_uint(w, (uint32_t)n, 2);
	put(w, p, n);
}

static void put_str(struct wr *w, const char *s)
{
	put_bin(w, s, strlen(s));
}

/* Properties are sent only when set: 0 or NULL means "not sent". */
static void put_prop_uint(struct wr *w, uint8_t id, uint32_t v, size_t width)
{
	if (v) {
		put_uint(w, id, 1);
		put_uint(w, v, width);
	}
}

static void put_prop_bin(struct wr *w, uint8_t id, const void *p, size_t n)
{
	if (p) {
		put_uint(w, id, 1);
		put_bin(w, p, n);
	}
}

/* A property block: its length, then what props writes. */
static void put_props(struct wr *w, body_fn *props, const void *ctx)
{
	struct wr count = {0};
	props(&count, ctx);
	/* a few fields of at most 65,538 bytes each: far below a VBI's limit */
	put_vbi(w, (uint32_t)count.n);
	props(w, ctx);
}

/* Append the fixed header byte first and the body: count, check, reserve,
 * then write, so nothing reaches b unless all of it fits. */
static int emit(struct mqttpkt_buf *b, unsigned first, body_fn *body, const void *ctx)
{
	struct wr count = {0};
	if (body)
		body(&count, ctx);
	if (count.too_long || count.n > MQTTPKT_MAX_REMAINING)
		return -EMSGSIZE;
	int rc = reserve(b, 1 + vbi_size(count.n) + count.n);
	if (rc)
		return rc;
	struct wr w = {b->p + b->len, 0, false};
	put_uint(&w, first, 1);
	put_vbi(&w, (uint32_t)count.n);
	if (body)
		body(&w, ctx);
	b->len += w.n;
	return 0;
}

static bool version_ok(int version)
{
	return version == MQTTPKT_V311 || version == MQTTPKT_V5;
}

static void connect_props(struct wr *w, const void *ctx)
{
	const struct mqttpkt_connect *c = ctx;
	put_prop_uint(w, 0x11, c->session_expiry_s, 4);
	put_prop_uint(w, 0x21, c->receive_max, 2);
	put_prop_uint(w, 0x27, c->max_packet, 4);
	/* No Topic Alias Maximum (0x22): leaving it out means 0, so the
	 * broker never sends an alias. */
}

static void connect_body(struct wr *w, const void *ctx)
{
	const struct mqttpkt_connect *c = ctx;
	bool v5 = c->version == MQTTPKT_V5;
	unsigned flags = (c->username ? 0x80 : 0) | (c->password ? 0x40 : 0) |
			 (c->clean_start ? 0x02 : 0);
	if (c->will_topic) /* the will flag, at QoS 1 */
		flags |= (c->will_retain ? 0x20 : 0) | 1 << 3 | 0x04;
	put_str(w, "MQTT");
	put_uint(w, (uint32_t)c->version, 1);
	put_uint(w, flags, 1);
	put_uint(w, c->keepalive_s, 2);
	if (v5)
		put_props(w, connect_props, c);
	put_str(w, c->client_id ? c->client_id : "");
	if (c->will_topic) {
		if (v5)
			put_uint(w, 0, 1); /* will properties: none */
		put_str(w, c->will_topic);
		put_bin(w, c->will_payload, c->will_len);
	}
	if (c->username)
		put_str(w, c->username);
	if (c->password)
		put_bin(w, c->password, strlen(c->password));
}

int mqttpkt_connect(struct mqttpkt_buf *b, const struct mqttpkt_connect *c)
{
	if (!version_ok(c->version) || (c->will_topic && !c->will_topic[0]))
		return -EINVAL;
	/* 3.1.1 forbids a password without a user name [MQTT-3.1.2-22]. */
	if (c->version == MQTTPKT_V311 && c->password && !c->username)
		return -EINVAL;
	return emit(b, MQTTPKT_CONNECT << 4, connect_body, c);
}

struct sub_args {
	int version;
	uint16_t id;
	const char *const *filters;
	size_t n;
	uint8_t qos;
};

static void subscribe_body(struct wr *w, const void *ctx)
{
	const struct sub_args *a = ctx;
	put_uint(w, a->id, 2);
	if (a->version == MQTTPKT_V5)
		put_uint(w, 0, 1); /* properties: none */
	for (size_t i = 0; i < a->n; i++) {
		put_str(w, a->filters[i]);
		put_uint(w, a->qos, 1); /* the other option bits 0 */
	}
}

int mqttpkt_subscribe(struct mqttpkt_buf *b, int version, uint16_t id,
		      const char *const *filters, size_t n, uint8_t qos)
{
	if (!version_ok(version) || id == 0 || n == 0 || qos > 2)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!filters[i] || !filters[i][0])
			return -EINVAL;
	struct sub_args a = {version, id, filters, n, qos};
	return emit(b, MQTTPKT_SUBSCRIBE << 4 | 0x2, subscribe_body, &a);
}

struct pub_args {
	int version;
	const struct mqttpkt_pub *p;
	uint16_t id;
};

static void publish_props(struct wr *w, const void *ctx)
{
	const struct mqttpkt_pub *p = ctx;
	put_prop_uint(w, 0x02, p->expiry_s, 4);
	put_prop_bin(w, 0x03, p->content_type, p->content_type ? strlen(p->content_type) : 0);
	put_prop_bin(w, 0x08, p->response_topic, p->response_topic ? strlen(p->response_topic) : 0);
	put_prop_bin(w, 0x09, p->correlation, p->correlation_len);
}

static void publish_body(struct wr *w, const void *ctx)
{
	const struct pub_args *a = ctx;
	put_str(w, a->p->topic);
	put_uint(w, a->id, 2);
	if (a->version == MQTTPKT_V5)
		put_props(w, publish_props, a->p);
	put(w, a->p->payload, a->p->len);
}

int mqttpkt_publish(struct mqttpkt_buf *b, int version, const struct mqttpkt_pub *p,
		    uint16_t id, bool dup)
{
	if (!version_ok(version) || id == 0 || !p->topic || !p->topic[0])
		return -EINVAL;
	struct pub_args a = {version, p, id};
	unsigned first = MQTTPKT_PUBLISH << 4 | (dup ? 0x08 : 0) | 1 << 1 | (p->retain ? 1 : 0);
	return emit(b, first, publish_body, &a);
}

size_t mqttpkt_publish_size(int version, const struct mqttpkt_pub *p)
{
	struct pub_args a = {version, p, 1};
	struct wr count = {0};
	publish_body(&count, &a);
	return count.n > SIZE_MAX - 5 ? SIZE_MAX : 1 + vbi_size(count.n) + count.n;
}

static void puback_body(struct wr *w, const void *ctx)
{
	put_uint(w, *(const uint16_t *)ctx, 2);
}

int mqttpkt_puback(struct mqttpkt_buf *b, uint16_t id)
{
	return id ? emit(b, MQTTPKT_PUBACK << 4, puback_body, &id) : -EINVAL;
}

int mqttpkt_pingreq(struct mqttpkt_buf *b)
{
	return emit(b, MQTTPKT_PINGREQ << 4, NULL, NULL);
}

static void disconnect_body(struct wr *w, const void *ctx)
{
	put_uint(w, *(const uint8_t *)ctx, 1);
	put_uint(w, 0, 1); /* properties: none */
}

int mqttpkt_disconnect(struct mqttpkt_buf *b, int version, uint8_t reason)
{
	if (!version_ok(version))
		return -EINVAL;
	/* Reason 0 has a short form in MQTT 5, and 3.1.1 has no reason. */
	if (version == MQTTPKT_V311 || reason == 0)
		return emit(b, MQTTPKT_DISCONNECT << 4, NULL, NULL);
	return emit(b, MQTTPKT_DISCONNECT << 4, disconnect_body, &reason);
}
