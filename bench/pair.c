/* pair.c: the cost of one allocation + release pair on the hot path.
 *
 * The same source is built twice, against libbufpool.so and against
 * libbufpool.a; each binary measures bufpool's pool_alloc + pool_free (the
 * thread-cache path: the object goes back to this thread's cache and the
 * next allocation takes it again) and glibc's malloc + free of the same size.
 *
 *   pair time SIZE PAIRS REPS   interleaves REPS timed loops of PAIRS pairs
 *                               of each allocator and prints the best
 *                               ns per pair of each: "ns pool 5.1", "ns malloc 30.2"
 *   pair count MODE SIZE PAIRS  runs one loop of PAIRS pairs of MODE
 *                               (pool or malloc), for callgrind with
 *                               --toggle-collect=bench_MODE_loop
 *
 * The loops are separate, non-inlined functions so that callgrind can count
 * exactly their instructions (calls included): the warm-up that fills the
 * thread cache and the heap happens outside them. Each loop hands the
 * pointer to an empty asm statement so that the compiler can neither drop
 * the malloc + free pair nor move the release before the allocation. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bufpool.h"

#define WARMUP 1000

/* Exported names, so that callgrind's --toggle-collect can find them. */
void bench_pool_loop(struct pool_head *pool, long pairs);
void bench_malloc_loop(size_t size, long pairs);

__attribute__((noinline)) void bench_pool_loop(struct pool_head *pool, long pairs)
{
    for (long i = 0; i < pairs; i++) {
        void *p = pool_alloc(pool);
        __asm__ volatile("" : : "r"(p) : "memory");
        pool_free(pool, p);
    }
}

__attribute__((noinline)) void bench_malloc_loop(size_t size, long pairs)
{
    for (long i = 0; i < pairs; i++) {
        void *p = malloc(size);
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
    }
}

/* Warm-up twins of the loops above, so that callgrind counts only the measured pairs. */
static void warm_pool_loop(struct pool_head *pool)
{
    for (int i = 0; i < WARMUP; i++) {
        void *p = pool_alloc(pool);
        __asm__ volatile("" : : "r"(p) : "memory");
        pool_free(pool, p);
    }
}

static void warm_malloc_loop(size_t size)
{
    for (int i = 0; i < WARMUP; i++) {
        void *p = malloc(size);
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
    }
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void usage(void)
{
    fprintf(stderr, "usage: pair time SIZE PAIRS REPS | pair count pool|malloc SIZE PAIRS\n");
    exit(2);
}

static long arg_long(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v <= 0)
        usage();
    return v;
}

/* Fails unless the pool's one object is idle in this thread's cache:
 * pool_flush() frees what sits in the shared cache, not in thread caches. */
static void check_in_thread_cache(struct pool_head *pool, const char *when)
{
    pool_flush(pool);
    if (pool_allocated(pool) != 1 || pool_used(pool) != 0) {
        fprintf(stderr, "pair: %s, the pair is not on the thread-cache path "
                "(%lu allocated, %lu used, expected 1 idle in this thread's cache)\n",
                when, pool_allocated(pool), pool_used(pool));
        exit(1);
    }
}

/* A pool whose object is in this thread's cache, checked to be there: a
 * second allocation right after a release must return the same object. */
static struct pool_head *warm_pool(size_t size)
{
    struct pool_head *pool = create_pool("bench", (unsigned int)size, 0);
    if (pool == NULL) {
        fprintf(stderr, "pair: create_pool(%zu) failed\n", size);
        exit(1);
    }
    void *first = pool_alloc(pool);
    if (first == NULL) {
        fprintf(stderr, "pair: pool_alloc failed\n");
        exit(1);
    }
    pool_free(pool, first);
    warm_pool_loop(pool);
    void *again = pool_alloc(pool);
    if (again != first) {
        fprintf(stderr, "pair: object %p then %p: the cache does not hand back the last release\n",
                first, again);
        exit(1);
    }
    pool_free(pool, again);
    check_in_thread_cache(pool, "after warm-up");
    return pool;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "time") == 0) {
        size_t size = (size_t)arg_long(argv[2]);
        long pairs = arg_long(argv[3]), reps = arg_long(argv[4]);
        struct pool_head *pool = warm_pool(size);
        warm_malloc_loop(size);
        double best_pool = 0, best_malloc = 0;
        /* Interleaved, best of REPS: the machine is shared, and the
         * minimum is the figure least disturbed by other processes. */
        for (long r = 0; r < reps; r++) {
            double t0 = now_ns();
            bench_pool_loop(pool, pairs);
            double t1 = now_ns();
            bench_malloc_loop(size, pairs);
            double t2 = now_ns();
            if (r == 0 || t1 - t0 < best_pool)
                best_pool = t1 - t0;
            if (r == 0 || t2 - t1 < best_malloc)
                best_malloc = t2 - t1;
        }
        check_in_thread_cache(pool, "after timing");
        printf("ns pool %.2f\nns malloc %.2f\n", best_pool / (double)pairs, best_malloc / (double)pairs);
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "count") == 0) {
        size_t size = (size_t)arg_long(argv[3]);
        long pairs = arg_long(argv[4]);
        if (strcmp(argv[2], "pool") == 0) {
            struct pool_head *pool = warm_pool(size);
            bench_pool_loop(pool, pairs);
            check_in_thread_cache(pool, "after counting");
        } else if (strcmp(argv[2], "malloc") == 0) {
            warm_malloc_loop(size);
            bench_malloc_loop(size, pairs);
        } else {
            usage();
        }
        return 0;
    }
    usage();
    return 2;
}
