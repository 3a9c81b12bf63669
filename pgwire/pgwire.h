/*
 * pgwire — the PostgreSQL frontend/backend protocol, without I/O.
 *
 * Everything here works on (const uint8_t *, size_t): no sockets, no libevent,
 * no allocation. Parsers validate every length read from the wire before using
 * it and answer "done", "need more bytes" or "malformed". The router, the unit
 * tests and the fuzzers link the same code.
 *
 * Limits (see frame.c): a startup-phase packet (the untyped first packet) is at
 * most PGW_STARTUP_MAX bytes, as in PostgreSQL itself; a typed message is at most
 * PGW_MESSAGE_MAX bytes, PostgreSQL's own cap for a single message (1 GB - 1).
 */
#ifndef PGWIRE_PGWIRE_H
#define PGWIRE_PGWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PGW_STARTUP_MAX 10000u
#define PGW_MESSAGE_MAX 0x3fffffffu
#define PGW_CANCEL_KEY_MAX 256u /* protocol 3.2 allows keys of up to 256 bytes */
#define PGW_HEADER_LEN 5u

#define PGW_PROTO(major, minor) (((uint32_t)(major) << 16) | (uint32_t)(minor))
#define PGW_PROTO_MAJOR(v) ((v) >> 16)
#define PGW_PROTO_MINOR(v) ((v)&0xffff)
#define PGW_CODE_CANCEL 80877102u
#define PGW_CODE_SSL 80877103u
#define PGW_CODE_GSSENC 80877104u

/* Big-endian integers as the protocol writes them. */
static inline uint32_t pgw_get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void pgw_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* Result of a parser: > 0 bytes consumed, 0 need more, < 0 malformed. */
enum pgw_result {
	PGW_NEED_MORE = 0,
	PGW_BAD_LENGTH = -1,
	PGW_BAD_VERSION = -2,
	PGW_MALFORMED = -3,
	/* first packets only: what PostgreSQL's ProcessStartupPacket tells apart */
	PGW_NO_USER = -4,         /* 28000 "no PostgreSQL user name specified" */
	PGW_BAD_REPLICATION = -5, /* 22023 invalid value for "replication" (bad_value) */
	PGW_TOO_MANY_PARAMS = -6, /* more than PGW_MAX_PARAMS (pgrouter's own limit) */
	PGW_BAD_CANCEL = -7,      /* a CancelRequest of the wrong length */
};
const char *pgw_result_name(int r);

/* ---- frame.c: 5-byte framing ----------------------------------------- */

/* Message types the router cares about, by their wire byte. */
enum pgw_msg {
	PGW_MSG_AUTH = 'R',
	PGW_MSG_BACKEND_KEY = 'K',
	PGW_MSG_PARAMETER_STATUS = 'S',
	PGW_MSG_READY = 'Z',
	PGW_MSG_ERROR = 'E',
	PGW_MSG_NOTICE = 'N',
	PGW_MSG_NEGOTIATE = 'v',
	PGW_MSG_COPY_IN = 'G',
	PGW_MSG_COPY_OUT = 'H',
	PGW_MSG_COPY_BOTH = 'W',
	PGW_MSG_COPY_DATA = 'd',
	PGW_MSG_COPY_DONE = 'c',
	PGW_MSG_TERMINATE = 'X',
	PGW_MSG_QUERY = 'Q',
};
/* Name of a message type for logs; "backend"/"frontend" matters for shared bytes. */
const char *pgw_msg_name(uint8_t type, bool from_backend);

/*
 * Decode a message header. Takes at least PGW_HEADER_LEN bytes. Returns 0 and
 * sets *type and *body_len (length without the 4 length bytes), or
 * PGW_BAD_LENGTH when the length field is below 4 or above max_len.
 */
int pgw_header(const uint8_t *p, uint32_t max_len, uint8_t *type, uint32_t *body_len);

