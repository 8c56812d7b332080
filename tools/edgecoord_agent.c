/* SPDX-License-Identifier: MIT */
/*
 * edgecoord_agent.c - the reference device agent (DESIGN 1): the agent
 * library plus the built-in task types echo, sleep, fail, sha256, and
 * --exec TYPE=COMMAND, which runs COMMAND with /bin/sh -c per job.
 *
 * One poll() loop, no threads: the agent's socket, the pipes of running
 * commands, and timers (sleeps, command timeouts, SIGTERM -> SIGKILL grace).
 * Payloads arrive as CBOR; for --exec they are handed to the command as JSON
 * on stdin and its stdout comes back as JSON (cJSON for the text, the small
 * CBOR reader/writer of proto.h for the rest).
 *
 * Exit: 0 on SIGTERM/SIGINT, 2 on bad usage or certificates that do not
 * load, 1 on a runtime failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cJSON.h>
#include <mbedtls/sha256.h>

#include "edgecoord/agent.h"
#include "edgecoord/err.h"
#include "edgecoord/proto.h"

#define STDERR_TAIL 1024
#define STDOUT_MAX (1u << 20)
#define KILL_GRACE_MS 2000
#define JSON_DEPTH EC_CBOR_MAX_DEPTH

static volatile sig_atomic_t stop_sig;
static void on_signal(int sig) { stop_sig = sig; }

static void usage(FILE *f)
{
	fprintf(f,
		"usage: edgecoord-agent --coordinator HOST:PORT --id ID --ca FILE --cert FILE --key FILE\n"
		"         [--caps TYPE[,TYPE...]] [--exec TYPE=COMMAND]... [--slots N]\n"
		"         [--labels k=v[,k=v...]] [--server-name NAME] [--version] [--help]\n"
		"built-in types for --caps: echo, sleep, fail, sha256\n"
		"--server-name: the name checked in the coordinator's certificate (default HOST)\n");
}

/* ---- jobs the tool runs itself -------------------------------------------- */

enum jkind { J_SLEEP, J_EXEC };

struct tjob {
	bool used;
	enum jkind kind;
	uint64_t lease;
	uint64_t due;           /* sleep end, or the exec timeout (0 = none) */
	uint64_t slept_ms;
	pid_t pid;
	int in, out, err;       /* pipes, -1 when closed */
	char *in_buf;           /* JSON for stdin */
	size_t in_len, in_off;
	char *out_buf;
	size_t out_len;
	char err_tail[STDERR_TAIL];
	size_t err_len;         /* bytes in err_tail (ring, newest last) */
	const char *stop_why;   /* timeout / cancel: the failure text */
	uint64_t kill_at;       /* SIGKILL due after SIGTERM */
	bool reaped;
	int status;
};

static struct tjob jobs[EC_MAX_SLOTS];

/* Process groups whose leader was stopped and has exited while the rest of
 * the group may still run: each gets its SIGKILL when the grace ends. The
 * group id cannot be reused while any member lives. */
static struct {
	pid_t pg;
	uint64_t at;
} gkill[EC_MAX_SLOTS];

static void gkill_later(pid_t pg, uint64_t at)
{
	for (size_t i = 0; i < EC_MAX_SLOTS; i++)
		if (!gkill[i].pg) {
			gkill[i].pg = pg;
			gkill[i].at = at;
			return;
		}
	kill(-pg, SIGKILL); /* no room to wait: kill now */
}
static uint64_t now_ms;

struct exec_type {
	char *type, *cmd;
};
static struct exec_type execs[EC_MAX_CAPS];
static size_t nexecs;

static struct tjob *tjob_new(uint64_t lease, enum jkind k)
{
	for (size_t i = 0; i < EC_MAX_SLOTS; i++)
		if (!jobs[i].used) {
			memset(&jobs[i], 0, sizeof(jobs[i]));
			jobs[i].used = true;
			jobs[i].lease = lease;
			jobs[i].kind = k;
			jobs[i].in = jobs[i].out = jobs[i].err = -1;
			return &jobs[i];
		}
	return NULL;
}

