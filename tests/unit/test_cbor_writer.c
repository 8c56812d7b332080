/* SPDX-License-Identifier: MIT */
/*
 * test_cbor_writer.c - the CBOR writer (ec_cbor_w, proto.h), byte for byte against the examples of
 * RFC 8949 Appendix A (the ones a writer of definite, shortest-form items
 * and float64 doubles can produce).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "edgecoord/proto.h"

/* Finish w and compare its bytes with the hex string want. */
static void expect_hex(struct ec_cbor_w *w, const char *want)
{
	assert_int_equal(ec_cbor_w_finish(w), 0);
	char got[1024] = "";
	for (size_t i = 0; i < w->len && 2 * i + 2 < sizeof got; i++)
		snprintf(got + 2 * i, 3, "%02x", w->buf[i]);
	if (strcmp(got, want) != 0)
		fail_msg("got %s, want %s", got, want);
	ec_cbor_w_fini(w);
	ec_cbor_w_init(w);
}

static void test_uint(void **state)
{
	(void)state;
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	static const struct {
		uint64_t v;
		const char *hex;
	} cases[] = {
		{ 0, "00" }, { 1, "01" }, { 10, "0a" }, { 23, "17" }, { 24, "1818" },
		{ 25, "1819" }, { 100, "1864" }, { 255, "18ff" }, { 256, "190100" },
		{ 1000, "1903e8" }, { 65535, "19ffff" }, { 65536, "1a00010000" },
		{ 1000000, "1a000f4240" }, { 4294967295u, "1affffffff" },
		{ 4294967296u, "1b0000000100000000" },
		{ 1000000000000u, "1b000000e8d4a51000" },
		{ UINT64_MAX, "1bffffffffffffffff" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		ec_cbor_w_uint(&w, cases[i].v);
		expect_hex(&w, cases[i].hex);
	}
	ec_cbor_w_fini(&w);
}

static void test_int(void **state)
{
	(void)state;
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	static const struct {
		int64_t v;
		const char *hex;
	} cases[] = {
		{ 0, "00" }, { 1000000, "1a000f4240" }, { -1, "20" }, { -10, "29" },
		{ -24, "37" }, { -25, "3818" }, { -100, "3863" }, { -1000, "3903e7" },
		{ INT64_MIN, "3b7fffffffffffffff" }, { INT64_MAX, "1b7fffffffffffffff" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		ec_cbor_w_int(&w, cases[i].v);
		expect_hex(&w, cases[i].hex);
	}
	ec_cbor_w_fini(&w);
}

static void test_double_and_simple(void **state)
{
	(void)state;
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_double(&w, 1.1);
	expect_hex(&w, "fb3ff199999999999a");
	ec_cbor_w_double(&w, 1.0e300);
	expect_hex(&w, "fb7e37e43c8800759c");
	ec_cbor_w_double(&w, -4.1);
	expect_hex(&w, "fbc010666666666666");
	ec_cbor_w_double(&w, 1.0); /* integral values stay float64 */
	expect_hex(&w, "fb3ff0000000000000");
	ec_cbor_w_bool(&w, false);
	expect_hex(&w, "f4");
	ec_cbor_w_bool(&w, true);
	expect_hex(&w, "f5");
	ec_cbor_w_null(&w);
	expect_hex(&w, "f6");
	ec_cbor_w_fini(&w);
}

static void test_strings(void **state)
{
	(void)state;
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_bytes(&w, NULL, 0);
	expect_hex(&w, "40");
	ec_cbor_w_bytes(&w, (const uint8_t *)"\x01\x02\x03\x04", 4);
	expect_hex(&w, "4401020304");
	ec_cbor_w_text(&w, "");
	expect_hex(&w, "60");
	ec_cbor_w_text(&w, "a");
	expect_hex(&w, "6161");
	ec_cbor_w_text(&w, "IETF");
	expect_hex(&w, "6449455446");
	ec_cbor_w_text(&w, "\"\\");
	expect_hex(&w, "62225c");
	ec_cbor_w_text(&w, "\xc3\xbc");
	expect_hex(&w, "62c3bc");
	ec_cbor_w_text(&w, "\xe6\xb0\xb4");
	expect_hex(&w, "63e6b0b4");
	ec_cbor_w_textn(&w, "abc", 2);
	expect_hex(&w, "626162");
	ec_cbor_w_text(&w, NULL);
	expect_hex(&w, "f6");
	/* a 24-byte string needs the one-byte length form */
	ec_cbor_w_text(&w, "abcdefghijklmnopqrstuvwx");
	expect_hex(&w, "78186162636465666768696a6b6c6d6e6f707172737475767778");
	ec_cbor_w_fini(&w);
}

static void test_containers(void **state)
{
	(void)state;
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_array(&w, 0);
	expect_hex(&w, "80");
	ec_cbor_w_array(&w, 3);
	for (int i = 1; i <= 3; i++)
		ec_cbor_w_uint(&w, i);
	expect_hex(&w, "83010203");
	ec_cbor_w_array(&w, 3);
	ec_cbor_w_uint(&w, 1);
	ec_cbor_w_array(&w, 2);
	ec_cbor_w_uint(&w, 2);
	ec_cbor_w_uint(&w, 3);
	ec_cbor_w_array(&w, 2);
	ec_cbor_w_uint(&w, 4);
	ec_cbor_w_uint(&w, 5);
	expect_hex(&w, "8301820203820405");
	ec_cbor_w_array(&w, 25);
	for (int i = 1; i <= 25; i++)
		ec_cbor_w_uint(&w, i);
	expect_hex(&w, "98190102030405060708090a0b0c0d0e0f101112131415161718181819");
	ec_cbor_w_map(&w, 0);
	expect_hex(&w, "a0");
	ec_cbor_w_map(&w, 2);
	ec_cbor_w_uint(&w, 1);
	ec_cbor_w_uint(&w, 2);
	ec_cbor_w_uint(&w, 3);
	ec_cbor_w_uint(&w, 4);
	expect_hex(&w, "a201020304");
	ec_cbor_w_map(&w, 2);
	ec_cbor_w_text(&w, "a");
	ec_cbor_w_uint(&w, 1);
	ec_cbor_w_text(&w, "b");
	ec_cbor_w_array(&w, 2);
	ec_cbor_w_uint(&w, 2);
	ec_cbor_w_uint(&w, 3);
	expect_hex(&w, "a26161016162820203");
	ec_cbor_w_array(&w, 2);
	ec_cbor_w_text(&w, "a");
	ec_cbor_w_map(&w, 1);
	ec_cbor_w_text(&w, "b");
	ec_cbor_w_text(&w, "c");
	expect_hex(&w, "826161a161626163");
	ec_cbor_w_map(&w, 5);
	const char *kv[] = { "a", "A", "b", "B", "c", "C", "d", "D", "e", "E" };
	for (int i = 0; i < 10; i++)
		ec_cbor_w_text(&w, kv[i]);
	expect_hex(&w, "a56161614161626142616361436164614461656145");
	ec_cbor_w_fini(&w);
}

static void test_raw_and_take(void **state)
{
	(void)state;
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_array(&w, 2);
	ec_cbor_w_raw(&w, (const uint8_t *)"\x82\x01\x02", 3);
	ec_cbor_w_raw(&w, NULL, 0); /* writes null */
	assert_int_equal(ec_cbor_w_finish(&w), 0);
	size_t n = 0;
	uint8_t *p = ec_cbor_w_take(&w, &n);
	assert_non_null(p);
	assert_int_equal(n, 5);
	assert_memory_equal(p, "\x82\x82\x01\x02\xf6", 5);
	free(p);
	/* take resets the writer; it is usable again, and fini accepts it */
	assert_null(w.buf);
	assert_int_equal(w.len, 0);
	ec_cbor_w_uint(&w, 7);
	expect_hex(&w, "07");
	ec_cbor_w_fini(&w);
	ec_cbor_w_fini(NULL);
	/* growth across many reallocations keeps every byte */
	ec_cbor_w_init(&w);
	for (int i = 0; i < 10000; i++)
		ec_cbor_w_uint(&w, 23);
	assert_int_equal(ec_cbor_w_finish(&w), 0);
	assert_int_equal(w.len, 10000);
	for (int i = 0; i < 10000; i++)
		assert_int_equal(w.buf[i], 0x17);
	ec_cbor_w_fini(&w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_uint),
		cmocka_unit_test(test_int),
		cmocka_unit_test(test_double_and_simple),
		cmocka_unit_test(test_strings),
		cmocka_unit_test(test_containers),
		cmocka_unit_test(test_raw_and_take),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
