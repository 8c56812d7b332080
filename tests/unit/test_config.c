/* SPDX-License-Identifier: MIT */
/*
 * test_config.c - the configuration: defaults, every key, every kind of
 * error with its FILE:LINE, inih's line limit, flags over the file, cross-key
 * checks, files that cannot be read, the dump round trip, and that
 * docs/config.md matches the table (EC_UPDATE_DOCS=1 rewrites it).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"
#include "edgecoord/err.h"
#include "log.h"

struct fx {
	char dir[64];
	char path[128];
	struct config c;
	struct config_errors e;
};

static int setup(void **state)
{
	struct fx *fx = calloc(1, sizeof *fx);
	if (!fx)
		return -1;
	snprintf(fx->dir, sizeof fx->dir, "/tmp/ec-test-config-XXXXXX");
	if (!mkdtemp(fx->dir))
		return -1;
	snprintf(fx->path, sizeof fx->path, "%s/ec.ini", fx->dir);
	config_defaults(&fx->c);
	config_errors_init(&fx->e);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fx *fx = *state;
	config_fini(&fx->c);
	config_errors_fini(&fx->e);
	unlink(fx->path);
	rmdir(fx->dir);
	free(fx);
	return 0;
}

static void write_file(struct fx *fx, const char *text)
{
	FILE *f = fopen(fx->path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
	assert_int_equal(fclose(f), 0);
}

static int load(struct fx *fx, const char *text)
{
	write_file(fx, text);
	return config_load(&fx->c, fx->path, &fx->e);
}

/* Whether some stored message is exactly "PATH:LINE: rest". */
static bool has_msg(struct fx *fx, int line, const char *rest)
{
	char want[600];
	if (line > 0)
		snprintf(want, sizeof want, "%s:%d: %s", fx->path, line, rest);
	else
		snprintf(want, sizeof want, "%s", rest);
	for (size_t i = 0; i < fx->e.n; i++)
		if (strcmp(fx->e.msgs[i].text, want) == 0)
			return true;
	fprintf(stderr, "missing message: %s\nhave:\n", want);
	config_errors_print(&fx->e, stderr);
	return false;
}

static void test_defaults(void **state)
{
	struct fx *fx = *state;
	struct config *c = &fx->c;
	struct limits lim, want;

	assert_int_equal(config_finish(c, &fx->e), 0);
	assert_int_equal(fx->e.nerrors + fx->e.nwarnings, 0);
	assert_non_null(c->coordinator.node_id);
	assert_true(task_id_valid(c->coordinator.node_id, strlen(c->coordinator.node_id)));
	char cid[200];
	snprintf(cid, sizeof cid, "edgecoord-%s", c->coordinator.node_id);
	assert_string_equal(c->mqtt.client_id, cid);
	assert_string_equal(c->coordinator.data_dir, "./edgecoord-data");
	assert_int_equal(c->coordinator.map_size_bytes, 64LL << 20);
	assert_int_equal(c->coordinator.max_map_size_bytes, 4096LL << 20);
	assert_string_equal(c->mqtt.uri, "tcp://127.0.0.1:1883");
	assert_string_equal(c->mqtt.topic_prefix, "edgecoord");
	assert_null(c->mqtt.username);
	assert_null(c->mqtt.password);
	assert_null(c->mqtt.ca_file);
	assert_int_equal(c->mqtt.keepalive_s, 30);
	assert_int_equal(c->mqtt.result_ttl_s, 86400);
	assert_int_equal(c->mqtt.status_events, CONFIG_STATUS_MILESTONES);
	assert_int_equal(c->mqtt.outbox_max, 100000);
	assert_string_equal(c->agents.listen.host, "0.0.0.0");
	assert_int_equal(c->agents.listen.port, 7883);
	assert_null(c->agents.ca_file);
	assert_int_equal(c->agents.heartbeat_ms, 1000);
	assert_int_equal(c->agents.heartbeat_misses, 3);
	assert_int_equal(c->agents.max_frame, 65536);
	assert_int_equal(c->agents.handshake_timeout_ms, 5000);
	assert_int_equal(c->scheduler.routing, ROUTE_LEAST_LOADED);
	assert_int_equal(c->scheduler.aging_ms, 30000);
	assert_int_equal(c->scheduler.task_timeout_ms, 3600000);
	assert_int_equal(c->scheduler.max_attempts, 3);
	assert_int_equal(c->scheduler.backoff, BACKOFF_EXPONENTIAL);
	assert_int_equal(c->scheduler.initial_delay_ms, 1000);
	assert_int_equal(c->scheduler.max_delay_ms, 300000);
	assert_true(c->scheduler.jitter);
	assert_int_equal(c->scheduler.max_pending_per_source, 0);
	assert_int_equal(c->scheduler.breaker_failures, 5);
	assert_int_equal(c->scheduler.breaker_cooldown_ms, 30000);
	assert_int_equal(c->concurrency.n, 0);
	assert_int_equal(c->log.level, LOG_LVL_INFO);
	assert_false(c->log.syslog);
	config_limits(c, &lim);
	limits_default(&want);
	assert_int_equal(lim.max_message_bytes, want.max_message_bytes);
	assert_int_equal(lim.max_payload_bytes, want.max_payload_bytes);
	assert_int_equal(lim.max_tasks_per_submission, want.max_tasks_per_submission);
	assert_int_equal(lim.max_deps_per_task, want.max_deps_per_task);
	assert_int_equal(lim.max_depth, want.max_depth);
	assert_false(config_is_set(c, "mqtt", "uri"));
}

