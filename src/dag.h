/* SPDX-License-Identifier: MIT */
/*
 * dag.h - the pure decisions of the workflow engine: once every upstream of a
 * task is final, does the task run or is it skipped (DESIGN 3.4: run_if,
 * then when)? The store keeps the counts and the edges and calls this; dag.c
 * does no I/O and keeps no state, so it is tested on plain arrays.
 *
 * Thread-safe (pure).
 */
#ifndef EC_DAG_H
#define EC_DAG_H

#include <stddef.h>
#include <stdint.h>

#include "task.h"

/* What the judge needs of one upstream: its final state and, only for the
 * upstream named by `when` and only if it succeeded, its result (canonical
 * CBOR, borrowed; NULL when absent). */
struct dag_upstream {
	enum task_state state;
	const uint8_t *result;
	size_t result_len;
};

enum dag_verdict { DAG_RUN = 0, DAG_SKIP = 1 };

/*
 * Judge spec given ups[i] for spec->deps[i] (spec->ndeps entries, all final;
 * a non-final upstream counts as not succeeded and not dead). With no
 * upstreams, all_succeeded and all_done run and any_failed is skipped. On
 * DAG_SKIP, why (if non-NULL) receives a short reason for the history.
 */
enum dag_verdict dag_judge(const struct task_spec *spec, const struct dag_upstream *ups,
			   char *why, size_t why_len);

/* Index of spec->when_task in spec->deps, or -1 (no `when`, or not an upstream). */
int dag_when_index(const struct task_spec *spec);

#endif
