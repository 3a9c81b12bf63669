/*
 * metrics.c — Prometheus text format of what the workers count.
 *
 * Each worker owns a struct worker_stats and is the only writer of it:
 * counters move with a relaxed load and store (no locked instruction, nothing
 * shared on the data path). A scrape (admin thread) sums the workers' copies;
 * it may see one worker's update a moment late, never a torn value.
 * Per-server series are rendered for the servers of the current topology;
 * labels are listeners, servers ("host:port"), roles and reasons — never a
 * client.
 */
#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "router/router.h"

/* seconds */
static const double bucket_le[HIST_BUCKETS] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
						0.1,   0.25,   0.5,   1,    2.5,   10 };

uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

void hist_observe(struct hist *h, uint64_t us)
{
	unsigned i = 0;
	while (i < HIST_BUCKETS && (double)us > bucket_le[i] * 1e6)
		i++;
	stat_add(&h->n[i], 1);
	stat_add(&h->sum_us, us);
}

struct listener_stats *lstats(const struct session *s)
{
	return &s->w->stats->l[s->l->slot];
}

static unsigned slot(const struct disc_server *srv);

struct server_stats *srv_stats(const struct session *s, const struct disc_server *srv)
{
	return &s->w->stats->s[slot(srv)];
}

void stat_reject(const struct session *s, enum rej_reason r)
{
	stat_add(&lstats(s)->rejected[r], 1);
}

static const char *const rej_names[REJ_N] = { "max_client_conn", "tls_required", "no_server",
					      "pool_full",	 "auth_failed",  "shutting_down",
					      "protocol",	 "open_files" };
static const char *const conn_err_names[CONN_ERR_N] = { "refused", "timeout", "tls",
							"server_refused", "closed" };
static const char *const shed_names[SHED_N] = { "role_change", "cannot_move", "drain_timeout",
						 "maintenance" };
static const char *const move_names[MOVE_N] = { "switchover", "role_change", "server_lost",
						"lag", "maintenance" };

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

uint64_t stats_sum_u(size_t off)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < router.nworkers; i++)
		if (router.workers[i].stats)
			v += LOAD(*(atomic_uint_fast64_t *)((char *)router.workers[i].stats + off));
	return v;
}

int64_t stats_sum_i(size_t off)
{
	int64_t v = 0;
	for (unsigned i = 0; i < router.nworkers; i++)
		if (router.workers[i].stats)
			v += LOAD(*(atomic_int_fast64_t *)((char *)router.workers[i].stats + off));
	return v;
}

#define OFF(field) STATS_OFF(field)
#define sum_u stats_sum_u
#define sum_i stats_sum_i

static void help(struct evbuffer *out, const char *name, const char *type, const char *text)
{
	evbuffer_add_printf(out, "# HELP pgrouter_%s %s\n# TYPE pgrouter_%s %s\n", name, text, name,
			    type);
}

/* A histogram: its buckets (cumulative, as Prometheus wants them), sum, count. */
static void render_hist(struct evbuffer *out, const char *name, const char *labels, size_t off)
{
	uint64_t cum = 0;
	for (unsigned b = 0; b <= HIST_BUCKETS; b++) {
		cum += sum_u(off + offsetof(struct hist, n) + b * sizeof(atomic_uint_fast64_t));
		if (b < HIST_BUCKETS)
			evbuffer_add_printf(out, "pgrouter_%s_bucket{%s,le=\"%g\"} %llu\n", name, labels,
					    bucket_le[b], (unsigned long long)cum);
		else
			evbuffer_add_printf(out, "pgrouter_%s_bucket{%s,le=\"+Inf\"} %llu\n", name,
					    labels, (unsigned long long)cum);
	}
	evbuffer_add_printf(out, "pgrouter_%s_sum{%s} %.6f\n", name, labels,
			    (double)sum_u(off + offsetof(struct hist, sum_us)) / 1e6);
	evbuffer_add_printf(out, "pgrouter_%s_count{%s} %llu\n", name, labels,
			    (unsigned long long)cum);
}