static void test_every_key(void **state)
{
	struct fx *fx = *state;
	struct config *c = &fx->c;

	assert_int_equal(load(fx,
		"; every key, none at its default\n"
		"[coordinator]\n"
		"node_id = gw-01\n"
		"data_dir = /var/lib/ec\n"
		"map_size_mb = 16\n"
		"max_map_size_mb = 512\n"
		"[mqtt]\n"
		"uri = ssl://broker.example:8883\n"
		"client_id = coord one\n"
		"topic_prefix = site/7\n"
		"username = u\n"
		"password = p#w ; an inline comment\n"
		"ca_file = m-ca.pem\n"
		"cert_file = m.crt\n"
		"key_file = m.key\n"
		"keepalive_s = 10\n"
		"result_ttl_s = 0\n"
		"status_events = all\n"
		"outbox_max = 5\n"
		"[agents]\n"
		"listen = [::1]:9000\n"
		"ca_file = a-ca.pem\n"
		"cert_file = a.crt\n"
		"key_file = a.key\n"
		"heartbeat_ms = 250\n"
		"heartbeat_misses = 5\n"
		"max_frame = 2048\n"
		"handshake_timeout_ms = 2s\n"
		"[scheduler]\n"
		"routing = round_robin\n"
		"aging_s = 1.5\n"
		"task_timeout_s = 2m\n"
		"max_attempts = 7\n"
		"backoff = fixed\n"
		"initial_delay_s = 250ms\n"
		"max_delay_s = 1h\n"
		"jitter = no\n"
		"max_pending_per_source = 100\n"
		"breaker_failures = 0\n"
		"breaker_cooldown_s = 5\n"
		"[limits]\n"
		"max_message_bytes = 4096\n"
		"max_payload_bytes = 1024\n"
		"max_tasks_per_submission = 10\n"
		"max_deps_per_task = 3\n"
		"max_depth = 4\n"
		"[concurrency]\n"
		"gpu = 1\n"
		"sha256 = 12\n"
		"[log]\n"
		"level = DEBUG\n"
		"syslog = yes\n"), 0);
	assert_int_equal(config_finish(c, &fx->e), 0);
	assert_int_equal(fx->e.nerrors + fx->e.nwarnings, 0);
	assert_string_equal(c->coordinator.node_id, "gw-01");
	assert_string_equal(c->coordinator.data_dir, "/var/lib/ec");
	assert_int_equal(c->coordinator.map_size_bytes, 16LL << 20);
	assert_int_equal(c->coordinator.max_map_size_bytes, 512LL << 20);
	assert_string_equal(c->mqtt.uri, "ssl://broker.example:8883");
	assert_string_equal(c->mqtt.client_id, "coord one");
	assert_string_equal(c->mqtt.topic_prefix, "site/7");
	assert_string_equal(c->mqtt.username, "u");
	assert_string_equal(c->mqtt.password, "p#w");
	assert_string_equal(c->mqtt.ca_file, "m-ca.pem");
	assert_string_equal(c->mqtt.cert_file, "m.crt");
	assert_string_equal(c->mqtt.key_file, "m.key");
	assert_int_equal(c->mqtt.keepalive_s, 10);
	assert_int_equal(c->mqtt.result_ttl_s, 0);
	assert_int_equal(c->mqtt.status_events, CONFIG_STATUS_ALL);
	assert_int_equal(c->mqtt.outbox_max, 5);
	assert_string_equal(c->agents.listen.host, "::1");
	assert_int_equal(c->agents.listen.port, 9000);
	assert_string_equal(c->agents.ca_file, "a-ca.pem");
	assert_string_equal(c->agents.cert_file, "a.crt");
	assert_string_equal(c->agents.key_file, "a.key");
	assert_int_equal(c->agents.heartbeat_ms, 250);
	assert_int_equal(c->agents.heartbeat_misses, 5);
	assert_int_equal(c->agents.max_frame, 2048);
	assert_int_equal(c->agents.handshake_timeout_ms, 2000);
	assert_int_equal(c->scheduler.routing, ROUTE_ROUND_ROBIN);
	assert_int_equal(c->scheduler.aging_ms, 1500);
	assert_int_equal(c->scheduler.task_timeout_ms, 120000);
	assert_int_equal(c->scheduler.max_attempts, 7);
	assert_int_equal(c->scheduler.backoff, BACKOFF_FIXED);
	assert_int_equal(c->scheduler.initial_delay_ms, 250);
	assert_int_equal(c->scheduler.max_delay_ms, 3600000);
	assert_false(c->scheduler.jitter);
	assert_int_equal(c->scheduler.max_pending_per_source, 100);
	assert_int_equal(c->scheduler.breaker_failures, 0);
	assert_int_equal(c->scheduler.breaker_cooldown_ms, 5000);
	assert_int_equal(c->limits.max_message_bytes, 4096);
	assert_int_equal(c->limits.max_payload_bytes, 1024);
	assert_int_equal(c->limits.max_tasks_per_submission, 10);
	assert_int_equal(c->limits.max_deps_per_task, 3);
	assert_int_equal(c->limits.max_depth, 4);
	assert_int_equal(c->concurrency.n, 2);
	assert_int_equal(config_concurrency_max(c, "gpu"), 1);
	assert_int_equal(config_concurrency_max(c, "sha256"), 12);
	assert_int_equal(config_concurrency_max(c, "echo"), 0);
	assert_int_equal(c->log.level, LOG_LVL_DEBUG);
	assert_true(c->log.syslog);
	assert_true(config_is_set(c, "mqtt", "uri"));
	assert_true(config_is_set(c, "concurrency", "gpu"));
	assert_false(config_is_set(c, "concurrency", "echo"));

	struct limits lim;
	config_limits(c, &lim);
	assert_int_equal(lim.max_message_bytes, 4096);
	assert_int_equal(lim.max_payload_bytes, 1024);
	assert_int_equal(lim.max_tasks_per_submission, 10);
	assert_int_equal(lim.max_deps_per_task, 3);
	assert_int_equal(lim.max_depth, 4);
}

