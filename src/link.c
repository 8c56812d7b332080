/* SPDX-License-Identifier: MIT */
/*
 * link.c - the coordinator's TLS listener and agent sessions (link.h).
 *
 * Owns: the listening socket, one mbedtls server context per connection,
 * reading 4-byte-length-prefixed frames into a buffer no larger than
 * max_frame, decoding them with the one codec (proto.c), the hello/welcome
 * exchange with the certificate-CN identity check, bounded outbound buffers,
 * and liveness (suspect, offline) per agent id across reconnects. TLS and
 * the byte-level framing are tlsframe's (shared with the agent library);
 * this file does not include mbedtls.
 *
 * Does not: decide anything about tasks or leases (the daemon does, through
 * the hooks), or block: every socket is non-blocking, the loop is the
 * caller's and level-triggered.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "edgecoord/err.h"
#include "link.h"
#include "log.h"
#include "tlsframe.h"

enum sess_state { S_HANDSHAKE, S_HELLO, S_LIVE, S_DEAD };

struct agent;

struct session {
	int fd;
	enum sess_state state;
	uint64_t t0;                   /* accepted at */
	unsigned events;               /* what the loop watches for us */
	char peer[64];                 /* "ip:port" for logs */
	char cn[EC_AGENT_ID_MAX + 1];  /* certificate CN, after the handshake */
	struct agent *agent;           /* S_LIVE only */
	struct tlsframe *tf;           /* TLS, inbound frame, outbound bytes */
	struct session *next, *prev;   /* l->sessions or l->dead */
};

struct agent {
	char id[EC_AGENT_ID_MAX + 1];
	struct session *s;             /* NULL while down */
	uint64_t last_seen;
	uint64_t read_at;              /* link_tick read its socket at this tick */
	bool suspect;
	struct agent *next;
};

struct link {
	struct link_config cfg;
	struct link_hooks hooks;
	char *listen, *ca_file, *cert_file, *key_file;
	int lfd, port;
	struct tlsframe_conf *tls;
	struct session *sessions, *dead;
	struct session **by_fd;        /* fd -> session */
	size_t nby_fd;
	struct agent *agents;
	uint64_t last_tick, next_hb;
	uint32_t granularity;
	bool corked;                   /* link_cork(): frames wait for link_uncork() */
	struct link_stats st;
};

/* ---- small helpers ----------------------------------------------------- */

static void set_events(struct link *l, struct session *s, unsigned ev)
{
	if (s->state == S_DEAD || s->events == ev)
		return;
	if (l->hooks.watch(l->hooks.ctx, s->fd, ev) == 0)
		s->events = ev;
}

static struct agent *agent_find(struct link *l, const char *id)
{
	for (struct agent *a = l->agents; a; a = a->next)
		if (strcmp(a->id, id) == 0)
			return a;
	return NULL;
}

static void agent_drop(struct link *l, struct agent *a)
{
	for (struct agent **pp = &l->agents; *pp; pp = &(*pp)->next)
		if (*pp == a) {
			*pp = a->next;
			break;
		}
	l->st.agents--;
	free(a);
}

/* ---- closing ------------------------------------------------------------ */

static void flush_out(struct link *l, struct session *s);

/*
 * End a session: best effort to get queued bytes (an error frame) and a
 * close_notify out without waiting, then unwatch and close. The memory is
 * freed at the end of the current link_on_event/link_tick, because a hook
 * further up the stack may still hold s. notify: report the agent DOWN.
 */
static void session_close(struct link *l, struct session *s, const char *why, bool notify)
{
	if (s->state == S_DEAD)
		return;
	struct agent *a = s->agent;
	enum sess_state was = s->state;
	bool was_live = was == S_LIVE;
	s->state = S_DEAD;  /* first: a failed flush below must not recurse */
	if (was != S_HANDSHAKE) {
		flush_out(l, s);
		tlsframe_close_notify(s->tf);
	}
	if (s->events)
		l->hooks.unwatch(l->hooks.ctx, s->fd);
	s->events = 0;
	if ((size_t)s->fd < l->nby_fd)
		l->by_fd[s->fd] = NULL;
	close(s->fd);
	s->fd = -1;
	/* move from sessions to dead */
	if (s->prev)
		s->prev->next = s->next;
	else
		l->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->prev = NULL;
	s->next = l->dead;
	l->dead = s;
	l->st.sessions--;
	if (was_live) {
		l->st.live--;
		if (a && a->s == s) {
			a->s = NULL;
			log_info("AGENT-DOWN agent=%s reason=%s", a->id, why);
			if (notify && l->hooks.on_state)
				l->hooks.on_state(l->hooks.ctx, a->id, LINK_AGENT_DOWN, why);
		}
	}
	s->agent = NULL;
}

