/* SPDX-License-Identifier: MIT */
/*
 * mqtt.h - the MQTT link: one persistent MQTT 5 session (3.1.1 fallback)
 * between the event loop and the broker, on the loop's thread (mqtt.c speaks
 * the protocol itself, with mqttpkt; TLS through tlsframe).
 *
 * Threads: none. Every function below is called on the thread that owns the
 * struct mqtt (the loop's).
 *
 * The loop adds mqtt_fd() (EPOLLIN; it is an epoll fd of the module's own,
 * constant for its life) to its epoll set. When it is readable, the loop
 * calls, in this order:
 *   1. mqtt_take_events()     does the I/O and the timers: reads and
 *                             parses, writes, connects, pings; reports
 *                             (re)connects and losses
 *   2. mqtt_take_delivered()  tags the broker answered -> delete outbox rows
 *      mqtt_take_failed()     tags whose connection was lost -> resend later
 *                             (take each until it returns 0)
 *   3. mqtt_take_inbound()    messages waiting for the loop; process them all
 *                             in one transaction, commit, then call
 *                             mqtt_inbound_done() for each.
 * and once per loop turn, after its last mqtt_publish() and
 * mqtt_inbound_done() and before it sleeps:
 *   4. mqtt_flush()           writes the turn's publishes and PUBACKs.
 *
 * The ack rule (docs/mqtt.md). An inbound QoS 1 message is acknowledged to
 * the broker only after mqtt_inbound_done(msg, true), and only on the
 * connection it came on; if the process dies or the connection drops first,
 * the broker delivers it again (persistent session, DUP set): processing
 * must be idempotent. mqtt_inbound_done(msg, false) refuses it for now: it
 * is offered to the loop again after refuse_retry_ms, still unacknowledged.
 * Several messages may be in flight to us at once (our MQTT 5 Receive
 * Maximum: as many as 16 MiB holds at max_message, at most 256), so one
 * commit covers every message that arrived in a turn.
 */
#ifndef EC_MQTT_H
#define EC_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mqtt;

struct mqtt_opts {
	const char *uri;        /* tcp:// mqtt:// ssl:// mqtts://host:port */
	const char *client_id;  /* stable across restarts: the session's key */
	const char *username;   /* NULL = none */
	const char *password;   /* NULL = none */
	const char *ca_file;    /* TLS (ssl://, mqtts://): trusted CAs; NULL = system */
	const char *cert_file;  /* TLS client certificate (PEM); NULL = none */
	const char *key_file;   /* its key (PEM); NULL = in cert_file or none */
	int keepalive_s;        /* 0 = 30 */
	uint32_t session_expiry_s; /* 0 = 7 days; MQTT 5 only */
	int reconnect_min_s;    /* 0 = 1 */
	int reconnect_max_s;    /* 0 = 30 */
	unsigned max_inflight;  /* publish window; 0 = 256; capped on every
	                           connect by the broker's receive maximum */
	unsigned refuse_retry_ms; /* delay before a refused message is offered
	                             again; 0 = 200 */
	/* Topic filters subscribed at QoS 1 on every connect (borrowed only
	 * during mqtt_open: copied). */
	const char *const *subs;
	size_t n_subs;
	/* Inbound payloads up to this many bytes are held whole; a larger
	 * PUBLISH is delivered with oversize set and only its first bytes, the
	 * rest discarded as it arrives. 0 = 1 MiB. */
	size_t max_message;
	/* Will: published retained at QoS 1 by the broker if we vanish.
	 * will_topic NULL = no will. */
	const char *will_topic;
	const void *will_payload;
	size_t will_len;
	/* Published retained at QoS 1 by this module on every connect, before
	 * the loop hears of it. NULL = none (the loop may publish it itself on
	 * MQTT connect events). */
	const char *online_topic;
	const void *online_payload;
	size_t online_len;
};

/* One inbound message. All fields are borrowed from the module and valid
 * until mqtt_inbound_done() is called for it. */
struct mqtt_msg {
	struct mqtt_msg *next;  /* next in the list from mqtt_take_inbound() */
	const char *topic;      /* NUL-terminated copy; topic_len excludes the NUL */
	size_t topic_len;
	const uint8_t *payload; /* NULL when len == 0 */
	size_t len;
	const char *content_type;   /* MQTT 5 content type, NULL if absent */
	const char *response_topic; /* MQTT 5 response topic, NULL if absent */
	const uint8_t *correlation; /* MQTT 5 correlation data, NULL if absent */
	size_t correlation_len;
	int qos;
	bool dup;        /* the broker says it may have been delivered before */
	bool retained;
	unsigned offers; /* 1 the first time the loop sees it, +1 per refusal */
	size_t oversize; /* 0, or the payload's size when it was over
	                    max_message: payload holds only its first len bytes */
};

