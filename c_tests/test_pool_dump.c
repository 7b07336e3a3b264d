/* dump_pools_to_fd (the pool part of the C contract): the header line, one line per live
 * pool with its name, size, counts, failures and users, and the total line
 * agreeing with pool_total_allocated/pool_total_used. Merged pools show once
 * with their users; destroyed pools (pool_destroy, pool_destroy_all) vanish. */
#include <string.h>
#include <unistd.h>

#include "bufpool.h"
#include "harness.h"

static char dump[65536];

/* Dumps into a temporary file and reads it back into `dump`. */
static const char *take_dump(void)
{
    FILE *f = tmpfile();
    size_t n = 0;
    if (!f) {
        perror("tmpfile");
        exit(2);
    }
    dump_pools_to_fd(fileno(f));
    rewind(f);
    n = fread(dump, 1, sizeof(dump) - 1, f);
    dump[n] = 0;
    fclose(f);
    return dump;
}

/* The fields of one pool line. */
struct line {
    char name[64];
    unsigned long size, allocated, bytes, used, needed, failures, users;
    char shared[32];
};

/* Finds the line of the pool named `name` in the dump; 1 if found and
 * parsed, 0 if absent, -1 if present but not in the documented form. */
static int find_pool(const char *d, const char *name, struct line *out)
{
    char key[96];
    snprintf(key, sizeof(key), "  - Pool %s (", name);
    for (const char *l = d; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, key, strlen(key)) != 0)
            continue;
        snprintf(out->name, sizeof(out->name), "%s", name);
        int n = sscanf(l + strlen(key),
                       "%lu bytes) : %lu allocated (%lu bytes), %lu used, needed_avg %lu, "
                       "%lu failures, %lu users, shared=%31[a-z]",
                       &out->size, &out->allocated, &out->bytes, &out->used, &out->needed,
                       &out->failures, &out->users, out->shared);
        return n == 8 ? 1 : -1;
    }
    return 0;
}

