/*
 * session.c — one client, from its first byte to its last.
 *
 *   accept ─▶ STARTUP ──SSLRequest──▶ 'S' + TLS handshake (client_tls), or 'N'
 *                │  ├──TLS ClientHello──▶ direct TLS (ALPN "postgresql")
 *                │  ├──GSSENCRequest──▶ 'N'; then the first packet again
 *                │  └──CancelRequest──▶ CANCEL: forward to the key's server, close
 *                ▼ StartupMessage
 *             (select) ──none eligible──▶ QUEUED ──new snapshot──▶ (select)
 *                │                          └── queue_timeout ──▶ FATAL 08001
 *                ▼
 *           CONNECTING ──refused / timeout / 57P03 / TLS refused──▶ next eligible server
 *                │  TCP, then (server_tls) SSLRequest, 'S', handshake
 *                ▼ connected: startup packet forwarded
 *              AUTH: server messages read whole; authentication passes through;
 *                │   BackendKeyData registered for cancels; ParameterStatus
 *                │   recorded; ReadyForQuery held until the server's reported
 *                │   in_hot_standby / default_transaction_read_only fit the policy;
 *                │   SCRAM-SHA-256-PLUS dropped from the offer when TLS ends here
 *                ▼
 *              RELAY (relay.c) ──server EOF / FATAL / drain──▶ CLOSING ──▶ freed
 *
 * Callbacks never free the session they run for: they set s->dead and the
 * session is freed as the callback returns (finish()).
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "router/router.h"

#define LINGER_MS 2000
#define RETRY_MS 1000 /* a session refused by every server it tried tries again */
#define PAST_ROOM_MAX 32 /* sessions past the open files room at once (see session_start) */
#define PAST_ROOM_MS 1000 /* ... and how long each may take to send its startup packet */
#define TLS_HANDSHAKE_RECORD 0x16 /* first byte of a ClientHello: direct TLS */

/* The server connection while CONNECTING (and CANCEL). */
enum srv_phase { PH_TCP, PH_SSLREQUEST, PH_HANDSHAKE, PH_UP };
#define AUTH_MESSAGE_MAX (1u << 20) /* largest single message accepted before RELAY */

static const char *const state_names[] = { "startup",  "lookup",  "login",   "queued",
					   "connecting", "auth", "handover", "relay",
					   "inspect",  "restore", "lost",   "cancel",
					   "closing" };

const char *sess_state_name(enum sess_state st)
{
	return state_names[st];
}

static void client_rd_cb(evutil_socket_t fd, short what, void *arg);
static void client_wr_cb(evutil_socket_t fd, short what, void *arg);
static void server_rd_cb(evutil_socket_t fd, short what, void *arg);
static void server_wr_cb(evutil_socket_t fd, short what, void *arg);
static void timer_cb(evutil_socket_t fd, short what, void *arg);
/* PostgreSQL's NAMEDATALEN: a user name is shorter */
#define NAME_MAX_LEN 64
static void client_ev_cb(evutil_socket_t fd, short what, void *arg)
{
	end_dispatch(arg, fd, what, client_rd_cb, client_wr_cb);
}

static void server_ev_cb(evutil_socket_t fd, short what, void *arg)
{
	end_dispatch(arg, fd, what, server_rd_cb, server_wr_cb);
}
static void route(struct session *s);
static void release_pooled(struct session *s);

struct shared_bytes {
	atomic_uint refs;
	alignas(uint64_t) uint8_t p[];
};

_Static_assert(SS_CLOSING < 1 << 4 && PGW_STARTUP_MAX < 1u << 14,
	       "struct session's state and startup_len fit their bits");

static struct shared_bytes *shared_of(uint8_t *p)
{
	return (struct shared_bytes *)(void *)(p - offsetof(struct shared_bytes, p));
}

uint8_t *shared_bytes_new(size_t len)
{
	struct shared_bytes *b = malloc(sizeof(*b) + len);
	if (!b)
		return NULL;
	atomic_init(&b->refs, 1);
	return b->p;
}

uint8_t *shared_bytes_ref(uint8_t *p)
{
	atomic_fetch_add_explicit(&shared_of(p)->refs, 1, memory_order_relaxed);
	return p;
}

void shared_bytes_unref(uint8_t *p)
{
	if (!p)
		return;
	struct shared_bytes *b = shared_of(p);
	if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
		free(b);
}

/*
 * The session's names, in one allocation: peer and who (NULL: unchanged),
 * user (cut to what PostgreSQL allows). A session out of memory keeps the
 * names it had.
 */
static const char no_name[] = "";

static void session_name(struct session *s, const char *peer, const char *user, const char *who)
{
	/* no formatting: this runs for every connection */
	const char *p = peer ? peer : s->peer, *w = who ? who : s->who;
	size_t lp = strnlen(p, 47), lu = strnlen(user, NAME_MAX_LEN - 1), lw = strnlen(w, 95);
	char *b = malloc(lp + lu + lw + 3);
	if (!b)
		return;
	memcpy(b, p, lp);
	b[lp] = '\0';
	memcpy(b + lp + 1, user, lu);
	b[lp + 1 + lu] = '\0';
	memcpy(b + lp + lu + 2, w, lw);
	b[lp + lu + 2 + lw] = '\0';
	if (s->peer != no_name)
		free((char *)s->peer);
	s->peer = b;
	s->user = b + lp + 1;
	s->who = b + lp + lu + 2;
}

/* who is user@database */
static void name_user(struct session *s, const char *user, const char *database)
{
	char w[96];
	size_t n = strnlen(user, sizeof(w) - 1);
	memcpy(w, user, n);
	if (n < sizeof(w) - 1) {
		w[n++] = '@';
		size_t ld = strnlen(database, sizeof(w) - 1 - n);
		memcpy(w + n, database, ld);
		n += ld;
	}
	w[n] = '\0';
	session_name(s, NULL, user, w);
}

/* The session's one deadline (startup, queue, connect, linger, ... by
 * state); setting it again moves it. Its event exists only while a deadline
 * is set: a relaying session has none, and carries no timer. */
static void timer_set(struct session *s, uint64_t ms)
{
	struct timeval tv = { .tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000 };
	if (!s->timer && !(s->timer = evtimer_new(s->w->base, timer_cb, s))) {
		/* 128 bytes: a process that cannot have them cannot go on */
		slog(LOG_ERROR, s, "out of memory for a timer");
		abort();
	}
	evtimer_add(s->timer, &tv);
}

static void timer_stop(struct session *s)
{
	if (s->timer) {
		event_free(s->timer);
		s->timer = NULL;
	}
}

void session_timer(struct session *s, uint64_t ms)
{
	timer_set(s, ms);
}

static void unqueue(struct session *s)
{
	if (s->queued) {
		TAILQ_REMOVE(&s->w->queued, s, qlink);
		s->queued = false;
	}
}

void session_set_state(struct session *s, enum sess_state st)
{
	if (s->state == st)
		return;
	slog(LOG_DEBUG, s, "%s -> %s", state_names[s->state], state_names[st]);
	if (s->state == SS_QUEUED) {
		unqueue(s);
		gauge_add(&lstats(s)->queued, -1);
		hist_observe(&lstats(s)->queue_wait, now_us() - s->wait_us);
	}
	s->state = st;
	if (st == SS_QUEUED) {
		TAILQ_INSERT_TAIL(&s->w->queued, s, qlink);
		s->queued = true;
		gauge_add(&lstats(s)->queued, 1);
		s->wait_us = now_us();
	}
}

/* Which client events to watch: while no server is attached only a close
 * matters (EV_CLOSED), so nothing the client sends is read before the server
 * can take it. */
static void client_watch(struct session *s, short what)
{
	end_read_what(&s->c, what);
	end_read(&s->c, true);
}

void session_watch_client(struct session *s, short what)
{
	client_watch(s, what);
}

/* metrics: the session in its server's sessions gauge, by listener */
static void srv_count(struct session *s)
{
	gauge_add(&srv_stats(s, s->srv)->sessions[s->l->slot], 1);
	s->srv_counted = true;
}

static void srv_uncount(struct session *s)
{
	if (s->srv_counted)
		gauge_add(&srv_stats(s, s->srv)->sessions[s->l->slot], -1);
	s->srv_counted = false;
}

static void session_free(struct session *s)
{
	struct worker *w = s->w;
	if (s->state == SS_QUEUED)
		session_set_state(s, SS_CLOSING); /* counted out of the queue */
	unqueue(s);
	pool_unwait(s);
	gauge_add(&lstats(s)->clients, -1);
	TAILQ_REMOVE(&w->sessions, s, link);
	timer_stop(s);
	release_pooled(s);
	end_close(&s->c);
	end_close(&s->s);
	if (s->in)
		evbuffer_free(s->in);
	if (s->replay)
		evbuffer_free(s->replay);
	if (s->past_room)
		atomic_fetch_sub_explicit(&router.past_room, 1, memory_order_relaxed);
	shared_bytes_unref(s->startup);
	tried_clear(&s->tried);
	cancel_unregister(s->cancel);
	login_free(s);
	move_free(s);
	if (s->srv) {
		atomic_fetch_sub_explicit(&s->srv->sessions, 1, memory_order_relaxed);
		srv_uncount(s);
	}
	atomic_fetch_sub_explicit(&router.clients, 1, memory_order_relaxed);
	w->nsessions--;
	slog(LOG_DEBUG, s, "closed");
	config_unref(s->l->cfg);
	if (s->peer != no_name)
		free((char *)s->peer); /* after the last log line, which names the session */
	free(s);
	if (w->draining && w->nsessions == 0)
		event_base_loopexit(w->base, NULL);
}

/* Free the session if a callback marked it dead. */
static void finish(struct session *s)
{
	if (s->dead)
		session_free(s);
}

void session_finish(struct session *s)
{
	finish(s);
}

static bool at_boundary(const struct session *s);
static bool streams_settled(const struct session *s);

/* A pooled connection goes back for the next client when the session sits
 * between transactions with nothing in flight and the client's Terminate did
 * not reach it. */
static void release_pooled(struct session *s)
{
	if (s->sc)
		pool_give_back(s, s->state == SS_RELAY && at_boundary(s) && !s->quit_passed &&
				  pgw_scan_at_boundary(&s->s.scan));
}

static void detach_server(struct session *s)
{
	release_pooled(s);
	if (s->s.fd >= 0 && !streams_settled(s)) {
		/* given up with a request in flight: reset, so that bytes the kernel
		 * still holds (a server cut off by a partition) are dropped, not
		 * delivered to run after the client was told its session ended */
		struct linger now = { 1, 0 };
		setsockopt(s->s.fd, SOL_SOCKET, SO_LINGER, &now, sizeof(now));
	}
	if (s->s.fd >= 0 || s->s.out)
		end_close(&s->s);
	if (s->srv) {
		atomic_fetch_sub_explicit(&s->srv->sessions, 1, memory_order_relaxed);
		srv_uncount(s);
		s->srv = NULL;
	}
	if (s->in)
		evbuffer_drain(s->in, evbuffer_get_length(s->in));
	/* the client keeps its key; no backend is behind it for now */
	cancel_set_server(s->cancel, NULL, 0, NULL, 0);
}

/* Best effort: tell the server we are leaving if the stream sits between messages. */
static void say_goodbye(struct session *s)
{
	if (s->sc || s->s.fd < 0 || end_busy(&s->s) ||
	    !pgw_scan_at_boundary(&s->c.scan) || (s->state != SS_RELAY && s->state != SS_INSPECT))
		return; /* a pooled connection stays: pool_give_back decides */
	uint8_t x[5];
	size_t n = pgw_build_terminate(x, sizeof(x));
	ssize_t w = end_send(&s->s, x, n);
	(void)w;
}

static void enter_closing(struct session *s)
{
	say_goodbye(s);
	session_set_state(s, SS_CLOSING);
	detach_server(s);
	timer_set(s, LINGER_MS);
	/* flush what the client is owed, then half-close and wait for its EOF so
	 * the final message is not destroyed by a reset */
	client_watch(s, EV_READ);
	ssize_t left = end_flush(&s->c);
	if (left < 0) {
		s->dead = true;
		return;
	}
	if (left == 0)
		end_shutdown_wr(&s->c);
}

