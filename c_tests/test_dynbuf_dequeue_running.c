/* b_dequeue's promise holds whatever the callback did to its own waiter.
 *
 * The header promises: once b_dequeue(bw) returns, no callback for bw runs
 * or is running, so bw may be freed; and offer_buffers skips a waiter whose
 * callback another thread is running. Both must stay true when the
 * callback itself dequeues (or dequeues and re-queues) its own waiter,
 * which callbacks are allowed to do.
 *
 * 1. Dequeued by its own callback, then by main. Thread O offers; the
 *    callback dequeues itself, then keeps running: it marks "in callback",
 *    tells main, and waits (at most 300 ms) for main's b_dequeue(bw) to
 *    return. Main's b_dequeue must wait for the callback to end, so when it
 *    returns the callback must no longer be running, and the callback must
 *    have seen its bounded wait run out rather than main coming back. A
 *    b_dequeue that returns early lets its caller free a waiter whose
 *    callback still uses it.
 * 2. Dequeued and re-queued by its own callback. While the callback is
 *    still inside (on thread O), a second thread offers. The waiter is
 *    queued again but its callback is still running: the second offer must
 *    skip it, not call the same callback a second time concurrently. The
 *    callback counts its concurrent entries; the most seen must be 1.
 * At the end every waiter is dequeued and no longer queued.
 * Synchronisation: mutexes, condition variables and joins; the only timed
 * waits bound the wait for something that must not happen. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "bufpool.h"
#include "harness.h"

#define BUFSIZE 1024
/* How long a callback waits for an event that a correct library prevents. */
#define MUST_NOT_HAPPEN_MS 300
/* How long main waits for an event that must happen (a hang guard only). */
#define MUST_HAPPEN_MS 5000

static pthread_mutex_t mx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static void deadline_in(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Waits under `mx` until *flag is set or `ms` pass; returns the flag. */
static int wait_flag(const int *flag, long ms)
{
    struct timespec ts;
    int rc = 0;
    deadline_in(&ts, ms);
    while (!*flag && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&cv, &mx, &ts);
    return *flag;
}

static void set_flag(int *flag)
{
    pthread_mutex_lock(&mx);
    *flag = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mx);
}

static void *offer_thread(void *arg)
{
    (void)arg;
    offer_buffers(NULL, 0);
    return NULL;
}

/* ---- 1: dequeued by its own callback, then by main -------------------- */

static struct buffer_wait w1;
static atomic_int in_cb1, calls1;
static int cb1_started, main_returned, cb1_saw_main_return;   /* under mx */

static int self_dequeue_cb(void *target)
{
    atomic_fetch_add(&calls1, 1);
    b_dequeue(target);                  /* its own waiter: allowed, does not wait */
    atomic_store(&in_cb1, 1);
    pthread_mutex_lock(&mx);
    cb1_started = 1;
    pthread_cond_broadcast(&cv);
    /* A correct b_dequeue in main cannot return while we are here. */
    cb1_saw_main_return = wait_flag(&main_returned, MUST_NOT_HAPPEN_MS);
    pthread_mutex_unlock(&mx);
    atomic_store(&in_cb1, 0);
    return 1;
}

static void test_self_dequeued_then_dequeued(void)
{
    pthread_t o;
    int started;

    buffer_wait_init(&w1, &w1, self_dequeue_cb);
    CHECK_EQ(b_queue(&w1), 1);
    CHECK(pthread_create(&o, NULL, offer_thread, NULL) == 0);

    pthread_mutex_lock(&mx);
    started = wait_flag(&cb1_started, MUST_HAPPEN_MS);
    pthread_mutex_unlock(&mx);
    CHECK(started);                     /* the offer called the callback */

    b_dequeue(&w1);
    /* The promise: after b_dequeue returns, no callback for w1 is running. */
    int still_running = atomic_load(&in_cb1);
    CHECK_EQ(still_running, 0);
    set_flag(&main_returned);
    CHECK(!b_is_queued(&w1));

    CHECK(pthread_join(o, NULL) == 0);
    pthread_mutex_lock(&mx);
    CHECK(!cb1_saw_main_return);        /* the callback ended before main returned */
    pthread_mutex_unlock(&mx);
    CHECK_EQ(atomic_load(&calls1), 1);
    CHECK(!b_is_queued(&w1));
}

/* ---- 2: dequeued and re-queued by its own callback --------------------- */

static struct buffer_wait w2;
static atomic_int inside2, max_inside2, calls2;
static int second_go, second_done;          /* under mx */

static void *second_offerer(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mx);
    while (!second_go)
        pthread_cond_wait(&cv, &mx);
    pthread_mutex_unlock(&mx);
    offer_buffers(NULL, 0);
    set_flag(&second_done);
    return NULL;
}

static int requeue_self_cb(void *target)
{
    int now = atomic_fetch_add(&inside2, 1) + 1;
    int seen = atomic_load(&max_inside2);
    while (now > seen && !atomic_compare_exchange_weak(&max_inside2, &seen, now))
        ;
    int first = atomic_fetch_add(&calls2, 1) == 0;

    b_dequeue(target);                  /* allowed from its own callback */
    b_queue(target);                    /* and queued again, while still inside */

    if (first) {
        /* Let another thread offer while we are still inside; wait for that
         * offer to return (bounded: a second entry would block nothing). */
        pthread_mutex_lock(&mx);
        second_go = 1;
        pthread_cond_broadcast(&cv);
        wait_flag(&second_done, MUST_NOT_HAPPEN_MS);
        pthread_mutex_unlock(&mx);
    }
    atomic_fetch_sub(&inside2, 1);
    return 1;
}

static void test_self_requeued_not_reentered(void)
{
    pthread_t o, t2;

    buffer_wait_init(&w2, &w2, requeue_self_cb);
    CHECK_EQ(b_queue(&w2), 1);
    CHECK(pthread_create(&t2, NULL, second_offerer, NULL) == 0);
    CHECK(pthread_create(&o, NULL, offer_thread, NULL) == 0);
    CHECK(pthread_join(o, NULL) == 0);
    set_flag(&second_go);               /* in case the callback never ran */
    CHECK(pthread_join(t2, NULL) == 0);

    CHECK(atomic_load(&calls2) >= 1);
    /* Never two entries of the same waiter's callback at once. */
    CHECK_EQ(atomic_load(&max_inside2), 1);
    CHECK_EQ(atomic_load(&inside2), 0);

    b_dequeue(&w2);
    CHECK(!b_is_queued(&w2));
}

int main(void)
{
    /* Room for many wake-ups: limit 10, reserve 2, nothing held. */
    CHECK_EQ(dynbuf_init(BUFSIZE, 2, 10), 0);

    test_self_dequeued_then_dequeued();
    test_self_requeued_not_reentered();

    b_dequeue(&w1);
    b_dequeue(&w2);
    CHECK(!b_is_queued(&w1) && !b_is_queued(&w2));
    CHECK_EQ(pool_used(pool_head_buffer), 0);
    DONE("test_dynbuf_dequeue_running");
}
