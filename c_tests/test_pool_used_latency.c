/* How long pool_used() takes while the pool is busy.
 *
 * pool_used() counts the objects idle in every thread's cache, so it has to
 * look into each cache while its owner keeps using it. Four threads run
 * tight alloc/free loops on one pool with a thread cache (mostly pairs,
 * sometimes a burst of 1 to 8 objects held at once), on a machine that may
 * have only 2 cores. Main, like a monitoring thread, takes 2000 samples:
 * it waits until one of the threads has done another 2^16 operations (a
 * semaphore the threads post without waiting), then times one pool_used()
 * call with CLOCK_MONOTONIC. A call may wait for one owner's short
 * critical section, plus scheduling, never for an owner to stop working:
 * the slowest call must take less than 50 ms. (A call that waits for
 * owners to be descheduled is slow only now and then: from about one
 * sample in a hundred on a loaded machine to a few in a thousand on a
 * quiet one, hence 2000 samples, about 2 s.) Sampling stops after 6 s,
 * so that a slow build still ends; at least 20 samples must have been
 * taken by then (a sanitizer slows the threads, hence fewer samples). The
 * median, 90th percentile and maximum are printed. The value
 * pool_used() returns while the threads run is not checked here; once they
 * are joined it must be 0.
 * Synchronisation: semaphores (each thread posts once it is well into its
 * loop, then every 2^16 operations, never waiting), an atomic stop flag,
 * joins. */
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bufpool.h"
#include "harness.h"

#define THREADS 4
#define CALLS 2000
#define MIN_CALLS 20 /* under a sanitizer the threads are slower: fewer samples */
#define SAMPLE_SECONDS 6.0
#define MAX_NS 50000000ll /* 50 ms */
#define OBJ_SIZE 256
#define WARMUP_OPS 100000
#define PACE_OPS (1ul << 16) /* a sample each time a thread has done this many */

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

struct worker {
    struct pool_head *pool;
    unsigned id;
    sem_t *warm, *pace;
    atomic_int *stop;
    unsigned long ops, nulls;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    void *burst[8];
    unsigned rng = w->id * 2654435761u + 7u;
    int waited = 0;

    while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
        rng = rng * 1103515245u + 12345u;
        unsigned n = (rng >> 16) & 31;
        unsigned k = n < 28 ? 1 : 1 + ((rng >> 21) & 7); /* mostly pairs */
        for (unsigned i = 0; i < k; i++) {
            burst[i] = pool_alloc(w->pool);
            if (burst[i])
                memset(burst[i], (int)w->id, 16);
            else
                w->nulls++;
        }
        for (unsigned i = 0; i < k; i++)
            pool_free(w->pool, burst[i]);
        w->ops += k;
        if (waited && (w->ops & (PACE_OPS - 1)) < k)
            sem_post(w->pace); /* main may take one more sample */
        if (!waited && w->ops >= WARMUP_OPS) {
            /* main starts timing once every thread is well into its loop;
             * the thread does not wait for it */
            sem_post(w->warm);
            waited = 1;
        }
    }
    return NULL;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(void)
{
    struct pool_head *p = create_pool("busy", OBJ_SIZE, 0);
    struct worker w[THREADS];
    pthread_t t[THREADS];
    sem_t warm, pace;
    atomic_int stop = 0;
    static long long took[CALLS];
    int n = 0;

    CHECK(p != NULL);
    if (!p)
        DONE("test_pool_used_latency");
    sem_init(&warm, 0, 0);
    sem_init(&pace, 0, 0);
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){ .pool = p, .id = (unsigned)i + 1, .warm = &warm, .pace = &pace, .stop = &stop };
        if (pthread_create(&t[i], NULL, worker_main, &w[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }
    }
    for (int i = 0; i < THREADS; i++)
        while (sem_wait(&warm) != 0)
            ; /* EINTR */

    long long t0 = now_ns();
    unsigned long sink = 0;
    while (n < CALLS && now_ns() - t0 < (long long)(SAMPLE_SECONDS * 1e9)) {
        while (sem_wait(&pace) != 0)
            ; /* EINTR */
        long long a = now_ns();
        sink += pool_used(p);
        took[n++] = now_ns() - a;
    }
    long long sampled = now_ns() - t0;

    atomic_store(&stop, 1);
    unsigned long ops = 0, nulls = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        ops += w[i].ops;
        nulls += w[i].nulls;
    }
    sem_destroy(&warm);
    sem_destroy(&pace);

    qsort(took, (size_t)n, sizeof took[0], cmp_ll);
    long long max = n ? took[n - 1] : 0, median = n ? took[n / 2] : 0;
    int slow = 0;
    for (int i = 0; i < n; i++)
        slow += took[i] >= MAX_NS;
    printf("pool_used latency: %d calls in %.2f s with %d threads busy (%lu ops): "
           "median %.1f us, p90 %.1f us, max %.3f ms, %d calls >= %lld ms (mean value read %.1f)\n",
           n, (double)sampled / 1e9, THREADS, ops, (double)median / 1e3, n ? (double)took[n * 9 / 10] / 1e3 : 0.0,
           (double)max / 1e6, slow, MAX_NS / 1000000, n ? (double)sink / n : 0.0);

    CHECK(n >= MIN_CALLS);
    CHECK(max < MAX_NS);
    CHECK(ops > 0);
    CHECK_EQ(nulls, 0);
    CHECK_EQ(pool_used(p), 0);
    CHECK(pool_destroy(p) == NULL);
    DONE("test_pool_used_latency");
}
