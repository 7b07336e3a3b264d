/* Promises of the manual (bufpool.h) that a setting changed on one thread
 * must keep while other threads, or the next calls, race it. One function
 * per promise, each run in a forked child of a parent that never touches
 * the library (each starts from a fresh process: the budget, the release
 * period and the maintenance thread are process-wide); the parent waits
 * for each child with waitpid(WNOHANG) polled every millisecond, kills one
 * still running after 60 s (a hang guard only), checks that it exited 0,
 * and keeps a tally.
 *
 * 4. A budget lowered to 0 is not undone by a racing free. Four owner
 *    threads alloc and free 16 KiB objects of one pool (no limit) in bursts
 *    of 1 to 12. 600 rounds: with the budget at 160 KiB (set while the
 *    owners are parked), main lets them run until they did another 4000
 *    operations (an atomic counter; the owner that crosses it posts a
 *    semaphore, without waiting), sets pool_set_cache_size(0) while they
 *    run, and parks them at a pthread barrier (each ends its burst, freeing
 *    all it holds, and waits there, alive: a thread exit would empty its
 *    cache and hide the bug). With everyone parked and holding nothing,
 *    pool_flush() frees the shared cache's idle objects, and
 *    pool_allocated() must be 0: with a budget of 0 nothing may stay
 *    cached in any thread. The rounds where it is not are counted; then the
 *    owners are released (a second barrier). The race needs an owner
 *    preempted inside pool_free at the moment of the change: on 2 cores
 *    about one round in 300 hit it before the fix (200 rounds, as in the
 *    issue, caught it in about half of the runs; 600 in 9 of 10).
 * 5. A lowered limit holds once allocations fail at the cap. One thread,
 *    with a cache (it freed an object first, as any thread that ran a
 *    while: a thread without one never showed the bug): 200 objects of
 *    1 KiB held, pool_set_limit(20), 10 pool_alloc() that must return
 *    NULL, all 200 freed, and at once (no call in between)
 *    pool_allocated() <= 20 and pool_used() == 0.
 * 6. A release-period change reaches the free path. Release period
 *    UINT_MAX, 2000 objects of 16 KiB allocated and freed, then period 5 ms.
 *    Light traffic only (no pool_maintain, pool_gc or maintenance thread):
 *    64 alloc/free pairs, then a 1 ms nanosleep (pacing, not waiting), until
 *    pool_allocated() < 200, or 10 s passed (2000 periods: the deadline
 *    detects "never"). How long it took, and in how many pairs, is printed.
 * 7. pool_maintenance_thread(0) returns once the thread has exited, and (1)
 *    once it has been created, so that (0) then (1) leaves one thread. The
 *    threads of the process are listed from /proc/self/task; a thread whose
 *    stat shows it exiting (flag PF_EXITING, or state Z/X) counts as gone:
 *    pthread_join() returns when the exiting thread clears its tid, which
 *    the kernel does before it takes the thread out of the list, so a
 *    joined thread may still be listed for a moment. The count is compared
 *    with the threads there before the first start, once a thread of the
 *    test's own was started and joined (1 here; a sanitizer starts helper
 *    threads with a process's first thread). 20 rounds of (1): one more thread, (0): none
 *    more; then 10 rounds of (1),(0),(1): once the first thread is gone
 *    (polled, 1 ms naps, 10 s deadline), one more thread must still be
 *    there. After each round the test waits (the same way) for the thread
 *    to be gone, so that one round's failure does not spill into the next.
 * 8. A child forked while the maintenance thread holds its wake-up mutex
 *    must not hang. The thread runs with a 1 ms release period (it wakes
 *    every ms) and race-window=200000 (it spins that many pauses while
 *    holding the mutex, after locking it and after its wait returns). 100
 *    forks; each child calls pool_maintain(), a pool_alloc()/pool_free() of
 *    a pool created before the fork, pool_maintenance_thread(1) and (0),
 *    and _exit(0). The children run side by side; each is polled with
 *    waitpid(WNOHANG), 1 ms naps, and killed (counted as hung) 20 s after
 *    its fork. Skipped under a sanitizer (see BUILT_WITH_SANITIZER).
 *
 * No check is a time bound: a clock only paces traffic (6) and bounds the
 * wait for something that must happen (the hang deadlines, 6, 7). With
 * numbers as arguments (4 to 8), only those promises run. */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bufpool.h"
#include "harness.h"

