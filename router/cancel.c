/*
 * cancel.c — pgrouter's own backend keys, and the server connection behind each.
 *
 * A client never sees a server's key: it gets a random one of pgrouter's, and
 * this map says which server connection (server, backend pid and key) the
 * session holds now. A CancelRequest arriving on any listener and any worker
 * is rewritten with the server's key and sent to that server, so a cancel
 * reaches the right backend even after the session changed server
 * connections, and a client cannot cancel another client's backend by
 * guessing at pids. A chained hash under one mutex: touched when a session
 * starts, when its server connection changes, when it ends, and per cancel.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "router/router.h"

/* A server's key is 4 bytes in protocol 3.0: kept in the entry. A longer one
 * (3.2 allows 256) is allocated. */
#define KEY_INLINE 8

struct cancel_entry {
	struct cancel_entry *next;
	struct disc_server *srv; /* NULL until the server's key is known */
	union {
		uint8_t *p; /* srv_key_len > KEY_INLINE */
		uint8_t in[KEY_INLINE];
	} srv_key;
	uint32_t pid, srv_pid;
	uint16_t key_len, srv_key_len;
	uint8_t key[]; /* 4 bytes (protocol 3.0): the entry is a 48-byte heap chunk */
};

static const uint8_t *srv_key(const struct cancel_entry *e)
{
	return e->srv_key_len > KEY_INLINE ? e->srv_key.p : e->srv_key.in;
}

#define BUCKETS 4096u /* power of two */
static struct cancel_entry *buckets[BUCKETS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned bucket(uint32_t pid, const uint8_t *key, uint32_t key_len)
{
	uint32_t h = 2166136261u ^ pid;
	for (uint32_t i = 0; i < key_len; i++)
		h = (h ^ key[i]) * 16777619u;
	return h & (BUCKETS - 1);
}

static struct cancel_entry *find(uint32_t pid, const uint8_t *key, uint32_t key_len)
{
	for (struct cancel_entry *e = buckets[bucket(pid, key, key_len)]; e; e = e->next)
		if (e->pid == pid && e->key_len == key_len && memcmp(e->key, key, key_len) == 0)
			return e;
	return NULL;
}

struct cancel_entry *cancel_new(uint32_t *pid, uint8_t *key, uint32_t key_len)
{
	if (key_len < 4 || key_len > PGW_CANCEL_KEY_MAX)
		return NULL;
	struct cancel_entry *e = calloc(1, offsetof(struct cancel_entry, key) + key_len);
	if (!e)
		return NULL;
	e->key_len = (uint16_t)key_len;
	pthread_mutex_lock(&lock);
	do {
		if (!random_bytes(&e->pid, sizeof(e->pid)) || !random_bytes(e->key, key_len)) {
			pthread_mutex_unlock(&lock);
			free(e);
			return NULL;
		}
		e->pid &= 0x7fffffffu; /* a positive int, as a pid is */
	} while (e->pid == 0 || find(e->pid, e->key, key_len));
	unsigned b = bucket(e->pid, e->key, key_len);
	e->next = buckets[b];
	buckets[b] = e;
	pthread_mutex_unlock(&lock);
	*pid = e->pid;
	memcpy(key, e->key, key_len);
	return e;
}

void cancel_set_server(struct cancel_entry *e, struct disc_server *srv, uint32_t pid,
		       const uint8_t *key, uint32_t key_len)
{
	if (!e)
		return;
	uint8_t *k = NULL;
	if (key_len > PGW_CANCEL_KEY_MAX || (key_len > KEY_INLINE && !(k = malloc(key_len))))
		srv = NULL, key_len = 0; /* out of memory: cancels go nowhere */
	if (k)
		memcpy(k, key, key_len);
	/* a cancel on another worker may be reading the key: changed under the lock */
	pthread_mutex_lock(&lock);
	uint8_t *old = e->srv_key_len > KEY_INLINE ? e->srv_key.p : NULL;
	e->srv = srv;
	e->srv_pid = pid;
	e->srv_key_len = (uint16_t)key_len;
	if (k)
		e->srv_key.p = k;
	else if (key_len)
		memcpy(e->srv_key.in, key, key_len);
	pthread_mutex_unlock(&lock);
	free(old);
}

void cancel_unregister(struct cancel_entry *e)
{
	if (!e)
		return;
	unsigned b = bucket(e->pid, e->key, e->key_len);
	pthread_mutex_lock(&lock);
	for (struct cancel_entry **pp = &buckets[b]; *pp; pp = &(*pp)->next)
		if (*pp == e) {
			*pp = e->next;
			break;
		}
	pthread_mutex_unlock(&lock);
	if (e->srv_key_len > KEY_INLINE)
		free(e->srv_key.p);
	free(e);
}

size_t cancel_lookup(uint32_t pid, const uint8_t *key, uint32_t key_len,
		     struct disc_server **srv, uint8_t *out, size_t cap)
{
	size_t n = 0;
	pthread_mutex_lock(&lock);
	struct cancel_entry *e = find(pid, key, key_len);
	if (e && e->srv && 12 + (size_t)e->srv_key_len <= cap) {
		n = 12 + e->srv_key_len;
		pgw_put32(out, (uint32_t)n);
		pgw_put32(out + 4, PGW_CODE_CANCEL);
		pgw_put32(out + 8, e->srv_pid);
		memcpy(out + 12, srv_key(e), e->srv_key_len);
		*srv = e->srv;
	}
	pthread_mutex_unlock(&lock);
	return n;
}
