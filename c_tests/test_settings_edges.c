/* Settings at their edges: what the cache budget, a lowered limit,
 * pool_destroy_all() and the buffer pool's creation must not break.
 *
 * a. A cache budget of SIZE_MAX must not let pools that have no thread-cache
 *    slot (POOL_F_NO_LOCAL_CACHE pools, and the pools created after the
 *    256 slots are taken) cache their objects in one place shared by all
 *    of them: every object a pool hands out must be one of its own, never
 *    another pool's (a 4096-byte pool handing out a 64-byte object is a
 *    heap overflow waiting for its first write). Lowering the budget again
 *    afterwards (4096, then 0) must keep working, and so must the pools.
 * b. Lowering the budget below the object size of every cached pool
 *    applies to every thread's cache at once: objects idle in a blocked
 *    thread's cache, and in the caller's own, go to the shared cache, where
 *    pool_flush reaches them, so nothing stays allocated.
 * c. A limit lowered below what callers hold is a cap on what stays
 *    allocated once they give the objects back: with limit 10, 10 held,
 *    limit 5, all freed, at most 5 remain, and 5 (not 10) can be had
 *    again. The same for the buffer pool retuned by dynbuf_init.
 * d. pool_destroy_all() ends the buffer pool cleanly: pool_head_buffer is
 *    NULL again, b_alloc fails as before any dynbuf_init, and dynbuf_init
 *    then builds a working buffer pool again.
 * e. The buffer pool is the library's own: dynbuf_init must not merge it
 *    with a user's pool of the same size and flags, nor retune that pool's
 *    limit; the user's limit of 7 holds and the buffers keep theirs.
 * Each section runs in a forked child of a parent that never touches the
 * library, so each starts from a fresh process (the buffer pool and the
 * budget are process-wide) and a section that crashes is reported with how
 * its child ended instead of ending the harness. */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bufpool.h"
#include "harness.h"

#define DEFAULT_BUDGET ((size_t)512 * 1024)

static int member(const void *x, void *const *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == x)
            return 1;
    return 0;
}

/* ---- a. the budget at SIZE_MAX, and lowered again --------------------- */

/* Pools under test, with the addresses each handed out in its first round. */
#define MAXP 302
#define K 2
static struct pool_head *pl[MAXP];
static void *own[MAXP][K];
static size_t npools;

/* One round: K objects from every pool, then all freed. The first round
 * records them; later rounds count the objects a pool did not hand out in
 * its first round. Every pool keeps K idle objects (minavail), so a
 * correct pool reuses its own and never needs a new one. */
static size_t round_trip(int first)
{
    void *got[MAXP][K];
    size_t foreign = 0, nulls = 0;

    for (size_t p = 0; p < npools; p++)
        for (int k = 0; k < K; k++) {
            got[p][k] = pool_alloc(pl[p]);
            nulls += got[p][k] == NULL;
            if (first)
                own[p][k] = got[p][k];
            else if (!member(got[p][k], own[p], K))
                foreign++;
        }
    CHECK_EQ(nulls, 0);
    for (size_t p = 0; p < npools; p++)
        for (int k = 0; k < K; k++)
            pool_free(pl[p], got[p][k]);
    return foreign;
}

static void add_pool(const char *name, unsigned size, unsigned flags)
{
    struct pool_head *p = create_pool(name, size, flags);
    CHECK(p != NULL);
    if (!p)
        exit(1);
    pool_set_minavail(p, K);
    pl[npools++] = p;
}

static void add_no_cache_pools(void)
{
    add_pool("nocache-64", 64, POOL_F_NO_LOCAL_CACHE);
    add_pool("nocache-4096", 4096, POOL_F_NO_LOCAL_CACHE);
}

/* 300 pools of distinct sizes: the last ones find no thread-cache slot. */
static void add_300_pools(void)
{
    char name[32];
    for (unsigned i = 0; i < 300; i++) {
        snprintf(name, sizeof(name), "many-%u", i);
        add_pool(name, 32 + 16 * i, 0);
    }
}

