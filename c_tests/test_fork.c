/* fork() of a busy multi-threaded process: the child must find the library
 * usable. While eight threads hammer the library (pool_alloc/pool_free on a
 * default pool, on a pool without thread caches whose shared-cache head is
 * thus always contended, on a pool with the spin-locked shared cache, and on
 * a pool that only the threads use; buffers with b_alloc/b_free, the wait
 * queue and offer_buffers; create_pool/pool_destroy of a scratch pool, which
 * takes the pool registry; pool_used and pool_gc, which visit every thread
 * cache), main forks NFORKS times. At each fork another thread may hold any
 * lock of the library; in the child that thread does not exist, so unless
 * the library prepares for fork, the child blocks forever on that lock.
 *
 * Each child is single-threaded and uses everything: allocation and release
 * on every pool, create_pool and pool_destroy, pool_used, pool_gc, pool_flush,
 * dump_pools_to_fd, b_alloc/b_free, b_queue/b_dequeue, offer_buffers. It
 * arms alarm() first, so a child that hangs dies of SIGALRM; it reports
 * what it found wrong in its exit status (a bit per kind of check).
 *
 * The child also checks adoption: the idle objects of the threads' caches
 * belong to threads that do not exist in the child. They must have been
 * moved to the shared cache by the library's fork handling, so that in the
 * child pool_flush frees them: on the pool main never used, after
 * pool_flush, every object still allocated must be one that is held
 * (pool_allocated == pool_used). Stranded in dead caches, they would count
 * as allocated and idle forever (today: dozens to hundreds of objects). The
 * counts are exact only when no call is in flight, and a call that was in
 * flight at the fork stays half done in the child forever; so the threads
 * count themselves in and out of every call that can move p_adopt's objects,
 * and the child allows one object of difference per call it inherited half
 * done (most forks inherit none, and then the counts must be exact).
 *
 * The parent CHECKs that every child exited 0: none hung, crashed or saw a
 * bad result. Forks are spaced by the threads' progress, not by sleeping. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bufpool.h"
#include "harness.h"

/* GCC's ASan runtime does not hold its allocator's locks across fork(): a
 * child may block in malloc on a lock that a parent thread held inside ASan,
 * whatever the library does. Under ASan the threads are therefore parked
 * (outside the library, between two iterations) at each fork: the child's
 * use of everything and the adoption check still run, under ASan's eye. */
#if defined(__SANITIZE_ADDRESS__)
#define PARK_AT_FORK 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PARK_AT_FORK 1
#endif
#endif
#ifndef PARK_AT_FORK
#define PARK_AT_FORK 0
#endif

#define NFORKS 30
#define CHILD_ALARM 30         /* seconds before a child counts as hung (a hang, not a speed: a child takes milliseconds) */
#define PROGRESS_PER_FORK 3000 /* worker iterations (all threads) between forks */

static struct pool_head *p_def, *p_nolocal, *p_locked, *p_adopt;

static atomic_int stop;
static atomic_ulong progress;
/* Threads inside a call that changes p_adopt's idle objects or counters.
 * The child sees how many were inside one when it was forked: each such
 * call is frozen half done there, which may leave pool_used off by one
 * (the counts are exact only when no call is in flight). */
static atomic_int in_adopt;

/* What the worker threads saw; checked by main after joining them. */
static atomic_ulong worker_nulls, worker_bad;
static atomic_ulong parent_wakeups;

/* Parking (under ASan only): main asks, each thread waits at the top of its
 * loop, main forks once all are parked, then lets them go. */
static pthread_mutex_t park_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t park_cv = PTHREAD_COND_INITIALIZER, parked_cv = PTHREAD_COND_INITIALIZER;
static atomic_int park_asked;
static int parked;

static void maybe_park(void)
{
    if (!PARK_AT_FORK || !atomic_load_explicit(&park_asked, memory_order_relaxed))
        return;
    pthread_mutex_lock(&park_mu);
    parked++;
    pthread_cond_broadcast(&parked_cv);
    while (atomic_load(&park_asked))
        pthread_cond_wait(&park_cv, &park_mu);
    parked--;
    pthread_mutex_unlock(&park_mu);
}

static void park_all(int nthreads)
{
    pthread_mutex_lock(&park_mu);
    atomic_store(&park_asked, 1);
    while (parked < nthreads)
        pthread_cond_wait(&parked_cv, &park_mu);
    pthread_mutex_unlock(&park_mu);
}

