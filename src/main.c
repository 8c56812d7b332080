/* SPDX-License-Identifier: MIT */
/*
 * main.c - the edgecoord daemon: reads top to bottom as it starts, and tears
 * down in mirror order (mosquitto's src/mosquitto.c):
 *   args -> config -> log -> store -> loop -> coord -> mqtt -> run -> teardown.
 *
 * The loop's before-sleep step is where durability happens: everything that
 * arrived in the turn is committed in one transaction (coord_flush). The
 * store leaves each commit's meta page to the next commit's sync (lazy_meta),
 * so what a commit lets out (PUBACKs, statuses, frames) leaves with the next
 * commit, or after the flush the store makes on its own thread when the loop
 * finds nothing more to do (on_idle, then on_wake).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "coord.h"
#include "edgecoord/err.h"
#include "fleet.h"
#include "link.h"
#include "log.h"
#include "loop.h"
#include "mqtt.h"
#include "msg.h"
#include "sched.h"
#include "store.h"

#define SHUTDOWN_FLUSH_MS 3000
/* Submission bytes one turn (one transaction) takes at most. LMDB keeps the
 * dirty pages of its largest transaction for reuse, so this bounds resident
 * memory as well as the turn's latency: 256 messages of 100 tasks in one
 * transaction left 46 MiB of heap behind. */
#define TURN_BYTES (128u << 10)
/* An idle loop lets go of the store's mapped pages at most this often
 * (store_unmap): what it reads again comes back from the page cache. */
#define UNMAP_PERIOD_MS 1000
/* How often the loop clears the reader slots of dead processes
 * (store_reader_check): a slot left by a killed edgecoordctl stops the
 * reuse of freed pages, and the data file grew 13-fold under load. */
#define READERS_PERIOD_MS 10000

struct daemon {
	struct config cfg;
	const char *config_path;
	struct store *store;
	struct loop *loop;
	struct coord *coord;
	struct sched *sched;
	struct fleet *fleet;
	struct link *link;
	struct link_hooks fleet_hooks;  /* the fleet's session hooks */
	struct mqtt *mqtt;
	struct mqtt_msg *pending;       /* taken, waiting for the turn's commit */
	struct coord_msg *cmsgs;        /* one per pending message */
	size_t npending, capmsgs;
	char state_topic[MSG_TOPIC_MAX];
	bool log_level_flag;            /* --log-level given: SIGHUP keeps it */
	int64_t next_unmap;             /* loop_now_ms() of the next store_unmap */
	uint64_t unmapped_at;           /* store_written() then: nothing since? */
	int64_t next_readers;           /* loop_now_ms() of the next reader check */
};

static void usage(FILE *f)
{
	fputs("usage: edgecoord [-c FILE] [--broker URI] [--data-dir DIR] [--listen HOST:PORT]\n"
	      "                 [--node-id ID] [--topic-prefix P] [--ca FILE --cert FILE --key FILE]\n"
	      "                 [--log-level error|warn|info|debug] [--check-config] [--version]\n"
	      "                 [--help]\n\n"
	      "Every flag has a configuration key, and flags win over the file.\n",
	      f);
	config_print_reference(f, false);
}

/* ---- the MQTT side of coord -------------------------------------------------- */

static int io_publish(void *arg, uint64_t seq, const char *topic, const uint8_t *payload,
		      size_t len, unsigned flags, const uint8_t *corr, size_t corr_len)
{
	struct daemon *d = arg;
	struct mqtt_pub p = {
		.topic = topic,
		.payload = payload,
		.len = len,
		.retain = flags & OUTBOX_RETAIN,
		.expiry_s = (flags & OUTBOX_EXPIRE) ? (uint32_t)d->cfg.mqtt.result_ttl_s : 0,
		.content_type = (flags & OUTBOX_CBOR) ? "application/cbor" : "application/json",
		.correlation = corr,
		.correlation_len = corr_len,
		.tag = seq,
	};
	return mqtt_publish(d->mqtt, &p);
}

