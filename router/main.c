/*
 * main.c — pgrouter's entry point. The main thread reads the configuration,
 * binds the listeners, runs the discovery sources and handles signals; the
 * workers (worker.c) carry the sessions.
 */
#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "discovery/internal.h"
#include "router/router.h"

struct router router;

static void usage(FILE *f)
{
	fprintf(f, "usage: pgrouter -c FILE        run with configuration FILE\n"
		   "       pgrouter --check -c FILE  validate FILE and exit (0 ok, 1 error)\n"
		   "       pgrouter --status -c FILE the running pgrouter's servers and listeners\n"
		   "       pgrouter --version\n");
}

static void disc_log_bridge(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void disc_log_bridge(int level, const char *fmt, ...)
{
	if (!log_enabled(level))
		return;
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	log_msg(level, "%s", buf);
}

/* The open files limit, raised toward what max_client_conn needs, and the
 * clients it has room for: each holds its socket and, relaying, one to its
 * server; kept aside are the descriptors open now, the workers' own (event
 * base, wake-ups, listening sockets, a spare), probes and the DCS, and some
 * headroom for cancels, the admin endpoints and pooled connections. Past the
 * room a client gets 53300 at once (session_refuse) instead of waiting in the
 * kernel's backlog for a descriptor. */
static void fd_budget(const struct config *c)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
		atomic_store(&router.fd_clients, UINT_MAX);
		return;
	}
	rlim_t need = (rlim_t)c->max_client_conn * 2 + 256;
	if (rl.rlim_cur < need) {
		rl.rlim_cur = need < rl.rlim_max ? need : rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur == RLIM_INFINITY) {
		atomic_store(&router.fd_clients, UINT_MAX);
		return;
	}
	unsigned long long open_now = 0;
	DIR *d = opendir("/proc/self/fd");
	if (d) {
		while (readdir(d))
			open_now++;
		closedir(d);
	}
	unsigned long long keep = open_now + 64 + 2ull * c->nservers +
				  (unsigned long long)c->workers * (8 + c->nlisteners);
	unsigned long long room = rl.rlim_cur > keep ? (rl.rlim_cur - keep) / 2 : 1;
	if (room > UINT_MAX)
		room = UINT_MAX;
	atomic_store(&router.fd_clients, (unsigned)room);
	if (room < c->max_client_conn)
		log_warning("open files limited to %llu: room for about %llu clients, fewer than "
			    "max_client_conn=%u; past it clients get 53300 at once (raise "
			    "LimitNOFILE / ulimit -n to %llu)",
			    (unsigned long long)rl.rlim_cur, room, c->max_client_conn,
			    (unsigned long long)need);
}

static int stop_signal;
static struct event *drain_watch;

/* Draining: the main loop turns on (discovery follows the cluster, SIGHUP
 * and a second signal are heard) and ends once every worker's has. */
static void drain_watch_cb(evutil_socket_t fd, short what, void *arg)
{
	if (workers_all_ended(&router))
		event_base_loopexit(arg, NULL);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct event_base *base = arg;
	const char *name = sig == SIGINT ? "SIGINT" : "SIGTERM";
	if (stop_signal) {
		log_info("received %s again: closing the remaining sessions now", name);
		workers_close_now(&router);
		return;
	}
	stop_signal = (int)sig;
	atomic_store(&router.stopping, true);
	notify_systemd("STOPPING=1\nSTATUS=draining: open sessions finish their transactions");
	log_info("received %s: no new sessions; open sessions close at their next transaction "
		 "boundary or after shutdown_timeout (%u ms); %s again closes them now",
		 name, router.cfg->shutdown_timeout_ms, name);
	workers_shutdown(&router);
	struct timeval tv = { 0, 50000 };
	drain_watch = event_new(base, -1, EV_PERSIST, drain_watch_cb, base);
	if (!drain_watch || event_add(drain_watch, &tv) != 0)
		event_base_loopexit(base, NULL); /* then main() waits for the workers */
}

/* auth_query runs with this generation's settings (a reference). */
static struct config *auth_ref;

/* ---- what a generation runs with ---------------------------------------- */

/* Resolve c's servers and fill what the discovery sources and auth_query are
 * started with (pointing into c). 0, or -1 with err. */
