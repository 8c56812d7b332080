/* SPDX-License-Identifier: MIT */
/*
 * tlsframe.c - mbedtls under the agent link, for both ends (tlsframe.h):
 * the mutual-TLS configuration, the socket callbacks, the outbound buffer
 * and the inbound frame assembly.
 *
 * The only file of the daemon and of the agent library that includes
 * mbedtls (the pki tool and the tests have their own uses). What each end
 * decides on top of it (refusals, reconnects, what a frame means) stays in
 * link.c and agent.c.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "edgecoord/err.h"
#include "tlsframe.h"

/* A burst that grew the outbound buffer past this gives it back when sent. */
#define SYSTEM_CA_DIR "/etc/ssl/certs"
#define OUT_KEEP 16384

struct tlsframe_conf {
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_x509_crt ca, cert;
	mbedtls_pk_context key;
	mbedtls_ssl_config conf;
};

struct tlsframe {
	mbedtls_ssl_context ssl;
	int fd;
	bool attached;
	int err;                       /* the last mbedtls error, for text */
	/* inbound: header, then a body of exactly the announced length */
	uint8_t hdr[EC_FRAME_HDR];
	size_t hdr_got;
	uint8_t *body;
	size_t body_len, body_got;
	/* outbound: [out_off, out_len) unsent; wpend = length of a write that
	 * returned WANT_WRITE, which must be repeated as is (LIBNOTES 4) */
	uint8_t *out;
	size_t out_len, out_off, out_alloc, wpend;
};

/* ---- configuration ------------------------------------------------------- */

int tlsframe_conf_new(enum tlsframe_role role, const char *pers, const char *ca_file,
		      const char *cert_file, const char *key_file,
		      struct tlsframe_conf **out, char *err, size_t errlen)
{
	struct tlsframe_conf *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	mbedtls_entropy_init(&c->entropy);
	mbedtls_ctr_drbg_init(&c->drbg);
	mbedtls_x509_crt_init(&c->ca);
	mbedtls_x509_crt_init(&c->cert);
	mbedtls_pk_init(&c->key);
	mbedtls_ssl_config_init(&c->conf);

	const char *what = "random generator";
	int rc = mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->entropy,
				       (const unsigned char *)pers, strlen(pers));
	/* Without a CA file (the broker link only), the system's trust store;
	 * mbedtls counts certificates it could not parse there as a positive
	 * return, which is fine as long as some loaded. */
	if (rc == 0 && ca_file && (rc = mbedtls_x509_crt_parse_file(&c->ca, ca_file)) != 0)
		what = ca_file;
	if (rc == 0 && !ca_file) {
		what = SYSTEM_CA_DIR;
		rc = mbedtls_x509_crt_parse_path(&c->ca, SYSTEM_CA_DIR);
		if (rc > 0 && c->ca.version != 0)
			rc = 0;
		else if (rc >= 0)
			rc = MBEDTLS_ERR_X509_FILE_IO_ERROR;
	}
	if (rc == 0 && cert_file && (rc = mbedtls_x509_crt_parse_file(&c->cert, cert_file)) != 0)
		what = cert_file;
	if (rc == 0 && cert_file &&
	    (rc = mbedtls_pk_parse_keyfile(&c->key, key_file ? key_file : cert_file, NULL)) != 0)
		what = key_file ? key_file : cert_file;
	if (rc == 0) {
		what = "TLS configuration";
		rc = mbedtls_ssl_config_defaults(&c->conf,
						 role == TLSFRAME_SERVER ? MBEDTLS_SSL_IS_SERVER
						 : MBEDTLS_SSL_IS_CLIENT,
						 MBEDTLS_SSL_TRANSPORT_STREAM,
						 MBEDTLS_SSL_PRESET_DEFAULT);
	}
	if (rc == 0) {
		mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &c->drbg);
		/* both ends prove who they are (DESIGN 4) */
		mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
		mbedtls_ssl_conf_ca_chain(&c->conf, &c->ca, NULL);
		/* TLS 1.2: 2.28 has no 1.3 (LIBNOTES 4) */
		mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
					     MBEDTLS_SSL_MINOR_VERSION_3);
		if (cert_file)
			rc = mbedtls_ssl_conf_own_cert(&c->conf, &c->cert, &c->key);
		if (rc)
			what = "certificate and key";
	}
	if (rc) {
		char e[128];
		mbedtls_strerror(rc, e, sizeof(e));
		if (errlen)
			snprintf(err, errlen, "%s: %s", what, e);
		tlsframe_conf_free(c);
		return EC_ECONFIG;
	}
	*out = c;
	return 0;
}

void tlsframe_conf_free(struct tlsframe_conf *c)
{
	if (!c)
		return;
	mbedtls_ssl_config_free(&c->conf);
	mbedtls_pk_free(&c->key);
	mbedtls_x509_crt_free(&c->cert);
	mbedtls_x509_crt_free(&c->ca);
	mbedtls_ctr_drbg_free(&c->drbg);
	mbedtls_entropy_free(&c->entropy);
	free(c);
}