static void tjob_free(struct tjob *j)
{
	if (j->in >= 0)
		close(j->in);
	if (j->out >= 0)
		close(j->out);
	if (j->err >= 0)
		close(j->err);
	free(j->in_buf);
	free(j->out_buf);
	j->used = false;
}

static struct tjob *tjob_find(uint64_t lease)
{
	for (size_t i = 0; i < EC_MAX_SLOTS; i++)
		if (jobs[i].used && jobs[i].lease == lease)
			return &jobs[i];
	return NULL;
}

/* ---- CBOR helpers ------------------------------------------------------------ */

/* Look up text key in a CBOR map; *val points at its value item. */
static bool map_get(const uint8_t *m, size_t len, const char *key, struct ec_cbor_r *val)
{
	struct ec_cbor_r r = {m, m + len};
	struct ec_cbor_item it;
	if (!m || ec_cbor_next(&r, &it) || it.major != 5 || it.indef)
		return false;
	for (uint64_t i = 0; i < it.arg; i++) {
		struct ec_cbor_item k;
		const uint8_t *kp = r.p;
		if (ec_cbor_next(&r, &k))
			return false;
		if (k.major == 3 && !k.indef && k.arg == strlen(key) &&
		    memcmp(k.data, key, k.arg) == 0) {
			*val = r;
			return true;
		}
		r.p = kp;
		if (ec_cbor_skip(&r, JSON_DEPTH) || ec_cbor_skip(&r, JSON_DEPTH))
			return false;
	}
	return false;
}

static bool map_get_uint(const uint8_t *m, size_t len, const char *key, uint64_t *v)
{
	struct ec_cbor_r r;
	struct ec_cbor_item it;
	if (!map_get(m, len, key, &r) || ec_cbor_next(&r, &it) || it.major != 0)
		return false;
	*v = it.arg;
	return true;
}

static cJSON *cbor_to_json(struct ec_cbor_r *r, int depth);

static char *b64(const uint8_t *p, size_t n)
{
	static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char *o = malloc((n + 2) / 3 * 4 + 1), *q = o;
	if (!o)
		return NULL;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
			(i + 2 < n ? p[i + 2] : 0);
		*q++ = t[v >> 18 & 63];
		*q++ = t[v >> 12 & 63];
		*q++ = i + 1 < n ? t[v >> 6 & 63] : '=';
		*q++ = i + 2 < n ? t[v & 63] : '=';
	}
	*q = '\0';
	return o;
}

/* A definite or indefinite string, concatenated and NUL-terminated (new). */
static char *read_string(struct ec_cbor_r *r, const struct ec_cbor_item *it, size_t *n)
{
	if (!it->indef) {
		char *s = malloc(it->arg + 1);
		if (s) {
			memcpy(s, it->data, it->arg);
			s[it->arg] = '\0';
			*n = it->arg;
		}
		return s;
	}
	size_t len = 0;
	char *s = malloc(1);
	for (;;) {
		struct ec_cbor_item c;
		if (!s || ec_cbor_next(r, &c)) {
			free(s);
			return NULL;
		}
		if (c.major == 7 && c.indef)
			break;
		char *t = realloc(s, len + c.arg + 1);
		if (!t) {
			free(s);
			return NULL;
		}
		s = t;
		memcpy(s + len, c.data, c.arg);
		len += c.arg;
	}
	s[len] = '\0';
	*n = len;
	return s;
}

