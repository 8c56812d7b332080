/* SPDX-License-Identifier: MIT */
/*
 * config.c - the key table, value parsers, the inih-driven loader, derived
 * defaults and cross-key checks, the generated reference, and the dump of
 * the effective configuration (config.h).
 *
 * inih r55 is the only parser of the file's syntax, but it is fed through our
 * own line reader (ini_parse_stream), because as built by Debian it cuts a
 * line longer than INI_MAX_LINE silently and reports only the first syntax
 * error. The reader counts lines (so every message names one), refuses long
 * lines and NUL bytes itself, checks section headers and key lines, and strips
 * leading blanks so that inih never treats an indented line as the
 * continuation of the previous value.
 *
 * This file does not look at the file system beyond reading the config file:
 * whether DATA_DIR/pki exists, or a certificate loads, is for the caller.
 */
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config.h"
#include "edgecoord/err.h"
#include "log.h"

enum ctype { CT_STR, CT_BOOL, CT_INT, CT_MB, CT_DUR, CT_ENUM, CT_HOSTPORT };

struct enum_name {
	const char *name;
	int value;
};

#define CF_NONEMPTY 0x1 /* a string that may not be empty */

struct keydef {
	const char *section;
	const char *key;
	enum ctype type;
	size_t off;
	int64_t min, max;       /* CT_INT: the value; CT_MB: MB; CT_DUR: ms */
	const char *def;        /* default, as it would be written; NULL = unset */
	const char *def_doc;    /* shown instead of def when def is NULL */
	const struct enum_name *names;
	int (*check)(const char *v, char *err, size_t errlen);
	unsigned flags;
	const char *help;
};

static const struct enum_name status_events_names[] = {
	{ "milestones", CONFIG_STATUS_MILESTONES }, { "all", CONFIG_STATUS_ALL },
	{ "final", CONFIG_STATUS_FINAL }, { NULL, 0 }
};
static const struct enum_name routing_names[] = {
	{ "least_loaded", ROUTE_LEAST_LOADED }, { "round_robin", ROUTE_ROUND_ROBIN },
	{ "performance", ROUTE_PERFORMANCE }, { NULL, 0 }
};
static const struct enum_name backoff_names[] = {
	{ "none", BACKOFF_NONE }, { "fixed", BACKOFF_FIXED },
	{ "exponential", BACKOFF_EXPONENTIAL }, { NULL, 0 }
};
static const struct enum_name level_names[] = {
	{ "error", LOG_LVL_ERROR }, { "warn", LOG_LVL_WARN }, { "info", LOG_LVL_INFO },
	{ "debug", LOG_LVL_DEBUG }, { NULL, 0 }
};

static int check_id(const char *v, char *err, size_t errlen);
static int check_uri(const char *v, char *err, size_t errlen);
static int check_prefix(const char *v, char *err, size_t errlen);
static int check_client_id(const char *v, char *err, size_t errlen);

#define OFF(f) offsetof(struct config, f)
#define EC_STR_(x) #x
#define EC_STR(x) EC_STR_(x)
#define SEC 1000LL
#define DAY (86400 * SEC)

/* The table. Bounds are chosen so that every product the daemon forms from
 * them (delay * 2^attempt is capped by max_delay; heartbeat * misses) stays
 * far inside int64 milliseconds, and so that a typo such as a value in ms
 * where seconds are meant fails loudly rather than silently. */
