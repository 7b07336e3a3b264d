/* Seed 000: health checks take their buffers from the buffer pool when they
 * need them, not for their whole life.
 *
 * 100,000 checks (one per server of a huge configuration) exist; idle ones
 * hold no buffer at all. Every tick a slice of them runs: a running check
 * takes its output buffer to send its request, releases it once sent (empty),
 * then takes its input buffer to read the response and releases it when
 * done. When the pool is exhausted a check waits in the buffer wait queue;
 * its callback takes the buffer it was missing and reschedules the check,
 * which resumes where it stopped. The harness checks that the idle checks
 * cost nothing, that every check of every tick completes within its tick,
 * that buffers never exceed the limit and that nothing stays queued. */
#include "bufpool.h"
#include "harness.h"

#include <stdlib.h>
#include <string.h>

#define NCHECKS  100000
#define PERIOD   1000      /* a check runs every PERIOD ticks */
#define TICKS    2000      /* so every check runs twice */
#define LIMIT    8
#define BUFSIZE  16384

enum chk_state { CHK_IDLE, CHK_SEND, CHK_SENT, CHK_RECV };

#define CHUNKS   3         /* the response comes in 3 reads */

struct check {
    enum chk_state st;
    int in_runq;
    unsigned runs, chunks;
    struct buffer bi, bo;
    struct buffer_wait bw;
};

static struct check *checks;
static int *runq, rq_head, rq_len;
static unsigned long waits, resumed_by_cb, max_used;

static void task_wakeup(struct check *c)
{
    if (c->in_runq)
        return;
    c->in_runq = 1;
    runq[(rq_head + rq_len++) % NCHECKS] = (int)(c - checks);
}

/* The buffer a check in state `st` is missing. */
static struct buffer *wanted(struct check *c)
{
    return c->st == CHK_SEND ? &c->bo : &c->bi;
}

/* Wait queue callback: take the missing buffer now and resume the check. */
static int check_buf_available(void *target)
{
    struct check *c = target;

    if (!b_alloc_margin(wanted(c), 0))
        return 0;
    resumed_by_cb++;
    task_wakeup(c);
    return 1;
}

static int check_get_buf(struct check *c)
{
    if (b_alloc_margin(wanted(c), 0))
        return 1;
    waits++;
    CHECK(b_queue(&c->bw) == 1);
    return 0;
}

static void note_used(void)
{
    unsigned long used = pool_used(pool_head_buffer);
    if (used > max_used)
        max_used = used;
}

static void process_check(struct check *c)
{
    switch (c->st) {
    case CHK_IDLE:
        c->st = CHK_SEND;
        /* fall through */
    case CHK_SEND:
        if (!check_get_buf(c))
            return;
        note_used();
        memcpy(c->bo.area, "OPTIONS / HTTP/1.0\r\n\r\n", 22);
        c->bo.data = 22;
        c->st = CHK_SENT;
        task_wakeup(c);                     /* the request leaves */
        return;
    case CHK_SENT:
        CHECK(c->bo.size == BUFSIZE && c->bo.data == 22);
        c->bo.data = 0;                     /* sent: empty, give it back */
        b_free(&c->bo);
        offer_buffers(c, (unsigned)rq_len);
        c->st = CHK_RECV;
        task_wakeup(c);                     /* the response arrives */
        return;
    case CHK_RECV:
        if (!check_get_buf(c))
            return;
        note_used();
        memcpy(c->bi.area + c->bi.data, "HTTP/1.0 200 OK\r\n\r\n", 19);
        c->bi.data += 19;
        if (++c->chunks < CHUNKS) {
            task_wakeup(c);                 /* more to read: keep the buffer */
            return;
        }
        CHECK_EQ(c->bi.data, 19 * CHUNKS);
        c->chunks = 0;
        b_free(&c->bi);                     /* done: give it back */
        offer_buffers(c, (unsigned)rq_len);
        c->st = CHK_IDLE;
        c->runs++;
        return;
    }
}

int main(void)
{
    CHECK_EQ(dynbuf_init(BUFSIZE, 2, LIMIT), 0);
    checks = calloc(NCHECKS, sizeof(*checks));
    runq = calloc(NCHECKS, sizeof(*runq));
    CHECK(checks && runq);
    if (!checks || !runq)
        DONE("test_000_health_checks");
    for (int i = 0; i < NCHECKS; i++) {
        checks[i].bi = BUF_NULL;
        checks[i].bo = BUF_NULL;
        buffer_wait_init(&checks[i].bw, &checks[i], check_buf_available);
    }
    /* 100,000 configured checks, none running: no buffer is held, and the
     * pool holds no more than its reserve. */
    CHECK_EQ(pool_used(pool_head_buffer), 0);
    CHECK(pool_allocated(pool_head_buffer) <= 3);

    unsigned long incomplete = 0;
    for (int tick = 0; tick < TICKS; tick++) {
        for (int i = tick % PERIOD; i < NCHECKS; i += PERIOD)
            task_wakeup(&checks[i]);
        while (rq_len) {
            struct check *c = &checks[runq[rq_head]];
            rq_head = (rq_head + 1) % NCHECKS;
            rq_len--;
            c->in_runq = 0;
            process_check(c);
            CHECK(pool_allocated(pool_head_buffer) <= LIMIT);
        }
        /* The tick's checks are all done: they hold nothing and wait for nothing. */
        for (int i = tick % PERIOD; i < NCHECKS; i += PERIOD)
            incomplete += checks[i].st != CHK_IDLE || b_is_queued(&checks[i].bw);
        CHECK_EQ(pool_used(pool_head_buffer), 0);
    }
    CHECK_EQ(incomplete, 0);
    unsigned long runs = 0, holding = 0;
    for (int i = 0; i < NCHECKS; i++) {
        runs += checks[i].runs;
        holding += checks[i].bi.size != 0 || checks[i].bo.size != 0 || b_is_queued(&checks[i].bw);
    }
    CHECK_EQ(runs, 2UL * NCHECKS);
    CHECK_EQ(holding, 0);
    CHECK(waits > 0);                       /* buffers ran short */
    CHECK_EQ(resumed_by_cb, waits);         /* every wait ended in its callback */
    CHECK_EQ(max_used, LIMIT);
    printf("%d checks, %lu runs: %lu waits for a buffer, all resumed by their callback; at most %lu buffers held\n",
           NCHECKS, runs, waits, max_used);
    free(checks);
    free(runq);
    DONE("test_000_health_checks");
}
