/* SPDX-License-Identifier: MIT */
/*
 * agent.h - the device agent library that vendors embed: a mutual-TLS client
 * of the coordinator's agent link (docs/protocol.md), a registry of task
 * handlers by type, heartbeats, and reconnection with exponential backoff and
 * jitter.
 *
 * The caller needs no thread, and agents share no settings: one struct
 * ec_agent per connection, driven by the caller's loop. Either call
 * ec_agent_poll() in a loop, or watch ec_agent_fd() for ec_agent_events() in
 * your own poll/epoll and call ec_agent_step() when it is ready or when
 * ec_agent_next_due() is reached (the fd changes across reconnects, and is
 * -1 between them: read it again after every step).
 *
 * Nothing blocks but ec_agent_poll()'s own wait. A coordinator given by name
 * is looked up with glibc's getaddrinfo_a(), on a helper thread glibc starts
 * (with every signal blocked), and the steps poll it: ec_agent_next_due() is
 * then a few ms away. A coordinator given by address needs no lookup and no
 * thread. When a name has several addresses, each is tried in turn until
 * one connects.
 *
 * A handler is called from ec_agent_step() with a job; it may finish at once
 * (ec_agent_result/ec_agent_fail inside the call) or later, from anywhere in
 * the same thread. Until then the job counts against the slots and its lease
 * is listed in every hello after a reconnect. A finished job's result is kept
 * until the coordinator acknowledges it, and sent again after a reconnect.
 *
 * Every function must be called from one thread (the one that owns the
 * agent). Functions that can fail return 0 or a negative EC_E* code or -errno.
 */
#ifndef EDGECOORD_AGENT_H
#define EDGECOORD_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edgecoord/proto.h"

struct ec_agent;

enum { EC_AGENT_EV_READ = 1, EC_AGENT_EV_WRITE = 2 };
enum { EC_AGENT_LOG_ERROR = 0, EC_AGENT_LOG_WARN, EC_AGENT_LOG_INFO, EC_AGENT_LOG_DEBUG };

/* One unit of work, borrowed for the duration of the handler call. */
struct ec_job {
	const char *task_id;
	uint32_t attempt;
	uint64_t lease;
	const char *type;
	const uint8_t *payload;   /* one CBOR item, or NULL for null */
	size_t payload_len;
	const uint8_t *inputs;    /* CBOR map short-id -> result, or NULL for {} */
	size_t inputs_len;
	uint64_t timeout_ms;      /* 0 = none */
};

typedef void (*ec_handler_fn)(struct ec_agent *a, const struct ec_job *job, void *arg);

struct ec_agent_opts {
	const char *coordinator;      /* "HOST:PORT": a name, an IPv4 address or
				       * a bracketed IPv6 one ("[::1]:7000") */
	const char *server_name;      /* checked against the coordinator's
				       * certificate; default: HOST */
	const char *id;               /* must equal the certificate's CN */
	const char *ca_file, *cert_file, *key_file;
	uint32_t slots;               /* 1..EC_MAX_LEASES (what one hello can
				       * list); default 1 */
	const struct ec_label *labels;
	size_t nlabels;
	uint32_t backoff_min_ms;      /* default 250 */
	uint32_t backoff_max_ms;      /* default 30000 */
	uint32_t connect_timeout_ms;  /* name lookup + TCP + TLS + welcome;
				       * default 10000 */
	void *ctx;                    /* passed to the callbacks */
	/* The coordinator cancels a job (stop it, then report a result or a
	 * failure: it will be acknowledged and discarded). */
	void (*on_cancel)(void *ctx, struct ec_agent *a, uint64_t lease, const char *reason);
	void (*on_drain)(void *ctx, struct ec_agent *a);
	/* Connected (after welcome) or disconnected, with a reason. */
	void (*on_state)(void *ctx, struct ec_agent *a, bool connected, const char *why);
	/* A result was acknowledged: accepted, or discarded as stale. */
	void (*on_ack)(void *ctx, struct ec_agent *a, uint64_t lease, bool accepted);
	/* Log lines (no trailing newline); NULL: silent. */
	void (*log)(void *ctx, int level, const char *msg);
};

/* Copies opts (strings included) and loads the certificates; connects on the
 * first step. EC_ECONFIG (a file that does not load, a bad option) or -ENOMEM. */
int ec_agent_new(const struct ec_agent_opts *opts, struct ec_agent **out);
/* Close the connection (no bye) and free. A name lookup in progress is
 * cancelled, or left to finish on glibc's thread and its memory reclaimed
 * by a later lookup. Accepts NULL. */
void ec_agent_free(struct ec_agent *a);

/* Serve jobs of this type ([A-Za-z0-9._-]{1,64}); it becomes a capability.
 * Register before the first step (capabilities go in hello). */
int ec_agent_handle(struct ec_agent *a, const char *type, ec_handler_fn fn, void *arg);

int ec_agent_fd(const struct ec_agent *a);           /* -1 when not connected */
unsigned ec_agent_events(const struct ec_agent *a);  /* EC_AGENT_EV_* */
uint64_t ec_agent_next_due(const struct ec_agent *a); /* monotonic ms */
/* Do all I/O that is possible now without blocking, run timers. now_ms is
 * monotonic milliseconds. Returns 0; errors are handled by reconnecting. */
int ec_agent_step(struct ec_agent *a, uint64_t now_ms);
/* poll() for up to timeout_ms (bounded by the next due time), then step. */
int ec_agent_poll(struct ec_agent *a, int timeout_ms);
/* CLOCK_MONOTONIC in ms, what ec_agent_poll uses. */
uint64_t ec_agent_now_ms(void);

bool ec_agent_connected(const struct ec_agent *a);
size_t ec_agent_running(const struct ec_agent *a);   /* jobs not finished */

/* Report on a job. EC_ENOTFOUND for a lease the agent does not hold. */
int ec_agent_started(struct ec_agent *a, uint64_t lease);
int ec_agent_progress(struct ec_agent *a, uint64_t lease, int percent, const char *msg);
/* Success: result is one CBOR item (borrowed; NULL = null). */
int ec_agent_result(struct ec_agent *a, uint64_t lease, const uint8_t *result, size_t len);
/* Failure with an error text (truncated to EC_TEXT_MAX bytes). */
int ec_agent_fail(struct ec_agent *a, uint64_t lease, const char *error);

/* Say bye and close; no more reconnects. */
void ec_agent_stop(struct ec_agent *a, const char *reason);

#endif
