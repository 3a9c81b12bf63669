/*
 * balance.c — which worker runs which session.
 *
 * Most of what a proxy costs per transaction here is the kernel's, and much
 * of that is sleeping and waking (bench/profile.py): a worker that finds one
 * message per wake-up pays for a wake-up per message, one that finds several
 * pays once. So sessions are packed onto as few workers as keep up, and
 * spread when one does not:
 *
 *   every TICK_MS each worker measures how busy it is (its thread's CPU time
 *   over wall time, smoothed) ──▶ worker 0 decides how many are in use
 *   ("active": more when their mean passes worker_busy_limit, one fewer
 *   when the load has fitted in fewer for a second)
 *        │
 *        ├─▶ new connections: a classic BPF program on each listener's
 *        │   SO_REUSEPORT group picks one of the active workers' sockets at
 *        │   random (all active: the kernel's hash, as without it)
 *        └─▶ sessions with nothing in flight move: off the workers beyond the
 *            active ones, and from an active worker past the limit to the
 *            least busy one
 *
 * A move takes a session whose state is all in its struct and its sockets
 * (session_movable): its events leave the old loop on the old worker's
 * thread; it waits in the new worker's inbox; the new worker registers them
 * and checks it against its own configuration and snapshot. Nothing is read
 * or written meanwhile — the sockets keep what arrives — so the relay's rules
 * (backpressure, no body byte held) are untouched. Packing is safe because
 * moving undoes it: sessions opened in a burst onto one worker spread as
 * soon as that worker is busy.
 */
#include <errno.h>
#include <event2/listener.h>
#include <linux/filter.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "router/router.h"

#define TICK_MS 100
#define MOVES_PER_TICK 256 /* per worker: a move costs a few µs */
#define PACK_TICKS 10      /* the load fits in fewer workers this long: pack */
#define COOLDOWN_TICKS 3   /* after handing sessions on: let the figures settle */

static atomic_uint active;
static unsigned steered = 0;  /* what the BPF programs say (worker 0's thread) */
static unsigned low_ticks;    /* worker 0's thread */
static bool steer_failed;     /* logged once */

unsigned balance_active(void)
{
	unsigned a = atomic_load_explicit(&active, memory_order_relaxed);
	return a ? a : router.nworkers;
}

static uint64_t clock_ns(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static unsigned busy(const struct worker *w)
{
	return atomic_load_explicit(&w->busy_pm, memory_order_relaxed);
}

/* ---- new connections ---------------------------------------------------- */

/* One listener's group: a random one of the first n sockets (the workers'
 * sockets joined each group in worker order, listeners_bind), or, for all,
 * an index past the group, which makes the kernel fall back to its hash. */
static int steer_fd(int fd, unsigned n)
{
	struct sock_filter spread[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_AD_OFF + SKF_AD_RANDOM)),
		BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, n),
		BPF_STMT(BPF_RET | BPF_A, 0),
	};
	struct sock_filter hash[] = { BPF_STMT(BPF_RET | BPF_K, 0xffffffffu) };
	struct sock_fprog prog = { .len = 3, .filter = spread };
	if (n >= router.nworkers)
		prog = (struct sock_fprog){ .len = 1, .filter = hash };
	return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof(prog));
}

static void steer(struct worker *w, unsigned n)
{
	for (unsigned i = 0; i < CONFIG_MAX_LISTENERS; i++) {
		if (!w->listeners[i])
			continue;
		if (steer_fd(evconnlistener_get_fd(w->listeners[i]), n) != 0 && !steer_failed) {
			steer_failed = true;
			log_info("worker packing: new connections cannot be steered (%s); sessions "
				 "move to the workers in use once their requests are answered",
				 strerror(errno));
		}
	}
	steered = n;
}

void balance_listeners(struct worker *w)
{
	if (router.nworkers > 1)
		steer(w, balance_active());
}

/* ---- moving sessions ---------------------------------------------------- */

static bool hand_over(struct session *s, struct worker *to)
{
	if (!session_depart(s))
		return false;
	pthread_mutex_lock(&to->inbox_lock);
	bool open = !to->inbox_closed;
	if (open)
		TAILQ_INSERT_TAIL(&to->inbox, s, link);
	pthread_mutex_unlock(&to->inbox_lock);
	if (!open) {
		session_return(s);
		return false;
	}
	event_active(&to->inbox_ev, EV_READ, 0);
	return true;
}

static void inbox_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	struct session_list got;
	TAILQ_INIT(&got);
	pthread_mutex_lock(&w->inbox_lock);
	TAILQ_CONCAT(&got, &w->inbox, link);
	pthread_mutex_unlock(&w->inbox_lock);
	if (TAILQ_EMPTY(&got))
		return;
	/* the sender may have seen a newer generation or snapshot than this
	 * worker has taken yet: take them first, so no session is checked
	 * against an older view than it was */
	worker_catch_up(w);
	struct session *s;
	unsigned n = 0;
	while ((s = TAILQ_FIRST(&got)) != NULL) {
		TAILQ_REMOVE(&got, s, link);
		session_arrive(w, s);
		n++;
	}
	stat_add(&w->moved_in, n);
}