static void io_settle(void *arg, void *user, bool ack)
{
	struct daemon *d = arg;
	mqtt_inbound_done(d->mqtt, user, ack);
}

static bool io_can_publish(void *arg)
{
	struct daemon *d = arg;
	return mqtt_can_publish(d->mqtt);
}

static void on_mqtt(struct loop *l, int fd, unsigned events, void *arg)
{
	struct daemon *d = arg;
	struct mqtt_events ev;
	uint64_t tags[256];
	size_t n;

	mqtt_take_events(d->mqtt, &ev);
	if (ev.connects) /* the module logs MQTT-CONNECTED */
		coord_resend_all(d->coord);
	while ((n = mqtt_take_delivered(d->mqtt, tags, 256)) > 0)
		for (size_t i = 0; i < n; i++)
			coord_delivered(d->coord, tags[i]);
	/* Failed means the connection was lost: the reconnect above resends
	 * the outbox. The reports are taken to free their window places. */
	while (mqtt_take_failed(d->mqtt, tags, 256) > 0)
		;

	for (struct mqtt_msg *m = mqtt_take_inbound(d->mqtt, TURN_BYTES), *next; m; m = next) {
		next = m->next;
		m->next = d->pending;
		d->pending = m;
		d->npending++;
	}
}

/* The store was written (and so read) since its pages were last unmapped. */
static bool unmap_due(struct daemon *d)
{
	return store_written(d->store) != d->unmapped_at;
}

/* Let go of the map pages the process has read (RSS), at most every
 * UNMAP_PERIOD_MS and only after a write; next_due() wakes a quiet loop for
 * the last one. */
static void maybe_unmap(struct daemon *d)
{
	if (unmap_due(d) && loop_now_ms() >= d->next_unmap) {
		store_unmap(d->store);
		d->unmapped_at = store_written(d->store);
		d->next_unmap = loop_now_ms() + UNMAP_PERIOD_MS;
	}
}

/* Stale readers matter only to a store that is written, and writes happen
 * in loop turns: a quiet loop need not wake for this. */
static void maybe_check_readers(struct daemon *d)
{
	if (loop_now_ms() >= d->next_readers) {
		store_reader_check(d->store);
		d->next_readers = loop_now_ms() + READERS_PERIOD_MS;
	}
}

/* Before the loop sleeps: commit the turn, then acknowledge. */
static void before_sleep(struct loop *l, void *arg)
{
	struct daemon *d = arg;
	size_t i = 0;

	if (d->npending > d->capmsgs) {
		struct coord_msg *c = realloc(d->cmsgs, d->npending * sizeof *c);
		if (!c) {
			log_warnx("out of memory; messages wait for redelivery");
			return;
		}
		d->cmsgs = c;
		d->capmsgs = d->npending;
	}
	/* pending is newest first; give coord the oldest first. */
	i = d->npending;
	for (struct mqtt_msg *m = d->pending; m; m = m->next) {
		struct coord_msg *c = &d->cmsgs[--i];
		*c = (struct coord_msg){
			.topic = m->topic, .payload = m->payload, .len = m->len,
			.content_type = m->content_type, .response_topic = m->response_topic,
			.corr = m->correlation, .corr_len = m->correlation_len, .user = m,
			.oversize = m->oversize, .retained = m->retained,
		};
	}
	size_t pushed = 0;
	while (pushed < d->npending && coord_push(d->coord, &d->cmsgs[pushed]) == 0)
		pushed++;
	for (i = pushed; i < d->npending; i++) /* not pushed: redelivered */
		mqtt_inbound_done(d->mqtt, d->cmsgs[i].user, false);
	coord_flush(d->coord, loop_realtime_ms()); /* settles the pushed ones */
	d->pending = NULL;
	d->npending = 0;
	maybe_unmap(d);
	maybe_check_readers(d);
	/* Everything this turn published (outbox drain, statuses) and the
	 * PUBACKs of what it committed leave in one write. */
	if (d->mqtt)
		mqtt_flush(d->mqtt);
}

