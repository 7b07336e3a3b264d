/* Bad input: every row of the table in docs/BAD-INPUT.md (the README's
 * "Bad input" section points there), each run in a fresh process (fork +
 * exec of this program with "--row N", so that BUFPOOL_DEBUG is read anew).
 * The parent checks how the child ended:
 * - rows with an abort message must die of SIGABRT after printing one line
 *   "bufpool: <message>..." naming the pool on stderr;
 * - the other rows must exit 0 (their CHECKs passed) and, where the row
 *   says so, print the expected text on stderr;
 * - no row may end by SIGSEGV or any other signal.
 * It also checks that docs/BAD-INPUT.md holds exactly this table:
 * `test_bad_input --markdown` prints it.
 *
 * The rows are the ROWS array: to add one, write its function and add one
 * line there, then regenerate the table. */
#include "bufpool.h"
#include "harness.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- helpers for the rows ------------------------------------------------ */

/* The text dump_pools_to_fd writes (static buffer, NUL-terminated). */
static const char *dump_text(void)
{
    static char buf[16384];
    int fds[2];
    size_t n = 0;
    ssize_t r;
    if (pipe(fds) != 0)
        return "";
    dump_pools_to_fd(fds[1]);
    close(fds[1]);
    while (n < sizeof(buf) - 1 && (r = read(fds[0], buf + n, sizeof(buf) - 1 - n)) > 0)
        n += (size_t)r;
    close(fds[0]);
    buf[n] = 0;
    return buf;
}

/* The dump line of the pool named `name` ("" when absent). */
static const char *dump_line(const char *name)
{
    static char line[1024];
    char key[96];
    const char *s, *e;
    snprintf(key, sizeof(key), "Pool %s (", name);
    s = strstr(dump_text(), key);
    if (!s)
        return "";
    e = strchr(s, '\n');
    snprintf(line, sizeof(line), "%.*s", (int)(e ? e - s : (long)strlen(s)), s);
    return line;
}

/* ---- the rows: pools ------------------------------------------------------ */

static void r_size_zero(void) { CHECK(create_pool("z", 0, 0) == NULL); }

static void r_size_huge(void)
{
    CHECK(create_pool("z", 0x80000001u, 0) == NULL);
    CHECK(create_pool("z", 0xffffffffu, MEM_F_EXACT) == NULL);
}

static void r_align_bad(void)
{
    CHECK(create_aligned_pool("z", 64, 3, 0) == NULL);
    CHECK(create_aligned_pool("z", 64, 48, 0) == NULL);
}

static void r_align_huge(void)
{
    struct pool_head *p = create_aligned_pool("big", 64, 1u << 20, 0);
    void *o;
    CHECK(create_aligned_pool("z", 64, 1u << 21, 0) == NULL);
    CHECK(p != NULL);
    o = pool_alloc(p);
    CHECK(o != NULL && ((uintptr_t)o & ((1u << 20) - 1)) == 0);
    pool_free(p, o);
    CHECK(pool_destroy(p) == NULL);
}

static void r_flags_unknown(void) { CHECK(create_pool("z", 64, 0x40000000u) == NULL); }

static void r_flags_two_algos(void)
{
    CHECK(create_pool("z", 64, POOL_F_SHARED_XCHG | POOL_F_SHARED_NONE) == NULL);
    CHECK(create_pool("z", 64, POOL_F_SHARED_LOCKED | POOL_F_SHARED_DWCAS) == NULL);
}

static void r_name_null(void)
{
    struct pool_head *p = create_pool(NULL, 64, 0);
    void *o;
    CHECK(p != NULL);
    o = pool_alloc(p);
    CHECK(o != NULL);
    CHECK(strstr(dump_text(), "Pool  (64 bytes)") != NULL);
    pool_free(p, o);
    CHECK(pool_destroy(p) == NULL);
}

static void r_name_long(void)
{
    char name[201];
    struct pool_head *p;
    memset(name, 'n', 200);
    name[200] = 0;
    p = create_pool(name, 64, 0);
    CHECK(p != NULL);
    name[31] = 0;
    CHECK(strstr(dump_line(name), "(64 bytes)") != NULL);
    CHECK(pool_destroy(p) == NULL);
}

static void r_alloc_null_pool(void)
{
    CHECK(pool_alloc(NULL) == NULL);
    CHECK(pool_zalloc(NULL) == NULL);
    CHECK(pool_alloc_nocache(NULL) == NULL);
}

static void r_free_null_ptr(void)
{
    struct pool_head *p = create_pool("f", 64, 0);
    void *o = pool_alloc(p);
    pool_free(p, NULL);
    pool_free_nocache(p, NULL);
    CHECK_EQ(pool_used(p), 1);
    CHECK_EQ(pool_allocated(p), 1);
    pool_free(p, o);
    CHECK_EQ(pool_used(p), 0);
}

static void r_free_null_pool(void)
{
    struct pool_head *p = create_pool("f", 64, 0);
    void *o = pool_alloc(p);
    pool_free(NULL, o);
    pool_free_nocache(NULL, o);
    CHECK_EQ(pool_used(p), 1); /* leaked, not freed */
    pool_free(p, o);
    CHECK_EQ(pool_used(p), 0);
}

static void r_counters_null(void)
{
    CHECK_EQ(pool_allocated(NULL), 0);
    CHECK_EQ(pool_used(NULL), 0);
    CHECK_EQ(pool_needed_avg(NULL), 0);
    CHECK_EQ(pool_failed(NULL), 0);
}

static void r_setters_null(void)
{
    pool_flush(NULL);
    pool_set_limit(NULL, 5);
    pool_set_minavail(NULL, 5);
    CHECK_EQ(pool_total_used(), 0);
}

static void r_gc_null(void)
{
    struct pool_head *p = create_pool("g", 64, 0);
    void *o = pool_alloc(p);
    pool_free(p, o);
    pool_gc(NULL);
    CHECK_EQ(pool_allocated(p), 0);
}

static void r_destroy_null(void) { CHECK(pool_destroy(NULL) == NULL); }

static void r_destroy_in_use(void)
{
    struct pool_head *p = create_pool("d", 64, 0);
    void *o = pool_alloc(p);
    CHECK(pool_destroy(p) == (void *)p);
    CHECK_EQ(pool_used(p), 1);
    pool_free(p, o);
    o = pool_alloc(p);
    CHECK(o != NULL);
    pool_free(p, o);
    CHECK(pool_destroy(p) == NULL);
}

static void r_destroy_not_a_pool(void)
{
    long junk[8] = {0};
    CHECK(pool_destroy((struct pool_head *)junk) == NULL);
    CHECK(pool_destroy((struct pool_head *)(uintptr_t)0x10) == NULL);
}

