/* SPDX-License-Identifier: MIT */
/*
 * store.h - the durable state of edgecoord in one LMDB environment: tasks,
 * workflows, dependency edges, the ready queue, timers, results, per-task
 * history, dead letters, the outbox and counters. store.c is the only file
 * that includes lmdb.h.
 *
 * Threads: one process has one writer, the main loop. Read transactions may
 * be used from the same thread (MDB_NOTLS). edgecoordctl opens the store
 * read-only while the daemon runs.
 *
 * Transactions: every change happens inside store_write(), which runs a
 * callback in one write transaction and commits it durably (one fsync for
 * everything the callback did: group commit). If the map fills, the
 * transaction is aborted, the map grown (up to max_map_size) and the callback
 * run again from scratch, so a callback must have no effect outside the
 * transaction until store_write() returned 0.
 *
 * With lazy_meta (the daemon), a commit syncs its data pages but leaves its
 * meta page to the next commit's sync or to store_sync(): one device flush
 * per commit instead of two. A power cut may then undo the last commit, so
 * nothing about a commit may leave the process before store_durable() has
 * reached store_written() as it was after that commit (coord.c holds PUBACKs,
 * outbox rows and agent frames for this).
 *
 * Every state change goes through store_transition() (or the submit, cancel
 * and retry helpers, which use it), which refuses illegal transitions
 * (task_transition_legal), maintains the state index, per-workflow counts,
 * dependents' readiness, skip propagation, the ready queue, history, results
 * and dead letters, and reports each change to the observer, which writes the
 * outbox rows the change causes in the same transaction.
 *
 * Memory: records returned by getters are copies (the caller finis them);
 * nothing returned points into the LMDB map.
 */
#ifndef EC_STORE_H
#define EC_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "task.h"

#define STORE_SCHEMA_VERSION 4
#define STORE_SOURCE_MAX 128   /* SOURCE names (MQTT topic level) */
#define STORE_HISTORY_MAX 32   /* events kept per task (oldest dropped) */

struct store;
struct store_txn;

struct store_opts {
	const char *dir;        /* created 0700 if missing (unless read_only) */
	size_t map_size;        /* initial map size, bytes */
	size_t max_map_size;    /* the map grows up to this, bytes */
	bool read_only;         /* edgecoordctl: MDB_RDONLY */
	bool lazy_meta;         /* MDB_NOMETASYNC: see the file comment */
	uint64_t max_unfinished; /* store_submit refuses beyond this many tasks
				  * not final (EC_ESTORE_FULL); 0 = no limit */
};

/* Open (and create or migrate) the environment; clears stale readers.
 * Refuses a schema version it does not know. *out is new on success. */
int store_open(const struct store_opts *o, struct store **out);
void store_close(struct store *s);

/* Clear the reader slots of processes that died in a read transaction
 * (edgecoordctl killed by SIGPIPE or Ctrl-C): such a slot keeps every page
 * freed after its snapshot from being reused, and the data file grows.
 * store_open and a store_write that fills the map do it; the daemon also
 * every few seconds. Returns the number cleared (logged as STORE-READERS),
 * or EC_ESTORE. Cheap: one pass over the reader table. */
int store_reader_check(struct store *s);

/* Dispatch hands out leases from a counter in the store. Opening for writing
 * skips STORE_LEASE_GAP of them, and store_lease_floor() makes the next ones
 * greater than `lease`: a lease sent to an agent in a transaction that never
 * committed (the daemon died, or the commit failed) is not used again. */
#define STORE_LEASE_GAP (UINT64_C(1) << 20)
void store_lease_floor(struct store *s, uint64_t lease);

typedef int (*store_txn_fn)(struct store_txn *t, void *arg);

/* Run fn in one durable write transaction (see the file comment). Returns 0,
 * fn's own non-zero return (the transaction is then aborted), EC_ESTORE_FULL
 * if the map is at max_map_size and still full, or EC_ESTORE. */
int store_write(struct store *s, store_txn_fn fn, void *arg);
/* Commits so far, as LMDB transaction ids: the last one written, and the
 * last one known to survive a power cut (equal unless lazy_meta). A write
 * that changed nothing commits nothing and moves neither. */
