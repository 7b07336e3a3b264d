/* The wait queue by margin (issue 19's API friction, fixed in the library):
 * b_alloc_margin_fair waits its turn behind queued waiters of the same or a
 * smaller margin; b_queue_margin records the margin a waiter claims with
 * and answers 2 when it may claim at once; b_release (and
 * offer_buffers_margin) wake every queued waiter whose margin fits, so no
 * retry timer is needed; b_available says what can be had; b_move hands a
 * buffer to another thread.
 *
 * Counted, never timed: after each release no queued waiter could succeed
 * (b_available(its margin) == 0), no callback is called to say no, and, with
 * threads, a waiter sees at most 2K releases while it waits (fairness) and
 * the state "every thread waits, buffers free" (a lost wake-up) never
 * happens. */
#include "bufpool.h"
#include "harness.h"

#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#define BUFSIZE 1000

/* ---- single-threaded waiters that claim their own buffer ---------------- */

struct wt {
    struct buffer_wait bw;
    struct buffer buf;
    int margin, calls, declines;
};

static struct wt ws[6];
static int order[16], norder;               /* which of `ws` claimed, in turn */

static int claim_cb(void *target)
{
    struct wt *x = target;
    x->calls++;
    if (!b_alloc_margin(&x->buf, x->margin)) {
        x->declines++;
        return 0;
    }
    if (norder < 16 && x >= ws && x < ws + 6)
        order[norder++] = (int)(x - ws);
    return 1;
}

static void wt_init(struct wt *x, int margin)
{
    memset(x, 0, sizeof(*x));
    x->buf = BUF_NULL;
    x->margin = margin;
    buffer_wait_init(&x->bw, x, claim_cb);
}

/* No queued waiter of `ws` could succeed now: the invariant releases keep. */
static int none_could_succeed(void)
{
    for (int i = 0; i < 6; i++)
        if (b_is_queued(&ws[i].bw) && b_available(ws[i].margin) > 0)
            return 0;
    return 1;
}

static void fair_refusals(void)
{
    struct buffer h[10], n = BUF_NULL;
    struct wt a, b, c;

    CHECK(dynbuf_init(BUFSIZE, 2, 10) == 0);
    for (int i = 0; i < 10; i++) {
        h[i] = BUF_NULL;
        CHECK(b_alloc(&h[i]) != NULL);
    }
    CHECK_EQ(b_available(0), 0);
    wt_init(&a, 0);
    CHECK_EQ(b_queue_margin(DB_MUX_TX, &a.bw, 0), 1);       /* nothing to claim */
    b_free(&h[0]);                                           /* offers nothing */
    CHECK_EQ(b_available(0), 1);
    /* A buffer can be had, but the queued margin-0 waiter came first. */
    CHECK(b_alloc_margin_fair(&n, 0) == NULL && n.size == 0);
    CHECK(b_alloc_margin(&n, 0) == &n);                      /* what barging looked like */
    b_free(&n);
    b_dequeue(&a.bw);
    CHECK(b_alloc_margin_fair(&n, 0) == &n);                 /* nobody ahead now */
    b_free(&n);

    /* A less critical waiter (margin 2) does not hold back a margin below
     * its own, and holds back the same margin and larger ones. */
    wt_init(&b, 2);
    CHECK_EQ(b_queue_margin(DB_CHANNEL, &b.bw, 2), 1);       /* 1 free: not enough for 2 */
    for (int i = 1; i < 4; i++)
        b_free(&h[i]);
    CHECK_EQ(b_available(0), 4);
    CHECK_EQ(b_available(2), 2);
    CHECK(b_alloc_margin_fair(&n, 2) == NULL);
    CHECK(b_alloc_margin_fair(&n, 3) == NULL);
    CHECK(b_alloc_margin_fair(&n, 1) == &n);
    b_free(&n);
    CHECK(b_alloc_margin_fair(&n, 0) == &n);
    b_free(&n);
    /* Queued again: it keeps its place, and may claim now (nobody of a
     * margin at most 2 besides it, 4 free). */
    CHECK_EQ(b_queue_margin(DB_CHANNEL, &b.bw, 2), 2);
    CHECK(b_alloc_margin(&b.buf, 2) == &b.buf);
    b_dequeue(&b.bw);
    CHECK(!b_is_queued(&b.bw));
    b_free(&b.buf);

    /* b_queue_crit gives the class's reserve tier: DB_CHANNEL with a
     * reserve of 2 leaves 1. */
    wt_init(&c, 0);
    CHECK_EQ(b_queue_crit(DB_CHANNEL, &c.bw), 1);
    CHECK(b_alloc_margin_fair(&n, 0) == &n);
    b_free(&n);
    CHECK(b_alloc_margin_fair(&n, 1) == NULL);
    b_dequeue(&c.bw);
    CHECK(b_alloc_margin_fair(&n, 1) == &n);
    b_free(&n);
    /* Fair allocation of an allocated buffer: untouched. */
    CHECK(b_alloc(&n) == &n);
    char *area = n.area;
    CHECK(b_alloc_margin_fair(&n, 0) == &n && n.area == area);
    b_free(&n);
    for (int i = 4; i < 10; i++)
        b_free(&h[i]);
    CHECK_EQ(pool_used(pool_head_buffer), 0);
}

