/* SPDX-License-Identifier: MIT */
/*
 * test_link.c - the coordinator's link (src/link.c) against the agent library
 * (src/agent/) over real TLS on loopback, in one process and one thread: a
 * tiny epoll loop plays the daemon, agents are stepped in the same loop.
 *
 * Time is virtual: every loop turn advances it by TICK_MS, so liveness is
 * measured in ticks, never against the wall clock. Certificates are made per
 * run with the openssl CLI in a mkdtemp directory (a CA, the coordinator,
 * agents, a foreign CA, an expired certificate).
 *
 * Covered: handshake + hello/welcome, work -> result -> ack, heartbeats keep
 * an agent alive, silence -> suspect -> offline, refusals (plain TCP, no
 * client certificate, foreign CA, expired, CN mismatch) each logged with its
 * reason, 1,000 malformed frames over 100 sessions end only those sessions,
 * a reconnecting agent lists its leases in hello, a slow reader is cut off,
 * an agent given the coordinator by name (looked up off the loop, freed
 * while looking up), an agent whose first address refuses, and memory per
 * session (printed).
 *
 * One seam: resolve_poll() is wrapped (-Wl,--wrap, CMakeLists.txt) so that
 * a test can put an address that refuses in front of a lookup's answer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "edgecoord/agent.h"
#include "edgecoord/err.h"
#include "edgecoord/proto.h"
#include "link.h"
#include "log.h"
#include "resolve.h"

#define TICK_MS 10
#define HB_MS 100

static const char gen_sh[] =
	"set -e\n"
	"cd \"$1\"\n"
	"key() { openssl ecparam -name prime256v1 -genkey -noout -out \"$1.key\" 2>/dev/null; }\n"
	"ca() { key \"$1\"; openssl req -new -x509 -key \"$1.key\" -subj \"/CN=$1\" -days 30 -out \"$1.crt\" \\\n"
	"  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null; }\n"
	"ca ca\nca foreign\n"
	"issue() {\n"
	"  key \"$1\"; openssl req -new -key \"$1.key\" -subj \"/CN=$1\" -out \"$1.csr\" 2>/dev/null\n"
	"  printf 'basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\n%s\\n' \"$3\" > \"$1.ext\"\n"
	"  openssl x509 -req -in \"$1.csr\" -CA \"$2.crt\" -CAkey \"$2.key\" -CAcreateserial -days 30 \\\n"
	"    -sha256 -extfile \"$1.ext\" -out \"$1.crt\" 2>/dev/null\n"
	"}\n"
	"issue coordinator ca 'subjectAltName=IP:127.0.0.1,DNS:localhost\n"
	"extendedKeyUsage=serverAuth'\n"
	"for n in agent-1 agent-2 agent-m agent-x; do issue $n ca 'extendedKeyUsage=clientAuth'; done\n"
	"issue agent-f foreign 'extendedKeyUsage=clientAuth'\n"
	"key agent-e; openssl req -new -key agent-e.key -subj /CN=agent-e -out agent-e.csr 2>/dev/null\n"
	": > index.txt; echo 01 > serial\n"
	"printf '[ca]\\ndefault_ca = d\\n[d]\\ndir = .\\ndatabase = ./index.txt\\nnew_certs_dir = .\\n"
	"serial = ./serial\\ndefault_md = sha256\\npolicy = p\\n[p]\\ncommonName = supplied\\n' > ca.cnf\n"
	"openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -in agent-e.csr -out agent-e.crt \\\n"
	"  -startdate 20200101000000Z -enddate 20200102000000Z -notext 2>/dev/null\n";

static char dir[256];
static char logpath[300];
static int saved_stderr = -1;

static const char *path(const char *name)
{
	static char buf[8][320];
	static int i;
	i = (i + 1) % 8;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", dir, name);
	return buf[i];
}

/* ---- the daemon stand-in: epoll + hooks + recorded events ---------------- */

struct ev {
	char agent[EC_AGENT_ID_MAX + 1];
	int kind;            /* 100 = up, 200 + frame type, or a LINK_AGENT_* */
	uint64_t at;
	uint64_t lease;
	size_t nleases;
	uint64_t leases[4];
	bool ok;
	uint8_t result[256];
	size_t result_len;
	char text[128];
};

static struct {
	int ep;
	struct link *link;
	uint64_t now;
	struct ev evs[4096];
	size_t nevs;
	bool auto_ack;
	bool realtime;       /* for a separate agent process: the real clock */
} T;

static int h_watch(void *ctx, int fd, unsigned events)
{
	struct epoll_event e = {0};
	e.data.fd = fd;
	if (events & LINK_EV_READ)
		e.events |= EPOLLIN;
	if (events & LINK_EV_WRITE)
		e.events |= EPOLLOUT;
	if (epoll_ctl(T.ep, EPOLL_CTL_MOD, fd, &e) == 0)
		return 0;
	return epoll_ctl(T.ep, EPOLL_CTL_ADD, fd, &e) == 0 ? 0 : -errno;
}

static void h_unwatch(void *ctx, int fd)
{
	epoll_ctl(T.ep, EPOLL_CTL_DEL, fd, NULL);
}

static struct ev *record(const char *agent, int kind)
{
	assert_true(T.nevs < sizeof(T.evs) / sizeof(T.evs[0]));
	struct ev *e = &T.evs[T.nevs++];
	memset(e, 0, sizeof(*e));
	snprintf(e->agent, sizeof(e->agent), "%s", agent);
	e->kind = kind;
	e->at = T.now;
	return e;
}

static void h_up(void *ctx, const char *agent, const struct ec_frame *hello)
{
	struct ev *e = record(agent, 100);
	e->nleases = hello->nleases;
	for (size_t i = 0; i < hello->nleases && i < 4; i++)
		e->leases[i] = hello->leases[i];
}

static void h_frame(void *ctx, const char *agent, const struct ec_frame *f)
{
	struct ev *e = record(agent, 200 + f->type);
	e->lease = f->lease;
	e->ok = f->ok;
	if (f->result && f->result_len <= sizeof(e->result)) {
		memcpy(e->result, f->result, f->result_len);
		e->result_len = f->result_len;
	}
	if (f->text)
		snprintf(e->text, sizeof(e->text), "%s", f->text);
	if (f->type == EC_F_RESULT && T.auto_ack)
		assert_int_equal(link_send_ack(T.link, agent, f->lease, true), 0);
}

