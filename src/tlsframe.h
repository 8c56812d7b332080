/* SPDX-License-Identifier: MIT */
/*
 * tlsframe.h - the agent link's transport, shared by both ends (link.c, the
 * coordinator; src/agent/agent.c, the agent library), and the TLS under the
 * MQTT link to the broker (mqtt.c, as a byte stream): mutual-TLS
 * configuration, one non-blocking TLS connection, and the framing of
 * docs/protocol.md over it (a 4-byte big-endian length, then a CBOR body
 * decoded with the one codec, proto.h).
 *
 * tlsframe.c is the only file of either end that includes mbedtls; it turns
 * mbedtls's codes and its non-blocking rules (LIBNOTES 4: read until
 * WANT_READ, repeat a WANT_WRITE with the same bytes, at most one record per
 * write) into the statuses below, so that each end keeps only what is its
 * own: accepting, identity and sessions (link.c), connecting, reconnecting
 * and jobs (agent.c).
 *
 * Does not: open, connect or close sockets (the caller owns the fd), log
 * (the two ends log differently; errors come back as statuses and text), or
 * decide anything about a frame.
 *
 * No global state. A conf and the connections made from it belong to one
 * thread.
 */
#ifndef EC_TLSFRAME_H
#define EC_TLSFRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edgecoord/proto.h"

struct tlsframe_conf;
struct tlsframe;

enum tlsframe_role { TLSFRAME_SERVER, TLSFRAME_CLIENT };

/* What a handshake, a flush or a read came to. */
enum tlsframe_status {
	TLSFRAME_OK,         /* handshake done; everything queued was sent */
	TLSFRAME_WANT_READ,  /* wait until the socket is readable (a read with a
			      * budget also says this when the budget is spent
			      * and mbedtls holds nothing: the kernel has the rest) */
	TLSFRAME_WANT_WRITE, /* wait until it is writable (and readable) */
	TLSFRAME_FRAME,      /* read: one frame decoded into in->frame */
	TLSFRAME_BAD_FRAME,  /* read: a body that is not a frame (in->rc, in->why) */
	TLSFRAME_BAD_LEN,    /* read: a header announcing 0 or more than max (in->len) */
	TLSFRAME_EOF,        /* the peer closed (close_notify, or TCP EOF) */
	TLSFRAME_RESET,      /* the connection was reset */
	TLSFRAME_NOMEM,      /* read: no memory for a body */
	TLSFRAME_ERROR,      /* any other TLS or socket error: tlsframe_error() */
};

/* What a read hands over (written only for the statuses that name a field). */
struct tlsframe_in {
	struct ec_frame frame;   /* FRAME: new; the caller calls ec_frame_fini */
	int rc;                  /* BAD_FRAME: EC_EMALFORMED, EC_EPROTO or -ENOMEM */
	const char *why;         /* BAD_FRAME: static reason text from the codec */
	uint32_t len;            /* BAD_LEN: the announced body length */
};

/*
 * Seed a random generator (pers: a personalisation string), load the CA, our
 * certificate and key, and configure TLS 1.2 with the peer's certificate
 * required, for one role. A client (the MQTT link to a broker) may pass no
 * cert_file (no client certificate), no key_file (the key is in cert_file)
 * and no ca_file (the system's trust store, /etc/ssl/certs). Returns 0, -ENOMEM, or EC_ECONFIG with
 * "what: mbedtls text" in err (a file that does not load, a key that does not
 * match). Files are read now and not kept.
 */
int tlsframe_conf_new(enum tlsframe_role role, const char *pers, const char *ca_file,
		      const char *cert_file, const char *key_file,
		      struct tlsframe_conf **out, char *err, size_t errlen);
/* Accepts NULL. Every connection made from c must be freed first. */
void tlsframe_conf_free(struct tlsframe_conf *c);
/* Random bytes from the conf's generator (e.g. reconnect jitter). */
uint32_t tlsframe_random_u32(struct tlsframe_conf *c);

/* A connection context for conf c (borrowed; must outlive it): about 37 KB of
 * mbedtls state. 0 or -ENOMEM. */
int tlsframe_new(struct tlsframe_conf *c, struct tlsframe **out);
/* Drops unsent and partly read bytes. Does not close the fd. Accepts NULL. */
void tlsframe_free(struct tlsframe *t);

