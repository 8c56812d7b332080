/* SPDX-License-Identifier: MIT */
/*
 * link.c - the coordinator's TLS listener and agent sessions (link.h).
 *
 * Owns: the listening socket, one mbedtls server context per connection,
 * reading 4-byte-length-prefixed frames into a buffer no larger than
 * max_frame, decoding them with the one codec (proto.c), the hello/welcome
 * exchange with the certificate-CN identity check, bounded outbound buffers,
 * and liveness (suspect, offline) per agent id across reconnects.
 * The only file of the daemon that includes mbedtls.
 *
 * Does not: decide anything about tasks or leases (the daemon does, through
 * the hooks), or block: every socket is non-blocking, the loop is the
 * caller's and level-triggered.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "edgecoord/err.h"
#include "link.h"
#include "log.h"

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
	mbedtls_ssl_context ssl;
	/* inbound: header, then a body of exactly the announced length */
	uint8_t hdr[EC_FRAME_HDR];
	size_t hdr_got;
	uint8_t *body;
	size_t body_len, body_got;
	/* outbound: [out_off, out_len) unsent; wpend = length of a write that
	 * returned WANT_WRITE, which must be repeated as is (LIBNOTES 4) */
	uint8_t *out;
	size_t out_len, out_off, out_alloc, wpend;
	struct session *next, *prev;   /* l->sessions or l->dead */
};

struct agent {
	char id[EC_AGENT_ID_MAX + 1];
	struct session *s;             /* NULL while down */
	uint64_t last_seen;
	bool suspect;
	struct agent *next;
};

struct link {
	struct link_config cfg;
	struct link_hooks hooks;
	char *listen, *ca_file, *cert_file, *key_file;
	int lfd, port;
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_x509_crt ca, cert;
	mbedtls_pk_context key;
	mbedtls_ssl_config conf;
	struct session *sessions, *dead;
	struct session **by_fd;        /* fd -> session */
	size_t nby_fd;
	struct agent *agents;
	uint64_t last_tick, next_hb;
	uint32_t granularity;
	struct link_stats st;
};

/* ---- small helpers ----------------------------------------------------- */

static const char *tls_err(int rc, char *buf, size_t n)
{
	mbedtls_strerror(rc, buf, n);
	return buf;
}

/* send/recv with MSG_NOSIGNAL: a peer that vanished must not SIGPIPE us. */
static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
	int fd = *(int *)ctx;
	ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
	if (n >= 0)
		return (int)n;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
		return MBEDTLS_ERR_SSL_WANT_WRITE;
	if (errno == EPIPE || errno == ECONNRESET)
		return MBEDTLS_ERR_NET_CONN_RESET;
	return MBEDTLS_ERR_NET_SEND_FAILED;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
	int fd = *(int *)ctx;
	ssize_t n = recv(fd, buf, len, 0);
	if (n >= 0)
		return (int)n;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
		return MBEDTLS_ERR_SSL_WANT_READ;
	if (errno == ECONNRESET)
		return MBEDTLS_ERR_NET_CONN_RESET;
	return MBEDTLS_ERR_NET_RECV_FAILED;
}

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
		mbedtls_ssl_close_notify(&s->ssl);
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
	mbedtls_ssl_free(&s->ssl);
	free(s->body);
	free(s->out);
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
	int max = mbedtls_ssl_get_max_out_record_payload(&s->ssl);
	size_t rec = max > 0 ? (size_t)max : 16384;
	while (s->out_off < s->out_len) {
		size_t chunk = s->wpend;
		if (!chunk) {
			chunk = s->out_len - s->out_off;
			if (chunk > rec)
				chunk = rec;
		}
		int rc = mbedtls_ssl_write(&s->ssl, s->out + s->out_off, chunk);
		if (rc == MBEDTLS_ERR_SSL_WANT_WRITE || rc == MBEDTLS_ERR_SSL_WANT_READ) {
			s->wpend = chunk;
			set_events(l, s, LINK_EV_READ | LINK_EV_WRITE);
			return;
		}
		if (rc < 0) {
			char e[96];
			/* no flush of a session that is closing anyway */
			s->out_off = s->out_len;
			if (s->state != S_DEAD) {
				log_info("AGENT-IO peer=%s write: %s", s->peer, tls_err(rc, e, sizeof(e)));
				session_close(l, s, "write failed", true);
			}
			return;
		}
		s->wpend = 0;
		s->out_off += (size_t)rc;
	}
	s->out_off = s->out_len = 0;
	if (s->out_alloc > 16384) {
		/* a burst is over: give the memory back */
		free(s->out);
		s->out = NULL;
		s->out_alloc = 0;
	}
	set_events(l, s, LINK_EV_READ);
}