/* Depth is bounded by JSON_DEPTH, and the input was checked by the codec. */
static cJSON *cbor_to_json(struct ec_cbor_r *r, int depth)
{
	struct ec_cbor_item it;
	if (depth > JSON_DEPTH || ec_cbor_next(r, &it))
		return NULL;
	size_t n;
	char *s;
	cJSON *j = NULL;
	switch (it.major) {
	case 0:
		return cJSON_CreateNumber((double)it.arg);
	case 1:
		return cJSON_CreateNumber(-1.0 - (double)it.arg);
	case 2:
		if (!(s = read_string(r, &it, &n)))
			return NULL;
		{
			char *e = b64((uint8_t *)s, n);
			j = e ? cJSON_CreateString(e) : NULL;
			free(e);
		}
		free(s);
		return j;
	case 3:
		if (!(s = read_string(r, &it, &n)))
			return NULL;
		j = cJSON_CreateString(s);
		free(s);
		return j;
	case 4:
	case 5:
		j = it.major == 4 ? cJSON_CreateArray() : cJSON_CreateObject();
		for (uint64_t i = 0; j && (it.indef || i < it.arg); i++) {
			if (it.indef && r->p < r->end && *r->p == 0xff) {
				r->p++;
				break;
			}
			char key[64] = "";
			char *kstr = NULL;
			if (it.major == 5) {
				struct ec_cbor_item k;
				const uint8_t *kp = r->p;
				if (ec_cbor_next(r, &k))
					goto bad;
				if (k.major == 3) {
					if (!(kstr = read_string(r, &k, &n)))
						goto bad;
				} else {
					if (k.major == 0 || k.major == 1)
						snprintf(key, sizeof(key), "%s%llu",
							 k.major == 1 ? "-" : "",
							 (unsigned long long)(k.major == 1 ? k.arg + 1 : k.arg));
					r->p = kp;
					if (ec_cbor_skip(r, JSON_DEPTH))
						goto bad;
				}
			}
			cJSON *v = cbor_to_json(r, depth + 1);
			if (!v) {
				free(kstr);
				goto bad;
			}
			if (it.major == 4)
				cJSON_AddItemToArray(j, v);
			else
				cJSON_AddItemToObject(j, kstr ? kstr : key, v);
			free(kstr);
		}
		return j;
	case 6:
		return cbor_to_json(r, depth + 1);
	default:
		if (it.is_float)
			return cJSON_CreateNumber(it.d);
		if (it.arg == 20 || it.arg == 21)
			return cJSON_CreateBool(it.arg == 21);
		return cJSON_CreateNull();
	}
bad:
	cJSON_Delete(j);
	return NULL;
}

static void json_to_cbor(const cJSON *j, struct ec_cbor_w *w, int depth)
{
	if (depth > JSON_DEPTH) {
		w->err = EC_ETOO_LARGE;
		return;
	}
	if (cJSON_IsNumber(j)) {
		double d = j->valuedouble;
		if (d == (double)(int64_t)d && d >= -9.2e18 && d <= 9.2e18)
			ec_cbor_w_int(w, (int64_t)d);
		else
			ec_cbor_w_double(w, d);
	} else if (cJSON_IsString(j)) {
		ec_cbor_w_text(w, j->valuestring);
	} else if (cJSON_IsBool(j)) {
		ec_cbor_w_bool(w, cJSON_IsTrue(j));
	} else if (cJSON_IsArray(j) || cJSON_IsObject(j)) {
		size_t n = (size_t)cJSON_GetArraySize(j);
		if (cJSON_IsArray(j))
			ec_cbor_w_array(w, n);
		else
			ec_cbor_w_map(w, n);
		for (const cJSON *c = j->child; c; c = c->next) {
			if (cJSON_IsObject(j))
				ec_cbor_w_text(w, c->string);
			json_to_cbor(c, w, depth + 1);
		}
	} else {
		ec_cbor_w_null(w);
	}
}

/* ---- built-in handlers ------------------------------------------------------- */

static void finish_map1(struct ec_agent *a, uint64_t lease, const char *key, bool text,
			const char *s, uint64_t v)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 1);
	ec_cbor_w_text(&w, key);
	if (text)
		ec_cbor_w_text(&w, s);
	else
		ec_cbor_w_uint(&w, v);
	if (ec_cbor_w_finish(&w) == 0)
		ec_agent_result(a, lease, w.buf, w.len);
	else
		ec_agent_fail(a, lease, "out of memory");
	ec_cbor_w_fini(&w);
}

