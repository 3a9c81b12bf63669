/*
 * etcd.c — Patroni's cluster state from etcd v3 through its JSON gateway.
 *
 *   VERSION (GET /version: /v3, /v3beta or /v3alpha)
 *      ▼
 *   AUTH (only with etcd_user: POST auth/authenticate → token)
 *      ▼
 *   RANGE (POST kv/range over /<namespace>/<scope>/) ──▶ view published
 *      ▼
 *   WATCH (POST watch from revision+1: one long stream of JSON objects)
 *      │ events ──▶ keys updated ──▶ view published
 *      ▼ stream ends, error, canceled (compaction)
 *   BACKOFF (100 ms doubling to 2 s, next endpoint) ──▶ VERSION ...
 *
 * While the watch is open, a heartbeat (a linearizable count of the keys,
 * every 3 s, on the same member) must be answered within the request
 * timeout: a member whose process hangs keeps its TCP connections, and the
 * kernel answers keepalives for it, so only a request shows it is gone.
 *
 * libcurl's multi-socket API runs on the main thread's event_base: curl tells
 * us which sockets and timeouts to watch, libevent tells curl when they fire.
 * No thread, no blocking call. While etcd cannot be read the last view stays,
 * marked stale; the probes keep guarding writes meanwhile.
 */
#include <curl/curl.h>
#include <event2/event.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/internal.h"

enum etcd_step { E_IDLE, E_VERSION, E_AUTH, E_RANGE, E_WATCH };

struct disc_etcd {
	struct event_base *base;
	struct disc_etcd_config cfg; /* strings owned by the caller */
	struct disc_cluster *cluster;
	struct http *http;
	struct event *backoff; /* next attempt */
	struct http_req req;   /* the one request under way (version, auth, range, watch) */
	enum etcd_step step;
	unsigned endpoint; /* index into cfg.endpoints */
	char api[16];      /* "/v3" */
	char token[512];
	char prefix[512];  /* "/service/demo/" */
	char *key_b64, *end_b64;
	int64_t revision;
	unsigned delay_ms;
	bool have_view;    /* a range succeeded at least once */
	bool probes_on;
	bool stale;
	char leader[128];  /* for "leader changed" log lines */
	struct patroni_keys keys;
	struct http_req beat;    /* the heartbeat under way */
	struct event *beat_timer;

	/* stolon_register: <prefix>proxies/info/<uid>, put with a lease of
	 * 2 x proxyTimeout every proxyCheckInterval and at once when the
	 * applied generation changes (a second request beside the watch) */
	char uid[17];
	struct http_req reg;
	enum { R_IDLE, R_GRANT, R_PUT } reg_step;
	struct event *reg_timer;
	int64_t reg_generation, reg_timeout_ms; /* what the next put says */
};

/* ---- small helpers ---- */

static const char b64chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const uint8_t *p, size_t n)
{
	char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
			     (i + 2 < n ? p[i + 2] : 0);
		*o++ = b64chars[v >> 18 & 63];
		*o++ = b64chars[v >> 12 & 63];
		*o++ = i + 1 < n ? b64chars[v >> 6 & 63] : '=';
		*o++ = i + 2 < n ? b64chars[v & 63] : '=';
	}
	*o = 0;
	return out;
}

/* Decode into a new NUL-terminated buffer; *n gets its length. NULL if invalid. */
static char *etcd_b64_decode(const char *s, size_t *n)
{
	size_t len = strlen(s);
	char *out = malloc(len / 4 * 3 + 4);
	if (!out)
		return NULL;
	uint32_t acc = 0;
	int bits = 0;
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (c == '=')
			break;
		const char *pos = strchr(b64chars, c);
		if (!pos || !c) {
			free(out);
			return NULL;
		}
		acc = acc << 6 | (uint32_t)(pos - b64chars);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (char)(acc >> bits & 0xff);
		}
	}
	out[o] = 0;
	*n = o;
	return out;
}

