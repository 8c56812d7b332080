/* SPDX-License-Identifier: MIT */
/*
 * agent.c - the agent library (include/edgecoord/agent.h): mTLS client,
 * framing with the shared codec, handler registry, jobs and their leases,
 * heartbeats, reconnect with exponential backoff and jitter.
 *
 * One connection at a time, a small state machine driven by ec_agent_step():
 * IDLE (waiting out the backoff) -> RESOLVING (the coordinator's name is
 * looked up) -> CONNECTING (non-blocking connect, to each address in turn)
 * -> HANDSHAKE -> HELLO (hello sent, waiting for welcome) -> READY. Any
 * error goes back to IDLE. Jobs live across connections: a reconnect lists
 * their leases in hello and resends results not yet acknowledged.
 *
 * Nothing here blocks the caller's loop. A coordinator given by name is
 * looked up with src/resolve.c, on a glibc helper thread (getaddrinfo_a)
 * polled from the steps; an address is used at once. TLS and the
 * byte-level framing are src/tlsframe.c's, shared with the coordinator;
 * this file does not include mbedtls.
 *
 * Does not: spawn processes or threads of its own, or interpret payloads
 * (handlers do).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "edgecoord/agent.h"
#include "edgecoord/err.h"
#include "resolve.h"
#include "tlsframe.h"

enum astate { A_IDLE, A_RESOLVING, A_CONNECTING, A_HANDSHAKE, A_HELLO, A_READY, A_STOPPED };

struct handler {
	char type[EC_TYPE_MAX + 1];
	ec_handler_fn fn;
	void *arg;
};

struct job {
	uint64_t lease;
	char *task_id;
	bool done;
	uint8_t *frame;       /* the encoded result, kept until acknowledged */
	size_t frame_len;
};

struct ec_agent {
	struct ec_agent_opts o;
	char *host, *port, *server_name, *id, *ca_file, *cert_file, *key_file;
	struct ec_label *labels;
	size_t nlabels;
	struct handler *handlers;
	size_t nhandlers;
	struct job *jobs;      /* running, and finished until acknowledged */
	size_t njobs, capjobs;

	struct tlsframe_conf *tls;
	struct tlsframe *tf;   /* one context, reused across reconnects */
	struct resolve *rs;    /* the coordinator's host and port */
	struct addrinfo *ai;   /* the attempt's addresses, until TCP is up */
	struct addrinfo *ai_at, *ai_next; /* the one connecting; the next to try */

	enum astate state;
	int fd;
	unsigned events;
	bool reading;          /* in do_read(): frames are flushed after it */
	uint64_t now, next_connect, conn_start, last_rx, next_hb;
	uint64_t addr_due;     /* the connecting address is given up, 0 = never */
	uint32_t failures;
	uint32_t hb_ms, hb_misses, max_frame;
	bool draining;
};

