/* SPDX-License-Identifier: MIT */
/*
 * coord.c - the coordinator's per-turn batch: ingest, control, outbox (see
 * coord.h). Decoding happens before the write transaction (it is pure and may
 * be expensive); the transaction only applies prepared work, so a retry after
 * the map grows costs little.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "config.h"
#include "coord.h"
#include "edgecoord/err.h"
#include "log.h"
#include "msg.h"
#include "vec.h"

enum prep_kind { P_IGNORE = 0, P_SUBMIT, P_CONTROL };

/* Delivered outbox rows are deleted with the next transaction, or in one of
 * their own once this many wait or the oldest has waited this long. */
#define DONE_BATCH 1024
#define DONE_DELAY_MS 250
/* Retention (keep_final_ms): each turn that prunes looks at this many tasks;
 * a pass over the store goes on every PRUNE_STEP_MS and starts again
 * PRUNE_PERIOD_MS (or keep_final_ms, if shorter) after it ended. */
#define PRUNE_BUDGET 512
#define PRUNE_STEP_MS 20
#define PRUNE_PERIOD_MS 60000

struct prep {
	struct coord_msg *m;
	enum prep_kind kind;
	enum encoding enc;
	char source[STORE_SOURCE_MAX + 1];
	int rc;                         /* decode outcome */
	struct sub_error err;
	struct submission sub;          /* P_SUBMIT, rc == 0 */
	char verb[16];                  /* P_CONTROL */
	int key;
	char id[TASK_FULLID_MAX + 1];
};

struct coord {
	struct store *st;
	struct coord_opts o;
	struct coord_io io;
	struct coord_hooks hooks;
	struct coord_msg **in;          /* queued inbound messages */
	size_t nin, capin;
	uint64_t *done;                 /* delivered outbox rows to delete */
	size_t ndone, capdone;
	int64_t done_since;             /* when the oldest of done[] was delivered */
	uint64_t sent_upto;             /* rows up to here were handed to io */
	/* Held until durable (store.h, lazy_meta): the fate of inbound messages,
	 * and outbox rows past durable_upto, as of the commit they wait for. */
	struct held_msg { void *user; bool ack; uint64_t gen; } *held;
	size_t nheld, capheld;
	uint64_t durable_upto;          /* rows up to here may be published */
	uint64_t pend_upto, pend_gen;   /* rows up to pend_upto, once pend_gen is durable */
	uint64_t outbox_len;
	int64_t now_ms;                 /* timestamp for the rows of this flush */
	char (*touched)[TASK_ID_MAX + 1]; /* workflows whose status to publish */
	size_t ntouched, captouched;
	int64_t next_prune;             /* when to call store_prune() again */
	uint64_t pruned;                /* tasks deleted in this pass over the store */
};

/* ---- outbox rows ----------------------------------------------------------- */

static unsigned enc_flag(enum encoding enc)
{
	return enc == ENC_CBOR ? OUTBOX_CBOR : 0;
}

/* Put a built message (consumed) on topic. */
static int put(struct store_txn *t, const char *topic, uint8_t *payload, size_t len,
	       unsigned flags)
{
	int rc = store_outbox_put(t, topic, payload, len, flags, NULL);
	free(payload);
	return rc;
}

/* A Response Topic we answer on: a topic we could publish (shorter than
 * MSG_TOPIC_MAX, no wildcard), and none of the coordinator's own but the
 * ctl/reply/ ones, or any submitter could forge its statuses. */
static bool answerable(const struct coord *c, const char *rt)
{
	size_t pl = strlen(c->o.prefix), n = strlen(rt);
	if (!n || n >= MSG_TOPIC_MAX || strpbrk(rt, "+#"))
		return false;
	if (strncmp(rt, c->o.prefix, pl) != 0 || rt[pl] != '/')
		return true;
	return strncmp(rt + pl + 1, "ctl/reply/", 10) == 0;
}