static void h_echo(struct ec_agent *a, const struct ec_job *job, void *arg)
{
	static const uint8_t empty_map = 0xa0;
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 2);  /* canonical order: "inputs" before "payload" */
	ec_cbor_w_text(&w, "inputs");
	ec_cbor_w_raw(&w, job->inputs ? job->inputs : &empty_map, job->inputs ? job->inputs_len : 1);
	ec_cbor_w_text(&w, "payload");
	ec_cbor_w_raw(&w, job->payload, job->payload_len);
	if (ec_cbor_w_finish(&w) == 0)
		ec_agent_result(a, job->lease, w.buf, w.len);
	else
		ec_agent_fail(a, job->lease, "out of memory");
	ec_cbor_w_fini(&w);
}

static void h_sleep(struct ec_agent *a, const struct ec_job *job, void *arg)
{
	uint64_t ms = 0;
	if (!map_get_uint(job->payload, job->payload_len, "ms", &ms) || ms > 86400000) {
		ec_agent_fail(a, job->lease, "sleep needs {\"ms\": N} with 0 <= N <= 86400000");
		return;
	}
	struct tjob *j = tjob_new(job->lease, J_SLEEP);
	if (!j) {
		ec_agent_fail(a, job->lease, "no free slot");
		return;
	}
	ec_agent_started(a, job->lease);
	j->slept_ms = ms;
	j->due = now_ms + ms;
	if (job->timeout_ms && job->timeout_ms < ms) {
		j->due = now_ms + job->timeout_ms;
		j->stop_why = "timeout";
	}
}

static void h_fail(struct ec_agent *a, const struct ec_job *job, void *arg)
{
	uint64_t n = UINT64_MAX;
	map_get_uint(job->payload, job->payload_len, "fail_attempts", &n);
	if (job->attempt <= n)
		ec_agent_fail(a, job->lease, "requested failure");
	else
		finish_map1(a, job->lease, "attempt", false, NULL, job->attempt);
}

static void h_sha256(struct ec_agent *a, const struct ec_job *job, void *arg)
{
	struct ec_cbor_r r;
	struct ec_cbor_item it;
	if (!map_get(job->payload, job->payload_len, "data", &r) || ec_cbor_next(&r, &it) ||
	    it.major != 3 || it.indef) {
		ec_agent_fail(a, job->lease, "sha256 needs {\"data\": \"text\"}");
		return;
	}
	unsigned char md[32];
	char hex[65];
	mbedtls_sha256_ret(it.data, it.arg, md, 0);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	finish_map1(a, job->lease, "sha256", true, hex, 0);
}

/* ---- --exec --------------------------------------------------------------------- */

static void set_nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	fcntl(fd, F_SETFD, FD_CLOEXEC);
}

static char *stdin_json(const struct ec_job *job)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "task_id", job->task_id);
	cJSON_AddNumberToObject(o, "attempt", job->attempt);
	cJSON *p = NULL, *in = NULL;
	if (job->payload) {
		struct ec_cbor_r r = {job->payload, job->payload + job->payload_len};
		p = cbor_to_json(&r, 0);
	}
	if (job->inputs) {
		struct ec_cbor_r r = {job->inputs, job->inputs + job->inputs_len};
		in = cbor_to_json(&r, 0);
	}
	cJSON_AddItemToObject(o, "payload", p ? p : cJSON_CreateNull());
	cJSON_AddItemToObject(o, "inputs", in ? in : cJSON_CreateObject());
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return s;
}

