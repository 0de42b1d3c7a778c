/*
 * blob_host.c - host harness for a generated --params blob model (tests/test_blob_codegen.py).
 * Built with gcc -fsanitize=address,undefined together with the generated model.c/model_data.c,
 * the reference kernels and the runtime's blob.c, crc32.c, bind_check.c and telemetry.c.
 *
 *   blob_host check BLOB [MISALIGN]
 *       header + data CRC (blob.c), then mcup_bind(check only) and mcup_bind(bind); prints
 *       "header=H data=D check=C bind=B bound=U". MISALIGN (0..3) places the blob that many
 *       bytes past a 4-aligned address.
 *   blob_host run BLOB|factory INPUTS N LOGITS TELEMETRY [BAD_BLOB...]
 *       prints "unbound_run=R" (mcup_run before any bind), binds the blob, tries to bind each
 *       BAD_BLOB (prints "bad=B" each: they must fail and change nothing), then runs N inputs
 *       (N * MCUP_INPUT_SIZE int8) and writes N * MCUP_OUTPUT_SIZE logits and N packed telemetry
 *       records (count = index).
 * The blob read from a file lives in a buffer of exactly its length, so ASan sees any read past it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"
#include "model.h"
#include "telemetry.h"

uint32_t mcup_ticks_now(void)
{
    return 0; /* ticks.h: no SysTick on the host */
}

static uint8_t *read_file(const char *path, uint32_t *len, uint32_t misalign)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *base = malloc((size_t)n + misalign + 1u); /* malloc is 16-aligned */
    if (base == NULL || fread(base + misalign, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    *len = (uint32_t)n;
    return base;
}

/* A blob in a buffer of exactly its length (the copy ASan guards). */
static uint8_t *exact_copy(const uint8_t *data, uint32_t len)
{
    uint8_t *copy = malloc(len > 0 ? len : 1u);
    memcpy(copy, data, len);
    return copy;
}

static int parse(const uint8_t *blob, uint32_t len, mcup_blob_header *h, int *data_ok)
{
    if (len < MCUP_BLOB_HEADER_BYTES) {
        return -1;
    }
    const int r = mcup_blob_parse_header(blob, len, h);
    *data_ok = r == 0 && h->length == len && mcup_blob_data_ok(blob, h);
    return r;
}

static int cmd_check(const char *path, uint32_t misalign)
{
    uint32_t len;
    uint8_t *raw = read_file(path, &len, misalign);
    uint8_t *blob = misalign == 0 ? exact_copy(raw, len) : raw + misalign;
    mcup_blob_header h;
    int data_ok = 0;
    const int header = parse(blob, len, &h, &data_ok);
    int check = -1, bind = -1;
    if (header == 0 && data_ok) {
        check = mcup_bind(blob, &h, 0);
        bind = mcup_bind(blob, &h, 1);
    }
    printf("header=%d data=%d check=%d bind=%d bound=%d\n", header, data_ok, check, bind, mcup_is_bound());
    if (misalign == 0) {
        free(blob);
    }
    free(raw);
    return 0;
}

static int cmd_run(int argc, char **argv)
{
    const char *blob_path = argv[2];
    const long n = strtol(argv[4], NULL, 10);
    int8_t logits[MCUP_OUTPUT_SIZE];
    int8_t input[MCUP_INPUT_SIZE];

    if (mcup_init() != 0) {
        fprintf(stderr, "mcup_init failed\n");
        return 1;
    }
    memset(input, 0, sizeof input);
    printf("unbound_run=%d bound=%d\n", mcup_run(input, logits), mcup_is_bound());

    const uint8_t *blob;
    uint32_t len;
    uint8_t *owned = NULL;
    if (strcmp(blob_path, "factory") == 0) {
        blob = mcup_param_factory_blob;
        len = MCUP_FACTORY_BLOB_BYTES;
    } else {
        uint8_t *raw = read_file(blob_path, &len, 0);
        owned = exact_copy(raw, len);
        free(raw);
        blob = owned;
    }
    mcup_blob_header h;
    int data_ok = 0;
    if (parse(blob, len, &h, &data_ok) != 0 || !data_ok || mcup_bind(blob, &h, 1) != 0) {
        fprintf(stderr, "the blob does not bind\n");
        return 1;
    }
    for (int i = 7; i < argc; i++) { /* bad blobs: each must fail and leave the bound one serving */
        uint32_t bad_len;
        uint8_t *raw = read_file(argv[i], &bad_len, 0);
        uint8_t *bad = exact_copy(raw, bad_len);
        mcup_blob_header bh;
        int bad_data = 0;
        const int r = parse(bad, bad_len, &bh, &bad_data) == 0 && bad_data ? mcup_bind(bad, &bh, 1) : -1;
        printf("bad=%d bound=%d\n", r, mcup_is_bound());
        free(bad);
        free(raw);
    }

    FILE *in = fopen(argv[3], "rb");
    FILE *out_logits = fopen(argv[5], "wb");
    FILE *out_tel = fopen(argv[6], "wb");
    if (in == NULL || out_logits == NULL || out_tel == NULL) {
        perror("run files");
        return 2;
    }
    for (long i = 0; i < n; i++) {
        if (fread(input, 1, sizeof input, in) != sizeof input) {
            fprintf(stderr, "input %ld is short\n", i);
            return 2;
        }
        if (mcup_run(input, logits) != 0) {
            fprintf(stderr, "mcup_run failed on input %ld\n", i);
            return 1;
        }
        mcup_telemetry t = {.count = (uint32_t)i};
        mcup_monitor(logits, &t);
        uint8_t record[MCUP_TELEMETRY_BYTES];
        if (mcup_telemetry_pack(&t, record) != MCUP_TELEMETRY_BYTES) {
            return 1;
        }
        fwrite(logits, 1, sizeof logits, out_logits);
        fwrite(record, 1, sizeof record, out_tel);
    }
    fclose(out_tel);
    fclose(out_logits);
    fclose(in);
    free(owned);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "check") == 0) {
        return cmd_check(argv[2], argc >= 4 ? (uint32_t)strtoul(argv[3], NULL, 10) : 0u);
    }
    if (argc >= 7 && strcmp(argv[1], "run") == 0) {
        return cmd_run(argc, argv);
    }
    fprintf(stderr, "usage: blob_host check BLOB [MISALIGN] | run BLOB|factory INPUTS N LOGITS TELEMETRY [BAD...]\n");
    return 2;
}