static int count_lines(const char *d, const char *prefix)
{
    int n = 0;
    for (const char *l = d; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        n += strncmp(l, prefix, strlen(prefix)) == 0;
    return n;
}

/* The total line matches the byte totals and the number of pool lines. */
static void check_total(const char *d)
{
    const char *t = strstr(d, "\nTotal: ");
    unsigned long pools = 0;
    unsigned long long alloc = 0, used = 0;
    CHECK(t != NULL);
    if (!t)
        return;
    CHECK_EQ(sscanf(t + 1, "Total: %lu pools, %llu bytes allocated, %llu used.", &pools, &alloc, &used), 3);
    CHECK_EQ(pools, count_lines(d, "  - Pool "));
    CHECK_EQ(alloc, pool_total_allocated());
    CHECK_EQ(used, pool_total_used());
    CHECK(t[strlen(t) - 1] == '\n');
}

static void test_one_pool(void)
{
    struct pool_head *p = create_pool("dumptest", 60, 0);
    struct line l;
    void *o[5];

    take_dump();
    CHECK(strncmp(dump, "Dumping pools usage.\n", 21) == 0);
    CHECK_EQ(find_pool(dump, "dumptest", &l), 1);
    CHECK_EQ(l.size, 64);
    CHECK_EQ(l.allocated, 0);
    CHECK_EQ(l.used, 0);
    CHECK_EQ(l.users, 1);
    CHECK_EQ(l.failures, 0);
    check_total(dump);

    pool_set_limit(p, 5);
    for (int i = 0; i < 5; i++)
        o[i] = pool_alloc(p);
    CHECK(pool_alloc(p) == NULL);
    pool_free(p, o[0]);
    pool_free(p, o[1]);

    take_dump();
    CHECK(strncmp(dump, "Dumping pools usage.\n", 21) == 0);
    CHECK_EQ(find_pool(dump, "dumptest", &l), 1);
    CHECK_EQ(l.size, 64);
    CHECK_EQ(l.allocated, 5);
    CHECK_EQ(l.bytes, 5 * 64);
    CHECK_EQ(l.used, 3);
    CHECK_EQ(l.failures, 1);
    CHECK_EQ(l.users, 1);
    CHECK_EQ(l.needed, pool_needed_avg(p));
    CHECK(strcmp(l.shared, "xchg") == 0);
    check_total(dump);

    for (int i = 2; i < 5; i++)
        pool_free(p, o[i]);
    CHECK(pool_destroy(p) == NULL);
    take_dump();
    CHECK_EQ(find_pool(dump, "dumptest", &l), 0);
    check_total(dump);
}

static void test_merged(void)
{
    struct pool_head *a = create_pool("mergeA", 100, MEM_F_SHARED);
    struct pool_head *b = create_pool("mergeB", 112, MEM_F_SHARED);
    struct line l;

    CHECK(a != NULL && a == b);
    take_dump();
    CHECK_EQ(find_pool(dump, "mergeA", &l), 1);
    CHECK_EQ(l.users, 2);
    CHECK_EQ(l.size, 112);
    CHECK_EQ(find_pool(dump, "mergeB", &l), 0);
    check_total(dump);

    CHECK(pool_destroy(a) == NULL);
    take_dump();
    CHECK_EQ(find_pool(dump, "mergeA", &l), 1);
    CHECK_EQ(l.users, 1);
    void *o = pool_alloc(b);
    CHECK(o != NULL);
    pool_free(b, o);
    CHECK(pool_destroy(b) == NULL);
    take_dump();
    CHECK_EQ(find_pool(dump, "mergeA", &l), 0);
    check_total(dump);
}

static void test_names_and_algorithms(void)
{
    const char *longname = "abcdefghijklmnopqrstuvwxyz0123456789ABCD"; /* 40 chars */
    struct pool_head *p = create_pool(longname, 33, MEM_F_EXACT);
    struct pool_head *q = create_pool(NULL, 16, POOL_F_SHARED_NONE);
    struct line l;
    char trunc[32];

    memcpy(trunc, longname, 31);
    trunc[31] = 0;
    take_dump();
    CHECK_EQ(find_pool(dump, trunc, &l), 1); /* 31 bytes kept, then " (" */
    CHECK_EQ(l.size, 33);
    CHECK(strstr(dump, "abcdefghijklmnopqrstuvwxyz01234567") == NULL);
    CHECK_EQ(find_pool(dump, "", &l), 1); /* the NULL name is empty */
    CHECK_EQ(l.size, 16);
    CHECK(strcmp(l.shared, "none") == 0);
    check_total(dump);
    CHECK(pool_destroy(p) == NULL);
    CHECK(pool_destroy(q) == NULL);
}

static void test_destroy_all(void)
{
    struct pool_head *keep = create_pool("keepme", 48, 0);
    struct pool_head *drop = create_pool("dropme", 48, POOL_F_NO_LOCAL_CACHE);
    struct pool_head *idle = create_pool("idleme", 48, 0);
    struct line l;
    void *k = pool_alloc(keep);
    void *i = pool_alloc(idle);

    CHECK(keep && drop && idle && k && i);
    pool_free(idle, i); /* idle in this thread's cache: not in use */
    memset(k, 0x77, 48);
    take_dump();
    CHECK_EQ(find_pool(dump, "keepme", &l), 1);
    CHECK_EQ(find_pool(dump, "dropme", &l), 1);
    CHECK_EQ(find_pool(dump, "idleme", &l), 1);

    pool_destroy_all();
    take_dump();
    CHECK_EQ(find_pool(dump, "keepme", &l), 1);
    CHECK_EQ(l.used, 1);
    CHECK_EQ(find_pool(dump, "dropme", &l), 0);
    CHECK_EQ(find_pool(dump, "idleme", &l), 0);
    CHECK_EQ(count_lines(dump, "  - Pool "), 1);
    check_total(dump);

    /* The pool in use stays valid. */
    void *k2 = pool_alloc(keep);
    CHECK(k2 != NULL);
    CHECK(((unsigned char *)k)[47] == 0x77);
    pool_free(keep, k2);
    pool_free(keep, k);
    CHECK_EQ(pool_used(keep), 0);
    pool_destroy_all();
    take_dump();
    CHECK_EQ(count_lines(dump, "  - Pool "), 0);
    CHECK(strstr(dump, "Total: 0 pools, 0 bytes allocated, 0 used.\n") != NULL);
}

static void test_bad_fd(void)
{
    int fd[2];
    struct pool_head *p = create_pool("badfd", 64, 0);
    struct line l;

    dump_pools_to_fd(-1);
    CHECK(pipe(fd) == 0);
    close(fd[1]);
    dump_pools_to_fd(fd[1]); /* closed */
    close(fd[0]);
    /* Still alive and dumping. */
    take_dump();
    CHECK_EQ(find_pool(dump, "badfd", &l), 1);
    CHECK(pool_destroy(p) == NULL);
}

int main(void)
{
    test_one_pool();
    test_merged();
    test_names_and_algorithms();
    test_bad_fd();
    test_destroy_all(); /* last: it destroys every idle pool */
    DONE("test_pool_dump");
}
