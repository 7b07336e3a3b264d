/* Every kind of pool (plain, aligned, exact, shared-cache none, no thread
 * cache, merged, and each object debug mode) used by several threads, then
 * pool_destroy_all(): afterwards no byte is left allocated. make
 * test-sanitize runs this under valgrind memcheck, which must report no
 * definite or indirect leak. Ends with pool_destroy_all, as a process should. */
#include "bufpool.h"
#include "harness.h"

#include <pthread.h>
#include <string.h>

#define THREADS 4
#define ROUNDS 200
#define HELD 16

struct kind {
    const char *debug; /* modes on when the pool is created, or NULL */
    const char *name;
    unsigned size, align, flags;
};

static const struct kind KINDS[] = {
    {NULL, "plain", 64, 0, 0},
    {NULL, "aligned", 200, 256, 0},
    {NULL, "exact", 13, 0, MEM_F_EXACT},
    {NULL, "none", 128, 0, POOL_F_SHARED_NONE},
    {NULL, "nolocal", 96, 0, POOL_F_NO_LOCAL_CACHE},
    {NULL, "merged", 64, 0, MEM_F_SHARED},
    {NULL, "merged2", 60, 0, MEM_F_SHARED},
    {"tag,caller", "tag", 48, 0, 0},
    {"integrity", "integrity", 100, 0, MEM_F_EXACT},
    {"poison=0x33,cold-first", "cold", 32, 0, 0},
    {"uaf", "uaf", 5000, 0, 0},
    {"tag,integrity,uaf,caller", "all", 24, 64, 0},
};
#define NKINDS ((int)(sizeof(KINDS) / sizeof(KINDS[0])))

static struct pool_head *pools[NKINDS];

static void *worker(void *arg)
{
    unsigned seed = (unsigned)(size_t)arg;
    void *held[NKINDS][HELD];
    int r, k, i;
    memset(held, 0, sizeof(held));
    for (r = 0; r < ROUNDS; r++) {
        for (k = 0; k < NKINDS; k++) {
            seed = seed * 1103515245u + 12345u;
            i = (int)((seed >> 16) % HELD);
            if (held[k][i]) {
                pool_free(pools[k], held[k][i]);
                held[k][i] = NULL;
            } else {
                held[k][i] = (seed >> 8) & 1 ? pool_alloc(pools[k]) : pool_zalloc(pools[k]);
                if (held[k][i])
                    memset(held[k][i], 0x5a, KINDS[k].size);
            }
        }
        if (r % 50 == 0)
            pool_gc(NULL);
    }
    for (k = 0; k < NKINDS; k++)
        for (i = 0; i < HELD; i++)
            pool_free(pools[k], held[k][i]);
    return NULL;
}

int main(void)
{
    pthread_t t[THREADS];
    int k;
    for (k = 0; k < NKINDS; k++) {
        CHECK(pool_set_debugging(KINDS[k].debug ? KINDS[k].debug : "") == 0);
        pools[k] = create_aligned_pool(KINDS[k].name, KINDS[k].size, KINDS[k].align, KINDS[k].flags);
        CHECK(pools[k] != NULL);
        CHECK(pool_set_debugging("no-tag,no-integrity,no-poison,hot-first,no-uaf,no-caller") == 0);
    }
    CHECK(pools[5] == pools[6]); /* 60 rounds up to 64: merged */
    for (k = 0; k < THREADS; k++)
        CHECK(pthread_create(&t[k], NULL, worker, (void *)(size_t)(k + 1)) == 0);
    for (k = 0; k < THREADS; k++)
        pthread_join(t[k], NULL);
    for (k = 0; k < NKINDS; k++)
        CHECK_EQ(pool_used(pools[k]), 0);
    CHECK(pool_total_allocated() > 0);
    pool_destroy_all();
    CHECK_EQ(pool_total_allocated(), 0);
    CHECK_EQ(pool_total_used(), 0);
    DONE("test_debug_leaks");
}
