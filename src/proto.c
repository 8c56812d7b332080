/* SPDX-License-Identifier: MIT */
/*
 * proto.c - the agent link's frame codec (include/edgecoord/proto.h,
 * docs/protocol.md), and the small CBOR reader/writer it is built on.
 *
 * The CBOR is read by hand rather than with libcbor: a frame body is at most
 * max_frame bytes, and reading it in place lets us hand payloads and results
 * through as the exact bytes received, check every count against the bytes
 * that remain before trusting it (libcbor 0.8 pre-allocates whatever a count
 * claims, LIBNOTES 3), and walk nested items with an explicit stack instead
 * of recursion. Nothing here allocates more than the body holds.
 *
 * Does not: judge whether a lease is current or a task exists (the daemon's),
 * or do any I/O.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "edgecoord/err.h"
#include "edgecoord/proto.h"

/* ---- CBOR writer ---------------------------------------------------- */

void ec_cbor_w_init(struct ec_cbor_w *w)
{
	memset(w, 0, sizeof(*w));
}

void ec_cbor_w_fini(struct ec_cbor_w *w)
{
	if (!w)
		return;
	free(w->buf);
	memset(w, 0, sizeof(*w));
}

static void w_put(struct ec_cbor_w *w, const void *p, size_t n)
{
	if (w->err || n == 0)
		return;
	if (n > SIZE_MAX / 2 - w->len) {
		w->err = -ENOMEM;
		return;
	}
	if (w->len + n > w->cap) {
		size_t cap = w->cap ? w->cap : 64;
		while (cap < w->len + n)
			cap *= 2;
		uint8_t *b = realloc(w->buf, cap);
		if (!b) {
			w->err = -ENOMEM;
			return;
		}
		w->buf = b;
		w->cap = cap;
	}
	memcpy(w->buf + w->len, p, n);
	w->len += n;
}

void ec_cbor_w_head(struct ec_cbor_w *w, unsigned major, uint64_t arg)
{
	uint8_t b[9];
	size_t n;
	uint8_t m = (uint8_t)(major << 5);
	if (arg < 24) {
		b[0] = m | (uint8_t)arg;
		n = 1;
	} else if (arg <= 0xff) {
		b[0] = m | 24;
		b[1] = (uint8_t)arg;
		n = 2;
	} else if (arg <= 0xffff) {
		b[0] = m | 25;
		b[1] = (uint8_t)(arg >> 8);
		b[2] = (uint8_t)arg;
		n = 3;
	} else if (arg <= 0xffffffffu) {
		b[0] = m | 26;
		for (int i = 0; i < 4; i++)
			b[1 + i] = (uint8_t)(arg >> (24 - 8 * i));
		n = 5;
	} else {
		b[0] = m | 27;
		for (int i = 0; i < 8; i++)
			b[1 + i] = (uint8_t)(arg >> (56 - 8 * i));
		n = 9;
	}
	w_put(w, b, n);
}

void ec_cbor_w_uint(struct ec_cbor_w *w, uint64_t v) { ec_cbor_w_head(w, 0, v); }

void ec_cbor_w_int(struct ec_cbor_w *w, int64_t v)
{
	if (v >= 0)
		ec_cbor_w_head(w, 0, (uint64_t)v);
	else
		ec_cbor_w_head(w, 1, (uint64_t)(-(v + 1)));
}

void ec_cbor_w_double(struct ec_cbor_w *w, double v)
{
	uint64_t u;
	uint8_t b[9];
	memcpy(&u, &v, sizeof(u));
	b[0] = 0xfb;
	for (int i = 0; i < 8; i++)
		b[1 + i] = (uint8_t)(u >> (56 - 8 * i));
	w_put(w, b, 9);
}

void ec_cbor_w_bool(struct ec_cbor_w *w, bool v)
{
	uint8_t b = v ? 0xf5 : 0xf4;
	w_put(w, &b, 1);
}

void ec_cbor_w_null(struct ec_cbor_w *w)
{
	uint8_t b = 0xf6;
	w_put(w, &b, 1);
}

