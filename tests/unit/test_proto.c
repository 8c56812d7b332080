/* SPDX-License-Identifier: MIT */
/*
 * test_proto.c - the frame codec: every frame type round-trips, every
 * truncation and every lie about sizes is refused, wrong types and bounds are
 * refused, unknown keys are skipped, an unknown type is EC_EPROTO, and the
 * wire bytes of a few frames are pinned so docs/protocol.md stays true.
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
#include "edgecoord/proto.h"

static char *caps[] = {"echo", "sleep", "sha256"};
static struct ec_label labels[] = {{"zone", "line-2"}, {"hw", "rpi4 \xc3\xa9"}};
static uint64_t leases[] = {7, 1ull << 40};
/* {"a": [1, 2.5, "x"]} */
static uint8_t payload[] = {0xa1, 0x61, 0x61, 0x83, 0x01, 0xf9, 0x41, 0x00, 0x61, 0x78};
/* {"s1": {"v": 1}} */
static uint8_t inputs[] = {0xa1, 0x62, 0x73, 0x31, 0xa1, 0x61, 0x76, 0x01};

/* One filled frame of each type. */
static void make(int type, struct ec_frame *f)
{
	ec_frame_init(f, type);
	switch (type) {
	case EC_F_HELLO:
		f->agent_id = "agent-001";
		f->versions[0] = 1;
		f->versions[1] = 2;
		f->nversions = 2;
		f->caps = caps;
		f->ncaps = 3;
		f->slots = 4;
		f->labels = labels;
		f->nlabels = 2;
		f->leases = leases;
		f->nleases = 2;
		break;
	case EC_F_WELCOME:
		f->version = 1;
		f->heartbeat_ms = 1000;
		f->heartbeat_misses = 3;
		f->max_frame = 65536;
		break;
	case EC_F_WORK:
		f->task_id = "wf-1:step.a";
		f->attempt = 2;
		f->lease = 99;
		f->task_type = "echo";
		f->payload = payload;
		f->payload_len = sizeof(payload);
		f->inputs = inputs;
		f->inputs_len = sizeof(inputs);
		f->timeout_ms = 30000;
		break;
	case EC_F_STARTED:
		f->lease = 99;
		break;
	case EC_F_PROGRESS:
		f->lease = 99;
		f->percent = 42;
		f->text = "half way";
		break;
	case EC_F_RESULT:
		f->task_id = "t1";
		f->lease = 99;
		f->ok = true;
		f->result = payload;
		f->result_len = sizeof(payload);
		break;
	case EC_F_ACK:
		f->lease = 99;
		f->accepted = true;
		break;
	case EC_F_HB:
		f->leases = leases;
		f->nleases = 2;
		f->load = 17;
		break;
	case EC_F_CANCEL:
		f->lease = 99;
		f->text = "cancelled by operator";
		break;
	case EC_F_BYE:
		f->text = "shutting down";
		break;
	case EC_F_ERROR:
		f->text = "malformed frame";
		break;
	default:
		break;
	}
}

static void encode_ok(const struct ec_frame *f, uint8_t **buf, size_t *len)
{
	assert_int_equal(ec_frame_encode(f, EC_FRAME_MAX_DEFAULT, buf, len), 0);
	assert_true(*len > EC_FRAME_HDR);
	assert_int_equal(ec_frame_hdr_len(*buf), *len - EC_FRAME_HDR);
}

static void same_str(const char *a, const char *b)
{
	if (!a || !b)
		assert_ptr_equal(a, b);
	else
		assert_string_equal(a, b);
}

static void same_bytes(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
	assert_int_equal(al, bl);
	if (al)
		assert_memory_equal(a, b, al);
}

