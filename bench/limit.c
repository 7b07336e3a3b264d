/* limit.c: what pool_alloc costs at a pool's limit. `make bench`'s limit
 * part (bench/limit.sh runs it, once per protocol of the thread caches:
 * BUFPOOL_CACHE_SYNC is read once per process).
 *
 *   limit rows PER BATCHES BATCH_MS STEAL T...
 *        one line per thread count T (below)
 *   limit count PER T N
 *        the setup of row T, then N failed allocations, untimed, between
 *        two getppid() calls (for strace -f: the system calls of every
 *        thread between the two markers are those of the N calls)
 *
 * A row, T threads (the main thread, which measures, and T - 1 helpers),
 * on a new pool of 1 KiB objects (create_pool flags 0) with a limit of
 * T * PER objects:
 *  setup  each thread in turn (the main thread first, then the helpers in
 *         the order they were created, which is the order of their caches
 *         in the library's registry) allocates PER objects, frees them (into
 *         its own cache) and allocates PER again (from it): it holds PER,
 *         its cache has the pool's stack and it is empty. Checked:
 *         pool_allocated() == pool_used() == limit, nothing idle anywhere.
 *         The helpers then wait on a semaphore (blocked in the kernel, not
 *         spinning) whenever they are not running a command.
 *  fail   the main thread calls pool_alloc in a loop; every call must
 *         return NULL (a non-NULL one is an error: exit 1). BATCHES batches
 *         of n calls each, n calibrated so that a batch takes at least
 *         BATCH_MS ms of thread CPU time; ns per call, per batch.
 *  steal  the last helper frees one of its objects into its own cache:
 *         the pool is at its limit with exactly that one object idle
 *         (checked: pool_flush releases nothing, pool_used() == limit - 1).
 *         The main thread's pool_alloc finds its own cache and the shared
 *         cache empty, and no room under the limit, so it steals the object
 *         from the helper's cache (the last in the registry: the search
 *         holds every cache once). It then hands the object to the helper,
 *         which frees it into its own cache again (a semaphore each way).
 *         STEAL iterations (at most 3 s of wall time), each pool_alloc call
 *         timed alone with CLOCK_MONOTONIC (the thread CPU clock costs a
 *         system call, about 0.8 us on a VM, as much as the call measured;
 *         the monotonic one is read in the vDSO); the median.
 *  slow   the limit is raised by SLOW_OBJS (pool below its limit) and
 *         pool_set_cache_size(0) makes every pool_alloc miss the thread
 *         cache: the main thread allocates SLOW_OBJS new objects and frees
 *         them (to the shared cache). Then repeatedly: SLOW_OBJS pool_alloc
 *         calls, timed, each taking an object from the shared cache; then
 *         their pool_free, untimed. BATCHES batches, each at least BATCH_MS
 *         ms of timed CPU; ns per pool_alloc call. The cache size is set
 *         back to its default (512 KiB) afterwards.
 *  end    the helpers free what they hold and exit; pool_destroy.
 *
 * fail and slow: thread CPU time of the main thread (CLOCK_THREAD_CPUTIME_ID,
 * which includes its time in the kernel, membarrier's included), medians
 * of the batches; the wall time of the fail batches is printed too. The
 * cost of reading the clock (the median of back-to-back reads) is
 * subtracted from each timed region. The release period is turned off (pool_set_release_period(UINT_MAX))
 * so that no object moves by itself (thread caches decaying into the
 * shared cache, idle objects going back to the OS) during a measurement.
 *
 * One line per row:
 *   threads=T limit=L proto=P fail_ns=M fail_min=A fail_max=B fail_wall_ns=W
 *   fail_calls=N steal_ns=M steal_iters=N slow_ns=M slow_min=A slow_max=B
 *   slow_calls=N clock_ns=C wclock_ns=D
 * (C, D: the cost of a read of the thread CPU clock, of the monotonic one),
 * P: membarrier or fence, as dump_pools_to_fd names the protocol. */

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bufpool.h"

#define OBJ_SIZE      1024
#define SLOW_OBJS     256           /* slow: objects allocated per timed region */
#define MAX_PER       64            /* objects a thread holds, at most */
#define MAX_THREADS   256
#define MAX_BATCHES   101
#define STEAL_WALL_NS 3e9           /* steal: at most this much wall time */
#define CACHE_DEFAULT (512 * 1024)  /* pool_set_cache_size's default */
#define STACK_SIZE    (256 * 1024)

