/* SPDX-License-Identifier: MIT */
/*
 * sched.h - the scheduling core: it decides, the daemon acts.
 *
 * This module owns four things:
 *   1. policy: a task's effective retry policy and attempt timeout (task_spec
 *      fields left unset are filled from struct sched_defaults), the backoff
 *      before the next attempt, and retry-or-dead after a failure;
 *   2. the in-memory ready index: ready tasks by type and priority level,
 *      ordered by effective priority (priority + aging), age, arrival;
 *   3. agents as the scheduler sees them: capabilities, slots, running count,
 *      slots held by leases not yet answered, labels, draining, liveness,
 *      per-type success/latency figures and a circuit breaker per
 *      (agent, type);
 *   4. sched_pick(): (task, agent) dispatch decisions that respect
 *      capability, free slots, draining, liveness, `agent` pins, affinity,
 *      per-type concurrency limits and breakers, routed by least_loaded,
 *      round_robin or performance.
 *
 * It does no I/O, reads no clock and includes no third-party or config
 * header: every call that depends on time takes now_ms, every random choice
 * draws from a seeded PRNG (struct sched_rng), so the whole module is
 * deterministic under test. The durable ready queue lives in the store; this
 * index mirrors it (the daemon adds a task when the store makes it ready,
 * rebuilds the index at start-up in ready_ms order, and removes a task when
 * it is cancelled or dead). Quotas per source are the store's business.
 *
 * Time: now_ms must be on the same clock as the ready_ms values given to
 * sched_ready_add() (the store's, epoch ms) and as the now_ms given to the
 * agent and outcome calls (breaker cool-downs). A clock that steps backwards
 * only delays aging and breaker expiry; it breaks nothing.
 *
 * Threads: none. A struct sched belongs to the daemon's main loop; no call
 * may run concurrently with another on the same struct sched.
 *
 * Errors: functions that can fail return 0 or a negative code: -EINVAL for
 * arguments out of range, -ENOMEM, -EEXIST, EC_ENOTFOUND, EC_EUNKNOWN_AGENT.
 */
#ifndef EC_SCHED_H
#define EC_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "task.h"

#define SCHED_PRIO_MIN 1
#define SCHED_PRIO_MAX 10
#define SCHED_PRIO_DEFAULT 5
/* Aging raises the effective priority by one per aging period up to this
 * cap. With the cap one above the highest base priority, a task of base
 * priority p that has waited (SCHED_EFF_PRIO_CAP - p) aging periods ties with
 * or beats every task that became ready after it, whatever the load: this is
 * the starvation bound of docs/scheduling.md. */
#define SCHED_EFF_PRIO_CAP (SCHED_PRIO_MAX + 1)

/* --- Randomness ------------------------------------------------------------ */

/* splitmix64: small, fast, and good enough for jitter and exploration.
 * The caller owns the state; the same seed gives the same sequence. */
struct sched_rng {
	uint64_t s;
};
void sched_rng_seed(struct sched_rng *r, uint64_t seed);
uint64_t sched_rng_next(struct sched_rng *r);
/* Uniform in [0, n); n == 0 gives 0. Unbiased (rejection sampling). */
uint64_t sched_rng_below(struct sched_rng *r, uint64_t n);

/* --- Policy ------------------------------------------------------------------ */

/* Defaults from [scheduler], in milliseconds. The daemon fills them from its
 * configuration; sched_defaults_init() gives DESIGN 6's values. retry must be
 * fully resolved: max_attempts >= 1, backoff not BACKOFF_UNSET, jitter 0/1,
 * initial_ms and max_ms >= 0. */
struct sched_defaults {
	struct retry_policy retry;    /* 3, exponential, jitter, 1000 ms, 300000 ms */
	int64_t task_timeout_ms;      /* 3600000 */
	uint32_t max_lost;            /* 10: see sched_after_lost(); 0 = no cap */
};
void sched_defaults_init(struct sched_defaults *d);

/* The retry policy a task runs under: the task's own policy (already merged
 * with its workflow's by the codec: a step's retry_policy replaces the
 * workflow's whole) with every field it left unset taken from d. A task
 * without a retry_policy gets d->retry. Values are clamped into range
 * (max_attempts >= 1, delays >= 0). Never fails. */
