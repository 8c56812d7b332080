/* SPDX-License-Identifier: MIT */
/*
 * codec_cbor.c - untrusted CBOR in, canonical CBOR and JSON out.
 *
 * Owns the only use of libcbor in edgecoord, and uses only its streaming
 * decoder: cbor_load() in 0.8 allocates whatever count an array or map claims
 * before reading a single element, accepts trailing bytes and duplicate keys
 * (LIBNOTES 3). Instead, each call of cbor_stream_decode() hands us one head;
 * we check it against the bytes that remain and the depth allowed, then append
 * a node to our own flat tree (codec_int.h), so memory grows only with bytes
 * actually present. The canonical encoder, codec_cbor_to_json() and
 * codec_cbor_field_equals() all work on that tree.
 *
 * Exports codec_cbor_check, codec_cbor_canonical, codec_cbor_to_json,
 * codec_cbor_field_equals, the message writer codec_w_* (codec.h) and the
 * tree (codec_int.h).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cbor.h>

#include "codec.h"
#include "codec_int.h"
#include "edgecoord/err.h"

/* ---- UTF-8 ---- */

bool codec_utf8_valid(const uint8_t *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t k;
		uint32_t cp, min;
		if ((c & 0xe0) == 0xc0) {
			k = 1, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			k = 2, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			k = 3, cp = c & 0x07, min = 0x10000;
		} else {
			return false;
		}
		if (n - i <= k)
			return false;
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + j] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += k + 1;
	}
	return true;
}

/* ---- building the tree from libcbor's stream events ---- */

enum ev_kind {
	EV_NONE, EV_UINT, EV_NEGINT, EV_BYTES, EV_BYTES_START, EV_TEXT, EV_TEXT_START,
	EV_ARRAY, EV_ARRAY_INDEF, EV_MAP, EV_MAP_INDEF, EV_TAG, EV_FLOAT, EV_BOOL,
	EV_NULL, EV_UNDEF, EV_BREAK,
};

/* One decoded head; the callbacks only record it (they cannot stop the
 * decoder), the build loop judges it once it knows how many bytes remain. */
struct ev {
	enum ev_kind kind;
	uint64_t u;
	double d;
	const uint8_t *s;
	size_t n;
};

#define EV(ctx) ((struct ev *)(ctx))
static void on_u8(void *c, uint8_t v) { EV(c)->kind = EV_UINT, EV(c)->u = v; }
static void on_u16(void *c, uint16_t v) { EV(c)->kind = EV_UINT, EV(c)->u = v; }
static void on_u32(void *c, uint32_t v) { EV(c)->kind = EV_UINT, EV(c)->u = v; }
static void on_u64(void *c, uint64_t v) { EV(c)->kind = EV_UINT, EV(c)->u = v; }
static void on_n8(void *c, uint8_t v) { EV(c)->kind = EV_NEGINT, EV(c)->u = v; }
static void on_n16(void *c, uint16_t v) { EV(c)->kind = EV_NEGINT, EV(c)->u = v; }
static void on_n32(void *c, uint32_t v) { EV(c)->kind = EV_NEGINT, EV(c)->u = v; }
static void on_n64(void *c, uint64_t v) { EV(c)->kind = EV_NEGINT, EV(c)->u = v; }
static void on_bytes(void *c, cbor_data p, size_t n)
{
	EV(c)->kind = EV_BYTES, EV(c)->s = p, EV(c)->n = n;
}
static void on_bytes_start(void *c) { EV(c)->kind = EV_BYTES_START; }
static void on_text(void *c, cbor_data p, size_t n)
{
	EV(c)->kind = EV_TEXT, EV(c)->s = p, EV(c)->n = n;
}
static void on_text_start(void *c) { EV(c)->kind = EV_TEXT_START; }
static void on_array(void *c, size_t n) { EV(c)->kind = EV_ARRAY, EV(c)->u = n; }
static void on_array_indef(void *c) { EV(c)->kind = EV_ARRAY_INDEF; }
static void on_map(void *c, size_t n) { EV(c)->kind = EV_MAP, EV(c)->u = n; }
static void on_map_indef(void *c) { EV(c)->kind = EV_MAP_INDEF; }
static void on_tag(void *c, uint64_t v) { EV(c)->kind = EV_TAG, EV(c)->u = v; }
static void on_f4(void *c, float v) { EV(c)->kind = EV_FLOAT, EV(c)->d = v; }
static void on_f8(void *c, double v) { EV(c)->kind = EV_FLOAT, EV(c)->d = v; }
static void on_undef(void *c) { EV(c)->kind = EV_UNDEF; }
static void on_null(void *c) { EV(c)->kind = EV_NULL; }
static void on_bool(void *c, bool v) { EV(c)->kind = EV_BOOL, EV(c)->u = v; }
static void on_break(void *c) { EV(c)->kind = EV_BREAK; }
#undef EV

