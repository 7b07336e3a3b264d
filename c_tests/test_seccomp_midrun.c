/* A seccomp filter that makes membarrier(2) fail, installed while the
 * thread caches are in use.
 *
 * The thread caches' owners enter their cache with a plain store; the
 * barrier that makes it safe is paid by the foreign side (counting, the
 * limit's stealing, drains, budget changes) with membarrier(2). A program
 * may install a seccomp filter after start-up that refuses membarrier:
 * from then on the library must run the fenced protocol (every owner
 * fences its own store), and its dump must say so. If it only falls back
 * to a fence on the foreign side while the owners keep their plain store,
 * the two sides can both be inside a cache at once, silently.
 *
 * Two pools: 16 KiB objects limited to 64, and 256-byte objects without
 * a limit. Eight workers allocate bursts of 1 to 8 objects from either
 * pool (at random) and free them; with the objects left idle in their
 * caches the 16 KiB pool reaches its limit, and allocations then take
 * idle objects from the other threads' caches. Each holder checks that no
 * one else holds its objects: in a 16 KiB object (new ones come zeroed
 * from mmap) an atomic word at offset 64 must go from 0 to the holder's
 * id on allocation (exchange), and back from its id to 0 before the free;
 * in a 256-byte object (new ones come from malloc, with any contents)
 * bytes 64..127 get a pattern unique to the allocation, checked right
 * before the free. (The library links idle objects through their first
 * 16 bytes.) A NULL at the limit is allowed (counted). One foreign thread
 * loops on pool_gc, pool_flush of the 16 KiB pool, pool_set_cache_size
 * (160 KiB, 512 KiB, 0, 512 KiB in turn) and pool_used of both pools, and
 * notes the largest pool_allocated of the 16 KiB pool it sees.
 *
 * Phase 1 runs until the workers have done 2 million operations and the
 * foreign thread 5 loops. Then main installs, on every thread
 * (SECCOMP_FILTER_FLAG_TSYNC), a filter that makes membarrier return
 * EPERM, and checks that it does. Phase 2 runs 4 million more operations
 * and at least 20 more foreign loops; then main calls pool_used once (a
 * foreign operation after the filter), stops everyone and joins. Checks:
 * no object was ever held twice; both pools' pool_used is 0; the 16 KiB
 * pool never had more than 64 objects allocated; the dump's second line
 * says "Thread caches: fenced owner". With BUFPOOL_CACHE_SYNC=fence the
 * library runs the fenced protocol from the start and everything must
 * pass too. Where seccomp cannot be had (not x86-64 Linux, ENOSYS or
 * EINVAL, e.g. under valgrind; EPERM or EACCES from a sandbox of the test's
 * own), the test prints "skipped: ..." and exits
 * 0. Under ThreadSanitizer the operation counts are divided by 8.
 *
 * The phases are bounded by counting operations and loops, never by the
 * clock. Synchronisation: each worker posts a semaphore every 2^14
 * operations, the foreign thread after each loop (neither waits); main
 * waits on it and reads the counters; an atomic stop flag; joins. The
 * only deadline, 30 s without a post, detects a hang. */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bufpool.h"
#include "harness.h"

#if defined(__x86_64__) && defined(__linux__)

#define WORKERS 8
#define BURST 8
#define LIMIT 64
#define BIG 16384
#define SMALL 256
#if defined(__SANITIZE_THREAD__)
#define OPS_SCALE 8 /* ThreadSanitizer: about 30 times slower; fewer operations */
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define OPS_SCALE 8
#endif
#endif
#ifndef OPS_SCALE
#define OPS_SCALE 1
#endif
#define PHASE1_OPS (2000000ul / OPS_SCALE)
#define PHASE2_OPS (4000000ul / OPS_SCALE)
#define PHASE1_LOOPS 5  /* and at least this many foreign loops */
#define PHASE2_LOOPS 20
#define PACE (1ul << 14) /* a worker posts `pace` every PACE operations */
#define HANG_SECONDS 30
#define WORD_OFF 64 /* the library links idle objects through their first 16 bytes */

