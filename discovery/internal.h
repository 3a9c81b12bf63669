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

typedef void (*probe_done_fn)(void *arg, unsigned index, const struct probe_result *r);

/*
 * A SQL probe of one server: a persistent libpq connection driven by base,
 * queried every pc->interval_ms, each round bounded by pc->timeout_ms. done(arg,
 * index, result) runs on base's thread after every round. pc must outlive it.
 */
struct probe;
struct probe *probe_new(struct event_base *base, struct disc_server *srv, unsigned index,
			const struct disc_probe_config *pc, probe_done_fn done, void *arg);
void probe_free(struct probe *p);

/* Log hook for discovery messages (set by the daemon); printf-style. */
extern void (*disc_log)(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define DISC_LOG_ERROR 0
#define DISC_LOG_WARNING 1
#define DISC_LOG_INFO 2
#define DISC_LOG_DEBUG 3

#endif
