/* SPDX-License-Identifier: MIT */
/*
 * bench_e2e.c - the MQTT side of `tools/bench e2e` (tools/bench_e2e.sh sets
 * up mosquitto, the coordinator and the agents): submits echo tasks or
 * workflows over MQTT, waits for their outcomes, and prints throughput and
 * submit->outcome latencies as one line of key=value pairs.
 *
 *   bench-e2e --broker URI [--prefix P] [--run ID] [--window N] [--nagle] MODE ARGS
 *     tasks M B [RATE]   M echo tasks, B per message (B=1: one task object per
 *                        message, otherwise a JSON array), RATE tasks/s
 *                        (0: as fast as the broker takes them); the outcome
 *                        is P/tasks/ID/result
 *     chains K L         K workflows, each a chain of L echo steps, one
 *                        message each; the outcome is the workflow status
 *                        "succeeded"
 *     loopback M         M QoS 1 messages to a topic this client subscribes
 *                        to: mosquitto's own rate, the ceiling of the others
 *
 * Output: mode=... n=... secs=... rate=... p50_ms=... p99_ms=... max_ms=...
 * A submission's time is taken when its message is handed to paho; the
 * outcome's when it arrives. At most --window (100) messages are unacknowledged by
 * the broker at once (the coordinator acknowledges after its commit).
 * Threads: paho's callbacks count under one mutex; main submits and waits.
 */
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <MQTTAsync.h>

static long window = 100; /* --window: keep it <= the broker's Receive Maximum */
#define WAIT_S 60

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int connected, subscribed, failed;
static long unacked;            /* publishes not yet acknowledged */
static long done;               /* outcomes received */
static long want;               /* outcomes expected */
static double *sent_at, *lat;   /* per item: submit time, latency (ms) */
static char *seen;
static char run_id[64], prefix[128];
static size_t prefix_len;
static enum { M_TASKS, M_CHAINS, M_LOOP } mode;
static double t_last;

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void die(const char *what, int rc)
{
	fprintf(stderr, "bench-e2e: %s: %s\n", what, rc ? MQTTAsync_strerror(rc) : "failed");
	exit(1);
}

/* Item index from "...RUN-IDX..." in a topic level, or -1. */
static long item_of(const char *level, size_t len)
{
	size_t rl = strlen(run_id);
	if (len <= rl + 1 || memcmp(level, run_id, rl) != 0 || level[rl] != '-')
		return -1;
	long v = 0;
	for (size_t i = rl + 1; i < len; i++) {
		if (level[i] < '0' || level[i] > '9')
			return i > rl + 1 && level[i] == ':' ? v : -1; /* a step: WF:STEP */
		v = v * 10 + (level[i] - '0');
		if (v > 100000000)
			return -1;
	}
	return v;
}

static int on_message(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
	(void)ctx;
	double t = now_ms();
	size_t n = tlen > 0 ? (size_t)tlen : strlen(topic);
	long idx = -1;
	if (n > prefix_len && memcmp(topic, prefix, prefix_len) == 0) {
		const char *rest = topic + prefix_len;
		size_t rn = n - prefix_len;
		const char *slash = memchr(rest, '/', rn);
		idx = item_of(rest, slash ? (size_t)(slash - rest) : rn);
	}
	if (idx >= 0 && idx < want && mode == M_CHAINS) {
		/* only the final workflow status counts */
		const char *p = m->payload;
		int ok = 0;
		for (int i = 0; i + 21 <= m->payloadlen; i++)
			if (memcmp(p + i, "\"state\":\"succeeded\"", 19) == 0) {
				ok = 1;
				break;
			}
		if (!ok)
			idx = -1;
	}
	if (idx >= 0 && idx < want) {
		pthread_mutex_lock(&mu);
		if (!seen[idx]) {
			seen[idx] = 1;
			lat[idx] = t - sent_at[idx];
			done++;
			t_last = t;
			if (done == want)
				pthread_cond_broadcast(&cv);
		}
		pthread_mutex_unlock(&mu);
	}
	MQTTAsync_freeMessage(&m);
	MQTTAsync_free(topic);
	return 1;
}

