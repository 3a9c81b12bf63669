/*
 * batch.c — a loop turn's relayed sends, submitted together.
 *
 * On loopback most of a relayed message's cost is the kernel's: the send runs
 * the receiver's TCP input and wakes it, and the woken peer (pgbench, a
 * backend) often takes this worker's CPU on the way back from the system
 * call. A worker relaying for many sessions paid that once per message. Here
 * the relay's fast path copies a message into the worker's arena and stages
 * a send; when the loop turn's callbacks are done (worker.c runs the loop one
 * turn at a time), all of them go to the kernel in one io_uring_enter, and
 * the peers they wake take the CPU once, after it.
 *
 *   relay_move ──▶ batch_add: copy into the arena, stage an IORING_OP_SEND ──┐
 *                                                                            ▼
 *   end of the loop turn ──▶ batch_flush: one io_uring_enter (a lone send: send())
 *                                 │ each send done in the call (MSG_DONTWAIT:
 *                                 │ a full socket answers EAGAIN, nothing waits)
 *                                 ▼
 *                         short or failed: the rest goes to the front of the
 *                         end's out and its write watch handles it, as after
 *                         a partial send()
 *
 * Staged bytes come before anything queued on the end after them (the rest
 * of a short send is put in front of out), and before anything written to
 * its socket or done to it: end_send, end_flush, end_close, end_detach,
 * end_shutdown_wr and handing the socket to the pool settle the batch first
 * (end_settle). An end with staged bytes is not idle (end_busy).
 *
 * A TLS end's records are staged the same way, by its BIO (tls.c); the
 * rest of a short send is then ciphertext, which the end holds (end->held)
 * ahead of anything encrypted after it.
 *
 * Without io_uring (io_uring = off, a kernel or a seccomp profile that refuses
 * it) nothing is staged and the relay sends at once, as before.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "router/router.h"

#define BATCH_SENDS 128
#define BATCH_ARENA (256 * 1024)
/* larger messages are sent at once: batching pays per message, copying per
 * byte (the margin: a full TLS record, 16 KB and its framing) */
#define BATCH_MAX_MSG (16 * 1024 + 256)

struct staged {
	struct end *to;
	uint32_t off, len;
};

struct batch {
	struct io_uring ring;
	unsigned n;
	size_t used;
	struct staged st[BATCH_SENDS];
	uint8_t arena[BATCH_ARENA];
};

/* The batch of the worker running on this thread (NULL: none, or refused). */
static __thread struct batch *cur;
static __thread bool refused;

static struct batch *batch_get(void)
{
	if (cur || refused)
		return cur;
	struct batch *b = calloc(1, sizeof(*b));
	int r = b ? io_uring_queue_init(BATCH_SENDS, &b->ring, 0) : -ENOMEM;
	if (r < 0) {
		free(b);
		refused = true;
		static atomic_bool told;
		if (!atomic_exchange(&told, true))
			log_msg(LOG_WARNING, "io_uring unavailable (%s): relayed messages are sent one "
					     "system call each", strerror(-r));
		return NULL;
	}
	return cur = b;
}

void batch_free(void)
{
	if (!cur)
		return;
	batch_flush();
	io_uring_queue_exit(&cur->ring);
	free(cur);
	cur = NULL;
}

/* What a send did not take goes first in out, before anything queued after
 * it; on a TLS end it is ciphertext OpenSSL counted written, held ahead of
 * anything encrypted later. */
static void unsent(struct end *e, const uint8_t *p, size_t n)
{
	struct evbuffer **to = e->ssl ? tls_held_buffer(e) : &e->out;
	if ((!*to && !(*to = evbuffer_new())) || evbuffer_prepend(*to, p, n) != 0) {
		/* out of memory: the stream cannot go on */
		shutdown(e->fd, SHUT_RDWR);
		return;
	}
	if (e->ssl)
		e->held = true;
	end_write(e, true);
}

/* A staged send's result: done bytes taken, or -errno. */
static void sent(struct staged *st, const uint8_t *arena, ssize_t res)
{
	struct end *e = st->to;
	st->to = NULL;
	e->staged = false;
	size_t done = res > 0 ? (size_t)res : 0;
	if (done < st->len)
		unsent(e, arena + st->off + done, st->len - done);
}

void batch_flush(void)
{
	struct batch *b = cur;
	if (!b || !b->n)
		return;
	unsigned n = b->n;
	b->n = 0;
	b->used = 0;
	if (n == 1) {
		/* one send: the plain system call costs less than a ring's round */
		struct staged *st = &b->st[0];
		ssize_t w = send(st->to->fd, b->arena + st->off, st->len, MSG_NOSIGNAL);
		sent(st, b->arena, w);
		return;
	}
	for (unsigned i = 0; i < n; i++) {
		struct staged *st = &b->st[i];
		struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring); /* n <= the ring's size */
		io_uring_prep_send(sqe, st->to->fd, b->arena + st->off, st->len,
				   MSG_NOSIGNAL | MSG_DONTWAIT);
		io_uring_sqe_set_data64(sqe, i);
	}
	int r;
	do
		r = io_uring_submit_and_wait(&b->ring, n);
	while (r == -EINTR);
	unsigned seen = 0;
	struct io_uring_cqe *cqe;
	if (r >= 0) {
		while (seen < n && io_uring_peek_cqe(&b->ring, &cqe) == 0) {
			uint64_t i = io_uring_cqe_get_data64(cqe);
			int res = cqe->res;
			io_uring_cqe_seen(&b->ring, cqe);
			if (i < n && b->st[i].to)
				sent(&b->st[i], b->arena, res);
			seen++;
		}
	}
	if (r < 0) {
		/* the ring refused the batch: nothing was sent, and sends are made
		 * one by one from now on (its queued entries go with it) */
		log_msg(LOG_WARNING, "io_uring: %s; relayed messages are sent one system call each",
			strerror(-r));
		io_uring_queue_exit(&b->ring);
		cur = NULL;
		refused = true;
	}
	/* what the ring did not send is sent the ordinary way, by each end's
	 * write watch */
	for (unsigned i = 0; i < n; i++)
		if (b->st[i].to)
			sent(&b->st[i], b->arena, 0);
	if (r < 0)
		free(b);
}

bool batch_add(struct end *to, const void *p, size_t n)
{
	struct batch *b = cur_cfg->io_uring ? batch_get() : NULL;
	if (!b || n > BATCH_MAX_MSG || to->staged)
		return false;
	if (b->n == BATCH_SENDS || b->used + n > BATCH_ARENA)
		batch_flush();
	memcpy(b->arena + b->used, p, n);
	b->st[b->n++] = (struct staged){ to, (uint32_t)b->used, (uint32_t)n };
	b->used += n;
	to->staged = true;
	return true;
}
