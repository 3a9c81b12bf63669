/*
 * kubernetes.c — roles from pod labels, through the Kubernetes API.
 *
 * Operators write each PostgreSQL pod's role as a label: KubeBlocks
 * `kubeblocks.io/role` (primary/secondary), CloudNativePG `cnpg.io/instanceRole`
 * (primary/replica), Zalando's Spilo `spilo-role` (master/replica), Patroni on
 * Kubernetes its `role_label` (default `role`: primary/master/replica).
 *
 *   LIST  GET /api/v1/namespaces/<ns>/pods?labelSelector=S ──▶ view published
 *     ▼   (the list's resourceVersion)
 *   WATCH GET ...&watch=1&resourceVersion=N&allowWatchBookmarks=true: one
 *     │   newline-delimited JSON event per change (ADDED, MODIFIED, DELETED,
 *     │   BOOKMARK, ERROR) ──▶ pods updated ──▶ view published
 *     ▼   stream ends, fails, or says 410 Gone (the version is too old: an
 *   BACKOFF  HTTP 410, or an ERROR event whose Status has code 410)
 *     └──▶ LIST again
 *
 * The token file is read before every request (it is rewritten when the
 * token rotates). A pod is routable when it runs, is not being deleted, has an IP and is
 * Ready; its role label's value decides primary or standby; its address is the
 * pod IP and the container port named postgresql (or postgres), else
 * kubernetes_port — or, for Patroni on Kubernetes, what its member JSON in
 * the pod's "status" annotation says (conn_url, and its state must be
 * running/streaming; xlog_location gives the lag). With Patroni's
 * annotations, Patroni's leader lock is listed and watched the same way (the
 * ConfigMap <scope>-leader or the Endpoints <scope>, by field selector): a pod
 * labelled primary is the primary only while the lock names it. Each
 * collection is a stream of its own (list, watch, 410, backoff).
 * libcurl's multi-socket API on the main thread's base, as
 * for etcd; while the API cannot be read, the last view stays, marked stale,
 * and the probes keep guarding writes.
 */
#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/internal.h"

#define K8S_MAX_PODS 64

struct pod {
	char name[254];
	char ip[64];
	char port[8];   /* the container port named postgresql/postgres, else kubernetes_port */
	char role[64];
	bool usable;    /* Running, Ready, not being deleted (and Patroni says running) */
	char why[96];   /* why not usable */
	int64_t xlog;   /* Patroni's status annotation: xlog_location; -1 unknown */
	bool patroni;   /* it carries Patroni's status annotation */
	char scope[64]; /* its cluster-name label (Patroni's scope_label default) */
};

enum k8s_step { K_IDLE, K_LIST, K_WATCH };

/* One collection listed and watched: the pods, or the one object that holds
 * Patroni's leader lock (a field selector on its name). */
struct k8s_stream {
	struct disc_k8s *k;
	const char *what;     /* for log lines */
	char path[1024];      /* the collection and its selector, no watch parameters */
	struct http_req req;  /* the list or the watch under way */
	enum k8s_step step;
	char rv[64];          /* resourceVersion to watch from */
	unsigned delay_ms;
	unsigned gone_streak; /* 410s with no event between them */
	struct event *backoff;
	bool on, listed, failing;
};

struct disc_k8s {
	struct event_base *base;
	struct disc_k8s_config cfg; /* strings owned by the caller */
	struct disc_cluster *cluster;
	struct http *http;
	struct k8s_stream pods_s, leader_s;
	char token[8192];    /* "Bearer <the token file's content>" */
	bool have_view, stale, probes_on;
	bool scope_warned;
	char scope[254];      /* Patroni's scope, once known */
	char leader[254];     /* who holds Patroni's leader lock ("": nobody) */
	char primary[254];    /* for "primary changed" log lines */
	unsigned n;
	struct pod pods[K8S_MAX_PODS];
};

