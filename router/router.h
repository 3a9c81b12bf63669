/*
 * router — the daemon: configuration, listeners, sessions, relay, server
 * selection, cancel routing, logging. This is the folder's one header.
 */
#ifndef ROUTER_ROUTER_H
#define ROUTER_ROUTER_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/queue.h>
#include <sys/types.h>

#include "discovery/discovery.h"
#include "pgwire/pgwire.h"

struct evbuffer;
struct evconnlistener;

/* ---- log.c ------------------------------------------------------------ */

enum log_level { LOG_ERROR = 0, LOG_WARNING, LOG_INFO, LOG_DEBUG };
extern atomic_int log_level;
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_enabled(l) ((l) <= log_level)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...) \
	do { if (log_enabled(LOG_INFO)) log_msg(LOG_INFO, __VA_ARGS__); } while (0)
#define log_debug(...) \
	do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)
int log_level_parse(const char *s);
/* A line that can repeat many times a second (accept failures, refusals):
 * log_limit_pass says whether one may be written now — at most one per
 * interval — and how many were held back since the last. */
struct log_limit {
	atomic_uint_fast64_t next_ms;
	atomic_uint held;
};
bool log_limit_pass(struct log_limit *ll, unsigned interval_ms, unsigned *held);
/* log_format = json: one JSON object a line (ts, pid, level, msg). */
void log_set_json(bool json);
/* log_file: open (or, logrotate's SIGHUP, reopen) path; empty: stderr. */
int log_open(const char *path, char *err, size_t errlen);
/* Cryptographically random bytes (OpenSSL's), buffered per thread. */
bool random_bytes(void *out, size_t n) __attribute__((warn_unused_result));

/* ---- config.c --------------------------------------------------------- */

enum tsa {
	TSA_ANY,
	TSA_READ_WRITE,
	TSA_READ_ONLY,
	TSA_PRIMARY,
	TSA_STANDBY,
	TSA_PREFER_STANDBY,
};
const char *tsa_name(enum tsa t);

enum lb {
	LB_ROUND_ROBIN,
	LB_RANDOM,
	LB_LEAST_CONNECTIONS,
};
const char *lb_name(enum lb b);

/* TLS toward clients: client_tls* keys, in [pgrouter] (the defaults) or in a
 * [listener] (its own). */
enum client_tls { CLIENT_TLS_DISABLE, CLIENT_TLS_ALLOW, CLIENT_TLS_REQUIRE };
enum { TK_MODE, TK_CERT, TK_KEY, TK_CA, TK_MIN_VERSION, TK_CIPHERS, TK_N };
struct tls_config {
	enum client_tls mode;
	char cert[512], key[512], ca[512];
	char min_version[16];
	char ciphers[512];
	int line[TK_N]; /* where each key was set; 0: not set here */
};
/* TLS toward servers: libpq's sslmode values. */
enum server_tls {
	SERVER_TLS_DISABLE,
	SERVER_TLS_PREFER,
	SERVER_TLS_REQUIRE,
	SERVER_TLS_VERIFY_CA,
	SERVER_TLS_VERIFY_FULL,
};
/* Who authenticates clients: the server through pgrouter (passthrough), or
 * pgrouter itself with verifiers from auth_file / auth_query (router). */
enum auth_mode { AUTH_PASSTHROUGH, AUTH_ROUTER };
const char *auth_mode_name(enum auth_mode m);
/* Server connections: one per client session for its life (none), or kept in
 * pools and handed from client to client (session). */
enum pool_mode { POOL_NONE, POOL_SESSION };
const char *pool_mode_name(enum pool_mode m);
const char *client_tls_name(enum client_tls m);
const char *server_tls_name(enum server_tls m);
struct listener_config {
	char name[64];
	char host[256];
	char port[8];
	enum tsa tsa;
	enum lb lb;
	int line;
	unsigned slot;  /* its index in metrics and PAUSE bits: stable across reloads */
	atomic_uint rr; /* round-robin cursor, shared by the workers */
	enum auth_mode auth;
	int auth_line; /* 0: [pgrouter]'s auth */
	enum pool_mode pool_mode;
	int pool_mode_line;
	unsigned pool_size;
	int pool_size_line;
	struct tls_config tls; /* after config_load: [pgrouter]'s keys with this listener's on top */
	SSL_CTX *ssl_ctx;      /* tls.c; NULL when client_tls = disable */
	struct config *cfg;    /* the generation it is part of */
	atomic_llong cert_not_after; /* its certificate's expiry (Unix s); 0: none */
};

struct server_config {
	char host[256];
	char port[8];
	int line;
};

#define CONFIG_MAX_LISTENERS 32
#define CONFIG_MAX_SERVERS 64

struct config {
	char path[512];
	unsigned workers;
	bool worker_packing;        /* sessions on as few workers as keep up (balance.c) */
	bool io_uring;              /* a loop turn's sends in one system call (batch.c) */
	bool debug_worker_shuffle;  /* testing: every session between transactions moves on */
	unsigned worker_busy_limit; /* percent of a CPU past which a worker hands sessions on */
	int log_level;
	bool log_json;      /* log_format = json */
	char log_file[512]; /* empty: stderr */
	unsigned connect_timeout_ms;
	unsigned queue_timeout_ms;
	unsigned startup_timeout_ms;
	unsigned shutdown_timeout_ms;
	unsigned shed_grace_ms;
	unsigned drain_timeout_ms;      /* moving: longest wait for a session's boundary */
	unsigned inspect_idle_ms;       /* moving: read the state of sessions idle this long */
	char move_custom_settings[1024]; /* custom settings ("app.x") a move carries */
	unsigned max_client_conn;
	/* TCP on client and server sockets (PgBouncer's keys): find a peer that
	 * went away without a word. 0 ms / 0 probes: the kernel's setting. */
	bool tcp_keepalive;
	unsigned tcp_keepidle_ms, tcp_keepintvl_ms, tcp_keepcnt, tcp_user_timeout_ms;
	struct tls_config client_tls;
	enum server_tls server_tls;
	char server_tls_ca[512], server_tls_cert[512], server_tls_key[512];
	int server_tls_line[4]; /* server_tls, _ca, _cert, _key */
	SSL_CTX *server_ssl_ctx; /* tls.c; NULL when server_tls = disable */

