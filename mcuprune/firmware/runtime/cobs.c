#include "cobs.h"

static void writer_emit(mcup_cobs_writer *w)
{
    uint8_t code = (uint8_t)(w->n + 1u);
    w->put(&code, 1u);
    if (w->n > 0u) {
        w->put(w->block, w->n);
    }
    w->n = 0u;
}

void mcup_cobs_writer_begin(mcup_cobs_writer *w, mcup_cobs_put_fn put)
{
    w->put = put;
    w->n = 0u;
}

void mcup_cobs_writer_push(mcup_cobs_writer *w, const void *data, uint32_t len)
{
    const uint8_t *p = data;
    for (uint32_t i = 0; i < len; i++) {
        /* A full block is only closed once more data follows: that keeps the encoding canonical. */
        if (w->n == 254u) {
            writer_emit(w);
        }
        if (p[i] == 0u) {
            writer_emit(w);
        } else {
            w->block[w->n++] = p[i];
        }
    }
}

void mcup_cobs_writer_end(mcup_cobs_writer *w)
{
    static const uint8_t delimiter = 0u;
    writer_emit(w);
    w->put(&delimiter, 1u);
}

void mcup_cobs_decoder_init(mcup_cobs_decoder *d, uint8_t *buf, uint32_t cap)
{
    d->buf = buf;
    d->cap = cap;
    mcup_cobs_decoder_reset(d);
}

void mcup_cobs_decoder_reset(mcup_cobs_decoder *d)
{
    d->len = 0u;
    d->total = 0u;
    d->remaining = 0u;
    d->zero_pending = 0u;
    d->started = 0u;
}

static void decoder_store(mcup_cobs_decoder *d, uint8_t byte)
{
    if (d->len < d->cap) {
        d->buf[d->len++] = byte;
    }
    if (d->total != UINT32_MAX) {
        d->total++;
    }
}

int mcup_cobs_decoder_push(mcup_cobs_decoder *d, uint8_t byte)
{
    if (byte == 0u) {
        if (!d->started) {
            return MCUP_COBS_EMPTY;
        }
        return d->remaining == 0u ? MCUP_COBS_FRAME : MCUP_COBS_BAD;
    }
    d->started = 1u;
    if (d->remaining == 0u) { /* a code byte opens the next block */
        if (d->zero_pending) {
            decoder_store(d, 0u);
        }
        d->remaining = (uint8_t)(byte - 1u);
        d->zero_pending = byte != 0xFFu;
    } else {
        decoder_store(d, byte);
        d->remaining--;
    }
    return MCUP_COBS_MORE;
}
