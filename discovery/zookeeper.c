/*
 * zookeeper.c — Patroni's cluster state from ZooKeeper.
 *
 * The ZooKeeper C client (libzookeeper-mt) runs its own I/O and completion
 * threads. Its callbacks only copy what arrived into a queue and wake the
 * event loop (event_active, thread-safe under evthread); everything else —
 * keys, watches, publishing, reconnecting — happens on the main thread:
 *
 *   session CONNECTED ─▶ get+watch leader, status, config, failover;
 *                        children+watch members; get+watch each member
 *   watch fired       ─▶ get again (and watch again: ZooKeeper watches fire once)
 *   node missing      ─▶ key dropped, exists-watch set so its creation is seen
 *   CONNECTING        ─▶ last view kept, marked stale (the session may resume)
 *   EXPIRED           ─▶ close, new session, read everything again
 *   member deleted    ─▶ kept for MEMBER_HOLD_MS before it leaves the view
 *
 * Patroni deletes and re-creates its member znode when its tags, version,
 * state (into or out of running) or checkpoint_after_promote change — on the
 * new primary right after a promotion, too. Taken literally, that gap would
 * shed every session on the member for nothing; so a member that vanishes is
 * kept (with its last data) until it comes back or the hold ends. It decides
 * no write on its own: a primary also needs the leader key, which is not touched.
 *
 * Answers from an older session are told apart by a generation number and dropped.
 */
#define THREADED
#include <event2/event.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zookeeper/zookeeper.h>

#include "discovery/internal.h"

#define MEMBER_HOLD_MS 1000

enum zk_kind { ZK_SESSION, ZK_WATCH, ZK_DATA, ZK_NONODE, ZK_ABSENT, ZK_CHILDREN, ZK_ERROR };

struct zk_msg {
	struct zk_msg *next;
	enum zk_kind kind;
	uint64_t gen;
	int state, type, rc;
	char path[1024];
	char *data;
	int len;
	char **children;
	int nchildren;
};

struct disc_zk {
	struct event_base *base;
	struct disc_zk_config cfg;
	struct disc_cluster *cluster;
	struct event *wake, *retry, *hold;
	unsigned reads; /* get()s not answered yet: the first view waits for all of them */
	struct event *first; /* no view yet within session_timeout: say so */
	struct { /* members whose znode is gone, until they return or the hold ends */
		char key[300];
		uint64_t until_ms;
	} vanished[PATRONI_MAX_MEMBERS];
	unsigned nvanished;
	zhandle_t *zh;
	uint64_t gen; /* of the current session */
	char hosts[1024];
	char base_path[256]; /* /service/demo */
	struct patroni_keys keys;
	bool have_view, stale, probes_on, dirty;
	char leader[128];
	pthread_mutex_t lock;
	struct zk_msg *head, **tail; /* filled by ZooKeeper's threads */
};

static struct disc_zk *the_zk; /* one source per process; callbacks find it here */

/* ---- ZooKeeper's threads: copy and hand over ---- */

static void push(struct zk_msg *m)
{
	struct disc_zk *z = the_zk;
	pthread_mutex_lock(&z->lock);
	*z->tail = m;
	z->tail = &m->next;
	pthread_mutex_unlock(&z->lock);
	event_active(z->wake, EV_READ, 0);
}

static struct zk_msg *msg_new(enum zk_kind kind, const void *ctx, const char *path)
{
	struct zk_msg *m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->kind = kind;
	m->gen = (uint64_t)(uintptr_t)ctx;
	snprintf(m->path, sizeof(m->path), "%s", path ? path : "");
	return m;
}

static void watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
	struct zk_msg *m = msg_new(type == ZOO_SESSION_EVENT ? ZK_SESSION : ZK_WATCH, ctx, path);
	if (!m)
		return;
	m->type = type;
	m->state = state;
	push(m);
}

/* the path travels in the context: "<gen>\n<path>" would need parsing, so the
 * completions get a small heap block instead */