	/* authentication by pgrouter (auth.c) */
	enum auth_mode auth;
	int auth_line, auth_query_line, auth_file_line;
	char auth_query[1024];
	char auth_user[64];     /* default probe_user */
	char auth_password[256]; /* default probe_password */
	bool auth_password_set;
	char auth_file[512];
	char auth_trust_users[1024];
	unsigned auth_cache_ttl_ms;

	/* server connection pools (pool.c) */
	enum pool_mode pool_mode;
	int pool_mode_line;
	unsigned pool_size;
	char server_reset_query[512];
	unsigned server_idle_timeout_ms;
	unsigned server_lifetime_ms;

	char source[16];
	unsigned nservers;
	struct server_config servers[CONFIG_MAX_SERVERS];
	unsigned probe_interval_ms;
	char probe_user[64];
	char probe_password[256];
	char probe_dbname[64];
	int64_t max_lag;

	/* source = etcd */
	unsigned netcd;
	char etcd_endpoints[16][256];
	char namespace_[128];
	char scope[128];
	char etcd_user[128];
	char etcd_password[256];
	char etcd_cacert[512];

	/* source = stolon (its etcd: the etcd_* keys) */
	char stolon_cluster[128];
	char stolon_prefix[256];
	bool stolon_register;

	/* source = kubernetes */
	char k8s_api[256], k8s_token_file[512], k8s_cacert[512], k8s_namespace[254];
	char k8s_selector[512], k8s_role_label[254], k8s_primary_values[256];
	char k8s_replica_values[256], k8s_port[8];
	char k8s_patroni_scope[254], k8s_patroni_leader[16]; /* configmap | endpoints | off */

	/* source = zookeeper */
	unsigned nzk;
	char zk_hosts[16][256];
	unsigned zk_session_timeout_ms;

	/* source = patroni */
	unsigned npatroni;
	char patroni_urls[16][256];
	unsigned poll_interval_ms;

	unsigned nlisteners;
	struct listener_config listeners[CONFIG_MAX_LISTENERS];

	/* [admin] (admin.c, console.c) */
	char http_host[256], http_port[8]; /* http_listen; empty: off */
	int http_line;
	unsigned ready_max_stale_ms;
	unsigned nconsole; /* listen: the admin console's sockets */
	struct console_listen {
		bool unix_socket;       /* path: DIR/.s.PGSQL.PORT, as psql -h DIR -p PORT finds it */
		char host[256], port[8];
		char path[108];
	} console[4];
	int console_line;
	char admin_users[512];

	/* every key = value as read, for SHOW CONFIG */
	unsigned nkv;
	struct config_kv {
		char section[72], key[40], value[200];
		int line;
		bool pending; /* differs from what runs: applied at the next restart */
	} kv[256];

	/* ---- a running generation (not set by config_load) ---- */
	atomic_int refs;       /* config_ref/config_unref (worker.c) */
	uint64_t generation;   /* 1 at start, +1 each reload */
	char restart_needed[512]; /* settings read but not applied: they need a restart */
	/* what the discovery sources and auth_query are started with (main.c) */
	struct disc_server *srv[CONFIG_MAX_SERVERS];
	struct disc_probe_config pc;
	struct disc_etcd_config ec;
	struct disc_zk_config zc;
	struct disc_rest_config rc;
	struct disc_k8s_config kc;
};

/*
 * Configuration generations. A reload makes a new one; the old one lives on
 * while something still uses it (a worker that has not switched yet, a
 * session of a removed listener, a discovery source not restarted). Each
 * thread reads the generation in cur_cfg: a worker's switches between two
 * callbacks (its reconf event), the main thread's is the current one, the
 * admin thread takes the current one per request (config_thread_refresh).
 */
extern _Thread_local struct config *cur_cfg;
struct config *config_new(void); /* zeroed, refs = 1 */
struct config *config_ref(struct config *c);
void config_unref(struct config *c); /* the last one frees it (TLS contexts too) */
/* The current generation, with a reference for the caller. */
struct config *config_current(void);
/* Make c (the caller's reference) current; the previous one's reference is dropped. */
void config_publish(struct config *c);
void config_thread_refresh(void);
/* The listener named name in c, or NULL. */
struct listener_config *config_listener(struct config *c, const char *name);

/*
 * Read and validate path into *c (defaults first). Returns 0, or -1 with err
 * holding "FILE:LINE: key: reason" (errlen bytes).
 */
int config_load(const char *path, struct config *c, char *err, size_t errlen)
	__attribute__((warn_unused_result));
/* Parse "3s", "250ms", "1m" into ms; "16MB", "512kB" into bytes. 0 on success. */
int parse_duration_ms(const char *s, unsigned *out);
int parse_size(const char *s, int64_t *out);

/* ---- select.c --------------------------------------------------------- */

/* Does entry e fit policy t? standby_pass: prefer-standby's first pass. */
bool select_eligible(enum tsa t, const struct topo_entry *e, int64_t max_lag);

/* Servers a session tried in the current view (by server id: ids only grow,
 * every address a DCS ever names takes one, so no bitmask). */
#define TRIED_MAX 8
struct tried {
	uint32_t id[TRIED_MAX];
	unsigned n;
};
bool tried_has(const struct tried *tr, uint32_t id);
/* *trp made on the first refusal (a session that never met one holds none).
 * false when full or out of memory: the session then waits and tries again
 * from scratch. */
bool tried_add(struct tried **trp, uint32_t id);
void tried_clear(struct tried **trp);

/*
 * Pick a server for policy t among topo's entries not in tried (NULL: none).
 * Returns the entry index or -1. rr is the listener's round-robin cursor.
 */