static void start(struct disc_etcd *e);
static void fail(struct disc_etcd *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static const char *endpoint(const struct disc_etcd *e)
{
	return e->cfg.endpoints[e->endpoint];
}

static void end_request(struct disc_etcd *e)
{
	http_req_end(e->http, &e->req);
}

/* etcd's WithRequireLeader through the gateway: a member cut off from the
 * quorum refuses the request, and ends a watch it serves within a few
 * seconds of losing its leader ("etcdserver: no leader"), so that pgrouter
 * goes on to another endpoint. Without it such a member keeps the watch open
 * and silent: a switchover decided by the others would never be seen. */
#define REQUIRE_LEADER "Grpc-Metadata-hasleader: true"

/* Start one request: path under the endpoint, POST body (NULL: GET). */
static int request(struct disc_etcd *e, enum etcd_step step, const char *path, char *post,
		   bool stream)
{
	e->step = step;
	char url[1024];
	snprintf(url, sizeof(url), "%s%s", endpoint(e), path);
	struct http_opts o = { .timeout_ms = e->cfg.timeout_ms, .stream = stream,
			       .cacert = e->cfg.cacert, .header = REQUIRE_LEADER };
	return http_req_start(e->http, &e->req, url, e->token, post, &o);
}

static char *json_body(json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	return s;
}

/* ---- turning keys into a view ---- */

static void reg_round(struct disc_etcd *e);

static void publish_view(struct disc_etcd *e)
{
	if (e->cfg.stolon_cluster) {
		const char *v = patroni_keys_get(&e->keys, "clusterdata");
		size_t len = 0;
		for (unsigned i = 0; v && i < e->keys.n; i++)
			if (e->keys.kv[i].value == v)
				len = e->keys.kv[i].len;
		int64_t gen = -1, timeout_ms = 15000;
		stolon_publish(e->cluster, v, len, e->leader, e->cfg.stolon_register ? e->uid : NULL,
			       &gen, &timeout_ms);
		if (e->cfg.stolon_register &&
		    (gen != e->reg_generation || timeout_ms != e->reg_timeout_ms)) {
			/* published: the workers shed what no longer fits at once; say so */
			e->reg_generation = gen;
			e->reg_timeout_ms = timeout_ms;
			reg_round(e);
		}
		return;
	}
	char note[48];
	snprintf(note, sizeof(note), " (revision %lld)", (long long)e->revision);
	patroni_publish_keys(e->cluster, &e->keys, e->probes_on, "etcd", e->leader, note);
}

/* key bytes (full path) → relative key, or NULL if outside our prefix */
static const char *relative(const struct disc_etcd *e, const char *key)
{
	size_t pl = strlen(e->prefix);
	return strncmp(key, e->prefix, pl) == 0 ? key + pl : NULL;
}

static void apply_kv(struct disc_etcd *e, json_t *kv, bool deleted)
{
	const char *k64 = json_string_value(json_object_get(kv, "key"));
	if (!k64)
		return;
	size_t klen, vlen = 0;
	char *key = etcd_b64_decode(k64, &klen);
	if (!key)
		return;
	const char *rel = relative(e, key);
	if (rel && *rel) {
		if (deleted) {
			patroni_keys_del(&e->keys, rel);
		} else {
			const char *v64 = json_string_value(json_object_get(kv, "value"));
			char *val = etcd_b64_decode(v64 ? v64 : "", &vlen);
			if (val)
				patroni_keys_put(&e->keys, rel, val, vlen);
			free(val);
		}
	}
	free(key);
}

static int64_t header_revision(json_t *j)
{
	json_t *rev = json_object_get(json_object_get(j, "header"), "revision");
	if (json_is_string(rev))
		return strtoll(json_string_value(rev), NULL, 10);
	if (json_is_integer(rev))
		return (int64_t)json_integer_value(rev);
	return -1;
}

/* ---- steps ---- */

static void do_range(struct disc_etcd *e)
{
	json_t *j = json_pack("{s:s, s:s}", "key", e->key_b64, "range_end", e->end_b64);
	char path[64];
	snprintf(path, sizeof(path), "%s/kv/range", e->api);
	if (request(e, E_RANGE, path, json_body(j), false) != 0)
		fail(e, "cannot start a range request");
}

static void do_watch(struct disc_etcd *e)
{
	char rev[32];
	snprintf(rev, sizeof(rev), "%lld", (long long)(e->revision + 1));
	json_t *j = json_pack("{s:{s:s, s:s, s:s}}", "create_request", "key", e->key_b64,
			      "range_end", e->end_b64, "start_revision", rev);
	char path[64];
	snprintf(path, sizeof(path), "%s/watch", e->api);
	if (request(e, E_WATCH, path, json_body(j), true) != 0)
		fail(e, "cannot start a watch");
}

static void do_auth(struct disc_etcd *e)
{
	json_t *j = json_pack("{s:s, s:s}", "name", e->cfg.user, "password",
			      e->cfg.password ? e->cfg.password : "");
	char path[64];
	snprintf(path, sizeof(path), "%s/auth/authenticate", e->api);
	e->token[0] = 0;
	if (request(e, E_AUTH, path, json_body(j), false) != 0)
		fail(e, "cannot start an auth request");
}

static void got_version(struct disc_etcd *e, json_t *j)
{
	const char *cl = json_string_value(json_object_get(j, "etcdcluster"));
	if (!cl)
		cl = json_string_value(json_object_get(j, "etcdserver"));
	if (cl && strncmp(cl, "3.2", 3) == 0)
		snprintf(e->api, sizeof(e->api), "/v3alpha");
	else if (cl && strncmp(cl, "3.3", 3) == 0)
		snprintf(e->api, sizeof(e->api), "/v3beta");
	else
		snprintf(e->api, sizeof(e->api), "/v3");
	if (e->cfg.user && *e->cfg.user)
		do_auth(e);
	else
		do_range(e);
}

static void got_auth(struct disc_etcd *e, json_t *j)
{
	const char *t = json_string_value(json_object_get(j, "token"));
	if (!t) {
		fail(e, "authentication failed: %s",
		     json_string_value(json_object_get(j, "error"))
			     ? json_string_value(json_object_get(j, "error"))
			     : "no token in the answer");
		return;
	}
	snprintf(e->token, sizeof(e->token), "%s", t);
	do_range(e);
}

static void got_range(struct disc_etcd *e, json_t *j)
{
	int64_t rev = header_revision(j);
	if (rev < 0) {
		const char *err = json_string_value(json_object_get(j, "error"));
		fail(e, "range failed: %s", err ? err : "no revision in the answer");
		return;
	}
	patroni_keys_clear(&e->keys);
	json_t *kvs = json_object_get(j, "kvs");
	size_t i;
	json_t *kv;
	json_array_foreach(kvs, i, kv)
		apply_kv(e, kv, false);
	e->revision = rev;
	e->delay_ms = 0;
	if (e->stale || !e->have_view)
		disc_log(DISC_LOG_INFO, "etcd: read %u key(s) under %s from %s (revision %lld)",
			 e->keys.n, e->prefix, endpoint(e), (long long)rev);
	e->have_view = true;
	if (e->stale) {
		e->stale = false;
		disc_cluster_set_stale(e->cluster, false);
	}
	publish_view(e);
	do_watch(e);
}

/* One object of the watch stream. Returns false when the watch must restart. */
static bool got_watch_object(struct disc_etcd *e, json_t *j)
{
	json_t *res = json_object_get(j, "result");
	if (!res) {
		json_t *err = json_object_get(j, "error");
		fail(e, "watch error: %s",
		     json_string_value(json_object_get(err, "message"))
			     ? json_string_value(json_object_get(err, "message"))
			     : "unknown");
		return false;
	}
	if (json_is_true(json_object_get(res, "canceled"))) {
		/* typically compaction: the revision we asked for is gone */
		disc_log(DISC_LOG_INFO, "etcd: watch canceled (%s); reading again",
			 json_string_value(json_object_get(res, "cancel_reason"))
				 ? json_string_value(json_object_get(res, "cancel_reason"))
				 : "no reason given");
		do_range(e);
		return false;
	}
	json_t *events = json_object_get(res, "events");
	int64_t rev = header_revision(res);
	if (rev > e->revision)
		e->revision = rev;
	if (!json_is_array(events) || json_array_size(events) == 0)
		return true;
	size_t i;
	json_t *ev;
	json_array_foreach(events, i, ev)
	{
		const char *type = json_string_value(json_object_get(ev, "type"));
		apply_kv(e, json_object_get(ev, "kv"), type && strcmp(type, "DELETE") == 0);
	}
	publish_view(e);
	return true;
}

/* Parse whole objects from the stream buffer; keep a partial one for later. */
static void parse_stream(struct disc_etcd *e)
{
	size_t off = 0;
	while (off < e->req.body.len) {
		while (off < e->req.body.len && (e->req.body.p[off] == '\n' || e->req.body.p[off] == '\r' ||
					     e->req.body.p[off] == ' '))
			off++;
		if (off == e->req.body.len)
			break;
		json_error_t jerr;
		json_t *j = json_loadb(e->req.body.p + off, e->req.body.len - off, JSON_DISABLE_EOF_CHECK,
				       &jerr);
		if (!j)
			break; /* incomplete: wait for more (a real error ends the stream) */
		off += jerr.position;
		bool go_on = got_watch_object(e, j);
		json_decref(j);
		if (!go_on)
			return; /* the request was replaced; its buffer is gone */
	}
	memmove(e->req.body.p, e->req.body.p + off, e->req.body.len - off);
	e->req.body.len -= off;
	if (e->req.body.len > (8u << 20))
		fail(e, "watch stream: unparseable data");
}

/* ---- stolon_register ---- */

static void reg_end(struct disc_etcd *e)
{
	http_req_end(e->http, &e->reg);
	e->reg_step = R_IDLE;
}

/* Start r beside the main request, on the same endpoint: POST post (taken
 * over) to <api>/what. 0, or -1 (nothing under way). */
static int side_request(struct disc_etcd *e, struct http_req *r, const char *what, char *post)
{
	if (!post)
		return -1;
	char url[1024];
	snprintf(url, sizeof(url), "%s%s/%s", endpoint(e), e->api, what);
	struct http_opts o = { .timeout_ms = e->cfg.timeout_ms, .cacert = e->cfg.cacert,
			       .header = REQUIRE_LEADER };
	return http_req_start(e->http, r, url, e->token, post, &o);
}

/* A finished request's HTTP status, and its body as JSON (NULL when the
 * transfer failed or the body is not JSON). */
static json_t *answer(struct http_req *r, CURLcode rc, long *status)
{
	*status = 0;
	curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, status);
	json_error_t jerr;
	return rc == CURLE_OK ? json_loadb(r->body.p ? r->body.p : "", r->body.len, 0, &jerr) : NULL;
}

