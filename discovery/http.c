/*
 * http.c — libcurl's multi-socket API on a libevent base, shared by the HTTP
 * sources (etcd, Patroni REST). curl says which sockets and timeouts to watch;
 * libevent says when they fire. No thread, no blocking call.
 *
 * Callbacks run from the event loop, never from inside curl: a finished
 * transfer is reported through done(), and activity() runs after every socket
 * event so a streaming reader can parse what arrived. Either may remove or add
 * transfers.
 */
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/internal.h"

struct http {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	http_done_fn done;
	void (*activity)(void *arg);
	void *arg;
};

static void check_multi(struct http *h)
{
	CURLMsg *msg;
	int left;
	while ((msg = curl_multi_info_read(h->multi, &left))) {
		if (msg->msg == CURLMSG_DONE)
			h->done(h->arg, msg->easy_handle, msg->data.result);
	}
}

static void socket_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http *h = arg;
	int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
	int running;
	curl_multi_socket_action(h->multi, fd, flags, &running);
	check_multi(h);
	if (h->activity)
		h->activity(h->arg);
}

static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct http *h = userp;
	struct event *ev = socketp;
	if (what == CURL_POLL_REMOVE) {
		if (ev)
			event_free(ev);
		curl_multi_assign(h->multi, s, NULL);
		return 0;
	}
	short kind = EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) |
		     (what & CURL_POLL_OUT ? EV_WRITE : 0);
	if (ev) {
		event_del(ev);
		event_assign(ev, h->base, s, kind, socket_event_cb, h);
	} else {
		ev = event_new(h->base, s, kind, socket_event_cb, h);
		curl_multi_assign(h->multi, s, ev);
	}
	event_add(ev, NULL);
	return 0;
}

static void timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http *h = arg;
	int running;
	curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_multi(h);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct http *h = userp;
	if (timeout_ms < 0) {
		event_del(h->timer);
		return 0;
	}
	struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
	event_add(h->timer, &tv);
	return 0;
}

struct http *http_new(struct event_base *base, http_done_fn done, void (*activity)(void *arg),
		      void *arg)
{
	static bool curl_ready;
	if (!curl_ready) {
		curl_global_init(CURL_GLOBAL_DEFAULT);
		curl_ready = true;
	}
	struct http *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	*h = (struct http){ .base = base, .done = done, .activity = activity, .arg = arg };
	h->multi = curl_multi_init();
	h->timer = evtimer_new(base, timer_event_cb, h);
	if (!h->multi || !h->timer) {
		http_free(h);
		return NULL;
	}
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
	return h;
}

void http_free(struct http *h)
{
	if (!h)
		return;
	if (h->multi)
		curl_multi_cleanup(h->multi);
	if (h->timer)
		event_free(h->timer);
	free(h);
}

static size_t buf_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
	struct http_buf *b = arg;
	size_t n = size * nmemb;
	if (b->len + n + 1 > b->cap) {
		size_t cap = (b->len + n + 1) * 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return 0; /* curl aborts the transfer */
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, ptr, n);
	b->len += n;
	b->p[b->len] = 0;
	return n;
}

/* A DCS or API peer that vanishes without a word (a partition, a frozen
 * host) is given up about 6 s after its last packet, idle stream or not: the
 * source then marks its view stale and tries the next endpoint. libcurl sets
 * idle and interval; the count and the user timeout are set here. */
static int sockopt_cb(void *arg, curl_socket_t fd, curlsocktype purpose)
{
	(void)arg;
	if (purpose != CURLSOCKTYPE_IPCXN)
		return CURL_SOCKOPT_OK;
	int cnt = 3;
	unsigned user_timeout_ms = 6000;
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms));
	return CURL_SOCKOPT_OK;
}

CURL *http_start(struct http *h, const char *url, const struct http_opts *o, struct http_buf *into)
{
	CURL *c = curl_easy_init();
	if (!c)
		return NULL;
	into->len = 0;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, buf_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, into);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)o->timeout_ms);
	/* a stream has no end; a dead peer is found by TCP keepalive */
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, o->stream ? 0L : (long)o->timeout_ms);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPIDLE, 3L);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPINTVL, 1L);
	curl_easy_setopt(c, CURLOPT_SOCKOPTFUNCTION, sockopt_cb);
	if (o->cacert && *o->cacert)
		curl_easy_setopt(c, CURLOPT_CAINFO, o->cacert);
	if (o->headers)
		curl_easy_setopt(c, CURLOPT_HTTPHEADER, o->headers);
	if (o->post)
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, o->post);
	if (curl_multi_add_handle(h->multi, c) != CURLM_OK) {
		curl_easy_cleanup(c);
		return NULL;
	}
	return c;
}

void http_cancel(struct http *h, CURL *c)
{
	if (!c)
		return;
	curl_multi_remove_handle(h->multi, c);
	curl_easy_cleanup(c);
}

void http_req_end(struct http *h, struct http_req *r)
{
	http_cancel(h, r->easy);
	r->easy = NULL;
	curl_slist_free_all(r->headers);
	r->headers = NULL;
	free(r->post);
	r->post = NULL;
	r->body.len = 0;
}

void http_req_free(struct http *h, struct http_req *r)
{
	if (h)
		http_req_end(h, r);
	free(r->body.p);
	r->body = (struct http_buf){ 0 };
}

int http_req_start(struct http *h, struct http_req *r, const char *url, const char *auth,
		   char *post, const struct http_opts *o)
{
	http_req_end(h, r);
	r->post = post;
	r->headers = curl_slist_append(NULL, "Content-Type: application/json");
	r->headers = curl_slist_append(r->headers, "Accept: application/json");
	if (auth && *auth) {
		size_t n = strlen(auth) + 32;
		char *line = malloc(n);
		if (line) {
			snprintf(line, n, "Authorization: %s", auth);
			r->headers = curl_slist_append(r->headers, line);
			free(line);
		}
	}
	if (o->header)
		r->headers = curl_slist_append(r->headers, o->header);
	struct http_opts opts = *o;
	opts.headers = r->headers;
	opts.post = post;
	r->easy = http_start(h, url, &opts, &r->body);
	if (!r->easy) {
		http_req_end(h, r);
		return -1;
	}
	return 0;
}
