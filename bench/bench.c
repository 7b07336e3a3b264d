/* bench.c: bufpool beside general-purpose allocators, four workloads.
 *
 * One source, compiled with the same flags into one binary per variant
 * (bench/bench.mk): with -DBENCH_POOL the loops call pool_alloc/pool_free
 * on a pool made by create_pool(name, size, 0), linked against
 * libbufpool.so or libbufpool.a; without it they call malloc/free, and the
 * binary is linked against the allocator under test (glibc: nothing more;
 * -ljemalloc, -lmimalloc, -ltcmalloc_minimal: the library's malloc then
 * takes the place of glibc's for the whole process, as LD_PRELOAD would).
 *
 *   bench info                 where malloc comes from (checks the link)
 *   bench w1 SIZE OPS          W1 pair: alloc + free, the object dropped at once
 *   bench w2 SIZE OPS          W2 ring: 256 objects live; each op frees the
 *                              oldest, allocates one and writes 64 bytes to it
 *   bench w3 SIZE MS           W3: 4 threads, each running W2's ring, all on
 *                              one shared pool (or malloc), for MS ms of wall time
 *   bench w4 SIZE MS           W4 producer/consumer: one thread allocates and
 *                              writes 64 bytes, passes the object through a
 *                              1024-slot single-producer/single-consumer ring
 *                              of pointers, another thread frees it; MS ms
 *   bench count w1|w2 SIZE OPS one untimed loop, for callgrind
 *                              (--toggle-collect=bench_w1_loop / bench_w2_loop)
 *
 * A timed mode prints one line:
 *   cpu_ns=C wall_ns=W ops=N mallocs=M alloc0=A alloc1=B minflt=F
 * C: thread CPU time per op (CLOCK_THREAD_CPUTIME_ID, all the workload's
 * threads summed), W: wall time per op (CLOCK_MONOTONIC; for W3 and W4 the
 * elapsed time divided by the ops of all threads, so 1000/W is Mops/s),
 * M: calls to malloc & co. made during the timed part (bufpool variants
 * only: they count the library's own calls through a wrapper; -1 for the
 * malloc variants, where every object is a malloc call), A and B: the
 * pool's pool_allocated() before and after the timed part (-1 for malloc
 * variants), F: minor page faults of the process during the timed part.
 *
 * The measured loops are separate, non-inlined, exported functions, so that
 * callgrind counts exactly their instructions (calls included); warm-up runs
 * through static twins of them. Each loop hands its pointer to an empty asm
 * statement so that the compiler can neither drop a malloc + free pair nor
 * move a release before its allocation. */

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bufpool.h"

#define RING      256      /* W2, W3: live objects per thread */
#define WRITE     64       /* W2, W3, W4: bytes written into each new object */
#define W3THREADS 4
#define SPSC      1024     /* W4: slots of the pointer ring */
#define WARM_OPS  20000    /* warm-up ops before every timed part */
#define CHUNK     256      /* W3: ops between two looks at the stop flag */

#ifdef BENCH_POOL
#define ALLOC(pool, size) ((void)(size), pool_alloc(pool))
#define FREE(pool, p)     pool_free((pool), (p))
#else
#define ALLOC(pool, size) ((void)(pool), malloc(size))
#define FREE(pool, p)     ((void)(pool), free(p))
#endif

#define KEEP(p) __asm__ volatile("" : : "r"(p) : "memory")

static void die(const char *what)
{
    fprintf(stderr, "bench: %s\n", what);
    exit(1);
}

/* ---- malloc counter (bufpool variants) ----------------------------------
 * bufpool takes its objects from malloc / posix_memalign. In the bufpool
 * binaries these wrappers count every such call (the library's included:
 * the executable's definitions take precedence over libc's) and forward to
 * glibc's own entry points, so that "no malloc per object in steady state"
 * is a number, not a belief. The malloc variants have no wrapper: there the
 * allocator under test is malloc itself. */
