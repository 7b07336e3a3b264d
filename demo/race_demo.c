/* `make demo`, part 1: the musl large-buffer race of the old lock-free
 * shared cache (which HAProxy fixed with the self-locked head), from C.
 *
 * For each shared-cache algorithm, runs the race of c_tests/race.h in child
 * processes (16 threads, 2 MB objects, thread cache off, pool crowded, an
 * allocator that unmaps 2 MB blocks on free, race window widened with
 * sched_yield()) and prints how the runs ended: the signal, the time to the
 * crash, the operations served. Then one DWCAS run with the window left
 * closed, to show that the bug is there but rare without help.
 *
 * Usage: race_demo [runs [seconds]]  (default 5 runs of at most 1 s).
 * With BUFPOOL_DEMO_SUMMARY=FILE it also appends its figures to FILE, one
 * line per algorithm, for demo/verdict.sh. */
#include "race.h"

#if defined(__GLIBC__)
#define DEMO_LIBC "glibc"
#else
#define DEMO_LIBC "musl"
#endif

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int cmp_ulong(const void *a, const void *b)
{
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    return (x > y) - (x < y);
}

#define MAX_RUNS 64

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 5;
    double bound = argc > 2 ? strtod(argv[2], NULL) : 1.0;
    struct race_params prm = {
        .threads = 16, .max_ops = ~0UL, .max_seconds = bound,
        .window = "race-window=yield", .minavail = 1, .burst = 16,
    };
    struct race_result r;
    size_t a;
    int i, bad = 0;
    char buf[64];
    const char *sum_path = getenv("BUFPOOL_DEMO_SUMMARY");
    FILE *sum = sum_path ? fopen(sum_path, "a") : NULL;

    if (runs < 1 || runs > MAX_RUNS)
        runs = 5;
    printf("== The race (%s): %d threads alloc/touch/free 2 MB objects, thread cache off,\n"
           "   minavail %u, bursts of %d objects, window widened (%s); %d runs per algorithm, at most %.1f s each\n",
           race_libc(), prm.threads, prm.minavail, prm.burst, prm.window, runs, bound);
    for (a = 0; a < RACE_NALGOS; a++) {
        double t[MAX_RUNS], tcrash[MAX_RUNS];
        unsigned long ops[MAX_RUNS], drops = 0;
        int segv = 0, clean = 0, other = 0;

        prm.flag = race_algos[a].flag;
        for (i = 0; i < runs; i++) {
            if (race_run(&prm, &r) != 0) {
                perror("fork");
                return 1;
            }
            t[i] = r.seconds * 1e3;
            ops[i] = r.ops;
            drops += r.drops;
            if (r.signaled && r.sig == SIGSEGV)
                tcrash[segv++] = t[i];
            else if (!r.signaled && r.code == 0)
                clean++;
            else {
                other++;
                printf("   %s run %d: %s\n", race_algos[a].name, i, race_ending(&r, buf, sizeof(buf)));
            }
        }
        qsort(t, (size_t)runs, sizeof(t[0]), cmp_double);
        qsort(ops, (size_t)runs, sizeof(ops[0]), cmp_ulong);
        if (segv)
            printf("  %-6s killed by SIGSEGV in %d/%d runs, after %.1f ms median (%.1f..%.1f), "
                   "%lu ops served median\n",
                   race_algos[a].name, segv, runs, t[runs / 2], t[0], t[runs - 1], ops[runs / 2]);
        if (clean)
            printf("  %-6s survived %d/%d runs (%.2f s each), %lu ops served median, "
                   "%lu frees saw objects go back to the OS\n",
                   race_algos[a].name, clean, runs, t[runs / 2] / 1e3, ops[runs / 2], drops);
        /* The expected outcome, said plainly. */
        if (prm.flag == POOL_F_SHARED_DWCAS ? segv == 0 : clean != runs) {
            printf("  %-6s UNEXPECTED outcome\n", race_algos[a].name);
            bad = 1;
        }
        (void)other;
        if (sum) {
            qsort(tcrash, (size_t)segv, sizeof(tcrash[0]), cmp_double);
            /* race LIBC ALGO RUNS SEGV CLEAN OTHER CRASH_MS_MEDIAN CRASH_MS_MIN CRASH_MS_MAX OPS_MEDIAN */
            fprintf(sum, "race %s %s %d %d %d %d %.1f %.1f %.1f %lu\n", DEMO_LIBC, race_algos[a].name, runs, segv,
                    clean, other, segv ? tcrash[segv / 2] : -1.0, segv ? tcrash[0] : -1.0,
                    segv ? tcrash[segv - 1] : -1.0, ops[runs / 2]);
        }
    }

    prm.flag = POOL_F_SHARED_DWCAS;
    prm.window = NULL;
    prm.max_seconds = 3 * bound;
    if (race_run(&prm, &r) == 0) {
        printf("  dwcas without the widened window: %s after %.2f s, %lu ops served\n",
               r.signaled ? race_ending(&r, buf, sizeof(buf)) : "survived", r.seconds, r.ops);
        if (sum) /* nowindow LIBC SIGNAL(0: survived) SECONDS OPS */
            fprintf(sum, "nowindow %s %d %.2f %lu\n", DEMO_LIBC, r.signaled ? r.sig : 0, r.seconds, r.ops);
    }
    if (sum)
        fclose(sum);
    return bad;
}