struct zk_ctx {
	uint64_t gen;
	char path[1024];
};

static struct zk_ctx *ctx_new(uint64_t gen, const char *path)
{
	struct zk_ctx *c = malloc(sizeof(*c));
	if (c) {
		c->gen = gen;
		snprintf(c->path, sizeof(c->path), "%s", path);
	}
	return c;
}

static void data_done(int rc, const char *value, int len, const struct Stat *stat, const void *data)
{
	const struct zk_ctx *c = data;
	struct zk_msg *m = msg_new(rc == ZOK ? ZK_DATA : rc == ZNONODE ? ZK_NONODE : ZK_ERROR,
				   (void *)(uintptr_t)c->gen, c->path);
	free((void *)c);
	if (!m)
		return;
	m->rc = rc;
	if (rc == ZOK && value && len > 0) {
		m->data = malloc((size_t)len + 1);
		if (m->data) {
			memcpy(m->data, value, (size_t)len);
			m->data[len] = 0;
			m->len = len;
		}
	}
	push(m);
}

static void exists_done(int rc, const struct Stat *stat, const void *data)
{
	const struct zk_ctx *c = data;
	/* created meanwhile: read it (the exists watch also fires, harmlessly);
	 * still absent: nothing to do, the exists watch will tell */
	struct zk_msg *m = msg_new(rc == ZOK ? ZK_WATCH : ZK_ABSENT, (void *)(uintptr_t)c->gen,
				   c->path);
	free((void *)c);
	if (!m)
		return;
	m->type = ZOO_CREATED_EVENT;
	m->rc = rc;
	push(m);
}

static void children_done(int rc, const struct String_vector *v, const void *data)
{
	const struct zk_ctx *c = data;
	struct zk_msg *m = msg_new(rc == ZOK ? ZK_CHILDREN : rc == ZNONODE ? ZK_NONODE : ZK_ERROR,
				   (void *)(uintptr_t)c->gen, c->path);
	free((void *)c);
	if (!m)
		return;
	m->rc = rc;
	if (rc == ZOK && v && v->count > 0) {
		m->children = calloc((size_t)v->count, sizeof(char *));
		for (int i = 0; m->children && i < v->count; i++)
			if ((m->children[m->nchildren] = strdup(v->data[i])))
				m->nchildren++;
	}
	push(m);
}

/* ---- main thread ---- */

static void msg_free(struct zk_msg *m)
{
	for (int i = 0; i < m->nchildren; i++)
		free(m->children[i]);
	free(m->children);
	free(m->data);
	free(m);
}

static const char *relative(const struct disc_zk *z, const char *path)
{
	size_t n = strlen(z->base_path);
	if (strncmp(path, z->base_path, n) != 0 || path[n] != '/')
		return NULL;
	return path + n + 1;
}

static void get(struct disc_zk *z, const char *rel)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s", z->base_path, rel);
	void *gen = (void *)(uintptr_t)z->gen;
	int rc = strcmp(rel, "members") == 0
			 ? zoo_awget_children(z->zh, path, watcher, gen, children_done,
					      ctx_new(z->gen, path))
			 : zoo_awget(z->zh, path, watcher, gen, data_done, ctx_new(z->gen, path));
	if (rc == ZOK)
		z->reads++;
	if (rc != ZOK) {
		disc_count_error();
		disc_log(DISC_LOG_WARNING, "zookeeper: cannot read %s: %s", path, zerror(rc));
	}
}