/* An answer on a Response Topic: the correlation data travels in the row. */
static int put_answer(struct coord *c, struct store_txn *t, const struct coord_msg *m,
		      uint8_t *payload, size_t len, enum encoding enc)
{
	if (!m->response_topic || !answerable(c, m->response_topic)) {
		if (m->response_topic && *m->response_topic)
			log_info("ANSWER-DROPPED response topic %.80s%s: not one we answer on",
				 m->response_topic, strlen(m->response_topic) > 80 ? "..." : "");
		free(payload);
		return 0;
	}
	size_t clen = m->corr ? m->corr_len : 0;
	if (clen > 0xffff)
		clen = 0; /* MQTT allows 64 KiB; a longer one cannot be echoed */
	uint8_t *row = malloc(2 + clen + len);
	if (!row) {
		free(payload);
		return -ENOMEM;
	}
	row[0] = (uint8_t)(clen >> 8);
	row[1] = (uint8_t)clen;
	if (clen)
		memcpy(row + 2, m->corr, clen);
	memcpy(row + 2 + clen, payload, len);
	free(payload);
	return put(t, m->response_topic, row, 2 + clen + len, OUTBOX_CORR | enc_flag(enc));
}

/* Whether a task entering s gets a status message (mqtt.status_events). */
static bool published(const struct coord *c, enum task_state s)
{
	switch (c->o.status_events) {
	case CONFIG_STATUS_ALL:
		return true;
	case CONFIG_STATUS_FINAL:
		return task_state_final(s);
	default:
		return s == TS_ACCEPTED || s == TS_RUNNING || s == TS_FAILED ||
		       task_state_final(s);
	}
}

static int touch_workflow(struct coord *c, const char *wf)
{
	if (c->ntouched && strcmp(c->touched[c->ntouched - 1], wf) == 0)
		return 0;
	for (size_t i = 0; i < c->ntouched; i++)
		if (strcmp(c->touched[i], wf) == 0)
			return 0;
	int rc = vec_grow((void **)&c->touched, &c->captouched, c->ntouched + 1,
		      sizeof *c->touched);
	if (rc < 0)
		return rc;
	snprintf(c->touched[c->ntouched++], sizeof *c->touched, "%s", wf);
	return 0;
}

/* The status as of the task's last change: its ts is that of the history
 * event (the fleet reads the clock for its transitions, not coord). */
static int status_row(struct coord *c, struct store_txn *t, const struct task_rec *r)
{
	char topic[MSG_TOPIC_MAX];
	uint8_t *p;
	size_t len;
	int rc = msg_topic(topic, sizeof topic, c->o.prefix, "tasks", r->spec.id, "status");
	if (rc == 0)
		rc = msg_status(r, r->updated_ms ? r->updated_ms : c->now_ms, r->enc, &p, &len);
	if (rc == 0)
		rc = put(t, topic, p, len, OUTBOX_RETAIN | OUTBOX_EXPIRE | enc_flag(r->enc));
	return rc;
}

int coord_observe(struct store_txn *t, const struct store_event *ev, void *arg)
{
	struct coord *c = arg;
	char topic[MSG_TOPIC_MAX];
	uint8_t *p;
	size_t len;
	int rc = 0;

	switch (ev->kind) {
	case STORE_EV_TASK:
		if (published(c, ev->task->state))
			rc = status_row(c, t, ev->task);
		/* A workflow's status is worth a message when a step finishes
		 * (progress), when it is new, or on every change under "all". */
		if (rc == 0 && ev->task->spec.workflow &&
		    (c->o.status_events == CONFIG_STATUS_ALL || task_state_final(ev->task->state) ||
		     ev->task->state == TS_ACCEPTED))
			rc = touch_workflow(c, ev->task->spec.workflow);
		return rc;
	case STORE_EV_RESULT:
		rc = msg_topic(topic, sizeof topic, c->o.prefix, "tasks", ev->task->spec.id,
			       "result");
		if (rc == 0)
			rc = msg_result(ev->task, ev->result, ev->task->enc, &p, &len);
		if (rc == 0)
			rc = put(t, topic, p, len,
				 OUTBOX_RETAIN | OUTBOX_EXPIRE | enc_flag(ev->task->enc));
		return rc;
	case STORE_EV_WORKFLOW:
		break; /* coalesced: one row per touched workflow per flush */
	}
	return 0;
}

static int observe(struct store_txn *t, const struct store_event *ev, void *arg)
{
	struct coord *c = arg;
	int rc = coord_observe(t, ev, c);
	if (rc == 0 && c->hooks.event)
		rc = c->hooks.event(t, ev, c->hooks.arg);
	return rc;
}

