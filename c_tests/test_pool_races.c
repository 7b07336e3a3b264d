/* Races between the pool's housekeeping calls and threads that use the pool.
 *
 * 1. Destroying pools that are in use. Four threads each own a pool and
 *    hold one object of it for the whole run, while they allocate and free
 *    other objects of it in a tight loop (alloc/free pairs, and bursts of 1
 *    to 8 objects held, then freed). Meanwhile main calls pool_destroy_all()
 *    and pool_destroy(p) on each pool, over and over, and pool_gc(NULL)
 *    before each round: it moves the threads' idle objects to the shared
 *    cache, so that the threads keep taking objects from the shared layer
 *    and the pool's counters keep changing, as in a busy process (without
 *    it each thread's few objects settle in its cache and the counters
 *    only move when the threads are preempted). A pool with an object
 *    held must never be freed: pool_destroy(p) must return p itself every
 *    time, pool_used(p) must read at least 1 every time, and
 *    pool_total_allocated() must stay sane (below 1 GiB; a counter that
 *    went below zero reads near 2^64). Once the threads have freed their
 *    objects and been joined, the counters must be exact (pool_used 0),
 *    each pool_destroy must free its pool (NULL) and nothing may remain
 *    allocated. A pool freed under its users makes the threads crash, so
 *    this part runs in a forked child that reports what it saw through a
 *    shared mapping; the parent checks the child's exit status (0 = every
 *    check passed, no signal) and the figures.
 *
 * 2. The limit failing while nothing holds it. A pool limited to 4 objects
 *    (minavail 0) and four threads that each hold at most one object at a
 *    time (alloc, write, check, free): no allocation may ever return NULL
 *    and pool_failed must stay 0, even while a fifth thread keeps calling
 *    pool_gc(NULL) and pool_flush(p), which move idle objects out of the
 *    thread caches and free idle objects to the OS while the threads look
 *    for them (an object on its way to the OS still counts against the
 *    limit but can no longer be found). Two object sizes: 1 KiB, kept in
 *    the thread caches (each thread writes the whole object, so that it
 *    holds it most of the time; this one catches the failure only in most
 *    runs), and 1 MiB, larger than the thread-cache budget, so that every
 *    free goes to the shared cache where gc and flush reach it (written at
 *    both ends; this one catches it in every run we tried). Then the same
 *    without the fifth thread, on a pool without a thread cache, so that
 *    every free is a release to the shared cache or, the pool being
 *    crowded, to the OS: no allocation may fail either. That failure was
 *    reported as rare (about one in ten million operations); this variant
 *    seldom catches it. Each run is bounded by time (1.5 to 2 s).
 *
 * Every loop is bounded by elapsed time as well as by a count, so that the
 * harness stays short under valgrind. Threads record; main checks.
 * Synchronisation: barriers, a semaphore, an atomic stop flag, joins,
 * waitpid. */
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bufpool.h"
#include "harness.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void start(pthread_t *t, void *(*fn)(void *), void *arg)
{
    if (pthread_create(t, NULL, fn, arg) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        exit(2);
    }
}

static void join(pthread_t t)
{
    if (pthread_join(t, NULL) != 0) {
        fprintf(stderr, "pthread_join failed\n");
        exit(2);
    }
}

/* A word written at the start of each object while it is held, checked
 * just before it is freed: another holder of the same object shows. */
static uintptr_t stamp_of(const void *o, unsigned id)
{
    return (uintptr_t)o ^ ((uintptr_t)id * 0x9E3779B97F4A7C15u);
}

static void stamp(void *o, unsigned id)
{
    uintptr_t s = stamp_of(o, id);
    memcpy(o, &s, sizeof s);
}

static int stamped(const void *o, unsigned id)
{
    uintptr_t s;
    memcpy(&s, o, sizeof s);
    return s == stamp_of(o, id);
}

/* ---- 1. pool_destroy / pool_destroy_all on pools in use ------------------ */

#define DR_POOLS 4
#define DR_SECONDS 1.5
#define DR_MAX_ROUNDS 1000000ul
#define DR_SANE_BYTES (1ull << 30)
#define DR_HANG_SECONDS 60 /* the child is killed if it hangs this long */

static const unsigned dr_sizes[DR_POOLS] = { 64, 200, 512, 1024 };