static unsigned slot(const struct disc_server *srv)
{
	return srv->id < METRIC_SERVERS ? srv->id : METRIC_SERVERS - 1;
}

static void render_listeners(struct evbuffer *out)
{
	const struct config *c = cur_cfg;
	help(out, "client_connections", "gauge", "Client connections open, by listener.");
	for (unsigned i = 0; i < c->nlisteners; i++)
		evbuffer_add_printf(out, "pgrouter_client_connections{listener=\"%s\"} %lld\n",
				    c->listeners[i].name, (long long)sum_i(OFF(l[c->listeners[i].slot].clients)));
	help(out, "client_connections_total", "counter", "Client connections accepted.");
	for (unsigned i = 0; i < c->nlisteners; i++)
		evbuffer_add_printf(out, "pgrouter_client_connections_total{listener=\"%s\"} %llu\n",
				    c->listeners[i].name,
				    (unsigned long long)sum_u(OFF(l[c->listeners[i].slot].accepted)));
	help(out, "client_connections_rejected_total", "counter",
	     "Client sessions refused or ended before reaching a server, by reason.");
	for (unsigned i = 0; i < c->nlisteners; i++)
		for (unsigned r = 0; r < REJ_N; r++)
			evbuffer_add_printf(out,
					    "pgrouter_client_connections_rejected_total{listener=\"%s\","
					    "reason=\"%s\"} %llu\n",
					    c->listeners[i].name, rej_names[r],
					    (unsigned long long)sum_u(OFF(l[c->listeners[i].slot].rejected[r])));
	help(out, "tls_handshake_failures_total", "counter",
	     "TLS handshakes with clients that failed, by listener.");
	for (unsigned i = 0; i < c->nlisteners; i++)
		evbuffer_add_printf(out, "pgrouter_tls_handshake_failures_total{listener=\"%s\"} %llu\n",
				    c->listeners[i].name,
				    (unsigned long long)sum_u(OFF(l[c->listeners[i].slot].tls_failures)));
	help(out, "tls_certificate_expiry_timestamp_seconds", "gauge",
	     "When the certificate a TLS listener presents expires (Unix time).");
	for (unsigned i = 0; i < c->nlisteners; i++) {
		long long t = atomic_load(&c->listeners[i].cert_not_after);
		if (t)
			evbuffer_add_printf(out, "pgrouter_tls_certificate_expiry_timestamp_seconds"
					    "{listener=\"%s\"} %lld\n",
					    c->listeners[i].name, t);
	}
	help(out, "queued_sessions", "gauge", "Sessions waiting for an eligible server.");
	for (unsigned i = 0; i < c->nlisteners; i++)
		evbuffer_add_printf(out, "pgrouter_queued_sessions{listener=\"%s\"} %lld\n",
				    c->listeners[i].name, (long long)sum_i(OFF(l[c->listeners[i].slot].queued)));
	help(out, "listener_paused", "gauge", "1 while the listener is paused (PAUSE).");
	for (unsigned i = 0; i < c->nlisteners; i++)
		evbuffer_add_printf(out, "pgrouter_listener_paused{listener=\"%s\"} %d\n",
				    c->listeners[i].name, listener_paused(&c->listeners[i]));
	help(out, "queue_wait_seconds", "histogram",
	     "Time sessions waited for an eligible server (those that waited).");
	for (unsigned i = 0; i < c->nlisteners; i++) {
		char labels[96];
		snprintf(labels, sizeof(labels), "listener=\"%s\"", c->listeners[i].name);
		render_hist(out, "queue_wait_seconds", labels, OFF(l[c->listeners[i].slot].queue_wait));
	}
}

