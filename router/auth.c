/*
 * auth.c — what pgrouter knows of users' passwords: verifiers, never passwords.
 *
 *   worker: auth_lookup(user) ─▶ trust list? auth_file? cache (fresh)? ─▶ FOUND
 *                 │ not cached / expired
 *                 ▼
 *           entry PENDING, main thread kicked ─▶ auth_query on one libpq connection
 *                                                 (non-blocking, main event loop,
 *                                                  to the primary or any reachable
 *                                                  server: members share pg_authid)
 *                                                      │ row / no row / error
 *                 ┌────────────────────────────────────┘
 *                 ▼
 *           entry FOUND / MISSING / ERROR, every worker waiting is woken
 *           (worker->auth_done) and its sessions look again
 *
 * The cache and the auth_file table sit under one mutex, touched once or twice
 * per login, never per message. An unknown user gets a mock verifier derived
 * from a secret made at start, so that its exchange looks exactly like a wrong
 * password's (PostgreSQL's "mock authentication").
 */
#include <ctype.h>
#include <errno.h>
#include <event2/event.h>
#include <libpq-fe.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router/router.h"

#define ERROR_TTL_MS 1000   /* a failed lookup is retried after this */
#define LOST_RETRIES 8      /* connections lost in a row before a lookup fails */
#define ANSWER_FRESH_MS 1000 /* an answer this young serves, whatever auth_cache_ttl */
#define RETRY_MS 250        /* no server to ask: look again */
#define USER_MAX 64

enum entry_state { E_PENDING, E_QUERYING, E_FOUND, E_MISSING, E_ERROR };

struct entry {
	struct entry *next;
	enum entry_state state;
	uint64_t at_ms;            /* when it was fetched */
	uint64_t waiters;          /* bit = worker id (ids >= 64 share bit 63) */
	unsigned lost;             /* connections lost in a row while asking */
	char user[USER_MAX];
	char value[512];           /* verifier, or the error for E_ERROR */
};

struct file_user {
	char user[USER_MAX];
	char verifier[512];
};

#define BUCKETS 1024u
static struct {
	pthread_mutex_t lock;
	struct entry *buckets[BUCKETS];
	struct file_user *file;    /* auth_file, sorted by nothing: scanned */
	unsigned nfile;
	uint8_t secret[32];        /* for mock verifiers */
	const struct config *cfg;
	const struct disc_probe_config *pc; /* the servers' database and TLS settings */
	bool query_on;
	/* main thread only */
	struct event_base *base;
	struct event *kick, *io, *retry, *deadline;
	PGconn *conn;
	struct disc_server *conn_srv;
	struct entry *busy;        /* the entry whose query is in flight */
	bool connecting;
} A = { .lock = PTHREAD_MUTEX_INITIALIZER };

static unsigned bucket(const char *user)
{
	uint32_t h = 2166136261u;
	for (const char *p = user; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	return h & (BUCKETS - 1);
}

/* ---- auth_file: PgBouncer's userlist format --------------------------- */

/* One "quoted" field ("" is a quote inside); returns the byte after it or NULL. */
static const char *quoted(const char *p, char *out, size_t cap)
{
	if (*p != '"')
		return NULL;
	size_t n = 0;
	for (p++;; p++) {
		if (*p == 0)
			return NULL;
		if (*p == '"') {
			if (p[1] != '"')
				break;
			p++;
		}
		if (n + 1 >= cap)
			return NULL;
		out[n++] = *p;
	}
	out[n] = 0;
	return p + 1;
}

static bool verifier_usable(const char *v)
{
	struct pgw_scram_verifier sv;
	return pgw_scram_parse_verifier(v, &sv) == 0 || pgw_md5_verifier_ok(v);
}

int auth_file_load(const struct config *c, char *err, size_t errlen)
{
	if (!c->auth_file[0])
		return 0;
	FILE *f = fopen(c->auth_file, "r");
	if (!f) {
		snprintf(err, errlen, "%s:%d: auth_file: cannot read %s: %s", c->path,
			 c->auth_file_line, c->auth_file, strerror(errno));
		return -1;
	}
	struct file_user *users = NULL;
	unsigned n = 0, cap = 0;
	char line[2048];
	int lineno = 0, rc = 0;
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		char *p = line;
		while (isspace((unsigned char)*p))
			p++;
		if (!*p || *p == ';' || *p == '#')
			continue;
		struct file_user u;
		const char *q = quoted(p, u.user, sizeof(u.user));
		while (q && (*q == ' ' || *q == '\t'))
			q++;
		q = q ? quoted(q, u.verifier, sizeof(u.verifier)) : NULL;
		if (!q || !u.user[0]) {
			snprintf(err, errlen, "%s:%d: expected \"user\" \"verifier\"", c->auth_file,
				 lineno);
			rc = -1;
			break;
		}
		if (!verifier_usable(u.verifier)) {
			/* pgrouter never holds a password, so a plaintext one is refused */
			snprintf(err, errlen,
				 "%s:%d: user \"%s\": not a SCRAM-SHA-256 or md5 verifier (plaintext "
				 "passwords are not accepted; copy pg_authid.rolpassword)",
				 c->auth_file, lineno, u.user);
			rc = -1;
			break;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			struct file_user *nu = realloc(users, cap * sizeof(*users));
			if (!nu) {
				snprintf(err, errlen, "%s: out of memory", c->auth_file);
				rc = -1;
				break;
			}
			users = nu;
		}
		users[n++] = u;
		pgw_scram_wipe(&u, sizeof(u));
	}
	fclose(f);
	pgw_scram_wipe(line, sizeof(line));
	if (rc != 0) {
		if (users)
			pgw_scram_wipe(users, n * sizeof(*users));
		free(users);
		return -1;
	}
	pthread_mutex_lock(&A.lock);
	struct file_user *old = A.file;
	unsigned oldn = A.nfile;
	A.file = users;
	A.nfile = n;
	pthread_mutex_unlock(&A.lock);
	if (old)
		pgw_scram_wipe(old, oldn * sizeof(*old));
	free(old);
	return 0;
}

