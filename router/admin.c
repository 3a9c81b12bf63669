/*
 * admin.c — the operator's HTTP endpoint ([admin] http_listen), on a thread
 * of its own so that it answers while the main loop is busy or has stopped
 * (draining for shutdown) and never touches a worker's data path.
 *
 *   GET /metrics  Prometheus text format (metrics.c)
 *   GET /livez    200 when every worker's event loop answered its last ping
 *   GET /readyz   503 while draining, while the cluster view has been stale
 *                 longer than ready_max_stale, or when no listener can route
 *   GET /status   JSON: listeners, servers, discovery, configuration
 *
 * Liveness: once a second this thread activates each worker's ping event;
 * the worker, when its loop runs it, notes the time. A worker that has not
 * answered for LIVE_MS is stuck.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router/router.h"

#define PING_MS 1000
#define LIVE_MS 5000

static struct event_base *base;
static struct evhttp *http;
static struct event *ping_timer;
static pthread_t thread;
static bool running;

static void reply(struct evhttp_request *req, int code, const char *reason, const char *type,
		  struct evbuffer *body)
{
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
	evhttp_send_reply(req, code, reason, body);
}

static void text(struct evhttp_request *req, int code, const char *reason, const char *msg)
{
	struct evbuffer *b = evbuffer_new();
	if (b)
		evbuffer_add_printf(b, "%s\n", msg);
	reply(req, code, reason, "text/plain; charset=utf-8", b);
	if (b)
		evbuffer_free(b);
}

static void metrics_cb(struct evhttp_request *req, void *arg)
{
	config_thread_refresh(); /* this request sees the current generation */
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	metrics_render(b);
	reply(req, HTTP_OK, "OK", "text/plain; version=0.0.4; charset=utf-8", b);
	evbuffer_free(b);
}

/* Which worker has not answered a ping for LIVE_MS (-1: all have). */
static int stuck_worker(void)
{
	uint64_t now = now_ms();
	for (unsigned i = 0; i < router.nworkers; i++) {
		uint64_t pong = atomic_load_explicit(&router.workers[i].pong_ms, memory_order_relaxed);
		if (now - pong > LIVE_MS)
			return (int)i;
	}
	return -1;
}

static void livez_cb(struct evhttp_request *req, void *arg)
{
	config_thread_refresh(); /* this request sees the current generation */
	int w = stuck_worker();
	if (w < 0) {
		text(req, HTTP_OK, "OK", "ok");
		return;
	}
	char msg[96];
	snprintf(msg, sizeof(msg), "worker %d has not run its event loop for %d ms", w, LIVE_MS);
	text(req, 503, "Service Unavailable", msg);
}

/* Can any listener route a new session now? */
static bool any_routable(const struct topology *t)
{
	const struct config *c = cur_cfg;
	for (unsigned i = 0; t && i < c->nlisteners; i++) {
		enum tsa p = c->listeners[i].tsa;
		if (select_other_eligible(t, p, c->max_lag, NULL) ||
		    (p == TSA_PREFER_STANDBY && select_other_eligible(t, TSA_ANY, c->max_lag, NULL)))
			return true;
	}
	return false;
}

static void readyz_cb(struct evhttp_request *req, void *arg)
{
	config_thread_refresh(); /* this request sees the current generation */
	if (atomic_load_explicit(&router.stopping, memory_order_relaxed)) {
		text(req, 503, "Service Unavailable", "draining for shutdown");
		return;
	}
	struct topo_stats ts;
	topo_stats(&ts);
	unsigned max = cur_cfg->ready_max_stale_ms;
	if (ts.stale_since_ms && now_ms() - ts.stale_since_ms > max) {
		char msg[128];
		snprintf(msg, sizeof(msg), "cluster view stale for %llu ms (ready_max_stale %u ms)",
			 (unsigned long long)(now_ms() - ts.stale_since_ms), max);
		text(req, 503, "Service Unavailable", msg);
		return;
	}
	struct topology *t = topo_acquire();
	bool ok = any_routable(t);
	topo_release(t);
	if (!ok) {
		text(req, 503, "Service Unavailable", "no listener has a server to route to");
		return;
	}
	text(req, HTTP_OK, "OK", "ready");
}

