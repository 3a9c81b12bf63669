/*
 * console.c — the admin console. psql connects to the database "pgrouter" on
 * an [admin] listen socket and types commands, as with PgBouncer:
 *
 *   SHOW SERVERS | SESSIONS | LISTENERS | STATS | CONFIG | VERSION | HELP
 *   PAUSE [listener]   RESUME [listener]
 *   SET SERVER 'host:port' READY | DRAIN | MAINT
 *   KILL session_id    RELOAD    SHUTDOWN
 *
 * Who gets in: on a Unix socket, a peer (SO_PEERCRED) running as pgrouter's
 * own OS user or root, or as an OS user listed in admin_users; on TCP, a user
 * listed in admin_users who proves its password with SCRAM-SHA-256 against its
 * verifier in auth_file. Nobody else, ever; there is no trust.
 *
 * It runs on the admin thread (admin.c). What only a worker knows (its
 * sessions) is asked of every worker with workers_call(), which waits; a
 * RELOAD waits for the main thread. The console is for operators: a few
 * connections, never on the data path.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "router/router.h"

#define CONSOLE_MSG_MAX (64 * 1024)
#define CALL_TIMEOUT_MS 3000

enum cstate { CS_STARTUP, CS_SASL_FIRST, CS_SASL_FINAL, CS_READY, CS_SKIP_TO_SYNC };

struct conn {
	TAILQ_ENTRY(conn) link;
	struct bufferevent *bev;
	enum cstate st;
	bool unix_socket, closing;
	bool peer_ok;  /* Unix socket: the peer's OS user may administer */
	unsigned negotiations;
	char user[64], database[64], peer[64];
	struct pgw_scram scram;
	struct pgw_scram_verifier v;
	bool known; /* v is a real admin's verifier, not a mock one */
};

static TAILQ_HEAD(, conn) conns = TAILQ_HEAD_INITIALIZER(conns);
static struct evconnlistener *listeners[4];
static unsigned nlisteners;
static char unix_paths[4][108];

/* ---- messages out ------------------------------------------------------ */

static void put_header(uint8_t h[PGW_HEADER_LEN], uint8_t type, size_t n)
{
	h[0] = type;
	pgw_put32(h + 1, (uint32_t)n + 4);
}

static void put_msg(struct evbuffer *out, uint8_t type, const void *body, size_t n)
{
	uint8_t h[PGW_HEADER_LEN];
	put_header(h, type, n);
	evbuffer_add(out, h, sizeof(h));
	if (n)
		evbuffer_add(out, body, n);
}

static void put_error(struct evbuffer *out, const char *severity, const char *sqlstate,
		      const char *msg, const char *hint)
{
	uint8_t buf[2048];
	size_t n = pgw_build_error(buf, sizeof(buf), severity, sqlstate, msg, NULL, hint);
	evbuffer_add(out, buf, n);
}

static void put_ready(struct evbuffer *out)
{
	put_msg(out, 'Z', "I", 1);
}

/* RowDescription: n text columns. */
static void put_columns(struct evbuffer *out, unsigned n, const char *const *names)
{
	struct evbuffer *b = evbuffer_new();
	uint8_t cnt[2] = { (uint8_t)(n >> 8), (uint8_t)n };
	evbuffer_add(b, cnt, 2);
	for (unsigned i = 0; i < n; i++) {
		evbuffer_add(b, names[i], strlen(names[i]) + 1);
		uint8_t f[18] = { 0 };
		pgw_put32(f + 6, 25); /* table oid 0, attnum 0, type text */
		f[10] = 0xff, f[11] = 0xff; /* typlen -1 */
		f[12] = f[13] = f[14] = f[15] = 0xff; /* typmod -1; format 0 (text) */
		evbuffer_add(b, f, sizeof(f));
	}
	size_t len = evbuffer_get_length(b);
	uint8_t h[PGW_HEADER_LEN];
	put_header(h, 'T', len);
	evbuffer_add(out, h, sizeof(h));
	evbuffer_add_buffer(out, b);
	evbuffer_free(b);
}

/* DataRow: n text values (NULL: SQL NULL). */
static void put_row(struct evbuffer *out, unsigned n, const char *const *vals)
{
	size_t len = 2;
	for (unsigned i = 0; i < n; i++)
		len += 4 + (vals[i] ? strlen(vals[i]) : 0);
	uint8_t h[PGW_HEADER_LEN + 2];
	put_header(h, 'D', len);
	h[5] = (uint8_t)(n >> 8), h[6] = (uint8_t)n;
	evbuffer_add(out, h, sizeof(h));
	for (unsigned i = 0; i < n; i++) {
		uint8_t l[4];
		pgw_put32(l, vals[i] ? (uint32_t)strlen(vals[i]) : 0xffffffffu);
		evbuffer_add(out, l, 4);
		if (vals[i])
			evbuffer_add(out, vals[i], strlen(vals[i]));
	}
}

