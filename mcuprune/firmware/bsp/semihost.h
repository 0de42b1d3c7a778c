/*
 * semihost.h - leave the program through Arm semihosting, so QEMU (run with
 * -semihosting-config enable=on,target=native) exits with our status code.
 * Without a debugger or QEMU attached, BKPT faults instead: only for emulation and debug.
 */
#ifndef MCUP_SEMIHOST_H
#define MCUP_SEMIHOST_H

/* Exit codes the host tools know. Others come from the EXIT message or main's return. */
#define MCUP_EXIT_OK 0
#define MCUP_EXIT_FAULT 3 /* a fault or an unexpected exception: see the UART line before it */

#include <stdint.h>

/* SYS_EXIT_EXTENDED with ADP_Stopped_ApplicationExit and `code`; never returns. */
__attribute__((noreturn)) void mcup_semihost_exit(int code);

/* Host file access (emulation only: the bulk input path of INFER_FILE, see docs/protocol.md). */
int32_t mcup_semihost_open_read(const char *path, uint32_t path_len); /* handle, or -1 */
int32_t mcup_semihost_read(int32_t handle, void *buf, uint32_t len);   /* bytes read, or -1 */
void mcup_semihost_close(int32_t handle);

#endif /* MCUP_SEMIHOST_H */