static void h_exec(struct ec_agent *a, const struct ec_job *job, void *arg)
{
	const char *cmd = arg;
	struct tjob *j = tjob_new(job->lease, J_EXEC);
	if (!j) {
		ec_agent_fail(a, job->lease, "no free slot");
		return;
	}
	char *js = stdin_json(job);
	int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1};
	if (!js || pipe(pin) || pipe(pout) || pipe(perr)) {
		ec_agent_fail(a, job->lease, "cannot start the command (pipes)");
		goto undo;
	}
	pid_t pid = fork();
	if (pid < 0) {
		ec_agent_fail(a, job->lease, "cannot start the command (fork)");
		goto undo;
	}
	if (pid == 0) {
		setpgid(0, 0);  /* its own group: a timeout kills all it started */
		signal(SIGPIPE, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		dup2(pin[0], 0);
		dup2(pout[1], 1);
		dup2(perr[1], 2);
		for (int i = 0; i < 2; i++) {
			close(pin[i]);
			close(pout[i]);
			close(perr[i]);
		}
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	setpgid(pid, pid);
	close(pin[0]);
	close(pout[1]);
	close(perr[1]);
	j->pid = pid;
	j->in = pin[1];
	j->out = pout[0];
	j->err = perr[0];
	set_nonblock(j->in);
	set_nonblock(j->out);
	set_nonblock(j->err);
	j->in_buf = js;
	j->in_len = strlen(js);
	if (job->timeout_ms)
		j->due = now_ms + job->timeout_ms;
	ec_agent_started(a, job->lease);
	return;
undo:
	free(js);
	for (int i = 0; i < 2; i++) {
		if (pin[i] >= 0)
			close(pin[i]);
		if (pout[i] >= 0)
			close(pout[i]);
		if (perr[i] >= 0)
			close(perr[i]);
	}
	tjob_free(j);
}

static void stop_job(struct tjob *j, const char *why)
{
	if (j->stop_why && j->kill_at)
		return;
	j->stop_why = why;
	if (j->kind == J_EXEC) {
		/* The whole group, even when the shell has exited: what it left
		 * running in the background holds the pipes (the group id is not
		 * reused while a member lives). */
		kill(-j->pid, SIGTERM);
		j->kill_at = now_ms + KILL_GRACE_MS;
	} else {
		j->due = now_ms;  /* a sleep ends now, as a failure */
	}
}

static void on_cancel(void *ctx, struct ec_agent *a, uint64_t lease, const char *reason)
{
	struct tjob *j = tjob_find(lease);
	fprintf(stderr, "edgecoord-agent info: CANCEL lease %llu (%s)%s\n",
		(unsigned long long)lease, reason ? reason : "no reason",
		j ? "" : ": not running here");
	if (j)
		stop_job(j, "cancelled");
	else
		ec_agent_fail(a, lease, "cancelled");
}

/* Command finished and its pipes are drained: report. */
static void exec_done(struct ec_agent *a, struct tjob *j)
{
	if (j->stop_why && j->kill_at) /* the rest of its group still gets SIGKILL */
		gkill_later(j->pid, j->kill_at);
	if (j->stop_why) {
		char msg[64];
		snprintf(msg, sizeof(msg), "%s", j->stop_why);
		ec_agent_fail(a, j->lease, msg);
	} else if (WIFEXITED(j->status) && WEXITSTATUS(j->status) == 0) {
		/* stdout: JSON, else a string, else (empty) null */
		size_t n = j->out_len;
		while (n > 0 && (j->out_buf[n - 1] == '\n' || j->out_buf[n - 1] == '\r'))
			n--;
		struct ec_cbor_w w;
		ec_cbor_w_init(&w);
		if (n == 0) {
			ec_cbor_w_null(&w);
		} else {
			j->out_buf[n] = '\0';
			const char *end = NULL;
			cJSON *js = cJSON_ParseWithOpts(j->out_buf, &end, 1);
			if (js)
				json_to_cbor(js, &w, 0);
			else
				ec_cbor_w_textn(&w, j->out_buf, n);
			cJSON_Delete(js);
		}
		if (ec_cbor_w_finish(&w) == 0)
			ec_agent_result(a, j->lease, w.buf, w.len);
		else
			ec_agent_fail(a, j->lease, "output could not be converted");
		ec_cbor_w_fini(&w);
	} else {
		char msg[STDERR_TAIL + 64];
		size_t start = 0;
		/* do not start inside a UTF-8 sequence */
		while (start < j->err_len && ((uint8_t)j->err_tail[start] & 0xc0) == 0x80)
			start++;
		size_t n = j->err_len - start;
		while (n > 0 && j->err_tail[start + n - 1] == '\n')
			n--;
		if (n)
			snprintf(msg, sizeof(msg), "%.*s", (int)n, j->err_tail + start);
		else if (WIFEXITED(j->status))
			snprintf(msg, sizeof(msg), "exit status %d", WEXITSTATUS(j->status));
		else
			snprintf(msg, sizeof(msg), "killed by signal %d", WTERMSIG(j->status));
		ec_agent_fail(a, j->lease, msg);
	}
	tjob_free(j);
}

static void exec_io(struct tjob *j, short rev_in, short rev_out, short rev_err)
{
	if (j->in >= 0 && rev_in) {
		ssize_t n = write(j->in, j->in_buf + j->in_off, j->in_len - j->in_off);
		if (n > 0)
			j->in_off += (size_t)n;
		if ((n < 0 && errno != EAGAIN) || j->in_off == j->in_len) {
			close(j->in);
			j->in = -1;
		}
	}
	if (j->out >= 0 && rev_out) {
		char buf[8192];
		ssize_t n = read(j->out, buf, sizeof(buf));
		if (n > 0) {
			if (j->out_len + (size_t)n > STDOUT_MAX) {
				stop_job(j, "output larger than 1 MiB");
			} else {
				char *b = realloc(j->out_buf, j->out_len + (size_t)n + 1);
				if (b) {
					j->out_buf = b;
					memcpy(b + j->out_len, buf, (size_t)n);
					j->out_len += (size_t)n;
				}
			}
		} else if (n == 0 || errno != EAGAIN) {
			close(j->out);
			j->out = -1;
		}
	}
	if (j->err >= 0 && rev_err) {
		char buf[4096];
		ssize_t n = read(j->err, buf, sizeof(buf));
		if (n > 0) {
			for (ssize_t i = 0; i < n; i++) {
				if (j->err_len == STDERR_TAIL) {
					memmove(j->err_tail, j->err_tail + 1, STDERR_TAIL - 1);
					j->err_len--;
				}
				j->err_tail[j->err_len++] = buf[i];
			}
		} else if (n == 0 || errno != EAGAIN) {
			close(j->err);
			j->err = -1;
		}
	}
}

/* ---- options ------------------------------------------------------------------ */

static void logcb(void *ctx, int level, const char *msg)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};
	fprintf(stderr, "edgecoord-agent %s: %s\n", names[level & 3], msg);
}

