/*
 * pool.c — server connections kept for the next client (pool_mode = session).
 *
 *   client leaves between transactions
 *        │ pool_give_back
 *        ▼
 *     RESET: server_reset_query (DISCARD ALL) ── error / EOF / not idle ──▶ closed
 *        │ ReadyForQuery 'I'
 *        ▼
 *     IDLE in its worker's pool ── server_idle_timeout, server_lifetime, server
 *        │                         gone/demoted/draining, EOF ──▶ closed
 *        │ pool_take (same server, user, database, options)
 *        ▼
 *     held by a session: session.c sets the client's startup parameters on it
 *     (SS_HANDOVER) and tells the client the server's ParameterStatus set
 *
 * A pool is keyed by server, user, database, protocol version and the startup
 * options that cannot be SET later; a connection is only ever handed to a
 * client that pgrouter authenticated as its user (pool_mode = session needs
 * auth = router). New pooled connections log in with only those keys, so a
 * reset returns them to a state no client chose.
 *
 * Each worker keeps its own idle connections (its event loop watches them);
 * pool_size counts every connection of a key across the workers. A session
 * that finds its pool full waits in its worker's queue; a release anywhere
 * wakes the workers that have such waiters, and a worker short of room asks
 * the others to close an idle connection of that key.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router/router.h"

#define SWEEP_MS 1000
#define RESET_MESSAGE_MAX (1u << 20)

struct pool_key {
	struct pool_key *next;
	struct disc_server *srv;
	char user[64];
	char database[64];
	char extra[600]; /* version, options, protocol extensions */
	atomic_int total;      /* connections, every worker, every state */
	atomic_int idle;
	atomic_int want_close; /* idle ones the workers are asked to close */
};

/* A server's ParameterStatus set, "name\0value\0"... in the order the server
 * first reported it. Never changed once built (a change builds a new one), so
 * the connections of a pool with the same set share one (pool->params). */
struct params {
	uint32_t refs, len;
	char data[];
};

/* A connection no session holds has an end of its own for its socket; a
 * held one's socket is in the session's server end, so this exists only
 * while the connection is given back, reset or idle. */
struct parked {
	struct end e;
	struct srv_conn *sc;
};

struct pool {
	struct pool *next;
	struct pool_key *k;
	struct params *params; /* the set its connections last settled with */
	TAILQ_HEAD(srv_conn_list, srv_conn) idle;
	struct srv_conn_list resetting; /* given back, server_reset_query running */
};

enum sc_state { SC_ACTIVE, SC_RESET, SC_IDLE };

#define BE_KEY_INLINE 8

struct srv_conn {
	TAILQ_ENTRY(srv_conn) link;
	struct pool *pool; /* its worker's pool of key k */
	struct pool_key *k;
	struct worker *w;
	struct parked *pk;   /* the socket while no session holds it */
	struct evbuffer *in; /* RESET / IDLE: server bytes, read whole */
	uint64_t created_ms, idle_ms;
	struct params *params; /* the server's ParameterStatus set (NULL: none yet) */
	uint8_t *negotiate; /* the server's NegotiateProtocolVersion, whole */
	uint8_t *startup;   /* the startup packet it logged in with: RESET values */
	uint32_t startup_len;
	uint32_t negotiate_len;
	uint32_t be_pid;
	uint16_t be_key_len;
	uint8_t state;       /* enum sc_state */
	uint8_t role;        /* enum disc_role */
	union {
		uint8_t *p;  /* be_key_len > BE_KEY_INLINE (protocol 3.2) */
		uint8_t in[BE_KEY_INLINE]; /* protocol 3.0: 4 bytes */
	} be_key;
};

static const uint8_t *be_key(const struct srv_conn *sc)
{
	return sc->be_key_len > BE_KEY_INLINE ? sc->be_key.p : sc->be_key.in;
}

static struct pool_key *keys;
static pthread_mutex_t keys_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int waiters; /* sessions queued for room in a pool, all workers */

/* ---- keys ---------------------------------------------------------------- */

/* The startup parameters that are part of the key, not SET at hand-over. */
bool pool_param_keyed(const char *name)
{
	return strcmp(name, "user") == 0 || strcmp(name, "database") == 0 ||
	       strcmp(name, "options") == 0 || strcmp(name, "replication") == 0 ||
	       strncmp(name, "_pq_.", 5) == 0;
}