static void session_free(struct session *s)
{
	tlsframe_free(s->tf);
	free(s);
}

static void reap(struct link *l)
{
	while (l->dead) {
		struct session *s = l->dead;
		l->dead = s->next;
		session_free(s);
	}
}

static void refuse(struct link *l, struct session *s, const char *reason)
{
	log_warnx("AGENT-REFUSED peer=%s agent=%s reason=%s", s->peer,
		  s->cn[0] ? s->cn : "-", reason);
	l->st.refused++;
	session_close(l, s, reason, false);
}

/* ---- writing ------------------------------------------------------------ */

static void flush_out(struct link *l, struct session *s)
{
	enum tlsframe_status st = tlsframe_flush(s->tf);
	if (st == TLSFRAME_WANT_WRITE) {
		set_events(l, s, LINK_EV_READ | LINK_EV_WRITE);
		return;
	}
	if (st != TLSFRAME_OK) {
		/* no flush of a session that is closing anyway */
		if (s->state != S_DEAD) {
			char e[96];
			log_info("AGENT-IO peer=%s write: %s", s->peer,
				 tlsframe_error(s->tf, e, sizeof(e)));
			session_close(l, s, "write failed", true);
		}
		return;
	}
	set_events(l, s, LINK_EV_READ);
}

static int send_frame(struct link *l, struct session *s, const struct ec_frame *f)
{
	int rc = tlsframe_queue_frame(s->tf, f, l->cfg.max_frame, l->cfg.out_cap);
	if (rc == -ENOBUFS && l->corked) {
		/* The cap is for what a slow reader leaves unread, not for what
		 * a corked turn holds back on purpose: write what the socket
		 * takes now, and only then judge. */
		flush_out(l, s);
		if (s->state == S_DEAD)
			return -EPIPE;
		rc = tlsframe_queue_frame(s->tf, f, l->cfg.max_frame, l->cfg.out_cap);
	}
	if (rc == -ENOBUFS) {
		log_warnx("AGENT-SLOW agent=%s peer=%s unsent=%zu: closing", s->cn, s->peer,
			  tlsframe_unsent(s->tf));
		session_close(l, s, "outbound buffer full", true);
		return rc;
	}
	if (rc)
		return rc;
	l->st.frames_out++;
	if (!l->corked)
		flush_out(l, s);
	return 0;
}

void link_cork(struct link *l)
{
	l->corked = true;
}

void link_uncork(struct link *l)
{
	l->corked = false;
	for (struct session *s = l->sessions, *next; s; s = next) {
		next = s->next; /* a failed flush moves s to l->dead */
		if (s->state != S_DEAD && tlsframe_unsent(s->tf) > 0)
			flush_out(l, s);
	}
}

/* Tell the peer why, then close. */
static void close_with_error(struct link *l, struct session *s, const char *why, bool notify)
{
	struct ec_frame f;
	ec_frame_init(&f, EC_F_ERROR);
	f.text = (char *)why;
	/* no cap: this is the last thing the session sends (best effort) */
	tlsframe_queue_frame(s->tf, &f, l->cfg.max_frame, SIZE_MAX);
	session_close(l, s, why, notify);
}

/* ---- handshake and hello ---------------------------------------------- */

/* The subject CN of the verified peer certificate into s->cn, or false. */
static bool peer_cn(struct session *s)
{
	int n = tlsframe_peer_cn(s->tf, s->cn, sizeof(s->cn));
	return n > 0 && ec_id_valid(s->cn, (size_t)n, EC_AGENT_ID_MAX);
}