/* The field comments in libcbor 0.8's callbacks.h are shifted by one; the
 * names are what counts. */
static const struct cbor_callbacks callbacks = {
	.uint8 = on_u8, .uint16 = on_u16, .uint32 = on_u32, .uint64 = on_u64,
	.negint8 = on_n8, .negint16 = on_n16, .negint32 = on_n32, .negint64 = on_n64,
	.byte_string = on_bytes, .byte_string_start = on_bytes_start,
	.string = on_text, .string_start = on_text_start,
	.array_start = on_array, .indef_array_start = on_array_indef,
	.map_start = on_map, .indef_map_start = on_map_indef,
	.tag = on_tag, .float2 = on_f4, .float4 = on_f4, .float8 = on_f8,
	.undefined = on_undef, .null = on_null, .boolean = on_bool,
	.indef_break = on_break,
};

enum frame_kind { F_ARRAY, F_MAP, F_TAG, F_BYTES, F_TEXT };

struct frame {
	uint32_t node;
	uint8_t kind;     /* enum frame_kind */
	bool indef;
	uint64_t left;    /* items still due (definite), items seen (indefinite) */
	uint8_t *buf;     /* indefinite string: the chunks so far */
	size_t blen, bcap;
};

static int add_node(struct ctree *t, uint8_t type, uint32_t *idx)
{
	if (t->count == t->cap) {
		uint32_t cap = t->cap ? t->cap * 2 : 64;
		struct cnode *n = realloc(t->n, (size_t)cap * sizeof *n);
		if (!n)
			return -ENOMEM;
		t->n = n;
		t->cap = cap;
	}
	*idx = t->count++;
	memset(&t->n[*idx], 0, sizeof t->n[*idx]);
	t->n[*idx].type = type;
	t->n[*idx].end = t->count;
	return 0;
}

static int keep_owned(struct ctree *t, uint8_t *p)
{
	if (t->nowned == t->capowned) {
		size_t cap = t->capowned ? t->capowned * 2 : 8;
		uint8_t **o = realloc(t->owned, cap * sizeof *o);
		if (!o)
			return -ENOMEM;
		t->owned = o;
		t->capowned = cap;
	}
	t->owned[t->nowned++] = p;
	return 0;
}

static int append_chunk(struct frame *f, const uint8_t *p, size_t n)
{
	if (n > f->bcap - f->blen) {
		size_t cap = f->bcap ? f->bcap : 64;
		while (cap - f->blen < n)
			cap *= 2;
		uint8_t *b = realloc(f->buf, cap);
		if (!b)
			return -ENOMEM;
		f->buf = b;
		f->bcap = cap;
	}
	if (n)
		memcpy(f->buf + f->blen, p, n);
	f->blen += n;
	return 0;
}

/* A float whose value is an integer in int64 range is stored as that
 * integer, so 2.0 in CBOR and 2.0 in JSON (which cJSON cannot tell from 2)
 * mean the same thing. */
static void set_number(struct cnode *n, double d)
{
	int64_t v;
	if (codec_int64_of(d, &v)) {
		if (v >= 0) {
			n->type = CN_UINT;
			n->u = (uint64_t)v;
		} else {
			n->type = CN_NEGINT;
			n->u = (uint64_t)(-(v + 1));
		}
	} else {
		n->type = CN_FLOAT;
		n->d = d;
	}
}

void ctree_fini(struct ctree *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->nowned; i++)
		free(t->owned[i]);
	free(t->owned);
	free(t->n);
	memset(t, 0, sizeof *t);
}

#define FAIL(code, msg) do { rc = (code); t->why = (msg); goto out; } while (0)

/* Room for one more frame. The stack grows with the nesting met: most items
 * nest a few levels, and a stack sized for the cap at once (1,026 frames,
 * 48 KiB zeroed) cost every status message the daemon converts to JSON a
 * large calloc. The depth check bounds it. */
