/* test_inline: the header's inline fast path (BUFPOOL_INLINE).
 *
 * 1. The cached case really runs inline: this program defines its own
 *    pool_alloc and pool_free, which count the calls that reach them and
 *    forward to the library's (dlsym RTLD_NEXT); after a warm-up, 20000
 *    pairs on one pool reach the library only for the maintenance ticks
 *    (fewer than 1 release in 16), and no allocation at all. With the
 *    fenced protocol (BUFPOOL_CACHE_SYNC=fence) every call must reach the
 *    library instead: the owner then fences, which only the library does.
 * 2. Objects move freely between the inline path and the library's calls
 *    (allocated by one, freed by the other), with the pool's counters right.
 * 3. The other side of the protocol against an inline owner: at a pool's
 *    limit of 16, two threads allocate up to 8 objects each, fill, check
 *    and free them (one inline, one through the library's calls), while a
 *    third drains the caches; allocations at the limit take objects from
 *    the other thread's cache, and `race-window=yield` has that search
 *    yield between reading a stack and taking from it. No object is ever
 *    held by two threads (each checks its pattern before freeing), none is
 *    lost (none in use at the end), and allocations succeed (the two hold
 *    at most 15 when one asks; one in 100 may fail, for an owner stopped
 *    inside its call for longer than the search waits). Bounded by counts
 *    (each thread runs its rounds), not by time. Breaking the inline
 *    path's foreign test made it fail (objects held twice).
 * 4. A destroyed pool's handle and a pool without a thread cache (nocache
 *    flag) go to the library, which handles them. */
#define BUFPOOL_INLINE 1
#include "bufpool.h"
#include "harness.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#ifndef BUFPOOL_INLINE_ACTIVE
int main(void)
{
    printf("test_inline: skipped (no inline fast path on this compiler or target, or under ThreadSanitizer)\n");
    DONE("test_inline");
}
#else

static void *(*real_alloc)(struct pool_head *);
static void (*real_free)(struct pool_head *, void *);
static atomic_ulong alloc_calls, free_calls;

void *(pool_alloc)(struct pool_head *pool)
{
    atomic_fetch_add_explicit(&alloc_calls, 1, memory_order_relaxed);
    return real_alloc(pool);
}

void (pool_free)(struct pool_head *pool, void *ptr)
{
    atomic_fetch_add_explicit(&free_calls, 1, memory_order_relaxed);
    real_free(pool, ptr);
}

#define PAIRS 20000

static void inline_is_inline(void)
{
    struct pool_head *p = create_pool("inline-count", 128, 0);
    CHECK(p != NULL);
    if (p == NULL)
        return;
    /* Warm-up: the first calls make the thread's cache and fill its stack. */
    for (int i = 0; i < 64; i++) {
        void *o = pool_alloc(p);
        CHECK(o != NULL);
        pool_free(p, o);
    }
    atomic_store(&alloc_calls, 0);
    atomic_store(&free_calls, 0);
    void *first = pool_alloc(p);
    pool_free(p, first);
    int same = 1;
    for (int i = 0; i < PAIRS; i++) {
        void *o = pool_alloc(p);
        same &= (o == first);
        memset(o, i & 0xff, 128);
        pool_free(p, o);
    }
    unsigned long a = atomic_load(&alloc_calls), f = atomic_load(&free_calls);
    const char *sync = getenv("BUFPOOL_CACHE_SYNC");
    if (getenv("BUFPOOL_DEBUG") != NULL) {
        printf("inline: BUFPOOL_DEBUG set (pools without a thread cache): %lu allocations, %lu releases reached the library\n", a, f);
        CHECK_EQ(a, PAIRS + 1);
    } else if (sync != NULL && strcmp(sync, "fence") == 0) {
        printf("inline: fenced protocol: %lu of %d allocations, %lu releases reached the library\n", a, PAIRS + 1, f);
        CHECK_EQ(a, PAIRS + 1);
        CHECK_EQ(f, PAIRS + 1);
    } else {
        printf("inline: %d pairs: %lu allocations and %lu releases reached the library\n", PAIRS + 1, a, f);
        CHECK_EQ(a, 0);
        CHECK(f * 16 < PAIRS);
        CHECK(same); /* one object, last in first out, all along */
    }
    CHECK_EQ(pool_used(p), 0);
    pool_destroy(p);
}

static void inline_and_calls_mix(void)
{
    struct pool_head *p = create_pool("inline-mix", 64, 0);
    void *o[100];
    CHECK(p != NULL);
    if (p == NULL)
        return;
    for (int i = 0; i < 100; i++) {
        o[i] = (i % 2) ? pool_alloc(p) : (real_alloc)(p);
        CHECK(o[i] != NULL);
        fill(o[i], 64, (unsigned)i);
    }
    CHECK_EQ(pool_used(p), 100);
    for (int i = 0; i < 100; i++) {
        CHECK(intact(o[i], 64, (unsigned)i));
        if (i % 3)
            pool_free(p, o[i]);
        else
            (real_free)(p, o[i]);
    }
    CHECK_EQ(pool_used(p), 0);
    /* Again, the other way round: what the library's calls cached comes out
     * of the inline path, and the reverse. */
    for (int i = 0; i < 100; i++) {
        o[i] = (i % 2) ? (real_alloc)(p) : pool_alloc(p);
        CHECK(o[i] != NULL);
        fill(o[i], 64, (unsigned)i + 7);
    }
    for (int i = 0; i < 100; i++) {
        CHECK(intact(o[i], 64, (unsigned)i + 7));
        if (i % 2)
            pool_free(p, o[i]);
        else
            (real_free)(p, o[i]);
    }
    CHECK_EQ(pool_used(p), 0);
    CHECK(pool_allocated(p) >= 1);
    pool_destroy(p);
}

