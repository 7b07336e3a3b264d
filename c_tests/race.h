/* The musl large-buffer race of the old lock-free shared cache (the crash
 * HAProxy fixed with the self-locked head), reproduced from C. Shared by
 * c_tests/test_race.c (short, asserting) and demo/race_demo.c (longer,
 * printing).
 *
 * One run = one child process: `threads` threads allocate, touch and free
 * 2 MB objects of one pool whose thread cache is off, so every object goes
 * through the shared cache or back to the OS. The release period is 0
 * (pool_set_release_period): a released object goes back to the OS at once
 * whenever the shared cache already holds `minavail` idle objects, so that
 * objects popped from the shared cache go straight back to the OS when
 * freed; that is the race. Every `burst` operations a thread also takes
 * `burst` objects at once and frees them, so that the pool's need swings.
 * `minavail` (1 by default in the test) keeps one idle object in the shared
 * cache, so that poppers find a non-empty list more often. (With minavail
 * 0, every free goes to the OS, the list is nearly always empty and the
 * race seldom shows.) A 2 MB object given back to the OS is unmapped at
 * once: bufpool maps objects of a page or more itself and unmaps a run when
 * all its objects are given back (a run of one object here); musl's and
 * glibc's free (with M_MMAP_THRESHOLD fixed at 128 KB) would do the same
 * for a malloc'd block. The race window is widened with
 * pool_set_debugging("race-window=..."). The parent reads how the child
 * ended (exit code or signal), how long it ran and how many operations it
 * served (from a shared mapping the child updates as it goes, so that a
 * crashed child's work is still counted).
 *
 * Child exit codes: 0 ran to its bound with every check passing; 2 two
 * threads held the same object at once; 3 setup failed; 4 an allocation
 * failed; 5 objects were left in use at the end. */
#ifndef BUFPOOL_RACE_H
#define BUFPOOL_RACE_H

#include "bufpool.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>   /* mallopt: make glibc unmap large blocks like musl */
#endif

#define RACE_OBJ_SIZE   (2u * 1024 * 1024)
#define RACE_MAX_THREADS 64

struct race_algo {
    const char *name;
    unsigned int flag;
};

static const struct race_algo race_algos[] = {
    { "xchg",   POOL_F_SHARED_XCHG },
    { "locked", POOL_F_SHARED_LOCKED },
    { "dwcas",  POOL_F_SHARED_DWCAS },
    { "none",   POOL_F_SHARED_NONE },
};
#define RACE_NALGOS (sizeof(race_algos) / sizeof(race_algos[0]))

/* What the child publishes for the parent (a MAP_SHARED page). */
struct race_board {
    struct {
        _Atomic unsigned long ops;      /* objects allocated, touched and freed */
        _Atomic unsigned long drops;    /* frees after which pool_allocated fell */
        char pad[64 - 2 * sizeof(unsigned long)];
    } t[RACE_MAX_THREADS];
};

struct race_params {
    unsigned int flag;          /* POOL_F_SHARED_* */
    int threads;
    unsigned long max_ops;      /* per thread */
    double max_seconds;         /* bound on the run, checked every few ops */
    const char *window;         /* "race-window=..." or NULL */
    unsigned int minavail;      /* idle objects the pool keeps before freeing to the OS */
    int burst;                  /* every `burst` ops, hold `burst` objects at once */
};

/* How one run ended, as the parent saw it. */
struct race_result {
    int signaled;               /* 1: killed by signal `sig` */
    int sig;
    int code;                   /* exit code when not signaled */
    double seconds;             /* fork to reap */
    unsigned long ops;
    unsigned long drops;
};

static inline double race_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct race_worker {
    struct pool_head *pool;
    struct race_board *board;
    const struct race_params *prm;
    pthread_barrier_t *start;
    int id;
    int status;                 /* child exit code contribution */
};

/* Takes and touches `n` objects, then frees them all: the bursts make the
 * pool's need swing, so that after each burst the shared cache holds idle
 * objects while the pool is crowded and frees go to the OS. */
/* Frees an object, counting the frees during which pool_allocated fell:
 * proof that objects went back to the OS while this thread was freeing. */
static inline void race_free(struct pool_head *pool, void *obj, unsigned long *drops)
{
    unsigned long before = pool_allocated(pool);

    pool_free(pool, obj);
    if (pool_allocated(pool) < before)
        (*drops)++;
}

static inline int race_burst(struct pool_head *pool, int n, unsigned long *ops, unsigned long *drops)
{
    void *held[RACE_MAX_THREADS];
    int i, got = 0;

    for (i = 0; i < n && i < RACE_MAX_THREADS; i++) {
        volatile char *obj = pool_alloc(pool);

        if (!obj)
            break;
        obj[0] = 1;
        held[got++] = (void *)obj;
    }
    for (i = 0; i < got; i++)
        race_free(pool, held[i], drops);
    *ops += (unsigned long)got;
    return got == n ? 0 : 4;
}