static void die(const char *what)
{
    fprintf(stderr, "limit: %s\n", what);
    exit(1);
}

static double clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}
static double cpu_ns(void) { return clock_ns(CLOCK_THREAD_CPUTIME_ID); }
static double wall_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts V. */
static double median(double *v, long n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void sem_wait_all(sem_t *s)
{
    while (sem_wait(s) != 0)
        if (errno != EINTR)
            die("sem_wait failed");
}

/* ---- the threads ------------------------------------------------------------ */
enum cmd { SETUP, FREE_ONE, HOLD_ONE, TAKE, EXIT };

struct holder {
    pthread_t tid;
    sem_t go;                 /* a command is ready (helpers) */
    enum cmd cmd;
    void *obj;                /* TAKE: the object to free into this cache */
    void *held[MAX_PER];
    int nheld;
};

static struct pool_head *pool;
static int per;               /* objects each thread holds */
static sem_t done;            /* a helper finished its command */

static void setup(struct holder *h)
{
    for (int i = 0; i < per; i++)
        if ((h->held[i] = pool_alloc(pool)) == NULL)
            die("setup: pool_alloc failed below the limit");
    for (int i = 0; i < per; i++)
        pool_free(pool, h->held[i]);
    for (int i = 0; i < per; i++)
        if ((h->held[i] = pool_alloc(pool)) == NULL)
            die("setup: pool_alloc failed below the limit");
    h->nheld = per;
}

static void release_all(struct holder *h)
{
    while (h->nheld > 0)
        pool_free(pool, h->held[--h->nheld]);
}

static void *helper(void *arg)
{
    struct holder *h = arg;
    for (;;) {
        sem_wait_all(&h->go);
        switch (h->cmd) {
        case SETUP:
            setup(h);
            break;
        case FREE_ONE:
            pool_free(pool, h->held[--h->nheld]);
            break;
        case HOLD_ONE:
            if ((h->held[h->nheld++] = pool_alloc(pool)) == NULL)
                die("helper: its own idle object could not be allocated");
            break;
        case TAKE:
            pool_free(pool, h->obj);
            break;
        case EXIT:
            release_all(h);
            sem_post(&done);
            return NULL;
        }
        sem_post(&done);
    }
}

static void run(struct holder *h, enum cmd cmd)
{
    h->cmd = cmd;
    sem_post(&h->go);
    sem_wait_all(&done);
}

/* ---- checks ----------------------------------------------------------------- */
static void expect(const char *when, unsigned long allocated, unsigned long used)
{
    unsigned long a = pool_allocated(pool), u = pool_used(pool);
    if (a != allocated || u != used) {
        fprintf(stderr, "limit: %s: pool_allocated %lu (expected %lu), pool_used %lu (expected %lu)\n",
                when, a, allocated, u, used);
        exit(1);
    }
}

/* The protocol of the thread caches, as the library names it. */
static const char *protocol(void)
{
    static char buf[65536];
    FILE *f = tmpfile();
    if (f == NULL)
        die("tmpfile failed");
    fflush(stdout);
    dump_pools_to_fd(fileno(f));
    rewind(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    if (strstr(buf, "Thread caches: membarrier"))
        return "membarrier";
    if (strstr(buf, "Thread caches: fenced owner"))
        return "fence";
    return "unknown";
}

/* The median cost of reading clock ID, ns. */
static double clock_cost(clockid_t id)
{
    double v[1001];
    for (int i = 0; i < 1001; i++) {
        double a = clock_ns(id);
        v[i] = clock_ns(id) - a;
    }
    return median(v, 1001);
}

/* ---- the row ---------------------------------------------------------------- */
static struct holder holders[MAX_THREADS];   /* [0]: the main thread */
static int nthreads;

static void row_begin(int t)
{
    char name[32];
    snprintf(name, sizeof name, "limit-%d", t);
    pool = create_pool(name, OBJ_SIZE, 0);
    if (pool == NULL)
        die("create_pool failed");
    pool_set_limit(pool, (unsigned)(t * per));
    nthreads = t;
    setup(&holders[0]);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, STACK_SIZE);
    for (int i = 1; i < t; i++) {
        struct holder *h = &holders[i];
        memset(h, 0, sizeof *h);
        if (sem_init(&h->go, 0, 0) != 0)
            die("sem_init failed");
        if (pthread_create(&h->tid, &attr, helper, h) != 0)
            die("pthread_create failed");
        run(h, SETUP);   /* one after the other: registry order = creation order */
    }
    pthread_attr_destroy(&attr);
    expect("after the setup", (unsigned long)(t * per), (unsigned long)(t * per));
}

static void row_end(void)
{
    for (int i = 1; i < nthreads; i++) {
        run(&holders[i], EXIT);
        pthread_join(holders[i].tid, NULL);
        sem_destroy(&holders[i].go);
    }
    release_all(&holders[0]);
    if (pool_destroy(pool) != NULL)
        die("pool_destroy: objects still held");
}

/* n failed allocations; exits on any success. */
static void fail_loop(long n)
{
    long nonnull = 0;
    for (long i = 0; i < n; i++) {
        void *p = pool_alloc(pool);
        if (p != NULL) {
            nonnull++;
            pool_free(pool, p);
        }
    }
    if (nonnull != 0) {
        fprintf(stderr, "limit: %ld of %ld pool_alloc calls at the limit returned an object (every object is held)\n",
                nonnull, n);
        exit(1);
    }
}

struct stats {
    double med, min, max, wall;
    long calls;
};

static void fail_part(int batches, double batch_ns, double clk, struct stats *s)
{
    unsigned long failed0 = pool_failed(pool);
    long n = 1, calls = 0;
    for (;;) {   /* calibration: doubles n until a batch takes batch_ns */
        double c0 = cpu_ns();
        fail_loop(n);
        calls += n;
        if (cpu_ns() - c0 >= batch_ns)
            break;
        n *= 2;
    }
    double v[MAX_BATCHES], w[MAX_BATCHES];
    for (int b = 0; b < batches; b++) {
        double w0 = wall_ns(), c0 = cpu_ns();
        fail_loop(n);
        double c1 = cpu_ns(), w1 = wall_ns();
        v[b] = (c1 - c0 - clk) / (double)n;
        w[b] = (w1 - w0) / (double)n;
        calls += n;
    }
    if (pool_failed(pool) - failed0 != (unsigned long)calls)
        die("fail: pool_failed does not count every failed call");
    s->med = median(v, batches);
    s->min = v[0];
    s->max = v[batches - 1];
    s->wall = median(w, batches);
    s->calls = n * batches;
}

static void steal_part(long iters, double clk, struct stats *s)
{
    struct holder *last = &holders[nthreads - 1];
    unsigned long limit = (unsigned long)(nthreads * per);
    unsigned long released0 = pool_released(pool);
    run(last, FREE_ONE);
    pool_flush(pool);   /* an object in the shared cache would go to the OS */
    expect("steal: one object idle in a thread cache", limit, limit - 1);
    double *v = malloc((size_t)iters * sizeof *v);
    if (v == NULL)
        die("malloc failed");
    long n = 0;
    double end = wall_ns() + STEAL_WALL_NS;
    while (n < iters && (n < 10 || wall_ns() < end)) {
        double c0 = wall_ns();
        void *p = pool_alloc(pool);
        double c1 = wall_ns();
        if (p == NULL)
            die("steal: pool_alloc failed with an object idle in a helper's cache");
        v[n++] = c1 - c0 - clk;
        last->obj = p;
        run(last, TAKE);
    }
    pool_flush(pool);
    expect("steal: after the loop", limit, limit - 1);
    if (pool_released(pool) != released0)
        die("steal: an object went through the shared cache");
    run(last, HOLD_ONE);
    expect("steal: the object held again", limit, limit);
    s->med = median(v, n);
    s->min = v[0];
    s->max = v[n - 1];
    s->calls = n;
    free(v);
}

static double slow_region(void **objs, double clk)
{
    double c0 = cpu_ns();
    for (int i = 0; i < SLOW_OBJS; i++)
        objs[i] = pool_alloc(pool);
    double t = cpu_ns() - c0 - clk;
    for (int i = 0; i < SLOW_OBJS; i++) {
        if (objs[i] == NULL)
            die("slow: pool_alloc failed below the limit");
        pool_free(pool, objs[i]);
    }
    return t;
}

static void slow_part(int batches, double batch_ns, double clk, struct stats *s)
{
    unsigned long limit = (unsigned long)(nthreads * per);
    void *objs[SLOW_OBJS];
    pool_set_limit(pool, (unsigned)(limit + SLOW_OBJS));
    pool_set_cache_size(0);
    for (int i = 0; i < SLOW_OBJS; i++)
        if ((objs[i] = pool_alloc(pool)) == NULL)
            die("slow: pool_alloc failed below the limit");
    for (int i = 0; i < SLOW_OBJS; i++)
        pool_free(pool, objs[i]);
    pool_flush(pool);   /* ... would free them: check they are there first */
    expect("slow: after pool_flush", limit, limit);
    for (int i = 0; i < SLOW_OBJS; i++)
        if ((objs[i] = pool_alloc(pool)) == NULL)
            die("slow: pool_alloc failed below the limit");
    for (int i = 0; i < SLOW_OBJS; i++)
        pool_free(pool, objs[i]);
    expect("slow: objects idle in the shared cache", limit + SLOW_OBJS, limit);
    long reps = 1;
    for (;;) {   /* calibration */
        double t = 0;
        for (long r = 0; r < reps; r++)
            t += slow_region(objs, clk);
        if (t >= batch_ns)
            break;
        reps *= 2;
    }
    double v[MAX_BATCHES];
    for (int b = 0; b < batches; b++) {
        double t = 0;
        for (long r = 0; r < reps; r++)
            t += slow_region(objs, clk);
        v[b] = t / (double)(reps * SLOW_OBJS);
    }
    /* Every call took an object of the shared cache: none came from the OS. */
    expect("slow: after the loop", limit + SLOW_OBJS, limit);
    pool_set_cache_size(CACHE_DEFAULT);
    s->med = median(v, batches);
    s->min = v[0];
    s->max = v[batches - 1];
    s->calls = reps * SLOW_OBJS * batches;
}

/* ---- main --------------------------------------------------------------------- */
static void usage(void)
{
    fprintf(stderr, "usage: limit rows PER BATCHES BATCH_MS STEAL T... | limit count PER T N\n");
    exit(2);
}

static long arg_long(const char *s, long lo, long hi)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi)
        usage();
    return v;
}