static void reg_request(struct disc_etcd *e, int step, const char *what, char *post)
{
	e->reg_step = step;
	if (side_request(e, &e->reg, what, post) != 0)
		reg_end(e);
}

/* Grant a lease of 2 x proxyTimeout; the put follows its answer. */
static void reg_round(struct disc_etcd *e)
{
	if (e->reg_step != R_IDLE || !e->api[0] || e->reg_generation < 0)
		return; /* one at a time; etcd not reached yet; nothing applied yet */
	long long ttl = (2 * e->reg_timeout_ms + 999) / 1000;
	json_t *j = json_pack("{s:I}", "TTL", (json_int_t)(ttl > 0 ? ttl : 1));
	reg_request(e, R_GRANT, "lease/grant", json_body(j));
}

static void reg_answer(struct disc_etcd *e, CURLcode rc)
{
	long status;
	json_t *j = answer(&e->reg, rc, &status);
	int step = e->reg_step;
	const char *lease = json_string_value(json_object_get(j, "ID"));
	char *post = NULL;
	if (step == R_GRANT && status < 400 && lease) {
		/* Stolon's ProxyInfo: Go field names, ProxyTimeout in nanoseconds */
		uint8_t r[8];
		char info_uid[17], key[700];
		for (unsigned i = 0; i < sizeof(r); i++)
			r[i] = (uint8_t)random();
		for (unsigned i = 0; i < sizeof(r); i++)
			snprintf(info_uid + 2 * i, 3, "%02x", r[i]);
		json_t *v = json_pack("{s:s, s:s, s:I, s:I}", "infoUID", info_uid, "UID", e->uid,
				      "Generation", (json_int_t)e->reg_generation, "ProxyTimeout",
				      (json_int_t)e->reg_timeout_ms * 1000000);
		char *value = json_dumps(v, JSON_COMPACT);
		json_decref(v);
		snprintf(key, sizeof(key), "%sproxies/info/%s", e->prefix, e->uid);
		char *k64 = b64_encode((const uint8_t *)key, strlen(key));
		char *v64 = value ? b64_encode((const uint8_t *)value, strlen(value)) : NULL;
		if (k64 && v64)
			post = json_body(json_pack("{s:s, s:s, s:s}", "key", k64, "value", v64, "lease",
						   lease));
		free(k64);
		free(v64);
		free(value);
	}
	bool ok = step == R_PUT && rc == CURLE_OK && status < 400 && j;
	if ((step == R_GRANT && !post) || (step == R_PUT && !ok)) {
		disc_count_error();
		disc_log(DISC_LOG_WARNING, "stolon: cannot register as a proxy on %s: %s%.200s",
			 endpoint(e), rc != CURLE_OK ? curl_easy_strerror(rc) : "",
			 rc == CURLE_OK && e->reg.body.p ? e->reg.body.p : "");
	} else if (ok) {
		disc_log(DISC_LOG_DEBUG, "stolon: proxy %s registered at generation %lld", e->uid,
			 (long long)e->reg_generation);
	}
	json_decref(j);
	reg_end(e);
	if (post)
		reg_request(e, R_PUT, "kv/put", post);
}