uint32_t tlsframe_random_u32(struct tlsframe_conf *c)
{
	uint32_t r = 0;
	mbedtls_ctr_drbg_random(&c->drbg, (unsigned char *)&r, sizeof(r));
	return r;
}

/* ---- a connection --------------------------------------------------------- */

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

int tlsframe_new(struct tlsframe_conf *c, struct tlsframe **out)
{
	struct tlsframe *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->fd = -1;
	mbedtls_ssl_init(&t->ssl);
	/* fails only for memory (about 37 KB, LIBNOTES 4) */
	if (mbedtls_ssl_setup(&t->ssl, &c->conf) != 0) {
		tlsframe_free(t);
		return -ENOMEM;
	}
	*out = t;
	return 0;
}

void tlsframe_drop(struct tlsframe *t)
{
	free(t->body);
	t->body = NULL;
	t->hdr_got = t->body_len = t->body_got = 0;
	free(t->out);
	t->out = NULL;
	t->out_len = t->out_off = t->out_alloc = t->wpend = 0;
}

void tlsframe_free(struct tlsframe *t)
{
	if (!t)
		return;
	tlsframe_drop(t);
	mbedtls_ssl_free(&t->ssl);
	free(t);
}

int tlsframe_attach(struct tlsframe *t, int fd, const char *server_name)
{
	tlsframe_drop(t);
	/* a context used before starts over; a fresh one is ready as it is */
	if (t->attached && mbedtls_ssl_session_reset(&t->ssl) != 0)
		return -ENOMEM;
	if (server_name && mbedtls_ssl_set_hostname(&t->ssl, server_name) != 0)
		return -ENOMEM;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	t->fd = fd;
	t->attached = true;
	t->err = 0;
	mbedtls_ssl_set_bio(&t->ssl, &t->fd, bio_send, bio_recv, NULL);
	return 0;
}

enum tlsframe_status tlsframe_handshake(struct tlsframe *t)
{
	int rc = mbedtls_ssl_handshake(&t->ssl);
	if (rc == MBEDTLS_ERR_SSL_WANT_READ)
		return TLSFRAME_WANT_READ;
	if (rc == MBEDTLS_ERR_SSL_WANT_WRITE)
		return TLSFRAME_WANT_WRITE;
	if (rc) {
		t->err = rc;
		return TLSFRAME_ERROR;
	}
	return TLSFRAME_OK;
}

void tlsframe_close_notify(struct tlsframe *t)
{
	mbedtls_ssl_close_notify(&t->ssl);
}

uint32_t tlsframe_verify_flags(const struct tlsframe *t)
{
	return mbedtls_ssl_get_verify_result(&t->ssl);
}

int tlsframe_peer_cn(const struct tlsframe *t, char *cn, size_t cap)
{
	const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&t->ssl);
	if (!crt)
		return -1;
	for (const mbedtls_x509_name *n = &crt->subject; n; n = n->next) {
		if (n->oid.p && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0) {
			if (n->val.len == 0 || n->val.len >= cap)
				return -1;
			memcpy(cn, n->val.p, n->val.len);
			cn[n->val.len] = '\0';
			return (int)n->val.len;
		}
	}
	return -1;
}

const char *tlsframe_error(const struct tlsframe *t, char *buf, size_t n)
{
	mbedtls_strerror(t->err, buf, n);
	return buf;
}