static bool parse_startup(const struct session *s, struct pgw_first *f)
{
	return s->startup && pgw_first_parse(s->startup, s->startup_len, f) > 0 &&
	       f->kind == PGW_FIRST_STARTUP;
}

/* Append len bytes of p to buf (cap, NUL not counted): false if they do not fit. */
static bool put(char *buf, size_t cap, size_t *n, const char *p, size_t len)
{
	if (len >= cap - *n)
		return false;
	memcpy(buf + *n, p, len);
	*n += len;
	return true;
}

static struct pool_key *key_for(const struct session *s, struct disc_server *srv)
{
	struct pgw_first f;
	if (!parse_startup(s, &f))
		return NULL;
	/* values of what cannot be SET later; names only of the rest: a client
	 * sending the same parameters can be given any connection of the key and
	 * only the values that differ are SET */
	char extra[600];
	int lv = snprintf(extra, sizeof(extra), "v%u", f.version);
	size_t n = lv > 0 ? (size_t)lv : 0;
	bool fits = lv > 0 && n < sizeof(extra);
	for (unsigned i = 0; i < f.nparams && fits; i++) {
		const char *name = f.params[i].name;
		if (strcmp(name, "user") == 0 || strcmp(name, "database") == 0)
			continue;
		fits = put(extra, sizeof(extra), &n, ";", 1) &&
		       put(extra, sizeof(extra), &n, name, strlen(name));
		if (fits && pool_param_keyed(name))
			fits = put(extra, sizeof(extra), &n, "=", 1) &&
			       put(extra, sizeof(extra), &n, f.params[i].value, strlen(f.params[i].value));
	}
	if (!fits || strlen(f.database) >= 64)
		return NULL;
	extra[n] = '\0';
	pthread_mutex_lock(&keys_lock);
	struct pool_key *k;
	for (k = keys; k; k = k->next)
		if (k->srv == srv && strcmp(k->user, s->user) == 0 &&
		    strcmp(k->database, f.database) == 0 && strcmp(k->extra, extra) == 0)
			break;
	if (!k && (k = calloc(1, sizeof(*k)))) {
		k->srv = srv;
		snprintf(k->user, sizeof(k->user), "%s", s->user);
		snprintf(k->database, sizeof(k->database), "%s", f.database);
		memcpy(k->extra, extra, n + 1);
		k->next = keys;
		keys = k;
	}
	pthread_mutex_unlock(&keys_lock);
	return k;
}

static struct pool *pool_for(struct worker *w, struct pool_key *k)
{
	struct pool *p;
	for (p = w->pools; p; p = p->next)
		if (p->k == k)
			return p;
	if (!(p = calloc(1, sizeof(*p))))
		return NULL;
	p->k = k;
	TAILQ_INIT(&p->idle);
	TAILQ_INIT(&p->resetting);
	p->next = w->pools;
	w->pools = p;
	return p;
}

const uint8_t *pool_conn_startup(const struct session *s, uint32_t *len)
{
	*len = s->sc->startup_len;
	return s->sc->startup;
}

uint64_t pool_conn_idle_ms(const struct session *s)
{
	return s->sc->idle_ms ? now_ms() - s->sc->idle_ms : 0;
}

void pool_counts(const struct disc_server *srv, int *total, int *idle)
{
	*total = *idle = 0;
	pthread_mutex_lock(&keys_lock);
	for (struct pool_key *k = keys; k; k = k->next)
		if (k->srv == srv) {
			*total += atomic_load_explicit(&k->total, memory_order_relaxed);
			*idle += atomic_load_explicit(&k->idle, memory_order_relaxed);
		}
	pthread_mutex_unlock(&keys_lock);
}

/* ---- a connection's record ------------------------------------------------ */

static void wake_waiters(void)
{
	if (atomic_load_explicit(&waiters, memory_order_relaxed) <= 0)
		return;
	for (unsigned i = 0; i < router.nworkers && router.workers; i++)
		event_active(&router.workers[i].pool_wake, EV_READ, 0);
}

static void params_drop(struct params *pm)
{
	if (pm && --pm->refs == 0)
		free(pm);
}

/* A change (rare once the connection is up: a client's SET of a reported
 * parameter, a reset) builds a new set. */