/* Under a sanitizer (ASan, TSan): promise 4 runs fewer rounds (each call
 * is many times slower there, and the sanitizer, not the race, is the
 * point), and promise 8 is left out: ThreadSanitizer does not let the
 * child of a multi-threaded process start threads, and GCC's
 * AddressSanitizer does not hold its allocator's locks across fork(), so a
 * child's first malloc may block on a lock that the parent's maintenance
 * thread held inside ASan, whatever the library does. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define BUILT_WITH_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define BUILT_WITH_SANITIZER 1
#endif
#endif
#ifndef BUILT_WITH_SANITIZER
#define BUILT_WITH_SANITIZER 0
#endif

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void nap_ms(long ms)
{
    struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&t, NULL);
}

/* ---- 4. a budget of 0 undone by a racing free ------------------------- */

#ifndef P4_ROUNDS
#define P4_ROUNDS (BUILT_WITH_SANITIZER ? 100 : 600)
#endif
enum { P4_OWNERS = 4, P4_OBJ = 16384, P4_BURST = 12, P4_OPS = 4000 };
enum { P4_BUDGET = 160 * 1024 };

static struct pool_head *p4_pool;
static atomic_ulong p4_ops, p4_nulls, p4_target;
static atomic_int p4_stop, p4_quit, p4_armed;
static sem_t p4_enough;
static pthread_barrier_t p4_park, p4_go;

static void *p4_owner(void *arg)
{
    unsigned rng = (unsigned)(uintptr_t)arg * 2654435761u + 1u;
    void *held[P4_BURST];

    for (;;) {
        while (!atomic_load(&p4_stop)) {
            rng = rng * 1103515245u + 12345u;
            unsigned k = 1 + (rng >> 16) % P4_BURST;
            for (unsigned i = 0; i < k; i++) {
                held[i] = pool_alloc(p4_pool);
                if (held[i])
                    *(volatile char *)held[i] = 1;
                else
                    atomic_fetch_add(&p4_nulls, 1);
            }
            for (unsigned i = 0; i < k; i++)
                pool_free(p4_pool, held[i]);
            unsigned long ops = atomic_fetch_add(&p4_ops, k) + k;
            if (atomic_load(&p4_armed) && ops >= atomic_load(&p4_target) && atomic_exchange(&p4_armed, 0))
                sem_post(&p4_enough); /* main may go on; we do not wait */
        }
        /* Holding nothing: parked, alive, until main has looked. */
        pthread_barrier_wait(&p4_park);
        pthread_barrier_wait(&p4_go);
        if (atomic_load(&p4_quit))
            return NULL;
    }
}

static void promise4_budget_race(void)
{
    pthread_t t[P4_OWNERS];
    unsigned bad = 0;
    unsigned long most = 0, total = 0;

    p4_pool = create_pool("p4-16k", P4_OBJ, 0);
    CHECK(p4_pool != NULL);
    if (!p4_pool)
        return;
    sem_init(&p4_enough, 0, 0);
    pthread_barrier_init(&p4_park, NULL, P4_OWNERS + 1);
    pthread_barrier_init(&p4_go, NULL, P4_OWNERS + 1);
    pool_set_cache_size(P4_BUDGET);
    for (int i = 0; i < P4_OWNERS; i++)
        if (pthread_create(&t[i], NULL, p4_owner, (void *)(uintptr_t)(i + 1)) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            _exit(2);
        }
    for (int r = 0; r < P4_ROUNDS; r++) {
        atomic_store(&p4_target, atomic_load(&p4_ops) + P4_OPS);
        atomic_store(&p4_armed, 1);
        while (sem_wait(&p4_enough) != 0)
            ; /* EINTR */
        pool_set_cache_size(0); /* while they run */
        atomic_store(&p4_stop, 1);
        pthread_barrier_wait(&p4_park);
        atomic_store(&p4_stop, 0);
        /* Everyone parked, holding nothing. */
        pool_flush(p4_pool);
        unsigned long left = pool_allocated(p4_pool);
        if (left != 0) {
            bad++;
            total += left;
            most = left > most ? left : most;
        }
        if (r == P4_ROUNDS - 1)
            atomic_store(&p4_quit, 1);
        else
            pool_set_cache_size(P4_BUDGET); /* for the next round (cheap: no owner is inside its cache) */
        pthread_barrier_wait(&p4_go);
    }
    for (int i = 0; i < P4_OWNERS; i++)
        pthread_join(t[i], NULL);
    printf("promise 4: %u of %d rounds left objects cached under a budget of 0 (most %lu, %lu in all); "
           "%lu operations\n", bad, P4_ROUNDS, most, total, atomic_load(&p4_ops));
    CHECK_EQ(bad, 0);
    CHECK_EQ(atomic_load(&p4_nulls), 0);
    CHECK_EQ(pool_used(p4_pool), 0);
}