static void test_errors_name_file_and_line(void **state)
{
	struct fx *fx = *state;

	assert_int_equal(load(fx,
		"stray = 1\n"                  /* 1 */
		"[mqtt]\n"                     /* 2 */
		"keepalive_s = 0\n"            /* 3 */
		"colour = blue\n"              /* 4 */
		"[mqqt]\n"                     /* 5 */
		"uri = tcp://x\n"              /* 6: in an unknown section: not reported again */
		"[log]\n"                      /* 7 */
		"level = loud\n"               /* 8 */
		"syslog = maybe\n"             /* 9 */
		"just words\n"                 /* 10 */
		"[scheduler\n"                 /* 11 */
		"[agents] junk\n"              /* 12 */
		"listen = nohost\n"            /* 13 */
		"heartbeat_ms = 1.5.2\n"       /* 14 */
		"max_frame = 12k\n"            /* 15 */
		"[mqtt]\n"                     /* 16 */
		"topic_prefix = a/+/b\n"       /* 17 */
		"uri = http://x\n"             /* 18 */
		"data_dir = /x\n"),            /* 19: a key of another section */
		EC_ECONFIG);
	assert_true(has_msg(fx, 1, "key 'stray' outside of any [section]"));
	assert_true(has_msg(fx, 3, "[mqtt] keepalive_s: '0' is out of range 1..65535"));
	assert_true(has_msg(fx, 4, "unknown key 'colour' in [mqtt]"));
	assert_true(has_msg(fx, 5, "unknown section [mqqt]"));
	assert_true(has_msg(fx, 8, "[log] level: 'loud' is not one of error, warn, info, debug"));
	assert_true(has_msg(fx, 9, "[log] syslog: 'maybe' is not a boolean "
			       "(true/false, yes/no, on/off, 1/0)"));
	assert_true(has_msg(fx, 10, "expected KEY = VALUE"));
	assert_true(has_msg(fx, 11, "section header without ]"));
	assert_true(has_msg(fx, 12, "unexpected text after ]"));
	assert_true(has_msg(fx, 13, "[agents] listen: 'nohost' is not HOST:PORT or [IPv6]:PORT "
				"(port 1..65535)"));
	assert_true(has_msg(fx, 14, "[agents] heartbeat_ms: '1.5.2' is not a duration (a number "
				"in milliseconds, or with a unit ms, s, m, h)"));
	assert_true(has_msg(fx, 15, "[agents] max_frame: '12k' is not an integer"));
	assert_true(has_msg(fx, 17, "[mqtt] topic_prefix: 'a/+/b' contains a wildcard (+ or #)"));
	assert_true(has_msg(fx, 18, "[mqtt] uri: 'http://x' does not start with tcp://, ssl://, "
				"mqtt:// or mqtts://"));
	assert_true(has_msg(fx, 19, "unknown key 'data_dir' in [mqtt]"));
	assert_int_equal(fx->e.nerrors, 15);
	assert_int_equal(fx->e.nwarnings, 0);
	/* Bad values leave the defaults in place. */
	assert_int_equal(fx->c.mqtt.keepalive_s, 30);
	assert_string_equal(fx->c.mqtt.uri, "tcp://127.0.0.1:1883");
}

