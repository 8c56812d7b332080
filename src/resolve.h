/* SPDX-License-Identifier: MIT */
/*
 * resolve.h - a host and port turned into addresses without blocking the
 * caller's loop, for every client we have: the MQTT link to the broker
 * (mqtt.c) and the agent library's link to the coordinator (agent.c).
 *
 * An address ("127.0.0.1", "::1") is converted at once. A name is looked up
 * with getaddrinfo_a() on a glibc helper thread, and the caller polls for
 * the result from its own loop (every RESOLVE_POLL_MS is plenty): with the
 * uplink down a DNS lookup can take many seconds, and a loop stalled that
 * long stops its heartbeats.
 *
 * A lookup that is given up (a timeout) and cannot be cancelled is left to
 * finish: glibc still writes its result into memory we own. Until it has,
 * resolve_start() refuses to start another, so that a resolver that hangs
 * ties up one helper thread per client, not one per attempt.
 *
 * Threads: a struct resolve belongs to one thread. Different ones may be
 * used from different threads (they share only the list of lookups that
 * resolve_free() gave up, under a lock). No callbacks, no signals.
 */
#ifndef EC_RESOLVE_H
#define EC_RESOLVE_H

#include <netdb.h>

/* How often a name lookup in progress is worth polling (ms). */
#define RESOLVE_POLL_MS 20

struct resolve;

enum resolve_status {
	RESOLVE_DONE,    /* *out holds the addresses: new, freeaddrinfo() them */
	RESOLVE_PENDING, /* a name lookup runs: resolve_poll() again later */
	RESOLVE_FAILED,  /* resolve_error() says why */
};

/* A resolver for one host and port (port: a number), both copied. Nothing is
 * looked up yet. 0 or -ENOMEM. */
int resolve_new(const char *host, const char *port, struct resolve **out);

/* Gives up a lookup in progress (see resolve_cancel) and frees the rest; a
 * lookup still running is reclaimed by a later resolve_* call once it has
 * returned, whatever the struct resolve it belonged to. Accepts NULL. */
void resolve_free(struct resolve *r);

/*
 * Start an attempt. An address: DONE at once, with *out. A name: PENDING
 * (the lookup runs; poll it). FAILED: out of memory or threads, or the last
 * lookup, given up, has not returned yet (start again later). A lookup in
 * progress is given up first. *out is written only for DONE.
 */
enum resolve_status resolve_start(struct resolve *r, struct addrinfo **out);

/* Whether the name lookup started last has returned: DONE with *out (new),
 * FAILED (not found, or no lookup in progress), or PENDING. */
enum resolve_status resolve_poll(struct resolve *r, struct addrinfo **out);

/* Give up the lookup in progress, if any (a timeout): cancelled if glibc has
 * not started it, else left to finish (resolve_start() waits for it). */
void resolve_cancel(struct resolve *r);

/* Why the last FAILED: static text, for logs. */
const char *resolve_error(const struct resolve *r);

#endif
