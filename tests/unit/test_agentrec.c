/* SPDX-License-Identifier: MIT */
/* test_agentrec.c - the stored agent record: round trip, every truncation
 * and a wrong version refused, the drained flag and version 2, the median. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "agentrec.h"
#include "edgecoord/err.h"

static void test_round_trip(void **state)
{
	(void)state;
	struct agentrec r = { .slots = 4, .last_seen_ms = 1795309541299, .ok = 17, .failed = 2,
			      .ndur = 3, .dur = { 30, 10, 20 } };
	strcpy(r.state, "draining");
	strcpy(r.caps, "echo,sleep");
	uint8_t buf[AGENTREC_MAX];
	size_t n = agentrec_encode(&r, buf);
	struct agentrec back;
	assert_int_equal(agentrec_decode(buf, n, &back), 0);
	assert_string_equal(back.state, "draining");
	assert_string_equal(back.caps, "echo,sleep");
	assert_int_equal(back.slots, 4);
	assert_int_equal(back.last_seen_ms, 1795309541299);
	assert_int_equal(back.ok, 17);
	assert_int_equal(back.failed, 2);
	assert_int_equal(back.ndur, 3);
	assert_memory_equal(back.dur, r.dur, 3 * sizeof r.dur[0]);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(agentrec_decode(buf, i, &back), EC_EMALFORMED);
	buf[n] = 0;
	assert_int_equal(agentrec_decode(buf, n + 1, &back), EC_EMALFORMED);
	buf[0] = 1; /* the first version's layout is not read as this one */
	assert_int_equal(agentrec_decode(buf, n, &back), EC_EMALFORMED);
}

/* Version 3 added the drained flag in a last byte; version 2 records (no
 * flags) are still read, as not drained. */
static void test_drained(void **state)
{
	(void)state;
	struct agentrec r = { .slots = 2, .ndur = 1, .dur = { 5 }, .drained = true };
	strcpy(r.state, "offline");
	uint8_t buf[AGENTREC_MAX];
	size_t n = agentrec_encode(&r, buf);
	struct agentrec back;
	assert_int_equal(agentrec_decode(buf, n, &back), 0);
	assert_true(back.drained);
	assert_int_equal(back.dur[0], 5);
	buf[n - 1] = 0x80; /* a flag this version does not know */
	assert_int_equal(agentrec_decode(buf, n, &back), EC_EMALFORMED);
	buf[0] = 2; /* the same bytes without the flags byte: version 2 */
	assert_int_equal(agentrec_decode(buf, n - 1, &back), 0);
	assert_false(back.drained);
	assert_int_equal(back.slots, 2);
	assert_int_equal(agentrec_decode(buf, n, &back), EC_EMALFORMED);
}

static void test_full_record(void **state)
{
	(void)state;
	struct agentrec r = { .ndur = AGENTREC_DUR_MAX, .drained = true };
	memset(r.state, 's', AGENTREC_STATE_MAX);
	memset(r.caps, 'c', AGENTREC_CAPS_MAX);
	for (int i = 0; i < AGENTREC_DUR_MAX; i++)
		r.dur[i] = (uint32_t)i;
	uint8_t buf[AGENTREC_MAX];
	size_t n = agentrec_encode(&r, buf);
	assert_int_equal(n, AGENTREC_MAX);
	struct agentrec back;
	assert_int_equal(agentrec_decode(buf, n, &back), 0);
	assert_int_equal(strlen(back.caps), AGENTREC_CAPS_MAX);
}

static void test_median(void **state)
{
	(void)state;
	static const uint32_t v[] = { 9, 1, 5, 7, 3 };
	assert_int_equal(agentrec_median(v, 5), 5);
	assert_int_equal(agentrec_median(v, 2), 9); /* upper median of {9, 1} */
	assert_int_equal(agentrec_median(v, 0), 0);
	assert_int_equal(v[0], 9); /* not sorted in place */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_drained),
		cmocka_unit_test(test_full_record),
		cmocka_unit_test(test_median),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