void session_close(struct session *s, bool client_gone)
{
	if (client_gone || s->c.fd < 0) {
		s->dead = true;
		return;
	}
	if (s->state != SS_CLOSING)
		enter_closing(s);
}

/* Can an ErrorResponse be put on the client stream without cutting a message? */
static bool client_stream_clean(struct session *s)
{
	if (s->state != SS_RELAY)
		return true; /* before RELAY, server messages reach the client whole */
	return pgw_scan_at_boundary(&s->s.scan);
}

void session_fail(struct session *s, const char *sqlstate, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	slog(LOG_WARNING, s, "FATAL %s: %s", sqlstate, msg);
	if (s->state == SS_CLOSING || s->dead)
		return;
	if (s->state != SS_CANCEL && client_stream_clean(s) &&
	    !(s->c.ssl && !SSL_is_init_finished(s->c.ssl))) {
		/* (a client halfway through its TLS handshake can read nothing: a
		 * queued message would wait for a write that never completes) */
		uint8_t buf[700];
		size_t n;
		if (s->v2_errors) /* as PostgreSQL: 'E', then the text a 2.0 client prints */
			n = (size_t)snprintf((char *)buf, sizeof(buf), "EFATAL:  %s\n", msg) + 1;
		else
			n = pgw_build_error(buf, sizeof(buf), "FATAL", sqlstate, msg, NULL, NULL);
		if (!end_queue(&s->c, buf, n)) {
			s->dead = true;
			return;
		}
	}
	session_close(s, false);
}

/* ---- routing ---------------------------------------------------------- */

