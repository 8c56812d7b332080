/* SPDX-License-Identifier: MIT */
/*
 * test_resolve.c - the non-blocking lookup (src/resolve.c): an address comes
 * back from resolve_start() itself; a name ("localhost", from /etc/hosts, so
 * no DNS server is asked) is always left to the helper thread and comes back
 * from resolve_poll(); a failed lookup, a lookup given up, and resolvers
 * freed while their lookups run (ASan/LSan: nothing leaks, nothing is used
 * after it was freed).
 *
 * No name here needs the network: a name that does not exist would ask the
 * machine's DNS server, which a sandbox may not answer for seconds. A
 * failure is made with a port that is not a number instead: glibc refuses
 * it (AI_NUMERICSERV) before any lookup, but on the helper thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "resolve.h"

/* Poll until the lookup is over, for at most 5 s of real time. */
static enum resolve_status wait_lookup(struct resolve *r, struct addrinfo **out)
{
	struct timespec ms = {0, 1000000};
	for (int i = 0; i < 5000; i++) {
		enum resolve_status st = resolve_poll(r, out);
		if (st != RESOLVE_PENDING)
			return st;
		nanosleep(&ms, NULL);
	}
	return RESOLVE_PENDING;
}

static uint16_t port_of(const struct addrinfo *ai)
{
	if (ai->ai_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)ai->ai_addr)->sin6_port);
	return ntohs(((const struct sockaddr_in *)ai->ai_addr)->sin_port);
}

static void test_address_at_once(void **state)
{
	struct resolve *r;
	struct addrinfo *ai = NULL;
	assert_int_equal(resolve_new("127.0.0.1", "7000", &r), 0);
	assert_int_equal(resolve_start(r, &ai), RESOLVE_DONE);
	assert_non_null(ai);
	assert_int_equal(ai->ai_family, AF_INET);
	assert_int_equal(ai->ai_socktype, SOCK_STREAM);
	assert_int_equal(port_of(ai), 7000);
	assert_int_equal(((struct sockaddr_in *)ai->ai_addr)->sin_addr.s_addr,
			 htonl(INADDR_LOOPBACK));
	freeaddrinfo(ai);
	/* nothing was left running */
	assert_int_equal(resolve_poll(r, &ai), RESOLVE_FAILED);
	assert_string_equal(resolve_error(r), "no name lookup in progress");
	resolve_free(r);

	assert_int_equal(resolve_new("::1", "7001", &r), 0);
	ai = NULL;
	assert_int_equal(resolve_start(r, &ai), RESOLVE_DONE);
	assert_int_equal(ai->ai_family, AF_INET6);
	assert_int_equal(port_of(ai), 7001);
	freeaddrinfo(ai);
	resolve_free(r);
}

static void test_name_on_the_helper_thread(void **state)
{
	struct resolve *r;
	struct addrinfo *ai = NULL;
	assert_int_equal(resolve_new("localhost", "7002", &r), 0);
	/* never at once, however fast /etc/hosts answers */
	assert_int_equal(resolve_start(r, &ai), RESOLVE_PENDING);
	assert_null(ai);
	assert_int_equal(wait_lookup(r, &ai), RESOLVE_DONE);
	assert_non_null(ai);
	for (struct addrinfo *p = ai; p; p = p->ai_next) {
		assert_int_equal(p->ai_socktype, SOCK_STREAM);
		assert_int_equal(port_of(p), 7002);
		if (p->ai_family == AF_INET)
			assert_int_equal(ntohl(((struct sockaddr_in *)p->ai_addr)->sin_addr.s_addr) >> 24,
					 127);
		else
			assert_true(IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)p->ai_addr)->sin6_addr));
	}
	freeaddrinfo(ai);
	/* and again: the resolver is reused attempt after attempt */
	ai = NULL;
	assert_int_equal(resolve_start(r, &ai), RESOLVE_PENDING);
	assert_int_equal(wait_lookup(r, &ai), RESOLVE_DONE);
	freeaddrinfo(ai);
	resolve_free(r);
}

static void test_failure_comes_from_poll(void **state)
{
	struct resolve *r;
	struct addrinfo *ai = NULL;
	assert_int_equal(resolve_new("localhost", "http", &r), 0);
	assert_int_equal(resolve_start(r, &ai), RESOLVE_PENDING);
	assert_int_equal(wait_lookup(r, &ai), RESOLVE_FAILED);
	assert_null(ai);
	assert_string_equal(resolve_error(r), gai_strerror(EAI_NONAME));
	resolve_free(r);
}

/* A lookup given up (the caller's timeout) is cancelled or left to finish;
 * meanwhile a new attempt is refused with a reason, never started beside it. */
static void test_given_up(void **state)
{
	struct resolve *r;
	struct addrinfo *ai = NULL;
	struct timespec ms = {0, 1000000};
	assert_int_equal(resolve_new("localhost", "7003", &r), 0);
	assert_int_equal(resolve_start(r, &ai), RESOLVE_PENDING);
	resolve_cancel(r);
	assert_int_equal(resolve_poll(r, &ai), RESOLVE_FAILED);
	enum resolve_status st;
	int refused = 0;
	while ((st = resolve_start(r, &ai)) == RESOLVE_FAILED && refused < 5000) {
		assert_string_equal(resolve_error(r), "the last name lookup has not returned");
		refused++;
		nanosleep(&ms, NULL);
	}
	print_message("a new attempt was refused %d times\n", refused);
	assert_int_equal(st, RESOLVE_PENDING);
	assert_int_equal(wait_lookup(r, &ai), RESOLVE_DONE);
	freeaddrinfo(ai);
	resolve_free(r);
}

/* Resolvers freed with their lookups running: under ASan and LSan, glibc
 * writes into nothing freed, and what it wrote is reclaimed. */
static void test_free_while_running(void **state)
{
	for (int i = 0; i < 20; i++) {
		struct resolve *r;
		struct addrinfo *ai = NULL;
		assert_int_equal(resolve_new("localhost", "7004", &r), 0);
		assert_int_equal(resolve_start(r, &ai), RESOLVE_PENDING);
		resolve_free(r);
	}
	/* a later lookup reclaims those that have returned */
	struct resolve *r;
	struct addrinfo *ai = NULL;
	assert_int_equal(resolve_new("localhost", "7005", &r), 0);
	assert_int_equal(resolve_start(r, &ai), RESOLVE_PENDING);
	assert_int_equal(wait_lookup(r, &ai), RESOLVE_DONE);
	freeaddrinfo(ai);
	ai = NULL;
	assert_int_equal(resolve_start(r, &ai), RESOLVE_PENDING);
	assert_int_equal(wait_lookup(r, &ai), RESOLVE_DONE);
	freeaddrinfo(ai);
	resolve_free(r);
	resolve_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_address_at_once),
		cmocka_unit_test(test_name_on_the_helper_thread),
		cmocka_unit_test(test_failure_comes_from_poll),
		cmocka_unit_test(test_given_up),
		cmocka_unit_test(test_free_while_running),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