/* x86-64 system call numbers and the seccomp ABI (linux/seccomp.h,
 * linux/filter.h, linux/audit.h), defined here. */
#define NR_PRCTL 157
#define NR_SECCOMP 317
#define NR_MEMBARRIER 324
#define PR_SET_NO_NEW_PRIVS 38
#define SECCOMP_SET_MODE_FILTER 1
#define SECCOMP_FILTER_FLAG_TSYNC 1
#define AUDIT_ARCH_X86_64 0xC000003Eu
#define BPF_LD_W_ABS 0x20
#define BPF_JEQ_K 0x15
#define BPF_RET_K 0x06
#define SECCOMP_RET_ALLOW 0x7fff0000u
#define SECCOMP_RET_ERRNO 0x00050000u
#define DATA_NR 0   /* offsetof(struct seccomp_data, nr) */
#define DATA_ARCH 4 /* offsetof(struct seccomp_data, arch) */

struct sock_filter {
    unsigned short code;
    unsigned char jt, jf;
    unsigned int k;
};

struct sock_fprog {
    unsigned short len;
    struct sock_filter *filter;
};

static struct pool_head *big, *small;
static atomic_int stop;
static sem_t pace;

struct worker {
    unsigned long id;
    atomic_ulong ops;   /* written by the worker only */
    unsigned long nulls, violations;
};

static struct worker w[WORKERS];

struct foreign {
    atomic_ulong loops;          /* written by the foreign thread only */
    unsigned long max_allocated; /* largest pool_allocated(16k) it saw */
};

static _Atomic unsigned long *word_of(void *o)
{
    return (_Atomic unsigned long *)((char *)o + WORD_OFF);
}

/* Bytes 64..127 of a 256-byte object: eight copies of `tag`. */
static void mark(void *o, uint64_t tag)
{
    for (int i = 0; i < 8; i++)
        memcpy((char *)o + WORD_OFF + 8 * i, &tag, sizeof tag);
}

static int marked(const void *o, uint64_t tag)
{
    for (int i = 0; i < 8; i++) {
        uint64_t v;
        memcpy(&v, (const char *)o + WORD_OFF + 8 * i, sizeof v);
        if (v != tag)
            return 0;
    }
    return 1;
}

static void *worker_main(void *arg)
{
    struct worker *me = arg;
    void *held[BURST];
    uint64_t tags[BURST];
    uint64_t seq = 0;
    unsigned rng = (unsigned)me->id * 2654435761u + 99u;
    unsigned long ops = 0;

    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        rng = rng * 1103515245u + 12345u;
        int use_big = (rng >> 16) & 1;
        unsigned k = 1 + ((rng >> 18) & 7);
        struct pool_head *p = use_big ? big : small;
        for (unsigned i = 0; i < k; i++) {
            held[i] = pool_alloc(p);
            if (!held[i]) {
                me->nulls++;
                continue;
            }
            if (use_big) {
                if (atomic_exchange(word_of(held[i]), me->id) != 0)
                    me->violations++;
            } else {
                tags[i] = ((uint64_t)me->id << 56) | ++seq;
                mark(held[i], tags[i]);
            }
        }
        for (unsigned i = 0; i < k; i++) {
            if (!held[i])
                continue;
            if (use_big) {
                if (atomic_exchange(word_of(held[i]), 0) != me->id)
                    me->violations++;
            } else if (!marked(held[i], tags[i])) {
                me->violations++;
            }
            pool_free(p, held[i]);
        }
        unsigned long before = ops;
        ops += k;
        atomic_store_explicit(&me->ops, ops, memory_order_relaxed);
        if (before / PACE != ops / PACE)
            sem_post(&pace);
    }
    return NULL;
}

