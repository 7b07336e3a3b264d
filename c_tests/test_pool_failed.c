/* What pool_failed counts, as the header says: allocations that asked the
 * pool and got NULL (at the limit, out of memory, fail=PERCENT), not the
 * buffer allocations refused before they ask it (the reserve kept by a
 * margin or a class tier, a waiter queued, a limit lowered below what is
 * held). */
#include "bufpool.h"
#include "harness.h"

#include <string.h>

static int wake(void *ctx)
{
    (void)ctx;
    return 0;
}

int main(void)
{
    struct pool_head *p = create_pool("counted", 64, 0);
    struct buffer h[8], b = BUF_NULL;
    struct buffer_wait bw;
    void *o;
    int i;

    /* A plain pool at its limit: counted. */
    pool_set_limit(p, 1);
    o = pool_alloc(p);
    CHECK(o != NULL);
    CHECK(pool_alloc(p) == NULL);
    CHECK_EQ(pool_failed(p), 1);
    pool_free(p, o);

    /* Buffers: reserve 2, limit 6. */
    for (i = 0; i < 8; i++)
        h[i] = BUF_NULL;
    CHECK(dynbuf_init(4096, 2, 6) == 0);
    CHECK(b_alloc(&h[0]) != NULL);
    CHECK(b_alloc_margin(&h[1], 2) != NULL);        /* 2 held + 2 more: fits in 6 */
    CHECK(b_alloc_margin(&b, 4) == NULL);           /* 3 + 4 > 6: refused for the reserve */
    CHECK_EQ(pool_failed(pool_head_buffer), 0);
    CHECK(b_alloc(&h[2]) != NULL && b_alloc(&h[3]) != NULL);
    CHECK(b_alloc_crit(&b, DB_MUX_RX) == NULL);     /* tier 2: 5 + 2 > 6 */
    CHECK_EQ(pool_failed(pool_head_buffer), 0);

    buffer_wait_init(&bw, NULL, wake);
    CHECK(b_queue_crit(DB_MUX_TX, &bw) == 1);
    CHECK(b_alloc_crit(&b, DB_CHANNEL) == NULL);    /* room for it, but a more critical waiter is queued */
    CHECK_EQ(pool_failed(pool_head_buffer), 0);
    b_dequeue(&bw);
    CHECK(b_alloc_crit(&b, DB_CHANNEL) != NULL);    /* tier 1: 5 + 1 <= 6 */
    b_free(&b);

    CHECK(b_alloc(&h[4]) != NULL && b_alloc(&h[5]) != NULL);
    CHECK(b_alloc(&h[6]) == NULL);                  /* margin 0 at the limit: asks the pool, counted */
    CHECK_EQ(pool_failed(pool_head_buffer), 1);

    pool_set_limit(pool_head_buffer, 3);            /* lowered below the 6 held */
    CHECK(b_alloc(&h[6]) == NULL);
    CHECK_EQ(pool_failed(pool_head_buffer), 1);     /* refused before the pool: not counted */
    CHECK(pool_alloc(pool_head_buffer) == NULL);    /* the pool itself refuses: counted */
    CHECK_EQ(pool_failed(pool_head_buffer), 2);

    for (i = 0; i < 8; i++)
        b_free(&h[i]);
    pool_destroy_all();
    DONE("test_pool_failed");
}