static void r_destroy_twice(void)
{
    struct pool_head *p = create_pool("d", 64, 0);
    CHECK(pool_destroy(p) == NULL);
    CHECK(pool_destroy(p) == NULL);
}

static void r_limit_one(void)
{
    struct pool_head *p = create_pool("l", 64, 0);
    void *a, *b;
    pool_set_limit(p, 1);
    a = pool_alloc(p);
    b = pool_alloc(p);
    CHECK(a != NULL && b == NULL);
    CHECK_EQ(pool_failed(p), 1);
    pool_set_limit(p, 0);
    b = pool_alloc(p);
    CHECK(b != NULL);
    pool_free(p, a);
    pool_free(p, b);
}

static void r_limit_below_used(void)
{
    struct pool_head *p = create_pool("l", 64, 0);
    void *o[5];
    int i;
    for (i = 0; i < 5; i++)
        o[i] = pool_alloc(p);
    pool_set_limit(p, 2);
    CHECK(pool_alloc(p) == NULL);
    CHECK_EQ(pool_failed(p), 1);
    pool_free(p, o[0]); /* above the limit: back to the OS, not idle */
    CHECK_EQ(pool_allocated(p), 4);
    CHECK(pool_alloc(p) == NULL);
    for (i = 1; i < 5; i++)
        pool_free(p, o[i]);
    CHECK_EQ(pool_allocated(p), 2); /* only what the limit allows stays */
    pool_gc(NULL);
    for (i = 0; i < 2; i++)
        o[i] = pool_alloc(p);
    CHECK(o[0] && o[1] && pool_alloc(p) == NULL); /* the limit of 2 holds once gc freed the rest */
    pool_free(p, o[0]);
    pool_free(p, o[1]);
}

static void r_cache_size_extremes(void)
{
    struct pool_head *p = create_pool("c", 64, 0);
    void *o;
    pool_set_cache_size(0);
    o = pool_alloc(p);
    pool_free(p, o);
    CHECK_EQ(pool_used(p), 0);
    pool_set_cache_size((size_t)-1);
    o = pool_alloc(p);
    CHECK(o != NULL);
    pool_free(p, o);
    CHECK_EQ(pool_used(p), 0);
}

static void r_dump_bad_fd(void)
{
    CHECK(create_pool("x", 64, 0) != NULL);
    dump_pools_to_fd(-1);
    dump_pools_to_fd(1000);
}

static void r_debug_null(void) { CHECK(pool_set_debugging(NULL) == -1); }

static void r_debug_unknown(void)
{
    CHECK(pool_set_debugging("tag,bogus") == -1);
    CHECK(create_pool("u", 64, 0) != NULL);
    CHECK(strstr(dump_line("u"), "DEBUG") == NULL); /* tag was not applied */
}

static void r_debug_bad_values(void)
{
    CHECK(pool_set_debugging("poison=256") == -1);
    CHECK(pool_set_debugging("poison=x") == -1);
    CHECK(pool_set_debugging("fail=101") == -1);
    CHECK(pool_set_debugging("fail=-1") == -1);
    CHECK(pool_set_debugging("race-window=abc") == -1);
    CHECK(pool_set_debugging("tag=1") == -1);
    CHECK(pool_set_debugging("") == 0);
}

static void r_env_unknown(void)
{
    CHECK(create_pool("u", 64, 0) != NULL);
    CHECK(strstr(dump_line("u"), "DEBUG") == NULL); /* tag was not applied */
}

static void r_env_help(void) { CHECK(create_pool("h", 64, 0) != NULL); }

static void r_debug_help(void) { CHECK(pool_set_debugging("help") == 0); }

static void r_snapshot(void)
{
    struct pool_head *before = create_pool("before", 64, 0), *after;
    void *o;
    CHECK(pool_set_debugging("tag") == 0);
    after = create_pool("after", 64, 0);
    CHECK(strstr(dump_line("before"), "DEBUG") == NULL);
    CHECK(strstr(dump_line("after"), "[DEBUG tag]") != NULL);
    o = pool_alloc(before);
    pool_free(before, o);
    CHECK(pool_destroy(before) == NULL && pool_destroy(after) == NULL);
}

static void r_no_merge_across_modes(void)
{
    struct pool_head *a = create_pool("m", 64, MEM_F_SHARED), *b;
    CHECK(pool_set_debugging("integrity") == 0);
    b = create_pool("m", 64, MEM_F_SHARED);
    CHECK(a != NULL && b != NULL && a != b);
}

/* ---- the rows: debug modes that abort ------------------------------------ */

static void r_tag_double_free(void)
{
    struct pool_head *p = create_pool("dbl", 64, 0);
    void *o = pool_alloc(p);
    pool_free(p, o);
    pool_free(p, o);
}

static void r_tag_double_free_nocache(void)
{
    struct pool_head *p = create_pool("dblnc", 64, 0);
    void *o = pool_alloc_nocache(p);
    pool_free_nocache(p, o);
    pool_free_nocache(p, o);
}

static void r_tag_wrong_pool(void)
{
    struct pool_head *a = create_pool("owner", 64, 0), *b = create_pool("other", 64, 0);
    void *o = pool_alloc(a);
    pool_free(b, o);
}

static void r_tag_foreign_heap(void)
{
    struct pool_head *p = create_pool("fh", 64, 0);
    pool_free(p, malloc(64));
}

static void r_tag_foreign_stack(void)
{
    struct pool_head *p = create_pool("fs", 64, 0);
    char local[64];
    memset(local, 0, sizeof(local));
    pool_free(p, local);
}

static void r_tag_interior(void)
{
    struct pool_head *p = create_pool("in", 64, 0);
    char *o = pool_alloc(p);
    pool_free(p, o + 8);
}

static void r_tag_overrun(void)
{
    struct pool_head *p = create_pool("ovr", 64, 0);
    char *o = pool_alloc(p);
    memset(o, 'x', 64 + 8); /* one word too many */
    pool_free(p, o);
}

static void r_tag_caller(void)
{
    struct pool_head *p = create_pool("clr", 64, 0);
    void *o = pool_alloc(p);
    pool_free(p, o);
    pool_free(p, o);
}

static void r_integrity_realloc(void)
{
    struct pool_head *p = create_pool("waf", 64, 0);
    char *o = pool_alloc(p);
    pool_free(p, o);
    o[10] = 1; /* write after free */
    pool_alloc(p);
}

static void r_integrity_flush(void)
{
    struct pool_head *p = create_pool("wafl", 64, 0);
    char *o = pool_alloc(p);
    pool_free(p, o);
    o[63] ^= 0x40;
    pool_flush(p);
}