/* Nothing more to do this instant: the store flushes the last commit on its
 * thread while the loop waits for more (whose commit would flush it too). */
static void on_idle(struct loop *l, void *arg)
{
	struct daemon *d = arg;
	(void)l;
	coord_sync_later(d->coord); /* nothing if all is durable; on failure the next
				     * commit's flush covers it */
}

/* On the store's thread: a flush is done. */
static void synced_elsewhere(void *arg)
{
	loop_wake(arg);
}

/* Back on the loop: let out what the flush made durable. */
static void on_wake(struct loop *l, void *arg)
{
	struct daemon *d = arg;
	(void)l;
	coord_synced(d->coord);
	if (d->mqtt)
		mqtt_flush(d->mqtt);
}

static void on_signal(struct loop *l, int signo, void *arg)
{
	struct daemon *d = arg;

	if (signo == SIGHUP) {
		struct config fresh;
		struct config_errors errs;
		config_defaults(&fresh);
		config_errors_init(&errs);
		if (d->config_path && config_load(&fresh, d->config_path, &errs) != 0) {
			log_warnx("RELOAD-FAILED %s: keeping the running configuration",
				  d->config_path);
			config_errors_print(&errs, stderr);
		} else if (d->config_path) {
			if (!d->log_level_flag) /* a --log-level flag keeps winning */
				d->cfg.log.level = fresh.log.level;
			log_set_level(d->cfg.log.level);
			log_info("RELOAD log level is %s; other keys need a restart",
				 log_level_name(d->cfg.log.level));
		} else {
			log_info("RELOAD nothing to reload: started without -c");
		}
		config_errors_fini(&errs);
		config_fini(&fresh);
		return;
	}
	log_info("SHUTDOWN on signal %d", signo);
	loop_stop(l);
}

/* ---- start-up ------------------------------------------------------------------ */

static int parse_args(struct daemon *d, int argc, char **argv, bool *check_only)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "broker", required_argument, NULL, 'b' },
		{ "data-dir", required_argument, NULL, 'd' },
		{ "listen", required_argument, NULL, 'l' },
		{ "node-id", required_argument, NULL, 'n' },
		{ "topic-prefix", required_argument, NULL, 'p' },
		{ "ca", required_argument, NULL, 'A' },
		{ "cert", required_argument, NULL, 'C' },
		{ "key", required_argument, NULL, 'K' },
		{ "log-level", required_argument, NULL, 'L' },
		{ "check-config", no_argument, NULL, 'k' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	static const struct { int opt; const char *section, *key; } keys[] = {
		{ 'b', "mqtt", "uri" }, { 'd', "coordinator", "data_dir" },
		{ 'l', "agents", "listen" }, { 'n', "coordinator", "node_id" },
		{ 'p', "mqtt", "topic_prefix" }, { 'A', "agents", "ca_file" },
		{ 'C', "agents", "cert_file" }, { 'K', "agents", "key_file" },
		{ 'L', "log", "level" },
	};
	int opt, bad = 0;
	char err[256];

	while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			d->config_path = optarg;
			continue;
		case 'k':
			*check_only = true;
			continue;
		case 'V':
			printf("edgecoord %s\n", EC_VERSION);
			exit(0);
		case 'h':
			usage(stdout);
			exit(0);
		case '?':
			bad = 1;
			continue;
		case 'L':
			d->log_level_flag = true;
			break;
		}
		for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
			if (keys[i].opt != opt)
				continue;
			if (config_set(&d->cfg, keys[i].section, keys[i].key, optarg, err,
				       sizeof err) < 0) {
				fprintf(stderr, "edgecoord: command line: %s\n", err);
				bad = 1;
			}
		}
	}
	if (optind < argc) {
		fprintf(stderr, "edgecoord: unexpected argument '%s'\n", argv[optind]);
		bad = 1;
	}
	return bad ? -1 : 0;
}

