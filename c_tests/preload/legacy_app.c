/* A program written against the old pool library (legacy_pool.c) and
 * linked with it: tools/test-preload.sh runs it as is, then with
 * LD_PRELOAD=libbufpool.so, then with BUFPOOL_DEBUG=tag and the
 * "double-free" argument, whose bug the old library does not see.
 * With -DCALLS_GET_FIRST it also calls pool_get_first(), a function of the
 * old library that bufpool lacks (a program that must not be preloaded). */
#include "bufpool.h"

#include <stdio.h>
#include <string.h>

struct session {
    int fd;
    char peer[60];
};

#ifdef CALLS_GET_FIRST
void *pool_get_first(struct pool_head *pool);
#endif

int main(int argc, char **argv)
{
    struct pool_head *sessions = create_pool("session", sizeof(struct session), MEM_F_SHARED);
    struct session *s[64];
    int i, bad = 0;

    if (!sessions)
        return 1;
    for (i = 0; i < 64; i++) {
        s[i] = pool_zalloc(sessions);
        if (!s[i])
            return 1;
        s[i]->fd = i;
        snprintf(s[i]->peer, sizeof(s[i]->peer), "192.0.2.%d:443", i);
    }
    for (i = 0; i < 64; i++) {
        if (s[i]->fd != i)
            bad = 1;
        pool_free(sessions, s[i]);
    }
#ifdef CALLS_GET_FIRST
    if (argc > 2)
        pool_free(sessions, pool_get_first(sessions));
#endif
    if (argc > 1 && strcmp(argv[1], "double-free") == 0) {
        struct session *a = pool_alloc(sessions), *x, *y;
        pool_free(sessions, a);
        pool_free(sessions, a); /* the bug */
        x = pool_alloc(sessions);
        y = pool_alloc(sessions);
        if (x == y)
            printf("double free not caught: two callers got the same session %p\n", (void *)x);
    }
    s[0] = pool_alloc(sessions); /* one held, for the dump */
    dump_pools_to_fd(1);
    pool_free(sessions, s[0]);
    return bad;
}
