/* SPDX-License-Identifier: MIT */
/*
 * test_coord.c - the coordinator's turn without a broker: a real store in a
 * temporary directory, and a fake publisher that records what coord hands
 * it. Checks what reaches the outbox for submissions, refusals, answers on a
 * Response Topic, duplicates and control; the nested hooks around each
 * message; that messages are acked only after a commit; backpressure; and
 * the outbox drain (order, deletion on delivery, resending after a
 * reconnect).
 */
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"
#include "coord.h"
#include "edgecoord/err.h"

#define MAXPUB 256

struct pub {
	uint64_t seq;
	char topic[256];
	char payload[1024];
	size_t len;
	unsigned flags;
	char corr[64];
};

struct fx {
	char dir[64];
	struct store *st;
	struct coord *c;
	bool connected;
	size_t window;          /* publishes accepted before "window full" */
	struct pub pubs[MAXPUB];
	size_t npubs;
	struct { void *user; bool ack; } settled[8];
	size_t nsettled;
	const char *too_big;    /* publishes to topics containing it: -EMSGSIZE */
};

static int fake_publish(void *arg, uint64_t seq, const char *topic, const uint8_t *payload,
			size_t len, unsigned flags, const uint8_t *corr, size_t corr_len)
{
	struct fx *f = arg;
	if (!f->connected || f->npubs >= f->window || f->npubs >= MAXPUB)
		return -EAGAIN;
	if (f->too_big && strstr(topic, f->too_big))
		return -EMSGSIZE; /* over the broker's Maximum Packet Size */
	struct pub *p = &f->pubs[f->npubs++];
	p->seq = seq;
	snprintf(p->topic, sizeof p->topic, "%s", topic);
	p->len = len < sizeof p->payload - 1 ? len : sizeof p->payload - 1;
	memcpy(p->payload, payload, p->len);
	p->payload[p->len] = 0;
	p->flags = flags;
	snprintf(p->corr, sizeof p->corr, "%.*s", (int)corr_len, corr ? (const char *)corr : "");
	return 0;
}

static void fake_settle(void *arg, void *user, bool ack)
{
	struct fx *f = arg;
	if (f->nsettled < 8) {
		f->settled[f->nsettled].user = user;
		f->settled[f->nsettled].ack = ack;
	}
	f->nsettled++;
}

static bool fake_can(void *arg)
{
	struct fx *f = arg;
	return f->connected && f->npubs < f->window;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(p);
}