void ec_cbor_w_textn(struct ec_cbor_w *w, const char *s, size_t n)
{
	ec_cbor_w_head(w, 3, n);
	w_put(w, s, n);
}

void ec_cbor_w_text(struct ec_cbor_w *w, const char *s)
{
	if (!s)
		ec_cbor_w_null(w);
	else
		ec_cbor_w_textn(w, s, strlen(s));
}

void ec_cbor_w_bytes(struct ec_cbor_w *w, const uint8_t *p, size_t n)
{
	ec_cbor_w_head(w, 2, n);
	w_put(w, p, n);
}

void ec_cbor_w_map(struct ec_cbor_w *w, size_t npairs) { ec_cbor_w_head(w, 5, npairs); }
void ec_cbor_w_array(struct ec_cbor_w *w, size_t n) { ec_cbor_w_head(w, 4, n); }

void ec_cbor_w_raw(struct ec_cbor_w *w, const uint8_t *item, size_t n)
{
	if (!item || n == 0)
		ec_cbor_w_null(w);
	else
		w_put(w, item, n);
}

int ec_cbor_w_finish(struct ec_cbor_w *w)
{
	return w->err;
}

uint8_t *ec_cbor_w_take(struct ec_cbor_w *w, size_t *len)
{
	uint8_t *p = w->buf;
	size_t n = w->len;
	if (w->err) { /* a partial item is worth nothing to the caller */
		free(p);
		p = NULL;
		n = 0;
	}
	if (len)
		*len = n;
	memset(w, 0, sizeof(*w));
	return p;
}

/* ---- CBOR reader ---------------------------------------------------- */

static double half_to_double(uint16_t h)
{
	int e = (h >> 10) & 0x1f;
	double m = h & 0x3ff;
	double v;
	if (e == 0)
		v = ldexp(m, -24);
	else if (e == 31)
		v = m == 0 ? INFINITY : NAN;
	else
		v = ldexp(m + 1024, e - 25);
	return (h & 0x8000) ? -v : v;
}

int ec_cbor_next(struct ec_cbor_r *r, struct ec_cbor_item *it)
{
	struct ec_cbor_item x = {0};
	const uint8_t *p = r->p;
	if (p >= r->end)
		return EC_EMALFORMED;
	uint8_t ib = *p++;
	x.major = ib >> 5;
	unsigned ai = ib & 31;
	size_t avail = (size_t)(r->end - p);
	if (ai < 24) {
		x.arg = ai;
	} else if (ai <= 27) {
		size_t n = (size_t)1 << (ai - 24);
		if (avail < n)
			return EC_EMALFORMED;
		for (size_t i = 0; i < n; i++)
			x.arg = x.arg << 8 | p[i];
		p += n;
	} else if (ai == 31) {
		if (x.major == 0 || x.major == 1 || x.major == 6)
			return EC_EMALFORMED;
		x.indef = true;  /* for major 7: the "break" stop code */
	} else {
		return EC_EMALFORMED;
	}
	if (x.major == 7 && !x.indef) {
		if (ai == 24 && x.arg < 32)
			return EC_EMALFORMED;
		if (ai == 25) {
			x.is_float = true;
			x.d = half_to_double((uint16_t)x.arg);
		} else if (ai == 26) {
			uint32_t u = (uint32_t)x.arg;
			float f;
			memcpy(&f, &u, sizeof(f));
			x.is_float = true;
			x.d = f;
		} else if (ai == 27) {
			memcpy(&x.d, &x.arg, sizeof(x.d));
			x.is_float = true;
		}
	}
	if ((x.major == 2 || x.major == 3) && !x.indef) {
		if (x.arg > (uint64_t)(r->end - p))
			return EC_EMALFORMED;
		x.data = p;
		p += x.arg;
	}
	r->p = p;
	*it = x;
	return 0;
}

#define SKIP_STACK 64

