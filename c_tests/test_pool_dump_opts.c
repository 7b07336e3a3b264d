/* dump_pools_to_fd_opts: the options of HAProxy's `show pools` (byname,
 * bysize, byusage, match PREFIX, a count, detailed) and JSON. Pools with
 * known names, sizes and usage; each dump goes to a temporary file and is
 * parsed back: the text lines with sscanf, the JSON with the small parser
 * below (objects of strings, numbers, booleans and arrays of strings).
 * Checked: the order of each sort, the filter, the count, the Total line
 * of what is shown, the detailed fields, every JSON value against
 * pool_allocated/pool_used/..., a name with a quote, a backslash and
 * control characters escaped and read back intact, more pools than one
 * ranking batch (64) in order and each once, and -1/EINVAL with nothing
 * written for bad options. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "bufpool.h"
#include "harness.h"

static char dump[1 << 20];
static size_t dump_len;
static int dump_rc, dump_errno;

/* Dumps with `opts` into a temporary file, read back into `dump`. */
static const char *take(const char *opts)
{
    FILE *f = tmpfile();
    if (!f) {
        perror("tmpfile");
        exit(2);
    }
    errno = 0;
    dump_rc = dump_pools_to_fd_opts(fileno(f), opts);
    dump_errno = errno;
    rewind(f);
    dump_len = fread(dump, 1, sizeof(dump) - 1, f);
    dump[dump_len] = 0;
    fclose(f);
    return dump;
}

static const char *next_line(const char *l)
{
    const char *e = strchr(l, '\n');
    return e ? e + 1 : l + strlen(l);
}

/* ---- text ---------------------------------------------------------------- */

/* The names of the pool lines, in order, into names[][32]; their count. */
static int text_names(const char *d, char names[][32], int max)
{
    int n = 0;
    for (const char *l = d; *l; l = next_line(l)) {
        if (strncmp(l, "  - Pool ", 9) != 0)
            continue;
        const char *s = l + 9, *e = strstr(s, " (");
        if (!e || n == max)
            return -1;
        snprintf(names[n], 32, "%.*s", (int)(e - s), s);
        n++;
    }
    return n;
}

/* The line of pool `name`, or NULL. */
static const char *text_line(const char *d, const char *name)
{
    char key[64];
    snprintf(key, sizeof(key), "  - Pool %s (", name);
    for (const char *l = d; *l; l = next_line(l))
        if (!strncmp(l, key, strlen(key)))
            return l;
    return NULL;
}

static void check_text_order(const char *opts, int want_n, const char *const *want)
{
    char names[512][32];
    take(opts);
    CHECK_EQ(dump_rc, 0);
    CHECK(!strncmp(dump, "Dumping pools usage.\n", 21));
    int n = text_names(dump, names, 512);
    CHECK_EQ(n, want_n);
    for (int i = 0; i < n && i < want_n; i++)
        if (strcmp(names[i], want[i])) {
            fprintf(stderr, "'%s': line %d is pool %s, expected %s\n", opts, i, names[i], want[i]);
            CHECK(!"order");
        }
    unsigned long pools = 0;
    const char *t = strstr(dump, "\nTotal: ");
    CHECK(t && sscanf(t + 1, "Total: %lu pools,", &pools) == 1);
    CHECK_EQ(pools, want_n);
}

/* ---- JSON ---------------------------------------------------------------- */

#define MAX_KEYS 32
struct obj {
    int n;
    char key[MAX_KEYS][24];
    char str[MAX_KEYS][64];  /* decoded string, or the array's strings joined by ',' */
    unsigned long long num[MAX_KEYS];
    char kind[MAX_KEYS];     /* 's', 'n', 'b', 'a' */
};

/* A JSON string at *p (past the opening quote): decoded into out (bytes,
 * \u00XX as one byte); 0 on a malformed one. */
