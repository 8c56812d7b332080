/* SPDX-License-Identifier: MIT */
/*
 * link.h - the coordinator's end of the agent link (DESIGN 4,
 * docs/protocol.md): the mutual-TLS listener, one session per agent, framing,
 * the hello/welcome handshake, and agent liveness.
 *
 * The link runs inside the daemon's one loop and does no waiting of its own:
 * it asks the loop to watch fds through hooks->watch/unwatch (level
 * triggered), the loop calls link_on_event() when one is ready and
 * link_tick() at least by link_next_due(). Time is the caller's monotonic
 * milliseconds, so tests can drive it.
 *
 * What reaches the daemon: an agent that is up (its hello, after the TLS
 * identity check), every later frame of a live session (started, progress,
 * result, hb, bye), and state changes: down (connection lost; the agent has
 * until the offline budget to come back), suspect, alive again, offline
 * (budget spent: session closed, record dropped). The daemon decides about
 * work, leases and fencing; it answers with link_send_*().
 *
 * Single-threaded: every function must be called from the loop's thread.
 * Hooks may call link_send_*() and link_close_agent(), but not link_free().
 */
#ifndef EC_LINK_H
#define EC_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edgecoord/proto.h"

struct link;

enum { LINK_EV_READ = 1, LINK_EV_WRITE = 2 };

enum link_agent_state {
	LINK_AGENT_DOWN,     /* session closed; not yet offline */
	LINK_AGENT_SUSPECT,  /* silent for 2 x heartbeat_ms */
	LINK_AGENT_ALIVE,    /* heard again after suspect */
	LINK_AGENT_OFFLINE,  /* silent for heartbeat_ms x heartbeat_misses */
};

struct link_config {
	const char *listen;          /* "HOST:PORT"; port 0 picks one (tests) */
	const char *ca_file, *cert_file, *key_file;
	uint32_t heartbeat_ms;       /* default 1000 */
	uint32_t heartbeat_misses;   /* default 3 */
	uint32_t max_frame;          /* body bytes, default 65536 */
	uint32_t handshake_timeout_ms; /* TLS + hello, default 5000 */
	uint32_t max_sessions;       /* connections at once, default 1024 */
	size_t out_cap;              /* per-session unsent bytes, default 4 x max_frame */
};

struct link_hooks {
	void *ctx;
	/* Watch fd for events (LINK_EV_*), replacing earlier interest. 0 or -errno. */
	int (*watch)(void *ctx, int fd, unsigned events);
	void (*unwatch)(void *ctx, int fd);
	/* An agent completed TLS + hello. hello is borrowed for the call. The
	 * agent may already have been known (a reconnect within the budget):
	 * hello->leases lists what it still holds. */
	void (*on_up)(void *ctx, const char *agent, const struct ec_frame *hello);
	/* A frame from a live agent: started, progress, result, hb, bye
	 * (borrowed). After a bye the session closes (on_state DOWN follows). */
	void (*on_frame)(void *ctx, const char *agent, const struct ec_frame *f);
	/* Liveness. reason is a short text for logs (borrowed). */
	void (*on_state)(void *ctx, const char *agent, enum link_agent_state st,
			 const char *reason);
};

/*
 * Load the certificates, bind and listen, register the listener with
 * hooks->watch. cfg and hooks are copied (strings in cfg too). Returns 0,
 * EC_ECONFIG (a file that does not load; the reason is logged), or -errno.
 */
int link_new(const struct link_config *cfg, const struct link_hooks *hooks,
	     struct link **out);
/* Close every session (no hooks are called) and the listener. Accepts NULL. */
void link_free(struct link *l);

/* The port the listener is bound to (after port 0). */
int link_port(const struct link *l);

/* An fd the daemon watches for the link is ready. */
void link_on_event(struct link *l, int fd, unsigned events, uint64_t now_ms);
/* Handshake timeouts, liveness, coordinator heartbeats. */
void link_tick(struct link *l, uint64_t now_ms);
/* When link_tick() is next needed (monotonic ms). */
uint64_t link_next_due(const struct link *l);

/*
 * Queue a frame for a live agent. 0; EC_EUNKNOWN_AGENT when it has no live
 * session; EC_EINVALID_FIELD/EC_ETOO_LARGE when the frame cannot be encoded;
 * -ENOBUFS when its outbound buffer is full (the session is then closed:
 * a reader that slow would only fall further behind).
 */
int link_send_work(struct link *l, const char *agent, const struct ec_frame *work);
int link_send_cancel(struct link *l, const char *agent, uint64_t lease, const char *reason);
int link_send_drain(struct link *l, const char *agent);
/* Answer a result: accepted, or discarded (its lease was not current). */
int link_send_ack(struct link *l, const char *agent, uint64_t lease, bool accepted);
/* Between link_cork() and link_uncork() the link_send_*() calls only queue;
 * link_uncork() writes each session's frames at once (one TLS record and
 * one send instead of one per frame). */
void link_cork(struct link *l);
void link_uncork(struct link *l);
/* Send an error frame (if live), close the session, forget the agent. */
int link_close_agent(struct link *l, const char *agent, const char *reason);

struct link_stats {
	size_t sessions;       /* connections, handshaking included */
	size_t live;           /* sessions past hello */
	size_t agents;         /* known agents: live + down within budget */
	uint64_t refused;      /* connections refused since start */
	uint64_t frames_in, frames_out;
};
void link_get_stats(const struct link *l, struct link_stats *st);

#endif