static void *foreign_main(void *arg)
{
    struct foreign *f = arg;
    static const size_t budgets[4] = { 160 * 1024, 512 * 1024, 0, 512 * 1024 };
    unsigned long sink = 0;

    unsigned long loops = 0;

    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        unsigned long a = pool_allocated(big);
        if (a > f->max_allocated)
            f->max_allocated = a;
        pool_gc(NULL);
        pool_flush(big);
        pool_set_cache_size(budgets[loops & 3]);
        sink += pool_used(big);
        sink += pool_used(small);
        atomic_store_explicit(&f->loops, ++loops, memory_order_relaxed);
        sem_post(&pace);
    }
    pool_set_cache_size(512 * 1024);
    return (void *)(uintptr_t)(sink & 1);
}

static unsigned long total_ops(void)
{
    unsigned long n = 0;
    for (int i = 0; i < WORKERS; i++)
        n += atomic_load_explicit(&w[i].ops, memory_order_relaxed);
    return n;
}

/* Waits until the workers have done `target` operations in all and the
 * foreign thread `loops` loops; a wait of HANG_SECONDS without a single
 * post is a hang: FAIL, and exit (the threads cannot be joined). */
static void wait_ops(unsigned long target, const struct foreign *f, unsigned long loops, const char *phase)
{
    while (total_ops() < target || atomic_load_explicit(&f->loops, memory_order_relaxed) < loops) {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += HANG_SECONDS;
        int r;
        while ((r = sem_timedwait(&pace, &dl)) != 0 && errno == EINTR)
            ;
        if (r != 0) {
            printf("FAIL: %s: no progress in %d s (%lu of %lu operations, %lu of %lu foreign loops): hung\n", phase,
                   HANG_SECONDS, total_ops(), target, (unsigned long)atomic_load(&f->loops), loops);
            fflush(stdout);
            _exit(1);
        }
    }
}

