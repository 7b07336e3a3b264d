/* abso.c: A/B of libbufpool.so builds inside one process.
 *
 *   abso w1|w2 SIZE OPS BATCHES plt|noplt [n:|p:]LIB.so...
 *
 * Loads each LIB.so with dlopen (RTLD_LOCAL: each copy has its own pools,
 * thread cache and TLS word), makes one pool of SIZE bytes in each, then
 * runs BATCHES rounds; a round times OPS ops of W1 (pool_alloc + pool_free)
 * or W2 (bench.c's ring of 256: free the oldest, allocate, write 64 bytes)
 * through every library in turn, the order rotated from round to round,
 * with thread CPU time (CLOCK_THREAD_CPUTIME_ID) around each batch.
 * Neighbouring batches of two libraries run milliseconds apart, so the
 * machine's slow drifts (other work on the 2 cores) hit both alike.
 *
 * One loop serves every library, so that its code and alignment are the
 * same for all: with "plt" it calls two stubs shaped like PLT entries
 * (`jmp *slot(%rip)`), whose slots hold the current library's pool_alloc
 * and pool_free, as the executable's GOT does after binding; with "noplt"
 * it calls through the slots directly (`call *slot(%rip)`, what gcc
 * -fno-plt emits). A prefix n: or p: sets the mode of one library (give a
 * copy of the file to run one build both ways: dlopen loads a path once).
 * A prefix m: names a malloc peer instead (tcmalloc_minimal: its tc_malloc
 * and tc_free, the functions its malloc and free are), run by twins of
 * the loops that call malloc(SIZE) and free(p) through the same stubs, as
 * bench.c's malloc variants do; m: combines with n: or p: after it.
 *
 * Prints per library: median ns/op, IQR as % of the median, and the median
 * and IQR over the rounds of the ratio of its batch to LIB 1's batch of the
 * same round. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bufpool.h"

#define MAXLIB 16
#define RING   256
#define WRITE  64

typedef struct pool_head *(*create_fn)(const char *, unsigned int, unsigned int);
typedef void *(*alloc_fn)(struct pool_head *);
typedef void (*free_fn)(struct pool_head *, void *);

/* The "GOT": the slots the stubs jump through. */
void *ab_got_alloc, *ab_got_free;

void *ab_plt_alloc(struct pool_head *);
void ab_plt_free(struct pool_head *, void *);
/* The same stubs under malloc's and free's prototypes. */
void *ab_plt_malloc(size_t);
void ab_plt_mfree(void *);
__asm__(".text\n"
        ".p2align 4\n"
        ".globl ab_plt_alloc\n"
        ".globl ab_plt_malloc\n"
        "ab_plt_alloc:\n"
        "ab_plt_malloc: jmp *ab_got_alloc(%rip)\n"
        ".p2align 4\n"
        ".globl ab_plt_free\n"
        ".globl ab_plt_mfree\n"
        "ab_plt_free:\n"
        "ab_plt_mfree: jmp *ab_got_free(%rip)\n");

#define KEEP(p) __asm__ volatile("" : : "r"(p) : "memory")

void ab_w1_plt(struct pool_head *pool, long n);
void ab_w1_noplt(struct pool_head *pool, long n);
void ab_w2_plt(struct pool_head *pool, void **ring, long from, long n);
void ab_w2_noplt(struct pool_head *pool, void **ring, long from, long n);

__attribute__((noinline, aligned(64))) void ab_w1_plt(struct pool_head *pool, long n)
{
    for (long i = 0; i < n; i++) {
        void *p = ab_plt_alloc(pool);
        KEEP(p);
        ab_plt_free(pool, p);
    }
}

__attribute__((noinline, aligned(64))) void ab_w1_noplt(struct pool_head *pool, long n)
{
    for (long i = 0; i < n; i++) {
        void *p = ((alloc_fn)ab_got_alloc)(pool);
        KEEP(p);
        ((free_fn)ab_got_free)(pool, p);
    }
}