static json_t *status_json(void)
{
	const struct config *c = cur_cfg;
	json_t *root = json_object();
	json_object_set_new(root, "version", json_string(PGROUTER_VERSION));
	json_object_set_new(root, "config", json_string(c->path));
	json_object_set_new(root, "config_generation", json_integer((json_int_t)c->generation));
	json_object_set_new(root, "restart_needed", json_string(c->restart_needed));
	long long last = atomic_load(&router.last_reload_ms);
	json_object_set_new(root, "last_reload", last ? json_real((double)last / 1000.0) : json_null());
	json_object_set_new(root, "last_reload_ok", json_boolean(atomic_load(&router.last_reload_ok)));
	json_object_set_new(root, "start_time", json_real(router.start_time));
	json_object_set_new(root, "draining",
			    json_boolean(atomic_load_explicit(&router.stopping,
							      memory_order_relaxed)));
	struct topology *t = topo_acquire();
	json_t *ls = json_array();
	for (unsigned i = 0; i < c->nlisteners; i++) {
		const struct listener_config *l = &c->listeners[i];
		int64_t clients = stats_sum_i(STATS_OFF(l[l->slot].clients));
		int64_t queued = stats_sum_i(STATS_OFF(l[l->slot].queued));
		json_t *o = json_object();
		json_object_set_new(o, "name", json_string(l->name));
		json_object_set_new(o, "listen", json_sprintf("%s:%s", l->host, l->port));
		json_object_set_new(o, "target_session_attrs", json_string(tsa_name(l->tsa)));
		json_object_set_new(o, "load_balance", json_string(lb_name(l->lb)));
		json_object_set_new(o, "auth", json_string(auth_mode_name(l->auth)));
		json_object_set_new(o, "pool_mode", json_string(pool_mode_name(l->pool_mode)));
		json_object_set_new(o, "clients", json_integer(clients));
		json_object_set_new(o, "queued", json_integer(queued));
		json_object_set_new(o, "paused", json_boolean(listener_paused(l)));
		json_array_append_new(ls, o);
	}
	json_object_set_new(root, "listeners", ls);
	json_t *ss = json_array();
	for (unsigned k = 0; t && k < t->n; k++) {
		const struct topo_entry *e = &t->e[k];
		json_t *o = json_object();
		json_object_set_new(o, "server", json_sprintf("%s:%s", e->srv->host, e->srv->port));
		json_object_set_new(o, "name", json_string(e->srv->name));
		json_object_set_new(o, "role", json_string(disc_role_name(e->role)));
		json_object_set_new(o, "reachable", json_boolean(e->reachable));
		json_object_set_new(o, "draining", json_boolean(e->draining));
		json_object_set_new(o, "admin", json_string(disc_admin_name(e->admin)));
		json_object_set_new(o, "in_hot_standby", json_boolean(e->in_hot_standby));
		json_object_set_new(o, "lag_bytes", e->lag_bytes < 0 ? json_null()
								    : json_integer(e->lag_bytes));
		json_object_set_new(o, "sessions", json_integer(atomic_load_explicit(
							   &e->srv->sessions, memory_order_relaxed)));
		json_array_append_new(ss, o);
	}
	json_object_set_new(root, "servers", ss);
	struct topo_stats ts;
	topo_stats(&ts);
	json_t *d = json_object();
	json_object_set_new(d, "source", json_string(t ? t->source : c->source));
	json_object_set_new(d, "stale", json_boolean(t && t->stale));
	json_object_set_new(d, "updated", json_real(ts.updated_s));
	json_object_set_new(d, "generation", json_integer(t ? (json_int_t)t->generation : 0));
	json_object_set_new(d, "primary_changes", json_integer((json_int_t)ts.primary_changes));
	json_object_set_new(root, "discovery", d);
	topo_release(t);
	return root;
}

static void status_cb(struct evhttp_request *req, void *arg)
{
	config_thread_refresh(); /* this request sees the current generation */
	json_t *j = status_json();
	char *s = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
	json_decref(j);
	struct evbuffer *b = evbuffer_new();
	if (!s || !b) {
		free(s);
		if (b)
			evbuffer_free(b);
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	evbuffer_add_printf(b, "%s\n", s);
	free(s);
	reply(req, HTTP_OK, "OK", "application/json", b);
	evbuffer_free(b);
}

static void other_cb(struct evhttp_request *req, void *arg)
{
	text(req, HTTP_NOTFOUND, "Not Found",
	     "not found; try /metrics, /livez, /readyz or /status");
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
	for (unsigned i = 0; i < router.nworkers; i++)
		event_active(&router.workers[i].ping, EV_READ, 0);
}

static int http_start(const struct config *c, char *err, size_t errlen);

static void *admin_main(void *arg)
{
	event_base_dispatch(base);
	config_unref(cur_cfg);
	cur_cfg = NULL;
	return NULL;
}

int admin_start(const struct config *c, char *err, size_t errlen)
{
	if (!c->http_host[0] && !c->nconsole)
		return 0;
	if (!(base = event_base_new())) {
		snprintf(err, errlen, "admin: out of memory");
		return -1;
	}
	if (console_start(base, c, err, errlen) != 0)
		return -1;
	if (c->http_host[0] && http_start(c, err, errlen) != 0)
		return -1;
	ping_timer = event_new(base, -1, EV_PERSIST, ping_cb, NULL);
	struct timeval tv = { PING_MS / 1000, (PING_MS % 1000) * 1000 };
	if (!ping_timer || event_add(ping_timer, &tv) != 0 ||
	    pthread_create(&thread, NULL, admin_main, NULL) != 0) {
		snprintf(err, errlen, "admin: cannot start its thread");
		return -1;
	}
	running = true;
	return 0;
}

static int http_start(const struct config *c, char *err, size_t errlen)
{
	if (!(http = evhttp_new(base))) {
		snprintf(err, errlen, "admin: out of memory");
		return -1;
	}
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_cb(http, "/metrics", metrics_cb, NULL);
	evhttp_set_cb(http, "/livez", livez_cb, NULL);
	evhttp_set_cb(http, "/readyz", readyz_cb, NULL);
	evhttp_set_cb(http, "/status", status_cb, NULL);
	evhttp_set_gencb(http, other_cb, NULL);
	evhttp_set_timeout(http, 10);
	unsigned port = (unsigned)atoi(c->http_port);
	if (evhttp_bind_socket(http, c->http_host, (uint16_t)port) != 0) {
		snprintf(err, errlen, "%s:%d: http_listen: cannot listen on %s:%s", c->path,
			 c->http_line, c->http_host, c->http_port);
		return -1;
	}
	log_info("admin: HTTP on %s:%s (/metrics /livez /readyz /status)", c->http_host,
		 c->http_port);
	return 0;
}

void admin_stop(void)
{
	if (running) {
		event_base_loopexit(base, NULL);
		pthread_join(thread, NULL);
		running = false;
	}
	console_stop();
	if (ping_timer)
		event_free(ping_timer);
	if (http)
		evhttp_free(http);
	if (base)
		event_base_free(base);
	ping_timer = NULL;
	http = NULL;
	base = NULL;
}
