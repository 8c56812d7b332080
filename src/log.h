/* SPDX-License-Identifier: MIT */
/*
 * log.h - the daemon's logging, after OpenBSD's log.h.
 *
 * Lines go to stderr (journald reads the "<N>" level prefix when
 * log_init(..., stderr_prefix=1)) or to syslog. log_warn() appends the text of
 * errno; log_warnx() does not. Important events carry a stable TAG as the
 * first word (e.g. "AGENT-LOST ..."), so operators can grep for them. Payload
 * bytes are never logged at info level. Thread-safe (one write per line).
 */
#ifndef EC_LOG_H
#define EC_LOG_H

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

void log_init(const char *ident, int level, int use_syslog);
void log_set_level(int level);
int log_get_level(void);
/* "error", "warn", "info", "debug" -> level, or -1. */
int log_level_parse(const char *s);
const char *log_level_name(int level);

void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Log at error level and exit(1): start-up failures and broken invariants. */
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
