/* SPDX-License-Identifier: MIT */
/* test_task.c - states, every legal and illegal transition, ids. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "task.h"

static void test_state_names(void **state)
{
	(void)state;
	for (int s = 0; s < TS__COUNT; s++)
		assert_int_equal(task_state_parse(task_state_name(s)), s);
	assert_int_equal(task_state_parse("bogus"), -1);
	assert_true(task_state_final(TS_SUCCEEDED) && task_state_final(TS_DEAD) &&
		    task_state_final(TS_CANCELLED) && task_state_final(TS_SKIPPED));
	assert_false(task_state_final(TS_FAILED) || task_state_final(TS_RETRY_WAIT) ||
		     task_state_final(TS_RUNNING));
}

/* The whole matrix, written out independently of task.c's table. */
static void test_transition_matrix(void **state)
{
	(void)state;
	static const char *const legal[] = {
		"accepted>waiting", "accepted>ready", "accepted>skipped", "accepted>cancelled",
		"waiting>ready", "waiting>skipped", "waiting>cancelled", "waiting>dead",
		"ready>dispatched", "ready>cancelled", "ready>dead",
		"dispatched>running", "dispatched>succeeded", "dispatched>failed",
		"dispatched>ready", "dispatched>cancelled", "dispatched>dead",
		"running>succeeded", "running>failed", "running>ready", "running>cancelled",
		"running>dead",
		"failed>retry_wait", "failed>dead", "failed>cancelled",
		"retry_wait>ready", "retry_wait>cancelled", "retry_wait>dead",
		"dead>ready", "dead>waiting", "skipped>waiting", "skipped>ready",
	};
	int nlegal = 0;
	for (int from = 0; from < TS__COUNT; from++) {
		for (int to = 0; to < TS__COUNT; to++) {
			char edge[64];
			snprintf(edge, sizeof edge, "%s>%s", task_state_name(from),
				 task_state_name(to));
			int want = 0;
			for (size_t i = 0; i < sizeof legal / sizeof legal[0]; i++)
				want |= strcmp(legal[i], edge) == 0;
			if (task_transition_legal(from, to) != want)
				fail_msg("edge %s: want %d", edge, want);
			nlegal += want;
		}
	}
	assert_int_equal(nlegal, (int)(sizeof legal / sizeof legal[0]));
	/* nothing leaves succeeded or cancelled */
	for (int to = 0; to < TS__COUNT; to++) {
		assert_false(task_transition_legal(TS_SUCCEEDED, to));
		assert_false(task_transition_legal(TS_CANCELLED, to));
	}
	assert_false(task_transition_legal(TS__COUNT, TS_READY));
	assert_false(task_transition_legal(TS_READY, (enum task_state)-1));
}

static void test_ids(void **state)
{
	(void)state;
	char max[TASK_ID_MAX + 2];
	memset(max, 'a', sizeof max);
	assert_true(task_id_valid("a.b_c-D9", 8));
	assert_true(task_id_valid(max, TASK_ID_MAX));
	assert_false(task_id_valid(max, TASK_ID_MAX + 1));
	assert_false(task_id_valid("", 0));
	static const char *const bad[] = { "a/b", "a+b", "#", "wf:step", "a b", "é" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_false(task_id_valid(bad[i], strlen(bad[i])));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_state_names),
		cmocka_unit_test(test_transition_matrix),
		cmocka_unit_test(test_ids),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