static void releases_wake_every_fitting_waiter(void)
{
    struct buffer h[10];

    CHECK(dynbuf_init(BUFSIZE, 2, 10) == 0);
    for (int i = 0; i < 10; i++) {
        h[i] = BUF_NULL;
        CHECK(b_alloc(&h[i]) != NULL);
    }
    /* Three response waiters (margin 0, the class offered first), three
     * request waiters (margin 2, the reserve). */
    for (int i = 0; i < 6; i++) {
        wt_init(&ws[i], i < 3 ? 0 : 2);
        CHECK_EQ(b_queue_margin(i < 3 ? DB_MUX_TX : DB_CHANNEL, &ws[i].bw, ws[i].margin), 1);
    }
    norder = 0;
    /* The friction: one buffer free, a margin-0 waiter could have it, but
     * offer_buffers budgets free - reserve/2 = 0 and wakes nobody. */
    b_free(&h[0]);
    CHECK_EQ(b_available(0), 1);
    offer_buffers(NULL, 0);
    CHECK_EQ(ws[0].calls, 0);
    CHECK(b_is_queued(&ws[0].bw));
    /* The offer by margin wakes it. */
    offer_buffers_margin(NULL);
    CHECK_EQ(ws[0].calls, 1);
    CHECK(!b_is_queued(&ws[0].bw) && ws[0].buf.size == BUFSIZE);
    CHECK(none_could_succeed());
    /* Then releases alone: after each, nobody queued could succeed. */
    int woken_after[10] = { 0 };
    for (int i = 1; i < 10; i++) {
        b_release(&h[i]);
        CHECK(h[i].size == 0 && h[i].area == NULL);
        CHECK(none_could_succeed());
        woken_after[i] = norder;
    }
    /* Releases 1, 2: the other two responses. 3, 4: 1 and 2 free, a
     * request needs 3. 5, 6, 7: one request each. */
    int want_after[10] = { 0, 2, 3, 3, 3, 4, 5, 6, 6, 6 };
    for (int i = 1; i < 10; i++)
        CHECK_EQ(woken_after[i], want_after[i]);
    int want_order[6] = { 0, 1, 2, 3, 4, 5 };
    CHECK(norder == 6 && !memcmp(order, want_order, sizeof(want_order)));
    int calls = 0, declines = 0;
    for (int i = 0; i < 6; i++) {
        calls += ws[i].calls;
        declines += ws[i].declines;
        CHECK(!b_is_queued(&ws[i].bw));
    }
    CHECK_EQ(calls, 6);                       /* nobody was called to say no */
    CHECK_EQ(declines, 0);
    for (int i = 0; i < 6; i++)
        b_release(&ws[i].buf);
    CHECK_EQ(pool_used(pool_head_buffer), 0);
    /* A release of nothing offers nothing and changes nothing. */
    struct buffer none = BUF_NULL;
    b_release(&none);
    b_release(NULL);
}

