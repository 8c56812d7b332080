/* SPDX-License-Identifier: MIT */
/*
 * fleet.c - agents, dispatch, results, timers and health (see fleet.h).
 *
 * The rule that keeps this file honest: nothing leaves the process before the
 * transaction that justifies it is durable. Frames to agents (ack, cancel,
 * drain) are collected during the turn, kept at committed() and sent once the
 * store says the commit is durable (hook_durable; with lazy_meta, after the
 * next commit or sync). If the transaction fails they are dropped and the
 * link events that caused them stay queued for the next turn. Work is the
 * exception: it leaves before the commit (send_work_early).
 *
 * The scheduler's in-memory view moves inside the turn, so that one
 * transaction both takes a result and hands its slot to the next task: slots
 * are released as results are applied and tasks are indexed as they become
 * ready. That is safe to repeat (a released lease is released once; the store
 * is asked again before any dispatch), which is what a failed transaction
 * amounts to. Only removals from the ready index wait for the commit.
 *
 * A slot is not free just because its task left the agent. A dispatch that
 * is cancelled (by an operator, its timeout or its deadline) or recalled
 * (its commit failed) still runs on the agent until the agent stops it and
 * sends its result, and the agent refuses work beyond its slots. So such a
 * lease becomes an orphan of its agent (struct agent's orphan list): the
 * task moves on at once, but the scheduler counts the lease's slot as held
 * until the agent answers it: its result arrives, or its hello no longer
 * lists it, or its session ends.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agentrec.h"
#include "edgecoord/proto.h"
#include "codec.h"
#include "edgecoord/err.h"
#include "fleet.h"
#include "log.h"
#include "loop.h"
#include "msg.h"
#include "vec.h"

#define DUR_WINDOW AGENTREC_DUR_MAX /* recent task durations kept for p50 */
#define PICKS_MAX 256           /* dispatch decisions per turn */
#define FIGURES_PERIOD_MS 1000  /* health figures (running, rates) at most this often */

enum agent_state { A_ONLINE, A_SUSPECT, A_OFFLINE };

struct agent {
	char id[TASK_ID_MAX + 1];
	char **caps;
	size_t ncaps;
	struct kv *labels;
	size_t nlabels;
	uint32_t slots;
	enum agent_state state;
	bool live;                      /* a session is up */
	bool draining;
	int64_t last_seen_ms;           /* realtime */
	uint32_t dur[DUR_WINDOW];       /* recent successful durations, ms */
	size_t ndur, dur_pos;
	uint64_t ok, failed;            /* outcomes since first seen (persisted) */
	bool known_to_sched;            /* said hello since this start */
	bool changed;                   /* state changed: publish at once */
	/* Leases of this session whose task has left the agent (cancelled,
	 * timed out, recalled, unknown after a restart) and which it has not
	 * answered yet: each holds a slot (sched_agent_set_held). */
	uint64_t *orphan;
	size_t norphan, caporphan;
};

struct run {                            /* a dispatch in flight */
	uint64_t lease;
	char task[TASK_FULLID_MAX + 1];
	char agent[TASK_ID_MAX + 1];
	char type[TASK_ID_MAX + 1];
	int64_t start_mono;
};

enum fev_kind { FE_UP, FE_STARTED, FE_RESULT, FE_OFFLINE, FE_SWEEP };

struct fev {                            /* a link event waiting for a turn */
	enum fev_kind kind;
	char agent[TASK_ID_MAX + 1];
	char task[TASK_FULLID_MAX + 1];
	uint64_t lease;
	bool ok;
	uint8_t *result;
	size_t result_len;
	char *text;
	uint64_t *leases;               /* FE_UP: leases the agent still holds */
	size_t nleases;
};

struct outframe {                       /* a frame to send after the commit
                                           (work: before it, send_work_early) */
	int type;                       /* EC_F_WORK, EC_F_ACK, EC_F_CANCEL, EC_F_DRAIN */
	char agent[TASK_ID_MAX + 1];
	uint64_t lease;
	bool accepted;
	const char *reason;             /* static text */
	char task[TASK_FULLID_MAX + 1];
	char type_name[TASK_ID_MAX + 1];
	uint32_t attempt;
	uint8_t *payload, *inputs;
	size_t payload_len, inputs_len;
	uint64_t timeout_ms;
	bool sent;                      /* work: sent before the commit */
	bool queued;                    /* work: the link took it */
	uint64_t gen;                   /* f->held: the commit it waits for */
};

#define VEC(T) struct { T *v; size_t n, cap; }

struct fleet {
	struct store *st;
	struct sched *sc;
	struct link *link;
	struct fleet_opts o;
	struct sched_rng rng;
	VEC(struct agent) agents;
	VEC(struct run) runs;
	VEC(struct fev) evs;            /* queued link events */
	size_t evs_applied;             /* how many the open transaction consumed */
	/* this turn (reset by begin) */
	VEC(struct outframe) out;
	VEC(struct outframe) held;      /* committed, not yet durable (no work) */
	VEC(char *) unready;
	VEC(char *) reindex;            /* picks given back: index them again from
	                                   the store (until a commit) */
	struct sched_decision picks[PICKS_MAX];
	int npicks;
	bool picked;                    /* picks made for this transaction */
	bool health_rows;               /* this turn writes health rows */
	/* timing */
	int64_t now_real, now_mono;
	int64_t next_timer_real;        /* cached earliest store timer, INT64_MAX none */
	int64_t next_health_mono, next_figures_mono;
	int64_t sweep_at_mono;          /* recovery: lost-check time, 0 = none */
	bool kick;                      /* more work is possible right away */
	/* The deadline success rate of the fleet summary: tasks with a deadline
	 * that ended since this start, and those that succeeded in time. The
	 * turn's share is added on commit (its summary row counts it already);
	 * nest_ holds it as it was before the submission or control message
	 * being applied, which may be undone. */
	uint64_t deadline_ended, deadline_met;
	uint32_t turn_deadline_ended, turn_deadline_met;
	uint32_t nest_deadline_ended, nest_deadline_met;
	bool figures_dirty;
};

#define VEC_PUSH(vec, out)                                                        \
	(vec_grow((void **)&(vec).v, &(vec).cap, (vec).n + 1, sizeof *(vec).v) < 0      \
		 ? -ENOMEM                                                         \
		 : ((out) = &(vec).v[(vec).n++], memset((out), 0, sizeof *(out)), 0))

/* ---- registry ------------------------------------------------------------------ */

static struct agent *agent_find(struct fleet *f, const char *id)
{
	for (size_t i = 0; i < f->agents.n; i++)
		if (strcmp(f->agents.v[i].id, id) == 0)
			return &f->agents.v[i];
	return NULL;
}

static void agent_clear_caps(struct agent *a)
{
	for (size_t i = 0; i < a->ncaps; i++)
		free(a->caps[i]);
	free(a->caps);
	for (size_t i = 0; i < a->nlabels; i++) {
		free(a->labels[i].key);
		free(a->labels[i].value);
	}
	free(a->labels);
	a->caps = NULL;
	a->labels = NULL;
	a->ncaps = a->nlabels = 0;
}

static const char *agent_state_name(const struct agent *a)
{
	if (a->state == A_OFFLINE)
		return "offline";
	if (a->draining)
		return "draining";
	return a->state == A_SUSPECT ? "suspect" : "online";
}

static uint32_t agent_p50(const struct agent *a)
{
	return agentrec_median(a->dur, a->ndur);
}

static void agent_changed(struct fleet *f, struct agent *a)
{
	a->changed = true;
	f->kick = true;
}

/* ---- orphaned leases (see the top of this file) ------------------------------------ */

static void orphans_publish(struct fleet *f, struct agent *a)
{
	sched_agent_set_held(f->sc, a->id, (uint32_t)a->norphan);
}

/*
 * The agent holds lease, whose task has left it: keep its slot until the
 * agent answers. Only for a live session: without one the agent gets no
 * work anyway, and its next hello says what it still holds. Idempotent, so
 * that a rerun transaction may add it again.
 *
 * There is no time limit. A well-behaved agent answers every lease (the
 * protocol asks for exactly one result per work); one that goes on running
 * a cancelled job really has no free slot, and work sent to it would only
 * be refused. An agent that never answers loses that slot until its session
 * ends or it says hello again; the orphans it can hold are bounded by its
 * slots plus what one hello lists.
 */