static void read_all(struct disc_zk *z)
{
	static const char *const keys[] = { "leader", "status", "config", "failover", "members" };
	for (unsigned i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		get(z, keys[i]);
}

static void set_stale(struct disc_zk *z, bool stale, const char *why)
{
	if (stale) {
		disc_count_error();
		if (!z->have_view)
			disc_cluster_no_view(z->cluster);
	}
	if (z->stale == stale || !z->have_view)
		return;
	z->stale = stale;
	if (stale)
		disc_log(DISC_LOG_WARNING,
			 "zookeeper: %s; keeping the last cluster state (stale) meanwhile", why);
	disc_cluster_set_stale(z->cluster, stale);
}

static void vanished_forget(struct disc_zk *z, unsigned i)
{
	z->vanished[i] = z->vanished[--z->nvanished];
}

/* a member's znode is gone: hold its last data for MEMBER_HOLD_MS (see top) */
static void member_gone(struct disc_zk *z, const char *rel)
{
	if (!patroni_keys_get(&z->keys, rel))
		return;
	for (unsigned i = 0; i < z->nvanished; i++)
		if (strcmp(z->vanished[i].key, rel) == 0)
			return; /* already held; the first deadline stands */
	if (z->nvanished == PATRONI_MAX_MEMBERS) {
		patroni_keys_del(&z->keys, rel);
		z->dirty = true;
		return;
	}
	snprintf(z->vanished[z->nvanished].key, sizeof(z->vanished[0].key), "%s", rel);
	z->vanished[z->nvanished++].until_ms = now_ms() + MEMBER_HOLD_MS;
	disc_log(DISC_LOG_DEBUG, "zookeeper: %s deleted; held %d ms in case Patroni re-creates it",
		 rel, MEMBER_HOLD_MS);
	struct timeval tv = { MEMBER_HOLD_MS / 1000, (MEMBER_HOLD_MS % 1000) * 1000 };
	if (!evtimer_pending(z->hold, NULL))
		event_add(z->hold, &tv);
}

static void member_back(struct disc_zk *z, const char *rel)
{
	for (unsigned i = 0; i < z->nvanished; i++)
		if (strcmp(z->vanished[i].key, rel) == 0) {
			vanished_forget(z, i);
			return;
		}
}

static void publish_view(struct disc_zk *z);

static void hold_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disc_zk *z = arg;
	uint64_t now = now_ms(), next = 0;
	for (unsigned i = 0; i < z->nvanished;) {
		if (z->vanished[i].until_ms <= now) {
			disc_log(DISC_LOG_INFO, "zookeeper: %s is gone", z->vanished[i].key);
			patroni_keys_del(&z->keys, z->vanished[i].key);
			z->dirty = true;
			vanished_forget(z, i);
		} else {
			if (!next || z->vanished[i].until_ms < next)
				next = z->vanished[i].until_ms;
			i++;
		}
	}
	if (next) {
		uint64_t d = next - now;
		struct timeval tv = { (time_t)(d / 1000), (suseconds_t)(d % 1000) * 1000 };
		event_add(z->hold, &tv);
	}
	if (z->dirty) {
		z->dirty = false;
		publish_view(z);
	}
}

static void open_session(struct disc_zk *z);

static void on_session(struct disc_zk *z, int state)
{
	if (state == ZOO_CONNECTED_STATE) {
		const clientid_t *id = zoo_client_id(z->zh);
		disc_log(DISC_LOG_INFO, "zookeeper: session 0x%llx connected; reading %s",
			 id ? (unsigned long long)id->client_id : 0ULL, z->base_path);
		/* after a resumed session the watches still stand, but a read is cheap
		 * and settles anything missed while disconnected */
		read_all(z);
	} else if (state == ZOO_CONNECTING_STATE) {
		set_stale(z, true, "connection lost, reconnecting");
	} else if (state == ZOO_EXPIRED_SESSION_STATE) {
		set_stale(z, true, "session expired");
		disc_log(DISC_LOG_WARNING, "zookeeper: session expired; opening a new one");
		open_session(z);
	} else if (state == ZOO_AUTH_FAILED_STATE) {
		disc_count_error();
		disc_log(DISC_LOG_ERROR, "zookeeper: authentication failed");
	}
}