/*
 * Streaming scanner over a message stream: fed arbitrary chunks, it follows
 * message boundaries without holding any body byte, so the relay can forward
 * every chunk as soon as it is scanned. It remembers the last message type, the
 * transaction status of the last ReadyForQuery and whether the stream sits at a
 * message boundary — enough to tell exactly when a session is between
 * transactions with nothing in flight (pgw_scan_idle on the server's stream,
 * pgw_scan_settled on the client's, and equal sync_points on both).
 */
struct pgw_scanner {
	uint32_t remaining;  /* body bytes of the current message still to pass */
	uint32_t max_len;    /* largest accepted length field */
	uint64_t messages;   /* headers seen */
	/* Requests answered by exactly one ReadyForQuery (frontend: Query, Sync,
	 * FunctionCall) or ReadyForQuery itself (backend). Equal counts on both
	 * streams mean the client has nothing in flight. */
	uint32_t sync_points;
	uint8_t hdr[PGW_HEADER_LEN];
	uint8_t hdr_have;    /* bytes of a header split across chunks */
	/* Type of the last message whose header was read. On the backend stream
	 * the asynchronous ones (NotificationResponse, NoticeResponse,
	 * ParameterStatus: sent at any time, also between transactions) are not
	 * counted, so ReadyForQuery stays the last word until a reply follows. */
	uint8_t last_type;
	uint8_t want_status; /* next body byte is ReadyForQuery's status */
	char txn_status;     /* 'I', 'T', 'E' from the last ReadyForQuery; 0 before */
	bool frontend;       /* the stream a client sends */
	/* frontend: extended-protocol messages (Parse, Bind, Execute, Describe,
	 * Close, Flush) were sent since the last Sync. The server may already run
	 * them in an implicit transaction, so this is not a boundary. */
	bool unsynced;
};
void pgw_scanner_init(struct pgw_scanner *s, uint32_t max_len, bool frontend);
/* Feed n bytes. Returns 0, or PGW_BAD_LENGTH (the stream is unusable afterwards). */
int pgw_scan(struct pgw_scanner *s, const uint8_t *p, size_t n);
/* True when no message is partly scanned. */
static inline bool pgw_scan_at_boundary(const struct pgw_scanner *s)
{
	return s->remaining == 0 && s->hdr_have == 0 && !s->want_status;
}
/* Backend stream: its last reply was ReadyForQuery 'I' (idle, outside a
 * transaction), whatever asynchronous messages came after it. */
static inline bool pgw_scan_idle(const struct pgw_scanner *s)
{
	return pgw_scan_at_boundary(s) && s->last_type == PGW_MSG_READY && s->txn_status == 'I';
}
/* Frontend stream: whole messages, none of them an extended-protocol message
 * still waiting for its Sync. */
static inline bool pgw_scan_settled(const struct pgw_scanner *s)
{
	return pgw_scan_at_boundary(s) && !s->unsynced;
}

/* ---- startup.c: the untyped first packet ----------------------------- */

enum pgw_first_kind {
	PGW_FIRST_STARTUP,
	PGW_FIRST_SSL,
	PGW_FIRST_GSSENC,
	PGW_FIRST_CANCEL,
};

struct pgw_param {
	const char *name; /* points into the packet */
	const char *value;
};

#define PGW_MAX_PARAMS 64

struct pgw_first {
	enum pgw_first_kind kind;
	uint32_t len;     /* whole packet, length field included */
	uint32_t version; /* PGW_PROTO(3, x) for a startup message */
	/* StartupMessage: pointers into the caller's packet, NUL-terminated there. */
	const char *user;
	const char *database; /* defaults to user, as PostgreSQL does */
	const char *application_name;
	bool replication;      /* "replication" true (physical) or database (logical) */
	const char *bad_value; /* PGW_BAD_REPLICATION: the value given */
	unsigned nparams;
	struct pgw_param params[PGW_MAX_PARAMS];
	/* CancelRequest */
	uint32_t cancel_pid;
	const uint8_t *cancel_key;
	uint32_t cancel_key_len;
};

/*
 * Length of the first packet from its first 4 bytes. Returns the length
 * (8..PGW_STARTUP_MAX), PGW_NEED_MORE with fewer than 4 bytes, or PGW_BAD_LENGTH.
 */