static void section_a_no_cache_pools(void)
{
    pool_set_cache_size(SIZE_MAX);
    add_no_cache_pools();
    CHECK_EQ(round_trip(1), 0);
    CHECK_EQ(round_trip(0), 0);         /* each pool hands out its own objects */
    CHECK_EQ(round_trip(0), 0);
    pool_set_cache_size(DEFAULT_BUDGET);
}

static void section_a_300_pools(void)
{
    pool_set_cache_size(SIZE_MAX);
    add_300_pools();
    CHECK_EQ(round_trip(1), 0);
    CHECK_EQ(round_trip(0), 0);
    CHECK_EQ(round_trip(0), 0);
    pool_set_cache_size(DEFAULT_BUDGET);
}

/* One object from pool `i`, which must be one of its own, given back:
 * the release is where a thread cache above its budget shrinks. */
static void one_trip(size_t i)
{
    void *o = pool_alloc(pl[i]);
    CHECK(o != NULL && member(o, own[i], K));
    pool_free(pl[i], o);
}

/* Objects left idle under SIZE_MAX, then the budget lowered (4096, then 0)
 * while they are still idle: the next releases shrink this thread's cache. */
static void section_a_lowered_again(void)
{
    pool_set_cache_size(SIZE_MAX);
    add_no_cache_pools();
    add_300_pools();
    CHECK_EQ(round_trip(1), 0);
    pool_set_cache_size(4096);
    one_trip(2);                        /* "many-0", a pool with a cache slot */
    one_trip(0);                        /* a no-cache pool */
    one_trip(npools - 1);               /* the last pool, without a slot */
    CHECK_EQ(round_trip(0), 0);
    pool_set_cache_size(0);
    one_trip(2);
    CHECK_EQ(round_trip(0), 0);
    pool_set_cache_size(DEFAULT_BUDGET);
    CHECK_EQ(round_trip(0), 0);
}

/* ---- b. a lowered budget reaches every thread's cache ------------------ */

#define B_N 100
#define B_SIZE 1024

struct sig { int fd[2]; };

static void sig_init(struct sig *s)
{
    if (pipe(s->fd) != 0) {
        perror("pipe");
        exit(2);
    }
}

static void sig_post(struct sig *s)
{
    char c = 1;
    if (write(s->fd[1], &c, 1) != 1) {
        perror("write");
        exit(2);
    }
}

static void sig_wait(struct sig *s)
{
    char c;
    if (read(s->fd[0], &c, 1) != 1) {
        perror("read");
        exit(2);
    }
}

struct cacher {
    struct pool_head *pool;
    size_t nulls;
    struct sig ready, go;
};

/* Caches B_N objects (all allocated, then all freed), reports, blocks. */
static void *cacher_main(void *arg)
{
    struct cacher *c = arg;
    void *o[B_N];
    for (int i = 0; i < B_N; i++) {
        o[i] = pool_alloc(c->pool);
        c->nulls += o[i] == NULL;
    }
    for (int i = 0; i < B_N; i++)
        pool_free(c->pool, o[i]);
    sig_post(&c->ready);
    sig_wait(&c->go);
    return NULL;
}

static void section_b_other_thread(void)
{
    struct cacher c = { .pool = create_pool("kib", B_SIZE, 0) };
    pthread_t t;

    CHECK(c.pool != NULL);
    sig_init(&c.ready);
    sig_init(&c.go);
    if (pthread_create(&t, NULL, cacher_main, &c) != 0)
        exit(2);
    sig_wait(&c.ready);
    CHECK_EQ(c.nulls, 0);
    CHECK_EQ(pool_allocated(c.pool), B_N);  /* idle in the blocked thread's cache */
    CHECK_EQ(pool_used(c.pool), 0);

    pool_set_cache_size(512);           /* below the object size */
    pool_flush(c.pool);
    CHECK_EQ(pool_allocated(c.pool), 0);
    CHECK_EQ(pool_used(c.pool), 0);

    sig_post(&c.go);
    if (pthread_join(t, NULL) != 0)
        exit(2);
    pool_set_cache_size(DEFAULT_BUDGET);
    pool_flush(c.pool);
    CHECK_EQ(pool_allocated(c.pool), 0);
    CHECK(pool_destroy(c.pool) == NULL);
}