static void available_and_the_offer_budget(void)
{
    struct buffer h[10];
    struct wt q;

    CHECK(dynbuf_init(BUFSIZE, 2, 10) == 0);
    CHECK_EQ(b_available(0), 10);
    CHECK_EQ(b_available(2), 8);
    CHECK_EQ(b_available(-3), 10);
    CHECK_EQ(b_available(50), 0);
    for (int i = 0; i < 7; i++) {
        h[i] = BUF_NULL;
        CHECK(b_alloc(&h[i]) != NULL);
    }
    CHECK_EQ(b_available(0), 3);
    CHECK_EQ(b_available(2), 1);
    /* offer_buffers budgets b_available(reserve / 2): a margin-2 waiter is
     * woken by it exactly when b_available(2) >= 1, with the threshold
     * 2 - reserve / 2 = 1, the formula the relay used to copy. */
    wt_init(&q, 2);
    h[7] = BUF_NULL;
    CHECK(b_alloc(&h[7]) != NULL);                           /* 2 free */
    CHECK_EQ(b_available(2), 0);
    CHECK_EQ(b_queue_margin(DB_CHANNEL, &q.bw, 2), 1);
    offer_buffers(NULL, 1);
    CHECK_EQ(q.calls, 0);
    b_free(&h[7]);                                           /* 3 free */
    CHECK_EQ(b_available(2), 1);
    offer_buffers(NULL, 1);
    CHECK_EQ(q.calls, 1);
    CHECK_EQ(q.declines, 0);
    CHECK(q.buf.size == BUFSIZE && !b_is_queued(&q.bw));
    b_free(&q.buf);
    for (int i = 0; i < 7; i++)
        b_free(&h[i]);
    /* Without a limit: as many as memory allows. */
    CHECK(dynbuf_init(BUFSIZE, 2, 0) == 0);
    CHECK_EQ(b_available(0), LONG_MAX);
    CHECK_EQ(b_available(5), LONG_MAX);
}

/* ---- b_move: a buffer handed to another thread ----------------------- */

static pthread_mutex_t hand_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hand_cond = PTHREAD_COND_INITIALIZER;
static struct buffer hand = { 0, NULL, 0, 0 };
static int handed;
static char *moved_area;
static int mover_failures;

static void *taker(void *arg)
{
    struct buffer mine = BUF_NULL, again = BUF_NULL;
    (void)arg;
    pthread_mutex_lock(&hand_lock);
    while (!handed)
        pthread_cond_wait(&hand_cond, &hand_lock);
    mover_failures += b_move(&mine, &hand) != &mine;
    mover_failures += hand.size != 0 || hand.area != NULL;
    pthread_mutex_unlock(&hand_lock);
    mover_failures += mine.area != moved_area || mine.data != 5 || mine.head != 2 || mine.size != BUFSIZE;
    mover_failures += memcmp(mine.area + 2, "hello", 5) != 0;
    b_release(&mine);
    /* The memory went to this thread's cache: its next buffer is that one. */
    mover_failures += b_alloc(&again) == NULL;
    mover_failures += again.area != moved_area;
    b_free(&again);
    return NULL;
}