int select_server(const struct topology *topo, enum tsa t, enum lb b, int64_t max_lag,
		  atomic_uint *rr, const struct tried *tried);

/* Does a session already on e still fit policy t? Role only: lag and
 * noloadbalance decide where new sessions go, they do not end sessions. */
bool select_still_fits(enum tsa t, const struct topo_entry *e);
/* A standby serving policy t lags past max_lag (sessions that can move leave it). */
bool select_lagging(enum tsa t, const struct topo_entry *e, int64_t max_lag);
/* Is a server other than srv eligible for policy t (prefer-standby: a standby)? */
bool select_other_eligible(const struct topology *topo, enum tsa t, int64_t max_lag,
			   const struct disc_server *srv);
/* Policies whose sessions write: shed at once when their server stops fitting. */
bool tsa_writes(enum tsa t);

/* After authentication: do the server's reported parameters fit policy t?
 * hot_standby / read_only: 1 on, 0 off, -1 not reported. */
bool select_params_fit(enum tsa t, int hot_standby, int read_only);

/* Counts for error messages: how many servers are known / reachable / primary. */
void select_describe(const struct topology *topo, char *buf, size_t len);

/* ---- cancel.c --------------------------------------------------------- */

/*
 * Clients get backend keys that pgrouter makes (random, unique among live
 * sessions), mapped to the server connection the session uses now.
 * cancel_new: a key of key_len bytes (4 for protocol 3.0, up to 256 for 3.2)
 * into *pid and key; NULL on out of memory.
 * cancel_set_server: the server connection behind it (srv, its own pid/key).
 */
struct cancel_entry *cancel_new(uint32_t *pid, uint8_t *key, uint32_t key_len);
void cancel_set_server(struct cancel_entry *e, struct disc_server *srv, uint32_t pid,
		       const uint8_t *key, uint32_t key_len);
void cancel_unregister(struct cancel_entry *e);
/* The server connection behind a client's key: fills the CancelRequest to
 * send to it (out, capacity cap: 12 + its key) and returns its length with
 * *srv set, or 0 when no live session holds the key. */
size_t cancel_lookup(uint32_t pid, const uint8_t *key, uint32_t key_len,
		     struct disc_server **srv, uint8_t *out, size_t cap);

/* ---- auth.c ------------------------------------------------------------ */

struct worker;

#define AUTH_QUERY_DEFAULT                                                               \
	"SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1 AND rolcanlogin AND " \
	"(rolvaliduntil IS NULL OR rolvaliduntil > now())"

/* What pgrouter knows of a user: a verifier (SCRAM or md5), or that the
 * configuration trusts it. An unknown user gets a mock SCRAM verifier. */
enum cred_kind { CRED_SCRAM, CRED_MD5, CRED_TRUST };
struct cred {
	enum cred_kind kind;
	bool mock;
	bool has_client_key; /* client_key recovered from the client's SCRAM proof */
	struct pgw_scram_verifier scram;
	char md5[PGW_MD5_LEN + 1];
	uint8_t client_key[PGW_SCRAM_KEY_LEN]; /* memory only, wiped with the session */
};
enum { AUTH_FOUND, AUTH_PENDING, AUTH_UNAVAILABLE };

/* Set up (main thread, before the workers start): the mock secret, the
 * auth_query machinery on base (connecting with pc's database and TLS
 * settings, which must outlive it), the auth_file. 0, or -1 with err. */
int auth_start(struct event_base *base, const struct config *c,
	       const struct disc_probe_config *pc, char *err, size_t errlen)
	__attribute__((warn_unused_result));
void auth_stop(void);
/* A reload: auth_query's settings from c and pc from now on (main thread; both
 * must outlive their use: the caller keeps a reference to their generation). */
void auth_reconfigure(const struct config *c, const struct disc_probe_config *pc);
/* (Re)read auth_file (start, --check, SIGHUP). On error the table in use stays. */
int auth_file_load(const struct config *c, char *err, size_t errlen)
	__attribute__((warn_unused_result));
/*
 * A worker asks what it may check user against. AUTH_FOUND: *out filled
 * (a mock verifier for an unknown user). AUTH_PENDING: auth_query runs; the
 * worker's auth_done event fires when it answers, ask again then.
 * AUTH_UNAVAILABLE: the lookup failed (why).
 */
int auth_lookup(struct worker *w, const char *user, struct cred *out, char *why, size_t whylen);
/* The admin console: user's SCRAM verifier when user is in admin_users and
 * auth_file has one for it; otherwise false, with a mock verifier in *out. */
bool auth_admin_verifier(const char *admin_users, const char *user,
			 struct pgw_scram_verifier *out);
/* A login failed with the cached verifier: look it up again next time. */
void auth_forget(const char *user);

/* ---- metrics.c: counters the workers keep, /metrics renders ------------ */

#define METRIC_SERVERS 256 /* servers with a larger id share the last slot */
enum rej_reason { REJ_MAX_CLIENT_CONN, REJ_TLS_REQUIRED, REJ_NO_SERVER, REJ_POOL_FULL,
		  REJ_AUTH_FAILED, REJ_SHUTTING_DOWN, REJ_PROTOCOL, REJ_OPEN_FILES, REJ_N };
enum conn_err { CONN_REFUSED, CONN_TIMEOUT, CONN_TLS, CONN_SERVER_REFUSED, CONN_CLOSED,
		CONN_ERR_N };
enum shed_reason { SHED_ROLE_CHANGE, SHED_CANNOT_MOVE, SHED_DRAIN_TIMEOUT, SHED_MAINT,
		   SHED_N };
enum move_cause { MOVE_SWITCHOVER, MOVE_ROLE_CHANGE, MOVE_SERVER_LOST, MOVE_LAG, MOVE_MAINT,
		  MOVE_N };
