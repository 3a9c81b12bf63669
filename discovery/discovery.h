/*
 * discovery — where pgrouter learns the cluster: sources produce immutable
 * topology snapshots, published atomically; workers read them without locks.
 *
 * Threading: every source runs on the main thread's event_base. A published
 * snapshot is never modified; readers hold a reference (topo_acquire/topo_release)
 * and subscribers are told a new one exists (their callback runs on the main
 * thread and must only wake their own thread).
 */
#ifndef DISCOVERY_DISCOVERY_H
#define DISCOVERY_DISCOVERY_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;

/* Milliseconds on the monotonic clock (topology.c); the router uses it too. */
uint64_t now_ms(void);
/* Is item in list (names separated by commas and/or white space)? An empty
 * item never is. Configuration lists (users, role values) and Stolon's
 * enabledProxies. */
bool disc_list_has(const char *list, const char *item);
/* The next retry delay after prev ms: 100 ms, doubling to 2 s. */
unsigned disc_backoff_ms(unsigned prev);

/* ---- servers: long-lived, one per address, never freed while running ---- */

struct disc_server {
	unsigned id;
	char host[256];
	char port[8];
	char name[128]; /* "host:port", or the Patroni member name */
	struct sockaddr_storage addr;
	socklen_t addrlen;
	atomic_int sessions; /* live sessions routed here (least-connections) */
	/* written by its prober only (metrics): rounds, failed ones, the last one's µs */
	atomic_uint_fast64_t probes, probe_failures, probe_last_us;
	int admin; /* enum disc_admin: the operator's word (under the snapshot lock) */
};

/*
 * Find or create the server for host:port (numeric or resolvable host; called
 * on the main thread). Returns NULL and fills err (errlen bytes) when the address
 * does not resolve. The registry owns the server.
 */
struct disc_server *disc_server_get(const char *host, const char *port, char *err, size_t errlen);
/* Free the registry; only after every worker has stopped. */
void disc_servers_free(void);

/* ---- topology snapshot ---- */

enum disc_role {
	DISC_ROLE_UNKNOWN = 0,
	DISC_ROLE_PRIMARY,
	DISC_ROLE_STANDBY,
};
const char *disc_role_name(enum disc_role r);

/* What an operator said of a server (admin console: SET SERVER), over what
 * discovery says: ready (discovery decides), drain (no new sessions; open ones
 * stay), maint (no new sessions; open ones leave at their next boundary). */
enum disc_admin { DISC_ADMIN_READY = 0, DISC_ADMIN_DRAIN, DISC_ADMIN_MAINT };
const char *disc_admin_name(enum disc_admin a);
/* The registered server named name ("host:port" or a Patroni member name), or NULL. */
struct disc_server *disc_server_find(const char *name);

struct topo_entry {
	struct disc_server *srv;
	enum disc_role role;
	bool reachable;
	bool in_hot_standby;        /* pg_is_in_recovery() */
	bool default_read_only;     /* default_transaction_read_only = on */
	bool noloadbalance;
	bool draining;              /* about to change role (planned switchover): no new
				       sessions; existing ones close at a transaction boundary */
	int64_t lag_bytes;          /* replay lag behind the primary; -1 unknown */
	enum disc_admin admin;      /* the operator's word, copied at publication */
};

struct topology {
	atomic_int refs;
	uint64_t generation;
	const char *source; /* "static", "etcd", ... (static storage) */
	bool stale;         /* the source lost its view; this is the last good one */
	unsigned n;
	struct topo_entry e[];
};

/* Reference to the current snapshot (never NULL once discovery started). */
struct topology *topo_acquire(void);
void topo_release(struct topology *t);
uint64_t topo_generation(void);

/*
 * Build and publish: allocate a snapshot for n entries (refs = 1, owned by the
 * caller until published), fill e[], then topo_publish() takes the caller's
 * reference, swaps it in and notifies subscribers. Returns true when it differed
 * from the previous snapshot in anything routing looks at; an identical snapshot
 * is dropped and nobody is woken.
 */
struct topology *topo_new(unsigned n, const char *source);
bool topo_publish(struct topology *t, int64_t max_lag);

/* Set the operator's word on srv and publish the current snapshot again with
 * it (any thread). Returns false when nothing changed. */
bool topo_set_admin(struct disc_server *srv, enum disc_admin a);

typedef void (*topo_notify_fn)(void *arg);
/* Register a callback run (on the publishing thread) after each publish. */
void topo_subscribe(topo_notify_fn fn, void *arg);
/* Drop the current snapshot and subscribers (shutdown). */
void topo_reset(void);
/* What publishing has seen: when a source last confirmed its view (wall clock,
 * changed or not), since when the view is stale (monotonic ms, 0: it is not),
 * how often the routable primary changed, snapshots published. */
struct topo_stats {
	double updated_s;
	uint64_t stale_since_ms;
	uint64_t primary_changes;
	uint64_t publishes;
	uint64_t errors;
};
void topo_stats(struct topo_stats *out);
/* A source failed to read the cluster state (a request, a session, a key). */
void disc_count_error(void);

