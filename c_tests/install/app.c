/* A C program as a user of the installed library writes it (built by
 * tools/test-install.sh through pkg-config, shared and static): it checks
 * at start-up that the library it runs with is the version of the header
 * it was compiled with, then uses a pool. Exit 2 on a version mismatch. */
#include <bufpool.h>

#include <stdio.h>
#include <string.h>

int main(void)
{
    const char *lib = bufpool_version();
    int major = -1, minor = -1, patch = -1;
    struct pool_head *p;
    void *o;

    if (strcmp(lib, BUFPOOL_VERSION) != 0) {
        fprintf(stderr, "app: version mismatch: header %s, library %s\n", BUFPOOL_VERSION, lib);
        return 2;
    }
    if (sscanf(lib, "%d.%d.%d", &major, &minor, &patch) != 3 || major != BUFPOOL_VERSION_MAJOR ||
        minor != BUFPOOL_VERSION_MINOR || patch != BUFPOOL_VERSION_PATCH) {
        fprintf(stderr, "app: BUFPOOL_VERSION_* macros disagree with %s\n", lib);
        return 2;
    }
    p = create_pool("app", 256, 0);
    o = pool_zalloc(p);
    if (!p || !o || pool_used(p) != 1)
        return 1;
    pool_free(p, o);
    printf("app: header %s, library %s: they agree; %lu object allocated\n", BUFPOOL_VERSION, lib,
           pool_allocated(p));
    return pool_destroy(p) == NULL ? 0 : 1;
}