#define HIST_BUCKETS 12
/* Bucket counts (not cumulative; the last is +Inf) and the sum in µs. */
struct hist {
	atomic_uint_fast64_t n[HIST_BUCKETS + 1];
	atomic_uint_fast64_t sum_us;
};
struct listener_stats {
	atomic_int_fast64_t clients, queued; /* gauges: this worker's share */
	atomic_uint_fast64_t accepted, rejected[REJ_N], tls_failures;
	struct hist queue_wait;
};
struct server_stats {
	atomic_int_fast64_t sessions[CONFIG_MAX_LISTENERS];
	atomic_uint_fast64_t connect_errors[CONN_ERR_N], shed[SHED_N], moved[MOVE_N];
	atomic_uint_fast64_t bytes_sent, bytes_received; /* relayed to / from the server */
	struct hist connect_time;
};
/* One per worker, written only by it (no locked instructions); readers sum. */
struct worker_stats {
	struct listener_stats l[CONFIG_MAX_LISTENERS];
	struct server_stats s[METRIC_SERVERS];
};
static inline void stat_add(atomic_uint_fast64_t *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
			      memory_order_relaxed);
}
static inline void gauge_add(atomic_int_fast64_t *g, int64_t n)
{
	atomic_store_explicit(g, atomic_load_explicit(g, memory_order_relaxed) + n,
			      memory_order_relaxed);
}
uint64_t now_us(void);
/* A counter (gauge) summed over the workers: STATS_OFF(l[i].accepted). */
#define STATS_OFF(field) offsetof(struct worker_stats, field)
uint64_t stats_sum_u(size_t off);
int64_t stats_sum_i(size_t off);
void hist_observe(struct hist *h, uint64_t us);
/* Prometheus text format of everything, into out. */
struct evbuffer;
void metrics_render(struct evbuffer *out);
struct session;
/* The calling worker's counters for a session's listener, or for a server. */
struct listener_stats *lstats(const struct session *s);
struct server_stats *srv_stats(const struct session *s, const struct disc_server *srv);
void stat_reject(const struct session *s, enum rej_reason r);

/* ---- worker.c / listener.c / session.c / relay.c ---------------------- */

struct session;
TAILQ_HEAD(session_list, session);

struct worker {
	unsigned id;
	pthread_t thread;
	struct event_base *base;
	struct event notify;   /* a new topology snapshot was published */
	struct event shutdown; /* main thread asks to drain */
	struct event drain_deadline;
	struct event auth_done; /* auth.c answered a lookup this worker waits for */
	struct event pool_wake; /* a pool this worker waits on has room, or must give some */
	struct event pool_sweep; /* closes idle server connections past their time */
	struct event inspect_sweep; /* reads the state of sessions idle since the last turn */
	struct event ping;          /* admin.c asks: is this loop turning? */
	struct event reconf;        /* a reload published a new configuration generation */
	struct config *cfg;         /* this worker's generation (its threads' cur_cfg) */
	struct event call;          /* the admin console asks for something (workers_call) */
	struct wcall *pending_call; /* under the call lock */
	atomic_bool loop_ended;
	atomic_uint_fast64_t pong_ms; /* when it last answered */
	struct worker_stats *stats; /* metrics.c */
	struct pool *pools;     /* this worker's pools of server connections */
	struct topology *topo; /* this worker's reference to the current snapshot */
	struct evconnlistener *listeners[CONFIG_MAX_LISTENERS]; /* by listener slot */
	struct session_list sessions; /* every session */
	struct session_list queued;   /* waiting for an eligible server */
	int spare_fd; /* /dev/null, given up to accept and refuse a client at EMFILE */
	unsigned nsessions;
	bool draining;
	bool started;
	struct accept_arg {
		struct worker *w;
		struct listener_config *l;
	} accept_args[CONFIG_MAX_LISTENERS]; /* by slot */
	/* balance.c: how busy it is, and the sessions other workers hand it */
	struct event tick;
	struct event inbox_ev;
	pthread_mutex_t inbox_lock;
	struct session_list inbox; /* under inbox_lock */
	bool inbox_closed;         /* under inbox_lock: the loop ended, take none */
	unsigned cooldown;         /* ticks before it hands sessions on again */
	uint64_t tick_cpu_ns, tick_wall_ns;
	atomic_uint busy_pm;                /* ‰ of one CPU, smoothed over a few ticks */
	atomic_uint_fast64_t moved_in;      /* sessions taken from other workers */
	uint8_t scratch[64 * 1024]; /* relay read buffer, see relay.c */
};

struct router {
	struct config *cfg;
	unsigned nworkers;
	struct worker *workers;
	atomic_uint clients; /* open client connections, all workers */
	/* clients the open files limit has room for (each with its server
	 * connection); past it a client is refused at once (main.c) */
	atomic_uint fd_clients;
	atomic_uint past_room; /* sessions accepted past it, to be told 53300 (session.c) */
	atomic_bool stopping; /* SIGTERM/SIGINT: draining for shutdown */
	/* reloads (SIGHUP): counts by result, and the last one's wall-clock ms */
	atomic_uint_fast64_t reloads_ok, reloads_failed;
	atomic_llong last_reload_ms;
	atomic_bool last_reload_ok;
	double start_time;    /* wall clock, seconds */
	atomic_uint_fast64_t next_session_id;
	int (*listen_fds)[CONFIG_MAX_LISTENERS]; /* [worker][listener slot], until a worker takes it */
	char slot_names[CONFIG_MAX_LISTENERS][64]; /* which listener each slot belongs to */
	atomic_uint paused; /* PAUSE (admin console): bit = listener slot */
	atomic_uint_fast64_t admin_kills; /* sessions ended by KILL */
};
extern struct router router;

static inline bool listener_paused(const struct listener_config *l)
{
	return atomic_load_explicit(&router.paused, memory_order_relaxed) >> l->slot & 1;
}

/* balance.c: sessions packed onto as few workers as keep up (its header). */
void balance_init(struct worker *w);
/* Worker 0 took listening sockets: new connections go where balance says. */
void balance_listeners(struct worker *w);
/* The loop ended: sessions handed to w since are taken back by their senders;
 * those already in its inbox join its list (to be freed with it). */