static void do_handshake(struct link *l, struct session *s)
{
	enum tlsframe_status st = tlsframe_handshake(s->tf);
	if (st == TLSFRAME_WANT_READ) {
		set_events(l, s, LINK_EV_READ);
		return;
	}
	if (st == TLSFRAME_WANT_WRITE) {
		set_events(l, s, LINK_EV_READ | LINK_EV_WRITE);
		return;
	}
	char buf[128];
	if (st != TLSFRAME_OK) {
		refuse(l, s, tlsframe_refusal(s->tf, buf, sizeof(buf)));
		return;
	}
	/* VERIFY_REQUIRED already failed the handshake on a bad chain; this is
	 * the belt to those braces (LIBNOTES 4) */
	if (tlsframe_verify_flags(s->tf) != 0) {
		refuse(l, s, "certificate_not_verified");
		return;
	}
	if (!peer_cn(s)) {
		refuse(l, s, "certificate_cn_invalid");
		return;
	}
	s->state = S_HELLO;
	set_events(l, s, LINK_EV_READ);
}

static void on_hello(struct link *l, struct session *s, struct ec_frame *f, uint64_t now)
{
	if (f->type != EC_F_HELLO) {
		log_warnx("AGENT-REFUSED peer=%s agent=%s reason=expected_hello", s->peer, s->cn);
		l->st.refused++;
		close_with_error(l, s, "expected hello", false);
		return;
	}
	if (strcmp(f->agent_id, s->cn) != 0) {
		log_warnx("AGENT-REFUSED peer=%s agent=%s reason=id_mismatch hello_id=%s",
			  s->peer, s->cn, f->agent_id);
		l->st.refused++;
		close_with_error(l, s, "identity: hello id does not match the certificate CN", false);
		return;
	}
	uint32_t version = 0;
	for (size_t i = 0; i < f->nversions; i++)
		if (f->versions[i] == EC_PROTO_VERSION)
			version = EC_PROTO_VERSION;
	if (!version) {
		log_warnx("AGENT-REFUSED peer=%s agent=%s reason=version", s->peer, s->cn);
		l->st.refused++;
		close_with_error(l, s, "version: the coordinator speaks protocol 1", false);
		return;
	}
	struct agent *a = agent_find(l, s->cn);
	if (a && a->s) {
		/* the old connection is a ghost the agent gave up on */
		log_info("AGENT-REPLACED agent=%s old_peer=%s new_peer=%s", a->id, a->s->peer, s->peer);
		struct session *old = a->s;
		a->s = NULL;
		close_with_error(l, old, "replaced by a newer connection", false);
	}
	if (!a) {
		a = calloc(1, sizeof(*a));
		if (!a) {
			session_close(l, s, "out of memory", false);
			return;
		}
		strcpy(a->id, s->cn);
		a->next = l->agents;
		l->agents = a;
		l->st.agents++;
	}
	a->s = s;
	a->last_seen = now;
	a->suspect = false;
	s->agent = a;
	s->state = S_LIVE;
	l->st.live++;

	struct ec_frame w;
	ec_frame_init(&w, EC_F_WELCOME);
	w.version = version;
	w.heartbeat_ms = l->cfg.heartbeat_ms;
	w.heartbeat_misses = l->cfg.heartbeat_misses;
	w.max_frame = l->cfg.max_frame;
	if (send_frame(l, s, &w) != 0 || s->state == S_DEAD)
		return;
	log_info("AGENT-UP agent=%s peer=%s slots=%u caps=%zu leases=%zu", a->id, s->peer,
		 f->slots, f->ncaps, f->nleases);
	if (l->hooks.on_up)
		l->hooks.on_up(l->hooks.ctx, a->id, f);
}

