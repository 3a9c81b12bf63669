/* Shared between discovery/ files; not part of the folder's public interface. */
#ifndef DISCOVERY_INTERNAL_H
#define DISCOVERY_INTERNAL_H

#include "discovery/discovery.h"

struct probe_result {
	bool reachable;
	bool in_hot_standby;
	bool default_read_only;
	int64_t wal_bytes; /* primary: current WAL position; standby: replayed position; -1 unknown */
	char error[160];   /* why it is unreachable */
};

typedef void (*probe_done_fn)(void *arg, struct disc_server *srv, const struct probe_result *r);

/*
 * A SQL probe of one server: a persistent libpq connection driven by base,
 * queried every pc->interval_ms, each round bounded by pc->timeout_ms. done(arg,
 * srv, result) runs on base's thread after every round. pc must outlive it.
 * probe_kick() starts a round now (unless one is under way).
 */
struct probe;
struct probe *probe_new(struct event_base *base, struct disc_server *srv,
			const struct disc_probe_config *pc, probe_done_fn done, void *arg);
void probe_kick(struct probe *p);
/* Next round in ms instead of the interval (no-op while a round is under way). */
void probe_soon(struct probe *p, unsigned ms);
void probe_free(struct probe *p);

/* ---- cluster.c: a source's view, checked by probes, published ---- */

struct disc_view_entry {
	struct disc_server *srv;
	enum disc_role role;  /* ignored when roles come from the probes */
	bool routable;        /* the source says sessions may go there */
	bool noloadbalance;
	bool draining;        /* about to change role: no new sessions, close at boundaries */
	bool needs_probe;     /* primary only once a probe confirms it left recovery */
	int64_t lag_bytes;    /* the source's own measure; -1 unknown */
	char why[320];        /* why not routable, for logs */
};

struct disc_cluster;
struct disc_cluster *disc_cluster_new(struct event_base *base, const char *source,
				      const struct disc_probe_config *pc, bool roles_from_probes);
/* Replace the set of servers (probes start and stop to match) and publish. */
int disc_cluster_set(struct disc_cluster *c, const struct disc_view_entry *v, unsigned n);
/* The source lost (or regained) its view of the cluster. */
void disc_cluster_set_stale(struct disc_cluster *c, bool stale);
/* The source failed before it had a view of its own: a view taken over at a
 * reload is marked stale (its source can no longer confirm it). */
void disc_cluster_no_view(struct disc_cluster *c);
void disc_cluster_free(struct disc_cluster *c);

/* ---- stolon.c: Stolon's clusterdata ---- */

#define STOLON_MAX_DBS 64
struct stolon_db {
	char uid[64];
	char host[256], port[8]; /* status.listenAddress, status.port; empty: not known yet */
	char follows[64];        /* spec.followConfig.dbuid (internal) */
	bool standby;            /* spec.role = standby */
	bool healthy;            /* status.healthy (missing: false) */
	int64_t xlog, timeline;  /* status.xLogPos, status.timelineID; -1 unknown */
};
struct stolon_cd {
	int primary;          /* 1 + index of the db proxy.spec.masterDbUid names; 0: none */
	char no_primary[128]; /* why there is none */
	int64_t generation;   /* proxy.generation; -1 unknown */
	int64_t proxy_timeout_ms; /* cluster.spec.proxyTimeout (default 15 s) */
	char enabled[1024];   /* proxy.spec.enabledProxies, comma-separated */
	unsigned n, skipped;
	struct stolon_db db[STOLON_MAX_DBS];
};
/* Parse a clusterdata value. 0, or -1 when it is not a JSON object (no primary then). */
int stolon_parse(const char *json, size_t len, struct stolon_cd *cd);
/* Dbs → view entries (servers from the registry). Returns the count. */
unsigned stolon_view(const struct stolon_cd *cd, struct disc_view_entry *v);
/* Parse the clusterdata value (NULL: the key is absent) and set c's view; master
 * holds the master db's uid last seen (128 bytes), for "master changed" lines.
 * uid: pgrouter's proxy uid when it registers (no master unless enabledProxies
 * lists it, as for stolon-proxy), else NULL. Gives proxy.generation and the
 * proxyTimeout in effect. */
void stolon_publish(struct disc_cluster *c, const char *value, size_t len, char *master,
		    const char *uid, int64_t *generation, int64_t *proxy_timeout_ms);
/* A Go duration ("15s", "1m30s", "500ms") in ms; -1 if malformed. */
int64_t stolon_duration_ms(const char *s);

/* ---- patroni.c: Patroni's keys ---- */

struct patroni_kv {
	char *key; /* relative to /<namespace>/<scope>/, e.g. "members/pg1" */
	char *value;
	size_t len;
};