static void on_children(struct disc_zk *z, struct zk_msg *m)
{
	/* members/<name>: the ones gone are held (a full hold deletes at once and
	 * moves the last key into the slot, so walk from the end) */
	for (unsigned i = z->keys.n; i-- > 0;) {
		const char *k = z->keys.kv[i].key;
		bool keep = strncmp(k, "members/", 8) != 0;
		for (int c = 0; !keep && c < m->nchildren; c++)
			keep = strcmp(k + 8, m->children[c]) == 0;
		if (!keep)
			member_gone(z, k);
	}
	for (int c = 0; c < m->nchildren; c++) {
		char rel[300];
		snprintf(rel, sizeof(rel), "members/%s", m->children[c]);
		get(z, rel);
	}
}

static void handle(struct disc_zk *z, struct zk_msg *m)
{
	if (m->gen != z->gen)
		return; /* from a session that is gone */
	if ((m->kind == ZK_DATA || m->kind == ZK_NONODE || m->kind == ZK_CHILDREN ||
	     m->kind == ZK_ERROR) && z->reads)
		z->reads--; /* a get() answered */
	const char *rel = relative(z, m->path);
	switch (m->kind) {
	case ZK_SESSION:
		on_session(z, m->state);
		break;
	case ZK_WATCH:
		if (rel && m->type != ZOO_NOTWATCHING_EVENT) {
			if (strncmp(rel, "members/", 8) == 0 && m->type == ZOO_DELETED_EVENT)
				member_gone(z, rel);
			get(z, rel);
		}
		break;
	case ZK_DATA:
		if (rel) {
			patroni_keys_put(&z->keys, rel, m->data ? m->data : "", (size_t)m->len);
			member_back(z, rel);
			z->dirty = true;
		}
		break;
	case ZK_NONODE:
		if (rel) {
			/* member znodes come back through members' child watch */
			if (strncmp(rel, "members/", 8) == 0) {
				member_gone(z, rel);
			} else {
				if (patroni_keys_get(&z->keys, rel)) {
					patroni_keys_del(&z->keys, rel);
					z->dirty = true;
				}
				char path[1024];
				snprintf(path, sizeof(path), "%s/%s", z->base_path, rel);
				zoo_awexists(z->zh, path, watcher, (void *)(uintptr_t)z->gen, exists_done,
					     ctx_new(z->gen, path));
			}
		}
		break;
	case ZK_CHILDREN:
		on_children(z, m);
		break;
	case ZK_ERROR:
		disc_log(DISC_LOG_INFO, "zookeeper: %s: %s", m->path, zerror(m->rc));
		break;
	case ZK_ABSENT:
		break;
	}
}

static void publish_view(struct disc_zk *z)
{
	patroni_publish_keys(z->cluster, &z->keys, z->probes_on, "zookeeper", z->leader, "");
	if (!z->have_view)
		disc_log(DISC_LOG_INFO, "zookeeper: %u key(s) under %s", z->keys.n, z->base_path);
	z->have_view = true;
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disc_zk *z = arg;
	pthread_mutex_lock(&z->lock);
	struct zk_msg *list = z->head;
	z->head = NULL;
	z->tail = &z->head;
	pthread_mutex_unlock(&z->lock);
	bool connected = false;
	while (list) {
		struct zk_msg *m = list;
		list = m->next;
		if (m->kind == ZK_SESSION && m->state == ZOO_CONNECTED_STATE && m->gen == z->gen)
			connected = true;
		handle(z, m);
		msg_free(m);
	}
	/* the first view is whole: every key and member read (a partial one
	 * would, at a reload, make the members not read yet look gone) */
	if (z->dirty && (z->have_view || z->reads == 0)) {
		z->dirty = false;
		publish_view(z);
	}
	if (connected && z->stale && z->have_view) {
		/* the reads issued on connect will refresh the view; it is current now */
		z->stale = false;
		disc_cluster_set_stale(z->cluster, false);
	}
}

/* The ZooKeeper client keeps trying hosts that do not answer without telling
 * its watcher: a source with no view after session_timeout counts an error,
 * and a view it took over at a reload goes stale. */