/* ---- 5. a lowered limit, once allocations failed at it ---------------- */

enum { P5_HELD = 200, P5_LIMIT = 20, P5_TRIES = 10 };

static void promise5_limit_after_failures(void)
{
    static void *o[P5_HELD + P5_TRIES];
    int n = 0, nulls = 0;
    struct pool_head *p = create_pool("p5-1k", 1024, 0);

    CHECK(p != NULL);
    if (!p)
        return;
    /* This thread gets a cache first, as any thread that freed before. */
    pool_free(p, pool_alloc(p));
    for (int i = 0; i < P5_HELD; i++)
        if ((o[n] = pool_alloc(p)) != NULL)
            n++;
    CHECK_EQ(n, P5_HELD);
    pool_set_limit(p, P5_LIMIT);
    for (int i = 0; i < P5_TRIES; i++) {
        void *x = pool_alloc(p);
        if (x)
            o[n++] = x; /* wrong, but freed with the rest */
        else
            nulls++;
    }
    for (int i = 0; i < n; i++)
        pool_free(p, o[i]);
    unsigned long allocated = pool_allocated(p); /* at once */
    unsigned long used = pool_used(p);
    printf("promise 5: %d of %d allocations at the cap returned NULL; after freeing %d objects with a limit of %d, "
           "%lu stay allocated, %lu used\n", nulls, P5_TRIES, n, P5_LIMIT, allocated, used);
    CHECK_EQ(nulls, P5_TRIES);
    CHECK(allocated <= P5_LIMIT);
    CHECK_EQ(used, 0);
}

/* ---- 6. a release-period change, seen by the free path ---------------- */

enum { P6_OBJ = 16384, P6_SPIKE = 2000, P6_BELOW = 200, P6_PERIOD = 5, P6_PAIRS = 64 };
#define P6_DEADLINE_MS 10000.0

static void promise6_period_change(void)
{
    static void *o[P6_SPIKE];
    int n = 0;
    unsigned long pairs = 0, nulls = 0;

    pool_set_release_period(UINT_MAX);
    struct pool_head *p = create_pool("p6-16k", P6_OBJ, 0);
    CHECK(p != NULL);
    if (!p)
        return;
    for (int i = 0; i < P6_SPIKE; i++)
        if ((o[n] = pool_alloc(p)) != NULL)
            n++;
    CHECK_EQ(n, P6_SPIKE);
    for (int i = 0; i < n; i++)
        pool_free(p, o[i]);
    pool_set_release_period(P6_PERIOD);
    double t0 = now_ms(), took = -1;
    while (pool_allocated(p) >= P6_BELOW && now_ms() - t0 < P6_DEADLINE_MS) {
        for (int i = 0; i < P6_PAIRS; i++) {
            void *x = pool_alloc(p);
            if (!x)
                nulls++;
            pool_free(p, x);
            pairs++;
        }
        nap_ms(1); /* pacing: light traffic */
    }
    if (pool_allocated(p) < P6_BELOW)
        took = now_ms() - t0;
    printf("promise 6: after the period went from UINT_MAX to %d ms, %d idle objects fell to %lu ", P6_PERIOD, n,
           pool_allocated(p));
    if (took >= 0)
        printf("(below %d after %.0f ms, %lu alloc/free pairs)\n", P6_BELOW, took, pairs);
    else
        printf("(still not below %d after %.0f s, %lu alloc/free pairs)\n", P6_BELOW, P6_DEADLINE_MS / 1e3, pairs);
    CHECK(pool_allocated(p) < P6_BELOW);
    CHECK_EQ(nulls, 0);
}

/* ---- 7. the maintenance thread stopped and started at once ------------ */

/* Is thread `tid` of this process alive: listed, and not exiting? */
static int thread_alive(long tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%ld/stat", tid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t len = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (len <= 0)
        return 0;
    buf[len] = 0;
    char *end = strrchr(buf, ')'); /* the name may hold anything */
    char state = 0;
    unsigned flags = 0;
    if (!end || sscanf(end + 1, " %c %*d %*d %*d %*d %*d %u", &state, &flags) != 2)
        return 0;
    return state != 'Z' && state != 'X' && state != 'x' && !(flags & 0x4u /* PF_EXITING */);
}