static void unpark_all(void)
{
    pthread_mutex_lock(&park_mu);
    atomic_store(&park_asked, 0);
    pthread_cond_broadcast(&park_cv);
    pthread_mutex_unlock(&park_mu);
}

static void start(pthread_t *t, void *(*fn)(void *), void *arg)
{
    if (pthread_create(t, NULL, fn, arg) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        exit(2);
    }
}

/* Allocates n objects of `p`, writes them, checks and frees them. */
static void churn(struct pool_head *p, size_t size, unsigned n, unsigned seed,
                  unsigned long *nulls, unsigned long *bad)
{
    void *o[16];
    for (unsigned i = 0; i < n; i++) {
        o[i] = pool_alloc(p);
        *nulls += o[i] == NULL;
        if (o[i])
            fill(o[i], size, seed + i);
    }
    for (unsigned i = 0; i < n; i++) {
        if (!o[i])
            continue;
        *bad += !intact(o[i], size, seed + i);
        pool_free(p, o[i]);
    }
}

/* ---- the parent's worker threads ---------------------------------------- */

struct hammer {
    struct pool_head *pool;
    size_t size;
    int with_adopt; /* also keep idle objects of p_adopt in this thread's cache */
};

static void *hammer_main(void *arg)
{
    struct hammer *h = arg;
    unsigned long nulls = 0, bad = 0;
    unsigned r = 0;
    if (h->with_adopt) {
        atomic_fetch_add(&in_adopt, 1);
        churn(p_adopt, 80, 16, 7, &nulls, &bad); /* fills this thread's cache */
        atomic_fetch_sub(&in_adopt, 1);
    }
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        maybe_park();
        churn(h->pool, h->size, 1 + r % 8, r, &nulls, &bad);
        if (h->with_adopt && r % 8 == 0) {
            /* now and then: a few idle objects of p_adopt stay in this cache */
            atomic_fetch_add(&in_adopt, 1);
            churn(p_adopt, 80, 1 + r / 8 % 4, r, &nulls, &bad);
            atomic_fetch_sub(&in_adopt, 1);
        }
        r++;
        atomic_fetch_add_explicit(&progress, 1, memory_order_relaxed);
    }
    atomic_fetch_add(&worker_nulls, nulls);
    atomic_fetch_add(&worker_bad, bad);
    return NULL;
}

static int count_wakeup(void *target)
{
    atomic_fetch_add_explicit((atomic_ulong *)target, 1, memory_order_relaxed);
    return 1;
}

/* Buffers: allocation, release, the wait queue and offers. */
static void *buffers_main(void *arg)
{
    struct buffer_wait bw;
    unsigned long nulls = 0;
    (void)arg;
    buffer_wait_init(&bw, &parent_wakeups, count_wakeup);
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        maybe_park();
        struct buffer b[3] = { BUF_NULL_INIT, BUF_NULL_INIT, BUF_NULL_INIT };
        for (int i = 0; i < 3; i++)
            nulls += b_alloc(&b[i]) == NULL;
        b_queue(&bw);
        for (int i = 0; i < 3; i++)
            b_free(&b[i]);
        offer_buffers(NULL, 0);
        b_dequeue(&bw);
        atomic_fetch_add_explicit(&progress, 1, memory_order_relaxed);
    }
    b_dequeue(&bw);
    atomic_fetch_add(&worker_nulls, nulls);
    return NULL;
}

/* Creates and destroys a pool over and over: the pool registry's lock. */
static void *scratch_main(void *arg)
{
    unsigned long nulls = 0, bad = 0;
    unsigned r = 0;
    static const unsigned flags[3] = { 0, POOL_F_NO_LOCAL_CACHE, POOL_F_SHARED_LOCKED };
    (void)arg;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        maybe_park();
        struct pool_head *s = create_pool("parent-scratch", 48 + 16 * (r % 4), flags[r % 3]);
        nulls += s == NULL;
        if (s) {
            churn(s, 48, 4, r, &nulls, &bad);
            bad += pool_destroy(s) != NULL;
        }
        r++;
        atomic_fetch_add_explicit(&progress, 1, memory_order_relaxed);
    }
    atomic_fetch_add(&worker_nulls, nulls);
    atomic_fetch_add(&worker_bad, bad);
    return NULL;
}