static void test_round_trip(void **state)
{
	for (int type = EC_F_HELLO; type < EC_F_COUNT; type++) {
		struct ec_frame in, out;
		uint8_t *buf, *buf2;
		size_t len, len2;
		const char *why = NULL;
		make(type, &in);
		encode_ok(&in, &buf, &len);
		assert_int_equal(ec_frame_decode(buf + 4, len - 4, &out, &why), 0);
		assert_int_equal(out.type, type);
		assert_string_equal(ec_frame_type_name(type), ec_frame_type_name(out.type));
		same_str(in.agent_id, out.agent_id);
		assert_int_equal(in.nversions, out.nversions);
		for (size_t i = 0; i < in.nversions; i++)
			assert_int_equal(in.versions[i], out.versions[i]);
		assert_int_equal(in.ncaps, out.ncaps);
		for (size_t i = 0; i < in.ncaps; i++)
			assert_string_equal(in.caps[i], out.caps[i]);
		assert_int_equal(in.slots, out.slots);
		assert_int_equal(in.nlabels, out.nlabels);
		for (size_t i = 0; i < in.nlabels; i++) {
			assert_string_equal(in.labels[i].key, out.labels[i].key);
			assert_string_equal(in.labels[i].value, out.labels[i].value);
		}
		assert_int_equal(in.nleases, out.nleases);
		for (size_t i = 0; i < in.nleases; i++)
			assert_true(in.leases[i] == out.leases[i]);
		assert_int_equal(in.version, out.version);
		assert_int_equal(in.heartbeat_ms, out.heartbeat_ms);
		assert_int_equal(in.heartbeat_misses, out.heartbeat_misses);
		assert_int_equal(in.max_frame, out.max_frame);
		same_str(in.task_id, out.task_id);
		assert_int_equal(in.attempt, out.attempt);
		assert_true(in.lease == out.lease);
		same_str(in.task_type, out.task_type);
		same_bytes(in.payload, in.payload_len, out.payload, out.payload_len);
		same_bytes(in.inputs, in.inputs_len, out.inputs, out.inputs_len);
		assert_true(in.timeout_ms == out.timeout_ms);
		assert_int_equal(in.percent, out.percent);
		same_str(in.text, out.text);
		assert_int_equal(in.ok, out.ok);
		same_bytes(in.result, in.result_len, out.result, out.result_len);
		assert_int_equal(in.accepted, out.accepted);
		assert_int_equal(in.load, out.load);
		/* re-encoding the decoded frame gives the same bytes */
		encode_ok(&out, &buf2, &len2);
		same_bytes(buf, len, buf2, len2);
		ec_frame_fini(&out);
		free(buf);
		free(buf2);
	}
}

/* Pinned wire bytes, as printed in docs/protocol.md. */
static void test_wire_bytes(void **state)
{
	struct ec_frame f;
	uint8_t *buf;
	size_t len;
	ec_frame_init(&f, EC_F_DRAIN);
	encode_ok(&f, &buf, &len);
	static const uint8_t drain[] = {0, 0, 0, 9, 0xa1, 0x61, 't', 0x65, 'd', 'r', 'a', 'i', 'n'};
	same_bytes(buf, len, drain, sizeof(drain));
	free(buf);

	ec_frame_init(&f, EC_F_STARTED);
	f.lease = 500;
	encode_ok(&f, &buf, &len);
	/* {"e": 500, "t": "started"}: keys in bytewise order */
	static const uint8_t started[] = {0, 0, 0, 16, 0xa2, 0x61, 'e', 0x19, 0x01, 0xf4,
					  0x61, 't', 0x67, 's', 't', 'a', 'r', 't', 'e', 'd'};
	same_bytes(buf, len, started, sizeof(started));
	free(buf);
}