/* ---- verifiers into credentials --------------------------------------- */

static bool cred_from(const char *verifier, struct cred *out)
{
	memset(out, 0, sizeof(*out));
	if (pgw_scram_parse_verifier(verifier, &out->scram) == 0) {
		out->kind = CRED_SCRAM;
		return true;
	}
	if (pgw_md5_verifier_ok(verifier)) {
		out->kind = CRED_MD5;
		memcpy(out->md5, verifier, PGW_MD5_LEN + 1);
		return true;
	}
	return false;
}

/* A SCRAM verifier no password matches, the same for the same user every time. */
static void mock(const char *user, struct cred *out)
{
	memset(out, 0, sizeof(*out));
	out->kind = CRED_SCRAM;
	out->mock = true;
	uint8_t h[32];
	unsigned l = sizeof(h);
	HMAC(EVP_sha256(), A.secret, sizeof(A.secret), (const uint8_t *)user, strlen(user), h, &l);
	out->scram.iterations = 4096;
	out->scram.salt_len = 16;
	memcpy(out->scram.salt, h, 16);
	HMAC(EVP_sha256(), h, sizeof(h), (const uint8_t *)"stored", 6, out->scram.stored_key, &l);
	HMAC(EVP_sha256(), h, sizeof(h), (const uint8_t *)"server", 6, out->scram.server_key, &l);
}

bool auth_admin_verifier(const char *admin_users, const char *user,
			 struct pgw_scram_verifier *out)
{
	struct cred c;
	bool ok = false;
	if (disc_list_has(admin_users, user) && strlen(user) < USER_MAX) {
		pthread_mutex_lock(&A.lock);
		for (unsigned i = 0; i < A.nfile && !ok; i++)
			if (strcmp(A.file[i].user, user) == 0)
				ok = cred_from(A.file[i].verifier, &c) && c.kind == CRED_SCRAM;
		pthread_mutex_unlock(&A.lock);
	}
	if (!ok)
		mock(user, &c);
	*out = c.scram;
	pgw_scram_wipe(&c, sizeof(c));
	return ok;
}

static struct entry *find(const char *user)
{
	for (struct entry *e = A.buckets[bucket(user)]; e; e = e->next)
		if (strcmp(e->user, user) == 0)
			return e;
	return NULL;
}

static void wake_waiters(struct entry *e)
{
	uint64_t w = e->waiters;
	e->waiters = 0;
	for (unsigned i = 0; i < router.nworkers && router.workers; i++)
		if (w & (1ull << (i < 64 ? i : 63)))
			event_active(&router.workers[i].auth_done, EV_READ, 0);
}