static void r_integrity_clean(void)
{
    struct pool_head *p = create_pool("ok", 100, MEM_F_EXACT);
    char *o[16];
    int i, round;
    for (round = 0; round < 50; round++) {
        for (i = 0; i < 16; i++) {
            o[i] = pool_alloc(p);
            memset(o[i], round, 100);
        }
        for (i = 0; i < 16; i++)
            pool_free(p, o[i]);
    }
    pool_gc(NULL);
    pool_flush(p);
    CHECK_EQ(pool_allocated(p), 0);
    CHECK(pool_destroy(p) == NULL);
}

static void r_poison_byte(void)
{
    struct pool_head *p = create_pool("psn", 64, 0);
    void *a = pool_alloc(p), *b;
    CHECK(all_bytes(a, 64, 0xAA));
    pool_free(p, a);
    b = pool_zalloc(p);
    CHECK(all_bytes(b, 64, 0));
    pool_free(p, b);
}

static void r_poison_default(void)
{
    struct pool_head *p = create_pool("psn", 64, 0);
    void *a = pool_alloc(p);
    CHECK(all_bytes(a, 64, 0x50));
    pool_free(p, a);
}

static void r_cold_first(void)
{
    struct pool_head *p = create_pool("cold", 64, 0);
    void *a = pool_alloc(p), *b = pool_alloc(p), *c = pool_alloc(p);
    pool_free(p, a);
    pool_free(p, b);
    pool_free(p, c);
    void *x = pool_alloc(p), *y = pool_alloc(p);
    CHECK(x == a); /* the coldest first */
    CHECK(y == b);
    pool_free(p, x);
    pool_free(p, y);
}

static void r_uaf_unmapped(void)
{
    struct pool_head *p = create_pool("uaf", 64, 0);
    char *o = pool_alloc(p);
    long pg = sysconf(_SC_PAGESIZE);
    void *page = (void *)((uintptr_t)o & ~(uintptr_t)(pg - 1));
    o[63] = 1;
    CHECK(msync(page, (size_t)pg, MS_ASYNC) == 0);
    pool_free(p, o);
    errno = 0;
#if defined(__SANITIZE_THREAD__)
    /* ThreadSanitizer's runtime maps pages of its own at any time and may
     * take this address again at once (seen: right after the munmap). */
    (void)page;
#else
    CHECK(msync(page, (size_t)pg, MS_ASYNC) == -1 && errno == ENOMEM); /* unmapped */
#endif
    CHECK_EQ(pool_allocated(p), 0);
}

static void r_uaf_double_free(void)
{
    struct pool_head *p = create_pool("uafd", 64, 0);
    void *o = pool_alloc(p);
    pool_free(p, o);
    pool_free(p, o);
}

static void r_uaf_aligned(void)
{
    struct pool_head *p = create_aligned_pool("uafa", 100, 8192, 0);
    void *o = pool_alloc(p);
    CHECK(o != NULL && ((uintptr_t)o & 8191) == 0);
    memset(o, 1, 100);
    pool_free(p, o);
    CHECK(pool_destroy(p) == NULL);
}

static void r_fail_all(void)
{
    struct pool_head *p = create_pool("f100", 64, 0), *q;
    void *o;
    int i;
    for (i = 0; i < 10; i++)
        CHECK(pool_alloc(p) == NULL);
    CHECK(pool_zalloc(p) == NULL && pool_alloc_nocache(p) == NULL);
    CHECK_EQ(pool_failed(p), 12);
    CHECK(pool_set_debugging("fail=0") == 0);
    CHECK(pool_alloc(p) == NULL); /* fixed at creation */
    q = create_pool("f0", 64, 0);
    o = pool_alloc(q);
    CHECK(o != NULL);
    pool_free(q, o);
}

static void r_fail_half(void)
{
    struct pool_head *p = create_pool("f50", 64, 0);
    int i, nulls = 0;
    for (i = 0; i < 1000; i++) {
        void *o = pool_alloc(p);
        if (o)
            pool_free(p, o);
        else
            nulls++;
    }
    CHECK(nulls > 350 && nulls < 650);
    CHECK_EQ(pool_failed(p), nulls);
}

/* Without a debug mode nothing is checked: the object is idle twice. */
static void r_plain_double_free(void)
{
    struct pool_head *p = create_pool("plain", 64, 0);
    void *o = pool_alloc(p), *a, *b;
    CHECK(o != NULL);
    pool_free(p, o);
    pool_free(p, o);
    a = pool_alloc(p);
    b = pool_alloc(p);
    CHECK(a == o && b == o); /* two callers now hold the same object */
}

/* ---- the rows: stale pool handles (issue 18) ------------------------------ */

/* Every call on `p`, a destroyed pool's handle: nothing happens, and `junk`
 * (freed into it) is not touched. */
static void stale_calls(struct pool_head *p)
{
    long junk[8] = {0};
    CHECK(pool_alloc(p) == NULL);
    CHECK(pool_zalloc(p) == NULL);
    CHECK(pool_alloc_nocache(p) == NULL);
    pool_free(p, junk);
    pool_free_nocache(p, junk);
    pool_flush(p);
    pool_set_limit(p, 5);
    pool_set_minavail(p, 5);
    CHECK_EQ(pool_allocated(p), 0);
    CHECK_EQ(pool_used(p), 0);
    CHECK_EQ(pool_needed_avg(p), 0);
    CHECK_EQ(pool_failed(p), 0);
    CHECK_EQ(pool_released(p), 0);
    CHECK_EQ(pool_users(p), 0);
    CHECK(pool_destroy(p) == NULL);
    CHECK_EQ(pool_destroy_ex(p), -2);
    CHECK(junk[0] == 0 && junk[1] == 0 && junk[7] == 0);
}

/* A pool with objects idle in this thread's cache, as the tester had it. */
static struct pool_head *warm_pool(const char *name)
{
    struct pool_head *p = create_pool(name, 64, 0);
    void *o[8];
    int i;
    CHECK(p != NULL);
    for (i = 0; i < 8; i++)
        o[i] = pool_alloc(p);
    for (i = 0; i < 8; i++)
        pool_free(p, o[i]);
    CHECK_EQ(pool_allocated(p), 8);
    return p;
}

static void r_stale_destroy_all(void)
{
    struct pool_head *p = warm_pool("gone"), *q;
    void *o;
    pool_destroy_all();
    q = create_pool("new", 64, 0); /* a new pool meanwhile: untouched by the stale calls */
    CHECK(q != NULL && q != p);
    o = pool_alloc(q);
    stale_calls(p);
    CHECK_EQ(pool_used(q), 1);
    CHECK_EQ(pool_allocated(q), 1);
    pool_free(q, o);
    CHECK(pool_destroy(q) == NULL);
}

static void r_stale_destroy(void)
{
    struct pool_head *p = warm_pool("gone1");
    CHECK_EQ(pool_destroy_ex(p), 0);
    stale_calls(p);
}

static void r_stale_tag_alloc(void)
{
    struct pool_head *p = warm_pool("st");
    pool_destroy_all();
    (void)pool_alloc(p);
}