static void server_failed(struct session *s, enum conn_err why, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void connect_server(struct session *s, struct disc_server *srv)
{
	s->srv = srv;
	atomic_fetch_add_explicit(&srv->sessions, 1, memory_order_relaxed);
	srv_count(s);
	s->server_spoke = false;
	int fd = socket(srv->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		server_failed(s, CONN_REFUSED, "socket: %s", strerror(errno));
		return;
	}
	tcp_tune(fd, cur_cfg);
	end_setup(&s->s, s->w->base, fd, server_ev_cb);
	s->s_phase = PH_TCP;
	pgw_scanner_init(&s->s.scan, 0, false);
	if (connect(fd, (struct sockaddr *)&srv->addr, srv->addrlen) != 0 && errno != EINPROGRESS) {
		server_failed(s, CONN_REFUSED, "connect: %s", strerror(errno));
		return;
	}
	if (s->state != SS_QUEUED)
		client_watch(s, EV_CLOSED);
	session_set_state(s, SS_CONNECTING); /* the queue's wait ends here */
	s->wait_us = now_us();
	timer_set(s, cur_cfg->connect_timeout_ms);
	end_write(&s->s, true);
}

static void handover_start(struct session *s);
static void inspected(struct session *s);
static void restore_start(struct session *s);
static void move_done(struct session *s);
static void shed(struct session *s, enum shed_reason reason, const char *why);
static void inspect_failed(struct session *s, const char *what);
static void check_drain(struct session *s);
static void check_fit(struct session *s);
static void hold_if_paused(struct session *s);

/* pool_mode = session: an idle server connection from the pool becomes this
 * session's; the client's own parameters are set on it next. */
static void adopt(struct session *s, struct disc_server *srv)
{
	s->srv = srv;
	atomic_fetch_add_explicit(&srv->sessions, 1, memory_order_relaxed);
	srv_count(s);
	struct end *e = &s->s;
	pool_adopt(s, e);
	end_setup(e, s->w->base, e->fd, server_ev_cb);
	s->s_phase = PH_UP;
	s->server_spoke = true;
	s->client_saw = false;
	pgw_scanner_init(&s->s.scan, 0, false);
	pgw_scanner_init(&s->c.scan, 0, true);
	end_read(e, true); /* also notices a server that goes away meanwhile */
	slog(LOG_DEBUG, s, "reusing a pooled connection to %s", srv->name);
	handover_start(s);
}

static void no_server(struct session *s)
{
	stat_reject(s, s->pool_full ? REJ_POOL_FULL : REJ_NO_SERVER);
	if (s->pool_full) {
		session_fail(s, "53300",
			     "pgrouter: no server connection free for %s on listener \"%s\" after "
			     "%.1fs: the pool is at pool_size=%u",
			     s->who, s->l->name, cur_cfg->queue_timeout_ms / 1000.0, s->l->pool_size);
		return;
	}
	char desc[160];
	select_describe(s->w->topo, desc, sizeof(desc));
	session_fail(s, "08001",
		     "pgrouter: no server satisfies target_session_attrs=%s for listener \"%s\" "
		     "after %.1fs (%s)",
		     tsa_name(s->l->tsa), s->l->name, cur_cfg->queue_timeout_ms / 1000.0, desc);
}

static void route(struct session *s)
{
	const struct config *cfg = cur_cfg;
	struct worker *w = s->w;
	if (w->draining) {
		stat_reject(s, REJ_SHUTTING_DOWN);
		session_fail(s, "57P01", "pgrouter is shutting down");
		return;
	}
	if (listener_paused(s->l)) {
		/* PAUSE: wait for RESUME, however long; queue_timeout starts then */
		pool_unwait(s);
		if (s->state != SS_QUEUED) {
			slog(LOG_INFO, s, "listener paused: waiting for RESUME");
			if (s->state != SS_CONNECTING)
				client_watch(s, EV_CLOSED);
			session_set_state(s, SS_QUEUED);
		}
		timer_stop(s);
		return;
	}
	/* The newest snapshot, not the worker's cached one: the worker learns of a
	 * publish a moment later (its notify event), and a session must not route
	 * on a view older than the last publish — e.g. to a primary already
	 * draining for a switchover. One uncontended lock per new session. */
	struct topology *t = topo_acquire();
	int i = select_server(t, s->l->tsa, s->l->lb, cfg->max_lag, &s->l->rr, s->tried);
	if (i >= 0) {
		s->srv_role = t->e[i].role;
		int r = s->pooled ? pool_take(s, t->e[i].srv, t->e[i].role) : POOL_NEW;
		if (r == POOL_GOT)
			adopt(s, t->e[i].srv);
		else if (r == POOL_NEW)
			connect_server(s, t->e[i].srv);
		topo_release(t);
		if (r != POOL_FULL)
			return;
	} else {
		topo_release(t);
		pool_unwait(s); /* waiting for a server now, not for room in a pool */
	}
	uint64_t now = now_ms();
	if (now >= s->deadline_ms) {
		no_server(s);
		return;
	}
	if (s->state != SS_QUEUED) {
		char desc[160];
		select_describe(w->topo, desc, sizeof(desc));
		if (s->pool_full)
			slog(LOG_INFO, s, "waiting up to %llu ms for room in the pool (pool_size=%u)",
			     (unsigned long long)(s->deadline_ms - now), s->l->pool_size);
		else
			slog(LOG_INFO, s,
			     "waiting up to %llu ms for a server with target_session_attrs=%s (%s)",
			     (unsigned long long)(s->deadline_ms - now), tsa_name(s->l->tsa), desc);
		if (s->state != SS_CONNECTING)
			client_watch(s, EV_CLOSED);
		session_set_state(s, SS_QUEUED);
	}
	timer_stop(s);
	/* servers refused it (57P03 while starting, a full backend, no descriptor
	 * left): they are tried again in a moment, not in a loop, not never */
	uint64_t wait = s->deadline_ms - now;
	timer_set(s, s->tried && wait > RETRY_MS ? RETRY_MS : wait);
}

static void server_failed(struct session *s, enum conn_err reason, const char *fmt, ...)
{
	char why[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	slog(LOG_WARNING, s, "server attempt failed: %s; trying another", why);
	if (s->srv && s->state != SS_CANCEL)
		stat_add(&srv_stats(s, s->srv)->connect_errors[reason], 1);
	bool room = !s->srv || tried_add(&s->tried, s->srv->id);
	detach_server(s);
	if (s->state == SS_CANCEL) {
		session_close(s, false);
		return;
	}
	if (!room) {
		/* TRIED_MAX servers refused it in a row: wait and start over (the
		 * bound also keeps connect → fail → route from recursing) */
		timer_stop(s);
		if (s->state != SS_CONNECTING)
			client_watch(s, EV_CLOSED);
		session_set_state(s, SS_QUEUED);
		timer_set(s, RETRY_MS);
		return;
	}
	route(s);
}

/* ---- STARTUP: the client's first packet(s) --------------------------- */

static void start_cancel(struct session *s, const struct pgw_first *f);

static void got_startup(struct session *s, const uint8_t *p, uint32_t len, const struct pgw_first *f)
{
	/* passthrough: what the client sent past its startup packet (a query
	 * pipelined behind it) goes to the server with it, on every attempt */
	size_t extra = s->in && s->l->auth != AUTH_ROUTER ? evbuffer_get_length(s->in) - len : 0;
	s->startup = shared_bytes_new(len + extra);
	if (!s->startup) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	memcpy(s->startup, p, len);
	s->startup_len = len;
	struct evbuffer_ptr past;
	if (extra && (evbuffer_ptr_set(s->in, &past, len, EVBUFFER_PTR_SET) != 0 ||
		      evbuffer_copyout_from(s->in, &past, s->startup + len, extra) != (ssize_t)extra)) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	s->pipelined_len = (uint32_t)extra;
	name_user(s, f->user, f->database);
	timer_stop(s);
	s->deadline_ms = now_ms() + cur_cfg->queue_timeout_ms;
	slog(LOG_DEBUG, s, "startup: protocol %u.%u%s", PGW_PROTO_MAJOR(f->version),
	     PGW_PROTO_MINOR(f->version), f->replication ? " replication" : "");
	bool user_fits = strlen(f->user) < NAME_MAX_LEN, f_replication = f->replication;
	if (s->in)
		evbuffer_drain(s->in, len); /* p and f pointed into s->in; not used from here */
	if (s->l->auth == AUTH_ROUTER) {
		if (!user_fits) {
			session_fail(s, "28000", "user name too long");
			return;
		}
		/* pgrouter checks the client first; what it sent along is read then */
		s->router_auth = true;
		/* replication connections are never pooled */
		s->pooled = s->l->pool_mode == POOL_SESSION && !f_replication;
		s->replication = f_replication;
		login_start(s);
		return;
	}
	if (s->in) {
		evbuffer_free(s->in);
		s->in = NULL;
	}
	route(s);
}

void session_authenticated(struct session *s)
{
	/* queue_timeout counts from here: typing a password is not waiting for a server */
	s->deadline_ms = now_ms() + cur_cfg->queue_timeout_ms;
	timer_stop(s);
	if (s->in && evbuffer_get_length(s->in)) {
		/* the client may speak once it has its ReadyForQuery */
		session_fail(s, "08P01", "pgrouter: message sent before ReadyForQuery");
		return;
	}
	if (s->in) {
		evbuffer_free(s->in);
		s->in = NULL;
	}
	route(s);
}

static void startup_read(struct session *s);

/* TLS toward the client: SSL on its socket, then the handshake. */
static void client_handshake(struct session *s)
{
	char why[256];
	int r = end_handshake(&s->c, why, sizeof(why));
	if (r < 0) {
		slog(LOG_INFO, s, "TLS handshake with the client failed: %s", why);
		stat_add(&lstats(s)->tls_failures, 1);
		s->dead = true;
		return;
	}
	if (r == 0)
		return;
	const unsigned char *alpn;
	unsigned alpn_len;
	SSL_get0_alpn_selected(s->c.ssl, &alpn, &alpn_len);
	if (s->tls_direct && alpn_len == 0) {
		/* as PostgreSQL 17: direct TLS must say it speaks "postgresql" */
		slog(LOG_INFO, s, "direct TLS connection without ALPN \"postgresql\"; closed");
		s->dead = true;
		return;
	}
	if (log_enabled(LOG_DEBUG)) {
		char d[128];
		tls_describe(&s->c, d, sizeof(d));
		slog(LOG_DEBUG, s, "TLS established (%s%s)", d, s->tls_direct ? ", direct" : "");
	}
	if (s->plain_after_tls) {
		session_fail(s, "08P01", "received unencrypted data after SSL request");
		return;
	}
	startup_read(s); /* the startup packet may have come with the handshake's end */
}

static void start_client_tls(struct session *s, bool direct)
{
	s->c.ssl = tls_accept_ssl(s->l, &s->c);
	if (!s->c.ssl) {
		slog(LOG_WARNING, s, "cannot start TLS (out of memory or no context)");
		s->dead = true;
		return;
	}
	s->tls_direct = direct;
	client_handshake(s);
}

/* Direct TLS (PostgreSQL 17's sslnegotiation=direct): the first byte of the
 * connection is a TLS handshake record instead of a packet length. Peeked, so
 * that OpenSSL reads the ClientHello itself; only on listeners with TLS (the
 * others see the byte when they read, see startup_read). */
static bool direct_tls(struct session *s)
{
	uint8_t b;
	if (s->l->tls.mode == CLIENT_TLS_DISABLE || recv(s->c.fd, &b, 1, MSG_PEEK) != 1 ||
	    b != TLS_HANDSHAKE_RECORD)
		return false;
	start_client_tls(s, true);
	return true;
}

/* Was an SSLRequest or GSSENCRequest answered? (Each sets its own flag.) */
static bool negotiated(const struct session *s)
{
	return s->ssl_done || s->gss_done;
}

/* An SSLRequest or GSSENCRequest, as PostgreSQL's ProcessStartupPacket
 * answers them: 'S' and TLS when the listener has it, else 'N' (GSSAPI
 * encryption is never offered). After an SSLRequest, another one may not
 * follow, nor a GSSENCRequest once TLS is on; after a GSSENCRequest, no
 * other. Bytes that came along with the request were not encrypted (they
 * could be a man in the middle's, CVE-2021-23214): FATAL, after the answer
 * and — with 'S' — over TLS, as PostgreSQL sends it. */
static void negotiate(struct session *s, const struct pgw_first *f, int len)
{
	evbuffer_drain(s->in, (size_t)len);
	bool ssl = f->kind == PGW_FIRST_SSL;
	bool yes = ssl && s->l->tls.mode != CLIENT_TLS_DISABLE;
	bool extra = evbuffer_get_length(s->in) > 0;
	if (ssl) {
		s->ssl_done = true;
		s->gss_done = yes;
	} else {
		s->gss_done = true;
		s->ssl_done = false;
	}
	if (send(s->c.fd, yes ? "S" : "N", 1, MSG_NOSIGNAL) != 1) { /* one byte, empty socket */
		slog(LOG_INFO, s, "failed to send SSL negotiation response: %s", strerror(errno));
		s->dead = true;
		return;
	}
	if (extra && !yes) {
		session_fail(s, "08P01", "received unencrypted data after %s request",
			     ssl ? "SSL" : "GSSAPI encryption");
		return;
	}
	if (!yes)
		return; /* 'N': libpq goes on in plaintext unless it requires encryption */
	if (extra) {
		evbuffer_drain(s->in, evbuffer_get_length(s->in));
		s->plain_after_tls = true;
	}
	start_client_tls(s, false);
}

static void startup_read(struct session *s)
{
	if (s->c.ssl && !SSL_is_init_finished(s->c.ssl)) {
		client_handshake(s);
		return;
	}
	if (!s->in && !(s->in = evbuffer_new())) {
		s->dead = true;
		return;
	}
	if (!s->c.ssl && !negotiated(s) && evbuffer_get_length(s->in) == 0 && direct_tls(s))
		return;
	ssize_t n = end_recv(&s->c, s->w->scratch, sizeof(s->w->scratch));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		/* as PostgreSQL: silence for a bare connect (port checks) and after an
		 * encryption request, a line for a client that left halfway through its
		 * packet */
		size_t have = evbuffer_get_length(s->in);
		if (have >= 4 || (have && !negotiated(s)))
			slog(LOG_INFO, s, "incomplete startup packet");
		s->dead = true;
		return;
	}
	if (evbuffer_add(s->in, s->w->scratch, (size_t)n) != 0) {
		s->dead = true;
		return;
	}
	for (;;) {
		uint8_t hdr[4];
		size_t have = evbuffer_get_length(s->in);
		if (evbuffer_copyout(s->in, hdr, have < 4 ? have : 4) < 0)
			return;
		if (!s->c.ssl && !negotiated(s) && hdr[0] == TLS_HANDSHAKE_RECORD) {
			/* a ClientHello (a listener with TLS took it in direct_tls) */
			slog(LOG_INFO, s, "TLS handshake on a listener with client_tls = disable; closed");
			s->dead = true;
			return;
		}
		int len = pgw_first_len(hdr, have < 4 ? have : 4);
		if (len == PGW_NEED_MORE)
			return;
		if (len < 0) {
			/* PostgreSQL's COMMERROR: logged, closed, nothing sent (a client
			 * library's Terminate before its StartupMessage lands here) */
			stat_reject(s, REJ_PROTOCOL);
			slog(LOG_INFO, s, "invalid length of startup packet (%u bytes)", pgw_get32(hdr));
			s->dead = true;
			return;
		}
		if (have < (size_t)len)
			return;
		const uint8_t *p = evbuffer_pullup(s->in, len);
		struct pgw_first f;
		int r = pgw_first_parse(p, (size_t)len, &f);
		uint32_t code = pgw_get32(p + 4);
		if (r > 0 && ((f.kind == PGW_FIRST_SSL && s->ssl_done) ||
			      (f.kind == PGW_FIRST_GSSENC && s->gss_done)))
			r = PGW_BAD_VERSION; /* PostgreSQL: no special packet, so a version */
		if (r < 0)
			stat_reject(s, REJ_PROTOCOL);
		switch (r) {
		case PGW_BAD_VERSION:
			s->v2_errors = PGW_PROTO_MAJOR(code) < 3;
			session_fail(s, "0A000",
				     "unsupported frontend protocol %u.%u: server supports 3.0 to 3.2",
				     PGW_PROTO_MAJOR(code), PGW_PROTO_MINOR(code));
			return;
		case PGW_BAD_CANCEL:
			slog(LOG_INFO, s, "invalid length of cancel request packet (%d bytes)", len);
			s->dead = true;
			return;
		case PGW_NO_USER:
			session_fail(s, "28000", "no PostgreSQL user name specified in startup packet");
			return;
		case PGW_BAD_REPLICATION:
			session_fail(s, "22023", "invalid value for parameter \"replication\": \"%.200s\"",
				     f.bad_value);
			return;
		case PGW_TOO_MANY_PARAMS:
			session_fail(s, "54000", "pgrouter: more than %d parameters in the startup packet",
				     PGW_MAX_PARAMS);
			return;
		default:
			if (r < 0) {
				session_fail(s, "08P01", "invalid startup packet layout: expected terminator "
					     "as last byte");
				return;
			}
		}
		switch (f.kind) {
		case PGW_FIRST_SSL:
		case PGW_FIRST_GSSENC:
			negotiate(s, &f, len);
			if (s->dead || s->c.ssl || s->state != SS_STARTUP)
				return; /* TLS reads its own bytes now */
			continue;
		case PGW_FIRST_CANCEL:
			/* plaintext or TLS, whatever the listener requires: a cancel
			 * carries no credentials and PostgreSQL takes it either way */
			start_cancel(s, &f);
			return;
		case PGW_FIRST_STARTUP:
			if (s->over_limit) {
				name_user(s, f.user, f.database);
				if (s->past_room) {
					stat_reject(s, REJ_OPEN_FILES);
					session_fail(s, "53300", "sorry, too many clients already "
						     "(pgrouter's open files limit has room for %u)",
						     atomic_load(&router.fd_clients));
					return;
				}
				stat_reject(s, REJ_MAX_CLIENT_CONN);
				session_fail(s, "53300",
					     "sorry, too many clients already (max_client_conn=%u)",
					     cur_cfg->max_client_conn);
				return;
			}
			if (!s->c.ssl && s->l->tls.mode == CLIENT_TLS_REQUIRE) {
				stat_reject(s, REJ_TLS_REQUIRED);
				name_user(s, f.user, f.database);
				session_fail(s, "28000",
					     "pgrouter: listener \"%s\" requires TLS (client_tls = require); "
					     "connect with sslmode=require",
					     s->l->name);
				return;
			}
			got_startup(s, p, (uint32_t)len, &f);
			return;
		}
	}
}

/* ---- CANCEL ----------------------------------------------------------- */

static void start_cancel(struct session *s, const struct pgw_first *f)
{
	struct disc_server *srv = NULL;
	uint8_t req[12 + PGW_CANCEL_KEY_MAX];
	size_t n = cancel_lookup(f->cancel_pid, f->cancel_key, f->cancel_key_len, &srv, req,
				 sizeof(req));
	{
		char who[32];
		snprintf(who, sizeof(who), "cancel pid %u", f->cancel_pid);
		session_name(s, NULL, "", who);
	}
	if (!n) {
		/* PostgreSQL answers an unknown key with silence, and so do we */
		slog(LOG_INFO, s, "cancel request for a key no live session holds; ignored");
		s->dead = true;
		return;
	}
	timer_stop(s);
	session_set_state(s, SS_CANCEL);
	end_read(&s->c, false);
	s->srv = srv;
	atomic_fetch_add_explicit(&srv->sessions, 1, memory_order_relaxed);
	int fd = socket(srv->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		s->dead = true;
		return;
	}
	end_setup(&s->s, s->w->base, fd, server_ev_cb);
	s->s_phase = PH_TCP;
	/* the server's own pid and key, not the client's (pgrouter's) */
	if (!end_queue(&s->s, req, n) ||
	    (connect(fd, (struct sockaddr *)&srv->addr, srv->addrlen) != 0 && errno != EINPROGRESS)) {
		slog(LOG_WARNING, s, "cannot forward cancel request: %s", strerror(errno));
		s->dead = true;
		return;
	}
	slog(LOG_INFO, s, "forwarding cancel request");
	timer_set(s, cur_cfg->connect_timeout_ms);
	end_write(&s->s, true);
}

/* ---- AUTH: server messages until ReadyForQuery ------------------------ */

static void check_fit(struct session *s);

/* Server bytes read whole into s->in but owed to the client (what followed a
 * ReadyForQuery): to the client, through the server stream's scanner. false:
 * the session failed. */
static bool pass_server_bytes(struct session *s)
{
	size_t left = s->in ? evbuffer_get_length(s->in) : 0;
	if (!left)
		return true;
	if (pgw_scan(&s->s.scan, evbuffer_pullup(s->in, -1), left) != 0 ||
	    !end_queue(&s->c, evbuffer_pullup(s->in, -1), left)) {
		session_fail(s, "08P01", "server sent an invalid message");
		return false;
	}
	evbuffer_drain(s->in, left);
	return true;
}

static void server_lost(struct session *s, int err);

/* Moved after its server died under a request it had just sent: the
 * request goes to the new server, counted as if the client sent it now. */
static bool replay_client_bytes(struct session *s)
{
	struct evbuffer *b = s->replay;
	s->replay = NULL;
	size_t n = evbuffer_get_length(b);
	slog(LOG_INFO, s, "passing on the %zu byte(s) the client sent as its server went away",
	     n);
	bool ok = pgw_scan(&s->c.scan, evbuffer_pullup(b, -1), n) == 0 &&
		  end_queue(&s->s, evbuffer_pullup(b, -1), n);
	evbuffer_free(b);
	if (!ok) {
		session_fail(s, "08P01", "invalid message length from client");
		return false;
	}
	if (end_flush(&s->s) < 0) {
		server_lost(s, errno);
		return false;
	}
	return true;
}

static void enter_relay(struct session *s, char txn_status)
{
	session_set_state(s, SS_RELAY);
	if (!s->router_auth) {
		/* kept where a move may need it to log in elsewhere */
		shared_bytes_unref(s->startup);
		s->startup = NULL;
	}
	timer_stop(s);
	/* the server stream now sits right after a ReadyForQuery; the client's
	 * requests are counted from here */
	pgw_scanner_init(&s->s.scan, 0, false);
	s->s.scan.last_type = PGW_MSG_READY;
	s->s.scan.txn_status = txn_status;
	slog(LOG_DEBUG, s, "connected (in_hot_standby=%s, default_transaction_read_only=%s)",
	     s->hot_standby < 0 ? "?" : s->hot_standby ? "on" : "off",
	     s->read_only < 0 ? "?" : s->read_only ? "on" : "off");
	if (s->in) {
		/* the server spoke past ReadyForQuery */
		if (!pass_server_bytes(s))
			return;
		evbuffer_free(s->in);
		s->in = NULL;
	}
	if (s->router_auth) {
		s->held = false;
		client_watch(s, EV_READ); /* it may speak now */
		login_done(s);        /* the exchanges' state goes; the credentials stay */
		/* just logged in (or moved): its state is what pgrouter set up */
		s->known = true;
		s->known_at = s->c.scan.messages;
	}
	if (s->replay && !replay_client_bytes(s))
		return;
	if (s->draining)
		session_fail(s, "57P01", "pgrouter is shutting down");
	else
		check_fit(s); /* a snapshot may have arrived while it authenticated */
	if (!s->dead && s->state == SS_RELAY && s->router_auth)
		hold_if_paused(s); /* moved during a PAUSE: its next transaction waits */
}

/*
 * The server's BackendKeyData: the client gets pgrouter's key instead, made
 * once per session (4 bytes when the server's key has 4, protocol 3.0; else
 * 32, as PostgreSQL 18 makes them), and the map points it at this server
 * connection. The server's message is not passed on (returns false then, with
 * the session failed, only when out of memory).
 */
static bool send_own_key(struct session *s, uint32_t server_klen)
{
	if (s->cancel)
		return true;
	uint8_t mine[32];
	uint32_t mypid, mylen = server_klen == 4 ? 4 : 32;
	s->cancel = cancel_new(&mypid, mine, mylen);
	uint8_t msg[PGW_HEADER_LEN + 4 + 32];
	size_t n = s->cancel ? pgw_build_backend_key(msg, sizeof(msg), mypid, mine, mylen) : 0;
	return n && end_queue(&s->c, msg, n);
}

static bool own_key(struct session *s, uint32_t pid, const uint8_t *key, uint32_t klen)
{
	if (!send_own_key(s, klen)) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return false;
	}
	cancel_set_server(s->cancel, s->srv, pid, key, klen);
	return true;
}