__attribute__((noinline, aligned(64))) void ab_w2_plt(struct pool_head *pool, void **ring, long from, long n)
{
    for (long i = from; i < from + n; i++) {
        void **slot = &ring[i & (RING - 1)];
        ab_plt_free(pool, *slot);
        void *p = ab_plt_alloc(pool);
        memset(p, (int)i, WRITE);
        KEEP(p);
        *slot = p;
    }
}

__attribute__((noinline, aligned(64))) void ab_w2_noplt(struct pool_head *pool, void **ring, long from, long n)
{
    for (long i = from; i < from + n; i++) {
        void **slot = &ring[i & (RING - 1)];
        ((free_fn)ab_got_free)(pool, *slot);
        void *p = ((alloc_fn)ab_got_alloc)(pool);
        memset(p, (int)i, WRITE);
        KEEP(p);
        *slot = p;
    }
}

typedef void *(*malloc_fn)(size_t);
typedef void (*mfree_fn)(void *);

void ab_w1m_plt(size_t size, long n);
void ab_w1m_noplt(size_t size, long n);
void ab_w2m_plt(size_t size, void **ring, long from, long n);
void ab_w2m_noplt(size_t size, void **ring, long from, long n);

__attribute__((noinline, aligned(64))) void ab_w1m_plt(size_t size, long n)
{
    for (long i = 0; i < n; i++) {
        void *p = ab_plt_malloc(size);
        KEEP(p);
        ab_plt_mfree(p);
    }
}

__attribute__((noinline, aligned(64))) void ab_w1m_noplt(size_t size, long n)
{
    for (long i = 0; i < n; i++) {
        void *p = ((malloc_fn)ab_got_alloc)(size);
        KEEP(p);
        ((mfree_fn)ab_got_free)(p);
    }
}

__attribute__((noinline, aligned(64))) void ab_w2m_plt(size_t size, void **ring, long from, long n)
{
    for (long i = from; i < from + n; i++) {
        void **slot = &ring[i & (RING - 1)];
        ab_plt_mfree(*slot);
        void *p = ab_plt_malloc(size);
        memset(p, (int)i, WRITE);
        KEEP(p);
        *slot = p;
    }
}

__attribute__((noinline, aligned(64))) void ab_w2m_noplt(size_t size, void **ring, long from, long n)
{
    for (long i = from; i < from + n; i++) {
        void **slot = &ring[i & (RING - 1)];
        ((mfree_fn)ab_got_free)(*slot);
        void *p = ((malloc_fn)ab_got_alloc)(size);
        memset(p, (int)i, WRITE);
        KEEP(p);
        *slot = p;
    }
}

struct lib {
    int peer;
    size_t size;
    const char *path;
    alloc_fn alloc;
    free_fn free;
    struct pool_head *pool;
    void *ring[RING];
    long from;
    double *ns;
    int plt;
};

static double cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double quant(double *v, int n, double q)
{
    double x = q * (n - 1);
    int i = (int)x;
    return i + 1 < n ? v[i] + (x - i) * (v[i + 1] - v[i]) : v[n - 1];
}

static void run(struct lib *l, int w2, long ops)
{
    int plt = l->plt;
    ab_got_alloc = (void *)l->alloc;
    ab_got_free = (void *)l->free;
    if (l->peer) {
        if (w2) {
            (plt ? ab_w2m_plt : ab_w2m_noplt)(l->size, l->ring, l->from, ops);
            l->from += ops;
        } else {
            (plt ? ab_w1m_plt : ab_w1m_noplt)(l->size, ops);
        }
    } else if (w2) {
        (plt ? ab_w2_plt : ab_w2_noplt)(l->pool, l->ring, l->from, ops);
        l->from += ops;
    } else {
        (plt ? ab_w1_plt : ab_w1_noplt)(l->pool, ops);
    }
}