static void put_complete(struct evbuffer *out, const char *tag)
{
	put_msg(out, 'C', tag, strlen(tag) + 1);
}

static void put_rows_done(struct evbuffer *out, const char *cmd, unsigned rows)
{
	char tag[64];
	snprintf(tag, sizeof(tag), "%s %u", cmd, rows);
	put_complete(out, tag);
}

/* ---- what the workers tell ----------------------------------------------- */

static const char *const session_cols[] = { "id",     "listener", "client", "user",
					    "database", "state", "server", "txn",
					    "held",   "tls",      "age_s" };
#define NSESSION_COLS (sizeof(session_cols) / sizeof(session_cols[0]))

static void sessions_fn(struct worker *w, struct wcall_arg *a, struct evbuffer *out)
{
	uint64_t now = now_ms();
	struct session *s;
	TAILQ_FOREACH(s, &w->sessions, link) {
		char id[24], age[24], txn[2] = { 0 }, db[96] = "";
		snprintf(id, sizeof(id), "%llu", (unsigned long long)s->id);
		snprintf(age, sizeof(age), "%.1f", (double)(now - s->started_ms) / 1000.0);
		size_t ul = strlen(s->user);
		if (ul && strncmp(s->who, s->user, ul) == 0 && s->who[ul] == '@')
			snprintf(db, sizeof(db), "%s", s->who + ul + 1);
		if (s->state == SS_RELAY)
			txn[0] = (char)(s->s.scan.txn_status ? s->s.scan.txn_status : 'I');
		const char *state = sess_state_name(s->state);
		if (s->moving)
			state = "moving";
		const char *v[NSESSION_COLS] = { id,
						 s->l->name,
						 s->peer,
						 s->user[0] ? s->user : NULL,
						 db[0] ? db : NULL,
						 state,
						 s->srv ? s->srv->name : NULL,
						 txn[0] ? txn : NULL,
						 s->held ? "yes" : "no",
						 s->c.ssl ? "yes" : "no",
						 age };
		put_row(out, NSESSION_COLS, v);
		a->count++;
	}
}

static void kill_fn(struct worker *w, struct wcall_arg *a, struct evbuffer *out)
{
	struct session *s;
	TAILQ_FOREACH(s, &w->sessions, link)
		if (s->id == a->id) {
			a->count++;
			if (s->state == SS_CLOSING)
				return;
			slog(LOG_WARNING, s, "killed by the admin console (%s)", a->text);
			atomic_fetch_add(&router.admin_kills, 1);
			session_fail(s, "57P01", "terminating connection due to administrator command");
			session_finish(s);
			return;
		}
}

static void pause_fn(struct worker *w, struct wcall_arg *a, struct evbuffer *out)
{
	sessions_pause_changed(w);
	struct session *s;
	TAILQ_FOREACH(s, &w->sessions, link)
		if (s->held || (s->state == SS_QUEUED && listener_paused(s->l)))
			a->count++;
}

/* ---- commands -------------------------------------------------------------- */

/* The next word of a command (quotes ' or " around it are taken off) into
 * buf; NULL at the end. */
static const char *word(const char **p, char *buf, size_t cap)
{
	const char *s = *p;
	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	if (!*s)
		return NULL;
	size_t n = 0;
	if (*s == '\'' || *s == '"') {
		char q = *s++;
		while (*s && *s != q) {
			if (n + 1 < cap)
				buf[n++] = *s;
			s++;
		}
		if (*s)
			s++;
	} else {
		while (*s && *s != ' ' && *s != '\t' && *s != '\n' && *s != '\r') {
			if (n + 1 < cap)
				buf[n++] = *s;
			s++;
		}
	}
	buf[n] = 0;
	*p = s;
	return buf;
}

static const struct listener_config *listener_named(const char *name)
{
	const struct config *c = cur_cfg;
	for (unsigned i = 0; i < c->nlisteners; i++)
		if (strcmp(c->listeners[i].name, name) == 0)
			return &c->listeners[i];
	return NULL;
}