static int parse_string(const char **p, char *out, size_t cap)
{
    const char *s = *p;
    size_t n = 0;
    for (;;) {
        unsigned char c = (unsigned char)*s++;
        if (c == 0 || c < 0x20)
            return 0;
        if (c == '"')
            break;
        if (c == '\\') {
            char e = *s++;
            unsigned v = 0;
            switch (e) {
            case '"': c = '"'; break;
            case '\\': c = '\\'; break;
            case '/': c = '/'; break;
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u':
                if (sscanf(s, "%4x", &v) != 1 || v > 0xff)
                    return 0;
                s += 4;
                c = (unsigned char)v;
                break;
            default:
                return 0;
            }
        }
        if (n + 1 >= cap)
            return 0;
        out[n++] = (char)c;
    }
    out[n] = 0;
    *p = s;
    return 1;
}

/* One JSON object on one line, from `l` to its newline; 1 if well formed. */
static int parse_object(const char *l, struct obj *o)
{
    const char *p = l;
    memset(o, 0, sizeof(*o));
    if (*p++ != '{')
        return 0;
    for (;;) {
        if (o->n == MAX_KEYS || *p++ != '"' || !parse_string(&p, o->key[o->n], sizeof(o->key[0])) || *p++ != ':')
            return 0;
        int i = o->n++;
        if (*p == '"') {
            p++;
            o->kind[i] = 's';
            if (!parse_string(&p, o->str[i], sizeof(o->str[0])))
                return 0;
        } else if (*p >= '0' && *p <= '9') {
            char *e;
            o->kind[i] = 'n';
            o->num[i] = strtoull(p, &e, 10);
            p = e;
        } else if (!strncmp(p, "true", 4) || !strncmp(p, "false", 5)) {
            o->kind[i] = 'b';
            o->num[i] = *p == 't';
            p += *p == 't' ? 4 : 5;
        } else if (*p == '[') {
            p++;
            o->kind[i] = 'a';
            while (*p == '"') {
                char s[32];
                p++;
                if (!parse_string(&p, s, sizeof(s)))
                    return 0;
                if (o->str[i][0])
                    strcat(o->str[i], ",");
                if (strlen(o->str[i]) + strlen(s) >= sizeof(o->str[0]))
                    return 0;
                strcat(o->str[i], s);
                if (*p == ',')
                    p++;
            }
            if (*p++ != ']')
                return 0;
        } else {
            return 0;
        }
        if (*p == '}')
            break;
        if (*p++ != ',')
            return 0;
    }
    p++;
    return *p == '\n' || (*p == ',' && p[1] == '\n');
}

static int field(const struct obj *o, const char *key)
{
    for (int i = 0; i < o->n; i++)
        if (!strcmp(o->key[i], key))
            return i;
    return -1;
}

static unsigned long long num(const struct obj *o, const char *key)
{
    int i = field(o, key);
    CHECK(i >= 0 && (o->kind[i] == 'n' || o->kind[i] == 'b'));
    return i >= 0 ? o->num[i] : ~0ull;
}

static const char *str(const struct obj *o, const char *key)
{
    int i = field(o, key);
    CHECK(i >= 0 && (o->kind[i] == 's' || o->kind[i] == 'a'));
    return i >= 0 ? o->str[i] : "";
}

/* Parses a JSON dump: "[" line, object lines (a comma ending all but the
 * last), "]" line. The objects into objs; their count, -1 if malformed. */
static int parse_json(const char *d, struct obj *objs, int max)
{
    int n = 0;
    if (strncmp(d, "[\n", 2))
        return -1;
    const char *l = d + 2;
    while (*l == '{') {
        const char *e = strchr(l, '\n');
        if (n == max || !e || !parse_object(l, &objs[n]))
            return -1;
        int comma = e[-1] == ',';
        n++;
        l = e + 1;
        if (comma != (*l == '{'))
            return -1; /* a comma exactly when another object follows */
    }
    return strcmp(l, "]\n") ? -1 : n;
}

/* ---- the pools ------------------------------------------------------------ */

static const char weird[] = "q\"uo\te\\x\001"; /* a quote, a tab, a backslash, a control character */

static struct pool_head *pa, *pb, *pc, *pw, *po;