static int workflow_rows(struct coord *c, struct store_txn *t)
{
	for (size_t i = 0; i < c->ntouched; i++) {
		struct workflow_rec w;
		char topic[MSG_TOPIC_MAX];
		uint8_t *p;
		size_t len;
		int rc = store_workflow_get(t, c->touched[i], &w);
		if (rc == EC_ENOTFOUND)
			continue;
		if (rc < 0)
			return rc;
		rc = msg_topic(topic, sizeof topic, c->o.prefix, "workflows", w.id, "status");
		if (rc == 0)
			rc = msg_workflow(&w, c->now_ms, w.enc, &p, &len);
		if (rc == 0)
			rc = put(t, topic, p, len,
				 OUTBOX_RETAIN | OUTBOX_EXPIRE | enc_flag(w.enc));
		workflow_rec_fini(&w);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* ---- preparing inbound messages --------------------------------------------- */

static enum encoding pick_encoding(const struct coord_msg *m)
{
	if (m->content_type) {
		if (strcmp(m->content_type, "application/json") == 0)
			return ENC_JSON;
		if (strcmp(m->content_type, "application/cbor") == 0)
			return ENC_CBOR;
	}
	return codec_sniff(m->payload, m->len);
}

/* P/submit, P/submit/SOURCE, P/control/VERB; anything else is ignored. */
static void prepare(struct coord *c, struct prep *p)
{
	const struct coord_msg *m = p->m;
	size_t plen = strlen(c->o.prefix);
	const char *rest;

	memset(&p->sub, 0, sizeof p->sub);
	p->enc = pick_encoding(m);
	if (strncmp(m->topic, c->o.prefix, plen) != 0 || m->topic[plen] != '/')
		return;
	rest = m->topic + plen + 1;
	if (strcmp(rest, "submit") == 0 || strncmp(rest, "submit/", 7) == 0) {
		const char *src = rest[6] ? rest + 7 : "anonymous";
		p->kind = P_SUBMIT;
		if (!*src || strlen(src) > STORE_SOURCE_MAX || strchr(src, '/')) {
			snprintf(p->source, sizeof p->source, "anonymous");
			p->rc = EC_EINVALID_FIELD;
			snprintf(p->err.detail, sizeof p->err.detail,
				 "source: the topic level after submit/ must be 1..%d bytes",
				 STORE_SOURCE_MAX);
			return;
		}
		snprintf(p->source, sizeof p->source, "%s", src);
		if (m->oversize || m->len > c->o.limits.max_message_bytes) {
			p->rc = EC_ETOO_LARGE;
			snprintf(p->err.detail, sizeof p->err.detail,
				 "message: %zu bytes, over the limit of %zu",
				 m->oversize ? m->oversize : m->len, c->o.limits.max_message_bytes);
			return;
		}
		p->rc = codec_decode_submission(m->payload, m->len, p->enc, &c->o.limits,
						&p->sub, &p->err);
		return;
	}
	if (strncmp(rest, "control/", 8) == 0) {
		static const struct { const char *verb; unsigned keys; } verbs[] = {
			{ "cancel", CTRL_KEY_TASK | CTRL_KEY_WORKFLOW },
			{ "retry", CTRL_KEY_TASK | CTRL_KEY_WORKFLOW },
			{ "drain", CTRL_KEY_AGENT },
			{ "undrain", CTRL_KEY_AGENT },
		};
		const char *verb = rest + 8;
		if (m->retained) {
			/* The broker hands it out again at every subscribe: a
			 * retained retry would run at every restart. */
			log_warnx("CONTROL-RETAINED %s ignored: publish control messages "
				  "without the retain flag (and clear this one)", m->topic);
			return;
		}
		for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
			if (strcmp(verb, verbs[i].verb) != 0)
				continue;
			p->kind = P_CONTROL;
			snprintf(p->verb, sizeof p->verb, "%s", verb);
			p->rc = codec_decode_control(m->payload, m->len, p->enc, verbs[i].keys,
						     &p->key, p->id, &p->err);
			return;
		}
		log_info("CONTROL-UNKNOWN verb on topic %s ignored", m->topic);
	}
}

/* ---- applying them in the transaction --------------------------------------- */

static int reject(struct coord *c, struct store_txn *t, const struct prep *p, int code,
		  const struct sub_error *err)
{
	char topic[MSG_TOPIC_MAX];
	uint8_t *buf;
	size_t len;
	int rc;

	if (p->kind == P_SUBMIT)
		log_info("SUBMIT-REJECTED source=%s code=%s task=%s detail=%s", p->source,
			 ec_reject_code(code) ? ec_reject_code(code) : "?",
			 err->task_id[0] ? err->task_id : "-", err->detail);
	else
		log_info("CONTROL-REJECTED %s code=%s detail=%s", p->verb,
			 ec_reject_code(code) ? ec_reject_code(code) : "?", err->detail);
	if (p->kind == P_SUBMIT) {
		rc = msg_topic(topic, sizeof topic, c->o.prefix, "rejected", p->source, NULL);
		if (rc == 0)
			rc = msg_rejection(code, err->detail, err->task_id, p->enc, &buf, &len);
		if (rc == 0)
			rc = put(t, topic, buf, len, enc_flag(p->enc));
		if (rc < 0)
			return rc;
	}
	rc = msg_answer_error(code, err->detail, p->enc, &buf, &len);
	return rc < 0 ? rc : put_answer(c, t, p->m, buf, len, p->enc);
}

/* A duplicate without a Response Topic: publish the current status again. */
static int republish(struct coord *c, struct store_txn *t, const struct submission *sub)
{
	if (sub->kind == SUB_WORKFLOW)
		return touch_workflow(c, sub->id);
	for (uint32_t i = 0; i < sub->ntasks; i++) {
		struct task_rec r;
		int rc = store_task_get(t, sub->tasks[i].id, &r);
		if (rc == EC_ENOTFOUND)
			continue;
		if (rc < 0)
			return rc;
		rc = status_row(c, t, &r);
		task_rec_fini(&r);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static void nested_begin(struct coord *c)
{
	if (c->hooks.nested_begin)
		c->hooks.nested_begin(c->hooks.arg);
}

static void nested_end(struct coord *c, bool kept)
{
	if (c->hooks.nested_end)
		c->hooks.nested_end(kept, c->hooks.arg);
}

static int apply_submit(struct coord *c, struct store_txn *t, struct prep *p)
{
	struct submit_result res;
	struct sub_error err;
	uint8_t *buf;
	size_t len;
	int rc;

	if (p->rc)
		return reject(c, t, p, p->rc, &p->err);
	memset(&err, 0, sizeof err);
	nested_begin(c);
	rc = store_submit(t, &p->sub, p->source, c->o.max_pending, c->now_ms, &res, &err);
	nested_end(c, rc == 0);
	if (rc < 0 && ec_reject_code(rc)) {
		err.code = rc;
		return reject(c, t, p, rc, &err);
	}
	if (rc < 0)
		return rc;
	const char *id = p->sub.kind == SUB_BATCH ? NULL : p->sub.id;
	if (!res.duplicate) {
		log_debug("SUBMIT-ACCEPTED source=%s id=%s tasks=%u", p->source, id ? id : "-",
			  p->sub.ntasks);
		rc = msg_answer_accepted(&p->sub, p->enc, &buf, &len);
		return rc < 0 ? rc : put_answer(c, t, p->m, buf, len, p->enc);
	}
	if (!p->m->response_topic)
		return republish(c, t, &p->sub);
	const char *state = task_state_name(res.state);
	struct workflow_rec w;
	bool have_wf = false;
	if (p->sub.kind == SUB_WORKFLOW && store_workflow_get(t, p->sub.id, &w) == 0) {
		state = workflow_state(&w);
		have_wf = true;
	}
	rc = msg_answer_duplicate(id, state, p->enc, &buf, &len);
	if (have_wf)
		workflow_rec_fini(&w);
	return rc < 0 ? rc : put_answer(c, t, p->m, buf, len, p->enc);
}

struct control_op {
	struct coord *c;
	const struct prep *p;
};

static int control_fn(struct store_txn *t, void *arg)
{
	struct control_op *op = arg;
	struct coord *c = op->c;
	const struct prep *p = op->p;
	if (strcmp(p->verb, "cancel") == 0)
		return p->key == CTRL_KEY_TASK ? store_cancel(t, p->id, c->now_ms)
					       : store_cancel_workflow(t, p->id, c->now_ms);
	if (strcmp(p->verb, "retry") == 0)
		return p->key == CTRL_KEY_TASK ? store_retry(t, p->id, c->now_ms)
					       : store_retry_workflow(t, p->id, c->now_ms);
	if (c->hooks.control)
		return c->hooks.control(t, p->verb, p->id, c->hooks.arg);
	return EC_EUNKNOWN_AGENT; /* no agent listener */
}

/* Worth failing the turn for (it is tried again): the store or memory, not
 * this message. */
static bool transient(int rc)
{
	return rc == EC_ESTORE || rc == EC_EMAPFULL || rc == -ENOMEM;
}

/* In a nested transaction: an operation that fails leaves the turn's other
 * messages as they were, and is answered with its error; only a failure of
 * the store itself fails the turn. */
static int apply_control(struct coord *c, struct store_txn *t, struct prep *p)
{
	struct sub_error err = { 0 };
	const char *key = p->key == CTRL_KEY_TASK ? "task_id"
			  : p->key == CTRL_KEY_WORKFLOW ? "workflow" : "agent";
	struct control_op op = { c, p };
	uint8_t *buf;
	size_t len;
	int rc;

	if (p->rc)
		return reject(c, t, p, p->rc, &p->err);
	nested_begin(c);
	rc = store_nested(t, control_fn, &op);
	nested_end(c, rc == 0);
	if (rc < 0 && (ec_reject_code(rc) || !transient(rc))) {
		err.code = rc;
		snprintf(err.detail, sizeof err.detail, "%s %s '%s': %s", p->verb, key, p->id,
			 ec_strerror(rc));
		return reject(c, t, p, rc, &err);
	}
	if (rc < 0)
		return rc;
	log_info("CONTROL %s %s=%s", p->verb, key, p->id);
	rc = msg_answer_control(p->verb, key, p->id, p->enc, &buf, &len);
	return rc < 0 ? rc : put_answer(c, t, p->m, buf, len, p->enc);
}

struct flush_ctx {
	struct coord *c;
	struct prep *preps;
	size_t n;
	bool backpressure;
	bool prune;                     /* in: this turn prunes */
	unsigned pruned;                /* out: tasks it deleted */
	bool wrapped;                   /* out: its pass over the store ended */
	uint64_t upto;                  /* out: the last outbox row */
};

static int flush_txn(struct store_txn *t, void *arg)
{
	struct flush_ctx *f = arg;
	struct coord *c = f->c;
	int rc;

	c->ntouched = 0; /* the callback may run again after the map grows */
	if (c->hooks.begin)
		c->hooks.begin(c->hooks.arg);
	for (size_t i = 0; i < c->ndone; i++) {
		rc = store_outbox_del(t, c->done[i]);
		if (rc < 0 && rc != EC_ENOTFOUND)
			return rc;
	}
	for (size_t i = 0; i < f->n; i++) {
		struct prep *p = &f->preps[i];
		if (p->kind == P_SUBMIT && f->backpressure)
			continue;
		rc = p->kind == P_SUBMIT ? apply_submit(c, t, p)
		   : p->kind == P_CONTROL ? apply_control(c, t, p) : 0;
		if (rc < 0)
			return rc;
	}
	if (c->hooks.apply) {
		rc = c->hooks.apply(t, c->now_ms, c->hooks.arg);
		if (rc < 0)
			return rc;
	}
	rc = workflow_rows(c, t);
	if (rc == 0 && f->prune)
		rc = store_prune(t, c->now_ms - c->o.keep_final_ms, PRUNE_BUDGET, &f->pruned,
				 &f->wrapped);
	if (rc == 0)
		rc = store_outbox_last(t, &f->upto);
	if (rc < 0)
		return rc;
	return store_outbox_count(t, &c->outbox_len);
}

/* ---- the outbox drain -------------------------------------------------------- */

struct drain_ctx {
	struct coord *c;
	unsigned budget;
};

static int drain_row(uint64_t seq, const char *topic, const uint8_t *payload, size_t len,
		     unsigned flags, void *arg)
{
	struct drain_ctx *d = arg;
	struct coord *c = d->c;
	const uint8_t *corr = NULL;
	size_t clen = 0;

	if (seq > c->durable_upto || !d->budget-- || !c->io.can_publish(c->io.arg))
		return 1;
	if (flags & OUTBOX_CORR) {
		if (len < 2)
			return 0; /* cannot happen: we wrote it */
		clen = (size_t)payload[0] << 8 | payload[1];
		if (2 + clen > len)
			return 0;
		corr = payload + 2;
		payload += 2 + clen;
		len -= 2 + clen;
	}
	int rc = c->io.publish(c->io.arg, seq, topic, payload, len, flags, corr, clen);
	if (rc == -EMSGSIZE || rc == -EINVAL) {
		/* Never publishable (over the broker's Maximum Packet Size, or
		 * a topic MQTT refuses): waiting would hold up every row after
		 * it for good. Deleted like a delivered one. */
		log_warnx("OUTBOX-DROPPED row %llu for %.80s: %s", (unsigned long long)seq, topic,
			  rc == -EMSGSIZE ? "larger than the broker accepts" : "not publishable");
		coord_delivered(c, seq);
	} else if (rc < 0) {
		return 1;
	}
	c->sent_upto = seq;
	return 0;
}

static int drain_txn(struct store_txn *t, void *arg)
{
	struct drain_ctx *d = arg;
	int rc = store_outbox_scan(t, d->c->sent_upto, drain_row, d);
	return rc == 1 ? 0 : rc;
}

static void drain(struct coord *c)
{
	struct drain_ctx d = { .c = c, .budget = 1024 };
	if (!c->io.can_publish(c->io.arg))
		return;
	int rc = store_read(c->st, drain_txn, &d);
	if (rc < 0)
		log_warnx("OUTBOX-READ failed: %s", ec_strerror(rc));
}

/* ---- durability -------------------------------------------------------------- */

static int last_row(struct store_txn *t, void *arg)
{
	return store_outbox_last(t, arg);
}

/* Let out what the store now holds durably: the fate of inbound messages
 * (PUBACK), outbox rows, and (hooks.durable) the fleet's frames. Held
 * messages are in commit order, so the durable ones are a prefix. */
static void release(struct coord *c)
{
	uint64_t dur = store_durable(c->st);
	size_t k = 0;
	while (k < c->nheld && c->held[k].gen <= dur) {
		if (c->io.settle)
			c->io.settle(c->io.arg, c->held[k].user, c->held[k].ack);
		k++;
	}
	if (k) {
		memmove(c->held, c->held + k, (c->nheld - k) * sizeof *c->held);
		c->nheld -= k;
	}
	if (c->pend_gen <= dur && c->pend_upto > c->durable_upto)
		c->durable_upto = c->pend_upto;
	if (c->hooks.durable)
		c->hooks.durable(c->hooks.arg);
}

/* The turn's inbound messages wait for the commit that holds them (the one
 * just made, or none if it failed: then they are not acked anyway). */
static void hold(struct coord *c, const struct flush_ctx *f, uint64_t gen)
{
	for (size_t i = 0; i < f->n; i++) {
		struct coord_msg *m = f->preps[i].m;
		if (vec_grow((void **)&c->held, &c->capheld, c->nheld + 1, sizeof *c->held) < 0) {
			/* no room to wait: not acked, the broker redelivers it */
			if (c->io.settle)
				c->io.settle(c->io.arg, m->user, false);
			continue;
		}
		c->held[c->nheld++] = (struct held_msg){ m->user, m->ack, gen };
	}
}

int coord_sync(struct coord *c)
{
	int rc = store_sync(c->st);
	if (rc == 0)
		coord_synced(c);
	return rc;
}

int coord_sync_later(struct coord *c)
{
	return store_sync_background(c->st);
}

void coord_synced(struct coord *c)
{
	release(c);
	drain(c);
}

bool coord_unsynced(struct coord *c)
{
	return store_durable(c->st) != store_written(c->st);
}

/* ---- public ------------------------------------------------------------------ */

int coord_new(struct store *st, const struct coord_opts *o, const struct coord_io *io,
	      struct coord **out)
{
	struct coord *c = calloc(1, sizeof *c);
	if (!c)
		return -ENOMEM;
	c->st = st;
	c->o = *o;
	c->io = *io;
	/* What the store holds at start survived the last run: publishable. */
	int rc = store_read(st, last_row, &c->durable_upto);
	if (rc < 0) {
		free(c);
		return rc;
	}
	store_set_observer(st, observe, c);
	*out = c;
	return 0;
}

void coord_set_hooks(struct coord *c, const struct coord_hooks *h)
{
	c->hooks = *h;
}

void coord_free(struct coord *c)
{
	if (!c)
		return;
	store_set_observer(c->st, NULL, NULL);
	free(c->in);
	free(c->done);
	free(c->touched);
	free(c->held);
	free(c);
}

int coord_push(struct coord *c, struct coord_msg *m)
{
	int rc = vec_grow((void **)&c->in, &c->capin, c->nin + 1, sizeof *c->in);
	if (rc < 0)
		return rc;
	m->ack = false;
	c->in[c->nin++] = m;
	return 0;
}

void coord_delivered(struct coord *c, uint64_t seq)
{
	/* On allocation failure the row is simply published again later. */
	if (vec_grow((void **)&c->done, &c->capdone, c->ndone + 1, sizeof *c->done) == 0)
		c->done[c->ndone++] = seq;
}

void coord_resend_all(struct coord *c)
{
	c->sent_upto = 0;
}

int64_t coord_next_due(const struct coord *c)
{
	int64_t due = c->ndone ? (c->done_since ? c->done_since : 0) + DONE_DELAY_MS : -1;
	if (c->o.keep_final_ms && (due < 0 || c->next_prune < due))
		due = c->next_prune;
	return due;
}

/* After a turn that pruned: when the next one is due, and a log line per
 * pass that deleted anything. */
static void prune_done(struct coord *c, const struct flush_ctx *f)
{
	c->pruned += f->pruned;
	if (!f->wrapped) {
		c->next_prune = c->now_ms + PRUNE_STEP_MS;
		return;
	}
	if (c->pruned)
		log_info("PRUNE deleted %llu task(s) that ended over %lld s ago",
			 (unsigned long long)c->pruned, (long long)(c->o.keep_final_ms / 1000));
	c->pruned = 0;
	c->next_prune = c->now_ms + (c->o.keep_final_ms < PRUNE_PERIOD_MS ? c->o.keep_final_ms
									   : PRUNE_PERIOD_MS);
}

uint64_t coord_outbox_len(struct coord *c)
{
	return c->outbox_len;
}

int coord_flush(struct coord *c, int64_t now_ms)
{
	struct flush_ctx f = { .c = c, .n = c->nin };
	int rc = 0;

	c->now_ms = now_ms;
	bool hook_work = c->hooks.pending && c->hooks.pending(c->hooks.arg);
	/*
	 * Deleting delivered rows is worth no fsync of its own: if we die first,
	 * those rows are published again (at least once is the promise). They
	 * ride along with the next transaction, or get one when enough pile up
	 * or they have waited long enough.
	 */
	if (c->ndone && !c->done_since)
		c->done_since = now_ms;
	bool deletes_due = c->ndone >= DONE_BATCH ||
			   (c->ndone && now_ms - c->done_since >= DONE_DELAY_MS);
	f.prune = c->o.keep_final_ms && now_ms >= c->next_prune;
	if (c->nin == 0 && !deletes_due && !hook_work && !f.prune) {
		drain(c);
		return 0;
	}
	if (c->nin) {
		f.preps = calloc(c->nin, sizeof *f.preps);
		if (!f.preps)
			return -ENOMEM;
	}
	for (size_t i = 0; i < c->nin; i++) {
		f.preps[i].m = c->in[i];
		prepare(c, &f.preps[i]);
	}
	/* Backpressure: past outbox_max, submissions wait at the broker (no ack)
	 * instead of growing the outbox further; control still goes through. */
	f.backpressure = c->o.outbox_max && c->outbox_len >= c->o.outbox_max;
	if (f.backpressure)
		log_warnx("OUTBOX-FULL %llu rows: submissions are not acknowledged until "
			  "the broker takes them", (unsigned long long)c->outbox_len);
	rc = store_write(c->st, flush_txn, &f);
	if (c->hooks.committed)
		c->hooks.committed(rc, c->hooks.arg);
	if (rc == 0) {
		for (size_t i = 0; i < f.n; i++)
			f.preps[i].m->ack = !(f.preps[i].kind == P_SUBMIT && f.backpressure);
		c->ndone = 0;
		c->done_since = 0;
		if (f.prune)
			prune_done(c, &f);
		/* This commit's rows wait for it to be durable; the one before
		 * it is now (its meta page went out with this commit's sync). */
		release(c);
		c->pend_upto = f.upto;
		c->pend_gen = store_written(c->st);
	} else {
		log_warnx("STORE-WRITE failed, %zu messages wait for redelivery: %s", f.n,
			  ec_strerror(rc));
	}
	hold(c, &f, store_written(c->st));
	release(c);
	for (size_t i = 0; i < f.n; i++)
		submission_fini(&f.preps[i].sub);
	free(f.preps);
	c->nin = 0;
	drain(c);
	return rc;
}
