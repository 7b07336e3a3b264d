/* Single-threaded behaviour of the pool core (the pool part of the C contract): creation
 * arguments, size rounding, distinct objects whose contents survive,
 * zeroing of reused objects, alignment, destroy while in use, merging,
 * the nocache pair, flush, gc with minavail, the cache budget, crowding,
 * counters and totals, and NULL arguments.
 *
 * Every test destroys its pools, so that the totals and this thread's cache
 * budget start clean for the next one. */
#include <stdint.h>
#include <string.h>

#include <time.h>

#include "bufpool.h"
#include "harness.h"

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)*(void *const *)a, y = (uintptr_t)*(void *const *)b;
    return x < y ? -1 : x > y;
}

/* Sorts `v` and checks that objects of `size` bytes at these addresses
 * neither coincide nor overlap. */
static int disjoint(void **v, size_t n, size_t size)
{
    qsort(v, n, sizeof(*v), cmp_ptr);
    for (size_t i = 1; i < n; i++)
        if ((uintptr_t)v[i - 1] + size > (uintptr_t)v[i])
            return 0;
    return 1;
}

static unsigned long long rng_state = 0x9e3779b97f4a7c15ull;
static unsigned rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state >> 16);
}

static void test_create_arguments(void)
{
    struct pool_head *p;

    CHECK(create_pool("zero", 0, 0) == NULL);
    CHECK(create_pool("huge", 0x80000001u, 0) == NULL);
    CHECK(create_pool("huge", 0xffffffffu, 0) == NULL);
    CHECK(create_pool("flags", 64, 0x200) == NULL);
    CHECK(create_pool("flags", 64, 0x80000000u) == NULL);
    CHECK(create_pool("two", 64, POOL_F_SHARED_XCHG | POOL_F_SHARED_LOCKED) == NULL);
    CHECK(create_pool("two", 64, POOL_F_SHARED_DWCAS | POOL_F_SHARED_NONE) == NULL);
    CHECK(create_aligned_pool("al3", 64, 3, 0) == NULL);
    CHECK(create_aligned_pool("al48", 64, 48, 0) == NULL);
    CHECK(create_aligned_pool("al2M", 64, 2u << 20, 0) == NULL);
    CHECK(create_aligned_pool("alneg", 64, 0x80000000u, 0) == NULL);
    CHECK(create_aligned_pool("alsize0", 0, 64, 0) == NULL);

    /* The largest size is accepted (nothing is allocated until pool_alloc). */
    p = create_pool("max", 0x80000000u, 0);
    CHECK(p != NULL);
    CHECK(pool_destroy(p) == NULL);
    p = create_pool("max-1", 0x7fffffffu, 0);
    CHECK(p != NULL);
    CHECK(pool_destroy(p) == NULL);

    /* A NULL name, every single algorithm, the other flags and the largest alignment. */
    static const unsigned ok_flags[] = {
        0, MEM_F_EXACT, POOL_F_SHARED_XCHG, POOL_F_SHARED_LOCKED, POOL_F_SHARED_DWCAS,
        POOL_F_SHARED_NONE, POOL_F_NO_LOCAL_CACHE, POOL_F_SHARED_NONE | POOL_F_NO_LOCAL_CACHE | MEM_F_EXACT,
    };
    for (size_t i = 0; i < sizeof(ok_flags) / sizeof(ok_flags[0]); i++) {
        p = create_pool(NULL, 24, ok_flags[i]);
        CHECK(p != NULL);
        void *o = pool_alloc(p);
        CHECK(o != NULL);
        if (o)
            fill(o, 24, 1);
        pool_free(p, o);
        CHECK(pool_destroy(p) == NULL);
    }
    static const unsigned ok_align[] = { 0, 1, 2, 8, 16, 32, 1u << 20 };
    for (size_t i = 0; i < sizeof(ok_align) / sizeof(ok_align[0]); i++) {
        p = create_aligned_pool("al", 40, ok_align[i], 0);
        CHECK(p != NULL);
        void *o = pool_alloc(p);
        CHECK(o != NULL);
        if (ok_align[i])
            CHECK((uintptr_t)o % ok_align[i] == 0);
        pool_free(p, o);
        CHECK(pool_destroy(p) == NULL);
    }
}

