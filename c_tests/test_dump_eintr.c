/* dump_pools_to_fd must write its whole text even when signals interrupt it.
 * A program that dumps to a pipe or a socket with a signal handler
 * installed without SA_RESTART (a timer, SIGCHLD...) sees write() fail with
 * EINTR whenever a signal lands while the pipe is full; the dump must then
 * retry, not stop. Here the text is made larger than the pipe (at least 300
 * pools with distinct names; the pipe shrunk to 4096 bytes), a SIGALRM
 * handler without SA_RESTART counts its deliveries, and an interval timer
 * fires every millisecond. A reader thread (SIGALRM blocked in it, so the
 * signals hit main) waits until the handler has run at least three times
 * while main is in dump_pools_to_fd with the pipe full (the handler asks
 * the pipe with FIONREAD), so main is blocked in write() when they land,
 * then reads to end of file. Checked: the reader
 * got exactly the text of a dump taken just before to a file (so every pool
 * name and the final Total line), and the signals did land during the dump.
 * The reader is released when the dump returns too, so a dump that gives up
 * early makes the test fail, never hang. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "bufpool.h"
#include "harness.h"

#define MIN_POOLS 300
#define MAX_POOLS_HERE 4000
#define WAIT_DELIVERIES 3

static atomic_int dumping, deliveries;
static sem_t reader_go;
static int rfd, pipe_size, reader_timed_out;

/* Counts the signals that land while main is in the dump with the pipe full
 * (so blocked in write(), or about to block): a slow build may spend
 * several ticks making the text before it writes. "Full" is within a dump
 * line (under 512 bytes) of the pipe's size: the dump may write a line at a
 * time, and a pipe write that small waits until it fits whole. */
static void on_alarm(int sig)
{
    int saved = errno, queued = 0;
    (void)sig;
    if (atomic_load(&dumping) && ioctl(rfd, FIONREAD, &queued) == 0 && queued >= pipe_size - 512 &&
        atomic_fetch_add(&deliveries, 1) + 1 == WAIT_DELIVERIES)
        sem_post(&reader_go);
    errno = saved;
}

static char expected[1 << 20], got[1 << 20];
static size_t got_len;

static void *reader_main(void *arg)
{
    ssize_t k;
    (void)arg;
    struct timespec limit;
    clock_gettime(CLOCK_REALTIME, &limit);
    limit.tv_sec += 10; /* only if the signals never come: read anyway */
    while (sem_timedwait(&reader_go, &limit) != 0) {
        if (errno == ETIMEDOUT) {
            reader_timed_out = 1;
            break;
        }
    }
    while (got_len < sizeof(got) - 1 &&
           ((k = read(rfd, got + got_len, sizeof(got) - 1 - got_len)) > 0 || (k < 0 && errno == EINTR)))
        if (k > 0)
            got_len += (size_t)k;
    got[got_len] = 0;
    return NULL;
}

/* A dump to a regular file, read back into `expected`; its length. */
static size_t reference_dump(void)
{
    FILE *f = tmpfile();
    size_t n;
    if (!f) {
        perror("tmpfile");
        exit(2);
    }
    dump_pools_to_fd(fileno(f));
    rewind(f);
    n = fread(expected, 1, sizeof(expected) - 1, f);
    expected[n] = 0;
    fclose(f);
    return n;
}

static int count_lines(const char *d, const char *prefix)
{
    int n = 0;
    for (const char *l = d; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        n += strncmp(l, prefix, strlen(prefix)) == 0;
    return n;
}

int main(void)
{
    static struct pool_head *pools[MAX_POOLS_HERE];
    int npools = 0, fds[2];
    char name[32];
    size_t want;
    pthread_t reader;
    sigset_t alrm, old;
    struct sigaction sa, old_sa;
    struct itimerval tick = { { 0, 1000 }, { 0, 1000 } }, off = { { 0, 0 }, { 0, 0 } };

    CHECK(pipe(fds) == 0);
    pipe_size = fcntl(fds[1], F_SETPIPE_SZ, 4096);
    CHECK(pipe_size >= 4096);
    if (pipe_size < 4096)
        pipe_size = fcntl(fds[1], F_GETPIPE_SZ);

    /* Enough pools for a text several times the pipe's size. */
    do {
        for (int i = 0; i < 100 && npools < MAX_POOLS_HERE; i++) {
            snprintf(name, sizeof(name), "eintr-%04d", npools);
            pools[npools] = create_pool(name, 32 + 16 * (unsigned)(npools % 8), 0);
            CHECK(pools[npools] != NULL);
            npools++;
        }
        want = reference_dump();
    } while ((npools < MIN_POOLS || want < 8 * (size_t)pipe_size) && npools < MAX_POOLS_HERE);
    CHECK(want > 4 * (size_t)pipe_size);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;
    sa.sa_flags = 0; /* no SA_RESTART: write() fails with EINTR */
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGALRM, &sa, &old_sa) == 0);
    CHECK(sem_init(&reader_go, 0, 0) == 0);

    /* The reader starts with SIGALRM blocked; main then unblocks it. */
    rfd = fds[0];
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    CHECK(pthread_sigmask(SIG_BLOCK, &alrm, &old) == 0);
    CHECK(pthread_create(&reader, NULL, reader_main, NULL) == 0);
    CHECK(pthread_sigmask(SIG_SETMASK, &old, NULL) == 0);

    CHECK(setitimer(ITIMER_REAL, &tick, NULL) == 0);
    atomic_store(&dumping, 1);
    dump_pools_to_fd(fds[1]);
    atomic_store(&dumping, 0);
    CHECK(setitimer(ITIMER_REAL, &off, NULL) == 0);
    int during = atomic_load(&deliveries);
    if (during < WAIT_DELIVERIES)
        sem_post(&reader_go); /* the dump returned before the reader started */
    close(fds[1]);
    pthread_join(reader, NULL);
    close(fds[0]);
    CHECK(sigaction(SIGALRM, &old_sa, NULL) == 0);

    printf("dump under SIGALRM: %d pools, %zu bytes expected through a %d-byte pipe, %zu received, "
           "%d signals while the dump waited on the full pipe\n", npools, want, pipe_size, got_len, during);
    CHECK(during >= WAIT_DELIVERIES);
    CHECK(!reader_timed_out);
    CHECK_EQ(got_len, want);
    CHECK(got_len == want && memcmp(got, expected, want) == 0);

    int missing = 0;
    for (int i = 0; i < npools; i++) {
        char key[64];
        snprintf(key, sizeof(key), "\n  - Pool eintr-%04d (", i);
        missing += strstr(got, key) == NULL;
    }
    CHECK_EQ(missing, 0);
    const char *total = strstr(got, "\nTotal: ");
    CHECK(total != NULL);
    if (total) {
        unsigned long listed = 0;
        CHECK_EQ(sscanf(total + 1, "Total: %lu pools", &listed), 1);
        CHECK_EQ(listed, count_lines(got, "  - Pool "));
        CHECK(got_len > 0 && got[got_len - 1] == '\n' && strchr(total + 1, '\n') == got + got_len - 1);
    }

    for (int i = 0; i < npools; i++)
        CHECK(pool_destroy(pools[i]) == NULL);
    sem_destroy(&reader_go);
    DONE("test_dump_eintr");
}
