/* fluct.c: what the release period costs a fluctuating need on the shared
 * path. `make bench`'s second memory table (bench/memory.sh runs it).
 *
 * Two threads each hold 0 to 3 objects of 2 MB (a new random target, 0 to
 * 3, after each change: allocate up to it, writing 64 bytes into each new
 * object, or free down to it) from one pool made with
 * POOL_F_NO_LOCAL_CACHE: every object goes through the shared cache. The
 * pool is either
 *   default  bufpool as it comes: the default release period (400 ms;
 *            no pool_set_release_period call), minavail as it comes;
 *   never    the same pool made never to free: pool_set_release_period(
 *            UINT_MAX) and pool_set_minavail(pool, 64) (64 idle 2 MB
 *            objects, more than the two threads ever hold).
 * On glibc, M_MMAP_THRESHOLD is fixed at 128 KB first (as `make demo`
 * does), so that any large block malloc'd is mapped and unmapped, like
 * musl does; the static musl build (musl-gcc, libbufpool.a) runs the same.
 *
 *   fluct default|never MS      (MS: the run's wall time, ms)
 * prints one line:
 *   mops=X ops=N cpu_ns=C released=R allocated=A need=D
 * X: allocations (each with its free) per second, both threads, over the
 * wall time; C: thread CPU ns per allocation + free; R: objects the pool
 * gave back to the OS during the run (pool_released); A: pool_allocated at
 * the end; D: pool_needed_avg at the end. */

#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bufpool.h"

#if defined(__GLIBC__)
/* glibc's mallopt and M_MMAP_THRESHOLD, from its <malloc.h>. */
int mallopt(int param, int value);
#define GLIBC_M_MMAP_THRESHOLD (-3)
#endif

#define BIG     (2u * 1024 * 1024)
#define HOLD    3
#define THREADS 2

static struct pool_head *pool;
static atomic_int stop;
static pthread_barrier_t start;

struct arg {
    pthread_t tid;
    int id;
    unsigned seed;
    unsigned long ops;
    double cpu_ns;
    int failed;
};

static double ns_of(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Pins the calling thread to the NTH CPU this process may run on (none
 * when there are fewer than two; sched_setaffinity(0) is the calling
 * thread's on Linux, with glibc and musl alike): the two threads always run
 * on two cores, so that a run never turns into one where both share a core
 * and the shared cache's line stops moving between cores, which on a
 * shared 2-core machine is about 3 times faster. */
static void pin(int nth)
{
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0 || CPU_COUNT(&allowed) < 2)
        return;
    for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &allowed) && seen++ == nth % CPU_COUNT(&allowed)) {
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            sched_setaffinity(0, sizeof one, &one);
            return;
        }
    }
}

static void *fluctuate(void *p)
{
    struct arg *a = p;
    void *held[HOLD];
    int n = 0;
    unsigned long ops = 0;
    unsigned seed = a->seed;

    pin(a->id);
    pthread_barrier_wait(&start);
    double c0 = ns_of(CLOCK_THREAD_CPUTIME_ID);
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        for (int k = 0; k < 16; k++) {
            seed = seed * 1103515245u + 12345u;
            int want = (int)((seed >> 16) % (HOLD + 1));
            while (n < want) {
                held[n] = pool_alloc(pool);
                if (!held[n]) {
                    a->failed = 1;
                    return NULL;
                }
                memset(held[n], (int)ops, 64);
                n++;
                ops++;
            }
            while (n > want)
                pool_free(pool, held[--n]);
        }
    }
    a->cpu_ns = ns_of(CLOCK_THREAD_CPUTIME_ID) - c0;
    while (n > 0)
        pool_free(pool, held[--n]);
    a->ops = ops;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "default") != 0 && strcmp(argv[1], "never") != 0)) {
        fprintf(stderr, "usage: fluct default|never MS\n");
        return 2;
    }
    int never = strcmp(argv[1], "never") == 0;
    double seconds = strtod(argv[2], NULL) / 1e3;
    if (!(seconds > 0)) {
        fprintf(stderr, "fluct: MS must be above 0\n");
        return 2;
    }
#if defined(__GLIBC__)
    if (!mallopt(GLIBC_M_MMAP_THRESHOLD, 128 * 1024)) {
        fprintf(stderr, "fluct: mallopt(M_MMAP_THRESHOLD) failed\n");
        return 1;
    }
#endif
    if (never)
        pool_set_release_period(UINT_MAX);
    pool = create_pool("fluct", BIG, POOL_F_NO_LOCAL_CACHE);
    if (!pool) {
        fprintf(stderr, "fluct: create_pool failed\n");
        return 1;
    }
    if (never)
        pool_set_minavail(pool, 64);
    unsigned long released0 = pool_released(pool);

    struct arg a[THREADS];
    pthread_barrier_init(&start, NULL, THREADS + 1);
    for (int t = 0; t < THREADS; t++) {
        a[t] = (struct arg){ .id = t, .seed = (unsigned)t + 1 };
        if (pthread_create(&a[t].tid, NULL, fluctuate, &a[t]) != 0) {
            fprintf(stderr, "fluct: pthread_create failed\n");
            return 1;
        }
    }
    pthread_barrier_wait(&start);
    double w0 = ns_of(CLOCK_MONOTONIC);
    struct timespec nap = { (time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9) };
    nanosleep(&nap, NULL);
    atomic_store(&stop, 1);
    unsigned long ops = 0;
    double cpu = 0;
    int failed = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(a[t].tid, NULL);
        ops += a[t].ops;
        cpu += a[t].cpu_ns;
        failed |= a[t].failed;
    }
    double wall = ns_of(CLOCK_MONOTONIC) - w0;
    if (failed) {
        fprintf(stderr, "fluct: an allocation failed\n");
        return 1;
    }
    printf("mops=%.4f ops=%lu cpu_ns=%.1f released=%lu allocated=%lu need=%lu\n", (double)ops / wall * 1e3, ops,
           ops ? cpu / (double)ops : 0, pool_released(pool) - released0, pool_allocated(pool),
           pool_needed_avg(pool));
    return 0;
}