static int frame_room(struct frame **fr, uint32_t *cap, uint32_t nf)
{
	if (nf < *cap)
		return 0;
	uint32_t n = *cap ? *cap * 2 : 8;
	struct frame *p = realloc(*fr, n * sizeof *p);
	if (!p)
		return -ENOMEM;
	*fr = p;
	*cap = n;
	return 0;
}

int ctree_build(struct ctree *t, const uint8_t *buf, size_t len, uint32_t max_depth)
{
	int rc = 0;
	memset(t, 0, sizeof *t);
	if (max_depth > CODEC_DEPTH_CAP)
		max_depth = CODEC_DEPTH_CAP;
	if (len >= UINT32_MAX / 2) {
		t->why = "item too large";
		return EC_ETOO_LARGE;
	}
	/* containers nest at most max_depth deep, plus one string frame */
	struct frame *fr = NULL;
	uint32_t nf = 0, cap = 0;
	size_t pos = 0;
	bool done = false;

	while (!done) {
		if (pos >= len)
			FAIL(EC_EMALFORMED, len ? "truncated" : "empty");
		struct ev ev = { .kind = EV_NONE };
		struct cbor_decoder_result r;
		if (buf[pos] >= 0xc6 && buf[pos] <= 0xd4) {
			/* libcbor 0.8 refuses tags 6..20 in their one-byte form
			 * (though not in longer ones), and that form is the
			 * canonical one we write: decode it ourselves */
			ev.kind = EV_TAG;
			ev.u = buf[pos] - 0xc0u;
			r = (struct cbor_decoder_result){ .read = 1, .status = CBOR_DECODER_FINISHED };
		} else {
			r = cbor_stream_decode(buf + pos, len - pos, &callbacks, &ev);
		}
		if (r.status == CBOR_DECODER_NEDATA)
			FAIL(EC_EMALFORMED, "truncated");
		if (r.status != CBOR_DECODER_FINISHED || ev.kind == EV_NONE || r.read == 0)
			FAIL(EC_EMALFORMED, "not well-formed CBOR");
		pos += r.read;
		size_t rem = len - pos;
		struct frame *top = nf ? &fr[nf - 1] : NULL;
		uint32_t idx;

		if (top && (top->kind == F_BYTES || top->kind == F_TEXT)) {
			/* inside an indefinite string: definite chunks of the
			 * same major type, then a break */
			if (ev.kind == EV_BREAK) {
				struct cnode *n = &t->n[top->node];
				if (top->buf && (rc = keep_owned(t, top->buf)) < 0)
					goto out;
				n->s = top->buf;
				n->n = top->blen;
				n->end = t->count;
				top->buf = NULL;
				nf--;
				goto complete;
			}
			bool ok = (top->kind == F_BYTES && ev.kind == EV_BYTES) ||
				  (top->kind == F_TEXT && ev.kind == EV_TEXT);
			if (!ok)
				FAIL(EC_EMALFORMED, "bad chunk in an indefinite-length string");
			if (ev.kind == EV_TEXT && !codec_utf8_valid(ev.s, ev.n))
				FAIL(EC_EMALFORMED, "invalid UTF-8 in a text string");
			if ((rc = append_chunk(top, ev.s, ev.n)) < 0)
				goto out;
			continue;
		}

		if (ev.kind == EV_BREAK) {
			if (!top || !top->indef)
				FAIL(EC_EMALFORMED, "unexpected break");
			if (top->kind == F_MAP && (top->left & 1))
				FAIL(EC_EMALFORMED, "map with a key and no value");
			struct cnode *n = &t->n[top->node];
			n->u = top->kind == F_MAP ? top->left / 2 : top->left;
			n->end = t->count;
			nf--;
			goto complete;
		}

		static const uint8_t types[] = {
			[EV_UINT] = CN_UINT, [EV_NEGINT] = CN_NEGINT, [EV_BYTES] = CN_BYTES,
			[EV_BYTES_START] = CN_BYTES, [EV_TEXT] = CN_TEXT,
			[EV_TEXT_START] = CN_TEXT, [EV_ARRAY] = CN_ARRAY,
			[EV_ARRAY_INDEF] = CN_ARRAY, [EV_MAP] = CN_MAP,
			[EV_MAP_INDEF] = CN_MAP, [EV_TAG] = CN_TAG, [EV_FLOAT] = CN_FLOAT,
			[EV_BOOL] = CN_FALSE, [EV_NULL] = CN_NULL, [EV_UNDEF] = CN_UNDEF,
		};
		if ((rc = add_node(t, types[ev.kind], &idx)) < 0)
			goto out;
		struct cnode *n = &t->n[idx];
		enum frame_kind fk = F_ARRAY;
		uint64_t due = 0;
		bool indef = false;
		switch (ev.kind) {
		case EV_UINT:
		case EV_NEGINT:
			n->u = ev.u;
			goto complete;
		case EV_FLOAT:
			set_number(n, ev.d);
			goto complete;
		case EV_BOOL:
			n->type = ev.u ? CN_TRUE : CN_FALSE;
			goto complete;
		case EV_NULL:
		case EV_UNDEF:
			goto complete;
		case EV_TEXT:
			if (!codec_utf8_valid(ev.s, ev.n))
				FAIL(EC_EMALFORMED, "invalid UTF-8 in a text string");
			/* fall through */
		case EV_BYTES:
			n->s = ev.s;
			n->n = ev.n;
			goto complete;
		case EV_BYTES_START:
		case EV_TEXT_START:
			if ((rc = frame_room(&fr, &cap, nf)) < 0)
				goto out;
			fr[nf++] = (struct frame){ .node = idx, .indef = true,
				.kind = ev.kind == EV_TEXT_START ? F_TEXT : F_BYTES };
			continue;
		case EV_ARRAY:
			/* every item takes at least one byte */
			if (ev.u > rem)
				FAIL(EC_EMALFORMED, "array claims more items than bytes remain");
			n->u = due = ev.u;
			break;
		case EV_MAP:
			if (ev.u > rem / 2)
				FAIL(EC_EMALFORMED, "map claims more pairs than bytes remain");
			n->u = ev.u;
			due = ev.u * 2;
			fk = F_MAP;
			break;
		case EV_ARRAY_INDEF:
			indef = true;
			break;
		case EV_MAP_INDEF:
			indef = true;
			fk = F_MAP;
			break;
		case EV_TAG:
			n->u = ev.u;
			due = 1;
			fk = F_TAG;
			break;
		default:
			FAIL(EC_EMALFORMED, "not well-formed CBOR");
		}
		/* a container or a tag: one level deeper */
		if (nf + 1 > max_depth)
			FAIL(EC_ETOO_LARGE, "nested too deeply");
		if (nf + 1 > t->depth)
			t->depth = nf + 1;
		if (!indef && due == 0)
			goto complete; /* [] or {} */
		if ((rc = frame_room(&fr, &cap, nf)) < 0)
			goto out;
		fr[nf++] = (struct frame){ .node = idx, .kind = fk, .indef = indef, .left = due };
		continue;

	complete:
		/* an item ended: count it in its container, closing every
		 * definite container it was the last item of */
		for (;;) {
			if (nf == 0) {
				done = true;
				break;
			}
			struct frame *f = &fr[nf - 1];
			if (f->indef) {
				f->left++;
				break;
			}
			if (--f->left > 0)
				break;
			t->n[f->node].end = t->count;
			nf--;
		}
	}
	if (pos != len)
		FAIL(EC_EMALFORMED, "trailing bytes after the item");
out:
	for (uint32_t i = 0; i < nf; i++)
		free(fr[i].buf);
	free(fr);
	if (rc < 0) {
		const char *why = t->why;
		ctree_fini(t);
		t->why = why;
	}
	return rc;
}
#undef FAIL