static int orphan_add(struct fleet *f, const char *agent, uint64_t lease)
{
	struct agent *a = agent_find(f, agent);
	if (!a || !a->live || !lease)
		return 0;
	for (size_t i = 0; i < a->norphan; i++)
		if (a->orphan[i] == lease)
			return 0;
	if (vec_grow((void **)&a->orphan, &a->caporphan, a->norphan + 1, sizeof *a->orphan) < 0)
		return -ENOMEM;
	a->orphan[a->norphan++] = lease;
	orphans_publish(f, a);
	log_debug("SLOT-HELD %s lease=%llu until the agent answers it", a->id,
		  (unsigned long long)lease);
	return 0;
}

static void orphan_drop(struct fleet *f, struct agent *a, size_t i)
{
	log_debug("SLOT-FREED %s lease=%llu", a->id, (unsigned long long)a->orphan[i]);
	a->orphan[i] = a->orphan[--a->norphan];
	orphans_publish(f, a);
	f->kick = true; /* a slot is free */
}

/* A result for lease came from agent: whatever it says, the job is over. */
static void orphan_answered(struct fleet *f, const char *agent, uint64_t lease)
{
	struct agent *a = agent_find(f, agent);
	for (size_t i = 0; a && i < a->norphan; i++)
		if (a->orphan[i] == lease) {
			orphan_drop(f, a, i);
			return;
		}
}

/* After a hello: keep only the orphans it still lists. */
static void orphans_keep(struct fleet *f, const char *agent, const uint64_t *leases,
			 size_t nleases)
{
	struct agent *a = agent_find(f, agent);
	for (size_t i = 0; a && i < a->norphan;) {
		bool listed = false;
		for (size_t k = 0; k < nleases && !listed; k++)
			listed = leases[k] == a->orphan[i];
		if (listed)
			i++;
		else
			orphan_drop(f, a, i);
	}
}

/* The session ended: the agent's slots go with it. */
static void orphans_clear(struct fleet *f, struct agent *a)
{
	if (!a->norphan)
		return;
	a->norphan = 0;
	orphans_publish(f, a);
}

/* ---- runs (dispatches in flight, in memory) --------------------------------------- */

static struct run *run_find(struct fleet *f, uint64_t lease)
{
	for (size_t i = 0; i < f->runs.n; i++)
		if (f->runs.v[i].lease == lease)
			return &f->runs.v[i];
	return NULL;
}

static void run_end(struct fleet *f, uint64_t lease, enum sched_outcome out)
{
	struct run *r = run_find(f, lease);
	if (!r)
		return;
	int64_t dur = f->now_mono - r->start_mono;
	sched_task_finished(f->sc, r->agent, r->type, out, dur, f->now_mono);
	struct agent *a = agent_find(f, r->agent);
	if (a && out == SCHED_OUT_FAIL)
		a->failed++;
	if (a && out == SCHED_OUT_OK) {
		a->ok++;
		a->dur[a->dur_pos] = (uint32_t)(dur < 0 ? 0 : dur > UINT32_MAX ? UINT32_MAX : dur);
		a->dur_pos = (a->dur_pos + 1) % DUR_WINDOW;
		if (a->ndur < DUR_WINDOW)
			a->ndur++;
	}
	*r = f->runs.v[--f->runs.n];
	f->figures_dirty = true;
	f->kick = true; /* a slot is free */
}

/* ---- per-turn collections ------------------------------------------------------------ */

/*
 * A dispatch ended: release its slot at once, inside the turn, so the same
 * transaction can hand the slot to the next task (one commit per round trip
 * instead of two). If the transaction then fails, the event that caused this
 * stays queued and is applied again; run_end() of a lease already ended does
 * nothing, so the slot is not released twice.
 */
static int finish(struct fleet *f, uint64_t lease, enum sched_outcome out)
{
	run_end(f, lease, out);
	return 0;
}

static int send_later(struct fleet *f, int type, const char *agent, uint64_t lease,
		      struct outframe **out)
{
	struct outframe *o;
	int rc = VEC_PUSH(f->out, o);
	if (rc < 0)
		return rc;
	o->type = type;
	snprintf(o->agent, sizeof o->agent, "%s", agent);
	o->lease = lease;
	if (out)
		*out = o;
	return 0;
}

static int ack_later(struct fleet *f, const char *agent, uint64_t lease, bool accepted)
{
	struct outframe *o;
	int rc = send_later(f, EC_F_ACK, agent, lease, &o);
	if (rc == 0)
		o->accepted = accepted;
	return rc;
}

/* The agent holds lease, and its task has left it: tell it to stop, and keep
 * the slot until it answers (orphan_add). */
static int cancel_later(struct fleet *f, const char *agent, uint64_t lease, const char *why)
{
	struct outframe *o;
	if (!agent || !*agent || !lease)
		return 0;
	int rc = send_later(f, EC_F_CANCEL, agent, lease, &o);
	if (rc == 0)
		o->reason = why;
	return rc < 0 ? rc : orphan_add(f, agent, lease);
}

static void outframe_fini(struct outframe *o)
{
	free(o->payload);
	free(o->inputs);
}

static void turn_reset(struct fleet *f)
{
	for (size_t i = 0; i < f->out.n; i++)
		outframe_fini(&f->out.v[i]);
	for (size_t i = 0; i < f->unready.n; i++)
		free(f->unready.v[i]);
	f->out.n = f->unready.n = 0;
	f->turn_deadline_ended = f->turn_deadline_met = 0;
	f->evs_applied = 0;
	f->health_rows = false;
}

static void fev_fini(struct fev *e)
{
	free(e->result);
	free(e->text);
	free(e->leases);
}

/* ---- failure policy --------------------------------------------------------------------- */

static int move(struct store_txn *t, const char *id, const struct transition *tr,
		uint64_t *lease_out)
{
	int rc = store_transition(t, id, tr, lease_out);
	if (rc == EC_EILLEGAL || rc == EC_ESTALE || rc == EC_ENOTFOUND) {
		log_debug("transition of %s to %s refused: %s", id, task_state_name(tr->to),
			  ec_strerror(rc));
		return 0; /* the task moved on meanwhile: nothing to do */
	}
	return rc;
}

/* A task that just failed an attempt: wait and retry, or die. */
static int after_failure(struct fleet *f, struct store_txn *t, const char *id)
{
	struct task_rec r;
	struct retry_policy p;
	int64_t due;
	int rc = store_task_get(t, id, &r);
	if (rc < 0)
		return rc == EC_ENOTFOUND ? 0 : rc;
	if (r.state != TS_FAILED) {
		task_rec_fini(&r);
		return 0;
	}
	sched_policy_resolve(&r.spec, &f->o.defaults, &p);
	struct transition tr = { .now_ms = f->now_real };
	if (sched_after_failure(&p, r.attempt, f->now_real, &f->rng, &due) == SCHED_RETRY) {
		tr.to = TS_RETRY_WAIT;
		tr.retry_due_ms = due;
	} else {
		tr.to = TS_DEAD;
		tr.error = r.error ? r.error : "failed";
		log_info("TASK-DEAD %s after %u attempts: %s", id, r.attempt, tr.error);
	}
	rc = move(t, id, &tr, NULL);
	task_rec_fini(&r);
	return rc;
}

/* Fail the current attempt of a dispatched/running task (result or timeout). */
static int fail_attempt(struct fleet *f, struct store_txn *t, const char *id, uint64_t lease,
			const char *error)
{
	struct transition tr = { .to = TS_FAILED, .now_ms = f->now_real, .lease = lease,
				 .error = error };
	int rc = store_transition(t, id, &tr, NULL);
	if (rc == EC_EILLEGAL || rc == EC_ESTALE || rc == EC_ENOTFOUND)
		return 0;
	if (rc < 0)
		return rc;
	rc = finish(f, lease, SCHED_OUT_FAIL);
	return rc < 0 ? rc : after_failure(f, t, id);
}

