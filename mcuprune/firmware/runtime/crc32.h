/*
 * crc32.h - CRC-32/IEEE (zlib, Ethernet): reflected polynomial 0xEDB88320, init and final xor
 * 0xFFFFFFFF. Check value: mcup_crc32(0, "123456789", 9) == 0xCBF43926.
 * Same calling convention as zlib's crc32(): start with 0, feed the previous result to continue.
 */
#ifndef MCUP_CRC32_H
#define MCUP_CRC32_H

#include <stdint.h>

uint32_t mcup_crc32(uint32_t crc, const void *data, uint32_t len);

#endif /* MCUP_CRC32_H */