void sched_policy_resolve(const struct task_spec *t, const struct sched_defaults *d,
			  struct retry_policy *out);
/* One attempt's timeout: the task's, or d->task_timeout_ms. */
int64_t sched_timeout_ms(const struct task_spec *t, const struct sched_defaults *d);

/*
 * The delay before attempt k+1, after k >= 1 attempts (k == 0 is taken as 1):
 *   none -> 0; fixed -> initial; exponential -> min(max, initial * 2^(k-1)),
 *   computed without overflow for any k;
 *   with jitter, uniform in [delay/2, delay] (integer ms, both ends included).
 * p must be resolved (sched_policy_resolve). rng is used only with jitter and
 * may be NULL without it (with jitter and a NULL rng, no jitter is applied).
 */
int64_t sched_backoff_ms(const struct retry_policy *p, uint32_t k, struct sched_rng *rng);

enum sched_verdict { SCHED_RETRY = 0, SCHED_DEAD = 1 };

/* After a failed (or timed-out) attempt: `attempt` is the number of charged
 * attempts so far, the failed one included. SCHED_DEAD when attempt >=
 * p->max_attempts; else SCHED_RETRY with *due_ms = now_ms + backoff (written
 * only for SCHED_RETRY; due_ms may be NULL). */
enum sched_verdict sched_after_failure(const struct retry_policy *p, uint32_t attempt,
				       int64_t now_ms, struct sched_rng *rng,
				       int64_t *due_ms);

/* After an attempt was lost (its agent went silent: not charged, DESIGN 3.4):
 * `lost` counts this task's lost dispatches so far, this one included.
 * SCHED_DEAD ("lost_too_often") when d->max_lost > 0 and lost > d->max_lost,
 * else SCHED_RETRY (back to ready at once). The daemon keeps the count. */
enum sched_verdict sched_after_lost(const struct sched_defaults *d, uint32_t lost);

/* --- The scheduler ---------------------------------------------------------- */

enum sched_routing { SCHED_LEAST_LOADED = 0, SCHED_ROUND_ROBIN, SCHED_PERFORMANCE };

struct sched_opts {
	enum sched_routing routing;    /* least_loaded */
	int64_t aging_ms;              /* 30000; 0 = no aging */
	uint32_t breaker_failures;     /* 5 consecutive failures open it; 0 = no breaker */
	int64_t breaker_cooldown_ms;   /* 30000: the first cool-down */
	int64_t breaker_cooldown_max_ms; /* 0 = 16 * breaker_cooldown_ms */
	uint32_t explore_permille;     /* 100: performance routing's share of picks
					  sent to a non-best eligible agent */
	uint32_t scan_budget;          /* 64: pinned/affinity tasks examined per
					  (type, level) per sched_pick call, see
					  sched_pick */
	uint64_t seed;                 /* PRNG seed for routing */
};
void sched_opts_default(struct sched_opts *o);

/* "least_loaded" | "round_robin" | "performance" -> routing, or -EINVAL. */
int sched_routing_parse(const char *s);
const char *sched_routing_name(enum sched_routing r);
/* "none" | "fixed" | "exponential" -> enum backoff, or -EINVAL. */
int sched_backoff_parse(const char *s);

struct sched;

/* *out is new on success (sched_free). -EINVAL for negative times. */
int sched_new(const struct sched_opts *o, struct sched **out);
void sched_free(struct sched *s);
/* Replace the options (SIGHUP). The PRNG keeps its state; breakers already
 * open keep their current cool-down. */
int sched_reconfigure(struct sched *s, const struct sched_opts *o);
/* [concurrency] TYPE = N: at most n tasks of type dispatched or running
 * fleet-wide; n == 0 removes the limit. */
int sched_set_limit(struct sched *s, const char *type, uint32_t n);

/* --- The ready index --------------------------------------------------------- */

/* A ready task as the index needs it. All pointers are borrowed for the call;
 * the index copies what it keeps. */
