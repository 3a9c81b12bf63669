/*
 * worker.c — worker threads. Each owns an event_base, its listening sockets,
 * its sessions and its reference to the topology snapshot. Other threads talk
 * to a worker only by activating its events (notify, shutdown).
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "router/router.h"

/* ---- configuration generations ------------------------------------------ */

_Thread_local struct config *cur_cfg;
static pthread_mutex_t cfg_lock = PTHREAD_MUTEX_INITIALIZER;

struct config *config_new(void)
{
	struct config *c = calloc(1, sizeof(*c));
	if (c)
		atomic_init(&c->refs, 1);
	return c;
}

struct config *config_ref(struct config *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	return c;
}

void config_unref(struct config *c)
{
	if (!c || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
		return;
	tls_teardown(c);
	free(c);
}

struct config *config_current(void)
{
	pthread_mutex_lock(&cfg_lock);
	struct config *c = router.cfg ? config_ref(router.cfg) : NULL;
	pthread_mutex_unlock(&cfg_lock);
	return c;
}

void config_publish(struct config *c)
{
	pthread_mutex_lock(&cfg_lock);
	struct config *old = router.cfg;
	router.cfg = c;
	pthread_mutex_unlock(&cfg_lock);
	config_unref(old);
}

void config_thread_refresh(void)
{
	struct config *c = config_current();
	config_unref(cur_cfg);
	cur_cfg = c;
}

struct listener_config *config_listener(struct config *c, const char *name)
{
	for (unsigned i = 0; i < c->nlisteners; i++)
		if (strcmp(c->listeners[i].name, name) == 0)
			return &c->listeners[i];
	return NULL;
}

static void accept_cb(struct evconnlistener *el, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	struct accept_arg *a = arg;
	session_start(a->w, a->l, fd, sa, salen);
}

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	evconnlistener_enable(arg);
}

/* accept() failed. Out of descriptors (EMFILE, ENFILE): the spare is given
 * up to take the waiting clients one by one and refuse them with 53300, so
 * that none waits in the kernel's backlog without an answer; then accepting
 * pauses for 100 ms. The line is written at most every 10 s. */
static void accept_error_cb(struct evconnlistener *el, void *arg)
{
	static struct log_limit limit;
	struct accept_arg *a = arg;
	int e = EVUTIL_SOCKET_ERROR();
	unsigned refused = 0;
	if ((e == EMFILE || e == ENFILE) && a->w->spare_fd >= 0) {
		close(a->w->spare_fd);
		a->w->spare_fd = -1;
		for (int fd; refused < 64 &&
			     (fd = accept4(evconnlistener_get_fd(el), NULL, NULL,
					   SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;
		     refused++)
			session_refuse(a->w, a->l, fd, REJ_OPEN_FILES, "pgrouter is out of open files");
		a->w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	}
	unsigned held;
	if (log_limit_pass(&limit, 10000, &held))
		log_error("accept on listener %s: %s; refused %u waiting client(s) with 53300 and "
			  "pausing accepts for 100 ms (%u more such pauses since the last line)",
			  a->l->name, evutil_socket_error_to_string(e), refused, held);
	evconnlistener_disable(el);
	struct timeval tv = { 0, 100000 };
	event_base_once(evconnlistener_get_base(el), -1, EV_TIMEOUT, accept_resume_cb, el, &tv);
}

static void notify_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	struct topology *t = topo_acquire();
	if (t == w->topo) {
		topo_release(t);
		return;
	}
	topo_release(w->topo);
	w->topo = t;
	sessions_topology_changed(w);
	pools_topology_changed(w);
}

static void auth_done_cb(evutil_socket_t fd, short what, void *arg)
{
	login_lookups_answered(arg);
}

static void topo_notify(void *arg)
{
	struct worker *w = arg;
	event_active(&w->notify, EV_READ, 0);
}

static void drain_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	if (w->nsessions)
		log_info("worker %u: shutdown_timeout reached, closing %u session(s)", w->id,
			 w->nsessions);
	sessions_close_all(w, "terminating connection: pgrouter is shutting down");
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	atomic_store_explicit(&w->pong_ms, now_ms(), memory_order_relaxed);
}

/* ---- workers_call: the admin console's questions --------------------- */

