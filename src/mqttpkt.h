/* SPDX-License-Identifier: MIT */
/*
 * mqttpkt.h - MQTT 5.0 and 3.1.1 control packets, as a client needs them:
 * the encoders of what a client sends (CONNECT, SUBSCRIBE, PUBLISH at QoS 1,
 * PUBACK, PINGREQ, DISCONNECT) and the decoder of what a broker sends
 * (CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP, DISCONNECT).
 *
 * Pure: no I/O, no global state, no logging. The decoder allocates nothing:
 * what it returns are views into the caller's bytes. Bytes from the broker
 * are untrusted: every length is checked against the packet's end, and a
 * refusal names what is wrong (why, a static string).
 *
 * Does not: keep sessions, packet ids or timers (mqtt.c does), or speak
 * QoS 2, AUTH or topic aliases (a client that announces a Topic Alias Maximum
 * of 0 never receives one; a PUBLISH carrying one is refused).
 *
 * version is 5 (MQTT 5.0) or 4 (MQTT 3.1.1) everywhere; 3.1.1 packets carry
 * no properties and the property fields below are then absent.
 */
#ifndef EC_MQTTPKT_H
#define EC_MQTTPKT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MQTTPKT_V311 4
#define MQTTPKT_V5 5
#define MQTTPKT_MAX_REMAINING 268435455u /* the largest a 4-byte length says */

enum mqttpkt_type {
	MQTTPKT_CONNECT = 1,
	MQTTPKT_CONNACK = 2,
	MQTTPKT_PUBLISH = 3,
	MQTTPKT_PUBACK = 4,
	MQTTPKT_PUBREC = 5,
	MQTTPKT_PUBREL = 6,
	MQTTPKT_PUBCOMP = 7,
	MQTTPKT_SUBSCRIBE = 8,
	MQTTPKT_SUBACK = 9,
	MQTTPKT_UNSUBSCRIBE = 10,
	MQTTPKT_UNSUBACK = 11,
	MQTTPKT_PINGREQ = 12,
	MQTTPKT_PINGRESP = 13,
	MQTTPKT_DISCONNECT = 14,
	MQTTPKT_AUTH = 15,
};

/* A growing output buffer; encoders append to it. Zero-initialise; free
 * with mqttpkt_buf_fini. */
struct mqttpkt_buf {
	uint8_t *p;
	size_t len, cap;
};
void mqttpkt_buf_fini(struct mqttpkt_buf *b);

/* Views into decoded bytes (not NUL-terminated); p is NULL when absent. */
struct mqttpkt_str {
	const char *p;
	size_t n;
};
struct mqttpkt_bin {
	const uint8_t *p;
	size_t n;
};

/*
 * Framing: whether buf[0..len) starts with a whole packet. Returns 1 and sets
 * *pkt_len (fixed header included) when it does, 0 when more bytes are
 * needed, EC_EMALFORMED when the remaining-length field is not a valid
 * variable byte integer (more than 4 bytes), EC_ETOO_LARGE when the packet
 * would be longer than max bytes in all (then *pkt_len is its length, so the
 * caller can say how large). *why is set on errors. A remaining length in
 * more bytes than it needs (0x80 0x00 for 0) is accepted, here and in every
 * variable byte integer the decoder reads: the value is the same, and four
 * bytes still bound it.
 */
int mqttpkt_frame(const uint8_t *buf, size_t len, size_t max, size_t *pkt_len,
		  const char **why);

/* One decoded packet from the broker. Only the fields of its type are set;
 * the rest are zero. */
struct mqttpkt_in {
	enum mqttpkt_type type;
	uint16_t id;                /* PUBLISH (qos > 0), PUBACK, SUBACK */
	uint8_t reason;             /* CONNACK (3.1.1: the return code),
	                               PUBACK, DISCONNECT (0 when omitted) */
	/* CONNACK */
	bool session_present;
	uint16_t receive_max;       /* 0: not given (means 65535) */
	uint32_t max_packet;        /* 0: not given (no limit) */
	int32_t server_keepalive;   /* -1: not given */
	uint8_t max_qos;            /* 2 when not given */
	/* PUBLISH */
	uint8_t qos;                /* 0, 1 or 2 */
	bool dup, retain;
	struct mqttpkt_str topic;
	struct mqttpkt_bin payload;
	struct mqttpkt_str content_type;   /* MQTT 5; p NULL if absent */
	struct mqttpkt_str response_topic; /* MQTT 5; p NULL if absent */
	struct mqttpkt_bin correlation;    /* MQTT 5; p NULL if absent */
	/* SUBACK: one reason code (granted QoS, or >= 0x80 a failure) per
	 * filter, in order */
	struct mqttpkt_bin suback;
	/* CONNACK, PUBACK, SUBACK, DISCONNECT (MQTT 5): the reason string */
	struct mqttpkt_str reason_string;
};

