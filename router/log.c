/* log.c — one line per event, written with one write(2) so threads never interleave. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "router/router.h"

int log_level = LOG_INFO;

static const char *const level_names[] = { "ERROR", "WARNING", "INFO", "DEBUG" };

int log_level_parse(const char *s)
{
	if (strcasecmp(s, "error") == 0)
		return LOG_ERROR;
	if (strcasecmp(s, "warning") == 0 || strcasecmp(s, "warn") == 0)
		return LOG_WARNING;
	if (strcasecmp(s, "info") == 0)
		return LOG_INFO;
	if (strcasecmp(s, "debug") == 0)
		return LOG_DEBUG;
	return -1;
}

void log_msg(int level, const char *fmt, ...)
{
	if (!log_enabled(level))
		return;
	char line[2048];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(line, sizeof(line), "%Y-%m-%d %H:%M:%S", &tm);
	n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ld UTC [%d] %s: ",
			      ts.tv_nsec / 1000000, (int)getpid(), level_names[level]);
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = 0;
	n += (size_t)m;
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, n);
	(void)w;
}

/* ---- random bytes ------------------------------------------------------ */

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <string.h>

/* OpenSSL's generator, drawn 4 KB at a time per thread: each RAND_bytes call
 * costs a getpid() (its fork check) and locking, and a login needs several
 * small draws (salt, nonce, backend key). Bytes are handed out once and wiped
 * from the buffer as they go. */
bool random_bytes(void *out, size_t n)
{
	static __thread uint8_t pool[4096];
	static __thread size_t left;
	uint8_t *o = out;
	while (n) {
		if (left == 0) {
			if (RAND_bytes(pool, sizeof(pool)) != 1)
				return false;
			left = sizeof(pool);
		}
		size_t k = n < left ? n : left;
		uint8_t *from = pool + sizeof(pool) - left;
		memcpy(o, from, k);
		OPENSSL_cleanse(from, k);
		o += k;
		n -= k;
		left -= k;
	}
	return true;
}