static const struct keydef keys[] = {
	{ "coordinator", "node_id", CT_STR, OFF(coordinator.node_id), 0, 0, NULL, "the host name",
	  NULL, check_id, 0,
	  "Name of this coordinator, [A-Za-z0-9._-]{1,100}; used in P/coordinator/NODE/state." },
	{ "coordinator", "data_dir", CT_STR, OFF(coordinator.data_dir), 0, 0, "./edgecoord-data", NULL,
	  NULL, NULL, CF_NONEMPTY,
	  "Directory of the LMDB environment (created if missing) and of pki/." },
	{ "coordinator", "map_size_mb", CT_MB, OFF(coordinator.map_size_bytes), 1, 1048576, "64", NULL,
	  NULL, NULL, 0,
	  "Initial LMDB map size in MiB; the map grows on demand up to max_map_size_mb." },
	{ "coordinator", "max_map_size_mb", CT_MB, OFF(coordinator.max_map_size_bytes), 1, 1048576,
	  "4096", NULL, NULL, NULL, 0,
	  "Largest LMDB map in MiB; beyond it submissions are refused with store_full. "
	  "Keep it well under the address space on 32-bit boards." },
	{ "coordinator", "max_unfinished", CT_INT, OFF(coordinator.max_unfinished), 0,
	  1000000000, "500000", NULL, NULL, NULL, 0,
	  "Tasks accepted and not yet final that the store may hold; beyond it submissions are "
	  "refused with store_full. Each ready task costs the scheduler about 120 bytes of "
	  "memory, so the default bounds it near 60 MiB; 0 = no limit." },
	{ "coordinator", "keep_final_s", CT_INT, OFF(coordinator.keep_final_s), 0, 4294967295LL,
	  "604800", NULL, NULL, NULL, 0,
	  "Seconds a finished task (or a whole finished workflow) stays in the store, then it is "
	  "deleted with its history and result, and its id may be used again; 0 = keep forever." },

	{ "mqtt", "uri", CT_STR, OFF(mqtt.uri), 0, 0, "tcp://127.0.0.1:1883", NULL, NULL, check_uri,
	  CF_NONEMPTY, "Broker URI: tcp://, ssl://, mqtt:// or mqtts:// HOST[:PORT] (IPv6: [ADDR]:PORT)." },
	{ "mqtt", "client_id", CT_STR, OFF(mqtt.client_id), 0, 0, NULL, "edgecoord-NODE", NULL,
	  check_client_id, 0, "MQTT client id, 1..256 characters without control characters." },
	{ "mqtt", "topic_prefix", CT_STR, OFF(mqtt.topic_prefix), 0, 0, "edgecoord", NULL, NULL,
	  check_prefix, CF_NONEMPTY,
	  "First topic level(s) P of every topic; no + or #, no leading $ or /, no trailing /, "
	  "no empty level." },
	{ "mqtt", "username", CT_STR, OFF(mqtt.username), 0, 0, NULL, "none", NULL, NULL, 0,
	  "User name sent to the broker." },
	{ "mqtt", "password", CT_STR, OFF(mqtt.password), 0, 0, NULL, "none", NULL, NULL, 0,
	  "Password sent to the broker; the effective-config dump masks it." },
	{ "mqtt", "ca_file", CT_STR, OFF(mqtt.ca_file), 0, 0, NULL, "none", NULL, NULL, 0,
	  "PEM CA bundle that verifies the broker (ssl://, mqtts://); none: /etc/ssl/certs." },
	{ "mqtt", "cert_file", CT_STR, OFF(mqtt.cert_file), 0, 0, NULL, "none", NULL, NULL, 0,
	  "PEM client certificate for the broker; needs key_file." },
	{ "mqtt", "key_file", CT_STR, OFF(mqtt.key_file), 0, 0, NULL, "none", NULL, NULL, 0,
	  "PEM private key of cert_file." },
	{ "mqtt", "keepalive_s", CT_INT, OFF(mqtt.keepalive_s), 1, 65535, "30", NULL, NULL, NULL, 0,
	  "MQTT keep-alive interval in whole seconds." },
	{ "mqtt", "result_ttl_s", CT_INT, OFF(mqtt.result_ttl_s), 0, 4294967295LL, "86400", NULL,
	  NULL, NULL, 0,
	  "Message expiry (whole seconds) of retained task and workflow status/result messages; "
	  "0 = they never expire." },
	{ "mqtt", "status_events", CT_ENUM, OFF(mqtt.status_events), 0, 0, "milestones", NULL,
	  status_events_names, NULL, 0,
	  "Which task state changes are published: milestones (accepted, running, failed, "
	  "final states), all, or final (final states only; the fewest broker messages)." },
	{ "mqtt", "outbox_max", CT_INT, OFF(mqtt.outbox_max), 1, 100000000, "100000", NULL, NULL,
	  NULL, 0,
	  "Most messages the outbox holds while the broker is unreachable." },

	{ "agents", "listen", CT_HOSTPORT, OFF(agents.listen), 0, 0, "0.0.0.0:7883", NULL, NULL, NULL,
	  0, "TLS listener for agents, HOST:PORT or [IPv6]:PORT." },
	{ "agents", "ca_file", CT_STR, OFF(agents.ca_file), 0, 0, NULL, "DATA_DIR/pki/ca.crt", NULL,
	  NULL, 0, "Fleet CA (PEM) that agent certificates must chain to." },
	{ "agents", "cert_file", CT_STR, OFF(agents.cert_file), 0, 0, NULL,
	  "DATA_DIR/pki/coordinator.crt", NULL, NULL, 0,
	  "The coordinator's certificate (PEM). ca_file, cert_file, key_file: all or none." },
	{ "agents", "key_file", CT_STR, OFF(agents.key_file), 0, 0, NULL,
	  "DATA_DIR/pki/coordinator.key", NULL, NULL, 0, "Private key of cert_file (PEM)." },
	{ "agents", "heartbeat_ms", CT_DUR, OFF(agents.heartbeat_ms), 50, 10 * 60 * SEC, "1000",
	  NULL, NULL, NULL, 0, "Heartbeat interval agents are told to keep." },
	{ "agents", "heartbeat_misses", CT_INT, OFF(agents.heartbeat_misses), 1, 100, "3", NULL,
	  NULL, NULL, 0, "Missed heartbeats after which an agent is lost and its work moves." },
	{ "agents", "max_frame", CT_INT, OFF(agents.max_frame), 1024, 16777216, "65536", NULL, NULL,
	  NULL, 0, "Largest frame in bytes accepted from an agent." },
	{ "agents", "handshake_timeout_ms", CT_DUR, OFF(agents.handshake_timeout_ms), 100,
	  10 * 60 * SEC, "5000", NULL, NULL, NULL, 0,
	  "Time an agent has for the TLS handshake and its hello." },

	{ "scheduler", "routing", CT_ENUM, OFF(scheduler.routing), 0, 0, "least_loaded", NULL,
	  routing_names, NULL, 0,
	  "How a ready task picks among capable agents: least_loaded, round_robin or performance." },
	{ "scheduler", "aging_s", CT_DUR, OFF(scheduler.aging_ms), 0, DAY, "30", NULL, NULL, NULL, 0,
	  "Priority aging: a ready task gains one priority level per aging_s waited; "
	  "0 = no aging." },
	{ "scheduler", "task_timeout_s", CT_DUR, OFF(scheduler.task_timeout_ms), 1 * SEC, 30 * DAY,
	  "3600", NULL, NULL, NULL, 0, "Attempt timeout of a task that sets none." },
	{ "scheduler", "max_attempts", CT_INT, OFF(scheduler.max_attempts), 1, 1000, "3", NULL, NULL,
	  NULL, 0, "Attempts of a task whose retry policy sets none." },
	{ "scheduler", "backoff", CT_ENUM, OFF(scheduler.backoff), 0, 0, "exponential", NULL,
	  backoff_names, NULL, 0, "Default retry backoff: none, fixed or exponential." },
	{ "scheduler", "initial_delay_s", CT_DUR, OFF(scheduler.initial_delay_ms), 0, DAY, "1", NULL,
	  NULL, NULL, 0, "Default delay before the first retry." },
	{ "scheduler", "max_delay_s", CT_DUR, OFF(scheduler.max_delay_ms), 0, 7 * DAY, "300", NULL,
	  NULL, NULL, 0, "Default cap of the retry delay; not below initial_delay_s." },
	{ "scheduler", "jitter", CT_BOOL, OFF(scheduler.jitter), 0, 0, "true", NULL, NULL, NULL, 0,
	  "Default: randomize each retry delay (full jitter)." },
	{ "scheduler", "max_pending_per_source", CT_INT, OFF(scheduler.max_pending_per_source), 0,
	  100000000, "0", NULL, NULL, NULL, 0,
	  "Accepted, not final tasks allowed per SOURCE; 0 = unlimited." },
	{ "scheduler", "breaker_failures", CT_INT, OFF(scheduler.breaker_failures), 0, 1000, "5",
	  NULL, NULL, NULL, 0,
	  "Consecutive failures that open an agent's circuit breaker; 0 = no breaker." },
	{ "scheduler", "breaker_cooldown_s", CT_DUR, OFF(scheduler.breaker_cooldown_ms), 1 * SEC, DAY,
	  "30", NULL, NULL, NULL, 0, "Time an open breaker keeps the agent out." },

	{ "limits", "max_message_bytes", CT_INT, OFF(limits.max_message_bytes), 1024, 268435455,
	  "1048576", NULL, NULL, NULL, 0, "Largest submission message in bytes." },
	{ "limits", "max_payload_bytes", CT_INT, OFF(limits.max_payload_bytes), 16, 16777216,
	  "65536", NULL, NULL, NULL, 0,
	  "Largest payload of one task in bytes; not above max_message_bytes." },
	{ "limits", "max_tasks_per_submission", CT_INT, OFF(limits.max_tasks_per_submission), 1,
	  1000000, "10000", NULL, NULL, NULL, 0, "Most tasks in one workflow or array." },
	{ "limits", "max_deps_per_task", CT_INT, OFF(limits.max_deps_per_task), 1, 100000, "256",
	  NULL, NULL, NULL, 0, "Most dependencies of one task." },
	{ "limits", "max_depth", CT_INT, OFF(limits.max_depth), 1, 10000, "32", NULL, NULL, NULL, 0,
	  "Longest dependency chain in a workflow, in tasks." },

	{ "log", "level", CT_ENUM, OFF(log.level), 0, 0, "info", NULL, level_names, NULL, 0,
	  "error, warn, info or debug." },
	{ "log", "syslog", CT_BOOL, OFF(log.syslog), 0, 0, "false", NULL, NULL, NULL, 0,
	  "Log to syslog (daemon facility) instead of stderr." },
};