static void r_stale_tag_free(void)
{
    struct pool_head *p = create_pool("stf", 64, 0);
    void *o = pool_alloc(p);
    pool_free(p, o);
    CHECK(pool_destroy(p) == NULL);
    pool_free(p, o);
}

static void r_stale_uaf_counter(void)
{
    struct pool_head *p = create_pool("su", 64, 0);
    CHECK(pool_destroy(p) == NULL);
    (void)pool_allocated(p);
}

/* 256 more pools destroyed after `p`: the next new pool may take its head. */
static struct pool_head *churn(struct pool_head *p)
{
    struct pool_head *q;
    int i;
    for (i = 0; i < 256; i++) {
        q = create_pool("churn", 64, 0);
        CHECK(q != NULL && q != p);
        CHECK(pool_destroy(q) == NULL);
    }
    return create_pool("heir", 64, 0);
}

static void r_stale_reused(void)
{
    struct pool_head *p = create_pool("old", 64, 0), *q;
    CHECK(pool_destroy(p) == NULL);
    q = churn(p);
    CHECK(q == p); /* the oldest tombstone, reused: the stale handle names "heir" */
    CHECK_EQ(pool_users(p), 1);
    CHECK(pool_destroy(q) == NULL);
}

static void r_stale_tag_not_reused(void)
{
    struct pool_head *p = create_pool("old", 64, 0), *q;
    CHECK(pool_destroy(p) == NULL);
    q = churn(p);
    CHECK(q != NULL && q != p);
    (void)pool_alloc(p);
}

static void r_destroy_ex_merged(void)
{
    struct pool_head *a = create_pool("m", 64, MEM_F_SHARED), *b = create_pool("m", 64, MEM_F_SHARED);
    void *o;
    CHECK(a != NULL && a == b);
    CHECK_EQ(pool_users(a), 2);
    o = pool_alloc(a);
    CHECK_EQ(pool_destroy_ex(a), -1); /* in use: untouched */
    CHECK_EQ(pool_users(a), 2);
    pool_free(a, o);
    CHECK_EQ(pool_destroy_ex(a), 1);  /* one user fewer: the other module's pool lives */
    CHECK_EQ(pool_users(b), 1);
    CHECK_EQ(pool_destroy_ex(NULL), -2);
    CHECK_EQ(pool_users(NULL), 0);
}

static void r_destroy_once_too_often(void)
{
    struct pool_head *a = create_pool("m2", 64, MEM_F_SHARED), *b = create_pool("m2", 64, MEM_F_SHARED);
    CHECK(a == b);
    CHECK(pool_destroy(a) == NULL);   /* module A: one user fewer */
    CHECK_EQ(pool_destroy_ex(a), 0);  /* module A again, once too often: 0 says it freed the pool */
    CHECK(pool_alloc(b) == NULL);     /* module B's handle is stale now: NULL, not a crash */
    CHECK_EQ(pool_users(b), 0);
}

static void r_plain_foreign_heap(void)
{
    struct pool_head *p = create_pool("mh", 64, 0);
    void *m = malloc(64), *a;
    CHECK(p != NULL && m != NULL);
    pool_free(p, m);
    a = pool_alloc(p);
    CHECK(a == m); /* handed out as an object of the pool */
    free(a);
}

static void r_tag_small_into_big(void)
{
    struct pool_head *small = create_pool("small", 64, 0), *big = create_pool("big", 16384, 0);
    void *o = pool_alloc(small);
    pool_free(big, o);
}

/* ---- the rows: buffers and the wait queue ---------------------------------- */
static int cb_count;
static int count_cb(void *t)
{
    (void)t;
    cb_count++;
    return 1;
}

static void r_buf_before_init(void)
{
    struct buffer b = {0, NULL, 0, 0};
    CHECK(b_alloc(&b) == NULL);
    CHECK(b.size == 0 && b.area == NULL);
    offer_buffers(NULL, 0);
}

static void r_buf_init_twice(void)
{
    struct buffer b = {0, NULL, 0, 0};
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    CHECK(dynbuf_init(8192, 4, 0) < 0);             /* another size: refused */
    CHECK(b_alloc(&b) == &b && b.size == 16384);    /* the first setting stays */
    b_free(&b);
    CHECK(dynbuf_init(16384, 2, 10) == 0);          /* the same size: re-tuned */
}

static void r_buf_init_zero(void) { CHECK(dynbuf_init(0, 4, 0) < 0); }

static void r_buf_null(void)
{
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    CHECK(b_alloc(NULL) == NULL);
    CHECK(b_alloc_margin(NULL, 2) == NULL);
    b_free(NULL);
}

static void r_buf_negative_margin(void)
{
    struct buffer b = {0, NULL, 0, 0};
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    CHECK(dynbuf_init(16384, 2, 3) == 0);           /* limit 3, reserve 2 */
    CHECK(b_alloc_margin(&b, -1) == &b);            /* counts as margin 0 */
    CHECK(b.size == 16384 && b.area != NULL);
    b_free(&b);
    struct buffer h[3] = {{0, NULL, 0, 0}, {0, NULL, 0, 0}, {0, NULL, 0, 0}};
    CHECK(b_alloc(&h[0]) && b_alloc(&h[1]) && b_alloc(&h[2]));
    CHECK(b_alloc_margin(&b, -5) == NULL);          /* margin 0 at the limit: refused */
    CHECK(b.size == 0 && b.area == NULL);
    for (int i = 0; i < 3; i++)
        b_free(&h[i]);
}

static void r_buf_free_twice(void)
{
    struct buffer b = {0, NULL, 0, 0};
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    CHECK(b_alloc(&b) == &b);
    b_free(&b);
    CHECK(b.size == 0 && b.area == NULL);
    b_free(&b);
    CHECK_EQ(pool_used(pool_head_buffer), 0);
}

static void r_wait_null(void)
{
    struct buffer_wait bw;
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    CHECK(b_queue(NULL) == 0);
    b_dequeue(NULL);
    CHECK(b_is_queued(NULL) == 0);
    buffer_wait_init(NULL, NULL, count_cb);
    buffer_wait_init(&bw, NULL, NULL);
    CHECK(b_queue(&bw) == 0); /* no callback: refused */
}

static void r_wait_twice(void)
{
    struct buffer_wait bw;
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    buffer_wait_init(&bw, NULL, count_cb);
    b_dequeue(&bw); /* not queued: no-op */
    CHECK(b_queue(&bw) == 1 && b_queue(&bw) == 1);
    offer_buffers(NULL, 0);
    CHECK_EQ(cb_count, 1);
    CHECK(!b_is_queued(&bw));
}