/* Sizes round up to 16 unless MEM_F_EXACT: visible in the byte totals. */
static void test_rounding_and_totals(void)
{
    unsigned long long a0 = pool_total_allocated(), u0 = pool_total_used();
    struct pool_head *r = create_pool("round", 17, 0);
    struct pool_head *e = create_pool("exact", 17, MEM_F_EXACT);
    void *ro[10], *eo[10];

    CHECK(r != NULL && e != NULL);
    CHECK(r != e);
    CHECK_EQ(pool_total_allocated(), a0);
    for (int i = 0; i < 10; i++) {
        ro[i] = pool_alloc(r);
        eo[i] = pool_alloc(e);
        CHECK(ro[i] != NULL && eo[i] != NULL);
        fill(ro[i], 17, i);
        fill(eo[i], 17, 100 + i);
    }
    CHECK_EQ(pool_total_allocated(), a0 + 10 * 32 + 10 * 17);
    CHECK_EQ(pool_total_used(), u0 + 10 * 32 + 10 * 17);
    for (int i = 0; i < 4; i++) {
        pool_free(r, ro[i]);
        pool_free(e, eo[i]);
    }
    /* Freed objects stay allocated (idle), but are no longer used. */
    CHECK_EQ(pool_total_allocated(), a0 + 10 * 32 + 10 * 17);
    CHECK_EQ(pool_total_used(), u0 + 6 * 32 + 6 * 17);
    CHECK_EQ(pool_used(r), 6);
    CHECK_EQ(pool_used(e), 6);
    CHECK_EQ(pool_allocated(r), 10);
    for (int i = 4; i < 10; i++) {
        CHECK(intact(ro[i], 17, i));
        CHECK(intact(eo[i], 17, 100 + i));
        pool_free(r, ro[i]);
        pool_free(e, eo[i]);
    }
    CHECK_EQ(pool_total_used(), u0);
    CHECK(pool_destroy(r) == NULL);
    CHECK(pool_destroy(e) == NULL);
    CHECK_EQ(pool_total_allocated(), a0);
    CHECK_EQ(pool_total_used(), u0);
}

#define NOBJ 1000

/* Many objects at once are distinct and disjoint, and their contents
 * survive any number of allocations and frees of the others. */