#ifdef BENCH_POOL
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
void *memalign(size_t align, size_t size);

static atomic_long mallocs;

static long malloc_calls(void) { return atomic_load(&mallocs); }

void *malloc(size_t size)
{
    atomic_fetch_add_explicit(&mallocs, 1, memory_order_relaxed);
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size)
{
    atomic_fetch_add_explicit(&mallocs, 1, memory_order_relaxed);
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size)
{
    atomic_fetch_add_explicit(&mallocs, 1, memory_order_relaxed);
    return __libc_realloc(p, size);
}

void *memalign(size_t align, size_t size)
{
    atomic_fetch_add_explicit(&mallocs, 1, memory_order_relaxed);
    return __libc_memalign(align, size);
}

void *aligned_alloc(size_t align, size_t size)
{
    return memalign(align, size);
}

int posix_memalign(void **out, size_t align, size_t size)
{
    if (align == 0 || (align & (align - 1)) != 0 || align % sizeof(void *) != 0)
        return EINVAL;
    void *p = memalign(align, size);
    if (p == NULL)
        return ENOMEM;
    *out = p;
    return 0;
}

static struct pool_head *make_pool(size_t size)
{
    struct pool_head *pool = create_pool("bench", (unsigned int)size, 0);
    if (pool == NULL)
        die("create_pool failed");
    return pool;
}
static long allocated(struct pool_head *pool) { return (long)pool_allocated(pool); }
#else
static long malloc_calls(void) { return -1; }
static struct pool_head *make_pool(size_t size) { (void)size; return NULL; }
static long allocated(struct pool_head *pool) { (void)pool; return -1; }
#endif

/* ---- clocks -------------------------------------------------------------- */
static double clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}
static double cpu_ns(void) { return clock_ns(CLOCK_THREAD_CPUTIME_ID); }
static double wall_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static long minflt(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("pause");
#endif
}

/* Spins a little, then yields: the machine may have fewer free cores than threads. */
static void backoff(unsigned *spins)
{
    if (++*spins < 64)
        cpu_relax();
    else
        sched_yield();
}

struct result {
    double cpu, wall;
    long ops, mallocs, alloc0, alloc1, minflt;
};

static void print_result(const struct result *r)
{
    printf("cpu_ns=%.3f wall_ns=%.3f ops=%ld mallocs=%ld alloc0=%ld alloc1=%ld minflt=%ld\n",
           r->cpu / (double)r->ops, r->wall / (double)r->ops, r->ops, r->mallocs,
           r->alloc0, r->alloc1, r->minflt);
}

/* ---- W1: pair ------------------------------------------------------------ */
void bench_w1_loop(struct pool_head *pool, size_t size, long n);

__attribute__((noinline)) void bench_w1_loop(struct pool_head *pool, size_t size, long n)
{
    for (long i = 0; i < n; i++) {
        void *p = ALLOC(pool, size);
        KEEP(p);
        FREE(pool, p);
    }
}

static void warm_w1(struct pool_head *pool, size_t size, long n)
{
    for (long i = 0; i < n; i++) {
        void *p = ALLOC(pool, size);
        if (p == NULL)
            die("allocation failed");
        KEEP(p);
        FREE(pool, p);
    }
}

#ifdef BENCH_POOL
/* W1 must run on bufpool's thread-cache path: the pool's one object idle in
 * this thread's cache (pool_flush frees the shared cache, not thread caches). */
static void check_in_thread_cache(struct pool_head *pool)
{
    pool_flush(pool);
    if (pool_allocated(pool) != 1 || pool_used(pool) != 0) {
        fprintf(stderr, "bench: W1 is not on the thread-cache path (%lu allocated, %lu used)\n",
                pool_allocated(pool), pool_used(pool));
        exit(1);
    }
}
#else
static void check_in_thread_cache(struct pool_head *pool) { (void)pool; }
#endif