static void section_b_own_cache(void)
{
    struct pool_head *p = create_pool("kib", B_SIZE, 0);
    void *o[B_N];
    size_t nulls = 0;

    CHECK(p != NULL);
    for (int i = 0; i < B_N; i++) {
        o[i] = pool_alloc(p);
        nulls += o[i] == NULL;
    }
    for (int i = 0; i < B_N; i++)
        pool_free(p, o[i]);
    CHECK_EQ(nulls, 0);
    CHECK_EQ(pool_allocated(p), B_N);   /* idle in this thread's cache */

    pool_set_cache_size(512);
    pool_flush(p);
    CHECK_EQ(pool_allocated(p), 0);
    CHECK_EQ(pool_used(p), 0);

    pool_set_cache_size(DEFAULT_BUDGET);
    pool_flush(p);
    CHECK(pool_destroy(p) == NULL);
}

/* ---- c. a lowered limit caps what stays once objects come back --------- */

static void section_c_pool(void)
{
    struct pool_head *p = create_pool("lowered", 256, 0);
    void *o[12];
    size_t nulls = 0, had = 0;

    CHECK(p != NULL);
    pool_set_limit(p, 10);
    for (int i = 0; i < 10; i++) {
        o[i] = pool_alloc(p);
        nulls += o[i] == NULL;
    }
    CHECK_EQ(nulls, 0);
    CHECK(pool_alloc(p) == NULL);       /* at the limit */

    pool_set_limit(p, 5);
    for (int i = 0; i < 10; i++)
        pool_free(p, o[i]);
    CHECK(pool_allocated(p) <= 5);
    CHECK_EQ(pool_used(p), 0);

    /* The limit of 5 holds for new allocations too. */
    for (int i = 0; i < 12; i++) {
        o[i] = pool_alloc(p);
        had += o[i] != NULL;
    }
    CHECK_EQ(had, 5);
    for (int i = 0; i < 12; i++)
        pool_free(p, o[i]);
    CHECK(pool_allocated(p) <= 5);
    pool_set_limit(p, 0);
    pool_flush(p);
    CHECK(pool_destroy(p) == NULL);
}

static void section_c_buffers(void)
{
    enum { BUFSZ = 4096 };
    struct buffer b[12];
    size_t nulls = 0, had = 0;

    CHECK_EQ(dynbuf_init(BUFSZ, 1, 10), 0);
    for (int i = 0; i < 12; i++)
        b[i] = BUF_NULL;
    for (int i = 0; i < 10; i++)
        nulls += b_alloc(&b[i]) == NULL;
    CHECK_EQ(nulls, 0);
    CHECK(b_alloc(&b[10]) == NULL);     /* at the limit */

    /* Retuned below what callers hold: the header's -2 (the idle reserve
     * cannot be made now), with the new limit in place all the same. */
    CHECK_EQ(dynbuf_init(BUFSZ, 1, 5), (unsigned long long)-2);
    for (int i = 0; i < 10; i++)
        b_free(&b[i]);
    CHECK(pool_allocated(pool_head_buffer) <= 5);
    CHECK_EQ(pool_used(pool_head_buffer), 0);

    for (int i = 0; i < 12; i++)
        had += b_alloc(&b[i]) != NULL;
    CHECK_EQ(had, 5);
    for (int i = 0; i < 12; i++)
        b_free(&b[i]);
    CHECK(pool_allocated(pool_head_buffer) <= 5);
}

/* ---- d. pool_destroy_all() ends the buffer pool ------------------------ */

static void section_d(void)
{
    enum { BUFSZ = 2048 };
    struct buffer b = BUF_NULL;

    CHECK(pool_head_buffer == NULL);
    CHECK_EQ(dynbuf_init(BUFSZ, 2, 8), 0);
    CHECK(b_alloc(&b) == &b && b.size == BUFSZ);
    b_free(&b);

    pool_destroy_all();
    CHECK(pool_head_buffer == NULL);
    CHECK(b_alloc(&b) == NULL);         /* as before any dynbuf_init */
    CHECK(b.size == 0 && b.area == NULL);

    CHECK_EQ(dynbuf_init(BUFSZ, 2, 8), 0);
    CHECK(pool_head_buffer != NULL);
    CHECK(b_alloc(&b) == &b && b.size == BUFSZ && b.area != NULL);
    if (b.area)
        memset(b.area, 0x5a, BUFSZ);
    b_free(&b);
    CHECK_EQ(pool_used(pool_head_buffer), 0);
}

