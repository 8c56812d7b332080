/* SPDX-License-Identifier: MIT */
/*
 * codec.h - decoding untrusted submissions (JSON or CBOR) into the task model,
 * and the conversions between JSON and CBOR the rest of edgecoord needs.
 *
 * Untrusted bytes are checked before anything large is allocated: JSON text is
 * pre-scanned for nesting depth, CBOR is pre-walked with the streaming decoder
 * so that no array or map may claim more items than bytes remain (the libcbor
 * 0.8 pre-allocation trap, LIBNOTES 3). Nothing recurses deeper than
 * limits.max_depth. JSON is converted to canonical CBOR first; one CBOR walker
 * then validates every submission, whatever it arrived as.
 *
 * Canonical CBOR (what payloads, when.equals and results are stored as):
 * definite lengths, shortest-form integers and lengths, map keys sorted by
 * their encoded bytes (RFC 8949 4.2.1), duplicate map keys refused. A JSON
 * number with no fraction and in int64 range becomes a CBOR integer; any other
 * number a float64.
 *
 * All functions are pure and thread-safe. Buffers returned as "new" are
 * malloc'd; the caller frees them with free().
 */
#ifndef EC_CODEC_H
#define EC_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edgecoord/proto.h"
#include "task.h"

/* DESIGN 2: a payload whose first byte, after an optional UTF-8 BOM and JSON
 * whitespace, is '{' or '[' is JSON; anything else is CBOR. */
enum encoding codec_sniff(const uint8_t *buf, size_t len);

/*
 * Decode and validate one submission. enc is ENC_JSON or ENC_CBOR (from the
 * MQTT content type, or codec_sniff()). On success fills *out (caller calls
 * submission_fini) and returns 0. On failure returns the EC_E* rejection code
 * and fills *err; *out is untouched. Checks everything that needs no store:
 * syntax, fields, types, ranges, unknown fields, ids, limits, duplicate ids,
 * dependencies inside a workflow, `when` naming a non-upstream, cycles (the
 * detail names the ids on one cycle). Dependencies of plain tasks on tasks
 * outside the batch are left for the store to check.
 */
int codec_decode_submission(const uint8_t *buf, size_t len, enum encoding enc,
			    const struct limits *lim, struct submission *out,
			    struct sub_error *err);

/* Decode a control message ({"task_id": ID} / {"workflow": ID} / {"agent": ID}).
 * Exactly one of the allowed keys (a bitmask of CTRL_KEY_*) must be present.
 * On success copies the id into id (TASK_FULLID_MAX + 1 bytes) and sets *key. */
enum { CTRL_KEY_TASK = 1, CTRL_KEY_WORKFLOW = 2, CTRL_KEY_AGENT = 4 };
int codec_decode_control(const uint8_t *buf, size_t len, enum encoding enc,
			 unsigned allowed, int *key, char *id, struct sub_error *err);

/* Check that buf holds exactly one well-formed CBOR item no deeper than
 * max_depth whose arrays/maps claim no more items than bytes remain.
 * Returns 0 or EC_EMALFORMED / EC_ETOO_LARGE. */
int codec_cbor_check(const uint8_t *buf, size_t len, uint32_t max_depth);

/* JSON text -> canonical CBOR (new). Returns 0, EC_EMALFORMED, EC_ETOO_LARGE
 * (deeper than max_depth) or -ENOMEM. */
int codec_json_to_cbor(const char *json, size_t len, uint32_t max_depth,
		       uint8_t **out, size_t *out_len);

/* CBOR -> JSON text (new, NUL-terminated, compact). Byte strings become
 * base64 (RFC 4648, with padding) text; tags are dropped (the tagged value is
 * kept); undefined and simple values become null; non-text map keys are
 * converted to their JSON text. Returns 0, EC_EMALFORMED or -ENOMEM. */
int codec_cbor_to_json(const uint8_t *cbor, size_t len, char **out, size_t *out_len);

/*
 * A writer of the messages edgecoord builds itself (msg.c, fleet health), in either
 * encoding: CBOR through ec_cbor_w, JSON written directly, the same text
 * codec_cbor_to_json() makes of the CBOR (converting went through libcbor's
 * decoder and a tree: a quarter of the coordinator's own instructions in
 * W2). Containers are sized up front as in CBOR, and JSON closes one when
 * its last item is written; at most CODEC_W_DEPTH deep. A failure sticks
 * and comes out of codec_w_take(); JSON also fails on more items than
 * declared or containers left open.
 */
#define CODEC_W_DEPTH 4
struct codec_w {
	enum encoding enc;
	struct ec_cbor_w w;
	uint32_t depth;
	bool done;        /* JSON: the top item is complete */
	struct codec_w_open {
		uint32_t left;    /* items still to come, keys included */
		bool map, value;  /* a map; its next item is a value */
		bool first;
	} open[CODEC_W_DEPTH];
};
void codec_w_init(struct codec_w *w, enum encoding enc);
void codec_w_map(struct codec_w *w, uint32_t npairs);
void codec_w_array(struct codec_w *w, uint32_t n);
void codec_w_text(struct codec_w *w, const char *s);   /* NULL writes null */
void codec_w_uint(struct codec_w *w, uint64_t v);
void codec_w_int(struct codec_w *w, int64_t v);
void codec_w_double(struct codec_w *w, double v);   /* JSON: non-finite is null */
void codec_w_bool(struct codec_w *w, bool v);
void codec_w_null(struct codec_w *w);
/* One encoded CBOR item (NULL/0: null), as it is or as JSON. */
void codec_w_cbor(struct codec_w *w, const uint8_t *item, size_t n);
/* The message (new; JSON is NUL-terminated, not counted in *len); 0, or
 * -ENOMEM, EC_EMALFORMED (an item CBOR could not convert, or containers
 * left open). Frees w's buffer either way. */
int codec_w_take(struct codec_w *w, uint8_t **out, size_t *len);

/* True iff cbor is a map with text key `field` whose value is canonically
 * equal to the canonical CBOR item `value`. Used by `when`. */
bool codec_cbor_field_equals(const uint8_t *cbor, size_t len, const char *field,
			     const uint8_t *value, size_t value_len);

/* Any CBOR item -> its canonical form (new). Returns 0, EC_EMALFORMED,
 * EC_ETOO_LARGE or -ENOMEM. Used for results coming from agents. */
int codec_cbor_canonical(const uint8_t *cbor, size_t len, uint32_t max_depth,
			 uint8_t **out, size_t *out_len);

#endif