static bool set_param(struct srv_conn *sc, const char *name, const char *value)
{
	const struct params *pm = sc->params;
	size_t len = pm ? pm->len : 0;
	size_t nl = strlen(name) + 1, vl = strlen(value) + 1, old = 0, at = len;
	for (size_t o = 0; o < len;) {
		const char *n = pm->data + o, *v = n + strlen(n) + 1;
		size_t l = (size_t)(v + strlen(v) + 1 - n);
		if (strcmp(n, name) == 0) {
			if (strcmp(v, value) == 0)
				return true;
			at = o;
			old = l;
			break;
		}
		o += l;
	}
	size_t total = len - old + nl + vl;
	struct params *b = malloc(sizeof(*b) + total);
	if (!b)
		return false;
	b->refs = 1;
	b->len = (uint32_t)total;
	if (pm) {
		memcpy(b->data, pm->data, at);
		memcpy(b->data + at + nl + vl, pm->data + at + old, len - at - old);
	}
	memcpy(b->data + at, name, nl);
	memcpy(b->data + at + nl, value, vl);
	params_drop(sc->params);
	sc->params = b;
	return true;
}

/* The connection's set settled (it is handed to a client, or parked): one
 * block for all the pool's connections that have the same. */
static void share_params(struct srv_conn *sc)
{
	struct params *mine = sc->params, *shared = sc->pool->params;
	if (!mine || mine == shared)
		return;
	if (shared && shared->len == mine->len && memcmp(shared->data, mine->data, mine->len) == 0) {
		params_drop(mine);
		sc->params = shared;
	} else {
		params_drop(shared);
		sc->pool->params = mine;
	}
	sc->params->refs++;
}

static const char *get_param(const struct srv_conn *sc, const char *name)
{
	const struct params *pm = sc->params;
	for (size_t o = 0; pm && o < pm->len;) {
		const char *n = pm->data + o, *v = n + strlen(n) + 1;
		if (strcmp(n, name) == 0)
			return v;
		o = (size_t)(v + strlen(v) + 1 - pm->data);
	}
	return NULL;
}

static void conn_free(struct srv_conn *sc)
{
	struct pool_key *k = sc->k;
	if (sc->state == SC_IDLE) {
		TAILQ_REMOVE(&sc->pool->idle, sc, link);
		atomic_fetch_sub_explicit(&k->idle, 1, memory_order_relaxed);
	} else if (sc->state == SC_RESET) {
		TAILQ_REMOVE(&sc->pool->resetting, sc, link);
	}
	struct parked *pk = sc->pk;
	if (pk && pk->e.fd >= 0 && (!pk->e.out || evbuffer_get_length(pk->e.out) == 0) &&
	    sc->state == SC_IDLE) {
		uint8_t x[5];
		ssize_t n = end_send(&pk->e, x, pgw_build_terminate(x, sizeof(x)));
		(void)n;
	}
	if (pk) {
		end_close(&pk->e);
		free(pk);
	}
	if (sc->in)
		evbuffer_free(sc->in);
	params_drop(sc->params);
	if (sc->be_key_len > BE_KEY_INLINE)
		free(sc->be_key.p);
	free(sc->negotiate);
	shared_bytes_unref(sc->startup);
	atomic_fetch_sub_explicit(&k->total, 1, memory_order_relaxed);
	free(sc);
	wake_waiters();
}

static void conn_close_at(int level, struct srv_conn *sc, const char *why)
{
	if (log_enabled(level))
		log_msg(level, "pool %s@%s on %s: server connection closed: %s", sc->k->user,
			sc->k->database, sc->k->srv->name, why);
	conn_free(sc);
}

static void conn_close(struct srv_conn *sc, const char *why)
{
	conn_close_at(LOG_DEBUG, sc, why);
}

/* Does the connection still go where the snapshot says it was made for? */
static bool conn_fits(const struct srv_conn *sc)
{
	const struct topology *t = sc->w->topo;
	for (unsigned i = 0; t && i < t->n; i++)
		if (t->e[i].srv == sc->k->srv)
			return t->e[i].reachable && !t->e[i].draining && t->e[i].role == sc->role;
	return false;
}

static bool too_old(const struct srv_conn *sc, uint64_t now)
{
	unsigned life = cur_cfg->server_lifetime_ms;
	return life && now - sc->created_ms >= life;
}

