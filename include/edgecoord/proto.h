/* SPDX-License-Identifier: MIT */
/*
 * proto.h - the agent link's frames (docs/protocol.md): the one codec both the
 * coordinator (src/link.c) and the agent library (src/agent/) use.
 *
 * On the wire a frame is a 4-byte big-endian body length followed by a body
 * that is exactly one CBOR map with short text keys; key "t" holds the frame
 * type. ec_frame_encode() writes header and body; ec_frame_decode() takes a
 * body (the caller has read the header and checked the length against its
 * max_frame) and checks everything: well-formedness, no trailing bytes, the
 * type and range of every known key, string lengths and characters, array
 * sizes. It never allocates more than the body's size and never recurses.
 * Payloads, inputs and results are opaque CBOR items handed through as the
 * exact bytes received (checked well-formed, nesting <= EC_CBOR_MAX_DEPTH).
 *
 * Also here: a tiny CBOR writer and reader (ec_cbor_*), because a vendor's
 * handler must read a payload and write a result without another library.
 *
 * All functions are pure and thread-safe; decoded frames own their memory
 * (ec_frame_fini frees it).
 */
#ifndef EDGECOORD_PROTO_H
#define EDGECOORD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EC_PROTO_VERSION 1
#define EC_FRAME_HDR 4                 /* big-endian body length */
#define EC_FRAME_MAX_DEFAULT 65536     /* agents.max_frame: body bytes */
#define EC_FRAME_MIN_MAX 512           /* smallest max_frame a peer may announce */

/* Bounds every decoder enforces (docs/protocol.md "Limits"). */
#define EC_AGENT_ID_MAX 128            /* [A-Za-z0-9._-] */
#define EC_TASK_ID_MAX 255             /* [A-Za-z0-9._:-] */
#define EC_TYPE_MAX 64                 /* [A-Za-z0-9._-] */
#define EC_TEXT_MAX 1024               /* error, reason, progress message: UTF-8 */
#define EC_MAX_VERSIONS 8
#define EC_MAX_CAPS 64
#define EC_MAX_LABELS 32
#define EC_LABEL_KEY_MAX 64            /* [A-Za-z0-9._-] */
#define EC_LABEL_VAL_MAX 128           /* UTF-8 */
#define EC_MAX_LEASES 256
#define EC_MAX_SLOTS 1024
#define EC_CBOR_MAX_DEPTH 32           /* nesting of payload/inputs/result */

enum ec_frame_type {
	EC_F_NONE = 0,
	EC_F_HELLO,    /* agent -> coordinator, first frame */
	EC_F_WELCOME,  /* coordinator -> agent, answer to hello */
	EC_F_WORK,     /* coordinator -> agent */
	EC_F_STARTED,  /* agent -> coordinator */
	EC_F_PROGRESS, /* agent -> coordinator */
	EC_F_RESULT,   /* agent -> coordinator */
	EC_F_ACK,      /* coordinator -> agent: result accepted or discarded */
	EC_F_HB,       /* both ways */
	EC_F_CANCEL,   /* coordinator -> agent */
	EC_F_DRAIN,    /* coordinator -> agent */
	EC_F_BYE,      /* both ways: clean close follows */
	EC_F_ERROR,    /* both ways: the sender closes after it */
	EC_F_COUNT
};

/* "hello", ... ; NULL for an unknown value. */
const char *ec_frame_type_name(int type);

struct ec_label {
	char *key, *value;
};

/*
 * A decoded (or to be encoded) frame. Which fields mean something depends on
 * type (docs/protocol.md); the rest are zero/NULL. After decode every char *
 * is NUL-terminated, every pointer is owned by the frame. For encode the
 * caller's pointers are borrowed.
 */
struct ec_frame {
	int type;                          /* enum ec_frame_type */
	/* hello */
	char *agent_id;
	uint32_t versions[EC_MAX_VERSIONS];
	size_t nversions;
	char **caps;
	size_t ncaps;
	uint32_t slots;
	struct ec_label *labels;
	size_t nlabels;
	/* hello (still held), hb (running) */
	uint64_t *leases;
	size_t nleases;
	/* welcome */
	uint32_t version, heartbeat_ms, heartbeat_misses, max_frame;
	/* work, result */
	char *task_id;
	uint32_t attempt;                  /* work: >= 1 */
	/* work, started, progress, result, ack, cancel: >= 1 */
	uint64_t lease;
	/* work */
	char *task_type;
	uint8_t *payload;                  /* one CBOR item; NULL = absent (null) */
	size_t payload_len;
	uint8_t *inputs;                   /* CBOR map short-id -> result; NULL = {} */
	size_t inputs_len;
	uint64_t timeout_ms;               /* 0 = none */
	/* progress: percent 0..100 or -1 when absent */
	int percent;
	/* progress message, result error, cancel reason, error/bye reason */
	char *text;
	/* result: ok -> result (CBOR item, NULL = null); !ok -> text */
	bool ok;
	uint8_t *result;
	size_t result_len;
	/* ack */
	bool accepted;
	/* hb (agent): load 0..100, -1 when absent */
	int load;
};

