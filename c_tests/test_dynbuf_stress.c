/* Many threads allocate, free, queue, dequeue and offer buffers at once.
 *
 * Each thread owns a few entities (heap objects with a buffer and a
 * buffer_wait). A failed allocation queues the entity (plain or by class),
 * then retries as the header advises. Callbacks run on whatever thread
 * offers; they mark the entity woken and, now and then, allocate and free
 * a buffer of their own and make a nested offer (re-entrancy). Owners also
 * dequeue and destroy entities (free() the memory, malloc a new one), so a
 * callback after b_dequeue returned is a use-after-free that TSan/ASan
 * report, and is counted by the `armed` protocol below in any build.
 *
 * `armed` is set by the owner before each queueing and consumed exactly
 * once: by the callback (a wake-up) or by the owner after b_dequeue. A
 * callback finding it clear ran after dequeue, or twice for one queueing.
 * At the end: every queueing was consumed exactly once, no waiter is lost
 * (after everything is freed, offers wake every waiter left), no buffer is
 * held, and the pool stayed within its limit. */
#include "bufpool.h"
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define NTHREADS  4
#define NENT      8
#define ROUNDS    100000
#define LIMIT     6
#define RESERVED  2

struct entity {
    atomic_int armed;      /* a queueing not yet answered */
    atomic_int magic;      /* ALIVE while the object exists */
    atomic_int cb_active;  /* callbacks running on it */
    int owner;
    int waiting;           /* owner's view: queued and not yet seen woken */
    unsigned crit;
    struct buffer buf;
    struct buffer_wait bw;
};

#define ALIVE 0x5eed

static atomic_ulong queueings, cb_wakes, owner_consumed, violations, cb_allocs, nested_offers;
static struct entity *finals[NTHREADS][NENT];
static _Thread_local int cb_depth;
static pthread_barrier_t start;

static int entity_wakeup(void *target)
{
    struct entity *e = target;

    /* An atomic load first: TSan orders calloc's zeroing before it through
     * entity_new's store (TSan checks a read-modify-write before acquiring). */
    if (atomic_load(&e->magic) != ALIVE) {
        atomic_fetch_add(&violations, 1);
        return 1;
    }
    atomic_fetch_add(&e->cb_active, 1);
    if (!atomic_exchange(&e->armed, 0)) {
        atomic_fetch_add(&violations, 1);
        atomic_fetch_sub(&e->cb_active, 1);
        return 1;
    }
    atomic_fetch_add(&cb_wakes, 1);
    /* Widen the window, then look again: the owner may not free the entity
     * before b_dequeue returned, and that waits for us. */
    sched_yield();
    if (atomic_load(&e->magic) != ALIVE)
        atomic_fetch_add(&violations, 1);
    /* The last access to the entity: the owner's check after b_dequeue
     * reads it (and it orders this callback before free() for TSan). */
    atomic_fetch_sub(&e->cb_active, 1);
    if (cb_depth == 0) {
        /* Re-entrancy: allocate, free and offer from inside a callback. */
        struct buffer tmp = BUF_NULL;
        cb_depth++;
        if (b_alloc(&tmp)) {
            atomic_fetch_add(&cb_allocs, 1);
            b_free(&tmp);
            offer_buffers(NULL, 0);
            atomic_fetch_add(&nested_offers, 1);
        }
        cb_depth--;
    }
    return 1;
}

static struct entity *entity_new(int owner, unsigned crit)
{
    struct entity *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    /* Atomic stores, not atomic_init: the callback thread's first load of
     * `magic` reads this store, which orders calloc's zeroing before it for
     * TSan (the library's own locking is invisible to it: not instrumented). */
    atomic_store(&e->armed, 0);
    atomic_store(&e->cb_active, 0);
    atomic_store(&e->magic, ALIVE);
    e->owner = owner;
    e->crit = crit;
    e->buf = BUF_NULL;
    buffer_wait_init(&e->bw, e, entity_wakeup);
    return e;
}

/* Owner side: after b_dequeue, answer the queueing if no callback did. */
static void entity_dequeue(struct entity *e)
{
    b_dequeue(&e->bw);
    if (e->waiting && atomic_exchange(&e->armed, 0))
        atomic_fetch_add(&owner_consumed, 1);
    e->waiting = 0;
}

static void entity_destroy(struct entity *e)
{
    entity_dequeue(e);
    if (atomic_load(&e->cb_active) != 0)    /* a callback still running */
        atomic_fetch_add(&violations, 1);
    b_free(&e->buf);
    atomic_store(&e->magic, 0);
    free(e);
}

static int entity_alloc(struct entity *e, int by_class)
{
    return by_class ? b_alloc_crit(&e->buf, e->crit) != NULL : b_alloc_margin(&e->buf, (int)(e->crit % 3)) != NULL;
}