void balance_close(struct worker *w);
/* Workers new sessions go to (1..nworkers). */
unsigned balance_active(void);

/* notify.c: a line of systemd's sd_notify protocol (no-op outside systemd). */
void notify_systemd(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
unsigned long long monotonic_usec(void);

/* status_cli.c: pgrouter --status: the running pgrouter's /status as a table. */
int status_print(const struct config *c, FILE *out);

/* admin.c: the HTTP endpoint (off without http_listen) and the admin console
 * (off without [admin] listen), on one thread. Start after the workers; stop
 * after their loops ended, before they are freed. */
int admin_start(const struct config *c, char *err, size_t errlen);
void admin_stop(void);
/* console.c: the admin console's sockets on the admin thread's base. */
int console_start(struct event_base *base, const struct config *c, char *err, size_t errlen);
void console_stop(void);
/* main.c: RELOAD from the console, run on the main thread; 0 or -1, with what
 * happened in msg either way. */
int main_reload(char *msg, size_t len);

/* worker.c: run fn on every worker's thread (all at once) and wait for their
 * answers, at most timeout_ms; each one's output is appended to out in worker
 * order. One caller at a time (the admin thread). Returns how many answered. */
struct wcall_arg {
	int op;
	uint64_t id;
	char text[256];
	unsigned count; /* fn counts what it did on its worker; the caller gets the sum */
};
typedef void (*wcall_fn)(struct worker *w, struct wcall_arg *a, struct evbuffer *out);
unsigned workers_call(wcall_fn fn, struct wcall_arg *a, struct evbuffer *out, unsigned timeout_ms);

/* Bind c's listeners (those that old, when not NULL, does not have) into
 * r->listen_fds; on error none of them stays bound. */
/* "host:port" ("[v6]:port") of a peer's address, for logs and SHOW SESSIONS. */
struct sockaddr;
void sockaddr_describe(const struct sockaddr *sa, char *buf, size_t len);
/* TCP_NODELAY, keepalive and user timeout as c says (sockets to servers, and
 * listening sockets: inherited by the accepted ones). */
void tcp_tune(int fd, const struct config *c);
int listeners_bind(struct router *r, const struct config *c, const struct config *old, char *err,
		   size_t errlen);
void listeners_unbind_unclaimed(struct router *r);
/* Give c's listeners their slots: old's for the names it had, free ones for
 * new names. -1 when none is free (err). */
int listeners_assign_slots(struct router *r, struct config *c, const struct config *old,
			   char *err, size_t errlen);
/* A reload made a new generation current: tell every worker. */
void workers_reconfigure(struct router *r);
int workers_start(struct router *r, char *err, size_t errlen);
/* Draining: have all worker loops ended? */
bool workers_all_ended(struct router *r);
/* A second SIGTERM/SIGINT: the drain's remaining sessions are closed now. */
void workers_close_now(struct router *r);
void workers_shutdown(struct router *r);
/* A worker catches up with the configuration generation and the topology
 * snapshot published last (what its reconf and notify events would do). */
void worker_catch_up(struct worker *w);
/* Wait for the workers' loops to end; then free them (workers_join does both). */
void workers_wait(struct router *r);
void workers_join(struct router *r);

/*
 * A session: one client connection and, once routed, one server connection.
 * States change only through session_set_state() (session.c). Transaction
 * status and copy mode are not states of their own: the server stream's
 * scanner (s.scan) already knows them.
 */
enum sess_state {
	SS_STARTUP,    /* reading the client's first packet(s) */
	SS_LOOKUP,     /* auth = router: waiting for the user's verifier (auth_query) */
	SS_LOGIN,      /* auth = router: pgrouter authenticates the client */
	SS_QUEUED,     /* no eligible server yet: waiting for a new snapshot */
	SS_CONNECTING, /* TCP connect to the chosen server */
	SS_AUTH,       /* startup packet sent; server messages read whole until ReadyForQuery
			  (auth = router: pgrouter answers the server's authentication) */
	SS_HANDOVER,   /* pooled: the client's startup parameters applied on its connection */
	SS_RELAY,      /* bytes move both ways */
	SS_INSPECT,    /* moving: the old server says what state the session holds (move.c) */
	SS_RESTORE,    /* moving: that state re-created on the new server */
	SS_LOST,       /* its server connection died between transactions: waiting to
			  learn whether the server left (then move) or not (then close) */
	SS_CANCEL,     /* forwarding a CancelRequest to the server that owns the key */
	SS_CLOSING,    /* flushing a final message to the client, then lingering for its EOF */
};
const char *sess_state_name(enum sess_state st);

/* An end's owner (a session's c or s, a pooled connection's e) is END_OWNER of it. */
#define END_OWNER(e, type, member) ((type *)(void *)((char *)(e) - offsetof(type, member)))

/* One side of a session. `out` holds what could not be written to fd yet.
 * One event per socket, registered for what rd_on and wr_on ask and not in
 * epoll at all while neither does. Its callback is the owner's, which hands
 * the end to end_dispatch with the owner's read and write functions. */
struct end {
	int fd;
	uint8_t rd_what;          /* what a read watch waits for: EV_READ and/or EV_CLOSED */
	uint8_t armed;            /* what ev is registered for (0: not added) */
	bool rd_on : 1, wr_on : 1, paused : 1;
	bool rd_wants_wr : 1, wr_wants_rd : 1; /* TLS: a read waits for writability, or the reverse */
	bool staged : 1;          /* bytes for fd wait in this loop turn's batch (batch.c) */
	bool held : 1;            /* TLS: ciphertext pgrouter holds for fd (tls.c) */
	struct event ev;
	struct evbuffer *out;     /* created on first use */
	struct pgw_scanner scan;  /* over the bytes read from fd */
	SSL *ssl;                 /* TLS on fd, or NULL (tls.c) */
};

/* An end's event fired: at most one of rd and wr per call (each is called
 * with the end as its argument), since either may free the owner (and e with
 * it, after event_del). When the socket is both readable and writable, the
 * read is activated again for later in this loop turn — what two separate
 * events would have done. */
static inline void end_dispatch(struct end *e, evutil_socket_t fd, short what,
				event_callback_fn rd, event_callback_fn wr)
{
	short r = e->rd_on ? (short)(what & (EV_READ | EV_CLOSED)) : 0;
	if (e->wr_on && (what & EV_WRITE)) {
		if (r)
			event_active(&e->ev, r, 0);
		wr(fd, EV_WRITE, e);
	} else if (r) {
		rd(fd, r, e);
	}
}

struct session {
	TAILQ_ENTRY(session) link;  /* worker->sessions */
	TAILQ_ENTRY(session) qlink; /* worker->queued while SS_QUEUED */
	uint64_t id;
	struct worker *w;
	struct listener_config *l; /* holds a reference to l->cfg */
	struct end c, s;
	struct event *timer; /* startup, queue, connect or linger deadline, by state */
	struct evbuffer *in; /* STARTUP: client bytes; AUTH: server bytes, parsed whole */
	struct evbuffer *replay; /* client bytes its dead server never took: for the next */
	uint8_t *startup;    /* the client's StartupMessage, kept until the session relays
				(shared_bytes: its pooled connection may hold it too) */
	uint32_t pipelined_len; /* passthrough: client bytes kept after the startup packet */
	uint32_t idle_mark;     /* c.scan.messages at the last sweep (low bits: compared
				   for equality only, a sweep apart) */
	struct disc_server *srv;
	struct cancel_entry *cancel;
	struct login *login;  /* auth = router: the exchanges in progress (session.c) */
	struct srv_conn *sc;  /* pool_mode = session: the pooled server connection held */
	struct cred *cred;    /* auth = router: the user's verifier, and its ClientKey */
	struct move *mv;      /* a move under way: its plan (move.c) */
	struct tried *tried;  /* servers that refused this session in this view, or NULL */
	unsigned state : 4;            /* enum sess_state */
	unsigned startup_len : 14;     /* at most PGW_STARTUP_MAX */
	signed hot_standby : 2, read_only : 2; /* reported by the server; -1 unknown */
	unsigned ssl_done : 1;         /* as PostgreSQL's ProcessStartupPacket: no SSLRequest */
	unsigned gss_done : 1;         /* ... or GSSENCRequest may follow */
	unsigned plain_after_tls : 1;  /* bytes came with the SSLRequest: FATAL once encrypted */
	unsigned v2_errors : 1;        /* a protocol 2 client: errors in its format */
	unsigned server_spoke : 1;     /* a byte from the server arrived */
	unsigned client_saw : 1;       /* a server message was passed to the client */
	unsigned draining : 1;         /* close at the next transaction boundary */
	unsigned dead : 1;             /* free at the end of the current callback */
	unsigned queued : 1;
	unsigned over_limit : 1;       /* accepted past max_client_conn */
	unsigned past_room : 1;        /* ... or past what the open files limit has room for */
	unsigned shedding : 1;         /* server no longer fits: close at the next boundary */
	unsigned srv_role : 2;         /* enum disc_role of the server when the session started */
	unsigned s_phase : 2;          /* server connection: enum srv_phase (session.c) */
	unsigned tls_direct : 1;       /* the client began with a TLS ClientHello */
	unsigned plus_dropped : 1;     /* SCRAM-SHA-256-PLUS taken out of the server's offer */
	unsigned router_auth : 1;      /* pgrouter authenticates the client (auth = router) */
	unsigned pooled : 1;           /* pool_mode = session for this session */
	unsigned pool_full : 1;        /* queued because its pool was at pool_size */
	unsigned client_quit : 1;      /* the client's Terminate was kept from the server */
	unsigned quit_passed : 1;      /* ... or it went to the server (not reusable then) */
	unsigned move_wanted : 1;      /* server no longer fits: move at the next boundary */
	unsigned moving : 1;           /* between leaving one server and relaying on the next */
	unsigned replication : 1;      /* a replication connection (never moved or pooled) */
	unsigned known : 1;            /* s->mv's plan was the session's state when the
					  client had sent known_at messages */
	unsigned inspect_only : 1;     /* INSPECT while idle, to know the state; no move */
	unsigned srv_counted : 1;      /* metrics: counted in its server's sessions */
	unsigned move_cause : 3;       /* enum move_cause of the move wanted or under way */
	unsigned held : 1;             /* PAUSE: its client is not read until RESUME */
	uint64_t deadline_ms; /* end of queue_timeout */
	uint64_t known_at;             /* c.scan.messages then */
	uint64_t wait_us;              /* metrics: when it began to wait in the queue,
					  or for its server's TCP connect */
	uint64_t started_ms;           /* accepted (SHOW SESSIONS) */
	const char *peer, *user, *who; /* who: user@database (session_name); one
					  allocation, at peer (but for no_name) */
};

/* session.c */
/* A block of bytes with more than one owner: a pooled connection logs in with
 * its first client's startup packet and both keep it (the connection to RESET
 * to it, the session to log in elsewhere), so they share one copy. The count
 * is atomic: the two can end up on different workers. */
uint8_t *shared_bytes_new(size_t len);
uint8_t *shared_bytes_ref(uint8_t *p);
void shared_bytes_unref(uint8_t *p); /* NULL: nothing */
/* A client there is no room for (the open files limit, or twice
 * max_client_conn): FATAL 53300 at once, before its startup packet — as
 * PostgreSQL's postmaster answers when it cannot start a backend — and closed.
 * Costs no session and holds its descriptor for no time. */
void session_refuse(struct worker *w, struct listener_config *l, int fd, enum rej_reason why,
		    const char *detail);
void session_start(struct worker *w, struct listener_config *l, int fd, struct sockaddr *sa,
		   int salen);
void session_set_state(struct session *s, enum sess_state st);
/* Send FATAL sqlstate + message to the client (when the stream allows it) and close. */
void session_fail(struct session *s, const char *sqlstate, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Close without a message; client_gone: the client already left (no lingering). */
void session_close(struct session *s, bool client_gone);
void sessions_topology_changed(struct worker *w);
/* A new configuration generation: sessions follow their listener into it (by
 * name; those of a removed listener keep the old one and finish there), and
 * are checked as after a role change. */
void sessions_config_changed(struct worker *w);
/* PAUSE or RESUME: hold idle sessions of paused listeners, let the others go. */
void sessions_pause_changed(struct worker *w);
/* Sessions queued for room in a pool try again. */
void sessions_retry_queued(struct worker *w);
void sessions_drain(struct worker *w);
/* Sessions idle since the last call whose state pgrouter does not know are
 * asked for it (inspect_idle). */
void sessions_inspect_idle(struct worker *w);
void sessions_close_all(struct worker *w, const char *why);
/* Moving a session to another worker (balance.c). session_movable: every
 * request answered, nothing pending in pgrouter (no output, no TLS
 * record read ahead, no deadline, no move or login, not held or draining).
 * session_depart (on its worker's thread): its events leave that loop, it
 * leaves the worker's list and gauges; false (and nothing changed) when it
 * cannot go. session_return puts a departed session back where it was.
 * session_arrive (on the new worker's thread, after worker_catch_up): it
 * joins that worker, and is checked against its configuration and snapshot
 * as after a change of either. */
bool session_movable(const struct session *s);
bool session_depart(struct session *s);
void session_return(struct session *s);
void session_arrive(struct worker *w, struct session *s);
void sessions_free_all(struct worker *w);
/* for login.c: the timer (ms from now), which client events to watch, the end
 * of a callback (frees a dead session), and "the client is authenticated". */
void session_timer(struct session *s, uint64_t ms);
void session_watch_client(struct session *s, short what);
void session_finish(struct session *s);
void session_authenticated(struct session *s);

/* pool.c: pool_mode = session */
enum { POOL_GOT, POOL_NEW, POOL_FULL };
/*
 * A server connection for s on srv (role: as the snapshot says now).
 * POOL_GOT: an idle one is attached (s->sc set, its socket in s->s): hand it
 * over. POOL_NEW: s->sc is a new connection's record (counted): connect.
 * POOL_FULL: pool_size reached; wait (the worker's pool_wake re-routes).
 */
int pool_take(struct session *s, struct disc_server *srv, enum disc_role role);
/* Is this startup parameter part of a pool's key (user, database, options,
 * replication, _pq_.*), so never SET at hand-over? */
bool pool_param_keyed(const char *name);
/* The startup packet s->sc logged in with (its parameters' RESET values), and
 * how long it was idle before s took it (0: new). */
const uint8_t *pool_conn_startup(const struct session *s, uint32_t *len);
uint64_t pool_conn_idle_ms(const struct session *s);
/* A server message while the connection is set up for s: record
 * ParameterStatus, BackendKeyData and NegotiateProtocolVersion in s->sc. */
void pool_note(struct session *s, uint8_t type, const uint8_t *body, uint32_t len);
/* The session is done with s->sc: reusable (it sits between transactions
 * with nothing in flight) is reset and parked, otherwise closed. */
void pool_give_back(struct session *s, bool reusable);
/* The parameters the client must be told, as ParameterStatus messages, and
 * the protocol negotiation, into out. */
bool pool_replay(struct session *s, struct evbuffer *out);
/* The client's cancel key now reaches s->sc's backend. */
void pool_point_cancel(struct session *s);
/* Move s->sc's socket (and TLS) into e, whose events the caller assigns. */
void pool_adopt(struct session *s, struct end *e);
/* Length of the server's backend key on s->sc. */
uint32_t pool_key_len(const struct session *s);
/* The session no longer waits for room in a pool. */
void pool_unwait(struct session *s);
/* s->sc goes with its session to another worker: pool_depart on the old
 * worker's thread (what it shares with that worker's pool is copied; false
 * when out of memory), pool_arrive on the new one's (it joins w's pool of
 * its key; false when out of memory). */
bool pool_depart(struct session *s);
bool pool_arrive(struct session *s, struct worker *w);
/* Pooled server connections to srv, all pools and workers: every state, and idle. */
void pool_counts(const struct disc_server *srv, int *total, int *idle);
/* Worker-wide: a new snapshot (close connections whose server changed), exit. */
void pools_topology_changed(struct worker *w);
void pools_close_all(struct worker *w);
/* After the worker's loop ended and its sessions are freed. */
void pools_free(struct worker *w);
void pools_init(struct worker *w);
void pool_wake_cb(evutil_socket_t fd, short what, void *arg);

/* move.c: the state a moving session carries (see its header) */
/* Queue the inspection query on s->s (a new plan). false: out of memory. */
bool move_inspect_send(struct session *s);
/* The inspection's answers (LOGIN_SWALLOW, or LOGIN_PASS_ON for asynchronous
 * messages, which are the client's). */
int move_inspect_message(struct session *s, uint8_t type, const uint8_t *body, uint32_t len);
/* Why the session cannot move (after the inspection or the restore), or NULL. */
const char *move_reason(const struct session *s);
bool move_plan_empty(const struct session *s);
unsigned move_plan_statements(const struct session *s);
/* Queue the plan and a Sync on the new server connection. */
bool move_restore_send(struct session *s);
int move_restore_message(struct session *s, uint8_t type, const uint8_t *body, uint32_t len);
/* The session leaves s->srv now (lost: the server's last words, or NULL). */
bool move_leaving(struct session *s, const char *lost);
const char *move_from(const struct session *s);
const struct disc_server *move_from_server(const struct session *s);
const char *move_lost(const struct session *s);
uint64_t move_started_ms(const struct session *s);
void move_free(struct session *s);

/* login.c: auth = router */
/* What becomes of one server message read whole before (or between)
 * relaying: the session failed, the message is kept from the client, or it
 * goes to the client. */
enum { LOGIN_STOP, LOGIN_SWALLOW, LOGIN_PASS_ON };
void login_start(struct session *s);
void login_client_read(struct session *s);
void login_lookups_answered(struct worker *w);
/* An Authentication message from the server, answered here: LOGIN_SWALLOW
 * (not for the client), or LOGIN_STOP (the session failed). */
int login_server_auth(struct session *s, const uint8_t *body, uint32_t len);
/* The exchanges are over (RELAY): their state is wiped and freed. */
void login_done(struct session *s);
/* The session ends: credentials (and the ClientKey) too. */
void login_free(struct session *s);
#define slog(level, s, fmt, ...) \
	do { \
		if (log_enabled(level)) \
			log_msg(level, "session %llu %s %s listener %s%s%s: " fmt, \
				(unsigned long long)(s)->id, (s)->peer, \
				(s)->who[0] ? (s)->who : "-", (s)->l->name, \
				(s)->srv ? " server " : "", (s)->srv ? (s)->srv->name : "", \
				##__VA_ARGS__); \
	} while (0)

/* batch.c: relayed sends, submitted at the end of the loop turn */
/* Stage n bytes for `to` (nothing staged, queued or held on it yet).
 * false: not staged (io_uring = off or refused, or too long): send now. */
bool batch_add(struct end *to, const void *p, size_t n);
/* Submit what is staged; a short send's rest goes in front of its end's out
 * (TLS: it is held, end->held). */
void batch_flush(void);
void batch_free(void); /* the worker's loop ended */
/* Before anything else is written to e's socket or done to it. */
static inline void end_settle(struct end *e)
{
	if (e->staged)
		batch_flush();
}
/* Output waits for e's socket: queued, staged, or held. */
static inline bool end_busy(const struct end *e)
{
	return e->staged || e->held || (e->out && evbuffer_get_length(e->out));
}

/* relay.c */
#define RELAY_HIGH_WATERMARK (256 * 1024)
#define RELAY_LOW_WATERMARK (64 * 1024)
/* e's socket fd is watched on base for ops; nothing watched yet. e's event
 * must not be added. */
void end_setup(struct end *e, struct event_base *base, int fd, event_callback_fn cb);
void end_close(struct end *e);
/* The end's event leaves its loop (detach, on the owner's thread) and is
 * registered on base as it was (attach, on base's thread). */
void end_detach(struct end *e);
void end_attach(struct end *e, struct event_base *base);
void end_read(struct end *e, bool on);
void end_write(struct end *e, bool on);
/* What a read watch waits for: EV_READ, EV_CLOSED (only the peer's close), or both. */
void end_read_what(struct end *e, short what);
/* Run e's read callback in this loop turn (bytes OpenSSL holds). */
void end_kick_read(struct end *e);
/* Queue bytes (copied) for e. Returns false on out of memory. */
bool end_queue(struct end *e, const void *p, size_t n);
/* The next whole message at the head of in: its bytes (header and body, not
 * removed), type and body length; NULL while it is not all there, or with
 * *bad set when its length field is invalid (above max). */
const uint8_t *msg_next(struct evbuffer *in, uint32_t max, uint8_t *type, uint32_t *body,
		       bool *bad);
/* Write what e->out holds. Returns -1 on a hard error, else bytes still queued. */
ssize_t end_flush(struct end *e);
/* tls.c */
/* Build the TLS contexts config asks for (start, --check, SIGHUP). On error
 * err is "FILE:LINE: key: reason" and the contexts in use are unchanged. */
int tls_setup(struct config *c, char *err, size_t errlen);
void tls_teardown(struct config *c);
/* A new SSL on fd: accepting for listener l, or connecting to srv (SNI, and
 * the host check of verify-full). NULL on failure. */
SSL *tls_accept_ssl(struct listener_config *l, struct end *e);
SSL *tls_connect_ssl(const struct disc_server *srv, struct end *e);
/* e's SSL was moved onto it from another end (pooling). */
void tls_rehome(struct end *e);
/* end_send, with the records it makes staged in the loop turn's batch. */
ssize_t end_send_staged(struct end *e, const void *buf, size_t len);
/* Where e's ciphertext waits, first in line: the rest of a staged record the
 * socket did not take (batch.c puts it there and sets e->held). */
struct evbuffer **tls_held_buffer(struct end *e);
/* Send what e holds: -1 on a hard error, else bytes still held. */
ssize_t tls_flush_held(struct end *e);
/* Drive e's handshake: 1 done, 0 in progress (events armed), -1 failed (why). */
int end_handshake(struct end *e, char *why, size_t whylen);
/* read()/send() through e's TLS if it has one: -1 with errno EAGAIN when it
 * must wait, 0 on EOF. */
ssize_t end_recv(struct end *e, void *buf, size_t len);
ssize_t end_send(struct end *e, const void *buf, size_t len);
/* close_notify (TLS) and half-close. */
void end_shutdown_wr(struct end *e);
/* Does the client end present the very certificate the server end received? */
bool tls_same_certificate(const struct end *c, const struct end *s);
void tls_describe(const struct end *e, char *buf, size_t len);
/* Channel binding data (tls-server-end-point) of the certificate pgrouter
 * presented on client end c. Returns its length, or -1. */
int tls_cbind_data(const struct end *c, uint8_t *out, size_t cap);
/* Read from `from` and pass it on to `to`, scanning it. Returns -1 on EOF or
 * error (errno 0 for EOF), -2 on a framing error, RELAY_TO_FAILED when
 * writing to `to` failed (errno says why; what it did not take is in to->out),
 * else 0. batch: the write may wait for the end of the loop turn (batch.c),
 * and a failure then shows on `to`'s write watch instead; false where the
 * caller must know at once. */
#define RELAY_TO_FAILED (-3)
int relay_move(struct session *s, struct end *from, struct end *to, bool batch);
/* After `to` drained: resume `from` if it was paused at the high watermark. */
void relay_resume(struct end *from, struct end *to);

#endif