/* Counts (visiting every thread cache) and, now and then, pool_gc. */
static void *gc_main(void *arg)
{
    unsigned r = 0;
    volatile unsigned long sink = 0;
    (void)arg;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        maybe_park();
        sink += pool_used(p_def) + pool_used(p_nolocal) + pool_used(p_locked) + pool_used(p_adopt);
        if (++r % 64 == 0) {
            atomic_fetch_add(&in_adopt, 1);
            pool_gc(NULL);
            atomic_fetch_sub(&in_adopt, 1);
        }
        sched_yield(); /* now and then, not all the time */
        atomic_fetch_add_explicit(&progress, 1, memory_order_relaxed);
    }
    (void)sink;
    return NULL;
}

/* ---- the child ------------------------------------------------------------ */

enum {
    BAD_ADOPT = 1,   /* idle objects of dead threads not reachable by pool_flush */
    BAD_ALLOC = 2,   /* an allocation failed or an object was corrupted */
    BAD_CREATE = 4,  /* create_pool / pool_destroy misbehaved */
    BAD_BUFFER = 8,  /* b_alloc failed */
    BAD_WAITQ = 16,  /* the wait queue misbehaved */
    BAD_DUMP = 32,   /* /dev/null could not be opened (not the library's fault) */
};

static atomic_ulong child_wakeups;

static void child_main(void)
{
    int bad = 0;
    unsigned long nulls = 0, corrupt = 0;
    struct pool_head *pools[4] = { p_def, p_nolocal, p_locked, p_adopt };
    static const size_t sizes[4] = { 64, 96, 128, 80 };

    alarm(CHILD_ALARM);

    /* Adoption first, before this thread touches p_adopt. Each call that
     * was in flight at the fork may leave the counts off by one; with none
     * in flight (most forks) they must be exact. */
    pool_flush(p_adopt);
    long off = (long)pool_allocated(p_adopt) - (long)pool_used(p_adopt);
    long frozen = atomic_load(&in_adopt);
    if (off > frozen || off < -frozen)
        bad |= BAD_ADOPT;

    for (int k = 0; k < 4; k++)
        churn(pools[k], sizes[k], 12, 100u + (unsigned)k, &nulls, &corrupt);
    if (nulls || corrupt)
        bad |= BAD_ALLOC;

    struct pool_head *s = create_pool("child-scratch", 72, 0);
    if (!s) {
        bad |= BAD_CREATE;
    } else {
        nulls = corrupt = 0;
        churn(s, 72, 5, 3, &nulls, &corrupt);
        if (nulls || corrupt)
            bad |= BAD_ALLOC;
        pool_flush(s);
        pool_gc(NULL);
        if (pool_destroy(s) != NULL)
            bad |= BAD_CREATE;
    }

    for (int k = 0; k < 4; k++)
        (void)pool_used(pools[k]);
    pool_gc(NULL);
    pool_flush(p_def);
    pool_flush(p_nolocal);

    int fd = open("/dev/null", O_WRONLY);
    if (fd < 0)
        bad |= BAD_DUMP;
    dump_pools_to_fd(fd);
    if (fd >= 0)
        close(fd);

    struct buffer b = BUF_NULL_INIT;
    if (b_alloc(&b) == NULL || b.size == 0)
        bad |= BAD_BUFFER;
    b_free(&b);

    struct buffer_wait bw;
    buffer_wait_init(&bw, &child_wakeups, count_wakeup);
    if (b_queue(&bw) != 1 || !b_is_queued(&bw))
        bad |= BAD_WAITQ;
    offer_buffers(NULL, 0); /* no limit: every waiter is woken, ours too */
    if (b_is_queued(&bw) || atomic_load(&child_wakeups) != 1)
        bad |= BAD_WAITQ;
    if (b_queue(&bw) != 1)
        bad |= BAD_WAITQ;
    b_dequeue(&bw);
    if (b_is_queued(&bw))
        bad |= BAD_WAITQ;

    _exit(bad);
}

/* ---- main ------------------------------------------------------------------ */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits until the workers have made `n` more iterations; 0 if they stall. */
static int wait_progress(unsigned long n)
{
    unsigned long from = atomic_load(&progress);
    double deadline = now() + 20.0;
    while (atomic_load(&progress) - from < n) {
        if (now() > deadline)
            return 0;
        sched_yield();
    }
    return 1;
}