static int config_derive(struct config *c, char *err, size_t errlen)
{
	for (unsigned i = 0; i < c->nservers; i++) {
		char why[300];
		c->srv[i] = disc_server_get(c->servers[i].host, c->servers[i].port, why, sizeof(why));
		if (!c->srv[i]) {
			snprintf(err, errlen, "%s:%d: servers: %s", c->path, c->servers[i].line, why);
			return -1;
		}
	}
	c->pc = (struct disc_probe_config){ .interval_ms = c->probe_interval_ms,
					    .timeout_ms = c->connect_timeout_ms,
					    .user = c->probe_user,
					    .password = c->probe_password,
					    .dbname = c->probe_dbname,
					    .sslmode = server_tls_name(c->server_tls),
					    .sslrootcert = c->server_tls_ca,
					    .sslcert = c->server_tls_cert,
					    .sslkey = c->server_tls_key,
					    .max_lag = c->max_lag };
	c->ec = (struct disc_etcd_config){ .nendpoints = c->netcd,
					   .namespace_ = c->namespace_,
					   .scope = c->scope,
					   .user = c->etcd_user,
					   .password = c->etcd_password,
					   .cacert = c->etcd_cacert,
					   .timeout_ms = c->connect_timeout_ms };
	for (unsigned i = 0; i < c->netcd; i++)
		c->ec.endpoints[i] = c->etcd_endpoints[i];
	if (strcmp(c->source, "stolon") == 0) {
		c->ec.stolon_prefix = c->stolon_prefix;
		c->ec.stolon_cluster = c->stolon_cluster;
		c->ec.stolon_register = c->stolon_register;
	}
	c->zc = (struct disc_zk_config){ .nhosts = c->nzk,
					 .namespace_ = c->namespace_,
					 .scope = c->scope,
					 .session_timeout_ms = c->zk_session_timeout_ms };
	for (unsigned i = 0; i < c->nzk; i++)
		c->zc.hosts[i] = c->zk_hosts[i];
	c->kc = (struct disc_k8s_config){ .api = c->k8s_api,
					  .token_file = c->k8s_token_file,
					  .cacert = c->k8s_cacert,
					  .namespace_ = c->k8s_namespace,
					  .selector = c->k8s_selector,
					  .role_label = c->k8s_role_label,
					  .primary_values = c->k8s_primary_values,
					  .replica_values = c->k8s_replica_values,
					  .port = c->k8s_port,
					  .patroni_scope = c->k8s_patroni_scope,
					  .patroni_leader = c->k8s_patroni_leader,
					  .timeout_ms = c->connect_timeout_ms };
	c->rc = (struct disc_rest_config){ .nurls = c->npatroni,
					   .poll_ms = c->poll_interval_ms,
					   .timeout_ms = c->connect_timeout_ms };
	for (unsigned i = 0; i < c->npatroni; i++)
		c->rc.urls[i] = c->patroni_urls[i];
	return 0;
}

/* The discovery source, started from the generation it holds a reference to. */
static struct {
	struct event_base *base;
	struct disc_static *st;
	struct disc_etcd *etcd;
	struct disc_rest *rest;
	struct disc_zk *zk;
	struct disc_k8s *k8s;
	struct config *gen;
} D;

static int discovery_start(struct config *c, char *err, size_t errlen)
{
	if (strcmp(c->source, "etcd") == 0 || strcmp(c->source, "stolon") == 0)
		D.etcd = disc_etcd_start(D.base, &c->ec, &c->pc, err, errlen);
	else if (strcmp(c->source, "zookeeper") == 0)
		D.zk = disc_zk_start(D.base, &c->zc, &c->pc, err, errlen);
	else if (strcmp(c->source, "patroni") == 0)
		D.rest = disc_rest_start(D.base, &c->rc, &c->pc, err, errlen);
	else if (strcmp(c->source, "kubernetes") == 0)
		D.k8s = disc_k8s_start(D.base, &c->kc, &c->pc, err, errlen);
	else
		D.st = disc_static_start(D.base, c->srv, c->nservers, &c->pc, err, errlen);
	if (!D.st && !D.etcd && !D.rest && !D.zk && !D.k8s)
		return -1;
	D.gen = config_ref(c);
	return 0;
}