/* Up to max movable sessions to the workers in to[0..nto) in turn. */
static unsigned hand_on(struct worker *w, struct worker **to, unsigned nto, unsigned max)
{
	unsigned moved = 0, k = 0;
	struct session *s, *next;
	for (s = TAILQ_FIRST(&w->sessions); s && moved < max; s = next) {
		next = TAILQ_NEXT(s, link);
		if (!session_movable(s))
			continue;
		/* a refusal puts it back at the end of the list: stop there */
		if (!hand_over(s, to[k++ % nto]))
			break;
		moved++;
	}
	return moved;
}

/* ---- the tick ----------------------------------------------------------- */

/* Worker 0: how many workers to use, from the sum of their load. More at
 * once when their mean passes the limit; one fewer when the load would have
 * fitted in one fewer at 60 % of the limit for PACK_TICKS. */
static void decide(const struct config *c)
{
	unsigned n = router.nworkers, a = balance_active(), want = a;
	unsigned limit = c->worker_busy_limit * 10, total = 0;
	for (unsigned i = 0; i < n; i++)
		total += busy(&router.workers[i]);
	if (!c->worker_packing || c->debug_worker_shuffle) {
		want = n;
	} else if (total > limit * a) {
		want = (total * 5 / 4 + limit - 1) / limit; /* each at 80 % of the limit */
		low_ticks = 0;
	} else if (a > 1 && total * 10 < limit * 6 * (a - 1)) {
		if (++low_ticks >= PACK_TICKS) {
			want = a - 1;
			low_ticks = 0;
		}
	} else {
		low_ticks = 0;
	}
	want = want < 1 ? 1 : want > n ? n : want;
	if (want != a) {
		log_info("worker packing: %u of %u workers in use (they were %u; load %u.%u CPUs)",
			 want, n, a, total / 1000, total % 1000 / 100);
		atomic_store_explicit(&active, want, memory_order_relaxed);
	}
	if (want != steered)
		steer(&router.workers[0], want);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	const struct config *c = cur_cfg;
	uint64_t cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID), wall = clock_ns(CLOCK_MONOTONIC);
	uint64_t dw = wall - w->tick_wall_ns, dc = cpu - w->tick_cpu_ns;
	bool first = !w->tick_cpu_ns; /* what setting the worker up cost is no load */
	w->tick_cpu_ns = cpu;
	w->tick_wall_ns = wall;
	unsigned now = dw && !first ? (unsigned)(dc * 1000 / dw) : 0;
	/* smoothed over about three ticks: one busy turn does not move sessions */
	atomic_store_explicit(&w->busy_pm, (busy(w) * 2 + now) / 3, memory_order_relaxed);
	if (w->id == 0)
		decide(c);
	if (w->draining || atomic_load_explicit(&router.stopping, memory_order_relaxed))
		return;
	unsigned n = router.nworkers, a = balance_active();
	struct worker *to[256];
	if (c->debug_worker_shuffle) {
		to[0] = &router.workers[(w->id + 1) % n];
		hand_on(w, to, 1, MOVES_PER_TICK);
		return;
	}
	if (!c->worker_packing)
		return;
	if (w->id >= a) {
		/* not in use: everything goes to the workers that are */
		for (unsigned i = 0; i < a; i++)
			to[i] = &router.workers[i];
		hand_on(w, to, a, MOVES_PER_TICK);
		return;
	}
	if (w->cooldown) {
		w->cooldown--;
		return;
	}
	/* past the limit: a share of its sessions to the least busy in use, as
	 * much as would even the two out */
	unsigned mine = busy(w), limit = c->worker_busy_limit * 10;
	struct worker *least = NULL;
	for (unsigned i = 0; i < a; i++)
		if (i != w->id && (!least || busy(&router.workers[i]) < busy(least)))
			least = &router.workers[i];
	if (!least || mine <= limit || busy(least) + 200 >= mine || !w->nsessions)
		return;
	unsigned share = (unsigned)((uint64_t)w->nsessions * (mine - busy(least)) / (2 * mine));
	to[0] = least;
	if (hand_on(w, to, 1, share ? share : 1))
		w->cooldown = COOLDOWN_TICKS;
}

void balance_init(struct worker *w)
{
	pthread_mutex_init(&w->inbox_lock, NULL);
	TAILQ_INIT(&w->inbox);
	event_assign(&w->inbox_ev, w->base, -1, 0, inbox_cb, w);
	event_assign(&w->tick, w->base, -1, EV_PERSIST, tick_cb, w);
	if (w->id == 0)
		atomic_store(&active, w->cfg->worker_packing && !w->cfg->debug_worker_shuffle
					      ? 1 : router.nworkers);
	if (router.nworkers > 1) {
		struct timeval tv = { 0, TICK_MS * 1000 };
		w->tick_cpu_ns = 0;
		w->tick_wall_ns = clock_ns(CLOCK_MONOTONIC);
		event_add(&w->tick, &tv);
	}
}

void balance_close(struct worker *w)
{
	event_del(&w->tick);
	event_del(&w->inbox_ev);
	pthread_mutex_lock(&w->inbox_lock);
	w->inbox_closed = true;
	struct session *s;
	while ((s = TAILQ_FIRST(&w->inbox)) != NULL) {
		TAILQ_REMOVE(&w->inbox, s, link);
		s->w = w; /* freed with the worker's own (sessions_free_all) */
		session_return(s);
		if (s->sc && !pool_arrive(s, w))
			s->quit_passed = true; /* its connection closed, not parked */
	}
	pthread_mutex_unlock(&w->inbox_lock);
}
