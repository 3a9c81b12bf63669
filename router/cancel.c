/*
 * cancel.c — which server owns a backend key, for the keys of live sessions.
 *
 * Keys are passed to clients unchanged (the server's own pid and secret), so a
 * CancelRequest arriving on any listener and any worker is forwarded verbatim
 * to the server this map names. A chained hash under one mutex: it is touched
 * once when a session starts, once when it ends, and once per cancel.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "router/router.h"

struct cancel_entry {
	struct cancel_entry *next;
	struct disc_server *srv;
	uint32_t pid;
	uint32_t key_len;
	uint8_t key[];
};

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

struct cancel_entry *cancel_register(uint32_t pid, const uint8_t *key, uint32_t key_len,
				     struct disc_server *srv)
{
	struct cancel_entry *e = malloc(sizeof(*e) + key_len);
	if (!e)
		return NULL;
	e->srv = srv;
	e->pid = pid;
	e->key_len = key_len;
	memcpy(e->key, key, key_len);
	unsigned b = bucket(pid, key, key_len);
	pthread_mutex_lock(&lock);
	e->next = buckets[b];
	buckets[b] = e;
	pthread_mutex_unlock(&lock);
	return e;
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
	free(e);
}

struct disc_server *cancel_lookup(uint32_t pid, const uint8_t *key, uint32_t key_len)
{
	struct disc_server *srv = NULL;
	unsigned b = bucket(pid, key, key_len);
	pthread_mutex_lock(&lock);
	for (struct cancel_entry *e = buckets[b]; e; e = e->next)
		if (e->pid == pid && e->key_len == key_len && memcmp(e->key, key, key_len) == 0) {
			srv = e->srv;
			break;
		}
	pthread_mutex_unlock(&lock);
	return srv;
}