/* The pool whose name is `name`, among ours. */
static struct pool_head *by_name(const char *name)
{
    if (!strcmp(name, "opt_a")) return pa;
    if (!strcmp(name, "opt_b")) return pb;
    if (!strcmp(name, "opt_c")) return pc;
    if (!strcmp(name, weird)) return pw;
    if (!strcmp(name, "other")) return po;
    return NULL;
}

/* Registry order a, c, b; by name a, b, c; by size b (1024), a (256),
 * c (64); by usage c (20 x 64 = 1280), b (1 x 1024), a (3 x 256 = 768). */
static void make_pools(void)
{
    static void *keep[32];
    int k = 0;
    pa = create_aligned_pool("opt_a", 256, 64, 0);
    pc = create_pool("opt_c", 64, 0);
    pb = create_pool("opt_b", 1024, 0);
    pw = create_pool(weird, 48, 0);
    po = create_pool("other", 16, POOL_F_NO_LOCAL_CACHE);
    CHECK(pa && pb && pc && pw && po);
    for (int i = 0; i < 3; i++)
        keep[k++] = pool_alloc(pa);
    for (int i = 0; i < 20; i++)
        keep[k++] = pool_alloc(pc);
    keep[k++] = pool_alloc(pb);
    keep[k++] = pool_alloc(pw);
    pool_free(pa, keep[0]); /* idle in this thread's cache: allocated, not used */
    for (int i = 3; i < 10; i++)
        pool_free(pc, keep[i]);
    pool_set_limit(pa, 50);
    pool_set_minavail(pa, 2);
    CHECK_EQ(pool_allocated(pa), 3);
    CHECK_EQ(pool_used(pa), 2);
    CHECK_EQ(pool_allocated(pc), 20);
    CHECK_EQ(pool_used(pc), 13);
}

static void test_text_orders(void)
{
    static const char *const reg[] = { "opt_a", "opt_c", "opt_b" };
    static const char *const name[] = { "opt_a", "opt_b", "opt_c" };
    static const char *const size[] = { "opt_b", "opt_a", "opt_c" };
    static const char *const usage[] = { "opt_c", "opt_b", "opt_a" };
    check_text_order("match opt_", 3, reg);
    check_text_order("byname match opt_", 3, name);
    check_text_order("match opt_ bysize", 3, size);
    check_text_order("  byusage\tmatch opt_ ", 3, usage);
    /* the count: the first N of the order */
    check_text_order("byusage 2 match opt_", 2, usage);
    check_text_order("1 match opt_ bysize", 1, size);
    check_text_order("match opt_ 1000", 3, reg);
    /* the filter: a prefix of bytes; none matching */
    check_text_order("match opt_b", 1, name + 1);
    check_text_order("match zzz byname", 0, NULL);
    check_text_order("match opt_aa", 0, NULL);
    /* without a filter every pool shows: ours and nothing else here */
    static const char *const all[] = { "opt_a", "opt_b", "opt_c", "other", weird };
    check_text_order("byname", 5, all);

    /* the Total line adds up what is shown */
    unsigned long n = 0;
    unsigned long long alloc = 0, used = 0;
    take("match opt_ byname");
    const char *t = strstr(dump, "\nTotal: ");
    CHECK(t && sscanf(t + 1, "Total: %lu pools, %llu bytes allocated, %llu used.", &n, &alloc, &used) == 3);
    CHECK_EQ(alloc, 3 * 256 + 1024 + 20 * 64);
    CHECK_EQ(used, 2 * 256 + 1024 + 13 * 64);
}

static void test_plain_is_the_same(void)
{
    static char plain[1 << 16];
    FILE *f = tmpfile();
    CHECK(f != NULL);
    if (!f)
        return;
    dump_pools_to_fd(fileno(f));
    rewind(f);
    plain[fread(plain, 1, sizeof(plain) - 1, f)] = 0;
    fclose(f);
    take(NULL);
    CHECK_EQ(dump_rc, 0);
    CHECK(!strcmp(dump, plain));
    take("");
    CHECK(!strcmp(dump, plain));
    take(" \t ");
    CHECK(!strcmp(dump, plain));
}