static void r_buf_bad_crit(void)
{
    struct buffer b = {0, NULL, 0, 0};
    struct buffer_wait bw;
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    buffer_wait_init(&bw, NULL, count_cb);
    CHECK(b_alloc_crit(&b, (enum dynbuf_crit)99) == NULL);
    CHECK(b_queue_crit((enum dynbuf_crit)99, &bw) == 0);
}

static void r_margin_null(void)
{
    struct buffer b = {0, NULL, 0, 0};
    struct buffer_wait bw, nocb;
    CHECK(b_available(0) == 0);                      /* before dynbuf_init */
    CHECK(b_alloc_margin_fair(&b, 0) == NULL && b.size == 0);
    CHECK(dynbuf_init(16384, 2, 8) == 0);
    CHECK(b_alloc_margin_fair(NULL, 0) == NULL);
    CHECK(b_alloc_margin_fair(&b, -5) == &b && b.size == 16384);   /* margin 0 */
    b_release(NULL);
    b_release(&b);
    CHECK(b.size == 0 && b.area == NULL);
    b_release(&b);                                   /* twice: a no-op */
    CHECK(b_move(NULL, &b) == NULL && b_move(&b, NULL) == NULL && b_move(&b, &b) == NULL);
    buffer_wait_init(&bw, NULL, count_cb);
    buffer_wait_init(&nocb, NULL, NULL);
    CHECK(b_queue_margin(DB_CHANNEL, NULL, 0) == 0);
    CHECK(b_queue_margin(99, &bw, 0) == 0 && !b_is_queued(&bw));
    CHECK(b_queue_margin(DB_CHANNEL, &nocb, 0) == 0);
    CHECK(b_queue_margin(DB_CHANNEL, &bw, -3) == 2);  /* margin 0, alone, buffers free */
    b_dequeue(&bw);
    CHECK(b_available(-1) == b_available(0) && b_available(0) == 8);
    offer_buffers_margin(NULL);                      /* nobody queued: a no-op */
}

static void r_move_refused(void)
{
    struct buffer a = {0, NULL, 0, 0}, c = {0, NULL, 0, 0}, e = {0, NULL, 0, 0};
    struct buffer g;
    memset(&g, 0xA5, sizeof(g));
    CHECK(dynbuf_init(16384, 2, 8) == 0);
    CHECK(b_alloc(&a) == &a && b_alloc(&c) == &c);
    char *aa = a.area, *ca = c.area;
    CHECK(b_move(&c, &a) == NULL && a.area == aa && c.area == ca);   /* dst holds one */
    CHECK(b_move(&c, &e) == NULL && c.area == ca);                   /* src holds none */
    CHECK(b_move(&e, &g) == NULL && e.size == 0 && g.size != 0);     /* src is garbage */
    b_free(&a);
    b_free(&c);
}

static void r_buf_fail_spares_critical(void)
{
    struct buffer b = {0, NULL, 0, 0}, c = {0, NULL, 0, 0};
    struct pool_head *other = create_pool("other", 64, 0);
    CHECK(other != NULL);
    CHECK(dynbuf_init(16384, 2, 0) == 0);            /* the reserve is spared */
    CHECK(pool_alloc(other) == NULL);
    CHECK(b_alloc(&b) == NULL && b.size == 0);
    CHECK(b_alloc_crit(&b, DB_MUX_RX) == NULL && b.size == 0);
    CHECK(b_alloc_crit(&b, DB_CHANNEL) == NULL && b.size == 0);
    CHECK(b_alloc_crit(&b, DB_MUX_TX) == &b && b.size == 16384);
    CHECK(b_alloc_crit(&c, DB_PERMANENT) == &c && c.size == 16384);
    b_free(&b);
    b_free(&c);
}

static void r_buf_uninit(void)
{
    struct buffer b;
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    memset(&b, 0xA5, sizeof(b)); /* an uninitialised struct buffer */
    CHECK(b_alloc(&b) == NULL);
    CHECK(b.size == (size_t)0xA5A5A5A5A5A5A5A5ull); /* untouched */
    CHECK(b_alloc_crit(&b, DB_CHANNEL) == NULL);
    b_free(&b);
    CHECK(b.size == 0 && b.area == NULL);
    CHECK_EQ(pool_used(pool_head_buffer), 0);
    CHECK(b_alloc(&b) == &b && b.size == 16384);
    b_free(&b);
}

static void r_buf_uninit_free_tag(void)
{
    struct buffer b;
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    memset(&b, 0xA5, sizeof(b));
    b_free(&b);
}

static void r_buf_uninit_alloc_tag(void)
{
    struct buffer b;
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    memset(&b, 0xA5, sizeof(b));
    (void)b_alloc(&b);
}

static void r_buf_bad_area_tag(void)
{
    static char junk[16384];
    struct buffer b = {16384, junk, 0, 0};
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    b_free(&b);
}

static int stale_called;
static int stale_cb(void *t)
{
    (void)t;
    stale_called++;
    return 1;
}

/* Three waiters queued; the middle one's memory is then reused, as a
 * stack waiter's is once its function returned (here: filled with 0xA5). */
static void broken_middle_waiter(struct buffer_wait bw[3])
{
    int i;
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    for (i = 0; i < 3; i++) {
        buffer_wait_init(&bw[i], NULL, i == 1 ? stale_cb : count_cb);
        CHECK(b_queue(&bw[i]) == 1);
    }
    memset(&bw[1], 0xA5, sizeof(bw[1]));
}

static void r_wait_stale(void)
{
    struct buffer_wait bw[3];
    broken_middle_waiter(bw);
    offer_buffers(NULL, 0);
    CHECK_EQ(cb_count, 2);      /* the others woken, in order */
    CHECK_EQ(stale_called, 0);  /* the broken one never called */
    CHECK(!b_is_queued(&bw[0]) && !b_is_queued(&bw[2]));
    offer_buffers(NULL, 0);
    CHECK_EQ(cb_count, 2);
}

static void r_wait_stale_tag(void)
{
    struct buffer_wait bw[3];
    broken_middle_waiter(bw);
    offer_buffers(NULL, 0);
}

static void r_wait_uninit(void)
{
    struct buffer_wait bw;
    CHECK(dynbuf_init(16384, 4, 0) == 0);
    memset(&bw, 0xA5, sizeof(bw)); /* never set up */
    bw.target = NULL;
    bw.wakeup_cb = count_cb;
    CHECK(b_is_queued(&bw) == 0);
    memset(bw.private_, 0xA5, sizeof(bw.private_));
    CHECK(b_queue(&bw) == 1);
    CHECK(b_is_queued(&bw) == 1);
    offer_buffers(NULL, 0);
    CHECK_EQ(cb_count, 1);
    CHECK(b_is_queued(&bw) == 0);
}

/* ---- the table ------------------------------------------------------------ */

