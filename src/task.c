/* SPDX-License-Identifier: MIT */
/*
 * task.c - states, the legal transitions between them, ids, and freeing the
 * model's structs (task.h). Decoding lives in codec.c, storage in store.c.
 */
#include <stdlib.h>
#include <string.h>

#include "task.h"

static const char *const state_names[TS__COUNT] = {
	[TS_ACCEPTED] = "accepted",     [TS_WAITING] = "waiting",
	[TS_READY] = "ready",           [TS_DISPATCHED] = "dispatched",
	[TS_RUNNING] = "running",       [TS_SUCCEEDED] = "succeeded",
	[TS_FAILED] = "failed",         [TS_RETRY_WAIT] = "retry_wait",
	[TS_DEAD] = "dead",             [TS_CANCELLED] = "cancelled",
	[TS_SKIPPED] = "skipped",
};

const char *task_state_name(enum task_state s)
{
	return (unsigned)s < TS__COUNT ? state_names[s] : "?";
}

int task_state_parse(const char *name)
{
	for (int i = 0; i < TS__COUNT; i++)
		if (strcmp(name, state_names[i]) == 0)
			return i;
	return -1;
}

bool task_state_final(enum task_state s)
{
	return s == TS_SUCCEEDED || s == TS_DEAD || s == TS_CANCELLED || s == TS_SKIPPED;
}

/*
 * The edges of DESIGN 3.4, one bit per target state. Beyond the drawing:
 * any non-final state may be cancelled; dispatched/running may go back to
 * ready when the agent is lost; dispatched may fail or succeed directly (a
 * result can overtake `started`); failed may be dead or retried; waiting may
 * become ready or skipped, or dead when its deadline passes (ready, retry_wait,
 * dispatched and running may too); an operator's retry takes dead -> ready
 * (or -> waiting, for one that died waiting and still has upstreams open) and lets a
 * skipped dependent be judged again (skipped -> waiting/ready/skipped).
 */
#define B(s) (1u << (s))
static const unsigned legal[TS__COUNT] = {
	[TS_ACCEPTED] = B(TS_WAITING) | B(TS_READY) | B(TS_SKIPPED) | B(TS_CANCELLED),
	[TS_WAITING] = B(TS_READY) | B(TS_SKIPPED) | B(TS_CANCELLED) | B(TS_DEAD),
	[TS_READY] = B(TS_DISPATCHED) | B(TS_CANCELLED) | B(TS_DEAD),
	[TS_DISPATCHED] = B(TS_RUNNING) | B(TS_SUCCEEDED) | B(TS_FAILED) | B(TS_READY) |
			  B(TS_CANCELLED) | B(TS_DEAD),
	[TS_RUNNING] = B(TS_SUCCEEDED) | B(TS_FAILED) | B(TS_READY) | B(TS_CANCELLED) |
		       B(TS_DEAD),
	[TS_SUCCEEDED] = 0,
	[TS_FAILED] = B(TS_RETRY_WAIT) | B(TS_DEAD) | B(TS_CANCELLED),
	[TS_RETRY_WAIT] = B(TS_READY) | B(TS_CANCELLED) | B(TS_DEAD),
	[TS_DEAD] = B(TS_READY) | B(TS_WAITING),
	[TS_CANCELLED] = 0,
	[TS_SKIPPED] = B(TS_WAITING) | B(TS_READY),
};
#undef B

bool task_transition_legal(enum task_state from, enum task_state to)
{
	if ((unsigned)from >= TS__COUNT || (unsigned)to >= TS__COUNT)
		return false;
	return (legal[from] >> to) & 1u;
}

bool task_id_valid(const char *s, size_t len)
{
	if (len == 0 || len > TASK_ID_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

void limits_default(struct limits *lim)
{
	lim->max_message_bytes = 1048576;
	lim->max_payload_bytes = 65536;
	lim->max_tasks_per_submission = 10000;
	lim->max_deps_per_task = 256;
	lim->max_depth = 32;
}

void task_spec_fini(struct task_spec *t)
{
	if (!t)
		return;
	free(t->workflow);
	free(t->description);
	free(t->payload);
	for (uint32_t i = 0; i < t->ndeps; i++)
		free(t->deps[i]);
	free(t->deps);
	for (uint32_t i = 0; i < t->naffinity; i++) {
		free(t->affinity[i].key);
		free(t->affinity[i].value);
	}
	free(t->affinity);
	free(t->agent);
	free(t->when_task);
	free(t->when_field);
	free(t->when_equals);
	memset(t, 0, sizeof *t);
}

void submission_fini(struct submission *s)
{
	if (!s)
		return;
	for (uint32_t i = 0; i < s->ntasks; i++)
		task_spec_fini(&s->tasks[i]);
	free(s->tasks);
	free(s->description);
	memset(s, 0, sizeof *s);
}