static void run_contents(unsigned size, unsigned flags)
{
    static void *slot[NOBJ];
    static unsigned seed[NOBJ];
    static void *sorted[NOBJ];
    struct pool_head *p = create_pool("contents", size, flags);
    size_t held = 0, bad = 0, nulls = 0;

    CHECK(p != NULL);
    if (!p)
        return;
    for (int i = 0; i < NOBJ; i++) {
        slot[i] = pool_alloc(p);
        nulls += slot[i] == NULL;
        seed[i] = rnd();
        if (slot[i])
            fill(slot[i], size, seed[i]);
        sorted[i] = slot[i];
    }
    CHECK_EQ(nulls, 0);
    CHECK(disjoint(sorted, NOBJ, size));
    held = NOBJ;
    CHECK_EQ(pool_used(p), NOBJ);
    CHECK_EQ(pool_allocated(p), NOBJ);

    for (int step = 0; step < 50000; step++) {
        int i = rnd() % NOBJ;
        if (slot[i]) {
            bad += !intact(slot[i], size, seed[i]);
            pool_free(p, slot[i]);
            slot[i] = NULL;
            held--;
        } else {
            slot[i] = (rnd() & 1) ? pool_alloc(p) : pool_zalloc(p);
            nulls += slot[i] == NULL;
            seed[i] = rnd();
            if (slot[i]) {
                fill(slot[i], size, seed[i]);
                held++;
            }
        }
        if (step % 5000 == 0) {
            CHECK_EQ(pool_used(p), held);
            CHECK(pool_allocated(p) >= held);
        }
    }
    CHECK_EQ(nulls, 0);
    CHECK_EQ(bad, 0);
    CHECK_EQ(pool_used(p), held);
    size_t n = 0;
    for (int i = 0; i < NOBJ; i++)
        if (slot[i])
            sorted[n++] = slot[i];
    CHECK_EQ(n, held);
    CHECK(disjoint(sorted, n, size));
    for (int i = 0; i < NOBJ; i++) {
        if (slot[i]) {
            bad += !intact(slot[i], size, seed[i]);
            pool_free(p, slot[i]);
        }
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(pool_used(p), 0);
    CHECK_EQ(pool_failed(p), 0);
    CHECK(pool_destroy(p) == NULL);
}

static void test_contents(void)
{
    run_contents(48, 0);
    run_contents(13, MEM_F_EXACT);
    run_contents(1000, POOL_F_NO_LOCAL_CACHE);
    run_contents(64, POOL_F_SHARED_NONE);
    run_contents(64, POOL_F_SHARED_NONE | POOL_F_NO_LOCAL_CACHE);
}

/* pool_zalloc zeroes objects that come back dirty. A limit equal to the
 * number of objects forces every zalloc to reuse one of the dirty objects. */
static void run_zalloc_reuse(unsigned size, unsigned flags)
{
    enum { N = 64 };
    void *dirty[N], *z[N];
    struct pool_head *p = create_pool("zero", size, flags);
    size_t nonzero = 0, fresh = 0;

    CHECK(p != NULL);
    if (!p)
        return;
    pool_set_limit(p, N);
    pool_set_minavail(p, N); /* keep idle objects even without a thread cache */
    for (int i = 0; i < N; i++) {
        dirty[i] = pool_alloc(p);
        CHECK(dirty[i] != NULL);
        memset(dirty[i], 0xA5, size);
    }
    for (int i = 0; i < N; i++)
        pool_free(p, dirty[i]);
    for (int i = 0; i < N; i++) {
        z[i] = pool_zalloc(p);
        CHECK(z[i] != NULL);
        if (!z[i])
            continue;
        nonzero += !all_bytes(z[i], size, 0);
        int found = 0;
        for (int j = 0; j < N; j++)
            found |= z[i] == dirty[j];
        fresh += !found;
        memset(z[i], 0x5A, size);
    }
    CHECK_EQ(nonzero, 0);
    CHECK_EQ(fresh, 0);
    CHECK_EQ(pool_allocated(p), N);
    CHECK_EQ(pool_failed(p), 0);
    /* The very same object, dirtied and freed, comes back zeroed. */
    pool_free(p, z[0]);
    void *again = pool_zalloc(p);
    CHECK(again == z[0]);
    CHECK(again && all_bytes(again, size, 0));
    pool_free(p, again);
    for (int i = 1; i < N; i++)
        pool_free(p, z[i]);
    CHECK(pool_destroy(p) == NULL);
}

static void test_zalloc(void)
{
    run_zalloc_reuse(64, 0);
    run_zalloc_reuse(4001, MEM_F_EXACT);
    run_zalloc_reuse(100, POOL_F_NO_LOCAL_CACHE);
    run_zalloc_reuse(24, POOL_F_SHARED_NONE);
}

static void run_alignment(unsigned size, unsigned align, unsigned flags)
{
    enum { N = 200 };
    void *o[N];
    size_t misaligned = 0, nulls = 0;
    struct pool_head *p = create_aligned_pool("aligned", size, align, flags);

    CHECK(p != NULL);
    if (!p)
        return;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            o[i] = (i % 3 == 0) ? pool_zalloc(p) : (i % 3 == 1) ? pool_alloc(p) : pool_alloc_nocache(p);
            nulls += o[i] == NULL;
            misaligned += (uintptr_t)o[i] % align != 0;
            if (o[i])
                fill(o[i], size, i);
        }
        for (int i = 0; i < N; i++) {
            CHECK(o[i] && intact(o[i], size, i));
            if (i % 2)
                pool_free(p, o[i]);
            else
                pool_free_nocache(p, o[i]);
        }
    }
    CHECK_EQ(nulls, 0);
    CHECK_EQ(misaligned, 0);
    CHECK_EQ(pool_used(p), 0);
    CHECK(pool_destroy(p) == NULL);
}

