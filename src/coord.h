/* SPDX-License-Identifier: MIT */
/*
 * coord.h - the coordinator's core on the main loop: turns inbound MQTT
 * messages (submissions and control) into store changes, writes the messages
 * those changes cause into the outbox in the same transaction, and drains the
 * outbox to the broker.
 *
 * It owns the per-turn batch: messages and deliveries queue up while the loop
 * runs; coord_flush() (the loop's before-sleep step) applies all of them in
 * ONE store transaction, then settles the inbound messages (ack or not), then
 * publishes what the outbox holds. Nothing leaves before the transaction that
 * caused it is durable (DESIGN 2: a submission the broker accepted is never
 * lost; a status or result is never published for a change a power cut could
 * undo). With a lazy_meta store a commit becomes durable with the next one
 * or with a flush the loop asks for when it has nothing to do
 * (coord_sync_later): until then the PUBACKs, the outbox rows and
 * (hooks.durable) the fleet's frames of that commit wait.
 *
 * It does no socket I/O itself: the MQTT side is reached through the
 * coord_io callbacks, so tests can drive it with a store and no broker.
 * Everything runs on the loop thread.
 */
#ifndef EC_COORD_H
#define EC_COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"
#include "task.h"

/* Outbox row flags beyond store.h's OUTBOX_RETAIN/OUTBOX_EXPIRE. */
enum {
	OUTBOX_CBOR = 0x10,     /* content type application/cbor (else JSON) */
	OUTBOX_CORR = 0x20,     /* payload = u16 BE length, correlation data, message */
};

struct coord_opts {
	const char *prefix;             /* topic prefix */
	const char *node_id;
	int status_events;              /* enum config_status_events (config.h) */
	uint32_t max_pending;           /* per source, 0 = unlimited */
	uint64_t outbox_max;            /* ingest stops acknowledging past this */
	int64_t keep_final_ms;          /* store_prune() what ended this long ago; 0 = never */
	struct limits limits;
};

/* One inbound MQTT message, borrowed until coord_flush() returns. */
struct coord_msg {
	const char *topic;
	const uint8_t *payload;
	size_t len;
	const char *content_type;       /* or NULL */
	const char *response_topic;     /* or NULL (always NULL under MQTT 3.1.1) */
	const uint8_t *corr;            /* correlation data, or NULL */
	size_t corr_len;
	size_t oversize;                /* 0, or the real size of a payload too
	                                   large to hold: payload is its start */
	bool retained;                  /* the broker's retained copy */
	bool ack;                       /* out: set by coord_flush when committed
	                                   (io.settle says when it is durable) */
	void *user;                     /* the caller's handle */
};

/* How coord publishes. publish() returns 0 if the message was handed to the
 * client (its delivery is reported later with coord_delivered(seq)), or < 0 if
 * it cannot take it now (not connected, window full): coord retries later. */
struct coord_io {
	int (*publish)(void *arg, uint64_t seq, const char *topic, const uint8_t *payload,
		       size_t len, unsigned flags, const uint8_t *corr, size_t corr_len);
	bool (*can_publish)(void *arg);
	/* A pushed message's fate, once durable: ack it to the broker or not
	 * (then it is redelivered). Called once per pushed message, in order. */
	void (*settle)(void *arg, void *user, bool ack);
	void *arg;
};

/* Another module's share of the turn (the fleet's dispatch, results, timers
 * and health). All optional. */
struct coord_hooks {
	void *arg;
	/* Whether it has work queued: forces a transaction even without inbound
	 * messages. */
	bool (*pending)(void *arg);
	/* At the start of the turn's transaction (again if it reruns). */
	void (*begin)(void *arg);
	/* Inside the turn's transaction, after inbound messages were applied. It
	 * may run again from scratch if the map had to grow, so it must keep its
	 * in-memory effects for committed(). */
	int (*apply)(struct store_txn *t, int64_t now_ms, void *arg);
	/* Every store event, inside the transaction (after coord's own rows). */
	int (*event)(struct store_txn *t, const struct store_event *ev, void *arg);
	/* Each submission and control message is applied in a nested
	 * transaction (store_nested): nested_begin() before it, nested_end()
	 * after. When !kept the store discarded it, and with it what the
	 * events raised inside it (event()) said. */
	void (*nested_begin)(void *arg);
	void (*nested_end)(bool kept, void *arg);
	/* drain/undrain {"agent": ID}: 0, or EC_EUNKNOWN_AGENT. */
	int (*control)(struct store_txn *t, const char *verb, const char *agent, void *arg);
	/* After the transaction: rc 0 if it committed. */
	void (*committed)(int rc, void *arg);
	/* store_durable() may have moved: let out what waited for it. */
	void (*durable)(void *arg);
};

struct coord;

/* Install hooks (copied); call before the first flush. */
void coord_set_hooks(struct coord *c, const struct coord_hooks *h);

/* *out is new. The store and opts strings are borrowed for coord's life. */
int coord_new(struct store *st, const struct coord_opts *o, const struct coord_io *io,
	      struct coord **out);
void coord_free(struct coord *c);

/* Queue an inbound message for the next flush (borrowed until it returns). */
int coord_push(struct coord *c, struct coord_msg *m);
/* A published outbox row was acknowledged by the broker (PUBACK). */
void coord_delivered(struct coord *c, uint64_t seq);
/* The connection was lost or re-established: every undeleted row is sent
 * again from the oldest (at least once, in order). */
void coord_resend_all(struct coord *c);

/* Apply everything queued in one transaction, set ->ack on the queued
 * messages, settle those whose commit is durable, then publish the durable
 * outbox rows while io allows. Returns 0 or the store's error (then no
 * message is acked; they are redelivered later).
 * Deliveries alone do not cause a transaction until enough have piled up or
 * the oldest has waited a while: coord_next_due() says when. */
int coord_flush(struct coord *c, int64_t now_ms);

/* Make the last commit durable and let out what waited for it (shutdown).
 * 0, or the store's error. */
int coord_sync(struct coord *c);
/* The same without waiting (the loop's step when it has nothing to do):
 * the store flushes on a thread of its own and notifies (loop_wake), and
 * coord_synced() then lets out what waited. */
int coord_sync_later(struct coord *c);
void coord_synced(struct coord *c);
/* Whether a commit waits for coord_sync(). */
bool coord_unsynced(struct coord *c);
/* When (in coord_flush's clock) delivered rows are due for deletion, or -1. */
int64_t coord_next_due(const struct coord *c);

/* Outbox rows not yet acknowledged by the broker. */
uint64_t coord_outbox_len(struct coord *c);

/* The store observer: writes status, result and workflow rows. Installed by
 * coord_new; exposed for tests. */
int coord_observe(struct store_txn *t, const struct store_event *ev, void *arg);

#endif