int auth_lookup(struct worker *w, const char *user, struct cred *out, char *why, size_t whylen)
{
	const struct config *c = cur_cfg; /* the worker's generation (A.cfg is the main thread's) */
	if (disc_list_has(c->auth_trust_users, user)) {
		memset(out, 0, sizeof(*out));
		out->kind = CRED_TRUST;
		return AUTH_FOUND;
	}
	if (strlen(user) >= USER_MAX) {
		mock(user, out);
		return AUTH_FOUND;
	}
	pthread_mutex_lock(&A.lock);
	for (unsigned i = 0; i < A.nfile; i++)
		if (strcmp(A.file[i].user, user) == 0) {
			bool ok = cred_from(A.file[i].verifier, out);
			pthread_mutex_unlock(&A.lock);
			if (!ok)
				mock(user, out);
			return AUTH_FOUND;
		}
	if (!A.query_on) {
		pthread_mutex_unlock(&A.lock);
		mock(user, out);
		return AUTH_FOUND;
	}
	uint64_t now = now_ms();
	struct entry *e = find(user);
	if (e) {
		uint64_t age = now - e->at_ms;
		switch (e->state) {
		case E_FOUND:
		case E_MISSING:
			/* an answer serves the logins that waited for it even with a
			 * short or zero auth_cache_ttl (which asked again and again) */
			if (age < c->auth_cache_ttl_ms || age < ANSWER_FRESH_MS) {
				bool ok = e->state == E_FOUND && cred_from(e->value, out);
				pthread_mutex_unlock(&A.lock);
				if (!ok)
					mock(user, out);
				return AUTH_FOUND;
			}
			break;
		case E_ERROR:
			if (age < ERROR_TTL_MS) {
				snprintf(why, whylen, "%s", e->value);
				pthread_mutex_unlock(&A.lock);
				return AUTH_UNAVAILABLE;
			}
			break;
		default: /* pending or querying: wait with the others */
			e->waiters |= 1ull << (w->id < 64 ? w->id : 63);
			pthread_mutex_unlock(&A.lock);
			return AUTH_PENDING;
		}
	} else {
		e = calloc(1, sizeof(*e));
		if (!e) {
			pthread_mutex_unlock(&A.lock);
			snprintf(why, whylen, "out of memory");
			return AUTH_UNAVAILABLE;
		}
		snprintf(e->user, sizeof(e->user), "%s", user);
		unsigned b = bucket(user);
		e->next = A.buckets[b];
		A.buckets[b] = e;
	}
	e->state = E_PENDING;
	e->waiters |= 1ull << (w->id < 64 ? w->id : 63);
	pthread_mutex_unlock(&A.lock);
	event_active(A.kick, EV_READ, 0);
	return AUTH_PENDING;
}

void auth_forget(const char *user)
{
	pthread_mutex_lock(&A.lock);
	struct entry *e = find(user);
	if (e && (e->state == E_FOUND || e->state == E_MISSING))
		e->at_ms = 0; /* expired: the next login asks the server again */
	pthread_mutex_unlock(&A.lock);
}

/* ---- auth_query on the main thread ------------------------------------ */

static void next_query(void);

static void drop_conn(void)
{
	if (A.io) {
		event_free(A.io);
		A.io = NULL;
	}
	if (A.conn) {
		PQfinish(A.conn);
		A.conn = NULL;
	}
	A.conn_srv = NULL;
	A.connecting = false;
}

/* The busy entry is answered (state set by the caller): wake its waiters. */
static void answered(enum entry_state st, const char *value)
{
	event_del(A.deadline);
	pthread_mutex_lock(&A.lock);
	struct entry *e = A.busy;
	A.busy = NULL;
	if (e) {
		e->state = st;
		e->lost = 0;
		e->at_ms = now_ms();
		snprintf(e->value, sizeof(e->value), "%s", value ? value : "");
		wake_waiters(e);
	}
	pthread_mutex_unlock(&A.lock);
	event_active(A.kick, EV_READ, 0);
}

/* The lookup failed. Its connection lost (a switchover stops the server it
 * asked, say): asked again on whatever is reachable then, LOST_RETRIES times,
 * RETRY_MS apart — the sessions waiting are bounded by their own timers. An
 * error from the query itself is the answer. */
static void failed(const char *what, const char *detail, bool connection)
{
	char why[512];
	snprintf(why, sizeof(why), "%s%s", what, detail ? detail : "");
	why[strcspn(why, "\n")] = 0;
	drop_conn();
	pthread_mutex_lock(&A.lock);
	struct entry *e = A.busy;
	bool again = connection && e && e->lost < LOST_RETRIES;
	if (again) {
		e->lost++;
		e->state = E_PENDING;
		A.busy = NULL;
	}
	pthread_mutex_unlock(&A.lock);
	if (again) {
		log_warning("auth_query: %s; asking again", why);
		event_del(A.deadline);
		struct timeval tv = { 0, RETRY_MS * 1000 };
		event_add(A.retry, &tv);
		return;
	}
	log_warning("auth_query: %s", why);
	answered(E_ERROR, why);
}