static void test_truncations_refused(void **state)
{
	for (int type = EC_F_HELLO; type < EC_F_COUNT; type++) {
		struct ec_frame in, out;
		uint8_t *buf;
		size_t len;
		make(type, &in);
		encode_ok(&in, &buf, &len);
		size_t body = len - 4;
		for (size_t n = 0; n < body; n++) {
			/* a copy of exactly n bytes, so ASan sees any over-read */
			uint8_t *cut = malloc(n ? n : 1);
			memcpy(cut, buf + 4, n);
			assert_int_not_equal(ec_frame_decode(cut, n, &out, NULL), 0);
			free(cut);
		}
		/* and one trailing byte too many */
		uint8_t *more = malloc(body + 1);
		memcpy(more, buf + 4, body);
		more[body] = 0x00;
		const char *why = NULL;
		assert_int_equal(ec_frame_decode(more, body + 1, &out, &why), EC_EMALFORMED);
		assert_non_null(why);
		free(more);
		free(buf);
	}
}

static int dec(const uint8_t *b, size_t n)
{
	struct ec_frame f;
	int rc = ec_frame_decode(b, n, &f, NULL);
	if (rc == 0)
		ec_frame_fini(&f);
	return rc;
}
#define DEC(...) ({ static const uint8_t b_[] = {__VA_ARGS__}; dec(b_, sizeof(b_)); })

static void test_hostile_counts(void **state)
{
	/* map claiming 2^32-1 pairs */
	assert_int_equal(DEC(0xba, 0xff, 0xff, 0xff, 0xff, 0x61, 't'), EC_EMALFORMED);
	/* map claiming 2^64-1 pairs */
	assert_int_equal(DEC(0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x61), EC_EMALFORMED);
	/* work whose payload is an array claiming 2^60 items */
	assert_int_equal(DEC(0xa2, 0x61, 'p', 0x9b, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x61, 't',
			     0x64, 'w', 'o', 'r', 'k'), EC_EMALFORMED);
	/* payload map claiming 2^31 pairs */
	assert_int_equal(DEC(0xa2, 0x61, 'p', 0xba, 0x80, 0, 0, 0, 0x61, 't', 0x62, 'h', 'b'),
			 EC_EMALFORMED);
	/* caps claiming 1000 entries (more than EC_MAX_CAPS and than the bytes) */
	assert_int_equal(DEC(0xa2, 0x61, 'c', 0x99, 0x03, 0xe8, 0x61, 't', 0x65, 'h', 'e', 'l', 'l',
			     'o'), EC_EMALFORMED);
	/* text claiming 2^32 bytes */
	assert_int_equal(DEC(0xa1, 0x61, 't', 0x7b, 0, 0, 0, 1, 0, 0, 0, 0), EC_EMALFORMED);
	/* a byte string with a length past the end */
	assert_int_equal(DEC(0xa2, 0x61, 'p', 0x5a, 0, 1, 0, 0, 0x61, 't', 0x62, 'h', 'b'),
			 EC_EMALFORMED);
}