int main(int argc, char **argv)
{
    if (argc < 7 || argc - 6 > MAXLIB) {
        fprintf(stderr, "usage: abso w1|w2 SIZE OPS BATCHES plt|noplt LIB.so...\n");
        return 2;
    }
    int w2 = strcmp(argv[1], "w2") == 0;
    unsigned size = (unsigned)atoi(argv[2]);
    long ops = atol(argv[3]);
    int batches = atoi(argv[4]);
    int plt = strcmp(argv[5], "plt") == 0;
    int n = argc - 6;
    static struct lib libs[MAXLIB];
    for (int i = 0; i < n; i++) {
        struct lib *l = &libs[i];
        l->path = argv[6 + i];
        l->plt = plt;
        l->size = size;
        if (strncmp(l->path, "m:", 2) == 0) {
            l->peer = 1;
            l->path += 2;
        }
        if (strncmp(l->path, "n:", 2) == 0 || strncmp(l->path, "p:", 2) == 0) {
            l->plt = l->path[0] == 'p';
            l->path += 2;
        }
        void *h = dlopen(l->path, RTLD_NOW | RTLD_LOCAL);
        if (h == NULL) {
            fprintf(stderr, "abso: %s\n", dlerror());
            return 1;
        }
        if (l->peer) {
            malloc_fn m = (malloc_fn)dlsym(h, "tc_malloc");
            mfree_fn f = (mfree_fn)dlsym(h, "tc_free");
            if (m == NULL || f == NULL) {
                fprintf(stderr, "abso: %s: no tc_malloc/tc_free\n", l->path);
                return 1;
            }
            l->alloc = (alloc_fn)(void *)m;
            l->free = (free_fn)(void *)f;
            for (int j = 0; j < RING; j++)
                if ((l->ring[j] = m(size)) == NULL)
                    return 1;
            if (!w2)
                for (int j = 0; j < RING; j++)
                    f(l->ring[j]);
        } else {
            create_fn create = (create_fn)dlsym(h, "create_pool");
            l->alloc = (alloc_fn)dlsym(h, "pool_alloc");
            l->free = (free_fn)dlsym(h, "pool_free");
            if (create == NULL || l->alloc == NULL || l->free == NULL || (l->pool = create("ab", size, 0)) == NULL) {
                fprintf(stderr, "abso: %s: no pool\n", l->path);
                return 1;
            }
            for (int j = 0; j < RING; j++) {
                l->ring[j] = l->alloc(l->pool);
                if (l->ring[j] == NULL)
                    return 1;
            }
            if (!w2)
                for (int j = 0; j < RING; j++)
                    l->free(l->pool, l->ring[j]);
        }
        l->ns = calloc((size_t)batches, sizeof(double));
        run(l, w2, 20000);
    }
    for (int b = 0; b < batches; b++) {
        for (int k = 0; k < n; k++) {
            struct lib *l = &libs[(b + k) % n];
            run(l, w2, 2000);
            double t0 = cpu_ns();
            run(l, w2, ops);
            l->ns[b] = (cpu_ns() - t0) / (double)ops;
        }
    }
    double *r = calloc((size_t)batches, sizeof(double)), *s = calloc((size_t)batches, sizeof(double));
    for (int i = 0; i < n; i++) {
        for (int b = 0; b < batches; b++)
            r[b] = libs[i].ns[b] / libs[0].ns[b];
        memcpy(s, libs[i].ns, (size_t)batches * sizeof(double));
        qsort(s, (size_t)batches, sizeof(double), cmp);
        qsort(r, (size_t)batches, sizeof(double), cmp);
        double med = quant(s, batches, .5);
        printf("%s%s%-40s %7.3f ns  IQR %4.1f%%  x1 %6.3f  ratio IQR %5.3f\n", libs[i].peer ? "m:" : "", libs[i].plt ? "p:" : "n:", libs[i].path, med,
               100 * (quant(s, batches, .75) - quant(s, batches, .25)) / med, quant(r, batches, .5),
               quant(r, batches, .75) - quant(r, batches, .25));
    }
    return 0;
}