static int count_lost(const struct history_ev *ev, void *arg)
{
	if (strcmp(ev->detail, "lost") == 0)
		++*(uint32_t *)arg;
	return 0;
}

/* An attempt lost with its agent: back to ready, not charged, unless the task
 * has been lost too often (docs/scheduling.md: the lost cap). The count comes
 * from the task's history, which keeps the last STORE_HISTORY_MAX events. */
static int lose_attempt(struct fleet *f, struct store_txn *t, const char *id, uint64_t lease)
{
	uint32_t lost = 1; /* this one */
	int rc = store_history_scan(t, id, count_lost, &lost);
	if (rc < 0 && rc != EC_ENOTFOUND)
		return rc;
	if (sched_after_lost(&f->o.defaults, lost) == SCHED_DEAD) {
		struct transition dead = { .to = TS_DEAD, .now_ms = f->now_real, .lease = lease,
					   .error = "lost_too_often" };
		rc = store_transition(t, id, &dead, NULL);
		if (rc == EC_EILLEGAL || rc == EC_ESTALE || rc == EC_ENOTFOUND)
			return 0;
		if (rc < 0)
			return rc;
		log_info("TASK-DEAD %s: lost with its agent %u times", id, lost);
		return 0; /* hook_event releases the dispatch (running -> dead) */
	}
	struct transition tr = { .to = TS_READY, .now_ms = f->now_real, .lease = lease,
				 .lost = true };
	rc = store_transition(t, id, &tr, NULL);
	if (rc == EC_EILLEGAL || rc == EC_ESTALE || rc == EC_ENOTFOUND)
		return 0;
	if (rc < 0)
		return rc;
	log_info("TASK-LOST %s (lease %llu): back to ready", id, (unsigned long long)lease);
	return finish(f, lease, SCHED_OUT_LOST);
}

/* ---- link events, applied in the transaction ----------------------------------------------- */

struct held {                           /* tasks an agent holds according to the store */
	const char *agent;
	VEC(struct held_task { char id[TASK_FULLID_MAX + 1]; uint64_t lease; }) v;
};

static int held_one(const struct task_rec *r, void *arg)
{
	struct held *h = arg;
	struct held_task *e;
	if (h->agent && strcmp(r->agent, h->agent) != 0)
		return 0;
	int rc = VEC_PUSH(h->v, e);
	if (rc == 0) {
		snprintf(e->id, sizeof e->id, "%s", r->spec.id);
		e->lease = r->lease;
	}
	return rc;
}

/* Tasks in dispatched or running, of one agent (or all when agent is NULL). */
static int held_by(struct store_txn *t, const char *agent, struct held *h)
{
	h->agent = agent;
	int rc = store_tasks_scan(t, TS_DISPATCHED, held_one, h);
	if (rc == 0)
		rc = store_tasks_scan(t, TS_RUNNING, held_one, h);
	return rc;
}

static bool lease_in(const uint64_t *v, size_t n, uint64_t lease)
{
	for (size_t i = 0; i < n; i++)
		if (v[i] == lease)
			return true;
	return false;
}

/* hello after a (re)connect: keep what it still runs, take back the rest. */
static int apply_up(struct fleet *f, struct store_txn *t, const struct fev *e)
{
	struct held h = { 0 };
	int rc = held_by(t, e->agent, &h);
	for (size_t i = 0; rc == 0 && i < h.v.n; i++)
		if (!lease_in(e->leases, e->nleases, h.v.v[i].lease))
			rc = lose_attempt(f, t, h.v.v[i].id, h.v.v[i].lease);
	/* Leases it holds that are no longer current: cancel them. */
	for (size_t i = 0; rc == 0 && i < e->nleases; i++) {
		bool current = false;
		for (size_t k = 0; k < h.v.n; k++)
			current |= h.v.v[k].lease == e->leases[i];
		if (!current)
			rc = cancel_later(f, e->agent, e->leases[i], "lease no longer current");
	}
	/* Last, so that it also drops what lose_attempt() cancelled above: a
	 * lease the agent does not list holds no slot. */
	if (rc == 0)
		orphans_keep(f, e->agent, e->leases, e->nleases);
	free(h.v.v);
	return rc;
}

/* Offline (or, after a restart, never came back): everything it ran moves. */
static int apply_offline(struct fleet *f, struct store_txn *t, const char *agent)
{
	struct held h = { 0 };
	int rc = held_by(t, agent, &h);
	for (size_t i = 0; rc == 0 && i < h.v.n; i++)
		rc = lose_attempt(f, t, h.v.v[i].id, h.v.v[i].lease);
	free(h.v.v);
	return rc;
}

/* Recovery sweep: tasks whose agent did not come back within the budget.
 * One that came back and is gone again has a budget of its own, from its
 * last frame (the link's offline): it may yet return with them running. */
static int apply_sweep(struct fleet *f, struct store_txn *t)
{
	struct held h = { 0 };
	int rc = held_by(t, NULL, &h);
	for (size_t i = 0; rc == 0 && i < h.v.n; i++) {
		struct task_rec r;
		if (store_task_get(t, h.v.v[i].id, &r) < 0)
			continue;
		struct agent *a = agent_find(f, r.agent);
		if (!a || !a->known_to_sched)
			rc = lose_attempt(f, t, r.spec.id, r.lease);
		task_rec_fini(&r);
	}
	free(h.v.v);
	return rc;
}

static int apply_started(struct fleet *f, struct store_txn *t, const struct fev *e)
{
	struct task_rec r;
	const struct run *run = run_find(f, e->lease); /* started names only the lease */
	if (!run || strcmp(run->agent, e->agent) != 0)
		return 0; /* not a lease of this agent's: fenced like a result */
	const char *id = run->task;
	int rc = store_task_get(t, id, &r);
	if (rc == EC_ENOTFOUND)
		return 0;
	if (rc < 0)
		return rc;
	if (r.state == TS_DISPATCHED && r.lease == e->lease) {
		struct transition tr = { .to = TS_RUNNING, .now_ms = f->now_real,
					 .lease = e->lease, .timeout_due_ms = r.timeout_due_ms };
		rc = move(t, id, &tr, NULL);
	}
	task_rec_fini(&r);
	return rc;
}

static int apply_result(struct fleet *f, struct store_txn *t, const struct fev *e)
{
	struct task_rec r;
	bool current;
	int rc = store_task_get(t, e->task, &r);

	orphan_answered(f, e->agent, e->lease);
	if (rc < 0 && rc != EC_ENOTFOUND)
		return rc;
	current = rc == 0 && r.lease == e->lease &&
		  (r.state == TS_DISPATCHED || r.state == TS_RUNNING) &&
		  strcmp(r.agent, e->agent) == 0;
	if (rc == 0)
		task_rec_fini(&r);
	if (!current) {
		/* Fencing (DESIGN 4): a late or foreign result changes nothing. */
		log_info("RESULT-STALE task=%s lease=%llu agent=%s: discarded", e->task,
			 (unsigned long long)e->lease, e->agent);
		return ack_later(f, e->agent, e->lease, false);
	}
	if (e->ok) {
		uint8_t *canon = NULL;
		size_t clen = 0;
		if (e->result && codec_cbor_canonical(e->result, e->result_len, 64, &canon,
						      &clen) < 0) {
			rc = fail_attempt(f, t, e->task, e->lease,
					  "result is not a valid CBOR item");
			return rc < 0 ? rc : ack_later(f, e->agent, e->lease, true);
		}
		struct transition tr = { .to = TS_SUCCEEDED, .now_ms = f->now_real,
					 .lease = e->lease, .result = canon, .result_len = clen };
		rc = store_transition(t, e->task, &tr, NULL);
		free(canon);
		if (rc < 0)
			return rc;
		rc = finish(f, e->lease, SCHED_OUT_OK);
	} else {
		rc = fail_attempt(f, t, e->task, e->lease, e->text ? e->text : "failed");
	}
	return rc < 0 ? rc : ack_later(f, e->agent, e->lease, true);
}