/* Bounds on arrays we keep: one over the limit is refused, at the limit kept. */
static void test_bounds(void **state)
{
	struct ec_frame f, out;
	uint8_t *buf;
	size_t len;
	char *many[EC_MAX_CAPS + 1];
	for (int i = 0; i <= EC_MAX_CAPS; i++)
		many[i] = "echo";
	make(EC_F_HELLO, &f);
	f.caps = many;
	f.ncaps = EC_MAX_CAPS;
	encode_ok(&f, &buf, &len);
	assert_int_equal(ec_frame_decode(buf + 4, len - 4, &out, NULL), 0);
	assert_int_equal(out.ncaps, EC_MAX_CAPS);
	ec_frame_fini(&out);
	free(buf);
	f.ncaps = EC_MAX_CAPS + 1;
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);

	uint64_t ls[EC_MAX_LEASES + 1];
	for (int i = 0; i <= EC_MAX_LEASES; i++)
		ls[i] = (uint64_t)i + 1;
	make(EC_F_HB, &f);
	f.leases = ls;
	f.nleases = EC_MAX_LEASES;
	encode_ok(&f, &buf, &len);
	free(buf);
	f.nleases = EC_MAX_LEASES + 1;
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);

	struct ec_label lb[EC_MAX_LABELS + 1];
	for (int i = 0; i <= EC_MAX_LABELS; i++)
		lb[i] = (struct ec_label){"k", "v"};
	make(EC_F_HELLO, &f);
	f.labels = lb;
	f.nlabels = EC_MAX_LABELS + 1;
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);

	char id[EC_AGENT_ID_MAX + 2];
	memset(id, 'a', sizeof(id) - 1);
	id[sizeof(id) - 1] = 0;
	make(EC_F_HELLO, &f);
	f.agent_id = id;
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);
	id[EC_AGENT_ID_MAX] = 0;
	encode_ok(&f, &buf, &len);
	free(buf);
	f.agent_id = "bad id";
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);
	f.agent_id = "agent/1";
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);
	f.agent_id = "a";
	f.slots = EC_MAX_SLOTS + 1;
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);
	f.slots = 0;  /* required */
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);

	/* invalid UTF-8 in free text */
	make(EC_F_ERROR, &f);
	f.text = "bad \xc3\x28";
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);
	f.text = "surrogate \xed\xa0\x80";
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);

	/* a payload nested deeper than EC_CBOR_MAX_DEPTH */
	uint8_t deep[EC_CBOR_MAX_DEPTH + 2];
	memset(deep, 0x81, sizeof(deep));
	deep[sizeof(deep) - 1] = 0x01;
	make(EC_F_WORK, &f);
	f.payload = deep;
	f.payload_len = sizeof(deep);
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);
	f.payload = deep + 2;  /* EC_CBOR_MAX_DEPTH - 1 levels: fine */
	f.payload_len = sizeof(deep) - 2;
	encode_ok(&f, &buf, &len);
	free(buf);
	/* a payload that is not one item */
	static uint8_t two[] = {0x01, 0x02};
	f.payload = two;
	f.payload_len = 2;
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);
	/* inputs that are not a map */
	make(EC_F_WORK, &f);
	f.inputs = payload + 3;  /* the array inside */
	f.inputs_len = sizeof(payload) - 3;
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_EINVALID_FIELD);
}

static void test_oversized(void **state)
{
	struct ec_frame f;
	uint8_t *buf;
	size_t len;
	uint8_t *big = malloc(70000);
	big[0] = 0x5a;  /* bytes(69995) */
	big[1] = 0;
	big[2] = 1;
	big[3] = 0x11;
	big[4] = 0x6b;
	memset(big + 5, 0xab, 70000 - 5);
	assert_int_equal(ec_cbor_check(big, 70000, 4), 0);
	make(EC_F_WORK, &f);
	f.payload = big;
	f.payload_len = 70000;
	assert_int_equal(ec_frame_encode(&f, EC_FRAME_MAX_DEFAULT, &buf, &len), EC_ETOO_LARGE);
	assert_int_equal(ec_frame_encode(&f, 1u << 20, &buf, &len), 0);
	free(buf);
	free(big);
}