static bool param_on(const char *v)
{
	return strcmp(v, "on") == 0 || strcmp(v, "true") == 0;
}

/* A ParameterStatus: keep what the policy check reads. */
static void note_role_param(struct session *s, const uint8_t *body, uint32_t len)
{
	const char *name, *value;
	if (pgw_parameter_status(body, len, &name, &value) != 0)
		return;
	if (strcmp(name, "in_hot_standby") == 0)
		s->hot_standby = param_on(value);
	else if (strcmp(name, "default_transaction_read_only") == 0)
		s->read_only = param_on(value);
}

/* Before the client's ReadyForQuery: do the server's reported parameters fit
 * the policy? The topology said this server fits; if the server says
 * otherwise the session fails (false): the client has authenticated with
 * it, so there is no silent retry. */
static bool reported_params_fit(struct session *s)
{
	if (select_params_fit(s->l->tsa, s->hot_standby, s->read_only))
		return true;
	session_fail(s, "08001",
		     "pgrouter: server %s does not satisfy target_session_attrs=%s for "
		     "listener \"%s\" (it reports in_hot_standby=%s, "
		     "default_transaction_read_only=%s); the cluster changed, reconnect",
		     s->srv->name, tsa_name(s->l->tsa), s->l->name,
		     s->hot_standby == 1 ? "on" : "off", s->read_only == 1 ? "on" : "off");
	return false;
}

/* One whole server message during AUTH: LOGIN_STOP when it ended the attempt,
 * LOGIN_SWALLOW when it is not for the client, else LOGIN_PASS_ON. */
static int auth_message(struct session *s, uint8_t type, const uint8_t *body, uint32_t len)
{
	if (s->sc) {
		/* a pooled connection's setup belongs to the connection: recorded,
		 * replayed to each client at hand-over */
		switch (type) {
		case PGW_MSG_PARAMETER_STATUS:
		case PGW_MSG_BACKEND_KEY:
		case PGW_MSG_NEGOTIATE:
			pool_note(s, type, body, len);
			if (type != PGW_MSG_PARAMETER_STATUS)
				return LOGIN_SWALLOW;
			break;
		case PGW_MSG_NOTICE:
			return LOGIN_SWALLOW;
		}
	}
	if (s->moving && (type == PGW_MSG_NEGOTIATE || type == PGW_MSG_NOTICE))
		return LOGIN_SWALLOW; /* the client negotiated once, with its first server */
	switch (type) {
	case PGW_MSG_AUTH:
		if (s->router_auth)
			return login_server_auth(s, body, len);
		break;
	case PGW_MSG_ERROR: {
		struct pgw_error_fields ef;
		if (pgw_error_parse(body, len, &ef) != 0)
			memset(&ef, 0, sizeof(ef));
		const char *code = ef.sqlstate ? ef.sqlstate : "";
		if (!s->client_saw && (strcmp(code, "57P03") == 0 || strcmp(code, "53300") == 0)) {
			/* starting up, shutting down, in recovery, or full: another server may
			 * take the session, and the client has seen nothing yet */
			server_failed(s, CONN_SERVER_REFUSED, "server answered %s: %s", code, ef.message ? ef.message : "");
			return LOGIN_STOP;
		}
		if (s->plus_dropped && ef.message &&
		    strncmp(ef.message, "SCRAM channel binding negotiation error", 39) == 0) {
			/* The client supports channel binding and, not offered -PLUS, said so
			 * ("y"); the server, itself on TLS, takes that for a downgrade attack.
			 * Say what happened instead of passing on its puzzling message. */
			session_fail(s, "28000",
				     "pgrouter: SCRAM channel binding cannot pass through pgrouter: TLS "
				     "ends at pgrouter, and server %s (also on TLS, server_tls = %s) "
				     "rejects a client that supports binding; connect with "
				     "channel_binding=disable, or give pgrouter the servers' own "
				     "certificate (then binding works end to end)",
				     s->srv->name, server_tls_name(cur_cfg->server_tls));
			return LOGIN_STOP;
		}
		slog(LOG_INFO, s, "server refused the session: %s %s", code,
		     ef.message ? ef.message : "");
		if (s->router_auth && strcmp(code, "28P01") == 0)
			auth_forget(s->user); /* look the verifier up again next time */
		break;
	}
	case PGW_MSG_BACKEND_KEY: {
		uint32_t pid, klen;
		const uint8_t *key;
		if (pgw_backend_key(body, len, &pid, &key, &klen) != 0) {
			session_fail(s, "08P01", "server %s sent an invalid BackendKeyData",
				     s->srv->name);
			return LOGIN_STOP;
		}
		return own_key(s, pid, key, klen) ? LOGIN_SWALLOW : LOGIN_STOP;
	}
	case PGW_MSG_PARAMETER_STATUS:
		note_role_param(s, body, len);
		if (s->sc)
			return LOGIN_SWALLOW;
		break;
	case PGW_MSG_READY:
		if (!reported_params_fit(s))
			return LOGIN_STOP;
		if (s->sc || s->moving)
			return LOGIN_SWALLOW; /* the client's comes after the hand-over, or
						 it has had it before the move */
		break;
	}
	return LOGIN_PASS_ON;
}

/* ---- HANDOVER: a pooled connection takes the client's parameters ------ */

#define SET_CONFIG_SQL "SELECT pg_catalog.set_config($1, $2, false)"
#define HANDOVER_CHECK_MS 30000 /* idle longer: one round trip shows it is alive */

static const char *param_value(const struct pgw_first *f, const char *name)
{
	for (unsigned i = 0; i < f->nparams; i++)
		if (strcmp(f->params[i].name, name) == 0)
			return f->params[i].value;
	return NULL;
}

static void handover_done(struct session *s);

/*
 * A pooled connection takes this client: the startup parameters whose values
 * differ from the ones the connection logged in with (and so returns to after
 * DISCARD ALL) are SET in one round trip — Parse, Bind + Execute each, Sync.
 * The pool key holds the parameter names, so no parameter of the connection
 * is missing from the client's. Nothing to SET and a connection idle for less
 * than 30 s (PgBouncer's server_check_delay): straight to the client, no
 * round trip; otherwise the Sync alone shows the connection is alive.
 */
static void handover_start(struct session *s)
{
	session_set_state(s, SS_HANDOVER);
	timer_stop(s);
	struct pgw_first f, mine;
	uint32_t clen;
	const uint8_t *cpkt = pool_conn_startup(s, &clen);
	if (!s->startup || pgw_first_parse(s->startup, s->startup_len, &f) <= 0 ||
	    pgw_first_parse(cpkt, clen, &mine) <= 0) {
		session_fail(s, "08P01", "pgrouter: lost the startup packet");
		return;
	}
	/* the server end's buffer is made only when there is something to send:
	 * an idle session keeps none */
	uint8_t m[PGW_STARTUP_MAX + 64];
	size_t n;
	unsigned sets = 0;
	bool queued = true;
	for (unsigned i = 0; i < f.nparams; i++) {
		const char *name = f.params[i].name, *had = param_value(&mine, name);
		if (pool_param_keyed(name) || (had && strcmp(had, f.params[i].value) == 0))
			continue;
		if (sets++ == 0) {
			n = pgw_build_parse(m, sizeof(m), "", SET_CONFIG_SQL, 0, NULL);
			queued &= end_queue(&s->s, m, n);
		}
		const char *values[2] = { name, f.params[i].value };
		if (!(n = pgw_build_bind(m, sizeof(m), 2, values))) {
			session_fail(s, "08P01", "startup parameter %s too long", name);
			return;
		}
		queued &= end_queue(&s->s, m, n);
		n = pgw_build_execute(m, sizeof(m));
		queued &= end_queue(&s->s, m, n);
	}
	if (sets == 0 && pool_conn_idle_ms(s) < HANDOVER_CHECK_MS) {
		handover_done(s);
		return;
	}
	timer_set(s, cur_cfg->connect_timeout_ms);
	client_watch(s, EV_CLOSED); /* it waits for the server now */
	n = pgw_build_sync(m, sizeof(m));
	if (!queued || !end_queue(&s->s, m, n)) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	end_read(&s->s, true);
	if (end_flush(&s->s) < 0)
		server_failed(s, CONN_CLOSED, "write to %s: %s", s->srv->name, strerror(errno));
}

/* The client now hears what a fresh server would have said, and its
 * ReadyForQuery. */
static void handover_done(struct session *s)
{
	if (!reported_params_fit(s))
		return;
	if (s->moving) {
		pool_point_cancel(s);
		restore_start(s);
		return;
	}
	static const uint8_t ready[] = { PGW_MSG_READY, 0, 0, 0, 5, 'I' };
	if ((!s->c.out && !(s->c.out = evbuffer_new())) || !pool_replay(s, s->c.out) ||
	    !send_own_key(s, pool_key_len(s)) || evbuffer_add(s->c.out, ready, sizeof(ready)) != 0) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	pool_point_cancel(s);
	enter_relay(s, 'I');
	if (!s->dead && s->state == SS_RELAY && end_flush(&s->c) < 0)
		s->dead = true;
}

/* The hand-over's answers: nothing reaches the client but an error. */
static int handover_message(struct session *s, uint8_t type, const uint8_t *body, uint32_t len)
{
	switch (type) {
	case PGW_MSG_PARAMETER_STATUS:
		pool_note(s, type, body, len);
		note_role_param(s, body, len);
		return LOGIN_SWALLOW;
	case '1': case '2': case 'C': case 'D': case 'n': case PGW_MSG_NOTICE:
		return LOGIN_SWALLOW;
	case PGW_MSG_ERROR: {
		/* the client asked for a setting the server refuses: what PostgreSQL
		 * would have answered its startup packet */
		struct pgw_error_fields ef;
		if (pgw_error_parse(body, len, &ef) != 0)
			memset(&ef, 0, sizeof(ef));
		session_fail(s, ef.sqlstate ? ef.sqlstate : "08P01", "%s",
			     ef.message ? ef.message : "invalid startup parameter");
		return LOGIN_STOP;
	}
	case PGW_MSG_READY:
		return LOGIN_SWALLOW; /* auth_read ends the hand-over */
	default:
		session_fail(s, "08P01", "server %s sent message type %d during the hand-over",
			     s->srv->name, type);
		return LOGIN_STOP;
	}
}

