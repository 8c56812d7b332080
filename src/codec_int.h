/* SPDX-License-Identifier: MIT */
/*
 * codec_int.h - what the codec's files share and nobody else uses: a decoded
 * CBOR item as a flat tree (codec_cbor.c builds it with libcbor's streaming
 * decoder, codec_sub.c validates submissions over it) and the canonical
 * encoder. Not a public interface; include codec.h instead.
 *
 * The tree is an array of nodes in pre-order: a container's children follow
 * it, and every node records the index one past its subtree, so walking is a
 * loop, never a recursion. Numbers are normalized while building: a float
 * with an integral value in int64 range becomes an integer, exactly as a
 * JSON number does (codec.h), so both encodings decode to the same tree.
 */
#ifndef EC_CODEC_INT_H
#define EC_CODEC_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edgecoord/proto.h"

/* Internal: a map holds the same key twice. Public functions map it to
 * EC_EMALFORMED (conversions) or EC_EINVALID_FIELD (submissions). */
#define CODEC_EDUPKEY (-10900)

/* Whether d is an integer in int64 range, and which (*v). The range is
 * checked first, so the cast is defined (and NaN fails it); no trunc(),
 * which would cost the daemon libm: 300 kB of its idle RSS. */
static inline bool codec_int64_of(double d, int64_t *v)
{
	if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
		return false;
	*v = (int64_t)d;
	return (double)*v == d;
}

/* Whatever max_depth a caller gives, nothing nests deeper than this. */
#define CODEC_DEPTH_CAP 1024

enum cn_type {
	CN_UINT,   /* u */
	CN_NEGINT, /* -1 - u */
	CN_BYTES,  /* s, n */
	CN_TEXT,   /* s, n: valid UTF-8, not NUL-terminated */
	CN_ARRAY,  /* u items follow */
	CN_MAP,    /* u pairs (2u items) follow, key then value */
	CN_TAG,    /* tag number u; one item follows */
	CN_FLOAT,  /* d: non-integral, huge, or not finite */
	CN_FALSE,
	CN_TRUE,
	CN_NULL,
	CN_UNDEF,
};

struct cnode {
	uint8_t type;
	uint32_t end;     /* index one past this node's subtree */
	uint64_t u;
	double d;
	const uint8_t *s; /* into the input, or into one of the tree's own buffers */
	size_t n;
};

struct ctree {
	struct cnode *n;
	uint32_t count, cap;
	uint32_t depth;   /* deepest nesting of arrays/maps/tags seen */
	uint8_t **owned;  /* concatenated indefinite-length strings */
	size_t nowned, capowned;
	/* where building stopped, for a caller that wants to say why */
	const char *why;
};

/*
 * Build the tree of the single CBOR item in buf. Refuses (EC_EMALFORMED)
 * truncation, trailing bytes, counts larger than the bytes that remain,
 * reserved or unassigned encodings, misplaced breaks, bad string chunks and
 * invalid UTF-8; refuses (EC_ETOO_LARGE) nesting deeper than max_depth.
 * Memory grows with the items actually read, never with a claimed count.
 * buf is borrowed and must outlive the tree. Returns 0 or the code; on
 * failure the tree is empty.
 */
int ctree_build(struct ctree *t, const uint8_t *buf, size_t len, uint32_t max_depth);
void ctree_fini(struct ctree *t);

/* The node under any tags. */
uint32_t ctree_untag(const struct ctree *t, uint32_t i);
/* The first child of container i (valid only when it has one). */
static inline uint32_t ctree_child(uint32_t i) { return i + 1; }
static inline uint32_t ctree_next(const struct ctree *t, uint32_t i) { return t->n[i].end; }

/* Append the canonical encoding of node i to w. Returns 0, CODEC_EDUPKEY or
 * -ENOMEM. Recurses at most the tree's depth (bounded at build). */
int ctree_encode(const struct ctree *t, uint32_t i, struct ec_cbor_w *w);

/* codec_json_to_cbor(), except that a duplicate key is CODEC_EDUPKEY and,
 * when dupkey is not NULL, its text (cut to CODEC_DUPKEY_MAX - 1 bytes) is
 * written there. */
#define CODEC_DUPKEY_MAX 64
int codec_json_canonical(const char *json, size_t len, uint32_t max_depth, uint8_t **out,
			 size_t *out_len, char *dupkey);

/* True if s[0..n) is well-formed UTF-8 (no overlongs, no surrogates). */
bool codec_utf8_valid(const uint8_t *s, size_t n);

#endif