static void test_wrong_types(void **state)
{
	/* not a map */
	assert_int_equal(DEC(0x80), EC_EMALFORMED);
	assert_int_equal(DEC(0x61, 't'), EC_EMALFORMED);
	/* indefinite map refused at the top */
	assert_int_equal(DEC(0xbf, 0x61, 't', 0x65, 'd', 'r', 'a', 'i', 'n', 0xff), EC_EMALFORMED);
	/* no type */
	assert_int_equal(DEC(0xa1, 0x61, 'e', 0x01), EC_EMALFORMED);
	/* type not text */
	assert_int_equal(DEC(0xa1, 0x61, 't', 0x01), EC_EMALFORMED);
	/* lease as text */
	assert_int_equal(DEC(0xa2, 0x61, 'e', 0x61, '1', 0x61, 't', 0x67, 's', 't', 'a', 'r',
			     't', 'e', 'd'), EC_EMALFORMED);
	/* lease 0 */
	assert_int_equal(DEC(0xa2, 0x61, 'e', 0x00, 0x61, 't', 0x67, 's', 't', 'a', 'r', 't',
			     'e', 'd'), EC_EMALFORMED);
	/* negative lease */
	assert_int_equal(DEC(0xa2, 0x61, 'e', 0x20, 0x61, 't', 0x67, 's', 't', 'a', 'r', 't',
			     'e', 'd'), EC_EMALFORMED);
	/* missing lease */
	assert_int_equal(DEC(0xa1, 0x61, 't', 0x67, 's', 't', 'a', 'r', 't', 'e', 'd'),
			 EC_EMALFORMED);
	/* duplicate key */
	assert_int_equal(DEC(0xa3, 0x61, 'e', 0x01, 0x61, 'e', 0x02, 0x61, 't', 0x67, 's', 't',
			     'a', 'r', 't', 'e', 'd'), EC_EMALFORMED);
	assert_int_equal(DEC(0xa2, 0x61, 't', 0x62, 'h', 'b', 0x61, 't', 0x62, 'h', 'b'),
			 EC_EMALFORMED);
	/* ack's flag not a bool */
	assert_int_equal(DEC(0xa3, 0x61, 'e', 0x01, 0x61, 's', 0x01, 0x61, 't', 0x63, 'a', 'c',
			     'k'), EC_EMALFORMED);
	/* a failed result without error text */
	assert_int_equal(DEC(0xa4, 0x61, 'e', 0x01, 0x61, 'k', 0x61, 'x', 0x61, 's', 0xf4, 0x61,
			     't', 0x66, 'r', 'e', 's', 'u', 'l', 't'), EC_EMALFORMED);
	/* ... and with it: fine */
	assert_int_equal(DEC(0xa5, 0x61, 'e', 0x01, 0x61, 'k', 0x61, 'x', 0x61, 's', 0xf4, 0x61,
			     't', 0x66, 'r', 'e', 's', 'u', 'l', 't', 0x61, 'w', 0x61, '!'), 0);
	/* a map key that is an array */
	assert_int_equal(DEC(0xa2, 0x80, 0x01, 0x61, 't', 0x62, 'h', 'b'), EC_EMALFORMED);
	/* reserved additional info, lone break, break in a definite array */
	assert_int_equal(DEC(0xa2, 0x61, 'p', 0x1c, 0x61, 't', 0x62, 'h', 'b'), EC_EMALFORMED);
	assert_int_equal(DEC(0xa2, 0x61, 'z', 0xff, 0x61, 't', 0x62, 'h', 'b'), EC_EMALFORMED);
	assert_int_equal(DEC(0xa2, 0x61, 'z', 0x82, 0x01, 0xff, 0x61, 't', 0x62, 'h', 'b'),
			 EC_EMALFORMED);
	/* indefinite text with a byte-string chunk */
	assert_int_equal(DEC(0xa2, 0x61, 'z', 0x7f, 0x41, 'a', 0xff, 0x61, 't', 0x62, 'h', 'b'),
			 EC_EMALFORMED);
	/* simple value encoded in two bytes below 32 */
	assert_int_equal(DEC(0xa2, 0x61, 'z', 0xf8, 0x10, 0x61, 't', 0x62, 'h', 'b'), EC_EMALFORMED);
}