/*
 * The server's SASL mechanisms, on their way to the client. A server offers
 * SCRAM-SHA-256-PLUS when its own connection (from pgrouter) is TLS. But TLS
 * never passes through pgrouter: a TLS client choosing -PLUS would bind to
 * pgrouter's certificate and the server would check the binding against its
 * own, and a plaintext client (libpq) refuses an offer of -PLUS outright. So
 * -PLUS is taken out, unless the server presented the very certificate the
 * client received from pgrouter (one certificate deployed on both): then the
 * binding holds end to end.
 */
static void sasl_offer(struct session *s, const uint8_t *m, size_t len)
{
	uint8_t out[1024];
	int n = -1;
	if (!tls_same_certificate(&s->c, &s->s))
		n = pgw_sasl_drop_mechanism(m, len, "SCRAM-SHA-256-PLUS", out, sizeof(out));
	if (n > 0 && (size_t)n != len) {
		s->plus_dropped = true;
		slog(LOG_DEBUG, s, "SCRAM-SHA-256-PLUS taken out of the server's SASL offer");
		evbuffer_drain(s->in, len);
		evbuffer_add(s->c.out, out, (size_t)n);
		return;
	}
	evbuffer_remove_buffer(s->in, s->c.out, len);
}


/* The server's ReadyForQuery ends what state st was doing with it. */
static void server_ready(struct session *s, enum sess_state st, char status)
{
	if ((st != SS_AUTH || s->sc || s->moving) && st != SS_INSPECT &&
	    evbuffer_get_length(s->in)) {
		/* pgrouter's own exchange: nothing may follow its ReadyForQuery */
		session_fail(s, "08P01", "server %s spoke after ReadyForQuery", s->srv->name);
		return;
	}
	switch (st) {
	case SS_HANDOVER:
		handover_done(s);
		return;
	case SS_INSPECT:
		inspected(s);
		return;
	case SS_RESTORE:
		move_done(s);
		return;
	default:
		break;
	}
	if (s->sc)
		handover_start(s); /* a pooled connection: the client's settings first */
	else if (s->moving)
		restore_start(s);
	else
		enter_relay(s, status);
}

static void auth_read(struct session *s)
{
	if (!s->in && !(s->in = evbuffer_new())) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	ssize_t n = end_recv(&s->s, s->w->scratch, sizeof(s->w->scratch));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n > 0 && evbuffer_add(s->in, s->w->scratch, (size_t)n) != 0) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	if (n <= 0) {
		if (s->state == SS_INSPECT) {
			inspect_failed(s, "the server closed the connection");
			return;
		}
		if (!s->client_saw) {
			server_failed(s, CONN_CLOSED, "server closed the connection during startup");
			return;
		}
		/* the server ended authentication (its error, if any, is already queued) */
		end_flush(&s->c);
		session_close(s, false);
		return;
	}
	if (!s->server_spoke) {
		/* the server is alive: connect_timeout is over, and the rest of the
		 * login must end within startup_timeout (a server that stalls now
		 * would otherwise hold the session for ever) */
		s->server_spoke = true;
		session_timer(s, cur_cfg->startup_timeout_ms);
	}
	for (;;) {
		uint8_t type;
		uint32_t body;
		bool bad;
		const uint8_t *m = msg_next(s->in, AUTH_MESSAGE_MAX, &type, &body, &bad);
		if (bad) {
			session_fail(s, "08P01", "server %s sent an invalid message during startup",
				     s->srv->name);
			return;
		}
		if (!m)
			break;
		enum sess_state st = s->state;
		const uint8_t *b = m + PGW_HEADER_LEN;
		int r = st == SS_HANDOVER  ? handover_message(s, type, b, body)
			: st == SS_INSPECT ? move_inspect_message(s, type, b, body)
			: st == SS_RESTORE ? move_restore_message(s, type, b, body)
					   : auth_message(s, type, b, body);
		if (r == LOGIN_STOP)
			return;
		if (!s->c.out && !(s->c.out = evbuffer_new())) {
			s->dead = true;
			return;
		}
		char status = type == PGW_MSG_READY ? (char)m[PGW_HEADER_LEN] : 0;
		if (r == LOGIN_SWALLOW) {
			/* answered by pgrouter, replaced (BackendKeyData), or kept by a
			 * pooled connection */
			evbuffer_drain(s->in, PGW_HEADER_LEN + body);
		} else {
			if (type == PGW_MSG_AUTH &&
			    pgw_auth_code(m + PGW_HEADER_LEN, body) == PGW_AUTH_SASL)
				sasl_offer(s, m, PGW_HEADER_LEN + body);
			else
				evbuffer_remove_buffer(s->in, s->c.out, PGW_HEADER_LEN + body);
			s->client_saw = true;
		}
		if (type == PGW_MSG_READY) {
			server_ready(s, st, status);
			break;
		}
	}
	if (!s->dead && end_flush(&s->c) < 0)
		s->dead = true;
}

/* ---- transaction boundaries ------------------------------------------- */

/* Nothing in flight on the two streams: every request the client sent was
 * answered to its ReadyForQuery (inside a transaction or not). */
static bool streams_answered(const struct session *s)
{
	const struct pgw_scanner *sv = &s->s.scan;
	return pgw_scan_at_boundary(sv) && sv->last_type == PGW_MSG_READY &&
	       pgw_scan_settled(&s->c.scan) && s->c.scan.sync_points == sv->sync_points;
}

/* Between transactions with nothing in flight: as streams_answered, and the
 * server's last ReadyForQuery said 'I'. */
static bool streams_settled(const struct session *s)
{
	return streams_answered(s) && s->s.scan.txn_status == 'I';
}

static bool at_boundary(const struct session *s)
{
	return s->state == SS_RELAY && streams_settled(s);
}

static const struct topo_entry *entry_for(const struct topology *t, const struct disc_server *srv)
{
	for (unsigned i = 0; t && i < t->n; i++)
		if (t->e[i].srv == srv)
			return &t->e[i];
	return NULL;
}

static void describe_entry(const struct topo_entry *e, char *buf, size_t len)
{
	if (!e)
		snprintf(buf, len, "gone from the cluster");
	else if (!e->reachable)
		snprintf(buf, len, "not routable");
	else if (e->role == DISC_ROLE_PRIMARY && e->in_hot_standby)
		snprintf(buf, len, "in recovery");
	else if (e->admin == DISC_ADMIN_MAINT)
		snprintf(buf, len, "%s, in maintenance (operator)", disc_role_name(e->role));
	else if (e->draining)
		snprintf(buf, len, "%s, switchover pending", disc_role_name(e->role));
	else
		snprintf(buf, len, "%s%s", disc_role_name(e->role),
			 e->default_read_only ? " (read-only)" : "");
}

/* Close a session whose server no longer fits, with FATAL 57P01 where the
 * stream allows a message; mid-message the connection is just closed. why:
 * what kept it from moving to another server (NULL: it could not try). */
static bool maint(const struct session *s)
{
	const struct topo_entry *e = entry_for(s->w->topo, s->srv);
	return e && e->admin == DISC_ADMIN_MAINT;
}

static void shed(struct session *s, enum shed_reason reason, const char *why)
{
	stat_add(&srv_stats(s, s->srv)->shed[reason], 1);
	char now[64];
	describe_entry(entry_for(s->w->topo, s->srv), now, sizeof(now));
	const char *was = disc_role_name((enum disc_role)s->srv_role);
	if (!pgw_scan_at_boundary(&s->s.scan)) {
		slog(LOG_WARNING, s, "shed mid-message: server was %s, now %s; closing", was, now);
		s->dead = true;
		return;
	}
	if (reason == SHED_MAINT || (reason != SHED_ROLE_CHANGE && maint(s)))
		session_fail(s, "57P01",
			     "pgrouter: server %s was taken out of service by an operator (SET SERVER "
			     "MAINT)%s%s; reconnect",
			     s->srv->name, why ? "; the session cannot move to another server: it " : "",
			     why ? why : "");
	else
		session_fail(s, "57P01",
			     "pgrouter: server %s changed role (was %s, now %s) and no longer satisfies "
			     "target_session_attrs=%s for listener \"%s\"%s%s; reconnect",
			     s->srv->name, was, now, tsa_name(s->l->tsa), s->l->name,
			     why ? "; the session cannot move to another server: it " : "",
			     why ? why : "");
}

/* ---- moving: a session changes servers between transactions ----------
 *
 *   RELAY ──server stops fitting──▶ move_wanted ──boundary (or at once)──┐
 *     ▲              drain_timeout ──▶ shed 57P01                         ▼
 *     │                                       INSPECT: the old server says what
 *     │                                         │  state the session holds (move.c)
 *     │             shed 57P01 (its reason) ◀───┤ cannot move
 *     │                                         ▼ old connection released
 *     │                     QUEUED / CONNECTING / AUTH / HANDOVER, as for a new
 *     │                     session, but nothing reaches the client
 *     │                                         ▼
 *     └──────────── moved ◀── RESTORE: settings and prepared statements
 *                              re-created on the new server
 *
 * From the boundary on, the client is not read: whatever it sends waits in
 * its socket and is relayed to the new server once the move is done. Nothing
 * the client sent before the boundary is sent again.
 */

/* pgrouter can log in elsewhere for this session (it authenticated the
 * client itself); replication connections stay where they are. */
static bool can_move(const struct session *s)
{
	return s->router_auth && s->cred && !s->replication;
}

/* Does pgrouter know the session's state (its plan, or why it cannot move)?
 * Only while the client has sent nothing since it was learnt. */
static bool state_known(const struct session *s)
{
	return s->known && s->known_at == s->c.scan.messages;
}

static void leave_server(struct session *s, const char *lost);

/* Ask the server (between transactions) what state the session holds:
 * before a move, or (only) to know it. */
static void inspect(struct session *s, bool only)
{
	timer_stop(s);
	client_watch(s, EV_CLOSED); /* its next request waits in its socket */
	if (!move_inspect_send(s)) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	s->known = false;
	s->inspect_only = only;
	session_set_state(s, SS_INSPECT);
	slog(LOG_DEBUG, s, "between transactions: asking %s what the session holds%s",
	     s->srv->name, only ? " (it is idle)" : "");
	timer_set(s, cur_cfg->connect_timeout_ms);
	s->s.paused = false;
	end_read(&s->s, true);
	if (end_flush(&s->s) < 0)
		inspect_failed(s, "its server connection failed");
}

/* The inspection got no answer: before a move the session is shed; an idle
 * one has lost its server connection, state unknown. */
static void inspect_failed(struct session *s, const char *what)
{
	if (!s->inspect_only) {
		char why[256];
		snprintf(why, sizeof(why), "could not be inspected (%s)", what);
		shed(s, SHED_CANNOT_MOVE, why);
		return;
	}
	session_fail(s, "08006", "pgrouter: lost the connection to server %s (%s)", s->srv->name,
		     move_reason(s) ? move_reason(s) : what);
}

static void move_begin(struct session *s)
{
	if (!state_known(s)) {
		inspect(s, false);
		return;
	}
	const char *why = move_reason(s);
	if (why)
		shed(s, SHED_CANNOT_MOVE, why);
	else
		leave_server(s, NULL);
}

static void want_move(struct session *s, const struct topo_entry *e)
{
	if (s->move_wanted)
		return;
	s->move_wanted = true;
	if (at_boundary(s)) {
		move_begin(s);
		return;
	}
	char now[64];
	describe_entry(e, now, sizeof(now));
	slog(LOG_INFO, s, "server now %s: moving at the next transaction boundary (or shed in %u ms)",
	     now, cur_cfg->drain_timeout_ms);
	timer_set(s, cur_cfg->drain_timeout_ms);
}

static void back_to_relay(struct session *s);

/* The old server answered: move, or say why not. */
static void inspected(struct session *s)
{
	timer_stop(s);
	s->known = true;
	s->known_at = s->c.scan.messages;
	if (s->inspect_only) {
		s->inspect_only = false;
		back_to_relay(s);
		return;
	}
	const char *why = move_reason(s);
	if (why) {
		shed(s, SHED_CANNOT_MOVE, why);
		return;
	}
	leave_server(s, NULL);
}