#define NKEYS (sizeof keys / sizeof keys[0])
_Static_assert(sizeof keys / sizeof keys[0] <= CONFIG_KEYS_MAX, "raise CONFIG_KEYS_MAX");

static const char *const sections[] = {
	"coordinator", "mqtt", "agents", "scheduler", "limits", "concurrency", "log"
};
#define NSECTIONS (sizeof sections / sizeof sections[0])
#define CONC_MAX_VALUE 1000000

/* ---- messages ---- */

void config_errors_init(struct config_errors *e)
{
	memset(e, 0, sizeof *e);
}

void config_errors_fini(struct config_errors *e)
{
	if (!e)
		return;
	free(e->msgs);
	memset(e, 0, sizeof *e);
}

void config_errors_print(const struct config_errors *e, FILE *f)
{
	for (size_t i = 0; i < e->n; i++)
		fprintf(f, "%s\n", e->msgs[i].text);
	if (e->nerrors + e->nwarnings > e->n)
		fprintf(f, "... and %zu more\n", e->nerrors + e->nwarnings - e->n);
}

static void add_msg(struct config_errors *e, bool warning, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void add_msg(struct config_errors *e, bool warning, const char *fmt, ...)
{
	va_list ap;

	if (!e)
		return;
	if (warning)
		e->nwarnings++;
	else
		e->nerrors++;
	if (e->n >= CONFIG_MSGS_KEPT)
		return;
	if (!e->msgs) {
		e->msgs = calloc(CONFIG_MSGS_KEPT, sizeof *e->msgs);
		if (!e->msgs)
			return; /* the counts still tell that something was wrong */
	}
	struct config_msg *m = &e->msgs[e->n++];
	m->warning = warning;
	va_start(ap, fmt);
	vsnprintf(m->text, sizeof m->text, fmt, ap);
	va_end(ap);
}

/* ---- value checks and parsers ---- */

static int check_id(const char *v, char *err, size_t errlen)
{
	if (task_id_valid(v, strlen(v)))
		return 0;
	snprintf(err, errlen, "'%.100s' is not an id ([A-Za-z0-9._-]{1,100})", v);
	return EC_ECONFIG;
}

static int check_uri(const char *v, char *err, size_t errlen)
{
	/* MQTT over WebSockets is not spoken (mqtt.c) */
	static const char *const schemes[] = { "tcp://", "ssl://", "mqtt://", "mqtts://" };
	for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
		size_t n = strlen(schemes[i]);
		if (strncmp(v, schemes[i], n) != 0)
			continue;
		const char *host = v + n;
		if (*host == '\0' || *host == ':' || *host == '/') {
			snprintf(err, errlen, "'%.200s' names no host", v);
			return EC_ECONFIG;
		}
		for (const char *p = host; *p; p++)
			if ((unsigned char)*p <= ' ') {
				snprintf(err, errlen, "'%.200s' contains a blank or control character", v);
				return EC_ECONFIG;
			}
		return 0;
	}
	snprintf(err, errlen, "'%.200s' does not start with tcp://, ssl://, mqtt:// or mqtts://",
		 v);
	return EC_ECONFIG;
}

static int check_prefix(const char *v, char *err, size_t errlen)
{
	size_t n = strlen(v);
	const char *why = NULL;

	if (n == 0)
		why = "is empty";
	else if (n > 200)
		why = "is longer than 200 characters";
	else if (strpbrk(v, "+#"))
		why = "contains a wildcard (+ or #)";
	else if (v[0] == '/' || v[n - 1] == '/')
		why = "starts or ends with /";
	else if (v[0] == '$')
		why = "starts with $ (reserved by brokers)";
	else if (strstr(v, "//"))
		why = "has an empty topic level";
	else
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)v[i] < ' ' || v[i] == 0x7f)
				why = "contains a control character";
	if (!why)
		return 0;
	snprintf(err, errlen, "'%.200s' %s", v, why);
	return EC_ECONFIG;
}

static int check_client_id(const char *v, char *err, size_t errlen)
{
	size_t n = strlen(v);

	if (n == 0 || n > 256) {
		snprintf(err, errlen, "must be 1..256 characters");
		return EC_ECONFIG;
	}
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)v[i] < ' ' || v[i] == 0x7f) {
			snprintf(err, errlen, "contains a control character");
			return EC_ECONFIG;
		}
	return 0;
}

/* A decimal integer, optionally signed, nothing else. */
static int parse_i64(const char *v, int64_t *out)
{
	const char *p = v;
	bool neg = false;
	uint64_t acc = 0;

	if (*p == '-' || *p == '+')
		neg = *p++ == '-';
	if (*p < '0' || *p > '9')
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (acc > (UINT64_MAX - 9) / 10)
			return -1;
		acc = acc * 10 + (uint64_t)(*p - '0');
	}
	if (*p != '\0' || acc > (uint64_t)INT64_MAX)
		return -1;
	*out = neg ? -(int64_t)acc : (int64_t)acc;
	return 0;
}