/*
 * Start a new TLS connection on fd (connected, non-blocking; borrowed: the
 * caller closes it after tlsframe_drop). A context may be attached again
 * after a drop (the agent reuses one across reconnects). A client passes the
 * name to check the server's certificate against (LIBNOTES 4: mbedtls 2.28
 * skips the check without one); a server passes NULL. Sets TCP_NODELAY
 * (LIBNOTES 4). 0 or -ENOMEM.
 */
int tlsframe_attach(struct tlsframe *t, int fd, const char *server_name);
/* Forget the connection: unsent bytes and a partly read frame. Sends
 * nothing; call tlsframe_close_notify first for a polite end. */
void tlsframe_drop(struct tlsframe *t);

/* One step of the handshake: OK, WANT_READ, WANT_WRITE, or ERROR (then
 * tlsframe_error, tlsframe_verify_flags, tlsframe_refusal explain it). */
enum tlsframe_status tlsframe_handshake(struct tlsframe *t);
/* Best effort, once the handshake is over: tell the peer we close. */
void tlsframe_close_notify(struct tlsframe *t);

/* The verification flags of the peer's certificate (0: verified). */
uint32_t tlsframe_verify_flags(const struct tlsframe *t);
/*
 * The subject CN of the peer's certificate, copied NUL-terminated into
 * cn[0..cap). Returns its length, or -1 (cn untouched) if there is no
 * certificate, no CN, an empty one, or one of cap bytes or more. The caller
 * checks what it may contain.
 */
int tlsframe_peer_cn(const struct tlsframe *t, char *cn, size_t cap);
/*
 * Why the last handshake failed, as a stable reason for a refusal log line:
 * no_client_certificate, certificate_expired, certificate_not_yet_valid,
 * foreign_ca, certificate_invalid(flags=0x..), not_tls,
 * closed_during_handshake, or tls_handshake_failed(mbedtls text). Returns a
 * static string or buf.
 */
const char *tlsframe_refusal(const struct tlsframe *t, char *buf, size_t n);
/* mbedtls's text for the last ERROR of t, in buf; returns buf. */
const char *tlsframe_error(const struct tlsframe *t, char *buf, size_t n);

/*
 * Queue bytes to send (copied), refusing with -ENOBUFS (nothing queued) when
 * the unsent bytes would exceed cap (SIZE_MAX: no cap). 0, -ENOBUFS or
 * -ENOMEM. Sends nothing: call tlsframe_flush.
 */
int tlsframe_queue(struct tlsframe *t, const uint8_t *p, size_t n, size_t cap);
/* Encode f (bounded by max_frame) and queue it as above. 0, the encoder's
 * error (EC_EINVALID_FIELD, EC_ETOO_LARGE), -ENOBUFS or -ENOMEM. */
int tlsframe_queue_frame(struct tlsframe *t, const struct ec_frame *f, uint32_t max_frame,
			 size_t cap);
/* Bytes queued and not yet taken by TLS. */
size_t tlsframe_unsent(const struct tlsframe *t);
/*
 * Write what the socket takes now. OK (all sent; the buffer is given back
 * after a burst), WANT_WRITE (the rest waits; call again when writable), or
 * ERROR (the unsent bytes are dropped; the connection is done).
 */
enum tlsframe_status tlsframe_flush(struct tlsframe *t);

/*
 * Read towards the next frame: until one frame is complete, the socket has
 * nothing more (WANT_READ, or WANT_WRITE during a renegotiation), or the
 * connection fails. Bytes TLS has decrypted are never left behind
 * unannounced: WANT_READ means mbedtls holds nothing more.
 * max_body bounds the announced length. budget (NULL: none) is decreased by
 * the bytes read; once it is 0, the read stops at the next point where
 * mbedtls holds nothing, so that one peer cannot hold the loop.
 * Returns FRAME, BAD_FRAME, BAD_LEN, WANT_READ, WANT_WRITE, EOF, RESET,
 * NOMEM or ERROR; in is written as the status says.
 */
enum tlsframe_status tlsframe_read(struct tlsframe *t, uint32_t max_body, size_t *budget,
				   struct tlsframe_in *in);

/*
 * Stream use (the MQTT link): read up to cap decrypted bytes into buf. OK with
 * *n > 0, WANT_READ (nothing more now: mbedtls holds nothing either),
 * WANT_WRITE, EOF, RESET or ERROR. Call until it says WANT_READ: decrypted
 * bytes can wait inside mbedtls where poll() does not see them (LIBNOTES 4).
 */
enum tlsframe_status tlsframe_read_raw(struct tlsframe *t, uint8_t *buf, size_t cap, size_t *n);

#endif