static void discovery_stop(void)
{
	disc_static_stop(D.st);
	disc_etcd_stop(D.etcd);
	disc_rest_stop(D.rest);
	disc_zk_stop(D.zk);
	disc_k8s_stop(D.k8s);
	D.st = NULL, D.etcd = NULL, D.rest = NULL, D.zk = NULL, D.k8s = NULL;
	config_unref(D.gen);
	D.gen = NULL;
}

#define SAME_STR(f) (strcmp(a->f, b->f) == 0)
#define SAME(f) (a->f == b->f)

/* Would a source started from b see the cluster as one started from a does? */
static bool discovery_same(const struct config *a, const struct config *b)
{
	if (!SAME_STR(source) || !SAME(nservers) || !SAME(probe_interval_ms) ||
	    !SAME_STR(probe_user) || !SAME_STR(probe_password) || !SAME_STR(probe_dbname) ||
	    !SAME(max_lag) || !SAME(server_tls) || !SAME_STR(server_tls_ca) ||
	    !SAME_STR(server_tls_cert) || !SAME_STR(server_tls_key) || !SAME(connect_timeout_ms) ||
	    !SAME(netcd) || !SAME_STR(namespace_) || !SAME_STR(scope) || !SAME_STR(etcd_user) ||
	    !SAME_STR(etcd_password) || !SAME_STR(etcd_cacert) || !SAME(nzk) ||
	    !SAME(zk_session_timeout_ms) || !SAME(npatroni) || !SAME(poll_interval_ms) ||
	    !SAME_STR(stolon_cluster) || !SAME_STR(stolon_prefix) || !SAME(stolon_register) ||
	    !SAME_STR(k8s_api) || !SAME_STR(k8s_token_file) || !SAME_STR(k8s_cacert) ||
	    !SAME_STR(k8s_namespace) || !SAME_STR(k8s_selector) || !SAME_STR(k8s_role_label) ||
	    !SAME_STR(k8s_primary_values) || !SAME_STR(k8s_replica_values) || !SAME_STR(k8s_port) ||
	    !SAME_STR(k8s_patroni_scope) || !SAME_STR(k8s_patroni_leader))
		return false;
	for (unsigned i = 0; i < a->nservers; i++)
		if (a->srv[i] != b->srv[i])
			return false;
	for (unsigned i = 0; i < a->netcd; i++)
		if (!SAME_STR(etcd_endpoints[i]))
			return false;
	for (unsigned i = 0; i < a->nzk; i++)
		if (!SAME_STR(zk_hosts[i]))
			return false;
	for (unsigned i = 0; i < a->npatroni; i++)
		if (!SAME_STR(patroni_urls[i]))
			return false;
	return true;
}

/* A key the file now sets that runs as before until a restart. */
static void pending(struct config *n, const char *section, const char *key, const char *what)
{
	size_t l = strlen(n->restart_needed);
	snprintf(n->restart_needed + l, sizeof(n->restart_needed) - l, "%s%s", l ? ", " : "", what);
	for (unsigned i = 0; i < n->nkv; i++)
		if (strcmp(n->kv[i].section, section) == 0 && strcmp(n->kv[i].key, key) == 0)
			n->kv[i].pending = true;
}

/* What cannot change while running keeps its running value in n. */
static void keep_running(const struct config *o, struct config *n)
{
	if (n->workers != o->workers) {
		pending(n, "pgrouter", "workers", "workers");
		n->workers = o->workers;
	}
	for (unsigned i = 0; i < n->nlisteners; i++) {
		struct listener_config *l = &n->listeners[i];
		const struct listener_config *ol = config_listener((struct config *)o, l->name);
		if (ol && (strcmp(ol->host, l->host) != 0 || strcmp(ol->port, l->port) != 0)) {
			char section[80], what[120];
			snprintf(section, sizeof(section), "listener %s", l->name);
			snprintf(what, sizeof(what), "[listener %s] listen", l->name);
			pending(n, section, "listen", what);
			memcpy(l->host, ol->host, sizeof(l->host));
			memcpy(l->port, ol->port, sizeof(l->port));
		}
	}
	if (strcmp(o->http_host, n->http_host) != 0 || strcmp(o->http_port, n->http_port) != 0) {
		pending(n, "admin", "http_listen", "[admin] http_listen");
		memcpy(n->http_host, o->http_host, sizeof(n->http_host));
		memcpy(n->http_port, o->http_port, sizeof(n->http_port));
	}
	if (o->nconsole != n->nconsole ||
	    memcmp(o->console, n->console, sizeof(o->console[0]) * o->nconsole) != 0) {
		pending(n, "admin", "listen", "[admin] listen");
		n->nconsole = o->nconsole;
		memcpy(n->console, o->console, sizeof(n->console));
	}
}