/* "1.5", "250ms", "2m": a non-negative decimal with an optional unit (ms, s,
 * m, h; without one, the key's own unit), rounded to whole milliseconds. */
static int parse_duration(const char *v, int64_t unit_ms, int64_t *out_ms)
{
	const char *p = v;
	int64_t whole = 0, frac = 0, scale = 1;
	int nwhole = 0, nfrac = 0;

	for (; *p >= '0' && *p <= '9'; p++, nwhole++) {
		if (nwhole >= 12)
			return -1;
		whole = whole * 10 + (*p - '0');
	}
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++, nfrac++) {
			if (nfrac >= 9)
				return -1;
			frac = frac * 10 + (*p - '0');
			scale *= 10;
		}
		if (nfrac == 0)
			return -1;
	}
	if (nwhole == 0)
		return -1;
	if (*p) {
		if (strcmp(p, "ms") == 0)
			unit_ms = 1;
		else if (strcmp(p, "s") == 0)
			unit_ms = SEC;
		else if (strcmp(p, "m") == 0)
			unit_ms = 60 * SEC;
		else if (strcmp(p, "h") == 0)
			unit_ms = 3600 * SEC;
		else
			return -1;
	}
	/* whole < 1e12 and unit <= 3.6e6: the product stays below 2^63. */
	*out_ms = whole * unit_ms + (frac * unit_ms + scale / 2) / scale;
	return 0;
}

static int parse_bool(const char *v, bool *out)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };

	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(v, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(v, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return -1;
}

static int parse_hostport(const char *v, char **host, uint16_t *port)
{
	const char *colon, *h = v;
	size_t hlen;
	int64_t p;

	if (*v == '[') {
		const char *close = strchr(v, ']');
		if (!close || close[1] != ':')
			return -1;
		h = v + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(v, ':');
		if (!colon)
			return -1;
		hlen = (size_t)(colon - v);
		if (memchr(v, ':', hlen)) /* an IPv6 address needs brackets */
			return -1;
	}
	if (hlen == 0 || hlen > 253)
		return -1;
	for (size_t i = 0; i < hlen; i++)
		if ((unsigned char)h[i] <= ' ' || h[i] == '[' || h[i] == ']' || h[i] == '/')
			return -1;
	if (parse_i64(colon + 1, &p) < 0 || colon[1] == '+' || colon[1] == '-' || p < 1 ||
	    p > 65535)
		return -1;
	*host = strndup(h, hlen);
	if (!*host)
		return -ENOMEM;
	*port = (uint16_t)p;
	return 0;
}

static int64_t dur_unit(const struct keydef *k)
{
	size_t n = strlen(k->key);
	return n > 3 && strcmp(k->key + n - 3, "_ms") == 0 ? 1 : SEC;
}

/* Writes "V" (ms) in the key's unit: 1500 -> "1.5" for an _s key. */
static void fmt_duration(char *buf, size_t len, int64_t ms, int64_t unit)
{
	if (unit == 1 || ms % unit == 0) {
		snprintf(buf, len, "%lld", (long long)(ms / unit));
		return;
	}
	snprintf(buf, len, "%lld.%03lld", (long long)(ms / unit), (long long)(ms % unit));
	char *e = buf + strlen(buf) - 1;
	while (*e == '0')
		*e-- = '\0';
}

static void fmt_bound(char *buf, size_t len, const struct keydef *k, int64_t v)
{
	if (k->type == CT_DUR)
		fmt_duration(buf, len, v, dur_unit(k));
	else
		snprintf(buf, len, "%lld", (long long)v);
}

static void enum_list(char *buf, size_t len, const struct enum_name *names, const char *sep)
{
	size_t used = 0;
	buf[0] = '\0';
	for (size_t i = 0; names[i].name && used < len; i++)
		used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? sep : "", names[i].name);
}

static const char *enum_name_of(const struct enum_name *names, int v)
{
	for (size_t i = 0; names[i].name; i++)
		if (names[i].value == v)
			return names[i].name;
	return "?";
}

/* Parses V for K and, if STORE, writes it into C (freeing what was there).
 * Returns 0, EC_ECONFIG with a sentence in ERR, or -ENOMEM. */
static int apply(struct config *c, const struct keydef *k, const char *v, bool store, char *err,
		 size_t errlen)
{
	char *field = (char *)c + k->off;
	char lo[32], hi[32];
	int64_t n = 0;
	int rc;

	switch (k->type) {
	case CT_STR: {
		char *s = NULL;
		if (*v == '\0') {
			if (k->flags & CF_NONEMPTY) {
				snprintf(err, errlen, "may not be empty");
				return EC_ECONFIG;
			}
		} else {
			if (strlen(v) > 4096) {
				snprintf(err, errlen, "is longer than 4096 characters");
				return EC_ECONFIG;
			}
			if (k->check && (rc = k->check(v, err, errlen)) < 0)
				return rc;
			if (store && !(s = strdup(v)))
				return -ENOMEM;
		}
		if (store) {
			free(*(char **)field);
			*(char **)field = s;
		}
		return 0;
	}
	case CT_BOOL: {
		bool b;
		if (parse_bool(v, &b) < 0) {
			snprintf(err, errlen, "'%.100s' is not a boolean (true/false, yes/no, on/off, 1/0)",
				 v);
			return EC_ECONFIG;
		}
		if (store)
			*(bool *)field = b;
		return 0;
	}
	case CT_ENUM:
		for (size_t i = 0; k->names[i].name; i++)
			if (strcasecmp(v, k->names[i].name) == 0) {
				if (store)
					*(int *)field = k->names[i].value;
				return 0;
			}
		char list[200];
		enum_list(list, sizeof list, k->names, ", ");
		snprintf(err, errlen, "'%.100s' is not one of %s", v, list);
		return EC_ECONFIG;
	case CT_HOSTPORT: {
		char *host;
		uint16_t port;
		rc = parse_hostport(v, &host, &port);
		if (rc == -ENOMEM)
			return rc;
		if (rc < 0) {
			snprintf(err, errlen, "'%.100s' is not HOST:PORT or [IPv6]:PORT (port 1..65535)",
				 v);
			return EC_ECONFIG;
		}
		struct config_hostport *hp = (struct config_hostport *)field;
		if (store) {
			free(hp->host);
			hp->host = host;
			hp->port = port;
		} else {
			free(host);
		}
		return 0;
	}
	case CT_INT:
	case CT_MB:
		if (parse_i64(v, &n) < 0) {
			snprintf(err, errlen, "'%.100s' is not an integer", v);
			return EC_ECONFIG;
		}
		break;
	case CT_DUR:
		if (parse_duration(v, dur_unit(k), &n) < 0) {
			snprintf(err, errlen, "'%.100s' is not a duration (a number in %s, or with a "
				 "unit ms, s, m, h)", v, dur_unit(k) == 1 ? "milliseconds" : "seconds");
			return EC_ECONFIG;
		}
		break;
	}
	if (n < k->min || n > k->max) {
		fmt_bound(lo, sizeof lo, k, k->min);
		fmt_bound(hi, sizeof hi, k, k->max);
		snprintf(err, errlen, "'%.100s' is out of range %s..%s", v, lo, hi);
		return EC_ECONFIG;
	}
	if (store)
		*(int64_t *)field = k->type == CT_MB ? n * 1048576 : n;
	return 0;
}

