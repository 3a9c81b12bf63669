/*
 * listener.c — one listening socket per [listener] per worker, all bound to the
 * same address with SO_REUSEPORT, so the kernel spreads new connections across
 * workers and no accept lock is shared.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "router/router.h"

static int bind_one(const struct addrinfo *ai, bool reuseport)
{
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (reuseport)
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	if (ai->ai_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int listeners_bind(struct router *r, char *err, size_t errlen)
{
	const struct config *c = r->cfg;
	r->listen_fds = calloc(r->nworkers, sizeof(*r->listen_fds));
	if (!r->listen_fds) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (unsigned w = 0; w < r->nworkers; w++)
		for (unsigned i = 0; i < CONFIG_MAX_LISTENERS; i++)
			r->listen_fds[w][i] = -1;

	for (unsigned i = 0; i < c->nlisteners; i++) {
		const struct listener_config *l = &c->listeners[i];
		struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
					  .ai_flags = AI_PASSIVE };
		struct addrinfo *ai = NULL;
		int rc = getaddrinfo(l->host, l->port, &hints, &ai);
		if (rc != 0) {
			snprintf(err, errlen, "%s:%d: listen: cannot resolve %s: %s", c->path, l->line,
				 l->host, gai_strerror(rc));
			return -1;
		}
		/* SO_REUSEPORT would let us share a port with another running pgrouter:
		 * bind once without it first so "address in use" is reported. */
		int probe = bind_one(ai, false);
		if (probe < 0) {
			snprintf(err, errlen, "%s:%d: listen: cannot listen on %s:%s: %s", c->path,
				 l->line, l->host, l->port, strerror(errno));
			freeaddrinfo(ai);
			return -1;
		}
		close(probe);
		for (unsigned w = 0; w < r->nworkers; w++) {
			int fd = bind_one(ai, true);
			if (fd < 0) {
				snprintf(err, errlen, "%s:%d: listen: cannot listen on %s:%s: %s",
					 c->path, l->line, l->host, l->port, strerror(errno));
				freeaddrinfo(ai);
				return -1;
			}
			r->listen_fds[w][i] = fd;
		}
		freeaddrinfo(ai);
	}
	return 0;
}
