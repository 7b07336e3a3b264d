/* Seed 003: a multiplexer's demux buffer exists only while there is data
 * to decode.
 *
 * Each connection takes its demux buffer when data arrives, reads into it,
 * decodes the complete frames and releases the buffer if it is empty after
 * the read (a partial frame keeps it until the next read). When no buffer
 * can be had, the connection subscribes to the buffer wait queue and stops
 * receiving; its callback takes the buffer and re-enables receiving. Frames
 * are 100 bytes and the socket delivers at most 70 bytes a read, so most
 * connections hold their buffer across reads and buffers run short. The
 * harness checks every byte arrives in order, that an empty buffer is
 * never kept after a read, that a connection never reads while it waits,
 * that idle connections hold nothing, and that nothing is left queued. */
#include "bufpool.h"
#include "harness.h"

#include <string.h>

#define NCONN     48
#define NIDLE     16       /* connections that never receive anything */
#define FRAME     100
#define FRAMES    20
#define READ_MAX  70
#define LIMIT     4
#define BUFSIZE   1024

struct h2c {
    int id;
    int want_recv;         /* receiving enabled */
    size_t sock_sent;      /* bytes the peer sent so far */
    size_t total;          /* bytes the peer will send */
    size_t decoded;        /* bytes decoded so far */
    unsigned long subscriptions, resumptions, reads_while_waiting;
    struct buffer dbuf;
    struct buffer_wait dbuf_wait;
};

static struct h2c conns[NCONN + NIDLE];
static unsigned long bad_bytes, kept_empty;

static unsigned char byte_at(const struct h2c *c, size_t off)
{
    return (unsigned char)(c->id * 31 + off * 7);
}

/* Wait queue callback: take the buffer now, receive again. */
static int h2_dbuf_available(void *target)
{
    struct h2c *c = target;

    if (!b_alloc_margin(&c->dbuf, 0))
        return 0;
    c->want_recv = 1;
    c->resumptions++;
    return 1;
}

static struct buffer *h2_get_dbuf(struct h2c *c)
{
    if (b_is_queued(&c->dbuf_wait))
        return NULL;
    if (b_alloc_margin(&c->dbuf, 0))
        return &c->dbuf;
    b_queue(&c->dbuf_wait);
    c->want_recv = 0;       /* stop receiving until the callback */
    c->subscriptions++;
    return NULL;
}

static void h2_release_dbuf(struct h2c *c)
{
    if (c->dbuf.size) {
        b_free(&c->dbuf);
        offer_buffers(c, 0);
    }
}

/* Decodes every complete frame at the head of the buffer. */
static void h2_process_demux(struct h2c *c)
{
    while (c->dbuf.data >= FRAME) {
        for (size_t i = 0; i < FRAME; i++)
            bad_bytes += (unsigned char)c->dbuf.area[c->dbuf.head + i] != byte_at(c, c->decoded + i);
        c->decoded += FRAME;
        c->dbuf.head += FRAME;
        c->dbuf.data -= FRAME;
    }
    if (!c->dbuf.data)
        c->dbuf.head = 0;
    else if (c->dbuf.head) {
        memmove(c->dbuf.area, c->dbuf.area + c->dbuf.head, c->dbuf.data);
        c->dbuf.head = 0;
    }
}

static void h2_recv(struct h2c *c)
{
    if (b_is_queued(&c->dbuf_wait))
        c->reads_while_waiting++;
    struct buffer *buf = h2_get_dbuf(c);
    if (!buf)
        return;
    size_t n = c->total - c->sock_sent;
    if (n > READ_MAX)
        n = READ_MAX;
    for (size_t i = 0; i < n; i++)
        buf->area[buf->head + buf->data + i] = (char)byte_at(c, c->sock_sent + i);
    buf->data += n;
    c->sock_sent += n;
    h2_process_demux(c);
    if (!buf->data)
        h2_release_dbuf(c);
    kept_empty += c->dbuf.size && !c->dbuf.data;
}

int main(void)
{
    CHECK_EQ(dynbuf_init(BUFSIZE, 0, LIMIT), 0);
    for (int i = 0; i < NCONN + NIDLE; i++) {
        struct h2c *c = &conns[i];
        c->id = i;
        c->want_recv = 1;
        c->total = i < NCONN ? (size_t)FRAME * FRAMES : 0;
        c->dbuf = BUF_NULL;
        buffer_wait_init(&c->dbuf_wait, c, h2_dbuf_available);
    }
    int rounds = 0, pending = 1;
    while (pending && rounds < 100000) {
        pending = 0;
        for (int i = 0; i < NCONN + NIDLE; i++) {
            struct h2c *c = &conns[i];
            if (c->want_recv && c->sock_sent < c->total)
                h2_recv(c);             /* the poller reports data */
            pending += c->decoded < c->total;
        }
        rounds++;
        CHECK(pool_allocated(pool_head_buffer) <= LIMIT);
    }
    CHECK_EQ(pending, 0);
    unsigned long subs = 0, res = 0;
    for (int i = 0; i < NCONN + NIDLE; i++) {
        struct h2c *c = &conns[i];
        CHECK_EQ(c->decoded, c->total);
        CHECK(c->dbuf.size == 0 && c->dbuf.area == NULL);
        CHECK(!b_is_queued(&c->dbuf_wait));
        CHECK_EQ(c->reads_while_waiting, 0);
        CHECK_EQ(c->resumptions, c->subscriptions);
        if (i >= NCONN)
            CHECK_EQ(c->subscriptions, 0);
        subs += c->subscriptions;
        res += c->resumptions;
    }
    CHECK_EQ(bad_bytes, 0);
    CHECK_EQ(kept_empty, 0);
    CHECK(subs > 0);                          /* buffers did run short */
    CHECK_EQ(pool_used(pool_head_buffer), 0);
    printf("%d connections decoded %d bytes each in %d rounds: %lu subscriptions, %lu resumptions\n",
           NCONN, FRAME * FRAMES, rounds, subs, res);
    DONE("test_003_demux_buffer");
}