int pgw_first_len(const uint8_t *p, size_t n);

/*
 * Parse a complete first packet p[0..n) (n must be pgw_first_len()). Fills *out
 * with pointers into p, which must stay alive and unmodified while they are used.
 * Returns n, PGW_BAD_VERSION (unsupported protocol), PGW_NO_USER,
 * PGW_BAD_REPLICATION, PGW_TOO_MANY_PARAMS, PGW_BAD_CANCEL or PGW_MALFORMED
 * (the layout: no terminator as the last byte).
 */
int pgw_first_parse(const uint8_t *p, size_t n, struct pgw_first *out);

/* ---- message.c: backend messages read during startup ---------------- */

/* Authentication request code of an 'R' body; -1 if the body is too short. */
int32_t pgw_auth_code(const uint8_t *body, uint32_t len);

#define PGW_AUTH_SASL 10

/*
 * Rewrite an AuthenticationSASL message (whole: type, length, body) without
 * the mechanism `mech`, into out (capacity cap). Returns the new message's
 * length (equal to the input's when mech is not listed), or PGW_MALFORMED
 * (not an AuthenticationSASL message, a name not terminated, no terminating
 * empty name, cap too small).
 */
int pgw_sasl_drop_mechanism(const uint8_t *msg, size_t len, const char *mech, uint8_t *out,
			    size_t cap);

/* BackendKeyData body: 3.0 has a 4-byte key, 3.2 up to 256 bytes. */
int pgw_backend_key(const uint8_t *body, uint32_t len, uint32_t *pid, const uint8_t **key,
		    uint32_t *key_len);

/* ParameterStatus body: two NUL-terminated strings, pointing into body. */
int pgw_parameter_status(const uint8_t *body, uint32_t len, const char **name, const char **value);

/* DataRow body: up to max columns into vals/lens (pointing into body; length
 * -1 for NULL). Returns the row's column count (which may exceed max: the
 * rest are not filled), or PGW_MALFORMED. */
int pgw_data_row(const uint8_t *body, uint32_t len, unsigned max, const uint8_t **vals,
		 int32_t *lens);

/* ReadyForQuery body: 'I', 'T' or 'E'; -1 if malformed. */
int pgw_ready_status(const uint8_t *body, uint32_t len);

/* ErrorResponse / NoticeResponse fields we log or act on; NULL when absent. */
struct pgw_error_fields {
	const char *severity; /* 'V' (non-localized) or 'S' */
	const char *sqlstate; /* 'C' */
	const char *message;  /* 'M' */
	const char *detail;   /* 'D' */
};
int pgw_error_parse(const uint8_t *body, uint32_t len, struct pgw_error_fields *out);

/* ---- error.c: builders ----------------------------------------------- */

/*
 * Write an ErrorResponse into buf (capacity cap): severity ("FATAL", "ERROR"),
 * 5-character SQLSTATE, message and optional detail/hint (NULL to omit). Fields
 * too long for buf are cut. Returns the bytes written, or 0 if cap is too small
 * for even the header.
 */
size_t pgw_build_error(uint8_t *buf, size_t cap, const char *severity, const char *sqlstate,
		       const char *message, const char *detail, const char *hint);

/* The 5-byte header of a message of type with a body of n bytes, when the
 * whole message fits in cap: returns PGW_HEADER_LEN, else 0. */
size_t pgw_put_header(uint8_t *buf, size_t cap, uint8_t type, size_t n);

/* Terminate message ('X'): 5 bytes. */
size_t pgw_build_terminate(uint8_t *buf, size_t cap);

/*
 * Messages pgrouter sends a server on its own (resetting or preparing a
 * pooled connection). Each writes one message into buf (capacity cap) and
 * returns its length, or 0 when it does not fit.
 * - Query ('Q'): one SQL string.
 * - Parse ('P'): statement name ("" unnamed), SQL, ntypes parameter type
 *   OIDs (0: unspecified); pgw_parse_len is its length.
 * - Bind ('B'): unnamed portal and statement, n text parameters, text results.
 * - Execute ('E'): unnamed portal, no row limit. Sync ('S').
 * - StartupMessage: version and n name/value pairs (names[i], values[i]).
 */
