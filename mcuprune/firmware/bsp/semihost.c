#include "semihost.h"

#include <stdint.h>

#define SYS_OPEN 0x01u
#define SYS_CLOSE 0x02u
#define SYS_READ 0x06u
#define SYS_EXIT_EXTENDED 0x20u
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u
#define OPEN_MODE_RB 1u /* fopen() mode index: 0 "r", 1 "rb" */

/* One semihosting call: operation in r0, pointer to its argument block in r1, result in r0. */
static uint32_t semihost_call(uint32_t op, volatile uint32_t *args)
{
    register uint32_t r0 __asm__("r0") = op;
    register volatile uint32_t *r1 __asm__("r1") = args;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

int32_t mcup_semihost_open_read(const char *path, uint32_t path_len)
{
    volatile uint32_t args[3] = {(uint32_t)(uintptr_t)path, OPEN_MODE_RB, path_len};
    return (int32_t)semihost_call(SYS_OPEN, args);
}

int32_t mcup_semihost_read(int32_t handle, void *buf, uint32_t len)
{
    volatile uint32_t args[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buf, len};
    uint32_t not_read = semihost_call(SYS_READ, args); /* the ABI returns the bytes NOT read */
    return not_read > len ? -1 : (int32_t)(len - not_read);
}

void mcup_semihost_close(int32_t handle)
{
    volatile uint32_t args[1] = {(uint32_t)handle};
    (void)semihost_call(SYS_CLOSE, args);
}

void mcup_semihost_exit(int code)
{
    /* SYS_EXIT_EXTENDED takes a two-word block {reason, subcode}; plain SYS_EXIT on 32-bit Arm
     * can only say "success" or "failure", not a code. */
    volatile uint32_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)code};
    (void)semihost_call(SYS_EXIT_EXTENDED, block);
    for (;;) {
    }
}
