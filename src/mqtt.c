/* SPDX-License-Identifier: MIT */
/*
 * mqtt.c - the MQTT link over paho MQTTAsync: the only file that includes
 * MQTTAsync.h. It owns the paho client, the hand-off of paho's callbacks to
 * the event loop (queues + one eventfd), the publish window and the mapping
 * of paho's error codes to ours.
 *
 * It does not decode payloads, touch the store or decide what to publish:
 * the loop does (see mqtt.h for the calling order and docs/mqtt.md).
 *
 * Why messageArrived blocks. paho 1.3.12 calls messageArrived from its
 * receive thread *before* it writes the PUBACK, and writes the PUBACK after
 * the callback returns, whatever it returns: returning 0 only makes paho keep
 * the message in memory and call again later (measured: the broker did not
 * redeliver a message refused with 0 after the client died). So the only way
 * to keep the broker responsible for a message until the loop has committed
 * it is not to return. The callback therefore waits for the loop's verdict;
 * a refusal re-offers the message from here, still unacknowledged.
 *
 * Why a worker thread publishes. paho holds its process-wide mutex while
 * messageArrived runs (measured: MQTTAsync_isConnected() blocked behind a
 * waiting callback). Any paho call from the loop while a delivery waits for
 * the loop would deadlock, so the loop never calls paho after mqtt_open():
 * mqtt_publish() keeps a copy in a loop-private list, mqtt_flush() moves the
 * turn's list to a worker thread of this module (one lock, one wake-up) and
 * the worker calls MQTTAsync_sendMessage() for all of it. PUBACK tags go
 * back in a queue; the eventfd is written once per loop wake-up (armed).
 *
 * Why one paho client per connection. With automaticReconnect, paho 1.3.12
 * carries the publishes of a lost connection over to the next one: QoS 1
 * messages in flight are resent with DUP after the CONNACK (or, when the
 * broker lost the session, freed by paho's session cleaning right then),
 * and commands still queued are sent on the new connection. Those code
 * paths race with the paho thread failing and freeing the lost connection's
 * commands: under load a paho thread read a publish topic another had freed
 * (ASan: heap-use-after-free in strlen on paho's copy made by
 * MQTTAsync_sendMessage; without ASan subscribers got a status whose first
 * 8 bytes were garbage; cf. paho #1310, #1592). Even when nothing crashes,
 * the pre-loss queue (already reported failed to the loop) drips out at the
 * broker's receive maximum per second, ahead of the re-subscription. None
 * of that is needed: the loop resends from its outbox after every connect.
 * So a client connects once (automaticReconnect off). When it loses its
 * connection or fails to connect, the worker destroys it (never inside a
 * callback) and, after a backoff, creates a fresh client with the same
 * client id and clean start off: the broker resumes the session, and paho
 * has nothing of the old connection to retry.
 *
 * Why a callback kills the connection before giving a message back. When the
 * module closes, a delivery that was not committed must not be acknowledged,
 * yet returning from messageArrived acknowledges it and paho cannot be asked
 * to disconnect first (its mutex is held). So the callback ends the
 * connection at the broker itself: it connects a raw MQTT client with the
 * same client id (the broker then closes our connection: session takeover),
 * disconnects it normally (the session stays), and only then returns.
 * Plain tcp:// only; over TLS it logs an error and the message may be lost.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <MQTTAsync.h>

#include "edgecoord/err.h"
#include "log.h"
#include "mqtt.h"

#define DEF_KEEPALIVE_S 30
#define DEF_EXPIRY_S (7u * 24 * 3600)
#define DEF_RECONNECT_MIN_S 1
#define DEF_RECONNECT_MAX_S 30
#define DEF_WINDOW 256
#define DEF_REFUSE_MS 200
#define CONNECT_TIMEOUT_S 10

enum verdict { V_PENDING, V_COMMIT, V_REFUSE, V_ABORT };

/* One delivered message, shared by the paho thread that waits in
 * on_message() and the loop. refs counts both holders; the node is freed by
 * whichever lets go last, so a callback released by mqtt_close() and a late
 * mqtt_inbound_done() never free twice. Guarded by m->lock. */
struct inbound {
	struct mqtt_msg msg;          /* first: the loop's handle casts back */
	struct inbound *lprev, *lnext; /* m->live: every node not yet freed */
	int refs;
	enum verdict verdict;
	bool queued;                  /* in m->q, not yet taken by the loop */
};

/* A publish in flight. Slots live as long as the module, so a late or
 * doubled paho callback (#1341) never touches freed memory; token tells a
 * stale callback from the current one. */
struct slot {
	struct mqtt *m;
	uint64_t tag;
	int token;  /* -1 until MQTTAsync_sendMessage() returned it */
	unsigned gen; /* bumped on every use: tells a stale request */
	bool busy;
};

/* A publish on its way to paho: one allocation, fields copied. It waits in
 * the loop's list until mqtt_flush(), then in the worker's queue. */
struct pubreq {
	struct pubreq *next;
	uint64_t tag;
	unsigned idx, gen;
	int rc, token;  /* the worker's MQTTAsync_sendMessage() outcome */
	bool live;      /* still wanted when the worker took it */
	char *topic;
	void *payload;
	size_t len;
	bool retain;
	uint32_t expiry_s;
	char *content_type;
	char *response_topic;
	void *correlation;
	size_t correlation_len;
};

/* A reported publish: the caller's tag and the slot to give back. */
struct report {
	uint64_t tag;
	unsigned idx;
};

struct mqtt {
	MQTTAsync client;     /* written with lock held, by the worker (and
	                         mqtt_open/mqtt_close when no worker runs) */
	int efd;
	pthread_mutex_t lock;
	pthread_cond_t cond;  /* verdicts, close phases, callbacks leaving */
	pthread_cond_t wcond; /* the worker: publishes queued, restart, stop */
	MQTTAsync anchor;     /* never connected; keeps paho's count above 0 */

	/* copied options, constant */
	char *uri, *client_id, *username, *password, *ca, *cert, *key;
	char **subs;
	int *sub_qos;
	int n_subs;
	char *will_topic, *online_topic;
	void *will_payload, *online_payload;
	size_t will_len, online_len;
	int keepalive_s, rmin_s, rmax_s;
	uint32_t expiry_s;
	unsigned refuse_ms;

	/* guarded by lock */
	bool v5;
	bool ever_connected, want_fallback;
	bool restart;                 /* the worker must replace the client */
	bool destroying;              /* the worker is destroying a client */
	bool armed;                   /* eventfd written, loop has not read it */
	bool closing, disc_done, worker_stop, worker_started;
	pthread_t worker;
	struct pubreq *pq_head, **pq_tail; /* for the worker */
	unsigned connects, losses, subacks;
	int in_cb;                    /* paho callbacks inside our code */
	struct mqtt_msg *qhead, **qtail; /* waiting for the loop */
	struct inbound *live;
	struct slot *slots;
	unsigned window;              /* slots allocated (max_inflight) */
	struct report *delivered, *failed; /* capacity window each */
	size_t n_delivered, n_failed;
	struct slot online_slot;      /* context of the module's own publish */

	/* written under lock, read without it by the loop */
	_Atomic bool connected;
	_Atomic unsigned limit;       /* usable window: max_inflight capped by
	                                 the broker's receive maximum */

	int backoff_s;                /* guarded by lock: next reconnect delay */

	/* loop thread only */
	unsigned inflight;            /* accepted, not yet taken as reported */
	unsigned *ring;               /* free slot indices, FIFO */
	unsigned ring_head, ring_count;
	struct pubreq *lq_head, **lq_tail; /* published, not yet flushed */
	bool self_wake;               /* the loop will wake and flush them */
};

/* ---- helpers ------------------------------------------------------------ */