struct sched_task {
	const char *id;                /* full id, <= TASK_FULLID_MAX chars */
	const char *type;              /* <= TASK_ID_MAX chars */
	uint8_t priority;              /* 1..10; 0 = default 5 */
	int64_t ready_ms;              /* when it (last) became ready */
	const char *agent;             /* pin, or NULL */
	const struct kv *affinity;     /* all must be in the agent's labels */
	uint32_t naffinity;
};

/* Add a ready task. -EEXIST if id is already in the index, -EINVAL for an
 * empty/oversized id or type or a priority over 10, -ENOMEM. Cheapest when
 * tasks of one type and priority arrive in ready_ms order (O(1)); an older
 * ready_ms is inserted in its place. */
int sched_ready_add(struct sched *s, const struct sched_task *t);
/* The same from a task_spec (its id, type, priority, agent, affinity). */
int sched_ready_add_spec(struct sched *s, const struct task_spec *spec, int64_t ready_ms);
/* Remove a task (cancelled, dead by deadline, ...). EC_ENOTFOUND if absent. */
int sched_ready_remove(struct sched *s, const char *id);
bool sched_ready_has(const struct sched *s, const char *id);
size_t sched_ready_count(const struct sched *s);
/* Effective priority of a ready task at now_ms, or EC_ENOTFOUND. */
int sched_effective_priority(const struct sched *s, const char *id, int64_t now_ms);

/* --- Agents ------------------------------------------------------------------ */

enum sched_agent_state { SCHED_AGENT_OFFLINE = 0, SCHED_AGENT_ONLINE, SCHED_AGENT_SUSPECT };

/* An agent's hello. Borrowed for the call. */
struct sched_agent_hello {
	const char *name;              /* <= TASK_ID_MAX chars */
	const char *const *caps;       /* task types it runs */
	uint32_t ncaps;
	uint32_t slots;                /* tasks it runs at once */
	const struct kv *labels;
	uint32_t nlabels;
};

/* The agent is online with these capabilities, slots and labels (first
 * connection or reconnection). A known agent keeps its running count, its
 * draining flag, its figures and its breakers (for types it still has). */
int sched_agent_up(struct sched *s, const struct sched_agent_hello *h);
/* Liveness from the fleet module: SUSPECT still receives work (nothing moves
 * yet, DESIGN 4); OFFLINE receives none. Going offline does not release the
 * running count: the daemon reports each task it moves back to ready with
 * sched_task_finished(SCHED_OUT_LOST). EC_EUNKNOWN_AGENT if never seen. */
int sched_agent_set_state(struct sched *s, const char *name, enum sched_agent_state st);
/* sched_agent_set_state(OFFLINE). */
int sched_agent_down(struct sched *s, const char *name);
/* Draining: no new work; running work finishes. */
int sched_agent_drain(struct sched *s, const char *name, bool on);
/*
 * held: how many of the agent's slots are still taken by dispatches whose
 * tasks have left it (cancelled, timed out, recalled) but which the agent
 * has not answered yet: it runs them until it stops them and sends their
 * result (docs/protocol.md, Work). They are not running tasks (the view's
 * running and the load figure leave them out, and no task or type count
 * includes them), but a dispatch counts them as busy: an agent gets work
 * only while running + held < slots, and least_loaded weighs both. The
 * daemon keeps the leases and sets the count whenever it changes;
 * sched_agent_up() and liveness changes keep it. EC_EUNKNOWN_AGENT if never
 * seen.
 */
int sched_agent_set_held(struct sched *s, const char *name, uint32_t held);

/* --- Dispatch ------------------------------------------------------------------ */

struct sched_decision {
	char task_id[TASK_FULLID_MAX + 1];
	char agent[TASK_ID_MAX + 1];
	char type[TASK_ID_MAX + 1];
	bool trial;                    /* the half-open breaker's trial task */
};