static void on_frame(struct link *l, struct session *s, struct ec_frame *f, uint64_t now)
{
	struct agent *a = s->agent;
	switch (f->type) {
	case EC_F_STARTED:
	case EC_F_PROGRESS:
	case EC_F_RESULT:
	case EC_F_HB:
	case EC_F_BYE:
		break;
	case EC_F_ERROR:
		log_warnx("AGENT-ERROR agent=%s says: %s", a->id, f->text);
		session_close(l, s, "agent sent error", true);
		return;
	default:
		log_warnx("AGENT-PROTO agent=%s reason=unexpected frame %s", a->id,
			  ec_frame_type_name(f->type));
		close_with_error(l, s, "unexpected frame type from an agent", true);
		return;
	}
	a->last_seen = now;
	if (a->suspect) {
		a->suspect = false;
		log_info("AGENT-ALIVE agent=%s", a->id);
		if (l->hooks.on_state)
			l->hooks.on_state(l->hooks.ctx, a->id, LINK_AGENT_ALIVE, "heard again");
	}
	char id[EC_AGENT_ID_MAX + 1];
	strcpy(id, a->id);  /* the hook may close the session */
	if (l->hooks.on_frame)
		l->hooks.on_frame(l->hooks.ctx, id, f);
	if (f->type == EC_F_BYE && s->state != S_DEAD)
		session_close(l, s, "bye", true);
}

/* ---- reading ------------------------------------------------------------ */

/* A frame the peer got wrong: say so, in the refusal's words before hello. */
static void bad_input(struct link *l, struct session *s, const char *what, const char *msg)
{
	if (s->state == S_HELLO) {
		log_warnx("AGENT-REFUSED peer=%s agent=%s reason=bad_hello(%s)", s->peer, s->cn,
			  what);
		l->st.refused++;
	} else {
		log_warnx("AGENT-PROTO agent=%s reason=%s", s->cn, msg);
	}
	close_with_error(l, s, msg, true);
}

static void do_read(struct link *l, struct session *s, uint64_t now)
{
	/* After a budget, stop where mbedtls holds nothing, so a flood from one
	 * agent cannot starve the others; the kernel still has the rest and the
	 * loop comes back. */
	size_t budget = 4 * ((size_t)l->cfg.max_frame + EC_FRAME_HDR);
	while (s->state == S_HELLO || s->state == S_LIVE) {
		struct tlsframe_in in;
		/* Before welcome has announced our max_frame, an agent may send
		 * up to 65536 (docs/protocol.md): a hello listing many leases
		 * must not be refused by a small one. */
		uint32_t max = s->state == S_HELLO && l->cfg.max_frame < EC_FRAME_MAX_DEFAULT
				       ? EC_FRAME_MAX_DEFAULT : l->cfg.max_frame;
		enum tlsframe_status st = tlsframe_read(s->tf, max, &budget, &in);
		char msg[160];
		switch (st) {
		case TLSFRAME_FRAME:
			l->st.frames_in++;
			if (s->state == S_HELLO)
				on_hello(l, s, &in.frame, now);
			else
				on_frame(l, s, &in.frame, now);
			ec_frame_fini(&in.frame);
			continue;
		case TLSFRAME_BAD_FRAME:
			l->st.frames_in++;
			snprintf(msg, sizeof(msg), "%s: %s",
				 in.rc == EC_EPROTO ? "unknown frame type" : "malformed frame", in.why);
			bad_input(l, s, in.why, msg);
			return;
		case TLSFRAME_BAD_LEN:
			snprintf(msg, sizeof(msg), "frame of %u bytes (max_frame %u)", in.len,
				 l->cfg.max_frame);
			bad_input(l, s, msg, msg);
			return;
		case TLSFRAME_WANT_READ:
			return;
		case TLSFRAME_WANT_WRITE:
			set_events(l, s, LINK_EV_READ | LINK_EV_WRITE);
			return;
		case TLSFRAME_EOF:
		case TLSFRAME_RESET:
			if (s->state == S_HELLO)
				refuse(l, s, "closed_before_hello");
			else
				session_close(l, s, "connection closed", true);
			return;
		case TLSFRAME_NOMEM:
			session_close(l, s, "out of memory", true);
			return;
		case TLSFRAME_OK:
		case TLSFRAME_ERROR: {
			char e[96];
			snprintf(msg, sizeof(msg), "read failed (%s)", tlsframe_error(s->tf, e, sizeof(e)));
			session_close(l, s, msg, true);
			return;
		}
		}
	}
}

/* ---- accepting ------------------------------------------------------------ */