int main(int argc, char **argv)
{
    if (sem_init(&done, 0, 0) != 0)
        die("sem_init failed");
    pool_set_release_period(UINT_MAX);
    if (argc == 5 && strcmp(argv[1], "count") == 0) {
        per = (int)arg_long(argv[2], 1, MAX_PER);
        int t = (int)arg_long(argv[3], 2, MAX_THREADS);
        long n = arg_long(argv[4], 0, LONG_MAX);
        row_begin(t);
        (void)getppid();   /* the markers strace's log is cut at */
        fail_loop(n);
        (void)getppid();
        row_end();
        printf("threads=%d failed=%ld proto=%s\n", t, n, protocol());
        return 0;
    }
    if (argc < 7 || strcmp(argv[1], "rows") != 0)
        usage();
    per = (int)arg_long(argv[2], 1, MAX_PER);
    int batches = (int)arg_long(argv[3], 1, MAX_BATCHES);
    double batch_ns = (double)arg_long(argv[4], 1, 100000) * 1e6;
    long steal = arg_long(argv[5], 1, 10000000);
    double clk = clock_cost(CLOCK_THREAD_CPUTIME_ID), wclk = clock_cost(CLOCK_MONOTONIC);
    for (int a = 6; a < argc; a++) {
        int t = (int)arg_long(argv[a], 2, MAX_THREADS);
        struct stats f, st, sl;
        row_begin(t);
        fail_part(batches, batch_ns, clk, &f);
        steal_part(steal, wclk, &st);
        slow_part(batches, batch_ns, clk, &sl);
        const char *proto = protocol();
        row_end();
        printf("threads=%d limit=%d proto=%s fail_ns=%.1f fail_min=%.1f fail_max=%.1f fail_wall_ns=%.1f fail_calls=%ld"
               " steal_ns=%.1f steal_iters=%ld slow_ns=%.2f slow_min=%.2f slow_max=%.2f slow_calls=%ld clock_ns=%.1f wclock_ns=%.1f\n",
               t, t * per, proto, f.med, f.min, f.max, f.wall, f.calls, st.med, st.calls,
               sl.med, sl.min, sl.max, sl.calls, clk, wclk);
        fflush(stdout);
    }
    return 0;
}
