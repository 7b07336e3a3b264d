/* `make demo`, part 2: throughput of the four shared-cache algorithms.
 *
 * What is measured: operations per second, one operation being a
 * pool_free of a thread's oldest object followed by a pool_alloc and a
 * write of the new object's first cache line. Each thread keeps 4 objects in
 * flight, so the pool's recent need is steady and the default crowding
 * rule keeps idle objects on the shared path (with one object per thread
 * the pool would count as crowded at every free, and all four algorithms
 * would just be malloc and free). The thread cache is off
 * (POOL_F_NO_LOCAL_CACHE): every operation goes through the shared cache,
 * or through malloc/free for "none". No race window. On glibc,
 * M_MMAP_THRESHOLD is fixed at 128 KB, so 256 KB and 2 MB objects are
 * mmapped and unmapped like musl does; under musl, its own allocator.
 *
 * Each cell runs in a child process of its own (fresh pool, fresh heap; a
 * crash, which DWCAS could have even without the window, shows as "crash"),
 * REPEAT times in a row of the four algorithms; a cell shows its best run,
 * as the machine is shared and 2-core.
 *
 * Beside the four, "C ref" runs the same loop on a plain C version of the
 * self-locked list that the xchg algorithm implements (written in this
 * file, inlined into the loop): one exchange to take the head, a store to
 * put it back, an atomic count of the objects in use, and malloc/free when
 * the list is empty or the idle objects outnumber a quarter of those in use
 * (plus one). It is what a proxy author would write by hand, and the bar
 * the xchg column is held to ("xchg/ref").
 *
 * Usage: throughput [seconds per cell run]  (default 0.2).
 * With BUFPOOL_DEMO_SUMMARY=FILE it also appends each cell to FILE, for
 * demo/verdict.sh. */
#include "race.h"

#include <sched.h>

#if defined(__GLIBC__)
#define DEMO_LIBC "glibc"
#else
#define DEMO_LIBC "musl"
#endif

#define INFLIGHT 4
/* tp_cell's `flag` for the C reference (no pool flag has all these bits). */
#define REF_FLAG 0xffffffffu
#define REPEAT 3

static const unsigned int sizes[] = { 16 * 1024, 48 * 1024, 256 * 1024, 2 * 1024 * 1024 };
static const char *const size_names[] = { "16K", "48K", "256K", "2M" };
static const int thread_counts[] = { 1, 2, 16 };

/* ---- the C reference: a self-locked list, by hand ------------------- */

/* The head's value while a thread holds it (never an object's address). */
#define REF_HELD ((void *)1)

struct ref_pool {
    _Alignas(64) void *_Atomic head; /* idle objects, linked through their first word */
    _Alignas(64) _Atomic long used;  /* objects handed out */
    _Atomic long allocated;          /* objects from malloc, not yet freed */
    size_t size;
};

/* Takes the head: swaps in REF_HELD, and waits while another thread holds it. */
static inline void *ref_lock(struct ref_pool *p)
{
    for (;;) {
        /* acquire: the idle objects' links were written before the release below */
        void *h = atomic_exchange_explicit(&p->head, REF_HELD, memory_order_acquire);

        if (h != REF_HELD)
            return h;
        while (atomic_load_explicit(&p->head, memory_order_relaxed) == REF_HELD)
            sched_yield();
    }
}