/* What the child reports to the parent (a MAP_SHARED page). Written by the
 * child's main thread only, read by the parent after waitpid. */
struct dr_board {
    int setup_ok;
    unsigned long rounds;            /* passes of main's destroy loop */
    unsigned long destroy_not_self;  /* pool_destroy(p) != p while p was in use */
    unsigned long used_below_one;    /* pool_used(p) < 1 while p was in use */
    unsigned long total_insane;      /* pool_total_allocated() >= 1 GiB */
    unsigned long long worst_total;  /* largest pool_total_allocated() seen */
    unsigned long first_bad_round;   /* round of the first violation (0: none) */
    int joined;                      /* the workers came back */
    unsigned long worker_ops, worker_nulls, worker_bad;
    int end_checked;                 /* the end checks ran */
    unsigned long end_used[DR_POOLS];
    unsigned long end_destroy_failed; /* pool_destroy(p) != NULL once all was back */
    unsigned long long end_total;     /* pool_total_allocated() after destroying all */
};

struct dr_worker {
    struct pool_head *pool;
    unsigned size, id;
    pthread_barrier_t *ready;
    atomic_int *stop;
    unsigned long ops, nulls, bad;
};

static void *dr_worker_main(void *arg)
{
    struct dr_worker *w = arg;
    void *held = pool_alloc(w->pool);
    void *burst[8];
    unsigned rng = w->id * 2654435761u + 12345u;

    if (held)
        fill(held, w->size, w->id);
    else
        w->nulls++;
    pthread_barrier_wait(w->ready);
    while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
        rng = rng * 1103515245u + 12345u;
        unsigned n = (rng >> 16) & 15;
        /* half the time a pair, else a burst of 1..8 held at once */
        unsigned k = n < 8 ? 1 : n - 7;
        for (unsigned i = 0; i < k; i++) {
            burst[i] = pool_alloc(w->pool);
            if (burst[i])
                stamp(burst[i], w->id * 16 + i); /* a duplicate in the burst shows too */
            else
                w->nulls++;
        }
        for (unsigned i = 0; i < k; i++) {
            if (!burst[i])
                continue;
            w->bad += !stamped(burst[i], w->id * 16 + i);
            pool_free(w->pool, burst[i]);
        }
        w->ops += k;
        if ((w->ops & 1023) < k && held)
            w->bad += !intact(held, w->size, w->id);
    }
    if (held) {
        w->bad += !intact(held, w->size, w->id);
        pool_free(w->pool, held);
    }
    return NULL;
}