int main(void)
{
    enum { NHAMMER = 5 };
    struct hammer h[NHAMMER];
    pthread_t th[NHAMMER + 3];
    pid_t kids[NFORKS];
    int nkids = 0, nthreads = 0;

    p_def = create_pool("fork-default", 64, 0);
    p_nolocal = create_pool("fork-nolocal", 96, POOL_F_NO_LOCAL_CACHE);
    p_locked = create_pool("fork-locked", 128, POOL_F_SHARED_LOCKED);
    p_adopt = create_pool("fork-adopt", 80, 0);
    CHECK(p_def && p_nolocal && p_locked && p_adopt);
    CHECK_EQ(dynbuf_init(16384, 2, 0), 0);
    if (!(p_def && p_nolocal && p_locked && p_adopt))
        DONE("test_fork");

    h[0] = (struct hammer){ p_def, 64, 1 };
    h[1] = (struct hammer){ p_def, 64, 1 };
    h[2] = (struct hammer){ p_nolocal, 96, 0 };
    h[3] = (struct hammer){ p_nolocal, 96, 1 };
    h[4] = (struct hammer){ p_locked, 128, 0 };
    for (int i = 0; i < NHAMMER; i++)
        start(&th[nthreads++], hammer_main, &h[i]);
    start(&th[nthreads++], buffers_main, NULL);
    start(&th[nthreads++], scratch_main, NULL);
    start(&th[nthreads++], gc_main, NULL);

    if (PARK_AT_FORK)
        printf("fork: built with ASan, whose allocator is not fork-safe: threads parked outside the library at each fork\n");
    int stalled = 0;
    for (int i = 0; i < NFORKS; i++) {
        if (!wait_progress(PROGRESS_PER_FORK)) {
            stalled = 1;
            break;
        }
        fflush(stdout);
        fflush(stderr);
        if (PARK_AT_FORK)
            park_all(nthreads);
        pid_t pid = fork();
        if (pid == 0)
            child_main();
        if (PARK_AT_FORK)
            unpark_all();
        CHECK(pid > 0);
        if (pid > 0)
            kids[nkids++] = pid;
    }
    CHECK(!stalled);

    /* Stop the threads first: the children get the CPUs. */
    atomic_store(&stop, 1);
    for (int i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);

    int ok = 0, hung = 0, crashed = 0, reported = 0;
    int bits_seen = 0, adopt = 0;
    for (int i = 0; i < nkids; i++) {
        int status;
        pid_t w;
        do
            w = waitpid(kids[i], &status, 0);
        while (w < 0 && errno == EINTR);
        CHECK(w == kids[i]);
        if (w != kids[i])
            continue;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            ok++;
        } else if (WIFEXITED(status)) {
            reported++;
            bits_seen |= WEXITSTATUS(status);
            adopt += (WEXITSTATUS(status) & BAD_ADOPT) != 0;
        } else if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) {
            hung++;
        } else {
            crashed++;
            fprintf(stderr, "child %d died of signal %d\n", i, WIFSIGNALED(status) ? WTERMSIG(status) : -1);
        }
    }
    printf("fork: %d children: %d exited 0, %d hung (killed by SIGALRM after %d s), %d crashed, "
           "%d reported bad checks (mask 0x%x; %d with idle objects stranded in dead threads' caches)\n",
           nkids, ok, hung, CHILD_ALARM, crashed, reported, bits_seen, adopt);
    CHECK_EQ(nkids, NFORKS);
    CHECK_EQ(hung, 0);
    CHECK_EQ(crashed, 0);
    CHECK_EQ(adopt, 0);
    CHECK_EQ(reported, 0);
    CHECK_EQ(ok, nkids);

    /* The parent's own threads never failed either. */
    CHECK_EQ(atomic_load(&worker_nulls), 0);
    CHECK_EQ(atomic_load(&worker_bad), 0);
    CHECK_EQ(pool_used(p_def), 0);
    CHECK_EQ(pool_used(p_nolocal), 0);
    CHECK_EQ(pool_used(p_locked), 0);
    CHECK_EQ(pool_used(p_adopt), 0);
    DONE("test_fork");
}