/* ---- RESET and IDLE: the pool's own reading ------------------------------- */

static void park(struct srv_conn *sc)
{
	const char *why = sc->w->draining ? "pgrouter is shutting down"
			  : !conn_fits(sc) ? "its server changed role, left or is draining"
			  : too_old(sc, now_ms()) ? "server_lifetime reached"
						  : NULL;
	if (why) {
		conn_close_at(sc->w->draining ? LOG_DEBUG : LOG_INFO, sc, why);
		return;
	}
	if (sc->state == SC_RESET)
		TAILQ_REMOVE(&sc->pool->resetting, sc, link);
	sc->state = SC_IDLE;
	sc->idle_ms = now_ms();
	share_params(sc);
	TAILQ_INSERT_HEAD(&sc->pool->idle, sc, link); /* most recently used first */
	atomic_fetch_add_explicit(&sc->k->idle, 1, memory_order_relaxed);
	if (!evtimer_pending(&sc->w->pool_sweep, NULL)) {
		struct timeval tv = { SWEEP_MS / 1000, (SWEEP_MS % 1000) * 1000 };
		evtimer_add(&sc->w->pool_sweep, &tv);
	}
	wake_waiters();
}

/* Whole messages from the server while nobody holds the connection. Returns
 * false when the connection was closed. */
static bool conn_messages(struct srv_conn *sc)
{
	for (;;) {
		size_t have = evbuffer_get_length(sc->in);
		uint8_t hdr[PGW_HEADER_LEN], type;
		uint32_t body;
		if (have < PGW_HEADER_LEN)
			return true;
		evbuffer_copyout(sc->in, hdr, sizeof(hdr));
		if (pgw_header(hdr, RESET_MESSAGE_MAX, &type, &body) != 0) {
			conn_close(sc, "invalid message from the server");
			return false;
		}
		if (have < PGW_HEADER_LEN + body)
			return true;
		const uint8_t *m = evbuffer_pullup(sc->in, PGW_HEADER_LEN + body) + PGW_HEADER_LEN;
		const char *name, *value;
		switch (type) {
		case PGW_MSG_PARAMETER_STATUS:
			if (pgw_parameter_status(m, body, &name, &value) == 0 &&
			    !set_param(sc, name, value)) {
				conn_close(sc, "out of memory");
				return false;
			}
			break;
		case PGW_MSG_READY:
			if (sc->state != SC_RESET || pgw_ready_status(m, body) != 'I') {
				conn_close(sc, "not idle after server_reset_query");
				return false;
			}
			evbuffer_drain(sc->in, PGW_HEADER_LEN + body);
			if (evbuffer_get_length(sc->in)) {
				conn_close(sc, "the server spoke after ReadyForQuery");
				return false;
			}
			park(sc);
			return false; /* parked or closed: nothing more to read now */
		case PGW_MSG_ERROR: {
			struct pgw_error_fields ef;
			if (pgw_error_parse(m, body, &ef) != 0)
				memset(&ef, 0, sizeof(ef));
			log_warning("pool %s@%s on %s: server_reset_query or idle connection got "
				    "%s %s; closing it",
				    sc->k->user, sc->k->database, sc->k->srv->name,
				    ef.sqlstate ? ef.sqlstate : "", ef.message ? ef.message : "");
			conn_close(sc, "server error");
			return false;
		}
		case PGW_MSG_NOTICE:
		case 'C': /* CommandComplete of the reset query */
			if (sc->state == SC_RESET || type == PGW_MSG_NOTICE)
				break;
			/* fall through */
		default:
			conn_close(sc, "unexpected message from the server");
			return false;
		}
		evbuffer_drain(sc->in, PGW_HEADER_LEN + body);
	}
}

static void conn_rd_cb(evutil_socket_t fd, short what, void *arg)
{
	struct parked *pk = END_OWNER(arg, struct parked, e);
	struct srv_conn *sc = pk->sc;
	if (!sc->in && !(sc->in = evbuffer_new())) {
		conn_close(sc, "out of memory");
		return;
	}
	ssize_t n = end_recv(&pk->e, sc->w->scratch, sizeof(sc->w->scratch));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		conn_close(sc, n == 0 ? "the server closed it" : strerror(errno));
		return;
	}
	if (evbuffer_add(sc->in, sc->w->scratch, (size_t)n) != 0) {
		conn_close(sc, "out of memory");
		return;
	}
	if (conn_messages(sc) && sc->state == SC_IDLE && evbuffer_get_length(sc->in) == 0) {
		evbuffer_free(sc->in); /* idle connections hold no buffer */
		sc->in = NULL;
	}
}

