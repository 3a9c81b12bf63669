/*
 * main.c — pgrouter's entry point. The main thread reads the configuration,
 * binds the listeners, runs the discovery sources and handles signals; the
 * workers (worker.c) carry the sessions.
 */
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

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

static void raise_fd_limit(unsigned want)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	rlim_t need = (rlim_t)want;
	if (rl.rlim_cur >= need)
		return;
	rl.rlim_cur = need < rl.rlim_max ? need : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need)
		log_warning("open files limited to %llu; max_client_conn needs about %llu",
			    (unsigned long long)rl.rlim_cur, (unsigned long long)need);
}

static int stop_signal;

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct event_base *base = arg;
	if (stop_signal) {
		log_info("received %s again while shutting down; still draining",
			 sig == SIGINT ? "SIGINT" : "SIGTERM");
		return;
	}
	stop_signal = (int)sig;
	atomic_store(&router.stopping, true);
	notify_systemd("STOPPING=1\nSTATUS=draining: open sessions finish their transactions");
	log_info("received %s: no new sessions; open sessions close at their next transaction "
		 "boundary or after shutdown_timeout (%u ms)",
		 sig == SIGINT ? "SIGINT" : "SIGTERM", router.cfg->shutdown_timeout_ms);
	event_base_loopexit(base, NULL);
}

/* SIGHUP and RELOAD: read the TLS certificates and keys again (rotated in
 * place), the auth_file, and reopen the log file. A file that does not load
 * leaves the one in use. msg: what happened, one line. */