static int by_fd_put(struct link *l, int fd, struct session *s)
{
	if ((size_t)fd >= l->nby_fd) {
		size_t n = l->nby_fd ? l->nby_fd : 64;
		while (n <= (size_t)fd)
			n *= 2;
		struct session **p = realloc(l->by_fd, n * sizeof(*p));
		if (!p)
			return -ENOMEM;
		memset(p + l->nby_fd, 0, (n - l->nby_fd) * sizeof(*p));
		l->by_fd = p;
		l->nby_fd = n;
	}
	l->by_fd[fd] = s;
	return 0;
}

static void peer_name(const struct sockaddr_storage *ss, char *buf, size_t n)
{
	char host[INET6_ADDRSTRLEN] = "?";
	int port = 0;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &in->sin6_addr, host, sizeof(host));
		port = ntohs(in->sin6_port);
	}
	snprintf(buf, n, "%s:%d", host, port);
}

static void do_accept(struct link *l, uint64_t now)
{
	for (int i = 0; i < 256; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(l->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
			    errno != ECONNABORTED)
				log_warn("link: accept");
			return;
		}
		char peer[64];
		peer_name(&ss, peer, sizeof(peer));
		if (l->st.sessions >= l->cfg.max_sessions) {
			log_warnx("AGENT-REFUSED peer=%s agent=- reason=too_many_sessions(%u)", peer,
				  l->cfg.max_sessions);
			l->st.refused++;
			close(fd);
			continue;
		}
		struct session *s = calloc(1, sizeof(*s));
		if (!s || by_fd_put(l, fd, s) != 0) {
			free(s);
			close(fd);
			continue;
		}
		s->fd = fd;
		s->t0 = now;
		s->state = S_HANDSHAKE;
		snprintf(s->peer, sizeof(s->peer), "%s", peer);
		if (tlsframe_new(l->tls, &s->tf) != 0 || tlsframe_attach(s->tf, fd, NULL) != 0) {
			l->by_fd[fd] = NULL;
			session_free(s);
			close(fd);
			log_warnx("link: out of memory for a TLS session");
			continue;
		}
		s->next = l->sessions;
		if (l->sessions)
			l->sessions->prev = s;
		l->sessions = s;
		l->st.sessions++;
		set_events(l, s, LINK_EV_READ);
		do_handshake(l, s);
	}
}

/* ---- the loop's entry points -------------------------------------------- */

void link_on_event(struct link *l, int fd, unsigned events, uint64_t now_ms)
{
	if (fd == l->lfd) {
		do_accept(l, now_ms);
		reap(l);
		return;
	}
	if (fd < 0 || (size_t)fd >= l->nby_fd || !l->by_fd[fd])
		return;
	struct session *s = l->by_fd[fd];
	if (s->state == S_HANDSHAKE)
		do_handshake(l, s);
	if (s->state != S_DEAD && tlsframe_unsent(s->tf) > 0)
		flush_out(l, s);
	if (s->state == S_HELLO || s->state == S_LIVE)
		do_read(l, s, now_ms);
	reap(l);
}

static void send_hb(struct link *l, struct session *s)
{
	struct ec_frame f;
	ec_frame_init(&f, EC_F_HB);
	send_frame(l, s, &f);
}