uint64_t store_written(const struct store *s);
uint64_t store_durable(struct store *s);
/* Make everything written durable (one device flush; none if it already is).
 * After a flush failed, a commit is made first (see store.c, "A failed
 * flush"): 0 once its flush succeeded, else EC_ESTORE and nothing more is
 * durable. */
int store_sync(struct store *s);
/* The same on a thread of the store's (started at the first call), for a
 * loop that has nothing else to do meanwhile: it returns at once, and fn
 * (store_set_sync_notify; it runs on that thread, so loop_wake() is about
 * all it may call) says when the flush is over, and store_durable() may have
 * moved. After a failed flush it is store_sync(), on the caller's thread.
 * Setting fn stops the thread first: set NULL before what fn wakes is
 * freed. */
int store_sync_background(struct store *s);
void store_set_sync_notify(struct store *s, void (*fn)(void *arg), void *arg);
/* Run fn in a read transaction (a consistent snapshot). */
int store_read(struct store *s, store_txn_fn fn, void *arg);

/* Inside a write transaction: run fn in a nested transaction, which is
 * discarded if fn fails, leaving the outer one as it was. */
int store_nested(struct store_txn *t, store_txn_fn fn, void *arg);

/* --- Records ------------------------------------------------------------ */

struct task_rec {
	struct task_spec spec;          /* as submitted (normalized) */
	enum task_state state;
	enum encoding enc;              /* the submission's encoding */
	char source[STORE_SOURCE_MAX + 1];
	uint32_t attempt;               /* charged attempts */
	uint64_t lease;                 /* current dispatch's lease, 0 = none */
	uint32_t unfinished;            /* upstreams not yet final */
	char agent[TASK_ID_MAX + 1];    /* agent of the current/last dispatch */
	char *error;                    /* last error, or NULL */
	int64_t created_ms;             /* epoch ms */
	int64_t updated_ms;
	int64_t ready_ms;               /* when it last became ready (aging) */
	int64_t retry_due_ms;           /* 0 = none; mirrors the timers table */
	int64_t timeout_due_ms;
};
void task_rec_fini(struct task_rec *r);

struct workflow_rec {
	char id[TASK_ID_MAX + 1];
	char *description;
	enum encoding enc;
	char source[STORE_SOURCE_MAX + 1];
	uint32_t total;                 /* number of steps */
	uint32_t counts[TS__COUNT];     /* steps per state */
	bool cancelled;
	int64_t created_ms, updated_ms;
};
void workflow_rec_fini(struct workflow_rec *w);
/* "running", "succeeded", "failed" or "cancelled" (DESIGN 3.4) */
const char *workflow_state(const struct workflow_rec *w);

struct result_rec {
	uint32_t attempt;
	char agent[TASK_ID_MAX + 1];
	bool ok;
	uint8_t *result;                /* canonical CBOR (ok), or NULL */
	size_t result_len;
	char *error;                    /* (!ok) */
	int64_t ts_ms;
};
void result_rec_fini(struct result_rec *r);

struct history_ev {
	int64_t ts_ms;
	uint8_t from, to;               /* enum task_state */
	uint32_t attempt;
	char agent[TASK_ID_MAX + 1];
	char detail[128];               /* "lost", an error's head, ... */
};

/* --- The observer: outbox rows in the same transaction ------------------ */

enum store_ev_kind { STORE_EV_TASK = 1, STORE_EV_WORKFLOW, STORE_EV_RESULT };
struct store_event {
	enum store_ev_kind kind;
	const struct task_rec *task;        /* TASK, RESULT: borrowed, after the change */
	enum task_state from;               /* TASK */
	const struct workflow_rec *workflow;/* WORKFLOW: after the change; also set on
					       TASK events of a step */
	const struct result_rec *result;    /* RESULT */
};
/* Called inside the writing transaction after each change; a non-zero
 * return aborts the whole store_write(). */
typedef int (*store_observer_fn)(struct store_txn *t, const struct store_event *ev,
				 void *arg);
void store_set_observer(struct store *s, store_observer_fn fn, void *arg);

/* --- Submissions --------------------------------------------------------- */

struct submit_result {
	bool duplicate;                 /* the same content was already stored */
	enum task_state state;          /* duplicate of a task: its current state */
};

