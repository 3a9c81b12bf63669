/* libFuzzer: the untyped first packet (StartupMessage, SSL/GSSENC/CancelRequest). */
#include <stdint.h>
#include <string.h>

#include "pgwire/pgwire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int len = pgw_first_len(data, size);
	if (len <= 0 || (size_t)len > size)
		return 0;
	struct pgw_first f;
	if (pgw_first_parse(data, (size_t)len, &f) > 0 && f.kind == PGW_FIRST_STARTUP) {
		/* every pointer handed out must stay inside the packet */
		for (unsigned i = 0; i < f.nparams; i++) {
			volatile size_t a = strlen(f.params[i].name) + strlen(f.params[i].value);
			(void)a;
		}
		volatile size_t u = strlen(f.user) + strlen(f.database);
		(void)u;
	}
	return 0;
}