static int map_paho(int rc)
{
	switch (rc) {
	case MQTTASYNC_SUCCESS:
		return 0;
	case MQTTASYNC_DISCONNECTED:
		return -ENOTCONN;
	case MQTTASYNC_MAX_MESSAGES_INFLIGHT:
	case MQTTASYNC_MAX_BUFFERED_MESSAGES:
	case MQTTASYNC_MAX_BUFFERED:
	case MQTTASYNC_NO_MORE_MSGIDS:
		return -EAGAIN;
	case MQTTASYNC_BAD_UTF8_STRING:
	case MQTTASYNC_NULL_PARAMETER:
	case MQTTASYNC_TOPICNAME_TRUNCATED:
	case MQTTASYNC_BAD_STRUCTURE:
	case MQTTASYNC_BAD_QOS:
	case MQTTASYNC_0_LEN_WILL_TOPIC:
		return -EINVAL;
	case MQTTASYNC_SSL_NOT_SUPPORTED:
	case MQTTASYNC_BAD_PROTOCOL:
	case MQTTASYNC_BAD_MQTT_OPTION:
	case MQTTASYNC_WRONG_MQTT_VERSION:
		return EC_ECONFIG;
	default:
		return EC_EPROTO;
	}
}

static const char *reason_text(int reason)
{
	const char *s = MQTTReasonCode_toString((enum MQTTReasonCodes)reason);
	return s ? s : "unknown reason code";
}

static const char *paho_text(int rc)
{
	const char *s = MQTTAsync_strerror(rc);
	return s ? s : "unknown paho error";
}

/* lock held. One eventfd write per loop wake-up, however many events,
 * tags and messages pile up before the loop reads it (mqtt_take_events()
 * disarms). */
static void signal_loop(struct mqtt *m)
{
	uint64_t one = 1;

	if (m->armed)
		return;
	m->armed = true;
	/* EAGAIN means the counter is already huge: the loop will wake anyway. */
	if (write(m->efd, &one, sizeof one) < 0 && errno != EAGAIN)
		log_warn("mqtt: eventfd write");
}

static void deadline_in(struct timespec *ts, long ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* Every paho callback brackets its work with these, so that mqtt_close()
 * can wait until no paho thread is inside this module any more. */
static void cb_enter(struct mqtt *m)
{
	pthread_mutex_lock(&m->lock);
	m->in_cb++;
}

static void cb_leave(struct mqtt *m)
{
	if (--m->in_cb == 0)
		pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
}

static char *dup_or_null(const char *s, int *err)
{
	char *d;

	if (!s)
		return NULL;
	if (!(d = strdup(s)))
		*err = -ENOMEM;
	return d;
}

static void *memdup_or_null(const void *p, size_t len, int *err)
{
	void *d;

	if (!p)
		return NULL;
	if (!(d = malloc(len ? len : 1))) {
		*err = -ENOMEM;
		return NULL;
	}
	if (len)
		memcpy(d, p, len);
	return d;
}

/* ---- inbound: paho thread side -------------------------------------------- */

static const MQTTLenString *prop_data(MQTTAsync_message *pm, enum MQTTPropertyCodes code)
{
	MQTTProperty *p = MQTTProperties_getProperty(&pm->properties, code);
	if (!p || p->value.data.len < 0 || (p->value.data.len > 0 && !p->value.data.data))
		return NULL;
	return &p->value.data;
}

/* Copy what the loop needs into one allocation; paho's buffers stay paho's. */
static struct inbound *inbound_new(const char *topic, int topiclen, MQTTAsync_message *pm)
{
	const MQTTLenString *ct = prop_data(pm, MQTTPROPERTY_CODE_CONTENT_TYPE);
	const MQTTLenString *rt = prop_data(pm, MQTTPROPERTY_CODE_RESPONSE_TOPIC);
	const MQTTLenString *cd = prop_data(pm, MQTTPROPERTY_CODE_CORRELATION_DATA);
	size_t tlen = topiclen > 0 ? (size_t)topiclen : strlen(topic);
	size_t plen = pm->payloadlen > 0 ? (size_t)pm->payloadlen : 0;
	size_t ctl = ct ? (size_t)ct->len : 0, rtl = rt ? (size_t)rt->len : 0;
	size_t cdl = cd ? (size_t)cd->len : 0;
	struct inbound *n;
	char *p;

	/* Each length is below 2^31 (paho uses int), so the sum cannot wrap. */
	n = calloc(1, sizeof *n + tlen + 1 + plen + ctl + 1 + rtl + 1 + cdl);
	if (!n)
		return NULL;
	p = (char *)(n + 1);
	memcpy(p, topic, tlen);
	p[tlen] = '\0';
	n->msg.topic = p;
	n->msg.topic_len = tlen;
	p += tlen + 1;
	if (plen) {
		memcpy(p, pm->payload, plen);
		n->msg.payload = (const uint8_t *)p;
		n->msg.len = plen;
		p += plen;
	}
	if (ct) {
		if (ctl)
			memcpy(p, ct->data, ctl);
		p[ctl] = '\0';
		n->msg.content_type = p;
		p += ctl + 1;
	}
	if (rt) {
		if (rtl)
			memcpy(p, rt->data, rtl);
		p[rtl] = '\0';
		n->msg.response_topic = p;
		p += rtl + 1;
	}
	if (cd) {
		if (cdl)
			memcpy(p, cd->data, cdl);
		n->msg.correlation = (const uint8_t *)p;
		n->msg.correlation_len = cdl;
	}
	n->msg.qos = pm->qos;
	n->msg.dup = pm->dup != 0;
	n->msg.retained = pm->retained != 0;
	return n;
}

/* lock held */
static void live_remove_and_free(struct mqtt *m, struct inbound *n)
{
	if (n->lprev)
		n->lprev->lnext = n->lnext;
	else
		m->live = n->lnext;
	if (n->lnext)
		n->lnext->lprev = n->lprev;
	free(n);
}

/* lock held */
static void inbound_unref(struct mqtt *m, struct inbound *n)
{
	if (--n->refs == 0)
		live_remove_and_free(m, n);
}

static void takeover(struct mqtt *m);

static int on_message(void *ctx, char *topic, int topiclen, MQTTAsync_message *pm)
{
	struct mqtt *m = ctx;
	struct inbound *n;
	struct timespec ts;
	bool warned = false;
	int ret = 0;

	cb_enter(m);
	/* Out of memory: wait and retry rather than return, because returning
	 * acknowledges the message (see the top of this file). */
	while (!(n = inbound_new(topic, topiclen, pm)) && !m->closing) {
		log_warnx("MQTT-NOMEM cannot copy an inbound message; retrying");
		deadline_in(&ts, 1000);
		pthread_cond_timedwait(&m->cond, &m->lock, &ts);
	}
	if (n) {
		n->refs = 1; /* this callback */
		n->lnext = m->live;
		if (m->live)
			m->live->lprev = n;
		m->live = n;
	}
	while (n && !m->closing) {
		n->verdict = V_PENDING;
		n->msg.offers++;
		n->msg.next = NULL;
		n->queued = true;
		n->refs++; /* the queue, then the loop */
		*m->qtail = &n->msg;
		m->qtail = &n->msg.next;
		signal_loop(m);
		deadline_in(&ts, m->keepalive_s * 500L);
		while (n->verdict == V_PENDING) {
			if (pthread_cond_timedwait(&m->cond, &m->lock, &ts) == ETIMEDOUT && !warned) {
				warned = true;
				log_warnx("MQTT-STALL inbound message on %s not answered for %d s; "
				          "the broker may drop the connection and redeliver it",
				          n->msg.topic, m->keepalive_s / 2);
			}
		}
		if (n->verdict == V_COMMIT) {
			ret = 1;
			break;
		}
		if (n->verdict == V_ABORT)
			break;
		/* Refused: offer it again later, still unacknowledged. */
		deadline_in(&ts, m->refuse_ms);
		while (!m->closing && pthread_cond_timedwait(&m->cond, &m->lock, &ts) != ETIMEDOUT)
			;
	}
	if (n)
		inbound_unref(m, n);
	if (ret) {
		MQTTAsync_freeMessage(&pm);
		MQTTAsync_free(topic);
	} else {
		/* Closing: end the connection at the broker before paho writes
		 * the PUBACK that follows our return. */
		pthread_mutex_unlock(&m->lock);
		takeover(m);
		pthread_mutex_lock(&m->lock);
	}
	cb_leave(m);
	return ret;
}

/* ---- inbound: loop side --------------------------------------------------- */

struct mqtt_msg *mqtt_take_inbound(struct mqtt *m)
{
	struct mqtt_msg *head;

	pthread_mutex_lock(&m->lock);
	head = m->qhead;
	for (struct mqtt_msg *p = head; p; p = p->next)
		((struct inbound *)p)->queued = false;
	m->qhead = NULL;
	m->qtail = &m->qhead;
	pthread_mutex_unlock(&m->lock);
	return head;
}

void mqtt_inbound_done(struct mqtt *m, struct mqtt_msg *msg, bool committed)
{
	struct inbound *n = (struct inbound *)msg;

	pthread_mutex_lock(&m->lock);
	if (n->verdict == V_PENDING) {
		n->verdict = committed ? V_COMMIT : V_REFUSE;
		pthread_cond_broadcast(&m->cond);
	}
	inbound_unref(m, n);
	pthread_mutex_unlock(&m->lock);
}

/* ---- connection callbacks ------------------------------------------------- */

static void on_sub_ok5(void *ctx, MQTTAsync_successData5 *r)
{
	struct mqtt *m = ctx;
	bool ok = true;

	cb_enter(m);
	if (m->n_subs == 1) {
		ok = r->reasonCode < 0x80;
	} else {
		for (int i = 0; i < r->alt.sub.reasonCodeCount; i++)
			if (r->alt.sub.reasonCodes[i] >= 0x80) {
				log_warnx("MQTT-SUBSCRIBE %s refused: %s", m->subs[i < m->n_subs ? i : 0],
				          reason_text(r->alt.sub.reasonCodes[i]));
				ok = false;
			}
	}
	if (ok) {
		m->subacks++;
		signal_loop(m);
	} else if (m->n_subs == 1) {
		log_warnx("MQTT-SUBSCRIBE %s refused: %s", m->subs[0],
		          reason_text(r->reasonCode));
	}
	cb_leave(m);
}

static void on_sub_ok3(void *ctx, MQTTAsync_successData *r)
{
	struct mqtt *m = ctx;
	bool ok = true;

	cb_enter(m);
	if (m->n_subs == 1)
		ok = r->alt.qos < 0x80;
	else
		for (int i = 0; i < m->n_subs; i++)
			ok = ok && r->alt.qosList && r->alt.qosList[i] < 0x80;
	if (ok) {
		m->subacks++;
		signal_loop(m);
	} else {
		log_warnx("MQTT-SUBSCRIBE refused by the broker");
	}
	cb_leave(m);
}

static void on_sub_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
	struct mqtt *m = ctx;
	cb_enter(m);
	if (!m->destroying && !m->closing)
		log_warnx("MQTT-SUBSCRIBE failed: %s (%s)", paho_text(r->code),
		          reason_text(r->reasonCode));
	cb_leave(m);
}