static void test_long_line(void **state)
{
	struct fx *fx = *state;
	char text[1200], v[400];

	/* 300 characters: refused with its line, and parsing goes on after it. */
	memset(v, 'a', 300 - strlen("data_dir = "));
	v[300 - strlen("data_dir = ")] = '\0';
	snprintf(text, sizeof text, "[coordinator]\n\ndata_dir = %s\nmap_size_mb = 8\n", v);
	assert_int_equal(load(fx, text), EC_ECONFIG);
	assert_true(has_msg(fx, 3, "line is longer than 197 characters (300)"));
	assert_int_equal(fx->e.nerrors, 1);
	assert_string_equal(fx->c.coordinator.data_dir, "./edgecoord-data");
	assert_int_equal(fx->c.coordinator.map_size_bytes, 8 << 20);

	/* The edge: 197 characters pass whole (also with CRLF), 198 do not. */
	config_errors_fini(&fx->e);
	size_t vlen = CONFIG_LINE_MAX - strlen("data_dir = ");
	memset(v, 'b', vlen);
	v[vlen] = '\0';
	snprintf(text, sizeof text, "[coordinator]\r\ndata_dir = %s\r\n", v);
	assert_int_equal(load(fx, text), 0);
	assert_int_equal(strlen(fx->c.coordinator.data_dir), vlen);
	snprintf(text, sizeof text, "[coordinator]\ndata_dir = %sb\n", v);
	assert_int_equal(load(fx, text), EC_ECONFIG);
	assert_true(has_msg(fx, 2, "line is longer than 197 characters (198)"));
	/* A long comment is still a long line: inih would read its tail as a line. */
	config_errors_fini(&fx->e);
	snprintf(text, sizeof text, "[log]\n; %s%s\n", v, v);
	assert_int_equal(load(fx, text), EC_ECONFIG);
	assert_int_equal(fx->e.nerrors, 1);
}

static void test_syntax_details(void **state)
{
	struct fx *fx = *state;
	const char text[] = "\xEF\xBB\xBF[mqtt]\n"
			    "  username = indented\n"   /* not a continuation */
			    "password: colon\n"
			    "# hash comment\n"
			    "   ; indented comment\n"
			    "  [ log ]\n"
			    "level = warn ; comment\n"
			    "[mqtt]\n"
			    "ca_file =\n"               /* empty: unset */
			    "\n";

	assert_int_equal(load(fx, text), 0);
	assert_string_equal(fx->c.mqtt.username, "indented");
	assert_string_equal(fx->c.mqtt.password, "colon");
	assert_int_equal(fx->c.log.level, LOG_LVL_WARN);
	assert_null(fx->c.mqtt.ca_file);

	/* An indented line without '=' after a key is an error, not a
	 * continuation of the value. */
	config_errors_fini(&fx->e);
	assert_int_equal(load(fx, "[mqtt]\nusername = a\n  more\n"), EC_ECONFIG);
	assert_true(has_msg(fx, 3, "expected KEY = VALUE"));
	assert_string_equal(fx->c.mqtt.username, "a");

	/* A NUL byte is refused with its line. */
	config_errors_fini(&fx->e);
	static const char nul[] = "[mqtt]\nusername = a\0b\nkeepalive_s = 9\n";
	assert_int_equal(config_load_buffer(&fx->c, "mem.ini", nul, sizeof nul - 1, &fx->e),
			 EC_ECONFIG);
	assert_string_equal(fx->e.msgs[0].text, "mem.ini:2: line contains a NUL byte");
	assert_int_equal(fx->c.mqtt.keepalive_s, 9);

	/* A required string may not be empty. */
	config_errors_fini(&fx->e);
	assert_int_equal(load(fx, "[coordinator]\ndata_dir =\n"), EC_ECONFIG);
	assert_true(has_msg(fx, 2, "[coordinator] data_dir: may not be empty"));
}

static void test_duplicate_key_warns(void **state)
{
	struct fx *fx = *state;

	assert_int_equal(load(fx, "[mqtt]\nkeepalive_s = 10\n[log]\n[mqtt]\nkeepalive_s = 20\n"
			     "[concurrency]\ngpu = 1\ngpu = 2\n"), 0);
	assert_int_equal(fx->e.nerrors, 0);
	assert_int_equal(fx->e.nwarnings, 2);
	assert_true(has_msg(fx, 5, "warning: [mqtt] keepalive_s given again (line 2); "
			       "the last one counts"));
	assert_true(has_msg(fx, 8, "warning: [concurrency] gpu given again (line 7); "
			       "the last one counts"));
	assert_int_equal(fx->c.mqtt.keepalive_s, 20);
	assert_int_equal(config_concurrency_max(&fx->c, "gpu"), 2);
}

static int set(struct config *c, const char *sec, const char *key, const char *v)
{
	char err[400];
	int rc = config_set(c, sec, key, v, err, sizeof err);
	if (rc == 0)
		assert_string_equal(err, "");
	else
		assert_true(strlen(err) > 0);
	return rc;
}

