/* spike.c: does memory go back to the OS after a spike? `make bench`'s
 * spike table (bench/memory.sh runs it).
 *
 * One source, one binary per variant (bench/bench.mk):
 *   spike-bufpool   -DSPIKE_BUFPOOL, against libbufpool.so: mode "pool"
 *                   (create_pool("spike", 16384, 0), pool_alloc/pool_free)
 *                   or "dynbuf" (dynbuf_init(16384, 2, 0), b_alloc/b_free)
 *   spike-glibc     malloc/free, nothing more linked
 *   spike-jemalloc  malloc/free, linked with -ljemalloc (its malloc serves
 *   spike-mimalloc  the whole process), or -lmimalloc
 *
 *   spike-VARIANT info                          where malloc comes from
 *   spike-VARIANT MODE THREADS PERIOD SPIKE_MB  one run (MODE: pool, dynbuf
 *                   or malloc; THREADS: 1 or 4; PERIOD: the bufpool release
 *                   period in ms, or "default" for no pool_set_release_period
 *                   call; SPIKE_MB: the spike, 1024 in `make bench`)
 *
 * One run, each in a fresh process (the caller starts one per row):
 *  1. THREADS workers (the main thread is worker 0) each make 20 light
 *     operations, 1 ms apart, so that their caches exist; then the idle
 *     RSS is read. It includes the run's slot table (a struct buffer per
 *     object of the spike, 2 MiB for 1 GiB), mapped and touched before.
 *  2. The spike: SPIKE_MB of 16 KiB objects, a quarter per worker with 4,
 *     every byte written; the peak RSS is read.
 *  3. The release: with 1 worker, all objects at once (freed in the order
 *     they were allocated); with 4, each worker frees its quarter in 200
 *     equal batches 10 ms apart, so that the release is spread over 2 s.
 *     The release ends when the last worker has freed its last object.
 *  4. Light traffic, from the moment a worker has released everything:
 *     each worker allocates one 16 KiB object, writes 64 bytes into it and
 *     frees it, once per ms (absolute deadlines). Nothing else is called:
 *     no pool_maintain, no maintenance thread, no trim.
 *  5. A monitor thread, which allocates nothing (open/read into a stack
 *     buffer), reads the RSS from the end of the release: the Rss line of
 *     /proc/self/smaps_rollup at 0.1 s, 1 s and 5 s; every 10 ms the
 *     kernel's counter of resident pages (/proc/self/statm, cheap), and
 *     when that is at or below idle * 1.1 + 2 MiB, smaps_rollup again to
 *     confirm: the first time it is, or "never" within 5 s. (smaps_rollup
 *     every 10 ms would slow the release it watches: see rss_kib.)
 *  6. The explicit call, made by worker 0 while traffic goes on: bufpool
 *     pool_gc(NULL); glibc malloc_trim(0); jemalloc mallctl's
 *     "arena.<MALLCTL_ARENAS_ALL>.purge" (4096; for an older jemalloc,
 *     "arena.<narenas>.purge"); mimalloc mi_collect(true), which collects
 *     the calling thread's heap only, so every worker calls it. RSS is read
 *     once they have returned.
 *
 * SPIKE_TRACE=1 in the environment prints each reading on stderr (for
 * bufpool with the pool's allocated and released counts).
 *
 * The peers' functions are looked up with dlsym(RTLD_DEFAULT, ...) at run
 * time: no peer header, no link-time coupling beyond the peer's malloc.
 *
 * Output, one line:
 *   idle_kib=I peak_kib=P release_ms=R rss01_kib=A rss1_kib=B rss5_kib=C
 *   call_kib=D call_ms=E within_ms=W slowest_us=S traffic_hz=H allocated=N
 *   released=M purge=WHAT
 * W: -1 for never; S: the slowest alloc + write + free of the traffic, in
 * thread CPU time (system calls included, preemption not), all workers;
 * H: light operations per second per worker during the 5 s watched (1000
 * when the traffic kept its pace; a thread stalled in a call makes fewer);
 * N, M: pool_allocated and pool_released of the pool just before the
 * explicit call (-1 for the malloc variants). */

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bufpool.h"