static void alog(struct ec_agent *a, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void alog(struct ec_agent *a, int level, const char *fmt, ...)
{
	if (!a->o.log)
		return;
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	a->o.log(a->o.ctx, level, buf);
}

uint64_t ec_agent_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- connection lifecycle ---------------------------------------------- */

static void disconnect(struct ec_agent *a, const char *why)
{
	if (a->state == A_IDLE)
		return;  /* already down: one failure, one backoff step */
	bool was_ready = a->state == A_READY;
	if (a->fd >= 0) {
		if (a->state >= A_HELLO)
			tlsframe_close_notify(a->tf);
		close(a->fd);
	}
	a->fd = -1;
	a->events = 0;
	tlsframe_drop(a->tf);
	/* a lookup that cannot be cancelled is waited for by the next start */
	resolve_cancel(a->rs);
	if (a->ai)
		freeaddrinfo(a->ai);
	a->ai = a->ai_at = a->ai_next = NULL;
	if (a->state == A_STOPPED)
		return;
	/* exponential backoff with jitter: uniform in [d/2, d] */
	uint64_t d = a->o.backoff_min_ms;
	for (uint32_t i = 0; i < a->failures && d < a->o.backoff_max_ms; i++)
		d *= 2;
	if (d > a->o.backoff_max_ms)
		d = a->o.backoff_max_ms;
	d = d / 2 + tlsframe_random_u32(a->tls) % (d / 2 + 1);
	a->failures++;
	a->next_connect = a->now + d;
	a->state = A_IDLE;
	alog(a, EC_AGENT_LOG_WARN, "disconnected: %s; reconnecting in %llu ms", why,
	     (unsigned long long)d);
	if (was_ready && a->o.on_state)
		a->o.on_state(a->o.ctx, a, false, why);
}

/* "[::1]:7000": the address an attempt failed on, for the log. */
static const char *addr_text(const struct addrinfo *ai, char *buf, size_t n)
{
	char h[64], p[8];
	if (getnameinfo(ai->ai_addr, ai->ai_addrlen, h, sizeof(h), p, sizeof(p),
			NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		snprintf(buf, n, "an address");
	else
		snprintf(buf, n, ai->ai_family == AF_INET6 ? "[%s]:%s" : "%s:%s", h, p);
	return buf;
}

/* Start a non-blocking connect to the attempt's next address. A name often
 * has several (::1 and 127.0.0.1 for localhost) and the first may refuse:
 * only when none is left has the attempt failed. One that does not answer
 * at all (a firewall dropping IPv6, say) would take the whole budget and,
 * tried first again after the backoff, keep the agent out for good: each
 * address but the last gets an even share of what is left of the budget. */
static void try_next_address(struct ec_agent *a, const char *why)
{
	while (a->ai_next) {
		struct addrinfo *ai = a->ai_next;
		a->ai_next = ai->ai_next;
		int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			why = strerror(errno);
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
			char at[80];
			why = strerror(errno);
			alog(a, EC_AGENT_LOG_DEBUG, "connect to %s: %s", addr_text(ai, at, sizeof(at)),
			     why);
			close(fd);
			continue;
		}
		a->ai_at = ai;
		a->fd = fd;
		a->state = A_CONNECTING;
		a->events = EC_AGENT_EV_WRITE;
		uint64_t end = a->conn_start + a->o.connect_timeout_ms, left = 1;
		for (const struct addrinfo *n = ai->ai_next; n; n = n->ai_next)
			left++;
		a->addr_due = left > 1 && end > a->now ? a->now + (end - a->now) / left : 0;
		return;
	}
	alog(a, EC_AGENT_LOG_WARN, "connect to %s:%s: %s", a->host, a->port, why);
	disconnect(a, "connect failed");
}

static void resolved(struct ec_agent *a, struct addrinfo *ai)
{
	a->ai = a->ai_next = ai;
	try_next_address(a, "no address");
}

/* An address connects now; a name is looked up first, polled by the steps
 * that follow (ec_agent_next_due() asks for them). */
static void start_connect(struct ec_agent *a)
{
	struct addrinfo *ai;
	a->conn_start = a->now;
	a->state = A_RESOLVING;
	switch (resolve_start(a->rs, &ai)) {
	case RESOLVE_DONE:
		resolved(a, ai);
		return;
	case RESOLVE_PENDING:
		return;
	case RESOLVE_FAILED:
		alog(a, EC_AGENT_LOG_WARN, "resolve %s: %s", a->host, resolve_error(a->rs));
		disconnect(a, "cannot resolve");
		return;
	}
}

/* The TCP connect in progress ended: TLS on it, or the next address. */
static void tcp_done(struct ec_agent *a)
{
	int err = 0;
	socklen_t el = sizeof(err);
	if (getsockopt(a->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
		err = errno;
	if (err) {
		char at[80];
		alog(a, EC_AGENT_LOG_DEBUG, "connect to %s: %s", addr_text(a->ai_at, at, sizeof(at)),
		     strerror(err));
		close(a->fd);
		a->fd = -1;
		a->events = 0;
		try_next_address(a, strerror(err));
		return;
	}
	freeaddrinfo(a->ai);
	a->ai = a->ai_at = a->ai_next = NULL;
	/* the name is what makes mbedtls check the server's certificate */
	if (tlsframe_attach(a->tf, a->fd, a->server_name) != 0) {
		disconnect(a, "out of memory");
		return;
	}
	a->state = A_HANDSHAKE;
}

/* ---- writing ------------------------------------------------------------- */

static void flush_out(struct ec_agent *a)
{
	enum tlsframe_status st = tlsframe_flush(a->tf);
	if (st == TLSFRAME_WANT_WRITE) {
		a->events = EC_AGENT_EV_READ | EC_AGENT_EV_WRITE;
		return;
	}
	if (st != TLSFRAME_OK) {
		char e[96];
		alog(a, EC_AGENT_LOG_WARN, "write: %s", tlsframe_error(a->tf, e, sizeof(e)));
		disconnect(a, "write failed");
		return;
	}
	a->events = EC_AGENT_EV_READ;
}

/* generous: the agent only sends what its own jobs produce */
static size_t out_cap(const struct ec_agent *a)
{
	return 16 * ((size_t)a->max_frame + EC_FRAME_HDR);
}

/* Queue bytes; flushed by the caller or the next step. */
static int queue(struct ec_agent *a, const uint8_t *p, size_t n)
{
	return tlsframe_queue(a->tf, p, n, out_cap(a));
}

/* Inside do_read() the handlers' frames wait for the end of the read, so
 * that a batch of work answered at once leaves in one TLS record. */
static void flush_soon(struct ec_agent *a)
{
	if (!a->reading)
		flush_out(a);
}

static int send_frame(struct ec_agent *a, const struct ec_frame *f)
{
	int rc = tlsframe_queue_frame(a->tf, f, a->max_frame, out_cap(a));
	if (rc == 0)
		flush_soon(a);
	return rc;
}

static void send_error(struct ec_agent *a, const char *why)
{
	struct ec_frame f;
	ec_frame_init(&f, EC_F_ERROR);
	f.text = (char *)why;
	send_frame(a, &f);
	disconnect(a, why);
}

/* ---- jobs ----------------------------------------------------------------- */

static struct job *job_find(struct ec_agent *a, uint64_t lease)
{
	for (size_t i = 0; i < a->njobs; i++)
		if (a->jobs[i].lease == lease)
			return &a->jobs[i];
	return NULL;
}

static void job_drop(struct ec_agent *a, struct job *j)
{
	free(j->task_id);
	free(j->frame);
	*j = a->jobs[--a->njobs];
}

size_t ec_agent_running(const struct ec_agent *a)
{
	size_t n = 0;
	for (size_t i = 0; i < a->njobs; i++)
		n += !a->jobs[i].done;
	return n;
}

static void send_hello(struct ec_agent *a)
{
	struct ec_frame f;
	ec_frame_init(&f, EC_F_HELLO);
	/* A new session: until its welcome says otherwise we may send up to
	 * the protocol's default, whatever the last coordinator announced
	 * (a hello listing many leases would not fit a small one). */
	a->max_frame = EC_FRAME_MAX_DEFAULT;
	f.agent_id = a->id;
	f.versions[0] = EC_PROTO_VERSION;
	f.nversions = 1;
	char *caps[EC_MAX_CAPS];
	for (size_t i = 0; i < a->nhandlers; i++)
		caps[i] = a->handlers[i].type;
	f.caps = caps;
	f.ncaps = a->nhandlers;
	f.slots = a->o.slots;
	f.labels = a->labels;
	f.nlabels = a->nlabels;
	/* Running jobs first (slots <= EC_MAX_LEASES: all of them), then
	 * finished ones as room allows: those whose lease is left out are
	 * resent after welcome anyway, and discarded if the task moved. */
	uint64_t leases[EC_MAX_LEASES];
	for (int done = 0; done <= 1; done++)
		for (size_t i = 0; i < a->njobs && f.nleases < EC_MAX_LEASES; i++)
			if (a->jobs[i].done == done)
				leases[f.nleases++] = a->jobs[i].lease;
	f.leases = leases;
	int rc = send_frame(a, &f);
	if (rc) {
		alog(a, EC_AGENT_LOG_ERROR, "cannot send hello: %s", ec_strerror(rc));
		disconnect(a, "hello failed");
	}
}

static void send_hb(struct ec_agent *a)
{
	struct ec_frame f;
	ec_frame_init(&f, EC_F_HB);
	uint64_t leases[EC_MAX_LEASES];
	for (size_t i = 0; i < a->njobs; i++)
		if (!a->jobs[i].done)
			leases[f.nleases++] = a->jobs[i].lease;
	f.leases = leases;
	send_frame(a, &f);
}

static void on_work(struct ec_agent *a, struct ec_frame *f)
{
	if (job_find(a, f->lease))
		return;  /* a duplicate: we already run it */
	const struct handler *h = NULL;
	for (size_t i = 0; i < a->nhandlers; i++)
		if (strcmp(a->handlers[i].type, f->task_type) == 0)
			h = &a->handlers[i];
	const char *refuse = NULL;
	if (a->draining) {
		/* The coordinator sends no work to a draining agent, and the
		 * protocol has no "undrain" frame: work after a drain means an
		 * operator undrained us. Refusing it would burn the task's
		 * attempts (it would be sent here again at once). */
		alog(a, EC_AGENT_LOG_INFO, "work again: drain lifted by the coordinator");
		a->draining = false;
	}
	if (!h)
		refuse = "no handler for this type";
	else if (ec_agent_running(a) >= a->o.slots)
		refuse = "no free slot";
	/* Finished jobs wait for their ack (held until the coordinator's commit
	 * is durable) while new work comes: the table grows with them. */
	if (a->njobs == a->capjobs) {
		size_t cap = a->capjobs ? a->capjobs * 2 : 16;
		struct job *p = realloc(a->jobs, cap * sizeof(*p));
		if (!p) {
			alog(a, EC_AGENT_LOG_ERROR, "out of memory for task %s", f->task_id);
			return; /* unanswered: it moves when we reconnect */
		}
		a->jobs = p;
		a->capjobs = cap;
	}
	struct job *j = &a->jobs[a->njobs];
	*j = (struct job){.lease = f->lease, .task_id = strdup(f->task_id)};
	if (!j->task_id)
		return;
	a->njobs++;
	if (refuse) {
		alog(a, EC_AGENT_LOG_WARN, "refusing task %s: %s", f->task_id, refuse);
		ec_agent_fail(a, f->lease, refuse);
		return;
	}
	struct ec_job job = {
		.task_id = f->task_id, .attempt = f->attempt, .lease = f->lease,
		.type = f->task_type, .payload = f->payload, .payload_len = f->payload_len,
		.inputs = f->inputs, .inputs_len = f->inputs_len, .timeout_ms = f->timeout_ms,
	};
	h->fn(a, &job, h->arg);
}

static void on_frame(struct ec_agent *a, struct ec_frame *f)
{
	a->last_rx = a->now;
	if (a->state == A_HELLO) {
		if (f->type == EC_F_ERROR) {
			alog(a, EC_AGENT_LOG_ERROR, "coordinator refused us: %s", f->text);
			disconnect(a, "refused by the coordinator");
			return;
		}
		if (f->type != EC_F_WELCOME || f->version != EC_PROTO_VERSION) {
			send_error(a, "expected welcome with version 1");
			return;
		}
		a->hb_ms = f->heartbeat_ms;
		a->hb_misses = f->heartbeat_misses ? f->heartbeat_misses : 3;
		if (f->max_frame)
			a->max_frame = f->max_frame;
		a->state = A_READY;
		a->failures = 0;
		a->next_hb = a->now + a->hb_ms;
		alog(a, EC_AGENT_LOG_INFO, "connected: heartbeat %u ms", a->hb_ms);
		/* results the last connection may have lost */
		for (size_t i = 0; i < a->njobs && a->state == A_READY; i++)
			if (a->jobs[i].done && queue(a, a->jobs[i].frame, a->jobs[i].frame_len) == 0)
				flush_out(a);
		if (a->state == A_READY && a->o.on_state)
			a->o.on_state(a->o.ctx, a, true, "welcome");
		return;
	}
	switch (f->type) {
	case EC_F_WORK:
		on_work(a, f);
		break;
	case EC_F_HB:
		break;
	case EC_F_ACK: {
		struct job *j = job_find(a, f->lease);
		if (j && j->done)
			job_drop(a, j);
		if (a->o.on_ack)
			a->o.on_ack(a->o.ctx, a, f->lease, f->accepted);
		break;
	}
	case EC_F_CANCEL:
		if (job_find(a, f->lease) && a->o.on_cancel)
			a->o.on_cancel(a->o.ctx, a, f->lease, f->text ? f->text : "");
		break;
	case EC_F_DRAIN:
		a->draining = true;
		if (a->o.on_drain)
			a->o.on_drain(a->o.ctx, a);
		break;
	case EC_F_BYE:
		disconnect(a, "coordinator said bye");
		break;
	case EC_F_ERROR:
		alog(a, EC_AGENT_LOG_ERROR, "coordinator closes: %s", f->text);
		disconnect(a, "error from the coordinator");
		break;
	default:
		send_error(a, "unexpected frame type from a coordinator");
		break;
	}
}

/* ---- reading ---------------------------------------------------------------- */

static void do_read(struct ec_agent *a)
{
	while (a->state == A_HELLO || a->state == A_READY) {
		/* accept up to our default even before welcome announces more */
		uint32_t max = a->max_frame > EC_FRAME_MAX_DEFAULT ? a->max_frame
			: EC_FRAME_MAX_DEFAULT;
		struct tlsframe_in in;
		char msg[128];
		switch (tlsframe_read(a->tf, max, NULL, &in)) {
		case TLSFRAME_FRAME:
			on_frame(a, &in.frame);
			ec_frame_fini(&in.frame);
			continue;
		case TLSFRAME_BAD_FRAME:
			snprintf(msg, sizeof(msg), "malformed frame: %s", in.why);
			alog(a, EC_AGENT_LOG_ERROR, "%s", msg);
			send_error(a, msg);
			return;
		case TLSFRAME_BAD_LEN:
			send_error(a, "frame too large");
			return;
		case TLSFRAME_WANT_READ:
		case TLSFRAME_WANT_WRITE:
			return;
		case TLSFRAME_EOF:
			disconnect(a, "closed by the coordinator");
			return;
		case TLSFRAME_NOMEM:
			disconnect(a, "out of memory");
			return;
		case TLSFRAME_OK:
		case TLSFRAME_RESET:
		case TLSFRAME_ERROR:
			disconnect(a, "read failed");
			return;
		}
	}
}

/* ---- the step ------------------------------------------------------------------ */

int ec_agent_step(struct ec_agent *a, uint64_t now)
{
	a->now = now;
	if (a->state == A_STOPPED)
		return 0;
	if (a->state == A_IDLE) {
		if (now < a->next_connect)
			return 0;
		start_connect(a);
		/* a name lookup has started (polled from the next step on), or
		 * the attempt failed at once */
		if (a->state != A_CONNECTING)
			return 0;
	}
	/* one budget for the lookup, TCP, TLS and welcome together */
	if (a->state != A_READY && now - a->conn_start >= a->o.connect_timeout_ms) {
		if (a->state == A_RESOLVING)
			alog(a, EC_AGENT_LOG_WARN, "resolve %s: no answer in %u ms", a->host,
			     a->o.connect_timeout_ms);
		disconnect(a, a->state == A_RESOLVING ? "name lookup timed out" : "connect timeout");
		return 0;
	}
	if (a->state == A_RESOLVING) {
		struct addrinfo *ai;
		switch (resolve_poll(a->rs, &ai)) {
		case RESOLVE_PENDING:
			return 0;
		case RESOLVE_FAILED:
			alog(a, EC_AGENT_LOG_WARN, "resolve %s: %s", a->host, resolve_error(a->rs));
			disconnect(a, "cannot resolve");
			return 0;
		case RESOLVE_DONE:
			resolved(a, ai);
			if (a->state != A_CONNECTING)
				return 0;
			break;
		}
	}
	while (a->state == A_CONNECTING) {
		struct pollfd p = {.fd = a->fd, .events = POLLOUT};
		if (poll(&p, 1, 0) <= 0) {
			if (!a->addr_due || now < a->addr_due)
				return 0;
			char at[80];
			alog(a, EC_AGENT_LOG_DEBUG, "connect to %s: no answer",
			     addr_text(a->ai_at, at, sizeof(at)));
			close(a->fd);
			a->fd = -1;
			a->events = 0;
			try_next_address(a, "no answer");
			continue;
		}
		tcp_done(a);  /* on a refusal, the next address is connecting */
	}
	if (a->state == A_HANDSHAKE) {
		enum tlsframe_status st = tlsframe_handshake(a->tf);
		if (st == TLSFRAME_WANT_READ) {
			a->events = EC_AGENT_EV_READ;
			return 0;
		}
		if (st == TLSFRAME_WANT_WRITE) {
			a->events = EC_AGENT_EV_READ | EC_AGENT_EV_WRITE;
			return 0;
		}
		if (st != TLSFRAME_OK) {
			char e[96];
			alog(a, EC_AGENT_LOG_WARN, "TLS handshake: %s (verify flags 0x%x)",
			     tlsframe_error(a->tf, e, sizeof(e)), (unsigned)tlsframe_verify_flags(a->tf));
			disconnect(a, "TLS handshake failed");
			return 0;
		}
		a->state = A_HELLO;
		a->last_rx = now;
		a->events = EC_AGENT_EV_READ;
		send_hello(a);
	}
	if (a->state == A_HELLO || a->state == A_READY) {
		if (tlsframe_unsent(a->tf) > 0)
			flush_out(a);
		a->reading = true;
		do_read(a);
		a->reading = false;
		if ((a->state == A_HELLO || a->state == A_READY) && tlsframe_unsent(a->tf) > 0)
			flush_out(a);
	}
	if (a->state == A_READY) {
		if (now - a->last_rx >= (uint64_t)a->hb_ms * (a->hb_misses + 1)) {
			disconnect(a, "coordinator silent");
			return 0;
		}
		if (now >= a->next_hb) {
			a->next_hb = now + a->hb_ms;
			send_hb(a);
		}
	}
	return 0;
}

uint64_t ec_agent_next_due(const struct ec_agent *a)
{
	switch (a->state) {
	case A_IDLE:
		return a->next_connect;
	case A_RESOLVING: {
		/* the lookup has no fd to wait on: poll it */
		uint64_t poll_at = a->now + RESOLVE_POLL_MS;
		uint64_t give_up = a->conn_start + a->o.connect_timeout_ms;
		return poll_at < give_up ? poll_at : give_up;
	}
	case A_READY: {
		uint64_t dead = a->last_rx + (uint64_t)a->hb_ms * (a->hb_misses + 1);
		return a->next_hb < dead ? a->next_hb : dead;
	}
	case A_STOPPED:
		return UINT64_MAX;
	case A_CONNECTING: /* an address given up before the budget ends */
		return a->addr_due ? a->addr_due : a->conn_start + a->o.connect_timeout_ms;
	default:
		return a->conn_start + a->o.connect_timeout_ms;
	}
}

int ec_agent_fd(const struct ec_agent *a)
{
	return a->fd >= 0 ? a->fd : -1;
}

unsigned ec_agent_events(const struct ec_agent *a)
{
	return a->fd >= 0 ? a->events : 0;
}

bool ec_agent_connected(const struct ec_agent *a)
{
	return a->state == A_READY;
}

int ec_agent_poll(struct ec_agent *a, int timeout_ms)
{
	uint64_t now = ec_agent_now_ms(), due = ec_agent_next_due(a);
	if (due <= now)
		timeout_ms = 0;
	else if (timeout_ms < 0 || due - now < (uint64_t)timeout_ms)
		timeout_ms = due - now > 60000 ? 60000 : (int)(due - now);
	struct pollfd p = {.fd = ec_agent_fd(a), .events = 0};
	unsigned ev = ec_agent_events(a);
	if (ev & EC_AGENT_EV_READ)
		p.events |= POLLIN;
	if (ev & EC_AGENT_EV_WRITE)
		p.events |= POLLOUT;
	if (poll(&p, 1, timeout_ms) < 0 && errno != EINTR)
		return -errno;
	return ec_agent_step(a, ec_agent_now_ms());
}

/* ---- reporting -------------------------------------------------------------------- */

int ec_agent_started(struct ec_agent *a, uint64_t lease)
{
	struct job *j = job_find(a, lease);
	if (!j || j->done)
		return EC_ENOTFOUND;
	if (a->state != A_READY)
		return 0;  /* progress is best effort */
	struct ec_frame f;
	ec_frame_init(&f, EC_F_STARTED);
	f.lease = lease;
	return send_frame(a, &f);
}

int ec_agent_progress(struct ec_agent *a, uint64_t lease, int percent, const char *msg)
{
	struct job *j = job_find(a, lease);
	if (!j || j->done)
		return EC_ENOTFOUND;
	if (a->state != A_READY)
		return 0;
	struct ec_frame f;
	ec_frame_init(&f, EC_F_PROGRESS);
	f.lease = lease;
	f.percent = percent < 0 ? -1 : percent > 100 ? 100 : percent;
	f.text = (char *)msg;
	return send_frame(a, &f);
}

static int finish(struct ec_agent *a, struct ec_frame *f)
{
	struct job *j = job_find(a, f->lease);
	if (!j || j->done)
		return EC_ENOTFOUND;
	f->task_id = j->task_id;
	int rc = ec_frame_encode(f, a->max_frame, &j->frame, &j->frame_len);
	if (rc)
		return rc;
	j->done = true;
	if (a->state == A_READY && queue(a, j->frame, j->frame_len) == 0)
		flush_soon(a);
	return 0;
}

int ec_agent_result(struct ec_agent *a, uint64_t lease, const uint8_t *result, size_t len)
{
	struct ec_frame f;
	ec_frame_init(&f, EC_F_RESULT);
	f.lease = lease;
	f.ok = true;
	f.result = (uint8_t *)result;
	f.result_len = result ? len : 0;
	int rc = finish(a, &f);
	if (rc == EC_EINVALID_FIELD || rc == EC_ETOO_LARGE) {
		/* the job must end either way: report why its result could not go */
		int frc = ec_agent_fail(a, lease, rc == EC_ETOO_LARGE ? "result too large"
					: "result is not one well-formed CBOR item");
		return frc ? frc : rc;
	}
	return rc;
}

int ec_agent_fail(struct ec_agent *a, uint64_t lease, const char *error)
{
	char text[EC_TEXT_MAX + 1];
	snprintf(text, sizeof(text), "%s", error && *error ? error : "failed");
	/* cut at a character boundary, so the text stays valid UTF-8 */
	size_t n = strlen(text);
	if (n == EC_TEXT_MAX)
		while (n > 0 && ((uint8_t)text[n - 1] & 0xc0) == 0x80)
			text[--n] = '\0';
	if (n > 0 && ((uint8_t)text[n - 1] & 0x80) && n == EC_TEXT_MAX)
		text[--n] = '\0';
	struct ec_frame f;
	ec_frame_init(&f, EC_F_RESULT);
	f.lease = lease;
	f.ok = false;
	f.text = text;
	int rc = finish(a, &f);
	if (rc == EC_EINVALID_FIELD) {
		f.text = "failed (error text was not valid UTF-8)";
		rc = finish(a, &f);
	}
	return rc;
}

void ec_agent_stop(struct ec_agent *a, const char *reason)
{
	if (a->state == A_READY) {
		struct ec_frame f;
		ec_frame_init(&f, EC_F_BYE);
		f.text = (char *)reason;
		send_frame(a, &f);
	}
	a->state = A_STOPPED;
	disconnect(a, reason ? reason : "stopped");
}

/* ---- setup ---------------------------------------------------------------------- */

int ec_agent_handle(struct ec_agent *a, const char *type, ec_handler_fn fn, void *arg)
{
	if (!type || !fn || !ec_id_valid(type, strlen(type), EC_TYPE_MAX))
		return EC_EINVALID_FIELD;
	for (size_t i = 0; i < a->nhandlers; i++)
		if (strcmp(a->handlers[i].type, type) == 0) {
			a->handlers[i].fn = fn;
			a->handlers[i].arg = arg;
			return 0;
		}
	if (a->nhandlers >= EC_MAX_CAPS)
		return EC_ETOO_LARGE;
	struct handler *h = realloc(a->handlers, (a->nhandlers + 1) * sizeof(*h));
	if (!h)
		return -ENOMEM;
	a->handlers = h;
	strcpy(h[a->nhandlers].type, type);
	h[a->nhandlers].fn = fn;
	h[a->nhandlers].arg = arg;
	a->nhandlers++;
	return 0;
}

static int split_hostport(struct ec_agent *a, const char *spec)
{
	const char *colon = strrchr(spec, ':');
	if (!colon || colon == spec || !colon[1])
		return EC_ECONFIG;
	size_t hl = (size_t)(colon - spec);
	if (spec[0] == '[' && spec[hl - 1] == ']')
		a->host = strndup(spec + 1, hl - 2);
	else
		a->host = strndup(spec, hl);
	a->port = strdup(colon + 1);
	return a->host && a->port ? 0 : -ENOMEM;
}

int ec_agent_new(const struct ec_agent_opts *o, struct ec_agent **out)
{
	if (!o || !o->coordinator || !o->id || !o->ca_file || !o->cert_file || !o->key_file ||
	    !ec_id_valid(o->id, strlen(o->id), EC_AGENT_ID_MAX) || o->slots > EC_MAX_LEASES ||
	    o->nlabels > EC_MAX_LABELS)
		return EC_ECONFIG;
	struct ec_agent *a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->o = *o;
	a->fd = -1;
	a->state = A_IDLE;
	a->max_frame = EC_FRAME_MAX_DEFAULT;
	a->hb_ms = 1000;
	a->hb_misses = 3;
	if (!a->o.slots)
		a->o.slots = 1;
	if (!a->o.backoff_min_ms)
		a->o.backoff_min_ms = 250;
	if (!a->o.backoff_max_ms)
		a->o.backoff_max_ms = 30000;
	if (a->o.backoff_max_ms < a->o.backoff_min_ms)
		a->o.backoff_max_ms = a->o.backoff_min_ms;
	if (!a->o.connect_timeout_ms)
		a->o.connect_timeout_ms = 10000;
	int rc = split_hostport(a, o->coordinator);
	if (rc)
		goto fail;
	if ((rc = resolve_new(a->host, a->port, &a->rs)) != 0)
		goto fail;
	rc = -ENOMEM;
	a->server_name = strdup(o->server_name ? o->server_name : a->host);
	a->id = strdup(o->id);
	a->ca_file = strdup(o->ca_file);
	a->cert_file = strdup(o->cert_file);
	a->key_file = strdup(o->key_file);
	if (!a->server_name || !a->id || !a->ca_file || !a->cert_file || !a->key_file)
		goto fail;
	if (o->nlabels) {
		a->labels = calloc(o->nlabels, sizeof(*a->labels));
		if (!a->labels)
			goto fail;
		for (size_t i = 0; i < o->nlabels; i++, a->nlabels++) {
			a->labels[i].key = strdup(o->labels[i].key);
			a->labels[i].value = strdup(o->labels[i].value);
			if (!a->labels[i].key || !a->labels[i].value) {
				a->nlabels++;
				goto fail;
			}
		}
	}

	char e[256];
	rc = tlsframe_conf_new(TLSFRAME_CLIENT, "edgecoord-agent", a->ca_file, a->cert_file,
			       a->key_file, &a->tls, e, sizeof(e));
	if (rc == EC_ECONFIG)
		alog(a, EC_AGENT_LOG_ERROR, "%s", e);
	if (rc)
		goto fail;
	rc = tlsframe_new(a->tls, &a->tf);
	if (rc) {
		alog(a, EC_AGENT_LOG_ERROR, "TLS context: %s", ec_strerror(rc));
		rc = EC_ECONFIG;
		goto fail;
	}
	*out = a;
	return 0;
fail:
	ec_agent_free(a);
	return rc;
}

void ec_agent_free(struct ec_agent *a)
{
	if (!a)
		return;
	a->state = A_STOPPED;
	if (a->fd >= 0)
		close(a->fd);
	if (a->ai)
		freeaddrinfo(a->ai);
	/* a lookup in progress is cancelled, or left to finish and reclaimed */
	resolve_free(a->rs);
	tlsframe_free(a->tf);
	for (size_t i = 0; i < a->njobs; i++) {
		free(a->jobs[i].task_id);
		free(a->jobs[i].frame);
	}
	free(a->jobs);
	free(a->handlers);
	for (size_t i = 0; i < a->nlabels; i++) {
		free(a->labels[i].key);
		free(a->labels[i].value);
	}
	free(a->labels);
	tlsframe_conf_free(a->tls);
	free(a->host);
	free(a->port);
	free(a->server_name);
	free(a->id);
	free(a->ca_file);
	free(a->cert_file);
	free(a->key_file);
	free(a);
}
