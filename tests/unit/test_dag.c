/* SPDX-License-Identifier: MIT */
/* test_dag.c - run_if and when decided on plain arrays (no store). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "edgecoord/proto.h"
#include "dag.h"

static char *deps2[] = { "a", "b" };

static struct task_spec spec(uint8_t run_if)
{
	struct task_spec s;
	memset(&s, 0, sizeof s);
	strcpy(s.id, "c");
	s.deps = deps2;
	s.ndeps = 2;
	s.run_if = run_if;
	return s;
}

static enum dag_verdict judge2(const struct task_spec *s, enum task_state a, enum task_state b)
{
	struct dag_upstream u[2] = { { .state = a }, { .state = b } };
	char why[64];
	return dag_judge(s, u, why, sizeof why);
}

static void test_run_if(void **state)
{
	(void)state;
	struct task_spec s = spec(RUN_IF_ALL_SUCCEEDED);
	assert_int_equal(judge2(&s, TS_SUCCEEDED, TS_SUCCEEDED), DAG_RUN);
	assert_int_equal(judge2(&s, TS_SUCCEEDED, TS_SKIPPED), DAG_SKIP);
	assert_int_equal(judge2(&s, TS_DEAD, TS_SUCCEEDED), DAG_SKIP);
	assert_int_equal(judge2(&s, TS_SUCCEEDED, TS_CANCELLED), DAG_SKIP);

	s = spec(RUN_IF_ALL_DONE);
	assert_int_equal(judge2(&s, TS_DEAD, TS_CANCELLED), DAG_RUN);
	assert_int_equal(judge2(&s, TS_SKIPPED, TS_SUCCEEDED), DAG_RUN);

	s = spec(RUN_IF_ANY_FAILED);
	assert_int_equal(judge2(&s, TS_SUCCEEDED, TS_SUCCEEDED), DAG_SKIP);
	assert_int_equal(judge2(&s, TS_SKIPPED, TS_CANCELLED), DAG_SKIP);
	assert_int_equal(judge2(&s, TS_SUCCEEDED, TS_DEAD), DAG_RUN);

	/* No upstreams. */
	s = spec(RUN_IF_ALL_SUCCEEDED);
	s.ndeps = 0;
	assert_int_equal(dag_judge(&s, NULL, NULL, 0), DAG_RUN);
	s.run_if = RUN_IF_ALL_DONE;
	assert_int_equal(dag_judge(&s, NULL, NULL, 0), DAG_RUN);
	s.run_if = RUN_IF_ANY_FAILED;
	assert_int_equal(dag_judge(&s, NULL, NULL, 0), DAG_SKIP);
}

static uint8_t *verdict_map(const char *verdict, size_t *len)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 1);
	ec_cbor_w_text(&w, "verdict");
	ec_cbor_w_text(&w, verdict);
	assert_int_equal(ec_cbor_w_finish(&w), 0);
	return ec_cbor_w_take(&w, len);
}

static void test_when(void **state)
{
	(void)state;
	struct task_spec s = spec(RUN_IF_ALL_SUCCEEDED);
	size_t ok_len, bad_len, eq_len;
	uint8_t *ok = verdict_map("ok", &ok_len), *badr = verdict_map("bad", &bad_len);
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_text(&w, "ok");
	assert_int_equal(ec_cbor_w_finish(&w), 0);
	uint8_t *eq = ec_cbor_w_take(&w, &eq_len);
	s.when_task = "b";
	s.when_field = "verdict";
	s.when_equals = eq;
	s.when_equals_len = eq_len;
	assert_int_equal(dag_when_index(&s), 1);

	struct dag_upstream u[2] = { { .state = TS_SUCCEEDED },
				     { .state = TS_SUCCEEDED, .result = ok, .result_len = ok_len } };
	char why[64] = "";
	assert_int_equal(dag_judge(&s, u, why, sizeof why), DAG_RUN);
	u[1].result = badr;
	u[1].result_len = bad_len;
	assert_int_equal(dag_judge(&s, u, why, sizeof why), DAG_SKIP);
	assert_non_null(strstr(why, "when"));
	u[1].result = NULL; /* succeeded without a result */
	assert_int_equal(dag_judge(&s, u, why, sizeof why), DAG_SKIP);

	/* all_done runs past a dead upstream, but `when` needs a success. */
	s.run_if = RUN_IF_ALL_DONE;
	u[1].state = TS_DEAD;
	u[1].result = ok;
	u[1].result_len = ok_len;
	assert_int_equal(dag_judge(&s, u, why, sizeof why), DAG_SKIP);
	u[1].state = TS_SUCCEEDED;
	u[0].state = TS_DEAD;
	assert_int_equal(dag_judge(&s, u, why, sizeof why), DAG_RUN);

	s.when_task = "zzz"; /* not an upstream */
	assert_int_equal(dag_when_index(&s), -1);
	assert_int_equal(dag_judge(&s, u, why, sizeof why), DAG_SKIP);
	free(ok);
	free(badr);
	free(eq);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_run_if),
		cmocka_unit_test(test_when),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