static void conn_wr_cb(evutil_socket_t fd, short what, void *arg)
{
	struct parked *pk = END_OWNER(arg, struct parked, e);
	struct srv_conn *sc = pk->sc;
	if (end_flush(&pk->e) < 0)
		conn_close(sc, strerror(errno));
}

static void conn_ev_cb(evutil_socket_t fd, short what, void *arg)
{
	end_dispatch(arg, fd, what, conn_rd_cb, conn_wr_cb);
}

/* ---- the session's side ---------------------------------------------------- */

int pool_take(struct session *s, struct disc_server *srv, enum disc_role role)
{
	struct pool_key *k = key_for(s, srv);
	struct pool *p = k ? pool_for(s->w, k) : NULL;
	if (!p)
		return POOL_FULL; /* out of memory: wait, and fail at queue_timeout */
	uint64_t now = now_ms();
	struct srv_conn *sc;
	while ((sc = TAILQ_FIRST(&p->idle))) {
		if (sc->role != role || too_old(sc, now)) {
			conn_close(sc, sc->role != role ? "its server changed role"
							: "server_lifetime reached");
			continue;
		}
		TAILQ_REMOVE(&p->idle, sc, link);
		atomic_fetch_sub_explicit(&k->idle, 1, memory_order_relaxed);
		pool_unwait(s);
		sc->state = SC_ACTIVE;
		end_read(&sc->pk->e, false);
		end_write(&sc->pk->e, false);
		if (sc->in) {
			evbuffer_free(sc->in);
			sc->in = NULL;
		}
		s->sc = sc;
		const char *v = get_param(sc, "in_hot_standby");
		s->hot_standby = v ? strcmp(v, "on") == 0 : -1;
		v = get_param(sc, "default_transaction_read_only");
		s->read_only = v ? strcmp(v, "on") == 0 : -1;
		return POOL_GOT;
	}
	unsigned size = s->l->pool_size;
	int total = atomic_fetch_add_explicit(&k->total, 1, memory_order_relaxed);
	if (total >= (int)size) {
		atomic_fetch_sub_explicit(&k->total, 1, memory_order_relaxed);
		if (!s->pool_full) {
			s->pool_full = true;
			atomic_fetch_add_explicit(&waiters, 1, memory_order_relaxed);
			if (atomic_load_explicit(&k->idle, memory_order_relaxed) > 0) {
				/* other workers hold idle ones: ask once for one back */
				atomic_fetch_add_explicit(&k->want_close, 1, memory_order_relaxed);
				for (unsigned i = 0; i < router.nworkers; i++)
					if (&router.workers[i] != s->w)
						event_active(&router.workers[i].pool_wake, EV_READ, 0);
			}
		}
		return POOL_FULL;
	}
	pool_unwait(s);
	if (!(sc = calloc(1, sizeof(*sc)))) {
		atomic_fetch_sub_explicit(&k->total, 1, memory_order_relaxed);
		return POOL_FULL;
	}
	/* it logs in with this client's whole startup packet: its parameters are
	 * what RESET (DISCARD ALL) returns to, usually what the next client of
	 * the same application asks for, so nothing needs SET then */
	sc->startup = shared_bytes_ref(s->startup);
	sc->startup_len = s->startup_len;
	sc->pool = p;
	sc->k = k;
	sc->w = s->w;
	sc->state = SC_ACTIVE;
	sc->role = role;
	sc->created_ms = now;
	s->sc = sc;
	return POOL_NEW;
}

void pool_unwait(struct session *s)
{
	if (s->pool_full) {
		s->pool_full = false;
		atomic_fetch_sub_explicit(&waiters, 1, memory_order_relaxed);
	}
}

