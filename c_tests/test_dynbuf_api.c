/* The buffer part of the C contract, call by call: margins and the limit, the
 * reserve without a limit, idle buffers in a blocked thread's cache, the
 * offer budget, FIFO order, `from`, zero returns, re-entrant callbacks,
 * dequeue from a callback and from another thread, criticality classes. */
#include "bufpool.h"
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#define BUFSIZE 1000

/* ---- waiters that log their wake-ups ---------------------------------- */

#define NW 12
static struct buffer_wait w[NW];
static int answer[NW];              /* what each callback returns */
static int wlog[64], nlog;

static int log_cb(void *target)
{
    int id = (int)((struct buffer_wait *)target - w);
    if (nlog < 64)
        wlog[nlog++] = id;
    return answer[id];
}

static void reset_waiters(void)
{
    for (int i = 0; i < NW; i++) {
        b_dequeue(&w[i]);
        buffer_wait_init(&w[i], &w[i], log_cb);
        answer[i] = 1;
    }
    nlog = 0;
}

static int logged(const int *want, int n)
{
    if (nlog != n)
        return 0;
    for (int i = 0; i < n; i++)
        if (wlog[i] != want[i])
            return 0;
    return 1;
}

/* ---- a thread whose cache holds idle buffers while it is blocked -------- */

static int pipe_go[2], pipe_ready[2];
static int hoarder_failures;        /* read by main after the join */

static void *hoarder(void *arg)
{
    struct buffer b[6];
    char c = 0;
    (void)arg;
    for (int i = 0; i < 6; i++) {
        b[i] = BUF_NULL;
        hoarder_failures += b_alloc(&b[i]) == NULL;
    }
    for (int i = 0; i < 6; i++)
        b_free(&b[i]);                      /* idle, in this thread's cache */
    hoarder_failures += write(pipe_ready[1], &c, 1) != 1;
    hoarder_failures += read(pipe_go[0], &c, 1) != 1;   /* blocked meanwhile */
    return NULL;
}

/* ---- re-entrant callbacks ---------------------------------------------- */

static struct buffer reent_buf;
static int reent_calls;

static int reentrant_cb(void *target)
{
    (void)target;
    reent_calls++;
    CHECK(b_is_queued(&w[0]));              /* queued while it runs */
    CHECK(b_alloc(&reent_buf) != NULL);     /* allocate */
    CHECK(b_queue(&w[2]) == 1);             /* queue another */
    b_dequeue(&w[1]);                       /* dequeue a third */
    offer_buffers(NULL, 0);                 /* offer (w[0] is skipped: running) */
    b_dequeue(&w[0]);                       /* dequeue itself */
    CHECK(!b_is_queued(&w[0]));
    return 1;
}

/* ---- dequeue from another thread while the callback runs ---------------- */

static pthread_mutex_t mx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int cb_running;
static atomic_int dequeue_called, cb_finished;

static int slow_cb(void *target)
{
    (void)target;
    pthread_mutex_lock(&mx);
    cb_running = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mx);
    while (!atomic_load(&dequeue_called))
        sched_yield();
    /* Linger: a b_dequeue that does not wait returns meanwhile. */
    for (int i = 0; i < 2000; i++)
        sched_yield();
    atomic_store(&cb_finished, 1);
    return 0;
}

/* A callback that waits, while it runs, for main to queue its waiter again. */
static atomic_int requeue_running, requeue_done;

static int requeue_cb(void *target)
{
    (void)target;
    atomic_store(&requeue_running, 1);
    while (!atomic_load(&requeue_done))
        sched_yield();                      /* main never blocks before setting it */
    return 1;
}

/* A callback that queues itself again and says it was woken. */
static int self_requeue_cb(void *target)
{
    CHECK_EQ(b_queue(target), 1);
    return 1;
}

static void *offerer(void *arg)
{
    (void)arg;
    offer_buffers(NULL, 0);
    return NULL;
}