static int load_config(struct daemon *d, int argc, char **argv, bool *check_only)
{
	struct config_errors errs;
	int rc;

	config_defaults(&d->cfg);
	if (parse_args(d, argc, argv, check_only) < 0) {
		fprintf(stderr, "usage: edgecoord [-c FILE] [options]; see edgecoord --help\n");
		return -1;
	}
	config_errors_init(&errs);
	rc = d->config_path ? config_load(&d->cfg, d->config_path, &errs) : 0;
	if (rc == 0)
		rc = config_finish(&d->cfg, &errs);
	config_errors_print(&errs, stderr);
	config_errors_fini(&errs);
	return rc == 0 ? 0 : -1;
}

/* ---- the agent side: scheduler, fleet, link ------------------------------------- */

static int link_watch(void *ctx, int fd, unsigned events);
static void link_unwatch(void *ctx, int fd);

static void on_link_fd(struct loop *l, int fd, unsigned events, void *arg)
{
	struct daemon *d = arg;
	unsigned ev = (events & (LOOP_READ | LOOP_ERROR) ? LINK_EV_READ : 0) |
		      (events & LOOP_WRITE ? LINK_EV_WRITE : 0);
	link_on_event(d->link, fd, ev, (uint64_t)loop_now_ms());
}

static int link_watch(void *ctx, int fd, unsigned events)
{
	struct daemon *d = ctx;
	unsigned ev = (events & LINK_EV_READ ? LOOP_READ : 0) |
		      (events & LINK_EV_WRITE ? LOOP_WRITE : 0);
	int rc = loop_mod(d->loop, fd, ev);
	return rc == -ENOENT ? loop_add(d->loop, fd, ev, on_link_fd, d) : rc;
}

static void link_unwatch(void *ctx, int fd)
{
	struct daemon *d = ctx;
	loop_del(d->loop, fd);
}

/* The link has one context for its hooks: the daemon, which passes the
 * session events on to the fleet. */
static void tr_up(void *ctx, const char *agent, const struct ec_frame *hello)
{
	struct daemon *d = ctx;
	d->fleet_hooks.on_up(d->fleet_hooks.ctx, agent, hello);
}

static void tr_frame(void *ctx, const char *agent, const struct ec_frame *f)
{
	struct daemon *d = ctx;
	d->fleet_hooks.on_frame(d->fleet_hooks.ctx, agent, f);
}

static void tr_state(void *ctx, const char *agent, enum link_agent_state st, const char *why)
{
	struct daemon *d = ctx;
	d->fleet_hooks.on_state(d->fleet_hooks.ctx, agent, st, why);
}

static int64_t next_due(void *arg)
{
	struct daemon *d = arg;
	int64_t now = loop_now_ms(), real = loop_realtime_ms();
	int64_t due = fleet_next_due(d->fleet, now, real);
	int64_t cd = coord_next_due(d->coord); /* on the realtime clock */
	if (cd >= 0 && (due < 0 || now + (cd - real) < due))
		due = now + (cd - real);
	if (d->link) {
		int64_t l = (int64_t)link_next_due(d->link);
		if (l >= 0 && (due < 0 || l < due))
			due = l;
	}
	if (unmap_due(d) && (due < 0 || d->next_unmap < due))
		due = d->next_unmap; /* a quiet loop wakes once to let the pages go */
	return due;
}

static void on_due(struct loop *l, void *arg)
{
	struct daemon *d = arg;
	if (d->link)
		link_tick(d->link, (uint64_t)loop_now_ms());
	/* the fleet's timers run in the before-sleep transaction */
}