int ec_cbor_skip(struct ec_cbor_r *r, uint32_t max_depth)
{
	struct frame {
		uint64_t left;     /* items still expected; unused when indef */
		uint8_t indef;     /* ends with a break */
		uint8_t strmajor;  /* indefinite string: chunks of this major */
	} st[SKIP_STACK];
	size_t depth = 0;
	struct ec_cbor_r c = *r;
	if (max_depth > SKIP_STACK)
		max_depth = SKIP_STACK;
	for (;;) {
		struct ec_cbor_item it;
		if (ec_cbor_next(&c, &it))
			return EC_EMALFORMED;
		bool is_break = it.major == 7 && it.indef;
		if (depth > 0 && st[depth - 1].strmajor) {
			if (is_break) {
				depth--;
				goto done;
			}
			if (it.major != st[depth - 1].strmajor || it.indef)
				return EC_EMALFORMED;
			continue;  /* a chunk */
		}
		if (is_break) {
			if (depth == 0 || !st[depth - 1].indef)
				return EC_EMALFORMED;
			depth--;
			goto done;
		}
		size_t remaining = (size_t)(c.end - c.p);
		switch (it.major) {
		case 2:
		case 3:
			if (!it.indef)
				goto done;
			if (depth >= max_depth)
				return EC_EMALFORMED;
			st[depth++] = (struct frame){0, 1, (uint8_t)it.major};
			continue;
		case 4:
		case 5:
			if (it.indef) {
				if (depth >= max_depth)
					return EC_EMALFORMED;
				st[depth++] = (struct frame){0, 1, 0};
				continue;
			}
			if (it.arg == 0)
				goto done;
			/* every item takes at least one byte: a count larger than
			 * the bytes left is a lie, refuse it before believing it */
			if (it.arg > remaining || (it.major == 5 && it.arg > remaining / 2))
				return EC_EMALFORMED;
			if (depth >= max_depth)
				return EC_EMALFORMED;
			st[depth++] = (struct frame){it.major == 5 ? it.arg * 2 : it.arg, 0, 0};
			continue;
		case 6:
			if (depth >= max_depth)
				return EC_EMALFORMED;
			st[depth++] = (struct frame){1, 0, 0};
			continue;
		default:
			goto done;
		}
done:
		/* one item completed: account for it in its containers */
		while (depth > 0) {
			struct frame *f = &st[depth - 1];
			if (f->indef)
				break;
			if (--f->left > 0)
				break;
			depth--;
		}
		if (depth == 0) {
			r->p = c.p;
			return 0;
		}
	}
}

int ec_cbor_check(const uint8_t *buf, size_t len, uint32_t max_depth)
{
	struct ec_cbor_r r = {buf, buf + len};
	if (!buf || len == 0)
		return EC_EMALFORMED;
	if (ec_cbor_skip(&r, max_depth))
		return EC_EMALFORMED;
	return r.p == r.end ? 0 : EC_EMALFORMED;
}

/* ---- validation helpers --------------------------------------------- */

static bool utf8_valid(const uint8_t *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t c = s[i];
		if (c < 0x80) {
			if (c == 0)
				return false;  /* we hand these out as C strings */
			i++;
			continue;
		}
		size_t k;
		uint32_t cp;
		if (c >= 0xc2 && c <= 0xdf) {
			k = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (n - i <= k)
			return false;
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + j] & 0x3f);
		}
		if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += k + 1;
	}
	return true;
}

static bool id_chars(const char *s, size_t n, size_t max, bool colon)
{
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-' || (colon && c == ':')))
			return false;
	}
	return true;
}

bool ec_id_valid(const char *s, size_t n, size_t max)
{
	return s && id_chars(s, n, max, false);
}

/* ---- frame table ---------------------------------------------------- */

static const char *const type_names[EC_F_COUNT] = {
	[EC_F_HELLO] = "hello", [EC_F_WELCOME] = "welcome", [EC_F_WORK] = "work",
	[EC_F_STARTED] = "started", [EC_F_PROGRESS] = "progress",
	[EC_F_RESULT] = "result", [EC_F_ACK] = "ack", [EC_F_HB] = "hb",
	[EC_F_CANCEL] = "cancel", [EC_F_DRAIN] = "drain", [EC_F_BYE] = "bye",
	[EC_F_ERROR] = "error",
};