int main(void)
{
    struct buffer b[10], x = BUF_NULL;

    /* Before dynbuf_init: nothing to allocate from. */
    CHECK(pool_head_buffer == NULL);
    CHECK(b_alloc(&x) == NULL && x.size == 0);
    CHECK_EQ(dynbuf_init(0, 2, 6), (unsigned long long)-1);
    CHECK_EQ(dynbuf_init(BUFSIZE, 6, 6), (unsigned long long)-1);   /* limit not above the reserve */

    CHECK_EQ(dynbuf_init(BUFSIZE, 2, 6), 0);
    CHECK(pool_head_buffer != NULL);
    CHECK_EQ(pool_allocated(pool_head_buffer), 3);  /* minavail = max(2, 3), allocated at once */
    CHECK_EQ(pool_used(pool_head_buffer), 0);
    CHECK_EQ(dynbuf_init(BUFSIZE + 1, 2, 6), (unsigned long long)-1); /* another size */

    /* An allocated buffer is returned untouched. */
    CHECK(b_alloc(&x) == &x);
    CHECK(x.size == BUFSIZE && x.area && x.data == 0 && x.head == 0);
    char *area = x.area;
    x.data = 5;
    x.head = 1;
    CHECK(b_alloc_margin(&x, 100) == &x);
    CHECK(x.size == BUFSIZE && x.area == area && x.data == 5 && x.head == 1);
    b_free(&x);
    CHECK(x.size == 0 && x.area == NULL && x.data == 0 && x.head == 0);
    b_free(&x);                              /* not allocated: no-op */
    b_free(NULL);
    CHECK(b_alloc(NULL) == NULL);

    /* The margin rule with limit 6: used + 1 + margin <= 6. */
    int n = 0;
    for (int i = 0; i < 10; i++)
        b[i] = BUF_NULL;
    while (n < 10 && b_alloc_margin(&b[n], 2))
        n++;
    CHECK_EQ(n, 4);
    CHECK(b[n].size == 0 && b[n].area == NULL);   /* failure leaves it unallocated */
    CHECK(b_alloc_margin(&b[n], 1) == &b[n]);
    n++;
    CHECK(b_alloc_margin(&b[n], 1) == NULL);
    CHECK(b_alloc_margin(&b[n], -3) == &b[n]);    /* negative: 0 */
    n++;
    CHECK(b_alloc(&b[n]) == NULL);
    CHECK_EQ(pool_used(pool_head_buffer), 6);
    CHECK_EQ(pool_allocated(pool_head_buffer), 6);
    for (int i = 0; i < n; i++)
        b_free(&b[i]);
    CHECK_EQ(pool_used(pool_head_buffer), 0);

    /* Idle buffers in a blocked thread's cache never make us fail. */
    pthread_t th;
    char c = 0;
    CHECK(pipe(pipe_go) == 0 && pipe(pipe_ready) == 0);
    CHECK(pthread_create(&th, NULL, hoarder, NULL) == 0);
    CHECK(read(pipe_ready[0], &c, 1) == 1);
    CHECK_EQ(pool_used(pool_head_buffer), 0);
    n = 0;
    while (n < 10 && b_alloc_margin(&b[n], 2))
        n++;
    CHECK_EQ(n, 4);
    while (n < 10 && b_alloc(&b[n]))
        n++;
    CHECK_EQ(n, 6);
    for (int i = 0; i < n; i++)
        b_free(&b[i]);
    CHECK(write(pipe_go[1], &c, 1) == 1);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_EQ(hoarder_failures, 0);

    /* Queueing: NULL and no callback refused, idempotent. */
    reset_waiters();
    struct buffer_wait nocb;
    buffer_wait_init(&nocb, NULL, NULL);
    CHECK_EQ(b_queue(&nocb), 0);
    CHECK_EQ(b_queue(NULL), 0);
    CHECK(!b_is_queued(NULL) && !b_is_queued(&nocb));
    CHECK_EQ(b_queue_crit(9, &w[0]), 0);
    static struct buffer_wait zeroed;        /* zeroed: a valid unqueued waiter */
    CHECK(!b_is_queued(&zeroed));
    b_dequeue(&zeroed);

    /* The budget: (6 - used) - 2/2 > threshold, one per wake-up, FIFO. */
    for (int i = 0; i < 10; i++)
        CHECK_EQ(b_queue(&w[i]), 1);
    CHECK_EQ(b_queue(&w[3]), 1);             /* idempotent: keeps its place */
    offer_buffers(NULL, 0);                  /* budget 5 */
    { int want[] = { 0, 1, 2, 3, 4 }; CHECK(logged(want, 5)); }
    nlog = 0;
    offer_buffers(NULL, 3);                  /* budget 5 > 3, 4 > 3: two */
    { int want[] = { 5, 6 }; CHECK(logged(want, 2)); }
    nlog = 0;
    CHECK(b_alloc(&b[0]) && b_alloc(&b[1]) && b_alloc(&b[2]));
    offer_buffers(NULL, 0);                  /* used 3: budget 2 */
    { int want[] = { 7, 8 }; CHECK(logged(want, 2)); }
    nlog = 0;
    CHECK(b_alloc(&b[3]) && b_alloc(&b[4]));
    offer_buffers(NULL, 0);                  /* used 5: budget 0 */
    CHECK_EQ(nlog, 0);
    CHECK(b_is_queued(&w[9]));
    for (int i = 0; i < 5; i++)
        b_free(&b[i]);                       /* b_free offers nothing */
    CHECK_EQ(nlog, 0);
    offer_buffers(NULL, 0);
    { int want[] = { 9 }; CHECK(logged(want, 1)); }
    CHECK(!b_is_queued(&w[9]));

    /* `from` is skipped and kept; a zero return keeps its place. */
    reset_waiters();
    for (int i = 0; i < 4; i++)
        b_queue(&w[i]);
    answer[1] = 0;
    offer_buffers(&w[0], 0);                 /* w0 skipped, w1 says no, w2, w3 woken */
    { int want[] = { 1, 2, 3 }; CHECK(logged(want, 3)); }
    CHECK(b_is_queued(&w[0]) && b_is_queued(&w[1]) && !b_is_queued(&w[2]));
    nlog = 0;
    b_queue(&w[2]);
    answer[1] = 1;
    offer_buffers(NULL, 0);                  /* order kept: 0, 1, then 2 */
    { int want[] = { 0, 1, 2 }; CHECK(logged(want, 3)); }

    /* Re-entrant callback: allocate, queue, dequeue, offer, dequeue itself. */
    reset_waiters();
    buffer_wait_init(&w[0], &w[0], reentrant_cb);
    reent_buf = BUF_NULL;
    b_queue(&w[0]);
    b_queue(&w[1]);
    offer_buffers(NULL, 0);
    CHECK_EQ(reent_calls, 1);
    /* Inside: w1 was dequeued, w2 queued then woken by the nested offer. */
    { int want[] = { 2 }; CHECK(logged(want, 1)); }
    CHECK(!b_is_queued(&w[0]) && !b_is_queued(&w[1]) && !b_is_queued(&w[2]));
    CHECK(reent_buf.size == BUFSIZE);
    b_free(&reent_buf);

    /* Dequeue from another thread waits for the running callback. */
    reset_waiters();
    buffer_wait_init(&w[0], &w[0], slow_cb);
    b_queue(&w[0]);
    CHECK(pthread_create(&th, NULL, offerer, NULL) == 0);
    pthread_mutex_lock(&mx);
    while (!cb_running)
        pthread_cond_wait(&cv, &mx);
    pthread_mutex_unlock(&mx);
    atomic_store(&dequeue_called, 1);
    b_dequeue(&w[0]);
    CHECK_EQ(atomic_load(&cb_finished), 1);  /* it returned before we did */
    CHECK(!b_is_queued(&w[0]));              /* and its 0 did not keep it */
    CHECK(pthread_join(th, NULL) == 0);

    /* Queued again while its callback runs on another thread: the
     * callback's non-zero return must not undo that queueing. */
    reset_waiters();
    buffer_wait_init(&w[0], &w[0], requeue_cb);
    b_queue(&w[0]);
    b_queue(&w[1]);
    CHECK(pthread_create(&th, NULL, offerer, NULL) == 0);
    while (!atomic_load(&requeue_running))
        sched_yield();                      /* the offerer never blocks before setting it */
    CHECK_EQ(b_queue(&w[0]), 1);
    atomic_store(&requeue_done, 1);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK(b_is_queued(&w[0]));              /* still waiting: not lost */
    /* Queued again by its own callback: to the tail, visited once per offer. */
    reset_waiters();
    buffer_wait_init(&w[2], &w[2], self_requeue_cb);
    b_queue(&w[2]);
    b_queue(&w[0]);
    offer_buffers(NULL, 0);
    { int want[] = { 0 }; CHECK(logged(want, 1)); }
    CHECK(b_is_queued(&w[2]) && !b_is_queued(&w[0]));
    b_dequeue(&w[2]);
    CHECK(!b_is_queued(&w[2]));

    /* Classes: the most critical first, FIFO within; the refusal rule. */
    reset_waiters();
    b_queue_crit(DB_MUX_RX, &w[0]);
    b_queue_crit(DB_PERMANENT, &w[1]);
    b_queue_crit(DB_CHANNEL, &w[2]);
    b_queue_crit(DB_PERMANENT, &w[3]);
    b_queue(&w[4]);                          /* DB_CHANNEL */
    x = BUF_NULL;
    CHECK(b_alloc_crit(&x, DB_MUX_TX) == NULL);       /* DB_PERMANENT waiters */
    CHECK(b_alloc_crit(&x, DB_PERMANENT) == NULL);
    CHECK(b_alloc_crit(&x, DB_PERMANENT | DB_F_NOQUEUE) == &x);
    b_free(&x);
    CHECK(b_alloc_crit(&x, 5) == NULL);                /* unknown class */
    CHECK(b_alloc_crit(&x, DB_CHANNEL | 0x200) == NULL); /* unknown flag */
    CHECK(b_alloc_crit(NULL, DB_CHANNEL) == NULL);
    offer_buffers(NULL, 0);                  /* budget 5 */
    { int want[] = { 1, 3, 2, 4, 0 }; CHECK(logged(want, 5)); }
    reset_waiters();
    b_queue_crit(DB_CHANNEL, &w[0]);
    CHECK(b_alloc_crit(&x, DB_MUX_TX) == &x);          /* more critical: allowed */
    b_free(&x);
    CHECK(b_alloc_crit(&x, DB_CHANNEL) == NULL);
    CHECK(b_alloc_crit(&x, DB_SE_RX) == NULL);
    b_dequeue(&w[0]);

    /* Reserve tiers with 2 reserved of 6: MUX_RX 2, SE_RX 2, CHANNEL 1, MUX_TX 1, PERMANENT 0. */
    unsigned tiers[][2] = { { DB_MUX_RX, 4 }, { DB_SE_RX, 4 }, { DB_CHANNEL, 5 }, { DB_MUX_TX, 5 }, { DB_PERMANENT, 6 } };
    for (int t = 0; t < 5; t++) {
        n = 0;
        while (n < 10 && b_alloc_crit(&b[n], tiers[t][0]))
            n++;
        CHECK_EQ(n, tiers[t][1]);
        for (int i = 0; i < n; i++)
            b_free(&b[i]);
    }

    /* Without a limit the reserve is really allocated. */
    CHECK_EQ(dynbuf_init(BUFSIZE, 4, 0), 0);
    for (int i = 0; i < 10; i++) {
        CHECK(b_alloc_margin(&b[i], 4) == &b[i]);
        CHECK(pool_allocated(pool_head_buffer) - pool_used(pool_head_buffer) >= 4);
    }
    CHECK_EQ(pool_used(pool_head_buffer), 10);
    for (int i = 0; i < 10; i++)
        b_free(&b[i]);
    /* And every waiter can be offered one. */
    reset_waiters();
    for (int i = 0; i < NW; i++)
        b_queue(&w[i]);
    offer_buffers(NULL, 0);
    CHECK_EQ(nlog, NW);
    CHECK_EQ(pool_used(pool_head_buffer), 0);
    DONE("test_dynbuf_api");
}