static void *race_worker_main(void *arg)
{
    struct race_worker *w = arg;
    const struct race_params *prm = w->prm;
    unsigned long iter = 0, ops = 0, drops = 0;
    double deadline;

    pthread_barrier_wait(w->start);
    deadline = race_now() + prm->max_seconds;
    while (ops < prm->max_ops) {
        uint64_t stamp = ((uint64_t)w->id << 48) | ++iter;
        volatile uint64_t *obj = pool_alloc(w->pool);

        if (!obj) {
            w->status = 4;
            break;
        }
        /* Touch the first and the last page, and stamp the object as ours. */
        obj[0] = stamp;
        obj[RACE_OBJ_SIZE / sizeof(uint64_t) - 1] = stamp;
        if (obj[0] != stamp || obj[RACE_OBJ_SIZE / sizeof(uint64_t) - 1] != stamp) {
            w->status = 2;          /* someone else holds this object too */
            break;
        }
        race_free(w->pool, (void *)obj, &drops);
        ops++;
        if (prm->burst > 1 && iter % (unsigned long)prm->burst == 0)
            w->status = race_burst(w->pool, prm->burst, &ops, &drops);
        atomic_store_explicit(&w->board->t[w->id].ops, ops, memory_order_relaxed);
        atomic_store_explicit(&w->board->t[w->id].drops, drops, memory_order_relaxed);
        if (w->status)
            break;
        if (race_now() > deadline)
            break;
    }
    return NULL;
}

/* Body of the child: never returns. */
static inline void race_child(const struct race_params *prm, struct race_board *board)
{
    pthread_t tid[RACE_MAX_THREADS];
    struct race_worker w[RACE_MAX_THREADS];
    pthread_barrier_t start;
    struct pool_head *pool;
    int i, status = 0;

#if defined(__GLIBC__)
    /* Fixed threshold: every 2 MB block is mmapped and unmapped on free. */
    if (!mallopt(M_MMAP_THRESHOLD, 128 * 1024))
        _exit(3);
#endif
    if (prm->window && pool_set_debugging(prm->window) != 0)
        _exit(3);
    pool = create_pool("race", RACE_OBJ_SIZE, prm->flag | POOL_F_NO_LOCAL_CACHE);
    if (!pool || prm->threads < 1 || prm->threads > RACE_MAX_THREADS)
        _exit(3);
    pool_set_minavail(pool, prm->minavail);
    pool_set_release_period(0);
    pthread_barrier_init(&start, NULL, (unsigned)prm->threads);
    for (i = 0; i < prm->threads; i++) {
        w[i] = (struct race_worker){ pool, board, prm, &start, i, 0 };
        if (pthread_create(&tid[i], NULL, race_worker_main, &w[i]) != 0)
            _exit(3);
    }
    for (i = 0; i < prm->threads; i++) {
        pthread_join(tid[i], NULL);
        if (w[i].status && !status)
            status = w[i].status;
    }
    if (!status && pool_used(pool) != 0)
        status = 5;
    _exit(status);
}

/* Runs one child and reports how it ended. Returns -1 if fork fails. */
static inline int race_run(const struct race_params *prm, struct race_result *res)
{
    struct race_board *board;
    pid_t pid;
    int st, i;
    double t0;

    board = mmap(NULL, sizeof(*board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (board == MAP_FAILED)
        return -1;
    memset(board, 0, sizeof(*board));
    fflush(NULL);
    t0 = race_now();
    pid = fork();
    if (pid < 0) {
        munmap(board, sizeof(*board));
        return -1;
    }
    if (pid == 0)
        race_child(prm, board);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    memset(res, 0, sizeof(*res));
    res->seconds = race_now() - t0;
    res->signaled = WIFSIGNALED(st);
    res->sig = res->signaled ? WTERMSIG(st) : 0;
    res->code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    for (i = 0; i < RACE_MAX_THREADS; i++) {
        res->ops += atomic_load_explicit(&board->t[i].ops, memory_order_relaxed);
        res->drops += atomic_load_explicit(&board->t[i].drops, memory_order_relaxed);
    }
    munmap(board, sizeof(*board));
    return 0;
}

/* "killed by SIGSEGV", "exit 0", ... into buf. */
static inline const char *race_ending(const struct race_result *r, char *buf, size_t len)
{
    if (r->signaled)
        snprintf(buf, len, "killed by %s", r->sig == SIGSEGV ? "SIGSEGV" : r->sig == SIGBUS ? "SIGBUS" : "a signal");
    else
        snprintf(buf, len, "exit %d", r->code);
    return buf;
}

/* Which libc the harness runs on, for the reports. */
static inline const char *race_libc(void)
{
#if defined(__GLIBC__)
    return "glibc, M_MMAP_THRESHOLD=128K";
#else
    return "musl";
#endif
}

#endif
