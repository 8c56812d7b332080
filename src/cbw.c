/* SPDX-License-Identifier: MIT */
/*
 * cbw.c - the CBOR writer of cbw.h: heads in their shortest form, definite
 * lengths only, float64 for every double. It knows nothing about map key
 * order; callers that need canonical output write keys in canonical order
 * (or build the item and pass it through codec_cbor_canonical()).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cbw.h"

void cbw_init(struct cbw *w)
{
	memset(w, 0, sizeof *w);
}

void cbw_fini(struct cbw *w)
{
	if (!w)
		return;
	free(w->buf);
	memset(w, 0, sizeof *w);
}

/* Make room for n more bytes; on failure the error sticks. */
static bool reserve(struct cbw *w, size_t n)
{
	if (w->err)
		return false;
	if (n <= w->cap - w->len)
		return true;
	if (n > SIZE_MAX / 2 - w->len) {
		w->err = -ENOMEM;
		return false;
	}
	size_t cap = w->cap ? w->cap : 64;
	while (cap - w->len < n)
		cap *= 2;
	uint8_t *p = realloc(w->buf, cap);
	if (!p) {
		w->err = -ENOMEM;
		return false;
	}
	w->buf = p;
	w->cap = cap;
	return true;
}

static void put(struct cbw *w, const void *p, size_t n)
{
	if (n == 0 || !reserve(w, n))
		return;
	memcpy(w->buf + w->len, p, n);
	w->len += n;
}

/* An initial byte and argument in the shortest form (RFC 8949 3). */
static void head(struct cbw *w, uint8_t major, uint64_t v)
{
	uint8_t b[9];
	size_t n;
	major = (uint8_t)(major << 5);
	if (v < 24) {
		b[0] = (uint8_t)(major | v);
		n = 1;
	} else if (v <= UINT8_MAX) {
		b[0] = major | 24;
		b[1] = (uint8_t)v;
		n = 2;
	} else if (v <= UINT16_MAX) {
		b[0] = major | 25;
		n = 3;
	} else if (v <= UINT32_MAX) {
		b[0] = major | 26;
		n = 5;
	} else {
		b[0] = major | 27;
		n = 9;
	}
	if (n > 2)
		for (size_t i = 1; i < n; i++)
			b[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
	put(w, b, n);
}

void cbw_map(struct cbw *w, size_t npairs)
{
	head(w, 5, npairs);
}

void cbw_array(struct cbw *w, size_t n)
{
	head(w, 4, n);
}

void cbw_uint(struct cbw *w, uint64_t v)
{
	head(w, 0, v);
}

void cbw_int(struct cbw *w, int64_t v)
{
	if (v >= 0)
		head(w, 0, (uint64_t)v);
	else
		head(w, 1, (uint64_t)(-(v + 1))); /* -1 - n, without overflow at INT64_MIN */
}

void cbw_double(struct cbw *w, double v)
{
	uint64_t bits;
	memcpy(&bits, &v, sizeof bits);
	uint8_t b[9];
	b[0] = 0xfb;
	for (int i = 1; i < 9; i++)
		b[i] = (uint8_t)(bits >> (8 * (8 - i)));
	put(w, b, sizeof b);
}

void cbw_bool(struct cbw *w, bool v)
{
	uint8_t b = v ? 0xf5 : 0xf4;
	put(w, &b, 1);
}

void cbw_null(struct cbw *w)
{
	uint8_t b = 0xf6;
	put(w, &b, 1);
}

void cbw_text(struct cbw *w, const char *s)
{
	if (!s) {
		cbw_null(w);
		return;
	}
	cbw_textn(w, s, strlen(s));
}

void cbw_textn(struct cbw *w, const char *s, size_t n)
{
	head(w, 3, n);
	put(w, s, n);
}

void cbw_bytes(struct cbw *w, const uint8_t *p, size_t n)
{
	head(w, 2, n);
	put(w, p, n);
}

void cbw_raw(struct cbw *w, const uint8_t *item, size_t n)
{
	if (!item || n == 0) {
		cbw_null(w);
		return;
	}
	put(w, item, n);
}

int cbw_finish(struct cbw *w)
{
	return w->err;
}

uint8_t *cbw_take(struct cbw *w, size_t *len)
{
	uint8_t *p = w->buf;
	size_t n = w->len;
	if (w->err) {
		/* a partial item is worth nothing to the caller */
		free(p);
		p = NULL;
		n = 0;
	}
	if (len)
		*len = n;
	memset(w, 0, sizeof *w);
	return p;
}
