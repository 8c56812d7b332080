/* SPDX-License-Identifier: MIT */
/*
 * mqtt.h - the MQTT link: one persistent MQTT 5 session (3.1.1 fallback)
 * between the event loop and the broker, over paho MQTTAsync.
 *
 * Threads. paho runs its callbacks on its own threads; this module turns them
 * into queues that the loop drains. Every function below is called on the
 * loop thread only (one thread owns a struct mqtt), except mqtt_fd() which
 * is constant. Nothing here touches the store: the loop does.
 *
 * The loop adds mqtt_fd() (an eventfd, EPOLLIN) to its epoll set. When it is
 * readable, the loop calls, in this order:
 *   1. mqtt_take_events()     reads the eventfd, reports (re)connects/losses
 *                             (required on every wake-up: the module writes
 *                             the eventfd again only after this call)
 *   2. mqtt_take_delivered()  tags whose PUBACK arrived -> delete outbox rows
 *      mqtt_take_failed()     tags that will not be acknowledged -> resend later
 *                             (take each until it returns 0)
 *   3. mqtt_take_inbound()    messages waiting for the loop; process them all
 *                             in one transaction, commit, then call
 *                             mqtt_inbound_done() for each.
 * and once per loop turn, after its last mqtt_publish() and before it sleeps:
 *   4. mqtt_flush()           hands the turn's publishes to paho at once.
 *
 * The ack rule (docs/mqtt.md). An inbound QoS 1 message is acknowledged to
 * the broker only after mqtt_inbound_done(msg, true). Until then the paho
 * thread that delivered it stays blocked, so the PUBACK is withheld; if the
 * process dies, the broker delivers the message again (persistent session).
 * mqtt_inbound_done(msg, false) refuses it for now: it is offered to the
 * loop again after a short delay, still unacknowledged. (paho's own
 * "return 0 from messageArrived" is NOT used for this: paho 1.3.12 sends
 * the PUBACK anyway and keeps the message only in memory.)
 * A consequence: one connection has at most one inbound message in flight,
 * and a loop that does not answer for longer than about 1.5 x keepalive gets
 * the connection dropped by the broker (it reconnects and the message comes
 * again with dup set; processing must be idempotent).
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

/* Create the client and start connecting (in the background, retrying with
 * backoff reconnect_min_s..reconnect_max_s until it succeeds, and again
 * after every loss). *out is new: release with mqtt_close().
 * Errors: -EINVAL (bad options), EC_ECONFIG (paho refused them), -ENOMEM,
 * -errno of eventfd. */
int mqtt_open(const struct mqtt_opts *opts, struct mqtt **out);

/* Disconnect cleanly (no will), waiting up to timeout_ms for publishes in
 * flight, release every blocked delivery unacknowledged, then free. Messages
 * taken and not yet done are abandoned (the broker delivers them again);
 * the loop must not use them afterwards. Accepts NULL. */
void mqtt_close(struct mqtt *m, int timeout_ms);

/* The eventfd to watch for EPOLLIN. Constant for the module's life. */
int mqtt_fd(const struct mqtt *m);

/* Flush unflushed publishes, read the eventfd and report connection
 * events. */
void mqtt_take_events(struct mqtt *m, struct mqtt_events *ev);

/* The messages waiting for the loop, oldest first, linked by ->next; NULL if
 * none. Each must be given back with mqtt_inbound_done(). */
struct mqtt_msg *mqtt_take_inbound(struct mqtt *m);

/* Give back a message from mqtt_take_inbound(). committed = true: it has been
 * durably processed; the broker gets its PUBACK now. false: not now; it is
 * offered again after refuse_retry_ms, unacknowledged. msg is invalid after
 * the call. Read msg->next before calling this. */
void mqtt_inbound_done(struct mqtt *m, struct mqtt_msg *msg, bool committed);

/* Publish at QoS 1. 0: accepted; the tag will be reported exactly once, by
 * mqtt_take_delivered() (PUBACK received) or mqtt_take_failed() (refused by
 * the broker, or the connection was lost first: resend it after the next
 * connect). Errors, tag not reported: -ENOTCONN (not connected: fails
 * fast), -EAGAIN (window full, see mqtt_can_publish()), -EINVAL, -EMSGSIZE,
 * -ENOMEM. An accepted publish waits in the loop's own list until
 * mqtt_flush() (no lock, no thread wake-up per message). */
int mqtt_publish(struct mqtt *m, const struct mqtt_pub *pub);

/* Hand every publish accepted since the last flush to the module's sender
 * thread: one lock and one wake-up for the whole batch. Call it once per
 * loop turn, after the turn's last mqtt_publish() and before the loop
 * sleeps. If the loop forgets, nothing is stuck: the first unflushed
 * publish of a turn also makes mqtt_fd() readable, and mqtt_take_events()
 * flushes; that costs the loop one extra turn (mqtt_flush() takes the
 * wake-up back when it finds nothing else for the loop). Cheap when there
 * is nothing to flush. */
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