static int setup_with(void **state, uint64_t outbox_max, bool lazy)
{
	struct fx *f = calloc(1, sizeof *f);
	snprintf(f->dir, sizeof f->dir, "%s/ec-coord-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(f->dir));
	struct store_opts so = { .dir = f->dir, .map_size = 4 << 20, .max_map_size = 64 << 20,
				 .lazy_meta = lazy };
	assert_int_equal(store_open(&so, &f->st), 0);
	struct coord_opts o = { .prefix = "ec", .node_id = "n1", .outbox_max = outbox_max,
				.status_events = CONFIG_STATUS_MILESTONES };
	limits_default(&o.limits);
	struct coord_io io = { .publish = fake_publish, .can_publish = fake_can,
			       .settle = fake_settle, .arg = f };
	assert_int_equal(coord_new(f->st, &o, &io, &f->c), 0);
	f->connected = true;
	f->window = MAXPUB;
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_with(state, 0, false);
}

static int setup_lazy(void **state)
{
	return setup_with(state, 0, true);
}

static int setup_small_outbox(void **state)
{
	return setup_with(state, 3, false);
}

static int teardown(void **state)
{
	struct fx *f = *state;
	coord_free(f->c);
	store_close(f->st);
	nftw(f->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

/* Push one message and flush; returns whether it was acked. */
static bool send_msg(struct fx *f, const char *topic, const char *payload, const char *resp,
		     const char *corr)
{
	struct coord_msg m = {
		.topic = topic, .payload = (const uint8_t *)payload, .len = strlen(payload),
		.response_topic = resp, .corr = (const uint8_t *)corr, .corr_len = corr ? strlen(corr) : 0,
	};
	assert_int_equal(coord_push(f->c, &m), 0);
	assert_int_equal(coord_flush(f->c, 1000), 0);
	return m.ack;
}

static const struct pub *find(const struct fx *f, const char *topic, const char *needle)
{
	for (size_t i = 0; i < f->npubs; i++)
		if (strcmp(f->pubs[i].topic, topic) == 0 &&
		    (!needle || strstr(f->pubs[i].payload, needle)))
			return &f->pubs[i];
	return NULL;
}

static bool has(const struct pub *p, const char *needle)
{
	return p && strstr(p->payload, needle);
}

static void deliver_all(struct fx *f)
{
	for (size_t i = 0; i < f->npubs; i++)
		coord_delivered(f->c, f->pubs[i].seq);
}

static void test_submit_statuses(void **state)
{
	struct fx *f = *state;
	assert_true(send_msg(f, "ec/submit/dev1", "{\"task_id\":\"t1\",\"type\":\"echo\"}", NULL, NULL));
	const struct pub *p = find(f, "ec/tasks/t1/status", "\"state\":\"accepted\"");
	assert_non_null(p);
	assert_true(p->flags & OUTBOX_RETAIN);
	assert_true(p->flags & OUTBOX_EXPIRE);
	assert_false(p->flags & OUTBOX_CBOR);
	/* milestones: ready is not published */
	assert_null(find(f, "ec/tasks/t1/status", "\"state\":\"ready\""));
	assert_null(find(f, "ec/rejected/dev1", NULL));

	/* a workflow gets one workflow status row for the turn */
	assert_true(send_msg(f, "ec/submit", "{\"task_id\":\"wf\",\"type\":\"collaborative_task\","
			     "\"steps\":[{\"task_id\":\"a\",\"type\":\"x\"},"
			     "{\"task_id\":\"b\",\"type\":\"x\",\"depends_on\":[\"a\"]}]}", NULL, NULL));
	size_t nwf = 0;
	for (size_t i = 0; i < f->npubs; i++)
		nwf += strcmp(f->pubs[i].topic, "ec/workflows/wf/status") == 0;
	assert_int_equal(nwf, 1);
	assert_non_null(find(f, "ec/workflows/wf/status", "\"total\":2"));
	assert_non_null(find(f, "ec/tasks/wf:b/status", "\"workflow\":\"wf\""));
}

static void test_cbor_submitter_gets_cbor(void **state)
{
	struct fx *f = *state;
	/* {"task_id": "c1", "type": "echo"} */
	static const uint8_t cbor[] = { 0xa2, 0x67, 't', 'a', 's', 'k', '_', 'i', 'd', 0x62, 'c', '1',
					0x64, 't', 'y', 'p', 'e', 0x64, 'e', 'c', 'h', 'o' };
	struct coord_msg m = { .topic = "ec/submit/cb", .payload = cbor, .len = sizeof cbor };
	assert_int_equal(coord_push(f->c, &m), 0);
	assert_int_equal(coord_flush(f->c, 1000), 0);
	assert_true(m.ack);
	const struct pub *p = find(f, "ec/tasks/c1/status", NULL);
	assert_non_null(p);
	assert_true(p->flags & OUTBOX_CBOR);
	assert_int_equal((uint8_t)p->payload[0] & 0xe0, 0xa0); /* a CBOR map */
}

static void test_rejections(void **state)
{
	struct fx *f = *state;
	assert_true(send_msg(f, "ec/submit/dev2", "{\"task_id\":\"t1\",\"type\":\"echo\",\"prioity\":3}",
			     NULL, NULL));
	const struct pub *p = find(f, "ec/rejected/dev2", "\"error\":\"unknown_field\"");
	assert_non_null(p);
	assert_true(has(p, "prioity"));
	assert_false(p->flags & OUTBOX_RETAIN);
	assert_null(find(f, "ec/tasks/t1/status", NULL));

	assert_true(send_msg(f, "ec/submit/dev2", "{not json", NULL, NULL));
	assert_non_null(find(f, "ec/rejected/dev2", "\"error\":\"malformed\""));
	/* a plain task that depends on a task nobody submitted */
	assert_true(send_msg(f, "ec/submit/dev2",
			     "{\"task_id\":\"t9\",\"type\":\"echo\",\"depends_on\":[\"ghost\"]}",
			     NULL, NULL));
	assert_non_null(find(f, "ec/rejected/dev2", "unknown_dependency"));
	/* the same id with other content */
	assert_true(send_msg(f, "ec/submit/dev2", "{\"task_id\":\"k\",\"type\":\"echo\"}", NULL, NULL));
	assert_true(send_msg(f, "ec/submit/dev2", "{\"task_id\":\"k\",\"type\":\"other\"}", NULL, NULL));
	assert_non_null(find(f, "ec/rejected/dev2", "\"error\":\"conflict\""));
}

static void test_response_topic(void **state)
{
	struct fx *f = *state;
	assert_true(send_msg(f, "ec/submit/r", "[{\"task_id\":\"x1\",\"type\":\"e\"},"
			     "{\"task_id\":\"x2\",\"type\":\"e\",\"depends_on\":[\"x1\"]}]",
			     "me/answers", "c-42"));
	const struct pub *p = find(f, "me/answers", NULL);
	assert_non_null(p);
	assert_string_equal(p->corr, "c-42");
	assert_string_equal(p->payload,
			    "{\"ok\":true,\"task_id\":null,\"task_ids\":[\"x1\",\"x2\"],\"state\":\"accepted\"}");
	assert_false(p->flags & OUTBOX_RETAIN);

	/* a duplicate is answered as one, with the current state */
	f->npubs = 0;
	assert_true(send_msg(f, "ec/submit/r", "{\"task_id\":\"x1\",\"type\":\"e\"}", "me/answers", "c-43"));
	p = find(f, "me/answers", NULL);
	assert_non_null(p);
	assert_string_equal(p->corr, "c-43");
	assert_true(has(p, "\"duplicate\":true"));
	assert_true(has(p, "\"state\":\"ready\""));

	/* a refusal goes to both places */
	f->npubs = 0;
	assert_true(send_msg(f, "ec/submit/r", "{\"type\":\"e\"}", "me/answers", "c-44"));
	assert_non_null(find(f, "me/answers", "\"ok\":false"));
	assert_non_null(find(f, "ec/rejected/r", "invalid_field"));
}

static void test_duplicate_republishes_status(void **state)
{
	struct fx *f = *state;
	assert_true(send_msg(f, "ec/submit/d", "{\"task_id\":\"d1\",\"type\":\"e\"}", NULL, NULL));
	f->npubs = 0;
	/* same content, other key order and spacing */
	assert_true(send_msg(f, "ec/submit/d", "{ \"type\": \"e\", \"task_id\": \"d1\" }", NULL, NULL));
	assert_non_null(find(f, "ec/tasks/d1/status", "\"state\":\"ready\""));
	assert_null(find(f, "ec/rejected/d", NULL));
}

static void test_control(void **state)
{
	struct fx *f = *state;
	assert_true(send_msg(f, "ec/submit/c", "{\"task_id\":\"z\",\"type\":\"e\"}", NULL, NULL));
	f->npubs = 0;
	assert_true(send_msg(f, "ec/control/cancel", "{\"task_id\":\"z\"}", "me/a", "1"));
	assert_non_null(find(f, "me/a", "{\"ok\":true,\"verb\":\"cancel\",\"task_id\":\"z\"}"));
	assert_non_null(find(f, "ec/tasks/z/status", "\"state\":\"cancelled\""));
	f->npubs = 0;
	assert_true(send_msg(f, "ec/control/retry", "{\"task_id\":\"z\"}", "me/a", "2"));
	assert_non_null(find(f, "me/a", "\"error\":\"not_dead\""));
	assert_true(send_msg(f, "ec/control/cancel", "{\"task_id\":\"nope\"}", "me/a", "3"));
	assert_non_null(find(f, "me/a", "\"error\":\"unknown_task\""));
	assert_true(send_msg(f, "ec/control/drain", "{\"agent\":\"a1\"}", "me/a", "4"));
	assert_non_null(find(f, "me/a", "\"error\":\"unknown_agent\""));
	assert_true(send_msg(f, "ec/control/cancel", "{\"agent\":\"a1\"}", "me/a", "5"));
	assert_non_null(find(f, "me/a", "\"error\":\"unknown_field\""));
	/* an unknown verb is ignored, and acked */
	assert_true(send_msg(f, "ec/control/explode", "{}", NULL, NULL));
}

static int failing_control(struct store_txn *t, const char *verb, const char *agent, void *arg)
{
	(void)t, (void)verb, (void)agent, (void)arg;
	return EC_EILLEGAL; /* a bug's error, not a refusal the contract names */
}

/* One control message that fails does not fail the turn: the messages
 * beside it are committed and acked (they were refused and offered again
 * together, for ever, when a cancel of a finished task failed the turn). */
static void test_control_fails_alone(void **state)
{
	struct fx *f = *state;
	assert_true(send_msg(f, "ec/submit/c", "{\"task_id\":\"z\",\"type\":\"e\"}", NULL, NULL));
	assert_true(send_msg(f, "ec/control/cancel", "{\"task_id\":\"z\"}", NULL, NULL));
	struct coord_msg m[3] = {
		{ .topic = "ec/control/cancel", .payload = (const uint8_t *)"{\"task_id\":\"z\"}",
		  .response_topic = "me/a", .corr = (const uint8_t *)"1", .corr_len = 1 },
		{ .topic = "ec/submit/c", .payload = (const uint8_t *)"{\"task_id\":\"y\",\"type\":\"e\"}" },
		{ .topic = "ec/control/drain", .payload = (const uint8_t *)"{\"agent\":\"a1\"}",
		  .response_topic = "me/a", .corr = (const uint8_t *)"2", .corr_len = 1 },
	};
	struct coord_hooks h = { .control = failing_control };
	coord_set_hooks(f->c, &h);
	f->npubs = 0;
	for (int i = 0; i < 3; i++) {
		m[i].len = strlen((const char *)m[i].payload);
		assert_int_equal(coord_push(f->c, &m[i]), 0);
	}
	assert_int_equal(coord_flush(f->c, 1000), 0);
	for (int i = 0; i < 3; i++)
		assert_true(m[i].ack);
	/* cancelling what is over: done, nothing changes */
	assert_non_null(find(f, "me/a", "{\"ok\":true,\"verb\":\"cancel\",\"task_id\":\"z\"}"));
	assert_non_null(find(f, "ec/tasks/y/status", "\"state\":\"accepted\""));
	assert_non_null(find(f, "me/a", "\"error\":\"internal\""));

	/* A retained control message comes again at every subscribe: ignored. */
	f->npubs = 0;
	struct coord_msg r = { .topic = "ec/control/cancel",
			       .payload = (const uint8_t *)"{\"task_id\":\"y\"}", .retained = true };
	r.len = strlen((const char *)r.payload);
	assert_int_equal(coord_push(f->c, &r), 0);
	assert_int_equal(coord_flush(f->c, 1000), 0);
	assert_true(r.ack);
	assert_null(find(f, "ec/tasks/y/status", "cancelled"));
}

/* What the nested hooks saw: per operation, whether it was kept and how
 * many task events it raised. */
struct nest_rec {
	bool open;
	int events;
	struct { bool kept; int events; } op[8];
	size_t nop;
};

static void rec_begin(void *arg)
{
	struct nest_rec *r = arg;
	assert_false(r->open);
	r->open = true;
	r->events = 0;
}

static void rec_end(bool kept, void *arg)
{
	struct nest_rec *r = arg;
	assert_true(r->open);
	r->open = false;
	if (r->nop < 8) {
		r->op[r->nop].kept = kept;
		r->op[r->nop].events = r->events;
	}
	r->nop++;
}

static int rec_event(struct store_txn *t, const struct store_event *ev, void *arg)
{
	struct nest_rec *r = arg;
	(void)t;
	if (ev->kind == STORE_EV_TASK && r->open)
		r->events++;
	return 0;
}

/* Each submission and control message is bracketed by nested_begin/end, and
 * a refused one says so: the fleet drops what its events counted (a task
 * judged skipped before the array it came in was refused was counted as a
 * missed deadline). */
static void test_nested_hooks(void **state)
{
	struct fx *f = *state;
	struct nest_rec r = { 0 };
	struct coord_hooks h = { .arg = &r, .event = rec_event, .nested_begin = rec_begin,
				 .nested_end = rec_end };
	coord_set_hooks(f->c, &h);
	assert_true(send_msg(f, "ec/submit/c", "{\"task_id\":\"x\",\"type\":\"e\"}", NULL, NULL));
	assert_true(send_msg(f, "ec/control/cancel", "{\"task_id\":\"x\"}", NULL, NULL));
	assert_true(send_msg(f, "ec/submit/c",
			     "[{\"task_id\":\"a\",\"type\":\"e\",\"depends_on\":[\"x\"]},"
			     "{\"task_id\":\"b\",\"type\":\"e\",\"depends_on\":[\"nope\"]}]",
			     NULL, NULL));
	assert_non_null(find(f, "ec/rejected/c", "unknown_dependency"));
	assert_true(send_msg(f, "ec/control/cancel", "{\"task_id\":\"nope\"}", NULL, NULL));
	assert_false(r.open);
	assert_int_equal(r.nop, 4);
	assert_true(r.op[0].kept && r.op[0].events > 0);
	assert_true(r.op[1].kept && r.op[1].events == 1);
	assert_true(!r.op[2].kept && r.op[2].events > 0); /* a was stored, then undone */
	assert_false(r.op[3].kept);
}

static void test_outbox_drain(void **state)
{
	struct fx *f = *state;
	f->connected = false;
	for (int i = 0; i < 5; i++) {
		char body[64];
		snprintf(body, sizeof body, "{\"task_id\":\"o%d\",\"type\":\"e\"}", i);
		/* the broker is away: statuses wait in the outbox, ingest goes on */
		assert_true(send_msg(f, "ec/submit/o", body, NULL, NULL));
	}
	assert_int_equal(f->npubs, 0);
	assert_int_equal(coord_outbox_len(f->c), 5);

	f->connected = true;
	f->window = 2; /* the client takes two at a time */
	coord_resend_all(f->c);
	assert_int_equal(coord_flush(f->c, 2000), 0);
	assert_int_equal(f->npubs, 2);
	assert_string_equal(f->pubs[0].topic, "ec/tasks/o0/status");
	assert_string_equal(f->pubs[1].topic, "ec/tasks/o1/status");

	/* the connection drops before the PUBACKs: both are sent again */
	f->npubs = 0;
	f->window = MAXPUB;
	coord_resend_all(f->c);
	assert_int_equal(coord_flush(f->c, 3000), 0);
	assert_int_equal(f->npubs, 5);
	for (int i = 0; i < 5; i++) {
		char topic[64];
		snprintf(topic, sizeof topic, "ec/tasks/o%d/status", i);
		assert_string_equal(f->pubs[i].topic, topic); /* in order */
	}
	/* PUBACKs delete the rows (not at once: deletions wait for company or
	 * for a quarter second); nothing is sent twice after that */
	deliver_all(f);
	f->npubs = 0;
	assert_int_equal(coord_flush(f->c, 4000), 0);
	assert_int_equal(coord_outbox_len(f->c), 5);
	assert_true(coord_next_due(f->c) > 4000);
	assert_int_equal(coord_flush(f->c, coord_next_due(f->c)), 0);
	assert_int_equal(coord_outbox_len(f->c), 0);
	assert_int_equal(coord_next_due(f->c), -1);
	coord_resend_all(f->c);
	assert_int_equal(coord_flush(f->c, 5000), 0);
	assert_int_equal(f->npubs, 0);
}

/* A row that can never be published (too large for the broker) is
 * dropped, and the rows after it go out: it held up the outbox for good. */
static void test_outbox_drops_unpublishable(void **state)
{
	struct fx *f = *state;
	f->too_big = "/big/";
	assert_true(send_msg(f, "ec/submit/o", "{\"task_id\":\"big\",\"type\":\"e\"}", NULL, NULL));
	assert_true(send_msg(f, "ec/submit/o", "{\"task_id\":\"after\",\"type\":\"e\"}", NULL, NULL));
	assert_null(find(f, "ec/tasks/big/status", NULL));
	assert_non_null(find(f, "ec/tasks/after/status", "accepted"));
	/* deleted like a delivered row */
	deliver_all(f);
	assert_int_equal(coord_flush(f->c, 4000), 0);
	assert_int_equal(coord_flush(f->c, coord_next_due(f->c)), 0);
	assert_int_equal(coord_outbox_len(f->c), 0);
}

/* A Response Topic we could not publish, or one of the coordinator's own
 * (a submitter could forge statuses with it), gets no answer; the status
 * is published as always. */
static void test_response_topics_refused(void **state)
{
	struct fx *f = *state;
	char rt[2048];
	memset(rt, 'r', sizeof rt - 1);
	rt[sizeof rt - 1] = 0;
	assert_true(send_msg(f, "ec/submit/o", "{\"task_id\":\"a\",\"type\":\"e\"}", rt, "1"));
	assert_true(send_msg(f, "ec/submit/o", "{\"task_id\":\"b\",\"type\":\"e\"}",
			     "ec/tasks/x/status", "2"));
	assert_true(send_msg(f, "ec/submit/o", "{\"task_id\":\"c\",\"type\":\"e\"}", "r/+", "3"));
	assert_true(send_msg(f, "ec/submit/o", "{\"task_id\":\"d\",\"type\":\"e\"}",
			     "ec/ctl/reply/me", "4"));
	for (size_t i = 0; i < f->npubs; i++)
		assert_true(strncmp(f->pubs[i].topic, "rrr", 3) != 0);
	assert_null(find(f, "ec/tasks/x/status", NULL));
	assert_null(find(f, "r/+", NULL));
	assert_non_null(find(f, "ec/ctl/reply/me", "accepted"));
	assert_non_null(find(f, "ec/tasks/a/status", "accepted"));
	assert_non_null(find(f, "ec/tasks/c/status", "accepted"));
}

static void test_backpressure(void **state)
{
	struct fx *f = *state; /* outbox_max 3 */
	f->connected = false;
	assert_true(send_msg(f, "ec/submit/b", "{\"task_id\":\"b1\",\"type\":\"e\"}", NULL, NULL));
	assert_true(send_msg(f, "ec/submit/b", "{\"task_id\":\"b2\",\"type\":\"e\"}", NULL, NULL));
	assert_true(send_msg(f, "ec/submit/b", "{\"task_id\":\"b3\",\"type\":\"e\"}", NULL, NULL));
	/* the outbox is at its limit: the next submission waits at the broker */
	assert_false(send_msg(f, "ec/submit/b", "{\"task_id\":\"b4\",\"type\":\"e\"}", NULL, NULL));
	/* control still goes through */
	assert_true(send_msg(f, "ec/control/cancel", "{\"task_id\":\"b1\"}", NULL, NULL));
	/* the broker takes the backlog: ingest resumes */
	f->connected = true;
	coord_resend_all(f->c);
	assert_int_equal(coord_flush(f->c, 1000), 0);
	deliver_all(f);
	assert_int_equal(coord_flush(f->c, 1000), 0);
	assert_int_equal(coord_flush(f->c, 2000), 0);
	assert_int_equal(coord_outbox_len(f->c), 0);
	assert_true(send_msg(f, "ec/submit/b", "{\"task_id\":\"b4\",\"type\":\"e\"}", NULL, NULL));
}

/* With a lazy_meta store, nothing of a commit leaves before it is durable:
 * neither the ack of its message nor its status rows. The next commit makes
 * it durable, and so does coord_sync(). */
static void test_held_until_durable(void **state)
{
	struct fx *f = *state;
	char u1, u2;
	struct coord_msg m1 = { .topic = "ec/submit/d", .user = &u1,
				.payload = (const uint8_t *)"{\"task_id\":\"h1\",\"type\":\"x\"}" };
	struct coord_msg m2 = { .topic = "ec/submit/d", .user = &u2,
				.payload = (const uint8_t *)"{\"task_id\":\"h2\",\"type\":\"x\"}" };
	m1.len = strlen((const char *)m1.payload);
	m2.len = strlen((const char *)m2.payload);

	assert_int_equal(coord_push(f->c, &m1), 0);
	assert_int_equal(coord_flush(f->c, 1000), 0);
	assert_true(m1.ack);                    /* committed ... */
	assert_int_equal(f->nsettled, 0);       /* ... but not durable: held */
	assert_int_equal(f->npubs, 0);
	assert_true(coord_unsynced(f->c));

	assert_int_equal(coord_push(f->c, &m2), 0);
	assert_int_equal(coord_flush(f->c, 1000), 0);
	assert_int_equal(f->nsettled, 1);       /* m1's commit is durable now */
	assert_ptr_equal(f->settled[0].user, &u1);
	assert_true(f->settled[0].ack);
	assert_non_null(find(f, "ec/tasks/h1/status", "accepted"));
	assert_null(find(f, "ec/tasks/h2/status", NULL));

	assert_int_equal(coord_sync(f->c), 0);
	assert_false(coord_unsynced(f->c));
	assert_int_equal(f->nsettled, 2);
	assert_ptr_equal(f->settled[1].user, &u2);
	assert_true(f->settled[1].ack);
	assert_non_null(find(f, "ec/tasks/h2/status", "accepted"));
}

static void count_wake(void *arg)
{
	atomic_fetch_add((atomic_int *)arg, 1);
}

/* The loop's way: the store flushes on its thread, says so (the daemon
 * wakes the loop), and coord_synced() lets out what waited. */
static void test_synced_in_background(void **state)
{
	struct fx *f = *state;
	atomic_int wakes = 0;
	char u;
	store_set_sync_notify(f->st, count_wake, &wakes);
	struct coord_msg m = { .topic = "ec/submit/d", .user = &u,
			       .payload = (const uint8_t *)"{\"task_id\":\"b1\",\"type\":\"x\"}" };
	m.len = strlen((const char *)m.payload);
	assert_int_equal(coord_push(f->c, &m), 0);
	assert_int_equal(coord_flush(f->c, 1000), 0);
	assert_int_equal(f->nsettled, 0);
	assert_int_equal(coord_sync_later(f->c), 0);
	for (int i = 0; i < 2000 && !atomic_load(&wakes); i++)
		usleep(1000);
	assert_true(atomic_load(&wakes) >= 1);
	assert_int_equal(f->nsettled, 0); /* nothing moves off the loop */
	coord_synced(f->c);
	assert_false(coord_unsynced(f->c));
	assert_int_equal(f->nsettled, 1);
	assert_true(f->settled[0].ack);
	assert_non_null(find(f, "ec/tasks/b1/status", "accepted"));
	store_set_sync_notify(f->st, NULL, NULL);
}

/* Without lazy_meta every message is settled by the flush that commits it. */
static void test_settled_at_commit(void **state)
{
	struct fx *f = *state;
	assert_true(send_msg(f, "ec/submit/d", "{\"task_id\":\"s1\",\"type\":\"x\"}", NULL, NULL));
	assert_int_equal(f->nsettled, 1);
	assert_true(f->settled[0].ack);
	assert_false(coord_unsynced(f->c));
}

static void test_bad_source(void **state)
{
	struct fx *f = *state;
	char topic[400];
	memset(topic, 'a', sizeof topic);
	memcpy(topic, "ec/submit/", 10);
	topic[sizeof topic - 1] = 0;
	assert_true(send_msg(f, topic, "{\"task_id\":\"s\",\"type\":\"e\"}", NULL, NULL));
	assert_non_null(find(f, "ec/rejected/anonymous", "source"));
	/* a topic outside our prefix is acked and ignored */
	size_t before = f->npubs;
	assert_true(send_msg(f, "other/submit", "{\"task_id\":\"s\",\"type\":\"e\"}", NULL, NULL));
	assert_int_equal(f->npubs, before);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_submit_statuses, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cbor_submitter_gets_cbor, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rejections, setup, teardown),
		cmocka_unit_test_setup_teardown(test_response_topic, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_republishes_status, setup, teardown),
		cmocka_unit_test_setup_teardown(test_control, setup, teardown),
		cmocka_unit_test_setup_teardown(test_control_fails_alone, setup, teardown),
		cmocka_unit_test_setup_teardown(test_nested_hooks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_outbox_drops_unpublishable, setup, teardown),
		cmocka_unit_test_setup_teardown(test_response_topics_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_outbox_drain, setup, teardown),
		cmocka_unit_test_setup_teardown(test_backpressure, setup_small_outbox, teardown),
		cmocka_unit_test_setup_teardown(test_bad_source, setup, teardown),
		cmocka_unit_test_setup_teardown(test_held_until_durable, setup_lazy, teardown),
		cmocka_unit_test_setup_teardown(test_synced_in_background, setup_lazy, teardown),
		cmocka_unit_test_setup_teardown(test_settled_at_commit, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