/* ---- W2: ring of 256 live objects ----------------------------------------- */
static inline void ring_run(struct pool_head *pool, size_t size, void **ring, long from, long n)
{
    for (long i = from; i < from + n; i++) {
        void **slot = &ring[i & (RING - 1)];
        FREE(pool, *slot);
        void *p = ALLOC(pool, size);
        memset(p, (int)i, WRITE);
        KEEP(p);
        *slot = p;
    }
}

void bench_w2_loop(struct pool_head *pool, size_t size, void **ring, long n);

__attribute__((noinline)) void bench_w2_loop(struct pool_head *pool, size_t size, void **ring, long n)
{
    ring_run(pool, size, ring, 0, n);
}

static void ring_fill(struct pool_head *pool, size_t size, void **ring)
{
    for (int i = 0; i < RING; i++) {
        ring[i] = ALLOC(pool, size);
        if (ring[i] == NULL)
            die("allocation failed");
        memset(ring[i], i, WRITE);
    }
    for (long i = 0; i < WARM_OPS; i += RING) {
        ring_run(pool, size, ring, i, RING);
        for (int j = 0; j < RING; j++)
            if (ring[j] == NULL)
                die("allocation failed");
    }
}

static void ring_drain(struct pool_head *pool, void **ring)
{
    for (int i = 0; i < RING; i++)
        FREE(pool, ring[i]);
}

/* ---- W3: 4 threads, each its ring, one shared pool ------------------------- */
static atomic_int w3_stop;
static pthread_barrier_t w3_barrier;

struct w3_arg {
    pthread_t tid;
    struct pool_head *pool;
    size_t size;
    long ops;
    double cpu, start, end;
};