void pool_note(struct session *s, uint8_t type, const uint8_t *body, uint32_t len)
{
	struct srv_conn *sc = s->sc;
	const char *name, *value;
	uint32_t pid, klen;
	const uint8_t *key;
	switch (type) {
	case PGW_MSG_PARAMETER_STATUS:
		if (pgw_parameter_status(body, len, &name, &value) == 0)
			set_param(sc, name, value);
		break;
	case PGW_MSG_BACKEND_KEY:
		if (pgw_backend_key(body, len, &pid, &key, &klen) == 0) {
			sc->be_pid = pid;
			if (sc->be_key_len > BE_KEY_INLINE)
				free(sc->be_key.p);
			sc->be_key_len = 0;
			uint8_t *to = sc->be_key.in;
			if (klen <= PGW_CANCEL_KEY_MAX &&
			    (klen <= BE_KEY_INLINE || (to = sc->be_key.p = malloc(klen)))) {
				memcpy(to, key, klen);
				sc->be_key_len = (uint16_t)klen;
			}
		}
		break;
	case PGW_MSG_NEGOTIATE:
		free(sc->negotiate);
		if ((sc->negotiate = malloc(PGW_HEADER_LEN + len))) {
			sc->negotiate[0] = type;
			pgw_put32(sc->negotiate + 1, len + 4);
			memcpy(sc->negotiate + PGW_HEADER_LEN, body, len);
			sc->negotiate_len = PGW_HEADER_LEN + len;
		}
		break;
	}
}

void pool_adopt(struct session *s, struct end *e)
{
	struct srv_conn *sc = s->sc;
	e->fd = sc->pk->e.fd;
	e->ssl = sc->pk->e.ssl;
	tls_rehome(e);
	free(sc->pk); /* disarmed when it was taken; it held no output */
	sc->pk = NULL;
}

uint32_t pool_key_len(const struct session *s)
{
	return s->sc->be_key_len;
}

bool pool_replay(struct session *s, struct evbuffer *out)
{
	struct srv_conn *sc = s->sc;
	if (sc->negotiate && evbuffer_add(out, sc->negotiate, sc->negotiate_len) != 0)
		return false;
	share_params(sc); /* what the client is told is what the connection has */
	const struct params *pm = sc->params;
	for (size_t o = 0; pm && o < pm->len;) {
		const char *n = pm->data + o, *v = n + strlen(n) + 1;
		uint8_t m[1024];
		size_t len = pgw_build_parameter_status(m, sizeof(m), n, v);
		if (len && evbuffer_add(out, m, len) != 0)
			return false;
		o = (size_t)(v + strlen(v) + 1 - pm->data);
	}
	return true;
}

bool pool_depart(struct session *s)
{
	struct srv_conn *sc = s->sc;
	struct params *pm = sc->params;
	if (pm && pm->refs > 1) {
		/* the block's count is this worker's to change: a copy of its own */
		struct params *b = malloc(sizeof(*b) + pm->len);
		if (!b)
			return false;
		memcpy(b, pm, sizeof(*b) + pm->len);
		b->refs = 1;
		params_drop(pm);
		sc->params = b;
	}
	return true;
}

bool pool_arrive(struct session *s, struct worker *w)
{
	struct srv_conn *sc = s->sc;
	struct pool *p = pool_for(w, sc->k); /* (the old worker's pool may be gone) */
	if (!p)
		return false;
	sc->pool = p;
	sc->w = w;
	return true;
}

void pool_point_cancel(struct session *s)
{
	struct srv_conn *sc = s->sc;
	cancel_set_server(s->cancel, sc->k->srv, sc->be_pid, be_key(sc), sc->be_key_len);
}

void pool_give_back(struct session *s, bool reusable)
{
	struct srv_conn *sc = s->sc;
	if (!sc)
		return;
	s->sc = NULL;
	struct end *e = &s->s;
	end_settle(e);
	/* the socket (and its TLS) move from the session to the record */
	end_read(e, false);
	end_write(e, false);
	if (end_busy(e))
		reusable = false; /* something of the client's still unsent */
	if (e->fd < 0) { /* never connected */
		conn_free(sc);
		return;
	}
	struct parked *pk = calloc(1, sizeof(*pk));
	if (!pk) {
		end_close(e);
		conn_close(sc, "out of memory");
		return;
	}
	pk->sc = sc;
	sc->pk = pk;
	end_setup(&pk->e, sc->w->base, e->fd, conn_ev_cb);
	pk->e.ssl = e->ssl;
	pk->e.held = e->held; /* only when not reusable: then closed below */
	tls_rehome(&pk->e);
	e->fd = -1;
	e->ssl = NULL;
	e->held = false;
	e->rd_wants_wr = e->wr_wants_rd = false;
	if (e->out) {
		evbuffer_free(e->out);
		e->out = NULL;
	}
	if (!reusable) {
		conn_close(sc, "the client left mid-transaction or the session failed");
		return;
	}
	sc->state = SC_RESET;
	TAILQ_INSERT_TAIL(&sc->pool->resetting, sc, link);
	const char *q = cur_cfg->server_reset_query;
	if (!*q) {
		park(sc);
		return;
	}
	uint8_t m[600];
	size_t n = pgw_build_query(m, sizeof(m), q);
	if (!n || !end_queue(&pk->e, m, n) || end_flush(&pk->e) < 0) {
		conn_close(sc, "cannot send server_reset_query");
		return;
	}
	end_read(&pk->e, true);
}