static void render_workers(struct evbuffer *out)
{
	unsigned n = router.workers ? router.nworkers : 0;
	help(out, "workers_active", "gauge",
	     "Workers new sessions go to (worker_packing: as few as keep up).");
	evbuffer_add_printf(out, "pgrouter_workers_active %u\n", n ? balance_active() : 0);
	help(out, "worker_sessions", "gauge", "Client sessions each worker runs.");
	for (unsigned w = 0; w < n; w++) {
		int64_t sessions = 0;
		for (unsigned i = 0; i < CONFIG_MAX_LISTENERS; i++)
			sessions += atomic_load_explicit(&router.workers[w].stats->l[i].clients,
							 memory_order_relaxed);
		evbuffer_add_printf(out, "pgrouter_worker_sessions{worker=\"%u\"} %lld\n", w,
				    (long long)sessions);
	}
	help(out, "worker_busy_ratio", "gauge",
	     "How busy each worker's thread is: CPU time over wall time, smoothed over 0.3 s.");
	for (unsigned w = 0; w < n; w++)
		evbuffer_add_printf(out, "pgrouter_worker_busy_ratio{worker=\"%u\"} %.3f\n", w,
				    atomic_load(&router.workers[w].busy_pm) / 1000.0);
	help(out, "worker_sessions_moved_total", "counter",
	     "Sessions each worker took from another (their requests all answered).");
	for (unsigned w = 0; w < n; w++)
		evbuffer_add_printf(out, "pgrouter_worker_sessions_moved_total{worker=\"%u\"} %llu\n",
				    w, (unsigned long long)atomic_load(&router.workers[w].moved_in));
}

static const char *state_of(const struct topo_entry *e)
{
	if (!e->reachable)
		return "unreachable";
	if (e->draining)
		return "draining";
	return disc_role_name(e->role);
}