static void on_sub_fail3(void *ctx, MQTTAsync_failureData *r)
{
	struct mqtt *m = ctx;
	cb_enter(m);
	if (!m->destroying && !m->closing)
		log_warnx("MQTT-SUBSCRIBE failed: %s", paho_text(r->code));
	cb_leave(m);
}

static void on_pub_ok5(void *ctx, MQTTAsync_successData5 *r);
static void on_pub_fail5(void *ctx, MQTTAsync_failureData5 *r);
static void on_pub_ok3(void *ctx, MQTTAsync_successData *r);
static void on_pub_fail3(void *ctx, MQTTAsync_failureData *r);

/* Runs on every connect, the first and each automatic reconnect (the
 * connect onSuccess runs only on the first: paho #943/#1503). The session
 * may not have survived (broker restarted without persistence), so the
 * subscriptions are made again every time. Called without m->lock: paho
 * API calls are never made while holding it. */
static void resubscribe_and_announce(struct mqtt *m, MQTTAsync client, bool v5)
{
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	int rc;

	ro.context = m;
	if (v5) {
		ro.onSuccess5 = on_sub_ok5;
		ro.onFailure5 = on_sub_fail5;
	} else {
		ro.onSuccess = on_sub_ok3;
		ro.onFailure = on_sub_fail3;
	}
	if (m->n_subs > 0) {
		rc = MQTTAsync_subscribeMany(client, m->n_subs, m->subs, m->sub_qos, &ro);
		if (rc != MQTTASYNC_SUCCESS)
			log_warnx("MQTT-SUBSCRIBE cannot queue: %s", paho_text(rc));
	}
	if (m->online_topic) {
		MQTTAsync_message msg = MQTTAsync_message_initializer;
		MQTTAsync_responseOptions po = MQTTAsync_responseOptions_initializer;

		msg.payload = m->online_payload;
		msg.payloadlen = (int)m->online_len;
		msg.qos = 1;
		msg.retained = 1;
		po.context = &m->online_slot;
		if (v5) {
			po.onSuccess5 = on_pub_ok5;
			po.onFailure5 = on_pub_fail5;
		} else {
			po.onSuccess = on_pub_ok3;
			po.onFailure = on_pub_fail3;
		}
		rc = MQTTAsync_sendMessage(client, m->online_topic, &msg, &po);
		if (rc != MQTTASYNC_SUCCESS)
			log_warnx("MQTT-ONLINE cannot publish: %s", paho_text(rc));
	}
}

/* paho 1.3.12 never sets TCP_NODELAY and does not expose its socket. With
 * Nagle on, a small write (a PUBACK, a status PUBLISH) waits behind an
 * unacknowledged one until the broker's delayed ACK, ~40 ms on Linux:
 * measured, one submission per message ran at ~400/s with a p50 of 115 ms
 * at half that rate. So set it on every connected TCP socket we hold; the
 * others (agent sessions) want it anyway (docs/protocol.md), and a socket
 * closed meanwhile by another thread only makes setsockopt fail. */
