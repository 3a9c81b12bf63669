/* libFuzzer: backend message decoders and the ErrorResponse builder round trip. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgwire/pgwire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 4096)
		return 0;
	uint32_t len = (uint32_t)size, pid, klen;
	const uint8_t *key;
	const char *n, *v;
	struct pgw_error_fields ef;
	(void)pgw_auth_code(data, len);
	(void)pgw_backend_key(data, len, &pid, &key, &klen);
	if (pgw_parameter_status(data, len, &n, &v) == 0 && strlen(n) + strlen(v) + 2 != len)
		abort();
	(void)pgw_ready_status(data, len);
	/* a DataRow's columns stay inside its body */
	const uint8_t *vals[4];
	int32_t lens[4];
	int ncols = pgw_data_row(data, len, 4, vals, lens);
	for (int i = 0; i < ncols && i < 4; i++)
		if (lens[i] > 0 && (vals[i] < data || vals[i] + lens[i] > data + len))
			abort();
	if (pgw_error_parse(data, len, &ef) == 0 && ef.message)
		(void)strlen(ef.message);
	/* whatever text we are given, what we build must parse back */
	char text[256];
	size_t t = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
	memcpy(text, data, t);
	text[t] = 0;
	uint8_t buf[512], type;
	uint32_t body;
	size_t m = pgw_build_error(buf, sizeof(buf), "FATAL", "08P01", text, text, NULL);
	if (m == 0 || pgw_header(buf, PGW_MESSAGE_MAX, &type, &body) != 0 || body + 5 != m ||
	    pgw_error_parse(buf + 5, body, &ef) != 0 || strcmp(ef.sqlstate, "08P01") != 0)
		abort();
	return 0;
}
