/* libFuzzer: the streaming scanner, fed the same bytes whole and in pieces;
 * both must agree (it is the relay's only view of message boundaries). */
#include <stdint.h>
#include <stdlib.h>

#include "pgwire/pgwire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	bool frontend = data[0] & 1;
	size_t step = (data[0] >> 1) + 1;
	data++;
	size--;
	struct pgw_scanner whole, pieces;
	pgw_scanner_init(&whole, 1u << 20, frontend);
	pgw_scanner_init(&pieces, 1u << 20, frontend);
	int rw = pgw_scan(&whole, data, size);
	int rp = 0;
	for (size_t off = 0; off < size && rp == 0; off += step)
		rp = pgw_scan(&pieces, data + off, size - off < step ? size - off : step);
	if (rw != rp)
		abort();
	if (rw == 0 && (whole.messages != pieces.messages || whole.sync_points != pieces.sync_points ||
			whole.remaining != pieces.remaining || whole.txn_status != pieces.txn_status ||
			whole.last_type != pieces.last_type || whole.unsynced != pieces.unsynced))
		abort();
	return 0;
}