/* What happened to the connection since the last mqtt_take_events(). */
struct mqtt_events {
	unsigned connects; /* successful (re)connects: publish "online" and
	                      restart the outbox drain from its start */
	unsigned losses;   /* connections lost */
	unsigned subacks;  /* the whole subscription list granted (once per connect) */
	bool connected;    /* connected now */
};

/* One outgoing message, always QoS 1. Everything is borrowed for the call. */
struct mqtt_pub {
	const char *topic;
	const void *payload;
	size_t len;
	bool retain;
	uint32_t expiry_s;          /* message expiry; 0 = none (MQTT 5 only) */
	const char *content_type;   /* NULL = none (MQTT 5 only) */
	const char *response_topic; /* NULL = none (MQTT 5 only): makes it a request */
	const void *correlation;    /* correlation data; NULL = none (MQTT 5 only) */
	size_t correlation_len;
	uint64_t tag;               /* the caller's id, reported back once */
};

/* Create the client; it connects from the first mqtt_take_events() on,
 * retrying with backoff reconnect_min_s..reconnect_max_s until it succeeds,
 * and again after every loss. *out is new: release with mqtt_close().
 * Errors: -EINVAL (bad options or URI), EC_ECONFIG (TLS files that do not
 * load; logged), -ENOMEM, -errno of epoll or timerfd. */
int mqtt_open(const struct mqtt_opts *opts, struct mqtt **out);

/* Disconnect cleanly (no will), waiting up to timeout_ms for publishes in
 * flight, then free. Messages taken and not yet done are abandoned without
 * a PUBACK (the broker delivers them again); the loop must not use them
 * afterwards. Accepts NULL. */
void mqtt_close(struct mqtt *m, int timeout_ms);

/* The fd to watch for EPOLLIN (or POLLIN). Constant for the module's life. */
int mqtt_fd(const struct mqtt *m);

/* Do the pending I/O and timers and report connection events. */
void mqtt_take_events(struct mqtt *m, struct mqtt_events *ev);

/* The messages waiting for the loop, oldest first, linked by ->next; NULL if
 * none: as many as fit in budget payload bytes, and at least one. The rest
 * wait for the next wake-up, which comes at once. Each must be given back
 * with mqtt_inbound_done(). */
struct mqtt_msg *mqtt_take_inbound(struct mqtt *m, size_t budget);

/* Give back a message from mqtt_take_inbound(). committed = true: it has been
 * durably processed; the broker gets its PUBACK now. false: not now; it is
 * offered again after refuse_retry_ms, unacknowledged. msg is invalid after
 * the call. Read msg->next before calling this. */
void mqtt_inbound_done(struct mqtt *m, struct mqtt_msg *msg, bool committed);

/* Publish at QoS 1. 0: accepted; the tag will be reported exactly once, by
 * mqtt_take_delivered() (its PUBACK arrived; a refusal, reason code 0x80 or
 * above, is logged, MQTT-PUBLISH, and counts as answered: the broker would
 * refuse it again) or mqtt_take_failed() (the connection was lost first:
 * resend it after the next connect). Errors, tag not reported: -ENOTCONN (not connected: fails
 * fast), -EAGAIN (window full, see mqtt_can_publish()), -EINVAL, -EMSGSIZE,
 * -ENOMEM. An accepted publish is encoded into the module's output buffer
 * and written by the next mqtt_flush() (or mqtt_take_events()). */
int mqtt_publish(struct mqtt *m, const struct mqtt_pub *pub);

/* Write the publishes and PUBACKs queued since the last flush, as far as the
 * socket takes them now (the rest when it is writable: mqtt_fd() wakes the
 * loop). Call it once per loop turn, after the turn's last mqtt_publish()
 * and mqtt_inbound_done() and before the loop sleeps: a forgotten flush
 * waits for the next wake-up. Cheap when there is nothing to write. */
void mqtt_flush(struct mqtt *m);

/* True when connected and the publish window has room. The window is
 * max_inflight, capped by the broker's receive maximum (MQTT 5: mosquitto
 * grants 20 unless max_inflight_messages says otherwise). */
bool mqtt_can_publish(struct mqtt *m);
/* Publishes accepted and not yet reported. */
unsigned mqtt_inflight(struct mqtt *m);

/* Copy up to max reported tags into tags[]; returns how many. */
size_t mqtt_take_delivered(struct mqtt *m, uint64_t *tags, size_t max);
size_t mqtt_take_failed(struct mqtt *m, uint64_t *tags, size_t max);

/* False once the broker refused MQTT 5 and the link fell back to 3.1.1: then
 * publications carry no properties (no expiry, content type, correlation
 * data) and there are no response topics. */
bool mqtt_is_v5(struct mqtt *m);

#endif