/* An idle session's state is known now: relay again (a move may have been
 * asked for meanwhile: check_fit sees to it). */
static void back_to_relay(struct session *s)
{
	session_set_state(s, SS_RELAY);
	/* asynchronous messages right behind the answer: the client's */
	if (!pass_server_bytes(s))
		return;
	if (end_flush(&s->c) < 0) {
		s->dead = true;
		return;
	}
	s->held = false;
	client_watch(s, EV_READ);
	if (s->draining)
		check_drain(s);
	else
		check_fit(s);
	if (!s->dead && s->state == SS_RELAY)
		hold_if_paused(s);
}

/* Known state, nothing in flight: off to another server. */
static void leave_server(struct session *s, const char *lost)
{
	if (s->draining) {
		session_fail(s, "57P01", "terminating connection: pgrouter is shutting down");
		return;
	}
	if (!move_leaving(s, lost)) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	slog(LOG_DEBUG, s, "leaving %s (%u prepared statements to re-create)", s->srv->name,
	     move_plan_statements(s));
	timer_stop(s);
	client_watch(s, EV_CLOSED);
	s->moving = true;
	say_goodbye(s);
	detach_server(s);
	tried_clear(&s->tried);
	s->deadline_ms = now_ms() + cur_cfg->queue_timeout_ms;
	route(s);
}

/* ---- a server connection lost between transactions --------------------
 *
 * A session whose state pgrouter knows, idle, hears its server close (a
 * shutdown's FATAL, or EOF: a crash). If the server left the cluster — the
 * topology says so within a couple of probe rounds — the session moves;
 * if it did not (someone ran pg_terminate_backend, idle_session_timeout),
 * the client is told what the server said, as it would have been.
 */
/* two probe rounds, each bounded by connect_timeout, and a second for the news
 * to reach the workers on a loaded machine */
#define LOST_VERDICT_MS(c) (2 * (c)->probe_interval_ms + (c)->connect_timeout_ms + 1000)

static bool server_left(const struct topology *t, const struct session *s)
{
	const struct topo_entry *e = entry_for(t, move_from_server(s));
	return !e || !e->reachable || e->draining || !select_still_fits(s->l->tsa, e);
}

static void lost_verdict(struct session *s)
{
	if (!server_left(s->w->topo, s))
		return;
	const char *why = move_reason(s);
	if (why) {
		if (move_from_server(s))
			stat_add(&srv_stats(s, move_from_server(s))->shed[SHED_CANNOT_MOVE], 1);
		session_fail(s, "57P01",
			     "pgrouter: server %s went away and the session cannot move to another "
			     "server: it %s; reconnect",
			     move_from(s), why);
		return;
	}
	slog(LOG_INFO, s, "server %s went away (%s); moving the session", move_from(s),
	     move_lost(s));
	s->moving = true;
	tried_clear(&s->tried);
	s->deadline_ms = now_ms() + cur_cfg->queue_timeout_ms;
	route(s);
}

static void lost_at_idle(struct session *s, const char *lost)
{
	s->move_cause = MOVE_SERVER_LOST;
	if (!move_leaving(s, lost)) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	slog(LOG_DEBUG, s, "server connection lost between transactions (%s)", move_lost(s));
	client_watch(s, EV_CLOSED);
	session_set_state(s, SS_LOST); /* first: a pooled connection is not reusable */
	detach_server(s);
	timer_set(s, LOST_VERDICT_MS(cur_cfg));
	lost_verdict(s);
}

/* Server bytes for a session between transactions whose state is known: only
 * asynchronous messages belong here. They go to the client; an error (the
 * FATAL of a shutdown) or EOF is the connection lost. Returns false when the
 * relay should take the bytes (something else came). */
static bool idle_server_read(struct session *s)
{
	if (!s->in && !(s->in = evbuffer_new())) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return true;
	}
	ssize_t n = end_recv(&s->s, s->w->scratch, sizeof(s->w->scratch));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return true;
	if (n <= 0) {
		lost_at_idle(s, n == 0 ? "it closed the connection" : strerror(errno));
		return true;
	}
	if (evbuffer_add(s->in, s->w->scratch, (size_t)n) != 0) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return true;
	}
	for (;;) {
		uint8_t type;
		uint32_t body;
		bool bad;
		const uint8_t *m = msg_next(s->in, AUTH_MESSAGE_MAX, &type, &body, &bad);
		if (!m)
			break; /* the relay's scanner judges a bad length */
		if (type == PGW_MSG_ERROR) {
			struct pgw_error_fields ef;
			char said[200];
			if (pgw_error_parse(m + PGW_HEADER_LEN, body, &ef) != 0)
				memset(&ef, 0, sizeof(ef));
			snprintf(said, sizeof(said), "%s %s", ef.sqlstate ? ef.sqlstate : "",
				 ef.message ? ef.message : "");
			evbuffer_drain(s->in, evbuffer_get_length(s->in));
			lost_at_idle(s, said);
			return true;
		}
		if (type != 'A' && type != PGW_MSG_NOTICE && type != PGW_MSG_PARAMETER_STATUS)
			break;
		if (pgw_scan(&s->s.scan, m, PGW_HEADER_LEN + body) != 0 ||
		    !end_queue(&s->c, m, PGW_HEADER_LEN + body)) {
			s->dead = true;
			return true;
		}
		evbuffer_drain(s->in, PGW_HEADER_LEN + body);
	}
	/* what is left (part of a message, or not an asynchronous one) goes the
	 * relay's way, scanned */
	if (!pass_server_bytes(s))
		return true;
	if (end_flush(&s->c) < 0)
		s->dead = true;
	return true;
}

/* Logged in on the new server (and its pooled connection handed over). */
static void restore_start(struct session *s)
{
	if (move_plan_empty(s)) {
		move_done(s);
		return;
	}
	if (!move_restore_send(s)) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	session_set_state(s, SS_RESTORE);
	timer_set(s, cur_cfg->connect_timeout_ms);
	end_read(&s->s, true);
	if (end_flush(&s->s) < 0)
		server_failed(s, CONN_CLOSED, "write to %s: %s", s->srv->name, strerror(errno));
}

static void move_done(struct session *s)
{
	const char *why = move_reason(s);
	if (why) {
		session_fail(s, "57P01",
			     "pgrouter: the session could not move from server %s to %s: it %s; "
			     "reconnect",
			     move_from(s), s->srv->name, why);
		return;
	}
	slog(LOG_INFO, s, "moved from %s to %s after %llu ms", move_from(s), s->srv->name,
	     (unsigned long long)(now_ms() - move_started_ms(s)));
	stat_add(&srv_stats(s, move_from_server(s))->moved[s->move_cause], 1);
	s->moving = s->move_wanted = s->shedding = false; /* the plan stays: it is the state */
	enter_relay(s, 'I');
}

/* PAUSE: a session between transactions waits for RESUME before its next one
 * (its client is not read; a close is still noticed). */
static void hold_if_paused(struct session *s)
{
	if (!s->held && at_boundary(s) && listener_paused(s->l)) {
		s->held = true;
		client_watch(s, EV_CLOSED);
		slog(LOG_DEBUG, s, "held: listener paused");
	}
}

static void check_drain(struct session *s)
{
	if (!at_boundary(s))
		return;
	if (s->draining)
		session_fail(s, "57P01", "terminating connection: pgrouter is shutting down");
	else if (s->move_wanted)
		move_begin(s);
	else if (s->shedding)
		shed(s, maint(s) ? SHED_MAINT : SHED_ROLE_CHANGE, NULL);
	else
		hold_if_paused(s);
}

/* A new snapshot: does this relaying session's server still fit? */
static void check_fit(struct session *s)
{
	const struct topo_entry *e = entry_for(s->w->topo, s->srv);
	bool fits = e && select_still_fits(s->l->tsa, e);
	/* an operator's MAINT: its sessions leave at their boundary, writers too */
	bool in_maint = e && e->admin == DISC_ADMIN_MAINT;
	enum tsa t = s->l->tsa;
	int64_t max_lag = cur_cfg->max_lag;
	if (fits && !in_maint && !e->draining && can_move(s) && select_lagging(t, e, max_lag) &&
	    select_other_eligible(s->w->topo, t, max_lag, s->srv)) {
		/* a standby fallen behind: its sessions go to one that is not */
		if (!s->move_wanted)
			s->move_cause = MOVE_LAG;
		want_move(s, e);
		return;
	}
	if (fits && !in_maint && !e->draining) {
		if (s->shedding || s->move_wanted) {
			/* it fits again before its grace ran out (a transient probe failure) */
			s->shedding = s->move_wanted = false;
			timer_stop(s);
			slog(LOG_INFO, s, "server fits its policy again; session kept");
		}
		return;
	}
	/* writers and "any" wait for the server that comes (a new primary); a
	 * read session moves only where another server takes it now */
	if (can_move(s) && (tsa_writes(t) || t == TSA_ANY ||
			    select_other_eligible(s->w->topo, t, max_lag, s->srv) ||
			    (t == TSA_PREFER_STANDBY &&
			     select_other_eligible(s->w->topo, TSA_ANY, max_lag, s->srv)))) {
		if (!s->move_wanted)
			s->move_cause = in_maint ? MOVE_MAINT
				      : e && e->draining ? MOVE_SWITCHOVER : MOVE_ROLE_CHANGE;
		want_move(s, e);
		return;
	}
	if (!fits && tsa_writes(s->l->tsa)) {
		shed(s, SHED_ROLE_CHANGE, NULL); /* no write may go to a demoted or vanished primary */
		return;
	}
	/* a read session on a server that changed role, or any session on a
	 * server about to be switched over, goes at its next transaction boundary */
	if (s->shedding)
		return;
	s->shedding = true;
	if (at_boundary(s)) {
		shed(s, in_maint ? SHED_MAINT : SHED_ROLE_CHANGE, NULL);
		return;
	}
	char now[64];
	describe_entry(e, now, sizeof(now));
	slog(LOG_INFO, s, "server now %s: closing at the next transaction boundary or in %u ms",
	     now, cur_cfg->shed_grace_ms);
	timer_set(s, cur_cfg->shed_grace_ms);
}

/* ---- callbacks -------------------------------------------------------- */

/* The server connection broke under a relaying session. A transport error
 * (a peer gone silent — keepalive or tcp_user_timeout —, a reset) gets a
 * FATAL naming the server where the stream allows one; a clean close passes
 * on what the server said last (its own FATAL, as a rule), or says so itself
 * when the server left a request unanswered without a word. */
static void server_lost(struct session *s, int err)
{
	if (s->move_wanted)
		/* what it forwarded is the client's answer: a statement cut short
		 * cannot be replayed safely */
		slog(LOG_INFO, s, "server %s ended the session during a statement, before "
		     "its transaction boundary: the session could not move (%s)", s->srv->name,
		     err ? strerror(err) : "connection closed");
	if (!err && (streams_settled(s) || s->s.scan.last_type == PGW_MSG_ERROR)) {
		slog(LOG_DEBUG, s, "server closed the connection");
		session_close(s, false);
	} else if (!err) {
		/* closed with a request in flight and no error for it (an immediate
		 * shutdown, a backend killed): say which server, and that nobody
		 * knows whether the request ran */
		session_fail(s, "08006", "pgrouter: server %s closed the connection with a request "
			     "in flight; whether it ran is unknown", s->srv->name);
	} else if (err == ETIMEDOUT) {
		session_fail(s, "08006", "pgrouter: server %s went silent: no answer to TCP "
			     "keepalives or retransmissions (tcp_keepalive, tcp_user_timeout)",
			     s->srv->name);
	} else {
		session_fail(s, "08006", "pgrouter: lost the connection to server %s: %s",
			     s->srv->name, strerror(err));
	}
}

static void relay_failed(struct session *s, int r, bool from_client)
{
	if (r == -2) {
		if (from_client)
			session_fail(s, "08P01", "invalid message length from client");
		else {
			slog(LOG_WARNING, s, "server sent an invalid message length; closing");
			session_close(s, false);
		}
		return;
	}
	if (r == RELAY_TO_FAILED)
		from_client = !from_client; /* the other end failed: it is the one to report */
	if (from_client) {
		if (errno)
			slog(LOG_DEBUG, s, "client connection: %s", strerror(errno));
		session_close(s, true);
	} else {
		server_lost(s, errno);
	}
}