static void io_cb(evutil_socket_t fd, short what, void *arg);

static void watch(short what)
{
	if (A.io)
		event_free(A.io);
	A.io = event_new(A.base, PQsocket(A.conn), what, io_cb, NULL);
	if (A.io)
		event_add(A.io, NULL);
}

static void send_query(void)
{
	const char *params[1] = { A.busy->user };
	if (!PQsendQueryParams(A.conn, A.cfg->auth_query, 1, NULL, params, NULL, NULL, 0)) {
		failed("cannot send: ", PQerrorMessage(A.conn), true);
		return;
	}
	int f = PQflush(A.conn);
	if (f < 0) {
		failed("cannot send: ", PQerrorMessage(A.conn), true);
		return;
	}
	watch(f ? EV_READ | EV_WRITE : EV_READ);
}

static void read_result(void)
{
	if (!PQconsumeInput(A.conn) || PQflush(A.conn) < 0) {
		failed("", PQerrorMessage(A.conn), true);
		return;
	}
	if (PQisBusy(A.conn)) {
		watch(EV_READ);
		return;
	}
	enum entry_state st = E_ERROR;
	char value[512] = "no result";
	PGresult *r;
	while ((r = PQgetResult(A.conn))) {
		if (PQresultStatus(r) == PGRES_TUPLES_OK && PQnfields(r) >= 2) {
			if (PQntuples(r) == 0 || PQgetisnull(r, 0, 1)) {
				st = E_MISSING; /* no such login role, or no password */
				value[0] = 0;
			} else if (PQntuples(r) == 1) {
				snprintf(value, sizeof(value), "%s", PQgetvalue(r, 0, 1));
				st = verifier_usable(value) ? E_FOUND : E_MISSING;
				if (st == E_MISSING)
					log_warning("auth_query: the password of user \"%s\" is "
						    "stored neither as SCRAM-SHA-256 nor md5; "
						    "logins fail", A.busy->user);
			} else {
				snprintf(value, sizeof(value), "auth_query returned %d rows",
					 PQntuples(r));
			}
		} else if (PQresultStatus(r) == PGRES_TUPLES_OK) {
			snprintf(value, sizeof(value), "auth_query must return (name, verifier)");
		} else {
			snprintf(value, sizeof(value), "%s", PQresultErrorMessage(r));
		}
		PQclear(r);
	}
	if (A.io) {
		event_free(A.io);
		A.io = NULL;
	}
	if (st == E_ERROR) {
		/* a FATAL that ended the connection (its server shutting down, a
		 * terminated backend) is a lost connection, not the query's answer */
		failed("", value, PQstatus(A.conn) == CONNECTION_BAD);
		return;
	}
	log_debug("auth_query: user \"%s\" %s", A.busy->user,
		  st == E_FOUND ? "found" : "unknown or without password");
	answered(st, value);
	pgw_scram_wipe(value, sizeof(value));
}

static void poll_connect(void)
{
	switch (PQconnectPoll(A.conn)) {
	case PGRES_POLLING_READING:
		watch(EV_READ);
		break;
	case PGRES_POLLING_WRITING:
		watch(EV_WRITE);
		break;
	case PGRES_POLLING_OK:
		A.connecting = false;
		send_query();
		break;
	default:
		failed("connect: ", PQerrorMessage(A.conn), true);
		break;
	}
}

static void io_cb(evutil_socket_t fd, short what, void *arg)
{
	if (A.connecting)
		poll_connect();
	else
		read_result();
}

/* Where to ask: the primary if one is routable, else any reachable server. */
static struct disc_server *pick_server(void)
{
	struct topology *t = topo_acquire();
	struct disc_server *srv = NULL;
	for (unsigned i = 0; t && i < t->n && !srv; i++)
		if (t->e[i].reachable && t->e[i].role == DISC_ROLE_PRIMARY)
			srv = t->e[i].srv;
	for (unsigned i = 0; t && i < t->n && !srv; i++)
		if (t->e[i].reachable)
			srv = t->e[i].srv;
	/* keep a connection that still goes somewhere reachable */
	for (unsigned i = 0; t && A.conn_srv && i < t->n; i++)
		if (t->e[i].srv == A.conn_srv && t->e[i].reachable)
			srv = A.conn_srv;
	topo_release(t);
	return srv;
}