/* Zero a frame and set the "absent" markers (percent, load = -1). */
void ec_frame_init(struct ec_frame *f, int type);
/* Free what decode allocated and zero the frame. Accepts NULL. Do not call it
 * on a frame whose pointers are the caller's (encode input). */
void ec_frame_fini(struct ec_frame *f);

/*
 * Encode header + body into a new buffer (*out, free()). Checks the frame as
 * the decoder would (required fields, bounds, opaque items well-formed), so
 * that what we send is never refused for its form. max_frame bounds the body.
 * Returns 0, EC_EINVALID_FIELD, EC_ETOO_LARGE (body > max_frame) or -ENOMEM.
 */
int ec_frame_encode(const struct ec_frame *f, uint32_t max_frame,
		    uint8_t **out, size_t *out_len);

/*
 * Decode one body (without the 4-byte header). On success fills *out (the
 * caller calls ec_frame_fini) and returns 0. Errors: EC_EMALFORMED (not one
 * well-formed CBOR map, trailing bytes, a known key of the wrong type or out of
 * bounds, a required key missing, a duplicate key), EC_EPROTO (a well-formed
 * frame of unknown type), -ENOMEM. Unknown keys are skipped. *why (if not
 * NULL) gets a static reason text on failure.
 */
int ec_frame_decode(const uint8_t *body, size_t len, struct ec_frame *out,
		    const char **why);

/* The body length in a 4-byte header. */
static inline uint32_t ec_frame_hdr_len(const uint8_t h[EC_FRAME_HDR])
{
	return (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
}

/* True iff s[0..n) is a valid agent id / task type / label key. */
bool ec_id_valid(const char *s, size_t n, size_t max);

/*
 * A small CBOR writer (definite lengths, shortest forms) into a growing
 * buffer. Errors are sticky: after a failed allocation every call is a no-op
 * and ec_cbor_w_finish() returns -ENOMEM.
 */
struct ec_cbor_w {
	uint8_t *buf;
	size_t len, cap;
	int err;
};
void ec_cbor_w_init(struct ec_cbor_w *w);
void ec_cbor_w_fini(struct ec_cbor_w *w);   /* frees the buffer; accepts NULL */
void ec_cbor_w_head(struct ec_cbor_w *w, unsigned major, uint64_t arg);
void ec_cbor_w_uint(struct ec_cbor_w *w, uint64_t v);
void ec_cbor_w_int(struct ec_cbor_w *w, int64_t v);
void ec_cbor_w_double(struct ec_cbor_w *w, double v);
void ec_cbor_w_bool(struct ec_cbor_w *w, bool v);
void ec_cbor_w_null(struct ec_cbor_w *w);
void ec_cbor_w_text(struct ec_cbor_w *w, const char *s);   /* NULL writes null */
void ec_cbor_w_textn(struct ec_cbor_w *w, const char *s, size_t n);
void ec_cbor_w_bytes(struct ec_cbor_w *w, const uint8_t *p, size_t n);
void ec_cbor_w_map(struct ec_cbor_w *w, size_t npairs);
void ec_cbor_w_array(struct ec_cbor_w *w, size_t n);
/* Splice an encoded item; NULL/0 writes null. */
void ec_cbor_w_raw(struct ec_cbor_w *w, const uint8_t *item, size_t n);
int ec_cbor_w_finish(struct ec_cbor_w *w);  /* 0 or -ENOMEM */
/* Hand the buffer to the caller (new; free()) and reset w; NULL (and *len 0)
 * after a failed write. */
uint8_t *ec_cbor_w_take(struct ec_cbor_w *w, size_t *len);

/*
 * A CBOR reader over borrowed bytes. ec_cbor_next() reads one head: major
 * type (0..7), its argument (count, length or value; for major 7 the simple
 * value 20..23 or, for floats, the value in *d), and whether the length is
 * indefinite. For major 2/3 with a definite length it also steps over the
 * bytes and sets *data. It returns 0 or EC_EMALFORMED. ec_cbor_skip() steps
 * over one whole item, checking it is well-formed and no deeper than
 * max_depth (iteratively), and never trusting a count.
 */
struct ec_cbor_r {
	const uint8_t *p, *end;
};
struct ec_cbor_item {
	unsigned major;
	uint64_t arg;
	bool indef;
	bool is_float;
	double d;
	const uint8_t *data;   /* major 2/3, definite */
};
int ec_cbor_next(struct ec_cbor_r *r, struct ec_cbor_item *it);
int ec_cbor_skip(struct ec_cbor_r *r, uint32_t max_depth);
/* 0 iff buf holds exactly one well-formed item no deeper than max_depth. */
int ec_cbor_check(const uint8_t *buf, size_t len, uint32_t max_depth);

#endif