static void test_bounds(void **state)
{
	struct fx *fx = *state;
	struct config *c = &fx->c;
	char err[400];

	assert_int_equal(set(c, "mqtt", "keepalive_s", "1"), 0);
	assert_int_equal(set(c, "mqtt", "keepalive_s", "65535"), 0);
	assert_int_equal(set(c, "mqtt", "keepalive_s", "65536"), EC_ECONFIG);
	assert_int_equal(set(c, "mqtt", "keepalive_s", "-1"), EC_ECONFIG);
	assert_int_equal(set(c, "mqtt", "keepalive_s", "99999999999999999999999"), EC_ECONFIG);
	assert_int_equal(set(c, "mqtt", "keepalive_s", ""), EC_ECONFIG);
	assert_int_equal(set(c, "mqtt", "keepalive_s", "1.5"), EC_ECONFIG); /* whole seconds */
	assert_int_equal(c->mqtt.keepalive_s, 65535);
	assert_int_equal(set(c, "mqtt", "result_ttl_s", "4294967295"), 0);
	assert_int_equal(set(c, "mqtt", "result_ttl_s", "4294967296"), EC_ECONFIG);
	assert_int_equal(set(c, "agents", "heartbeat_ms", "49"), EC_ECONFIG);
	assert_int_equal(set(c, "agents", "heartbeat_ms", "50"), 0);
	assert_int_equal(set(c, "agents", "heartbeat_ms", "10m"), 0);
	assert_int_equal(c->agents.heartbeat_ms, 600000);
	assert_int_equal(set(c, "agents", "heartbeat_ms", "601s"), EC_ECONFIG);
	assert_int_equal(set(c, "agents", "max_frame", "1023"), EC_ECONFIG);
	assert_int_equal(set(c, "coordinator", "map_size_mb", "0"), EC_ECONFIG);
	assert_int_equal(set(c, "coordinator", "max_map_size_mb", "1048576"), 0);
	assert_int_equal(c->coordinator.max_map_size_bytes, 1LL << 40);
	assert_int_equal(set(c, "scheduler", "max_attempts", "0"), EC_ECONFIG);
	assert_int_equal(set(c, "scheduler", "aging_s", "0"), 0);
	assert_int_equal(set(c, "scheduler", "task_timeout_s", "0.999"), EC_ECONFIG);
	assert_int_equal(set(c, "scheduler", "task_timeout_s", "30d"), EC_ECONFIG);
	assert_int_equal(set(c, "scheduler", "max_delay_s", "604800"), 0);
	assert_int_equal(set(c, "scheduler", "max_delay_s", "604800.001"), EC_ECONFIG);
	assert_int_equal(set(c, "limits", "max_message_bytes", "268435456"), EC_ECONFIG);
	assert_int_equal(config_set(c, "mqtt", "keepalive_s", "0", err, sizeof err), EC_ECONFIG);
	assert_string_equal(err, "[mqtt] keepalive_s: '0' is out of range 1..65535");
	assert_int_equal(config_set(c, "scheduler", "aging_s", "86401", err, sizeof err),
			 EC_ECONFIG);
	assert_string_equal(err, "[scheduler] aging_s: '86401' is out of range 0..86400");
	assert_int_equal(config_set(c, "mqtt", "nope", "1", err, sizeof err), EC_ECONFIG);
	assert_string_equal(err, "unknown key [mqtt] nope");
	assert_int_equal(config_set(c, "nope", "uri", "1", err, sizeof err), EC_ECONFIG);
}

static void test_durations(void **state)
{
	struct fx *fx = *state;
	struct config *c = &fx->c;
	static const struct { const char *v; int64_t ms; } ok[] = {
		{ "0", 0 }, { "1.5", 1500 }, { "0.0005", 1 }, { "0.0004", 0 }, { "250ms", 250 },
		{ "2s", 2000 }, { "1.25m", 75000 }, { "1h", 3600000 }, { "86400", 86400000 },
	};
	static const char *const bad[] = { ".5", "1.", "-1", "1 s", "1S", "1d", "s", "1e3",
					   "0x10", "+1", "1.1234567891" };

	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		assert_int_equal(set(c, "scheduler", "aging_s", ok[i].v), 0);
		assert_int_equal(c->scheduler.aging_ms, ok[i].ms);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_int_equal(set(c, "scheduler", "aging_s", bad[i]), EC_ECONFIG);
	/* A key in ms takes ms; fractions round. */
	assert_int_equal(set(c, "agents", "handshake_timeout_ms", "150.5"), 0);
	assert_int_equal(c->agents.handshake_timeout_ms, 151);
}

static void test_enums_and_booleans(void **state)
{
	struct fx *fx = *state;
	struct config *c = &fx->c;
	static const char *const yes[] = { "true", "yes", "on", "1", "TRUE", "Yes" };
	static const char *const no[] = { "false", "no", "off", "0", "False", "NO" };

	for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
		assert_int_equal(set(c, "log", "syslog", yes[i]), 0);
		assert_true(c->log.syslog);
		assert_int_equal(set(c, "log", "syslog", no[i]), 0);
		assert_false(c->log.syslog);
	}
	assert_int_equal(set(c, "log", "syslog", "2"), EC_ECONFIG);
	assert_int_equal(set(c, "log", "syslog", "y"), EC_ECONFIG);

	assert_int_equal(set(c, "scheduler", "backoff", "none"), 0);
	assert_int_equal(c->scheduler.backoff, BACKOFF_NONE);
	assert_int_equal(set(c, "scheduler", "backoff", "Exponential"), 0);
	assert_int_equal(c->scheduler.backoff, BACKOFF_EXPONENTIAL);
	assert_int_equal(set(c, "scheduler", "backoff", "linear"), EC_ECONFIG);
	assert_int_equal(set(c, "scheduler", "routing", "performance"), 0);
	assert_int_equal(c->scheduler.routing, ROUTE_PERFORMANCE);
	assert_int_equal(set(c, "scheduler", "routing", "random"), EC_ECONFIG);
	assert_int_equal(set(c, "mqtt", "status_events", "all"), 0);
	assert_int_equal(set(c, "mqtt", "status_events", "some"), EC_ECONFIG);
	for (int l = LOG_LVL_ERROR; l <= LOG_LVL_DEBUG; l++) {
		assert_int_equal(set(c, "log", "level", log_level_name(l)), 0);
		assert_int_equal(c->log.level, l);
	}
}