static void tcp_nodelay_all(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	if (!d)
		return;
	while ((e = readdir(d))) {
		struct sockaddr_storage sa;
		socklen_t len = sizeof sa;
		int one = 1, fd = atoi(e->d_name);
		if (fd <= 2 || fd == dirfd(d))
			continue;
		if (getpeername(fd, (struct sockaddr *)&sa, &len) == 0 &&
		    (sa.ss_family == AF_INET || sa.ss_family == AF_INET6))
			(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	}
	closedir(d);
}

static void on_connected(void *ctx, char *cause)
{
	struct mqtt *m = ctx;
	MQTTAsync client;
	bool v5;

	cb_enter(m);
	if (!m->closing && !m->destroying && !m->restart && m->client) {
		m->connected = true;
		m->ever_connected = true;
		m->connects++;
		m->backoff_s = m->rmin_s;
		client = m->client;
		v5 = m->v5;
		log_info("MQTT-CONNECTED %s as %s (MQTT %s)", m->uri, m->client_id,
		         v5 ? "5" : "3.1.1");
		tcp_nodelay_all();
		pthread_mutex_unlock(&m->lock);
		/* in_cb still counts us: mqtt_close() cannot destroy the client
		 * before this returns. */
		resubscribe_and_announce(m, client, v5);
		pthread_mutex_lock(&m->lock);
		signal_loop(m);
	}
	cb_leave(m);
}

/* lock held: the slot's publish will not be confirmed. */
static void slot_fail(struct mqtt *m, struct slot *s)
{
	s->busy = false;
	m->failed[m->n_failed++] = (struct report){ s->tag, (unsigned)(s - m->slots) };
	signal_loop(m);
}

/* lock held: every publish in flight will not be confirmed on this
 * connection; the loop resends them after the next connect. */
static void fail_inflight(struct mqtt *m)
{
	for (unsigned i = 0; i < m->window; i++)
		if (m->slots[i].busy)
			slot_fail(m, &m->slots[i]);
}

/* lock held: this client is finished (lost, or never connected). The worker
 * destroys it and connects a new one after a backoff, so that paho never
 * carries a command over to another connection (see the top of the
 * file). */
static void want_restart(struct mqtt *m)
{
	if (m->closing || m->destroying)
		return;
	m->restart = true;
	pthread_cond_signal(&m->wcond);
}

static void on_lost(void *ctx, char *cause)
{
	struct mqtt *m = ctx;

	cb_enter(m);
	if (m->connected && !m->destroying) {
		m->connected = false;
		m->losses++;
		fail_inflight(m);
		if (!m->closing)
			log_warnx("MQTT-LOST connection to %s%s%s; reconnecting", m->uri,
			          cause ? ": " : "", cause ? cause : "");
		signal_loop(m);
	}
	want_restart(m);
	cb_leave(m);
}

/* The connect succeeded: the broker's receive maximum (MQTT 5) caps the
 * window. paho holds back a publish beyond it in its queue, and its send
 * thread looks at that queue again only when another command arrives or a
 * second has passed: a window above the broker's limit would make the tail
 * of every burst wait in paho for up to a second per receive maximum. One
 * place is kept for the module's own online message. */
static void on_connect_ok5(void *ctx, MQTTAsync_successData5 *r)
{
	struct mqtt *m = ctx;
	unsigned limit = m->window;

	cb_enter(m);
	if (MQTTProperties_hasProperty(&r->properties, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM)) {
		int rmax = MQTTProperties_getNumericValue(&r->properties,
		                                          MQTTPROPERTY_CODE_RECEIVE_MAXIMUM);
		unsigned cap = rmax > 0 ? (unsigned)rmax : 1;

		if (m->online_topic && cap > 1)
			cap--;
		if (cap < limit)
			limit = cap;
	}
	m->limit = limit;
	cb_leave(m);
}

static void on_connect_ok3(void *ctx, MQTTAsync_successData *r)
{
	struct mqtt *m = ctx;

	cb_enter(m);
	m->limit = m->window;
	cb_leave(m);
}

static void on_connect_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
	struct mqtt *m = ctx;

	cb_enter(m);
	/* A broker that knows only 3.1.1 answers a version 5 CONNECT with the
	 * 3.1.1 return code 1; a version 5 broker that will not speak 5 uses
	 * reason code 0x84. */
	if (r->reasonCode == MQTTREASONCODE_UNSUPPORTED_PROTOCOL_VERSION ||
	    r->reasonCode == 1 || r->code == 1) {
		if (m->v5 && !m->ever_connected && !m->destroying)
			m->want_fallback = true;
	} else if (!m->destroying && !m->closing) {
		log_warnx("MQTT-CONNECT to %s failed: %s%s%s; retrying", m->uri,
		          r->code ? paho_text(r->code) : reason_text(r->reasonCode),
		          r->message ? ": " : "", r->message ? r->message : "");
	}
	want_restart(m);
	cb_leave(m);
}

static void on_connect_fail3(void *ctx, MQTTAsync_failureData *r)
{
	struct mqtt *m = ctx;

	cb_enter(m);
	if (!m->destroying && !m->closing)
		log_warnx("MQTT-CONNECT to %s failed: %s%s%s; retrying", m->uri,
		          paho_text(r->code), r->message ? ": " : "", r->message ? r->message : "");
	want_restart(m);
	cb_leave(m);
}

static void on_disc_ok5(void *ctx, MQTTAsync_successData5 *r)
{
	struct mqtt *m = ctx;
	cb_enter(m);
	m->disc_done = true;
	pthread_cond_broadcast(&m->cond);
	cb_leave(m);
}

static void on_disc_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
	on_disc_ok5(ctx, NULL);
}

static void on_disc_ok3(void *ctx, MQTTAsync_successData *r)
{
	on_disc_ok5(ctx, NULL);
}

static void on_disc_fail3(void *ctx, MQTTAsync_failureData *r)
{
	on_disc_ok5(ctx, NULL);
}

static int ssl_error_cb(const char *str, size_t len, void *u)
{
	log_warnx("MQTT-TLS %.*s", (int)(len > INT_MAX ? INT_MAX : len), str);
	return 0;
}

/* lock not held; the worker, or mqtt_open() with old NULL. Destroy the
 * finished client old (never inside a callback). Callbacks paho makes from
 * there (the commands it fails) find destroying set. */
static void client_destroy(struct mqtt *m, MQTTAsync old)
{
	if (!old)
		return;
	pthread_mutex_lock(&m->lock);
	m->destroying = true;
	pthread_mutex_unlock(&m->lock);
	/* May wait while a delivery of this client waits for the loop (paho's
	 * mutex); mqtt_close() releases such deliveries. */
	MQTTAsync_destroy(&old);
	pthread_mutex_lock(&m->lock);
	m->destroying = false;
	pthread_mutex_unlock(&m->lock);
}

/* Destroy old (the previous client, if any), create a paho client for the
 * current protocol version, wait delay_ms (unless the worker is told to
 * stop) and start the new client's one connection attempt.
 *
 * Order matters (measured with the outage unit test). Creating the new
 * client before destroying the old one crashed paho (SIGSEGV in
 * MQTTAsync_send, about one run in two). Destroying the last client makes
 * paho stop its threads and wipe its socket state, which leaked the
 * publishes of a write cut short by the loss (LeakSanitizer). So the old
 * client goes first, and m->anchor, an idle client that never connects,
 * keeps paho above zero clients. mqtt_open() (before the worker runs) or
 * the worker; lock not held. */