const char *ec_frame_type_name(int type)
{
	if (type <= EC_F_NONE || type >= EC_F_COUNT)
		return NULL;
	return type_names[type];
}

/*
 * The keys, in canonical (bytewise) order, which is also the order the
 * encoder writes them. K(c) is the bit of key c.
 */
static const char key_order[] = "acdefghiklmnoprstuvwxy";
#define K(c) (1u << ((c) - 'a'))

/* Keys each frame type may carry, and those it must. */
static const struct {
	uint32_t allowed, required;
} type_keys[EC_F_COUNT] = {
	[EC_F_HELLO] = {K('i') | K('v') | K('c') | K('n') | K('l') | K('r'),
			K('i') | K('v') | K('n')},
	[EC_F_WELCOME] = {K('v') | K('h') | K('g') | K('m'), K('v') | K('h')},
	[EC_F_WORK] = {K('k') | K('a') | K('e') | K('y') | K('p') | K('u') | K('o'),
		       K('k') | K('a') | K('e') | K('y')},
	[EC_F_STARTED] = {K('e'), K('e')},
	[EC_F_PROGRESS] = {K('e') | K('f') | K('w'), K('e')},
	[EC_F_RESULT] = {K('k') | K('e') | K('s') | K('x') | K('w'), K('k') | K('e') | K('s')},
	[EC_F_ACK] = {K('e') | K('s'), K('e') | K('s')},
	[EC_F_HB] = {K('r') | K('d'), 0},
	[EC_F_CANCEL] = {K('e') | K('w'), K('e')},
	[EC_F_DRAIN] = {0, 0},
	[EC_F_BYE] = {K('w'), 0},
	[EC_F_ERROR] = {K('w'), K('w')},
};

/* ---- decode ----------------------------------------------------------- */

void ec_frame_init(struct ec_frame *f, int type)
{
	memset(f, 0, sizeof(*f));
	f->type = type;
	f->percent = -1;
	f->load = -1;
}

void ec_frame_fini(struct ec_frame *f)
{
	if (!f)
		return;
	free(f->agent_id);
	for (size_t i = 0; i < f->ncaps; i++)
		free(f->caps[i]);
	free(f->caps);
	for (size_t i = 0; i < f->nlabels; i++) {
		free(f->labels[i].key);
		free(f->labels[i].value);
	}
	free(f->labels);
	free(f->leases);
	free(f->task_id);
	free(f->task_type);
	free(f->payload);
	free(f->inputs);
	free(f->text);
	free(f->result);
	ec_frame_init(f, EC_F_NONE);
}

struct dec {
	struct ec_cbor_r r;
	const char *why;
	int err;
};

static int fail(struct dec *d, const char *why)
{
	if (!d->err) {
		d->err = EC_EMALFORMED;
		d->why = why;
	}
	return d->err;
}

static char *dup_n(const uint8_t *p, size_t n)
{
	char *s = malloc(n + 1);
	if (s) {
		memcpy(s, p, n);
		s[n] = '\0';
	}
	return s;
}

enum text_kind { TXT_ID, TXT_TASKID, TXT_FREE };

static int rd_text(struct dec *d, enum text_kind kind, size_t max, char **out,
		   const char *why)
{
	struct ec_cbor_item it;
	if (ec_cbor_next(&d->r, &it) || it.major != 3 || it.indef)
		return fail(d, why);
	const char *s = (const char *)it.data;
	size_t n = (size_t)it.arg;
	bool ok = kind == TXT_ID ? id_chars(s, n, max, false)
		: kind == TXT_TASKID ? id_chars(s, n, max, true)
		: n <= max && utf8_valid(it.data, n);
	if (!ok)
		return fail(d, why);
	char *c = dup_n(it.data, n);
	if (!c) {
		d->err = -ENOMEM;
		d->why = "out of memory";
		return d->err;
	}
	*out = c;
	return 0;
}

static int rd_uint(struct dec *d, uint64_t min, uint64_t max, uint64_t *out, const char *why)
{
	struct ec_cbor_item it;
	if (ec_cbor_next(&d->r, &it) || it.major != 0 || it.arg < min || it.arg > max)
		return fail(d, why);
	*out = it.arg;
	return 0;
}