static void show_help(struct evbuffer *out)
{
	static const char *const lines[] = {
		"SHOW SERVERS | SESSIONS | LISTENERS | STATS | CONFIG | VERSION | HELP",
		"PAUSE [listener]    new sessions and new transactions wait",
		"RESUME [listener]",
		"SET SERVER 'host:port' READY | DRAIN | MAINT",
		"KILL session_id",
		"RELOAD              read the configuration file again",
		"SHUTDOWN            as SIGTERM: drain, then exit",
	};
	const char *col[] = { "command" };
	put_columns(out, 1, col);
	for (unsigned i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
		put_row(out, 1, &lines[i]);
	put_rows_done(out, "SHOW", sizeof(lines) / sizeof(lines[0]));
}

static void show_version(struct evbuffer *out)
{
	const char *col[] = { "version" };
	const char *v[] = { "pgrouter " PGROUTER_VERSION };
	put_columns(out, 1, col);
	put_row(out, 1, v);
	put_rows_done(out, "SHOW", 1);
}

static unsigned stat_slot(const struct disc_server *srv)
{
	return srv->id < METRIC_SERVERS ? srv->id : METRIC_SERVERS - 1;
}

static void show_servers(struct evbuffer *out)
{
	static const char *const cols[] = { "server",	 "name",	  "role",	"state",
					    "admin",	 "lag_bytes",	  "sessions",	"pool_total",
					    "pool_idle", "connect_errors", "probe_failures" };
	put_columns(out, 11, cols);
	struct topology *t = topo_acquire();
	unsigned rows = 0;
	for (unsigned k = 0; t && k < t->n; k++) {
		const struct topo_entry *e = &t->e[k];
		char addr[300], lag[24], sess[16], total[16], idle[16], cerr[24], pf[24];
		snprintf(addr, sizeof(addr), strchr(e->srv->host, ':') ? "[%s]:%s" : "%s:%s",
			 e->srv->host, e->srv->port);
		snprintf(lag, sizeof(lag), "%lld", (long long)e->lag_bytes);
		snprintf(sess, sizeof(sess), "%d", atomic_load(&e->srv->sessions));
		int pt, pi;
		pool_counts(e->srv, &pt, &pi);
		snprintf(total, sizeof(total), "%d", pt);
		snprintf(idle, sizeof(idle), "%d", pi);
		uint64_t ce = 0;
		for (unsigned r = 0; r < CONN_ERR_N; r++)
			ce += stats_sum_u(STATS_OFF(s[stat_slot(e->srv)].connect_errors[r]));
		snprintf(cerr, sizeof(cerr), "%llu", (unsigned long long)ce);
		snprintf(pf, sizeof(pf), "%llu", (unsigned long long)atomic_load(&e->srv->probe_failures));
		const char *state = !e->reachable	       ? "unreachable"
				    : e->draining	       ? "switchover"
				    : e->role == DISC_ROLE_PRIMARY && e->in_hot_standby ? "in_recovery"
											     : "up";
		const char *v[] = { addr,
				    e->srv->name,
				    disc_role_name(e->role),
				    state,
				    disc_admin_name(e->admin),
				    e->lag_bytes < 0 ? NULL : lag,
				    sess,
				    total,
				    idle,
				    cerr,
				    pf };
		put_row(out, 11, v);
		rows++;
	}
	topo_release(t);
	put_rows_done(out, "SHOW", rows);
}

static void show_listeners(struct evbuffer *out)
{
	static const char *const cols[] = { "name",	"listen",  "target_session_attrs",
					    "load_balance", "auth",   "pool_mode",
					    "client_tls",   "paused", "clients",
					    "queued",	"accepted", "rejected" };
	put_columns(out, 12, cols);
	const struct config *c = cur_cfg;
	for (unsigned i = 0; i < c->nlisteners; i++) {
		const struct listener_config *l = &c->listeners[i];
		char addr[300], clients[24], queued[24], acc[24], rej[24];
		snprintf(addr, sizeof(addr), strchr(l->host, ':') ? "[%s]:%s" : "%s:%s", l->host,
			 l->port);
		snprintf(clients, sizeof(clients), "%lld",
			 (long long)stats_sum_i(STATS_OFF(l[l->slot].clients)));
		snprintf(queued, sizeof(queued), "%lld",
			 (long long)stats_sum_i(STATS_OFF(l[l->slot].queued)));
		snprintf(acc, sizeof(acc), "%llu",
			 (unsigned long long)stats_sum_u(STATS_OFF(l[l->slot].accepted)));
		uint64_t r = 0;
		for (unsigned k = 0; k < REJ_N; k++)
			r += stats_sum_u(STATS_OFF(l[l->slot].rejected[k]));
		snprintf(rej, sizeof(rej), "%llu", (unsigned long long)r);
		const char *v[] = { l->name,
				    addr,
				    tsa_name(l->tsa),
				    lb_name(l->lb),
				    auth_mode_name(l->auth),
				    pool_mode_name(l->pool_mode),
				    client_tls_name(l->tls.mode),
				    listener_paused(l) ? "yes" : "no",
				    clients,
				    queued,
				    acc,
				    rej };
		put_row(out, 12, v);
	}
	put_rows_done(out, "SHOW", c->nlisteners);
}

static void stat_row(struct evbuffer *out, unsigned *rows, const char *name, double v)
{
	char buf[40];
	snprintf(buf, sizeof(buf), "%.15g", v);
	const char *r[] = { name, buf };
	put_row(out, 2, r);
	(*rows)++;
}

static void show_stats(struct evbuffer *out)
{
	const char *cols[] = { "stat", "value" };
	put_columns(out, 2, cols);
	unsigned rows = 0;
	const struct config *c = cur_cfg;
	uint64_t acc = 0, rej = 0, shed = 0, moved = 0, sent = 0, recv = 0, cerr = 0;
	int64_t clients = 0, queued = 0;
	for (unsigned i = 0; i < c->nlisteners; i++) {
		unsigned sl = c->listeners[i].slot;
		acc += stats_sum_u(STATS_OFF(l[sl].accepted));
		for (unsigned k = 0; k < REJ_N; k++)
			rej += stats_sum_u(STATS_OFF(l[sl].rejected[k]));
		clients += stats_sum_i(STATS_OFF(l[sl].clients));
		queued += stats_sum_i(STATS_OFF(l[sl].queued));
	}
	for (unsigned k = 0; k < METRIC_SERVERS; k++) {
		for (unsigned r = 0; r < SHED_N; r++)
			shed += stats_sum_u(STATS_OFF(s[k].shed[r]));
		for (unsigned r = 0; r < MOVE_N; r++)
			moved += stats_sum_u(STATS_OFF(s[k].moved[r]));
		for (unsigned r = 0; r < CONN_ERR_N; r++)
			cerr += stats_sum_u(STATS_OFF(s[k].connect_errors[r]));
		sent += stats_sum_u(STATS_OFF(s[k].bytes_sent));
		recv += stats_sum_u(STATS_OFF(s[k].bytes_received));
	}
	struct topo_stats ts;
	topo_stats(&ts);
	struct timespec wall;
	clock_gettime(CLOCK_REALTIME, &wall);
	double now = (double)wall.tv_sec + wall.tv_nsec / 1e9;
	stat_row(out, &rows, "uptime_seconds", now - router.start_time);
	stat_row(out, &rows, "clients", (double)clients);
	stat_row(out, &rows, "queued", (double)queued);
	stat_row(out, &rows, "sessions_accepted", (double)acc);
	stat_row(out, &rows, "sessions_rejected", (double)rej);
	stat_row(out, &rows, "sessions_shed", (double)shed);
	stat_row(out, &rows, "sessions_moved", (double)moved);
	stat_row(out, &rows, "sessions_killed", (double)atomic_load(&router.admin_kills));
	stat_row(out, &rows, "server_connect_errors", (double)cerr);
	stat_row(out, &rows, "bytes_to_servers", (double)sent);
	stat_row(out, &rows, "bytes_from_servers", (double)recv);
	stat_row(out, &rows, "topology_publishes", (double)ts.publishes);
	stat_row(out, &rows, "primary_changes", (double)ts.primary_changes);
	stat_row(out, &rows, "discovery_errors", (double)ts.errors);
	stat_row(out, &rows, "reloads_ok", (double)atomic_load(&router.reloads_ok));
	stat_row(out, &rows, "reloads_failed", (double)atomic_load(&router.reloads_failed));
	put_rows_done(out, "SHOW", rows);
}

static bool secret_key(const char *key)
{
	return strstr(key, "password") != NULL;
}

static void show_config(struct evbuffer *out)
{
	const char *cols[] = { "section", "key", "value", "line", "pending_restart" };
	put_columns(out, 5, cols);
	const struct config *c = cur_cfg;
	const char *path[] = { "(file)", "path", c->path, NULL, "no" };
	put_row(out, 5, path);
	for (unsigned i = 0; i < c->nkv; i++) {
		const struct config_kv *kv = &c->kv[i];
		char line[16];
		snprintf(line, sizeof(line), "%d", kv->line);
		const char *v[] = { kv->section, kv->key, secret_key(kv->key) ? "********" : kv->value,
				    line, kv->pending ? "yes" : "no" };
		put_row(out, 5, v);
	}
	put_rows_done(out, "SHOW", c->nkv + 1);
}

/* Run one command; false when it failed (its ErrorResponse is in out). */
static bool command(struct conn *k, const char *cmd, struct evbuffer *out)
{
	char w1[64], w2[300], w3[64], w4[64], extra[8];
	const char *p = cmd;
	if (!word(&p, w1, sizeof(w1)))
		return true;
	const char *a2 = word(&p, w2, sizeof(w2));
	char err[512];

	if (strcasecmp(w1, "SHOW") == 0 && a2 && !word(&p, extra, sizeof(extra))) {
		log_debug("admin console: %s@%s: %s", k->user, k->peer, cmd);
		if (strcasecmp(w2, "HELP") == 0)
			show_help(out);
		else if (strcasecmp(w2, "VERSION") == 0)
			show_version(out);
		else if (strcasecmp(w2, "SERVERS") == 0)
			show_servers(out);
		else if (strcasecmp(w2, "LISTENERS") == 0)
			show_listeners(out);
		else if (strcasecmp(w2, "STATS") == 0)
			show_stats(out);
		else if (strcasecmp(w2, "CONFIG") == 0)
			show_config(out);
		else if (strcasecmp(w2, "SESSIONS") == 0) {
			put_columns(out, NSESSION_COLS, session_cols);
			struct wcall_arg a = { 0 };
			workers_call(sessions_fn, &a, out, CALL_TIMEOUT_MS);
			put_rows_done(out, "SHOW", a.count);
		} else
			goto unknown;
		return true;
	}
	log_info("admin console: %s@%s: %s", k->user, k->peer, cmd);
	if ((strcasecmp(w1, "PAUSE") == 0 || strcasecmp(w1, "RESUME") == 0) &&
	    !word(&p, extra, sizeof(extra))) {
		bool pause = strcasecmp(w1, "PAUSE") == 0;
		unsigned bits = 0;
		if (a2) {
			const struct listener_config *l = listener_named(w2);
			if (!l) {
				snprintf(err, sizeof(err), "listener \"%s\" does not exist", w2);
				put_error(out, "ERROR", "42704", err, "SHOW LISTENERS lists them");
				return false;
			}
			bits = 1u << l->slot;
		} else {
			bits = ~0u;
		}
		if (pause)
			atomic_fetch_or(&router.paused, bits);
		else
			atomic_fetch_and(&router.paused, ~bits);
		struct wcall_arg a = { 0 };
		workers_call(pause_fn, &a, out, CALL_TIMEOUT_MS);
		log_info("admin console: %s %s; %u session(s) waiting", pause ? "paused" : "resumed",
			 a2 ? w2 : "every listener", a.count);
		put_complete(out, pause ? "PAUSE" : "RESUME");
		return true;
	}
	if (strcasecmp(w1, "SET") == 0 && a2 && strcasecmp(w2, "SERVER") == 0 &&
	    word(&p, w3, sizeof(w3)) && word(&p, w4, sizeof(w4)) &&
	    !word(&p, extra, sizeof(extra))) {
		enum disc_admin st;
		if (strcasecmp(w4, "READY") == 0)
			st = DISC_ADMIN_READY;
		else if (strcasecmp(w4, "DRAIN") == 0)
			st = DISC_ADMIN_DRAIN;
		else if (strcasecmp(w4, "MAINT") == 0)
			st = DISC_ADMIN_MAINT;
		else {
			snprintf(err, sizeof(err), "SET SERVER takes READY, DRAIN or MAINT, not \"%s\"",
				 w4);
			put_error(out, "ERROR", "22023", err, NULL);
			return false;
		}
		struct disc_server *srv = disc_server_find(w3);
		if (!srv) {
			snprintf(err, sizeof(err), "server \"%s\" is not known", w3);
			put_error(out, "ERROR", "42704", err, "SHOW SERVERS lists them (host:port)");
			return false;
		}
		topo_set_admin(srv, st);
		log_warning("admin console: %s@%s set server %s %s", k->user, k->peer, srv->name,
			    disc_admin_name(st));
		put_complete(out, "SET");
		return true;
	}
	if (strcasecmp(w1, "KILL") == 0 && a2 && !word(&p, extra, sizeof(extra))) {
		char *end;
		errno = 0;
		unsigned long long id = strtoull(w2, &end, 10);
		if (*end || errno || !*w2) {
			snprintf(err, sizeof(err), "KILL takes a session id (SHOW SESSIONS), not \"%s\"",
				 w2);
			put_error(out, "ERROR", "22023", err, NULL);
			return false;
		}
		struct wcall_arg a = { .id = id };
		snprintf(a.text, sizeof(a.text), "%s@%s", k->user, k->peer);
		workers_call(kill_fn, &a, out, CALL_TIMEOUT_MS);
		if (!a.count) {
			snprintf(err, sizeof(err), "session %llu does not exist", id);
			put_error(out, "ERROR", "42704", err, "SHOW SESSIONS lists them");
			return false;
		}
		put_complete(out, "KILL");
		return true;
	}
	if (strcasecmp(w1, "RELOAD") == 0 && !a2) {
		char msg[1024];
		if (main_reload(msg, sizeof(msg)) != 0) {
			put_error(out, "ERROR", "F0000", msg, "the running configuration stays");
			return false;
		}
		put_complete(out, "RELOAD");
		return true;
	}
	if (strcasecmp(w1, "SHUTDOWN") == 0 && !a2) {
		log_warning("admin console: %s@%s asked for SHUTDOWN", k->user, k->peer);
		put_complete(out, "SHUTDOWN");
		kill(getpid(), SIGTERM);
		return true;
	}
unknown:
	snprintf(err, sizeof(err), "unknown or malformed admin command: %.200s", cmd);
	put_error(out, "ERROR", "42601", err, "SHOW HELP lists the commands");
	return false;
}

/* A Query message: its statements (split at ';' outside quotes), in turn. */
static void query(struct conn *k, char *sql, struct evbuffer *out)
{
	unsigned ran = 0;
	char *start = sql;
	char q = 0;
	for (char *p = sql;; p++) {
		if (q) {
			if (*p == q)
				q = 0;
			else if (!*p)
				q = 0;
		} else if (*p == '\'' || *p == '"') {
			q = *p;
		}
		if (!*p || (!q && *p == ';')) {
			char end = *p;
			*p = 0;
			const char *s = start;
			while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
				s++;
			if (*s) {
				ran++;
				if (!command(k, s, out))
					break;
			}
			if (!end)
				break;
			start = p + 1;
		}
	}
	if (!ran)
		put_msg(out, 'I', NULL, 0); /* EmptyQueryResponse */
	put_ready(out);
}

/* ---- a connection ---------------------------------------------------------- */

static void conn_free(struct conn *k)
{
	TAILQ_REMOVE(&conns, k, link);
	bufferevent_free(k->bev);
	pgw_scram_wipe(k, sizeof(*k));
	free(k);
}

/* FATAL: say it, then close once it is written. */
static void fatal(struct conn *k, const char *sqlstate, const char *msg, const char *hint)
{
	struct evbuffer *out = bufferevent_get_output(k->bev);
	put_error(out, "FATAL", sqlstate, msg, hint);
	k->closing = true;
	bufferevent_disable(k->bev, EV_READ);
}

static bool os_user_may(uid_t uid, const char *admin_users)
{
	if (uid == 0 || uid == geteuid())
		return true;
	char buf[4096];
	struct passwd pw, *r = NULL;
	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &r) != 0 || !r)
		return false;
	return disc_list_has(admin_users, r->pw_name);
}