static void client_rd_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = END_OWNER(arg, struct session, c);
	switch (s->state) {
	case SS_STARTUP:
		startup_read(s);
		break;
	case SS_LOGIN:
		login_client_read(s);
		break;
	case SS_AUTH:
		if (!s->router_auth)
			goto relay; /* passthrough: it answers the server's authentication */
		/* it has nothing to say before its ReadyForQuery */
		__attribute__((fallthrough));
	case SS_LOOKUP:
	case SS_QUEUED:
	case SS_CONNECTING:
	case SS_HANDOVER:
	case SS_INSPECT:
	case SS_RESTORE:
	case SS_LOST:
	case SS_CANCEL:
		if (what & EV_CLOSED) {
			slog(LOG_INFO, s, "client left while %s", state_names[s->state]);
			s->dead = true;
		}
		break;
	case SS_RELAY:
	relay: {
		/* between transactions, state known: if the server turns out to be
		 * gone (pgrouter had not read its end yet), the session moves and
		 * these bytes go to the next one */
		bool idle = can_move(s) && state_known(s) && at_boundary(s);
		struct pgw_scanner before;
		if (idle)
			before = s->c.scan;
		/* ... and so the write is made now, not at the end of the loop
		 * turn: its failure must be known here */
		int r = relay_move(s, &s->c, &s->s, !idle);
		if (r == RELAY_TO_FAILED && idle && s->s.out && !s->replay) {
			int e = errno;
			s->c.scan = before; /* scanned again when they are sent */
			s->replay = s->s.out;
			s->s.out = NULL;
			lost_at_idle(s, strerror(e));
		} else if (r < 0)
			relay_failed(s, r, true);
		else if (s->client_quit)
			session_close(s, true); /* its Terminate: nothing may follow, as in
						   PostgreSQL; no need to wait for its EOF */
		break;
	}
	case SS_CLOSING: {
		ssize_t n = end_recv(&s->c, s->w->scratch, sizeof(s->w->scratch));
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			s->dead = true;
		break;
	}
	}
	finish(s);
}

static void client_wr_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = END_OWNER(arg, struct session, c);
	if (s->state == SS_STARTUP && s->c.ssl && !SSL_is_init_finished(s->c.ssl)) {
		client_handshake(s);
		finish(s);
		return;
	}
	ssize_t left = end_flush(&s->c);
	if (left < 0) {
		session_close(s, true);
	} else if (s->state == SS_CLOSING) {
		if (left == 0)
			end_shutdown_wr(&s->c);
	} else if (left < RELAY_LOW_WATERMARK) {
		relay_resume(&s->s, &s->c);
		if (left == 0)
			check_drain(s);
	}
	finish(s);
}

/* The server connection is up (TCP, and TLS if any): send what it is owed. */
static void server_up(struct session *s)
{
	s->s_phase = PH_UP;
	if (s->state == SS_CANCEL) {
		end_read(&s->s, true);
		if (end_flush(&s->s) < 0)
			s->dead = true;
		return;
	}
	session_set_state(s, SS_AUTH);
	hist_observe(&srv_stats(s, s->srv)->connect_time, now_us() - s->wait_us);
	s->plus_dropped = false;
	/* startup packet first, then anything the client pipelined behind it */
	if (!s->s.out && !(s->s.out = evbuffer_new())) {
		s->dead = true;
		return;
	}
	/* the client's requests are counted from its first byte after the
	 * startup packet, pipelined ones included */
	pgw_scanner_init(&s->c.scan, 0, true);
	if (evbuffer_prepend(s->s.out, s->startup, s->startup_len + s->pipelined_len) != 0 ||
	    pgw_scan(&s->c.scan, s->startup + s->startup_len, s->pipelined_len) != 0) {
		session_fail(s, "08P01", "invalid message length from client");
		return;
	}
	s->hot_standby = s->read_only = -1;
	s->client_saw = false;
	end_read(&s->s, true);
	/* passthrough: the client answers the server's authentication itself;
	 * otherwise it has nothing to say until its ReadyForQuery */
	client_watch(s, s->router_auth ? EV_CLOSED : EV_READ);
	if (end_flush(&s->s) < 0)
		server_failed(s, CONN_CLOSED, "write to %s: %s", s->srv->name, strerror(errno));
}

static void server_handshake(struct session *s)
{
	char why[256];
	int r = end_handshake(&s->s, why, sizeof(why));
	if (r < 0) {
		server_failed(s, CONN_TLS, "TLS with %s (server_tls = %s): %s", s->srv->name,
			      server_tls_name(cur_cfg->server_tls), why);
		return;
	}
	if (r == 0)
		return;
	if (log_enabled(LOG_DEBUG)) {
		char d[128];
		tls_describe(&s->s, d, sizeof(d));
		slog(LOG_DEBUG, s, "TLS to the server established (%s)", d);
	}
	server_up(s);
}

/* The server's one-byte answer to our SSLRequest. Exactly one byte is read:
 * what follows belongs to TLS (CVE-2021-23222). */
static void server_ssl_answer(struct session *s)
{
	uint8_t b;
	ssize_t n = recv(s->s.fd, &b, 1, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		server_failed(s, CONN_CLOSED, "%s closed the connection at SSLRequest", s->srv->name);
		return;
	}
	if (b == 'S') {
		s->s.ssl = tls_connect_ssl(s->srv, &s->s);
		if (!s->s.ssl) {
			server_failed(s, CONN_TLS, "cannot start TLS to %s", s->srv->name);
			return;
		}
		s->s_phase = PH_HANDSHAKE;
		server_handshake(s);
	} else if (b == 'N' && cur_cfg->server_tls == SERVER_TLS_PREFER) {
		server_up(s);
	} else if (b == 'N') {
		server_failed(s, CONN_TLS, "%s does not accept TLS (server_tls = %s)", s->srv->name,
			      server_tls_name(cur_cfg->server_tls));
	} else {
		server_failed(s, CONN_TLS, "%s answered SSLRequest with 0x%02x", s->srv->name, b);
	}
}

static void server_connected(struct session *s)
{
	int err = 0;
	socklen_t len = sizeof(err);
	if (getsockopt(s->s.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
		err = errno;
	if (err) {
		server_failed(s, CONN_REFUSED, "connect to %s: %s", s->srv->name, strerror(err));
		return;
	}
	if (cur_cfg->server_tls == SERVER_TLS_DISABLE) {
		server_up(s);
		return;
	}
	uint8_t req[8];
	pgw_put32(req, 8);
	pgw_put32(req + 4, PGW_CODE_SSL);
	if (send(s->s.fd, req, sizeof(req), MSG_NOSIGNAL) != (ssize_t)sizeof(req)) {
		server_failed(s, CONN_CLOSED, "SSLRequest to %s: %s", s->srv->name, strerror(errno));
		return;
	}
	s->s_phase = PH_SSLREQUEST;
	end_write(&s->s, false);
	end_read(&s->s, true);
}

static void server_wr_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = END_OWNER(arg, struct session, s);
	if (s->s_phase == PH_TCP) {
		server_connected(s);
	} else if (s->s_phase == PH_HANDSHAKE && !SSL_is_init_finished(s->s.ssl)) {
		server_handshake(s);
	} else if (s->s.fd >= 0) {
		ssize_t left = end_flush(&s->s);
		if (left < 0) {
			if ((s->state == SS_AUTH && !s->client_saw) || s->state == SS_RESTORE)
				server_failed(s, CONN_CLOSED, "write to %s: %s", s->srv->name, strerror(errno));
			else if (s->state == SS_INSPECT)
				inspect_failed(s, "its server connection failed");
			else
				server_lost(s, errno);
		} else if (left < RELAY_LOW_WATERMARK) {
			relay_resume(&s->c, &s->s);
		}
	}
	finish(s);
}

static void server_rd_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = END_OWNER(arg, struct session, s);
	if (s->s_phase == PH_SSLREQUEST) {
		server_ssl_answer(s);
		finish(s);
		return;
	}
	if (s->s_phase == PH_HANDSHAKE && !SSL_is_init_finished(s->s.ssl)) {
		server_handshake(s);
		finish(s);
		return;
	}
	switch (s->state) {
	case SS_AUTH:
	case SS_HANDOVER:
	case SS_INSPECT:
	case SS_RESTORE:
		auth_read(s);
		break;
	case SS_RELAY: {
		if (can_move(s) && state_known(s) && at_boundary(s)) {
			/* nothing in flight: what comes is asynchronous, or the end */
			idle_server_read(s);
			break;
		}
		int r = relay_move(s, &s->s, &s->c, true);
		if (r < 0)
			relay_failed(s, r, false);
		else
			check_drain(s);
		break;
	}
	case SS_CANCEL: {
		/* the server closes a cancel connection when it is done with it */
		ssize_t n = end_recv(&s->s, s->w->scratch, sizeof(s->w->scratch));
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			s->dead = true;
		break;
	}
	default:
		break;
	}
	finish(s);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	switch (s->state) {
	case SS_STARTUP:
		/* as PostgreSQL (its startup packet timeout exits quietly): nothing is
		 * sent — nothing could be, to a client halfway through a TLS handshake */
		slog(LOG_INFO, s, "startup packet not received within %.1fs; closed",
		     cur_cfg->startup_timeout_ms / 1000.0);
		s->dead = true;
		break;
	case SS_LOOKUP:
		session_fail(s, "08001",
			     "pgrouter: could not look up the password verifier of user \"%s\" "
			     "within %.1fs (no server answered auth_query)",
			     s->user, cur_cfg->queue_timeout_ms / 1000.0);
		break;
	case SS_LOGIN:
		/* as PostgreSQL: logged, not sent (the client is mid-exchange) */
		slog(LOG_INFO, s, "canceling authentication due to timeout (%.1fs); closed",
		     cur_cfg->startup_timeout_ms / 1000.0);
		s->dead = true;
		break;
	case SS_QUEUED:
		if (now_ms() < s->deadline_ms) {
			tried_clear(&s->tried); /* a retry after refusals (see route) */
			route(s);
		} else {
			no_server(s);
		}
		break;
	case SS_CONNECTING:
	case SS_AUTH:
	case SS_HANDOVER:
		if (!s->server_spoke)
			server_failed(s, CONN_TIMEOUT, "%s did not answer within %u ms", s->srv->name,
				      cur_cfg->connect_timeout_ms);
		else if (!s->client_saw) /* nothing shown yet: another server may do */
			server_failed(s, CONN_TIMEOUT, "%s did not finish the login within %.1fs "
				      "(startup_timeout)", s->srv->name,
				      cur_cfg->startup_timeout_ms / 1000.0);
		else
			session_fail(s, "08006", "pgrouter: the login through server %s did not "
				     "finish within %.1fs (startup_timeout)", s->srv->name,
				     cur_cfg->startup_timeout_ms / 1000.0);
		break;
	case SS_CANCEL:
		slog(LOG_WARNING, s, "cancel forward to %s timed out", s->srv->name);
		s->dead = true;
		break;
	case SS_CLOSING:
		s->dead = true;
		break;
	case SS_RELAY:
		if (s->move_wanted)
			shed(s, SHED_DRAIN_TIMEOUT, "stayed inside a transaction past drain_timeout");
		else if (s->shedding)
			shed(s, maint(s) ? SHED_MAINT : SHED_ROLE_CHANGE, NULL); /* shed_grace is over */
		break;
	case SS_INSPECT:
		inspect_failed(s, "the server did not answer in time");
		break;
	case SS_LOST: {
		char now[64];
		describe_entry(entry_for(s->w->topo, move_from_server(s)), now, sizeof(now));
		slog(LOG_INFO, s, "server %s still %s after its connection closed: not moving",
		     move_from(s), now);
		session_fail(s, "57P01", "pgrouter: server %s closed the session: %s", move_from(s),
			     move_lost(s));
		break;
	}
	case SS_RESTORE:
		if (s->server_spoke)
			server_failed(s, CONN_TIMEOUT, "%s did not finish restoring the session "
				      "within %.1fs (startup_timeout)", s->srv->name,
				      cur_cfg->startup_timeout_ms / 1000.0);
		else
			server_failed(s, CONN_TIMEOUT, "%s did not answer within %u ms",
				      s->srv->name, cur_cfg->connect_timeout_ms);
		break;
	}
	finish(s);
}