size_t pgw_build_query(uint8_t *buf, size_t cap, const char *sql);
size_t pgw_build_parse(uint8_t *buf, size_t cap, const char *name, const char *sql,
		       unsigned ntypes, const uint32_t *types);
size_t pgw_parse_len(const char *name, const char *sql, unsigned ntypes);
size_t pgw_build_bind(uint8_t *buf, size_t cap, unsigned n, const char *const *values);
size_t pgw_build_execute(uint8_t *buf, size_t cap);
size_t pgw_build_sync(uint8_t *buf, size_t cap);
size_t pgw_build_startup(uint8_t *buf, size_t cap, uint32_t version, unsigned n,
			 const char *const *names, const char *const *values);

/* ---- auth.c: authentication messages, both directions ---------------- */

#define PGW_AUTH_OK 0
#define PGW_AUTH_CLEARTEXT 3
#define PGW_AUTH_MD5 5
#define PGW_AUTH_SASL_CONTINUE 11
#define PGW_AUTH_SASL_FINAL 12
#define PGW_MSG_PASSWORD 'p' /* PasswordMessage, SASLInitialResponse, SASLResponse */

/*
 * Builders; each writes one whole message into buf (capacity cap) and returns
 * its length, or 0 when cap is too small.
 * - Authentication ('R'): code and its data (MD5 salt, SASL mechanism list as
 *   NUL-terminated names plus a final NUL, SASL data).
 * - PasswordMessage/SASLResponse ('p'): data as given (a password message's
 *   data includes its NUL).
 * - SASLInitialResponse ('p'): mechanism name, data length, data.
 * - BackendKeyData ('K'), ParameterStatus ('S'), ReadyForQuery ('Z').
 */
size_t pgw_build_auth(uint8_t *buf, size_t cap, uint32_t code, const void *data, size_t len);
size_t pgw_build_password(uint8_t *buf, size_t cap, const void *data, size_t len);
size_t pgw_build_sasl_initial(uint8_t *buf, size_t cap, const char *mech, const void *data,
			      size_t len);
size_t pgw_build_backend_key(uint8_t *buf, size_t cap, uint32_t pid, const uint8_t *key,
			     size_t key_len);
size_t pgw_build_parameter_status(uint8_t *buf, size_t cap, const char *name, const char *value);

/* SASLInitialResponse body: mechanism (into body), data (NULL, 0 when the
 * client sent length -1). 0 or PGW_MALFORMED. */
int pgw_sasl_initial_parse(const uint8_t *body, uint32_t len, const char **mech,
			   const uint8_t **data, uint32_t *data_len);
/* AuthenticationSASL body (after the code): does it list mech? */
bool pgw_sasl_offers(const uint8_t *body, uint32_t len, const char *mech);

/* ---- scram.c: SCRAM-SHA-256 and md5 arithmetic ------------------------- */

#define PGW_SCRAM_KEY_LEN 32
#define PGW_SCRAM_MSG_MAX 512 /* longest SCRAM message accepted from a peer */
#define PGW_SCRAM_CBIND_TYPE "tls-server-end-point"
#define PGW_MD5_LEN 35 /* "md5" + 32 hex digits */
enum {
	PGW_SCRAM_BAD_PROOF = -4, /* wrong password (or server signature) */
	PGW_SCRAM_CBIND = -5,     /* channel binding missing, unsupported or wrong */
	PGW_SCRAM_MISMATCH = -6,  /* server's salt/iterations are not the verifier's */
};

/* pg_authid.rolpassword of a SCRAM user. */
struct pgw_scram_verifier {
	int iterations;
	size_t salt_len;
	uint8_t salt[64];
	uint8_t stored_key[PGW_SCRAM_KEY_LEN];
	uint8_t server_key[PGW_SCRAM_KEY_LEN];
};
int pgw_scram_parse_verifier(const char *s, struct pgw_scram_verifier *v);
/* The verifier PostgreSQL would store for password (tests, tools). Returns its
 * length or PGW_MALFORMED. */
