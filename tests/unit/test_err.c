/* SPDX-License-Identifier: MIT */
/* test_err.c - every rejection code has its contract name; errno passes through. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "edgecoord/err.h"

static void test_reject_names(void **state)
{
	(void)state;
	static const struct { int code; const char *name; } want[] = {
		{ EC_EMALFORMED, "malformed" }, { EC_EUNKNOWN_FIELD, "unknown_field" },
		{ EC_EINVALID_FIELD, "invalid_field" }, { EC_ETOO_LARGE, "too_large" },
		{ EC_ECYCLE, "cycle" }, { EC_EUNKNOWN_DEP, "unknown_dependency" },
		{ EC_EDUPLICATE_ID, "duplicate_id" }, { EC_ECONFLICT, "conflict" },
		{ EC_EQUOTA, "quota_exceeded" }, { EC_ESTORE_FULL, "store_full" },
		{ EC_EUNKNOWN_TASK, "unknown_task" }, { EC_EUNKNOWN_WORKFLOW, "unknown_workflow" },
		{ EC_EUNKNOWN_AGENT, "unknown_agent" }, { EC_ENOT_DEAD, "not_dead" },
	};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		assert_string_equal(ec_reject_code(want[i].code), want[i].name);
	assert_null(ec_reject_code(EC_ESTORE));
	assert_null(ec_reject_code(-ENOMEM));
}

static void test_strerror(void **state)
{
	(void)state;
	assert_string_equal(ec_strerror(0), "success");
	assert_string_equal(ec_strerror(-ENOENT), strerror(ENOENT));
	assert_string_equal(ec_strerror(EC_ECYCLE), "dependency cycle");
	assert_string_equal(ec_strerror(EC_E_BASE - 999), "unknown error");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reject_names),
		cmocka_unit_test(test_strerror),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
