/* SPDX-License-Identifier: MIT */
/*
 * agentrec.h - an agent's record as the store keeps it (the agents table):
 * what the fleet last published about it, so that a restarted coordinator
 * and `edgecoordctl agents` know every agent, its state and its figures.
 * Pure encoding; the store treats the bytes as opaque.
 */
#ifndef EC_AGENTREC_H
#define EC_AGENTREC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AGENTREC_DUR_MAX 64     /* recent successful task durations kept */
#define AGENTREC_STATE_MAX 15
#define AGENTREC_CAPS_MAX 1023  /* comma-separated task types */
#define AGENTREC_MAX (1 + 1 + AGENTREC_STATE_MAX + 4 + 8 + 8 + 8 + 2 + AGENTREC_CAPS_MAX + \
		      1 + 4 * AGENTREC_DUR_MAX + 1)

struct agentrec {
	char state[AGENTREC_STATE_MAX + 1];   /* "online", "suspect", "offline", "draining" */
	uint32_t slots;
	int64_t last_seen_ms;                 /* epoch ms */
	uint64_t ok, failed;                  /* outcomes since first seen */
	uint32_t ndur;
	uint32_t dur[AGENTREC_DUR_MAX];       /* ms, oldest first */
	char caps[AGENTREC_CAPS_MAX + 1];
	bool drained;                         /* by an operator; kept across restarts */
};

/* Encode into buf (AGENTREC_MAX bytes); returns the length. */
size_t agentrec_encode(const struct agentrec *r, uint8_t *buf);
/* 0, or EC_EMALFORMED for bytes that are not a record of this version or
 * of version 2 (which had no flags: not drained). */
int agentrec_decode(const uint8_t *buf, size_t len, struct agentrec *out);
/* The median of v[0..n) (0 when n == 0); v is not changed. */
uint32_t agentrec_median(const uint32_t *v, size_t n);

#endif