/* Try to get a buffer; on failure queue, then retry once (no lost wake-up). */
static void entity_want(struct entity *e, int by_class)
{
    if (e->waiting) {
        if (atomic_load(&e->armed))
            return;                         /* not woken yet */
        e->waiting = 0;                     /* woken: the callback answered */
    }
    if (entity_alloc(e, by_class))
        return;
    atomic_store(&e->armed, 1);
    e->waiting = 1;
    atomic_fetch_add(&queueings, 1);
    int q = by_class ? b_queue_crit(e->crit, &e->bw) : b_queue(&e->bw);
    if (q != 1)
        atomic_fetch_add(&violations, 1);
    int ok = by_class ? b_alloc_crit(&e->buf, e->crit | DB_F_NOQUEUE) != NULL
                      : b_alloc_margin(&e->buf, (int)(e->crit % 3)) != NULL;
    if (ok)
        entity_dequeue(e);
}

static void *worker(void *arg)
{
    int id = (int)(long)arg;
    unsigned long rng = 0x9e3779b97f4a7c15UL * (unsigned long)(id + 1);
    struct entity *ent[NENT];

    for (int i = 0; i < NENT; i++)
        ent[i] = entity_new(id, (unsigned)(i % (DB_PERMANENT + 1)));
    pthread_barrier_wait(&start);
    for (int r = 0; r < ROUNDS; r++) {
        rng = rng * 6364136223846793005UL + 1442695040888963407UL;
        unsigned x = (unsigned)(rng >> 33);
        struct entity *e = ent[x % NENT];
        switch ((x >> 8) % 16) {
        default:
            entity_want(e, (x >> 12) & 1);
            break;
        case 8: case 9:
            if (e->buf.size) {
                b_free(&e->buf);
                offer_buffers(e, 0);
            }
            break;
        case 10:
            entity_dequeue(e);
            break;
        case 11: case 12:
            offer_buffers(NULL, (x >> 16) % 3);
            break;
        case 13:
            ent[x % NENT] = entity_new(id, e->crit);
            entity_destroy(e);
            break;
        }
    }
    /* Let go of every buffer; keep the waiters queued for the final check. */
    for (int i = 0; i < NENT; i++) {
        b_free(&ent[i]->buf);
        offer_buffers(ent[i], 0);
        finals[id][i] = ent[i];
    }
    return NULL;
}

int main(void)
{
    pthread_t th[NTHREADS];

    CHECK_EQ(dynbuf_init(4096, RESERVED, LIMIT), 0);
    pthread_barrier_init(&start, NULL, NTHREADS);
    for (long i = 0; i < NTHREADS; i++)
        CHECK(pthread_create(&th[i], NULL, worker, (void *)i) == 0);
    for (int i = 0; i < NTHREADS; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    CHECK_EQ(pool_used(pool_head_buffer), 0);
    CHECK(pool_allocated(pool_head_buffer) <= LIMIT);

    /* The workers are gone but their waiters may still be queued: with
     * every buffer free, each offer wakes up to LIMIT - RESERVED/2 of them,
     * so a few offers must wake them all; a lost waiter stays armed. */
    for (int k = 0; k < NTHREADS * NENT; k++)
        offer_buffers(NULL, 0);
    unsigned long queued_left = 0, armed_left = 0;
    for (int t = 0; t < NTHREADS; t++)
        for (int i = 0; i < NENT; i++) {
            queued_left += b_is_queued(&finals[t][i]->bw);
            armed_left += atomic_load(&finals[t][i]->armed);
        }
    CHECK_EQ(queued_left, 0);
    CHECK_EQ(armed_left, 0);
    for (int t = 0; t < NTHREADS; t++)
        for (int i = 0; i < NENT; i++) {
            finals[t][i]->waiting = 0;      /* answered above */
            entity_destroy(finals[t][i]);
        }
    CHECK_EQ(atomic_load(&violations), 0);
    CHECK_EQ(atomic_load(&cb_wakes) + atomic_load(&owner_consumed), atomic_load(&queueings));
    CHECK(atomic_load(&cb_wakes) > 0);
    CHECK(atomic_load(&owner_consumed) > 0);
    CHECK(atomic_load(&cb_allocs) > 0);
    CHECK_EQ(pool_used(pool_head_buffer), 0);
    printf("%d threads x %d rounds: %lu queueings = %lu callback wake-ups + %lu owner dequeues; "
           "%lu allocations and offers from callbacks; %lu violations\n",
           NTHREADS, ROUNDS, atomic_load(&queueings), atomic_load(&cb_wakes), atomic_load(&owner_consumed),
           atomic_load(&cb_allocs), atomic_load(&violations));
    DONE("test_dynbuf_stress");
}