/*
 * Store a decoded submission atomically (nested transaction): every task
 * `accepted`, then `waiting` or `ready` (or judged at once when all upstreams
 * are already final). Same id and same content as stored: *res->duplicate,
 * nothing written. Different content: EC_ECONFLICT. A dependency of a plain
 * task that is neither stored nor in the batch: EC_EUNKNOWN_DEP. A map that
 * cannot grow past its high-water mark, or more unfinished tasks than
 * max_unfinished: EC_ESTORE_FULL (submissions are refused before the map is
 * truly full so that stored work can progress).
 * Quota (max_pending > 0): EC_EQUOTA. Errors fill *err.
 */
int store_submit(struct store_txn *t, const struct submission *sub, const char *source,
		 uint32_t max_pending, int64_t now_ms, struct submit_result *res,
		 struct sub_error *err);

/* --- Transitions --------------------------------------------------------- */

struct transition {
	enum task_state to;
	int64_t now_ms;
	uint64_t lease;           /* if non-zero, must equal the task's lease, else EC_ESTALE */
	const char *agent;        /* TS_DISPATCHED: the agent */
	bool lost;                /* -> TS_READY from dispatched/running: agent went
				     silent; the attempt is not charged */
	const char *error;        /* TS_FAILED, TS_DEAD, TS_CANCELLED: why */
	const uint8_t *result;    /* TS_SUCCEEDED: canonical CBOR, may be NULL */
	size_t result_len;
	int64_t retry_due_ms;     /* TS_RETRY_WAIT: when it becomes ready again */
	int64_t timeout_due_ms;   /* TS_DISPATCHED: attempt timeout */
};

/*
 * Move task id. Dispatch (ready -> dispatched) charges an attempt and assigns
 * a new lease (returned in *lease_out if non-NULL). EC_ENOTFOUND, EC_EILLEGAL,
 * EC_ESTALE. A final state stores the result/error, a dead task goes to the
 * dead-letter table, and dependents are judged (DESIGN 3.4: run_if, when;
 * skipped propagates transitively, iteratively).
 */
int store_transition(struct store_txn *t, const char *id, const struct transition *tr,
		     uint64_t *lease_out);

/* Operator actions (DESIGN 5). Cancel: every non-final task -> cancelled (a
 * final one is left as it is: 0).
 * Retry: a dead task -> ready with attempts reset; dependents skipped because
 * of it are judged again (EC_ENOT_DEAD if it is not dead). Workflow forms act
 * on every step. EC_EUNKNOWN_TASK / EC_EUNKNOWN_WORKFLOW when absent. */
int store_cancel(struct store_txn *t, const char *id, int64_t now_ms);
int store_cancel_workflow(struct store_txn *t, const char *wf, int64_t now_ms);
int store_retry(struct store_txn *t, const char *id, int64_t now_ms);
int store_retry_workflow(struct store_txn *t, const char *wf, int64_t now_ms);

/* --- Reads (any transaction) --------------------------------------------- */

int store_task_get(struct store_txn *t, const char *id, struct task_rec *out);
int store_workflow_get(struct store_txn *t, const char *id, struct workflow_rec *out);
int store_result_get(struct store_txn *t, const char *id, struct result_rec *out);

/* Iterators call fn for each item; a non-zero return stops and is returned.
 * The records passed are borrowed for the call only. */
typedef int (*store_task_fn)(const struct task_rec *r, void *arg);
/* state < 0: all tasks, in id order; else the tasks in that state. */
int store_tasks_scan(struct store_txn *t, int state, store_task_fn fn, void *arg);
/* The steps of workflow wf, in id order (none if wf is longer than
 * TASK_ID_MAX). */
int store_workflow_steps(struct store_txn *t, const char *wf, store_task_fn fn, void *arg);
typedef int (*store_wf_fn)(const struct workflow_rec *w, void *arg);
int store_workflows_scan(struct store_txn *t, store_wf_fn fn, void *arg);
typedef int (*store_hist_fn)(const struct history_ev *ev, void *arg);
int store_history_scan(struct store_txn *t, const char *id, store_hist_fn fn, void *arg);
/* Dead letters, oldest first: the task record and the reason. */
int store_dead_scan(struct store_txn *t, store_task_fn fn, void *arg);

/* The ready queue for one priority level (1..10) in the order tasks became
 * ready. The scheduler merges levels with aging (effective priority =
 * priority + waited / aging_s). fn receives the id and ready_ms. */