static const struct keydef *find_key(const char *section, const char *key, size_t *idx)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].key, key) == 0) {
			if (idx)
				*idx = i;
			return &keys[i];
		}
	return NULL;
}

static int section_index(const char *name)
{
	for (size_t i = 0; i < NSECTIONS; i++)
		if (strcmp(sections[i], name) == 0)
			return (int)i;
	return -1;
}

/* Adds or replaces a [concurrency] entry. Returns 0, EC_ECONFIG, -ENOMEM. */
static int conc_set(struct config *c, const char *type, const char *v, int32_t origin,
		    int32_t *prev_origin, char *err, size_t errlen)
{
	int64_t n;
	size_t i;

	if (!task_id_valid(type, strlen(type))) {
		snprintf(err, errlen, "task type '%.100s' is not an id ([A-Za-z0-9._-]{1,100})", type);
		return EC_ECONFIG;
	}
	if (parse_i64(v, &n) < 0 || n < 1 || n > CONC_MAX_VALUE) {
		snprintf(err, errlen, "%s: '%.100s' is not an integer in 1..%d", type, v,
			 CONC_MAX_VALUE);
		return EC_ECONFIG;
	}
	for (i = 0; i < c->concurrency.n; i++)
		if (strcmp(c->concurrency.v[i].type, type) == 0)
			break;
	*prev_origin = i < c->concurrency.n ? c->concurrency.v[i].origin : 0;
	if (i < c->concurrency.n && c->concurrency.v[i].origin == -1 && origin != -1)
		return 0; /* a flag's value stands */
	if (i == c->concurrency.n) {
		if (c->concurrency.n >= CONFIG_CONCURRENCY_MAX) {
			snprintf(err, errlen, "more than %d task types", CONFIG_CONCURRENCY_MAX);
			return EC_ECONFIG;
		}
		struct config_concurrency *nv =
			realloc(c->concurrency.v, (c->concurrency.n + 1) * sizeof *nv);
		if (!nv)
			return -ENOMEM;
		c->concurrency.v = nv;
		c->concurrency.n++;
		snprintf(nv[i].type, sizeof nv[i].type, "%s", type);
	}
	c->concurrency.v[i].max = (uint32_t)n;
	c->concurrency.v[i].origin = origin;
	return 0;
}

/* ---- defaults, set, fini ---- */

void config_defaults(struct config *c)
{
	char err[256];

	memset(c, 0, sizeof *c);
	for (size_t i = 0; i < NKEYS; i++) {
		if (!keys[i].def)
			continue;
		if (apply(c, &keys[i], keys[i].def, true, err, sizeof err) < 0)
			fatalx("config: default of [%s] %s: %s", keys[i].section, keys[i].key, err);
	}
}

void config_fini(struct config *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < NKEYS; i++) {
		char *field = (char *)c + keys[i].off;
		if (keys[i].type == CT_STR)
			free(*(char **)field);
		else if (keys[i].type == CT_HOSTPORT)
			free(((struct config_hostport *)field)->host);
	}
	free(c->concurrency.v);
	free(c->path);
	memset(c, 0, sizeof *c);
}

int config_set(struct config *c, const char *section, const char *key, const char *value,
	       char *err, size_t errlen)
{
	char why[400];
	size_t idx;
	int32_t prev;
	int rc;

	if (errlen)
		err[0] = '\0';
	if (strcmp(section, "concurrency") == 0) {
		rc = conc_set(c, key, value, -1, &prev, why, sizeof why);
		if (rc == EC_ECONFIG && errlen)
			snprintf(err, errlen, "[concurrency] %s", why);
		return rc;
	}
	const struct keydef *k = find_key(section, key, &idx);
	if (!k) {
		if (errlen)
			snprintf(err, errlen, "unknown key [%.50s] %.100s", section, key);
		return EC_ECONFIG;
	}
	rc = apply(c, k, value, true, why, sizeof why);
	if (rc == 0)
		c->origin[idx] = -1;
	else if (rc == EC_ECONFIG && errlen)
		snprintf(err, errlen, "[%s] %s: %s", section, key, why);
	return rc;
}

bool config_is_set(const struct config *c, const char *section, const char *key)
{
	size_t idx;

	if (strcmp(section, "concurrency") == 0) {
		for (size_t i = 0; i < c->concurrency.n; i++)
			if (strcmp(c->concurrency.v[i].type, key) == 0)
				return true;
		return false;
	}
	return find_key(section, key, &idx) && c->origin[idx] != 0;
}

/* ---- loading ---- */

struct parse {
	struct config *c;
	struct config_errors *errs;
	const char *name;
	const char *p, *end;
	int line;
	int section;            /* index into sections[], -1 unknown, -2 none yet */
	int nsyntax;            /* syntax errors we reported */
	int rc;                 /* -ENOMEM sticks */
	int32_t seen[CONFIG_KEYS_MAX]; /* line of the key in this load */
};

/* Checks one line of text (without line ending) the way inih will read it,
 * reporting what inih would refuse or cut. Tracks the current section. */