static void logged_in(struct conn *k)
{
	struct evbuffer *out = bufferevent_get_output(k->bev);
	if (strcmp(k->database, "pgrouter") != 0) {
		char msg[160];
		snprintf(msg, sizeof(msg), "database \"%s\" does not exist", k->database);
		fatal(k, "3D000", msg, "the admin console's database is \"pgrouter\"");
		return;
	}
	uint8_t auth_ok[4] = { 0 };
	put_msg(out, 'R', auth_ok, 4);
	static const char *const params[][2] = {
		{ "server_version", "15.0 (pgrouter " PGROUTER_VERSION " admin console)" },
		{ "server_encoding", "UTF8" },
		{ "client_encoding", "UTF8" },
		{ "DateStyle", "ISO, MDY" },
		{ "integer_datetimes", "on" },
		{ "standard_conforming_strings", "on" },
		{ "is_superuser", "on" },
	};
	for (unsigned i = 0; i < sizeof(params) / sizeof(params[0]); i++) {
		uint8_t buf[256];
		size_t n = pgw_build_parameter_status(buf, sizeof(buf), params[i][0], params[i][1]);
		evbuffer_add(out, buf, n);
	}
	uint8_t key[4] = { 0 };
	uint8_t buf[64];
	size_t n = pgw_build_backend_key(buf, sizeof(buf), 0, key, sizeof(key));
	evbuffer_add(out, buf, n);
	put_ready(out);
	k->st = CS_READY;
	log_info("admin console: %s@%s logged in (%s)", k->user, k->peer,
		 k->unix_socket ? "peer credentials" : "SCRAM-SHA-256");
}