static void *w3_thread(void *p)
{
    struct w3_arg *a = p;
    void *ring[RING];
    ring_fill(a->pool, a->size, ring);
    pthread_barrier_wait(&w3_barrier);
    a->start = wall_ns();
    double c0 = cpu_ns();
    long ops = 0;
    while (!atomic_load_explicit(&w3_stop, memory_order_relaxed)) {
        ring_run(a->pool, a->size, ring, ops, CHUNK);
        ops += CHUNK;
    }
    a->cpu = cpu_ns() - c0;
    a->end = wall_ns();
    a->ops = ops;
    ring_drain(a->pool, ring);
    return NULL;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void w3(size_t size, long ms)
{
    struct pool_head *pool = make_pool(size);
    struct w3_arg args[W3THREADS];
    if (pthread_barrier_init(&w3_barrier, NULL, W3THREADS + 1) != 0)
        die("pthread_barrier_init failed");
    for (int t = 0; t < W3THREADS; t++) {
        args[t] = (struct w3_arg){ .pool = pool, .size = size };
        if (pthread_create(&args[t].tid, NULL, w3_thread, &args[t]) != 0)
            die("pthread_create failed");
    }
    pthread_barrier_wait(&w3_barrier);
    struct result r = { .alloc0 = allocated(pool), .mallocs = malloc_calls(), .minflt = minflt() };
    sleep_ms(ms);
    atomic_store(&w3_stop, 1);
    /* Wall time: from the first thread's start to the last one's end (this
     * thread, a fifth on the cores, may run late after the barrier). */
    double start = 0, end = 0;
    for (int t = 0; t < W3THREADS; t++) {
        pthread_join(args[t].tid, NULL);
        r.ops += args[t].ops;
        r.cpu += args[t].cpu;
        if (t == 0 || args[t].start < start)
            start = args[t].start;
        if (args[t].end > end)
            end = args[t].end;
    }
    r.wall = end - start;
    /* After the rings are drained: objects taken from the OS while timed stay counted. */
    r.alloc1 = allocated(pool);
    r.mallocs = malloc_calls() < 0 ? -1 : malloc_calls() - r.mallocs;
    r.minflt = minflt() - r.minflt;
    print_result(&r);
}

/* ---- W4: producer allocates, consumer frees -------------------------------- */
static struct {
    _Alignas(64) atomic_long head;      /* objects pushed (producer) */
    _Alignas(64) atomic_long tail;      /* objects freed (consumer) */
    _Alignas(64) atomic_int done;       /* producer has pushed its last */
    _Alignas(64) void *slot[SPSC];
} q;

struct w4_arg {
    struct pool_head *pool;
    size_t size;
    long ms;
    double cpu_p, cpu_c, wall0, wall1;
    long alloc0, alloc1, mallocs0, mallocs1, minflt0, minflt1;
};

static void push(struct pool_head *pool, size_t size, long i)
{
    void *p = ALLOC(pool, size);
    if (p == NULL)
        die("allocation failed");
    memset(p, (int)i, WRITE);
    unsigned spins = 0;
    while (i - atomic_load_explicit(&q.tail, memory_order_acquire) >= SPSC)
        backoff(&spins);
    q.slot[i & (SPSC - 1)] = p;
    atomic_store_explicit(&q.head, i + 1, memory_order_release);
}

static void *w4_producer(void *p)
{
    struct w4_arg *a = p;
    long i = 0;
    for (; i < WARM_OPS; i++)
        push(a->pool, a->size, i);
    unsigned spins = 0;
    while (atomic_load_explicit(&q.tail, memory_order_acquire) != i)
        backoff(&spins);
    /* Steady state: the ring is empty, every object has gone round once. */
    a->alloc0 = allocated(a->pool);
    a->mallocs0 = malloc_calls();
    a->minflt0 = minflt();
    a->wall0 = wall_ns();
    double c0 = cpu_ns(), deadline = a->wall0 + (double)a->ms * 1e6;
    for (;;) {
        for (int k = 0; k < 64; k++, i++)
            push(a->pool, a->size, i);
        if (wall_ns() >= deadline)
            break;
    }
    a->cpu_p = cpu_ns() - c0;
    atomic_store_explicit(&q.done, 1, memory_order_release);
    return NULL;
}

static void *w4_consumer(void *p)
{
    struct w4_arg *a = p;
    double c0 = 0;
    for (long i = 0;; i++) {
        unsigned spins = 0;
        while (atomic_load_explicit(&q.head, memory_order_acquire) == i) {
            if (atomic_load_explicit(&q.done, memory_order_acquire) &&
                atomic_load_explicit(&q.head, memory_order_acquire) == i)
                goto out;
            backoff(&spins);
        }
        if (i == WARM_OPS)
            c0 = cpu_ns();
        unsigned char *obj = q.slot[i & (SPSC - 1)];
        if (obj[WRITE - 1] != (unsigned char)i)
            die("W4: object contents lost in transit");
        FREE(a->pool, obj);
        atomic_store_explicit(&q.tail, i + 1, memory_order_release);
    }
out:
    a->cpu_c = cpu_ns() - c0;
    a->wall1 = wall_ns();
    a->alloc1 = allocated(a->pool);
    a->mallocs1 = malloc_calls();
    a->minflt1 = minflt();
    return NULL;
}

/* Pins the thread made with ATTR to the NTH CPU this process may run on
 * (none when there are fewer than two). */
static void pin(pthread_attr_t *attr, int nth)
{
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0 || CPU_COUNT(&allowed) < 2)
        return;
    for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &allowed) && seen++ == nth) {
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            pthread_attr_setaffinity_np(attr, sizeof one, &one);
            return;
        }
    }
}

/* The producer and the consumer are pinned to two different cores, so that
 * every run hands its objects across cores: left to the scheduler on a
 * shared 2-core machine, the pair sometimes shares one core (the other one
 * busy elsewhere) and runs in batches of 1024 objects, a different
 * workload that is up to 5 times faster for some allocators. */