void link_tick(struct link *l, uint64_t now)
{
	l->last_tick = now;
	uint64_t hb = l->cfg.heartbeat_ms;
	for (struct session *s = l->sessions, *next; s; s = next) {
		next = s->next;
		if (s->state != S_LIVE && now - s->t0 >= l->cfg.handshake_timeout_ms)
			refuse(l, s, s->state == S_HANDSHAKE ? "handshake_timeout" : "no_hello_in_time");
	}
	/* a hook may drop agents (link_close_agent): walk again after each */
again:
	for (struct agent *a = l->agents; a; a = a->next) {
		uint64_t silent = now - a->last_seen;
		if (silent >= hb * l->cfg.heartbeat_misses && a->s && a->s->state == S_LIVE &&
		    a->read_at != now) {
			/* After a stall of the loop its heartbeats may wait unread
			 * (a turn takes a bounded number of ready sockets): read
			 * before calling it lost. */
			a->read_at = now;
			do_read(l, a->s, now);
			goto again;
		}
		if (silent >= hb * l->cfg.heartbeat_misses) {
			char id[EC_AGENT_ID_MAX + 1];
			strcpy(id, a->id);
			log_warnx("AGENT-LOST agent=%s silent_ms=%llu", id, (unsigned long long)silent);
			if (a->s)
				close_with_error(l, a->s, "heartbeat timeout", false);
			agent_drop(l, a);
			if (l->hooks.on_state)
				l->hooks.on_state(l->hooks.ctx, id, LINK_AGENT_OFFLINE, "heartbeat timeout");
			goto again;
		} else if (!a->suspect && silent >= 2 * hb) {
			a->suspect = true;
			log_info("AGENT-SUSPECT agent=%s silent_ms=%llu", a->id,
				 (unsigned long long)silent);
			if (l->hooks.on_state)
				l->hooks.on_state(l->hooks.ctx, a->id, LINK_AGENT_SUSPECT, "silent");
			goto again;
		}
	}
	if (now >= l->next_hb) {
		l->next_hb = now + hb;
		for (struct session *s = l->sessions, *next; s; s = next) {
			next = s->next;
			if (s->state == S_LIVE)
				send_hb(l, s);
		}
	}
	reap(l);
}

uint64_t link_next_due(const struct link *l)
{
	uint64_t t = l->last_tick + l->granularity;
	return t < l->next_hb ? t : l->next_hb;
}

/* ---- sending ------------------------------------------------------------- */

static struct session *live(struct link *l, const char *agent)
{
	struct agent *a = agent ? agent_find(l, agent) : NULL;
	return a && a->s && a->s->state == S_LIVE ? a->s : NULL;
}

int link_send_work(struct link *l, const char *agent, const struct ec_frame *work)
{
	struct session *s = live(l, agent);
	if (!s)
		return EC_EUNKNOWN_AGENT;
	if (!work || work->type != EC_F_WORK)
		return EC_EINVALID_FIELD;
	return send_frame(l, s, work);
}

int link_send_cancel(struct link *l, const char *agent, uint64_t lease, const char *reason)
{
	struct session *s = live(l, agent);
	if (!s)
		return EC_EUNKNOWN_AGENT;
	struct ec_frame f;
	ec_frame_init(&f, EC_F_CANCEL);
	f.lease = lease;
	f.text = (char *)reason;
	return send_frame(l, s, &f);
}

int link_send_drain(struct link *l, const char *agent)
{
	struct session *s = live(l, agent);
	if (!s)
		return EC_EUNKNOWN_AGENT;
	struct ec_frame f;
	ec_frame_init(&f, EC_F_DRAIN);
	return send_frame(l, s, &f);
}

int link_send_ack(struct link *l, const char *agent, uint64_t lease, bool accepted)
{
	struct session *s = live(l, agent);
	if (!s)
		return EC_EUNKNOWN_AGENT;
	struct ec_frame f;
	ec_frame_init(&f, EC_F_ACK);
	f.lease = lease;
	f.accepted = accepted;
	return send_frame(l, s, &f);
}

int link_close_agent(struct link *l, const char *agent, const char *reason)
{
	struct agent *a = agent ? agent_find(l, agent) : NULL;
	if (!a)
		return EC_EUNKNOWN_AGENT;
	if (a->s)
		close_with_error(l, a->s, reason ? reason : "closed by the coordinator", false);
	agent_drop(l, a);
	return 0;
}

void link_get_stats(const struct link *l, struct link_stats *st)
{
	*st = l->st;
}

int link_port(const struct link *l)
{
	return l->port;
}

/* ---- setup ----------------------------------------------------------------- */

