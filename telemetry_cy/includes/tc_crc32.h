/* CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320): the value zlib.crc32 returns, so C and
 * the pure twins agree on the checksums and hashes the formats define (a partial's partition is
 * crc32(device NUL sensor) mod partitions, docs/scale-out.md).
 *
 * One table lookup per byte: the inputs here are key names of a few dozen bytes, where a wider
 * method buys nothing. The table is a constant, so the header has no state and no init call.
 * Usage: tc_crc32_update(0, p, n) for one buffer; feed the result back in to continue.
 */
#ifndef TC_CRC32_H
#define TC_CRC32_H

#include <stddef.h>
#include <stdint.h>

/* TC_CRC32_T(n): the table entry of byte n, spelled out by the macro rather than computed at
 * start, so there is nothing to initialize and nothing to race on. */
#define TC_CRC32_S(c) (((c) >> 1) ^ (((c) & 1u) ? 0xEDB88320u : 0u))
#define TC_CRC32_T(n) \
    TC_CRC32_S(TC_CRC32_S(TC_CRC32_S(TC_CRC32_S(TC_CRC32_S(TC_CRC32_S(TC_CRC32_S(TC_CRC32_S( \
        (uint32_t)(n)))))))))
#define TC_CRC32_R4(n) TC_CRC32_T(n), TC_CRC32_T((n) + 1), TC_CRC32_T((n) + 2), TC_CRC32_T((n) + 3)
#define TC_CRC32_R16(n) TC_CRC32_R4(n), TC_CRC32_R4((n) + 4), TC_CRC32_R4((n) + 8), \
    TC_CRC32_R4((n) + 12)
#define TC_CRC32_R64(n) TC_CRC32_R16(n), TC_CRC32_R16((n) + 16), TC_CRC32_R16((n) + 32), \
    TC_CRC32_R16((n) + 48)

static const uint32_t tc_crc32_table[256] = {
    TC_CRC32_R64(0), TC_CRC32_R64(64), TC_CRC32_R64(128), TC_CRC32_R64(192),
};

/* The CRC of the bytes fed so far (`crc`, 0 before any) followed by p[0 .. n). */
static inline uint32_t tc_crc32_update(uint32_t crc, const void *p, size_t n) {
    const uint8_t *b = (const uint8_t *)p;
    uint32_t c = ~crc;
    for (size_t i = 0; i < n; i++) c = tc_crc32_table[(c ^ b[i]) & 0xFFu] ^ (c >> 8);
    return ~c;
}

#endif /* TC_CRC32_H */