const char *tlsframe_refusal(const struct tlsframe *t, char *buf, size_t n)
{
	uint32_t flags = mbedtls_ssl_get_verify_result(&t->ssl);
	switch (t->err) {
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
	mbedtls_strerror(t->err, e, sizeof(e));
	snprintf(buf, n, "tls_handshake_failed(%s)", e);
	return buf;
}

/* ---- writing ---------------------------------------------------------------- */

int tlsframe_queue(struct tlsframe *t, const uint8_t *p, size_t n, size_t cap)
{
	size_t pending = t->out_len - t->out_off;
	if (n > cap || pending > cap - n)
		return -ENOBUFS;
	/* compact, unless a WANT_WRITE pins the bytes where they are */
	if (t->out_off > 0 && !t->wpend) {
		memmove(t->out, t->out + t->out_off, pending);
		t->out_len = pending;
		t->out_off = 0;
	}
	if (t->out_len + n > t->out_alloc) {
		size_t alloc = t->out_alloc ? t->out_alloc : 1024;
		while (alloc < t->out_len + n)
			alloc *= 2;
		uint8_t *b = realloc(t->out, alloc);
		if (!b)
			return -ENOMEM;
		t->out = b;
		t->out_alloc = alloc;
	}
	memcpy(t->out + t->out_len, p, n);
	t->out_len += n;
	return 0;
}

int tlsframe_queue_frame(struct tlsframe *t, const struct ec_frame *f, uint32_t max_frame,
			 size_t cap)
{
	uint8_t *buf;
	size_t len;
	int rc = ec_frame_encode(f, max_frame, &buf, &len);
	if (rc)
		return rc;
	rc = tlsframe_queue(t, buf, len, cap);
	free(buf);
	return rc;
}

size_t tlsframe_unsent(const struct tlsframe *t)
{
	return t->out_len - t->out_off;
}

enum tlsframe_status tlsframe_flush(struct tlsframe *t)
{
	/* one record per write (LIBNOTES 4) */
	int max = mbedtls_ssl_get_max_out_record_payload(&t->ssl);
	size_t rec = max > 0 ? (size_t)max : 16384;
	while (t->out_off < t->out_len) {
		size_t chunk = t->wpend;
		if (!chunk) {
			chunk = t->out_len - t->out_off;
			if (chunk > rec)
				chunk = rec;
		}
		int rc = mbedtls_ssl_write(&t->ssl, t->out + t->out_off, chunk);
		if (rc == MBEDTLS_ERR_SSL_WANT_WRITE || rc == MBEDTLS_ERR_SSL_WANT_READ) {
			t->wpend = chunk;  /* repeat the same write (LIBNOTES 4) */
			return TLSFRAME_WANT_WRITE;
		}
		if (rc < 0) {
			t->err = rc;
			t->out_off = t->out_len = t->wpend = 0;
			return TLSFRAME_ERROR;
		}
		t->wpend = 0;
		t->out_off += (size_t)rc;
	}
	t->out_off = t->out_len = 0;
	if (t->out_alloc > OUT_KEEP) {
		/* a burst is over: give the memory back */
		free(t->out);
		t->out = NULL;
		t->out_alloc = 0;
	}
	return TLSFRAME_OK;
}

/* ---- reading ------------------------------------------------------------------ */

/* What an mbedtls_ssl_read() that returned rc <= 0 means. */
static enum tlsframe_status read_status(struct tlsframe *t, int rc)
{
	if (rc == MBEDTLS_ERR_SSL_WANT_READ)
		return TLSFRAME_WANT_READ;
	if (rc == MBEDTLS_ERR_SSL_WANT_WRITE)
		return TLSFRAME_WANT_WRITE;
	if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY)
		return TLSFRAME_EOF;
	if (rc == MBEDTLS_ERR_NET_CONN_RESET)
		return TLSFRAME_RESET;
	t->err = rc;
	return TLSFRAME_ERROR;
}

enum tlsframe_status tlsframe_read(struct tlsframe *t, uint32_t max_body, size_t *budget,
				   struct tlsframe_in *in)
{
	for (;;) {
		/* Decrypted bytes can sit inside mbedtls where poll() cannot see
		 * them (LIBNOTES 4): stop for the budget only where it holds
		 * nothing. */
		if (budget && *budget == 0 && mbedtls_ssl_get_bytes_avail(&t->ssl) == 0 &&
		    !mbedtls_ssl_check_pending(&t->ssl))
			return TLSFRAME_WANT_READ;
		int rc;
		if (t->hdr_got < EC_FRAME_HDR)
			rc = mbedtls_ssl_read(&t->ssl, t->hdr + t->hdr_got, EC_FRAME_HDR - t->hdr_got);
		else
			rc = mbedtls_ssl_read(&t->ssl, t->body + t->body_got, t->body_len - t->body_got);
		if (rc <= 0)
			return read_status(t, rc);
		if (budget)
			*budget = (size_t)rc >= *budget ? 0 : *budget - (size_t)rc;
		if (t->hdr_got < EC_FRAME_HDR) {
			t->hdr_got += (size_t)rc;
			if (t->hdr_got < EC_FRAME_HDR)
				continue;
			uint32_t n = ec_frame_hdr_len(t->hdr);
			if (n == 0 || n > max_body) {
				in->len = n;
				return TLSFRAME_BAD_LEN;
			}
			t->body = malloc(n);
			if (!t->body)
				return TLSFRAME_NOMEM;
			t->body_len = n;
			t->body_got = 0;
			continue;
		}
		t->body_got += (size_t)rc;
		if (t->body_got < t->body_len)
			continue;
		const char *why = NULL;
		rc = ec_frame_decode(t->body, t->body_len, &in->frame, &why);
		free(t->body);
		t->body = NULL;
		t->hdr_got = t->body_len = t->body_got = 0;
		if (rc) {
			in->rc = rc;
			in->why = why;
			return TLSFRAME_BAD_FRAME;
		}
		return TLSFRAME_FRAME;
	}
}

enum tlsframe_status tlsframe_read_raw(struct tlsframe *t, uint8_t *buf, size_t cap, size_t *n)
{
	int rc = mbedtls_ssl_read(&t->ssl, buf, cap);
	if (rc <= 0)
		return read_status(t, rc);
	*n = (size_t)rc;
	return TLSFRAME_OK;
}
