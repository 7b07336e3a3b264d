/* Memory exhaustion: the library must report it, never abort. Each case runs
 * in a forked child that caps its address space (RLIMIT_AS a little above
 * its current size), then takes every byte malloc can still give (blocks of
 * decreasing size down to 16 bytes, kept), so that any further allocation
 * fails, and only then calls the library. Threads a case needs are created
 * before that. The parent CHECKs that the child exited 0 (its own CHECKs
 * passed), not that it died of SIGABRT. Under exhaustion:
 * - create_pool (and create_aligned_pool) returns NULL, and pools made
 *   before still hand out their idle objects;
 * - the first pool_free of a thread, which would make that thread's cache,
 *   works without one: the object goes to the shared cache (the pool's
 *   minavail keeps it from the OS), pool_used drops by one, pool_allocated
 *   stays, and pool_alloc hands the object out again; the same for the
 *   main thread's first pool_free;
 * - dynbuf_init returns -2, and b_alloc then gives NULL;
 * - dump_pools_to_fd still writes its text (header, pool line, Total line);
 * - pool_set_debugging("tag") still returns 0;
 * - a pool created in `tag` mode before exhaustion gives NULL from
 *   pool_alloc (counted in pool_failed); once memory is back, it takes
 *   back the object it gave out before and hands out objects again.
 * With normal memory, absurd requests are refused up front instead of
 * filling the address space (run in a child capped at about 1 GiB more than
 * it has, with alarm(), so a library that tries fails instead of eating
 * the machine; under a sanitizer, where RLIMIT_AS does not bound the heap,
 * the parent kills a child whose resident size passes 1 GiB):
 * - dynbuf_init(65536, UINT_MAX - 1, 0) returns -1 and changes nothing;
 * - b_alloc_margin(&b, INT_MAX) returns NULL and leaves the buffer pool
 *   with its few idle buffers (pool_allocated < 100).
 * RLIMIT_AS cannot starve malloc under ASan or TSan (their allocators and
 * shadow memory) nor under valgrind: there the exhaustion cases are skipped
 * with one printed line; the absurd-request cases run everywhere. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bufpool.h"
#include "harness.h"

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

#define CHILD_ALARM 10

/* CHECK for int results, printing what came back. */
#define CHECK_INT(call, want) do { \
        int got_ = (call); \
        CHECK(got_ == (want)); \
        if (got_ != (want)) \
            fprintf(stderr, "  %s returned %d, not %d\n", #call, got_, (want)); \
    } while (0)

/* ---- squeezing the child ---------------------------------------------------- */

/* The child's address space in bytes (VmSize), read without malloc. */
static unsigned long long vm_size(void)
{
    char buf[4096];
    ssize_t n, got = 0;
    int fd = open("/proc/self/status", O_RDONLY);
    if (fd < 0)
        return 0;
    while (got < (ssize_t)sizeof(buf) - 1 && (n = read(fd, buf + got, sizeof(buf) - 1 - (size_t)got)) > 0)
        got += n;
    close(fd);
    buf[got] = 0;
    const char *s = strstr(buf, "VmSize:");
    return s ? strtoull(s + 7, NULL, 10) * 1024 : 0;
}

/* Caps the address space at its current size plus `extra` bytes. */
static int limit_as(unsigned long long extra)
{
    unsigned long long cur = vm_size();
    struct rlimit rl;
    if (cur == 0 || getrlimit(RLIMIT_AS, &rl) != 0)
        return -1;
    rl.rlim_cur = (rlim_t)(cur + extra);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max)
        rl.rlim_cur = rl.rlim_max;
    return setrlimit(RLIMIT_AS, &rl);
}

/* Grows the stack now: once the address space is full it could not grow. */
static void prefault_stack(void)
{
    volatile char pad[512 * 1024];
    for (size_t i = 0; i < sizeof(pad); i += 1024)
        pad[i] = (char)i;
    (void)pad[0];
}

/* Takes every block malloc still gives, from 1 MiB down to 16 bytes (every
 * size class of the small-size caches), chained through the blocks
 * themselves and kept (until release_hoard). Returns 0 once malloc(16)
 * fails. */
static void *hoard;

static int exhaust(void)
{
    for (size_t sz = 1 << 20; sz >= 16; sz = sz > 2048 ? sz / 2 : sz - 16) {
        void *p;
        while ((p = malloc(sz)) != NULL) {
            *(void **)p = hoard;
            hoard = p;
        }
    }
    void *p = malloc(16);
    return p == NULL ? 0 : -1;
}

/* Gives the hoard back: memory is plentiful again (the cap stays). */
static void release_hoard(void)
{
    while (hoard) {
        void *next = *(void **)hoard;
        free(hoard);
        hoard = next;
    }
}

/* Caps the address space and fills it. In the calling thread's child. */
static void squeeze(void)
{
    prefault_stack();
    CHECK_INT(limit_as(4ull << 20), 0);
    CHECK_INT(exhaust(), 0);
}

/* ---- the exhaustion cases (each in its own child) ------------------------- */