/* The child's body: returns its exit status. */
static int dr_child(struct dr_board *b)
{
    struct pool_head *p[DR_POOLS];
    struct dr_worker w[DR_POOLS];
    pthread_t t[DR_POOLS];
    pthread_barrier_t ready;
    atomic_int stop = 0;

    for (int i = 0; i < DR_POOLS; i++) {
        p[i] = create_pool("in-use", dr_sizes[i], 0);
        if (!p[i])
            return 3;
    }
    b->setup_ok = 1;
    pthread_barrier_init(&ready, NULL, DR_POOLS + 1);
    for (int i = 0; i < DR_POOLS; i++) {
        w[i] = (struct dr_worker){ .pool = p[i], .size = dr_sizes[i], .id = (unsigned)i + 1,
                                   .ready = &ready, .stop = &stop };
        start(&t[i], dr_worker_main, &w[i]);
    }
    pthread_barrier_wait(&ready); /* every worker holds its object now */

    double t0 = now();
    while (b->rounds < DR_MAX_ROUNDS && now() - t0 < DR_SECONDS) {
        unsigned long bad = 0;
        pool_gc(NULL); /* the threads' idle objects go to the shared cache */
        pool_destroy_all();
        for (int i = 0; i < DR_POOLS && !bad; i++) {
            if (pool_destroy(p[i]) != (void *)p[i]) {
                b->destroy_not_self++;
                bad++; /* p[i] may be gone: touch it no more */
                break;
            }
            if (pool_used(p[i]) < 1) {
                b->used_below_one++;
                bad++;
            }
        }
        unsigned long long tot = pool_total_allocated();
        if (tot > b->worst_total)
            b->worst_total = tot;
        if (tot >= DR_SANE_BYTES) {
            b->total_insane++;
            bad++;
        }
        b->rounds++;
        if (bad) {
            /* A pool may have been freed under its users: stop here, the
             * rest of the run would only read freed memory. */
            b->first_bad_round = b->rounds;
            break;
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < DR_POOLS; i++)
        join(t[i]);
    pthread_barrier_destroy(&ready);
    b->joined = 1;
    for (int i = 0; i < DR_POOLS; i++) {
        b->worker_ops += w[i].ops;
        b->worker_nulls += w[i].nulls;
        b->worker_bad += w[i].bad;
    }
    if (b->first_bad_round)
        return 1;

    /* Everything is back and every thread is gone: exact counters. */
    for (int i = 0; i < DR_POOLS; i++)
        b->end_used[i] = pool_used(p[i]);
    for (int i = 0; i < DR_POOLS; i++)
        b->end_destroy_failed += pool_destroy(p[i]) != NULL;
    pool_destroy_all();
    b->end_total = pool_total_allocated();
    b->end_checked = 1;

    int ok = b->worker_nulls == 0 && b->worker_bad == 0 && b->end_destroy_failed == 0 && b->end_total == 0;
    for (int i = 0; i < DR_POOLS; i++)
        ok = ok && b->end_used[i] == 0;
    return ok ? 0 : 1;
}

static void test_destroy_in_use(void)
{
    struct dr_board *b = mmap(NULL, sizeof *b, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int status = 0;

    if (b == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    memset(b, 0, sizeof *b);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        alarm(DR_HANG_SECONDS); /* bounds a hang only; never reached when correct */
        int rc = dr_child(b);
        fflush(stdout);
        fflush(stderr);
        exit(rc);
    }
    if (waitpid(pid, &status, 0) != pid) {
        perror("waitpid");
        exit(2);
    }
    printf("destroy race: %lu rounds, %lu worker ops; child %s %d; "
           "destroy!=self %lu, used<1 %lu, total>=1GiB %lu (max %llu)",
           b->rounds, b->worker_ops, WIFSIGNALED(status) ? "killed by signal" : "exit status",
           WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), b->destroy_not_self,
           b->used_below_one, b->total_insane, b->worst_total);
    if (b->first_bad_round)
        printf("; first violation at round %lu", b->first_bad_round);
    printf("\n");

    CHECK(b->setup_ok);
    CHECK(WIFEXITED(status));      /* no crash (SIGSEGV...), no hang (SIGALRM) */
    CHECK_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), 0);
    CHECK(b->rounds > 0);
    CHECK_EQ(b->destroy_not_self, 0);
    CHECK_EQ(b->used_below_one, 0);
    CHECK_EQ(b->total_insane, 0);
    CHECK(b->joined);
    CHECK(b->worker_ops > 0);
    CHECK_EQ(b->worker_nulls, 0);
    CHECK_EQ(b->worker_bad, 0);
    CHECK(b->end_checked);
    if (b->end_checked) {
        for (int i = 0; i < DR_POOLS; i++)
            CHECK_EQ(b->end_used[i], 0);
        CHECK_EQ(b->end_destroy_failed, 0);
        CHECK_EQ(b->end_total, 0);
    }
    munmap(b, sizeof *b);
}

/* ---- 2. the limit while nothing holds it --------------------------------- */

#define LIM 4
#define LIM_WHOLE 16384 /* objects up to this size are written whole */

struct lim_worker {
    struct pool_head *pool;
    unsigned id, size;
    unsigned long max_ops;
    double deadline;
    pthread_barrier_t *go;
    sem_t *started;
    unsigned long ops, nulls, bad;
};

static void *lim_worker_main(void *arg)
{
    struct lim_worker *w = arg;
    unsigned char mark = (unsigned char)(0x10 + w->id);
    int posted = 0;

    pthread_barrier_wait(w->go);
    for (unsigned long i = 0; i < w->max_ops; i++) {
        if ((i & 63) == 0 && now() > w->deadline)
            break;
        unsigned char *o = pool_alloc(w->pool);
        if (o) {
            if (w->size <= LIM_WHOLE) {
                memset(o, mark, w->size);
            } else {
                memset(o, mark, 64);
                memset(o + w->size - 64, mark, 64);
            }
            w->bad += o[0] != mark || o[w->size - 1] != mark;
            pool_free(w->pool, o);
            w->ops++;
        } else {
            w->nulls++;
        }
        if (!posted) {
            sem_post(w->started); /* the housekeeper may start */
            posted = 1;
        }
    }
    if (!posted)
        sem_post(w->started);
    return NULL;
}

