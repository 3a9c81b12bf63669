/* frame.c — 5-byte message framing and the streaming scanner the relay runs on. */
#include "pgwire/pgwire.h"

const char *pgw_result_name(int r)
{
	switch (r) {
	case PGW_NEED_MORE: return "need more";
	case PGW_BAD_LENGTH: return "invalid length";
	case PGW_BAD_VERSION: return "unsupported protocol version";
	case PGW_MALFORMED: return "malformed packet";
	case PGW_NO_USER: return "no user name";
	case PGW_BAD_REPLICATION: return "invalid replication value";
	case PGW_TOO_MANY_PARAMS: return "too many parameters";
	case PGW_BAD_CANCEL: return "invalid cancel request length";
	default: return r > 0 ? "ok" : "unknown";
	}
}

const char *pgw_msg_name(uint8_t type, bool from_backend)
{
	if (from_backend) {
		switch (type) {
		case 'R': return "Authentication";
		case 'K': return "BackendKeyData";
		case 'S': return "ParameterStatus";
		case 'Z': return "ReadyForQuery";
		case 'E': return "ErrorResponse";
		case 'N': return "NoticeResponse";
		case 'v': return "NegotiateProtocolVersion";
		case 'T': return "RowDescription";
		case 'D': return "DataRow";
		case 'C': return "CommandComplete";
		case 'G': return "CopyInResponse";
		case 'H': return "CopyOutResponse";
		case 'W': return "CopyBothResponse";
		case 'd': return "CopyData";
		case 'c': return "CopyDone";
		case 'A': return "NotificationResponse";
		case '1': return "ParseComplete";
		case '2': return "BindComplete";
		case '3': return "CloseComplete";
		case 'I': return "EmptyQueryResponse";
		case 'n': return "NoData";
		case 's': return "PortalSuspended";
		case 't': return "ParameterDescription";
		default: return "unknown";
		}
	}
	switch (type) {
	case 'Q': return "Query";
	case 'P': return "Parse";
	case 'B': return "Bind";
	case 'E': return "Execute";
	case 'D': return "Describe";
	case 'C': return "Close";
	case 'S': return "Sync";
	case 'H': return "Flush";
	case 'F': return "FunctionCall";
	case 'X': return "Terminate";
	case 'd': return "CopyData";
	case 'c': return "CopyDone";
	case 'f': return "CopyFail";
	case 'p': return "PasswordMessage";
	default: return "unknown";
	}
}

int pgw_header(const uint8_t *p, uint32_t max_len, uint8_t *type, uint32_t *body_len)
{
	uint32_t len = pgw_get32(p + 1);
	if (len < 4 || len > max_len)
		return PGW_BAD_LENGTH;
	*type = p[0];
	*body_len = len - 4;
	return 0;
}

void pgw_scanner_init(struct pgw_scanner *s, uint32_t max_len, bool frontend)
{
	*s = (struct pgw_scanner){ .max_len = max_len ? max_len : PGW_MESSAGE_MAX,
				   .frontend = frontend };
}

int pgw_scan(struct pgw_scanner *s, const uint8_t *p, size_t n)
{
	const uint8_t *end = p + n;

	while (p < end) {
		if (s->want_status) {
			/* first body byte of ReadyForQuery */
			s->txn_status = (char)*p++;
			s->want_status = 0;
			s->remaining--;
			continue;
		}
		if (s->remaining) {
			size_t take = (size_t)(end - p);
			if (take > s->remaining)
				take = s->remaining;
			p += take;
			s->remaining -= (uint32_t)take;
			continue;
		}
		/* header: fast path when all 5 bytes are in this chunk */
		const uint8_t *h;
		if (s->hdr_have == 0 && end - p >= (ptrdiff_t)PGW_HEADER_LEN) {
			h = p;
			p += PGW_HEADER_LEN;
		} else {
			while (s->hdr_have < PGW_HEADER_LEN && p < end)
				s->hdr[s->hdr_have++] = *p++;
			if (s->hdr_have < PGW_HEADER_LEN)
				break;
			h = s->hdr;
			s->hdr_have = 0;
		}
		uint8_t type;
		uint32_t body;
		if (pgw_header(h, s->max_len, &type, &body) != 0)
			return PGW_BAD_LENGTH;
		s->messages++;
		s->remaining = body;
		if (s->frontend) {
			s->last_type = type;
			switch (type) {
			case 'Q': case 'F':
				s->sync_points++;
				break;
			case 'S':
				s->sync_points++;
				s->unsynced = false;
				break;
			case 'P': case 'B': case 'E': case 'D': case 'C': case 'H':
				s->unsynced = true;
				break;
			}
		} else if (type == PGW_MSG_READY) {
			s->last_type = type;
			s->sync_points++;
			if (body >= 1)
				s->want_status = 1;
		} else if (type != 'A' && type != 'N' && type != 'S') {
			s->last_type = type; /* a reply, not an asynchronous message */
		}
	}
	return 0;
}