static void c_create_pool(int out)
{
    (void)out;
    struct pool_head *warm = create_pool("oom-warm", 64, 0);
    void *o = pool_alloc(warm);
    CHECK(warm != NULL && o != NULL);
    pool_free(warm, o); /* idle in this thread's cache */
    squeeze();
    CHECK(create_pool("oom-new", 256, 0) == NULL);
    CHECK(create_aligned_pool("oom-new-aligned", 256, 4096, 0) == NULL);
    /* The pool made before is unharmed: its idle object comes back. */
    void *again = pool_alloc(warm);
    CHECK(again == o);
    pool_free(warm, again);
}

/* A thread that frees its first object once memory is exhausted. */
struct first_free {
    struct pool_head *pool;
    void *obj;
    int go[2], done[2];
    unsigned long used_before, used_after, allocated_after;
    void *again;
};

static void *first_free_main(void *arg)
{
    struct first_free *f = arg;
    char c = 1;
    if (write(f->done[1], &c, 1) != 1 || read(f->go[0], &c, 1) != 1)
        _exit(2);
    (void)exhaust(); /* this thread's malloc arena too, if it has one */
    f->used_before = pool_used(f->pool);
    pool_free(f->pool, f->obj); /* no cache yet for this thread */
    f->used_after = pool_used(f->pool);
    f->allocated_after = pool_allocated(f->pool);
    f->again = pool_alloc(f->pool);
    if (write(f->done[1], &c, 1) != 1)
        _exit(2);
    return NULL;
}

static void c_first_free(int out)
{
    (void)out;
    struct first_free f = { .pool = create_pool("oom-first-free", 64, 0) };
    void *o[4];
    pthread_t t;
    char c = 1;

    CHECK(f.pool != NULL);
    pool_set_minavail(f.pool, 8); /* released objects stay idle, not to the OS */
    for (int i = 0; i < 4; i++) {
        o[i] = pool_alloc(f.pool); /* allocating makes no thread cache */
        CHECK(o[i] != NULL);
    }
    f.obj = o[0];
    CHECK(pipe(f.go) == 0 && pipe(f.done) == 0);
    CHECK(pthread_create(&t, NULL, first_free_main, &f) == 0);
    CHECK(read(f.done[0], &c, 1) == 1); /* the thread runs */
    squeeze();
    CHECK(write(f.go[1], &c, 1) == 1);
    CHECK(read(f.done[0], &c, 1) == 1);
    pthread_join(t, NULL);
    CHECK_EQ(f.used_before, 4);
    CHECK_EQ(f.used_after, 3);
    CHECK_EQ(f.allocated_after, 4);
    CHECK(f.again == o[0]); /* it waited in the shared cache */

    /* The main thread's first pool_free, too. */
    pool_free(f.pool, o[1]);
    CHECK_EQ(pool_used(f.pool), 3);
    CHECK_EQ(pool_allocated(f.pool), 4);
}

static void c_dynbuf_init(int out)
{
    (void)out;
    struct pool_head *warm = create_pool("oom-warm", 64, 0);
    struct buffer b = BUF_NULL_INIT;
    CHECK(warm != NULL);
    squeeze();
    CHECK_INT(dynbuf_init(16384, 4, 0), -2);
    CHECK(b_alloc(&b) == NULL);
    CHECK_EQ(b.size, 0);
}

static void c_dump(int out)
{
    CHECK(create_pool("oom-dumped", 64, 0) != NULL);
    squeeze();
    dump_pools_to_fd(out); /* the parent checks the text */
}

static void c_set_debugging(int out)
{
    (void)out;
    CHECK(create_pool("oom-warm", 64, 0) != NULL);
    squeeze();
    CHECK_INT(pool_set_debugging("tag"), 0);
}

static void c_tag_alloc(int out)
{
    (void)out;
    struct pool_head *p;
    void *held, *o;
    CHECK_INT(pool_set_debugging("tag"), 0);
    p = create_pool("oom-tagged", 64, 0);
    CHECK(p != NULL);
    held = pool_alloc(p);
    CHECK(held != NULL);
    squeeze();
    o = pool_alloc(p); /* nothing idle: needs memory */
    CHECK(o == NULL);
    CHECK_EQ(pool_failed(p), 1);
    /* With memory back, the pool works on: its object returns (its tag
     * intact: no abort) and is handed out again. */
    release_hoard();
    pool_free(p, held);
    CHECK_EQ(pool_used(p), 0);
    o = pool_alloc(p);
    CHECK(o != NULL);
    pool_free(p, o);
}

/* ---- the absurd requests, with normal memory --------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void c_absurd_reserve(int out)
{
    (void)out;
    CHECK_INT(limit_as(1ull << 30), 0);
    double t0 = now();
    CHECK_INT(dynbuf_init(65536, UINT_MAX - 1, 0), -1);
    CHECK(now() - t0 < 2.0);
    CHECK(pool_head_buffer == NULL); /* -1: nothing changed */
    CHECK_INT(dynbuf_init(65536, 2, 0), 0);
    CHECK(pool_head_buffer != NULL);
    CHECK(pool_allocated(pool_head_buffer) < 100);
}