static int queue_bytes(struct link *l, struct session *s, const uint8_t *p, size_t n)
{
	size_t pending = s->out_len - s->out_off;
	if (pending + n > l->cfg.out_cap) {
		log_warnx("AGENT-SLOW agent=%s peer=%s unsent=%zu: closing", s->cn, s->peer, pending);
		session_close(l, s, "outbound buffer full", true);
		return -ENOBUFS;
	}
	if (s->out_off > 0 && !s->wpend) {
		memmove(s->out, s->out + s->out_off, pending);
		s->out_len = pending;
		s->out_off = 0;
	}
	if (s->out_len + n > s->out_alloc) {
		size_t cap = s->out_alloc ? s->out_alloc : 1024;
		while (cap < s->out_len + n)
			cap *= 2;
		uint8_t *b = realloc(s->out, cap);
		if (!b)
			return -ENOMEM;
		s->out = b;
		s->out_alloc = cap;
	}
	memcpy(s->out + s->out_len, p, n);
	s->out_len += n;
	l->st.frames_out++;
	return 0;
}

static int send_frame(struct link *l, struct session *s, const struct ec_frame *f)
{
	uint8_t *buf;
	size_t len;
	int rc = ec_frame_encode(f, l->cfg.max_frame, &buf, &len);
	if (rc)
		return rc;
	rc = queue_bytes(l, s, buf, len);
	free(buf);
	if (rc == 0)
		flush_out(l, s);
	return rc;
}

/* Tell the peer why, then close. */
static void close_with_error(struct link *l, struct session *s, const char *why, bool notify)
{
	struct ec_frame f;
	ec_frame_init(&f, EC_F_ERROR);
	f.text = (char *)why;
	uint8_t *buf;
	size_t len;
	if (ec_frame_encode(&f, l->cfg.max_frame, &buf, &len) == 0) {
		/* no cap check: this is the last thing the session sends */
		uint8_t *b = realloc(s->out, s->out_len + len);
		if (b) {
			s->out = b;
			s->out_alloc = s->out_len + len;
			memcpy(s->out + s->out_len, buf, len);
			s->out_len += len;
		}
		free(buf);
	}
	session_close(l, s, why, notify);
}

/* ---- handshake and hello ---------------------------------------------- */

static const char *handshake_reason(struct session *s, int rc, char *buf, size_t n)
{
	uint32_t flags = mbedtls_ssl_get_verify_result(&s->ssl);
	switch (rc) {
	case MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE:
		return "no_client_certificate";
	case MBEDTLS_ERR_X509_CERT_VERIFY_FAILED:
		if (flags & MBEDTLS_X509_BADCERT_EXPIRED)
			return "certificate_expired";
		if (flags & MBEDTLS_X509_BADCERT_FUTURE)
			return "certificate_not_yet_valid";
		if (flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED)
			return "foreign_ca";
		snprintf(buf, n, "certificate_invalid(flags=0x%x)", (unsigned)flags);
		return buf;
	case MBEDTLS_ERR_SSL_INVALID_RECORD:
	case MBEDTLS_ERR_SSL_BAD_HS_CLIENT_HELLO:
	case MBEDTLS_ERR_SSL_UNEXPECTED_RECORD:
		return "not_tls";
	case MBEDTLS_ERR_SSL_CONN_EOF:
	case MBEDTLS_ERR_NET_CONN_RESET:
		return "closed_during_handshake";
	}
	char e[80];
	snprintf(buf, n, "tls_handshake_failed(%s)", tls_err(rc, e, sizeof(e)));
	return buf;
}