/*
 * SIGHUP and RELOAD: the whole file, read and checked as --check does; when
 * anything is wrong the running configuration stays. Otherwise a new
 * generation becomes current: logging, timeouts and limits at once; listeners
 * added (bound here, taken by the workers) and removed (their sessions
 * finish); sessions follow their listener's new policy, handled as on a role
 * change; the discovery source restarts when its settings changed (keeping
 * its view until the new one has its own); TLS files, auth_file and the log
 * file are read again. What needs a restart (workers, a listener's address,
 * the admin sockets) is logged and shown by SHOW CONFIG. msg: one line.
 */
static bool reload(char *msg, size_t len)
{
	char err[1024];
	struct config *o = router.cfg, *n = config_new();
	notify_systemd("RELOADING=1\nMONOTONIC_USEC=%llu", monotonic_usec());
	bool ok = false, bound = false;
	if (!n) {
		snprintf(err, sizeof(err), "out of memory");
		goto out;
	}
	if (config_load(o->path, n, err, sizeof(err)) != 0 || tls_setup(n, err, sizeof(err)) != 0 ||
	    config_derive(n, err, sizeof(err)) != 0)
		goto out;
	keep_running(o, n);
	if (listeners_assign_slots(&router, n, o, err, sizeof(err)) != 0 ||
	    listeners_bind(&router, n, o, err, sizeof(err)) != 0)
		goto out;
	bound = true;
	/* logrotate moved the file: write to a new one at the same path */
	if (log_open(n->log_file, err, sizeof(err)) != 0 ||
	    (n->auth_file[0] && auth_file_load(n, err, sizeof(err)) != 0))
		goto out;
	ok = true;
out:
	if (!ok) {
		if (bound)
			for (unsigned i = 0; i < n->nlisteners; i++)
				if (!config_listener(o, n->listeners[i].name))
					for (unsigned w = 0; w < router.nworkers; w++)
						if (router.listen_fds[w][n->listeners[i].slot] >= 0) {
							close(router.listen_fds[w][n->listeners[i].slot]);
							router.listen_fds[w][n->listeners[i].slot] = -1;
						}
		config_unref(n);
		log_error("reload failed, the running configuration stays: %s", err);
		snprintf(msg, len, "%s", err);
	} else {
		n->generation = o->generation + 1;
		log_level = n->log_level;
		log_set_json(n->log_json);
		fd_budget(n);
		config_publish(n); /* drops the main thread's reference to o */
		o = NULL;
		cur_cfg = n;
		auth_reconfigure(n, &n->pc);
		if (!discovery_same(D.gen, n)) {
			log_info("reload: the discovery settings changed; restarting source %s",
				 n->source);
			disc_reload_begin();
			struct config *was = config_ref(D.gen);
			discovery_stop();
			if (discovery_start(n, err, sizeof(err)) != 0) {
				log_error("reload: discovery: %s; going on with the previous settings", err);
				if (discovery_start(was, err, sizeof(err)) != 0)
					log_error("reload: discovery: %s", err);
			}
			config_unref(was);
			disc_reload_end();
		}
		workers_reconfigure(&router);
		if (auth_ref) {
			config_unref(auth_ref);
			auth_ref = config_ref(n);
		}
		for (unsigned i = 0; i < n->nlisteners; i++)
			log_info("listener %s on %s:%s: target_session_attrs=%s load_balance=%s "
				 "client_tls=%s auth=%s",
				 n->listeners[i].name, n->listeners[i].host, n->listeners[i].port,
				 tsa_name(n->listeners[i].tsa), lb_name(n->listeners[i].lb),
				 client_tls_name(n->listeners[i].tls.mode),
				 auth_mode_name(n->listeners[i].auth));
		if (n->restart_needed[0])
			log_warning("reload: %s changed in the file but need%s a restart to take effect",
				    n->restart_needed, strchr(n->restart_needed, ',') ? "" : "s");
		log_info("reload: %s applied (generation %llu)", n->path,
			 (unsigned long long)n->generation);
		if (snprintf(msg, len, "reloaded %s%s%s", n->path,
			     n->restart_needed[0] ? "; needs a restart: " : "",
			     n->restart_needed) >= (int)len)
			msg[len - 1] = 0; /* cut: the log has it whole */
	}
	struct timespec wall;
	clock_gettime(CLOCK_REALTIME, &wall);
	atomic_store(&router.last_reload_ms, (long long)wall.tv_sec * 1000 + wall.tv_nsec / 1000000);
	atomic_store(&router.last_reload_ok, ok);
	atomic_fetch_add(ok ? &router.reloads_ok : &router.reloads_failed, 1);
	notify_systemd("READY=1\nSTATUS=%s", ok ? "reloaded" : "reload failed: see the log");
	return ok;
}