typedef int (*store_ready_fn)(const char *id, int64_t ready_ms, void *arg);
int store_ready_scan(struct store_txn *t, int priority, store_ready_fn fn, void *arg);

/* Number of tasks in each state (from the index, O(states)). */
int store_state_counts(struct store_txn *t, uint64_t counts[TS__COUNT]);
/* Accepted and not yet final tasks of a source. */
int store_pending_count(struct store_txn *t, const char *source, uint64_t *out);

/* --- Retention ---------------------------------------------------------------- */

/* Delete what ended before cutoff_ms (coordinator.keep_final_s): a final task
 * that no task depends on any more, and a final workflow with all its steps
 * (unless a task outside it depends on a step). Each row of the task goes:
 * record, index entry, history, result, dead letter, its dependency edges.
 * Looks at no more than `budget` tasks, from where the last call stopped;
 * *removed counts the tasks deleted, *wrapped says that the scan reached the
 * end and starts again from the first task next time. */
int store_prune(struct store_txn *t, int64_t cutoff_ms, unsigned budget, unsigned *removed,
		bool *wrapped);

/* --- Timers ---------------------------------------------------------------- */

enum timer_kind { TIMER_RETRY = 1, TIMER_TIMEOUT = 2, TIMER_DEADLINE = 3 };
/* Earliest due time of any timer; EC_ENOTFOUND if none. */
int store_timer_next(struct store_txn *t, int64_t *due_ms);
/* Call fn for each timer due at or before now_ms, earliest first. The timer is
 * removed before fn is called; fn usually makes a transition. */
typedef int (*store_timer_fn)(struct store_txn *t, const char *id, enum timer_kind k,
			      void *arg);
int store_timers_due(struct store_txn *t, int64_t now_ms, store_timer_fn fn, void *arg);
/* Retry and timeout timers are set by store_transition from the transition's
 * due fields; deadlines by store_submit. */

/* --- Outbox ---------------------------------------------------------------- */

enum { OUTBOX_RETAIN = 1, OUTBOX_EXPIRE = 2 /* retained with result_ttl expiry */ };
/* Append a message to publish; seq increases strictly. */
int store_outbox_put(struct store_txn *t, const char *topic, const uint8_t *payload,
		     size_t len, unsigned flags, uint64_t *seq_out);
typedef int (*store_outbox_fn)(uint64_t seq, const char *topic, const uint8_t *payload,
			       size_t len, unsigned flags, void *arg);
/* Rows with seq > after, in order; fn may stop early by returning 1. */
int store_outbox_scan(struct store_txn *t, uint64_t after, store_outbox_fn fn, void *arg);
int store_outbox_del(struct store_txn *t, uint64_t seq);
int store_outbox_count(struct store_txn *t, uint64_t *out);
/* The seq of the last row ever put (0 if none). */
int store_outbox_last(struct store_txn *t, uint64_t *out);

/* --- Agents ---------------------------------------------------------------- */

/* The fleet's per-agent figures, kept across restarts; the bytes are opaque
 * to the store. store_agents_scan() passes borrowed views, in id order. */
int store_agent_put(struct store_txn *t, const char *agent, const uint8_t *blob, size_t len);
typedef int (*store_agent_fn)(const char *agent, const uint8_t *blob, size_t len, void *arg);
int store_agents_scan(struct store_txn *t, store_agent_fn fn, void *arg);

/* --- Maintenance ------------------------------------------------------------ */

/* Check every invariant (each task in exactly one state index entry, counts
 * match, no task ready/dispatched/running before all upstreams are final, the
 * ready queue holds exactly the ready tasks, workflow counts match their
 * steps, each timer matches its task). Returns 0, or EC_ESTORE with why
 * filled. O(tasks + edges): for tests and `edgecoordctl fsck`. */
int store_check(struct store_txn *t, char *why, size_t why_len);

/* Drop this process's mappings of the map's pages. Every page a transaction
 * reads stays mapped, so RSS grows to the whole data file over time, though
 * these are clean page-cache pages. MADV_DONTNEED on the read-only shared map
 * only unmaps them (the page cache keeps them; what is read next faults back
 * in, pointers into the map stay valid); the kernel may then reclaim them
 * like any cache. Safe at any time, a read transaction open or not. */
void store_unmap(struct store *s);

/* Map use: bytes in use and the current map size. */
int store_usage(struct store *s, size_t *used, size_t *map_size);

#endif
