/*
 * move.c — what a session carries from one server to another.
 *
 *   old server, session idle             new server, logged in as the client
 *   ─────────────────────────            ────────────────────────────────────
 *   INSPECT: one Query asks the          RESTORE: the plan — set_config() of
 *   server what state the session        each setting, Parse of each prepared
 *   holds; the answer, never shown       statement, then Sync — is sent; its
 *   to the client, becomes a plan        answers are swallowed; an error
 *   of messages (or a reason the         means the state did not move
 *   session cannot move)
 *
 * The server is the only exact witness of a session's state: settings changed
 * by SET, RESET, set_config() or a function are in pg_settings with source
 * 'session'; protocol-level prepared statements are in pg_prepared_statements
 * (text and parameter types, as the client's Parse left them, including the
 * effect of any DEALLOCATE). State that cannot be re-created — temporary
 * objects, advisory locks, LISTEN, WITH HOLD cursors, SQL PREPARE, a changed
 * session authorization — is named, and the session is not moved.
 *
 * Not visible to any SQL, so not carried: custom placeholder variables
 * ("app.x") unless listed in move_custom_settings or given a default with
 * ALTER ROLE / ALTER DATABASE ... SET, LOADed libraries, sequence
 * currval/lastval, the unnamed prepared statement. The last two give the
 * client an error on use, never a silent difference.
 */
#include <event2/buffer.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router/router.h"

struct move {
	struct evbuffer *plan; /* messages for the new server, without the final Sync */
	char reason[200];      /* why the session cannot move; "" when it can */
	bool got_row;          /* the inspection's first row arrived */
	unsigned stmts;        /* prepared statements in the plan */
	/* the move under way */
	char from[128];        /* the old server's name, for the log */
	const struct disc_server *from_srv;
	uint64_t start_ms;
	char lost[200];        /* what the old server said as it closed the session */
};

/* One row 'r' (why not, the settings as one SELECT of set_config() calls, the
 * session user), then one row 'p' per protocol-level prepared statement. */
static const char inspect_head[] =
	"SELECT 'r', CASE"
	/* no temporary schema yet: nothing to scan for (the usual case; pg_proc
	 * and pg_type have no index on the namespace alone) */
	" WHEN pg_catalog.pg_my_temp_schema() <> 0 AND EXISTS (SELECT FROM pg_catalog.pg_class"
	"  WHERE relnamespace = pg_catalog.pg_my_temp_schema())"
	"  THEN 'holds temporary tables'"
	" WHEN pg_catalog.pg_my_temp_schema() <> 0 AND (EXISTS (SELECT FROM pg_catalog.pg_proc"
	"  WHERE pronamespace = pg_catalog.pg_my_temp_schema())"
	"  OR EXISTS (SELECT FROM pg_catalog.pg_type"
	"  WHERE typnamespace = pg_catalog.pg_my_temp_schema()))"
	"  THEN 'holds temporary objects'"
	" WHEN EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = 'advisory'"
	"  AND pid = pg_catalog.pg_backend_pid())"
	"  THEN 'holds session-level advisory locks'"
	" WHEN EXISTS (SELECT FROM pg_catalog.pg_listening_channels())"
	"  THEN 'listens for notifications (LISTEN)'"
	" WHEN EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable)"
	"  THEN 'holds WITH HOLD cursors'"
	" WHEN EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql)"
	"  THEN 'holds SQL-level prepared statements (PREPARE)'"
	" END,"
	" (SELECT 'SELECT ' || pg_catalog.string_agg(pg_catalog.format("
	"   'pg_catalog.set_config(%L, %L, false)', n, v), ', ' ORDER BY o)"
	"  FROM (SELECT 1, name, setting FROM pg_catalog.pg_settings WHERE source = 'session'"
	"   UNION ALL SELECT 2, 'role', pg_catalog.current_setting('role')"
	"   WHERE pg_catalog.current_setting('role') <> 'none'"
	/* custom settings with a default for this role or database (ALTER ROLE /
	 * DATABASE ... SET app.x): their names are known, so is their value */
	"   UNION ALL SELECT 3, n, pg_catalog.current_setting(n, true)"
	"   FROM (SELECT DISTINCT pg_catalog.split_part(c, '=', 1)"
	"    FROM pg_catalog.pg_db_role_setting, pg_catalog.unnest(setconfig) AS c"
	"    WHERE setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database"
	"     WHERE datname = pg_catalog.current_database()))"
	"    AND setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles"
	"     WHERE rolname = session_user))) AS d(n)"
	"   WHERE pg_catalog.strpos(n, '.') > 0"
	"   AND pg_catalog.current_setting(n, true) IS NOT NULL";