static void h_state(void *ctx, const char *agent, enum link_agent_state st, const char *why)
{
	record(agent, st);
}

static size_t count(const char *agent, int kind)
{
	size_t n = 0;
	for (size_t i = 0; i < T.nevs; i++)
		if (T.evs[i].kind == kind && (!agent || strcmp(T.evs[i].agent, agent) == 0))
			n++;
	return n;
}

static struct ev *last(const char *agent, int kind)
{
	for (size_t i = T.nevs; i-- > 0;)
		if (T.evs[i].kind == kind && (!agent || strcmp(T.evs[i].agent, agent) == 0))
			return &T.evs[i];
	return NULL;
}

/* Agents stepped by the loop, and raw clients. */
static struct ec_agent *agents[256];
static size_t nagents;

struct raw;
static void raw_step(struct raw *r);
static struct raw *raws[128];
static size_t nraws;

/* One loop turn: wait up to 1 ms of real time, advance virtual time one tick. */
static void turn(void)
{
	struct epoll_event evs[64];
	int n = epoll_wait(T.ep, evs, 64, 1);
	for (int i = 0; i < n; i++) {
		unsigned ev = 0;
		if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
			ev |= LINK_EV_READ;
		if (evs[i].events & EPOLLOUT)
			ev |= LINK_EV_WRITE;
		link_on_event(T.link, evs[i].data.fd, ev, T.now);
	}
	for (size_t i = 0; i < nagents; i++)
		if (agents[i])
			ec_agent_step(agents[i], T.now);
	for (size_t i = 0; i < nraws; i++)
		if (raws[i])
			raw_step(raws[i]);
	if (T.now >= link_next_due(T.link))
		link_tick(T.link, T.now);
	T.now = T.realtime ? ec_agent_now_ms() : T.now + TICK_MS;
}

/* Turn until cond() or max_ticks; returns the ticks used. */
static int run_until(bool (*cond)(void *), void *arg, int max_ticks)
{
	for (int i = 0; i < max_ticks; i++) {
		if (cond(arg))
			return i;
		turn();
	}
	return cond(arg) ? max_ticks : -1;
}

static bool is_connected(void *a) { return ec_agent_connected(a); }
static bool is_disconnected(void *a) { return !ec_agent_connected(a); }

static bool log_has(const char *needle)
{
	FILE *f = fopen(logpath, "r");
	char line[2048];
	bool found = false;
	while (f && fgets(line, sizeof(line), f))
		if (strstr(line, needle))
			found = true;
	if (f)
		fclose(f);
	return found;
}

/* ---- agent side ---------------------------------------------------------- */

static uint64_t held_lease;

static void echo_handler(struct ec_agent *a, const struct ec_job *job, void *arg)
{
	ec_agent_started(a, job->lease);
	assert_int_equal(ec_agent_result(a, job->lease, job->payload, job->payload_len), 0);
}

static void hold_handler(struct ec_agent *a, const struct ec_job *job, void *arg)
{
	held_lease = job->lease;  /* finishes later, or never */
}

static int acks;
static void on_ack(void *ctx, struct ec_agent *a, uint64_t lease, bool accepted)
{
	acks++;
}

static int cancels;
static void on_cancel(void *ctx, struct ec_agent *a, uint64_t lease, const char *reason)
{
	cancels++;
	ec_agent_fail(a, lease, "cancelled");
}

/* The agents' log lines, the last ones kept. */
static char alines[256][200];
static size_t nalines;

static void agent_log(void *ctx, int level, const char *msg)
{
	snprintf(alines[nalines++ % 256], sizeof(alines[0]), "%d %s", level, msg);
}

static bool agent_log_has(const char *needle)
{
	for (size_t i = 0; i < 256 && i < nalines; i++)
		if (strstr(alines[i], needle))
			return true;
	return false;
}

/* coord: "HOST:PORT" as an agent is configured with. */
static struct ec_agent *mk_agent_to(const char *coord, const char *id, const char *certname)
{
	char crt[64], key[64];
	snprintf(crt, sizeof(crt), "%s.crt", certname);
	snprintf(key, sizeof(key), "%s.key", certname);
	struct ec_agent_opts o = {
		.coordinator = coord, .server_name = "localhost", .id = id, .ca_file = path("ca.crt"),
		.cert_file = path(crt), .key_file = path(key), .slots = 2,
		.backoff_min_ms = 50, .backoff_max_ms = 400, .connect_timeout_ms = 3000,
		.on_ack = on_ack, .on_cancel = on_cancel, .log = agent_log,
	};
	struct ec_label lb = {"zone", "test"};
	o.labels = &lb;
	o.nlabels = 1;
	struct ec_agent *a;
	assert_int_equal(ec_agent_new(&o, &a), 0);
	assert_int_equal(ec_agent_handle(a, "echo", echo_handler, NULL), 0);
	assert_int_equal(ec_agent_handle(a, "hold", hold_handler, NULL), 0);
	agents[nagents++] = a;
	return a;
}

static struct ec_agent *mk_agent(const char *id, const char *certname)
{
	char coord[32];
	snprintf(coord, sizeof(coord), "127.0.0.1:%d", link_port(T.link));
	return mk_agent_to(coord, id, certname);
}

/* The seam: with refuse_port set, every lookup that returns gets
 * 127.0.0.1:refuse_port in front of its addresses. Both lists come from
 * getaddrinfo(), whose freeaddrinfo() frees node by node (glibc), so the
 * agent frees the joined list as it would its own. */
static int refuse_port;
static int lookups_done;

enum resolve_status __real_resolve_poll(struct resolve *r, struct addrinfo **out);
enum resolve_status __wrap_resolve_poll(struct resolve *r, struct addrinfo **out);
enum resolve_status __wrap_resolve_poll(struct resolve *r, struct addrinfo **out)
{
	enum resolve_status st = __real_resolve_poll(r, out);
	if (st != RESOLVE_DONE)
		return st;
	lookups_done++;
	if (refuse_port) {
		struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM,
					 .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV}, *first;
		char port[8];
		snprintf(port, sizeof(port), "%d", refuse_port);
		assert_int_equal(getaddrinfo("127.0.0.1", port, &hints, &first), 0);
		assert_null(first->ai_next);
		first->ai_next = *out;
		*out = first;
	}
	return st;
}