static void test_detailed(void)
{
    unsigned long rel, lim, mina, align, foot;
    unsigned flags;
    const char *l;

    take("match opt_a");
    l = text_line(dump, "opt_a");
    CHECK(l && !strstr(l, "; released") && strstr(l, " @0x"));
    take("detailed match opt_a");
    CHECK_EQ(dump_rc, 0);
    l = text_line(dump, "opt_a");
    CHECK(l != NULL);
    if (!l)
        return;
    /* the plain fields first, as in dump_pools_to_fd */
    unsigned long size, a, used;
    CHECK_EQ(sscanf(l, "  - Pool opt_a (%lu bytes) : %lu allocated (%*u bytes), %lu used,", &size, &a, &used), 3);
    CHECK_EQ(size, 256);
    CHECK_EQ(a, 3);
    CHECK_EQ(used, 2);
    const char *d = strstr(l, "; released ");
    CHECK(d != NULL);
    if (!d)
        return;
    CHECK_EQ(sscanf(d, "; released %lu, limit %lu, minavail %lu, align %lu, footprint %lu bytes, flags 0x%x @0x",
                    &rel, &lim, &mina, &align, &foot, &flags), 6);
    CHECK_EQ(rel, pool_released(pa));
    CHECK_EQ(lim, 50);
    CHECK_EQ(mina, 2);
    CHECK_EQ(align, 64);
    CHECK(getenv("BUFPOOL_DEBUG") ? foot > 256 : foot == 256); /* debug words follow the object */
    CHECK_EQ(flags, 0);
    CHECK(strstr(d, " @0x") != NULL && strchr(d, '\n') > strstr(d, " @0x"));
}

static void check_json_pool(const struct obj *o, int detailed)
{
    struct pool_head *p = by_name(str(o, "name"));
    CHECK(p != NULL);
    if (!p)
        return;
    unsigned long long size = num(o, "size");
    CHECK_EQ(num(o, "allocated"), pool_allocated(p));
    CHECK_EQ(num(o, "used"), pool_used(p));
    CHECK_EQ(num(o, "allocated_bytes"), pool_allocated(p) * size);
    CHECK_EQ(num(o, "used_bytes"), pool_used(p) * size);
    CHECK_EQ(num(o, "needed_avg"), pool_needed_avg(p));
    CHECK_EQ(num(o, "failures"), pool_failed(p));
    CHECK_EQ(num(o, "users"), 1);
    /* Run under BUFPOOL_DEBUG (tools/test-sanitize.sh, by hand), the pools
     * have debug modes: no thread cache, a debug store, debug words. */
    int dbg = getenv("BUFPOOL_DEBUG") != NULL;
    CHECK(dbg || !strcmp(str(o, "shared"), "xchg"));
    CHECK_EQ(num(o, "mem_f_shared"), 0);
    CHECK(dbg || num(o, "thread_cache") == (p != po));
    CHECK(dbg || !strcmp(str(o, "debug"), ""));
    CHECK(!strncmp(str(o, "addr"), "0x", 2));
    CHECK_EQ(field(o, "limit") >= 0, detailed);
    if (detailed) {
        CHECK_EQ(num(o, "released"), pool_released(p));
        CHECK_EQ(num(o, "limit"), p == pa ? 50 : 0);
        CHECK_EQ(num(o, "minavail"), p == pa ? 2 : 0);
        CHECK_EQ(num(o, "align"), p == pa ? 64 : 0);
        CHECK(dbg ? num(o, "footprint") > size : num(o, "footprint") == size);
        CHECK_EQ(num(o, "flags"), p == po ? POOL_F_NO_LOCAL_CACHE : 0);
    }
}