static void first_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disc_zk *z = arg;
	if (z->have_view)
		return;
	disc_count_error();
	disc_log(DISC_LOG_WARNING, "zookeeper: no answer from %s within %u ms; still trying",
		 z->hosts, z->cfg.session_timeout_ms);
	disc_cluster_no_view(z->cluster);
	struct timeval tv = { z->cfg.session_timeout_ms / 1000,
			      (z->cfg.session_timeout_ms % 1000) * 1000 };
	event_add(z->first, &tv);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	open_session(arg);
}

static void open_session(struct disc_zk *z)
{
	if (z->zh) {
		zookeeper_close(z->zh); /* waits for its threads; main thread only */
		z->zh = NULL;
	}
	z->gen++;
	z->reads = 0;
	z->zh = zookeeper_init(z->hosts, watcher, (int)z->cfg.session_timeout_ms, NULL,
			       (void *)(uintptr_t)z->gen, 0);
	if (!z->zh) {
		disc_count_error();
		disc_log(DISC_LOG_WARNING, "zookeeper: cannot start a session with %s; retrying",
			 z->hosts);
		struct timeval tv = { 1, 0 };
		event_add(z->retry, &tv);
	}
}

struct disc_zk *disc_zk_start(struct event_base *base, const struct disc_zk_config *cfg,
			      const struct disc_probe_config *pc, char *err, size_t errlen)
{
	if (the_zk) {
		snprintf(err, errlen, "one ZooKeeper source per process");
		return NULL;
	}
	struct disc_zk *z = calloc(1, sizeof(*z));
	if (!z) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	z->base = base;
	z->cfg = *cfg;
	z->probes_on = pc->interval_ms > 0;
	pthread_mutex_init(&z->lock, NULL);
	z->tail = &z->head;
	patroni_keys_init(&z->keys);
	size_t off = 0;
	for (unsigned i = 0; i < cfg->nhosts && off < sizeof(z->hosts); i++)
		off += (size_t)snprintf(z->hosts + off, sizeof(z->hosts) - off, "%s%s", i ? "," : "",
					cfg->hosts[i]);
	patroni_base_path(z->base_path, sizeof(z->base_path), cfg->namespace_, cfg->scope);
	z->wake = event_new(base, -1, 0, wake_cb, z);
	z->retry = evtimer_new(base, retry_cb, z);
	z->hold = evtimer_new(base, hold_cb, z);
	z->first = evtimer_new(base, first_cb, z);
	z->cluster = disc_cluster_new(base, "zookeeper", pc, false);
	if (!z->wake || !z->retry || !z->hold || !z->first || !z->cluster) {
		snprintf(err, errlen, "out of memory");
		disc_zk_stop(z);
		return NULL;
	}
	the_zk = z;
	/* its own log goes to stderr every 50 ms while a host refuses: pgrouter
	 * says what matters itself */
	zoo_set_debug_level((ZooLogLevel)0);
	disc_cluster_set(z->cluster, NULL, 0); /* nothing routable until ZooKeeper answers */
	disc_log(DISC_LOG_INFO, "zookeeper: watching %s on %s", z->base_path, z->hosts);
	open_session(z);
	struct timeval tv = { cfg->session_timeout_ms / 1000, (cfg->session_timeout_ms % 1000) * 1000 };
	event_add(z->first, &tv);
	return z;
}

void disc_zk_stop(struct disc_zk *z)
{
	if (!z)
		return;
	if (z->zh)
		zookeeper_close(z->zh);
	/* no more callbacks after zookeeper_close: drop what they queued */
	for (struct zk_msg *m = z->head, *next; m; m = next) {
		next = m->next;
		msg_free(m);
	}
	if (z->wake)
		event_free(z->wake);
	if (z->retry)
		event_free(z->retry);
	if (z->first)
		event_free(z->first);
	if (z->hold)
		event_free(z->hold);
	disc_cluster_free(z->cluster);
	patroni_keys_clear(&z->keys);
	pthread_mutex_destroy(&z->lock);
	if (the_zk == z)
		the_zk = NULL;
	free(z);
}