static void check_line(struct parse *ps, const char *s, size_t len)
{
	size_t i = 0;

	while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r'))
		i++;
	if (i == len || s[i] == ';' || s[i] == '#')
		return;
	if (s[i] == '[') {
		const char *close = memchr(s + i, ']', len - i);
		if (!close) {
			add_msg(ps->errs, false, "%s:%d: section header without ]", ps->name, ps->line);
			ps->nsyntax++;
			ps->section = -1;
			return;
		}
		const char *b = s + i + 1, *e = close;
		while (b < e && (*b == ' ' || *b == '\t'))
			b++;
		while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		char name[64];
		size_t n = (size_t)(e - b);
		ps->section = -1;
		if (n < sizeof name) {
			memcpy(name, b, n);
			name[n] = '\0';
			ps->section = section_index(name);
		}
		if (ps->section < 0)
			add_msg(ps->errs, false, "%s:%d: unknown section [%.*s]", ps->name, ps->line,
				(int)(n > 60 ? 60 : n), b);
		const char *t = close + 1, *end = s + len;
		while (t < end && (*t == ' ' || *t == '\t' || *t == '\r'))
			t++;
		if (t < end && *t != ';' && *t != '#') {
			add_msg(ps->errs, false, "%s:%d: unexpected text after ]", ps->name, ps->line);
			ps->nsyntax++;
		}
		return;
	}
	/* inih looks for the first '=' or ':' before an inline comment. */
	for (size_t j = i; j < len; j++) {
		if (s[j] == '=' || s[j] == ':')
			return;
		if (s[j] == ';' && j > i && (s[j - 1] == ' ' || s[j - 1] == '\t'))
			break;
	}
	add_msg(ps->errs, false, "%s:%d: expected KEY = VALUE", ps->name, ps->line);
	ps->nsyntax++;
}

/* inih's fgets: hands it one line at a time, never more than it can hold. */
static char *reader(char *str, int num, void *stream)
{
	struct parse *ps = stream;

	if (ps->p >= ps->end || num < 8)
		return NULL;
	const char *nl = memchr(ps->p, '\n', (size_t)(ps->end - ps->p));
	size_t len = nl ? (size_t)(nl - ps->p) : (size_t)(ps->end - ps->p);
	const char *s = ps->p;
	ps->p += len + (nl ? 1 : 0);
	ps->line++;

	size_t textlen = len > 0 && s[len - 1] == '\r' ? len - 1 : len;
	size_t limit = (size_t)num - 3; /* room for "\r\n\0", as ini.h asks */
	if (limit > CONFIG_LINE_MAX)
		limit = CONFIG_LINE_MAX;
	if (memchr(s, '\0', len)) {
		add_msg(ps->errs, false, "%s:%d: line contains a NUL byte", ps->name, ps->line);
		ps->nsyntax++;
		strcpy(str, "\n");
		return str;
	}
	if (textlen > limit) {
		add_msg(ps->errs, false, "%s:%d: line is longer than %zu characters (%zu)", ps->name,
			ps->line, limit, textlen);
		ps->nsyntax++;
		strcpy(str, "\n");
		return str;
	}
	check_line(ps, s, textlen);
	/* No leading blanks: inih would take an indented line as the
	 * continuation of the previous value. */
	while (textlen > 0 && (*s == ' ' || *s == '\t')) {
		s++;
		textlen--;
	}
	memcpy(str, s, textlen);
	str[textlen] = '\n';
	str[textlen + 1] = '\0';
	return str;
}

static int on_value(void *user, const char *section, const char *key, const char *value)
{
	struct parse *ps = user;
	char why[400];
	size_t idx;
	int32_t prev;
	int rc;

	(void)section; /* ours (ps->section) is the same, untruncated */
	if (ps->section == -2) {
		add_msg(ps->errs, false, "%s:%d: key '%.100s' outside of any [section]", ps->name,
			ps->line, key);
		return 1;
	}
	if (ps->section < 0)
		return 1; /* the unknown section was reported at its header */
	const char *sec = sections[ps->section];
	if (strcmp(sec, "concurrency") == 0) {
		rc = conc_set(ps->c, key, value, ps->line, &prev, why, sizeof why);
		if (rc == -ENOMEM)
			ps->rc = rc;
		else if (rc < 0)
			add_msg(ps->errs, false, "%s:%d: [concurrency] %s", ps->name, ps->line, why);
		else if (prev > 0)
			add_msg(ps->errs, true, "%s:%d: warning: [concurrency] %s given again (line %d); "
				"the last one counts", ps->name, ps->line, key, prev);
		return 1;
	}
	const struct keydef *k = find_key(sec, key, &idx);
	if (!k) {
		add_msg(ps->errs, false, "%s:%d: unknown key '%.100s' in [%s]", ps->name, ps->line,
			key, sec);
		return 1;
	}
	bool keep_flag = ps->c->origin[idx] == -1;
	rc = apply(ps->c, k, value, !keep_flag, why, sizeof why);
	if (rc == -ENOMEM) {
		ps->rc = rc;
		return 1;
	}
	if (rc < 0) {
		add_msg(ps->errs, false, "%s:%d: [%s] %s: %s", ps->name, ps->line, sec, key, why);
		return 1;
	}
	if (ps->seen[idx])
		add_msg(ps->errs, true, "%s:%d: warning: [%s] %s given again (line %d); the last one "
			"counts", ps->name, ps->line, sec, key, ps->seen[idx]);
	ps->seen[idx] = ps->line;
	if (!keep_flag)
		ps->c->origin[idx] = ps->line;
	return 1;
}

int config_load_buffer(struct config *c, const char *name, const char *buf, size_t len,
		       struct config_errors *errs)
{
	if (!errs) {
		struct config_errors tmp;
		config_errors_init(&tmp);
		int rc = config_load_buffer(c, name, buf, len, &tmp);
		config_errors_fini(&tmp);
		return rc;
	}

	struct parse ps = { .c = c, .errs = errs, .name = name, .p = buf, .end = buf + len,
			    .section = -2 };
	size_t before = errs->nerrors;
	char *path;

	if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
		ps.p += 3;
	if (!(path = strdup(name)))
		return -ENOMEM;
	free(c->path);
	c->path = path;
	int ret = ini_parse_stream(reader, &ps, on_value, &ps);
	if (ps.rc < 0)
		return ps.rc;
	if (ret == -2)
		return -ENOMEM;
	if (ret > 0 && ps.nsyntax == 0)
		add_msg(errs, false, "%s:%d: syntax error", name, ret);
	return errs->nerrors > before ? EC_ECONFIG : 0;
}