static bool reload(char *msg, size_t len)
{
	char err[1024];
	bool ok = true;
	msg[0] = 0;
	notify_systemd("RELOADING=1\nMONOTONIC_USEC=%llu", monotonic_usec());
	/* logrotate moved the file: write to a new one at the same path */
	if (log_open(router.cfg->log_file, err, sizeof(err)) != 0) {
		log_error("reload: %s; still writing to the old log file", err);
		snprintf(msg, len, "%s", err);
		ok = false;
	}
	if (tls_setup(router.cfg, err, sizeof(err)) != 0) {
		log_error("reload: TLS files not reloaded, keeping the ones in use: %s", err);
		snprintf(msg, len, "%s", err);
		ok = false;
	}
	else
		log_info("reload: TLS certificates and keys reloaded (other settings need a restart)");
	if (router.cfg->auth_file[0]) {
		if (auth_file_load(router.cfg, err, sizeof(err)) != 0) {
			log_error("reload: auth_file not reloaded, keeping the users in use: %s", err);
			snprintf(msg, len, "%s", err);
			ok = false;
		}
		else
			log_info("reload: auth_file %s reloaded", router.cfg->auth_file);
	}
	struct timespec wall;
	clock_gettime(CLOCK_REALTIME, &wall);
	atomic_store(&router.last_reload_ms, (long long)wall.tv_sec * 1000 + wall.tv_nsec / 1000000);
	atomic_store(&router.last_reload_ok, ok);
	atomic_fetch_add(ok ? &router.reloads_ok : &router.reloads_failed, 1);
	notify_systemd("READY=1\nSTATUS=reloaded%s", ok ? "" : " (with errors: see the log)");
	if (ok)
		snprintf(msg, len, "reloaded %s", router.cfg->path);
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

	static struct config cfg;
	char err[1024];
	if (config_load(path, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (status)
		return status_print(&cfg, stdout);
	/* certificates and keys load now, so --check finds a bad one */
	if (tls_setup(&cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	/* auth_file too: a line that is not a verifier is an error now, not at login */
	if (auth_file_load(&cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		tls_teardown(&cfg);
		return 1;
	}
	if (check) {
		auth_stop();
		tls_teardown(&cfg);
		printf("%s: ok\n", path);
		return 0;
	}
	log_level = cfg.log_level;
	log_set_json(cfg.log_json);
	if (log_open(cfg.log_file, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s: %s\n", path, err);
		return 1;
	}
	disc_log = disc_log_bridge;
	router.cfg = &cfg;
	router.nworkers = cfg.workers;
	srandom((unsigned)time(NULL) ^ (unsigned)getpid());
	struct timespec wall;
	clock_gettime(CLOCK_REALTIME, &wall);
	router.start_time = (double)wall.tv_sec + wall.tv_nsec / 1e9;
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit(cfg.max_client_conn * 2 + 256);
	if (evthread_use_pthreads() != 0) {
		log_error("libevent has no pthreads support");
		return 1;
	}

	int rc = 1;
	struct event_base *base = event_base_new();
	struct disc_static *src = NULL;
	struct disc_etcd *etcd = NULL;
	struct disc_rest *rest = NULL;
	struct disc_zk *zk = NULL;
	struct disc_server *servers[CONFIG_MAX_SERVERS];
	for (unsigned i = 0; i < cfg.nservers; i++) {
		char why[300];
		servers[i] = disc_server_get(cfg.servers[i].host, cfg.servers[i].port, why, sizeof(why));
		if (!servers[i]) {
			log_error("%s:%d: servers: %s", path, cfg.servers[i].line, why);
			goto out;
		}
	}
	if (listeners_bind(&router, err, sizeof(err)) != 0) {
		log_error("%s", err);
		goto out;
	}
	static struct disc_probe_config pc;
	pc = (struct disc_probe_config){ .interval_ms = cfg.probe_interval_ms,
					 .timeout_ms = cfg.connect_timeout_ms,
					 .user = cfg.probe_user,
					 .password = cfg.probe_password,
					 .dbname = cfg.probe_dbname,
					 .sslmode = server_tls_name(cfg.server_tls),
					 .sslrootcert = cfg.server_tls_ca,
					 .sslcert = cfg.server_tls_cert,
					 .sslkey = cfg.server_tls_key,
					 .max_lag = cfg.max_lag };
	if (auth_start(base, &cfg, &pc, err, sizeof(err)) != 0) {
		log_error("%s", err);
		goto out;
	}
	if (strcmp(cfg.source, "etcd") == 0) {
		static struct disc_etcd_config ec;
		ec = (struct disc_etcd_config){ .nendpoints = cfg.netcd,
						.namespace_ = cfg.namespace_,
						.scope = cfg.scope,
						.user = cfg.etcd_user,
						.password = cfg.etcd_password,
						.cacert = cfg.etcd_cacert,
						.timeout_ms = cfg.connect_timeout_ms };
		for (unsigned i = 0; i < cfg.netcd; i++)
			ec.endpoints[i] = cfg.etcd_endpoints[i];
		etcd = disc_etcd_start(base, &ec, &pc, err, sizeof(err));
	} else if (strcmp(cfg.source, "zookeeper") == 0) {
		static struct disc_zk_config zc;
		zc = (struct disc_zk_config){ .nhosts = cfg.nzk,
					      .namespace_ = cfg.namespace_,
					      .scope = cfg.scope,
					      .session_timeout_ms = cfg.zk_session_timeout_ms };
		for (unsigned i = 0; i < cfg.nzk; i++)
			zc.hosts[i] = cfg.zk_hosts[i];
		zk = disc_zk_start(base, &zc, &pc, err, sizeof(err));
	} else if (strcmp(cfg.source, "patroni") == 0) {
		static struct disc_rest_config rcfg;
		rcfg = (struct disc_rest_config){ .nurls = cfg.npatroni,
						  .poll_ms = cfg.poll_interval_ms,
						  .timeout_ms = cfg.connect_timeout_ms };
		for (unsigned i = 0; i < cfg.npatroni; i++)
			rcfg.urls[i] = cfg.patroni_urls[i];
		rest = disc_rest_start(base, &rcfg, &pc, err, sizeof(err));
	} else {
		src = disc_static_start(base, servers, cfg.nservers, &pc, err, sizeof(err));
	}
	if (!src && !etcd && !rest && !zk) {
		log_error("discovery: %s", err);
		goto out;
	}
	if (workers_start(&router, err, sizeof(err)) != 0) {
		log_error("%s", err);
		workers_shutdown(&router);
		goto out;
	}
	for (unsigned i = 0; i < cfg.nlisteners; i++) {
		const struct listener_config *l = &cfg.listeners[i];
		log_info("listener %s on %s:%s: target_session_attrs=%s load_balance=%s client_tls=%s "
			 "auth=%s",
			 l->name, l->host, l->port, tsa_name(l->tsa), lb_name(l->lb),
			 client_tls_name(l->tls.mode), auth_mode_name(l->auth));
	}
	R.ev = event_new(base, -1, 0, console_reload_cb, NULL);
	pthread_mutex_lock(&R.mu);
	R.loop_running = R.ev != NULL; /* RELOAD waits for the loop to run it */
	pthread_mutex_unlock(&R.mu);
	if (admin_start(&cfg, err, sizeof(err)) != 0) {
		log_error("%s", err);
		workers_shutdown(&router);
		goto out;
	}
	log_info("pgrouter %s started: %u worker(s), %u server(s), source %s", PGROUTER_VERSION,
		 cfg.workers, cfg.nservers, cfg.source);
	notify_systemd("READY=1\nSTATUS=%u listener(s), source %s", cfg.nlisteners, cfg.source);

	struct event *sigterm = evsignal_new(base, SIGTERM, signal_cb, base);
	struct event *sigint = evsignal_new(base, SIGINT, signal_cb, base);
	struct event *sighup = evsignal_new(base, SIGHUP, reload_cb, NULL);
	event_add(sigterm, NULL);
	event_add(sigint, NULL);
	event_add(sighup, NULL);
	event_base_dispatch(base);
	main_loop_ended();

	/* the main loop has stopped: workers drain on their own, this thread waits */
	workers_shutdown(&router);
	workers_wait(&router); /* the admin endpoint answers all along */
	admin_stop();
	workers_join(&router);
	event_free(sigterm);
	event_free(sigint);
	event_free(sighup);
	log_info("pgrouter stopped");
	rc = 0;
out:
	main_loop_ended();
	workers_wait(&router);
	admin_stop();
	workers_join(&router);
	if (R.ev)
		event_free(R.ev);
	disc_static_stop(src);
	disc_etcd_stop(etcd);
	disc_rest_stop(rest);
	disc_zk_stop(zk);
	auth_stop();
	topo_reset();
	disc_servers_free();
	tls_teardown(&cfg);
	if (base)
		event_base_free(base);
	return rc;
}
