/* SPDX-License-Identifier: MIT */
/*
 * fleet.h - the daemon's agents and the work they do: it joins the link (TLS
 * sessions, frames), the scheduler (who runs what) and the store (task
 * states, leases, timers) inside coord's per-turn transaction.
 *
 * What it owns: the registry of known agents (capabilities, labels, slots,
 * state, figures) and their health messages; dispatch (sched_pick -> ready ->
 * dispatched with a new lease -> `work` frame, sent before the commit; see
 * send_work_early() in fleet.c); results with
 * fencing (a result whose lease is not the task's current one is acked as
 * discarded); the slots of cancelled, timed-out and recalled leases, held in
 * the scheduler until their agents answer them; failure policy (retry_wait
 * with backoff, or dead); the timers (retry due, attempt timeout, deadline);
 * lost agents (their tasks back to ready without charging an attempt);
 * drain/undrain; recovery after a restart (running tasks get one liveness
 * period for their agent to come back).
 *
 * Frames and link events are queued when they arrive and applied in the next
 * turn's transaction; the other frames to agents (ack, cancel, drain) are
 * sent only after that transaction committed. Loop thread only.
 */
#ifndef EC_FLEET_H
#define EC_FLEET_H

#include <stdbool.h>
#include <stdint.h>

#include "coord.h"
#include "link.h"
#include "sched.h"
#include "store.h"

struct fleet_opts {
	const char *prefix;             /* topic prefix (borrowed) */
	struct sched_defaults defaults; /* retry policy and timeout defaults */
	uint32_t heartbeat_ms;
	uint32_t heartbeat_misses;
	int64_t health_period_ms;       /* republish health at least this often */
	uint32_t max_frame;
};

struct fleet;

/* *out is new. st and sc are borrowed. The link is attached later (it needs
 * the hooks fleet_link_hooks() gives). */
int fleet_new(struct store *st, struct sched *sc, const struct fleet_opts *o,
	      struct fleet **out);
void fleet_free(struct fleet *f);

/* The link hooks that feed the fleet; watch/unwatch are left to the caller. */
void fleet_link_hooks(struct fleet *f, struct link_hooks *h);
void fleet_attach_link(struct fleet *f, struct link *l);

/* Rebuild the in-memory view from the store at start-up: ready tasks into
 * the scheduler, running ones adopted until their agents return. */
int fleet_recover(struct fleet *f, int64_t now_real_ms, int64_t now_mono_ms);

/* The hooks coord calls in its turn. */
void fleet_coord_hooks(struct fleet *f, struct coord_hooks *h);

/* The next time (monotonic ms) the fleet needs a turn, or -1. */
int64_t fleet_next_due(struct fleet *f, int64_t now_mono_ms, int64_t now_real_ms);

#endif