static int apply_events(struct fleet *f, struct store_txn *t)
{
	for (size_t i = 0; i < f->evs.n; i++) {
		const struct fev *e = &f->evs.v[i];
		int rc = 0;
		switch (e->kind) {
		case FE_UP: rc = apply_up(f, t, e); break;
		case FE_STARTED: rc = apply_started(f, t, e); break;
		case FE_RESULT: rc = apply_result(f, t, e); break;
		case FE_OFFLINE: rc = apply_offline(f, t, e->agent); break;
		case FE_SWEEP: rc = apply_sweep(f, t); break;
		}
		if (rc < 0)
			return rc;
	}
	f->evs_applied = f->evs.n;
	return 0;
}

/* ---- timers ----------------------------------------------------------------------------------- */

static int on_timer(struct store_txn *t, const char *id, enum timer_kind k, void *arg)
{
	struct fleet *f = arg;
	struct task_rec r;
	int rc = store_task_get(t, id, &r);
	if (rc == EC_ENOTFOUND)
		return 0;
	if (rc < 0)
		return rc;
	struct transition tr = { .now_ms = f->now_real };
	switch (k) {
	case TIMER_RETRY:
		if (r.state == TS_RETRY_WAIT) {
			tr.to = TS_READY;
			rc = move(t, id, &tr, NULL);
		}
		break;
	case TIMER_TIMEOUT:
		if (r.state == TS_DISPATCHED || r.state == TS_RUNNING) {
			log_info("TASK-TIMEOUT %s attempt %u on %s", id, r.attempt, r.agent);
			rc = cancel_later(f, r.agent, r.lease, "timeout");
			if (rc == 0)
				rc = fail_attempt(f, t, id, r.lease, "timeout");
		}
		break;
	case TIMER_DEADLINE:
		if (!task_state_final(r.state) && r.state != TS_ACCEPTED) {
			log_info("TASK-DEADLINE %s passed its deadline in %s", id,
				 task_state_name(r.state));
			if (r.state == TS_FAILED) /* cannot happen between turns */
				break;
			tr.to = TS_DEAD;
			tr.error = "deadline_exceeded";
			rc = move(t, id, &tr, NULL);
		}
		break;
	}
	task_rec_fini(&r);
	return rc;
}

/* ---- dispatch ----------------------------------------------------------------------------------- */

static const char *short_id(const char *full)
{
	const char *c = strchr(full, ':');
	return c ? c + 1 : full;
}

/* The upstream results as a CBOR map short id -> result (new, or NULL). */
static int build_inputs(struct store_txn *t, const struct task_spec *s, uint8_t **out,
			size_t *out_len)
{
	struct result_rec *res = calloc(s->ndeps ? s->ndeps : 1, sizeof *res);
	bool *have = calloc(s->ndeps ? s->ndeps : 1, sizeof *have);
	size_t n = 0;
	int rc = 0;

	if (!res || !have) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < s->ndeps; i++) {
		int g = store_result_get(t, s->deps[i], &res[i]);
		if (g == 0 && res[i].ok) {
			have[i] = true;
			n++;
		} else if (g == 0) {
			result_rec_fini(&res[i]);
		} else if (g != EC_ENOTFOUND) {
			rc = g;
			goto out;
		}
	}
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, n);
	for (uint32_t i = 0; i < s->ndeps; i++) {
		if (!have[i])
			continue;
		ec_cbor_w_text(&w, short_id(s->deps[i]));
		ec_cbor_w_raw(&w, res[i].result, res[i].result_len);
	}
	rc = ec_cbor_w_finish(&w);
	if (rc == 0)
		*out = ec_cbor_w_take(&w, out_len);
	ec_cbor_w_fini(&w);
out:
	for (uint32_t i = 0; res && have && i < s->ndeps; i++)
		if (have[i])
			result_rec_fini(&res[i]);
	free(res);
	free(have);
	return rc;
}

/*
 * A work frame carries the payload and the upstream results: together they
 * can pass agents.max_frame, and the link would then never send it while
 * the task sat dispatched until its attempt timed out, and again at every
 * retry. Such a task can never run (its inputs are final): dead at once,
 * saying why (an operator may raise max_frame and retry it). 1 when it was
 * too large, 0 when it fits. The size is an upper bound of the encoding.
 */
static int too_large(struct fleet *f, struct store_txn *t, const struct task_rec *r,
		     size_t inputs_len)
{
	int rc;
	size_t need = EC_FRAME_HDR + 128 + strlen(r->spec.id) + strlen(r->spec.type) +
		      r->spec.payload_len + inputs_len;
	if (!f->o.max_frame || need <= f->o.max_frame)
		return 0;
	char why[160];
	snprintf(why, sizeof why, "work of about %zu bytes (payload and inputs) is over "
		 "agents.max_frame %u", need, f->o.max_frame);
	struct transition tr = { .to = TS_DEAD, .now_ms = f->now_real, .error = why };
	rc = store_transition(t, r->spec.id, &tr, NULL);
	if (rc == 0)
		log_warnx("TASK-DEAD %s: %s", r->spec.id, why);
	return rc < 0 ? rc : 1;
}

static int dispatch_one(struct fleet *f, struct store_txn *t, const struct sched_decision *d)
{
	struct task_rec r;
	uint64_t lease;
	int rc = store_task_get(t, d->task_id, &r);
	if (rc == EC_ENOTFOUND)
		return 0;
	if (rc < 0)
		return rc;
	if (r.state != TS_READY) {
		task_rec_fini(&r);
		return 0; /* cancelled or dead this turn: committed() releases the pick */
	}
	uint8_t *inputs = NULL;
	size_t inputs_len = 0;
	if ((r.spec.ndeps && (rc = build_inputs(t, &r.spec, &inputs, &inputs_len)) < 0) ||
	    (rc = too_large(f, t, &r, inputs_len)) != 0) {
		free(inputs);
		task_rec_fini(&r);
		return rc < 0 ? rc : 0; /* dead now: committed() releases the pick */
	}
	int64_t timeout = sched_timeout_ms(&r.spec, &f->o.defaults);
	struct transition tr = { .to = TS_DISPATCHED, .now_ms = f->now_real, .agent = d->agent,
				 .timeout_due_ms = f->now_real + timeout };
	rc = store_transition(t, d->task_id, &tr, &lease);
	if (rc < 0) {
		free(inputs);
		task_rec_fini(&r);
		return rc == EC_EILLEGAL ? 0 : rc;
	}
	struct outframe *o;
	rc = send_later(f, EC_F_WORK, d->agent, lease, &o);
	if (rc == 0) {
		snprintf(o->task, sizeof o->task, "%s", d->task_id);
		snprintf(o->type_name, sizeof o->type_name, "%s", r.spec.type);
		o->attempt = r.attempt + 1; /* the transition charged it */
		o->timeout_ms = (uint64_t)timeout;
		if (r.spec.payload) {
			o->payload = malloc(r.spec.payload_len);
			if (!o->payload)
				rc = -ENOMEM;
			else
				memcpy(o->payload, r.spec.payload, r.spec.payload_len);
			o->payload_len = r.spec.payload_len;
		}
		o->inputs = inputs; /* the outframe owns them now */
		o->inputs_len = inputs_len;
		inputs = NULL;
	}
	free(inputs);
	task_rec_fini(&r);
	return rc;
}

/*
 * Give back this transaction's picks: it did not commit (or runs again), so
 * their tasks are still ready in the store. sched_pick took them out of the
 * ready index; apply_reindex() puts them back from the store in the next
 * try, which then picks afresh, seeing the slots that recall_early() holds.
 */
static void unpick(struct fleet *f)
{
	for (int i = 0; i < f->npicks; i++) {
		const struct sched_decision *d = &f->picks[i];
		char *id = strdup(d->task_id), **e;
		sched_task_finished(f->sc, d->agent, d->type, SCHED_OUT_ABORT, 0, f->now_mono);
		if (!id || VEC_PUSH(f->reindex, e) < 0) {
			free(id);
			log_warnx("out of memory: ready task %s waits for a restart", d->task_id);
			continue;
		}
		*e = id;
	}
	f->npicks = 0;
	f->picked = false;
}

