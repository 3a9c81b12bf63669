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
 * running/streaming; xlog_location gives the lag). libcurl's multi-socket API on the main thread's base, as
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
};

enum k8s_step { K_IDLE, K_LIST, K_WATCH };

struct disc_k8s {
	struct event_base *base;
	struct disc_k8s_config cfg; /* strings owned by the caller */
	struct disc_cluster *cluster;
	struct http *http;
	struct event *backoff;
	struct http_req req; /* the list or the watch under way */
	enum k8s_step step;
	char rv[64];          /* resourceVersion to watch from */
	char token[8192];    /* "Bearer <the token file's content>" */
	char selector_q[1024]; /* the label selector, URL-encoded */
	unsigned delay_ms;
	unsigned gone_streak; /* 410s with no event between them */
	bool have_view, stale, probes_on;
	char primary[254];    /* for "primary changed" log lines */
	unsigned n;
	struct pod pods[K8S_MAX_PODS];
};

static void fail(struct disc_k8s *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void do_list(struct disc_k8s *k);
static void relist(struct disc_k8s *k, const char *how);

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

static void end_request(struct disc_k8s *k)
{
	http_req_end(k->http, &k->req);
	k->step = K_IDLE;
}

static int request(struct disc_k8s *k, enum k8s_step step, bool watch)
{
	end_request(k);
	read_token(k); /* every request: the file is rewritten when the token rotates */
	char url[2048];
	int n = snprintf(url, sizeof(url), "%s/api/v1/namespaces/%s/pods?labelSelector=%s",
			 k->cfg.api, k->cfg.namespace_, k->selector_q);
	if (watch)
		snprintf(url + n, sizeof(url) - (size_t)n,
			 "&watch=1&resourceVersion=%s&allowWatchBookmarks=true", k->rv);
	struct http_opts o = { .timeout_ms = k->cfg.timeout_ms, .stream = watch,
			       .cacert = k->cfg.cacert };
	k->step = step;
	return http_req_start(k->http, &k->req, url, k->token, NULL, &o);
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
	const char *patroni = json_string_value(
		json_object_get(json_object_get(meta, "annotations"), "status"));
	json_t *pj = NULL;
	const char *pstate = NULL;
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

static void publish_view(struct disc_k8s *k)
{
	struct disc_view_entry v[K8S_MAX_PODS];
	unsigned n = 0;
	const char *primary = "";
	int64_t primary_xlog = -1; /* lag from Patroni's xlog_location, when it says */
	for (unsigned i = 0; i < k->n; i++)
		if (k->pods[i].usable && disc_list_has(k->cfg.primary_values, k->pods[i].role))
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
		bool is_primary = disc_list_has(k->cfg.primary_values, p->role);
		bool is_replica = disc_list_has(k->cfg.replica_values, p->role);
		e->role = is_primary ? DISC_ROLE_PRIMARY
			  : is_replica ? DISC_ROLE_STANDBY
				       : DISC_ROLE_UNKNOWN;
		e->routable = p->usable && (is_primary || is_replica);
		if (!p->usable)
			snprintf(e->why, sizeof(e->why), "%.120s: %.95s", p->name, p->why);
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
	disc_cluster_set(k->cluster, v, n);
}

/* ---- steps ---- */

static void do_list(struct disc_k8s *k)
{
	if (request(k, K_LIST, false) != 0)
		fail(k, "cannot start a list request");
}

static void got_list(struct disc_k8s *k, json_t *j)
{
	const char *rv = json_string_value(json_object_get(json_object_get(j, "metadata"),
							   "resourceVersion"));
	json_t *items = json_object_get(j, "items");
	if (!rv || !json_is_array(items)) {
		fail(k, "the pod list has no items or resourceVersion");
		return;
	}
	snprintf(k->rv, sizeof(k->rv), "%s", rv);
	k->n = 0;
	size_t i;
	json_t *o;
	json_array_foreach(items, i, o)
		upsert(k, o);
	k->delay_ms = 0;
	if (k->stale || !k->have_view)
		disc_log(DISC_LOG_INFO, "kubernetes: %u pod(s) in %s match %s (resourceVersion %s)",
			 k->n, k->cfg.namespace_, k->cfg.selector, rv);
	k->have_view = true;
	if (k->stale) {
		k->stale = false;
		disc_cluster_set_stale(k->cluster, false);
	}
	publish_view(k);
	if (request(k, K_WATCH, true) != 0)
		fail(k, "cannot start a watch");
}

/* One watch event. false: the watch ended (a new list or a failure). */
static bool got_event(struct disc_k8s *k, json_t *j)
{
	const char *type = json_string_value(json_object_get(j, "type"));
	json_t *o = json_object_get(j, "object");
	if (!type || !json_is_object(o)) {
		fail(k, "watch: an event without type or object");
		return false;
	}
	if (strcmp(type, "ERROR") == 0) {
		if (json_integer_value(json_object_get(o, "code")) == 410) {
			relist(k, "410");
		} else {
			fail(k, "watch error: %s",
			     or_(json_string_value(json_object_get(o, "message")), "no message"));
		}
		return false;
	}
	const char *rv = json_string_value(json_object_get(json_object_get(o, "metadata"),
							   "resourceVersion"));
	if (rv)
		snprintf(k->rv, sizeof(k->rv), "%s", rv);
	k->gone_streak = 0;
	if (strcmp(type, "BOOKMARK") == 0)
		return true;
	if (strcmp(type, "DELETED") == 0)
		removed(k, o);
	else if (strcmp(type, "ADDED") == 0 || strcmp(type, "MODIFIED") == 0)
		upsert(k, o);
	else
		return true;
	publish_view(k);
	return true;
}

static void parse_stream(struct disc_k8s *k)
{
	size_t off = 0;
	while (off < k->req.body.len) {
		char *nl = memchr(k->req.body.p + off, '\n', k->req.body.len - off);
		if (!nl)
			break; /* an event arrives whole, newline-terminated */
		size_t len = (size_t)(nl - (k->req.body.p + off));
		json_error_t jerr;
		json_t *j = len ? json_loadb(k->req.body.p + off, len, 0, &jerr) : NULL;
		off += len + 1;
		if (!len)
			continue;
		if (!j) {
			fail(k, "watch: unparseable event: %s", jerr.text);
			return;
		}
		bool go_on = got_event(k, j);
		json_decref(j);
		if (!go_on)
			return; /* the request was replaced; its buffer is gone */
	}
	memmove(k->req.body.p, k->req.body.p + off, k->req.body.len - off);
	k->req.body.len -= off;
	if (k->req.body.len > (8u << 20))
		fail(k, "watch stream: an event over 8 MB");
}

static void done(void *arg, CURL *easy, CURLcode rc)
{
	struct disc_k8s *k = arg;
	if (easy != k->req.easy)
		return;
	long status = 0;
	curl_easy_getinfo(k->req.easy, CURLINFO_RESPONSE_CODE, &status);
	if (k->step == K_WATCH) {
		if (status == 410) {
			relist(k, "HTTP 410");
			return;
		}
		if (k->req.body.len)
			parse_stream(k); /* the last events before the end */
		if (easy != k->req.easy)
			return;
		if (status >= 400)
			fail(k, "watch: HTTP %ld: %.200s", status, k->req.body.p ? k->req.body.p : "");
		else if (rc != CURLE_OK)
			fail(k, "watch stream ended: %s", curl_easy_strerror(rc));
		else if (request(k, K_WATCH, true) != 0) /* the server ends watches now
							    and then: go on from rv */
			fail(k, "cannot start a watch");
		return;
	}
	if (rc != CURLE_OK) {
		fail(k, "%s", curl_easy_strerror(rc));
		return;
	}
	json_error_t jerr;
	json_t *j = json_loadb(k->req.body.p ? k->req.body.p : "", k->req.body.len, 0, &jerr);
	if (!j || status >= 400) {
		fail(k, "HTTP %ld: %.200s", status, k->req.body.p ? k->req.body.p : "");
		json_decref(j);
		return;
	}
	got_list(k, j);
	json_decref(j);
}

/* The version watched from is gone: list again — at once the first time,
 * then backing off while the answer stays 410 (never a tight loop against
 * the API server). */
static void relist(struct disc_k8s *k, const char *how)
{
	disc_log(DISC_LOG_INFO, "kubernetes: resourceVersion %s is gone (%s); listing again", k->rv,
		 how);
	if (k->gone_streak++ == 0) {
		do_list(k);
		return;
	}
	end_request(k);
	unsigned ms = 100u << (k->gone_streak < 6 ? k->gone_streak - 1 : 5);
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	event_add(k->backoff, &tv);
}

static void activity(void *arg)
{
	struct disc_k8s *k = arg;
	long status = 0;
	if (k->step == K_WATCH && k->req.body.len) {
		curl_easy_getinfo(k->req.easy, CURLINFO_RESPONSE_CODE, &status);
		if (status < 400)
			parse_stream(k);
	}
}

static void fail(struct disc_k8s *k, const char *fmt, ...)
{
	char why[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	end_request(k);
	disc_count_error();
	if (k->have_view && !k->stale) {
		k->stale = true;
		disc_log(DISC_LOG_WARNING,
			 "kubernetes: %s: %s; keeping the last cluster state (stale) and retrying",
			 k->cfg.api, why);
		disc_cluster_set_stale(k->cluster, true);
	} else {
		disc_log(k->delay_ms >= 1000 ? DISC_LOG_INFO : DISC_LOG_WARNING, "kubernetes: %s: %s",
			 k->cfg.api, why);
		if (!k->have_view)
			disc_cluster_no_view(k->cluster);
	}
	k->delay_ms = disc_backoff_ms(k->delay_ms);
	struct timeval tv = { k->delay_ms / 1000, (k->delay_ms % 1000) * 1000 };
	event_add(k->backoff, &tv);
}

static void backoff_cb(evutil_socket_t fd, short what, void *arg)
{
	do_list(arg);
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
	k->probes_on = pc->interval_ms > 0;
	char *q = curl_easy_escape(NULL, cfg->selector, 0);
	snprintf(k->selector_q, sizeof(k->selector_q), "%s", q ? q : "");
	curl_free(q);
	k->http = http_new(base, done, activity, k);
	k->backoff = evtimer_new(base, backoff_cb, k);
	k->cluster = disc_cluster_new(base, "kubernetes", pc, false);
	if (!k->http || !k->backoff || !k->cluster) {
		snprintf(err, errlen, "out of memory");
		disc_k8s_stop(k);
		return NULL;
	}
	disc_cluster_set(k->cluster, NULL, 0); /* nothing routable until the API answers */
	disc_log(DISC_LOG_INFO, "kubernetes: watching pods in %s matching %s on %s (role label %s)",
		 cfg->namespace_, cfg->selector, cfg->api, cfg->role_label);
	do_list(k);
	return k;
}

void disc_k8s_stop(struct disc_k8s *k)
{
	if (!k)
		return;
	http_req_free(k->http, &k->req);
	http_free(k->http);
	if (k->backoff)
		event_free(k->backoff);
	disc_cluster_free(k->cluster);
	free(k);
}