static void test_json(void)
{
    static struct obj objs[16];
    int n;

    take("json");
    CHECK_EQ(dump_rc, 0);
    n = parse_json(dump, objs, 16);
    CHECK_EQ(n, 5);
    for (int i = 0; i < n; i++)
        check_json_pool(&objs[i], 0);

    take("detailed json byname");
    n = parse_json(dump, objs, 16);
    CHECK_EQ(n, 5);
    static const char *const all[] = { "opt_a", "opt_b", "opt_c", "other", weird };
    for (int i = 0; i < n; i++) {
        CHECK(!strcmp(str(&objs[i], "name"), all[i]));
        check_json_pool(&objs[i], 1);
    }
    /* the name with a quote went out escaped, and read back intact */
    CHECK(strstr(dump, "\"name\":\"q\\\"uo\\te\\\\x\\u0001\"") != NULL);
    CHECK_EQ(n == 5 ? strcmp(str(&objs[4], "name"), weird) : -1, 0);

    take("json byusage 2 match opt_");
    n = parse_json(dump, objs, 16);
    CHECK_EQ(n, 2);
    if (n == 2) {
        CHECK(!strcmp(str(&objs[0], "name"), "opt_c"));
        CHECK(!strcmp(str(&objs[1], "name"), "opt_b"));
        CHECK_EQ(num(&objs[0], "allocated_bytes"), 1280);
    }
    take("json match zzz");
    CHECK_EQ(dump_rc, 0);
    CHECK(!strcmp(dump, "[\n]\n"));
    CHECK_EQ(parse_json(dump, objs, 16), 0);
}

/* More pools than one ranking batch: every one once, in order. */
static void test_many(void)
{
    static struct obj objs[200];
    char name[32];
    for (int i = 0; i < 150; i++) {
        snprintf(name, sizeof(name), "many_%03d", (i * 37) % 150);
        /* sizes repeat (ties go by name) */
        CHECK(create_pool(name, 16 * (1 + (unsigned)(i % 7)), 0) != NULL);
    }
    take("json bysize match many_");
    int n = parse_json(dump, objs, 200);
    CHECK_EQ(n, 150);
    char seen[150] = { 0 };
    for (int i = 0; i < n; i++) {
        int k = atoi(str(&objs[i], "name") + 5);
        CHECK(k >= 0 && k < 150 && !seen[k]);
        if (k >= 0 && k < 150)
            seen[k] = 1;
        if (i > 0) {
            unsigned long long s0 = num(&objs[i - 1], "size"), s1 = num(&objs[i], "size");
            CHECK(s0 > s1 || (s0 == s1 && strcmp(str(&objs[i - 1], "name"), str(&objs[i], "name")) < 0));
        }
    }
    char names[200][32];
    take("byname match many_ 100");
    CHECK_EQ(text_names(dump, names, 200), 100);
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "many_%03d", i);
        CHECK(!strcmp(names[i], name));
    }
}

static void test_bad_options(void)
{
    static const char *const bad[] = {
        "bogus", "byname bysize", "match", "byname match", "match a match b", "0", "3 4", "-1", "10x",
        "JSON", "byname,json", "detailed bogus json", "\xff",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        take(bad[i]);
        if (dump_rc != -1 || dump_errno != EINVAL || dump_len != 0)
            fprintf(stderr, "'%s': rc %d, errno %d, %zu bytes written\n", bad[i], dump_rc, dump_errno, dump_len);
        CHECK_EQ(dump_rc, -1);
        CHECK_EQ(dump_errno, EINVAL);
        CHECK_EQ(dump_len, 0);
    }
    /* a failed write: -1 with write's errno */
    int fd[2];
    CHECK(pipe(fd) == 0);
    close(fd[0]);
    close(fd[1]);
    errno = 0;
    CHECK_EQ(dump_pools_to_fd_opts(fd[1], "json"), -1);
    CHECK_EQ(errno, EBADF);
    errno = 0;
    CHECK_EQ(dump_pools_to_fd_opts(-1, "bogus"), -1);
    CHECK_EQ(errno, EINVAL);
}

int main(void)
{
    make_pools();
    test_plain_is_the_same();
    test_text_orders();
    test_detailed();
    test_json();
    test_bad_options();
    test_many();
    DONE("test_pool_dump_opts");
}