/* The keys a DCS source holds for one cluster; small, so a flat array. */
struct patroni_keys {
	struct patroni_kv *kv;
	unsigned n, cap;
};
void patroni_keys_init(struct patroni_keys *k);
void patroni_keys_clear(struct patroni_keys *k);
int patroni_keys_put(struct patroni_keys *k, const char *key, const char *value, size_t len);
void patroni_keys_del(struct patroni_keys *k, const char *key);
const char *patroni_keys_get(const struct patroni_keys *k, const char *key);

enum patroni_route {
	PATRONI_NONE = 0, /* not routable */
	PATRONI_PRIMARY,
	PATRONI_STANDBY,
	PATRONI_PROMOTING, /* holds the leader key, role "promoted": primary once its own
			      server says it left recovery (needs a probe) */
};
const char *patroni_route_name(enum patroni_route r);

struct patroni_member {
	char name[128];
	char conn_url[512];
	char host[256];
	char port[8];
	char role[32];
	char state[48];
	int64_t xlog_location; /* -1 unknown */
	int64_t timeline;
	int64_t lag_bytes;     /* status.optime - xlog_location; -1 unknown */
	bool noloadbalance, nofailover, legacy;
	bool draining; /* the leader a pending switchover is about to demote */
	enum patroni_route route;
};

#define PATRONI_MAX_MEMBERS 64
struct patroni_cluster {
	char leader[128];
	int64_t optime; /* leader's WAL position; -1 unknown */
	bool paused;
	bool switchover_pending; /* a failover key asks to move the leader away now */
	unsigned n, skipped; /* members parsed / members that could not be read */
	struct patroni_member m[PATRONI_MAX_MEMBERS];
};
/* Parse the keys into members with their routing role. Returns 0. */
int patroni_parse(const struct patroni_keys *k, struct patroni_cluster *c);
/* Parse GET /cluster of Patroni's REST API into the same model. -1 if unreadable. */
int patroni_parse_rest(const char *body, size_t len, struct patroni_cluster *c);
/* Members → view entries for cluster.c (servers from the registry). Returns the count. */
unsigned patroni_view(const struct patroni_cluster *pc, bool probes_on, const char *source,
		      struct disc_view_entry *v);
/*
 * Parse a DCS source's keys and publish them through c: logs a leader change
 * ("<source>: leader key now names X<note>", leader holds the last one seen,
 * 128 bytes), builds the view and sets it. One path for etcd and ZooKeeper.
 */
void patroni_publish_keys(struct disc_cluster *c, const struct patroni_keys *k, bool probes_on,
			  const char *source, char *leader, const char *note);
/* "/<namespace>/<scope>" (namespace defaults to /service/) into buf. */
void patroni_base_path(char *buf, size_t len, const char *namespace_, const char *scope);
int patroni_parse_conn_url(const char *url, char *host, size_t hostlen, char *port,
			   size_t portlen);

/* ---- http.c: libcurl multi-socket on a libevent base ---- */

#include <curl/curl.h>

struct http_buf {
	char *p;
	size_t len, cap;
};
struct http_opts {
	unsigned timeout_ms; /* connect, and whole transfer unless stream */
	bool stream;         /* no transfer timeout (a watch) */
	const char *cacert;
	struct curl_slist *headers;
	const char *header; /* one more header line (http_req_start) */
	const char *post;   /* body: POST; NULL: GET */
};
typedef void (*http_done_fn)(void *arg, CURL *easy, CURLcode rc);
struct http;
/* done(arg, easy, rc) when a transfer ends; activity(arg) after every socket event. */
struct http *http_new(struct event_base *base, http_done_fn done, void (*activity)(void *arg),
		      void *arg);
void http_free(struct http *h);
/* Start a transfer whose body is collected in into (reset first). NULL on failure. */
CURL *http_start(struct http *h, const char *url, const struct http_opts *o, struct http_buf *into);
/* Stop and free a transfer (also after done()). */
void http_cancel(struct http *h, CURL *c);
/* One request a source keeps going: its transfer, headers, body and answer. */
struct http_req {
	CURL *easy;
	struct curl_slist *headers;
	char *post;           /* owned */
	struct http_buf body; /* the answer; its buffer is kept across requests */
};
/* End r's transfer, then start url: JSON headers, "Authorization: auth" when
 * auth is set, post (taken over; NULL: GET). 0, or -1 (nothing under way). */
int http_req_start(struct http *h, struct http_req *r, const char *url, const char *auth,
		   char *post, const struct http_opts *o);
/* End r's transfer (its answer's length back to 0); _free also drops the buffer. */
void http_req_end(struct http *h, struct http_req *r);
void http_req_free(struct http *h, struct http_req *r);

/* Log hook for discovery messages (set by the daemon); printf-style. */
extern void (*disc_log)(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define DISC_LOG_ERROR 0
#define DISC_LOG_WARNING 1
#define DISC_LOG_INFO 2
#define DISC_LOG_DEBUG 3

#endif