static void test_alignment(void)
{
    run_alignment(100, 64, 0);
    run_alignment(64, 64, POOL_F_NO_LOCAL_CACHE);
    run_alignment(5000, 4096, 0);
    run_alignment(24, 4096, MEM_F_EXACT | POOL_F_SHARED_NONE);
}

static void test_destroy_in_use(void)
{
    struct pool_head *p = create_pool("busy", 80, 0);
    void *a, *b, *c;
    int not_a_pool;

    CHECK(p != NULL);
    a = pool_alloc(p);
    b = pool_alloc(p);
    CHECK(a && b);
    fill(a, 80, 1);
    fill(b, 80, 2);
    CHECK(pool_destroy(p) == p);
    /* Untouched: counters, contents, and still usable. */
    CHECK_EQ(pool_used(p), 2);
    CHECK_EQ(pool_allocated(p), 2);
    CHECK(intact(a, 80, 1) && intact(b, 80, 2));
    c = pool_alloc(p);
    CHECK(c != NULL);
    pool_free(p, a);
    CHECK(pool_destroy(p) == p);
    pool_free(p, b);
    CHECK(pool_destroy(p) == p);
    pool_free(p, c);
    /* Idle objects (in this thread's cache) do not keep the pool alive. */
    CHECK_EQ(pool_used(p), 0);
    CHECK(pool_allocated(p) > 0);
    CHECK(pool_destroy(p) == NULL);
    /* Destroyed: it is not a live pool any more, nor is a random address. */
    CHECK(pool_destroy(p) == NULL);
    CHECK(pool_destroy((struct pool_head *)&not_a_pool) == NULL);
    CHECK(pool_destroy(NULL) == NULL);

    /* Objects taken with the nocache pair also hold the pool. */
    p = create_pool("busy2", 32, POOL_F_NO_LOCAL_CACHE);
    a = pool_alloc_nocache(p);
    CHECK(a != NULL);
    CHECK(pool_destroy(p) == p);
    pool_free_nocache(p, a);
    CHECK_EQ(pool_allocated(p), 0);
    CHECK(pool_destroy(p) == NULL);
}

static void test_merging(void)
{
    struct pool_head *a = create_pool("merge-a", 100, MEM_F_SHARED);
    struct pool_head *b = create_pool("merge-b", 112, MEM_F_SHARED);   /* same rounded size */
    struct pool_head *c = create_pool("merge-c", 100, 0);              /* not shareable */
    struct pool_head *d = create_pool("merge-d", 100, MEM_F_SHARED | MEM_F_EXACT); /* other flags, size */
    struct pool_head *e = create_aligned_pool("merge-e", 112, 64, MEM_F_SHARED);   /* other alignment */
    struct pool_head *f = create_aligned_pool("merge-f", 112, 64, MEM_F_SHARED);
    struct pool_head *g = create_pool("merge-g", 128, MEM_F_SHARED);   /* other size */
    struct pool_head *h = create_pool("merge-h", 100, MEM_F_SHARED | POOL_F_NO_LOCAL_CACHE);

    CHECK(a && b && c && d && e && f && g && h);
    CHECK(a == b);
    CHECK(c != a && d != a && e != a && g != a && h != a);
    CHECK(e == f);
    struct pool_head *c2 = create_pool("merge-c2", 100, 0); /* two unshared pools never merge */
    CHECK(c2 != NULL && c2 != c);
    CHECK(pool_destroy(c2) == NULL);

    /* Objects of the merged pool are shared; one user leaving keeps it alive. */
    void *o = pool_alloc(b);
    CHECK(o != NULL);
    fill(o, 112, 7);
    CHECK_EQ(pool_used(a), 1);
    CHECK(pool_destroy(a) == a); /* in use: untouched */
    pool_free(a, o);
    CHECK(pool_destroy(a) == NULL); /* one user left */
    o = pool_alloc(b);
    CHECK(o != NULL);
    fill(o, 112, 8);
    CHECK(intact(o, 112, 8));
    CHECK_EQ(pool_used(b), 1);
    pool_free(b, o);
    CHECK(pool_destroy(b) == NULL); /* last user: freed */
    CHECK(pool_destroy(b) == NULL); /* and gone */

    /* A new shareable pool of that size is a new pool with one user. */
    struct pool_head *n = create_pool("merge-n", 112, MEM_F_SHARED);
    CHECK(n != NULL);
    CHECK(pool_destroy(n) == NULL);
    CHECK(pool_destroy(n) == NULL); /* freed at once: it had one user */

    CHECK(pool_destroy(c) == NULL);
    CHECK(pool_destroy(d) == NULL);
    CHECK(pool_destroy(e) == NULL);
    CHECK(pool_destroy(f) == NULL);
    CHECK(pool_destroy(g) == NULL);
    CHECK(pool_destroy(h) == NULL);
}