#define OBJ        16384
#define WARM       20       /* light operations per worker before the idle RSS */
#define MAXTHREADS 4
#define SPREAD_MS  2000     /* 4 workers: the release is spread over this */
#define STEPS      200      /* ... in this many batches */
#define POLL_MS    10       /* the monitor's reading interval */
#define WATCH_MS   5000     /* how long the monitor watches before the explicit call */
#define SLACK_KIB  2048     /* "within 10% of idle + 2 MiB" */

static void die(const char *what)
{
    fprintf(stderr, "spike: %s\n", what);
    exit(1);
}

/* ---- clocks, sleeps, RSS (nothing here allocates) ----------------------- */
static double ms_of(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}
static double now_ms(void) { return ms_of(CLOCK_MONOTONIC); }
static double cpu_ms(void) { return ms_of(CLOCK_THREAD_CPUTIME_ID); }

/* Sleeps until `at` (ms of CLOCK_MONOTONIC). */
static void sleep_until(double at)
{
    struct timespec ts = { (time_t)(at / 1e3), (long)((at - (double)(time_t)(at / 1e3) * 1e3) * 1e6) };
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* Reads a small /proc file into `buf` (NUL-terminated); 0 on failure. */
static int read_proc(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n, got = 0;
    while (got < (ssize_t)size - 1 && (n = read(fd, buf + got, size - 1 - (size_t)got)) > 0)
        got += n;
    close(fd);
    buf[got > 0 ? got : 0] = '\0';
    return got > 0;
}

/* Resident memory of this process, KiB: the Rss line of smaps_rollup, the
 * figure the table shows. The kernel walks every page table to make it
 * (about 10 ms with 1 GiB of 4 KiB pages here) holding the process's
 * mmap lock, which the allocator's munmap waits for: read every 10 ms,
 * it would slow the very release it watches. */
static long rss_kib(void)
{
    char buf[4096];
    if (!read_proc("/proc/self/smaps_rollup", buf, sizeof(buf)))
        return -1;
    char *rss = strstr(buf, "\nRss:");
    return rss ? strtol(rss + 5, NULL, 10) : -1;
}

/* The kernel's counter of resident pages (statm), KiB: cheap, no page
 * table walk. Polled every 10 ms for "within"; smaps_rollup confirms. */
static long statm_kib(void)
{
    char buf[256];
    long size, resident;
    if (!read_proc("/proc/self/statm", buf, sizeof(buf)) || sscanf(buf, "%ld %ld", &size, &resident) != 2)
        return -1;
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* ---- the allocator under test -------------------------------------------- */
enum mode { M_POOL, M_DYNBUF, M_MALLOC };
static enum mode mode;

#ifdef SPIKE_BUFPOOL
#define VARIANT "bufpool"
static struct pool_head *pool;
static int get(struct buffer *b)
{
    if (mode == M_DYNBUF)
        return b_alloc(b) != NULL;
    b->area = pool_alloc(pool);
    b->size = b->area ? OBJ : 0;
    return b->area != NULL;
}
static void put(struct buffer *b)
{
    if (mode == M_DYNBUF) {
        b_free(b);
        return;
    }
    pool_free(pool, b->area);
    *b = BUF_NULL;
}
static const char *purge(int first) { if (first) pool_gc(NULL); return "pool_gc"; }
static int purge_every_thread(void) { return 0; }
#else
static int get(struct buffer *b)
{
    b->area = malloc(OBJ);
    b->size = b->area ? OBJ : 0;
    return b->area != NULL;
}
static void put(struct buffer *b)
{
    free(b->area);
    *b = BUF_NULL;
}

#if defined(SPIKE_JEMALLOC)
#define VARIANT "jemalloc"
/* jemalloc's int mallctl(const char *name, void *oldp, size_t *oldlenp,
 * void *newp, size_t newlen), looked up at run time. */
typedef int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t);
static const char *purge(int first)
{
    static char what[64];
    if (!first)
        return what;
    mallctl_fn ctl = (mallctl_fn)dlsym(RTLD_DEFAULT, "mallctl");
    if (!ctl)
        return "none(no-mallctl)";
    /* MALLCTL_ARENAS_ALL is 4096 in jemalloc 4.5 and later (jemalloc.h). */
    if (ctl("arena.4096.purge", NULL, NULL, NULL, 0) == 0)
        return strcpy(what, "arena.4096.purge");
    /* Older: the index narenas names all arenas. */
    unsigned narenas = 0;
    size_t len = sizeof(narenas);
    if (ctl("arenas.narenas", &narenas, &len, NULL, 0) == 0) {
        snprintf(what, sizeof(what), "arena.%u.purge", narenas);
        if (ctl(what, NULL, NULL, NULL, 0) == 0)
            return what;
    }
    return strcpy(what, "none(purge-failed)");
}
static int purge_every_thread(void) { return 0; }
#elif defined(SPIKE_MIMALLOC)
#define VARIANT "mimalloc"
/* mimalloc's void mi_collect(bool force), looked up at run time. It
 * collects the calling thread's heap: every worker calls it. */
typedef void (*mi_collect_fn)(_Bool);
static const char *purge(int first)
{
    (void)first;
    mi_collect_fn collect = (mi_collect_fn)dlsym(RTLD_DEFAULT, "mi_collect");
    if (!collect)
        return "none(no-mi_collect)";
    collect(1);
    return "mi_collect(true)";
}
static int purge_every_thread(void) { return 1; }
#else
#define VARIANT "glibc"
/* glibc's int malloc_trim(size_t pad) (malloc.h), looked up at run time. */
typedef int (*malloc_trim_fn)(size_t);
static const char *purge(int first)
{
    if (!first)
        return "malloc_trim(0)";
    malloc_trim_fn trim = (malloc_trim_fn)dlsym(RTLD_DEFAULT, "malloc_trim");
    if (!trim)
        return "none(no-malloc_trim)";
    trim(0);
    return "malloc_trim(0)";
}
static int purge_every_thread(void) { return 0; }
#endif
#endif

/* ---- the run ------------------------------------------------------------- */
static int nthreads;
static long nobj;                    /* objects of the spike, all workers */
static struct buffer *slots;         /* nobj slots, mapped and touched before the idle RSS */
static pthread_barrier_t phase;      /* workers + monitor */

static atomic_int released_workers; /* workers done with their release */
static _Atomic double release_end;   /* ms, the last worker's */
static _Atomic double release_start;
static atomic_int collect;           /* the monitor asks for the explicit call */
static atomic_int collected;         /* workers that have made it */
static atomic_int stop;
static double call_ms;               /* worker 0's explicit call, wall ms */
static const char *purge_name = "";
static _Atomic double slowest_ms;    /* the slowest traffic operation, thread CPU */
static atomic_long light_ops;        /* traffic operations so far (SPIKE_TRACE) */
static _Atomic double light_cpu_ms;  /* their thread CPU time */
static long idle_kib, peak_kib, rss01, rss1, rss5, call_kib;
static double within_ms = -1;
static double traffic_hz;            /* light operations per s per worker while watched */
static long allocated_before = -1, released_before = -1;

static void light_op(void)
{
    struct buffer b = BUF_NULL;
    double c = cpu_ms();
    if (!get(&b))
        die("light allocation failed");
    memset(b.area, 0x11, 64);
    __asm__ volatile("" : : "r"(b.area) : "memory");
    put(&b);
    double d = cpu_ms() - c, s = atomic_load(&slowest_ms), t = atomic_load(&light_cpu_ms);
    atomic_fetch_add(&light_ops, 1);
    while (!atomic_compare_exchange_weak(&light_cpu_ms, &t, t + d))
        ;
    while (d > s && !atomic_compare_exchange_weak(&slowest_ms, &s, d))
        ;
}

static void *worker(void *arg)
{
    int id = (int)(long)arg;
    long per = nobj / nthreads, first = id * per, last = id == nthreads - 1 ? nobj : first + per;
    double next = now_ms();

    for (int i = 0; i < WARM; i++) {
        light_op();
        next += 1;
        sleep_until(next);
    }
    pthread_barrier_wait(&phase);    /* 1: the monitor reads the idle RSS */
    pthread_barrier_wait(&phase);    /* 2: the spike */
    for (long i = first; i < last; i++) {
        if (!get(&slots[i]))
            die("spike allocation failed");
        memset(slots[i].area, (int)i, OBJ);
    }
    pthread_barrier_wait(&phase);    /* 3: the monitor reads the peak RSS */
    pthread_barrier_wait(&phase);    /* 4: the release */
    if (id == 0)
        atomic_store(&release_start, now_ms());
    if (nthreads == 1) {
        for (long i = first; i < last; i++)
            put(&slots[i]);
    } else {
        double t0 = now_ms();
        long n = last - first;
        for (long s = 1; s <= STEPS; s++) {
            sleep_until(t0 + (double)s * SPREAD_MS / STEPS);
            for (long i = first + n * (s - 1) / STEPS; i < first + n * s / STEPS; i++)
                put(&slots[i]);
        }
    }
    /* The last worker done sets the end of the release. */
    double end = now_ms(), e = atomic_load(&release_end);
    while (end > e && !atomic_compare_exchange_weak(&release_end, &e, end))
        ;
    atomic_fetch_add(&released_workers, 1);
    /* Light traffic until told to stop; the explicit call when asked. */
    int called = 0;
    next = end;
    while (!atomic_load(&stop)) {
        next += 1;
        sleep_until(next);
        if (now_ms() > next + 50)
            next = now_ms();         /* descheduled for long: no burst to catch up */
        light_op();
        if (!called && atomic_load(&collect)) {
            called = 1;
            if (id == 0 || purge_every_thread()) {
                double t = now_ms();
                const char *what = purge(id == 0);
                if (id == 0) {
                    call_ms = now_ms() - t;
                    purge_name = what;
                }
            }
            atomic_fetch_add(&collected, 1);
        }
    }
    return NULL;
}

/* SPIKE_TRACE: each reading on stderr (bufpool: with the pool's counters). */
static void trace_line(int ms, long kib, double read_ms)
{
    fprintf(stderr, "spike: read %.2f ms; ", read_ms);
#ifdef SPIKE_BUFPOOL
    struct pool_head *p = mode == M_DYNBUF ? pool_head_buffer : pool;
    fprintf(stderr, "spike: %5d ms %8ld KiB, light ops %ld (%.1f ms CPU), allocated %lu released %lu\n", ms, kib,
            atomic_load(&light_ops), atomic_load(&light_cpu_ms), pool_allocated(p), pool_released(p));
#else
    fprintf(stderr, "spike: %5d ms %8ld KiB, light ops %ld (%.1f ms CPU)\n", ms, kib, atomic_load(&light_ops),
            atomic_load(&light_cpu_ms));
#endif
}

static void *monitor(void *arg)
{
    (void)arg;
    int trace = getenv("SPIKE_TRACE") != NULL; /* every reading on stderr */
    pthread_barrier_wait(&phase);
    idle_kib = rss_kib();
    pthread_barrier_wait(&phase);
    pthread_barrier_wait(&phase);
    peak_kib = rss_kib();
    pthread_barrier_wait(&phase);
    while (atomic_load(&released_workers) < nthreads)
        sleep_until(now_ms() + 1);
    double t0 = atomic_load(&release_end);
    sleep_until(t0);
    long ops0 = atomic_load(&light_ops);
    long limit = idle_kib + idle_kib / 10 + SLACK_KIB;
    for (int k = 0; k * POLL_MS <= WATCH_MS; k++) {
        sleep_until(t0 + k * POLL_MS);
        double t = now_ms();
        long r = statm_kib();
        if (within_ms < 0 && r <= limit && rss_kib() <= limit)
            within_ms = t - t0;
        if (k * POLL_MS == 100)
            r = rss01 = rss_kib();
        else if (k * POLL_MS == 1000)
            r = rss1 = rss_kib();
        else if (k * POLL_MS == WATCH_MS)
            r = rss5 = rss_kib();
        if (trace)
            trace_line(k * POLL_MS, r, now_ms() - t);
    }
    traffic_hz = (double)(atomic_load(&light_ops) - ops0) / (WATCH_MS / 1e3) / nthreads;
#ifdef SPIKE_BUFPOOL
    struct pool_head *p = mode == M_DYNBUF ? pool_head_buffer : pool;
    allocated_before = (long)pool_allocated(p);
    released_before = (long)pool_released(p);
#endif
    atomic_store(&collect, 1);
    while (atomic_load(&collected) < nthreads)
        sleep_until(now_ms() + 0.2);
    call_kib = rss_kib();
    atomic_store(&stop, 1);
    return NULL;
}

static void usage(void)
{
    fprintf(stderr, "usage: spike-VARIANT info | spike-VARIANT pool|dynbuf|malloc 1|4 default|PERIOD_MS SPIKE_MB\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "info") == 0) {
        Dl_info info;
        void *(*f)(size_t) = malloc;
        if (dladdr((void *)f, &info) == 0 || info.dli_fname == NULL)
            die("dladdr failed");
        printf("%s: malloc/free from %s\n", VARIANT, info.dli_fname);
        return 0;
    }
    if (argc != 5)
        usage();
    if (strcmp(argv[1], "pool") == 0)
        mode = M_POOL;
    else if (strcmp(argv[1], "dynbuf") == 0)
        mode = M_DYNBUF;
    else if (strcmp(argv[1], "malloc") == 0)
        mode = M_MALLOC;
    else
        usage();
#ifdef SPIKE_BUFPOOL
    if (mode == M_MALLOC)
        die("spike-bufpool runs the modes pool and dynbuf");
#else
    if (mode != M_MALLOC)
        die("the malloc variants run the mode malloc");
#endif
    nthreads = atoi(argv[2]);
    long mb = atol(argv[4]);
    if ((nthreads != 1 && nthreads != MAXTHREADS) || mb <= 0)
        usage();
    nobj = mb * 1024 * 1024 / OBJ;
    if (nobj < STEPS * MAXTHREADS)
        die("SPIKE_MB too small");
#ifdef SPIKE_BUFPOOL
    if (strcmp(argv[3], "default") != 0)
        pool_set_release_period((unsigned)strtoul(argv[3], NULL, 10));
    if (mode == M_POOL) {
        pool = create_pool("spike", OBJ, 0);
        if (!pool)
            die("create_pool failed");
    } else if (dynbuf_init(OBJ, 2, 0) != 0) {
        die("dynbuf_init failed");
    }
#else
    if (strcmp(argv[3], "default") != 0)
        die("a release period is for bufpool");
#endif
    /* The slots: mapped and touched now, so that they count in the idle RSS. */
    slots = mmap(NULL, (size_t)nobj * sizeof(*slots), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (slots == MAP_FAILED)
        die("mmap of the slots failed");
    for (long i = 0; i < nobj; i++)
        slots[i] = BUF_NULL;
    fflush(stdout);

    if (pthread_barrier_init(&phase, NULL, (unsigned)nthreads + 1) != 0)
        die("pthread_barrier_init failed");
    pthread_t mon, th[MAXTHREADS];
    if (pthread_create(&mon, NULL, monitor, NULL) != 0)
        die("pthread_create failed");
    for (int t = 1; t < nthreads; t++)
        if (pthread_create(&th[t], NULL, worker, (void *)(long)t) != 0)
            die("pthread_create failed");
    worker((void *)0L);
    for (int t = 1; t < nthreads; t++)
        pthread_join(th[t], NULL);
    pthread_join(mon, NULL);

    printf("idle_kib=%ld peak_kib=%ld release_ms=%.1f rss01_kib=%ld rss1_kib=%ld rss5_kib=%ld call_kib=%ld "
           "call_ms=%.2f within_ms=%.0f slowest_us=%.0f traffic_hz=%.0f allocated=%ld released=%ld purge=%s\n",
           idle_kib, peak_kib, atomic_load(&release_end) - atomic_load(&release_start), rss01, rss1, rss5,
           call_kib, call_ms, within_ms, atomic_load(&slowest_ms) * 1e3, traffic_hz, allocated_before, released_before,
           purge_name);
    return 0;
}