static int rd_u32(struct dec *d, uint64_t min, uint64_t max, uint32_t *out, const char *why)
{
	uint64_t v;
	int rc = rd_uint(d, min, max, &v, why);
	if (!rc)
		*out = (uint32_t)v;
	return rc;
}

static int rd_bool(struct dec *d, bool *out, const char *why)
{
	struct ec_cbor_item it;
	if (ec_cbor_next(&d->r, &it) || it.major != 7 || it.indef || it.is_float ||
	    (it.arg != 20 && it.arg != 21))
		return fail(d, why);
	*out = it.arg == 21;
	return 0;
}

/* A definite array head with at most max entries. */
static int rd_array(struct dec *d, size_t max, size_t *n, const char *why)
{
	struct ec_cbor_item it;
	if (ec_cbor_next(&d->r, &it) || it.major != 4 || it.indef || it.arg > max)
		return fail(d, why);
	*n = (size_t)it.arg;
	return 0;
}

/* An opaque item, copied as received; a null item reads as absent. */
static int rd_opaque(struct dec *d, bool need_map, uint8_t **out, size_t *out_len,
		     const char *why)
{
	const uint8_t *start = d->r.p;
	if (start < d->r.end && *start == 0xf6 && !need_map) {
		d->r.p++;
		return 0;
	}
	if (need_map && (start >= d->r.end || (*start >> 5) != 5))
		return fail(d, why);
	if (ec_cbor_skip(&d->r, EC_CBOR_MAX_DEPTH))
		return fail(d, why);
	size_t n = (size_t)(d->r.p - start);
	uint8_t *c = malloc(n);
	if (!c) {
		d->err = -ENOMEM;
		d->why = "out of memory";
		return d->err;
	}
	memcpy(c, start, n);
	*out = c;
	*out_len = n;
	return 0;
}

static int rd_leases(struct dec *d, struct ec_frame *f)
{
	size_t n;
	if (rd_array(d, EC_MAX_LEASES, &n, "bad leases"))
		return d->err;
	if (n == 0)
		return 0;
	f->leases = calloc(n, sizeof(*f->leases));
	if (!f->leases)
		return d->err = -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		if (rd_uint(d, 1, UINT64_MAX, &f->leases[i], "bad lease in leases"))
			return d->err;
		f->nleases++;
	}
	return 0;
}