static int apply_reindex(struct fleet *f, struct store_txn *t)
{
	for (size_t i = 0; i < f->reindex.n; i++) {
		const char *id = f->reindex.v[i];
		struct task_rec r;
		if (sched_ready_has(f->sc, id))
			continue;
		int rc = store_task_get(t, id, &r);
		if (rc == EC_ENOTFOUND)
			continue;
		if (rc < 0)
			return rc;
		if (r.state == TS_READY)
			rc = sched_ready_add_spec(f->sc, &r.spec, r.ready_ms ? r.ready_ms : f->now_real);
		task_rec_fini(&r);
		if (rc < 0 && rc != -EEXIST)
			return rc;
	}
	return 0;
}

static void reindex_clear(struct fleet *f)
{
	for (size_t i = 0; i < f->reindex.n; i++)
		free(f->reindex.v[i]);
	f->reindex.n = 0;
}

static int apply_dispatch(struct fleet *f, struct store_txn *t)
{
	if (!f->link)
		return 0;
	int rc = apply_reindex(f, t);
	if (rc < 0)
		return rc;
	if (!f->picked) {
		int n = sched_pick(f->sc, f->now_mono, f->picks, PICKS_MAX);
		f->npicks = n < 0 ? 0 : n;
		f->picked = true;
		if (n == PICKS_MAX)
			f->kick = true; /* there may be more */
	}
	for (int i = 0; rc == 0 && i < f->npicks; i++)
		rc = dispatch_one(f, t, &f->picks[i]);
	return rc;
}

/* ---- persisted figures -------------------------------------------------------------------------- */

/* The agent's record in the store (agentrec.h), from the registry. */
static size_t figures_encode(const struct agent *a, uint8_t buf[AGENTREC_MAX])
{
	struct agentrec r = { .slots = a->slots, .last_seen_ms = a->last_seen_ms, .ok = a->ok,
			      .failed = a->failed, .ndur = (uint32_t)a->ndur,
			      .drained = a->draining };
	snprintf(r.state, sizeof r.state, "%s", agent_state_name(a));
	size_t first = a->ndur < DUR_WINDOW ? 0 : a->dur_pos, n = 0;
	for (size_t i = 0; i < a->ndur; i++)
		r.dur[i] = a->dur[(first + i) % DUR_WINDOW];
	for (size_t i = 0; i < a->ncaps; i++) {
		int k = snprintf(r.caps + n, sizeof r.caps - n, "%s%s", i ? "," : "", a->caps[i]);
		if (k < 0 || (size_t)k >= sizeof r.caps - n)
			break;
		n += (size_t)k;
	}
	return agentrec_encode(&r, buf);
}

static int figures_load(const char *id, const uint8_t *b, size_t len, void *arg)
{
	struct fleet *f = arg;
	struct agentrec r;
	struct agent *a;
	if (agentrec_decode(b, len, &r) < 0) {
		log_warnx("STORE agent record of %s unreadable: ignored", id);
		return 0;
	}
	int rc = VEC_PUSH(f->agents, a);
	if (rc < 0)
		return rc;
	snprintf(a->id, sizeof a->id, "%s", id);
	a->slots = r.slots;
	a->last_seen_ms = r.last_seen_ms;
	a->ok = r.ok;
	a->failed = r.failed;
	a->ndur = r.ndur < DUR_WINDOW ? r.ndur : DUR_WINDOW;
	memcpy(a->dur, r.dur, a->ndur * sizeof *a->dur);
	a->dur_pos = a->ndur % DUR_WINDOW;
	a->draining = r.drained; /* sched hears of it at hello */
	a->state = A_OFFLINE; /* until it says hello */
	return 0;
}

/* ---- health --------------------------------------------------------------------------------------- */

static int agent_row(struct fleet *f, struct store_txn *t, const struct agent *a)
{
	struct sched_agent_view v = { 0 };
	char topic[MSG_TOPIC_MAX];
	uint8_t *json;
	size_t len;
	struct codec_w w;
	int rc;

	if (a->known_to_sched)
		sched_agent_get(f->sc, a->id, f->now_mono, &v);
	else /* not connected since this start: its lifetime figures */
		v.success_rate = a->ok + a->failed ? (double)a->ok / (double)(a->ok + a->failed)
						   : 1.0;
	codec_w_init(&w, ENC_JSON);
	codec_w_map(&w, 10);
	codec_w_text(&w, "agent");
	codec_w_text(&w, a->id);
	codec_w_text(&w, "state");
	codec_w_text(&w, agent_state_name(a));
	codec_w_text(&w, "caps");
	codec_w_array(&w, a->ncaps);
	for (size_t i = 0; i < a->ncaps; i++)
		codec_w_text(&w, a->caps[i]);
	codec_w_text(&w, "labels");
	codec_w_map(&w, a->nlabels);
	for (size_t i = 0; i < a->nlabels; i++) {
		codec_w_text(&w, a->labels[i].key);
		codec_w_text(&w, a->labels[i].value);
	}
	codec_w_text(&w, "slots");
	codec_w_uint(&w, a->slots);
	codec_w_text(&w, "running");
	codec_w_uint(&w, v.running);
	codec_w_text(&w, "last_seen");
	codec_w_int(&w, a->last_seen_ms);
	codec_w_text(&w, "success_rate");
	codec_w_double(&w, v.success_rate);
	codec_w_text(&w, "p50_ms");
	codec_w_uint(&w, agent_p50(a));
	codec_w_text(&w, "breakers_open");
	codec_w_uint(&w, v.breakers_open);
	if ((rc = codec_w_take(&w, &json, &len)) < 0)
		return rc;
	rc = msg_topic(topic, sizeof topic, f->o.prefix, "fleet/agents", a->id, NULL);
	if (rc == 0)
		rc = store_outbox_put(t, topic, json, len, OUTBOX_RETAIN, NULL);
	free(json);
	if (rc == 0) {
		uint8_t fig[AGENTREC_MAX];
		rc = store_agent_put(t, a->id, fig, figures_encode(a, fig));
	}
	return rc;
}

static int summary_row(struct fleet *f, struct store_txn *t)
{
	unsigned n[4] = { 0 }; /* online, suspect, offline, draining */
	/* With this turn's endings: they are all raised by now (messages,
	 * results, timers, dispatch), and the turn that writes this row clears
	 * figures_dirty, so leaving them out would show them only at the next
	 * periodic publish. */
	uint64_t ended = f->deadline_ended + f->turn_deadline_ended;
	uint64_t met = f->deadline_met + f->turn_deadline_met;
	char topic[MSG_TOPIC_MAX];
	uint8_t *json;
	size_t len;
	struct codec_w w;
	int rc;

	for (size_t i = 0; i < f->agents.n; i++) {
		const struct agent *a = &f->agents.v[i];
		n[a->state == A_OFFLINE ? 2 : a->draining ? 3 : a->state == A_SUSPECT ? 1 : 0]++;
	}
	codec_w_init(&w, ENC_JSON);
	codec_w_map(&w, 8);
	codec_w_text(&w, "online");
	codec_w_uint(&w, n[0]);
	codec_w_text(&w, "suspect");
	codec_w_uint(&w, n[1]);
	codec_w_text(&w, "offline");
	codec_w_uint(&w, n[2]);
	codec_w_text(&w, "draining");
	codec_w_uint(&w, n[3]);
	codec_w_text(&w, "agents");
	codec_w_array(&w, f->agents.n);
	for (size_t i = 0; i < f->agents.n; i++) {
		codec_w_map(&w, 2);
		codec_w_text(&w, "agent");
		codec_w_text(&w, f->agents.v[i].id);
		codec_w_text(&w, "state");
		codec_w_text(&w, agent_state_name(&f->agents.v[i]));
	}
	codec_w_text(&w, "load_cv");
	codec_w_double(&w, sched_load_cv(f->sc));
	codec_w_text(&w, "deadline_success_rate"); /* null until a deadline task ends */
	if (ended)
		codec_w_double(&w, (double)met / (double)ended);
	else
		codec_w_null(&w);
	codec_w_text(&w, "ts");
	codec_w_int(&w, f->now_real);
	if ((rc = codec_w_take(&w, &json, &len)) < 0)
		return rc;
	snprintf(topic, sizeof topic, "%s/fleet/health", f->o.prefix);
	rc = store_outbox_put(t, topic, json, len, OUTBOX_RETAIN, NULL);
	free(json);
	return rc;
}

