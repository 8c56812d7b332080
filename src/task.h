/* SPDX-License-Identifier: MIT */
/*
 * task.h - the task model: what a submission is once decoded, the states a
 * task moves through, and which transitions are legal.
 *
 * A submission (a task, a workflow, or an array of tasks) is decoded from
 * JSON or CBOR by codec.h into struct submission. Everything in it is
 * normalized: ids are full ids ("wf:step"), workflow defaults are already
 * copied into steps, payload and when.equals are canonical CBOR (map keys
 * sorted, shortest integer encodings), so two submissions with the same
 * meaning compare equal field by field and serialize to the same bytes.
 *
 * Fields a user did not set keep the "unset" value documented on each field;
 * defaults from configuration are applied by the scheduler, not here, so a
 * config change does not turn a resubmission into a conflict.
 *
 * This file does no I/O and includes no third-party header.
 */
#ifndef EC_TASK_H
#define EC_TASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TASK_ID_MAX 100                      /* [A-Za-z0-9._-]{1,100} */
#define TASK_FULLID_MAX (2 * TASK_ID_MAX + 1) /* WORKFLOW:STEP */
#define TASK_DESC_MAX 1024

enum task_state {
	TS_ACCEPTED = 0,
	TS_WAITING,
	TS_READY,
	TS_DISPATCHED,
	TS_RUNNING,
	TS_SUCCEEDED,
	TS_FAILED,
	TS_RETRY_WAIT,
	TS_DEAD,
	TS_CANCELLED,
	TS_SKIPPED,
	TS__COUNT
};

enum run_if { RUN_IF_ALL_SUCCEEDED = 0, RUN_IF_ALL_DONE, RUN_IF_ANY_FAILED };
enum backoff { BACKOFF_UNSET = 0, BACKOFF_NONE, BACKOFF_FIXED, BACKOFF_EXPONENTIAL };
enum encoding { ENC_JSON = 0, ENC_CBOR = 1 };
enum sub_kind { SUB_TASK = 0, SUB_WORKFLOW, SUB_BATCH };

/* A retry policy as given. Unset numbers are -1, unset backoff BACKOFF_UNSET,
 * unset jitter -1; the scheduler fills them from [scheduler]. */
struct retry_policy {
	int32_t max_attempts;  /* >= 1, or -1 */
	uint8_t backoff;       /* enum backoff */
	int8_t jitter;         /* 0, 1, or -1 */
	int64_t initial_ms;    /* >= 0, or -1 */
	int64_t max_ms;        /* >= 0, or -1 */
};

struct kv {
	char *key;
	char *value;
};

/* One task (a plain task or a workflow step). All pointers are owned by the
 * struct and freed by task_spec_fini(). */
struct task_spec {
	char id[TASK_FULLID_MAX + 1];   /* full id */
	char type[TASK_ID_MAX + 1];
	char *workflow;                 /* owning workflow's id, or NULL */
	char *description;              /* or NULL */
	uint8_t *payload;               /* canonical CBOR, or NULL when absent */
	size_t payload_len;
	char **deps;                    /* full ids, in the order given */
	uint32_t ndeps;
	uint8_t priority;               /* 1..10; 0 = unset (default 5) */
	uint8_t run_if;                 /* enum run_if */
	int64_t timeout_ms;             /* > 0, or -1 = unset */
	int64_t deadline_ms;            /* epoch ms, or 0 = none */
	bool has_retry;
	struct retry_policy retry;
	char *agent;                    /* or NULL */
	struct kv *affinity;            /* sorted by key */
	uint32_t naffinity;
	char *when_task;                /* full id, or NULL when there is no `when` */
	char *when_field;
	uint8_t *when_equals;           /* canonical CBOR */
	size_t when_equals_len;
};

/* A decoded submission. For SUB_TASK, ntasks == 1 and id is the task's id;
 * for SUB_WORKFLOW, id is the workflow id and tasks are its steps (full ids);
 * for SUB_BATCH, id is empty. Tasks are in the order given. */
struct submission {
	enum sub_kind kind;
	enum encoding enc;
	char id[TASK_ID_MAX + 1];
	char *description;              /* the workflow's, or NULL */
	struct task_spec *tasks;
	uint32_t ntasks;
};

/* Why a submission was refused: code is an EC_E* rejection code, detail a
 * sentence naming the field (and, for a cycle, the ids on it), task_id the
 * offending task's full id or "" when none applies. */
struct sub_error {
	int code;
	char task_id[TASK_FULLID_MAX + 1];
	char detail[512];
};

/* Limits on untrusted submissions, from [limits]. */
struct limits {
	size_t max_message_bytes;       /* 1048576 */
	size_t max_payload_bytes;       /* 65536 */
	uint32_t max_tasks_per_submission; /* 10000 */
	uint32_t max_deps_per_task;     /* 256 */
	uint32_t max_depth;             /* 32 */
};

void limits_default(struct limits *lim);

const char *task_state_name(enum task_state s);
/* Name -> state, or -1. */
int task_state_parse(const char *name);
bool task_state_final(enum task_state s);
/* Legal edges of DESIGN 3.4 (plus cancel from any non-final state, and
 * dead -> ready for an operator's retry, skipped -> waiting/ready when a
 * retried upstream makes it judgeable again). */
bool task_transition_legal(enum task_state from, enum task_state to);

/* [A-Za-z0-9._-]{1,TASK_ID_MAX} */
bool task_id_valid(const char *s, size_t len);

void task_spec_fini(struct task_spec *t);
void submission_fini(struct submission *s);

#endif