static void c_absurd_margin(int out)
{
    (void)out;
    struct buffer b = BUF_NULL_INIT;
    CHECK_INT(limit_as(1ull << 30), 0);
    CHECK_INT(dynbuf_init(65536, 2, 0), 0);
    double t0 = now();
    CHECK(b_alloc_margin(&b, INT_MAX) == NULL);
    CHECK(now() - t0 < 2.0);
    CHECK_EQ(b.size, 0);
    CHECK(pool_head_buffer != NULL && pool_allocated(pool_head_buffer) < 100);
    CHECK(b_alloc(&b) != NULL); /* and ordinary allocation still works */
    b_free(&b);
}

/* ---- the parent ------------------------------------------------------------- */

static char text[65536];

/* The resident size of process `pid` in KiB (0 if unknown). */
static unsigned long rss_kb(pid_t pid)
{
    char path[64], buf[256];
    unsigned long pages = 0, rss = 0;
    ssize_t n;
    snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    if (sscanf(buf, "%lu %lu", &pages, &rss) != 2)
        return 0;
    return rss * (unsigned long)(sysconf(_SC_PAGESIZE) / 1024);
}

/* Runs fn in a child whose stderr (and `out`) is a pipe read into `text`.
 * While it runs, a watchdog kills it if its resident size passes RSS_CAP:
 * under ASan RLIMIT_AS does not bound the heap, and a library that tries
 * to fill the address space must not take the machine down with it.
 * Returns 1 when the child exited 0. */
#define RSS_CAP_KB (1024ul * 1024)

static int run_case(const char *name, void (*fn)(int))
{
    int fds[2], status, over = 0;
    size_t n = 0;
    ssize_t k;
    pid_t pid;

    fflush(stdout);
    fflush(stderr);
    if (pipe(fds) != 0) {
        perror("pipe");
        exit(2);
    }
    pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        alarm(CHILD_ALARM);
        harness_checks = harness_failures = 0;
        fn(fds[1]);
        _exit(harness_failures ? 1 : 0);
    }
    close(fds[1]);
    for (;;) {
        struct pollfd pfd = { .fd = fds[0], .events = POLLIN };
        int r = poll(&pfd, 1, 10); /* the timeout only paces the watchdog */
        if (r < 0 && errno != EINTR)
            break;
        if (r > 0) {
            k = read(fds[0], text + n, sizeof(text) - 1 - n);
            if (k == 0 || (k < 0 && errno != EINTR))
                break; /* EOF: the child is gone */
            if (k > 0)
                n += (size_t)k;
            if (n == sizeof(text) - 1)
                n = 0; /* keep the tail of a flood */
        }
        if (!over && rss_kb(pid) > RSS_CAP_KB) {
            over = 1;
            kill(pid, SIGKILL);
        }
    }
    close(fds[0]);
    text[n] = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok)
        printf("oom: %s: ok\n", name);
    else if (over)
        printf("oom: %s: child killed: its resident size passed %lu MiB\n", name, RSS_CAP_KB / 1024);
    else if (WIFSIGNALED(status))
        printf("oom: %s: child killed by signal %d (%s)\n", name, WTERMSIG(status),
               WTERMSIG(status) == SIGABRT ? "SIGABRT" : WTERMSIG(status) == SIGALRM ? "SIGALRM: hung" : "other");
    else
        printf("oom: %s: child exited %d\n", name, WEXITSTATUS(status));
    if (!ok && n)
        fprintf(stderr, "---- %s: child's stderr:\n%s----\n", name, text);
    return ok;
}

static int under_valgrind(void)
{
    const char *p = getenv("LD_PRELOAD");
    return p && strstr(p, "vgpreload") != NULL;
}

int main(void)
{
    if (BUILT_WITH_SANITIZER || under_valgrind()) {
        printf("oom: exhaustion cases skipped: RLIMIT_AS cannot starve malloc under %s\n",
               BUILT_WITH_SANITIZER ? "a sanitizer" : "valgrind");
    } else {
        CHECK(run_case("create_pool under exhaustion", c_create_pool));
        CHECK(run_case("a thread's first pool_free under exhaustion", c_first_free));
        CHECK(run_case("dynbuf_init under exhaustion", c_dynbuf_init));
        int dumped = run_case("dump_pools_to_fd under exhaustion", c_dump);
        CHECK(dumped);
        CHECK(strstr(text, "Dumping pools usage.\n") != NULL);
        CHECK(strstr(text, "  - Pool oom-dumped (64 bytes)") != NULL);
        CHECK(strstr(text, "\nTotal: ") != NULL);
        CHECK(run_case("pool_set_debugging under exhaustion", c_set_debugging));
        CHECK(run_case("pool_alloc of a tag pool under exhaustion", c_tag_alloc));
    }
    CHECK(run_case("dynbuf_init with an absurd reserve", c_absurd_reserve));
    CHECK(run_case("b_alloc_margin with an absurd margin", c_absurd_margin));
    DONE("test_oom");
}