static void test_nocache_pair(void)
{
    struct pool_head *p = create_pool("nocache", 256, 0);
    void *a, *x, *y;

    a = pool_alloc(p);
    CHECK(a != NULL);
    pool_free(p, a); /* idle in this thread's cache */
    CHECK_EQ(pool_allocated(p), 1);
    CHECK_EQ(pool_used(p), 0);
    x = pool_alloc_nocache(p); /* bypasses the idle object: a new one */
    CHECK(x != NULL && x != a);
    CHECK_EQ(pool_allocated(p), 2);
    CHECK_EQ(pool_used(p), 1);
    fill(x, 256, 3);
    y = pool_alloc(p); /* the cached one */
    CHECK(y == a);
    CHECK_EQ(pool_used(p), 2);
    pool_free_nocache(p, x); /* straight to the OS */
    CHECK_EQ(pool_allocated(p), 1);
    CHECK_EQ(pool_used(p), 1);
    pool_free_nocache(p, y); /* any object of the pool may go this way */
    CHECK_EQ(pool_allocated(p), 0);
    CHECK_EQ(pool_used(p), 0);
    pool_free_nocache(p, NULL);
    pool_free_nocache(NULL, NULL);
    CHECK_EQ(pool_allocated(p), 0);
    CHECK(pool_destroy(p) == NULL);
}

