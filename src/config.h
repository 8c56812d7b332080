/* SPDX-License-Identifier: MIT */
/*
 * config.h - the daemon's configuration: defaults, the INI file (inih),
 * command-line overrides, derived values and cross-key checks.
 *
 * Every key lives in one static table in config.c (section, key, field,
 * type, bounds, default, help), after redis's static_configs[]; the reference
 * printed by --help and committed as docs/config.md is generated from it, so
 * the two cannot drift.
 *
 * Typical start-up (main thread):
 *
 *     config_defaults(&cfg);
 *     for each flag: config_set(&cfg, "mqtt", "uri", arg, err, sizeof err);
 *     if (path) config_load(&cfg, path, &errs);
 *     config_finish(&cfg, &errs);
 *
 * A value given by config_set() is kept by a later config_load() (the file's
 * value is still parsed and checked, then dropped), so flags win whatever the
 * order. Errors are collected, never printed: each is one line
 * "FILE:LINE: message" (or "command line: ..." for a flag).
 *
 * Units: keys ending in _s take seconds (fractional allowed for durations, or
 * a unit suffix ms/s/m/h), keys ending in _ms take milliseconds; all
 * durations are stored in milliseconds (fields named *_ms). Keys ending in _mb
 * are stored in bytes (fields named *_bytes).
 *
 * Not thread-safe: load and read on one thread, or hand a finished config to
 * other threads read-only. The parse changes none of inih's globals.
 */
#ifndef EC_CONFIG_H
#define EC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "task.h"

/* The longest line we accept, excluding the line ending: inih r55 is built
 * with INI_MAX_LINE 200, which holds 197 characters plus "\r\n\0". */
#define CONFIG_LINE_MAX 197
/* At most this many [concurrency] entries. */
#define CONFIG_CONCURRENCY_MAX 1024
/* Room for one origin slot per table key (checked at compile time). */
#define CONFIG_KEYS_MAX 64
/* A config file larger than this is refused. */
#define CONFIG_FILE_MAX (1024 * 1024)

enum config_status_events { CONFIG_STATUS_MILESTONES = 0, CONFIG_STATUS_ALL, CONFIG_STATUS_FINAL };
enum config_routing { ROUTE_LEAST_LOADED = 0, ROUTE_ROUND_ROBIN, ROUTE_PERFORMANCE };

struct config_hostport {
	char *host;     /* owned; "0.0.0.0", "::", a name; never NULL after defaults */
	uint16_t port;  /* 1..65535 */
};

struct config_concurrency {
	char type[TASK_ID_MAX + 1];
	uint32_t max;           /* >= 1 */
	int32_t origin;         /* > 0 file line, -1 flag (a file does not replace it) */
};

/* All strings are owned by the struct (freed by config_fini). Optional
 * strings are NULL when unset; an empty value in the file also unsets. */
struct config {
	struct {
		char *node_id;          /* NULL until config_finish (hostname) */
		char *data_dir;
		int64_t map_size_bytes;
		int64_t max_map_size_bytes;
		int64_t keep_final_s;   /* 0 = final tasks are kept forever */
		int64_t max_unfinished; /* 0 = no limit */
	} coordinator;
	struct {
		char *uri;
		char *client_id;        /* NULL until config_finish (edgecoord-NODE) */
		char *topic_prefix;
		char *username, *password;
		char *ca_file, *cert_file, *key_file;
		int64_t keepalive_s;    /* whole seconds, as MQTT carries them */
		int64_t result_ttl_s;   /* message expiry; 0 = never expires */
		int status_events;      /* enum config_status_events */
		int64_t outbox_max;
	} mqtt;
	struct {
		struct config_hostport listen;
		char *ca_file, *cert_file, *key_file;
		int64_t heartbeat_ms;
		int64_t heartbeat_misses;
		int64_t max_frame;
		int64_t handshake_timeout_ms;
	} agents;
	struct {
		int routing;            /* enum config_routing */
		int64_t aging_ms;       /* 0 = no aging */
		int64_t task_timeout_ms;
		int64_t max_attempts;
		int backoff;            /* enum backoff (task.h), never BACKOFF_UNSET */
		int64_t initial_delay_ms;
		int64_t max_delay_ms;
		bool jitter;
		int64_t max_pending_per_source; /* 0 = unlimited */
		int64_t breaker_failures;       /* 0 = no circuit breaker */
		int64_t breaker_cooldown_ms;
	} scheduler;
	struct {
		int64_t max_message_bytes;
		int64_t max_payload_bytes;
		int64_t max_tasks_per_submission;
		int64_t max_deps_per_task;
		int64_t max_depth;
	} limits;
	struct {
		struct config_concurrency *v;   /* owned array */
		size_t n;
	} concurrency;
	struct {
		int level;              /* enum log_level (log.h) */
		bool syslog;
	} log;