/* ---- e. the buffer pool does not merge with a user's pool --------------- */

static void section_e(void)
{
    enum { SZ = 16384, USER_LIMIT = 7, BUF_LIMIT = 10 };
    struct pool_head *mine = create_pool("mine", SZ, MEM_F_SHARED | MEM_F_EXACT);
    void *o[USER_LIMIT + 1];
    struct buffer b[BUF_LIMIT + 1];
    size_t nulls = 0, bufs = 0;

    CHECK(mine != NULL);
    if (!mine)
        return;
    pool_set_limit(mine, USER_LIMIT);
    pool_set_minavail(mine, 1);

    CHECK_EQ(dynbuf_init(SZ, 2, BUF_LIMIT), 0);
    CHECK(pool_head_buffer != NULL);
    CHECK(pool_head_buffer != mine);

    /* The user's limit is untouched: 7, not the buffers' 10. */
    for (int i = 0; i < USER_LIMIT; i++) {
        o[i] = pool_alloc(mine);
        nulls += o[i] == NULL;
    }
    CHECK_EQ(nulls, 0);
    o[USER_LIMIT] = pool_alloc(mine);
    CHECK(o[USER_LIMIT] == NULL);

    /* While the user holds 7, the buffers still have all of their 10. */
    for (int i = 0; i <= BUF_LIMIT; i++)
        b[i] = BUF_NULL;
    for (int i = 0; i <= BUF_LIMIT; i++)
        bufs += b_alloc_margin(&b[i], 0) != NULL;
    CHECK_EQ(bufs, BUF_LIMIT);
    CHECK_EQ(pool_used(mine), USER_LIMIT);

    for (int i = 0; i <= BUF_LIMIT; i++)
        b_free(&b[i]);
    for (int i = 0; i <= USER_LIMIT; i++)
        pool_free(mine, o[i]);
    CHECK_EQ(pool_used(mine), 0);
    CHECK_EQ(pool_used(pool_head_buffer), 0);
}

/* ---- the parent ------------------------------------------------------- */

/* Runs `fn` in a fresh child; 1 when it ended with every check passed. */
static int run_child(const char *name, void (*fn)(void))
{
    int status;
    pid_t pid;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        return 0;
    }
    if (pid == 0) {
        alarm(60);                      /* a hang guard only */
        harness_checks = harness_failures = 0;
        fn();
        pool_destroy_all();
        fprintf(stderr, "  %s: %d checks, %d failed\n", name, harness_checks, harness_failures);
        exit(harness_failures ? 1 : 0);
    }
    if (waitpid(pid, &status, 0) != pid) {
        perror("waitpid");
        return 0;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 1;
    if (WIFSIGNALED(status))
        fprintf(stderr, "%s: child killed by signal %d (%s)\n", name, WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        fprintf(stderr, "%s: child exited with status %d\n", name, WEXITSTATUS(status));
    return 0;
}

int main(void)
{
    static const struct { const char *name; void (*fn)(void); } sections[] = {
        { "a: SIZE_MAX budget, no-cache pools", section_a_no_cache_pools },
        { "a: SIZE_MAX budget, 300 pools", section_a_300_pools },
        { "a: SIZE_MAX budget, then lowered to 4096 and 0", section_a_lowered_again },
        { "b: lowered budget, another thread's cache", section_b_other_thread },
        { "b: lowered budget, own cache", section_b_own_cache },
        { "c: lowered pool limit", section_c_pool },
        { "c: lowered buffer limit", section_c_buffers },
        { "d: pool_destroy_all() and the buffer pool", section_d },
        { "e: buffer pool apart from a user's pool", section_e },
    };
    for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++)
        CHECK(run_child(sections[i].name, sections[i].fn));
    DONE("test_settings_edges");
}