static int rd_key(struct dec *d, struct ec_frame *f, char key)
{
	uint64_t v;
	size_t n;
	switch (key) {
	case 'i':
		return rd_text(d, TXT_ID, EC_AGENT_ID_MAX, &f->agent_id, "bad agent id");
	case 'v':
		if (f->type == EC_F_WELCOME)
			return rd_u32(d, 1, UINT32_MAX, &f->version, "bad version");
		if (rd_array(d, EC_MAX_VERSIONS, &n, "bad versions"))
			return d->err;
		if (n == 0)
			return fail(d, "no versions");
		for (size_t i = 0; i < n; i++)
			if (rd_u32(d, 1, UINT32_MAX, &f->versions[f->nversions++], "bad version"))
				return d->err;
		return 0;
	case 'c':
		if (rd_array(d, EC_MAX_CAPS, &n, "bad caps"))
			return d->err;
		if (n == 0)
			return 0;
		f->caps = calloc(n, sizeof(*f->caps));
		if (!f->caps)
			return d->err = -ENOMEM;
		for (size_t i = 0; i < n; i++) {
			if (rd_text(d, TXT_ID, EC_TYPE_MAX, &f->caps[i], "bad capability"))
				return d->err;
			f->ncaps++;
		}
		return 0;
	case 'n':
		return rd_u32(d, 1, EC_MAX_SLOTS, &f->slots, "bad slots");
	case 'l': {
		struct ec_cbor_item it;
		if (ec_cbor_next(&d->r, &it) || it.major != 5 || it.indef || it.arg > EC_MAX_LABELS)
			return fail(d, "bad labels");
		n = (size_t)it.arg;
		if (n == 0)
			return 0;
		f->labels = calloc(n, sizeof(*f->labels));
		if (!f->labels)
			return d->err = -ENOMEM;
		for (size_t i = 0; i < n; i++) {
			if (rd_text(d, TXT_ID, EC_LABEL_KEY_MAX, &f->labels[i].key, "bad label key"))
				return d->err;
			f->nlabels++;
			if (rd_text(d, TXT_FREE, EC_LABEL_VAL_MAX, &f->labels[i].value,
				    "bad label value"))
				return d->err;
		}
		return 0;
	}
	case 'r':
		return rd_leases(d, f);
	case 'h':
		return rd_u32(d, 10, 3600000, &f->heartbeat_ms, "bad heartbeat interval");
	case 'g':
		return rd_u32(d, 1, 1000, &f->heartbeat_misses, "bad heartbeat misses");
	case 'm':
		return rd_u32(d, EC_FRAME_MIN_MAX, 1u << 30, &f->max_frame, "bad max_frame");
	case 'k':
		return rd_text(d, TXT_TASKID, EC_TASK_ID_MAX, &f->task_id, "bad task id");
	case 'a':
		return rd_u32(d, 1, UINT32_MAX, &f->attempt, "bad attempt");
	case 'e':
		return rd_uint(d, 1, UINT64_MAX, &f->lease, "bad lease");
	case 'y':
		return rd_text(d, TXT_ID, EC_TYPE_MAX, &f->task_type, "bad task type");
	case 'p':
		return rd_opaque(d, false, &f->payload, &f->payload_len, "bad payload");
	case 'u':
		return rd_opaque(d, true, &f->inputs, &f->inputs_len, "bad inputs");
	case 'x':
		return rd_opaque(d, false, &f->result, &f->result_len, "bad result");
	case 'o':
		return rd_uint(d, 0, UINT64_MAX / 2, &f->timeout_ms, "bad timeout");
	case 's':
		return rd_bool(d, f->type == EC_F_ACK ? &f->accepted : &f->ok, "bad ok flag");
	case 'w':
		return rd_text(d, TXT_FREE, EC_TEXT_MAX, &f->text, "bad text");
	case 'f':
		if (rd_uint(d, 0, 100, &v, "bad percent"))
			return d->err;
		f->percent = (int)v;
		return 0;
	case 'd':
		if (rd_uint(d, 0, 100, &v, "bad load"))
			return d->err;
		f->load = (int)v;
		return 0;
	}
	return fail(d, "internal: unhandled key");
}

/* A map key: a one-letter text key we know, or 0 for anything else. */
static int rd_map_key(struct dec *d, char *key)
{
	struct ec_cbor_item it;
	if (ec_cbor_next(&d->r, &it))
		return fail(d, "bad map key");
	*key = 0;
	if (it.major == 3 && !it.indef) {
		if (it.arg == 1 && it.data[0] >= 'a' && it.data[0] <= 'y' &&
		    strchr(key_order, it.data[0]))
			*key = (char)it.data[0];
		else if (it.arg == 1 && it.data[0] == 't')
			*key = 't';
		return 0;
	}
	/* any other key is unknown: step over the rest of it */
	if (it.major == 2 || it.major == 3 || it.major == 4 || it.major == 5 || it.major == 6)
		return fail(d, "map key must be text or an integer");
	return 0;
}