static void test_strings_validated(void **state)
{
	struct fx *fx = *state;
	struct config *c = &fx->c;
	static const char *const good_prefix[] = { "edgecoord", "a/b/c", "site-1.x", "a b" };
	static const char *const bad_prefix[] = { "", "/a", "a/", "a#", "+", "a//b", "$SYS",
						  "a\tb" };

	for (size_t i = 0; i < sizeof good_prefix / sizeof good_prefix[0]; i++)
		assert_int_equal(set(c, "mqtt", "topic_prefix", good_prefix[i]), 0);
	for (size_t i = 0; i < sizeof bad_prefix / sizeof bad_prefix[0]; i++)
		assert_int_equal(set(c, "mqtt", "topic_prefix", bad_prefix[i]), EC_ECONFIG);
	assert_string_equal(c->mqtt.topic_prefix, "a b");

	assert_int_equal(set(c, "mqtt", "uri", "mqtts://h"), 0);
	assert_int_equal(set(c, "mqtt", "uri", "ws://h:80/mqtt"), EC_ECONFIG);
	assert_int_equal(set(c, "mqtt", "uri", "tcp://"), EC_ECONFIG);
	assert_int_equal(set(c, "mqtt", "uri", "tcp://:1883"), EC_ECONFIG);
	assert_int_equal(set(c, "mqtt", "uri", "tcp://a b"), EC_ECONFIG);
	assert_int_equal(set(c, "mqtt", "uri", "127.0.0.1:1883"), EC_ECONFIG);

	assert_int_equal(set(c, "coordinator", "node_id", "gw_1.a-b"), 0);
	assert_int_equal(set(c, "coordinator", "node_id", "gw/1"), EC_ECONFIG);
	assert_int_equal(set(c, "coordinator", "node_id", "gw:1"), EC_ECONFIG);

	assert_int_equal(set(c, "agents", "listen", "127.0.0.1:1"), 0);
	assert_int_equal(set(c, "agents", "listen", "[fe80::1]:65535"), 0);
	assert_string_equal(c->agents.listen.host, "fe80::1");
	assert_int_equal(c->agents.listen.port, 65535);
	assert_int_equal(set(c, "agents", "listen", "localhost:7883"), 0);
	static const char *const bad_listen[] = { "::1:7883", ":7883", "h:0", "h:65536", "h:",
						  "h:-1", "h:+1", "[::1]7883", "[]:1", "h:7x" };
	for (size_t i = 0; i < sizeof bad_listen / sizeof bad_listen[0]; i++)
		assert_int_equal(set(c, "agents", "listen", bad_listen[i]), EC_ECONFIG);
	assert_string_equal(c->agents.listen.host, "localhost");
}

static void test_concurrency(void **state)
{
	struct fx *fx = *state;
	struct config *c = &fx->c;
	char text[64 * 1100], *p = text;

	assert_int_equal(load(fx, "[concurrency]\n"
			     "gpu = 2\n"
			     "bad/type = 1\n"
			     "zero = 0\n"
			     "big = 1000001\n"
			     "word = many\n"
			     "a.b-c_d = 1000000\n"), EC_ECONFIG);
	assert_true(has_msg(fx, 3, "[concurrency] task type 'bad/type' is not an id "
			       "([A-Za-z0-9._-]{1,100})"));
	assert_true(has_msg(fx, 4, "[concurrency] zero: '0' is not an integer in 1..1000000"));
	assert_true(has_msg(fx, 5, "[concurrency] big: '1000001' is not an integer in 1..1000000"));
	assert_true(has_msg(fx, 6, "[concurrency] word: 'many' is not an integer in 1..1000000"));
	assert_int_equal(fx->e.nerrors, 4);
	assert_int_equal(c->concurrency.n, 2);
	assert_int_equal(config_concurrency_max(c, "gpu"), 2);
	assert_int_equal(config_concurrency_max(c, "a.b-c_d"), 1000000);

	/* More types than we keep is an error, not a silent cut. */
	config_fini(c);
	config_defaults(c);
	config_errors_fini(&fx->e);
	p += sprintf(p, "[concurrency]\n");
	for (int i = 0; i < CONFIG_CONCURRENCY_MAX + 1; i++)
		p += sprintf(p, "t%d = 1\n", i);
	assert_int_equal(load(fx, text), EC_ECONFIG);
	assert_int_equal(fx->e.nerrors, 1);
	char m[80];
	snprintf(m, sizeof m, "[concurrency] more than %d task types", CONFIG_CONCURRENCY_MAX);
	assert_true(has_msg(fx, CONFIG_CONCURRENCY_MAX + 2, m));
	assert_int_equal(c->concurrency.n, CONFIG_CONCURRENCY_MAX);
}