	/* Bookkeeping: where each table key got its value. */
	char *path;                     /* the file loaded last, or NULL */
	int32_t origin[CONFIG_KEYS_MAX]; /* 0 default, > 0 file line, -1 flag */
};

/* One message of a load/finish. */
struct config_msg {
	bool warning;
	char text[512];                 /* "FILE:LINE: message" */
};

/* Collected messages. At most CONFIG_MSGS_KEPT are stored; the counts go on. */
#define CONFIG_MSGS_KEPT 100
struct config_errors {
	size_t nerrors, nwarnings;
	size_t n;                       /* stored messages */
	struct config_msg *msgs;        /* owned */
};

void config_errors_init(struct config_errors *e);
void config_errors_fini(struct config_errors *e);
/* One line per stored message, then "... and N more" if some were dropped. */
void config_errors_print(const struct config_errors *e, FILE *f);

/* All defaults of DESIGN 6. Aborts (fatalx) only if out of memory. */
void config_defaults(struct config *c);
/* Frees every string and array; c may be NULL; leaves c zeroed. */
void config_fini(struct config *c);

/* Parses PATH into C, collecting every problem into ERRS (may be NULL).
 * Returns 0, EC_ECONFIG when there were errors (C then holds what did parse
 * and must still be finished with config_fini), -errno when the file cannot
 * be read (an error message is added too), -ENOMEM. Warnings (a duplicate
 * key) do not fail the load. */
int config_load(struct config *c, const char *path, struct config_errors *errs);

/* The same from bytes in memory (need not be NUL-terminated); NAME is the
 * file name used in messages (borrowed). Returns 0, EC_ECONFIG, -ENOMEM. */
int config_load_buffer(struct config *c, const char *name, const char *buf,
		       size_t len, struct config_errors *errs);

/* Parses and sets one value as a command-line flag would: it wins over any
 * config_load, before or after. SECTION "concurrency" takes KEY = a task
 * type. Returns 0, or EC_ECONFIG with a sentence in ERR (ERRLEN > 0). */
int config_set(struct config *c, const char *section, const char *key,
	       const char *value, char *err, size_t errlen);

/* Fills derived defaults (node_id from the host name, client_id
 * "edgecoord-NODE") and checks keys against each other. Returns 0 or
 * EC_ECONFIG (messages in ERRS, may be NULL). Call once, after all loads and
 * sets. */
int config_finish(struct config *c, struct config_errors *errs);

/* The reference of every key: type, bounds, default, help. MARKDOWN selects
 * docs/config.md's form; otherwise compact text for --help. */
void config_print_reference(FILE *f, bool markdown);

/* The effective configuration as an INI file that config_load accepts; the
 * password is printed as "********". */
void config_dump(const struct config *c, FILE *f);

/* [limits] as the codec wants them. */
void config_limits(const struct config *c, struct limits *out);

/* [concurrency] limit for TYPE, or 0 when it has none. */
uint32_t config_concurrency_max(const struct config *c, const char *type);

/* Whether [section] key was given in the file or by a flag (not a default). */
bool config_is_set(const struct config *c, const char *section, const char *key);

#endif