int pgw_scram_build_verifier(const char *password, const uint8_t *salt, size_t salt_len,
			     int iterations, char *out, size_t cap);

/* One exchange, either end: the parts of the AuthMessage. */
struct pgw_scram {
	char client_first_bare[PGW_SCRAM_MSG_MAX];
	char server_first[PGW_SCRAM_MSG_MAX];
	char client_final[PGW_SCRAM_MSG_MAX]; /* without proof (client side) */
	char nonce[PGW_SCRAM_MSG_MAX / 2];
	char gs2_header[64];
	size_t cfb_len, sf_len, cf_len, nonce_len, gs2_len;
	char cbind_flag; /* 'n', 'y' or 'p' */
};

/*
 * Server side (pgrouter checks a client against verifier v).
 * server_first: parse the client-first message (SASLInitialResponse data),
 *   append server_nonce (printable, no ','), write the server-first message
 *   into out. Returns its length, PGW_MALFORMED or PGW_SCRAM_CBIND (a binding
 *   type other than tls-server-end-point). st->cbind_flag tells what the client
 *   asked for; the caller checks it against the mechanism it chose.
 * server_final: check the client-final message (binding data: the hash of the
 *   certificate pgrouter presented, for 'p'); on success write the
 *   server-final message ("v=...") and the client's ClientKey. Returns the
 *   message length, PGW_SCRAM_BAD_PROOF, PGW_SCRAM_CBIND or PGW_MALFORMED.
 */
int pgw_scram_server_first(struct pgw_scram *st, const struct pgw_scram_verifier *v,
			   const uint8_t *msg, size_t len, const char *server_nonce, char *out,
			   size_t cap);
int pgw_scram_server_final(struct pgw_scram *st, const struct pgw_scram_verifier *v,
			   const uint8_t *msg, size_t len, const uint8_t *cbind_data,
			   size_t cbind_len, uint8_t client_key[PGW_SCRAM_KEY_LEN], char *out,
			   size_t cap);
/*
 * Client side (pgrouter logs in to a server as the user whose ClientKey it
 * holds; no channel binding toward servers).
 * client_first: "n,,n=,r=<client_nonce>" into out.
 * client_final: from the server-first message, the client-final message with
 *   its proof; PGW_SCRAM_MISMATCH when the server's salt or iterations differ
 *   from v's (the key does not fit that server: a password changed).
 * client_verify: the server-final message carries ServerSignature; 0 if right.
 */
int pgw_scram_client_first(struct pgw_scram *st, const char *client_nonce, char *out, size_t cap);
int pgw_scram_client_final(struct pgw_scram *st, const struct pgw_scram_verifier *v,
			   const uint8_t client_key[PGW_SCRAM_KEY_LEN], const uint8_t *msg,
			   size_t len, char *out, size_t cap);
int pgw_scram_client_verify(const struct pgw_scram *st, const struct pgw_scram_verifier *v,
			    const uint8_t *msg, size_t len);
/* Overwrite secrets (not optimised away). */
void pgw_scram_wipe(void *p, size_t n);

/* md5: the stored form is "md5" + md5(password + user); on the wire the
 * answer to salt is "md5" + md5(hex of the stored hash + salt). */
bool pgw_md5_verifier_ok(const char *s);
void pgw_md5_password(const char *password, const char *user, char out[PGW_MD5_LEN + 1]);
void pgw_md5_answer(const char *verifier, const uint8_t salt[4], char out[PGW_MD5_LEN + 1]);
/* Constant time; answer: the client's PasswordMessage text (without NUL). */
bool pgw_md5_check(const char *verifier, const uint8_t salt[4], const char *answer, size_t len);

/* Base64 with padding. encode: returns the length written (NUL added) or 0 if
 * cap is short; decode: bytes written or -1 (bad input, cap short). */
size_t pgw_b64_encode(const uint8_t *in, size_t n, char *out, size_t cap);
int pgw_b64_decode(const char *in, size_t n, uint8_t *out, size_t cap);

#endif