static void rm_agent(struct ec_agent *a)
{
	for (size_t i = 0; i < nagents; i++)
		if (agents[i] == a)
			agents[i] = NULL;
	ec_agent_free(a);
}

/* ---- a raw TLS client that sends whatever bytes it is given ------------ */

struct raw {
	int fd;
	bool tls, connected, done, closed;
	mbedtls_ssl_config conf;
	mbedtls_ssl_context ssl;
	mbedtls_x509_crt ca, cert;
	mbedtls_pk_context key;
	uint8_t *out;
	size_t out_len, out_off;
};

static mbedtls_entropy_context r_entropy;
static mbedtls_ctr_drbg_context r_drbg;

static int r_send(void *ctx, const unsigned char *b, size_t n)
{
	ssize_t r = send(*(int *)ctx, b, n, MSG_NOSIGNAL);
	if (r >= 0)
		return (int)r;
	return errno == EAGAIN ? MBEDTLS_ERR_SSL_WANT_WRITE : MBEDTLS_ERR_NET_SEND_FAILED;
}

static int r_recv(void *ctx, unsigned char *b, size_t n)
{
	ssize_t r = recv(*(int *)ctx, b, n, 0);
	if (r >= 0)
		return (int)r;
	return errno == EAGAIN ? MBEDTLS_ERR_SSL_WANT_READ : MBEDTLS_ERR_NET_RECV_FAILED;
}