/* The dump's second line, into `out` (NUL-terminated, without its newline). */
static void dump_second_line(char *out, size_t cap)
{
    int fd[2];
    static char text[65536];
    size_t n = 0;

    out[0] = 0;
    if (pipe(fd) != 0) {
        perror("pipe");
        exit(2);
    }
    dump_pools_to_fd(fd[1]); /* a few lines: far below the pipe's capacity */
    close(fd[1]);
    for (;;) {
        ssize_t r = read(fd[0], text + n, sizeof text - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd[0]);
    text[n] = 0;
    char *l2 = strchr(text, '\n');
    if (!l2)
        return;
    l2++;
    size_t len = strcspn(l2, "\n");
    if (len >= cap)
        len = cap - 1;
    memcpy(out, l2, len);
    out[len] = 0;
}

/* Stops, joins and sums up the threads. */
static void finish(pthread_t *t, pthread_t ft, unsigned long *nulls, unsigned long *violations)
{
    atomic_store(&stop, 1);
    *nulls = *violations = 0;
    for (int i = 0; i < WORKERS; i++) {
        pthread_join(t[i], NULL);
        *nulls += w[i].nulls;
        *violations += w[i].violations;
    }
    pthread_join(ft, NULL);
}

int main(void)
{
    pthread_t t[WORKERS], ft;
    static struct foreign f;
    unsigned long nulls, violations;
    char line[256];

    setvbuf(stdout, NULL, _IOLBF, 0); /* FAIL lines at once, in order with stderr's */
    big = create_pool("sc16k", BIG, 0);
    small = create_pool("sc256", SMALL, 0);
    CHECK(big != NULL && small != NULL);
    if (!big || !small)
        DONE("test_seccomp_midrun");
    pool_set_limit(big, LIMIT);
    dump_second_line(line, sizeof line);
    printf("before the filter: \"%s\"\n", line);
    sem_init(&pace, 0, 0);
    for (int i = 0; i < WORKERS; i++) {
        w[i].id = (unsigned long)i + 1;
        if (pthread_create(&t[i], NULL, worker_main, &w[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }
    }
    if (pthread_create(&ft, NULL, foreign_main, &f) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        return 2;
    }

    wait_ops(PHASE1_OPS, &f, PHASE1_LOOPS, "phase 1");
    unsigned long at_filter = total_ops(), loops_at_filter = atomic_load(&f.loops);

    /* membarrier -> EPERM, everything else allowed, on every thread */
    struct sock_filter code[] = {
        { BPF_LD_W_ABS, 0, 0, DATA_ARCH },
        { BPF_JEQ_K, 0, 3, AUDIT_ARCH_X86_64 },
        { BPF_LD_W_ABS, 0, 0, DATA_NR },
        { BPF_JEQ_K, 0, 1, NR_MEMBARRIER },
        { BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM },
        { BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW },
    };
    struct sock_fprog prog = { (unsigned short)(sizeof code / sizeof code[0]), code };
    long r = syscall(NR_PRCTL, PR_SET_NO_NEW_PRIVS, 1L, 0L, 0L, 0L);
    int err = errno;
    if (r == 0) {
        r = syscall(NR_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
        err = errno;
    }
    if (r < 0 && (err == ENOSYS || err == EINVAL || err == EPERM || err == EACCES)) {
        finish(t, ft, &nulls, &violations);
        printf("skipped: seccomp filters cannot be installed here (%s)\n", strerror(err));
        return 0;
    }
    if (r != 0) {
        printf("FAIL: prctl/seccomp returned %ld (%s)\n", r, r < 0 ? strerror(err) : "a thread could not be synced");
        CHECK(r == 0);
        finish(t, ft, &nulls, &violations);
        DONE("test_seccomp_midrun");
    }
    errno = 0;
    r = syscall(NR_MEMBARRIER, 0, 0);
    err = errno;
    printf("filter installed after %lu operations: membarrier(QUERY) = %ld (%s)\n", at_filter, r,
           r < 0 ? strerror(err) : "allowed");
    CHECK(r == -1 && err == EPERM);

    wait_ops(at_filter + PHASE2_OPS, &f, loops_at_filter + PHASE2_LOOPS, "phase 2");
    unsigned long used_after = pool_used(big);
    finish(t, ft, &nulls, &violations);
    sem_destroy(&pace);

    unsigned long ops = total_ops();
    dump_second_line(line, sizeof line);
    unsigned long loops = atomic_load(&f.loops);
    printf("%lu operations (%lu after the filter), %lu NULLs at the limit, %lu ownership violations, "
           "%lu foreign loops (%lu after the filter); pool_used(16k) after the filter, running: %lu\n",
           ops, ops - at_filter, nulls, violations, loops, loops - loops_at_filter, used_after);
    printf("pool_used: 16k %lu, 256 %lu; pool_allocated(16k) %lu, at most %lu seen (limit %d)\n", pool_used(big),
           pool_used(small), pool_allocated(big), f.max_allocated, LIMIT);
    printf("dump, second line: \"%s\"\n", line);
    CHECK_EQ(violations, 0);
    CHECK_EQ(pool_used(big), 0);
    CHECK_EQ(pool_used(small), 0);
    CHECK(pool_allocated(big) <= LIMIT);
    CHECK(loops - loops_at_filter >= PHASE2_LOOPS);
    CHECK(f.max_allocated <= LIMIT);
    if (!strstr(line, "Thread caches: fenced owner"))
        printf("FAIL: after the filter the dump does not report the fenced protocol\n");
    CHECK(strstr(line, "Thread caches: fenced owner") != NULL);
    CHECK(pool_destroy(big) == NULL);
    CHECK(pool_destroy(small) == NULL);
    DONE("test_seccomp_midrun");
}

#else

int main(void)
{
    (void)harness_checks;
    (void)harness_failures;
    printf("skipped: needs x86-64 Linux (seccomp filter on membarrier)\n");
    return 0;
}

#endif