enum { P7_MAX_TIDS = 64 };

/* The live threads of this process: their number, and up to P7_MAX_TIDS of
 * their ids in `tids` (may be NULL). -1 when /proc cannot be read. */
static int live_threads(long *tids)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        long tid = strtol(e->d_name, NULL, 10);
        if (!thread_alive(tid))
            continue;
        if (tids && n < P7_MAX_TIDS)
            tids[n] = tid;
        n++;
    }
    closedir(d);
    return n;
}

static long p7_base[P7_MAX_TIDS];
static int p7_nbase;

/* The id of a live thread that was not there at the start; 0 if none. */
static long new_thread(void)
{
    long tids[P7_MAX_TIDS];
    int n = live_threads(tids);
    for (int i = 0; i < n && i < P7_MAX_TIDS; i++) {
        int old = 0;
        for (int j = 0; j < p7_nbase; j++)
            old |= tids[i] == p7_base[j];
        if (!old)
            return tids[i];
    }
    return 0;
}

#define P7_DEADLINE_MS 10000.0

/* Waits (1 ms naps, 10 s deadline) until thread `tid` is gone, or, with
 * `tid` 0, until only the threads of the start are left. 1 once so. */
static int wait_gone(long tid)
{
    double t0 = now_ms();
    for (;;) {
        int gone = tid ? !thread_alive(tid) : live_threads(NULL) == p7_nbase;
        if (gone)
            return 1;
        if (now_ms() - t0 > P7_DEADLINE_MS)
            return 0;
        nap_ms(1);
    }
}

enum { P7_ROUNDS = 20, P7_PAIRS = 10 };

static void *p7_nothing(void *arg)
{
    return arg;
}

static void promise7_stop_then_start(void)
{
    int bad_on = 0, bad_off = 0, bad_pair = 0, stuck = 0, failed = 0;

    /* A thread of our own first (joined: it counts as gone once joined): a
     * sanitizer's helper thread, started with a process's first thread, is
     * then among the threads of the start. */
    pthread_t own;
    if (pthread_create(&own, NULL, p7_nothing, NULL) == 0)
        pthread_join(own, NULL);
    p7_nbase = live_threads(p7_base);
    CHECK(p7_nbase >= 1 && p7_nbase <= P7_MAX_TIDS);
    if (p7_nbase < 1 || p7_nbase > P7_MAX_TIDS)
        return;
    for (int r = 0; r < P7_ROUNDS; r++) {
        failed += pool_maintenance_thread(1) != 0;
        bad_on += live_threads(NULL) != p7_nbase + 1;
        pool_maintenance_thread(0);
        bad_off += live_threads(NULL) != p7_nbase;
        stuck += !wait_gone(0);
    }
    for (int r = 0; r < P7_PAIRS; r++) {
        failed += pool_maintenance_thread(1) != 0;
        long first = new_thread();
        bad_on += first == 0;
        pool_maintenance_thread(0);
        failed += pool_maintenance_thread(1) != 0;
        stuck += first != 0 && !wait_gone(first);
        bad_pair += live_threads(NULL) != p7_nbase + 1;
        pool_maintenance_thread(0);
        stuck += !wait_gone(0);
    }
    printf("promise 7: %d thread(s) at the start; after (1) no new thread in %d of %d rounds; after (0) the thread "
           "still there in %d of %d; after (1),(0),(1) no thread left in %d of %d; %d wait(s) for an exit timed out\n",
           p7_nbase, bad_on, P7_ROUNDS + P7_PAIRS, bad_off, P7_ROUNDS, bad_pair, P7_PAIRS, stuck);
    CHECK_EQ(failed, 0);
    CHECK_EQ(bad_on, 0);
    CHECK_EQ(bad_off, 0);
    CHECK_EQ(bad_pair, 0);
    CHECK_EQ(stuck, 0);
}

/* ---- 8. fork while the maintenance thread holds its mutex ------------- */

enum { P8_FORKS = 100, P8_OBJ = 16384 };
#define P8_HANG_MS 20000.0

static void p8_child(struct pool_head *p)
{
    pool_maintain();
    void *x = pool_alloc(p);
    if (!x)
        _exit(2);
    pool_free(p, x);
    if (pool_maintenance_thread(1) != 0)
        _exit(3);
    pool_maintenance_thread(0);
    _exit(0);
}