struct wcall {
	wcall_fn fn;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned pending, refs;
	struct wcall_arg *args;  /* one copy per worker */
	struct evbuffer **outs;  /* one per worker, set when it answered */
};

static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;

static void wcall_unref(struct wcall *c)
{
	pthread_mutex_lock(&c->mu);
	bool last = --c->refs == 0;
	pthread_mutex_unlock(&c->mu);
	if (!last)
		return;
	for (unsigned i = 0; i < router.nworkers; i++)
		if (c->outs[i])
			evbuffer_free(c->outs[i]);
	free(c->outs);
	free(c->args);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

static void call_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	pthread_mutex_lock(&call_lock);
	struct wcall *c = w->pending_call;
	w->pending_call = NULL;
	pthread_mutex_unlock(&call_lock);
	if (!c)
		return;
	struct evbuffer *out = evbuffer_new();
	if (out)
		c->fn(w, &c->args[w->id], out);
	pthread_mutex_lock(&c->mu);
	c->outs[w->id] = out;
	c->pending--;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	wcall_unref(c);
}

unsigned workers_call(wcall_fn fn, struct wcall_arg *a, struct evbuffer *out, unsigned timeout_ms)
{
	unsigned n = router.nworkers, answered = 0;
	struct wcall *c = calloc(1, sizeof(*c));
	if (!c)
		return 0;
	c->args = calloc(n, sizeof(*c->args));
	c->outs = calloc(n, sizeof(*c->outs));
	if (!c->args || !c->outs) {
		free(c->args);
		free(c->outs);
		free(c);
		return 0;
	}
	c->fn = fn;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	c->refs = 1;
	bool asked[256] = { false };
	for (unsigned i = 0; i < n && i < 256; i++) {
		struct worker *w = &router.workers[i];
		c->args[i] = *a;
		c->args[i].count = 0;
		if (atomic_load(&w->loop_ended))
			continue;
		pthread_mutex_lock(&call_lock);
		bool free_slot = !w->pending_call; /* else an earlier call is still stuck there */
		if (free_slot) {
			w->pending_call = c;
			pthread_mutex_lock(&c->mu);
			c->refs++;
			c->pending++;
			pthread_mutex_unlock(&c->mu);
		}
		pthread_mutex_unlock(&call_lock);
		if (free_slot) {
			asked[i] = true;
			event_active(&w->call, EV_READ, 0);
		}
	}
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&c->mu);
	while (c->pending && pthread_cond_timedwait(&c->cv, &c->mu, &until) == 0)
		;
	unsigned count = 0;
	for (unsigned i = 0; i < n; i++)
		if (asked[i] && c->outs[i]) {
			evbuffer_add_buffer(out, c->outs[i]);
			count += c->args[i].count;
			answered++;
		}
	pthread_mutex_unlock(&c->mu);
	a->count = count;
	/* a worker that did not answer in time still holds the call: take it back */
	pthread_mutex_lock(&call_lock);
	for (unsigned i = 0; i < n; i++)
		if (router.workers[i].pending_call == c) {
			router.workers[i].pending_call = NULL;
			pthread_mutex_unlock(&call_lock);
			pthread_mutex_lock(&c->mu);
			c->pending--;
			pthread_mutex_unlock(&c->mu);
			wcall_unref(c);
			pthread_mutex_lock(&call_lock);
		}
	pthread_mutex_unlock(&call_lock);
	wcall_unref(c);
	return answered;
}

static void inspect_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	sessions_inspect_idle(arg);
}

/* Sessions can move only where pgrouter authenticates clients. */
static bool any_router_auth(const struct config *c)
{
	for (unsigned i = 0; i < c->nlisteners; i++)
		if (c->listeners[i].auth == AUTH_ROUTER)
			return true;
	return false;
}

static void arm_inspect_sweep(struct worker *w)
{
	const struct config *c = w->cfg;
	event_del(&w->inspect_sweep);
	if (c->inspect_idle_ms && any_router_auth(c) && !w->draining) {
		struct timeval tv = { c->inspect_idle_ms / 1000, (c->inspect_idle_ms % 1000) * 1000 };
		event_add(&w->inspect_sweep, &tv);
	}
}

/* This worker's listening sockets for generation c: the new listeners' taken
 * from the main thread, the removed ones' closed, every one's accept argument
 * pointing at c's listener. */