static int start_sched(struct daemon *d)
{
	struct sched_opts so;
	sched_opts_default(&so);
	so.routing = (enum sched_routing)d->cfg.scheduler.routing;
	so.aging_ms = d->cfg.scheduler.aging_ms;
	so.breaker_failures = (uint32_t)d->cfg.scheduler.breaker_failures;
	so.breaker_cooldown_ms = d->cfg.scheduler.breaker_cooldown_ms;
	so.seed = (uint64_t)loop_realtime_ms() ^ (uint64_t)getpid();
	int rc = sched_new(&so, &d->sched);
	for (size_t i = 0; rc == 0 && i < d->cfg.concurrency.n; i++)
		rc = sched_set_limit(d->sched, d->cfg.concurrency.v[i].type,
				     d->cfg.concurrency.v[i].max);
	if (rc < 0)
		return rc;

	struct fleet_opts fo = {
		.prefix = d->cfg.mqtt.topic_prefix,
		.heartbeat_ms = (uint32_t)d->cfg.agents.heartbeat_ms,
		.heartbeat_misses = (uint32_t)d->cfg.agents.heartbeat_misses,
		.max_frame = (uint32_t)d->cfg.agents.max_frame,
	};
	sched_defaults_init(&fo.defaults);
	fo.defaults.retry.max_attempts = (int32_t)d->cfg.scheduler.max_attempts;
	fo.defaults.retry.backoff = (uint8_t)d->cfg.scheduler.backoff;
	fo.defaults.retry.jitter = d->cfg.scheduler.jitter;
	fo.defaults.retry.initial_ms = d->cfg.scheduler.initial_delay_ms;
	fo.defaults.retry.max_ms = d->cfg.scheduler.max_delay_ms;
	fo.defaults.task_timeout_ms = d->cfg.scheduler.task_timeout_ms;
	rc = fleet_new(d->store, d->sched, &fo, &d->fleet);
	if (rc < 0)
		return rc;
	struct coord_hooks h;
	fleet_coord_hooks(d->fleet, &h);
	coord_set_hooks(d->coord, &h);
	return fleet_recover(d->fleet, loop_realtime_ms(), loop_now_ms());
}

/* Agents' PKI: all three flags/keys, or DATA_DIR/pki/, or none (listener off). */
static int start_link(struct daemon *d)
{
	char ca[4096], cert[4096], key[4096];
	struct stat st;

	if (d->cfg.agents.ca_file) {
		snprintf(ca, sizeof ca, "%s", d->cfg.agents.ca_file);
		snprintf(cert, sizeof cert, "%s", d->cfg.agents.cert_file);
		snprintf(key, sizeof key, "%s", d->cfg.agents.key_file);
	} else {
		snprintf(ca, sizeof ca, "%s/pki/ca.crt", d->cfg.coordinator.data_dir);
		snprintf(cert, sizeof cert, "%s/pki/coordinator.crt", d->cfg.coordinator.data_dir);
		snprintf(key, sizeof key, "%s/pki/coordinator.key", d->cfg.coordinator.data_dir);
		if (stat(ca, &st) != 0 || stat(cert, &st) != 0 || stat(key, &st) != 0) {
			log_warnx("AGENTS-OFF no --ca/--cert/--key and no %s/pki/: the agent "
				  "listener is off; ingest works", d->cfg.coordinator.data_dir);
			return 0;
		}
	}
	char listen[300];
	snprintf(listen, sizeof listen, "%s:%u", d->cfg.agents.listen.host,
		 d->cfg.agents.listen.port);
	struct link_config lc = {
		.listen = listen, .ca_file = ca, .cert_file = cert, .key_file = key,
		.heartbeat_ms = (uint32_t)d->cfg.agents.heartbeat_ms,
		.heartbeat_misses = (uint32_t)d->cfg.agents.heartbeat_misses,
		.max_frame = (uint32_t)d->cfg.agents.max_frame,
		.handshake_timeout_ms = (uint32_t)d->cfg.agents.handshake_timeout_ms,
	};
	struct link_hooks hooks = {
		.ctx = d, .watch = link_watch, .unwatch = link_unwatch,
		.on_up = tr_up, .on_frame = tr_frame, .on_state = tr_state,
	};
	fleet_link_hooks(d->fleet, &d->fleet_hooks);
	int rc = link_new(&lc, &hooks, &d->link);
	if (rc < 0)
		return rc;
	fleet_attach_link(d->fleet, d->link);
	log_info("AGENTS listening on %s:%d", d->cfg.agents.listen.host, link_port(d->link));
	return 0;
}