/*
 * Decide up to max dispatches at now_ms, best task first (effective priority
 * desc, then ready_ms asc, then arrival order). Each decision removes the
 * task from the index and counts it against its agent's slots and its type's
 * concurrency limit at once, so the daemon must balance every decision with
 * exactly one sched_task_finished() (SCHED_OUT_ABORT if it could not apply
 * the decision; it may then sched_ready_add() the task again).
 *
 * A task no free agent can take never blocks others: a type without an
 * eligible agent is skipped whole, and tasks with an `agent` pin or affinity
 * wait in their own list per (type, level) so that plain tasks never queue
 * behind them. Among pinned/affinity tasks of one type and level, one call
 * examines at most 2 * scan_budget of them (scan_budget from the head, then
 * scan_budget from where the previous call's tail scan stopped, wrapping),
 * so every such task is examined within ceil(n / scan_budget) calls.
 *
 * Cost of one call: O(active types * agents' capabilities) to set up, then
 * per decision O(active types * 20 + eligible agents), plus the bounded scans
 * above. Call it once per loop turn with max = the free slots you can use.
 *
 * Tasks pinned to an agent that lacks their type never become eligible;
 * they wait until that agent advertises the type, or their deadline.
 *
 * Returns the number of decisions written to out[0..], -EINVAL, or -ENOMEM
 * (then nothing was decided).
 */
int sched_pick(struct sched *s, int64_t now_ms, struct sched_decision *out, size_t max);

/* Recovery at start-up: count a task the store shows dispatched or running
 * on agent (creating an offline record for an agent not yet connected), as
 * if sched_pick had decided it. */
int sched_task_adopt(struct sched *s, const char *agent, const char *type);

enum sched_outcome {
	SCHED_OUT_OK = 0,    /* succeeded: figures and breaker */
	SCHED_OUT_FAIL,      /* failed or timed out: figures and breaker */
	SCHED_OUT_LOST,      /* agent went silent: released, no figures */
	SCHED_OUT_ABORT,     /* the decision was not applied, or cancelled: released */
};

/* A dispatched task left its agent: release its slot and its type's count,
 * and for OK/FAIL update the (agent, type) figures and breaker. duration_ms
 * (dispatch to result) feeds the latency EWMA on OK. EC_EUNKNOWN_AGENT if the
 * agent was never seen (the type's count is still released). */
int sched_task_finished(struct sched *s, const char *agent, const char *type,
			enum sched_outcome out, int64_t duration_ms, int64_t now_ms);

/* --- Fleet figures ------------------------------------------------------------ */

enum sched_breaker_state { SCHED_BREAKER_CLOSED = 0, SCHED_BREAKER_OPEN,
			   SCHED_BREAKER_HALF_OPEN };
const char *sched_breaker_name(enum sched_breaker_state b);

struct sched_agent_view {
	enum sched_agent_state state;
	bool draining;
	uint32_t slots, running;
	uint32_t held;                 /* slots held for unanswered leases */
	double success_rate;           /* decaying, over its types; 1.0 before any result */
	double latency_ms;             /* EWMA of successful durations; 0 before any */
	uint32_t breakers_open;        /* types whose breaker is open or half-open */
};
int sched_agent_get(const struct sched *s, const char *name, int64_t now_ms,
		    struct sched_agent_view *out);

struct sched_breaker_view {
	const char *agent, *type;      /* borrowed for the callback */
	enum sched_breaker_state state;
	uint32_t failures;             /* consecutive failures */
	int64_t open_until_ms;         /* OPEN: when it turns half-open */
	int64_t cooldown_ms;           /* the current (last used) cool-down */
	double success_rate, latency_ms;
	uint64_t samples;
};
/* fn for every (agent, capability); a non-zero return stops and is returned. */
typedef int (*sched_breaker_fn)(const struct sched_breaker_view *v, void *arg);
int sched_breakers_each(const struct sched *s, int64_t now_ms, sched_breaker_fn fn,
			void *arg);

/* Coefficient of variation (stddev / mean) of running/slots over online and
 * suspect, non-draining agents with slots > 0: 0 for a perfectly even fleet,
 * 0 when none is loaded or there are no such agents. */
double sched_load_cv(const struct sched *s);

/* The earliest time after now_ms at which an open breaker turns half-open
 * (so a pick may find new work), or -1 if none: a bound for the loop's wait. */
int64_t sched_next_due(const struct sched *s, int64_t now_ms);

#endif