static void reg_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	reg_round(arg);
}

/* ---- heartbeat ---- */

#define BEAT_MS 3000

static void beat_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disc_etcd *e = arg;
	if (e->step != E_WATCH || e->beat.easy)
		return; /* no watch to vouch for; the last one still has its timeout */
	json_t *j = json_pack("{s:s, s:s, s:b}", "key", e->key_b64, "range_end", e->end_b64,
			      "count_only", 1);
	side_request(e, &e->beat, "kv/range", json_body(j));
}

static void beat_answer(struct disc_etcd *e, CURLcode rc)
{
	long status;
	json_t *j = answer(&e->beat, rc, &status);
	bool ok = status < 400 && header_revision(j) >= 0;
	char why[300];
	snprintf(why, sizeof(why), "%s%.200s", rc != CURLE_OK ? curl_easy_strerror(rc) : "",
		 rc == CURLE_OK && e->beat.body.p ? e->beat.body.p : "");
	json_decref(j);
	http_req_end(e->http, &e->beat);
	if (!ok && e->step == E_WATCH)
		fail(e, "no answer to a heartbeat beside the watch: %s", why);
}

/* A request finished (or a stream ended). */
static void done(void *arg, CURL *easy, CURLcode rc)
{
	struct disc_etcd *e = arg;
	if (easy && easy == e->reg.easy) {
		reg_answer(e, rc);
		return;
	}
	if (easy && easy == e->beat.easy) {
		beat_answer(e, rc);
		return;
	}
	if (easy != e->req.easy)
		return;
	if (e->step == E_WATCH) {
		fail(e, "watch stream ended: %s", rc == CURLE_OK ? "closed by etcd" :
			curl_easy_strerror(rc));
		return;
	}
	if (rc != CURLE_OK) {
		fail(e, "%s", curl_easy_strerror(rc));
		return;
	}
	long status;
	json_t *j = answer(&e->req, rc, &status);
	if (!j || status >= 400) {
		fail(e, "HTTP %ld: %.200s", status, e->req.body.p ? e->req.body.p : "");
		json_decref(j);
		return;
	}
	switch (e->step) {
	case E_VERSION: got_version(e, j); break;
	case E_AUTH: got_auth(e, j); break;
	case E_RANGE: got_range(e, j); break;
	default: break;
	}
	json_decref(j);
}

