/* A program that is not linked against bufpool and loads it with dlopen()
 * after start, as a plugin host does: the library's one thread-local word
 * is initial-exec TLS, which glibc serves from the static TLS block's
 * spare room for libraries loaded later. The program makes pools and uses
 * them from the main thread and from threads started before and after the
 * load (their caches are made then), checks the counts, and unloads it.
 *
 * Usage: app PATH-TO-libbufpool.so. Exit 0 and one line when all is well. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "bufpool.h"

/* The functions used, looked up by name: their types are the header's. */
static struct pool_head *(*p_create)(const char *, unsigned int, unsigned int);
static void *(*p_alloc)(struct pool_head *);
static void (*p_free)(struct pool_head *, void *);
static unsigned long (*p_used)(const struct pool_head *);
static unsigned long (*p_allocated)(const struct pool_head *);
static void *(*p_destroy)(struct pool_head *);

static struct pool_head *pool;
static pthread_barrier_t loaded;

static int churn(void)
{
    void *o[64];
    for (int r = 0; r < 1000; r++) {
        for (int i = 0; i < 64; i++) {
            o[i] = p_alloc(pool);
            if (!o[i])
                return 1;
            memset(o[i], r & 0xff, 128);
        }
        for (int i = 0; i < 64; i++)
            p_free(pool, o[i]);
    }
    return 0;
}

/* Started before the library is loaded; uses it once it is. */
static void *early(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&loaded);
    return (void *)(long)churn();
}

static void *late(void *arg)
{
    (void)arg;
    return (void *)(long)churn();
}

#define LOOK(var, name)                                                       \
    do {                                                                      \
        *(void **)&(var) = dlsym(lib, name);                                  \
        if (!(var)) {                                                         \
            fprintf(stderr, "dlopen app: %s missing: %s\n", name, dlerror()); \
            return 1;                                                         \
        }                                                                     \
    } while (0)

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PATH-TO-libbufpool.so\n", argv[0]);
        return 2;
    }
    pthread_t e, l;
    pthread_barrier_init(&loaded, NULL, 2);
    if (pthread_create(&e, NULL, early, NULL) != 0)
        return 2;
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen app: %s\n", dlerror());
        return 1;
    }
    LOOK(p_create, "create_pool");
    LOOK(p_alloc, "pool_alloc");
    LOOK(p_free, "pool_free");
    LOOK(p_used, "pool_used");
    LOOK(p_allocated, "pool_allocated");
    LOOK(p_destroy, "pool_destroy");
    pool = p_create("plugin", 128, 0);
    if (!pool)
        return 1;
    pthread_barrier_wait(&loaded);
    if (pthread_create(&l, NULL, late, NULL) != 0)
        return 2;
    int bad = churn();
    void *re, *rl;
    pthread_join(e, &re);
    pthread_join(l, &rl);
    bad |= re != NULL || rl != NULL;
    unsigned long used = p_used(pool), alloc = p_allocated(pool);
    bad |= used != 0 || alloc == 0;
    bad |= p_destroy(pool) != NULL;
    dlclose(lib); /* linked -z nodelete: stays mapped, which is fine */
    printf("dlopen after start: 3 threads x 64000 alloc/free pairs, used %lu, allocated %lu before destroy: %s\n", used,
           alloc, bad ? "FAILED" : "ok");
    return bad;
}
