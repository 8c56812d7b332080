/* SPDX-License-Identifier: MIT */
/*
 * test_mqtt.c - the MQTT link against a real mosquitto (and, for the 3.1.1
 * fallback, a scripted fake broker): inbound messages acknowledged only after
 * "commit", refusal without acknowledgement, PUBACK tags, the publish window,
 * properties both ways, reconnect after a broker restart, the will, and a
 * printed (not asserted) throughput figure.
 *
 * Each test starts its own mosquitto on a free loopback port with a config in
 * a mkdtemp directory and stops it at the end. Without mosquitto the tests
 * fail with a clear message.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "log.h"
#include "mqtt.h"

/* ---- processes and the broker --------------------------------------------- */

struct broker {
	pid_t pid;
	int port;
	char dir[256];
	char conf[300];
};

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof a;
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static bool port_open(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
	close(fd);
	return ok;
}

static const char *mosquitto_bin(void)
{
	static const char *const paths[] = { "/usr/sbin/mosquitto", "/usr/bin/mosquitto",
	                                     "/usr/local/sbin/mosquitto" };
	for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
		if (access(paths[i], X_OK) == 0)
			return paths[i];
	return NULL;
}

static void broker_init(struct broker *b)
{
	const char *tmp = getenv("TMPDIR");
	FILE *f;

	if (!mosquitto_bin() || access("/usr/bin/mosquitto_pub", X_OK) != 0)
		fail_msg("mosquitto and mosquitto-clients are needed for this test (tools/deps)");
	memset(b, 0, sizeof *b);
	snprintf(b->dir, sizeof b->dir, "%s/ec-mqtt-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(b->dir));
	/* mosquitto drops root privileges: its persistence file must be
	 * writable by its own user. */
	chmod(b->dir, 0777);
	b->port = free_port();
	snprintf(b->conf, sizeof b->conf, "%s/mosquitto.conf", b->dir);
	f = fopen(b->conf, "w");
	assert_non_null(f);
	fprintf(f, "listener %d 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
	           "persistence true\npersistence_location %s/\nautosave_interval 3600\n",
	        b->port, b->dir);
	fclose(f);
}

static void broker_start(struct broker *b)
{
	char log[300];
	long until;

	snprintf(log, sizeof log, "%s/broker.log", b->dir);
	b->pid = fork();
	assert_true(b->pid >= 0);
	if (b->pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(mosquitto_bin(), "mosquitto", "-c", b->conf, (char *)NULL);
		_exit(127);
	}
	for (until = now_ms() + 5000; now_ms() < until; usleep(20000))
		if (port_open(b->port))
			return;
	fail_msg("mosquitto did not start on port %d (see %s)", b->port, log);
}

static void broker_stop(struct broker *b)
{
	if (b->pid > 0) {
		kill(b->pid, SIGTERM);
		waitpid(b->pid, NULL, 0);
		b->pid = 0;
	}
}

/* Run argv; stdin from in_path (or /dev/null); stdout into out. Returns the
 * exit status, or -1. */
static int run(char *const argv[], const char *in_path, char *out, size_t cap)
{
	int p[2], st;
	size_t n = 0;
	ssize_t r;
	pid_t pid;

	assert_int_equal(pipe(p), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int in = open(in_path ? in_path : "/dev/null", O_RDONLY);
		dup2(in, 0);
		dup2(p[1], 1);
		close(p[0]);
		execvp(argv[0], argv);
		_exit(127);
	}
	close(p[1]);
	while (out && n + 1 < cap && (r = read(p[0], out + n, cap - 1 - n)) > 0)
		n += (size_t)r;
	if (out)
		out[n] = '\0';
	close(p[0]);
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void pub(struct broker *b, const char *topic, const char *payload)
{
	char port[16];
	snprintf(port, sizeof port, "%d", b->port);
	char *argv[] = { "mosquitto_pub", "-p", port, "-q", "1", "-t", (char *)topic,
	                 "-m", (char *)payload, NULL };
	assert_int_equal(run(argv, NULL, NULL, 0), 0);
}

/* The retained message on topic, formatted by mosquitto_sub -F fmt. */
static void sub_retained(struct broker *b, const char *topic, const char *fmt, char *out, size_t cap)
{
	char port[16];
	snprintf(port, sizeof port, "%d", b->port);
	char *argv[] = { "mosquitto_sub", "-p", port, "-V", "mqttv5", "-t", (char *)topic,
	                 "-C", "1", "-W", "5", "-F", (char *)fmt, NULL };
	run(argv, NULL, out, cap);
	out[strcspn(out, "\n")] = '\0';
}

static void broker_fini(struct broker *b)
{
	broker_stop(b);
	char *argv[] = { "rm", "-rf", b->dir, NULL };
	run(argv, NULL, NULL, 0);
}

/* ---- a small event loop driving the module ------------------------------- */

enum policy { P_COMMIT, P_HOLD, P_REFUSE };

struct rec {
	char topic[64];
	char payload[128];
	bool dup;
	int qos;
	unsigned offers;
	char ct[64], rt[64], corr[64];
	bool has_ct, has_rt, has_corr;
};

struct tctx {
	struct mqtt *m;
	int ep;
	enum policy policy;
	unsigned connects, losses, subacks;
	unsigned offers;          /* every offer seen, any policy */
	struct rec last;          /* the last message offered */
	struct rec recs[32];      /* committed, first 32 */
	size_t n_committed;
	struct mqtt_msg *held[16];
	size_t n_held;
	uint64_t delivered[64], failed[64];
	size_t n_delivered, n_failed;
	int syncfd;               /* commit = write + fdatasync, when >= 0 */
	bool count_tags;          /* only count reported tags (no 64 cap) */
	unsigned long n_delivered_all, n_failed_all;
	unsigned long n_echo, n_corrupt; /* messages on echo/#: intact, not */
};

static void copy_str(char *dst, size_t cap, const void *src, size_t len)
{
	if (len >= cap)
		len = cap - 1;
	memcpy(dst, src, len);
	dst[len] = '\0';
}

static void record(struct rec *r, const struct mqtt_msg *msg)
{
	memset(r, 0, sizeof *r);
	copy_str(r->topic, sizeof r->topic, msg->topic, msg->topic_len);
	copy_str(r->payload, sizeof r->payload, msg->payload ? (const void *)msg->payload : "",
	         msg->len);
	r->dup = msg->dup;
	r->qos = msg->qos;
	r->offers = msg->offers;
	if ((r->has_ct = msg->content_type != NULL))
		copy_str(r->ct, sizeof r->ct, msg->content_type, strlen(msg->content_type));
	if ((r->has_rt = msg->response_topic != NULL))
		copy_str(r->rt, sizeof r->rt, msg->response_topic, strlen(msg->response_topic));
	if ((r->has_corr = msg->correlation != NULL))
		copy_str(r->corr, sizeof r->corr, msg->correlation, msg->correlation_len);
}

/* A message on echo/N must carry echo_payload(N). */
static void echo_payload(char *buf, size_t cap, const char *topic)
{
	snprintf(buf, cap, "{\"topic\":\"%s\",\"pad\":\"0123456789abcdef\"}", topic);
}

static void check_echo(struct tctx *t, const struct mqtt_msg *msg)
{
	char want[160];

	if (strncmp(msg->topic, "echo/", 5) != 0)
		return;
	echo_payload(want, sizeof want, msg->topic);
	if (msg->len == strlen(want) && memcmp(msg->payload, want, msg->len) == 0) {
		t->n_echo++;
	} else {
		if (t->n_corrupt++ == 0)
			printf("corrupt message on %s: %.*s\n", msg->topic, (int)msg->len,
			       (const char *)msg->payload);
	}
}

static void tctx_init(struct tctx *t, struct mqtt *m)
{
	struct epoll_event ev = { .events = EPOLLIN };

	memset(t, 0, sizeof *t);
	t->m = m;
	t->syncfd = -1;
	t->ep = epoll_create1(EPOLL_CLOEXEC);
	assert_true(t->ep >= 0);
	assert_int_equal(epoll_ctl(t->ep, EPOLL_CTL_ADD, mqtt_fd(m), &ev), 0);
}

/* Close the module without answering held messages. */
static void tctx_close(struct tctx *t, int timeout_ms)
{
	mqtt_close(t->m, timeout_ms);
	t->m = NULL;
	t->n_held = 0;
	close(t->ep);
}

static void pump_once(struct tctx *t, int ms)
{
	struct epoll_event ev;
	struct mqtt_events e;
	struct mqtt_msg *list, *next;
	size_t n;

	/* the loop's contract: flush once a turn, before sleeping (mqtt.h) */
	mqtt_flush(t->m);
	if (epoll_wait(t->ep, &ev, 1, ms) <= 0)
		return;
	mqtt_take_events(t->m, &e);
	t->connects += e.connects;
	t->losses += e.losses;
	t->subacks += e.subacks;
	if (t->count_tags) {
		uint64_t tags[256];
		while ((n = mqtt_take_delivered(t->m, tags, 256)) > 0)
			t->n_delivered_all += n;
		while ((n = mqtt_take_failed(t->m, tags, 256)) > 0)
			t->n_failed_all += n;
	} else {
		n = mqtt_take_delivered(t->m, t->delivered + t->n_delivered, 64 - t->n_delivered);
		t->n_delivered += n;
		n = mqtt_take_failed(t->m, t->failed + t->n_failed, 64 - t->n_failed);
		t->n_failed += n;
	}
	list = mqtt_take_inbound(t->m, SIZE_MAX);
	if (list && t->policy == P_COMMIT && t->syncfd >= 0) {
		/* one "transaction" for the whole batch: group commit */
		assert_int_equal(write(t->syncfd, "x", 1), 1);
		assert_int_equal(fdatasync(t->syncfd), 0);
	}
	for (struct mqtt_msg *msg = list; msg; msg = next) {
		next = msg->next;
		t->offers++;
		record(&t->last, msg);
		check_echo(t, msg);
		switch (t->policy) {
		case P_COMMIT:
			if (t->n_committed < 32)
				t->recs[t->n_committed] = t->last;
			t->n_committed++;
			mqtt_inbound_done(t->m, msg, true);
			break;
		case P_HOLD:
			assert_true(t->n_held < 16);
			t->held[t->n_held++] = msg;
			break;
		case P_REFUSE:
			mqtt_inbound_done(t->m, msg, false);
			break;
		}
	}
	mqtt_flush(t->m);
}

#define PUMP_UNTIL(t, ms, cond)                                              \
	do {                                                                 \
		long until_ = now_ms() + (ms);                               \
		while (!(cond) && now_ms() < until_)                         \
			pump_once((t), 50);                                  \
		if (!(cond))                                                 \
			fail_msg("timed out waiting for: %s", #cond);        \
	} while (0)

/* Pump for ms regardless (to see that nothing more arrives). */
static void pump_for(struct tctx *t, int ms)
{
	long until = now_ms() + ms;
	while (now_ms() < until)
		pump_once(t, 50);
}

static void opts_default(struct mqtt_opts *o, char *uri, size_t cap, int port, const char *id,
                         const char *const *subs, size_t n_subs)
{
	snprintf(uri, cap, "tcp://127.0.0.1:%d", port);
	memset(o, 0, sizeof *o);
	o->uri = uri;
	o->client_id = id;
	o->keepalive_s = 10;
	o->reconnect_min_s = 1;
	o->reconnect_max_s = 2;
	o->subs = subs;
	o->n_subs = n_subs;
	o->refuse_retry_ms = 100;
}

static struct mqtt *open_ok(struct tctx *t, int port, const char *id, const char *sub)
{
	static const char *subs[1];
	struct mqtt_opts o;
	struct mqtt *m = NULL;
	char uri[64];

	subs[0] = sub;
	opts_default(&o, uri, sizeof uri, port, id, subs, sub ? 1 : 0);
	assert_int_equal(mqtt_open(&o, &m), 0);
	tctx_init(t, m);
	return m;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_receive_and_properties(void **state)
{
	struct broker b;
	struct tctx t;
	char port[16];

	broker_init(&b);
	broker_start(&b);
	open_ok(&t, b.port, "ec-test-recv", "t/#");
	PUMP_UNTIL(&t, 5000, t.connects == 1 && t.subacks == 1);
	assert_true(mqtt_is_v5(t.m));

	pub(&b, "t/a", "hello");
	PUMP_UNTIL(&t, 5000, t.n_committed == 1);
	assert_string_equal(t.recs[0].topic, "t/a");
	assert_string_equal(t.recs[0].payload, "hello");
	assert_int_equal(t.recs[0].qos, 1);
	assert_int_equal(t.recs[0].offers, 1);
	assert_false(t.recs[0].has_ct || t.recs[0].has_rt || t.recs[0].has_corr);

	snprintf(port, sizeof port, "%d", b.port);
	char *argv[] = { "mosquitto_pub", "-p", port, "-V", "mqttv5", "-q", "1", "-t", "t/p",
	                 "-m", "{}", "-D", "publish", "content-type", "application/cbor",
	                 "-D", "publish", "response-topic", "rsp/x",
	                 "-D", "publish", "correlation-data", "c0ffee", NULL };
	assert_int_equal(run(argv, NULL, NULL, 0), 0);
	PUMP_UNTIL(&t, 5000, t.n_committed == 2);
	assert_string_equal(t.recs[1].topic, "t/p");
	assert_true(t.recs[1].has_ct && t.recs[1].has_rt && t.recs[1].has_corr);
	assert_string_equal(t.recs[1].ct, "application/cbor");
	assert_string_equal(t.recs[1].rt, "rsp/x");
	assert_string_equal(t.recs[1].corr, "c0ffee");

	tctx_close(&t, 1000);
	broker_fini(&b);
}

/* The durability promise: a message held by the loop (not committed) is not
 * acknowledged, so after the client goes away the broker delivers it again;
 * once committed it does not come back. */
static void test_ack_only_after_commit(void **state)
{
	struct broker b;
	struct tctx t;

	broker_init(&b);
	broker_start(&b);
	open_ok(&t, b.port, "ec-test-ack", "t/#");
	PUMP_UNTIL(&t, 5000, t.subacks == 1);
	t.policy = P_HOLD;
	pub(&b, "t/a", "m1");
	PUMP_UNTIL(&t, 5000, t.n_held == 1);
	tctx_close(&t, 500); /* dies with m1 unanswered */

	open_ok(&t, b.port, "ec-test-ack", "t/#");
	PUMP_UNTIL(&t, 5000, t.n_committed == 1);
	assert_string_equal(t.recs[0].payload, "m1");
	assert_true(t.recs[0].dup); /* the broker had sent it before */
	tctx_close(&t, 1000);

	/* Committed now: after reconnecting only the marker arrives (the
	 * broker keeps order, so a redelivered m1 would come first). */
	open_ok(&t, b.port, "ec-test-ack", "t/#");
	PUMP_UNTIL(&t, 5000, t.subacks == 1);
	pub(&b, "t/a", "marker");
	PUMP_UNTIL(&t, 5000, t.n_committed == 1);
	assert_string_equal(t.recs[0].payload, "marker");
	pump_for(&t, 300);
	assert_int_equal(t.n_committed, 1);
	tctx_close(&t, 1000);
	broker_fini(&b);
}

/* Publish N copies of a SIZE-byte file on big/x at QoS qos with
 * mosquitto_pub. */
static void publish_big(struct broker *b, int n, int size, const char *qos)
{
	char path[300], port[16];
	FILE *f;

	snprintf(path, sizeof path, "%s/big", b->dir);
	f = fopen(path, "w");
	assert_non_null(f);
	for (int i = 0; i < size; i++)
		fputc('x', f);
	fclose(f);
	snprintf(port, sizeof port, "%d", b->port);
	for (int i = 0; i < n; i++) {
		char *argv[] = { "mosquitto_pub", "-p", port, "-q", (char *)qos, "-t", "big/x",
				 "-f", path, NULL };
		assert_int_equal(run(argv, NULL, NULL, 0), 0);
	}
}

/* 14 messages of 1.5 MiB on big/x at QoS qos, to a client with a 2 MiB
 * max_message that holds what it gets: want_held of them arrive. Our own
 * publish is answered meanwhile (the socket is still read). Then the loop
 * gives them back, and want_later more arrive. */
static void held_case(const char *qos, size_t want_held, size_t want_later)
{
	enum { N = 14, SIZE = 3 << 19 };
	struct broker b;
	struct tctx t;
	struct mqtt_opts o;
	struct mqtt *m = NULL;
	char uri[64];
	const char *subs[] = { "big/#" };
	struct mqtt_pub p = { .topic = "out/x", .payload = "a", .len = 1, .tag = 7 };

	broker_init(&b);
	broker_start(&b);
	opts_default(&o, uri, sizeof uri, b.port, "ec-test-held", subs, 1);
	o.max_message = 2u << 20;
	assert_int_equal(mqtt_open(&o, &m), 0);
	tctx_init(&t, m);
	PUMP_UNTIL(&t, 5000, t.subacks == 1);
	t.policy = P_HOLD;
	publish_big(&b, N, SIZE, qos);
	PUMP_UNTIL(&t, 10000, t.n_held == want_held);
	pump_for(&t, 1000);
	assert_int_equal(t.n_held, want_held);
	assert_int_equal(mqtt_publish(m, &p), 0);
	mqtt_flush(m);
	PUMP_UNTIL(&t, 5000, t.n_delivered == 1);
	assert_int_equal(t.delivered[0], 7);
	t.policy = P_COMMIT;
	for (size_t i = 0; i < t.n_held; i++)
		mqtt_inbound_done(m, t.held[i], true);
	t.n_held = 0;
	if (want_later)
		PUMP_UNTIL(&t, 10000, t.n_committed == want_later);
	pump_for(&t, 500);
	assert_int_equal(t.n_committed, want_later);
	tctx_close(&t, 1000);
	broker_fini(&b);
}

/* The Receive Maximum we announce keeps QoS 1 messages the loop has not
 * answered under 16 MiB at the largest size read whole: 7 with a 2 MiB
 * max_message. The broker keeps the rest, and the socket is still read:
 * the PUBACKs of our publishes come on it, and a loop waiting for them to
 * take what it holds (a full outbox) would otherwise wait for ever (the
 * module used to stop reading past 16 MiB: 11 of these, announcing 256). */
static void test_held_qos1_bounded(void **state)
{
	held_case("1", 7, 14 - 7);
}

/* QoS 0 messages have no Receive Maximum: past 16 MiB held they are
 * dropped (at most once is what they asked for), and reading goes on. */
static void test_held_qos0_shed(void **state)
{
	held_case("0", 11, 0); /* the 11th crosses 16 MiB; the other 3 are gone */
}

/* Backpressure: a refused message is offered again later, and the refusal
 * does not acknowledge it (a client that dies after refusing gets it from
 * the broker again). */
static void test_refusal_redelivers_unacked(void **state)
{
	struct broker b;
	struct tctx t;

	broker_init(&b);
	broker_start(&b);
	open_ok(&t, b.port, "ec-test-refuse", "t/#");
	PUMP_UNTIL(&t, 5000, t.subacks == 1);

	t.policy = P_REFUSE;
	pub(&b, "t/a", "r1");
	PUMP_UNTIL(&t, 5000, t.offers >= 3);
	assert_string_equal(t.last.payload, "r1");
	assert_int_equal(t.last.offers, t.offers);
	assert_int_equal(t.n_committed, 0);
	t.policy = P_COMMIT;
	PUMP_UNTIL(&t, 5000, t.n_committed == 1);
	assert_string_equal(t.recs[0].payload, "r1");
	assert_true(t.recs[0].offers >= 4);

	t.policy = P_REFUSE;
	t.offers = 0;
	pub(&b, "t/a", "r2");
	PUMP_UNTIL(&t, 5000, t.offers >= 2);
	tctx_close(&t, 500);

	open_ok(&t, b.port, "ec-test-refuse", "t/#");
	PUMP_UNTIL(&t, 5000, t.n_committed == 1);
	assert_string_equal(t.recs[0].payload, "r2");
	assert_int_equal(t.recs[0].offers, 1);
	assert_true(t.recs[0].dup);
	tctx_close(&t, 1000);
	broker_fini(&b);
}

/* Messages refused together come back in the order they came: a chain of
 * tasks, each depending on the one before, refused under backpressure must
 * not come back last first (each would then be refused for an unknown
 * dependency). */
static void test_refused_come_back_in_order(void **state)
{
	struct broker b;
	struct tctx t;

	broker_init(&b);
	broker_start(&b);
	open_ok(&t, b.port, "ec-test-order", "t/#");
	PUMP_UNTIL(&t, 5000, t.subacks == 1);
	t.policy = P_REFUSE;
	pub(&b, "t/a", "m1");
	pub(&b, "t/a", "m2");
	pub(&b, "t/a", "m3");
	PUMP_UNTIL(&t, 5000, t.offers >= 3); /* each refused once */
	t.policy = P_COMMIT;
	PUMP_UNTIL(&t, 5000, t.n_committed == 3);
	assert_string_equal(t.recs[0].payload, "m1");
	assert_string_equal(t.recs[1].payload, "m2");
	assert_string_equal(t.recs[2].payload, "m3");
	tctx_close(&t, 1000);
	broker_fini(&b);
}

static void test_publish_window_and_pubacks(void **state)
{
	struct broker b;
	struct tctx t;
	struct mqtt_opts o;
	struct mqtt *m;
	char uri[64];
	struct mqtt_pub p = { .topic = "out/x", .payload = "a", .len = 1 };

	broker_init(&b);
	/* No broker yet: publishing fails fast. */
	opts_default(&o, uri, sizeof uri, b.port, "ec-test-pub", NULL, 0);
	o.max_inflight = 2;
	assert_int_equal(mqtt_open(&o, &m), 0);
	tctx_init(&t, m);
	p.tag = 99;
	assert_int_equal(mqtt_publish(m, &p), -ENOTCONN);
	assert_false(mqtt_can_publish(m));

	/* The broker comes up after the client: the first connect is retried. */
	broker_start(&b);
	PUMP_UNTIL(&t, 8000, t.connects == 1);
	p.tag = 1;
	assert_int_equal(mqtt_publish(m, &p), 0);
	p.tag = 2;
	assert_int_equal(mqtt_publish(m, &p), 0);
	p.tag = 3;
	assert_int_equal(mqtt_publish(m, &p), -EAGAIN);
	assert_false(mqtt_can_publish(m));
	assert_int_equal(mqtt_inflight(m), 2);
	PUMP_UNTIL(&t, 5000, t.n_delivered == 2);
	assert_true((t.delivered[0] == 1 && t.delivered[1] == 2) ||
	            (t.delivered[0] == 2 && t.delivered[1] == 1));
	assert_int_equal(mqtt_inflight(m), 0);
	assert_true(mqtt_can_publish(m));
	assert_int_equal(t.n_failed, 0);
	p.topic = "bad/#"; /* wildcards are not allowed in a topic name */
	assert_int_not_equal(mqtt_publish(m, &p), 0);
	assert_int_equal(mqtt_inflight(m), 0);
	tctx_close(&t, 1000);
	broker_fini(&b);
}

/* A publish the broker refuses (MQTT 5 PUBACK reason 0x87: its ACL denies
 * the topic) is answered, not failed: it would be refused again, and a
 * caller that resends what failed would send it for ever. */
static void test_refused_publish_is_answered(void **state)
{
	struct broker b;
	struct tctx t;
	struct mqtt_opts o;
	struct mqtt *m;
	char uri[64], acl[300];
	struct mqtt_pub p = { .topic = "deny/x", .payload = "a", .len = 1, .tag = 1 };

	broker_init(&b);
	snprintf(acl, sizeof acl, "%s/acl", b.dir);
	FILE *f = fopen(acl, "w");
	assert_non_null(f);
	fprintf(f, "topic readwrite out/#\n");
	fclose(f);
	chmod(acl, 0644);
	f = fopen(b.conf, "a");
	assert_non_null(f);
	fprintf(f, "acl_file %s\n", acl);
	fclose(f);
	broker_start(&b);
	opts_default(&o, uri, sizeof uri, b.port, "ec-test-refused", NULL, 0);
	assert_int_equal(mqtt_open(&o, &m), 0);
	tctx_init(&t, m);
	PUMP_UNTIL(&t, 8000, t.connects == 1);
	assert_true(mqtt_is_v5(m));
	assert_int_equal(mqtt_publish(m, &p), 0);
	p.topic = "out/x";
	p.tag = 2;
	assert_int_equal(mqtt_publish(m, &p), 0);
	PUMP_UNTIL(&t, 5000, t.n_delivered == 2);
	assert_int_equal(t.n_failed, 0);
	assert_int_equal(mqtt_inflight(m), 0);
	tctx_close(&t, 1000);
	broker_fini(&b);
}

static void test_retained_with_properties(void **state)
{
	struct broker b;
	struct tctx t;
	char out[256];
	struct mqtt_pub p = { .topic = "r/1", .payload = "{\"a\":1}", .len = 7, .retain = true,
	                      .expiry_s = 3600, .content_type = "application/json",
	                      .correlation = "abc", .correlation_len = 3, .tag = 7 };
	unsigned expiry = 0;
	int off = 0;

	broker_init(&b);
	broker_start(&b);
	open_ok(&t, b.port, "ec-test-retain", NULL);
	PUMP_UNTIL(&t, 5000, t.connects == 1);
	assert_int_equal(mqtt_publish(t.m, &p), 0);
	PUMP_UNTIL(&t, 5000, t.n_delivered == 1);
	assert_int_equal(t.delivered[0], 7);

	sub_retained(&b, "r/1", "%r|%E|%C|%D|%p", out, sizeof out);
	assert_int_equal(sscanf(out, "1|%u|%n", &expiry, &off), 1);
	assert_true(expiry > 3590 && expiry <= 3600);
	assert_string_equal(out + off, "application/json|abc|{\"a\":1}");
	tctx_close(&t, 1000);
	broker_fini(&b);
}

/* Broker restart: automatic reconnect, subscriptions made again, a message
 * published after the restart arrives. */
static void test_broker_restart(void **state)
{
	struct broker b;
	struct tctx t;
	struct mqtt_pub p = { .topic = "out/x", .payload = "a", .len = 1, .tag = 5 };

	broker_init(&b);
	broker_start(&b);
	open_ok(&t, b.port, "ec-test-restart", "t/#");
	PUMP_UNTIL(&t, 5000, t.connects == 1 && t.subacks == 1);
	broker_stop(&b);
	PUMP_UNTIL(&t, 5000, t.losses == 1);
	assert_int_equal(mqtt_publish(t.m, &p), -ENOTCONN);
	broker_start(&b);
	PUMP_UNTIL(&t, 10000, t.connects == 2 && t.subacks == 2);
	pub(&b, "t/after", "back");
	PUMP_UNTIL(&t, 5000, t.n_committed == 1);
	assert_string_equal(t.recs[0].payload, "back");
	assert_int_equal(mqtt_publish(t.m, &p), 0);
	PUMP_UNTIL(&t, 5000, t.n_delivered == 1);
	tctx_close(&t, 1000);
	broker_fini(&b);
}

/* Broker outages with the publish window full (this test caught a
 * use-after-free in paho 1.3.12's automatic reconnect, which the module
 * used before it spoke MQTT itself). Publish to ourselves as fast as the
 * window allows, kill the broker several times mid-stream (with and without
 * its saved session), and check that every message that comes back is
 * intact and every tag is reported exactly once. */
static void test_outage_with_window_full(void **state)
{
	enum { CYCLES = 5 };
	struct broker b;
	struct tctx t;
	struct mqtt_opts o;
	struct mqtt *m;
	static const char *subs[] = { "echo/#" };
	char uri[64], topic[64], payload[160];
	unsigned long published = 0;

	broker_init(&b);
	broker_start(&b);
	opts_default(&o, uri, sizeof uri, b.port, "ec-test-outage", subs, 1);
	o.reconnect_max_s = 1;
	assert_int_equal(mqtt_open(&o, &m), 0);
	tctx_init(&t, m);
	t.count_tags = true;
	PUMP_UNTIL(&t, 5000, t.connects == 1 && t.subacks == 1);

	for (int c = 0; c < CYCLES; c++) {
		long until = now_ms() + 150 + 70 * c;

		/* Keep the window full, then pull the broker away. */
		while (now_ms() < until) {
			while (mqtt_can_publish(m)) {
				struct mqtt_pub p = { .topic = topic, .payload = payload,
				                      .tag = published };
				snprintf(topic, sizeof topic, "echo/%lu/abcdefghijklmnopqrstuvwxyz",
				         published);
				echo_payload(payload, sizeof payload, topic);
				p.len = strlen(payload);
				assert_int_equal(mqtt_publish(m, &p), 0);
				published++;
			}
			mqtt_flush(m);
			pump_once(&t, 1);
		}
		/* SIGTERM: mosquitto saves the session and we find it
		 * present on reconnect; SIGKILL: the session is gone. */
		kill(b.pid, c % 2 ? SIGKILL : SIGTERM);
		waitpid(b.pid, NULL, 0);
		b.pid = 0;
		PUMP_UNTIL(&t, 5000, t.losses == (unsigned)c + 1);
		broker_start(&b);
		PUMP_UNTIL(&t, 10000, t.connects >= (unsigned)c + 2 && t.subacks >= (unsigned)c + 2);
		printf("cycle %d: connects %u subacks %u losses %u published %lu delivered %lu failed %lu echo %lu\n", c, t.connects, t.subacks, t.losses, published, t.n_delivered_all, t.n_failed_all, t.n_echo);
	}
	/* Everything accepted gets exactly one report. */
	PUMP_UNTIL(&t, 10000, t.n_delivered_all + t.n_failed_all == published);
	assert_int_equal(mqtt_inflight(m), 0);
	pump_for(&t, 300);
	printf("outage: %lu published, %lu delivered, %lu failed; %lu echoes intact, "
	       "%lu corrupt\n", published, t.n_delivered_all, t.n_failed_all, t.n_echo,
	       t.n_corrupt);
	assert_int_equal(t.n_corrupt, 0);
	assert_true(t.n_echo > 0);
	assert_int_equal(t.n_delivered_all + t.n_failed_all, published);
	tctx_close(&t, 1000);
	broker_fini(&b);
}

/* The will: published (retained) when the client dies without DISCONNECT,
 * not when it closes cleanly; the online message on connect. */
static void test_will_and_online(void **state)
{
	struct broker b;
	struct tctx t;
	struct mqtt_opts o;
	struct mqtt *m;
	char uri[64], out[128], c;
	int sync[2];
	pid_t pid;

	broker_init(&b);
	broker_start(&b);
	assert_int_equal(pipe(sync), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		opts_default(&o, uri, sizeof uri, b.port, "ec-test-will", NULL, 0);
		o.will_topic = "w/state";
		o.will_payload = "offline";
		o.will_len = 7;
		o.online_topic = "w/state";
		o.online_payload = "online";
		o.online_len = 6;
		if (mqtt_open(&o, &m) != 0)
			_exit(1);
		tctx_init(&t, m); /* the module works only when pumped */
		PUMP_UNTIL(&t, 5000, t.connects == 1);
		pump_for(&t, 300); /* let the online message reach the broker */
		if (write(sync[1], "r", 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	close(sync[1]);
	assert_int_equal(read(sync[0], &c, 1), 1);
	close(sync[0]);
	sub_retained(&b, "w/state", "%p", out, sizeof out);
	assert_string_equal(out, "online");
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	usleep(200000);
	sub_retained(&b, "w/state", "%p", out, sizeof out);
	assert_string_equal(out, "offline");

	/* A clean close sends DISCONNECT: the broker drops the will. */
	opts_default(&o, uri, sizeof uri, b.port, "ec-test-will2", NULL, 0);
	o.will_topic = "w/clean";
	o.will_payload = "offline";
	o.will_len = 7;
	o.online_topic = "w/clean";
	o.online_payload = "online";
	o.online_len = 6;
	assert_int_equal(mqtt_open(&o, &m), 0);
	tctx_init(&t, m);
	PUMP_UNTIL(&t, 5000, t.connects == 1);
	pump_for(&t, 200);
	tctx_close(&t, 1000);
	usleep(200000);
	sub_retained(&b, "w/clean", "%p", out, sizeof out);
	assert_string_equal(out, "online");
	broker_fini(&b);
}

/* ---- 3.1.1 fallback against a scripted broker ------------------------------ */

struct fake {
	int lfd, port;
	int levels[4];      /* protocol level of each CONNECT */
	int clean[4];       /* its clean session/start flag */
	int n_connects;
	_Atomic bool subscribed;
	volatile bool stop;
};

static int read_full(int fd, uint8_t *buf, size_t len)
{
	size_t n = 0;
	while (n < len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t r;
		if (poll(&p, 1, 5000) <= 0)
			return -1;
		if ((r = read(fd, buf + n, len - n)) <= 0)
			return -1;
		n += (size_t)r;
	}
	return 0;
}

/* One MQTT packet: type byte, body (up to cap). */
static int read_packet(int fd, uint8_t *type, uint8_t *body, size_t cap, size_t *len)
{
	uint8_t b;
	size_t rl = 0;
	int shift = 0;

	if (read_full(fd, type, 1))
		return -1;
	do {
		if (read_full(fd, &b, 1) || shift > 21)
			return -1;
		rl |= (size_t)(b & 0x7f) << shift;
		shift += 7;
	} while (b & 0x80);
	if (rl > cap || read_full(fd, body, rl))
		return -1;
	*len = rl;
	return 0;
}

static void *fake_broker(void *arg)
{
	struct fake *f = arg;
	uint8_t type, body[1024];
	size_t len;

	while (!f->stop && f->n_connects < 4) {
		struct pollfd p = { .fd = f->lfd, .events = POLLIN };
		int c;

		if (poll(&p, 1, 100) <= 0)
			continue;
		if ((c = accept(f->lfd, NULL, NULL)) < 0)
			continue;
		if (read_packet(c, &type, body, sizeof body, &len) || type != 0x10 || len < 8) {
			close(c);
			continue;
		}
		/* body: 00 04 'M' 'Q' 'T' 'T' level flags ... */
		int i = f->n_connects++;
		f->levels[i] = body[6];
		f->clean[i] = (body[7] >> 1) & 1;
		if (body[6] == 5) {
			/* what a 3.1.1-only broker answers: return code 1 */
			static const uint8_t refuse[] = { 0x20, 0x02, 0x00, 0x01 };
			(void)!write(c, refuse, sizeof refuse);
			close(c);
			continue;
		}
		static const uint8_t ok[] = { 0x20, 0x02, 0x00, 0x00 };
		(void)!write(c, ok, sizeof ok);
		while (!f->stop && !read_packet(c, &type, body, sizeof body, &len)) {
			if ((type & 0xf0) == 0x80 && len >= 2) {
				uint8_t ack[] = { 0x90, 0x03, body[0], body[1], 0x01 };
				/* before the SUBACK: the client may check it as soon as
				 * the SUBACK arrives */
				f->subscribed = true;
				(void)!write(c, ack, sizeof ack);
			} else if ((type & 0xf0) == 0xc0) {
				static const uint8_t pong[] = { 0xd0, 0x00 };
				(void)!write(c, pong, sizeof pong);
			} else if ((type & 0xf0) == 0xe0) {
				break;
			}
		}
		close(c);
	}
	return NULL;
}

/* A broker that answers CONNACK and then nothing: the keep-alive must
 * notice (PINGREQ unanswered) and reconnect. */
struct mute {
	int lfd;
	int accepted;
	volatile bool stop;
};

static void *mute_broker(void *arg)
{
	struct mute *f = arg;
	uint8_t type, body[1024];
	size_t len;
	int c = -1;

	while (!f->stop) {
		struct pollfd p[2] = { { .fd = f->lfd, .events = POLLIN }, { .fd = c, .events = POLLIN } };
		if (poll(p, c >= 0 ? 2 : 1, 100) <= 0)
			continue;
		if (p[0].revents & POLLIN) {
			if (c >= 0)
				close(c);
			if ((c = accept(f->lfd, NULL, NULL)) < 0)
				continue;
			f->accepted++;
			if (read_packet(c, &type, body, sizeof body, &len) == 0) {
				static const uint8_t ok[] = { 0x20, 0x03, 0x00, 0x00, 0x00 };
				(void)!write(c, ok, sizeof ok);
			}
		} else if (c >= 0 && read_packet(c, &type, body, sizeof body, &len) != 0) {
			close(c); /* the client gave up on us */
			c = -1;
		}
	}
	if (c >= 0)
		close(c);
	return NULL;
}

static void test_keepalive(void **state)
{
	struct broker b;
	struct tctx t;
	struct mqtt_opts o;
	struct mqtt *m = NULL;
	char uri[64];
	const char *subs[] = { "t/#" };

	/* A live broker drops a client silent for 1.5 x keepalive: the
	 * module's PINGREQs keep an idle connection up. */
	broker_init(&b);
	broker_start(&b);
	opts_default(&o, uri, sizeof uri, b.port, "ec-test-ka", subs, 1);
	o.keepalive_s = 1;
	assert_int_equal(mqtt_open(&o, &m), 0);
	tctx_init(&t, m);
	PUMP_UNTIL(&t, 5000, t.connects == 1 && t.subacks == 1);
	pump_for(&t, 4000);
	assert_int_equal(t.losses, 0);
	assert_int_equal(t.connects, 1);
	tctx_close(&t, 200);
	broker_fini(&b);

	/* A broker that stops answering: the connection is given up after
	 * an unanswered PINGREQ and made again. */
	struct mute f = { 0 };
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof a;
	pthread_t th;

	f.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(f.lfd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(getsockname(f.lfd, (struct sockaddr *)&a, &alen), 0);
	assert_int_equal(listen(f.lfd, 4), 0);
	assert_int_equal(pthread_create(&th, NULL, mute_broker, &f), 0);
	opts_default(&o, uri, sizeof uri, ntohs(a.sin_port), "ec-test-mute", NULL, 0);
	o.keepalive_s = 1;
	assert_int_equal(mqtt_open(&o, &m), 0);
	tctx_init(&t, m);
	PUMP_UNTIL(&t, 5000, t.connects == 1);
	long t0 = now_ms();
	PUMP_UNTIL(&t, 5000, t.losses == 1);
	/* ping after 0.75 s of silence, given up 1 s later */
	assert_true(now_ms() - t0 < 2500);
	PUMP_UNTIL(&t, 5000, t.connects == 2);
	/* The same while we keep publishing (nothing is heard back): the
	 * publishes keep the link from being silent, not from being deaf. */
	t0 = now_ms();
	struct mqtt_pub p = { .topic = "out/x", .payload = "a", .len = 1 };
	while (t.losses < 2 && now_ms() - t0 < 5000) {
		p.tag++;
		(void)mqtt_publish(m, &p);
		pump_for(&t, 100);
	}
	assert_int_equal(t.losses, 2);
	assert_true(now_ms() - t0 < 3000);
	tctx_close(&t, 0);
	f.stop = true;
	pthread_join(th, NULL);
	close(f.lfd);
}

/* A broker given by name is looked up off the loop (getaddrinfo_a): by
 * "localhost" it connects (::1 may refuse first: the next address is
 * tried); a name that does not resolve is an attempt that failed, and the
 * loop stays responsive meanwhile, however slow the resolver. */
static void test_broker_by_name(void **state)
{
	struct broker b;
	struct tctx t;
	struct mqtt_opts o;
	struct mqtt *m = NULL;
	static const char *subs[] = { "t/#" };
	char uri[96];

	broker_init(&b);
	broker_start(&b);
	opts_default(&o, uri, sizeof uri, b.port, "ec-test-name", subs, 1);
	snprintf(uri, sizeof uri, "tcp://localhost:%d", b.port);
	assert_int_equal(mqtt_open(&o, &m), 0);
	tctx_init(&t, m);
	PUMP_UNTIL(&t, 5000, t.connects == 1 && t.subacks == 1);
	pub(&b, "t/n", "by name");
	PUMP_UNTIL(&t, 5000, t.n_committed == 1);
	tctx_close(&t, 1000);

	snprintf(uri, sizeof uri, "tcp://edgecoord-test.invalid:%d", b.port);
	assert_int_equal(mqtt_open(&o, &m), 0);
	tctx_init(&t, m);
	long until = now_ms() + 1500;
	while (now_ms() < until) {
		long t0 = now_ms();
		pump_once(&t, 50);
		assert_true(now_ms() - t0 < 500); /* never blocked by the lookup */
	}
	assert_int_equal(t.connects, 0);
	tctx_close(&t, 200);
	broker_fini(&b);
}

static void test_fallback_to_311(void **state)
{
	struct fake f = { 0 };
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof a;
	pthread_t th;
	struct tctx t;
	struct mqtt_pub p = { .topic = "out/x", .payload = "a", .len = 1, .expiry_s = 60,
	                      .content_type = "application/json", .tag = 1 };

	f.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(f.lfd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(getsockname(f.lfd, (struct sockaddr *)&a, &alen), 0);
	assert_int_equal(listen(f.lfd, 4), 0);
	f.port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&th, NULL, fake_broker, &f), 0);

	open_ok(&t, f.port, "ec-test-fallback", "t/#");
	PUMP_UNTIL(&t, 8000, t.connects == 1 && t.subacks == 1);
	assert_false(mqtt_is_v5(t.m));
	assert_int_equal(f.n_connects, 2);
	assert_int_equal(f.levels[0], 5);
	assert_int_equal(f.levels[1], 4);
	assert_int_equal(f.clean[1], 0); /* still a persistent session */
	assert_true(f.subscribed);
	/* v5-only properties are dropped, the publish itself goes out */
	assert_int_equal(mqtt_publish(t.m, &p), 0);

	tctx_close(&t, 200);
	f.stop = true;
	pthread_join(th, NULL);
	close(f.lfd);
}

/* Reference number, not a target: 5,000 QoS 1 messages from mosquitto_pub -l,
 * each batch "committed" with fdatasync before its PUBACK. */
static void test_throughput_reference(void **state)
{
	enum { N = 5000 };
	struct broker b;
	struct tctx t;
	char path[300], data[300], port[16];
	FILE *f;
	pid_t pid;
	long t0 = 0, t1;

	broker_init(&b);
	broker_start(&b);
	snprintf(path, sizeof path, "%s/lines", b.dir);
	snprintf(data, sizeof data, "%s/commit", b.dir);
	f = fopen(path, "w");
	assert_non_null(f);
	for (int i = 0; i < N; i++)
		fprintf(f, "{\"task_id\":\"t%d\",\"type\":\"echo\"}\n", i);
	fclose(f);

	open_ok(&t, b.port, "ec-test-bulk", "bulk/#");
	t.syncfd = open(data, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	assert_true(t.syncfd >= 0);
	PUMP_UNTIL(&t, 5000, t.subacks == 1);

	snprintf(port, sizeof port, "%d", b.port);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int in = open(path, O_RDONLY);
		dup2(in, 0);
		execlp("mosquitto_pub", "mosquitto_pub", "-p", port, "-q", "1", "-t", "bulk/in",
		       "-l", (char *)NULL);
		_exit(127);
	}
	PUMP_UNTIL(&t, 2000, t.n_committed >= 1);
	t0 = now_ms();
	PUMP_UNTIL(&t, 60000, t.n_committed == N);
	t1 = now_ms();
	waitpid(pid, NULL, 0);
	printf("mqtt throughput: %d QoS 1 messages, commit (fdatasync) before ack: "
	       "%.0f msg/s\n", N - 1, (N - 1) * 1000.0 / (double)(t1 - t0 > 0 ? t1 - t0 : 1));
	close(t.syncfd);
	tctx_close(&t, 1000);
	broker_fini(&b);
}

static void test_bad_options(void **state)
{
	struct mqtt_opts o = { .uri = "http://x", .client_id = "a" };
	struct mqtt *m = NULL;

	assert_int_equal(mqtt_open(&o, &m), -EINVAL);
	o.uri = "tcp://127.0.0.1:1";
	o.client_id = "";
	assert_int_equal(mqtt_open(&o, &m), -EINVAL);
	assert_null(m);
	mqtt_close(NULL, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bad_options),
		cmocka_unit_test(test_receive_and_properties),
		cmocka_unit_test(test_ack_only_after_commit),
		cmocka_unit_test(test_refusal_redelivers_unacked),
		cmocka_unit_test(test_refused_come_back_in_order),
		cmocka_unit_test(test_publish_window_and_pubacks),
		cmocka_unit_test(test_refused_publish_is_answered),
		cmocka_unit_test(test_retained_with_properties),
		cmocka_unit_test(test_broker_restart),
		cmocka_unit_test(test_outage_with_window_full),
		cmocka_unit_test(test_will_and_online),
		cmocka_unit_test(test_held_qos1_bounded),
		cmocka_unit_test(test_held_qos0_shed),
		cmocka_unit_test(test_keepalive),
		cmocka_unit_test(test_broker_by_name),
		cmocka_unit_test(test_fallback_to_311),
		cmocka_unit_test(test_throughput_reference),
	};
	signal(SIGPIPE, SIG_IGN);
	if (getenv("EC_TEST_FILTER")) /* run only the tests matching it */
		cmocka_set_test_filter(getenv("EC_TEST_FILTER"));
	log_init("test_mqtt", LOG_LVL_INFO, 0);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