static void test_flush_gc_minavail(void)
{
    enum { N = 20 };
    void *o[N];
    struct pool_head *p = create_pool("flush", 128, 0);

    for (int i = 0; i < N; i++)
        o[i] = pool_alloc(p);
    for (int i = 0; i < N; i++)
        pool_free(p, o[i]);
    CHECK_EQ(pool_allocated(p), N);
    CHECK_EQ(pool_used(p), 0);
    pool_flush(p); /* idle in the thread cache: flush leaves them */
    CHECK_EQ(pool_allocated(p), N);
    pool_set_minavail(p, 5);
    pool_gc(NULL); /* to the shared cache, then down to minavail */
    CHECK_EQ(pool_allocated(p), 5);
    CHECK_EQ(pool_used(p), 0);
    pool_flush(p); /* now in the shared cache: flushed */
    CHECK_EQ(pool_allocated(p), 0);

    /* gc keeps held objects and minavail idle ones. */
    for (int i = 0; i < 10; i++) {
        o[i] = pool_alloc(p);
        fill(o[i], 128, i);
    }
    for (int i = 3; i < 10; i++)
        pool_free(p, o[i]);
    pool_set_minavail(p, 2);
    pool_gc(p); /* the argument is ignored */
    CHECK_EQ(pool_allocated(p), 5);
    CHECK_EQ(pool_used(p), 3);
    pool_flush(p);
    CHECK_EQ(pool_allocated(p), 3);
    for (int i = 0; i < 3; i++) {
        CHECK(intact(o[i], 128, i));
        pool_free(p, o[i]);
    }
    pool_set_minavail(p, 0);
    pool_gc(NULL);
    CHECK_EQ(pool_allocated(p), 0);
    CHECK(pool_destroy(p) == NULL);

    /* Without a thread cache, minavail idle objects stay in the shared cache,
     * and flush frees exactly those. */
    p = create_pool("flush-shared", 128, POOL_F_NO_LOCAL_CACHE);
    pool_set_minavail(p, 100);
    for (int i = 0; i < 10; i++) {
        o[i] = pool_alloc(p);
        fill(o[i], 128, 50 + i);
    }
    for (int i = 3; i < 10; i++)
        pool_free(p, o[i]);
    CHECK_EQ(pool_allocated(p), 10);
    CHECK_EQ(pool_used(p), 3);
    pool_flush(p);
    CHECK_EQ(pool_allocated(p), 3);
    CHECK_EQ(pool_used(p), 3);
    for (int i = 0; i < 3; i++) {
        CHECK(intact(o[i], 128, 50 + i));
        pool_free(p, o[i]);
    }
    pool_flush(p);
    CHECK_EQ(pool_allocated(p), 0);
    /* pool_alloc_nocache bypasses the shared cache too. */
    o[0] = pool_alloc(p);
    pool_free(p, o[0]);
    CHECK_EQ(pool_allocated(p), 1);
    o[1] = pool_alloc_nocache(p);
    CHECK(o[1] != NULL && o[1] != o[0]);
    CHECK_EQ(pool_allocated(p), 2);
    pool_free_nocache(p, o[1]);
    pool_flush(p);
    CHECK_EQ(pool_allocated(p), 0);
    CHECK(pool_destroy(p) == NULL);

    /* Without a shared cache, gc frees what the thread caches held. */
    p = create_pool("flush-none", 128, POOL_F_SHARED_NONE);
    pool_set_minavail(p, 5); /* there is no shared cache to keep them in */
    for (int i = 0; i < 10; i++)
        o[i] = pool_alloc(p);
    for (int i = 0; i < 10; i++)
        pool_free(p, o[i]);
    CHECK_EQ(pool_allocated(p), 10);
    pool_flush(p);
    CHECK_EQ(pool_allocated(p), 10);
    pool_gc(NULL);
    CHECK_EQ(pool_allocated(p), 0);
    CHECK(pool_destroy(p) == NULL);
}

/* Runs the release work until `done(p)` holds or `periods` release periods
 * of `period_ms` have passed, sleeping between slices for what
 * pool_maintain() says is left (an event loop's timer would do the same).
 * Returns whether `done` held. */
static int maintain_until(struct pool_head *p, int (*done)(struct pool_head *), unsigned period_ms, int periods)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (done(p))
            return 1;
        clock_gettime(CLOCK_MONOTONIC, &t);
        double ms = (t.tv_sec - t0.tv_sec) * 1e3 + (t.tv_nsec - t0.tv_nsec) / 1e6;
        if (ms > (double)period_ms * periods)
            return done(p);
        unsigned next = pool_maintain();
        struct timespec nap = { 0, (long)(next > period_ms ? period_ms : next + 1) * 1000000L };
        nanosleep(&nap, NULL);
    }
}

static int none_allocated(struct pool_head *p) { return pool_allocated(p) == 0; }
static int ten_allocated(struct pool_head *p) { return pool_allocated(p) <= 10; }

/* Released objects go back to the OS by themselves: with a release period
 * of 0 at once (above minavail); with a period, once they stayed idle in the
 * shared cache a whole period, minavail excepted. */