/* State changes at once; figures at most once a second; everything periodically. */
static int apply_health(struct fleet *f, struct store_txn *t)
{
	bool all = f->now_mono >= f->next_health_mono ||
		   (f->figures_dirty && f->now_mono >= f->next_figures_mono);
	bool any = all;
	for (size_t i = 0; i < f->agents.n; i++) {
		struct agent *a = &f->agents.v[i];
		if (!all && !a->changed)
			continue;
		any = true;
		int rc = agent_row(f, t, a);
		if (rc < 0)
			return rc;
	}
	if (!any)
		return 0;
	f->health_rows = true;
	return summary_row(f, t);
}

/* ---- coord hooks -------------------------------------------------------------------------------- */

static void send_frames(struct fleet *f, bool work_only);

/*
 * Work goes out before the commit: the agent runs it while the store syncs,
 * which takes the commit off the path from one task's result to the next
 * task on that slot. This is safe because only a committed result counts:
 * - should the transaction not commit (an error, or a rerun after the map
 *   grew), recall_early() cancels those leases on their agents and raises
 *   the store's lease floor, so that no lease is ever handed out twice;
 * - should the daemon die first, the tasks are still ready in the store and
 *   run again (at least once, as after any crash), and store_open() skips
 *   STORE_LEASE_GAP leases, so the leases sent are unknown after the restart:
 *   the agent's hello lists them and they are cancelled, a late result is
 *   acknowledged and discarded.
 * Everything else this turn causes (acks, cancels, MQTT) waits for the
 * commit as before.
 */
static void send_work_early(struct fleet *f)
{
	send_frames(f, true);
}

/* The agent may already run what it was sent: each recalled lease holds its
 * slot until the agent answers it, like any cancelled one. */
static void recall_early(struct fleet *f)
{
	uint64_t top = 0;
	for (size_t i = 0; i < f->out.n; i++) {
		struct outframe *o = &f->out.v[i];
		if (o->type != EC_F_WORK || !o->sent)
			continue;
		link_send_cancel(f->link, o->agent, o->lease, "dispatch not committed");
		if (o->queued && orphan_add(f, o->agent, o->lease) < 0)
			log_warnx("out of memory: the slot of lease %llu on %s is not held",
				  (unsigned long long)o->lease, o->agent);
		if (o->lease > top)
			top = o->lease;
	}
	if (top)
		store_lease_floor(f->st, top);
}

static bool hook_pending(void *arg)
{
	struct fleet *f = arg;
	f->now_real = loop_realtime_ms();
	f->now_mono = loop_now_ms();
	return f->kick || f->evs.n || f->next_timer_real <= f->now_real ||
	       f->now_mono >= f->next_health_mono ||
	       (f->figures_dirty && f->now_mono >= f->next_figures_mono) ||
	       (f->sweep_at_mono && f->now_mono >= f->sweep_at_mono);
}

static void hook_begin(void *arg)
{
	struct fleet *f = arg;
	/* A rerun: the last try's work did not commit. Its picks are not reused:
	 * their agents may still be busy with the recalled leases. */
	recall_early(f);
	unpick(f);
	turn_reset(f);
	f->now_real = loop_realtime_ms();
	f->now_mono = loop_now_ms();
}

static int hook_apply(struct store_txn *t, int64_t now_ms, void *arg)
{
	struct fleet *f = arg;
	int rc;

	f->kick = false;
	if (f->sweep_at_mono && f->now_mono >= f->sweep_at_mono) {
		rc = apply_sweep(f, t);
		if (rc < 0)
			return rc;
	}
	rc = apply_events(f, t);
	if (rc == 0)
		rc = store_timers_due(t, f->now_real, on_timer, f);
	if (rc == 0)
		rc = apply_dispatch(f, t);
	if (rc == 0)
		send_work_early(f);
	if (rc == 0)
		rc = apply_health(f, t);
	if (rc == 0) {
		int64_t due;
		int g = store_timer_next(t, &due);
		f->next_timer_real = g == 0 ? due : INT64_MAX;
		if (g < 0 && g != EC_ENOTFOUND)
			rc = g;
	}
	return rc;
}

/* A store event inside the transaction: remember what to do after it. */
static int hook_event(struct store_txn *t, const struct store_event *ev, void *arg)
{
	struct fleet *f = arg;
	if (ev->kind != STORE_EV_TASK)
		return 0;
	const struct task_rec *r = ev->task;
	if (r->spec.deadline_ms > 0 && task_state_final(r->state) && !task_state_final(ev->from)) {
		f->turn_deadline_ended++;
		f->turn_deadline_met += r->state == TS_SUCCEEDED && f->now_real <= r->spec.deadline_ms;
		f->figures_dirty = true;
	}
	if (r->state == TS_READY) {
		/* Indexed at once, so this turn's dispatch can take it. Should the
		 * transaction fail, a pick of a task the store does not have as
		 * ready is dropped by dispatch_one(). */
		sched_ready_remove(f->sc, r->spec.id); /* a re-ready task moves to the back */
		int rc = sched_ready_add_spec(f->sc, &r->spec,
					      r->ready_ms ? r->ready_ms : f->now_real);
		if (rc < 0 && rc != -EEXIST)
			log_warnx("scheduler: cannot index ready task %s: %s", r->spec.id,
				  ec_strerror(rc));
		f->kick = true;
		return 0;
	}
	if (ev->from == TS_READY && r->state != TS_DISPATCHED) {
		char **e;
		int rc = VEC_PUSH(f->unready, e);
		if (rc == 0 && !(*e = strdup(r->spec.id)))
			rc = -ENOMEM;
		return rc;
	}
	if ((ev->from == TS_DISPATCHED || ev->from == TS_RUNNING) &&
	    (r->state == TS_CANCELLED || r->state == TS_DEAD)) {
		/* cancelled by an operator, or its deadline passed while it ran */
		int rc = cancel_later(f, r->agent, r->lease,
				      r->state == TS_CANCELLED ? "cancelled" : "deadline_exceeded");
		return rc < 0 ? rc : finish(f, r->lease, SCHED_OUT_ABORT);
	}
	return 0;
}

static void hook_nested_begin(void *arg)
{
	struct fleet *f = arg;
	f->nest_deadline_ended = f->turn_deadline_ended;
	f->nest_deadline_met = f->turn_deadline_met;
}

/* A refused submission (say one task of an array has an unknown dependency,
 * after another was judged already) stores nothing: the deadline endings it
 * raised did not happen. */
static void hook_nested_end(bool kept, void *arg)
{
	struct fleet *f = arg;
	if (kept)
		return;
	f->turn_deadline_ended = f->nest_deadline_ended;
	f->turn_deadline_met = f->nest_deadline_met;
}

static int hook_control(struct store_txn *t, const char *verb, const char *agent, void *arg)
{
	struct fleet *f = arg;
	struct agent *a = agent_find(f, agent);
	if (!a)
		return EC_EUNKNOWN_AGENT;
	bool on = strcmp(verb, "drain") == 0;
	if (a->draining != on) {
		a->draining = on;
		sched_agent_drain(f->sc, agent, on);
		agent_changed(f, a);
		log_info("AGENT-%s %s", on ? "DRAIN" : "UNDRAIN", agent);
	}
	/* Stored with the control message (again, should the turn rerun), so
	 * that a restarted coordinator keeps the agent drained. */
	uint8_t fig[AGENTREC_MAX];
	int rc = store_agent_put(t, a->id, fig, figures_encode(a, fig));
	if (rc < 0)
		return rc;
	return on ? send_later(f, EC_F_DRAIN, agent, 0, NULL) : 0;
}

