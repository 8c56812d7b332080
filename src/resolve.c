/* SPDX-License-Identifier: MIT */
/*
 * resolve.c - non-blocking name lookups (resolve.h): addresses converted at
 * once, names looked up with getaddrinfo_a() and polled with gai_error().
 *
 * Owns: the lookup requests, which live on the heap, apart from the struct
 * resolve, because glibc writes into a request until its lookup returns,
 * whether or not we still want it; and the list of requests that
 * resolve_free() had to leave running.
 *
 * Does not: connect, time out on its own (the caller decides when to give
 * up), or notify anyone. SIGEV_NONE on purpose: a SIGEV_THREAD notification
 * runs on a thread glibc starts with every signal unblocked, and a SIGTERM
 * delivered there would kill a daemon that reads its signals from a
 * signalfd.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "resolve.h"

/* One lookup. ar_name, ar_service and ar_request point into it: the helper
 * thread reads them for as long as it runs, maybe after resolve_free(). */
struct request {
	struct gaicb cb;
	struct addrinfo hints;
	struct request *next;    /* in abandoned */
	char names[];            /* host '\0' port '\0' */
};

struct resolve {
	struct request *req;     /* the lookup started last, until it is over */
	bool given_up;           /* req still runs, but nobody wants its result */
	const char *why;
	const char *port;        /* in host[] */
	char host[];             /* host '\0' port '\0' */
};

/* Requests resolve_free() left running, freed once they return. Process-
 * wide, because their struct resolve is gone: whichever resolver runs next
 * reclaims them. */
static pthread_mutex_t abandoned_lock = PTHREAD_MUTEX_INITIALIZER;
static struct request *abandoned;

static bool returned(struct request *q)
{
	return gai_error(&q->cb) != EAI_INPROGRESS;
}

static void request_free(struct request *q)
{
	if (q->cb.ar_result)
		freeaddrinfo(q->cb.ar_result);
	free(q);
}

static void reap_abandoned(void)
{
	pthread_mutex_lock(&abandoned_lock);
	for (struct request **pp = &abandoned; *pp;) {
		struct request *q = *pp;
		if (returned(q)) {
			*pp = q->next;
			request_free(q);
		} else {
			pp = &q->next;
		}
	}
	pthread_mutex_unlock(&abandoned_lock);
}

int resolve_new(const char *host, const char *port, struct resolve **out)
{
	size_t hl = strlen(host) + 1, pl = strlen(port) + 1;
	struct resolve *r = calloc(1, sizeof(*r) + hl + pl);
	if (!r)
		return -ENOMEM;
	memcpy(r->host, host, hl);
	memcpy(r->host + hl, port, pl);
	r->port = r->host + hl;
	*out = r;
	return 0;
}

void resolve_cancel(struct resolve *r)
{
	if (!r->req || r->given_up)
		return;
	switch (gai_cancel(&r->req->cb)) {
	case EAI_CANCELED:
		/* Never started, and glibc has forgotten it: its gai_error()
		 * stays EAI_INPROGRESS for ever, so it must not be waited on. */
	case EAI_ALLDONE:
		/* Returned meanwhile (or never queued): glibc is done with it. */
		request_free(r->req);
		r->req = NULL;
		break;
	default:
		/* EAI_NOTCANCELED: running. It writes into *req when it returns. */
		r->given_up = true;
		break;
	}
}

void resolve_free(struct resolve *r)
{
	if (!r)
		return;
	resolve_cancel(r);
	if (r->req) {
		if (returned(r->req)) {
			request_free(r->req);
		} else {
			pthread_mutex_lock(&abandoned_lock);
			r->req->next = abandoned;
			abandoned = r->req;
			pthread_mutex_unlock(&abandoned_lock);
		}
	}
	free(r);
}

enum resolve_status resolve_start(struct resolve *r, struct addrinfo **out)
{
	reap_abandoned();
	struct addrinfo num = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
			       .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV}, *ai;
	if (getaddrinfo(r->host, r->port, &num, &ai) == 0) {
		*out = ai;
		return RESOLVE_DONE;
	}
	resolve_cancel(r);
	if (r->req) {
		if (!returned(r->req)) {
			r->why = "the last name lookup has not returned";
			return RESOLVE_FAILED;
		}
		request_free(r->req);
		r->req = NULL;
	}
	r->given_up = false;

	size_t hl = strlen(r->host) + 1, pl = strlen(r->port) + 1;
	struct request *q = calloc(1, sizeof(*q) + hl + pl);
	if (!q) {
		r->why = "out of memory";
		return RESOLVE_FAILED;
	}
	memcpy(q->names, r->host, hl + pl);  /* the port follows the host */
	q->hints = (struct addrinfo){.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				     .ai_flags = AI_NUMERICSERV};
	q->cb = (struct gaicb){.ar_name = q->names, .ar_service = q->names + hl,
			       .ar_request = &q->hints};
	struct gaicb *list[1] = {&q->cb};
	struct sigevent none = {.sigev_notify = SIGEV_NONE};
	int rc = getaddrinfo_a(GAI_NOWAIT, list, 1, &none);
	r->req = q;
	if (rc != 0) {
		/* Queued or not, running or not: glibc does not say. Cancelling
		 * tells, and frees it unless it runs. */
		resolve_cancel(r);
		r->why = gai_strerror(rc);
		return RESOLVE_FAILED;
	}
	return RESOLVE_PENDING;
}

enum resolve_status resolve_poll(struct resolve *r, struct addrinfo **out)
{
	if (!r->req || r->given_up) {
		r->why = "no name lookup in progress";
		return RESOLVE_FAILED;
	}
	int rc = gai_error(&r->req->cb);
	if (rc == EAI_INPROGRESS)
		return RESOLVE_PENDING;
	struct request *q = r->req;
	r->req = NULL;
	if (rc != 0 || !q->cb.ar_result) {
		r->why = rc ? gai_strerror(rc) : "no address";
		request_free(q);
		return RESOLVE_FAILED;
	}
	*out = q->cb.ar_result;
	q->cb.ar_result = NULL;
	free(q);
	return RESOLVE_DONE;
}

const char *resolve_error(const struct resolve *r)
{
	return r->why ? r->why : "no error";
}