int config_load(struct config *c, const char *path, struct config_errors *errs)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0;
	int rc;

	if (!f) {
		rc = -errno;
		add_msg(errs, false, "%s: cannot open: %s", path, strerror(-rc));
		return rc;
	}
	buf = malloc(CONFIG_FILE_MAX + 1);
	if (!buf) {
		fclose(f);
		return -ENOMEM;
	}
	len = fread(buf, 1, CONFIG_FILE_MAX + 1, f);
	if (ferror(f)) {
		rc = errno ? -errno : -EIO;
		add_msg(errs, false, "%s: cannot read: %s", path, strerror(-rc));
		goto out;
	}
	if (len > CONFIG_FILE_MAX) {
		rc = EC_ECONFIG;
		add_msg(errs, false, "%s: larger than %d bytes", path, CONFIG_FILE_MAX);
		goto out;
	}
	rc = config_load_buffer(c, path, buf, len, errs);
out:
	free(buf);
	fclose(f);
	return rc;
}

/* ---- finish: derived values and cross-key checks ---- */

/* "FILE:LINE" for where key IDX got its value, "command line", or "default". */
static const char *where(const struct config *c, const char *section, const char *key,
			 char *buf, size_t len)
{
	size_t idx;

	if (!find_key(section, key, &idx) || c->origin[idx] == 0)
		snprintf(buf, len, "%s", c->path ? c->path : "config");
	else if (c->origin[idx] < 0)
		snprintf(buf, len, "command line");
	else
		snprintf(buf, len, "%s:%d", c->path ? c->path : "config", (int)c->origin[idx]);
	return buf;
}

/* The location of whichever of two keys was given (the second if both). */
static const char *where2(const struct config *c, const char *sec, const char *k1,
			  const char *k2, char *buf, size_t len)
{
	return where(c, sec, config_is_set(c, sec, k2) ? k2 : k1, buf, len);
}

static char *node_from_hostname(void)
{
	char host[256];

	if (gethostname(host, sizeof host) < 0)
		return strdup("edgecoord");
	host[sizeof host - 1] = '\0';
	if (!task_id_valid(host, strlen(host))) {
		char *dot = strchr(host, '.');
		if (dot)
			*dot = '\0';
		if (!task_id_valid(host, strlen(host)))
			return strdup("edgecoord");
	}
	return strdup(host);
}

int config_finish(struct config *c, struct config_errors *errs)
{
	if (!errs) {
		struct config_errors tmp;
		config_errors_init(&tmp);
		int rc = config_finish(c, &tmp);
		config_errors_fini(&tmp);
		return rc;
	}
	size_t before = errs->nerrors;
	char w[300];

	if (!c->coordinator.node_id && !(c->coordinator.node_id = node_from_hostname()))
		return -ENOMEM;
	if (!c->mqtt.client_id) {
		size_t n = strlen(c->coordinator.node_id) + sizeof "edgecoord-";
		if (!(c->mqtt.client_id = malloc(n)))
			return -ENOMEM;
		snprintf(c->mqtt.client_id, n, "edgecoord-%s", c->coordinator.node_id);
	}

#define CROSS(cond, sec, k1, k2, ...)                                                     \
	do {                                                                              \
		if (cond) {                                                               \
			char m_[300];                                                     \
			snprintf(m_, sizeof m_, __VA_ARGS__);                             \
			add_msg(errs, false, "%s: %s", where2(c, sec, k1, k2, w, sizeof w), m_); \
		}                                                                         \
	} while (0)

	int ntls = !!c->agents.ca_file + !!c->agents.cert_file + !!c->agents.key_file;
	if (ntls == 1 || ntls == 2) {
		const char *given = c->agents.key_file ? "key_file" :
				    c->agents.cert_file ? "cert_file" : "ca_file";
		add_msg(errs, false, "%s: [agents] ca_file, cert_file and key_file go together: give "
			"all three or none", where(c, "agents", given, w, sizeof w));
	}
	CROSS(!c->mqtt.cert_file != !c->mqtt.key_file, "mqtt", "cert_file", "key_file",
	      "[mqtt] cert_file and key_file go together: give both or neither");
	CROSS(c->scheduler.initial_delay_ms > c->scheduler.max_delay_ms, "scheduler",
	      "initial_delay_s", "max_delay_s",
	      "[scheduler] initial_delay_s is above max_delay_s");
	CROSS(c->coordinator.map_size_bytes > c->coordinator.max_map_size_bytes, "coordinator",
	      "map_size_mb", "max_map_size_mb",
	      "[coordinator] map_size_mb is above max_map_size_mb");
	CROSS(c->limits.max_payload_bytes > c->limits.max_message_bytes, "limits",
	      "max_payload_bytes", "max_message_bytes",
	      "[limits] max_payload_bytes is above max_message_bytes");
#undef CROSS

	bool tls_uri = strncmp(c->mqtt.uri, "ssl://", 6) == 0 ||
		       strncmp(c->mqtt.uri, "mqtts://", 8) == 0;
	if (!tls_uri && (c->mqtt.ca_file || c->mqtt.cert_file))
		add_msg(errs, true, "%s: warning: [mqtt] TLS files are ignored with %s",
			where(c, "mqtt", "uri", w, sizeof w), c->mqtt.uri);

	return errs->nerrors > before ? EC_ECONFIG : 0;
}

/* ---- reference and dump ---- */

static void type_doc(char *buf, size_t len, const struct keydef *k, bool markdown)
{
	char lo[32], hi[32];

	switch (k->type) {
	case CT_STR:
		snprintf(buf, len, k->check == check_id ? "id" : k->check == check_uri ? "URI" :
			 strstr(k->key, "_file") || strcmp(k->key, "data_dir") == 0 ? "path" :
			 "string");
		return;
	case CT_BOOL:
		snprintf(buf, len, "boolean");
		return;
	case CT_HOSTPORT:
		snprintf(buf, len, "HOST:PORT");
		return;
	case CT_ENUM:
		enum_list(buf, len, k->names, markdown ? " \\| " : "|");
		return;
	default:
		break;
	}
	fmt_bound(lo, sizeof lo, k, k->min);
	fmt_bound(hi, sizeof hi, k, k->max);
	snprintf(buf, len, "%s %s..%s", k->type == CT_MB ? "MiB" : k->type == CT_DUR ?
		 (dur_unit(k) == 1 ? "ms" : "seconds") : "integer", lo, hi);
}