struct housekeeper {
    struct pool_head *pool;
    atomic_int *stop;
    double deadline;
    pthread_barrier_t *go;
    sem_t *started;
    unsigned long rounds;
};

/* It starts once every worker has done an operation, and stops at the
 * deadline on its own: under valgrind, which runs one thread at a time, a
 * thread that never blocks could otherwise keep the workers from running. */
static void *housekeeper_main(void *arg)
{
    struct housekeeper *h = arg;
    pthread_barrier_wait(h->go);
    for (int i = 0; i < 4; i++)
        while (sem_wait(h->started) != 0)
            ; /* EINTR */
    do { /* at least once, even when valgrind ran the workers late */
        pool_gc(NULL);
        pool_flush(h->pool);
        h->rounds++;
    } while (!atomic_load_explicit(h->stop, memory_order_relaxed) && now() < h->deadline);
    return NULL;
}

/* Four threads at a limit of 4, each holding at most one object: none may
 * ever get NULL. With `housekeeping`, a fifth thread runs gc and flush. */
static void run_limit(const char *what, unsigned size, unsigned flags, int housekeeping,
                      unsigned long ops_per_thread, double seconds)
{
    struct pool_head *p = create_pool(what, size, flags);
    struct lim_worker w[4];
    struct housekeeper h = { 0 };
    pthread_t t[4], ht;
    pthread_barrier_t go;
    sem_t started;
    atomic_int stop = 0;
    unsigned long ops = 0, nulls = 0, bad = 0;

    CHECK(p != NULL);
    if (!p)
        return;
    pool_set_limit(p, LIM);
    pool_set_minavail(p, 0);
    pthread_barrier_init(&go, NULL, 4 + (housekeeping ? 1 : 0) + 1);
    sem_init(&started, 0, 0);
    double deadline = now() + seconds;
    for (int i = 0; i < 4; i++) {
        w[i] = (struct lim_worker){ .pool = p, .id = (unsigned)i, .size = size, .max_ops = ops_per_thread,
                                    .deadline = deadline, .go = &go, .started = &started };
        start(&t[i], lim_worker_main, &w[i]);
    }
    if (housekeeping) {
        h = (struct housekeeper){ .pool = p, .stop = &stop, .deadline = deadline, .go = &go, .started = &started };
        start(&ht, housekeeper_main, &h);
    }
    pthread_barrier_wait(&go);
    for (int i = 0; i < 4; i++)
        join(t[i]);
    atomic_store(&stop, 1);
    if (housekeeping)
        join(ht);
    pthread_barrier_destroy(&go);
    sem_destroy(&started);
    for (int i = 0; i < 4; i++) {
        ops += w[i].ops;
        nulls += w[i].nulls;
        bad += w[i].bad;
    }
    unsigned long failed = pool_failed(p);
    printf("limit %d, %s, %u-byte objects: %lu ops, %lu NULL, pool_failed %lu", LIM, what, size, ops, nulls,
           failed);
    if (housekeeping)
        printf(", %lu gc+flush rounds", h.rounds);
    printf("\n");

    CHECK(ops > 0);
    CHECK_EQ(nulls, 0);
    CHECK_EQ(failed, 0);
    CHECK_EQ(bad, 0);
    CHECK_EQ(pool_used(p), 0);
    CHECK(pool_allocated(p) <= LIM);
    CHECK(pool_destroy(p) == NULL);
}

int main(void)
{
    /* First, while this process has no other thread: it forks. */
    test_destroy_in_use();
    /* The failure needs an allocation to search while gc or flush has an
     * object on its way to the OS: with the thread cache, only objects
     * drained from the caches are on the way; above the thread-cache
     * budget, every free feeds the shared cache that flush empties. */
    run_limit("gc+flush", 1024, 0, 1, 100000000, 2.0);
    run_limit("gc+flush", 1 << 20, 0, 1, 100000000, 1.5);
    run_limit("no-cache", 1024, POOL_F_NO_LOCAL_CACHE, 0, 100000000, 2.0);
    DONE("test_pool_races");
}
