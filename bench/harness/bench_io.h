/* bench_io.h - console output and exit of the benchmark harness (semihosting, startup.c). */
#ifndef BENCH_IO_H
#define BENCH_IO_H

void bench_write(const char *s);
void bench_exit(int status) __attribute__((noreturn));

#endif /* BENCH_IO_H */