static void test_flags_win(void **state)
{
	struct fx *fx = *state;
	struct config *c = &fx->c;

	/* A flag before the file: the file's value is checked but dropped. */
	assert_int_equal(set(c, "mqtt", "uri", "tcp://flag:1"), 0);
	assert_int_equal(set(c, "concurrency", "gpu", "9"), 0);
	assert_int_equal(load(fx, "[mqtt]\nuri = tcp://file:2\nkeepalive_s = 11\n"
			     "[concurrency]\ngpu = 1\ncpu = 3\n"), 0);
	assert_string_equal(c->mqtt.uri, "tcp://flag:1");
	assert_int_equal(c->mqtt.keepalive_s, 11);
	assert_int_equal(config_concurrency_max(c, "gpu"), 9);
	assert_int_equal(config_concurrency_max(c, "cpu"), 3);
	/* ... even when the file's value is bad, the file is still wrong. */
	assert_int_equal(load(fx, "[mqtt]\nuri = bogus\n"), EC_ECONFIG);
	assert_true(has_msg(fx, 2, "[mqtt] uri: 'bogus' does not start with tcp://, ssl://, "
			       "mqtt:// or mqtts://"));
	assert_string_equal(c->mqtt.uri, "tcp://flag:1");
	/* A flag after the file replaces its value. */
	assert_int_equal(set(c, "mqtt", "keepalive_s", "12"), 0);
	assert_int_equal(c->mqtt.keepalive_s, 12);
	/* A bad flag leaves the value alone. */
	assert_int_equal(set(c, "mqtt", "keepalive_s", "x"), EC_ECONFIG);
	assert_int_equal(c->mqtt.keepalive_s, 12);
}

static void test_cross_key(void **state)
{
	struct fx *fx = *state;
	struct config *c = &fx->c;
	char m[300];

	assert_int_equal(load(fx, "[agents]\n"
			     "ca_file = ca.crt\n"
			     "cert_file = c.crt\n"
			     "[mqtt]\n"
			     "uri = ssl://h:8883\n"
			     "cert_file = m.crt\n"
			     "[scheduler]\n"
			     "initial_delay_s = 10\n"
			     "max_delay_s = 5\n"
			     "[coordinator]\n"
			     "max_map_size_mb = 32\n"
			     "[limits]\n"
			     "max_payload_bytes = 2000000\n"), 0);
	assert_int_equal(config_finish(c, &fx->e), EC_ECONFIG);
	assert_true(has_msg(fx, 3, "[agents] ca_file, cert_file and key_file go together: give all "
			       "three or none"));
	assert_true(has_msg(fx, 6, "[mqtt] cert_file and key_file go together: give both or "
			       "neither"));
	assert_true(has_msg(fx, 9, "[scheduler] initial_delay_s is above max_delay_s"));
	assert_true(has_msg(fx, 11, "[coordinator] map_size_mb is above max_map_size_mb"));
	assert_true(has_msg(fx, 13, "[limits] max_payload_bytes is above max_message_bytes"));
	assert_int_equal(fx->e.nerrors, 5);

	/* From a flag, the message says so. */
	config_fini(c);
	config_defaults(c);
	config_errors_fini(&fx->e);
	assert_int_equal(set(c, "agents", "key_file", "k"), 0);
	assert_int_equal(config_finish(c, NULL), EC_ECONFIG);
	config_fini(c);
	config_defaults(c);
	assert_int_equal(set(c, "agents", "key_file", "k"), 0);
	assert_int_equal(config_finish(c, &fx->e), EC_ECONFIG);
	snprintf(m, sizeof m, "command line: [agents] ca_file, cert_file and key_file go together: "
		 "give all three or none");
	assert_true(has_msg(fx, 0, m));

	/* All three, and TLS files on a plain URI only warn. */
	config_fini(c);
	config_defaults(c);
	config_errors_fini(&fx->e);
	assert_int_equal(set(c, "agents", "ca_file", "a"), 0);
	assert_int_equal(set(c, "agents", "cert_file", "b"), 0);
	assert_int_equal(set(c, "agents", "key_file", "c"), 0);
	assert_int_equal(set(c, "mqtt", "ca_file", "a"), 0);
	assert_int_equal(set(c, "coordinator", "node_id", "n1"), 0);
	assert_int_equal(config_finish(c, &fx->e), 0);
	assert_int_equal(fx->e.nwarnings, 1);
	assert_string_equal(c->mqtt.client_id, "edgecoord-n1");
}

static void test_unreadable(void **state)
{
	struct fx *fx = *state;
	char m[300];

	snprintf(fx->path, sizeof fx->path, "%s/missing.ini", fx->dir);
	assert_int_equal(config_load(&fx->c, fx->path, &fx->e), -ENOENT);
	snprintf(m, sizeof m, "%s: cannot open: %s", fx->path, strerror(ENOENT));
	assert_true(has_msg(fx, 0, m));
	assert_int_equal(fx->e.nerrors, 1);

	/* A directory opens but does not read. */
	config_errors_fini(&fx->e);
	assert_int_equal(config_load(&fx->c, fx->dir, &fx->e), -EISDIR);
	snprintf(m, sizeof m, "%s: cannot read: %s", fx->dir, strerror(EISDIR));
	assert_true(has_msg(fx, 0, m));

	/* Mode 000 stops everyone but root. */
	snprintf(fx->path, sizeof fx->path, "%s/ec.ini", fx->dir);
	write_file(fx, "[log]\n");
	assert_int_equal(chmod(fx->path, 0), 0);
	config_errors_fini(&fx->e);
	int rc = config_load(&fx->c, fx->path, &fx->e);
	if (geteuid() != 0) {
		assert_int_equal(rc, -EACCES);
		assert_int_equal(fx->e.nerrors, 1);
	} else {
		assert_int_equal(rc, 0);
	}
}