/* tls: speak TLS (certname NULL: without a client certificate). */
static struct raw *raw_new(bool tls, const char *certname, const uint8_t *bytes, size_t n)
{
	struct raw *r = calloc(1, sizeof(*r));
	r->tls = tls;
	r->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	int one = 1;
	setsockopt(r->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(link_port(T.link)),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int rc = connect(r->fd, (struct sockaddr *)&sa, sizeof(sa));
	assert_true(rc == 0 || errno == EINPROGRESS);
	r->out = malloc(n);
	memcpy(r->out, bytes, n);
	r->out_len = n;
	if (tls) {
		mbedtls_ssl_config_init(&r->conf);
		mbedtls_ssl_init(&r->ssl);
		mbedtls_x509_crt_init(&r->ca);
		mbedtls_x509_crt_init(&r->cert);
		mbedtls_pk_init(&r->key);
		assert_int_equal(mbedtls_x509_crt_parse_file(&r->ca, path("ca.crt")), 0);
		mbedtls_ssl_config_defaults(&r->conf, MBEDTLS_SSL_IS_CLIENT,
					    MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
		mbedtls_ssl_conf_rng(&r->conf, mbedtls_ctr_drbg_random, &r_drbg);
		mbedtls_ssl_conf_authmode(&r->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
		mbedtls_ssl_conf_ca_chain(&r->conf, &r->ca, NULL);
		if (certname) {
			char c[64], k[64];
			snprintf(c, sizeof(c), "%s.crt", certname);
			snprintf(k, sizeof(k), "%s.key", certname);
			assert_int_equal(mbedtls_x509_crt_parse_file(&r->cert, path(c)), 0);
			assert_int_equal(mbedtls_pk_parse_keyfile(&r->key, path(k), NULL), 0);
			mbedtls_ssl_conf_own_cert(&r->conf, &r->cert, &r->key);
		}
		assert_int_equal(mbedtls_ssl_setup(&r->ssl, &r->conf), 0);
		mbedtls_ssl_set_hostname(&r->ssl, "localhost");
		mbedtls_ssl_set_bio(&r->ssl, &r->fd, r_send, r_recv, NULL);
	}
	raws[nraws++] = r;
	return r;
}

static void raw_step(struct raw *r)
{
	if (r->closed)
		return;
	if (r->tls && !r->connected) {
		int rc = mbedtls_ssl_handshake(&r->ssl);
		if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
			return;
		if (rc) {
			r->closed = true;
			return;
		}
		r->connected = true;
	}
	while (r->out_off < r->out_len) {
		int rc;
		if (r->tls) {
			size_t chunk = r->out_len - r->out_off;
			rc = mbedtls_ssl_write(&r->ssl, r->out + r->out_off, chunk > 4096 ? 4096 : chunk);
		} else {
			rc = (int)send(r->fd, r->out + r->out_off, r->out_len - r->out_off, MSG_NOSIGNAL);
			if (rc < 0 && errno == EAGAIN)
				return;
			if (rc < 0 && errno == ENOTCONN)
				return;  /* still connecting */
		}
		if (rc == MBEDTLS_ERR_SSL_WANT_WRITE || rc == MBEDTLS_ERR_SSL_WANT_READ)
			return;
		if (rc < 0) {
			r->closed = true;
			return;
		}
		r->out_off += (size_t)rc;
	}
	r->done = true;
	uint8_t buf[4096];
	for (;;) {
		int rc = r->tls ? mbedtls_ssl_read(&r->ssl, buf, sizeof(buf))
			: (int)recv(r->fd, buf, sizeof(buf), 0);
		if (rc > 0)
			continue;
		if (rc == 0 || (r->tls && rc != MBEDTLS_ERR_SSL_WANT_READ) ||
		    (!r->tls && errno != EAGAIN))
			r->closed = true;
		return;
	}
}

static void raw_free(struct raw *r)
{
	for (size_t i = 0; i < nraws; i++)
		if (raws[i] == r)
			raws[i] = NULL;
	close(r->fd);
	if (r->tls) {
		mbedtls_ssl_free(&r->ssl);
		mbedtls_ssl_config_free(&r->conf);
		mbedtls_x509_crt_free(&r->ca);
		mbedtls_x509_crt_free(&r->cert);
		mbedtls_pk_free(&r->key);
	}
	free(r->out);
	free(r);
}

static bool raw_closed(void *r) { return ((struct raw *)r)->closed; }

/* ---- fixture ------------------------------------------------------------------ */

static int setup(void **state)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof(dir), "%s/ec-link-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(dir))
		return -1;
	FILE *f = fopen(path("gen.sh"), "w");
	fputs(gen_sh, f);
	fclose(f);
	char cmd[700];
	snprintf(cmd, sizeof(cmd), "bash '%s' '%s'", path("gen.sh"), dir);
	if (system(cmd) != 0) {
		fprintf(stderr, "certificate generation with openssl failed\n");
		return -1;
	}
	/* the link logs to stderr: keep it in a file we can grep */
	snprintf(logpath, sizeof(logpath), "%s/log", dir);
	saved_stderr = dup(2);
	int lfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	dup2(lfd, 2);
	close(lfd);
	log_init("test_link", LOG_LVL_DEBUG, 0);
	mbedtls_entropy_init(&r_entropy);
	mbedtls_ctr_drbg_init(&r_drbg);
	mbedtls_ctr_drbg_seed(&r_drbg, mbedtls_entropy_func, &r_entropy, NULL, 0);
	return 0;
}

static int teardown(void **state)
{
	mbedtls_ctr_drbg_free(&r_drbg);
	mbedtls_entropy_free(&r_entropy);
	if (saved_stderr >= 0) {
		/* show what went to stderr (cmocka's failures included) when asked */
		char line[2048];
		FILE *f = getenv("EC_TEST_VERBOSE") ? fopen(logpath, "r") : NULL;
		while (f && fgets(line, sizeof(line), f))
			(void)!write(saved_stderr, line, strlen(line));
		if (f)
			fclose(f);
		dup2(saved_stderr, 2);
		close(saved_stderr);
	}
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void start_link_with(uint32_t out_cap, uint32_t max_frame)
{
	memset(&T, 0, sizeof(T));
	T.now = 1000;
	T.ep = epoll_create1(EPOLL_CLOEXEC);
	struct link_config cfg = {
		.listen = "127.0.0.1:0", .ca_file = path("ca.crt"),
		.cert_file = path("coordinator.crt"), .key_file = path("coordinator.key"),
		.heartbeat_ms = HB_MS, .heartbeat_misses = 3, .handshake_timeout_ms = 2000,
		.out_cap = out_cap, .max_frame = max_frame,
	};
	struct link_hooks hooks = {.watch = h_watch, .unwatch = h_unwatch, .on_up = h_up,
				   .on_frame = h_frame, .on_state = h_state};
	assert_int_equal(link_new(&cfg, &hooks, &T.link), 0);
	assert_true(link_port(T.link) > 0);
	T.auto_ack = true;
}

static void start_link(uint32_t out_cap)
{
	start_link_with(out_cap, 0);
}

static void stop_link(void)
{
	for (size_t i = 0; i < nagents; i++)
		if (agents[i])
			rm_agent(agents[i]);
	nagents = 0;
	for (size_t i = 0; i < nraws; i++)
		if (raws[i])
			raw_free(raws[i]);
	nraws = 0;
	link_free(T.link);
	close(T.ep);
}

/* ---- tests ------------------------------------------------------------------------ */

static bool has_result(void *lease)
{
	for (size_t i = 0; i < T.nevs; i++)
		if (T.evs[i].kind == 200 + EC_F_RESULT && T.evs[i].lease == *(uint64_t *)lease)
			return true;
	return false;
}

static void send_work(const char *agent, const char *type, uint64_t lease)
{
	static uint8_t payload[] = {0xa1, 0x61, 'n', 0x18, 42};
	struct ec_frame w;
	ec_frame_init(&w, EC_F_WORK);
	w.task_id = "t1";
	w.attempt = 1;
	w.lease = lease;
	w.task_type = (char *)type;
	w.payload = payload;
	w.payload_len = sizeof(payload);
	assert_int_equal(link_send_work(T.link, agent, &w), 0);
}

static void test_hello_work_result(void **state)
{
	start_link(0);
	struct ec_agent *a = mk_agent("agent-1", "agent-1");
	assert_true(run_until(is_connected, a, 500) >= 0);
	assert_int_equal(count("agent-1", 100), 1);
	assert_true(log_has("AGENT-UP agent=agent-1"));

	uint64_t lease = 11;
	acks = 0;
	send_work("agent-1", "echo", lease);
	assert_true(run_until(has_result, &lease, 500) >= 0);
	assert_true(last("agent-1", 200 + EC_F_RESULT)->ok);
	assert_int_equal(count("agent-1", 200 + EC_F_STARTED), 1);
	for (int i = 0; i < 20 && acks == 0; i++)
		turn();
	assert_int_equal(acks, 1);
	assert_int_equal(ec_agent_running(a), 0);

	/* a type the agent has no handler for comes back as a failure */
	lease = 12;
	send_work("agent-1", "nope", lease);
	assert_true(run_until(has_result, &lease, 500) >= 0);
	assert_false(last("agent-1", 200 + EC_F_RESULT)->ok);

	/* cancel reaches the handler's owner; the failure comes back */
	lease = 13;
	cancels = 0;
	send_work("agent-1", "hold", lease);
	for (int i = 0; i < 20; i++)
		turn();
	assert_int_equal(ec_agent_running(a), 1);
	assert_int_equal(link_send_cancel(T.link, "agent-1", lease, "operator"), 0);
	assert_true(run_until(has_result, &lease, 500) >= 0);
	assert_int_equal(cancels, 1);

	/* unknown agent */
	assert_int_equal(link_send_drain(T.link, "agent-9"), EC_EUNKNOWN_AGENT);
	assert_int_equal(link_send_drain(T.link, "agent-1"), 0);

	/* heartbeats keep it alive: 30 intervals, no suspect, no offline */
	size_t before = T.nevs;
	for (int i = 0; i < 30 * HB_MS / TICK_MS; i++)
		turn();
	for (size_t i = before; i < T.nevs; i++) {
		assert_int_not_equal(T.evs[i].kind, LINK_AGENT_SUSPECT);
		assert_int_not_equal(T.evs[i].kind, LINK_AGENT_OFFLINE);
		assert_int_not_equal(T.evs[i].kind, LINK_AGENT_DOWN);
	}
	assert_true(count("agent-1", 200 + EC_F_HB) >= 20);
	assert_true(ec_agent_connected(a));
	stop_link();
}

static void test_silence_suspect_offline(void **state)
{
	start_link(0);
	struct ec_agent *a = mk_agent("agent-2", "agent-2");
	assert_true(run_until(is_connected, a, 500) >= 0);
	/* let one heartbeat arrive, then stop stepping the agent: silence */
	for (int i = 0; i < 2 * HB_MS / TICK_MS; i++)
		turn();
	agents[0] = NULL;
	for (int i = 0; i < 10 * HB_MS / TICK_MS && !count("agent-2", LINK_AGENT_OFFLINE); i++)
		turn();
	struct ev *s = last("agent-2", LINK_AGENT_SUSPECT);
	struct ev *o = last("agent-2", LINK_AGENT_OFFLINE);
	assert_non_null(s);
	assert_non_null(o);
	/* the last frame heard (bytes in flight arrive after the agent stops) */
	uint64_t heard = 0;
	for (size_t i = 0; i < T.nevs; i++)
		if (strcmp(T.evs[i].agent, "agent-2") == 0 && T.evs[i].kind >= 200 &&
		    T.evs[i].at < s->at)
			heard = T.evs[i].at;
	assert_true(heard > 0);
	/* suspect after 2 x heartbeat, offline after 3 x: in virtual ms, with
	 * room for the tick granularity (generous, never wall clock) */
	uint64_t ts = s->at - heard, to = o->at - heard;
	print_message("silence: suspect after %llu ms, offline after %llu ms (heartbeat %d)\n",
		      (unsigned long long)ts, (unsigned long long)to, HB_MS);
	assert_true(ts >= 2 * HB_MS && ts <= 2 * HB_MS + 4 * TICK_MS + HB_MS / 2);
	assert_true(to >= 3 * HB_MS && to <= 3 * HB_MS + 4 * TICK_MS + HB_MS / 2);
	assert_true(log_has("AGENT-SUSPECT agent=agent-2"));
	assert_true(log_has("AGENT-LOST agent=agent-2"));
	struct link_stats st;
	link_get_stats(T.link, &st);
	assert_int_equal(st.live, 0);
	assert_int_equal(st.agents, 0);
	/* the agent, stepped again, finds its connection gone and comes back */
	agents[0] = a;
	assert_true(run_until(is_disconnected, a, 100) >= 0);
	assert_true(run_until(is_connected, a, 2000) >= 0);
	assert_int_equal(count("agent-2", 100), 2);
	stop_link();
}

static bool refused_n(void *n)
{
	struct link_stats st;
	link_get_stats(T.link, &st);
	return st.refused >= *(uint64_t *)n;
}

static void test_refusals(void **state)
{
	start_link(0);
	struct link_stats st;
	uint64_t want = 1;
	/* plain TCP speaking our framing without TLS */
	struct ec_frame h;
	ec_frame_init(&h, EC_F_HELLO);
	h.agent_id = "agent-1";
	h.versions[0] = 1;
	h.nversions = 1;
	h.slots = 1;
	uint8_t *hb;
	size_t hl;
	assert_int_equal(ec_frame_encode(&h, 65536, &hb, &hl), 0);
	struct raw *r = raw_new(false, NULL, hb, hl);
	assert_true(run_until(refused_n, &want, 500) >= 0);
	assert_true(log_has("reason=not_tls"));
	raw_free(r);

	/* TLS without a client certificate */
	want = 2;
	r = raw_new(true, NULL, hb, hl);
	assert_true(run_until(refused_n, &want, 500) >= 0);
	assert_true(log_has("reason=no_client_certificate"));
	assert_true(run_until(raw_closed, r, 200) >= 0);
	raw_free(r);

	/* a certificate from a foreign CA */
	want = 3;
	struct ec_agent *a = mk_agent("agent-f", "agent-f");
	assert_true(run_until(refused_n, &want, 500) >= 0);
	assert_true(log_has("reason=foreign_ca"));
	rm_agent(a);

	/* an expired certificate */
	want = 4;
	a = mk_agent("agent-e", "agent-e");
	assert_true(run_until(refused_n, &want, 500) >= 0);
	assert_true(log_has("reason=certificate_expired"));
	rm_agent(a);

	/* CN agent-x, hello says agent-1 */
	want = 5;
	a = mk_agent("agent-1", "agent-x");
	assert_true(run_until(refused_n, &want, 500) >= 0);
	assert_true(log_has("agent=agent-x reason=id_mismatch"));
	rm_agent(a);

	/* a connection that says nothing: handshake timeout */
	want = 6;
	r = raw_new(false, NULL, (const uint8_t *)"", 0);
	assert_true(run_until(refused_n, &want, 400) >= 0);
	assert_true(log_has("reason=handshake_timeout"));
	raw_free(r);

	/* none of them ever became an agent */
	link_get_stats(T.link, &st);
	assert_int_equal(count(NULL, 100), 0);
	assert_int_equal(st.agents, 0);
	assert_int_equal(st.refused, 6);
	free(hb);
	stop_link();
}

/* Bad frame number i: a mix of every kind of garbage. */
static size_t bad_frame(int i, uint8_t *buf)
{
	static const uint8_t bodies[][12] = {
		{0x01},                                     /* not a map */
		{0xa1, 0x61, 't', 0x64, 'w', 'h', 'a', 't'}, /* unknown type */
		{0xa1, 0x61, 'e', 0x01},                    /* no type */
		{0xba, 0xff, 0xff, 0xff, 0xff},             /* hostile count */
		{0xa1, 0x61, 't', 0x65, 'd', 'r', 'a', 'i'}, /* truncated */
		{0xa1, 0x61, 't', 0x65, 'd', 'r', 'a', 'i', 'n'}, /* drain from an agent */
		{0xa1, 0x61, 't', 0x62, 'h', 'b', 0x00},    /* trailing byte */
	};
	static const size_t lens[] = {1, 8, 4, 5, 8, 9, 7};
	int k = i % 8;
	if (k == 7) {  /* oversized */
		buf[0] = 0;
		buf[1] = 2;
		buf[2] = buf[3] = 0;
		return 4;
	}
	size_t n = lens[k];
	buf[0] = buf[1] = buf[2] = 0;
	buf[3] = (uint8_t)n;
	memcpy(buf + 4, bodies[k], n);
	return n + 4;
}

static void test_malformed_frames(void **state)
{
	start_link(0);
	T.auto_ack = true;
	struct ec_agent *good = mk_agent("agent-1", "agent-1");
	assert_true(run_until(is_connected, good, 500) >= 0);

	struct ec_frame h;
	ec_frame_init(&h, EC_F_HELLO);
	h.agent_id = "agent-m";
	h.versions[0] = 1;
	h.nversions = 1;
	h.slots = 1;
	uint8_t *hb;
	size_t hl;
	assert_int_equal(ec_frame_encode(&h, 65536, &hb, &hl), 0);
	int sent = 0, sessions = 0;
	uint64_t lease = 1000;
	size_t ups_before = count("agent-m", 100);
	/* 100 sessions x 10 bad frames, 10 sessions at a time */
	for (int batch = 0; batch < 10; batch++) {
		struct raw *rs[10];
		for (int j = 0; j < 10; j++) {
			uint8_t buf[4096];
			size_t n = 0;
			memcpy(buf, hb, hl);
			n = hl;
			/* session k leads with garbage of kind k % 8 */
			for (int f = 0; f < 10; f++, sent++)
				n += bad_frame(sessions + f, buf + n);
			rs[j] = raw_new(true, "agent-m", buf, n);
			sessions++;
		}
		/* the good agent works meanwhile */
		send_work("agent-1", "echo", ++lease);
		for (int j = 0; j < 10; j++)
			assert_true(run_until(raw_closed, rs[j], 1000) >= 0);
		assert_true(run_until(has_result, &lease, 500) >= 0);
		for (int j = 0; j < 10; j++)
			raw_free(rs[j]);
	}
	free(hb);
	assert_int_equal(sent, 1000);
	print_message("malformed: %d frames over %d sessions\n", sent, sessions);
	/* every bad session got as far as hello (some replaced by the next) */
	assert_int_equal(count("agent-m", 100) - ups_before, 100);
	assert_true(log_has("AGENT-PROTO agent=agent-m reason=malformed frame"));
	assert_true(log_has("AGENT-PROTO agent=agent-m reason=unknown frame type"));
	assert_true(log_has("AGENT-PROTO agent=agent-m reason=frame of 131072 bytes"));
	assert_true(log_has("AGENT-PROTO agent=agent-m reason=unexpected frame drain"));
	/* the good agent never noticed */
	assert_true(ec_agent_connected(good));
	assert_int_equal(count("agent-1", 100), 1);
	assert_int_equal(count("agent-1", LINK_AGENT_DOWN), 0);
	send_work("agent-1", "echo", ++lease);
	assert_true(run_until(has_result, &lease, 500) >= 0);
	struct link_stats st;
	link_get_stats(T.link, &st);
	assert_int_equal(st.live, 1);
	stop_link();
}

static void test_reconnect_lists_leases(void **state)
{
	start_link(0);
	struct ec_agent *a = mk_agent("agent-1", "agent-1");
	assert_true(run_until(is_connected, a, 500) >= 0);
	held_lease = 0;
	send_work("agent-1", "hold", 77);
	for (int i = 0; i < 50 && !held_lease; i++)
		turn();
	assert_true(held_lease == 77);
	/* the network drops the connection under the agent */
	shutdown(ec_agent_fd(a), SHUT_RDWR);
	for (int i = 0; i < 100 && !count("agent-1", LINK_AGENT_DOWN); i++)
		turn();
	assert_int_equal(count("agent-1", LINK_AGENT_DOWN), 1);
	assert_true(run_until(is_connected, a, 1000) >= 0);
	struct ev *up = last("agent-1", 100);
	assert_int_equal(count("agent-1", 100), 2);
	assert_int_equal(up->nleases, 1);
	assert_true(up->leases[0] == 77);
	/* it was back within the budget: never offline */
	assert_int_equal(count("agent-1", LINK_AGENT_OFFLINE), 0);
	/* finishing now delivers the result on the new session */
	assert_int_equal(ec_agent_result(a, 77, NULL, 0), 0);
	uint64_t lease = 77;
	assert_true(run_until(has_result, &lease, 500) >= 0);
	/* a result finished while disconnected is resent after welcome */
	send_work("agent-1", "hold", 78);
	for (int i = 0; i < 50 && held_lease != 78; i++)
		turn();
	shutdown(ec_agent_fd(a), SHUT_RDWR);
	turn();
	assert_int_equal(ec_agent_fail(a, 78, "done while offline"), 0);
	lease = 78;
	assert_true(run_until(has_result, &lease, 2000) >= 0);
	stop_link();
}

/* Finished jobs wait for their ack while new work comes (the coordinator
 * holds acks until its commit is durable, work is not held): the agent
 * keeps them all and refuses nothing while a slot is free. Its job table
 * was a fixed 256, written past its end once full. After a reconnect its
 * hello lists 256 leases, over a small max_frame: both ends allow the
 * protocol's 65536 before welcome. */
static void test_unacked_results_pile_up(void **state)
{
	/* a small max_frame: the hello below (256 leases) is over it, and an
	 * agent may send up to 65536 before welcome says otherwise */
	start_link_with(0, 1024);
	nalines = 0;
	struct ec_agent *a = mk_agent("agent-1", "agent-1"); /* 2 slots */
	assert_true(run_until(is_connected, a, 500) >= 0);
	T.auto_ack = false;
	/* leases of 9 bytes each in CBOR, as after a few restarts (2^20 a start) */
	for (uint64_t lease = UINT64_C(1) << 40; lease < (UINT64_C(1) << 40) + 300; lease++) {
		send_work("agent-1", "echo", lease);
		assert_true(run_until(has_result, &lease, 200) >= 0);
		assert_true(last("agent-1", 200 + EC_F_RESULT)->ok);
	}
	assert_int_equal(ec_agent_running(a), 0);
	/* after a reconnect, hello lists as many as it may */
	shutdown(ec_agent_fd(a), SHUT_RDWR);
	for (int i = 0; i < 100 && !count("agent-1", LINK_AGENT_DOWN); i++)
		turn();
	bool up = run_until(is_connected, a, 1000) >= 0;
	for (size_t i = 0; !up && i < nalines && i < 256; i++)
		print_message("agent: %s\n", alines[i]);
	assert_true(up);
	assert_int_equal(last("agent-1", 100)->nleases, EC_MAX_LEASES);
	stop_link();
}

/* The loop stalls past the liveness budget while an agent keeps sending
 * heartbeats: the tick that follows reads them before it judges, instead
 * of calling a live agent lost (a turn takes at most 64 ready sockets, so
 * after a stall many agents' heartbeats can wait unread). */
static void test_tick_reads_before_judging(void **state)
{
	start_link(0);
	struct ec_agent *a = mk_agent("agent-1", "agent-1");
	assert_true(run_until(is_connected, a, 500) >= 0);
	/* 3.5 heartbeats of stall: past the coordinator's budget (3), short
	 * of the agent's own (4) */
	uint64_t end = T.now + HB_MS * 7 / 2;
	while (T.now < end) {
		ec_agent_step(a, T.now);
		T.now += TICK_MS;
		usleep(1000);
	}
	link_tick(T.link, T.now);
	assert_int_equal(count("agent-1", LINK_AGENT_OFFLINE), 0);
	assert_false(log_has("AGENT-LOST agent=agent-1"));
	for (int i = 0; i < 20; i++)
		turn();
	assert_true(ec_agent_connected(a));
	stop_link();
}

static void test_slow_reader_cut_off(void **state)
{
	start_link(64 * 1024);  /* a small outbound cap */
	struct ec_agent *a = mk_agent("agent-1", "agent-1");
	assert_true(run_until(is_connected, a, 500) >= 0);
	agents[0] = NULL;  /* the agent stops reading */
	static uint8_t big[30000];
	big[0] = 0x59;  /* bytes(29997) */
	big[1] = 0x75;
	big[2] = 0x2d;
	struct ec_frame w;
	ec_frame_init(&w, EC_F_WORK);
	w.task_id = "big";
	w.attempt = 1;
	w.task_type = "echo";
	w.payload = big;
	w.payload_len = sizeof(big);
	int rc = 0, i;
	/* no loop turns meanwhile: the kernel's socket buffers fill, then ours */
	for (i = 0; i < 2000 && rc == 0; i++) {
		w.lease = (uint64_t)i + 1;
		rc = link_send_work(T.link, "agent-1", &w);
	}
	assert_int_equal(rc, -ENOBUFS);
	print_message("slow reader: cut off after %d frames of 30 KB\n", i);
	assert_true(log_has("AGENT-SLOW agent=agent-1"));
	assert_int_equal(count("agent-1", LINK_AGENT_DOWN), 1);
	agents[0] = a;
	stop_link();
}

static struct ev *result_of(uint64_t lease)
{
	for (size_t i = 0; i < T.nevs; i++)
		if (T.evs[i].kind == 200 + EC_F_RESULT && T.evs[i].lease == lease)
			return &T.evs[i];
	return NULL;
}

static bool contains(const struct ev *e, const char *needle)
{
	return memmem(e->result, e->result_len, needle, strlen(needle)) != NULL;
}

static void work(uint64_t lease, const char *type, const uint8_t *payload, size_t plen,
		 uint32_t attempt, uint64_t timeout_ms)
{
	struct ec_frame w;
	ec_frame_init(&w, EC_F_WORK);
	w.task_id = "t-ref";
	w.attempt = attempt;
	w.lease = lease;
	w.task_type = (char *)type;
	w.payload = (uint8_t *)payload;
	w.payload_len = plen;
	w.timeout_ms = timeout_ms;
	assert_int_equal(link_send_work(T.link, "agent-2", &w), 0);
}

static bool ref_up(void *arg) { return count("agent-2", 100) > 0; }

/* The reference agent program against the link: built-in types, --exec,
 * timeout, cancel, SIGTERM -> bye and exit 0. It is given the coordinator
 * by name, so its poll loop also waits out a lookup (no fd, a due time). */
static void test_reference_agent(void **state)
{
	const char *bin = getenv("EC_BIN");
	if (!bin)
		skip();
	start_link(0);
	T.realtime = true;
	T.now = ec_agent_now_ms();
	char exe[256], coord[32];
	snprintf(exe, sizeof(exe), "%s/edgecoord-agent", bin);
	snprintf(coord, sizeof(coord), "localhost:%d", link_port(T.link));
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		execl(exe, exe, "--coordinator", coord, "--server-name", "localhost", "--id",
		      "agent-2", "--ca", path("ca.crt"), "--cert", path("agent-2.crt"), "--key",
		      path("agent-2.key"), "--caps", "echo,sleep,fail,sha256", "--slots", "8",
		      "--labels", "zone=a,hw=b", "--exec", "cat=cat", "--exec",
		      "bad=echo oops >&2; exit 3", "--exec", "slow=sleep 30", (char *)NULL);
		_exit(127);
	}
	assert_true(run_until(ref_up, NULL, 5000) >= 0);
	static const uint8_t n42[] = {0xa1, 0x61, 'n', 0x18, 42};
	static const uint8_t abc[] = {0xa1, 0x64, 'd', 'a', 't', 'a', 0x63, 'a', 'b', 'c'};
	static const uint8_t ms50[] = {0xa1, 0x62, 'm', 's', 0x18, 50};
	static const uint8_t f1[] = {0xa1, 0x6d, 'f', 'a', 'i', 'l', '_', 'a', 't', 't', 'e',
				     'm', 'p', 't', 's', 0x01};
	work(1, "echo", n42, sizeof(n42), 1, 0);
	work(2, "sha256", abc, sizeof(abc), 1, 0);
	work(3, "sleep", ms50, sizeof(ms50), 1, 0);
	work(4, "fail", f1, sizeof(f1), 1, 0);
	work(5, "fail", f1, sizeof(f1), 2, 0);
	work(6, "cat", n42, sizeof(n42), 3, 0);
	work(7, "bad", NULL, 0, 1, 0);
	work(8, "slow", NULL, 0, 1, 200);
	work(9, "slow", NULL, 0, 1, 0);
	for (uint64_t l = 1; l <= 8; l++)
		assert_true(run_until(has_result, &l, 5000) >= 0);
	struct ev *e = result_of(1);
	assert_true(e->ok && contains(e, "payload") && contains(e, "inputs"));
	e = result_of(2);
	assert_true(e->ok && contains(e, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
	e = result_of(3);
	assert_true(e->ok && contains(e, "slept_ms"));
	e = result_of(4);
	assert_false(e->ok);
	assert_string_equal(e->text, "requested failure");
	e = result_of(5);
	assert_true(e->ok && contains(e, "attempt"));
	e = result_of(6);  /* cat echoes its stdin JSON back: now a map */
	assert_true(e->ok && contains(e, "task_id") && contains(e, "t-ref") && contains(e, "payload"));
	e = result_of(7);
	assert_false(e->ok);
	assert_string_equal(e->text, "oops");
	e = result_of(8);
	assert_false(e->ok);
	assert_string_equal(e->text, "timeout");
	assert_int_equal(link_send_cancel(T.link, "agent-2", 9, "test"), 0);
	uint64_t l9 = 9;
	assert_true(run_until(has_result, &l9, 5000) >= 0);
	assert_string_equal(result_of(9)->text, "cancelled");
	/* SIGTERM: a bye, then exit status 0 */
	kill(pid, SIGTERM);
	int st = -1;
	for (int i = 0; i < 5000 && waitpid(pid, &st, WNOHANG) == 0; i++)
		turn();
	for (int i = 0; i < 50; i++)
		turn();
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_int_equal(count("agent-2", 200 + EC_F_BYE), 1);
	stop_link();
}

/* "localhost:PORT": the first step starts the lookup and returns, with no
 * socket yet and the next step asked for soon; the steps that follow poll
 * it and connect (where localhost is ::1 first, after ::1 refused: the link
 * listens on 127.0.0.1 only). */
static void test_coordinator_by_name(void **state)
{
	start_link(0);
	char coord[32];
	snprintf(coord, sizeof(coord), "localhost:%d", link_port(T.link));
	int before = lookups_done;
	struct ec_agent *a = mk_agent_to(coord, "agent-1", "agent-1");
	assert_int_equal(ec_agent_step(a, T.now), 0);
	assert_false(ec_agent_connected(a));
	assert_int_equal(ec_agent_fd(a), -1);  /* looking up: no socket yet */
	assert_int_equal(ec_agent_events(a), 0);
	assert_true(ec_agent_next_due(a) > T.now);
	assert_true(ec_agent_next_due(a) <= T.now + RESOLVE_POLL_MS);
	assert_true(run_until(is_connected, a, 500) >= 0);
	assert_int_equal(lookups_done, before + 1);  /* answered by a poll, once */
	assert_int_equal(count("agent-1", 100), 1);
	uint64_t lease = 21;
	send_work("agent-1", "echo", lease);
	assert_true(run_until(has_result, &lease, 500) >= 0);
	assert_true(last("agent-1", 200 + EC_F_RESULT)->ok);

	/* freed while its lookup runs: cancelled, or left to finish and
	 * reclaimed (under ASan: no leak, nothing written after the free) */
	struct ec_agent *b = mk_agent_to(coord, "agent-2", "agent-2");
	assert_int_equal(ec_agent_step(b, T.now), 0);
	assert_int_equal(ec_agent_fd(b), -1);
	rm_agent(b);
	stop_link();
}

/* A name whose first address refuses: the agent connects to the next one in
 * the same attempt, without a backoff or a second lookup. The refusing
 * address is put in front by the seam: a port bound and not listening. */
static void test_next_address_after_refusal(void **state)
{
	start_link(0);
	int hold = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	assert_int_equal(bind(hold, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(hold, (struct sockaddr *)&sa, &sl), 0);
	refuse_port = ntohs(sa.sin_port);
	char coord[32], refused[96];
	snprintf(coord, sizeof(coord), "localhost:%d", link_port(T.link));
	snprintf(refused, sizeof(refused), "connect to 127.0.0.1:%d: %s", refuse_port,
		 strerror(ECONNREFUSED));
	int before = lookups_done;
	nalines = 0;
	struct ec_agent *a = mk_agent_to(coord, "agent-1", "agent-1");
	bool up = run_until(is_connected, a, 500) >= 0;
	refuse_port = 0;
	close(hold);
	assert_true(up);
	assert_true(agent_log_has(refused));          /* the first was tried */
	assert_false(agent_log_has("disconnected"));  /* no backoff */
	assert_int_equal(lookups_done, before + 1);
	assert_int_equal(count("agent-1", 100), 1);
	stop_link();
}

/* The first address takes the connect and never answers (its listener's
 * queue is full, so the SYN is dropped, as a firewall would): it gets its
 * share of the budget, then the next one is tried in the same attempt. With
 * the whole budget on it, every attempt would start and end there. */
static void test_next_address_after_silence(void **state)
{
	start_link(0);
	int silent = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	assert_int_equal(bind(silent, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(silent, (struct sockaddr *)&sa, &sl), 0);
	assert_int_equal(listen(silent, 0), 0);
	assert_int_equal(connect(filler, (struct sockaddr *)&sa, sizeof(sa)), 0); /* queue full */
	refuse_port = ntohs(sa.sin_port);
	char coord[32], silence[96];
	snprintf(coord, sizeof(coord), "localhost:%d", link_port(T.link));
	snprintf(silence, sizeof(silence), "connect to 127.0.0.1:%d: no answer", refuse_port);
	nalines = 0;
	struct ec_agent *a = mk_agent_to(coord, "agent-1", "agent-1"); /* budget 3000 ms */
	int ticks = run_until(is_connected, a, 2500 / TICK_MS);
	refuse_port = 0;
	close(filler);
	close(silent);
	assert_true(ticks >= 0);
	assert_true(ticks * TICK_MS >= 1000);          /* it waited for the first ... */
	assert_true(agent_log_has(silence));          /* ... gave it up ... */
	assert_false(agent_log_has("disconnected"));  /* ... within the attempt */
	stop_link();
}

static void test_memory_per_session(void **state)
{
	enum { N = 50 };
	start_link(0);
	/* raw sessions that finish TLS and then idle before hello: what every
	 * connected agent costs the coordinator in TLS state and buffers */
	struct mallinfo2 m0 = mallinfo2();
	struct raw *rs[N];
	for (int i = 0; i < N; i++)
		rs[i] = raw_new(true, "agent-m", (const uint8_t *)"", 0);
	struct mallinfo2 m1 = mallinfo2();
	for (int i = 0; i < 100; i++)
		turn();
	struct link_stats st;
	link_get_stats(T.link, &st);
	assert_int_equal(st.sessions, N);
	struct mallinfo2 m2 = mallinfo2();
	size_t client = (m1.uordblks - m0.uordblks) / N;
	size_t both = (m2.uordblks - m0.uordblks) / N;
	print_message("memory: %zu B per client context, %zu B per server session "
		      "(TLS established, idle)\n", client, both - client);
	assert_true(both - client < 128 * 1024);
	for (int i = 0; i < N; i++)
		raw_free(rs[i]);
	stop_link();
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hello_work_result),
		cmocka_unit_test(test_silence_suspect_offline),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_malformed_frames),
		cmocka_unit_test(test_reconnect_lists_leases),
		cmocka_unit_test(test_unacked_results_pile_up),
		cmocka_unit_test(test_tick_reads_before_judging),
		cmocka_unit_test(test_slow_reader_cut_off),
		cmocka_unit_test(test_reference_agent),
		cmocka_unit_test(test_coordinator_by_name),
		cmocka_unit_test(test_next_address_after_refusal),
		cmocka_unit_test(test_next_address_after_silence),
		cmocka_unit_test(test_memory_per_session),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
