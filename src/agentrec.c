/* SPDX-License-Identifier: MIT */
/*
 * agentrec.c - the stored agent record (see agentrec.h). Layout, little
 * endian, version first:
 *   u8 version=2, u8 n, state[n], u32 slots, i64 last_seen, u64 ok,
 *   u64 failed, u16 n, caps[n], u8 ndur, u32 dur[ndur]
 */
#include <stdlib.h>
#include <string.h>

#include "agentrec.h"
#include "edgecoord/err.h"

#define AGENTREC_VERSION 3 /* 3 = 2 + a flags byte at the end */
#define AGENTREC_DRAINED 0x01

static uint8_t *put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		*p++ = (uint8_t)(v >> (8 * i));
	return p;
}

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

size_t agentrec_encode(const struct agentrec *r, uint8_t *buf)
{
	uint8_t *p = buf;
	size_t sl = strnlen(r->state, AGENTREC_STATE_MAX);
	size_t cl = strnlen(r->caps, AGENTREC_CAPS_MAX);
	uint32_t nd = r->ndur < AGENTREC_DUR_MAX ? r->ndur : AGENTREC_DUR_MAX;

	*p++ = AGENTREC_VERSION;
	*p++ = (uint8_t)sl;
	memcpy(p, r->state, sl);
	p += sl;
	p = put_le(p, r->slots, 4);
	p = put_le(p, (uint64_t)r->last_seen_ms, 8);
	p = put_le(p, r->ok, 8);
	p = put_le(p, r->failed, 8);
	p = put_le(p, cl, 2);
	memcpy(p, r->caps, cl);
	p += cl;
	*p++ = (uint8_t)nd;
	for (uint32_t i = 0; i < nd; i++)
		p = put_le(p, r->dur[i], 4);
	*p++ = r->drained ? AGENTREC_DRAINED : 0;
	return (size_t)(p - buf);
}

int agentrec_decode(const uint8_t *b, size_t len, struct agentrec *out)
{
	struct agentrec r;
	const uint8_t *p = b, *end = b + len;

	memset(&r, 0, sizeof r);
	if (len < 2 || (p[0] != AGENTREC_VERSION && p[0] != 2) || p[1] > AGENTREC_STATE_MAX)
		return EC_EMALFORMED;
	size_t flags = p[0] == AGENTREC_VERSION; /* bytes of flags at the end */
	size_t sl = p[1];
	p += 2;
	if ((size_t)(end - p) < sl + 4 + 8 + 8 + 8 + 2)
		return EC_EMALFORMED;
	memcpy(r.state, p, sl);
	p += sl;
	r.slots = (uint32_t)get_le(p, 4);
	r.last_seen_ms = (int64_t)get_le(p + 4, 8);
	r.ok = get_le(p + 12, 8);
	r.failed = get_le(p + 20, 8);
	size_t cl = (size_t)get_le(p + 28, 2);
	p += 30;
	if (cl > AGENTREC_CAPS_MAX || (size_t)(end - p) < cl + 1)
		return EC_EMALFORMED;
	memcpy(r.caps, p, cl);
	p += cl;
	r.ndur = *p++;
	if (r.ndur > AGENTREC_DUR_MAX || (size_t)(end - p) != 4 * (size_t)r.ndur + flags)
		return EC_EMALFORMED;
	for (uint32_t i = 0; i < r.ndur; i++)
		r.dur[i] = (uint32_t)get_le(p + 4 * i, 4);
	if (flags) {
		uint8_t fl = p[4 * r.ndur];
		if (fl & ~AGENTREC_DRAINED)
			return EC_EMALFORMED;
		r.drained = fl & AGENTREC_DRAINED;
	}
	*out = r;
	return 0;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

uint32_t agentrec_median(const uint32_t *v, size_t n)
{
	uint32_t tmp[AGENTREC_DUR_MAX];
	if (n == 0)
		return 0;
	if (n > AGENTREC_DUR_MAX)
		n = AGENTREC_DUR_MAX;
	memcpy(tmp, v, n * sizeof *tmp);
	qsort(tmp, n, sizeof *tmp, cmp_u32);
	return tmp[n / 2];
}