static void startup(struct conn *k, const uint8_t *p, uint32_t len)
{
	struct evbuffer *out = bufferevent_get_output(k->bev);
	struct pgw_first f;
	if (pgw_first_parse(p, len, &f) < 0) {
		fatal(k, "08P01", "invalid startup packet", NULL);
		return;
	}
	if (f.kind == PGW_FIRST_SSL || f.kind == PGW_FIRST_GSSENC) {
		if (++k->negotiations > 2) {
			fatal(k, "08P01", "too many encryption requests", NULL);
			return;
		}
		evbuffer_add(out, "N", 1); /* no TLS on the console: a Unix socket or loopback */
		return;
	}
	if (f.kind == PGW_FIRST_CANCEL) {
		k->closing = true; /* nothing runs long enough here to cancel */
		return;
	}
	snprintf(k->user, sizeof(k->user), "%s", f.user ? f.user : "");
	snprintf(k->database, sizeof(k->database), "%s", f.database ? f.database : "");
	if (PGW_PROTO_MINOR(f.version) > 0) {
		/* NegotiateProtocolVersion: 3.0, and no _pq_ options */
		uint8_t b[8];
		pgw_put32(b, PGW_PROTO(3, 0));
		pgw_put32(b + 4, 0);
		put_msg(out, 'v', b, sizeof(b));
	}
	if (k->unix_socket) {
		if (!k->peer_ok) {
			char msg[160];
			snprintf(msg, sizeof(msg), "peer authentication failed for user \"%s\"", k->user);
			log_warning("admin console: %s refused: its OS user may not administer pgrouter",
				    k->peer);
			fatal(k, "28000", msg,
			      "the admin console admits pgrouter's OS user, root and admin_users");
			return;
		}
		logged_in(k);
		return;
	}
	k->known = auth_admin_verifier(cur_cfg->admin_users, k->user, &k->v);
	uint8_t mech[32];
	size_t n = (size_t)snprintf((char *)mech, sizeof(mech), "SCRAM-SHA-256") + 1;
	mech[n++] = 0;
	uint8_t buf[64];
	size_t m = pgw_build_auth(buf, sizeof(buf), PGW_AUTH_SASL, mech, n);
	evbuffer_add(out, buf, m);
	k->st = CS_SASL_FIRST;
}