static int listen_on(struct link *l)
{
	char *spec = l->listen;
	char *colon = strrchr(spec, ':');
	if (!colon) {
		log_warnx("link: listen address %s is not HOST:PORT", spec);
		return EC_ECONFIG;
	}
	char host[256];
	size_t hl = (size_t)(colon - spec);
	if (hl >= sizeof(host))
		return EC_ECONFIG;
	memcpy(host, spec, hl);
	host[hl] = '\0';
	char *h = host;
	if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
		h[hl - 1] = '\0';
		h++;
	}
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
	struct addrinfo *res;
	int rc = getaddrinfo(*h ? h : NULL, colon + 1, &hints, &res);
	if (rc) {
		log_warnx("link: listen address %s: %s", spec, gai_strerror(rc));
		return EC_ECONFIG;
	}
	int err = -EADDRNOTAVAIL;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			err = -errno;
			continue;
		}
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
			err = -errno;
			close(fd);
			continue;
		}
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		getsockname(fd, (struct sockaddr *)&ss, &sl);
		l->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
				: ((struct sockaddr_in *)&ss)->sin_port);
		l->lfd = fd;
		err = 0;
		break;
	}
	freeaddrinfo(res);
	if (err)
		log_warnx("link: cannot listen on %s: %s", spec, strerror(-err));
	return err;
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

int link_new(const struct link_config *cfg, const struct link_hooks *hooks, struct link **out)
{
	if (!cfg || !hooks || !hooks->watch || !hooks->unwatch || !cfg->listen ||
	    !cfg->ca_file || !cfg->cert_file || !cfg->key_file)
		return EC_ECONFIG;
	struct link *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->cfg = *cfg;
	l->hooks = *hooks;
	l->lfd = -1;
	if (!l->cfg.heartbeat_ms)
		l->cfg.heartbeat_ms = 1000;
	if (!l->cfg.heartbeat_misses)
		l->cfg.heartbeat_misses = 3;
	if (!l->cfg.max_frame)
		l->cfg.max_frame = EC_FRAME_MAX_DEFAULT;
	if (l->cfg.max_frame < EC_FRAME_MIN_MAX)
		l->cfg.max_frame = EC_FRAME_MIN_MAX;
	if (!l->cfg.handshake_timeout_ms)
		l->cfg.handshake_timeout_ms = 5000;
	if (!l->cfg.max_sessions)
		l->cfg.max_sessions = 1024;
	if (!l->cfg.out_cap)
		l->cfg.out_cap = 4 * ((size_t)l->cfg.max_frame + EC_FRAME_HDR);
	uint32_t g = l->cfg.heartbeat_ms / 4;
	l->granularity = g < 10 ? 10 : g > 250 ? 250 : g;
	l->listen = dup_or_null(cfg->listen);
	l->ca_file = dup_or_null(cfg->ca_file);
	l->cert_file = dup_or_null(cfg->cert_file);
	l->key_file = dup_or_null(cfg->key_file);
	l->cfg.listen = l->listen;
	l->cfg.ca_file = l->ca_file;
	l->cfg.cert_file = l->cert_file;
	l->cfg.key_file = l->key_file;
	int rc = -ENOMEM;
	if (!l->listen || !l->ca_file || !l->cert_file || !l->key_file)
		goto fail;

	char e[256];
	rc = tlsframe_conf_new(TLSFRAME_SERVER, "edgecoord-link", l->ca_file, l->cert_file,
			       l->key_file, &l->tls, e, sizeof(e));
	if (rc == EC_ECONFIG)
		log_warnx("link: %s", e);
	if (rc)
		goto fail;
	rc = listen_on(l);
	if (rc)
		goto fail;
	rc = l->hooks.watch(l->hooks.ctx, l->lfd, LINK_EV_READ);
	if (rc)
		goto fail;
	log_info("link: listening on %s (port %d)", l->listen, l->port);
	*out = l;
	return 0;
fail:
	link_free(l);
	return rc;
}

void link_free(struct link *l)
{
	if (!l)
		return;
	while (l->sessions) {
		struct session *s = l->sessions;
		s->agent = NULL;
		session_close(l, s, "shutting down", false);
	}
	reap(l);
	while (l->agents) {
		struct agent *a = l->agents;
		l->agents = a->next;
		free(a);
	}
	if (l->lfd >= 0) {
		l->hooks.unwatch(l->hooks.ctx, l->lfd);
		close(l->lfd);
	}
	free(l->by_fd);
	tlsframe_conf_free(l->tls);
	free(l->listen);
	free(l->ca_file);
	free(l->cert_file);
	free(l->key_file);
	free(l);
}