static void render_servers(struct evbuffer *out, const struct topology *t)
{
	static const char *const states[] = { "primary", "standby", "unknown", "draining",
					      "unreachable" };
	const struct config *c = cur_cfg;
	help(out, "server_status", "gauge",
	     "1 for the state the server is in (primary, standby, unknown, draining, unreachable).");
	for (unsigned k = 0; t && k < t->n; k++)
		for (unsigned j = 0; j < sizeof(states) / sizeof(states[0]); j++)
			evbuffer_add_printf(out, "pgrouter_server_status{server=\"%s:%s\",state=\"%s\"} %d\n",
					    t->e[k].srv->host, t->e[k].srv->port, states[j],
					    strcmp(state_of(&t->e[k]), states[j]) == 0);
	help(out, "server_admin_state", "gauge",
	     "1 for the operator's word on the server (SET SERVER: ready, drain, maint).");
	for (unsigned k = 0; t && k < t->n; k++)
		for (int a = DISC_ADMIN_READY; a <= DISC_ADMIN_MAINT; a++)
			evbuffer_add_printf(out,
					    "pgrouter_server_admin_state{server=\"%s:%s\",state=\"%s\"} %d\n",
					    t->e[k].srv->host, t->e[k].srv->port,
					    disc_admin_name((enum disc_admin)a), (int)t->e[k].admin == a);
	help(out, "server_lag_bytes", "gauge", "Replication lag behind the primary (-1: unknown).");
	for (unsigned k = 0; t && k < t->n; k++)
		evbuffer_add_printf(out, "pgrouter_server_lag_bytes{server=\"%s:%s\"} %lld\n",
				    t->e[k].srv->host, t->e[k].srv->port, (long long)t->e[k].lag_bytes);
	help(out, "server_probes_total", "counter", "SQL probes of the server (probe_interval).");
	for (unsigned k = 0; t && k < t->n; k++)
		evbuffer_add_printf(out, "pgrouter_server_probes_total{server=\"%s:%s\"} %llu\n",
				    t->e[k].srv->host, t->e[k].srv->port,
				    (unsigned long long)LOAD(t->e[k].srv->probes));
	help(out, "server_probe_failures_total", "counter", "Probes that found the server unreachable.");
	for (unsigned k = 0; t && k < t->n; k++)
		evbuffer_add_printf(out, "pgrouter_server_probe_failures_total{server=\"%s:%s\"} %llu\n",
				    t->e[k].srv->host, t->e[k].srv->port,
				    (unsigned long long)LOAD(t->e[k].srv->probe_failures));
	help(out, "server_probe_duration_seconds", "gauge", "How long the last probe took.");
	for (unsigned k = 0; t && k < t->n; k++)
		evbuffer_add_printf(out, "pgrouter_server_probe_duration_seconds{server=\"%s:%s\"} %.6f\n",
				    t->e[k].srv->host, t->e[k].srv->port,
				    (double)LOAD(t->e[k].srv->probe_last_us) / 1e6);
	help(out, "server_sessions", "gauge", "Client sessions on the server, by listener.");
	for (unsigned k = 0; t && k < t->n; k++)
		for (unsigned i = 0; i < c->nlisteners; i++)
			evbuffer_add_printf(
				out, "pgrouter_server_sessions{server=\"%s:%s\",listener=\"%s\"} %lld\n",
				t->e[k].srv->host, t->e[k].srv->port, c->listeners[i].name,
				(long long)sum_i(OFF(s[slot(t->e[k].srv)].sessions[c->listeners[i].slot])));
	help(out, "server_connect_errors_total", "counter",
	     "Failed attempts to open a session on the server, by reason.");
	for (unsigned k = 0; t && k < t->n; k++)
		for (unsigned r = 0; r < CONN_ERR_N; r++)
			evbuffer_add_printf(
				out,
				"pgrouter_server_connect_errors_total{server=\"%s:%s\",reason=\"%s\"} %llu\n",
				t->e[k].srv->host, t->e[k].srv->port, conn_err_names[r],
				(unsigned long long)sum_u(OFF(s[slot(t->e[k].srv)].connect_errors[r])));
	help(out, "server_connect_seconds", "histogram",
	     "Time to open a server connection (TCP and TLS).");
	for (unsigned k = 0; t && k < t->n; k++) {
		char labels[300];
		snprintf(labels, sizeof(labels), "server=\"%s:%s\"", t->e[k].srv->host,
			 t->e[k].srv->port);
		render_hist(out, "server_connect_seconds", labels,
			    OFF(s[slot(t->e[k].srv)].connect_time));
	}
	help(out, "server_bytes_sent_total", "counter", "Bytes relayed from clients to the server.");
	for (unsigned k = 0; t && k < t->n; k++)
		evbuffer_add_printf(out, "pgrouter_server_bytes_sent_total{server=\"%s:%s\"} %llu\n",
				    t->e[k].srv->host, t->e[k].srv->port,
				    (unsigned long long)sum_u(OFF(s[slot(t->e[k].srv)].bytes_sent)));
	help(out, "server_bytes_received_total", "counter",
	     "Bytes relayed from the server to clients.");
	for (unsigned k = 0; t && k < t->n; k++)
		evbuffer_add_printf(out, "pgrouter_server_bytes_received_total{server=\"%s:%s\"} %llu\n",
				    t->e[k].srv->host, t->e[k].srv->port,
				    (unsigned long long)sum_u(OFF(s[slot(t->e[k].srv)].bytes_received)));
	help(out, "pool_server_connections", "gauge",
	     "Pooled server connections (pool_mode = session), by state.");
	for (unsigned k = 0; t && k < t->n; k++) {
		int total, idle;
		pool_counts(t->e[k].srv, &total, &idle);
		evbuffer_add_printf(out, "pgrouter_pool_server_connections{server=\"%s:%s\",state=\"idle\"} %d\n"
				    "pgrouter_pool_server_connections{server=\"%s:%s\",state=\"in_use\"} %d\n",
				    t->e[k].srv->host, t->e[k].srv->port, idle, t->e[k].srv->host,
				    t->e[k].srv->port, total - idle);
	}
	help(out, "sessions_shed_total", "counter",
	     "Sessions closed because their server no longer fits, by reason.");
	for (unsigned k = 0; t && k < t->n; k++)
		for (unsigned r = 0; r < SHED_N; r++)
			evbuffer_add_printf(
				out, "pgrouter_sessions_shed_total{server=\"%s:%s\",reason=\"%s\"} %llu\n",
				t->e[k].srv->host, t->e[k].srv->port, shed_names[r],
				(unsigned long long)sum_u(OFF(s[slot(t->e[k].srv)].shed[r])));
	help(out, "sessions_moved_total", "counter",
	     "Sessions moved to another server between transactions, by the server they left "
	     "and why.");
	for (unsigned k = 0; t && k < t->n; k++)
		for (unsigned r = 0; r < MOVE_N; r++)
			evbuffer_add_printf(
				out, "pgrouter_sessions_moved_total{server=\"%s:%s\",reason=\"%s\"} %llu\n",
				t->e[k].srv->host, t->e[k].srv->port, move_names[r],
				(unsigned long long)sum_u(OFF(s[slot(t->e[k].srv)].moved[r])));
}