static void test_error_cap(void **state)
{
	struct fx *fx = *state;
	char text[300 * 12 + 16], *p = text;
	char *out = NULL;
	size_t outlen = 0;

	p += sprintf(p, "[mqtt]\n");
	for (int i = 0; i < 300; i++)
		p += sprintf(p, "x%d = 1\n", i);
	assert_int_equal(load(fx, text), EC_ECONFIG);
	assert_int_equal(fx->e.nerrors, 300);
	assert_int_equal(fx->e.n, CONFIG_MSGS_KEPT);
	FILE *f = open_memstream(&out, &outlen);
	config_errors_print(&fx->e, f);
	fclose(f);
	assert_non_null(strstr(out, "\n... and 200 more\n"));
	free(out);
}

static char *render(void (*fn)(const struct config *, FILE *), const struct config *c)
{
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	assert_non_null(f);
	fn(c, f);
	assert_int_equal(fclose(f), 0);
	return out;
}

static void test_dump_round_trip(void **state)
{
	struct fx *fx = *state;
	struct config back;
	char *one, *two;

	assert_int_equal(load(fx, "[agents]\nlisten = [::]:1234\n[scheduler]\naging_s = 2.25\n"
			     "[concurrency]\ngpu = 2\n[mqtt]\npassword = secret\n"
			     "username = me\n"), 0);
	assert_int_equal(config_finish(&fx->c, &fx->e), 0);
	one = render(config_dump, &fx->c);
	assert_null(strstr(one, "secret"));
	assert_non_null(strstr(one, "password = ********\n"));
	assert_non_null(strstr(one, "aging_s = 2.25\n"));
	assert_non_null(strstr(one, "listen = [::]:1234\n"));
	assert_non_null(strstr(one, "ca_file =\n"));

	config_defaults(&back);
	assert_int_equal(config_load_buffer(&back, "dump", one, strlen(one), &fx->e), 0);
	assert_int_equal(config_finish(&back, &fx->e), 0);
	assert_int_equal(fx->e.nerrors + fx->e.nwarnings, 0);
	two = render(config_dump, &back);
	assert_string_equal(one, two);
	assert_int_equal(back.scheduler.aging_ms, 2250);
	config_fini(&back);
	config_fini(NULL);
	free(one);
	free(two);
}

static void print_md(const struct config *c, FILE *f)
{
	(void)c;
	config_print_reference(f, true);
}

static void print_text(const struct config *c, FILE *f)
{
	(void)c;
	config_print_reference(f, false);
}

/* docs/config.md is config_print_reference(markdown): fail while stale. */
static void test_reference_doc(void **state)
{
	const char *src = getenv("EC_SRC");
	char path[4096], *want, *have;
	(void)state;

	want = render(print_md, NULL);
	have = render(print_text, NULL);
	/* Every key appears in both forms. */
	assert_non_null(strstr(want, "| `max_pending_per_source` |"));
	assert_non_null(strstr(have, "    handshake_timeout_ms = 5000  (ms 100..600000)\n"));
	assert_non_null(strstr(want, "| `backoff` | none \\| fixed \\| exponential | `exponential` |"));
	free(have);
	if (!src) {
		free(want);
		skip();
	}
	snprintf(path, sizeof path, "%s/docs/config.md", src);
	if (getenv("EC_UPDATE_DOCS")) {
		FILE *f = fopen(path, "w");
		assert_non_null(f);
		fputs(want, f);
		assert_int_equal(fclose(f), 0);
	}
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	have = calloc(1, 1 << 20);
	assert_non_null(have);
	size_t n = fread(have, 1, (1 << 20) - 1, f);
	fclose(f);
	have[n] = '\0';
	if (strcmp(have, want) != 0)
		fail_msg("%s is stale: run EC_SRC=. EC_UPDATE_DOCS=1 build/bin/test_config", path);
	free(have);
	free(want);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
		cmocka_unit_test_setup_teardown(test_every_key, setup, teardown),
		cmocka_unit_test_setup_teardown(test_errors_name_file_and_line, setup, teardown),
		cmocka_unit_test_setup_teardown(test_long_line, setup, teardown),
		cmocka_unit_test_setup_teardown(test_syntax_details, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_key_warns, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bounds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_durations, setup, teardown),
		cmocka_unit_test_setup_teardown(test_enums_and_booleans, setup, teardown),
		cmocka_unit_test_setup_teardown(test_strings_validated, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrency, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flags_win, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cross_key, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unreadable, setup, teardown),
		cmocka_unit_test_setup_teardown(test_error_cap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dump_round_trip, setup, teardown),
		cmocka_unit_test(test_reference_doc),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