static void auth_failed(struct conn *k)
{
	char msg[160];
	snprintf(msg, sizeof(msg), "password authentication failed for user \"%s\"", k->user);
	log_warning("admin console: %s@%s: %s", k->user, k->peer,
		    k->known ? "wrong password" : "not an admin user (admin_users, auth_file)");
	fatal(k, "28P01", msg, NULL);
}

static void sasl(struct conn *k, const uint8_t *body, uint32_t len)
{
	struct evbuffer *out = bufferevent_get_output(k->bev);
	char reply[PGW_SCRAM_MSG_MAX];
	uint8_t buf[PGW_SCRAM_MSG_MAX + 16];
	if (k->st == CS_SASL_FIRST) {
		const char *mech;
		const uint8_t *data;
		uint32_t dlen;
		if (pgw_sasl_initial_parse(body, len, &mech, &data, &dlen) != 0 ||
		    strcmp(mech, "SCRAM-SHA-256") != 0 || !data) {
			fatal(k, "08P01", "expected a SCRAM-SHA-256 SASLInitialResponse", NULL);
			return;
		}
		uint8_t raw[18];
		char nonce[32];
		if (!random_bytes(raw, sizeof(raw))) {
			fatal(k, "58000", "no random bytes for the SCRAM nonce", NULL);
			return;
		}
		pgw_b64_encode(raw, sizeof(raw), nonce, sizeof(nonce));
		int n = pgw_scram_server_first(&k->scram, &k->v, data, dlen, nonce, reply,
					       sizeof(reply));
		if (n < 0 || k->scram.cbind_flag == 'p') {
			fatal(k, "08P01", "malformed SCRAM message (or channel binding, which needs "
					  "TLS)", NULL);
			return;
		}
		size_t m = pgw_build_auth(buf, sizeof(buf), 11, reply, (size_t)n);
		evbuffer_add(out, buf, m);
		k->st = CS_SASL_FINAL;
		return;
	}
	uint8_t client_key[PGW_SCRAM_KEY_LEN];
	int n = pgw_scram_server_final(&k->scram, &k->v, body, len, NULL, 0, client_key, reply,
				       sizeof(reply));
	pgw_scram_wipe(client_key, sizeof(client_key));
	if (n == PGW_SCRAM_BAD_PROOF || (n >= 0 && !k->known)) {
		auth_failed(k);
		return;
	}
	if (n < 0) {
		fatal(k, "08P01", "malformed SCRAM message", NULL);
		return;
	}
	size_t m = pgw_build_auth(buf, sizeof(buf), 12, reply, (size_t)n);
	evbuffer_add(out, buf, m);
	logged_in(k);
}