static int start_mqtt(struct daemon *d)
{
	const char *p = d->cfg.mqtt.topic_prefix;
	char sub_submit[MSG_TOPIC_MAX], sub_source[MSG_TOPIC_MAX], sub_control[MSG_TOPIC_MAX];
	const char *subs[] = { sub_submit, sub_source, sub_control };
	uint8_t *will, *online;
	size_t will_len, online_len;
	int rc;

	snprintf(sub_submit, sizeof sub_submit, "%s/submit", p);
	snprintf(sub_source, sizeof sub_source, "%s/submit/+", p);
	snprintf(sub_control, sizeof sub_control, "%s/control/+", p);
	snprintf(d->state_topic, sizeof d->state_topic, "%s/coordinator/%s/state", p,
		 d->cfg.coordinator.node_id);
	int64_t now = loop_realtime_ms();
	rc = msg_coordinator_state("offline", d->cfg.coordinator.node_id, now, &will, &will_len);
	if (rc < 0)
		return rc;
	rc = msg_coordinator_state("online", d->cfg.coordinator.node_id, now, &online,
				   &online_len);
	if (rc < 0) {
		free(will);
		return rc;
	}
	struct mqtt_opts o = {
		.uri = d->cfg.mqtt.uri,
		.client_id = d->cfg.mqtt.client_id,
		.username = d->cfg.mqtt.username,
		.password = d->cfg.mqtt.password,
		.ca_file = d->cfg.mqtt.ca_file,
		.cert_file = d->cfg.mqtt.cert_file,
		.key_file = d->cfg.mqtt.key_file,
		.keepalive_s = (int)d->cfg.mqtt.keepalive_s,
		.max_message = (size_t)d->cfg.limits.max_message_bytes,
		.subs = subs,
		.n_subs = 3,
		.will_topic = d->state_topic,
		.will_payload = will,
		.will_len = will_len,
		.online_topic = d->state_topic,
		.online_payload = online,
		.online_len = online_len,
	};
	rc = mqtt_open(&o, &d->mqtt);
	free(will);
	free(online);
	if (rc < 0)
		return rc;
	return loop_add(d->loop, mqtt_fd(d->mqtt), LOOP_READ, on_mqtt, d);
}

/* Publish what the outbox holds, for a bounded time, then say "offline". */
static void flush_before_exit(struct daemon *d)
{
	int64_t until = loop_now_ms() + SHUTDOWN_FLUSH_MS;
	uint8_t *off;
	size_t off_len;

	while (loop_now_ms() < until) {
		on_mqtt(d->loop, mqtt_fd(d->mqtt), LOOP_READ, d);
		before_sleep(d->loop, d);
		if (coord_sync(d->coord) == 0 && d->mqtt)
			mqtt_flush(d->mqtt);
		if (coord_outbox_len(d->coord) == 0 && mqtt_inflight(d->mqtt) == 0)
			break;
		usleep(10000);
	}
	if (coord_outbox_len(d->coord))
		log_warnx("SHUTDOWN %llu outbox rows left; they are sent after the restart",
			  (unsigned long long)coord_outbox_len(d->coord));
	if (msg_coordinator_state("offline", d->cfg.coordinator.node_id, loop_realtime_ms(),
				  &off, &off_len) == 0) {
		struct mqtt_pub p = { .topic = d->state_topic, .payload = off, .len = off_len,
				      .retain = true, .content_type = "application/json" };
		if (mqtt_publish(d->mqtt, &p) == 0) {
			mqtt_flush(d->mqtt);
			/* in-flight counts drop only as the loop takes the reports */
			uint64_t tags[64];
			for (int i = 0; i < 100 && mqtt_inflight(d->mqtt); i++) {
				struct mqtt_events ev;
				mqtt_take_events(d->mqtt, &ev);
				while (mqtt_take_delivered(d->mqtt, tags, 64) > 0 ||
				       mqtt_take_failed(d->mqtt, tags, 64) > 0)
					;
				if (mqtt_inflight(d->mqtt))
					usleep(10000);
			}
		}
		free(off);
	}
}