/*
 * Decode one whole packet pkt[0..len) (as mqttpkt_frame found it) sent by a
 * broker. Returns 0 with *out written, or EC_EMALFORMED (bad fixed-header
 * flags, a length past the end, a bad variable byte integer, an invalid or
 * duplicated property, a topic that is not valid UTF-8 or holds U+0000 or a
 * wildcard, leftover bytes where none may be, a packet type a broker never
 * sends to a client: CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ) or EC_EPROTO
 * (well formed but not something we speak: QoS 3, a topic alias, an empty
 * topic, AUTH, PUBREC/PUBREL/PUBCOMP, UNSUBACK) with *why set, or -EINVAL
 * for a version other than 4 or 5 (the caller's mistake). The views in *out
 * point into pkt; a PUBLISH payload's p is set even when it is empty.
 */
int mqttpkt_decode(const uint8_t *pkt, size_t len, int version, struct mqttpkt_in *out,
		   const char **why);

/*
 * The start pre[0..have) of a PUBLISH too large to hold whole (mqttpkt_frame
 * said EC_ETOO_LARGE): decode its flags, topic and packet id, and, when the
 * prefix holds its whole property block, the properties and the payload's
 * first bytes (else those stay absent). *payload_size is the size of what
 * follows the last field decoded, up to the announced end: the payload's
 * size when the properties were read. Errors as mqttpkt_decode; a type other
 * than PUBLISH is EC_EPROTO.
 */
int mqttpkt_decode_head(const uint8_t *pre, size_t have, int version, struct mqttpkt_in *out,
			size_t *payload_size, const char **why);

/* CONNECT. Strings are NUL-terminated and borrowed for the call. */
struct mqttpkt_connect {
	int version;                 /* 5 or 4 */
	const char *client_id;
	bool clean_start;
	uint16_t keepalive_s;
	uint32_t session_expiry_s;   /* MQTT 5 property (0: not sent) */
	uint16_t receive_max;        /* MQTT 5 property (0: not sent) */
	uint32_t max_packet;         /* MQTT 5 property (0: not sent) */
	const char *username;        /* NULL: none */
	const char *password;        /* NULL: none (3.1.1 needs a username with it) */
	const char *will_topic;      /* NULL: no will; else QoS 1 */
	const void *will_payload;
	size_t will_len;
	bool will_retain;
};

/* One PUBLISH at QoS 1. Borrowed for the call. */
struct mqttpkt_pub {
	const char *topic;           /* NUL-terminated, 1..65535 bytes */
	const void *payload;
	size_t len;
	bool retain;
	uint32_t expiry_s;           /* MQTT 5 Message Expiry Interval; 0: none */
	const char *content_type;    /* MQTT 5; NULL: none */
	const char *response_topic;  /* MQTT 5; NULL: none */
	const void *correlation;     /* MQTT 5; NULL: none */
	size_t correlation_len;
};

/*
 * Encoders: append one packet to b. Return 0, -ENOMEM (b unchanged),
 * -EMSGSIZE (a string over 65,535 bytes, or a packet over
 * MQTTPKT_MAX_REMAINING; b unchanged), or -EINVAL (b unchanged) for what
 * the spec forbids a client to send: a version other than 4 or 5, packet
 * id 0, an empty topic, will topic or filter, no filters, a QoS over 2, or
 * in 3.1.1 a password without a username. With version 4 the MQTT 5 fields
 * are left out.
 */
int mqttpkt_connect(struct mqttpkt_buf *b, const struct mqttpkt_connect *c);
/* SUBSCRIBE packet id with n filters, each at maximum QoS qos (MQTT 5: no
 * local off, retain as published off, retain handling 0). */
int mqttpkt_subscribe(struct mqttpkt_buf *b, int version, uint16_t id,
		      const char *const *filters, size_t n, uint8_t qos);
/* PUBLISH at QoS 1 with packet id id; dup for a resend. */
int mqttpkt_publish(struct mqttpkt_buf *b, int version, const struct mqttpkt_pub *p,
		    uint16_t id, bool dup);
/* PUBACK for id, reason success (the 2-byte short form). */
int mqttpkt_puback(struct mqttpkt_buf *b, uint16_t id);
int mqttpkt_pingreq(struct mqttpkt_buf *b);
/* DISCONNECT; MQTT 5 with reason (0 normal, 4 "with will message"). */
int mqttpkt_disconnect(struct mqttpkt_buf *b, int version, uint8_t reason);

/* Size in bytes of the PUBLISH mqttpkt_publish would append (for checking
 * against the broker's Maximum Packet Size before queueing). Meaningful for
 * a PUBLISH that mqttpkt_publish accepts; SIZE_MAX if it cannot be counted. */
size_t mqttpkt_publish_size(int version, const struct mqttpkt_pub *p);

#endif