static int take_listeners(struct worker *w, struct config *c, char *err, size_t errlen)
{
	bool live[CONFIG_MAX_LISTENERS] = { false };
	for (unsigned i = 0; i < c->nlisteners; i++) {
		struct listener_config *l = &c->listeners[i];
		live[l->slot] = true;
		w->accept_args[l->slot] = (struct accept_arg){ w, l };
		if (w->listeners[l->slot] || w->draining)
			continue;
		int *fd = &router.listen_fds[w->id][l->slot];
		w->listeners[l->slot] = evconnlistener_new(w->base, accept_cb, &w->accept_args[l->slot],
							   LEV_OPT_CLOSE_ON_FREE, 0, *fd);
		if (!w->listeners[l->slot]) {
			snprintf(err, errlen, "cannot listen: %s", strerror(errno));
			return -1;
		}
		*fd = -1; /* owned by the evconnlistener now */
		evconnlistener_set_error_cb(w->listeners[l->slot], accept_error_cb);
	}
	if (w->id == 0)
		balance_listeners(w);
	for (unsigned k = 0; k < CONFIG_MAX_LISTENERS; k++)
		if (!live[k] && w->listeners[k]) {
			evconnlistener_free(w->listeners[k]);
			w->listeners[k] = NULL;
		} else if (w->listeners[k]) {
			/* the clients accepted from now on get c's settings */
			tcp_tune(evconnlistener_get_fd(w->listeners[k]), c);
		}
	return 0;
}

static void reconf_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	struct config *c = config_current();
	if (!c || c == w->cfg) {
		config_unref(c);
		return;
	}
	struct config *old = w->cfg;
	w->cfg = cur_cfg = c;
	char err[256];
	if (take_listeners(w, c, err, sizeof(err)) != 0)
		log_error("worker %u: %s", w->id, err);
	arm_inspect_sweep(w);
	sessions_config_changed(w);
	config_unref(old);
}

void worker_catch_up(struct worker *w)
{
	reconf_cb(-1, 0, w);
	notify_cb(-1, 0, w);
}

void workers_reconfigure(struct router *r)
{
	for (unsigned i = 0; i < r->nworkers; i++)
		if (r->workers[i].base && !atomic_load(&r->workers[i].loop_ended))
			event_active(&r->workers[i].reconf, EV_READ, 0);
}

static void shutdown_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	if (w->draining)
		return;
	w->draining = true;
	event_del(&w->inspect_sweep);
	pools_close_all(w);
	for (unsigned i = 0; i < CONFIG_MAX_LISTENERS; i++)
		if (w->listeners[i]) {
			evconnlistener_free(w->listeners[i]);
			w->listeners[i] = NULL;
		}
	sessions_drain(w);
	if (w->nsessions == 0) {
		event_base_loopexit(w->base, NULL);
		return;
	}
	struct timeval tv = { cur_cfg->shutdown_timeout_ms / 1000,
			      (cur_cfg->shutdown_timeout_ms % 1000) * 1000 };
	evtimer_add(&w->drain_deadline, &tv);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	cur_cfg = w->cfg;
	/* one loop turn at a time: what the turn's callbacks staged is sent
	 * after them, together (batch.c) */
	while (!event_base_got_exit(w->base) && !event_base_got_break(w->base)) {
		if (event_base_loop(w->base, EVLOOP_ONCE) != 0)
			break; /* no events left, or an error */
		batch_flush();
	}
	batch_free();
	atomic_store(&w->loop_ended, true);
	balance_close(w);
	sessions_free_all(w); /* normally none are left: the loop ends when the last one goes */
	pools_free(w);
	event_del(&w->pool_wake);
	event_del(&w->inspect_sweep);
	event_del(&w->reconf);
	cur_cfg = NULL;
	return NULL;
}