static void w4(size_t size, long ms)
{
    struct w4_arg a = { .pool = make_pool(size), .size = size, .ms = ms };
    pthread_t prod, cons;
    pthread_attr_t attr_p, attr_c;
    pthread_attr_init(&attr_p);
    pthread_attr_init(&attr_c);
    pin(&attr_p, 0);
    pin(&attr_c, 1);
    if (pthread_create(&cons, &attr_c, w4_consumer, &a) != 0 ||
        pthread_create(&prod, &attr_p, w4_producer, &a) != 0)
        die("pthread_create failed");
    pthread_join(prod, NULL);
    pthread_join(cons, NULL);
    struct result r = {
        .cpu = a.cpu_p + a.cpu_c, .wall = a.wall1 - a.wall0,
        .ops = atomic_load(&q.head) - WARM_OPS,
        .mallocs = a.mallocs0 < 0 ? -1 : a.mallocs1 - a.mallocs0,
        .alloc0 = a.alloc0, .alloc1 = a.alloc1, .minflt = a.minflt1 - a.minflt0,
    };
    print_result(&r);
}

/* ---- main ------------------------------------------------------------------ */
static void usage(void)
{
    fprintf(stderr, "usage: bench info | bench w1|w2 SIZE OPS | bench w3|w4 SIZE MS | bench count w1|w2 SIZE OPS\n");
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

static void single(const char *w, size_t size, long n, int timed)
{
    struct pool_head *pool = make_pool(size);
    struct result r = { .ops = n };
    void *ring[RING];
    int ring_mode = strcmp(w, "w2") == 0;
    if (ring_mode) {
        ring_fill(pool, size, ring);
    } else {
        warm_w1(pool, size, WARM_OPS);
        check_in_thread_cache(pool);
    }
    r.alloc0 = allocated(pool);
    r.mallocs = malloc_calls();
    r.minflt = minflt();
    double c0 = cpu_ns(), w0 = wall_ns();
    if (ring_mode)
        bench_w2_loop(pool, size, ring, n);
    else
        bench_w1_loop(pool, size, n);
    r.cpu = cpu_ns() - c0;
    r.wall = wall_ns() - w0;
    r.minflt = minflt() - r.minflt;
    r.mallocs = malloc_calls() < 0 ? -1 : malloc_calls() - r.mallocs;
    r.alloc1 = allocated(pool);
    if (ring_mode)
        ring_drain(pool, ring);
    else
        check_in_thread_cache(pool);
    if (timed)
        print_result(&r);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "info") == 0) {
        /* Where the allocation function really comes from, as the dynamic
         * linker resolved it. */
        Dl_info info;
#ifdef BENCH_POOL
        void *(*f)(struct pool_head *) = pool_alloc;
        const char *what = "pool_alloc/pool_free (create_pool, flags 0) from";
        const char *more = "; malloc: a counting wrapper over glibc's";
#else
        void *(*f)(size_t) = malloc;
        const char *what = "malloc/free from", *more = "";
#endif
        if (dladdr((void *)f, &info) == 0 || info.dli_fname == NULL)
            die("dladdr failed");
        printf("%s %s%s\n", what, info.dli_fname, more);
        return 0;
    }
    if (argc == 4) {
        size_t size = (size_t)arg_long(argv[2]);
        long n = arg_long(argv[3]);
        if (strcmp(argv[1], "w1") == 0 || strcmp(argv[1], "w2") == 0)
            single(argv[1], size, n, 1);
        else if (strcmp(argv[1], "w3") == 0)
            w3(size, n);
        else if (strcmp(argv[1], "w4") == 0)
            w4(size, n);
        else
            usage();
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "count") == 0 &&
        (strcmp(argv[2], "w1") == 0 || strcmp(argv[2], "w2") == 0)) {
        single(argv[2], (size_t)arg_long(argv[3]), arg_long(argv[4]), 0);
        return 0;
    }
    usage();
    return 2;
}