static int decode_body(struct dec *d, const uint8_t *body, size_t len, struct ec_frame *f)
{
	struct ec_cbor_item it;
	d->r = (struct ec_cbor_r){body, body + len};
	if (len == 0 || ec_cbor_next(&d->r, &it) || it.major != 5 || it.indef)
		return fail(d, "frame is not a definite CBOR map");
	if (it.arg > len / 2)
		return fail(d, "map count larger than the frame");
	size_t npairs = (size_t)it.arg;
	const uint8_t *pairs = d->r.p;

	/* pass 1: well-formedness of everything, duplicate keys, the type */
	uint32_t seen = 0;
	bool have_t = false;
	int type = EC_F_NONE;
	for (size_t i = 0; i < npairs; i++) {
		char key;
		if (rd_map_key(d, &key))
			return d->err;
		if (key == 't') {
			if (have_t)
				return fail(d, "duplicate key");
			have_t = true;
			if (ec_cbor_next(&d->r, &it) || it.major != 3 || it.indef)
				return fail(d, "frame type is not text");
			type = -1;
			for (int ti = 1; ti < EC_F_COUNT; ti++)
				if (strlen(type_names[ti]) == it.arg &&
				    memcmp(type_names[ti], it.data, it.arg) == 0)
					type = ti;
			continue;
		}
		if (key) {
			if (seen & K(key))
				return fail(d, "duplicate key");
			seen |= K(key);
		}
		if (ec_cbor_skip(&d->r, EC_CBOR_MAX_DEPTH + 2))
			return fail(d, "malformed value");
	}
	if (d->r.p != d->r.end)
		return fail(d, "trailing bytes after the frame");
	if (!have_t)
		return fail(d, "no frame type");
	if (type < 0) {
		d->err = EC_EPROTO;
		d->why = "unknown frame type";
		return d->err;
	}
	uint32_t allowed = type_keys[type].allowed, required = type_keys[type].required;
	if ((seen & required) != required)
		return fail(d, "a required key is missing");

	/* pass 2: the keys this type knows */
	ec_frame_init(f, type);
	d->r.p = pairs;
	for (size_t i = 0; i < npairs; i++) {
		char key;
		if (rd_map_key(d, &key))
			return d->err;
		if (key && key != 't' && (allowed & K(key))) {
			if (rd_key(d, f, key))
				return d->err;
		} else if (ec_cbor_skip(&d->r, EC_CBOR_MAX_DEPTH + 2)) {
			return fail(d, "malformed value");
		}
	}
	if (type == EC_F_RESULT && !f->ok && !f->text)
		return fail(d, "failed result without error text");
	if (type == EC_F_RESULT && f->ok && f->text)
		return fail(d, "successful result with error text");
	return 0;
}

int ec_frame_decode(const uint8_t *body, size_t len, struct ec_frame *out, const char **why)
{
	struct dec d = {0};
	struct ec_frame f;
	ec_frame_init(&f, EC_F_NONE);
	if (!body)
		len = 0;
	int rc = decode_body(&d, body, len, &f);
	if (rc) {
		ec_frame_fini(&f);
		if (why)
			*why = d.why ? d.why : "malformed";
		return rc;
	}
	*out = f;
	return 0;
}

/* ---- encode ------------------------------------------------------------ */

static bool present(const struct ec_frame *f, char key)
{
	switch (key) {
	case 'i': return f->agent_id != NULL;
	case 'v': return f->type == EC_F_WELCOME ? f->version != 0 : f->nversions > 0;
	case 'c': return true;
	case 'n': return f->slots != 0;
	case 'l': return f->nlabels > 0;
	case 'r': return f->type == EC_F_HB || f->nleases > 0;
	case 'h': return f->heartbeat_ms != 0;
	case 'g': return f->heartbeat_misses != 0;
	case 'm': return f->max_frame != 0;
	case 'k': return f->task_id != NULL;
	case 'a': return f->attempt != 0;
	case 'e': return f->lease != 0;
	case 'y': return f->task_type != NULL;
	case 'p': return f->payload != NULL;
	case 'u': return f->inputs != NULL;
	case 'o': return f->timeout_ms != 0;
	case 's': return true;
	case 'x': return f->ok && f->result != NULL;
	case 'w': return f->text != NULL;
	case 'f': return f->percent >= 0;
	case 'd': return f->load >= 0;
	}
	return false;
}