struct row {
    const char *input;     /* what is tried (table column 2) */
    const char *result;    /* the documented result (table column 3) */
    const char *env;       /* BUFPOOL_DEBUG for the child, NULL: unset */
    const char *abort_msg; /* the child must abort with "bufpool: <this>..."; NULL: exit 0 */
    const char *stderr_has; /* text the child must print on stderr, or NULL */
    void (*fn)(void);
};

#define OK(in, res, fn) {in, res, NULL, NULL, NULL, fn}
#define ENV_OK(in, res, env, fn) {in, res, env, NULL, NULL, fn}
#define ABORTS(in, res, env, msg, fn) {in, res, env, msg, NULL, fn}
#define SAYS(in, res, env, text, fn) {in, res, env, NULL, text, fn}
#define ABORTS_SAYING(in, res, env, msg, text, fn) {in, res, env, msg, text, fn}

static const struct row ROWS[] = {
    OK("`create_pool(name, 0, 0)`", "NULL", r_size_zero),
    OK("`create_pool` with a size above 2 GiB (`0x80000001`, `UINT_MAX`)", "NULL", r_size_huge),
    OK("`create_aligned_pool` with an alignment that is not a power of two (3, 48)", "NULL", r_align_bad),
    OK("`create_aligned_pool` with an alignment above 1 MiB", "NULL (1 MiB itself works)", r_align_huge),
    OK("`create_pool` with an unknown flag bit", "NULL", r_flags_unknown),
    OK("`create_pool` with two `POOL_F_SHARED_*` algorithms", "NULL", r_flags_two_algos),
    OK("`create_pool(NULL, ...)`", "a pool with an empty name", r_name_null),
    OK("`create_pool` with a 200-byte name", "a pool; the first 31 bytes of the name are kept", r_name_long),
    OK("`pool_alloc`, `pool_zalloc`, `pool_alloc_nocache` on a NULL pool", "NULL", r_alloc_null_pool),
    OK("`pool_free(pool, NULL)`, `pool_free_nocache(pool, NULL)`", "no-op, counters unchanged", r_free_null_ptr),
    OK("`pool_free(NULL, obj)`, `pool_free_nocache(NULL, obj)`", "no-op: the object stays held (leaked)", r_free_null_pool),
    OK("`pool_allocated`, `pool_used`, `pool_needed_avg`, `pool_failed` on NULL", "0", r_counters_null),
    OK("`pool_flush`, `pool_set_limit`, `pool_set_minavail` on NULL", "no-op", r_setters_null),
    OK("`pool_gc(NULL)`", "collects every pool (the argument is ignored)", r_gc_null),
    OK("`pool_destroy(NULL)`", "NULL", r_destroy_null),
    OK("`pool_destroy` of a pool with objects held", "returns the pool, untouched and usable", r_destroy_in_use),
    OK("`pool_destroy` of a pointer that is not a pool", "NULL, nothing read through it", r_destroy_not_a_pool),
    OK("`pool_destroy` twice", "NULL both times", r_destroy_twice),
    OK("`pool_alloc` at the limit (`pool_set_limit(p, 1)`)", "NULL, `pool_failed` counts it; limit 0 lifts it",
       r_limit_one),
    OK("`pool_set_limit` below the number of objects held", "NULL until callers hold fewer than the limit; "
       "objects they free go back to the OS while the pool is above it", r_limit_below_used),
    OK("`pool_set_cache_size(0)` and `pool_set_cache_size(SIZE_MAX)`", "accepted; 0 caches nothing in threads",
       r_cache_size_extremes),
    OK("`dump_pools_to_fd(-1)` or a closed fd", "no-op", r_dump_bad_fd),
    OK("`pool_set_debugging(NULL)`", "-1", r_debug_null),
    SAYS("`pool_set_debugging(\"tag,bogus\")`", "-1, one stderr line naming the word, `tag` not applied", NULL,
         "unknown debug word 'bogus'", r_debug_unknown),
    OK("`pool_set_debugging` with bad values (`poison=256`, `poison=x`, `fail=101`, `fail=-1`, `race-window=abc`, "
       "`tag=1`)", "-1 each, nothing changes", r_debug_bad_values),
    SAYS("`BUFPOOL_DEBUG=tag,nonsense` in the environment", "one stderr line naming the word; the variable is ignored",
         "tag,nonsense", "unknown BUFPOOL_DEBUG word 'nonsense'", r_env_unknown),
    SAYS("`BUFPOOL_DEBUG=help`", "the list of words on stderr; the library works", "help", "fail=PERCENT", r_env_help),
    SAYS("`pool_set_debugging(\"help\")`", "0, the list of words on stderr", NULL, "cold-first", r_debug_help),
    OK("a pool created before `pool_set_debugging(\"tag\")`", "keeps working without the mode; pools created after have it",
       r_snapshot),
    OK("`MEM_F_SHARED` pools created under different debug modes", "not merged", r_no_merge_across_modes),
    ABORTS("`tag`: `pool_free` twice", "abort: `bufpool: double free of <ptr> to pool 'dbl'`", "tag", "double free of",
           r_tag_double_free),
    ABORTS("`tag`: `pool_free_nocache` twice", "abort: `bufpool: foreign free of <ptr> to pool 'dblnc'` (it went back "
           "to the OS)", "tag", "foreign free of", r_tag_double_free_nocache),
    ABORTS("`tag`: free to another pool of the same size", "abort: `bufpool: wrong-pool free of <ptr> to pool 'other' "
           "(it belongs to pool 'owner')`", "tag", "wrong-pool free of", r_tag_wrong_pool),
    ABORTS("`tag`: free of a `malloc`ed pointer", "abort: `bufpool: foreign free of <ptr> to pool 'fh'`", "tag",
           "foreign free of", r_tag_foreign_heap),
    ABORTS("`tag`: free of a stack address", "abort: `bufpool: foreign free of <ptr> to pool 'fs'`", "tag",
           "foreign free of", r_tag_foreign_stack),
    ABORTS("`tag`: free of a pointer inside an object", "abort: `bufpool: foreign free of <ptr> to pool 'in'`", "tag",
           "foreign free of", r_tag_interior),
    ABORTS("`tag`: a write of one word past the object, then free", "abort: `bufpool: overrun free of <ptr> to pool 'ovr'`",
           "tag", "overrun free of", r_tag_overrun),
    ABORTS_SAYING("`tag,caller`: `pool_free` twice", "abort; the message names the last and the current caller "
                  "(`test_bad_input+0x...`, for `addr2line`)", "tag,caller", "double free of",
                  "last allocated or freed by test_bad_input+0x", r_tag_caller),
    ABORTS("`integrity`: a write after free, then `pool_alloc`", "abort: `bufpool: write after free of <ptr> in pool "
           "'waf' (byte 10 ...)`", "integrity", "write after free of", r_integrity_realloc),
    ABORTS("`integrity`: a write after free, then `pool_flush`", "abort: `bufpool: write after free of <ptr> in pool "
           "'wafl' (byte 63 ...)`", "integrity", "write after free of", r_integrity_flush),
    ENV_OK("`integrity`: writes only to held objects (50 rounds)", "no false alarm; gc and flush free everything",
           "integrity", r_integrity_clean),
    ENV_OK("`poison=0xAA`: `pool_alloc`, then `pool_zalloc`", "every byte 0xAA; zalloc still zeroes", "poison=0xAA",
           r_poison_byte),
    ENV_OK("`poison` without a byte", "every byte 0x50", "poison", r_poison_default),
    ENV_OK("`cold-first`: free a, b, c, then allocate", "a, then b (oldest first)", "cold-first", r_cold_first),
    ENV_OK("`uaf`: `pool_free`", "the object's pages are unmapped (`msync` gives ENOMEM)", "uaf", r_uaf_unmapped),
    ABORTS("`uaf`: `pool_free` twice", "abort: `bufpool: foreign free of <ptr> to pool 'uafd'`", "uaf",
           "foreign free of", r_uaf_double_free),
    ENV_OK("`uaf` with an 8 KiB alignment", "aligned objects, unmapped on free", "uaf", r_uaf_aligned),
    ENV_OK("`fail=100`", "every allocation NULL and counted in `pool_failed`, also after `fail=0` (fixed at creation)",
           "fail=100", r_fail_all),
    ENV_OK("`fail=50`: 1000 allocations", "about half NULL (350..650), each counted in `pool_failed`", "fail=50",
           r_fail_half),
    OK("`b_alloc` and `offer_buffers` before `dynbuf_init`", "NULL, the buffer stays `BUF_NULL`; no-op",
       r_buf_before_init),
    OK("a second `dynbuf_init` with another buffer size", "< 0, the first setting stays (the same size re-tunes reserve and limit: 0)", r_buf_init_twice),
    OK("`dynbuf_init(0, ...)`", "< 0", r_buf_init_zero),
    OK("`b_alloc(NULL)`, `b_alloc_margin(NULL, 2)`, `b_free(NULL)`", "NULL, NULL, no-op", r_buf_null),
    OK("`b_alloc_margin(buf, -1)`, a negative margin", "counts as margin 0: allocated while callers hold fewer than the limit, else NULL with the buffer left `BUF_NULL`", r_buf_negative_margin),
    OK("`b_free` twice", "the second is a no-op (`*buf` is `BUF_NULL`)", r_buf_free_twice),
    OK("`b_queue(NULL)`, `b_dequeue(NULL)`, `b_is_queued(NULL)`, `buffer_wait_init` with NULL, `b_queue` of a waiter "
       "with a NULL callback", "0, no-op, 0, no-op, 0 (refused)", r_wait_null),
    OK("`b_dequeue` of a waiter not queued, `b_queue` twice", "no-op; queued once, woken once", r_wait_twice),
    OK("`b_alloc_crit`, `b_queue_crit` with an unknown class", "NULL, 0", r_buf_bad_crit),
    ENV_OK("`fail=100` on buffers", "`pool_alloc`, `b_alloc` and the classes below `DB_MUX_TX` NULL; `DB_MUX_TX`, "
           "`DB_PERMANENT` and `dynbuf_init`'s reserve spared", "fail=100", r_buf_fail_spares_critical),
    OK("`pool_free` twice, without a debug mode", "not detected: the next two `pool_alloc` both return the object, "
       "two callers share it (`BUFPOOL_DEBUG=tag` aborts on the second free instead)", r_plain_double_free),
    OK("every call on a pool's handle after `pool_destroy_all` (`pool_alloc`, `pool_free`, the counters, the setters, "
       "`pool_destroy`), objects of it having been idle in the thread cache", "NULL, 0, no-op: the head is kept as a "
       "tombstone; the object freed into it is not touched; pools created since are not affected", r_stale_destroy_all),
    OK("every call on a pool's handle after `pool_destroy` freed it", "as above; `pool_destroy_ex` said 0 (freed)",
       r_stale_destroy),
    ABORTS("`tag`: `pool_alloc` on a pool's handle after `pool_destroy_all`", "abort: `bufpool: pool_alloc of "
           "destroyed pool <ptr> to pool 'st' (the handle is stale ...)`", "tag", "pool_alloc of destroyed pool",
           r_stale_tag_alloc),
    ABORTS("`tag`: `pool_free` into a pool's handle after `pool_destroy`", "abort: `bufpool: pool_free of destroyed "
           "pool <ptr> to pool 'stf' ...`", "tag", "pool_free of destroyed pool", r_stale_tag_free),
    ABORTS("`uaf`: `pool_allocated` on a pool's handle after `pool_destroy`", "abort: `bufpool: pool_allocated of "
           "destroyed pool <ptr> to pool 'su' ...`", "uaf", "pool_allocated of destroyed pool", r_stale_uaf_counter),
    OK("a pool's handle after 256 more pools were destroyed, and a new one created", "not detected: the oldest "
       "tombstone is reused, the stale handle names the new pool (`tag` or any object mode: heads are never reused)",
       r_stale_reused),
    ABORTS("`tag`: the same, 256 pools later", "abort: `bufpool: pool_alloc of destroyed pool <ptr> to pool 'old' ...`",
           "tag", "pool_alloc of destroyed pool", r_stale_tag_not_reused),
    OK("`pool_destroy_ex` and `pool_users` of a merged pool (`MEM_F_SHARED`, two users)", "users 2; -1 while an "
       "object is held; then 1 (one user left, the pool lives); -2 and 0 for NULL", r_destroy_ex_merged),
    OK("`pool_destroy` once too often on a merged pool", "`pool_destroy_ex` returns 0 (freed), where `pool_destroy` "
       "gives NULL for both outcomes; the other module's handle is then stale: NULL, 0", r_destroy_once_too_often),
    OK("`pool_free` of a `malloc`ed pointer, without a debug mode", "not detected: the next `pool_alloc` hands it out "
       "(undefined; `BUFPOOL_DEBUG=tag` aborts: `foreign free`)", r_plain_foreign_heap),
    ABORTS("`tag`: a 64-byte object freed into a 16 KiB pool", "abort: `bufpool: wrong-pool free of <ptr> to pool "
           "'big' (it belongs to pool 'small')`; without a debug mode undefined (handed out as 16 KiB: heap corruption)",
           "tag", "wrong-pool free of", r_tag_small_into_big),
    OK("an uninitialised `struct buffer` (bytes 0xA5): `b_alloc`, `b_alloc_crit`, `b_free`", "NULL, the buffer "
       "untouched; NULL; `b_free` frees nothing and sets `BUF_NULL` (a size other than the buffer size is no buffer)",
       r_buf_uninit),
    ABORTS("`tag`: `b_free` of an uninitialised `struct buffer`", "abort: `bufpool: b_free of uninitialised buffer "
           "<ptr> to pool 'buffer' (its size ... is not the buffer size 16384 ...)`", "tag",
           "b_free of uninitialised buffer", r_buf_uninit_free_tag),
    ABORTS("`tag`: `b_alloc` of an uninitialised `struct buffer`", "abort: `bufpool: b_alloc of uninitialised buffer "
           "<ptr> to pool 'buffer' ...`", "tag", "b_alloc of uninitialised buffer", r_buf_uninit_alloc_tag),
    ABORTS("`tag`: `b_free` of a buffer of the right size whose area is no buffer", "abort: `bufpool: foreign free of "
           "<ptr> to pool 'buffer'`; without a debug mode undefined", "tag", "foreign free of", r_buf_bad_area_tag),
    OK("a queued waiter whose memory is reused (a stack waiter out of scope; here filled with 0xA5), then "
       "`offer_buffers`", "the waiter is dropped from the queue, never called; the others are woken in order (with "
       "two broken in one class, those between them are never woken)",
       r_wait_stale),
    ABORTS("`tag`: the same", "abort: `bufpool: offer_buffers of stale waiter <ptr> to pool 'buffer' ...`", "tag",
           "offer_buffers of stale waiter", r_wait_stale_tag),
    OK("a `struct buffer_wait` never set up (private part 0xA5): `b_is_queued`, `b_queue`", "0; then queued (1), "
       "woken once", r_wait_uninit),
    OK("the margin calls with NULL or out of range: `b_alloc_margin_fair(NULL, 0)`, a negative margin, `b_release(NULL)`, "
       "`b_release` twice, `b_move` with NULL or the same buffer twice, `b_queue_margin` with NULL, an unknown class or "
       "a NULL callback, `b_available(-1)`; `b_available` and `b_alloc_margin_fair` before `dynbuf_init`", "NULL; "
       "margin 0; no-op; the second a no-op; NULL, nothing moved; 0, not queued; `b_available(0)`; 0 and NULL",
       r_margin_null),
    OK("`b_move` into a `struct buffer` that holds a buffer, from one that holds none, from an uninitialised one "
       "(0xA5)", "NULL, both left as they were (the buffer functions never take garbage for a buffer)", r_move_refused),
};

