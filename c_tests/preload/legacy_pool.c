/* A stand-in for an old pool library that bufpool replaces with LD_PRELOAD
 * (tools/test-preload.sh): the pool functions of bufpool.h, same names and
 * signatures, written plainly on malloc. Freed objects go on a per-pool
 * free list and come back first, as in any pool; nothing is checked, so an
 * object freed twice is handed out twice. It also exports one function
 * bufpool lacks, pool_get_first(), the case where LD_PRELOAD would mix two
 * implementations. Built as liblegacypool.so, or compiled into a program. */
#include "bufpool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct pool_head {
    char name[32];
    size_t size;
    unsigned long allocated, used, failed, limit;
    void *free_list; /* idle objects, linked through their first word */
    struct pool_head *next;
};

static struct pool_head *pools;

void *pool_get_first(struct pool_head *pool);

struct pool_head *create_pool(const char *name, unsigned int size, unsigned int flags)
{
    struct pool_head *p;
    (void)flags;
    if (size == 0)
        return NULL;
    p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    snprintf(p->name, sizeof(p->name), "%s", name ? name : "");
    p->size = size < sizeof(void *) ? sizeof(void *) : size;
    p->next = pools;
    pools = p;
    return p;
}

struct pool_head *create_aligned_pool(const char *name, unsigned int size, unsigned int align, unsigned int flags)
{
    (void)align;
    return create_pool(name, size, flags);
}

void *pool_get_first(struct pool_head *pool)
{
    void *o = pool->free_list;
    if (o) {
        pool->free_list = *(void **)o;
        pool->used++;
    }
    return o;
}

void *pool_alloc(struct pool_head *pool)
{
    void *o;
    if (!pool)
        return NULL;
    o = pool_get_first(pool);
    if (o)
        return o;
    if (pool->limit && pool->allocated >= pool->limit) {
        pool->failed++;
        return NULL;
    }
    o = malloc(pool->size);
    if (!o) {
        pool->failed++;
        return NULL;
    }
    pool->allocated++;
    pool->used++;
    return o;
}

void *pool_zalloc(struct pool_head *pool)
{
    void *o = pool_alloc(pool);
    if (o)
        memset(o, 0, pool->size);
    return o;
}

void *pool_alloc_nocache(struct pool_head *pool) { return pool_alloc(pool); }

void pool_free(struct pool_head *pool, void *ptr)
{
    if (!pool || !ptr)
        return;
    *(void **)ptr = pool->free_list;
    pool->free_list = ptr;
    pool->used--;
}

void pool_free_nocache(struct pool_head *pool, void *ptr) { pool_free(pool, ptr); }

void pool_flush(struct pool_head *pool)
{
    void *o;
    if (!pool)
        return;
    while ((o = pool->free_list) != NULL) {
        pool->free_list = *(void **)o;
        free(o);
        pool->allocated--;
    }
}

void pool_gc(struct pool_head *pool_ctx)
{
    struct pool_head *p;
    (void)pool_ctx;
    for (p = pools; p; p = p->next)
        pool_flush(p);
}

void *pool_destroy(struct pool_head *pool)
{
    struct pool_head **pp;
    if (!pool)
        return NULL;
    if (pool->used)
        return pool;
    pool_flush(pool);
    for (pp = &pools; *pp; pp = &(*pp)->next) {
        if (*pp == pool) {
            *pp = pool->next;
            free(pool);
            break;
        }
    }
    return NULL;
}

void pool_destroy_all(void)
{
    struct pool_head *p = pools, *next;
    for (; p; p = next) {
        next = p->next;
        pool_destroy(p);
    }
}

void pool_set_limit(struct pool_head *pool, unsigned int max_objects)
{
    if (pool)
        pool->limit = max_objects;
}

void pool_set_minavail(struct pool_head *pool, unsigned int min_idle) { (void)pool; (void)min_idle; }
void pool_set_cache_size(size_t bytes) { (void)bytes; }
unsigned long pool_allocated(const struct pool_head *pool) { return pool ? pool->allocated : 0; }
unsigned long pool_used(const struct pool_head *pool) { return pool ? pool->used : 0; }
unsigned long pool_needed_avg(const struct pool_head *pool) { return pool ? pool->used : 0; }
unsigned long pool_failed(const struct pool_head *pool) { return pool ? pool->failed : 0; }

unsigned long long pool_total_allocated(void)
{
    unsigned long long n = 0;
    struct pool_head *p;
    for (p = pools; p; p = p->next)
        n += p->allocated * p->size;
    return n;
}

unsigned long long pool_total_used(void)
{
    unsigned long long n = 0;
    struct pool_head *p;
    for (p = pools; p; p = p->next)
        n += p->used * p->size;
    return n;
}

void dump_pools_to_fd(int fd)
{
    char line[128];
    struct pool_head *p;
    int n;
    n = snprintf(line, sizeof(line), "legacy pools:\n");
    if (write(fd, line, (size_t)n) != n)
        return;
    for (p = pools; p; p = p->next) {
        n = snprintf(line, sizeof(line), "  %s: %zu bytes, %lu allocated, %lu used\n", p->name, p->size,
                     p->allocated, p->used);
        if (write(fd, line, (size_t)n) != n)
            return;
    }
}

int pool_set_debugging(const char *opts) { return opts ? 0 : -1; }