/* (move_custom_settings in between) */
static const char inspect_tail[] =
	"  ) AS s(o, n, v)),"
	" session_user::pg_catalog.text"
	" UNION ALL SELECT 'p', name, statement,"
	" pg_catalog.array_to_string(parameter_types::pg_catalog.oid[], ',')"
	" FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql";

/* The custom settings part: one UNION ALL per configured name (validated by
 * config.c: letters, digits, '_' and '.', so they need no quoting). */
static int custom_settings_sql(char *out, size_t cap)
{
	const char *list = cur_cfg->move_custom_settings;
	size_t n = 0;
	out[0] = 0;
	while (*list) {
		size_t len = strcspn(list, ", ");
		if (len) {
			int k = snprintf(out + n, cap - n,
					 "   UNION ALL SELECT 3, '%.*s', pg_catalog.current_setting('%.*s', true)"
					 " WHERE pg_catalog.current_setting('%.*s', true) IS NOT NULL",
					 (int)len, list, (int)len, list, (int)len, list);
			if (k < 0 || (size_t)k >= cap - n)
				return -1;
			n += (size_t)k;
		}
		list += len;
		list += strspn(list, ", ");
	}
	return 0;
}

void move_free(struct session *s)
{
	if (s->mv) {
		if (s->mv->plan)
			evbuffer_free(s->mv->plan);
		free(s->mv);
		s->mv = NULL;
	}
}

const char *move_from(const struct session *s)
{
	return s->mv ? s->mv->from : "?";
}

uint64_t move_started_ms(const struct session *s)
{
	return s->mv ? s->mv->start_ms : 0;
}

static bool ensure_move(struct session *s)
{
	if (!s->mv && !(s->mv = calloc(1, sizeof(*s->mv))))
		return false;
	if (!s->mv->plan && !(s->mv->plan = evbuffer_new()))
		return false;
	return true;
}

bool move_leaving(struct session *s, const char *lost)
{
	if (!ensure_move(s))
		return false;
	snprintf(s->mv->from, sizeof(s->mv->from), "%s", s->srv->name);
	s->mv->from_srv = s->srv;
	s->mv->start_ms = now_ms();
	snprintf(s->mv->lost, sizeof(s->mv->lost), "%s", lost ? lost : "");
	return true;
}

const struct disc_server *move_from_server(const struct session *s)
{
	return s->mv ? s->mv->from_srv : NULL;
}

const char *move_lost(const struct session *s)
{
	return s->mv && s->mv->lost[0] ? s->mv->lost : "the connection was closed";
}

bool move_inspect_send(struct session *s)
{
	move_free(s);
	if (!ensure_move(s))
		return false;
	char custom[4096], sql[sizeof(inspect_head) + sizeof(custom) + sizeof(inspect_tail)];
	if (custom_settings_sql(custom, sizeof(custom)) != 0)
		return false;
	snprintf(sql, sizeof(sql), "%s%s%s", inspect_head, custom, inspect_tail);
	uint8_t m[sizeof(sql) + PGW_HEADER_LEN + 1];
	size_t n = pgw_build_query(m, sizeof(m), sql);
	return n && end_queue(&s->s, m, n);
}

/* A text column as a C string (malloc'd); NULL for SQL NULL or no memory. */
static char *column(const uint8_t *v, int32_t len)
{
	if (len < 0)
		return NULL;
	char *p = malloc((size_t)len + 1);
	if (p) {
		memcpy(p, v, (size_t)len);
		p[len] = 0;
	}
	return p;
}

static void cannot(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cannot(struct session *s, const char *fmt, ...)
{
	if (s->mv->reason[0])
		return; /* the first reason found is the one told */
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->mv->reason, sizeof(s->mv->reason), fmt, ap);
	va_end(ap);
}

/* Parse of a prepared statement the session holds: name, text, parameter
 * types as "23,25". */
static void plan_statement(struct session *s, const char *name, const char *sql,
			   const char *types)
{
	uint32_t oids[256];
	unsigned n = 0;
	for (const char *p = types; *p;) {
		char *end;
		unsigned long v = strtoul(p, &end, 10);
		if (end == p || n == 256 || v > UINT32_MAX) {
			cannot(s, "holds prepared statement \"%s\" with parameters pgrouter cannot "
				  "re-create",
			       name);
			return;
		}
		oids[n++] = (uint32_t)v;
		p = *end == ',' ? end + 1 : end;
	}
	size_t len = pgw_parse_len(name, sql, n);
	uint8_t *m = malloc(len);
	if (!m || pgw_build_parse(m, len, name, sql, n, oids) != len ||
	    evbuffer_add(s->mv->plan, m, len) != 0)
		cannot(s, "%s", "ran out of memory while planning its move");
	free(m);
	s->mv->stmts++;
}