#define NROWS ((int)(sizeof(ROWS) / sizeof(ROWS[0])))

/* ---- the parent ------------------------------------------------------------ */

static void markdown_row(int i, char *out, size_t n)
{
    const struct row *r = &ROWS[i];
    char mode[96];
    if (r->env)
        snprintf(mode, sizeof(mode), "`BUFPOOL_DEBUG=%s`", r->env);
    else
        snprintf(mode, sizeof(mode), "-");
    snprintf(out, n, "| %d | %s | %s | %s |", i + 1, r->input, mode, r->result);
}

static void print_markdown(void)
{
    char line[1024];
    int i;
    printf("| # | Bad input | Debug modes | Documented result |\n|---|---|---|---|\n");
    for (i = 0; i < NROWS; i++) {
        markdown_row(i, line, sizeof(line));
        printf("%s\n", line);
    }
}

/* docs/BAD-INPUT.md must hold exactly this table (same rows, same count). */
static void check_doc(void)
{
    static char doc[1 << 20];
    char line[1024];
    size_t n;
    int i, doc_rows = 0, missing = 0;
    const char *s;
    FILE *f = fopen("docs/BAD-INPUT.md", "r");
    CHECK(f != NULL);
    if (!f) {
        fprintf(stderr, "run from the repository root\n");
        return;
    }
    n = fread(doc, 1, sizeof(doc) - 1, f);
    fclose(f);
    doc[n] = 0;
    for (s = doc; (s = strstr(s, "\n| ")) != NULL; s++)
        if (s[3] >= '1' && s[3] <= '9')
            doc_rows++;
    CHECK_EQ(doc_rows, NROWS);
    for (i = 0; i < NROWS; i++) {
        markdown_row(i, line, sizeof(line));
        if (!strstr(doc, line)) {
            fprintf(stderr, "docs/BAD-INPUT.md lacks (regenerate: test_bad_input --markdown): %s\n", line);
            missing++;
        }
    }
    CHECK_EQ(missing, 0);
}

