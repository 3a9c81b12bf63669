/* log.c — one line per event, written with one write(2) so threads never interleave. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "router/router.h"

atomic_int log_level = LOG_INFO;
static atomic_bool log_json;
static int log_fd = STDERR_FILENO; /* a log_file keeps its descriptor number across reopens */

void log_set_json(bool json)
{
	log_json = json;
}

int log_open(const char *path, char *err, size_t errlen)
{
	if (!path || !*path)
		return 0;
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0) {
		snprintf(err, errlen, "log_file %s: %s", path, strerror(errno));
		return -1;
	}
	if (log_fd == STDERR_FILENO) {
		log_fd = fd;
		return 0;
	}
	/* reopen (logrotate moved the file): the number stays, threads writing
	 * meanwhile go to the old file or the new one, never to a closed fd */
	int r = dup2(fd, log_fd);
	close(fd);
	if (r < 0) {
		snprintf(err, errlen, "log_file %s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* JSON string body of s into out (cap bytes); returns the length written. */
static size_t json_escape(char *out, size_t cap, const char *s)
{
	size_t n = 0;
	for (; *s && n + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			out[n++] = '\\';
			out[n++] = (char)c;
		} else if (c < 0x20) {
			n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
		} else {
			out[n++] = (char)c;
		}
	}
	return n;
}

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

static const char *const json_levels[] = { "error", "warning", "info", "debug" };

void log_msg(int level, const char *fmt, ...)
{
	if (!log_enabled(level))
		return;
	char line[2048];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	if (log_json) {
		char msg[1536];
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(msg, sizeof(msg), fmt, ap);
		va_end(ap);
		size_t n = strftime(line, sizeof(line), "{\"ts\":\"%Y-%m-%dT%H:%M:%S", &tm);
		n += (size_t)snprintf(line + n, sizeof(line) - n,
				      ".%03ldZ\",\"pid\":%d,\"level\":\"%s\",\"msg\":\"",
				      ts.tv_nsec / 1000000, (int)getpid(), json_levels[level]);
		n += json_escape(line + n, sizeof(line) - n - 4, msg);
		memcpy(line + n, "\"}\n", 3);
		n += 3;
		ssize_t w = write(log_fd, line, n);
		(void)w;
		return;
	}
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
	ssize_t w = write(log_fd, line, n);
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

bool log_limit_pass(struct log_limit *ll, unsigned interval_ms, unsigned *held)
{
	uint64_t now = now_ms();
	uint64_t next = atomic_load_explicit(&ll->next_ms, memory_order_relaxed);
	if (now < next || !atomic_compare_exchange_strong(&ll->next_ms, &next, now + interval_ms)) {
		atomic_fetch_add_explicit(&ll->held, 1, memory_order_relaxed);
		return false;
	}
	*held = atomic_exchange_explicit(&ll->held, 0, memory_order_relaxed);
	return true;
}