/* The subject CN of the verified peer certificate, or false. */
static bool peer_cn(struct session *s)
{
	const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&s->ssl);
	if (!crt)
		return false;
	for (const mbedtls_x509_name *n = &crt->subject; n; n = n->next) {
		if (n->oid.p && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0) {
			if (n->val.len == 0 || n->val.len > EC_AGENT_ID_MAX)
				return false;
			memcpy(s->cn, n->val.p, n->val.len);
			s->cn[n->val.len] = '\0';
			return ec_id_valid(s->cn, n->val.len, EC_AGENT_ID_MAX);
		}
	}
	return false;
}

static void do_handshake(struct link *l, struct session *s)
{
	int rc = mbedtls_ssl_handshake(&s->ssl);
	if (rc == MBEDTLS_ERR_SSL_WANT_READ) {
		set_events(l, s, LINK_EV_READ);
		return;
	}
	if (rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
		set_events(l, s, LINK_EV_READ | LINK_EV_WRITE);
		return;
	}
	char buf[128];
	if (rc != 0) {
		refuse(l, s, handshake_reason(s, rc, buf, sizeof(buf)));
		return;
	}
	/* VERIFY_REQUIRED already failed the handshake on a bad chain; this is
	 * the belt to those braces (LIBNOTES 4) */
	if (mbedtls_ssl_get_verify_result(&s->ssl) != 0) {
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

static void dispatch_body(struct link *l, struct session *s, uint64_t now)
{
	struct ec_frame f;
	const char *why = NULL;
	int rc = ec_frame_decode(s->body, s->body_len, &f, &why);
	free(s->body);
	s->body = NULL;
	s->body_len = s->body_got = 0;
	s->hdr_got = 0;
	l->st.frames_in++;
	if (rc) {
		char msg[160];
		snprintf(msg, sizeof(msg), "%s: %s",
			 rc == EC_EPROTO ? "unknown frame type" : "malformed frame", why);
		if (s->state == S_HELLO) {
			log_warnx("AGENT-REFUSED peer=%s agent=%s reason=bad_hello(%s)", s->peer,
				  s->cn, why);
			l->st.refused++;
		} else {
			log_warnx("AGENT-PROTO agent=%s reason=%s", s->cn, msg);
		}
		close_with_error(l, s, msg, true);
		return;
	}
	if (s->state == S_HELLO)
		on_hello(l, s, &f, now);
	else
		on_frame(l, s, &f, now);
	ec_frame_fini(&f);
}

static void do_read(struct link *l, struct session *s, uint64_t now)
{
	/* Read until WANT_READ: decrypted bytes can sit inside mbedtls where the
	 * loop cannot see them (LIBNOTES 4). After a budget, stop at a point
	 * where mbedtls holds nothing, so a flood from one agent cannot starve
	 * the others; the kernel still has the rest and the loop comes back. */
	size_t budget = 4 * ((size_t)l->cfg.max_frame + EC_FRAME_HDR), done = 0;
	while (s->state == S_HELLO || s->state == S_LIVE) {
		if (done >= budget && mbedtls_ssl_get_bytes_avail(&s->ssl) == 0 &&
		    !mbedtls_ssl_check_pending(&s->ssl))
			return;
		int rc;
		if (s->hdr_got < EC_FRAME_HDR)
			rc = mbedtls_ssl_read(&s->ssl, s->hdr + s->hdr_got, EC_FRAME_HDR - s->hdr_got);
		else
			rc = mbedtls_ssl_read(&s->ssl, s->body + s->body_got, s->body_len - s->body_got);
		if (rc == MBEDTLS_ERR_SSL_WANT_READ)
			return;
		if (rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
			set_events(l, s, LINK_EV_READ | LINK_EV_WRITE);
			return;
		}
		if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ||
		    rc == MBEDTLS_ERR_NET_CONN_RESET) {
			if (s->state == S_HELLO) {
				refuse(l, s, "closed_before_hello");
				return;
			}
			session_close(l, s, "connection closed", true);
			return;
		}
		if (rc < 0) {
			char e[96], msg[128];
			snprintf(msg, sizeof(msg), "read failed (%s)", tls_err(rc, e, sizeof(e)));
			session_close(l, s, msg, true);
			return;
		}
		done += (size_t)rc;
		if (s->hdr_got < EC_FRAME_HDR) {
			s->hdr_got += (size_t)rc;
			if (s->hdr_got < EC_FRAME_HDR)
				continue;
			uint32_t n = ec_frame_hdr_len(s->hdr);
			if (n == 0 || n > l->cfg.max_frame) {
				char msg[96];
				snprintf(msg, sizeof(msg), "frame of %u bytes (max_frame %u)", n,
					 l->cfg.max_frame);
				if (s->state == S_HELLO) {
					log_warnx("AGENT-REFUSED peer=%s agent=%s reason=bad_hello(%s)",
						  s->peer, s->cn, msg);
					l->st.refused++;
				} else {
					log_warnx("AGENT-PROTO agent=%s reason=%s", s->cn, msg);
				}
				close_with_error(l, s, msg, true);
				return;
			}
			s->body = malloc(n);
			if (!s->body) {
				session_close(l, s, "out of memory", true);
				return;
			}
			s->body_len = n;
			s->body_got = 0;
			continue;
		}
		s->body_got += (size_t)rc;
		if (s->body_got == s->body_len)
			dispatch_body(l, s, now);
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
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
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
		mbedtls_ssl_init(&s->ssl);
		if (mbedtls_ssl_setup(&s->ssl, &l->conf) != 0) {
			l->by_fd[fd] = NULL;
			session_free(s);
			close(fd);
			log_warnx("link: out of memory for a TLS session");
			continue;
		}
		mbedtls_ssl_set_bio(&s->ssl, &s->fd, bio_send, bio_recv, NULL);
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
	if (s->state != S_DEAD && s->out_len > s->out_off)
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
	mbedtls_entropy_init(&l->entropy);
	mbedtls_ctr_drbg_init(&l->drbg);
	mbedtls_x509_crt_init(&l->ca);
	mbedtls_x509_crt_init(&l->cert);
	mbedtls_pk_init(&l->key);
	mbedtls_ssl_config_init(&l->conf);
	int rc = -ENOMEM;
	if (!l->listen || !l->ca_file || !l->cert_file || !l->key_file)
		goto fail;

	char e[128];
	const char *what = "random generator";
	static const char pers[] = "edgecoord-link";
	rc = mbedtls_ctr_drbg_seed(&l->drbg, mbedtls_entropy_func, &l->entropy,
				   (const unsigned char *)pers, sizeof(pers) - 1);
	if (rc == 0 && (rc = mbedtls_x509_crt_parse_file(&l->ca, l->ca_file)) != 0)
		what = l->ca_file;
	if (rc == 0 && (rc = mbedtls_x509_crt_parse_file(&l->cert, l->cert_file)) != 0)
		what = l->cert_file;
	if (rc == 0 && (rc = mbedtls_pk_parse_keyfile(&l->key, l->key_file, NULL)) != 0)
		what = l->key_file;
	if (rc == 0) {
		what = "TLS configuration";
		rc = mbedtls_ssl_config_defaults(&l->conf, MBEDTLS_SSL_IS_SERVER,
						 MBEDTLS_SSL_TRANSPORT_STREAM,
						 MBEDTLS_SSL_PRESET_DEFAULT);
	}
	if (rc == 0) {
		mbedtls_ssl_conf_rng(&l->conf, mbedtls_ctr_drbg_random, &l->drbg);
		mbedtls_ssl_conf_authmode(&l->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
		mbedtls_ssl_conf_ca_chain(&l->conf, &l->ca, NULL);
		mbedtls_ssl_conf_min_version(&l->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
					     MBEDTLS_SSL_MINOR_VERSION_3);
		rc = mbedtls_ssl_conf_own_cert(&l->conf, &l->cert, &l->key);
		if (rc)
			what = "certificate and key";
	}
	if (rc) {
		log_warnx("link: %s: %s", what, tls_err(rc, e, sizeof(e)));
		rc = EC_ECONFIG;
		goto fail;
	}
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
	mbedtls_ssl_config_free(&l->conf);
	mbedtls_pk_free(&l->key);
	mbedtls_x509_crt_free(&l->cert);
	mbedtls_x509_crt_free(&l->ca);
	mbedtls_ctr_drbg_free(&l->drbg);
	mbedtls_entropy_free(&l->entropy);
	free(l->listen);
	free(l->ca_file);
	free(l->cert_file);
	free(l->key_file);
	free(l);
}