static void fail(struct k8s_stream *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void do_list(struct k8s_stream *s);
static void relist(struct k8s_stream *s, const char *how);
static void publish_view(struct disc_k8s *k);

static const char *or_(const char *s, const char *otherwise)
{
	return s ? s : otherwise;
}

/* The token file, read again (it rotates). */
static void read_token(struct disc_k8s *k)
{
	if (!k->cfg.token_file || !*k->cfg.token_file)
		return;
	FILE *f = fopen(k->cfg.token_file, "r");
	if (!f) {
		disc_log(DISC_LOG_WARNING, "kubernetes: cannot read the token %s: %s",
			 k->cfg.token_file, strerror(errno));
		return;
	}
	memcpy(k->token, "Bearer ", 7);
	size_t n = 7 + fread(k->token + 7, 1, sizeof(k->token) - 8, f);
	fclose(f);
	while (n > 7 && (k->token[n - 1] == '\n' || k->token[n - 1] == '\r' || k->token[n - 1] == ' '))
		n--;
	k->token[n > 7 ? n : 0] = 0;
}

static void end_request(struct k8s_stream *s)
{
	http_req_end(s->k->http, &s->req);
	s->step = K_IDLE;
}

static int request(struct k8s_stream *s, enum k8s_step step, bool watch)
{
	struct disc_k8s *k = s->k;
	end_request(s);
	read_token(k); /* every request: the file is rewritten when the token rotates */
	char url[2048];
	int n = snprintf(url, sizeof(url), "%s%s", k->cfg.api, s->path);
	if (watch)
		snprintf(url + n, sizeof(url) - (size_t)n,
			 "&watch=1&resourceVersion=%s&allowWatchBookmarks=true", s->rv);
	struct http_opts o = { .timeout_ms = k->cfg.timeout_ms, .stream = watch,
			       .cacert = k->cfg.cacert };
	s->step = step;
	return http_req_start(k->http, &s->req, url, k->token, NULL, &o);
}

/* ---- Patroni's leader lock ---- */

static void leader_from(struct disc_k8s *k, json_t *o)
{
	const char *l = json_string_value(json_object_get(
		json_object_get(json_object_get(o, "metadata"), "annotations"), "leader"));
	snprintf(k->leader, sizeof(k->leader), "%s", or_(l, ""));
}

/* Pods carry Patroni's status annotation: watch its leader lock, in the
 * ConfigMap <scope>-leader (Patroni's default) or the Endpoints <scope>
 * (use_endpoints). The scope is configured or read from the pods' label. */
static void leader_watch(struct disc_k8s *k, const char *scope)
{
	struct k8s_stream *s = &k->leader_s;
	if (s->on || !scope || !*scope)
		return;
	bool ep = strcmp(k->cfg.patroni_leader, "endpoints") == 0;
	char name[300];
	snprintf(name, sizeof(name), ep ? "%s" : "%s-leader", scope);
	char *q = curl_easy_escape(NULL, name, 0);
	snprintf(s->path, sizeof(s->path),
		 "/api/v1/namespaces/%s/%s?fieldSelector=metadata.name%%3D%s", k->cfg.namespace_,
		 ep ? "endpoints" : "configmaps", q ? q : "");
	curl_free(q);
	snprintf(k->scope, sizeof(k->scope), "%s", scope);
	s->on = true;
	disc_log(DISC_LOG_INFO, "kubernetes: Patroni scope %s: its leader lock in %s %s decides "
		 "which pod labelled primary is writable", scope, ep ? "Endpoints" : "ConfigMap",
		 name);
	do_list(s);
}

/* ---- pods into a view ---- */

static void pod_from_json(struct disc_k8s *k, json_t *o, struct pod *p)
{
	json_t *meta = json_object_get(o, "metadata"), *st = json_object_get(o, "status");
	snprintf(p->name, sizeof(p->name), "%s",
		 or_(json_string_value(json_object_get(meta, "name")), ""));
	snprintf(p->ip, sizeof(p->ip), "%s", or_(json_string_value(json_object_get(st, "podIP")), ""));
	snprintf(p->role, sizeof(p->role), "%s",
		 or_(json_string_value(json_object_get(json_object_get(meta, "labels"),
						   k->cfg.role_label)), ""));
	snprintf(p->port, sizeof(p->port), "%s", k->cfg.port);
	size_t ci, pi;
	json_t *ctr, *cp;
	json_array_foreach(json_object_get(json_object_get(o, "spec"), "containers"), ci, ctr)
		json_array_foreach(json_object_get(ctr, "ports"), pi, cp)
		{
			const char *pn = json_string_value(json_object_get(cp, "name"));
			json_int_t port = json_integer_value(json_object_get(cp, "containerPort"));
			if (pn && (strcmp(pn, "postgresql") == 0 || strcmp(pn, "postgres") == 0) &&
			    port > 0 && port < 65536)
				snprintf(p->port, sizeof(p->port), "%d", (int)port);
		}
	/* Patroni on Kubernetes: its member JSON in the "status" annotation —
	 * the address it advertises (conn_url) and its state */
	p->xlog = -1;
	snprintf(p->scope, sizeof(p->scope), "%s",
		 or_(json_string_value(json_object_get(json_object_get(meta, "labels"),
						   "cluster-name")), ""));
	const char *patroni = json_string_value(
		json_object_get(json_object_get(meta, "annotations"), "status"));
	json_t *pj = NULL;
	const char *pstate = NULL;
	p->patroni = patroni != NULL;
	if (patroni) {
		json_error_t jerr;
		pj = json_loads(patroni, 0, &jerr);
		const char *url = json_string_value(json_object_get(pj, "conn_url"));
		char host[64], port[8];
		if (url && patroni_parse_conn_url(url, host, sizeof(host), port, sizeof(port)) == 0) {
			snprintf(p->ip, sizeof(p->ip), "%s", host);
			snprintf(p->port, sizeof(p->port), "%s", port);
		}
		pstate = json_string_value(json_object_get(pj, "state"));
		json_t *x = json_object_get(pj, "xlog_location");
		if (json_is_integer(x))
			p->xlog = (int64_t)json_integer_value(x);
	}
	const char *phase = json_string_value(json_object_get(st, "phase"));
	bool ready = false;
	size_t i;
	json_t *c;
	json_array_foreach(json_object_get(st, "conditions"), i, c)
	{
		const char *t = json_string_value(json_object_get(c, "type"));
		const char *s = json_string_value(json_object_get(c, "status"));
		if (t && s && strcmp(t, "Ready") == 0)
			ready = strcmp(s, "True") == 0;
	}
	p->usable = false;
	if (!phase || strcmp(phase, "Running") != 0)
		snprintf(p->why, sizeof(p->why), "pod %s", phase ? phase : "without a phase");
	else if (json_object_get(meta, "deletionTimestamp"))
		snprintf(p->why, sizeof(p->why), "pod being deleted");
	else if (!p->ip[0])
		snprintf(p->why, sizeof(p->why), "pod without an IP");
	else if (!ready)
		snprintf(p->why, sizeof(p->why), "pod not Ready");
	else if (pstate && strcmp(pstate, "running") != 0 && strcmp(pstate, "streaming") != 0)
		snprintf(p->why, sizeof(p->why), "Patroni says %.60s", pstate);
	else
		p->usable = true;
	json_decref(pj);
}

static struct pod *find(struct disc_k8s *k, const char *name)
{
	for (unsigned i = 0; i < k->n; i++)
		if (strcmp(k->pods[i].name, name) == 0)
			return &k->pods[i];
	return NULL;
}

static void upsert(struct disc_k8s *k, json_t *o)
{
	struct pod p;
	pod_from_json(k, o, &p);
	if (!p.name[0])
		return;
	struct pod *have = find(k, p.name);
	if (p.patroni && !k->leader_s.on && strcmp(k->cfg.patroni_leader, "off") != 0) {
		if (p.scope[0])
			leader_watch(k, p.scope);
		else if (!k->scope_warned) {
			k->scope_warned = true;
			disc_log(DISC_LOG_WARNING, "kubernetes: pod %s carries Patroni's status annotation "
				 "but no cluster-name label: set kubernetes_patroni_scope, or the leader "
				 "lock is not checked (the role label alone decides)", p.name);
		}
	}
	if (!have && k->n == K8S_MAX_PODS) {
		disc_log(DISC_LOG_WARNING, "kubernetes: more than %d pods; %s left out", K8S_MAX_PODS,
			 p.name);
		return;
	}
	*(have ? have : &k->pods[k->n++]) = p;
}

static void removed(struct disc_k8s *k, json_t *o)
{
	const char *name = json_string_value(json_object_get(json_object_get(o, "metadata"), "name"));
	struct pod *p = name ? find(k, name) : NULL;
	if (p)
		*p = k->pods[--k->n];
}

/* A pod labelled primary is the primary only if, where Patroni's leader lock
 * is watched, it holds the lock. */
static bool holds_lock(const struct disc_k8s *k, const struct pod *p)
{
	return !k->leader_s.on || (k->leader_s.listed && strcmp(k->leader, p->name) == 0);
}

static void publish_view(struct disc_k8s *k)
{
	if (!k->pods_s.listed || (k->leader_s.on && !k->leader_s.listed && !k->have_view))
		return; /* the first view is whole: pods and, if watched, the lock */
	struct disc_view_entry v[K8S_MAX_PODS];
	unsigned n = 0;
	const char *primary = "";
	int64_t primary_xlog = -1; /* lag from Patroni's xlog_location, when it says */
	for (unsigned i = 0; i < k->n; i++)
		if (k->pods[i].usable && disc_list_has(k->cfg.primary_values, k->pods[i].role) &&
		    holds_lock(k, &k->pods[i]))
			primary_xlog = k->pods[i].xlog;
	for (unsigned i = 0; i < k->n; i++) {
		const struct pod *p = &k->pods[i];
		if (!p->ip[0])
			continue;
		char err[300];
		struct disc_server *srv = disc_server_get(p->ip, p->port, err, sizeof(err));
		if (!srv) {
			disc_log(DISC_LOG_WARNING, "kubernetes: pod %s: %s", p->name, err);
			continue;
		}
		struct disc_view_entry *e = &v[n++];
		memset(e, 0, sizeof(*e));
		e->srv = srv;
		e->lag_bytes = -1;
		bool labelled_primary = disc_list_has(k->cfg.primary_values, p->role);
		bool is_primary = labelled_primary && holds_lock(k, p);
		bool is_replica = disc_list_has(k->cfg.replica_values, p->role);
		e->role = is_primary ? DISC_ROLE_PRIMARY
			  : is_replica ? DISC_ROLE_STANDBY
				       : DISC_ROLE_UNKNOWN;
		e->routable = p->usable && (is_primary || is_replica);
		if (!p->usable)
			snprintf(e->why, sizeof(e->why), "%.120s: %.95s", p->name, p->why);
		else if (labelled_primary && !is_primary)
			snprintf(e->why, sizeof(e->why),
				 "%.120s: labelled primary without Patroni's leader lock (%s%.100s)",
				 p->name, !k->leader_s.listed ? "not read yet" : k->leader[0] ? "held by " : "free",
				 k->leader_s.listed ? k->leader : "");
		else if (!e->routable)
			snprintf(e->why, sizeof(e->why), "%.120s: label %.100s=\"%.60s\" is no known role",
				 p->name, k->cfg.role_label, p->role);
		if (is_primary && p->usable)
			primary = p->name;
		if (e->routable && is_replica && primary_xlog >= 0 && p->xlog >= 0)
			e->lag_bytes = primary_xlog > p->xlog ? primary_xlog - p->xlog : 0;
	}
	if (strcmp(primary, k->primary) != 0) {
		disc_log(*primary ? DISC_LOG_INFO : DISC_LOG_WARNING, "kubernetes: primary pod %s%s",
			 *primary ? "now " : "", *primary ? primary : "none (no usable pod labelled so)");
		snprintf(k->primary, sizeof(k->primary), "%s", primary);
	}
	k->have_view = true;
	disc_cluster_set(k->cluster, v, n);
}

/* ---- steps (each stream on its own) ---- */

static void do_list(struct k8s_stream *s)
{
	if (request(s, K_LIST, false) != 0)
		fail(s, "cannot start a list request");
}

static bool any_failing(const struct disc_k8s *k)
{
	return k->pods_s.failing || (k->leader_s.on && k->leader_s.failing);
}

static void got_list(struct k8s_stream *s, json_t *j)
{
	struct disc_k8s *k = s->k;
	const char *rv = json_string_value(json_object_get(json_object_get(j, "metadata"),
							   "resourceVersion"));
	json_t *items = json_object_get(j, "items");
	if (!rv || !json_is_array(items)) {
		fail(s, "the %s list has no items or resourceVersion", s->what);
		return;
	}
	snprintf(s->rv, sizeof(s->rv), "%s", rv);
	size_t i;
	json_t *o;
	if (s == &k->pods_s) {
		k->n = 0;
		json_array_foreach(items, i, o)
			upsert(k, o);
		if (k->stale || !k->have_view)
			disc_log(DISC_LOG_INFO, "kubernetes: %u pod(s) in %s match %s (resourceVersion %s)",
				 k->n, k->cfg.namespace_, k->cfg.selector, rv);
	} else {
		k->leader[0] = 0;
		json_array_foreach(items, i, o)
			leader_from(k, o);
		if (!s->listed)
			disc_log(DISC_LOG_INFO, "kubernetes: Patroni's leader lock %s%s",
				 k->leader[0] ? "held by " : "free", k->leader);
	}
	s->delay_ms = 0;
	s->listed = true;
	s->failing = false;
	if (k->stale && !any_failing(k)) {
		k->stale = false;
		disc_cluster_set_stale(k->cluster, false);
	}
	publish_view(k);
	if (request(s, K_WATCH, true) != 0)
		fail(s, "cannot start a watch");
}

/* One watch event. false: the watch ended (a new list or a failure). */
static bool got_event(struct k8s_stream *s, json_t *j)
{
	struct disc_k8s *k = s->k;
	const char *type = json_string_value(json_object_get(j, "type"));
	json_t *o = json_object_get(j, "object");
	if (!type || !json_is_object(o)) {
		fail(s, "watch: an event without type or object");
		return false;
	}
	if (strcmp(type, "ERROR") == 0) {
		if (json_integer_value(json_object_get(o, "code")) == 410) {
			relist(s, "410");
		} else {
			fail(s, "watch error: %s",
			     or_(json_string_value(json_object_get(o, "message")), "no message"));
		}
		return false;
	}
	const char *rv = json_string_value(json_object_get(json_object_get(o, "metadata"),
							   "resourceVersion"));
	if (rv)
		snprintf(s->rv, sizeof(s->rv), "%s", rv);
	s->gone_streak = 0;
	bool gone = strcmp(type, "DELETED") == 0;
	if (!gone && strcmp(type, "ADDED") != 0 && strcmp(type, "MODIFIED") != 0)
		return true; /* BOOKMARK: only its version counts */
	if (s == &k->pods_s) {
		if (gone)
			removed(k, o);
		else
			upsert(k, o);
	} else {
		char was[sizeof(k->leader)];
		snprintf(was, sizeof(was), "%s", k->leader);
		if (gone)
			k->leader[0] = 0;
		else
			leader_from(k, o);
		if (strcmp(was, k->leader) != 0)
			disc_log(DISC_LOG_INFO, "kubernetes: Patroni's leader lock %s%s",
				 k->leader[0] ? "now held by " : "released", k->leader);
	}
	publish_view(k);
	return true;
}

static void parse_stream(struct k8s_stream *s)
{
	size_t off = 0;
	while (off < s->req.body.len) {
		char *nl = memchr(s->req.body.p + off, '\n', s->req.body.len - off);
		if (!nl)
			break; /* an event arrives whole, newline-terminated */
		size_t len = (size_t)(nl - (s->req.body.p + off));
		json_error_t jerr;
		json_t *j = len ? json_loadb(s->req.body.p + off, len, 0, &jerr) : NULL;
		off += len + 1;
		if (!len)
			continue;
		if (!j) {
			fail(s, "watch: unparseable event: %s", jerr.text);
			return;
		}
		bool go_on = got_event(s, j);
		json_decref(j);
		if (!go_on)
			return; /* the request was replaced; its buffer is gone */
	}
	memmove(s->req.body.p, s->req.body.p + off, s->req.body.len - off);
	s->req.body.len -= off;
	if (s->req.body.len > (8u << 20))
		fail(s, "watch stream: an event over 8 MB");
}

static void done(void *arg, CURL *easy, CURLcode rc)
{
	struct disc_k8s *k = arg;
	struct k8s_stream *s = easy == k->pods_s.req.easy	? &k->pods_s
			       : easy == k->leader_s.req.easy ? &k->leader_s
							      : NULL;
	if (!s)
		return;
	long status = 0;
	curl_easy_getinfo(s->req.easy, CURLINFO_RESPONSE_CODE, &status);
	if (s->step == K_WATCH) {
		if (status == 410) {
			relist(s, "HTTP 410");
			return;
		}
		if (s->req.body.len)
			parse_stream(s); /* the last events before the end */
		if (easy != s->req.easy)
			return;
		if (status >= 400)
			fail(s, "watch: HTTP %ld: %.200s", status, s->req.body.p ? s->req.body.p : "");
		else if (rc != CURLE_OK)
			fail(s, "watch stream ended: %s", curl_easy_strerror(rc));
		else if (request(s, K_WATCH, true) != 0) /* the server ends watches now
							    and then: go on from rv */
			fail(s, "cannot start a watch");
		return;
	}
	if (rc != CURLE_OK) {
		fail(s, "%s", curl_easy_strerror(rc));
		return;
	}
	json_error_t jerr;
	json_t *j = json_loadb(s->req.body.p ? s->req.body.p : "", s->req.body.len, 0, &jerr);
	if (!j || status >= 400) {
		fail(s, "HTTP %ld: %.200s", status, s->req.body.p ? s->req.body.p : "");
		json_decref(j);
		return;
	}
	got_list(s, j);
	json_decref(j);
}

/* The version watched from is gone: list again — at once the first time,
 * then backing off while the answer stays 410 (never a tight loop against
 * the API server). */
static void relist(struct k8s_stream *s, const char *how)
{
	disc_log(DISC_LOG_INFO, "kubernetes: %s resourceVersion %s is gone (%s); listing again",
		 s->what, s->rv, how);
	if (s->gone_streak++ == 0) {
		do_list(s);
		return;
	}
	end_request(s);
	unsigned ms = 100u << (s->gone_streak < 6 ? s->gone_streak - 1 : 5);
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	event_add(s->backoff, &tv);
}

static void activity(void *arg)
{
	struct disc_k8s *k = arg;
	struct k8s_stream *all[] = { &k->pods_s, &k->leader_s };
	for (unsigned i = 0; i < 2; i++) {
		struct k8s_stream *s = all[i];
		long status = 0;
		if (s->step == K_WATCH && s->req.body.len) {
			curl_easy_getinfo(s->req.easy, CURLINFO_RESPONSE_CODE, &status);
			if (status < 400)
				parse_stream(s);
		}
	}
}

static void fail(struct k8s_stream *s, const char *fmt, ...)
{
	struct disc_k8s *k = s->k;
	char why[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	end_request(s);
	disc_count_error();
	s->failing = true;
	if (k->have_view && !k->stale) {
		k->stale = true;
		disc_log(DISC_LOG_WARNING,
			 "kubernetes: %s (%s): %s; keeping the last cluster state (stale) and retrying",
			 k->cfg.api, s->what, why);
		disc_cluster_set_stale(k->cluster, true);
	} else {
		disc_log(s->delay_ms >= 1000 ? DISC_LOG_INFO : DISC_LOG_WARNING,
			 "kubernetes: %s (%s): %s", k->cfg.api, s->what, why);
		if (!k->have_view)
			disc_cluster_no_view(k->cluster);
	}
	s->delay_ms = disc_backoff_ms(s->delay_ms);
	struct timeval tv = { s->delay_ms / 1000, (s->delay_ms % 1000) * 1000 };
	event_add(s->backoff, &tv);
}

static void backoff_cb(evutil_socket_t fd, short what, void *arg)
{
	do_list(arg);
}

static bool stream_init(struct disc_k8s *k, struct k8s_stream *s, const char *what)
{
	s->k = k;
	s->what = what;
	s->backoff = evtimer_new(k->base, backoff_cb, s);
	return s->backoff != NULL;
}

struct disc_k8s *disc_k8s_start(struct event_base *base, const struct disc_k8s_config *cfg,
				const struct disc_probe_config *pc, char *err, size_t errlen)
{
	struct disc_k8s *k = calloc(1, sizeof(*k));
	if (!k) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	k->base = base;
	k->cfg = *cfg;
	if (!k->cfg.patroni_leader)
		k->cfg.patroni_leader = "configmap";
	k->probes_on = pc->interval_ms > 0;
	char *q = curl_easy_escape(NULL, cfg->selector, 0);
	snprintf(k->pods_s.path, sizeof(k->pods_s.path), "/api/v1/namespaces/%s/pods?labelSelector=%s",
		 cfg->namespace_, q ? q : "");
	curl_free(q);
	k->http = http_new(base, done, activity, k);
	k->cluster = disc_cluster_new(base, "kubernetes", pc, false);
	if (!k->http || !k->cluster || !stream_init(k, &k->pods_s, "pods") ||
	    !stream_init(k, &k->leader_s, "leader lock")) {
		snprintf(err, errlen, "out of memory");
		disc_k8s_stop(k);
		return NULL;
	}
	k->pods_s.on = true;
	disc_cluster_set(k->cluster, NULL, 0); /* nothing routable until the API answers */
	disc_log(DISC_LOG_INFO, "kubernetes: watching pods in %s matching %s on %s (role label %s)",
		 cfg->namespace_, cfg->selector, cfg->api, cfg->role_label);
	if (strcmp(k->cfg.patroni_leader, "off") != 0)
		leader_watch(k, cfg->patroni_scope);
	do_list(&k->pods_s);
	return k;
}

void disc_k8s_stop(struct disc_k8s *k)
{
	if (!k)
		return;
	struct k8s_stream *all[] = { &k->pods_s, &k->leader_s };
	for (unsigned i = 0; i < 2; i++) {
		if (k->http)
			http_req_free(k->http, &all[i]->req);
		if (all[i]->backoff)
			event_free(all[i]->backoff);
	}
	http_free(k->http);
	disc_cluster_free(k->cluster);
	free(k);
}