static int add_csv(char *s, char **out, size_t max, size_t *n)
{
	for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
		if (*n >= max)
			return -1;
		out[(*n)++] = tok;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{"coordinator", required_argument, NULL, 'C'}, {"id", required_argument, NULL, 'i'},
		{"ca", required_argument, NULL, 'a'}, {"cert", required_argument, NULL, 'c'},
		{"key", required_argument, NULL, 'k'}, {"caps", required_argument, NULL, 'p'},
		{"exec", required_argument, NULL, 'e'}, {"slots", required_argument, NULL, 's'},
		{"labels", required_argument, NULL, 'l'}, {"server-name", required_argument, NULL, 'n'},
		{"version", no_argument, NULL, 'V'}, {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct ec_agent_opts o = {.log = logcb, .on_cancel = on_cancel};
	char *caps[EC_MAX_CAPS], *labels_s[EC_MAX_LABELS];
	size_t ncaps = 0, nlabels = 0;
	struct ec_label labels[EC_MAX_LABELS];
	int bad = 0, c;
	while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (c) {
		case 'C': o.coordinator = optarg; break;
		case 'i': o.id = optarg; break;
		case 'a': o.ca_file = optarg; break;
		case 'c': o.cert_file = optarg; break;
		case 'k': o.key_file = optarg; break;
		case 'n': o.server_name = optarg; break;
		case 'p':
			if (add_csv(optarg, caps, EC_MAX_CAPS, &ncaps)) {
				fprintf(stderr, "edgecoord-agent: too many --caps\n");
				bad = 1;
			}
			break;
		case 'e': {
			char *eq = strchr(optarg, '=');
			if (!eq || eq == optarg || !eq[1] || nexecs >= EC_MAX_CAPS) {
				fprintf(stderr, "edgecoord-agent: --exec wants TYPE=COMMAND\n");
				bad = 1;
				break;
			}
			*eq = '\0';
			execs[nexecs++] = (struct exec_type){optarg, eq + 1};
			break;
		}
		case 's': {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v < 1 || v > EC_MAX_LEASES) {
				fprintf(stderr, "edgecoord-agent: --slots wants 1..%d\n", EC_MAX_LEASES);
				bad = 1;
			}
			o.slots = (uint32_t)v;
			break;
		}
		case 'l':
			if (add_csv(optarg, labels_s, EC_MAX_LABELS, &nlabels)) {
				fprintf(stderr, "edgecoord-agent: too many --labels\n");
				bad = 1;
			}
			break;
		case 'V':
			printf("edgecoord-agent %s (protocol %d)\n", EC_VERSION, EC_PROTO_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			bad = 1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "edgecoord-agent: unexpected argument %s\n", argv[optind]);
		bad = 1;
	}
	const char *need[][2] = {{o.coordinator, "--coordinator"}, {o.id, "--id"},
				 {o.ca_file, "--ca"}, {o.cert_file, "--cert"}, {o.key_file, "--key"}};
	for (size_t i = 0; i < 5; i++)
		if (!need[i][0]) {
			fprintf(stderr, "edgecoord-agent: %s is required\n", need[i][1]);
			bad = 1;
		}
	for (size_t i = 0; i < nlabels; i++) {
		char *eq = strchr(labels_s[i], '=');
		if (!eq || eq == labels_s[i]) {
			fprintf(stderr, "edgecoord-agent: label %s is not k=v\n", labels_s[i]);
			bad = 1;
			continue;
		}
		*eq = '\0';
		labels[i] = (struct ec_label){labels_s[i], eq + 1};
	}
	if (bad) {
		usage(stderr);
		return 2;
	}
	o.labels = labels;
	o.nlabels = nlabels;
	if (!o.slots)
		o.slots = 1;

	struct ec_agent *a;
	int rc = ec_agent_new(&o, &a);
	if (rc) {
		fprintf(stderr, "edgecoord-agent: %s\n", rc == EC_ECONFIG
			? "bad configuration (see above: coordinator address, id, certificates)"
			: ec_strerror(rc));
		return 2;
	}
	static const struct {
		const char *name;
		ec_handler_fn fn;
	} builtins[] = {{"echo", h_echo}, {"sleep", h_sleep}, {"fail", h_fail}, {"sha256", h_sha256}};
	for (size_t i = 0; i < ncaps; i++) {
		size_t b = 0;
		while (b < 4 && strcmp(builtins[b].name, caps[i]) != 0)
			b++;
		if (b == 4) {
			fprintf(stderr, "edgecoord-agent: --caps %s is not a built-in type "
				"(echo, sleep, fail, sha256); use --exec %s=COMMAND\n", caps[i], caps[i]);
			ec_agent_free(a);
			return 2;
		}
		ec_agent_handle(a, caps[i], builtins[b].fn, NULL);
	}
	for (size_t i = 0; i < nexecs; i++)
		if (ec_agent_handle(a, execs[i].type, h_exec, execs[i].cmd) != 0) {
			fprintf(stderr, "edgecoord-agent: bad --exec type %s\n", execs[i].type);
			ec_agent_free(a);
			return 2;
		}

	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	while (!stop_sig) {
		now_ms = ec_agent_now_ms();
		struct pollfd pfd[1 + 3 * EC_MAX_SLOTS];
		struct tjob *owner[1 + 3 * EC_MAX_SLOTS];
		nfds_t n = 0;
		uint64_t due = ec_agent_next_due(a);
		bool reaping = false;
		pfd[n] = (struct pollfd){.fd = ec_agent_fd(a), .events = 0};
		unsigned ev = ec_agent_events(a);
		if (ev & EC_AGENT_EV_READ)
			pfd[n].events |= POLLIN;
		if (ev & EC_AGENT_EV_WRITE)
			pfd[n].events |= POLLOUT;
		owner[n++] = NULL;
		for (size_t i = 0; i < EC_MAX_SLOTS; i++)
			if (gkill[i].pg && gkill[i].at < due)
				due = gkill[i].at;
		for (size_t i = 0; i < EC_MAX_SLOTS; i++) {
			struct tjob *j = &jobs[i];
			if (!j->used)
				continue;
			if (j->due && j->due < due)
				due = j->due;
			if (j->kill_at && j->kill_at < due)
				due = j->kill_at;
			if (j->kind != J_EXEC)
				continue;
			reaping |= !j->reaped;
			int fds[3] = {j->in, j->out, j->err};
			for (int k = 0; k < 3; k++)
				if (fds[k] >= 0) {
					pfd[n] = (struct pollfd){.fd = fds[k],
								 .events = k == 0 ? POLLOUT : POLLIN};
					owner[n++] = j;
				}
		}
		int timeout = due <= now_ms ? 0 : due - now_ms > 1000 ? 1000 : (int)(due - now_ms);
		if (reaping && timeout > 50)
			timeout = 50;  /* waitpid(WNOHANG) below: no SIGCHLD plumbing */
		if (poll(pfd, n, timeout) < 0 && errno != EINTR) {
			perror("edgecoord-agent: poll");
			ec_agent_free(a);
			return 1;
		}
		now_ms = ec_agent_now_ms();
		for (nfds_t i = 1; i < n; i++) {
			struct tjob *j = owner[i];
			short r = pfd[i].revents;
			if (!r || !j->used)
				continue;
			if (pfd[i].fd == j->in)
				exec_io(j, r, 0, 0);
			else if (pfd[i].fd == j->out)
				exec_io(j, 0, r, 0);
			else if (pfd[i].fd == j->err)
				exec_io(j, 0, 0, r);
		}
		for (size_t i = 0; i < EC_MAX_SLOTS; i++) {
			struct tjob *j = &jobs[i];
			if (!j->used)
				continue;
			if (j->kind == J_SLEEP) {
				if (now_ms >= j->due) {
					if (j->stop_why)
						ec_agent_fail(a, j->lease, j->stop_why);
					else
						finish_map1(a, j->lease, "slept_ms", false, NULL, j->slept_ms);
					tjob_free(j);
				}
				continue;
			}
			if (!j->reaped && waitpid(j->pid, &j->status, WNOHANG) == j->pid)
				j->reaped = true;
			if (j->due && now_ms >= j->due && !j->stop_why)
				stop_job(j, "timeout"); /* running, or its pipes still open */
			if (!j->reaped && j->kill_at && now_ms >= j->kill_at) {
				kill(-j->pid, SIGKILL);
				j->kill_at = 0;
			}
			/* a command that exits before reading stdin: stop writing */
			if (j->reaped && j->in >= 0) {
				close(j->in);
				j->in = -1;
			}
			if (j->reaped && j->out < 0 && j->err < 0)
				exec_done(a, j);
			else if (j->reaped && j->stop_why)
				exec_done(a, j);  /* killed: what is left in the pipes is moot */
		}
		for (size_t i = 0; i < EC_MAX_SLOTS; i++)
			if (gkill[i].pg && now_ms >= gkill[i].at) {
				kill(-gkill[i].pg, SIGKILL);
				gkill[i].pg = 0;
			}
		ec_agent_step(a, now_ms);
	}
	/* SIGTERM: say bye, stop what runs, exit 0 */
	for (size_t i = 0; i < EC_MAX_SLOTS; i++)
		if (gkill[i].pg)
			kill(-gkill[i].pg, SIGKILL);
	for (size_t i = 0; i < EC_MAX_SLOTS; i++)
		if (jobs[i].used) {
			if (jobs[i].kind == J_EXEC && !jobs[i].reaped) {
				kill(-jobs[i].pid, SIGKILL);
				waitpid(jobs[i].pid, NULL, 0);
			}
			tjob_free(&jobs[i]);
		}
	ec_agent_stop(a, "agent stopping");
	ec_agent_free(a);
	return 0;
}