static void test_unknown(void **state)
{
	/* unknown type: well-formed, EC_EPROTO */
	const char *why = NULL;
	struct ec_frame f;
	static const uint8_t b[] = {0xa1, 0x61, 't', 0x64, 'w', 'h', 'a', 't'};
	assert_int_equal(ec_frame_decode(b, sizeof(b), &f, &why), EC_EPROTO);
	assert_string_equal(why, "unknown frame type");
	/* unknown keys (text, integer, nested indefinite items, tags) are skipped */
	static const uint8_t u[] = {0xa5, 0x01, 0x9f, 0x01, 0xbf, 0x61, 'a', 0x7f, 0x61, 'b',
				    0xff, 0xff, 0xff, 0x61, 'e', 0x05, 0x62, 'z', 'z', 0xc1,
				    0x1a, 0, 0, 0, 1, 0x61, 'q', 0xfb, 0, 0, 0, 0, 0, 0, 0, 0,
				    0x61, 't', 0x67, 's', 't', 'a', 'r', 't', 'e', 'd'};
	assert_int_equal(ec_frame_decode(u, sizeof(u), &f, &why), 0);
	assert_int_equal(f.type, EC_F_STARTED);
	assert_true(f.lease == 5);
	ec_frame_fini(&f);
	/* a known key that does not belong to this type is skipped too */
	static const uint8_t k[] = {0xa2, 0x61, 'i', 0x01, 0x61, 't', 0x65, 'd', 'r', 'a', 'i', 'n'};
	assert_int_equal(ec_frame_decode(k, sizeof(k), &f, &why), 0);
	assert_null(f.agent_id);
	ec_frame_fini(&f);
	assert_null(ec_frame_type_name(0));
	assert_null(ec_frame_type_name(EC_F_COUNT));
}

static void test_cbor_rw(void **state)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_array(&w, 6);
	ec_cbor_w_int(&w, -1);
	ec_cbor_w_int(&w, -1000000);
	ec_cbor_w_uint(&w, UINT64_MAX);
	ec_cbor_w_double(&w, 1.5);
	ec_cbor_w_bytes(&w, (const uint8_t *)"ab", 2);
	ec_cbor_w_text(&w, NULL);
	assert_int_equal(ec_cbor_w_finish(&w), 0);
	assert_int_equal(ec_cbor_check(w.buf, w.len, 1), 0);
	assert_int_not_equal(ec_cbor_check(w.buf, w.len, 0), 0);
	struct ec_cbor_r r = {w.buf, w.buf + w.len};
	struct ec_cbor_item it;
	assert_int_equal(ec_cbor_next(&r, &it), 0);
	assert_int_equal(it.major, 4);
	assert_int_equal(it.arg, 6);
	assert_int_equal(ec_cbor_next(&r, &it), 0);
	assert_int_equal(it.major, 1);
	assert_int_equal(it.arg, 0);
	assert_int_equal(ec_cbor_next(&r, &it), 0);
	assert_int_equal(it.arg, 999999);
	assert_int_equal(ec_cbor_next(&r, &it), 0);
	assert_true(it.arg == UINT64_MAX);
	assert_int_equal(ec_cbor_next(&r, &it), 0);
	assert_true(it.is_float && it.d == 1.5);
	assert_int_equal(ec_cbor_next(&r, &it), 0);
	assert_int_equal(it.major, 2);
	assert_memory_equal(it.data, "ab", 2);
	assert_int_equal(ec_cbor_next(&r, &it), 0);
	assert_int_equal(it.major, 7);
	assert_int_equal(it.arg, 22);
	assert_int_not_equal(ec_cbor_next(&r, &it), 0);
	ec_cbor_w_fini(&w);
	ec_cbor_w_fini(NULL);
	/* half floats */
	static const uint8_t h[] = {0xf9, 0x3c, 0x00, 0xf9, 0x00, 0x01, 0xf9, 0xc4, 0x00};
	r = (struct ec_cbor_r){h, h + sizeof(h)};
	assert_int_equal(ec_cbor_next(&r, &it), 0);
	assert_true(it.d == 1.0);
	assert_int_equal(ec_cbor_next(&r, &it), 0);
	assert_true(it.d == 5.960464477539063e-8);
	assert_int_equal(ec_cbor_next(&r, &it), 0);
	assert_true(it.d == -4.0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_wire_bytes),
		cmocka_unit_test(test_truncations_refused),
		cmocka_unit_test(test_hostile_counts),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_oversized),
		cmocka_unit_test(test_wrong_types),
		cmocka_unit_test(test_unknown),
		cmocka_unit_test(test_cbor_rw),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