int main(int argc, char **argv)
{
	struct daemon d = { 0 };
	bool check_only = false;
	int ret = 1, rc;

	if (load_config(&d, argc, argv, &check_only) < 0) {
		config_fini(&d.cfg);
		return 2;
	}
	if (check_only) {
		printf("configuration OK\n");
		config_fini(&d.cfg);
		return 0;
	}
	log_init("edgecoord", d.cfg.log.level, d.cfg.log.syslog);

	struct store_opts so = {
		.dir = d.cfg.coordinator.data_dir,
		.map_size = (size_t)d.cfg.coordinator.map_size_bytes,
		.max_map_size = (size_t)d.cfg.coordinator.max_map_size_bytes,
		.lazy_meta = true, /* coord holds what a commit lets out (coord.h) */
		.max_unfinished = (uint64_t)d.cfg.coordinator.max_unfinished,
	};
	rc = store_open(&so, &d.store);
	if (rc < 0) {
		log_error("STORE-OPEN %s: %s", so.dir, ec_strerror(rc));
		goto out_config;
	}
	rc = loop_open(&d.loop); /* before any thread: it blocks the signals */
	if (rc < 0) {
		log_error("loop: %s", ec_strerror(rc));
		goto out_store;
	}
	loop_on_signal(d.loop, on_signal, &d);
	loop_set_before_sleep(d.loop, before_sleep, &d);
	loop_set_idle(d.loop, on_idle, &d);
	loop_on_wake(d.loop, on_wake, &d);
	store_set_sync_notify(d.store, synced_elsewhere, d.loop);

	struct coord_opts co = {
		.prefix = d.cfg.mqtt.topic_prefix,
		.node_id = d.cfg.coordinator.node_id,
		.status_events = d.cfg.mqtt.status_events,
		.max_pending = (uint32_t)d.cfg.scheduler.max_pending_per_source,
		.outbox_max = (uint64_t)d.cfg.mqtt.outbox_max,
		.keep_final_ms = d.cfg.coordinator.keep_final_s * 1000,
	};
	config_limits(&d.cfg, &co.limits);
	struct coord_io io = { .publish = io_publish, .can_publish = io_can_publish,
			       .settle = io_settle, .arg = &d };
	rc = coord_new(d.store, &co, &io, &d.coord);
	if (rc < 0)
		goto out_loop;
	rc = start_sched(&d);
	if (rc < 0) {
		log_error("RECOVER failed: %s", ec_strerror(rc));
		goto out_fleet;
	}
	rc = start_link(&d);
	if (rc < 0) {
		log_error("AGENTS cannot listen on %s:%u: %s", d.cfg.agents.listen.host,
			  d.cfg.agents.listen.port, ec_strerror(rc));
		goto out_fleet;
	}
	loop_set_due(d.loop, next_due, on_due, &d);
	rc = start_mqtt(&d);
	if (rc < 0) {
		log_error("MQTT %s: %s", d.cfg.mqtt.uri, ec_strerror(rc));
		goto out_link;
	}
	log_info("READY node=%s data=%s broker=%s prefix=%s", d.cfg.coordinator.node_id,
		 d.cfg.coordinator.data_dir, d.cfg.mqtt.uri, d.cfg.mqtt.topic_prefix);

	rc = loop_run(d.loop);
	ret = rc < 0 ? 1 : 0;
	if (rc < 0)
		log_error("loop: %s", ec_strerror(rc));

	flush_before_exit(&d);
	loop_del(d.loop, mqtt_fd(d.mqtt));
	/* Messages taken but not committed are abandoned: the broker redelivers. */
	mqtt_close(d.mqtt, 2000);
out_link:
	link_free(d.link);
out_fleet:
	fleet_free(d.fleet);
	sched_free(d.sched);
	coord_free(d.coord);
out_loop:
	free(d.cmsgs);
	store_set_sync_notify(d.store, NULL, NULL); /* its thread wakes the loop */
	loop_close(d.loop);
out_store:
	store_close(d.store);
out_config:
	config_fini(&d.cfg);
	log_info("STOPPED");
	return ret;
}