void metrics_render(struct evbuffer *out)
{
	help(out, "build_info", "gauge", "pgrouter's version.");
	evbuffer_add_printf(out, "pgrouter_build_info{version=\"%s\"} 1\n", PGROUTER_VERSION);
	help(out, "start_time_seconds", "gauge", "When pgrouter started (Unix time).");
	evbuffer_add_printf(out, "pgrouter_start_time_seconds %.3f\n", router.start_time);
	help(out, "draining", "gauge", "1 while pgrouter drains for shutdown.");
	evbuffer_add_printf(out, "pgrouter_draining %d\n",
			    atomic_load_explicit(&router.stopping, memory_order_relaxed) ? 1 : 0);
	render_listeners(out);
	render_workers(out);
	struct topology *t = topo_acquire();
	render_servers(out, t);
	struct topo_stats ts;
	topo_stats(&ts);
	const char *src = t ? t->source : cur_cfg->source;
	help(out, "discovery_up", "gauge", "1 when the source's view is current, 0 when stale.");
	evbuffer_add_printf(out, "pgrouter_discovery_up{source=\"%s\"} %d\n", src,
			    t && !t->stale ? 1 : 0);
	help(out, "discovery_last_update_timestamp_seconds", "gauge",
	     "When the source last confirmed its view (Unix time).");
	evbuffer_add_printf(out, "pgrouter_discovery_last_update_timestamp_seconds{source=\"%s\"} %.3f\n",
			    src, ts.updated_s);
	help(out, "discovery_snapshots_total", "counter", "Cluster views published that changed routing.");
	evbuffer_add_printf(out, "pgrouter_discovery_snapshots_total{source=\"%s\"} %llu\n", src,
			    (unsigned long long)ts.publishes);
	help(out, "discovery_errors_total", "counter",
	     "Failed reads of the cluster state (requests, sessions, keys).");
	evbuffer_add_printf(out, "pgrouter_discovery_errors_total{source=\"%s\"} %llu\n", src,
			    (unsigned long long)ts.errors);
	help(out, "reloads_total", "counter", "Configuration reloads (SIGHUP or RELOAD), by result.");
	evbuffer_add_printf(out, "pgrouter_reloads_total{result=\"ok\"} %llu\n"
			    "pgrouter_reloads_total{result=\"failed\"} %llu\n",
			    (unsigned long long)atomic_load(&router.reloads_ok),
			    (unsigned long long)atomic_load(&router.reloads_failed));
	help(out, "last_reload_timestamp_seconds", "gauge", "When the last reload ran (Unix time; 0: none).");
	evbuffer_add_printf(out, "pgrouter_last_reload_timestamp_seconds %.3f\n",
			    (double)atomic_load(&router.last_reload_ms) / 1000);
	help(out, "last_reload_success", "gauge", "1 when the last reload took everything.");
	evbuffer_add_printf(out, "pgrouter_last_reload_success %d\n",
			    atomic_load(&router.last_reload_ok) || !atomic_load(&router.last_reload_ms));
	help(out, "primary_changes_total", "counter", "Times the routable primary changed.");
	evbuffer_add_printf(out, "pgrouter_primary_changes_total %llu\n",
			    (unsigned long long)ts.primary_changes);
	topo_release(t);
}