static void open_conn(struct disc_server *srv)
{
	A.conn = disc_pq_start(srv, A.pc, A.cfg->auth_user, A.cfg->auth_password, "pgrouter-auth");
	A.conn_srv = srv;
	if (!A.conn || PQstatus(A.conn) == CONNECTION_BAD) {
		failed("connect: ", A.conn ? PQerrorMessage(A.conn) : "out of memory", true);
		return;
	}
	A.connecting = true;
	watch(EV_WRITE);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	char why[64];
	snprintf(why, sizeof(why), "%u ms", A.cfg->connect_timeout_ms);
	failed("no answer within ", why, true);
}

static void next_query(void)
{
	if (A.busy)
		return;
	pthread_mutex_lock(&A.lock);
	struct entry *e = NULL;
	for (unsigned b = 0; b < BUCKETS && !e; b++)
		for (struct entry *x = A.buckets[b]; x && !e; x = x->next)
			if (x->state == E_PENDING)
				e = x;
	if (e)
		e->state = E_QUERYING;
	A.busy = e;
	pthread_mutex_unlock(&A.lock);
	if (!e)
		return;
	struct disc_server *srv = pick_server();
	if (!srv) {
		/* nothing reachable (a failover, or the start): wait for one; the
		 * sessions that wait are bounded by their own timers */
		pthread_mutex_lock(&A.lock);
		e->state = E_PENDING;
		A.busy = NULL;
		pthread_mutex_unlock(&A.lock);
		drop_conn();
		struct timeval tv = { 0, RETRY_MS * 1000 };
		event_add(A.retry, &tv);
		return;
	}
	struct timeval tv = { A.cfg->connect_timeout_ms / 1000,
			      (A.cfg->connect_timeout_ms % 1000) * 1000 };
	event_add(A.deadline, &tv);
	if (A.conn && (A.conn_srv != srv || PQstatus(A.conn) != CONNECTION_OK))
		drop_conn();
	if (A.conn)
		send_query();
	else
		open_conn(srv);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
	next_query();
}

static bool streq(const char *a, const char *b)
{
	return strcmp(a ? a : "", b ? b : "") == 0;
}

void auth_reconfigure(const struct config *c, const struct disc_probe_config *pc)
{
	const struct config *o = A.cfg;
	bool same = streq(o->auth_query, c->auth_query) && streq(o->auth_user, c->auth_user) &&
		    streq(o->auth_password, c->auth_password) && streq(A.pc->dbname, pc->dbname) &&
		    streq(A.pc->sslmode, pc->sslmode) && streq(A.pc->sslrootcert, pc->sslrootcert) &&
		    streq(A.pc->sslcert, pc->sslcert) && streq(A.pc->sslkey, pc->sslkey);
	A.cfg = c;
	A.pc = pc;
	pthread_mutex_lock(&A.lock);
	A.query_on = c->auth_query_line || !c->auth_file[0];
	struct entry *e = same ? NULL : A.busy;
	if (e) {
		e->state = E_PENDING; /* asked again, the new way */
		A.busy = NULL;
	}
	pthread_mutex_unlock(&A.lock);
	if (!same) {
		event_del(A.deadline);
		drop_conn();
		event_active(A.kick, EV_READ, 0);
	}
}

int auth_start(struct event_base *base, const struct config *c,
	       const struct disc_probe_config *pc, char *err, size_t errlen)
{
	A.cfg = c;
	A.pc = pc;
	A.base = base;
	if (RAND_bytes(A.secret, sizeof(A.secret)) != 1) {
		snprintf(err, errlen, "no random bytes for the mock-authentication secret");
		return -1;
	}
	/* auth_query is used when it was set, or when there is no auth_file */
	A.query_on = c->auth_query_line || !c->auth_file[0];
	A.kick = event_new(base, -1, 0, kick_cb, NULL);
	A.retry = evtimer_new(base, kick_cb, NULL);
	A.deadline = evtimer_new(base, deadline_cb, NULL);
	if (!A.kick || !A.retry || !A.deadline) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	return auth_file_load(c, err, errlen);
}

void auth_stop(void)
{
	drop_conn();
	if (A.kick)
		event_free(A.kick);
	if (A.retry)
		event_free(A.retry);
	if (A.deadline)
		event_free(A.deadline);
	A.kick = A.retry = A.deadline = NULL;
	for (unsigned b = 0; b < BUCKETS; b++)
		while (A.buckets[b]) {
			struct entry *e = A.buckets[b];
			A.buckets[b] = e->next;
			pgw_scram_wipe(e, sizeof(*e));
			free(e);
		}
	if (A.file)
		pgw_scram_wipe(A.file, A.nfile * sizeof(*A.file));
	free(A.file);
	A.file = NULL;
	A.nfile = 0;
	pgw_scram_wipe(A.secret, sizeof(A.secret));
}
