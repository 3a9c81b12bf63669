/*
 * probe.c — SQL probe of one server with libpq's non-blocking API.
 *
 *   tick ──▶ connect (PQconnectStartParams/PQconnectPoll, socket on base)
 *               │ CONNECTION_OK            any failure or deadline
 *               ▼                                   │
 *           PQsendQuery ──▶ results ──▶ done() ◀────┘ (connection dropped)
 *               ▲                           │
 *               └────── next tick ◀─────────┘ (connection kept)
 *
 * The connection is kept between rounds: a probe costs one round trip, and a
 * server that stops is seen at the next round (its socket reports EOF).
 */
#include <event2/event.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "discovery/internal.h"

static const char probe_sql[] =
	"SELECT pg_catalog.pg_is_in_recovery(),"
	" pg_catalog.current_setting('default_transaction_read_only')::bool,"
	" CASE WHEN pg_catalog.pg_is_in_recovery()"
	"  THEN pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_replay_lsn(), '0/0')"
	"  ELSE pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), '0/0') END::bigint";

enum probe_state { P_IDLE, P_CONNECTING, P_QUERYING };

struct probe {
	struct event_base *base;
	struct disc_server *srv;
	const struct disc_probe_config *pc;
	probe_done_fn done;
	void *arg;
	PGconn *conn;
	enum probe_state state;
	struct event *io;       /* on PQsocket(conn), re-armed as libpq asks */
	struct event *tick;     /* next round */
	struct event *deadline; /* bound of the current round */
	uint64_t started_us;    /* the current round's start */
};

static uint64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void probe_io_cb(evutil_socket_t fd, short what, void *arg);

static struct timeval ms_tv(unsigned ms)
{
	return (struct timeval){ .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
}

static void watch(struct probe *p, short what)
{
	if (p->io)
		event_free(p->io);
	p->io = event_new(p->base, PQsocket(p->conn), what, probe_io_cb, p);
	if (p->io)
		event_add(p->io, NULL);
}

static void finish_round(struct probe *p, struct probe_result *r, bool keep)
{
	if (p->io) {
		event_free(p->io);
		p->io = NULL;
	}
	event_del(p->deadline);
	if (!keep && p->conn) {
		PQfinish(p->conn);
		p->conn = NULL;
	}
	p->state = P_IDLE;
	/* for /metrics: this thread is the only writer */
	atomic_store_explicit(&p->srv->probes, atomic_load_explicit(&p->srv->probes,
				memory_order_relaxed) + 1, memory_order_relaxed);
	if (!r->reachable)
		atomic_store_explicit(&p->srv->probe_failures,
				      atomic_load_explicit(&p->srv->probe_failures,
							   memory_order_relaxed) + 1,
				      memory_order_relaxed);
	atomic_store_explicit(&p->srv->probe_last_us, mono_us() - p->started_us,
			      memory_order_relaxed);
	struct timeval tv = ms_tv(p->pc->interval_ms);
	event_add(p->tick, &tv);
	p->done(p->arg, p->srv, r);
}

static void fail(struct probe *p, const char *why)
{
	struct probe_result r = { .reachable = false, .wal_bytes = -1 };
	snprintf(r.error, sizeof(r.error), "%s", why);
	/* libpq messages end with a newline */
	r.error[strcspn(r.error, "\n")] = 0;
	finish_round(p, &r, false);
}

static void send_query(struct probe *p)
{
	if (!PQsendQuery(p->conn, probe_sql)) {
		fail(p, PQerrorMessage(p->conn));
		return;
	}
	p->state = P_QUERYING;
	int f = PQflush(p->conn);
	if (f < 0) {
		fail(p, PQerrorMessage(p->conn));
		return;
	}
	watch(p, f ? EV_READ | EV_WRITE : EV_READ);
}

static void read_results(struct probe *p)
{
	if (!PQconsumeInput(p->conn)) {
		fail(p, PQerrorMessage(p->conn));
		return;
	}
	if (PQflush(p->conn) < 0) {
		fail(p, PQerrorMessage(p->conn));
		return;
	}
	if (PQisBusy(p->conn)) {
		watch(p, EV_READ);
		return;
	}
	struct probe_result r = { .reachable = true, .wal_bytes = -1 };
	bool ok = false;
	char why[160] = "no result";
	PGresult *res;
	while ((res = PQgetResult(p->conn))) {
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
		    PQnfields(res) == 3) {
			r.in_hot_standby = PQgetvalue(res, 0, 0)[0] == 't';
			r.default_read_only = PQgetvalue(res, 0, 1)[0] == 't';
			if (!PQgetisnull(res, 0, 2))
				r.wal_bytes = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
			ok = true;
		} else {
			snprintf(why, sizeof(why), "%s", PQresultErrorMessage(res));
		}
		PQclear(res);
	}
	if (!ok) {
		fail(p, why);
		return;
	}
	finish_round(p, &r, true);
}

