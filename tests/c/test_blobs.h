/*
 * test_blobs.h - model blobs for the fake architecture (fake_model/model.h), packed by
 * mcuprune.codegen.blob.pack_blob and written out as C by tests/test_slots_c.py (test_blobs.c).
 */
#ifndef TEST_BLOBS_H
#define TEST_BLOBS_H

#include <stdint.h>

typedef struct {
    const uint8_t *data; /* 4-aligned */
    uint32_t len;
} test_blob;

extern const test_blob blob_factory;    /* what mcup_param_factory_blob holds (unless broken) */
extern const test_blob blob_new;        /* an update */
extern const test_blob blob_third;      /* another update */
extern const test_blob blob_other_arch; /* well formed, architecture hash of another firmware */
extern const test_blob blob_bad_bind;   /* CRCs fine, array content the fake mcup_bind refuses */
extern const test_blob blob_fits;       /* exactly TEST_CAPACITY bytes */
extern const test_blob blob_too_big;    /* TEST_CAPACITY + 4 bytes */

#endif /* TEST_BLOBS_H */