uint32_t ctree_untag(const struct ctree *t, uint32_t i)
{
	while (t->n[i].type == CN_TAG)
		i++;
	return i;
}

/* ---- canonical encoding ---- */

static void put_head(struct ec_cbor_w *w, uint8_t major, uint64_t v)
{
	uint8_t b[9];
	size_t n;
	major = (uint8_t)(major << 5);
	if (v < 24) {
		b[0] = (uint8_t)(major | v), n = 1;
	} else if (v <= UINT8_MAX) {
		b[0] = major | 24, n = 2;
	} else if (v <= UINT16_MAX) {
		b[0] = major | 25, n = 3;
	} else if (v <= UINT32_MAX) {
		b[0] = major | 26, n = 5;
	} else {
		b[0] = major | 27, n = 9;
	}
	for (size_t i = 1; i < n; i++)
		b[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
	ec_cbor_w_raw(w, b, n);
}

struct kent {
	uint8_t *k;
	size_t kn;
	uint32_t v;
};

/* RFC 8949 4.2.1: bytewise lexicographic order of the encoded keys. */
static int kent_cmp(const void *a, const void *b)
{
	const struct kent *x = a, *y = b;
	size_t m = x->kn < y->kn ? x->kn : y->kn;
	int c = m ? memcmp(x->k, y->k, m) : 0;
	if (c)
		return c;
	return (x->kn > y->kn) - (x->kn < y->kn);
}

static int encode_map(const struct ctree *t, uint32_t i, struct ec_cbor_w *w)
{
	uint64_t np = t->n[i].u;
	put_head(w, 5, np);
	if (np == 0)
		return 0;
	/* np pairs really are in the tree: ctree_build read them */
	struct kent *ks = calloc(np, sizeof *ks);
	if (!ks)
		return -ENOMEM;
	int rc = 0;
	uint32_t c = i + 1;
	for (uint64_t p = 0; p < np; p++) {
		struct ec_cbor_w kw;
		ec_cbor_w_init(&kw);
		rc = ctree_encode(t, c, &kw);
		if (rc == 0 && (rc = ec_cbor_w_finish(&kw)) == 0)
			ks[p].k = ec_cbor_w_take(&kw, &ks[p].kn);
		ec_cbor_w_fini(&kw);
		if (rc < 0)
			goto out;
		c = t->n[c].end;
		ks[p].v = c;
		c = t->n[c].end;
	}
	qsort(ks, np, sizeof *ks, kent_cmp);
	for (uint64_t p = 0; p < np; p++) {
		if (p > 0 && kent_cmp(&ks[p - 1], &ks[p]) == 0) {
			rc = CODEC_EDUPKEY;
			goto out;
		}
		ec_cbor_w_raw(w, ks[p].k, ks[p].kn);
		if ((rc = ctree_encode(t, ks[p].v, w)) < 0)
			goto out;
	}
out:
	for (uint64_t p = 0; p < np; p++)
		free(ks[p].k);
	free(ks);
	return rc;
}

int ctree_encode(const struct ctree *t, uint32_t i, struct ec_cbor_w *w)
{
	const struct cnode *n = &t->n[i];
	int rc = 0;
	switch (n->type) {
	case CN_UINT:
		put_head(w, 0, n->u);
		break;
	case CN_NEGINT:
		put_head(w, 1, n->u);
		break;
	case CN_BYTES:
		put_head(w, 2, n->n);
		if (n->n)
			ec_cbor_w_raw(w, n->s, n->n);
		break;
	case CN_TEXT:
		put_head(w, 3, n->n);
		if (n->n)
			ec_cbor_w_raw(w, n->s, n->n);
		break;
	case CN_ARRAY:
		put_head(w, 4, n->u);
		for (uint32_t c = i + 1; c < n->end && rc == 0; c = t->n[c].end)
			rc = ctree_encode(t, c, w);
		break;
	case CN_MAP:
		rc = encode_map(t, i, w);
		break;
	case CN_TAG:
		put_head(w, 6, n->u);
		rc = ctree_encode(t, i + 1, w);
		break;
	case CN_FLOAT:
		/* one NaN, so that equal-looking items compare equal */
		ec_cbor_w_double(w, isnan(n->d) ? NAN : n->d);
		break;
	default: {
		uint8_t b = n->type == CN_FALSE ? 0xf4 : n->type == CN_TRUE ? 0xf5 :
			    n->type == CN_NULL ? 0xf6 : 0xf7;
		ec_cbor_w_raw(w, &b, 1);
		break;
	}
	}
	if (rc == 0)
		rc = ec_cbor_w_finish(w);
	return rc;
}

int codec_cbor_check(const uint8_t *buf, size_t len, uint32_t max_depth)
{
	struct ctree t;
	int rc = ctree_build(&t, buf, len, max_depth);
	ctree_fini(&t);
	return rc;
}

int codec_cbor_canonical(const uint8_t *cbor, size_t len, uint32_t max_depth,
			 uint8_t **out, size_t *out_len)
{
	struct ctree t;
	int rc = ctree_build(&t, cbor, len, max_depth);
	if (rc < 0)
		return rc;
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	rc = ctree_encode(&t, 0, &w);
	if (rc == CODEC_EDUPKEY)
		rc = EC_EMALFORMED;
	if (rc == 0) {
		size_t n;
		uint8_t *p = ec_cbor_w_take(&w, &n);
		*out = p;
		*out_len = n;
	}
	ec_cbor_w_fini(&w);
	ctree_fini(&t);
	return rc;
}

bool codec_cbor_field_equals(const uint8_t *cbor, size_t len, const char *field,
			     const uint8_t *value, size_t value_len)
{
	if (!cbor || !field || !value)
		return false;
	uint8_t *want = NULL, *got = NULL;
	size_t wn = 0, gn = 0;
	bool eq = false;
	struct ctree t;
	if (codec_cbor_canonical(value, value_len, CODEC_DEPTH_CAP, &want, &wn) < 0)
		return false;
	if (ctree_build(&t, cbor, len, CODEC_DEPTH_CAP) < 0)
		goto out;
	uint32_t m = ctree_untag(&t, 0);
	if (t.n[m].type != CN_MAP)
		goto out_tree;
	size_t flen = strlen(field);
	for (uint32_t k = m + 1; k < t.n[m].end; k = t.n[t.n[k].end].end) {
		uint32_t key = ctree_untag(&t, k);
		if (t.n[key].type != CN_TEXT || t.n[key].n != flen ||
		    (flen && memcmp(t.n[key].s, field, flen) != 0))
			continue;
		struct ec_cbor_w w;
		ec_cbor_w_init(&w);
		if (ctree_encode(&t, t.n[k].end, &w) == 0)
			got = ec_cbor_w_take(&w, &gn);
		ec_cbor_w_fini(&w);
		eq = got && gn == wn && memcmp(got, want, wn) == 0;
		break;
	}
out_tree:
	ctree_fini(&t);
out:
	free(want);
	free(got);
	return eq;
}

/* ---- CBOR -> JSON ---- */

static inline void out_str(struct ec_cbor_w *w, const char *s, size_t n)
{
	if (n && w->len + n <= w->cap) { /* the common case, without a call */
		memcpy(w->buf + w->len, s, n);
		w->len += n;
	} else if (n) {
		ec_cbor_w_raw(w, (const uint8_t *)s, n);
	}
}

static inline void out_cstr(struct ec_cbor_w *w, const char *s)
{
	out_str(w, s, strlen(s));
}

/* v in decimal, after a '-' if neg; snprintf cost more than the rest of a
 * status message. */
static void out_u64(struct ec_cbor_w *w, uint64_t v, bool neg)
{
	char b[21];
	size_t i = sizeof b;
	do {
		b[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	if (neg)
		b[--i] = '-';
	out_str(w, b + i, sizeof b - i);
}

static void json_escape(struct ec_cbor_w *w, const uint8_t *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	out_cstr(w, "\"");
	size_t run = 0; /* bytes copied through unchanged, flushed in one go */
	for (size_t i = 0; i < n; i++) {
		uint8_t c = s[i];
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		out_str(w, (const char *)s + run, i - run);
		run = i + 1;
		if (c == '"' || c == '\\') {
			char e[2] = { '\\', (char)c };
			out_str(w, e, 2);
		} else {
			char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
			out_str(w, e, 6);
		}
	}
	out_str(w, (const char *)s + run, n - run);
	out_cstr(w, "\"");
}

static void json_base64(struct ec_cbor_w *w, const uint8_t *s, size_t n)
{
	static const char b64[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	out_cstr(w, "\"");
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)s[i + 1] << 8;
		if (i + 2 < n)
			v |= s[i + 2];
		char q[4] = { b64[(v >> 18) & 63], b64[(v >> 12) & 63],
			      i + 1 < n ? b64[(v >> 6) & 63] : '=',
			      i + 2 < n ? b64[v & 63] : '=' };
		out_str(w, q, 4);
	}
	out_cstr(w, "\"");
}

/* The shortest "%.Ng" that reads back as the same double. */
static void json_double(struct ec_cbor_w *w, double d)
{
	if (!isfinite(d)) {
		out_cstr(w, "null");
		return;
	}
	char b[40];
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(b, sizeof b, "%.*g", prec, d);
		if (strtod(b, NULL) == d)
			break;
	}
	out_cstr(w, b);
}

static int json_item(const struct ctree *t, uint32_t root, struct ec_cbor_w *w);

/* A map key as JSON text: text as is, anything else as the JSON text of
 * its value (so 1 becomes "1"). Escaping a key that holds a key that holds
 * a key... doubles its quotes at every level, so a key's JSON text is
 * capped: without the cap 40 bytes of CBOR asked for gigabytes. */
#define JSON_KEY_MAX 4096

static int json_key(const struct ctree *t, uint32_t k, struct ec_cbor_w *w)
{
	k = ctree_untag(t, k);
	if (t->n[k].type == CN_TEXT) {
		json_escape(w, t->n[k].s, t->n[k].n);
		return ec_cbor_w_finish(w);
	}
	struct ec_cbor_w kw;
	ec_cbor_w_init(&kw);
	int rc = json_item(t, k, &kw);
	if (rc == 0 && kw.len > JSON_KEY_MAX)
		rc = EC_EMALFORMED;
	if (rc == 0)
		json_escape(w, kw.buf, kw.len);
	ec_cbor_w_fini(&kw);
	return rc ? rc : ec_cbor_w_finish(w);
}

/* One item and its subtree, iteratively: a stack of open containers, each
 * closed when the walk passes its end. Only non-text map keys recurse, and
 * the tree's depth bounds that. */
static int json_item(const struct ctree *t, uint32_t root, struct ec_cbor_w *w)
{
	struct open {
		uint32_t end;
		uint32_t pos;
		bool map;
	};
	struct open *st = malloc((t->depth + 1) * sizeof *st);
	if (!st)
		return -ENOMEM;
	uint32_t ns = 0, i = root, stop = t->n[root].end;
	int rc = 0;
	while (i < stop && rc == 0) {
		while (ns && i >= st[ns - 1].end) {
			out_cstr(w, st[ns - 1].map ? "}" : "]");
			ns--;
		}
		i = ctree_untag(t, i);
		const struct cnode *n = &t->n[i];
		if (ns) {
			struct open *o = &st[ns - 1];
			bool key = o->map && (o->pos % 2 == 0);
			if (o->pos > 0)
				out_cstr(w, o->map && !key ? ":" : ",");
			o->pos++;
			if (key) {
				rc = json_key(t, i, w);
				i = n->end;
				continue;
			}
		}
		switch (n->type) {
		case CN_UINT:
			out_u64(w, n->u, false);
			break;
		case CN_NEGINT:
			if (n->u == UINT64_MAX)
				out_cstr(w, "-18446744073709551616");
			else
				out_u64(w, n->u + 1, true);
			break;
		case CN_BYTES:
			json_base64(w, n->s, n->n);
			break;
		case CN_TEXT:
			json_escape(w, n->s, n->n);
			break;
		case CN_ARRAY:
		case CN_MAP:
			out_cstr(w, n->type == CN_MAP ? "{" : "[");
			st[ns++] = (struct open){ .end = n->end, .map = n->type == CN_MAP };
			break;
		case CN_FLOAT:
			json_double(w, n->d);
			break;
		case CN_FALSE:
			out_cstr(w, "false");
			break;
		case CN_TRUE:
			out_cstr(w, "true");
			break;
		default:
			out_cstr(w, "null");
			break;
		}
		i++;
		rc = ec_cbor_w_finish(w);
	}
	while (ns) {
		out_cstr(w, st[ns - 1].map ? "}" : "]");
		ns--;
	}
	free(st);
	return rc ? rc : ec_cbor_w_finish(w);
}

int codec_cbor_to_json(const uint8_t *cbor, size_t len, char **out, size_t *out_len)
{
	struct ctree t;
	int rc = ctree_build(&t, cbor, len, CODEC_DEPTH_CAP);
	if (rc < 0)
		return rc == EC_ETOO_LARGE ? EC_EMALFORMED : rc;
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	rc = json_item(&t, 0, &w);
	uint8_t nul = 0;
	ec_cbor_w_raw(&w, &nul, 1);
	if (rc == 0)
		rc = ec_cbor_w_finish(&w);
	if (rc == 0) {
		size_t n;
		char *s = (char *)ec_cbor_w_take(&w, &n);
		*out = s;
		*out_len = n - 1;
	}
	ec_cbor_w_fini(&w);
	ctree_fini(&t);
	return rc;
}

/* ---- the message writer ---- */

void codec_w_init(struct codec_w *w, enum encoding enc)
{
	memset(w, 0, sizeof *w);
	w->enc = enc;
	ec_cbor_w_init(&w->w);
	/* room for a status message: growing from 64 bytes took 3 reallocs */
	if ((w->w.buf = malloc(256)))
		w->w.cap = 256;
}

/* JSON: the separator before an item of the open container. */
static void jw_begin(struct codec_w *w)
{
	if (!w->depth) {
		if (w->done) /* a second item at the top */
			w->w.err = EC_EMALFORMED;
		return;
	}
	struct codec_w_open *o = &w->open[w->depth - 1];
	if (o->left == 0) { /* more items than the container said */
		w->w.err = EC_EMALFORMED;
		return;
	}
	if (o->value)
		out_cstr(&w->w, ":");
	else if (!o->first)
		out_cstr(&w->w, ",");
	o->first = false;
	o->left--;
	o->value = o->map && !o->value;
}

/* JSON: close the containers the last item completed. */
static void jw_end(struct codec_w *w)
{
	while (w->depth && w->open[w->depth - 1].left == 0) {
		out_cstr(&w->w, w->open[w->depth - 1].map ? "}" : "]");
		w->depth--;
	}
	w->done = !w->depth;
}

static void jw_open(struct codec_w *w, bool map, uint32_t n)
{
	jw_begin(w);
	if (w->depth == CODEC_W_DEPTH || (map && n > UINT32_MAX / 2)) {
		w->w.err = EC_EMALFORMED;
		return;
	}
	out_cstr(&w->w, map ? "{" : "[");
	w->open[w->depth++] = (struct codec_w_open){ .left = map ? 2 * n : n, .map = map,
						      .first = true };
	jw_end(w); /* an empty one closes at once */
}

void codec_w_map(struct codec_w *w, uint32_t npairs)
{
	if (w->enc == ENC_CBOR)
		ec_cbor_w_map(&w->w, npairs);
	else
		jw_open(w, true, npairs);
}

void codec_w_array(struct codec_w *w, uint32_t n)
{
	if (w->enc == ENC_CBOR)
		ec_cbor_w_array(&w->w, n);
	else
		jw_open(w, false, n);
}

void codec_w_text(struct codec_w *w, const char *s)
{
	if (w->enc == ENC_CBOR) {
		ec_cbor_w_text(&w->w, s);
		return;
	}
	jw_begin(w);
	if (s)
		json_escape(&w->w, (const uint8_t *)s, strlen(s));
	else
		out_cstr(&w->w, "null");
	jw_end(w);
}

void codec_w_uint(struct codec_w *w, uint64_t v)
{
	if (w->enc == ENC_CBOR) {
		ec_cbor_w_uint(&w->w, v);
		return;
	}
	jw_begin(w);
	out_u64(&w->w, v, false);
	jw_end(w);
}

void codec_w_int(struct codec_w *w, int64_t v)
{
	if (w->enc == ENC_CBOR) {
		ec_cbor_w_int(&w->w, v);
		return;
	}
	jw_begin(w);
	out_u64(&w->w, v < 0 ? (uint64_t)-(v + 1) + 1 : (uint64_t)v, v < 0);
	jw_end(w);
}

void codec_w_double(struct codec_w *w, double v)
{
	if (w->enc == ENC_CBOR) {
		ec_cbor_w_double(&w->w, v);
		return;
	}
	jw_begin(w);
	json_double(&w->w, v);
	jw_end(w);
}

void codec_w_bool(struct codec_w *w, bool v)
{
	if (w->enc == ENC_CBOR) {
		ec_cbor_w_bool(&w->w, v);
		return;
	}
	jw_begin(w);
	out_cstr(&w->w, v ? "true" : "false");
	jw_end(w);
}

void codec_w_null(struct codec_w *w)
{
	codec_w_cbor(w, NULL, 0);
}

void codec_w_cbor(struct codec_w *w, const uint8_t *item, size_t n)
{
	if (w->enc == ENC_CBOR) {
		ec_cbor_w_raw(&w->w, item, n);
		return;
	}
	jw_begin(w);
	if (!item || !n) {
		out_cstr(&w->w, "null");
	} else {
		char *json;
		size_t jn;
		int rc = codec_cbor_to_json(item, n, &json, &jn);
		if (rc < 0 && !w->w.err)
			w->w.err = rc;
		if (rc == 0) {
			out_str(&w->w, json, jn);
			free(json);
		}
	}
	jw_end(w);
}

int codec_w_take(struct codec_w *w, uint8_t **out, size_t *len)
{
	if (w->enc != ENC_CBOR) {
		if (w->depth && !w->w.err)
			w->w.err = EC_EMALFORMED;
		uint8_t nul = 0;
		ec_cbor_w_raw(&w->w, &nul, 1);
	}
	int rc = ec_cbor_w_finish(&w->w);
	if (rc == 0) {
		*out = ec_cbor_w_take(&w->w, len);
		if (w->enc != ENC_CBOR)
			(*len)--;
	}
	ec_cbor_w_fini(&w->w);
	return rc;
}