static void on_lost(void *ctx, char *cause)
{
	(void)ctx;
	fprintf(stderr, "bench-e2e: connection lost: %s\n", cause ? cause : "?");
	pthread_mutex_lock(&mu);
	failed = 1;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

static void flag(int *f, int v)
{
	pthread_mutex_lock(&mu);
	*f = v;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

/* paho sets no TCP_NODELAY, and Nagle then holds a small PUBLISH or PUBACK
 * behind an unacknowledged one until the peer's delayed ACK (~40 ms). paho
 * does not expose its socket: set the option on every TCP socket we hold
 * (only paho's exist in this program). --nagle keeps the default. */
static int keep_nagle;
static void set_nodelay(void)
{
	for (int fd = 3; fd < 1024 && !keep_nagle; fd++) {
		struct sockaddr_storage sa;
		socklen_t len = sizeof sa;
		int one = 1;
		if (getpeername(fd, (struct sockaddr *)&sa, &len) == 0 &&
		    (sa.ss_family == AF_INET || sa.ss_family == AF_INET6))
			(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	}
}

static void on_conn(void *c, MQTTAsync_successData5 *d)
{
	(void)c;
	(void)d;
	set_nodelay();
	flag(&connected, 1);
}
static void on_conn_fail(void *c, MQTTAsync_failureData5 *d) { (void)c; (void)d; flag(&failed, 1); }
static void on_sub(void *c, MQTTAsync_successData5 *d) { (void)c; (void)d; flag(&subscribed, 1); }

static void on_pub(void *c, MQTTAsync_successData5 *d)
{
	(void)c;
	(void)d;
	pthread_mutex_lock(&mu);
	unacked--;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

static void on_pub_fail(void *c, MQTTAsync_failureData5 *d)
{
	(void)d;
	on_pub(c, NULL);
	pthread_mutex_lock(&mu);
	failed = 1;
	pthread_mutex_unlock(&mu);
}

/* Waits until *flagp (under mu) is set or failed; 1 on success. */
static int wait_flag(int *flagp)
{
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 10;
	pthread_mutex_lock(&mu);
	while (!*flagp && !failed && pthread_cond_timedwait(&cv, &mu, &dl) != ETIMEDOUT)
		;
	int ok = *flagp && !failed;
	pthread_mutex_unlock(&mu);
	return ok;
}

static void publish(MQTTAsync c, const char *topic, const char *body, size_t len)
{
	pthread_mutex_lock(&mu);
	while (unacked >= window && !failed)
		pthread_cond_wait(&cv, &mu);
	unacked++;
	pthread_mutex_unlock(&mu);
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	ro.onSuccess5 = on_pub;
	ro.onFailure5 = on_pub_fail;
	MQTTAsync_message m = MQTTAsync_message_initializer;
	m.payload = (void *)body;
	m.payloadlen = (int)len;
	m.qos = 1;
	int rc;
	while ((rc = MQTTAsync_sendMessage(c, topic, &m, &ro)) == MQTTASYNC_MAX_BUFFERED_MESSAGES)
		usleep(1000);
	if (rc != MQTTASYNC_SUCCESS)
		die("publish", rc);
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Appends to a growing buffer (aborts on OOM: a benchmark). */
struct buf { char *p; size_t n, cap; };
static void put(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		va_start(ap, fmt);
		int k = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
		va_end(ap);
		if (k >= 0 && (size_t)k < b->cap - b->n) {
			b->n += (size_t)k;
			return;
		}
		b->cap = b->cap * 2 + (size_t)(k > 0 ? k : 64) + 64;
		if (!(b->p = realloc(b->p, b->cap))) {
			fprintf(stderr, "bench-e2e: out of memory\n");
			exit(1);
		}
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: bench-e2e --broker URI [--prefix P] [--run ID] [--window N] [--nagle] "
			"tasks M B [RATE] | chains K L | loopback M\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *broker = NULL, *pfx = "edgecoord";
	snprintf(run_id, sizeof run_id, "b%ld", (long)getpid());
	int i = 1;
	for (; i < argc && argv[i][0] == '-'; i += 2) {
		if (!strcmp(argv[i], "--nagle")) {
			keep_nagle = 1;
			i--;
			continue;
		}
		if (i + 1 >= argc)
			usage();
		if (!strcmp(argv[i], "--broker"))
			broker = argv[i + 1];
		else if (!strcmp(argv[i], "--prefix"))
			pfx = argv[i + 1];
		else if (!strcmp(argv[i], "--window"))
			window = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--run"))
			snprintf(run_id, sizeof run_id, "%s", argv[i + 1]);
		else
			usage();
	}
	if (!broker || i >= argc)
		usage();
	const char *m = argv[i++];
	long n = 0, per = 1;
	double rate = 0;
	if (!strcmp(m, "tasks") && argc - i >= 2) {
		mode = M_TASKS;
		n = atol(argv[i]);
		per = atol(argv[i + 1]);
		if (argc - i >= 3)
			rate = atof(argv[i + 2]);
	} else if (!strcmp(m, "chains") && argc - i == 2) {
		mode = M_CHAINS;
		n = atol(argv[i]);
		per = atol(argv[i + 1]);
	} else if (!strcmp(m, "loopback") && argc - i == 1) {
		mode = M_LOOP;
		n = atol(argv[i]);
	} else {
		usage();
	}
	if (n < 1 || n > 10000000 || per < 1 || per > 10000)
		usage();
	want = n;
	sent_at = calloc((size_t)n, sizeof *sent_at);
	lat = calloc((size_t)n, sizeof *lat);
	seen = calloc((size_t)n, 1);
	if (!sent_at || !lat || !seen)
		die("out of memory", 0);

	const char *sub_topic;
	char topic_buf[256];
	if (mode == M_LOOP) {
		snprintf(prefix, sizeof prefix, "bench-loop/");
		snprintf(topic_buf, sizeof topic_buf, "bench-loop/+");
	} else if (mode == M_TASKS) {
		snprintf(prefix, sizeof prefix, "%s/tasks/", pfx);
		snprintf(topic_buf, sizeof topic_buf, "%s/tasks/+/result", pfx);
	} else {
		snprintf(prefix, sizeof prefix, "%s/workflows/", pfx);
		snprintf(topic_buf, sizeof topic_buf, "%s/workflows/+/status", pfx);
	}
	prefix_len = strlen(prefix);
	sub_topic = topic_buf;

	MQTTAsync c;
	MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
	co.maxBufferedMessages = 1000000;
	char cid[96];
	snprintf(cid, sizeof cid, "bench-e2e-%s", run_id);
	int rc = MQTTAsync_createWithOptions(&c, broker, cid, MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
	if (rc)
		die("create", rc);
	MQTTAsync_setCallbacks(c, NULL, on_lost, on_message, NULL);
	MQTTAsync_connectOptions cn = MQTTAsync_connectOptions_initializer5;
	cn.cleanstart = 1;
	cn.keepAliveInterval = 60;
	cn.maxInflight = 65535;
	cn.onSuccess5 = on_conn;
	cn.onFailure5 = on_conn_fail;
	if ((rc = MQTTAsync_connect(c, &cn)) || !wait_flag(&connected))
		die("connect", rc);
	MQTTAsync_responseOptions so = MQTTAsync_responseOptions_initializer;
	so.onSuccess5 = on_sub;
	so.subscribeOptions.retainHandling = 2; /* no retained messages of earlier runs */
	if ((rc = MQTTAsync_subscribe(c, sub_topic, 1, &so)) || !wait_flag(&subscribed))
		die("subscribe", rc);

	struct buf b = { 0 };
	char topic[256];
	snprintf(topic, sizeof topic, mode == M_LOOP ? "bench-loop/%s-0" : "%s/submit/bench",
		 mode == M_LOOP ? run_id : pfx);
	double t0 = now_ms();
	long msgs = 0;
	for (long k = 0; k < n;) {
		b.n = 0;
		long first = k;
		if (mode == M_LOOP) {
			snprintf(topic, sizeof topic, "bench-loop/%s-%ld", run_id, k);
			put(&b, "x");
			k++;
		} else if (mode == M_CHAINS) {
			put(&b, "{\"task_id\":\"%s-%ld\",\"type\":\"collaborative_task\",\"steps\":[",
			    run_id, k);
			for (long s = 0; s < per; s++) {
				put(&b, "%s{\"task_id\":\"s%ld\",\"type\":\"echo\",\"payload\":%ld", s ? "," : "",
				    s, s);
				if (s)
					put(&b, ",\"depends_on\":[\"s%ld\"]", s - 1);
				put(&b, "}");
			}
			put(&b, "]}");
			k++;
		} else if (per == 1) {
			put(&b, "{\"task_id\":\"%s-%ld\",\"type\":\"echo\",\"payload\":%ld}", run_id, k, k);
			k++;
		} else {
			put(&b, "[");
			for (long j = 0; j < per && k < n; j++, k++)
				put(&b, "%s{\"task_id\":\"%s-%ld\",\"type\":\"echo\",\"payload\":%ld}",
				    j ? "," : "", run_id, k, k);
			put(&b, "]");
		}
		if (rate > 0) { /* open loop: the item k-1 is due at t0 + (k-1)/rate */
			double due = t0 + (double)first * 1000.0 / rate, d = due - now_ms();
			if (d > 0)
				usleep((useconds_t)(d * 1000));
		}
		double t = now_ms();
		for (long j = first; j < k; j++)
			sent_at[j] = t;
		publish(c, topic, b.p, b.n);
		msgs++;
	}
	double t_sent = now_ms();
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += WAIT_S;
	pthread_mutex_lock(&mu);
	while (done < want && !failed && pthread_cond_timedwait(&cv, &mu, &dl) != ETIMEDOUT)
		;
	long got = done;
	double t_end = t_last;
	pthread_mutex_unlock(&mu);
	if (got < want) {
		fprintf(stderr, "bench-e2e: %ld of %ld outcomes after %d s\n", got, want, WAIT_S);
		return 1;
	}
	qsort(lat, (size_t)n, sizeof *lat, cmp_d);
	double secs = (t_end - t0) / 1e3;
	printf("mode=%s n=%ld per_msg=%ld msgs=%ld secs=%.3f rate=%.0f submit_secs=%.3f "
	       "p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
	       m, n, per, msgs, secs, (double)n / secs, (t_sent - t0) / 1e3,
	       lat[(size_t)(n * 50 / 100)], lat[(size_t)(n * 99 / 100)], lat[n - 1]);
	MQTTAsync_disconnectOptions dopt = MQTTAsync_disconnectOptions_initializer5;
	dopt.timeout = 1000;
	MQTTAsync_disconnect(c, &dopt);
	usleep(100000);
	MQTTAsync_destroy(&c);
	free(b.p);
	free(sent_at);
	free(lat);
	free(seen);
	return 0;
}