static int client_start(struct mqtt *m, MQTTAsync old, long delay_ms)
{
	struct timespec ts;
	bool stop;
	MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
	MQTTAsync_connectOptions o = MQTTAsync_connectOptions_initializer5;
	MQTTAsync_connectOptions o3 = MQTTAsync_connectOptions_initializer;
	MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
	MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
	MQTTProperties props = MQTTProperties_initializer;
	MQTTProperty expiry = { .identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL };
	MQTTAsync client = NULL;
	int rc;

	/* Pinned versions only: MQTTVERSION_DEFAULT's own fallback duplicates
	 * tokens (paho #1187). */
	client_destroy(m, old);
	co.MQTTVersion = m->v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
	co.sendWhileDisconnected = 0;
	/* paho applies this bound while connected too: leave room for the
	 * window plus the online message and subscribe commands. */
	co.maxBufferedMessages = (int)m->window + 16;
	m->limit = m->window; /* until the CONNACK says otherwise */
	rc = MQTTAsync_createWithOptions(&client, m->uri, m->client_id,
	                                 MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
	if (rc != MQTTASYNC_SUCCESS) {
		log_warnx("mqtt: cannot create client for %s: %s", m->uri, paho_text(rc));
		return map_paho(rc);
	}
	/* messageArrived before connecting: a resumed session replays its
	 * queue straight after CONNACK. */
	rc = MQTTAsync_setCallbacks(client, m, on_lost, on_message, NULL);
	if (rc == MQTTASYNC_SUCCESS)
		rc = MQTTAsync_setConnected(client, m, on_connected);
	if (rc != MQTTASYNC_SUCCESS)
		goto fail;

	if (!m->v5)
		o = o3;
	o.keepAliveInterval = m->keepalive_s;
	o.connectTimeout = CONNECT_TIMEOUT_S;
	o.retryInterval = 0;
	/* One connection per client: the worker replaces the client instead
	 * (see the top of the file). */
	o.automaticReconnect = 0;
	o.username = m->username;
	o.password = m->password;
	o.context = m;
	if (m->v5) {
		o.MQTTVersion = MQTTVERSION_5;
		o.cleanstart = 0; /* cleansession=1 is refused for v5 (-15) */
		o.cleansession = 0;
		expiry.value.integer4 = m->expiry_s;
		if (MQTTProperties_add(&props, &expiry) != 0) {
			rc = MQTTASYNC_FAILURE;
			goto fail;
		}
		o.connectProperties = &props;
		o.onSuccess5 = on_connect_ok5;
		o.onFailure5 = on_connect_fail5;
	} else {
		o.MQTTVersion = MQTTVERSION_3_1_1;
		o.cleansession = 0;
		o.onSuccess = on_connect_ok3;
		o.onFailure = on_connect_fail3;
	}
	if (m->will_topic) {
		will.topicName = m->will_topic;
		will.message = NULL;
		will.payload.data = m->will_payload;
		will.payload.len = (int)m->will_len;
		will.retained = 1;
		will.qos = 1;
		o.will = &will;
	}
	if (!strncmp(m->uri, "ssl://", 6) || !strncmp(m->uri, "mqtts://", 8)) {
		ssl.trustStore = m->ca;
		ssl.keyStore = m->cert;
		ssl.privateKey = m->key;
		ssl.enableServerCertAuth = 1;
		ssl.verify = 1; /* the certificate must name the host */
		ssl.ssl_error_cb = ssl_error_cb;
		ssl.ssl_error_context = m;
		o.ssl = &ssl;
	}

	pthread_mutex_lock(&m->lock);
	m->client = client;
	deadline_in(&ts, delay_ms);
	while (delay_ms > 0 && !m->worker_stop &&
	       pthread_cond_timedwait(&m->wcond, &m->lock, &ts) != ETIMEDOUT)
		;
	stop = m->worker_stop;
	pthread_mutex_unlock(&m->lock);
	if (stop) { /* mqtt_close() destroys the client */
		MQTTProperties_free(&props);
		return 0;
	}
	rc = MQTTAsync_connect(client, &o);
	MQTTProperties_free(&props);
	if (rc != MQTTASYNC_SUCCESS) {
		pthread_mutex_lock(&m->lock);
		m->client = NULL;
		pthread_mutex_unlock(&m->lock);
		goto fail_logged;
	}
	return 0;

fail:
	MQTTProperties_free(&props);
fail_logged:
	log_warnx("mqtt: cannot start client for %s: %s", m->uri, paho_text(rc));
	MQTTAsync_destroy(&client);
	return map_paho(rc);
}

/* ---- ending the connection without paho ----------------------------------- */

static size_t put_u16(uint8_t *p, size_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
	return 2;
}

static size_t put_str(uint8_t *p, const char *s)
{
	size_t len = strlen(s);
	put_u16(p, len);
	memcpy(p + 2, s, len);
	return len + 2;
}

static int dial(const char *uri)
{
	const char *hp = strstr(uri, "://") + 3;
	char host[256], port[16];
	const char *colon;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
	int fd = -1;

	if (*hp == '[') { /* [v6]:port */
		const char *end = strchr(hp, ']');
		if (!end || end[1] != ':' || (size_t)(end - hp - 1) >= sizeof host)
			return -1;
		snprintf(host, sizeof host, "%.*s", (int)(end - hp - 1), hp + 1);
		colon = end + 1;
	} else {
		if (!(colon = strrchr(hp, ':')) || (size_t)(colon - hp) >= sizeof host)
			return -1;
		snprintf(host, sizeof host, "%.*s", (int)(colon - hp), hp);
	}
	snprintf(port, sizeof port, "%.*s", (int)strcspn(colon + 1, "/"), colon + 1);
	if (getaddrinfo(host, port, &hints, &ai) != 0)
		return -1;
	for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
		struct pollfd p = { .events = POLLOUT };
		int e = 0;
		socklen_t el = sizeof e;

		if ((fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
			continue;
		p.fd = fd;
		if ((connect(fd, a->ai_addr, a->ai_addrlen) == 0 ||
		     (errno == EINPROGRESS && poll(&p, 1, 3000) == 1 &&
		      getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e == 0)))
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

static bool send_all(int fd, const uint8_t *p, size_t len)
{
	while (len) {
		struct pollfd pf = { .fd = fd, .events = POLLOUT };
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
		if (w > 0) {
			p += w;
			len -= (size_t)w;
		} else if (w < 0 && errno == EAGAIN && poll(&pf, 1, 3000) == 1) {
			continue;
		} else {
			return false;
		}
	}
	return true;
}

/* Connect with our client id (clean start off, same session expiry) so the
 * broker closes the paho connection, then disconnect normally: the session,
 * with the unacknowledged message, stays at the broker. Any thread; no paho
 * call. */
static void takeover(struct mqtt *m)
{
	size_t cap = 64 + strlen(m->client_id) + (m->username ? strlen(m->username) : 0) +
	             (m->password ? strlen(m->password) : 0);
	uint8_t *buf, *p, hdr[5], ack[4];
	size_t body, hl = 1, got = 0;
	int fd;

	if (strncmp(m->uri, "tcp://", 6) && strncmp(m->uri, "mqtt://", 7)) {
		log_error("MQTT-CLOSE cannot end a TLS connection before paho acknowledges "
		          "an uncommitted message; it may be lost");
		return;
	}
	if (!(buf = malloc(cap)))
		return;
	p = buf;
	p += put_str(p, "MQTT");
	*p++ = m->v5 ? 5 : 4;
	*p++ = (uint8_t)((m->username ? 0x80 : 0) | (m->password ? 0x40 : 0)); /* clean off */
	p += put_u16(p, 0); /* no keepalive */
	if (m->v5) {
		*p++ = 5; /* properties: session expiry */
		*p++ = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL;
		*p++ = (uint8_t)(m->expiry_s >> 24);
		*p++ = (uint8_t)(m->expiry_s >> 16);
		*p++ = (uint8_t)(m->expiry_s >> 8);
		*p++ = (uint8_t)m->expiry_s;
	}
	p += put_str(p, m->client_id);
	if (m->username)
		p += put_str(p, m->username);
	if (m->password)
		p += put_str(p, m->password);
	body = (size_t)(p - buf);
	hdr[0] = 0x10;
	for (size_t v = body; ; ) {
		hdr[hl] = (uint8_t)(v & 0x7f);
		v >>= 7;
		if (v)
			hdr[hl] |= 0x80;
		hl++;
		if (!v || hl == 5)
			break;
	}
	if ((fd = dial(m->uri)) < 0) {
		log_warnx("MQTT-CLOSE cannot reach %s to end the session's connection", m->uri);
		free(buf);
		return;
	}
	if (send_all(fd, hdr, hl) && send_all(fd, buf, body)) {
		/* The CONNACK means the broker has already closed the old
		 * connection. */
		while (got < sizeof ack) {
			struct pollfd pf = { .fd = fd, .events = POLLIN };
			ssize_t r;
			if (poll(&pf, 1, 3000) != 1 || (r = recv(fd, ack + got, sizeof ack - got, 0)) <= 0)
				break;
			got += (size_t)r;
		}
		if (got == sizeof ack && ack[0] == 0x20) {
			static const uint8_t disc[] = { 0xe0, 0x00 };
			send_all(fd, disc, sizeof disc);
		} else {
			log_warnx("MQTT-CLOSE session takeover at %s got no CONNACK", m->uri);
		}
	}
	close(fd);
	free(buf);
}

/* ---- the publishing worker ------------------------------------------------- */

static int send_one(MQTTAsync client, bool v5, const struct pubreq *r, struct slot *s, int *token)
{
	MQTTAsync_message msg = MQTTAsync_message_initializer;
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	MQTTProperties props = MQTTProperties_initializer;
	int rc = MQTTASYNC_SUCCESS;

	if (v5) {
		MQTTProperty p;
		if (r->expiry_s) {
			memset(&p, 0, sizeof p);
			p.identifier = MQTTPROPERTY_CODE_MESSAGE_EXPIRY_INTERVAL;
			p.value.integer4 = r->expiry_s;
			rc = MQTTProperties_add(&props, &p) ? MQTTASYNC_FAILURE : rc;
		}
		if (rc == MQTTASYNC_SUCCESS && r->content_type) {
			memset(&p, 0, sizeof p);
			p.identifier = MQTTPROPERTY_CODE_CONTENT_TYPE;
			p.value.data.data = r->content_type;
			p.value.data.len = (int)strlen(r->content_type);
			rc = MQTTProperties_add(&props, &p) ? MQTTASYNC_FAILURE : rc;
		}
		if (rc == MQTTASYNC_SUCCESS && r->response_topic) {
			memset(&p, 0, sizeof p);
			p.identifier = MQTTPROPERTY_CODE_RESPONSE_TOPIC;
			p.value.data.data = r->response_topic;
			p.value.data.len = (int)strlen(r->response_topic);
			rc = MQTTProperties_add(&props, &p) ? MQTTASYNC_FAILURE : rc;
		}
		if (rc == MQTTASYNC_SUCCESS && r->correlation) {
			memset(&p, 0, sizeof p);
			p.identifier = MQTTPROPERTY_CODE_CORRELATION_DATA;
			p.value.data.data = r->correlation;
			p.value.data.len = (int)r->correlation_len;
			rc = MQTTProperties_add(&props, &p) ? MQTTASYNC_FAILURE : rc;
		}
	}
	msg.payload = r->payload;
	msg.payloadlen = (int)r->len;
	msg.qos = 1;
	msg.retained = r->retain;
	msg.properties = props;
	ro.context = s;
	if (v5) {
		ro.onSuccess5 = on_pub_ok5;
		ro.onFailure5 = on_pub_fail5;
	} else {
		ro.onSuccess = on_pub_ok3;
		ro.onFailure = on_pub_fail3;
	}
	if (rc == MQTTASYNC_SUCCESS)
		rc = MQTTAsync_sendMessage(client, r->topic, &msg, &ro);
	MQTTProperties_free(&props);
	*token = ro.token;
	return rc;
}

/* lock held; the worker. Replace the finished client by a new one with the
 * same client id and clean start off (the broker resumes the session),
 * connecting after a backoff, so that paho has nothing of the old
 * connection to carry over (see the top of the file). Returns with the
 * lock held. */
static void restart_client(struct mqtt *m)
{
	MQTTAsync old = m->client;
	long delay_ms;

	m->client = NULL;
	if (m->want_fallback && m->v5 && !m->ever_connected) {
		log_warnx("MQTT-FALLBACK %s refuses MQTT 5; using 3.1.1 (no message "
		          "expiry, no response topics)", m->uri);
		m->v5 = false;
		delay_ms = 0;
	} else {
		delay_ms = m->backoff_s * 1000L;
		m->backoff_s = m->backoff_s * 2 > m->rmax_s ? m->rmax_s : m->backoff_s * 2;
	}
	m->want_fallback = false;
	m->restart = false; /* the new client's callbacks may set it again */
	pthread_mutex_unlock(&m->lock);
	if (client_start(m, old, delay_ms) != 0) {
		pthread_mutex_lock(&m->lock);
		want_restart(m); /* logged; try again after the next backoff */
		return;
	}
	pthread_mutex_lock(&m->lock);
}

static void *worker_main(void *arg)
{
	struct mqtt *m = arg;

	pthread_mutex_lock(&m->lock);
	while (!m->worker_stop) {
		struct pubreq *batch = m->pq_head, *r, *next;
		MQTTAsync client;
		bool v5;

		if (m->restart && !m->closing) {
			restart_client(m);
			continue;
		}
		if (!batch) {
			pthread_cond_wait(&m->wcond, &m->lock);
			continue;
		}
		/* Everything queued goes in one go. */
		m->pq_head = NULL;
		m->pq_tail = &m->pq_head;
		for (r = batch; r; r = r->next) {
			struct slot *s = &m->slots[r->idx];
			r->live = s->busy && s->gen == r->gen; /* else failed by a loss */
		}
		client = m->client;
		v5 = m->v5;
		pthread_mutex_unlock(&m->lock);
		/* May wait while a delivery waits for the loop (paho's mutex);
		 * that is why this is not the loop's thread. */
		for (r = batch; r; r = r->next) {
			r->token = -1;
			if (r->live)
				r->rc = client ? send_one(client, v5, r, &m->slots[r->idx], &r->token)
				               : MQTTASYNC_DISCONNECTED;
		}
		pthread_mutex_lock(&m->lock);
		for (r = batch; r; r = r->next) {
			struct slot *s = &m->slots[r->idx];

			if (!r->live || !s->busy || s->gen != r->gen)
				continue;
			if (r->rc == MQTTASYNC_SUCCESS) {
				if (s->token == -1)
					s->token = r->token;
			} else {
				if (r->rc != MQTTASYNC_DISCONNECTED)
					log_warnx("MQTT-PUBLISH %s: %s", r->topic, paho_text(r->rc));
				slot_fail(m, s);
			}
		}
		pthread_mutex_unlock(&m->lock);
		for (r = batch; r; r = next) {
			next = r->next;
			free(r);
		}
		pthread_mutex_lock(&m->lock);
	}
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

/* ---- open / close --------------------------------------------------------- */

static void opts_free(struct mqtt *m)
{
	free(m->uri);
	free(m->client_id);
	free(m->username);
	free(m->password);
	free(m->ca);
	free(m->cert);
	free(m->key);
	for (int i = 0; m->subs && i < m->n_subs; i++)
		free(m->subs[i]);
	free(m->subs);
	free(m->sub_qos);
	free(m->will_topic);
	free(m->will_payload);
	free(m->online_topic);
	free(m->online_payload);
	free(m->slots);
	free(m->ring);
	free(m->delivered);
	free(m->failed);
}

static bool uri_ok(const char *uri)
{
	static const char *const schemes[] = { "tcp://", "mqtt://", "ssl://", "mqtts://" };

	for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
		if (!strncmp(uri, schemes[i], strlen(schemes[i])) && uri[strlen(schemes[i])])
			return true;
	return false;
}

int mqtt_open(const struct mqtt_opts *opts, struct mqtt **out)
{
	struct mqtt *m;
	pthread_condattr_t ca;
	int err = 0;

	if (!opts || !out || !opts->uri || !opts->client_id || !*opts->client_id ||
	    !uri_ok(opts->uri) || opts->keepalive_s < 0 || opts->reconnect_min_s < 0 ||
	    opts->reconnect_max_s < 0 || opts->n_subs > 1024 || (opts->n_subs && !opts->subs) ||
	    (opts->will_topic && !*opts->will_topic) || opts->will_len > INT_MAX ||
	    (opts->will_len && !opts->will_payload) || opts->online_len > INT_MAX ||
	    (opts->online_len && !opts->online_payload) || opts->max_inflight > 65535)
		return -EINVAL;
	for (size_t i = 0; i < opts->n_subs; i++)
		if (!opts->subs[i] || !*opts->subs[i])
			return -EINVAL;

	if (!(m = calloc(1, sizeof *m)))
		return -ENOMEM;
	m->efd = -1;
	m->v5 = true;
	m->qtail = &m->qhead;
	m->pq_tail = &m->pq_head;
	m->lq_tail = &m->lq_head;
	m->keepalive_s = opts->keepalive_s ? opts->keepalive_s : DEF_KEEPALIVE_S;
	m->expiry_s = opts->session_expiry_s ? opts->session_expiry_s : DEF_EXPIRY_S;
	m->rmin_s = opts->reconnect_min_s ? opts->reconnect_min_s : DEF_RECONNECT_MIN_S;
	m->rmax_s = opts->reconnect_max_s ? opts->reconnect_max_s : DEF_RECONNECT_MAX_S;
	if (m->rmax_s < m->rmin_s)
		m->rmax_s = m->rmin_s;
	m->backoff_s = m->rmin_s;
	m->window = opts->max_inflight ? opts->max_inflight : DEF_WINDOW;
	m->refuse_ms = opts->refuse_retry_ms ? opts->refuse_retry_ms : DEF_REFUSE_MS;
	m->online_slot.m = m;

	m->uri = dup_or_null(opts->uri, &err);
	m->client_id = dup_or_null(opts->client_id, &err);
	m->username = dup_or_null(opts->username, &err);
	m->password = dup_or_null(opts->password, &err);
	m->ca = dup_or_null(opts->ca_file, &err);
	m->cert = dup_or_null(opts->cert_file, &err);
	m->key = dup_or_null(opts->key_file, &err);
	m->will_topic = dup_or_null(opts->will_topic, &err);
	if (opts->will_topic)
		m->will_payload = memdup_or_null(opts->will_len ? opts->will_payload : "",
		                                 opts->will_len, &err);
	m->will_len = opts->will_len;
	m->online_topic = dup_or_null(opts->online_topic, &err);
	if (opts->online_topic)
		m->online_payload = memdup_or_null(opts->online_len ? opts->online_payload : "",
		                                   opts->online_len, &err);
	m->online_len = opts->online_len;
	m->n_subs = (int)opts->n_subs;
	if (m->n_subs) {
		m->subs = calloc(opts->n_subs, sizeof *m->subs);
		m->sub_qos = calloc(opts->n_subs, sizeof *m->sub_qos);
		if (!m->subs || !m->sub_qos)
			err = -ENOMEM;
		for (int i = 0; !err && i < m->n_subs; i++) {
			m->subs[i] = dup_or_null(opts->subs[i], &err);
			m->sub_qos[i] = 1;
		}
	}
	m->slots = calloc(m->window, sizeof *m->slots);
	m->ring = calloc(m->window, sizeof *m->ring);
	m->delivered = calloc(m->window, sizeof *m->delivered);
	m->failed = calloc(m->window, sizeof *m->failed);
	if (!m->slots || !m->ring || !m->delivered || !m->failed)
		err = -ENOMEM;
	if (err)
		goto fail;
	for (unsigned i = 0; i < m->window; i++) {
		m->slots[i].m = m;
		m->ring[i] = i;
	}
	m->ring_count = m->window;

	if ((m->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
		err = -errno;
		goto fail;
	}
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&m->cond, &ca);
	pthread_cond_init(&m->wcond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&m->lock, NULL);

	/* An idle client that lives as long as the module: paho never drops
	 * to zero clients when the worker replaces the real one (see
	 * client_start()). */
	{
		MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
		char id[300];

		co.MQTTVersion = MQTTVERSION_5;
		snprintf(id, sizeof id, "%.200s-idle", m->client_id);
		if (MQTTAsync_createWithOptions(&m->anchor, m->uri, id,
		                                MQTTCLIENT_PERSISTENCE_NONE, NULL, &co) !=
		    MQTTASYNC_SUCCESS)
			m->anchor = NULL;
	}
	/* The first client before the worker runs, so that options paho
	 * refuses are reported here. */
	if ((err = client_start(m, NULL, 0)) != 0) {
		mqtt_close(m, 0);
		return err;
	}
	if ((err = -pthread_create(&m->worker, NULL, worker_main, m)) != 0) {
		mqtt_close(m, 0);
		return err;
	}
	m->worker_started = true;
	*out = m;
	return 0;

fail:
	if (m->efd >= 0)
		close(m->efd);
	opts_free(m);
	free(m);
	return err;
}

void mqtt_close(struct mqtt *m, int timeout_ms)
{
	MQTTAsync client;
	struct timespec ts;
	int rc;

	if (!m)
		return;
	/* 1. Give back every delivery waiting for the loop: each callback ends
	 *    the connection (takeover) before it returns, so nothing
	 *    uncommitted is acknowledged; later deliveries do the same. */
	pthread_mutex_lock(&m->lock);
	m->closing = true;
	for (struct inbound *n = m->live; n; n = n->lnext)
		if (n->verdict == V_PENDING)
			n->verdict = V_ABORT;
	while (m->qhead) {
		struct inbound *n = (struct inbound *)m->qhead;
		m->qhead = n->msg.next;
		n->queued = false;
		inbound_unref(m, n);
	}
	m->qtail = &m->qhead;
	m->worker_stop = true;
	pthread_cond_broadcast(&m->cond);
	pthread_cond_signal(&m->wcond);
	pthread_mutex_unlock(&m->lock);

	/* 2. The worker may be inside paho, waiting for those callbacks, or
	 *    replacing the client. */
	if (m->worker_started)
		pthread_join(m->worker, NULL);
	pthread_mutex_lock(&m->lock);
	client = m->client;
	pthread_mutex_unlock(&m->lock);

	/* 3. A normal DISCONNECT: the broker keeps the session and drops the
	 *    will. Publishes in flight get up to timeout_ms. */
	if (client && MQTTAsync_isConnected(client)) {
		MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;
		MQTTAsync_disconnectOptions d3 = MQTTAsync_disconnectOptions_initializer;

		if (!m->v5)
			d = d3;
		d.timeout = timeout_ms > 0 ? timeout_ms : 0;
		d.context = m;
		if (m->v5) {
			d.onSuccess5 = on_disc_ok5;
			d.onFailure5 = on_disc_fail5;
		} else {
			d.onSuccess = on_disc_ok3;
			d.onFailure = on_disc_fail3;
		}
		rc = MQTTAsync_disconnect(client, &d);
		if (rc == MQTTASYNC_SUCCESS) {
			deadline_in(&ts, (timeout_ms > 0 ? timeout_ms : 0) + 2000L);
			pthread_mutex_lock(&m->lock);
			while (!m->disc_done &&
			       pthread_cond_timedwait(&m->cond, &m->lock, &ts) != ETIMEDOUT)
				;
			pthread_mutex_unlock(&m->lock);
		} else {
			log_warnx("mqtt: disconnect: %s", paho_text(rc));
		}
	}

	/* 4. Never inside a callback: this is the loop thread. */
	if (client)
		MQTTAsync_destroy(&client);
	if (m->anchor)
		MQTTAsync_destroy(&m->anchor);
	pthread_mutex_lock(&m->lock);
	m->client = NULL;
	while (m->in_cb > 0)
		pthread_cond_wait(&m->cond, &m->lock);
	/* Only the loop's references remain: messages it took and never gave
	 * back; and publishes the worker never sent. */
	while (m->live)
		live_remove_and_free(m, m->live);
	while (m->pq_head) {
		struct pubreq *r = m->pq_head;
		m->pq_head = r->next;
		free(r);
	}
	pthread_mutex_unlock(&m->lock);
	while (m->lq_head) {
		struct pubreq *r = m->lq_head;
		m->lq_head = r->next;
		free(r);
	}

	pthread_cond_destroy(&m->cond);
	pthread_cond_destroy(&m->wcond);
	pthread_mutex_destroy(&m->lock);
	close(m->efd);
	opts_free(m);
	free(m);
}

int mqtt_fd(const struct mqtt *m)
{
	return m->efd;
}

void mqtt_take_events(struct mqtt *m, struct mqtt_events *ev)
{
	uint64_t v;

	mqtt_flush(m); /* publishes the loop did not flush itself */
	/* Read first, then disarm: whatever is signalled after the read finds
	 * the eventfd disarmed and wakes the loop again. */
	while (read(m->efd, &v, sizeof v) == (ssize_t)sizeof v)
		;
	pthread_mutex_lock(&m->lock);
	m->armed = false;
	ev->connects = m->connects;
	ev->losses = m->losses;
	ev->subacks = m->subacks;
	m->connects = m->losses = m->subacks = 0;
	ev->connected = m->connected;
	pthread_mutex_unlock(&m->lock);
}

bool mqtt_is_v5(struct mqtt *m)
{
	bool v;

	pthread_mutex_lock(&m->lock);
	v = m->v5;
	pthread_mutex_unlock(&m->lock);
	return v;
}

/* ---- publishing ----------------------------------------------------------- */

/* A report for slot s with paho token tok; ok = PUBACK without error. */
static void pub_report(struct slot *s, int tok, bool ok, int code, int reason)
{
	struct mqtt *m = s->m;

	cb_enter(m);
	if (s == &m->online_slot) {
		if (!ok && !m->destroying && !m->closing)
			log_warnx("MQTT-ONLINE publish failed: %s",
			          code ? paho_text(code) : reason_text(reason));
	} else if (s->busy && (s->token == tok || s->token == -1)) {
		struct report rep = { s->tag, (unsigned)(s - m->slots) };

		s->busy = false;
		if (ok)
			m->delivered[m->n_delivered++] = rep;
		else
			m->failed[m->n_failed++] = rep;
		if (!ok)
			log_warnx("MQTT-PUBLISH not acknowledged: %s",
			          code ? paho_text(code) : reason_text(reason));
		signal_loop(m);
	}
	cb_leave(m);
}

static void on_pub_ok5(void *ctx, MQTTAsync_successData5 *r)
{
	/* A PUBACK reason code >= 0x80 is a refusal (not authorized, quota). */
	pub_report(ctx, r->token, r->reasonCode < 0x80, 0, r->reasonCode);
}

static void on_pub_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
	pub_report(ctx, r->token, false, r->code, r->reasonCode);
}

static void on_pub_ok3(void *ctx, MQTTAsync_successData *r)
{
	pub_report(ctx, r->token, true, 0, 0);
}

static void on_pub_fail3(void *ctx, MQTTAsync_failureData *r)
{
	pub_report(ctx, r->token, false, r->code, 0);
}

int mqtt_publish(struct mqtt *m, const struct mqtt_pub *pub)
{
	size_t tlen, ctl = 0, rtl = 0, need;
	struct pubreq *r;
	char *p;

	if (!pub || !pub->topic || !*pub->topic || (pub->len && !pub->payload) ||
	    strpbrk(pub->topic, "+#") || (pub->correlation && pub->correlation_len > 65535))
		return -EINVAL;
	if ((tlen = strlen(pub->topic)) > 65535 ||
	    (pub->content_type && (ctl = strlen(pub->content_type)) > 65535) ||
	    (pub->response_topic && (rtl = strlen(pub->response_topic)) > 65535))
		return -EINVAL;
	if (pub->len > 268435455) /* the largest MQTT packet */
		return -EMSGSIZE;
	need = sizeof *r + tlen + 1 + pub->len + ctl + 1 + rtl + 1 + pub->correlation_len;
	if (!(r = calloc(1, need)))
		return -ENOMEM;
	p = (char *)(r + 1);
	r->topic = memcpy(p, pub->topic, tlen + 1);
	p += tlen + 1;
	r->payload = p;
	if (pub->len)
		memcpy(p, pub->payload, pub->len);
	p += pub->len;
	r->len = pub->len;
	if (pub->content_type) {
		r->content_type = memcpy(p, pub->content_type, ctl + 1);
		p += ctl + 1;
	}
	if (pub->response_topic) {
		r->response_topic = memcpy(p, pub->response_topic, rtl + 1);
		p += rtl + 1;
	}
	if (pub->correlation) {
		r->correlation = p;
		r->correlation_len = pub->correlation_len;
		if (pub->correlation_len)
			memcpy(p, pub->correlation, pub->correlation_len);
	}
	r->retain = pub->retain;
	r->expiry_s = pub->expiry_s;
	r->tag = pub->tag;

	/* Loop-private from here to mqtt_flush(): no lock, no wake-up. */
	if (!m->connected) {
		free(r);
		return -ENOTCONN;
	}
	if (m->inflight >= m->limit || m->ring_count == 0) {
		free(r);
		return -EAGAIN;
	}
	r->idx = m->ring[m->ring_head];
	m->ring_head = (m->ring_head + 1) % m->window;
	m->ring_count--;
	*m->lq_tail = r;
	m->lq_tail = &r->next;
	m->inflight++;
	if (!m->self_wake) {
		/* In case the loop never calls mqtt_flush(): make sure it
		 * wakes up, and mqtt_take_events() flushes. mqtt_flush()
		 * takes this wake-up back. */
		m->self_wake = true;
		pthread_mutex_lock(&m->lock);
		signal_loop(m);
		pthread_mutex_unlock(&m->lock);
	}
	return 0;
}

void mqtt_flush(struct mqtt *m)
{
	struct pubreq *r, *next, *head = m->lq_head;
	uint64_t v;

	if (!head)
		return;
	m->lq_head = NULL;
	m->lq_tail = &m->lq_head;
	pthread_mutex_lock(&m->lock);
	if (m->self_wake && m->armed && !m->n_delivered && !m->n_failed && !m->qhead &&
	    !m->connects && !m->losses && !m->subacks) {
		/* Nothing else for the loop: take back the wake-up that
		 * mqtt_publish() arranged. Whatever comes later signals
		 * again. */
		while (read(m->efd, &v, sizeof v) == (ssize_t)sizeof v)
			;
		m->armed = false;
	}
	m->self_wake = false;
	if (!m->connected || m->restart || m->closing) {
		/* Lost since mqtt_publish() accepted them: report them failed
		 * like the ones paho had already. */
		for (r = head; r; r = next) {
			next = r->next;
			m->failed[m->n_failed++] = (struct report){ r->tag, r->idx };
			free(r);
		}
		signal_loop(m);
	} else {
		for (r = head; r; r = r->next) {
			struct slot *s = &m->slots[r->idx];

			s->busy = true;
			s->token = -1;
			s->tag = r->tag;
			r->gen = ++s->gen;
		}
		*m->pq_tail = head;
		for (r = head; r->next; r = r->next)
			;
		m->pq_tail = &r->next;
		pthread_cond_signal(&m->wcond);
	}
	pthread_mutex_unlock(&m->lock);
}

bool mqtt_can_publish(struct mqtt *m)
{
	return m->connected && m->inflight < m->limit && m->ring_count > 0;
}

unsigned mqtt_inflight(struct mqtt *m)
{
	return m->inflight;
}

static size_t take_tags(struct mqtt *m, struct report *q, size_t *n, uint64_t *tags, size_t max)
{
	size_t k;

	pthread_mutex_lock(&m->lock);
	k = *n < max ? *n : max;
	for (size_t i = 0; i < k; i++) {
		tags[i] = q[i].tag;
		/* The slot is free again for mqtt_publish(). */
		m->ring[(m->ring_head + m->ring_count++) % m->window] = q[i].idx;
	}
	memmove(q, q + k, (*n - k) * sizeof *q);
	*n -= k;
	m->inflight -= (unsigned)k;
	pthread_mutex_unlock(&m->lock);
	return k;
}

size_t mqtt_take_delivered(struct mqtt *m, uint64_t *tags, size_t max)
{
	return take_tags(m, m->delivered, &m->n_delivered, tags, max);
}

size_t mqtt_take_failed(struct mqtt *m, uint64_t *tags, size_t max)
{
	return take_tags(m, m->failed, &m->n_failed, tags, max);
}
