/* SPDX-License-Identifier: MIT */
/*
 * cbw.h - a small CBOR writer into a growing buffer, for every message
 * edgecoord builds itself (statuses, results, rejections, answers, frames).
 * Definite lengths and shortest forms only, so what it writes is canonical
 * as long as the caller writes map keys in canonical order. Messages for a
 * JSON submitter are written as CBOR and converted with codec_cbor_to_json().
 *
 * Errors are sticky: after an allocation failure every call is a no-op and
 * cbw_finish() returns -ENOMEM, so callers check once at the end.
 */
#ifndef EC_CBW_H
#define EC_CBW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cbw {
	uint8_t *buf;
	size_t len, cap;
	int err;
};

void cbw_init(struct cbw *w);            /* empty, no allocation yet */
void cbw_fini(struct cbw *w);            /* frees the buffer; accepts NULL */
void cbw_map(struct cbw *w, size_t npairs);
void cbw_array(struct cbw *w, size_t n);
void cbw_uint(struct cbw *w, uint64_t v);
void cbw_int(struct cbw *w, int64_t v);
void cbw_double(struct cbw *w, double v);   /* float64; integral values stay float */
void cbw_bool(struct cbw *w, bool v);
void cbw_null(struct cbw *w);
void cbw_text(struct cbw *w, const char *s);          /* NULL writes null */
void cbw_textn(struct cbw *w, const char *s, size_t n);
void cbw_bytes(struct cbw *w, const uint8_t *p, size_t n);
/* Splice an already encoded item (a payload, a result); NULL/0 writes null. */
void cbw_raw(struct cbw *w, const uint8_t *item, size_t n);
/* 0, or -ENOMEM if any write failed. The buffer stays owned by w. */
int cbw_finish(struct cbw *w);
/* Hand the buffer to the caller (new; free()) and reset w. */
uint8_t *cbw_take(struct cbw *w, size_t *len);

#endif