static void message(struct conn *k, uint8_t type, const uint8_t *body, uint32_t len)
{
	struct evbuffer *out = bufferevent_get_output(k->bev);
	if (k->st == CS_SASL_FIRST || k->st == CS_SASL_FINAL) {
		if (type != 'p') {
			fatal(k, "08P01", "expected a SASL response", NULL);
			return;
		}
		sasl(k, body, len);
		return;
	}
	switch (type) {
	case 'Q': {
		char *sql = malloc(len + 1);
		if (!sql) {
			fatal(k, "53200", "out of memory", NULL);
			return;
		}
		memcpy(sql, body, len);
		sql[len] = 0;
		if (k->st == CS_READY)
			query(k, sql, out);
		free(sql);
		return;
	}
	case 'X':
		k->closing = true;
		return;
	case 'S':
		k->st = CS_READY;
		put_ready(out);
		return;
	case 'H':
		return;
	case 'P': case 'B': case 'D': case 'E': case 'C': case 'F':
		if (k->st != CS_SKIP_TO_SYNC)
			put_error(out, "ERROR", "0A000",
				  "the admin console speaks the simple query protocol only", NULL);
		k->st = CS_SKIP_TO_SYNC;
		return;
	default: {
		char msg[80];
		snprintf(msg, sizeof(msg), "invalid frontend message type %d", type);
		fatal(k, "08P01", msg, NULL);
	}
	}
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *k = arg;
	config_thread_refresh(); /* what it does, it does with the current generation */
	struct evbuffer *in = bufferevent_get_input(bev);
	while (!k->closing) {
		size_t have = evbuffer_get_length(in);
		if (k->st == CS_STARTUP) {
			uint8_t h[4];
			if (evbuffer_copyout(in, h, 4) < 4)
				break;
			int len = pgw_first_len(h, 4);
			if (len < 0) {
				k->closing = true; /* as PostgreSQL: not even a message */
				break;
			}
			if (have < (size_t)len)
				break;
			const uint8_t *p = evbuffer_pullup(in, len);
			startup(k, p, (uint32_t)len);
			evbuffer_drain(in, (size_t)len);
			continue;
		}
		uint8_t type;
		uint32_t body;
		bool bad = false;
		const uint8_t *p = msg_next(in, CONSOLE_MSG_MAX, &type, &body, &bad);
		if (bad) {
			fatal(k, "08P01", "invalid message length", NULL);
			break;
		}
		if (!p)
			break;
		message(k, type, p + PGW_HEADER_LEN, body);
		evbuffer_drain(in, PGW_HEADER_LEN + body);
	}
	if (k->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		conn_free(k);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *k = arg;
	if (k->closing)
		conn_free(k);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		conn_free(arg);
}

static void accept_cb(struct evconnlistener *el, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	config_thread_refresh();
	struct conn *k = calloc(1, sizeof(*k));
	struct bufferevent *bev = k ? bufferevent_socket_new(evconnlistener_get_base(el), fd,
							    BEV_OPT_CLOSE_ON_FREE)
				    : NULL;
	if (!bev) {
		free(k);
		close(fd);
		return;
	}
	k->bev = bev;
	TAILQ_INSERT_TAIL(&conns, k, link);
	k->unix_socket = sa->sa_family == AF_UNIX;
	if (k->unix_socket) {
		struct ucred cr;
		socklen_t l = sizeof(cr);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) == 0) {
			k->peer_ok = os_user_may(cr.uid, cur_cfg->admin_users);
			snprintf(k->peer, sizeof(k->peer), "unix:uid=%u,pid=%d", (unsigned)cr.uid,
				 (int)cr.pid);
		} else {
			snprintf(k->peer, sizeof(k->peer), "unix:?");
		}
	} else {
		sockaddr_describe(sa, k->peer, sizeof(k->peer));
	}
	bufferevent_setcb(bev, read_cb, write_cb, event_cb, k);
	bufferevent_enable(bev, EV_READ);
}