static void test_release_period(void)
{
    enum { N = 1000, PERIOD = 30 };
    static void *o[N];
    struct pool_head *p = create_pool("period", 64, POOL_F_NO_LOCAL_CACHE);

    pool_set_release_period(0);
    for (int i = 0; i < N; i++)
        o[i] = pool_alloc(p);
    for (int i = 0; i < N; i++)
        pool_free(p, o[i]);
    CHECK_EQ(pool_used(p), 0);
    CHECK_EQ(pool_allocated(p), 0);
    CHECK_EQ(pool_released(p), N);

    pool_set_minavail(p, 10);
    for (int i = 0; i < N; i++)
        o[i] = pool_alloc(p);
    for (int i = 0; i < N; i++)
        pool_free(p, o[i]);
    CHECK_EQ(pool_allocated(p), 10); /* minavail is kept */

    pool_set_release_period(PERIOD);
    for (int i = 0; i < N; i++)
        o[i] = pool_alloc(p);
    for (int i = 0; i < N; i++)
        pool_free(p, o[i]);
    CHECK_EQ(pool_allocated(p), N); /* idle, not yet for a whole period */
    CHECK(maintain_until(p, ten_allocated, PERIOD, 20));
    CHECK_EQ(pool_allocated(p), 10);
    pool_set_minavail(p, 0);
    CHECK(maintain_until(p, none_allocated, PERIOD, 20));

    /* Objects the pool needs again within each period stay. */
    for (int i = 0; i < 50; i++)
        o[i] = pool_alloc(p);
    for (int i = 0; i < 50; i++)
        pool_free(p, o[i]);
    unsigned long released = pool_released(p);
    for (int round = 0; round < 12; round++) {
        for (int i = 0; i < 50; i++)
            o[i] = pool_alloc(p);
        for (int i = 0; i < 50; i++)
            pool_free(p, o[i]);
        struct timespec nap = { 0, PERIOD / 3 * 1000000L };
        nanosleep(&nap, NULL); /* time passing, a third of a period per round */
        pool_maintain();
    }
    CHECK_EQ(pool_released(p), released);
    CHECK_EQ(pool_allocated(p), 50);
    pool_set_release_period(1000);
    pool_flush(p);
    CHECK(pool_destroy(p) == NULL);
}

static void test_cache_size(void)
{
    enum { N = 64, SZ = 1024 };
    void *o[N];
    struct pool_head *p = create_pool("budget", SZ, 0);

    /* Objects larger than the budget are never cached in a thread. */
    pool_set_cache_size(SZ / 2);
    for (int i = 0; i < N; i++)
        o[i] = pool_alloc(p);
    for (int i = 0; i < N; i++)
        pool_free(p, o[i]);
    CHECK_EQ(pool_used(p), 0);
    pool_flush(p);
    CHECK_EQ(pool_allocated(p), 0);

    /* Nor do they push the small objects of other pools out of the cache. */
    struct pool_head *small = create_pool("budget-small", 64, 0);
    void *s[6];
    for (int i = 0; i < 6; i++)
        s[i] = pool_alloc(small);
    for (int i = 0; i < 6; i++)
        pool_free(small, s[i]); /* 384 bytes: they fit the budget */
    o[0] = pool_alloc(p);
    pool_free(p, o[0]);
    pool_flush(small);
    pool_flush(p);
    CHECK_EQ(pool_allocated(small), 6);
    CHECK_EQ(pool_allocated(p), 0);
    pool_gc(NULL);
    CHECK_EQ(pool_allocated(small), 0);
    CHECK(pool_destroy(small) == NULL);

    /* With the default budget they are, and flush leaves them there. */
    pool_set_cache_size(512 * 1024);
    for (int i = 0; i < N; i++)
        o[i] = pool_alloc(p);
    for (int i = 0; i < N; i++)
        pool_free(p, o[i]);
    pool_flush(p);
    CHECK_EQ(pool_allocated(p), N);
    CHECK_EQ(pool_used(p), 0);

    /* A lowered budget shrinks the cache at the next release. */
    pool_set_cache_size(16 * SZ);
    o[0] = pool_alloc(p);
    CHECK(o[0] != NULL);
    pool_free(p, o[0]);
    pool_flush(p);
    CHECK(pool_allocated(p) <= 16);
    CHECK_EQ(pool_used(p), 0);

    /* One budget for all pools of the thread. */
    struct pool_head *q = create_pool("budget2", SZ, 0);
    void *r[N];
    pool_gc(NULL);
    for (int i = 0; i < 12; i++) {
        o[i] = pool_alloc(p);
        r[i] = pool_alloc(q);
    }
    for (int i = 0; i < 12; i++)
        pool_free(p, o[i]);
    for (int i = 0; i < 12; i++)
        pool_free(q, r[i]);
    pool_flush(p);
    pool_flush(q);
    CHECK(pool_allocated(p) + pool_allocated(q) <= 16);
    CHECK(pool_allocated(q) > 0); /* the budget did not fall to nothing */

    pool_set_cache_size(512 * 1024);
    pool_gc(NULL);
    CHECK_EQ(pool_allocated(p), 0);
    CHECK_EQ(pool_allocated(q), 0);
    CHECK(pool_destroy(p) == NULL);
    CHECK(pool_destroy(q) == NULL);
}

