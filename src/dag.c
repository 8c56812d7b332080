/* SPDX-License-Identifier: MIT */
/*
 * dag.c - run_if and when (dag.h). The counting of unfinished upstreams, the
 * edges and the propagation worklist live in store.c, next to the data they
 * change; this file only decides, so the rules of DESIGN 3.4 sit in one
 * place that needs no store to test.
 */
#include <stdio.h>
#include <string.h>

#include "codec.h"
#include "dag.h"

int dag_when_index(const struct task_spec *spec)
{
	if (!spec->when_task)
		return -1;
	for (uint32_t i = 0; i < spec->ndeps; i++)
		if (strcmp(spec->deps[i], spec->when_task) == 0)
			return (int)i;
	return -1;
}

static enum dag_verdict skip(char *why, size_t why_len, const char *fmt, const char *id)
{
	if (why && why_len)
		snprintf(why, why_len, fmt, id);
	return DAG_SKIP;
}

enum dag_verdict dag_judge(const struct task_spec *spec, const struct dag_upstream *ups,
			   char *why, size_t why_len)
{
	switch (spec->run_if) {
	case RUN_IF_ALL_DONE:
		break;
	case RUN_IF_ANY_FAILED: {
		bool any = false;
		for (uint32_t i = 0; i < spec->ndeps && !any; i++)
			any = ups[i].state == TS_DEAD;
		if (!any)
			return skip(why, why_len, "run_if any_failed: no upstream dead%s", "");
		break;
	}
	case RUN_IF_ALL_SUCCEEDED:
	default:
		for (uint32_t i = 0; i < spec->ndeps; i++)
			if (ups[i].state != TS_SUCCEEDED)
				return skip(why, why_len, "upstream %s did not succeed", spec->deps[i]);
		break;
	}
	if (spec->when_task) {
		int w = dag_when_index(spec);
		/* The codec refuses a `when` outside depends_on; a record that has one
		 * anyway cannot be satisfied. */
		if (w < 0 || ups[w].state != TS_SUCCEEDED || !ups[w].result)
			return skip(why, why_len, "when: %s has no result", spec->when_task);
		if (!codec_cbor_field_equals(ups[w].result, ups[w].result_len, spec->when_field,
					     spec->when_equals, spec->when_equals_len))
			return skip(why, why_len, "when: %s field differs", spec->when_task);
	}
	return DAG_RUN;
}
