/* SPDX-License-Identifier: MIT */
/*
 * bench_store.c - bench-store: what group commit buys on this machine's disk.
 * With durable commits (the store's only mode) in a fresh temporary
 * directory it measures
 *   (a) single-task submissions per second, one per write transaction and
 *       100 per write transaction;
 *   (b) task transitions per second (ready -> dispatched -> running ->
 *       succeeded), one per write transaction and 256 per transaction;
 * each the median of 3 runs (a run stops after CELL_SECONDS), and prints a
 * table with the ratios.
 *
 * usage: bench-store [-d BASE_DIR] [-q]    (-q: smaller counts, for a smoke run)
 * Exit status 0 on success. The temporary directories are removed.
 */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "edgecoord/err.h"
#include "store.h"

static const char *base_dir = NULL;

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
	(void)sb;
	(void)flag;
	(void)f;
	return remove(p);
}

static struct store *fresh_store(char *dir, size_t dirlen)
{
	const char *b = base_dir ? base_dir : getenv("TMPDIR");
	snprintf(dir, dirlen, "%s/ec-bench-XXXXXX", b && *b ? b : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		exit(1);
	}
	struct store_opts o = { .dir = dir, .map_size = 64 << 20, .max_map_size = 1ull << 30 };
	struct store *s;
	int rc = store_open(&o, &s);
	if (rc) {
		fprintf(stderr, "store_open: %s\n", ec_strerror(rc));
		exit(1);
	}
	return s;
}

static void drop_store(struct store *s, const char *dir)
{
	store_close(s);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* --- submissions ----------------------------------------------------------- */

struct sub_batch {
	int from, n;
};

static int submit_fn(struct store_txn *t, void *arg)
{
	struct sub_batch *b = arg;
	for (int i = b->from; i < b->from + b->n; i++) {
		struct task_spec spec;
		memset(&spec, 0, sizeof spec);
		snprintf(spec.id, sizeof spec.id, "task-%08d", i);
		snprintf(spec.type, sizeof spec.type, "analysis");
		spec.timeout_ms = -1;
		uint8_t payload[] = { 0xa1, 0x61, 'n', 0x18, 0x2a }; /* {"n": 42} */
		spec.payload = payload;
		spec.payload_len = sizeof payload;
		struct submission sub = { .kind = SUB_TASK, .tasks = &spec, .ntasks = 1 };
		snprintf(sub.id, sizeof sub.id, "task-%08d", i);
		struct submit_result r;
		struct sub_error e;
		int rc = store_submit(t, &sub, "bench", 0, 1, &r, &e);
		if (rc)
			return rc;
	}
	return 0;
}

/* A cell stops after this many seconds even if its count is not reached, so
 * that a slow disk does not make the single-commit cells take minutes. */
#define CELL_SECONDS 2.0

/* Submissions per second for up to `total` tasks, `per` per transaction. */
static double run_submit(int total, int per)
{
	char dir[512];
	struct store *s = fresh_store(dir, sizeof dir);
	double t0 = mono();
	int i;
	for (i = 0; i < total && mono() - t0 < CELL_SECONDS; i += per) {
		struct sub_batch b = { i, per };
		int rc = store_write(s, submit_fn, &b);
		if (rc) {
			fprintf(stderr, "submit: %s\n", ec_strerror(rc));
			exit(1);
		}
	}
	double dt = mono() - t0;
	drop_store(s, dir);
	return i / dt;
}

/* --- transitions ------------------------------------------------------------ */

struct tr_batch {
	int from, n;   /* transition numbers; task k gets transitions 3k..3k+2 */
	uint64_t *leases;
};

static int transition_fn(struct store_txn *t, void *arg)
{
	struct tr_batch *b = arg;
	static const enum task_state path[3] = { TS_DISPATCHED, TS_RUNNING, TS_SUCCEEDED };
	for (int i = b->from; i < b->from + b->n; i++) {
		int task = i / 3, step = i % 3;
		char id[TASK_FULLID_MAX + 1];
		snprintf(id, sizeof id, "task-%08d", task);
		struct transition tr = { .to = path[step], .now_ms = 2, .agent = "agent-1",
					 .lease = step ? b->leases[task] : 0 };
		if (step == 2) {
			static const uint8_t res[] = { 0xa1, 0x62, 'o', 'k', 0xf5 };
			tr.result = res;
			tr.result_len = sizeof res;
		}
		int rc = store_transition(t, id, &tr, step ? NULL : &b->leases[task]);
		if (rc)
			return rc;
	}
	return 0;
}

static double run_transitions(int total, int per)
{
	char dir[512];
	int tasks = (total + 2) / 3;
	struct store *s = fresh_store(dir, sizeof dir);
	for (int i = 0; i < tasks; i += 500) {
		struct sub_batch b = { i, tasks - i < 500 ? tasks - i : 500 };
		if (store_write(s, submit_fn, &b)) {
			fprintf(stderr, "setup failed\n");
			exit(1);
		}
	}
	struct tr_batch b = { .leases = calloc((size_t)tasks, sizeof *b.leases) };
	double t0 = mono();
	int i;
	for (i = 0; i < total && mono() - t0 < CELL_SECONDS; i += per) {
		b.from = i;
		b.n = total - i < per ? total - i : per;
		int rc = store_write(s, transition_fn, &b);
		if (rc) {
			fprintf(stderr, "transition: %s\n", ec_strerror(rc));
			exit(1);
		}
	}
	double dt = mono() - t0;
	free(b.leases);
	drop_store(s, dir);
	return (i < total ? i : total) / dt;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median3(double (*fn)(int, int), int total, int per)
{
	double v[3];
	for (int i = 0; i < 3; i++)
		v[i] = fn(total, per);
	qsort(v, 3, sizeof v[0], cmp_double);
	return v[1];
}

int main(int argc, char **argv)
{
	int quick = 0, opt;
	while ((opt = getopt(argc, argv, "d:q")) != -1) {
		if (opt == 'd')
			base_dir = optarg;
		else if (opt == 'q')
			quick = 1;
		else {
			fprintf(stderr, "usage: %s [-d BASE_DIR] [-q]\n", argv[0]);
			return 2;
		}
	}
	int n1 = quick ? 100 : 3000, n100 = quick ? 3000 : 50000;
	int t1 = quick ? 150 : 3000, t256 = quick ? 3072 : 120000;

	double sub1 = median3(run_submit, n1, 1);
	double sub100 = median3(run_submit, n100, 100);
	double tr1 = median3(run_transitions, t1, 1);
	double tr256 = median3(run_transitions, t256, 256);

	printf("edgecoord store benchmark (durable commits, median of 3 runs)\n\n");
	printf("%-38s %14s %10s\n", "operation", "per second", "vs single");
	printf("%-38s %14.0f %10s\n", "submissions, 1 per transaction", sub1, "1.0x");
	printf("%-38s %14.0f %9.1fx\n", "submissions, 100 per transaction", sub100, sub100 / sub1);
	printf("%-38s %14.0f %10s\n", "transitions, 1 per transaction", tr1, "1.0x");
	printf("%-38s %14.0f %9.1fx\n", "transitions, 256 per transaction", tr256, tr256 / tr1);
	printf("\ngroup commit target (transitions >= 20x single): %s\n",
	       tr256 / tr1 >= 20 ? "met" : "NOT met");
	return 0;
}