int console_start(struct event_base *base, const struct config *c, char *err, size_t errlen)
{
	for (unsigned i = 0; i < c->nconsole; i++) {
		const struct console_listen *cl = &c->console[i];
		struct evconnlistener *el = NULL;
		unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
		if (cl->unix_socket) {
			struct sockaddr_un un = { .sun_family = AF_UNIX };
			snprintf(un.sun_path, sizeof(un.sun_path), "%s", cl->path);
			/* a socket left by a pgrouter that died; one that answers is in use */
			int probe = socket(AF_UNIX, SOCK_STREAM, 0);
			if (probe >= 0 && connect(probe, (struct sockaddr *)&un, sizeof(un)) == 0) {
				close(probe);
				snprintf(err, errlen, "%s:%d: listen: %s is in use by another process",
					 c->path, c->console_line, cl->path);
				return -1;
			}
			if (probe >= 0)
				close(probe);
			unlink(cl->path);
			el = evconnlistener_new_bind(base, accept_cb, NULL, flags, 64,
						     (struct sockaddr *)&un, sizeof(un));
			if (el) {
				/* anyone may connect, as to PostgreSQL's socket (its directory
				 * can restrict that); the peer's credentials decide */
				chmod(cl->path, 0777);
				snprintf(unix_paths[nlisteners], sizeof(unix_paths[0]), "%s", cl->path);
			}
		} else {
			struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC,
							 .ai_socktype = SOCK_STREAM,
							 .ai_flags = EVUTIL_AI_PASSIVE };
			struct evutil_addrinfo *ai = NULL;
			if (evutil_getaddrinfo(cl->host, cl->port, &hints, &ai) == 0 && ai) {
				el = evconnlistener_new_bind(base, accept_cb, NULL, flags, 64,
							     ai->ai_addr, (int)ai->ai_addrlen);
				evutil_freeaddrinfo(ai);
			}
		}
		if (!el) {
			snprintf(err, errlen, "%s:%d: listen: cannot listen on %s: %s", c->path,
				 c->console_line, cl->unix_socket ? cl->path : cl->host,
				 strerror(errno));
			return -1;
		}
		listeners[nlisteners++] = el;
		log_info("admin console on %s%s%s (psql -d pgrouter)",
			 cl->unix_socket ? cl->path : cl->host, cl->unix_socket ? "" : ":",
			 cl->unix_socket ? "" : cl->port);
	}
	return 0;
}

void console_stop(void)
{
	struct conn *k;
	/* what is answered is sent: SHUTDOWN's own reply is still queued when
	 * the drain it started ends this thread (best effort, never blocks) */
	while ((k = TAILQ_FIRST(&conns)) != NULL) {
		evbuffer_write(bufferevent_get_output(k->bev), bufferevent_getfd(k->bev));
		conn_free(k);
	}
	for (unsigned i = 0; i < nlisteners; i++) {
		evconnlistener_free(listeners[i]);
		if (unix_paths[i][0])
			unlink(unix_paths[i]);
		unix_paths[i][0] = 0;
	}
	nlisteners = 0;
}