static void emit(struct ec_cbor_w *w, const struct ec_frame *f, char key)
{
	ec_cbor_w_textn(w, &key, 1);
	switch (key) {
	case 'i': ec_cbor_w_text(w, f->agent_id); break;
	case 'v':
		if (f->type == EC_F_WELCOME) {
			ec_cbor_w_uint(w, f->version);
		} else {
			ec_cbor_w_array(w, f->nversions);
			for (size_t i = 0; i < f->nversions; i++)
				ec_cbor_w_uint(w, f->versions[i]);
		}
		break;
	case 'c':
		ec_cbor_w_array(w, f->ncaps);
		for (size_t i = 0; i < f->ncaps; i++)
			ec_cbor_w_text(w, f->caps[i]);
		break;
	case 'n': ec_cbor_w_uint(w, f->slots); break;
	case 'l':
		ec_cbor_w_map(w, f->nlabels);
		for (size_t i = 0; i < f->nlabels; i++) {
			ec_cbor_w_text(w, f->labels[i].key);
			ec_cbor_w_text(w, f->labels[i].value);
		}
		break;
	case 'r':
		ec_cbor_w_array(w, f->nleases);
		for (size_t i = 0; i < f->nleases; i++)
			ec_cbor_w_uint(w, f->leases[i]);
		break;
	case 'h': ec_cbor_w_uint(w, f->heartbeat_ms); break;
	case 'g': ec_cbor_w_uint(w, f->heartbeat_misses); break;
	case 'm': ec_cbor_w_uint(w, f->max_frame); break;
	case 'k': ec_cbor_w_text(w, f->task_id); break;
	case 'a': ec_cbor_w_uint(w, f->attempt); break;
	case 'e': ec_cbor_w_uint(w, f->lease); break;
	case 'y': ec_cbor_w_text(w, f->task_type); break;
	case 'p': ec_cbor_w_raw(w, f->payload, f->payload_len); break;
	case 'u': ec_cbor_w_raw(w, f->inputs, f->inputs_len); break;
	case 'o': ec_cbor_w_uint(w, f->timeout_ms); break;
	case 's': ec_cbor_w_bool(w, f->type == EC_F_ACK ? f->accepted : f->ok); break;
	case 'x': ec_cbor_w_raw(w, f->result, f->result_len); break;
	case 'w': ec_cbor_w_text(w, f->text); break;
	case 'f': ec_cbor_w_uint(w, (uint64_t)f->percent); break;
	case 'd': ec_cbor_w_uint(w, (uint64_t)f->load); break;
	}
}

int ec_frame_encode(const struct ec_frame *f, uint32_t max_frame, uint8_t **out,
		    size_t *out_len)
{
	if (!f || f->type <= EC_F_NONE || f->type >= EC_F_COUNT)
		return EC_EINVALID_FIELD;
	uint32_t allowed = type_keys[f->type].allowed;
	size_t npairs = 1;
	for (const char *k = key_order; *k; k++)
		if ((allowed & K(*k)) && present(f, *k))
			npairs++;

	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	static const uint8_t zero[EC_FRAME_HDR];
	ec_cbor_w_raw(&w, zero, sizeof(zero));
	ec_cbor_w_map(&w, npairs);
	/* canonical key order: "t" sorts between "s" and "u" */
	for (const char *k = key_order; *k; k++) {
		if (*k == 'u') {
			ec_cbor_w_textn(&w, "t", 1);
			ec_cbor_w_text(&w, type_names[f->type]);
		}
		if ((allowed & K(*k)) && present(f, *k))
			emit(&w, f, *k);
	}
	int rc = ec_cbor_w_finish(&w);
	if (rc) {
		ec_cbor_w_fini(&w);
		return rc;
	}
	size_t body = w.len - EC_FRAME_HDR;
	if (body > max_frame) {
		ec_cbor_w_fini(&w);
		return EC_ETOO_LARGE;
	}
	/* what we send must be what the peer accepts: decode it back */
	struct ec_frame chk;
	rc = ec_frame_decode(w.buf + EC_FRAME_HDR, body, &chk, NULL);
	if (rc) {
		ec_cbor_w_fini(&w);
		return rc == -ENOMEM ? rc : EC_EINVALID_FIELD;
	}
	ec_frame_fini(&chk);
	w.buf[0] = (uint8_t)(body >> 24);
	w.buf[1] = (uint8_t)(body >> 16);
	w.buf[2] = (uint8_t)(body >> 8);
	w.buf[3] = (uint8_t)body;
	*out = w.buf;
	*out_len = w.len;
	return 0;
}