static void promise8_fork_under_thread(void)
{
    if (BUILT_WITH_SANITIZER) {
        printf("promise 8: skipped under a sanitizer (its runtime is not safe across fork() with threads running)\n");
        return;
    }
    static pid_t pid[P8_FORKS];
    static double forked_at[P8_FORKS];
    static int done[P8_FORKS];
    int hung = 0, bad = 0, left = 0;

    struct pool_head *p = create_pool("p8-16k", P8_OBJ, 0);
    CHECK(p != NULL);
    if (!p)
        return;
    pool_free(p, pool_alloc(p));
    pool_set_release_period(1);
    CHECK(pool_maintenance_thread(1) == 0);
    CHECK(pool_set_debugging("race-window=200000") == 0);
    for (int i = 0; i < P8_FORKS; i++) {
        fflush(stdout);
        fflush(stderr);
        pid[i] = fork();
        if (pid[i] == 0)
            p8_child(p);
        forked_at[i] = now_ms();
        if (pid[i] < 0) {
            perror("fork");
            done[i] = 1;
            bad++;
        } else {
            left++;
        }
    }
    while (left > 0) {
        for (int i = 0; i < P8_FORKS; i++) {
            if (done[i])
                continue;
            int st = 0;
            pid_t w = waitpid(pid[i], &st, WNOHANG);
            if (w == 0 && now_ms() - forked_at[i] < P8_HANG_MS)
                continue;
            if (w == 0) {
                kill(pid[i], SIGKILL);
                waitpid(pid[i], &st, 0);
                hung++;
            } else if (w != pid[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                bad++;
            }
            done[i] = 1;
            left--;
        }
        if (left > 0)
            nap_ms(1);
    }
    pool_set_debugging("race-window=0");
    pool_maintenance_thread(0);
    printf("promise 8: %d forks while the maintenance thread wakes every ms: %d children hung (killed after %.0f s), "
           "%d ended badly\n", P8_FORKS, hung, P8_HANG_MS / 1e3, bad);
    CHECK_EQ(hung, 0);
    CHECK_EQ(bad, 0);
}

/* ---- the parent ------------------------------------------------------- */

#define CHILD_HANG_MS 60000.0

/* Runs `fn` in a fresh child; 1 when it ended with every check passed. */
static int run_child(const char *name, void (*fn)(void))
{
    int st = 0;
    pid_t pid, w;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        return 0;
    }
    if (pid == 0) {
        harness_checks = harness_failures = 0;
        fn();
        fprintf(stderr, "  %s: %d checks, %d failed\n", name, harness_checks, harness_failures);
        fflush(stdout);
        fflush(stderr);
        _exit(harness_failures ? 1 : 0);
    }
    double t0 = now_ms();
    while ((w = waitpid(pid, &st, WNOHANG)) == 0 && now_ms() - t0 < CHILD_HANG_MS)
        nap_ms(1);
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        fprintf(stderr, "%s: HUNG, killed after %.0f s\n", name, CHILD_HANG_MS / 1e3);
        return 0;
    }
    if (w != pid) {
        perror("waitpid");
        return 0;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 1;
    if (WIFSIGNALED(st))
        fprintf(stderr, "%s: child killed by signal %d (%s)\n", name, WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        fprintf(stderr, "%s: child exited with status %d\n", name, WEXITSTATUS(st));
    return 0;
}

/* With arguments, only the promises named (by number: 4 to 8) run. */
int main(int argc, char **argv)
{
    static const struct { int num; const char *name; void (*fn)(void); } promises[] = {
        { 4, "promise 4: a budget of 0 is not undone by a racing free", promise4_budget_race },
        { 5, "promise 5: a lowered limit holds once allocations fail at it", promise5_limit_after_failures },
        { 6, "promise 6: a release-period change reaches the free path", promise6_period_change },
        { 7, "promise 7: maintenance thread (0) then (1) leaves one thread", promise7_stop_then_start },
        { 8, "promise 8: a child forked during the thread's wake-up does not hang", promise8_fork_under_thread },
    };
    int kept = 0, n = 0;
    for (size_t i = 0; i < sizeof(promises) / sizeof(promises[0]); i++) {
        int wanted = argc < 2;
        for (int a = 1; a < argc; a++)
            wanted |= atoi(argv[a]) == promises[i].num;
        if (!wanted)
            continue;
        n++;
        int ok = run_child(promises[i].name, promises[i].fn);
        kept += ok;
        CHECK(ok);
    }
    printf("test_foreign_promises: %d of %d promises kept\n", kept, n);
    DONE("test_foreign_promises");
}
