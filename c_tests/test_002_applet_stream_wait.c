/* Seed 002: every entity waiting for a buffer is woken itself, by its own
 * callback.
 *
 * Streams run from the task run queue, applets from the active-applet list
 * (two schedulers, as in a proxy). Each stream has an applet attached, and
 * each of the two needs a buffer of its own for a few turns. When an
 * allocation fails, the entity queues its own buffer_wait, whose target is
 * itself and whose callback knows its kind: appctx_res_wakeup puts an
 * applet on the active list, stream_res_wakeup puts a stream in the run
 * queue. The harness checks that every callback is handed an entity of its
 * own kind that really waits, that every failed allocation is answered by
 * exactly one wake-up of that very entity, and that nothing is left
 * waiting. (Queueing the stream for its applet, the bug HAProxy fixed, leaves
 * the applet waiting forever and fails these checks.) */
#include "bufpool.h"
#include "harness.h"

#include <string.h>

#define NPAIRS  64
#define TURNS   3          /* turns an entity holds its buffer */
#define LIMIT   4

enum kind { APPLET, STREAM };

struct entity {
    enum kind kind;
    int active;            /* in its scheduler's list */
    int turns_left;
    int done;
    int waiting;           /* queued after a failed allocation */
    unsigned long failures, woken_by_cb;
    struct buffer buf;
    struct buffer_wait bw;
};

static struct entity applets[NPAIRS], streams[NPAIRS];
static struct entity *applet_list[NPAIRS], *run_queue[NPAIRS];
static int n_applets, n_tasks;
static unsigned long wrong_kind, not_waiting;

static void schedule(struct entity *e)
{
    if (e->active || e->done)
        return;
    e->active = 1;
    if (e->kind == APPLET)
        applet_list[n_applets++] = e;
    else
        run_queue[n_tasks++] = e;
}

static int res_wakeup(struct entity *e, enum kind kind)
{
    if (e->kind != kind)
        wrong_kind++;
    if (!e->waiting)
        not_waiting++;
    if (e->active)
        return 0;          /* already scheduled: keep the place */
    e->waiting = 0;
    e->woken_by_cb++;
    schedule(e);
    return 1;
}

static int appctx_res_wakeup(void *target) { return res_wakeup(target, APPLET); }
static int stream_res_wakeup(void *target) { return res_wakeup(target, STREAM); }

static void run_entity(struct entity *e)
{
    if (!b_alloc_margin(&e->buf, 0)) {
        e->failures++;
        e->waiting = 1;
        CHECK(b_queue(&e->bw) == 1);
        return;
    }
    b_dequeue(&e->bw);     /* no-op unless we got it before our wake-up */
    e->waiting = 0;
    memset(e->buf.area, e->kind == APPLET ? 'a' : 's', 64);
    e->buf.data += 64;
    if (--e->turns_left) {
        schedule(e);
        return;
    }
    b_free(&e->buf);
    e->done = 1;
    offer_buffers(e, (unsigned)(n_applets + n_tasks));
}

/* One turn: every active applet, then every queued task. */
static void turn(void)
{
    struct entity *batch[NPAIRS];
    int n = n_applets;

    memcpy(batch, applet_list, n * sizeof(*batch));
    n_applets = 0;
    for (int i = 0; i < n; i++) {
        batch[i]->active = 0;
        run_entity(batch[i]);
    }
    n = n_tasks;
    memcpy(batch, run_queue, n * sizeof(*batch));
    n_tasks = 0;
    for (int i = 0; i < n; i++) {
        batch[i]->active = 0;
        run_entity(batch[i]);
    }
}

int main(void)
{
    CHECK_EQ(dynbuf_init(4096, 0, LIMIT), 0);
    for (int i = 0; i < NPAIRS; i++) {
        struct entity *a = &applets[i], *s = &streams[i];
        a->kind = APPLET;
        s->kind = STREAM;
        a->turns_left = s->turns_left = TURNS;
        a->buf = s->buf = BUF_NULL;
        /* Each waits with its own callback and is its own target. */
        buffer_wait_init(&a->bw, a, appctx_res_wakeup);
        buffer_wait_init(&s->bw, s, stream_res_wakeup);
        schedule(s);
        schedule(a);
    }
    int turns = 0;
    while ((n_applets || n_tasks) && turns < 100000) {
        turn();
        turns++;
        CHECK(pool_allocated(pool_head_buffer) <= LIMIT);
    }
    CHECK_EQ(n_applets + n_tasks, 0);        /* the loop ended by itself */

    unsigned long failures = 0, wakes = 0, applet_wakes = 0;
    for (int i = 0; i < NPAIRS; i++) {
        struct entity *e[2] = { &applets[i], &streams[i] };
        for (int k = 0; k < 2; k++) {
            CHECK(e[k]->done);
            CHECK(!e[k]->waiting);
            CHECK(!b_is_queued(&e[k]->bw));
            CHECK(e[k]->buf.size == 0);
            /* Each failure answered by one wake-up of this very entity. */
            CHECK_EQ(e[k]->woken_by_cb, e[k]->failures);
            failures += e[k]->failures;
            wakes += e[k]->woken_by_cb;
        }
        applet_wakes += applets[i].woken_by_cb;
    }
    CHECK_EQ(wrong_kind, 0);
    CHECK_EQ(not_waiting, 0);
    CHECK(applet_wakes > 0);                 /* applets did wait and were woken */
    CHECK(wakes > applet_wakes);             /* and so did streams */
    CHECK_EQ(pool_used(pool_head_buffer), 0);
    printf("%d applets and %d streams done in %d turns: %lu failed allocations, %lu own wake-ups (%lu applets)\n",
           NPAIRS, NPAIRS, turns, failures, wakes, applet_wakes);
    DONE("test_002_applet_stream_wait");
}
