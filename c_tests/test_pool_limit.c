/* Pool limits in one thread (the pool part of the C contract): pool_alloc returns NULL, and
 * pool_failed counts it, only when callers hold the limit; idle objects,
 * wherever they sit in this thread, are handed out instead of failing; 0
 * lifts the limit. The cross-thread side is in test_pool_threads.c. */
#include <string.h>

#include "bufpool.h"
#include "harness.h"

/* Holds the limit, checks that every way to allocate fails and is counted. */
static void run_limit(unsigned flags)
{
    enum { L = 10 };
    void *o[L + 1];
    struct pool_head *p = create_pool("limit", 200, flags);
    size_t nulls = 0;

    CHECK(p != NULL);
    if (!p)
        return;
    pool_set_limit(p, L);
    for (int i = 0; i < L; i++) {
        o[i] = pool_alloc(p);
        nulls += o[i] == NULL;
        if (o[i])
            fill(o[i], 200, i);
    }
    CHECK_EQ(nulls, 0);
    CHECK_EQ(pool_allocated(p), L);
    CHECK_EQ(pool_used(p), L);
    CHECK_EQ(pool_failed(p), 0);

    CHECK(pool_alloc(p) == NULL);
    CHECK_EQ(pool_failed(p), 1);
    CHECK(pool_zalloc(p) == NULL);
    CHECK_EQ(pool_failed(p), 2);
    CHECK(pool_alloc_nocache(p) == NULL);
    CHECK_EQ(pool_failed(p), 3);
    CHECK_EQ(pool_allocated(p), L);
    CHECK_EQ(pool_used(p), L);

    /* One back: one more succeeds, without a new object if it stayed idle. */
    pool_free(p, o[3]);
    o[3] = pool_alloc(p);
    CHECK(o[3] != NULL);
    if (o[3])
        fill(o[3], 200, 3);
    CHECK(pool_alloc(p) == NULL);
    CHECK_EQ(pool_failed(p), 4);
    CHECK_EQ(pool_allocated(p), L);

    /* Raising the limit, then lifting it. */
    pool_set_limit(p, L + 1);
    o[L] = pool_alloc(p);
    CHECK(o[L] != NULL);
    CHECK(pool_alloc(p) == NULL);
    CHECK_EQ(pool_failed(p), 5);
    pool_set_limit(p, 0);
    void *more[50];
    nulls = 0;
    for (int i = 0; i < 50; i++) {
        more[i] = pool_alloc(p);
        nulls += more[i] == NULL;
    }
    CHECK_EQ(nulls, 0);
    CHECK_EQ(pool_allocated(p), L + 51);
    CHECK_EQ(pool_failed(p), 5);
    for (int i = 0; i < 50; i++)
        pool_free(p, more[i]);
    pool_free(p, o[L]);

    /* A limit below what is allocated: nothing new, but held objects are fine. */
    pool_gc(NULL);
    pool_flush(p);
    CHECK_EQ(pool_allocated(p), L);
    pool_set_limit(p, 5);
    CHECK(pool_alloc(p) == NULL);
    CHECK_EQ(pool_failed(p), 6);
    for (int i = 0; i < L; i++) {
        CHECK(intact(o[i], 200, i));
        pool_free(p, o[i]);
    }
    pool_gc(NULL);
    CHECK_EQ(pool_allocated(p), 0);
    for (int i = 0; i < 5; i++) {
        o[i] = pool_alloc(p);
        CHECK(o[i] != NULL);
    }
    CHECK(pool_alloc(p) == NULL);
    CHECK_EQ(pool_failed(p), 7);
    CHECK_EQ(pool_allocated(p), 5);
    for (int i = 0; i < 5; i++)
        pool_free(p, o[i]);
    CHECK_EQ(pool_used(p), 0);
    CHECK(pool_destroy(p) == NULL);
}

/* At the limit, idle objects are handed out: from this thread's cache, and
 * from the shared cache, whatever the allocation function. */
static void run_idle_at_limit(unsigned flags)
{
    enum { L = 8 };
    void *o[L], *again[L];
    struct pool_head *p = create_pool("idle", 64, flags);
    size_t nulls = 0, fresh = 0;

    pool_set_minavail(p, L); /* idle objects stay (shared cache or thread cache) */
    pool_set_limit(p, L);
    for (int i = 0; i < L; i++)
        o[i] = pool_alloc(p);
    for (int i = 0; i < L; i++)
        pool_free(p, o[i]);
    CHECK_EQ(pool_allocated(p), L);
    CHECK_EQ(pool_used(p), 0);
    for (int i = 0; i < L; i++) {
        again[i] = (i % 3 == 0) ? pool_alloc(p) : (i % 3 == 1) ? pool_zalloc(p) : pool_alloc_nocache(p);
        nulls += again[i] == NULL;
        int found = 0;
        for (int j = 0; j < L; j++)
            found |= again[i] == o[j];
        fresh += !found;
    }
    CHECK_EQ(nulls, 0);
    CHECK_EQ(fresh, 0);
    CHECK_EQ(pool_allocated(p), L);
    CHECK_EQ(pool_used(p), L);
    CHECK_EQ(pool_failed(p), 0);
    CHECK(pool_alloc_nocache(p) == NULL);
    CHECK(pool_alloc(p) == NULL);
    CHECK_EQ(pool_failed(p), 2);
    for (int i = 0; i < L; i++)
        pool_free(p, again[i]);
    CHECK_EQ(pool_used(p), 0);
    CHECK(pool_destroy(p) == NULL);
}

/* Without any cache, freed objects go to the OS and make room again. */
static void test_no_cache_at_all(void)
{
    struct pool_head *p = create_pool("bare", 48, POOL_F_SHARED_NONE | POOL_F_NO_LOCAL_CACHE);
    void *o[3];

    pool_set_limit(p, 3);
    for (int i = 0; i < 3; i++)
        o[i] = pool_alloc(p);
    CHECK(o[0] && o[1] && o[2]);
    CHECK(pool_alloc(p) == NULL);
    CHECK_EQ(pool_failed(p), 1);
    pool_free(p, o[1]);
    CHECK_EQ(pool_allocated(p), 2);
    CHECK_EQ(pool_used(p), 2);
    o[1] = pool_zalloc(p);
    CHECK(o[1] != NULL);
    CHECK(pool_alloc(p) == NULL);
    CHECK_EQ(pool_failed(p), 2);
    for (int i = 0; i < 3; i++)
        pool_free(p, o[i]);
    CHECK_EQ(pool_allocated(p), 0);
    CHECK(pool_destroy(p) == NULL);
}

/* The failure counter is per pool. */
static void test_failed_is_per_pool(void)
{
    struct pool_head *a = create_pool("fa", 32, 0);
    struct pool_head *b = create_pool("fb", 32, 0);
    void *x;

    pool_set_limit(a, 1);
    x = pool_alloc(a);
    CHECK(x != NULL);
    CHECK(pool_alloc(a) == NULL);
    CHECK_EQ(pool_failed(a), 1);
    CHECK_EQ(pool_failed(b), 0);
    pool_free(a, x);
    CHECK(pool_destroy(a) == NULL);
    CHECK(pool_destroy(b) == NULL);
}

int main(void)
{
    run_limit(0);
    run_limit(POOL_F_NO_LOCAL_CACHE);
    run_limit(POOL_F_SHARED_NONE);
    run_idle_at_limit(0);
    run_idle_at_limit(POOL_F_NO_LOCAL_CACHE);
    run_idle_at_limit(POOL_F_SHARED_NONE);
    test_no_cache_at_all();
    test_failed_is_per_pool();
    DONE("test_pool_limit");
}
