/* crowd.c: does a crowded pool give back what thread-cache traffic keeps
 * idle? `make bench`'s memory part (bench/memory.sh runs it).
 *
 * One pool of 1 KiB objects, the release period set to PERIOD ms (as the
 * library's default, 400, unless told otherwise): N objects are allocated
 * and freed (the thread's cache keeps what its 512 KiB budget holds, the
 * rest goes to the shared cache); then light traffic through the cache
 * only: 4 allocations and their 4 frees, then a 100 us pause, over and
 * over. Nothing else is called. The run ends when the pool has at most
 * WANT objects allocated (what the traffic needs, and its cache's few) or
 * after 20 periods.
 *
 *   crowd [PERIOD [N [WANT]]]       defaults: 400 4096 64
 * prints one line:
 *   period_ms=P back_ms=B periods=X allocated=A released=R
 * B: when the pool first had at most WANT objects (-1: not within 20
 * periods); X: B in periods. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "bufpool.h"

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
    unsigned period = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 400;
    unsigned n = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 4096;
    unsigned long want = argc > 3 ? strtoul(argv[3], NULL, 10) : 64;
    static void *o[1 << 16];
    if (n > sizeof o / sizeof o[0] || period == 0)
        return 2;
    pool_set_release_period(period);
    struct pool_head *p = create_pool("crowd", 1024, 0);
    if (!p)
        return 2;
    for (unsigned i = 0; i < n; i++)
        if (!(o[i] = pool_alloc(p)))
            return 2;
    for (unsigned i = 0; i < n; i++)
        pool_free(p, o[i]);
    double t0 = now_ms(), back = -1;
    while (now_ms() - t0 < 20.0 * period) {
        void *a[4];
        for (int k = 0; k < 4; k++)
            a[k] = pool_alloc(p);
        for (int k = 0; k < 4; k++)
            pool_free(p, a[k]);
        if (pool_allocated(p) <= want) {
            back = now_ms() - t0;
            break;
        }
        struct timespec ts = { 0, 100000 };
        nanosleep(&ts, NULL);
    }
    printf("period_ms=%u back_ms=%.0f periods=%.2f allocated=%lu released=%lu\n", period, back,
           back < 0 ? -1.0 : back / period, pool_allocated(p), pool_released(p));
    return 0;
}