static void poll_connect(struct probe *p)
{
	switch (PQconnectPoll(p->conn)) {
	case PGRES_POLLING_READING:
		watch(p, EV_READ);
		break;
	case PGRES_POLLING_WRITING:
		watch(p, EV_WRITE);
		break;
	case PGRES_POLLING_OK:
		send_query(p);
		break;
	default:
		fail(p, PQerrorMessage(p->conn));
		break;
	}
}

static void probe_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct probe *p = arg;
	if (p->state == P_CONNECTING)
		poll_connect(p);
	else if (p->state == P_QUERYING)
		read_results(p);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct probe *p = arg;
	char why[96];
	snprintf(why, sizeof(why), "no answer within %u ms", p->pc->timeout_ms);
	fail(p, why);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct probe *p = arg;
	struct timeval tv = ms_tv(p->pc->timeout_ms);
	event_add(p->deadline, &tv);
	p->started_us = mono_us();

	if (p->conn && PQstatus(p->conn) == CONNECTION_OK) {
		send_query(p);
		return;
	}
	if (p->conn)
		PQfinish(p->conn);
	p->conn = disc_pq_start(p->srv, p->pc, p->pc->user, p->pc->password, "pgrouter-probe");
	if (!p->conn || PQstatus(p->conn) == CONNECTION_BAD) {
		fail(p, p->conn ? PQerrorMessage(p->conn) : "out of memory");
		return;
	}
	p->state = P_CONNECTING;
	/* libpq wants the first poll once the socket is writable */
	watch(p, EV_WRITE);
}

PGconn *disc_pq_start(const struct disc_server *srv, const struct disc_probe_config *pc,
		      const char *user, const char *password, const char *application_name)
{
	/* libpq skips a NULL value, so unset optional keys go last */
	const char *keys[12] = { "host", "port", "user", "dbname", "application_name", "gssencmode" };
	const char *vals[12] = { srv->host, srv->port, user, pc->dbname, application_name,
				 "disable" };
	unsigned n = 6;
	const char *opt_keys[] = { "password", "sslmode", "sslrootcert", "sslcert", "sslkey" };
	const char *opt_vals[] = { password, pc->sslmode, pc->sslrootcert, pc->sslcert, pc->sslkey };
	for (unsigned i = 0; i < sizeof(opt_keys) / sizeof(opt_keys[0]); i++)
		if (opt_vals[i] && *opt_vals[i]) {
			keys[n] = opt_keys[i];
			vals[n++] = opt_vals[i];
		}
	keys[n] = vals[n] = NULL;
	return PQconnectStartParams(keys, vals, 0);
}

void probe_kick(struct probe *p)
{
	if (p->state != P_IDLE)
		return;
	event_del(p->tick);
	event_active(p->tick, EV_TIMEOUT, 0);
}

void probe_soon(struct probe *p, unsigned ms)
{
	if (p->state != P_IDLE)
		return;
	event_del(p->tick);
	struct timeval tv = ms_tv(ms);
	event_add(p->tick, &tv);
}

struct probe *probe_new(struct event_base *base, struct disc_server *srv,
			const struct disc_probe_config *pc, probe_done_fn done, void *arg)
{
	struct probe *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	*p = (struct probe){ .base = base, .srv = srv, .pc = pc, .done = done, .arg = arg };
	p->tick = evtimer_new(base, tick_cb, p);
	p->deadline = evtimer_new(base, deadline_cb, p);
	if (!p->tick || !p->deadline) {
		probe_free(p);
		return NULL;
	}
	event_active(p->tick, EV_TIMEOUT, 0); /* first round now */
	return p;
}

void probe_free(struct probe *p)
{
	if (!p)
		return;
	if (p->io)
		event_free(p->io);
	if (p->tick)
		event_free(p->tick);
	if (p->deadline)
		event_free(p->deadline);
	if (p->conn)
		PQfinish(p->conn);
	free(p);
}