static void reload_cb(evutil_socket_t sig, short what, void *arg)
{
	char msg[1024];
	log_info("SIGHUP: reloading");
	reload(msg, sizeof(msg));
}

/* RELOAD from the admin console (admin thread) runs here, on the main thread. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct event *ev;
	bool asked, done, loop_running;
	int rc;
	char msg[1024];
} R = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static void console_reload_cb(evutil_socket_t fd, short what, void *arg)
{
	char msg[1024];
	bool ok = reload(msg, sizeof(msg));
	pthread_mutex_lock(&R.mu);
	R.rc = ok ? 0 : -1;
	snprintf(R.msg, sizeof(R.msg), "%s", msg);
	R.done = true;
	pthread_cond_signal(&R.cv);
	pthread_mutex_unlock(&R.mu);
}

int main_reload(char *msg, size_t len)
{
	pthread_mutex_lock(&R.mu);
	if (!R.loop_running || R.asked) {
		pthread_mutex_unlock(&R.mu);
		snprintf(msg, len, R.asked ? "a reload is already under way"
					   : "pgrouter is shutting down");
		return -1;
	}
	R.asked = true;
	R.done = false;
	event_active(R.ev, EV_READ, 0);
	while (!R.done && R.loop_running)
		pthread_cond_wait(&R.cv, &R.mu);
	int rc = R.done ? R.rc : -1;
	snprintf(msg, len, "%s", R.done ? R.msg : "pgrouter is shutting down");
	R.asked = false;
	pthread_mutex_unlock(&R.mu);
	return rc;
}

static void main_loop_ended(void)
{
	pthread_mutex_lock(&R.mu);
	R.loop_running = false;
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mu);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' }, { "check", no_argument, NULL, 'k' },
		{ "version", no_argument, NULL, 'V' },	    { "help", no_argument, NULL, 'h' },
		{ "status", no_argument, NULL, 'S' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = NULL;
	bool check = false, status = false;
	int o;
	while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (o) {
		case 'c': path = optarg; break;
		case 'k': check = true; break;
		case 'S': status = true; break;
		case 'V': printf("pgrouter %s\n", PGROUTER_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!path || optind != argc) {
		usage(stderr);
		return 2;
	}

	struct config *cfg = config_new();
	char err[1024];
	if (!cfg) {
		fprintf(stderr, "out of memory\n");
		return 1;
	}
	if (config_load(path, cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		config_unref(cfg);
		return 1;
	}
	if (status) {
		int rc = status_print(cfg, stdout);
		config_unref(cfg);
		return rc;
	}
	/* certificates and keys load now, so --check finds a bad one; auth_file
	 * too: a line that is not a verifier is an error now, not at login */
	if (tls_setup(cfg, err, sizeof(err)) != 0 || auth_file_load(cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		config_unref(cfg);
		auth_stop();
		return 1;
	}
	if (check) {
		auth_stop();
		config_unref(cfg);
		printf("%s: ok\n", path);
		return 0;
	}
	log_level = cfg->log_level;
	log_set_json(cfg->log_json);
	if (log_open(cfg->log_file, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s: %s\n", path, err);
		config_unref(cfg);
		return 1;
	}
	disc_log = disc_log_bridge;
	cfg->generation = 1;
	router.cfg = cfg; /* the main thread's reference */
	cur_cfg = cfg;
	router.nworkers = cfg->workers;
	srandom((unsigned)time(NULL) ^ (unsigned)getpid());
	struct timespec wall;
	clock_gettime(CLOCK_REALTIME, &wall);
	router.start_time = (double)wall.tv_sec + wall.tv_nsec / 1e9;
	signal(SIGPIPE, SIG_IGN);
	fd_budget(cfg);
	if (evthread_use_pthreads() != 0) {
		log_error("libevent has no pthreads support");
		return 1;
	}

	int rc = 1;
	struct event_base *base = event_base_new();
	D.base = base;
	if (config_derive(cfg, err, sizeof(err)) != 0 ||
	    listeners_assign_slots(&router, cfg, NULL, err, sizeof(err)) != 0 ||
	    listeners_bind(&router, cfg, NULL, err, sizeof(err)) != 0) {
		log_error("%s", err);
		goto out;
	}
	auth_ref = config_ref(cfg);
	if (auth_start(base, cfg, &cfg->pc, err, sizeof(err)) != 0) {
		log_error("%s", err);
		goto out;
	}
	if (discovery_start(cfg, err, sizeof(err)) != 0) {
		log_error("discovery: %s", err);
		goto out;
	}
	if (workers_start(&router, err, sizeof(err)) != 0) {
		log_error("%s", err);
		workers_shutdown(&router);
		goto out;
	}
	for (unsigned i = 0; i < cfg->nlisteners; i++) {
		const struct listener_config *l = &cfg->listeners[i];
		log_info("listener %s on %s:%s: target_session_attrs=%s load_balance=%s client_tls=%s "
			 "auth=%s",
			 l->name, l->host, l->port, tsa_name(l->tsa), lb_name(l->lb),
			 client_tls_name(l->tls.mode), auth_mode_name(l->auth));
	}
	R.ev = event_new(base, -1, 0, console_reload_cb, NULL);
	pthread_mutex_lock(&R.mu);
	R.loop_running = R.ev != NULL; /* RELOAD waits for the loop to run it */
	pthread_mutex_unlock(&R.mu);
	if (admin_start(cfg, err, sizeof(err)) != 0) {
		log_error("%s", err);
		workers_shutdown(&router);
		goto out;
	}
	log_info("pgrouter %s started: %u worker(s), %u server(s), source %s", PGROUTER_VERSION,
		 cfg->workers, cfg->nservers, cfg->source);
	notify_systemd("READY=1\nSTATUS=%u listener(s), source %s", cfg->nlisteners, cfg->source);

	struct event *sigterm = evsignal_new(base, SIGTERM, signal_cb, base);
	struct event *sigint = evsignal_new(base, SIGINT, signal_cb, base);
	struct event *sighup = evsignal_new(base, SIGHUP, reload_cb, NULL);
	event_add(sigterm, NULL);
	event_add(sigint, NULL);
	event_add(sighup, NULL);
	event_base_dispatch(base);
	main_loop_ended();

	/* the workers have drained (or the loop could not watch them: this
	 * thread waits for them) */
	workers_shutdown(&router);
	workers_wait(&router); /* the admin endpoint answers all along */
	admin_stop();
	workers_join(&router);
	event_free(sigterm);
	event_free(sigint);
	event_free(sighup);
	if (drain_watch)
		event_free(drain_watch);
	log_info("pgrouter stopped");
	rc = 0;
out:
	main_loop_ended();
	workers_wait(&router);
	admin_stop();
	workers_join(&router);
	if (R.ev)
		event_free(R.ev);
	discovery_stop();
	auth_stop();
	config_unref(auth_ref);
	topo_reset();
	disc_servers_free();
	cur_cfg = NULL;
	config_publish(NULL);
	if (base)
		event_base_free(base);
	return rc;
}
