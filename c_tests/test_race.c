/* The musl large-buffer race of the lock-free shared cache, short version for `make test` (see race.h).
 *
 * With the race window widened, a DWCAS pool must die of SIGSEGV in nearly
 * every run (it reads the link of an object another thread freed to the OS),
 * and the self-locked, locked and no-cache pools must survive every run,
 * with no object handed to two threads, none left in use, and objects
 * really going back to the OS during the run (otherwise the survival would
 * prove nothing).
 *
 * Environment (optional): RACE_RUNS (runs per algorithm, default 10),
 * RACE_THREADS (default 16), RACE_SECONDS (bound of a run, default 0.25;
 * four times that for DWCAS), RACE_WINDOW (debug option, default
 * "race-window=yield"), RACE_MINAVAIL (default 1), RACE_BURST (default 16),
 * RACE_ONLY (one algorithm's name), RACE_VERBOSE (one line a run). */
#include "race.h"
#include "harness.h"

static unsigned long env_num(const char *name, unsigned long def)
{
    const char *v = getenv(name);
    return v && *v ? strtoul(v, NULL, 10) : def;
}

int main(void)
{
    struct race_params prm = {
        .threads = (int)env_num("RACE_THREADS", 16),
        .max_ops = 1000000,
        .minavail = (unsigned)env_num("RACE_MINAVAIL", 1),
        .burst = (int)env_num("RACE_BURST", 16),
        .window = getenv("RACE_WINDOW") ? getenv("RACE_WINDOW") : "race-window=yield",
    };
    double bound = getenv("RACE_SECONDS") ? strtod(getenv("RACE_SECONDS"), NULL) : 0.25;
    int runs = (int)env_num("RACE_RUNS", 10);
    size_t a;
    int i;

    printf("test_race: %d threads, 2 MB objects, no thread cache, minavail %u, bursts of %d, %s, %s, "
           "%d runs each of at most %.2f s (dwcas %.2f s)\n",
           prm.threads, prm.minavail, prm.burst, race_libc(), prm.window, runs, bound, 32 * bound);
    for (a = 0; a < RACE_NALGOS; a++) {
        int segv = 0, clean = 0;
        unsigned long ops = 0, drops = 0;
        double t = 0, tmax = 0;
        char buf[64];

        if (getenv("RACE_ONLY") && strcmp(getenv("RACE_ONLY"), race_algos[a].name) != 0)
            continue;
        prm.flag = race_algos[a].flag;
        /* DWCAS runs end at the crash (about 50 ms in) or after max_ops
         * operations (counting); the much longer time bound only keeps a
         * loaded machine, where the threads get few time slices, from
         * ending a run before it had its operations. */
        prm.max_seconds = prm.flag == POOL_F_SHARED_DWCAS ? 32 * bound : bound;
        for (i = 0; i < runs; i++) {
            struct race_result r = { 0 };

            CHECK(race_run(&prm, &r) == 0);
            if (r.signaled && r.sig == SIGSEGV)
                segv++;
            else if (!r.signaled && r.code == 0)
                clean++;
            else
                fprintf(stderr, "test_race: %s run %d: %s\n", race_algos[a].name, i, race_ending(&r, buf, sizeof(buf)));
            if (getenv("RACE_VERBOSE"))
                printf("    %s run %d: %s after %.1f ms, %lu ops\n", race_algos[a].name, i,
                       race_ending(&r, buf, sizeof(buf)), 1e3 * r.seconds, r.ops);
            ops += r.ops;
            drops += r.drops;
            t += r.seconds;
            if (r.seconds > tmax)
                tmax = r.seconds;
        }
        printf("  %-6s SIGSEGV in %2d/%d runs, clean in %2d/%d, %.1f ms/run on average (max %.1f), "
               "%lu ops, %lu frees saw objects go to the OS\n",
               race_algos[a].name, segv, runs, clean, runs, 1e3 * t / runs, 1e3 * tmax, ops, drops);
        if (prm.flag == POOL_F_SHARED_DWCAS) {
            /* Nearly every run: allow one survivor in ten. */
            CHECK(segv * 10 >= runs * 9);
        } else {
            CHECK_EQ(clean, runs);
            /* The survivors faced the same danger: objects went to the OS. */
            CHECK(drops > 0);
            CHECK(ops > 0);
        }
    }
    DONE("test_race");
}