/* The settings: one statement, run through the extended protocol so that it
 * shares the plan's single Sync. */
static void plan_settings(struct session *s, const char *sql)
{
	size_t len = pgw_parse_len("", sql, 0);
	uint8_t *m = malloc(len + 64);
	size_t n = m ? pgw_build_parse(m, len, "", sql, 0, NULL) : 0;
	if (n) {
		n += pgw_build_bind(m + n, 64, 0, NULL);
		n += pgw_build_execute(m + n, 64 - (n - len));
	}
	if (!n || evbuffer_prepend(s->mv->plan, m, n) != 0)
		cannot(s, "%s", "ran out of memory while planning its move");
	free(m);
}

static void inspect_row(struct session *s, const uint8_t *body, uint32_t len)
{
	const uint8_t *v[4];
	int32_t l[4];
	if (pgw_data_row(body, len, 4, v, l) != 4 || l[0] != 1) {
		cannot(s, "%s", "gave an answer pgrouter cannot read about its state");
		return;
	}
	char *a = column(v[1], l[1]), *b = column(v[2], l[2]), *c = column(v[3], l[3]);
	if (v[0][0] == 'r' && !s->mv->got_row) {
		s->mv->got_row = true;
		if (a)
			cannot(s, "%s", a);
		else if (!c || strcmp(c, s->user) != 0)
			cannot(s, "%s", "changed its session authorization");
		else if (b)
			plan_settings(s, b);
	} else if (v[0][0] == 'p' && s->mv->got_row && a && b && c) {
		plan_statement(s, a, b, c);
	} else {
		cannot(s, "%s", "gave an answer pgrouter cannot read about its state");
	}
	free(a);
	free(b);
	free(c);
}

int move_inspect_message(struct session *s, uint8_t type, const uint8_t *body, uint32_t len)
{
	switch (type) {
	case 'T': case 'C':
		return LOGIN_SWALLOW;
	case 'D':
		inspect_row(s, body, len);
		return LOGIN_SWALLOW;
	case PGW_MSG_ERROR: {
		struct pgw_error_fields ef;
		if (pgw_error_parse(body, len, &ef) != 0)
			memset(&ef, 0, sizeof(ef));
		cannot(s, "could not be inspected (%s)", ef.message ? ef.message : "error");
		return LOGIN_SWALLOW;
	}
	case PGW_MSG_READY:
		if (!s->mv->got_row)
			cannot(s, "%s", "could not be inspected (no answer)");
		return LOGIN_SWALLOW;
	case PGW_MSG_NOTICE: case PGW_MSG_PARAMETER_STATUS: case 'A':
		return LOGIN_PASS_ON; /* asynchronous: the client's, as if relayed */
	default:
		cannot(s, "%s", "could not be inspected (unexpected message)");
		return LOGIN_SWALLOW;
	}
}

const char *move_reason(const struct session *s)
{
	return s->mv && s->mv->reason[0] ? s->mv->reason : NULL;
}

bool move_plan_empty(const struct session *s)
{
	return !s->mv || evbuffer_get_length(s->mv->plan) == 0;
}

unsigned move_plan_statements(const struct session *s)
{
	return s->mv ? s->mv->stmts : 0;
}

bool move_restore_send(struct session *s)
{
	uint8_t sync[8];
	size_t n = pgw_build_sync(sync, sizeof(sync));
	size_t len = evbuffer_get_length(s->mv->plan);
	s->mv->reason[0] = 0;
	return end_queue(&s->s, evbuffer_pullup(s->mv->plan, -1), len) &&
	       end_queue(&s->s, sync, n);
}

int move_restore_message(struct session *s, uint8_t type, const uint8_t *body, uint32_t len)
{
	switch (type) {
	case '1': case '2': case 'C': case 'D': case 'n': case 'T': case 'I':
	case PGW_MSG_NOTICE:
		return LOGIN_SWALLOW;
	case PGW_MSG_PARAMETER_STATUS:
		/* a reported setting re-created (application_name, ...): the login
		 * told the client the startup value, this puts it right again */
		if (s->sc)
			pool_note(s, type, body, len);
		return LOGIN_PASS_ON;
	case PGW_MSG_ERROR: {
		struct pgw_error_fields ef;
		if (pgw_error_parse(body, len, &ef) != 0)
			memset(&ef, 0, sizeof(ef));
		cannot(s, "could not be re-created on the new server (%s)",
		       ef.message ? ef.message : "error");
		return LOGIN_SWALLOW;
	}
	case PGW_MSG_READY:
		return LOGIN_SWALLOW;
	default:
		cannot(s, "%s", "could not be re-created on the new server (unexpected message)");
		return LOGIN_SWALLOW;
	}
}