static const char *self;

/* Runs row i in a fresh process; returns 1 when it ended as documented. */
static int run_row(int i)
{
    const struct row *r = &ROWS[i];
    char idx[16], err[8192];
    int fds[2], status, ok = 1;
    size_t n = 0;
    ssize_t k;
    pid_t pid;

    if (pipe(fds) != 0)
        return 0;
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        if (r->env)
            setenv("BUFPOOL_DEBUG", r->env, 1);
        else
            unsetenv("BUFPOOL_DEBUG");
        snprintf(idx, sizeof(idx), "%d", i);
        execl(self, self, "--row", idx, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    while (n < sizeof(err) - 1 && (k = read(fds[0], err + n, sizeof(err) - 1 - n)) > 0)
        n += (size_t)k;
    close(fds[0]);
    err[n] = 0;
    waitpid(pid, &status, 0);

    if (r->abort_msg) {
        char want[128];
        const char *line;
        snprintf(want, sizeof(want), "bufpool: %s", r->abort_msg);
        line = strstr(err, want);
        ok = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT && line != NULL &&
             (line == err || line[-1] == '\n') && strstr(line, " pool '") != NULL
             ? 1 : 0;
        /* one line: the message ends the output */
        if (ok && strchr(line, '\n') != err + n - 1)
            ok = 0;
    } else {
        ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    if (r->stderr_has && !strstr(err, r->stderr_has))
        ok = 0;
    if (WIFSIGNALED(status) && WTERMSIG(status) != SIGABRT)
        ok = 0; /* SIGSEGV or anything else is never a documented result */
    if (!ok) {
        fprintf(stderr, "row %d (%s): ended with %s %d; stderr:\n%s\n", i + 1, r->input,
                WIFSIGNALED(status) ? "signal" : "exit status",
                WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), err);
    }
    return ok;
}

int main(int argc, char **argv)
{
    int i;
    self = argv[0];
    if (argc == 3 && strcmp(argv[1], "--row") == 0) {
        i = atoi(argv[2]);
        if (i < 0 || i >= NROWS)
            return 2;
        ROWS[i].fn();
        return harness_failures ? 1 : 0;
    }
    if (argc == 2 && strcmp(argv[1], "--markdown") == 0) {
        print_markdown();
        return 0;
    }
    check_doc();
    for (i = 0; i < NROWS; i++)
        CHECK(run_row(i));
    printf("bad input: %d rows run in child processes\n", NROWS);
    DONE("test_bad_input");
}