static void move_between_threads(void)
{
    struct buffer x = BUF_NULL, y = BUF_NULL, garbage = { 123, (char *)&garbage, 0, 0 };
    pthread_t t;

    CHECK(dynbuf_init(BUFSIZE, 2, 10) == 0);
    CHECK(b_alloc(&x) == &x && b_alloc(&y) == &y);
    unsigned long used = pool_used(pool_head_buffer);
    /* Refusals leave both sides as they were. */
    char *xa = x.area, *ya = y.area;
    CHECK(b_move(&y, &x) == NULL && x.area == xa && y.area == ya);   /* dst holds one */
    CHECK(b_move(&x, &x) == NULL && x.area == xa);
    struct buffer empty = BUF_NULL;
    CHECK(b_move(&empty, &garbage) == NULL && garbage.size == 123 && empty.size == 0);
    struct buffer e2 = BUF_NULL;
    CHECK(b_move(&empty, &e2) == NULL);                               /* nothing to move */
    CHECK(b_move(NULL, &x) == NULL && b_move(&empty, NULL) == NULL && x.area == xa);
    b_free(&y);
    /* Across threads, under the hand-over's own lock. */
    memcpy(x.area + 2, "hello", 5);
    x.data = 5;
    x.head = 2;
    moved_area = x.area;
    CHECK(pthread_create(&t, NULL, taker, NULL) == 0);
    pthread_mutex_lock(&hand_lock);
    CHECK(b_move(&hand, &x) == &hand);
    CHECK(x.size == 0 && x.area == NULL && x.data == 0 && x.head == 0);
    handed = 1;
    pthread_cond_signal(&hand_cond);
    pthread_mutex_unlock(&hand_lock);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_EQ(mover_failures, 0);
    CHECK_EQ(pool_used(pool_head_buffer), used - 2);
}

/* ---- threads: every wait ends by a release, in turn ----------------- */

#define K 4
#define ITERS 3000

struct worker {
    struct buffer_wait bw;
    pthread_mutex_t lock;                   /* guards buf while queued */
    struct buffer buf;
    int margin;
    unsigned crit;
    atomic_int got;
    atomic_ulong at;                        /* releases done when it got its buffer */
    unsigned long max_wait, long_waits, waits, done;
};

static struct worker wk[K];
static atomic_ulong releases, exits;      /* exits: waits that ended */
static atomic_int waiting, lost, callbacks, declined;

static int worker_cb(void *target)
{
    struct worker *x = target;
    int r = 1;

    unsigned long now = atomic_load(&releases);
    atomic_fetch_add(&callbacks, 1);
    pthread_mutex_lock(&x->lock);
    if (!x->buf.size && !b_alloc_margin(&x->buf, x->margin))
        r = 0;
    pthread_mutex_unlock(&x->lock);
    if (r) {
        atomic_store(&x->at, now);
        atomic_store_explicit(&x->got, 1, memory_order_release);
    } else
        atomic_fetch_add(&declined, 1);
    return r;
}

/* Every worker waits and none was handed a buffer: nobody is left to
 * release, so the buffers that can be had stay with nobody. Stable only if
 * no wait ended and no release happened while it was looked at. */
static int all_stuck(void)
{
    unsigned long e0 = atomic_load(&releases) + atomic_load(&exits);
    if (atomic_load(&waiting) != K)
        return 0;
    for (int i = 0; i < K; i++)
        if (atomic_load_explicit(&wk[i].got, memory_order_acquire))
            return 0;
    long avail = b_available(0);
    return avail > 0 && atomic_load(&waiting) == K && atomic_load(&releases) + atomic_load(&exits) == e0;
}