void config_print_reference(FILE *f, bool markdown)
{
	char type[200];

	if (markdown) {
		fputs("# Configuration reference\n\n"
		      "<!-- Generated from the key table in src/config.c by "
		      "config_print_reference(); do not edit.\n"
		      "     Regenerate: EC_SRC=. EC_UPDATE_DOCS=1 build/bin/test_config "
		      "(the unit test fails while this file is stale). -->\n\n"
		      "edgecoord reads one INI file (`-c FILE`); with none, every default below "
		      "applies. Every command-line flag sets one of these keys and wins over the "
		      "file.\n\n"
		      "Syntax (inih): `[section]` headers, `key = value` (or `key: value`) lines, "
		      "comments on lines starting with `;` or `#`, and an inline comment after "
		      "whitespace and `;` (a `#` inside a value is kept). Values are taken "
		      "literally, without quotes; an empty value unsets an optional key. Lines are "
		      "at most " EC_STR(CONFIG_LINE_MAX) " characters. An unknown section or key, a value that does not "
		      "parse or is out of range, and a line that is too long are errors that name "
		      "the file and line; a key given twice is a warning (the last one counts).\n\n"
		      "Units: keys ending in `_s` take seconds and keys ending in `_ms` "
		      "milliseconds; a duration may be fractional (`1.5`) or carry its own unit "
		      "(`250ms`, `2s`, `5m`, `1h`). Keys in `_mb` are MiB. Booleans are "
		      "`true/false`, `yes/no`, `on/off` or `1/0`.\n", f);
	} else {
		fputs("Configuration keys ([section] key = default; see docs/config.md):\n", f);
	}
	for (size_t s = 0; s < NSECTIONS; s++) {
		if (strcmp(sections[s], "concurrency") == 0) {
			if (markdown)
				fprintf(f, "\n## [concurrency]\n\n"
					"Free keys: `TYPE = N` caps the tasks of type TYPE running at once, "
					"fleet-wide. TYPE is a task type (`[A-Za-z0-9._-]{1,100}`), N an "
					"integer 1..%d; at most %d types. A type without an entry has no "
					"cap.\n", CONC_MAX_VALUE, CONFIG_CONCURRENCY_MAX);
			else
				fprintf(f, "  [concurrency]\n    TYPE = N\n        At most N (1..%d) tasks "
					"of TYPE running fleet-wide.\n", CONC_MAX_VALUE);
			continue;
		}
		if (markdown)
			fprintf(f, "\n## [%s]\n\n| key | type | default | description |\n"
				"|---|---|---|---|\n", sections[s]);
		else
			fprintf(f, "  [%s]\n", sections[s]);
		for (size_t i = 0; i < NKEYS; i++) {
			const struct keydef *k = &keys[i];
			if (strcmp(k->section, sections[s]) != 0)
				continue;
			type_doc(type, sizeof type, k, markdown);
			if (markdown)
				fprintf(f, "| `%s` | %s | %s%s%s | %s |\n", k->key, type,
					k->def ? "`" : "", k->def ? k->def : k->def_doc,
					k->def ? "`" : "", k->help);
			else
				fprintf(f, "    %s = %s%s%s  (%s)\n        %s\n", k->key,
					k->def ? "" : "(", k->def ? k->def : k->def_doc,
					k->def ? "" : ")", type, k->help);
		}
	}
}

void config_dump(const struct config *c, FILE *f)
{
	const char *cur = NULL;
	char v[64];

	for (size_t s = 0; s < NSECTIONS; s++) {
		fprintf(f, "%s[%s]\n", s ? "\n" : "", sections[s]);
		if (strcmp(sections[s], "concurrency") == 0) {
			for (size_t i = 0; i < c->concurrency.n; i++)
				fprintf(f, "%s = %u\n", c->concurrency.v[i].type,
					c->concurrency.v[i].max);
			continue;
		}
		for (size_t i = 0; i < NKEYS; i++) {
			const struct keydef *k = &keys[i];
			const char *field = (const char *)c + k->off;
			if (strcmp(k->section, sections[s]) != 0)
				continue;
			cur = v;
			switch (k->type) {
			case CT_STR:
				cur = *(char *const *)field;
				if (cur && strcmp(k->key, "password") == 0)
					cur = "********";
				if (!cur)
					cur = "";
				break;
			case CT_BOOL:
				cur = *(const bool *)field ? "true" : "false";
				break;
			case CT_ENUM:
				cur = enum_name_of(k->names, *(const int *)field);
				break;
			case CT_HOSTPORT: {
				const struct config_hostport *hp = (const void *)field;
				const char *h = hp->host ? hp->host : "";
				bool v6 = strchr(h, ':') != NULL;
				fprintf(f, "%s = %s%s%s:%u\n", k->key, v6 ? "[" : "", h, v6 ? "]" : "",
					hp->port);
				continue;
			}
			case CT_INT:
				snprintf(v, sizeof v, "%lld", (long long)*(const int64_t *)field);
				break;
			case CT_MB:
				snprintf(v, sizeof v, "%lld",
					 (long long)(*(const int64_t *)field / 1048576));
				break;
			case CT_DUR:
				fmt_duration(v, sizeof v, *(const int64_t *)field, dur_unit(k));
				break;
			}
			fprintf(f, "%s =%s%s\n", k->key, *cur ? " " : "", cur);
		}
	}
}

void config_limits(const struct config *c, struct limits *out)
{
	out->max_message_bytes = (size_t)c->limits.max_message_bytes;
	out->max_payload_bytes = (size_t)c->limits.max_payload_bytes;
	out->max_tasks_per_submission = (uint32_t)c->limits.max_tasks_per_submission;
	out->max_deps_per_task = (uint32_t)c->limits.max_deps_per_task;
	out->max_depth = (uint32_t)c->limits.max_depth;
}

uint32_t config_concurrency_max(const struct config *c, const char *type)
{
	for (size_t i = 0; i < c->concurrency.n; i++)
		if (strcmp(c->concurrency.v[i].type, type) == 0)
			return c->concurrency.v[i].max;
	return 0;
}