#define LIMIT   16
#define HOLD    8
#define ROUNDS  20000
#define OBJ     256

static struct pool_head *shared;
static atomic_int workers_left;
static atomic_ulong lost, doubled, asked;

struct worker { int inline_path; unsigned id; };

static void *worker(void *arg)
{
    const struct worker *w = arg;
    void *held[HOLD];
    for (unsigned r = 0; r < ROUNDS; r++) {
        int k = 1 + (int)((r * 2654435761u + w->id) % HOLD);
        atomic_fetch_add_explicit(&asked, (unsigned long)k, memory_order_relaxed);
        for (int i = 0; i < k; i++) {
            held[i] = w->inline_path ? pool_alloc(shared) : (real_alloc)(shared);
            if (held[i] == NULL) {
                atomic_fetch_add(&lost, 1);
                k = i;
                break;
            }
            fill(held[i], OBJ, w->id * 1000003u + r * 31u + (unsigned)i);
        }
        for (int i = 0; i < k; i++) {
            if (!intact(held[i], OBJ, w->id * 1000003u + r * 31u + (unsigned)i))
                atomic_fetch_add(&doubled, 1);
            if (w->inline_path)
                pool_free(shared, held[i]);
            else
                (real_free)(shared, held[i]);
        }
    }
    atomic_fetch_sub(&workers_left, 1);
    return NULL;
}

/* The other side of the protocol, as long as the workers run: drains of
 * every cache, counters, and at least 100 rounds of them. */
static void *drainer(void *arg)
{
    unsigned long *rounds = arg;
    while (atomic_load(&workers_left) > 0 || *rounds < 100) {
        pool_flush(shared);
        pool_gc(NULL);
        (void)pool_used(shared);
        (void)pool_allocated(shared);
        ++*rounds;
    }
    return NULL;
}

static void inline_against_the_other_side(void)
{
    shared = create_pool("inline-limit", OBJ, 0);
    CHECK(shared != NULL);
    if (shared == NULL)
        return;
    pool_set_limit(shared, LIMIT);
    CHECK(pool_set_debugging("race-window=yield") == 0);
    struct worker w[2] = { { 1, 1 }, { 0, 2 } };
    pthread_t t[3];
    unsigned long drains = 0;
    atomic_store(&workers_left, 2);
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&t[i], NULL, worker, &w[i]) == 0);
    CHECK(pthread_create(&t[2], NULL, drainer, &drains) == 0);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    CHECK(pool_set_debugging("race-window=0") == 0);
    printf("inline: 2 threads x %d rounds at a limit of %d (one inline), %lu drains: %lu of %lu allocations failed, %lu objects held twice\n",
           ROUNDS, LIMIT, drains, atomic_load(&lost), atomic_load(&asked), atomic_load(&doubled));
    CHECK(atomic_load(&lost) * 100 <= atomic_load(&asked));
    CHECK_EQ(atomic_load(&doubled), 0);
    CHECK_EQ(pool_used(shared), 0);
    CHECK(pool_allocated(shared) <= LIMIT);
    pool_destroy(shared);
}

static void inline_edges(void)
{
    struct pool_head *p = create_pool("inline-nocache", 64, POOL_F_NO_LOCAL_CACHE);
    CHECK(p != NULL);
    if (p != NULL) {
        atomic_store(&alloc_calls, 0);
        atomic_store(&free_calls, 0);
        void *o = pool_alloc(p);
        CHECK(o != NULL);
        pool_free(p, o);
        CHECK_EQ(atomic_load(&alloc_calls), 1); /* no thread cache: the library's */
        CHECK_EQ(atomic_load(&free_calls), 1);
        CHECK_EQ(pool_used(p), 0);
        pool_destroy(p);
    }
    CHECK(pool_alloc(NULL) == NULL);
    pool_free(NULL, NULL);
    if (getenv("BUFPOOL_DEBUG") != NULL)
        return; /* a debug mode aborts on a destroyed pool's handle */
    struct pool_head *q = create_pool("inline-stale", 48, 0);
    CHECK(q != NULL);
    if (q != NULL) {
        void *o = pool_alloc(q);
        pool_free(q, o);
        CHECK(pool_destroy(q) == NULL);
        atomic_store(&alloc_calls, 0);
        CHECK(pool_alloc(q) == NULL); /* a destroyed pool's handle */
        CHECK_EQ(atomic_load(&alloc_calls), 1);
    }
}

int main(void)
{
    real_alloc = (void *(*)(struct pool_head *))dlsym(RTLD_NEXT, "pool_alloc");
    real_free = (void (*)(struct pool_head *, void *))dlsym(RTLD_NEXT, "pool_free");
    CHECK(real_alloc != NULL && real_free != NULL);
    if (real_alloc == NULL || real_free == NULL)
        DONE("test_inline");
    CHECK_EQ(BUFPOOL_INLINE_ABI, 1);
    inline_is_inline();
    inline_and_calls_mix();
    inline_against_the_other_side();
    inline_edges();
    DONE("test_inline");
}
#endif
