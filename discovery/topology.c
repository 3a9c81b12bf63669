/*
 * topology.c — the server registry and the current snapshot.
 *
 * The current snapshot is one pointer guarded by a mutex held only to take a
 * reference or to swap; workers keep their own reference and re-acquire when a
 * subscriber callback tells them a new one exists, so the hot path never locks.
 */
#include <ctype.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "discovery/discovery.h"

#include "discovery/internal.h"

static void log_nothing(int level, const char *fmt, ...)
{
}
void (*disc_log)(int level, const char *fmt, ...) = log_nothing;

/* ---- registry ---- */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct disc_server **reg;
static unsigned reg_n, reg_cap;

struct disc_server *disc_server_get(const char *host, const char *port, char *err, size_t errlen)
{
	struct disc_server *s = NULL;

	pthread_mutex_lock(&reg_lock);
	for (unsigned i = 0; i < reg_n; i++)
		if (strcmp(reg[i]->host, host) == 0 && strcmp(reg[i]->port, port) == 0) {
			s = reg[i];
			goto out;
		}
	if (strlen(host) >= sizeof(s->host) || strlen(port) >= sizeof(s->port)) {
		snprintf(err, errlen, "address too long: %s:%s", host, port);
		goto out;
	}
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
	struct addrinfo *ai = NULL;
	int rc = getaddrinfo(host, port, &hints, &ai);
	if (rc != 0 || !ai) {
		snprintf(err, errlen, "cannot resolve %s:%s: %s", host, port, gai_strerror(rc));
		goto out;
	}
	if (reg_n == reg_cap) {
		unsigned cap = reg_cap ? reg_cap * 2 : 8;
		struct disc_server **r = realloc(reg, cap * sizeof(*r));
		if (!r) {
			freeaddrinfo(ai);
			snprintf(err, errlen, "out of memory");
			goto out;
		}
		reg = r;
		reg_cap = cap;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		freeaddrinfo(ai);
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	s->id = reg_n;
	snprintf(s->host, sizeof(s->host), "%s", host);
	snprintf(s->port, sizeof(s->port), "%s", port);
	snprintf(s->name, sizeof(s->name), strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
	memcpy(&s->addr, ai->ai_addr, ai->ai_addrlen);
	s->addrlen = ai->ai_addrlen;
	freeaddrinfo(ai);
	reg[reg_n++] = s;
out:
	pthread_mutex_unlock(&reg_lock);
	return s;
}

void disc_servers_free(void)
{
	pthread_mutex_lock(&reg_lock);
	for (unsigned i = 0; i < reg_n; i++)
		free(reg[i]);
	free(reg);
	reg = NULL;
	reg_n = reg_cap = 0;
	pthread_mutex_unlock(&reg_lock);
}

struct disc_server *disc_server_find(const char *name)
{
	struct disc_server *s = NULL;
	pthread_mutex_lock(&reg_lock);
	for (unsigned i = 0; i < reg_n && !s; i++) {
		char hp[300];
		snprintf(hp, sizeof(hp), "%s:%s", reg[i]->host, reg[i]->port);
		if (strcmp(reg[i]->name, name) == 0 || strcmp(hp, name) == 0)
			s = reg[i];
	}
	pthread_mutex_unlock(&reg_lock);
	return s;
}

const char *disc_admin_name(enum disc_admin a)
{
	switch (a) {
	case DISC_ADMIN_DRAIN: return "drain";
	case DISC_ADMIN_MAINT: return "maint";
	default: return "ready";
	}
}

const char *disc_role_name(enum disc_role r)
{
	switch (r) {
	case DISC_ROLE_PRIMARY: return "primary";
	case DISC_ROLE_STANDBY: return "standby";
	default: return "unknown";
	}
}

/* ---- snapshots ---- */

static pthread_mutex_t topo_lock = PTHREAD_MUTEX_INITIALIZER;
static struct topology *current;
static uint64_t generation;
static struct topo_stats stats; /* under topo_lock */
static const struct disc_server *last_primary; /* the last routable primary seen */

static const struct disc_server *primary_of(const struct topology *t)
{
	for (unsigned i = 0; t && i < t->n; i++)
		if (t->e[i].role == DISC_ROLE_PRIMARY && t->e[i].reachable && !t->e[i].in_hot_standby)
			return t->e[i].srv;
	return NULL;
}

#define MAX_SUBSCRIBERS 256
static struct {
	topo_notify_fn fn;
	void *arg;
} subs[MAX_SUBSCRIBERS];
static unsigned nsubs;

struct topology *topo_new(unsigned n, const char *source)
{
	struct topology *t = calloc(1, sizeof(*t) + n * sizeof(t->e[0]));
	if (!t)
		return NULL;
	atomic_init(&t->refs, 1);
	t->n = n;
	t->source = source;
	return t;
}

struct topology *topo_acquire(void)
{
	pthread_mutex_lock(&topo_lock);
	struct topology *t = current;
	if (t)
		atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
	pthread_mutex_unlock(&topo_lock);
	return t;
}

void topo_release(struct topology *t)
{
	if (t && atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
		free(t);
}

static atomic_uint_fast64_t errors;

void disc_count_error(void)
{
	atomic_fetch_add_explicit(&errors, 1, memory_order_relaxed);
}

void topo_stats(struct topo_stats *out)
{
	pthread_mutex_lock(&topo_lock);
	*out = stats;
	pthread_mutex_unlock(&topo_lock);
	out->errors = atomic_load_explicit(&errors, memory_order_relaxed);
}

uint64_t topo_generation(void)
{
	pthread_mutex_lock(&topo_lock);
	uint64_t g = generation;
	pthread_mutex_unlock(&topo_lock);
	return g;
}

static bool entry_same(const struct topo_entry *a, const struct topo_entry *b, int64_t max_lag)
{
	bool lagging_a = max_lag > 0 && a->lag_bytes > max_lag;
	bool lagging_b = max_lag > 0 && b->lag_bytes > max_lag;
	return a->srv == b->srv && a->role == b->role && a->reachable == b->reachable &&
	       a->in_hot_standby == b->in_hot_standby &&
	       a->default_read_only == b->default_read_only &&
	       a->noloadbalance == b->noloadbalance && a->draining == b->draining &&
	       a->admin == b->admin &&
	       lagging_a == lagging_b &&
	       (a->lag_bytes < 0) == (b->lag_bytes < 0);
}

static bool topo_same(const struct topology *a, const struct topology *b, int64_t max_lag)
{
	if (!a || !b || a->n != b->n || a->stale != b->stale)
		return false;
	for (unsigned i = 0; i < a->n; i++)
		if (!entry_same(&a->e[i], &b->e[i], max_lag))
			return false;
	return true;
}

bool topo_publish(struct topology *t, int64_t max_lag)
{
	struct timespec wall;
	clock_gettime(CLOCK_REALTIME, &wall);
	pthread_mutex_lock(&topo_lock);
	for (unsigned i = 0; i < t->n; i++)
		t->e[i].admin = (enum disc_admin)t->e[i].srv->admin;
	/* the source confirmed its view now, whether or not it changed */
	stats.updated_s = (double)wall.tv_sec + wall.tv_nsec / 1e9;
	if (!t->stale)
		stats.stale_since_ms = 0;
	else if (!stats.stale_since_ms)
		stats.stale_since_ms = now_ms();
	if (topo_same(current, t, max_lag)) {
		pthread_mutex_unlock(&topo_lock);
		topo_release(t);
		return false;
	}
	struct topology *old = current;
	const struct disc_server *now = primary_of(t);
	if (now && last_primary && now != last_primary)
		stats.primary_changes++; /* not the first one seen; across a gap with none */
	if (now)
		last_primary = now;
	stats.publishes++;
	t->generation = ++generation;
	current = t;
	unsigned n = nsubs;
	pthread_mutex_unlock(&topo_lock);
	topo_release(old);
	for (unsigned i = 0; i < n; i++)
		subs[i].fn(subs[i].arg);
	return true;
}

bool topo_set_admin(struct disc_server *srv, enum disc_admin a)
{
	pthread_mutex_lock(&topo_lock);
	if (srv->admin == (int)a) {
		pthread_mutex_unlock(&topo_lock);
		return false;
	}
	srv->admin = (int)a;
	struct topology *old = current, *t = NULL;
	if (old && (t = topo_new(old->n, old->source))) {
		memcpy(t->e, old->e, old->n * sizeof(t->e[0]));
		t->stale = old->stale;
		for (unsigned i = 0; i < t->n; i++)
			t->e[i].admin = (enum disc_admin)t->e[i].srv->admin;
		t->generation = ++generation;
		stats.publishes++;
		current = t;
	}
	unsigned n = nsubs;
	pthread_mutex_unlock(&topo_lock);
	if (t) {
		topo_release(old);
		for (unsigned i = 0; i < n; i++)
			subs[i].fn(subs[i].arg);
	}
	return true;
}

void topo_subscribe(topo_notify_fn fn, void *arg)
{
	pthread_mutex_lock(&topo_lock);
	if (nsubs < MAX_SUBSCRIBERS)
		subs[nsubs++] = (typeof(subs[0])){ fn, arg };
	pthread_mutex_unlock(&topo_lock);
}

void topo_reset(void)
{
	pthread_mutex_lock(&topo_lock);
	struct topology *old = current;
	current = NULL;
	nsubs = 0;
	pthread_mutex_unlock(&topo_lock);
	topo_release(old);
}

bool disc_list_has(const char *list, const char *item)
{
	size_t n = strlen(item);
	for (const char *p = list; n && p && *p;) {
		while (*p == ',' || isspace((unsigned char)*p))
			p++;
		const char *e = p;
		while (*e && *e != ',' && !isspace((unsigned char)*e))
			e++;
		if ((size_t)(e - p) == n && memcmp(p, item, n) == 0)
			return true;
		p = e;
	}
	return false;
}

unsigned disc_backoff_ms(unsigned prev)
{
	return prev ? (prev * 2 > 2000 ? 2000 : prev * 2) : 100;
}

uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}