static void send_one(struct fleet *f, struct outframe *o)
{
	int rc = 0;
	o->sent = true;
	switch (o->type) {
	case EC_F_WORK: {
		struct ec_frame w;
		ec_frame_init(&w, EC_F_WORK);
		w.task_id = o->task;
		w.attempt = o->attempt;
		w.lease = o->lease;
		w.task_type = o->type_name;
		w.payload = o->payload;
		w.payload_len = o->payload_len;
		w.inputs = o->inputs;
		w.inputs_len = o->inputs_len;
		w.timeout_ms = o->timeout_ms;
		rc = link_send_work(f->link, o->agent, &w);
		o->queued = rc == 0;
		if (rc == 0)
			log_debug("DISPATCH %s lease=%llu -> %s", o->task,
				  (unsigned long long)o->lease, o->agent);
		break;
	}
	case EC_F_ACK:
		rc = link_send_ack(f->link, o->agent, o->lease, o->accepted);
		break;
	case EC_F_CANCEL:
		rc = link_send_cancel(f->link, o->agent, o->lease, o->reason);
		break;
	case EC_F_DRAIN:
		rc = link_send_drain(f->link, o->agent);
		break;
	}
	/* A frame that cannot go out is not lost work: the agent is gone or too
	 * slow, and liveness moves its tasks. */
	if (rc < 0)
		log_debug("frame %s to %s not sent: %s", ec_frame_type_name(o->type), o->agent,
			  ec_strerror(rc));
}

static void send_frames(struct fleet *f, bool work_only)
{
	if (!f->out.n)
		return;
	link_cork(f->link);
	for (size_t i = 0; i < f->out.n; i++) {
		struct outframe *o = &f->out.v[i];
		if (!o->sent && (!work_only || o->type == EC_F_WORK))
			send_one(f, o);
	}
	link_uncork(f->link);
}

/* Committed: work not sent yet goes now; the rest waits until durable. */
static void keep_frames(struct fleet *f)
{
	send_frames(f, true);
	uint64_t gen = store_written(f->st);
	for (size_t i = 0; i < f->out.n; i++) {
		struct outframe *o = &f->out.v[i], *h;
		if (o->sent)
			continue;
		if (VEC_PUSH(f->held, h) < 0) {
			/* No room to wait, and it may not leave before the commit is
			 * durable: dropped. A lost ack or cancel is not lost work (the
			 * agent offers its result again; a stale result is discarded). */
			log_warnx("out of memory: frame %s to %s dropped",
				  ec_frame_type_name(o->type), o->agent);
			continue;
		}
		*h = *o;
		h->payload = h->inputs = NULL; /* not work: none; out keeps ownership */
		h->gen = gen;
	}
}

static void hook_durable(void *arg)
{
	struct fleet *f = arg;
	uint64_t dur = store_durable(f->st);
	size_t k = 0;
	if (!f->held.n || f->held.v[0].gen > dur)
		return;
	link_cork(f->link);
	while (k < f->held.n && f->held.v[k].gen <= dur)
		send_one(f, &f->held.v[k++]);
	link_uncork(f->link);
	memmove(f->held.v, f->held.v + k, (f->held.n - k) * sizeof *f->held.v);
	f->held.n -= k;
}

static void hook_committed(int rc, void *arg)
{
	struct fleet *f = arg;

	if (rc < 0) {
		recall_early(f);
		unpick(f); /* those tasks are still ready in the store */
		f->kick = true;
		turn_reset(f);
		return;
	}
	reindex_clear(f); /* apply_reindex() did its work in this commit */
	/* In-memory scheduler view follows the committed store. */
	for (size_t i = 0; i < f->unready.n; i++)
		sched_ready_remove(f->sc, f->unready.v[i]);
	for (int i = 0; i < f->npicks; i++) {
		const struct sched_decision *d = &f->picks[i];
		bool sent = false;
		for (size_t k = 0; k < f->out.n && !sent; k++) {
			struct outframe *o = &f->out.v[k];
			if (o->type != EC_F_WORK || strcmp(o->task, d->task_id) != 0)
				continue;
			struct run *r;
			if (VEC_PUSH(f->runs, r) == 0) {
				r->lease = o->lease;
				snprintf(r->task, sizeof r->task, "%s", d->task_id);
				snprintf(r->agent, sizeof r->agent, "%s", d->agent);
				snprintf(r->type, sizeof r->type, "%s", d->type);
				r->start_mono = f->now_mono;
			}
			sent = true;
		}
		if (!sent) /* the task was no longer ready */
			sched_task_finished(f->sc, d->agent, d->type, SCHED_OUT_ABORT, 0,
					    f->now_mono);
	}
	keep_frames(f);
	f->deadline_ended += f->turn_deadline_ended;
	f->deadline_met += f->turn_deadline_met;
	if (f->npicks)
		f->figures_dirty = true;
	f->npicks = 0;
	f->picked = false;
	/* Consumed link events. */
	for (size_t i = 0; i < f->evs_applied; i++)
		fev_fini(&f->evs.v[i]);
	if (f->evs_applied) { /* evs.v may still be NULL: memmove(NULL, ...) is UB */
		memmove(f->evs.v, f->evs.v + f->evs_applied,
			(f->evs.n - f->evs_applied) * sizeof *f->evs.v);
		f->evs.n -= f->evs_applied;
	}
	if (f->sweep_at_mono && f->now_mono >= f->sweep_at_mono)
		f->sweep_at_mono = 0;
	if (f->health_rows) {
		for (size_t i = 0; i < f->agents.n; i++)
			f->agents.v[i].changed = false;
		if (f->now_mono >= f->next_health_mono)
			f->next_health_mono = f->now_mono + f->o.health_period_ms;
		f->next_figures_mono = f->now_mono + FIGURES_PERIOD_MS;
		f->figures_dirty = false;
	}
	turn_reset(f);
}

void fleet_coord_hooks(struct fleet *f, struct coord_hooks *h)
{
	*h = (struct coord_hooks){
		.arg = f,
		.pending = hook_pending,
		.begin = hook_begin,
		.apply = hook_apply,
		.event = hook_event,
		.nested_begin = hook_nested_begin,
		.nested_end = hook_nested_end,
		.control = hook_control,
		.committed = hook_committed,
		.durable = hook_durable,
	};
}

/* ---- link hooks ------------------------------------------------------------------------------------ */

static struct fev *queue_ev(struct fleet *f, enum fev_kind kind, const char *agent)
{
	struct fev *e;
	if (VEC_PUSH(f->evs, e) < 0) {
		log_warnx("out of memory: a frame from %s is dropped", agent);
		return NULL;
	}
	e->kind = kind;
	snprintf(e->agent, sizeof e->agent, "%s", agent);
	f->kick = true;
	return e;
}

static void on_up(void *ctx, const char *agent, const struct ec_frame *hello)
{
	struct fleet *f = ctx;
	struct agent *a = agent_find(f, agent);

	if (!a) {
		if (VEC_PUSH(f->agents, a) < 0)
			return;
		snprintf(a->id, sizeof a->id, "%s", agent);
	}
	agent_clear_caps(a);
	a->caps = calloc(hello->ncaps ? hello->ncaps : 1, sizeof *a->caps);
	a->labels = calloc(hello->nlabels ? hello->nlabels : 1, sizeof *a->labels);
	if (a->caps && a->labels) {
		for (size_t i = 0; i < hello->ncaps; i++)
			if ((a->caps[a->ncaps] = strdup(hello->caps[i])))
				a->ncaps++;
		for (size_t i = 0; i < hello->nlabels; i++) {
			struct kv *l = &a->labels[a->nlabels];
			l->key = strdup(hello->labels[i].key);
			l->value = strdup(hello->labels[i].value);
			if (l->key && l->value)
				a->nlabels++;
			else {
				free(l->key);
				free(l->value);
			}
		}
	}
	a->slots = hello->slots;
	a->state = A_ONLINE;
	a->live = true;
	a->known_to_sched = true;
	a->last_seen_ms = loop_realtime_ms();
	agent_changed(f, a);

	struct sched_agent_hello h = {
		.name = a->id, .caps = (const char *const *)a->caps, .ncaps = (uint32_t)a->ncaps,
		.slots = a->slots, .labels = a->labels, .nlabels = (uint32_t)a->nlabels,
	};
	if (sched_agent_up(f->sc, &h) < 0)
		log_warnx("scheduler: cannot register agent %s", agent);
	sched_agent_drain(f->sc, a->id, a->draining);

	struct fev *e = queue_ev(f, FE_UP, agent);
	if (e && hello->nleases) {
		e->leases = malloc(hello->nleases * sizeof *e->leases);
		if (e->leases) {
			memcpy(e->leases, hello->leases, hello->nleases * sizeof *e->leases);
			e->nleases = hello->nleases;
		}
	}
}