/* pool_needed_avg: the average of each release period's peak need settles
 * on what callers hold, and falls when they hold less. */
static int avg_settled(struct pool_head *p) { return pool_needed_avg(p) >= 95; }
static int avg_fell(struct pool_head *p) { return pool_needed_avg(p) <= 5; }

static void test_needed_avg(void)
{
    enum { HOLD = 100, PERIOD = 20 };
    void *o[HOLD];
    struct pool_head *p = create_pool("need", 32, POOL_F_NO_LOCAL_CACHE);

    pool_set_release_period(PERIOD);
    CHECK_EQ(pool_needed_avg(p), 0);
    for (int i = 0; i < HOLD; i++)
        o[i] = pool_alloc(p);
    CHECK(maintain_until(p, avg_settled, PERIOD, 40));
    unsigned long avg = pool_needed_avg(p);
    CHECK(avg >= 95 && avg <= HOLD);
    for (int i = 0; i < HOLD; i++)
        pool_free(p, o[i]);
    CHECK(maintain_until(p, avg_fell, PERIOD, 60));
    pool_set_release_period(1000);
    CHECK(pool_destroy(p) == NULL);
}

static void test_null_arguments(void)
{
    struct pool_head *p = create_pool("nulls", 64, 0);
    void *o = pool_alloc(p);

    CHECK(pool_alloc(NULL) == NULL);
    CHECK(pool_zalloc(NULL) == NULL);
    CHECK(pool_alloc_nocache(NULL) == NULL);
    pool_free(NULL, NULL);
    pool_free(p, NULL);
    pool_free(NULL, o); /* leaked by contract: the pool must not see it */
    pool_free_nocache(NULL, o);
    pool_free_nocache(p, NULL);
    CHECK_EQ(pool_used(p), 1);
    CHECK_EQ(pool_allocated(p), 1);
    pool_flush(NULL);
    pool_set_limit(NULL, 1);
    pool_set_minavail(NULL, 1);
    CHECK_EQ(pool_allocated(NULL), 0);
    CHECK_EQ(pool_used(NULL), 0);
    CHECK_EQ(pool_needed_avg(NULL), 0);
    CHECK_EQ(pool_failed(NULL), 0);
    CHECK(pool_destroy(NULL) == NULL);
    pool_free(p, o);
    CHECK_EQ(pool_used(p), 0);
    CHECK(pool_destroy(p) == NULL);
}

int main(void)
{
    test_create_arguments();
    test_rounding_and_totals();
    test_contents();
    test_zalloc();
    test_alignment();
    test_destroy_in_use();
    test_merging();
    test_nocache_pair();
    test_flush_gc_minavail();
    test_release_period();
    test_cache_size();
    test_needed_avg();
    test_null_arguments();
    DONE("test_pool_basic");
}