/* ---- worker-wide events ----------------------------------------------- */

void session_refuse(struct worker *w, struct listener_config *l, int fd, enum rej_reason why,
		    const char *detail)
{
	static struct log_limit limit;
	uint8_t buf[512];
	/* what the client sent so far is read, so that the close is a FIN and
	 * not a reset that could destroy the message before it is read; an
	 * encryption request already there is answered 'N' first, so that libpq
	 * (sslmode=prefer) reads the error as a server's */
	size_t n = 0;
	ssize_t got = recv(fd, w->scratch, sizeof(w->scratch), MSG_DONTWAIT);
	uint32_t code = got >= 8 && pgw_get32(w->scratch) == 8 ? pgw_get32(w->scratch + 4) : 0;
	if (code == PGW_CODE_SSL || code == PGW_CODE_GSSENC)
		buf[n++] = 'N';
	while (got > 0)
		got = recv(fd, w->scratch, sizeof(w->scratch), MSG_DONTWAIT);
	n += pgw_build_error(buf + n, sizeof(buf) - n, "FATAL", "53300",
			     "sorry, too many clients already", detail,
			     "pgrouter's open files limit (LimitNOFILE) or max_client_conn");
	ssize_t sent = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)sent; /* a fresh socket's buffer takes it; if not, it gets nothing */
	shutdown(fd, SHUT_WR);
	close(fd);
	stat_add(&w->stats->l[l->slot].rejected[why], 1);
	unsigned held;
	if (log_limit_pass(&limit, 10000, &held))
		log_warning("listener %s: client refused at once with 53300: %s (%u more refused "
			    "since the last such line)", l->name, detail, held);
}

void session_start(struct worker *w, struct listener_config *l, int fd, struct sockaddr *sa,
		   int salen)
{
	unsigned n = atomic_fetch_add_explicit(&router.clients, 1, memory_order_relaxed) + 1;
	unsigned room = atomic_load_explicit(&router.fd_clients, memory_order_relaxed);
	/* Past the room, a few at a time still get their negotiation answered and
	 * 53300 after their startup packet, as from PostgreSQL (libpq shows a
	 * bare error before it only as "an error response during SSL exchange"),
	 * within PAST_ROOM_MS; more at once are refused before their first byte. */
	bool past_room = n > room;
	if ((past_room && atomic_fetch_add_explicit(&router.past_room, 1, memory_order_relaxed) >=
				  PAST_ROOM_MAX) ||
	    n > 2 * cur_cfg->max_client_conn) {
		char detail[160];
		if (past_room) {
			atomic_fetch_sub_explicit(&router.past_room, 1, memory_order_relaxed);
			snprintf(detail, sizeof(detail), "%u clients open; the open files limit "
				 "has room for %u", n - 1, room);
		} else {
			snprintf(detail, sizeof(detail), "%u clients open, twice max_client_conn=%u",
				 n - 1, cur_cfg->max_client_conn);
		}
		atomic_fetch_sub_explicit(&router.clients, 1, memory_order_relaxed);
		session_refuse(w, l, fd, past_room ? REJ_OPEN_FILES : REJ_MAX_CLIENT_CONN, detail);
		return;
	}
	struct session *s = calloc(1, sizeof(*s));
	if (!s) {
		atomic_fetch_sub_explicit(&router.clients, 1, memory_order_relaxed);
		if (past_room)
			atomic_fetch_sub_explicit(&router.past_room, 1, memory_order_relaxed);
		close(fd);
		return;
	}
	s->past_room = past_room;
	s->id = atomic_fetch_add_explicit(&router.next_session_id, 1, memory_order_relaxed) + 1;
	s->w = w;
	s->l = l;
	config_ref(l->cfg);
	s->started_ms = now_ms();
	s->hot_standby = s->read_only = -1;
	s->s.fd = -1;
	/* evconnlistener accepts with SOCK_NONBLOCK: no fcntl here */
	/* TCP_NODELAY and the keepalive settings come from the listening socket */
	char peer[48];
	sockaddr_describe(sa, peer, sizeof(peer));
	s->peer = s->user = s->who = no_name;
	session_name(s, peer, "", "");
	end_setup(&s->c, w->base, fd, client_ev_cb);
	TAILQ_INSERT_TAIL(&w->sessions, s, link);
	w->nsessions++;
	s->state = SS_STARTUP;
	stat_add(&lstats(s)->accepted, 1);
	gauge_add(&lstats(s)->clients, 1);

	/* Past max_client_conn the client still gets its SSLRequest answered and its
	 * cancels forwarded; its StartupMessage gets 53300, as from PostgreSQL. */
	s->over_limit = n > cur_cfg->max_client_conn || past_room;
	if (w->draining) {
		stat_reject(s, REJ_SHUTTING_DOWN);
		session_fail(s, "57P01", "pgrouter is shutting down");
		finish(s);
		return;
	}
	slog(LOG_DEBUG, s, "accepted");
	timer_set(s, past_room && cur_cfg->startup_timeout_ms > PAST_ROOM_MS
			     ? PAST_ROOM_MS
			     : cur_cfg->startup_timeout_ms);
	end_read(&s->c, true);
}

void sessions_topology_changed(struct worker *w)
{
	struct session *s, *next;
	for (s = TAILQ_FIRST(&w->sessions); s; s = next) {
		next = TAILQ_NEXT(s, link);
		if (s->state == SS_RELAY)
			check_fit(s);
		else if (s->state == SS_LOST)
			lost_verdict(s);
		finish(s);
	}
	for (s = TAILQ_FIRST(&w->queued); s; s = next) {
		next = TAILQ_NEXT(s, qlink);
		tried_clear(&s->tried); /* a new view: servers that refused may be back */
		route(s);
		finish(s);
	}
}

/* The session's listener as the worker's generation has it (by name); a
 * removed listener's session keeps its own and finishes where it is. */
static void follow_listener(struct session *s)
{
	struct listener_config *l = config_listener(cur_cfg, s->l->name);
	if (!l || l == s->l)
		return;
	struct config *old = s->l->cfg;
	s->l = l;
	config_ref(l->cfg);
	config_unref(old);
}

void sessions_config_changed(struct worker *w)
{
	struct session *s;
	TAILQ_FOREACH(s, &w->sessions, link)
		follow_listener(s);
	/* a policy, a timeout or max_lag changed: as after a role change */
	sessions_topology_changed(w);
}

void sessions_pause_changed(struct worker *w)
{
	struct session *s, *next;
	for (s = TAILQ_FIRST(&w->sessions); s; s = next) {
		next = TAILQ_NEXT(s, link);
		if (s->state != SS_RELAY)
			continue;
		if (s->held && !listener_paused(s->l)) {
			s->held = false;
			client_watch(s, EV_READ);
			slog(LOG_DEBUG, s, "resumed");
		} else {
			hold_if_paused(s);
		}
	}
	uint64_t now = now_ms();
	for (s = TAILQ_FIRST(&w->queued); s; s = next) {
		next = TAILQ_NEXT(s, qlink);
		if (listener_paused(s->l))
			continue;
		if (s->deadline_ms < now + cur_cfg->queue_timeout_ms)
			s->deadline_ms = now + cur_cfg->queue_timeout_ms; /* waited for RESUME */
		route(s);
		finish(s);
	}
}

void sessions_retry_queued(struct worker *w)
{
	struct session *s, *next;
	for (s = TAILQ_FIRST(&w->queued); s; s = next) {
		next = TAILQ_NEXT(s, qlink);
		if (s->pool_full) {
			route(s);
			finish(s);
		}
	}
}

void sessions_drain(struct worker *w)
{
	struct session *s, *next;
	for (s = TAILQ_FIRST(&w->sessions); s; s = next) {
		next = TAILQ_NEXT(s, link);
		s->draining = true;
		switch (s->state) {
		case SS_STARTUP:
		case SS_LOOKUP:
		case SS_LOGIN:
		case SS_QUEUED:
		case SS_LOST:
			stat_reject(s, REJ_SHUTTING_DOWN);
			session_fail(s, "57P01", "pgrouter is shutting down");
			break;
		case SS_RELAY:
			check_drain(s);
			break;
		default:
			break;
		}
		finish(s);
	}
}

/* An inspection costs the server about 1 ms of CPU (pg_settings above all):
 * at most this many per second per worker; the rest wait for the next turn. */
#define INSPECT_PER_SEC 20

void sessions_inspect_idle(struct worker *w)
{
	unsigned budget = INSPECT_PER_SEC * cur_cfg->inspect_idle_ms / 1000;
	if (budget == 0)
		budget = 1;
	struct session *s, *next;
	for (s = TAILQ_FIRST(&w->sessions); s && budget; s = next) {
		next = TAILQ_NEXT(s, link);
		if (s->state != SS_RELAY || !can_move(s))
			continue;
		if (s->idle_mark == (uint32_t)s->c.scan.messages && !state_known(s) && at_boundary(s)) {
			inspect(s, true); /* quiet since the last turn */
			budget--;
			if (!s->dead) { /* the next turn starts with the others */
				TAILQ_REMOVE(&w->sessions, s, link);
				TAILQ_INSERT_TAIL(&w->sessions, s, link);
			}
		} else {
			s->idle_mark = (uint32_t)s->c.scan.messages;
		}
		finish(s);
	}
}

/* ---- moving between workers (balance.c) ------------------------------- */

static bool end_quiet(const struct end *e)
{
	return !end_busy(e) && !e->paused && !e->rd_wants_wr &&
	       !e->wr_wants_rd && !(e->ssl && SSL_has_pending(e->ssl));
}

/* Every request the client sent was answered to its ReadyForQuery — in a
 * transaction or not: a worker's move does not change servers. */
bool session_movable(const struct session *s)
{
	return s->state == SS_RELAY && streams_answered(s) && s->s.fd >= 0 && !s->dead && !s->held && !s->draining &&
	       !s->shedding && !s->move_wanted && !s->moving && !s->timer && !s->login &&
	       !(s->in && evbuffer_get_length(s->in)) &&
	       !(s->replay && evbuffer_get_length(s->replay)) && end_quiet(&s->c) &&
	       end_quiet(&s->s);
}

/* The worker's share of the gauges: the session in its listener's clients
 * and its server's sessions. */
static void count_in(struct session *s, int64_t n)
{
	gauge_add(&lstats(s)->clients, n);
	if (s->srv_counted)
		gauge_add(&srv_stats(s, s->srv)->sessions[s->l->slot], n);
}

bool session_depart(struct session *s)
{
	struct worker *w = s->w;
	if (s->sc && !pool_depart(s))
		return false;
	end_detach(&s->c);
	end_detach(&s->s);
	count_in(s, -1);
	TAILQ_REMOVE(&w->sessions, s, link);
	w->nsessions--;
	return true;
}

void session_return(struct session *s)
{
	struct worker *w = s->w;
	TAILQ_INSERT_TAIL(&w->sessions, s, link);
	w->nsessions++;
	count_in(s, 1);
	end_attach(&s->c, w->base);
	end_attach(&s->s, w->base);
}

void session_arrive(struct worker *w, struct session *s)
{
	struct worker *from = s->w;
	s->w = w;
	session_return(s);
	slog(LOG_DEBUG, s, "moved from worker %u", from->id);
	if (s->sc && !pool_arrive(s, w)) {
		session_fail(s, "53200", "out of memory");
		finish(s);
		return;
	}
	/* as after a reload and a new snapshot, for this worker's */
	follow_listener(s);
	check_fit(s);
	if (!s->dead && s->state == SS_RELAY)
		check_drain(s);
	finish(s);
}

void sessions_close_all(struct worker *w, const char *why)
{
	struct session *s, *next;
	for (s = TAILQ_FIRST(&w->sessions); s; s = next) {
		next = TAILQ_NEXT(s, link);
		if (s->state == SS_CLOSING)
			s->dead = true;
		else
			session_fail(s, "57P01", "%s", why);
		finish(s);
	}
}

void sessions_free_all(struct worker *w)
{
	struct session *s;
	while ((s = TAILQ_FIRST(&w->sessions)) != NULL)
		session_free(s);
}