static void on_frame(void *ctx, const char *agent, const struct ec_frame *fr)
{
	struct fleet *f = ctx;
	struct agent *a = agent_find(f, agent);
	struct fev *e;

	if (a)
		a->last_seen_ms = loop_realtime_ms();
	switch (fr->type) {
	case EC_F_STARTED:
	case EC_F_RESULT:
		if (!fr->task_id && fr->type == EC_F_RESULT)
			return;
		e = queue_ev(f, fr->type == EC_F_STARTED ? FE_STARTED : FE_RESULT, agent);
		if (!e)
			return;
		e->lease = fr->lease;
		if (fr->task_id) /* started carries only the lease */
			snprintf(e->task, sizeof e->task, "%s", fr->task_id);
		e->ok = fr->ok;
		if (fr->result && fr->result_len && (e->result = malloc(fr->result_len))) {
			memcpy(e->result, fr->result, fr->result_len);
			e->result_len = fr->result_len;
		}
		if (fr->text)
			e->text = strdup(fr->text);
		return;
	default:
		return; /* progress, hb, bye: liveness only (the link keeps it) */
	}
}

static void on_state(void *ctx, const char *agent, enum link_agent_state st, const char *why)
{
	struct fleet *f = ctx;
	struct agent *a = agent_find(f, agent);
	if (!a)
		return;
	switch (st) {
	case LINK_AGENT_DOWN:
		a->live = false;
		a->state = A_SUSPECT;
		/* No session: no work for it, but nothing moves until offline.
		 * Should it come back, its hello lists what it still holds. */
		sched_agent_set_state(f->sc, agent, SCHED_AGENT_OFFLINE);
		orphans_clear(f, a);
		break;
	case LINK_AGENT_SUSPECT:
		a->state = A_SUSPECT;
		sched_agent_set_state(f->sc, agent, SCHED_AGENT_SUSPECT);
		break;
	case LINK_AGENT_ALIVE:
		a->state = A_ONLINE;
		sched_agent_set_state(f->sc, agent, SCHED_AGENT_ONLINE);
		break;
	case LINK_AGENT_OFFLINE:
		a->live = false;
		a->state = A_OFFLINE;
		sched_agent_down(f->sc, agent);
		orphans_clear(f, a);
		queue_ev(f, FE_OFFLINE, agent);
		log_warnx("AGENT-OFFLINE %s (%s): its tasks move to other agents", agent, why);
		break;
	}
	agent_changed(f, a);
}

void fleet_link_hooks(struct fleet *f, struct link_hooks *h)
{
	h->ctx = f;
	h->on_up = on_up;
	h->on_frame = on_frame;
	h->on_state = on_state;
}

void fleet_attach_link(struct fleet *f, struct link *l)
{
	f->link = l;
}

/* ---- life ---------------------------------------------------------------------------------------- */

int fleet_new(struct store *st, struct sched *sc, const struct fleet_opts *o,
	      struct fleet **out)
{
	struct fleet *f = calloc(1, sizeof *f);
	if (!f)
		return -ENOMEM;
	f->st = st;
	f->sc = sc;
	f->o = *o;
	if (f->o.health_period_ms <= 0)
		f->o.health_period_ms = 30000;
	sched_rng_seed(&f->rng, (uint64_t)loop_realtime_ms() ^ (uint64_t)loop_now_ms() << 20);
	f->next_timer_real = INT64_MIN; /* look at the timers on the first turn */
	f->next_health_mono = loop_now_ms() + f->o.health_period_ms;
	*out = f;
	return 0;
}

void fleet_free(struct fleet *f)
{
	if (!f)
		return;
	turn_reset(f);
	reindex_clear(f);
	for (size_t i = 0; i < f->agents.n; i++) {
		agent_clear_caps(&f->agents.v[i]);
		free(f->agents.v[i].orphan);
	}
	for (size_t i = 0; i < f->evs.n; i++)
		fev_fini(&f->evs.v[i]);
	free(f->agents.v);
	free(f->runs.v);
	free(f->evs.v);
	free(f->out.v);
	free(f->held.v);
	free(f->unready.v);
	free(f->reindex.v);
	free(f);
}

struct recover_ctx {
	struct fleet *f;
	struct store_txn *t;
	size_t ready, running;
};

static int recover_ready(const char *id, int64_t ready_ms, void *arg)
{
	struct recover_ctx *c = arg;
	struct task_rec r;
	int rc = store_task_get(c->t, id, &r);
	if (rc < 0)
		return rc == EC_ENOTFOUND ? 0 : rc;
	rc = sched_ready_add_spec(c->f->sc, &r.spec, ready_ms);
	task_rec_fini(&r);
	c->ready++;
	return rc == -EEXIST ? 0 : rc;
}

static int recover_running(const struct task_rec *r, void *arg)
{
	struct recover_ctx *c = arg;
	struct run *run;
	int rc = sched_task_adopt(c->f->sc, r->agent, r->spec.type);
	if (rc < 0)
		return rc;
	rc = VEC_PUSH(c->f->runs, run);
	if (rc < 0)
		return rc;
	run->lease = r->lease;
	snprintf(run->task, sizeof run->task, "%s", r->spec.id);
	snprintf(run->agent, sizeof run->agent, "%s", r->agent);
	snprintf(run->type, sizeof run->type, "%s", r->spec.type);
	run->start_mono = c->f->now_mono;
	c->running++;
	return 0;
}

static int recover_txn(struct store_txn *t, void *arg)
{
	struct recover_ctx *c = arg;
	int rc = 0;
	c->t = t;
	if (c->f->agents.n == 0)
		rc = store_agents_scan(t, figures_load, c->f);
	for (int p = SCHED_PRIO_MAX; rc == 0 && p >= SCHED_PRIO_MIN; p--)
		rc = store_ready_scan(t, p, recover_ready, c);
	if (rc == 0)
		rc = store_tasks_scan(t, TS_DISPATCHED, recover_running, c);
	if (rc == 0)
		rc = store_tasks_scan(t, TS_RUNNING, recover_running, c);
	return rc;
}

int fleet_recover(struct fleet *f, int64_t now_real_ms, int64_t now_mono_ms)
{
	struct recover_ctx c = { .f = f };
	f->now_real = now_real_ms;
	f->now_mono = now_mono_ms;
	int rc = store_read(f->st, recover_txn, &c);
	if (rc < 0)
		return rc;
	if (c.running) {
		/* DESIGN 7: their agents get one liveness period to come back. */
		f->sweep_at_mono = now_mono_ms + (int64_t)f->o.heartbeat_ms * f->o.heartbeat_misses;
	}
	f->kick = true;
	log_info("RECOVERED %zu ready and %zu running tasks", c.ready, c.running);
	return 0;
}

int64_t fleet_next_due(struct fleet *f, int64_t now_mono_ms, int64_t now_real_ms)
{
	if (f->kick || f->evs.n)
		return now_mono_ms;
	int64_t due = f->next_health_mono;
	if (f->figures_dirty && f->next_figures_mono < due)
		due = f->next_figures_mono;
	if (f->sweep_at_mono && f->sweep_at_mono < due)
		due = f->sweep_at_mono;
	if (f->next_timer_real != INT64_MAX) {
		int64_t t = now_mono_ms + (f->next_timer_real - now_real_ms);
		if (t < due)
			due = t < now_mono_ms ? now_mono_ms : t;
	}
	return due;
}