static void fail(struct disc_etcd *e, const char *fmt, ...)
{
	char why[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	end_request(e);
	http_req_end(e->http, &e->beat);
	disc_count_error();
	e->step = E_IDLE;
	e->token[0] = 0;
	if (e->have_view && !e->stale) {
		e->stale = true;
		disc_log(DISC_LOG_WARNING,
			 "etcd: %s: %s; keeping the last cluster state (stale) and retrying", endpoint(e),
			 why);
		disc_cluster_set_stale(e->cluster, true);
	} else {
		disc_log(e->delay_ms >= 1000 ? DISC_LOG_INFO : DISC_LOG_WARNING, "etcd: %s: %s",
			 endpoint(e), why);
		if (!e->have_view)
			disc_cluster_no_view(e->cluster);
	}
	e->endpoint = (e->endpoint + 1) % e->cfg.nendpoints;
	/* the first retry is quick (a stream that simply ended); then back off */
	e->delay_ms = disc_backoff_ms(e->delay_ms);
	struct timeval tv = { e->delay_ms / 1000, (e->delay_ms % 1000) * 1000 };
	event_add(e->backoff, &tv);
}

static void start(struct disc_etcd *e)
{
	if (request(e, E_VERSION, "/version", NULL, false) != 0)
		fail(e, "cannot start a request");
}

/* After socket activity: a watch stream delivers data in pieces. */
static void activity(void *arg)
{
	struct disc_etcd *e = arg;
	if (e->step == E_WATCH && e->req.body.len)
		parse_stream(e);
}

static void backoff_cb(evutil_socket_t fd, short what, void *arg)
{
	start(arg);
}

struct disc_etcd *disc_etcd_start(struct event_base *base, const struct disc_etcd_config *cfg,
				  const struct disc_probe_config *pc, char *err, size_t errlen)
{
	struct disc_etcd *e = calloc(1, sizeof(*e));
	if (!e) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	e->base = base;
	e->cfg = *cfg;
	patroni_keys_init(&e->keys);
	/* the keys' prefix: "/service/demo/" (Patroni) or "stolon/cluster/demo/"
	 * (Stolon, whose one key of interest is "clusterdata" under it) */
	if (cfg->stolon_cluster)
		snprintf(e->prefix, sizeof(e->prefix), "%s/%s/", cfg->stolon_prefix,
			 cfg->stolon_cluster);
	else
		patroni_base_path(e->prefix, sizeof(e->prefix) - 1, cfg->namespace_, cfg->scope);
	if (!cfg->stolon_cluster)
		strcat(e->prefix, "/");
	char from[sizeof(e->prefix) + 16], end[sizeof(from)];
	snprintf(from, sizeof(from), "%s%s", e->prefix, cfg->stolon_cluster ? "clusterdata" : "");
	size_t pl = strlen(from);
	memcpy(end, from, pl);
	end[pl - 1]++; /* range_end: the range's start with its last byte + 1 */
	e->key_b64 = b64_encode((const uint8_t *)from, pl);
	e->end_b64 = b64_encode((const uint8_t *)end, pl);
	e->http = http_new(base, done, activity, e);
	e->backoff = evtimer_new(base, backoff_cb, e);
	e->beat_timer = event_new(base, -1, EV_PERSIST, beat_cb, e);
	if (e->beat_timer) {
		struct timeval tv = { BEAT_MS / 1000, (BEAT_MS % 1000) * 1000 };
		event_add(e->beat_timer, &tv);
	}
	e->cluster = disc_cluster_new(base, cfg->stolon_cluster ? "stolon" : "etcd", pc, false);
	e->reg_generation = -1;
	e->reg_timeout_ms = 15000;
	if (cfg->stolon_cluster)
		strcpy(e->leader, "(none yet)"); /* the first view says who is master, or why none */
	if (cfg->stolon_register) {
		uint8_t r[8];
		for (unsigned i = 0; i < sizeof(r); i++)
			r[i] = (uint8_t)random();
		for (unsigned i = 0; i < sizeof(r); i++)
			snprintf(e->uid + 2 * i, 3, "%02x", r[i]);
		/* stolon-proxy's proxyCheckInterval */
		e->reg_timer = event_new(base, -1, EV_PERSIST, reg_timer_cb, e);
		struct timeval tv = { 5, 0 };
		if (e->reg_timer)
			event_add(e->reg_timer, &tv);
		disc_log(DISC_LOG_INFO, "stolon: registering as proxy %s under %sproxies/info/",
			 e->uid, e->prefix);
	}
	e->probes_on = pc->interval_ms > 0;
	if (!e->key_b64 || !e->end_b64 || !e->http || !e->backoff || !e->beat_timer ||
	    !e->cluster) {
		snprintf(err, errlen, "out of memory");
		disc_etcd_stop(e);
		return NULL;
	}
	/* nothing is routable until etcd answers: publish the empty view */
	disc_cluster_set(e->cluster, NULL, 0);
	disc_log(DISC_LOG_INFO, "etcd: watching %s on %s%s", e->prefix, endpoint(e),
		 cfg->nendpoints > 1 ? " (and others on failure)" : "");
	start(e);
	return e;
}

void disc_etcd_stop(struct disc_etcd *e)
{
	if (!e)
		return;
	if (e->reg_timer)
		event_free(e->reg_timer);
	if (e->beat_timer)
		event_free(e->beat_timer);
	http_req_free(e->http, &e->req);
	http_req_free(e->http, &e->reg);
	http_req_free(e->http, &e->beat);
	http_free(e->http);
	if (e->backoff)
		event_free(e->backoff);
	disc_cluster_free(e->cluster);
	patroni_keys_clear(&e->keys);
	free(e->key_b64);
	free(e->end_b64);
	free(e);
}