/* ---- worker-wide ------------------------------------------------------------ */

static void close_where(struct worker *w, bool (*bad)(struct srv_conn *, uint64_t),
			int level, const char *why)
{
	uint64_t now = now_ms();
	for (struct pool *p = w->pools; p; p = p->next) {
		struct srv_conn *sc, *next;
		for (sc = TAILQ_FIRST(&p->idle); sc; sc = next) {
			next = TAILQ_NEXT(sc, link);
			if (bad(sc, now))
				conn_close_at(level, sc, why);
		}
	}
}

void pools_free(struct worker *w)
{
	pools_close_all(w);
	while (w->pools) {
		struct pool *p = w->pools;
		w->pools = p->next;
		while (!TAILQ_EMPTY(&p->resetting))
			conn_close(TAILQ_FIRST(&p->resetting), "pgrouter is shutting down");
		params_drop(p->params);
		free(p);
	}
}

static bool unfit(struct srv_conn *sc, uint64_t now)
{
	return !conn_fits(sc);
}

static bool expired(struct srv_conn *sc, uint64_t now)
{
	unsigned idle = cur_cfg->server_idle_timeout_ms;
	return (idle && now - sc->idle_ms >= idle) || too_old(sc, now);
}

static bool any(struct srv_conn *sc, uint64_t now)
{
	return true;
}

void pools_topology_changed(struct worker *w)
{
	/* idle connections to a server that no longer is what they were made for
	 * go at once; those being reset are checked when they would park */
	close_where(w, unfit, LOG_INFO, "its server changed role, left or is draining");
}

void pools_close_all(struct worker *w)
{
	/* idle and resetting connections go; those still held by sessions go when
	 * their sessions end (park() refuses them while draining) */
	close_where(w, any, LOG_DEBUG, "pgrouter is shutting down");
	for (struct pool *p = w->pools; p; p = p->next)
		while (!TAILQ_EMPTY(&p->resetting))
			conn_close(TAILQ_FIRST(&p->resetting), "pgrouter is shutting down");
	evtimer_del(&w->pool_sweep);
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	close_where(w, expired, LOG_DEBUG, "server_idle_timeout or server_lifetime reached");
	bool left = false;
	for (struct pool *p = w->pools; p && !left; p = p->next)
		left = !TAILQ_EMPTY(&p->idle);
	if (left) {
		struct timeval tv = { SWEEP_MS / 1000, (SWEEP_MS % 1000) * 1000 };
		evtimer_add(&w->pool_sweep, &tv);
	}
}

void pool_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	/* give back idle connections other workers need room for */
	for (struct pool *p = w->pools; p; p = p->next) {
		struct srv_conn *sc;
		if (atomic_load_explicit(&p->k->idle, memory_order_relaxed) == 0)
			atomic_store_explicit(&p->k->want_close, 0, memory_order_relaxed);
		while (atomic_load_explicit(&p->k->want_close, memory_order_relaxed) > 0 &&
		       (sc = TAILQ_LAST(&p->idle, srv_conn_list))) {
			atomic_fetch_sub_explicit(&p->k->want_close, 1, memory_order_relaxed);
			conn_close(sc, "another worker needs room in the pool");
		}
	}
	sessions_retry_queued(w);
}

void pools_init(struct worker *w)
{
	event_assign(&w->pool_wake, w->base, -1, 0, pool_wake_cb, w);
	evtimer_assign(&w->pool_sweep, w->base, sweep_cb, w);
}
