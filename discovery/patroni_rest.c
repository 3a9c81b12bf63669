/*
 * patroni_rest.c — Patroni's own view, from its REST API, for clusters whose
 * DCS pgrouter cannot reach (Kubernetes, for one).
 *
 *   every poll_interval: GET <url>/cluster on the member that answered last
 *     answer ──▶ members → view published
 *     no answer ──▶ the next URL, until each was tried once this round;
 *                   then the last view is kept, marked stale, until one answers
 *
 * The lock holder is called "leader" by /cluster even while it is still
 * promoting, so with probes on it becomes a primary only once its own server
 * says it left recovery (cluster.c re-probes it every 100 ms until then).
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/internal.h"

struct disc_rest {
	struct disc_rest_config cfg; /* strings owned by the caller */
	struct disc_cluster *cluster;
	struct http *http;
	struct event *tick;
	CURL *easy;
	struct http_buf body;
	unsigned url;      /* index into cfg.urls of the member asked */
	unsigned tried;    /* URLs that failed in this round */
	bool have_view, stale, probes_on;
	char leader[128];
};

static void schedule(struct disc_rest *r, unsigned ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	event_add(r->tick, &tv);
}

static void poll_now(struct disc_rest *r)
{
	char url[1100];
	snprintf(url, sizeof(url), "%s/cluster", r->cfg.urls[r->url]);
	struct http_opts o = { .timeout_ms = r->cfg.timeout_ms, .cacert = r->cfg.cacert };
	r->easy = http_start(r->http, url, &o, &r->body);
	if (!r->easy)
		schedule(r, r->cfg.poll_ms);
}

static void round_failed(struct disc_rest *r, const char *why)
{
	const char *url = r->cfg.urls[r->url];
	disc_count_error();
	r->url = (r->url + 1) % r->cfg.nurls;
	if (++r->tried < r->cfg.nurls) {
		disc_log(DISC_LOG_INFO, "patroni: %s: %s; asking %s", url, why, r->cfg.urls[r->url]);
		poll_now(r);
		return;
	}
	r->tried = 0;
	if (r->have_view && !r->stale) {
		r->stale = true;
		disc_log(DISC_LOG_WARNING,
			 "patroni: no member's REST API answers (%s: %s); keeping the last cluster "
			 "state (stale)", url, why);
		disc_cluster_set_stale(r->cluster, true);
	} else if (!r->have_view) {
		disc_log(DISC_LOG_WARNING, "patroni: no member's REST API answers (%s: %s)", url, why);
		disc_cluster_no_view(r->cluster);
	}
	schedule(r, r->cfg.poll_ms);
}

static void done(void *arg, CURL *easy, CURLcode rc)
{
	struct disc_rest *r = arg;
	if (easy != r->easy)
		return;
	long status = 0;
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
	http_cancel(r->http, easy);
	r->easy = NULL;
	static struct patroni_cluster pc; /* main thread only; large */
	char why[160];
	if (rc != CURLE_OK) {
		round_failed(r, curl_easy_strerror(rc));
		return;
	}
	if (status != 200 || patroni_parse_rest(r->body.p ? r->body.p : "", r->body.len, &pc) != 0) {
		snprintf(why, sizeof(why), "HTTP %ld, not a cluster description", status);
		round_failed(r, why);
		return;
	}
	r->tried = 0;
	if (!r->have_view || r->stale)
		disc_log(DISC_LOG_INFO, "patroni: %u member(s) from %s", pc.n, r->cfg.urls[r->url]);
	if (strcmp(pc.leader, r->leader) != 0) {
		disc_log(DISC_LOG_INFO, "patroni: leader %s%s", pc.leader[0] ? "is now " : "is gone",
			 pc.leader);
		snprintf(r->leader, sizeof(r->leader), "%s", pc.leader);
	}
	r->have_view = true;
	if (r->stale) {
		r->stale = false;
		disc_cluster_set_stale(r->cluster, false);
	}
	struct disc_view_entry v[PATRONI_MAX_MEMBERS];
	unsigned n = patroni_view(&pc, r->probes_on, "patroni", v);
	disc_cluster_set(r->cluster, v, n);
	schedule(r, r->cfg.poll_ms);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	poll_now(arg);
}

struct disc_rest *disc_rest_start(struct event_base *base, const struct disc_rest_config *cfg,
				  const struct disc_probe_config *pc, char *err, size_t errlen)
{
	struct disc_rest *r = calloc(1, sizeof(*r));
	if (!r) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	r->cfg = *cfg;
	r->probes_on = pc->interval_ms > 0;
	r->http = http_new(base, done, NULL, r);
	r->tick = evtimer_new(base, tick_cb, r);
	r->cluster = disc_cluster_new(base, "patroni", pc, false);
	if (!r->http || !r->tick || !r->cluster) {
		snprintf(err, errlen, "out of memory");
		disc_rest_stop(r);
		return NULL;
	}
	disc_cluster_set(r->cluster, NULL, 0); /* nothing routable until a member answers */
	disc_log(DISC_LOG_INFO, "patroni: polling %s/cluster every %u ms%s", cfg->urls[0],
		 cfg->poll_ms, cfg->nurls > 1 ? " (and other members on failure)" : "");
	poll_now(r);
	return r;
}

void disc_rest_stop(struct disc_rest *r)
{
	if (!r)
		return;
	if (r->http)
		http_cancel(r->http, r->easy);
	http_free(r->http);
	if (r->tick)
		event_free(r->tick);
	disc_cluster_free(r->cluster);
	free(r->body.p);
	free(r);
}