int workers_start(struct router *r, char *err, size_t errlen)
{
	r->workers = calloc(r->nworkers, sizeof(*r->workers));
	if (!r->workers) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (unsigned i = 0; i < r->nworkers; i++)
		r->workers[i].spare_fd = -1;
	for (unsigned i = 0; i < r->nworkers; i++) {
		struct worker *w = &r->workers[i];
		w->id = i;
		w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		TAILQ_INIT(&w->sessions);
		TAILQ_INIT(&w->queued);
		struct event_config *ec = event_config_new();
		event_config_require_features(ec, EV_FEATURE_EARLY_CLOSE);
		/* epoll changes are batched per loop turn: a socket whose watch is
		 * dropped and set again in one callback (a pooled server connection
		 * changing owner, a client watch switched back) costs no epoll_ctl */
		event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
		w->base = event_base_new_with_config(ec);
		event_config_free(ec);
		if (!w->base) {
			snprintf(err, errlen, "cannot create an event base with early-close support");
			return -1;
		}
		event_assign(&w->notify, w->base, -1, 0, notify_cb, w);
		event_assign(&w->shutdown, w->base, -1, 0, shutdown_cb, w);
		evtimer_assign(&w->drain_deadline, w->base, drain_deadline_cb, w);
		event_assign(&w->auth_done, w->base, -1, 0, auth_done_cb, w);
		pools_init(w);
		event_assign(&w->inspect_sweep, w->base, -1, EV_PERSIST, inspect_sweep_cb, w);
		event_assign(&w->ping, w->base, -1, 0, ping_cb, w);
		event_assign(&w->call, w->base, -1, 0, call_cb, w);
		atomic_init(&w->pong_ms, now_ms());
		event_assign(&w->reconf, w->base, -1, 0, reconf_cb, w);
		if (!(w->stats = calloc(1, sizeof(*w->stats)))) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		w->cfg = config_ref(r->cfg);
		balance_init(w);
		arm_inspect_sweep(w);
		w->topo = topo_acquire();
		if (take_listeners(w, w->cfg, err, errlen) != 0)
			return -1;
		topo_subscribe(topo_notify, w);
	}
	for (unsigned i = 0; i < r->nworkers; i++) {
		int rc = pthread_create(&r->workers[i].thread, NULL, worker_main, &r->workers[i]);
		if (rc != 0) {
			snprintf(err, errlen, "pthread_create: %s", strerror(rc));
			return -1;
		}
		r->workers[i].started = true;
	}
	return 0;
}

bool workers_all_ended(struct router *r)
{
	for (unsigned i = 0; i < r->nworkers; i++)
		if (r->workers[i].started && !atomic_load(&r->workers[i].loop_ended))
			return false;
	return true;
}

void workers_close_now(struct router *r)
{
	/* as if shutdown_timeout were over (a worker that has not begun to
	 * drain yet begins with this: shutdown_cb runs first, it was asked first) */
	for (unsigned i = 0; i < r->nworkers; i++)
		if (r->workers[i].base && !atomic_load(&r->workers[i].loop_ended))
			event_active(&r->workers[i].drain_deadline, EV_TIMEOUT, 0);
}

void workers_shutdown(struct router *r)
{
	for (unsigned i = 0; i < r->nworkers; i++)
		if (r->workers[i].base)
			event_active(&r->workers[i].shutdown, EV_READ, 0);
}

void workers_wait(struct router *r)
{
	for (unsigned i = 0; r->workers && i < r->nworkers; i++) {
		struct worker *w = &r->workers[i];
		if (w->started)
			pthread_join(w->thread, NULL);
		w->started = false;
	}
}

void workers_join(struct router *r)
{
	workers_wait(r);
	for (unsigned i = 0; r->workers && i < r->nworkers; i++) {
		struct worker *w = &r->workers[i];
		for (unsigned l = 0; l < CONFIG_MAX_LISTENERS; l++)
			if (w->listeners[l])
				evconnlistener_free(w->listeners[l]);
		config_unref(w->cfg);
		topo_release(w->topo);
		if (w->base) {
			event_del(&w->drain_deadline);
			event_del(&w->ping);
			event_del(&w->call);
			event_del(&w->reconf);
			event_base_free(w->base);
		}
		free(w->stats);
		if (w->spare_fd >= 0)
			close(w->spare_fd);
	}
	free(r->workers);
	r->workers = NULL;
	for (unsigned i = 0; r->listen_fds && i < r->nworkers; i++)
		for (unsigned l = 0; l < CONFIG_MAX_LISTENERS; l++)
			if (r->listen_fds[i][l] >= 0)
				close(r->listen_fds[i][l]);
	free(r->listen_fds);
	r->listen_fds = NULL;
}