/* ---- sources ---- */

/*
 * A reload that restarts the discovery source: between begin and end, the
 * source stopped hands its view (members, probe results) to the one started
 * next, which keeps it published until it has a view of its own. Main thread.
 */
void disc_reload_begin(void);
void disc_reload_end(void);

struct disc_probe_config {
	unsigned interval_ms;
	unsigned timeout_ms;
	const char *user, *password, *dbname;
	const char *sslmode, *sslrootcert, *sslcert, *sslkey; /* libpq's; NULL or "": its default */
	int64_t max_lag;
};

/*
 * Start a non-blocking libpq connection to srv with pc's database and TLS
 * settings, as user/password (NULL or "": libpq's default), for the caller's
 * PQconnectPoll loop. The caller owns the result (PQfinish); NULL on out of
 * memory. Probes and auth_query both connect this way.
 */
struct pg_conn;
struct pg_conn *disc_pq_start(const struct disc_server *srv, const struct disc_probe_config *pc,
			      const char *user, const char *password,
			      const char *application_name);

/*
 * Static source with SQL probes: servers from the config, roles from probing
 * each with libpq's non-blocking API on base. Publishes a first snapshot (all
 * unknown) at once and a new one whenever a probe changes what routing sees.
 * Returns NULL with err filled on failure.
 */
struct disc_static;
struct disc_static *disc_static_start(struct event_base *base, struct disc_server **servers,
				      unsigned n, const struct disc_probe_config *pc, char *err,
				      size_t errlen);
void disc_static_stop(struct disc_static *s);

/*
 * etcd v3 source for a Patroni cluster: reads /<namespace>/<scope>/ and
 * watches it (libcurl multi-socket on base). Roles come from Patroni's keys;
 * probes (pc->interval_ms > 0) veto writes to servers they find unreachable
 * or in recovery. cfg's strings must outlive the source.
 */
#define DISC_MAX_ENDPOINTS 16
struct disc_etcd_config {
	const char *endpoints[DISC_MAX_ENDPOINTS];
	unsigned nendpoints;
	const char *namespace_, *scope;
	const char *user, *password, *cacert;
	unsigned timeout_ms;
	/* Stolon instead of Patroni: the key <stolon_prefix>/<stolon_cluster>/clusterdata
	 * (etcd keys as Stolon writes them: no leading slash); NULL for Patroni */
	const char *stolon_prefix, *stolon_cluster;
	bool stolon_register; /* keep proxies/info/<uid> as stolon-proxy does */
};
struct disc_etcd;
struct disc_etcd *disc_etcd_start(struct event_base *base, const struct disc_etcd_config *cfg,
				  const struct disc_probe_config *pc, char *err, size_t errlen);
void disc_etcd_stop(struct disc_etcd *e);

/*
 * Patroni REST source: GET /cluster on the first member that answers, every
 * poll_ms (libcurl multi on base). For clusters whose DCS pgrouter cannot reach.
 */
struct disc_rest_config {
	const char *urls[DISC_MAX_ENDPOINTS];
	unsigned nurls;
	unsigned poll_ms, timeout_ms;
	const char *cacert;
};
struct disc_rest;
struct disc_rest *disc_rest_start(struct event_base *base, const struct disc_rest_config *cfg,
				  const struct disc_probe_config *pc, char *err, size_t errlen);
void disc_rest_stop(struct disc_rest *r);

/*
 * Kubernetes source: pods in namespace_ matching selector, their role from
 * the label role_label (a value in primary_values or replica_values,
 * comma-separated), their address the pod IP and port. api: "https://host:port".
 */
struct disc_k8s_config {
	const char *api, *token_file, *cacert, *namespace_, *selector;
	const char *role_label, *primary_values, *replica_values, *port;
	/* Patroni on Kubernetes: its scope ("": the cluster-name label of pods
	 * carrying its status annotation) and where its leader lock is kept
	 * ("configmap": <scope>-leader, "endpoints": <scope>, "off") */
	const char *patroni_scope, *patroni_leader;
	unsigned timeout_ms;
};
struct disc_k8s;
struct disc_k8s *disc_k8s_start(struct event_base *base, const struct disc_k8s_config *cfg,
				const struct disc_probe_config *pc, char *err, size_t errlen);
void disc_k8s_stop(struct disc_k8s *k);

/*
 * ZooKeeper source for a Patroni cluster (libzookeeper-mt; its callbacks are
 * handed to base's thread). hosts: "host:port", the last may end in /chroot.
 */
struct disc_zk_config {
	const char *hosts[DISC_MAX_ENDPOINTS];
	unsigned nhosts;
	const char *namespace_, *scope;
	unsigned session_timeout_ms;
};
struct disc_zk;
struct disc_zk *disc_zk_start(struct event_base *base, const struct disc_zk_config *cfg,
			      const struct disc_probe_config *pc, char *err, size_t errlen);
void disc_zk_stop(struct disc_zk *z);

#endif