static inline void *ref_alloc(struct ref_pool *p)
{
    void *h = ref_lock(p);

    /* release: hands the list (and its links) to the next taker */
    atomic_store_explicit(&p->head, h ? *(void **)h : NULL, memory_order_release);
    if (!h) {
        h = malloc(p->size);
        if (!h)
            return NULL;
        atomic_fetch_add_explicit(&p->allocated, 1, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&p->used, 1, memory_order_relaxed);
    return h;
}

static inline void ref_free(struct ref_pool *p, void *obj)
{
    long used = atomic_fetch_sub_explicit(&p->used, 1, memory_order_relaxed) - 1;

    if (atomic_load_explicit(&p->allocated, memory_order_relaxed) - used > used / 4 + 1) {
        atomic_fetch_sub_explicit(&p->allocated, 1, memory_order_relaxed);
        free(obj);
        return;
    }
    *(void **)obj = ref_lock(p);
    atomic_store_explicit(&p->head, obj, memory_order_release);
}

/* ---- the loop, on bufpool or on the reference ------------------------ */

struct tp_worker {
    struct pool_head *pool; /* bufpool's pool, or NULL ... */
    struct ref_pool *ref;   /* ... for the reference */
    pthread_barrier_t *start;
    double seconds;
    unsigned long ops;
    int failed;
};

/* `ref` is a constant in each caller: inlined, the other side folds away,
 * so each loop calls its allocator directly. */
static inline __attribute__((always_inline)) void *obj_alloc(struct tp_worker *w, int ref)
{
    return ref ? ref_alloc(w->ref) : pool_alloc(w->pool);
}

static inline __attribute__((always_inline)) void obj_free(struct tp_worker *w, int ref, void *obj)
{
    if (ref)
        ref_free(w->ref, obj);
    else
        pool_free(w->pool, obj);
}

static inline __attribute__((always_inline)) void *tp_loop(struct tp_worker *w, int ref)
{
    void *held[INFLIGHT];
    unsigned long ops = 0;
    double deadline;
    int i, k = 0;

    for (i = 0; i < INFLIGHT; i++) {
        held[i] = obj_alloc(w, ref);
        if (!held[i]) {
            w->failed = 1;
            return NULL;
        }
    }
    pthread_barrier_wait(w->start);
    deadline = race_now() + w->seconds;
    for (;;) {
        for (i = 0; i < 32; i++) {
            obj_free(w, ref, held[k]);
            held[k] = obj_alloc(w, ref);
            if (!held[k]) {
                w->failed = 1;
                return NULL;
            }
            memset(held[k], (int)ops, 64);
            k = (k + 1) % INFLIGHT;
            ops++;
        }
        if (race_now() > deadline)
            break;
    }
    for (i = 0; i < INFLIGHT; i++)
        obj_free(w, ref, held[i]);
    w->ops = ops;
    return NULL;
}

static void *tp_main(void *arg)
{
    return tp_loop(arg, 0);
}

static void *ref_main(void *arg)
{
    return tp_loop(arg, 1);
}

/* Child: runs one cell and writes its Mops/s to `fd`. */
static void tp_child(unsigned int size, unsigned int flag, int threads, double seconds, int fd)
{
    pthread_t tid[RACE_MAX_THREADS];
    struct tp_worker w[RACE_MAX_THREADS];
    pthread_barrier_t start;
    struct pool_head *pool = NULL;
    static struct ref_pool ref;
    unsigned long ops = 0;
    double t0, mops;
    int i;

#if defined(__GLIBC__)
    if (!mallopt(M_MMAP_THRESHOLD, 128 * 1024))
        _exit(3);
#endif
    pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
    if (flag == REF_FLAG) {
        ref.size = size;
    } else {
        pool = create_pool("tp", size, flag | POOL_F_NO_LOCAL_CACHE);
        if (!pool)
            _exit(3);
    }
    for (i = 0; i < threads; i++) {
        w[i] = (struct tp_worker){ pool, &ref, &start, seconds, 0, 0 };
        if (pthread_create(&tid[i], NULL, flag == REF_FLAG ? ref_main : tp_main, &w[i]) != 0)
            _exit(3);
    }
    pthread_barrier_wait(&start);
    t0 = race_now();
    for (i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        if (w[i].failed)
            _exit(4);
        ops += w[i].ops;
    }
    mops = ops / (race_now() - t0) / 1e6;
    if (write(fd, &mops, sizeof(mops)) != (ssize_t)sizeof(mops))
        _exit(5);
    _exit(0);
}

/* Mops/s of one cell, or a negative number if the child did not finish. */
static double tp_cell(unsigned int size, unsigned int flag, int threads, double seconds)
{
    int fds[2], st;
    double mops = -1;
    pid_t pid;

    if (pipe(fds) != 0)
        return -1;
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        tp_child(size, flag, threads, seconds, fds[1]);
    }
    close(fds[1]);
    if (pid > 0) {
        if (read(fds[0], &mops, sizeof(mops)) != (ssize_t)sizeof(mops))
            mops = -1;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            mops = -1;
    }
    close(fds[0]);
    return mops;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? strtod(argv[1], NULL) : 0.2;
    const char *sum_path = getenv("BUFPOOL_DEMO_SUMMARY");
    FILE *sum = sum_path ? fopen(sum_path, "a") : NULL;
    size_t s, a;
    int t;

    printf("== Throughput (%s), Mops/s: free oldest + alloc + write 64 bytes, %d objects in flight per thread,\n"
           "   thread cache off, best of %d runs of %.2f s per cell\n",
           race_libc(), INFLIGHT, REPEAT, seconds);
    printf("  size thr ");
    for (a = 0; a < RACE_NALGOS; a++)
        printf("%8s", race_algos[a].name);
    printf("%8s   xchg/locked xchg/none dwcas/xchg xchg/ref\n", "C ref");
    for (s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        for (t = 0; t < (int)(sizeof(thread_counts) / sizeof(thread_counts[0])); t++) {
            /* the four algorithms, then the C reference */
            double m[RACE_NALGOS + 1] = { 0 };
            int r, crashed[RACE_NALGOS + 1] = { 0 };

            printf("  %4s %3d ", size_names[s], thread_counts[t]);
            fflush(stdout);
            for (r = 0; r < REPEAT; r++) {
                for (a = 0; a <= RACE_NALGOS; a++) {
                    unsigned int flag = a < RACE_NALGOS ? race_algos[a].flag : REF_FLAG;
                    double v = tp_cell(sizes[s], flag, thread_counts[t], seconds);

                    if (v < 0)
                        crashed[a] = 1;
                    else if (v > m[a])
                        m[a] = v;
                }
            }
            for (a = 0; a <= RACE_NALGOS; a++) {
                if (crashed[a])
                    m[a] = -1;
                if (m[a] < 0)
                    printf("%8s", "crash");
                else
                    printf("%8.3f", m[a]);
            }
            /* race_algos order: xchg, locked, dwcas, none. */
            if (m[0] > 0 && m[1] > 0)
                printf("   %10.2fx", m[0] / m[1]);
            else
                printf("   %11s", "-");
            if (m[0] > 0 && m[3] > 0)
                printf(" %8.2fx", m[0] / m[3]);
            else
                printf(" %9s", "-");
            if (m[0] > 0 && m[2] > 0)
                printf(" %9.2fx", m[2] / m[0]);
            else
                printf(" %10s", "-");
            if (m[0] > 0 && m[RACE_NALGOS] > 0)
                printf(" %7.2fx", m[0] / m[RACE_NALGOS]);
            printf("\n");
            if (sum) { /* tp LIBC SIZE THREADS XCHG LOCKED DWCAS NONE REF (Mops/s, -1: crashed) */
                fprintf(sum, "tp %s %s %d", DEMO_LIBC, size_names[s], thread_counts[t]);
                for (a = 0; a <= RACE_NALGOS; a++)
                    fprintf(sum, " %.3f", m[a]);
                fprintf(sum, "\n");
                fflush(sum);
            }
        }
    }
    if (sum)
        fclose(sum);
    return 0;
}