static void *worker_main(void *arg)
{
    struct worker *x = arg;

    for (int it = 0; it < ITERS && !atomic_load(&lost); it++) {
        if (!b_alloc_margin_fair(&x->buf, x->margin)) {
            int q = b_queue_margin(x->crit, &x->bw, x->margin);
            /* Read once queued: releases before it (while this thread was
             * off the CPU, say) owe it nothing. */
            unsigned long r0 = atomic_load(&releases);
            if (q == 2) {
                pthread_mutex_lock(&x->lock);
                if (!x->buf.size && b_alloc_margin(&x->buf, x->margin)) {
                    atomic_store(&x->at, atomic_load(&releases));
                    atomic_store_explicit(&x->got, 1, memory_order_release);
                }
                pthread_mutex_unlock(&x->lock);
            }
            atomic_fetch_add(&waiting, 1);
            while (!atomic_load_explicit(&x->got, memory_order_acquire)) {
                if (all_stuck()) {
                    atomic_store(&lost, 1);
                    break;
                }
                if (atomic_load(&lost))
                    break;
                sched_yield();
            }
            atomic_fetch_add(&exits, 1);
            atomic_fetch_sub(&waiting, 1);
            b_dequeue(&x->bw);              /* no callback runs after this */
            atomic_store(&x->got, 0);
            unsigned long at = atomic_load(&x->at), w = at > r0 ? at - r0 : 0;
            if (w > x->max_wait)
                x->max_wait = w;
            x->waits++;
            x->long_waits += w > 2 * K;
            if (!x->buf.size)
                break;                      /* lost: the test fails */
        }
        sched_yield();                      /* hold it a moment */
        b_release(&x->buf);
        atomic_fetch_add(&releases, 1);
        x->done++;
    }
    return NULL;
}

static void threads_round(const char *name, unsigned limit, unsigned reserve, const int *margins)
{
    pthread_t t[K];

    CHECK(dynbuf_init(BUFSIZE, reserve, limit) == 0);
    atomic_store(&releases, 0);
    atomic_store(&lost, 0);
    atomic_store(&callbacks, 0);
    atomic_store(&declined, 0);
    for (int i = 0; i < K; i++) {
        memset(&wk[i], 0, sizeof(wk[i]));
        pthread_mutex_init(&wk[i].lock, NULL);
        wk[i].buf = BUF_NULL;
        wk[i].margin = margins[i];
        wk[i].crit = margins[i] ? DB_CHANNEL : DB_MUX_TX;
        buffer_wait_init(&wk[i].bw, &wk[i], worker_cb);
    }
    for (int i = 0; i < K; i++)
        CHECK(pthread_create(&t[i], NULL, worker_main, &wk[i]) == 0);
    unsigned long max_wait = 0, done = 0, waits = 0, long_waits = 0;
    for (int i = 0; i < K; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        if (wk[i].max_wait > max_wait)
            max_wait = wk[i].max_wait;
        done += wk[i].done;
        waits += wk[i].waits;
        long_waits += wk[i].long_waits;
        CHECK_EQ(wk[i].done, ITERS);
        pthread_mutex_destroy(&wk[i].lock);
    }
    CHECK_EQ(atomic_load(&lost), 0);
    CHECK_EQ(pool_used(pool_head_buffer), 0);
    printf("%s: %lu releases, %lu waits, %d callbacks (%d declined), at most %lu releases seen while waiting, "
           "%lu waits saw more than %d\n", name, done, waits, atomic_load(&callbacks), atomic_load(&declined), max_wait,
           long_waits, 2 * K);
    /* In turn: a margin-0 waiter is served within the releases of those
     * queued before it (at most 2K, counting the releases in flight when
     * it queued). A thread taken off the CPU inside an offer, after it
     * chose a waiter and before its callback ran, holds that waiter's turn
     * while the others go on: rare, so a few such waits are allowed (one in
     * a thousand; with newcomers claiming past queued waiters, 18 to 93 in
     * some 10,000 waits). */
    if (margins[0] == 0 && margins[K - 1] == 0)
        CHECK(long_waits <= waits / 1000 + 3);
}

int main(void)
{
    fair_refusals();
    releases_wake_every_fitting_waiter();
    available_and_the_offer_budget();
    move_between_threads();
    static const int zero[K] = { 0, 0, 0, 0 }, mixed[K] = { 0, 1, 0, 1 };
    threads_round("margin 0, limit 2", 2, 1, zero);
    threads_round("margins 0 and 1, limit 3", 3, 1, mixed);
    DONE("test_dynbuf_release");
}
