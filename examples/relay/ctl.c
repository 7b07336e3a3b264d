/* relay's control side, on the main thread: the UNIX stats socket
 * ("show pools [OPTIONS]", "show info"), SIGUSR1 (show pools on stderr), SIGTERM and
 * SIGINT (stop), the watchdog that reports a stall, and pool_gc() once the
 * relay has been idle for a while. Signals reach it through a pipe. */
#include "relay.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

atomic_ulong gc_runs, stalls;
atomic_int stalled;

static int sig_pipe[2] = { -1, -1 };
static int stats_fd = -1;

static void on_signal(int sig)
{
    unsigned char c = (unsigned char)sig;
    int e = errno;
    ssize_t r = write(sig_pipe[1], &c, 1);

    (void)r;
    errno = e;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ctl_setup(void)
{
    struct sigaction sa;

    if (pipe(sig_pipe) < 0)
        return -1;
    fcntl(sig_pipe[0], F_SETFL, O_NONBLOCK);
    fcntl(sig_pipe[1], F_SETFL, O_NONBLOCK);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (!cfg.stats_path)
        return 0;
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    if (strlen(cfg.stats_path) >= sizeof(a.sun_path)) {
        fprintf(stderr, "relay: stats socket path too long\n");
        return -1;
    }
    strcpy(a.sun_path, cfg.stats_path);
    unlink(cfg.stats_path);
    stats_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (stats_fd < 0 || bind(stats_fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(stats_fd, 16) < 0) {
        perror("relay: stats socket");
        return -1;
    }
    return 0;
}

void ctl_sum(struct wstats *o)
{
    memset(o, 0, sizeof(*o));
#define SUM(f) atomic_store_explicit(&o->f, atomic_load_explicit(&o->f, memory_order_relaxed) + \
                                     atomic_load_explicit(&w->st.f, memory_order_relaxed), memory_order_relaxed)
    for (int i = 0; i < cfg.threads; i++) {
        struct worker *w = &workers[i];
        SUM(accepted); SUM(requests); SUM(responses); SUM(buf_fail); SUM(offer_wakes); SUM(offer_declined);
        SUM(foreign_wakes); SUM(srv_connects); SUM(errors); SUM(aborts); SUM(refused); SUM(sessions); SUM(active);
        SUM(bufwaiters); SUM(paused);
        for (int k = 0; k < TK_N; k++)
            SUM(timeouts[k]);
    }
#undef SUM
}

#define V(f) atomic_load_explicit(&t.f, memory_order_relaxed)

/* How many buffers a session asking with `margin` could have now, one after
 * the other (the library's own count: b_available), -1 without a limit. */
static long can_have(int margin)
{
    long n = b_available(margin);
    return n == LONG_MAX ? -1 : n;
}

static void show_info(int fd)
{
    struct wstats t;
    unsigned qlen;
    int cur;

    ctl_sum(&t);
    pthread_mutex_lock(&server.lock);
    qlen = server.qlen;
    cur = server.cur;
    pthread_mutex_unlock(&server.lock);
    dprintf(fd,
            "threads: %d\nbufsize: %zu\nbuffer limit: %u\nreserve: %u\nrequest margin: %d\nserver maxconn: %d\n"
            "sessions: %ld\nactive requests: %ld\nbuffer waiters: %ld\nserver busy: %d\nserver queue: %u\n"
            "buffers used: %lu\nbuffers allocated: %lu\nbuffers a request can have now: %ld\n"
            "buffers a response can have now: %ld\naccepted: %lu\nrequests: %lu\nresponses: %lu\n"
            "server connections opened: %lu\n"
            "failed buffer allocations: %lu\nwake-ups by release offers: %lu\n"
            "offers declined by a callback: %lu\nwake-ups sent to another thread: %lu\n"
            "errors sent: %lu\naborts: %lu\nrefused: %lu\nstalled: %d\n"
            "stalls: %lu\npool gc runs: %lu\n",
            cfg.threads, cfg.bufsize, cfg.buflimit, cfg.reserve, cfg.req_margin, cfg.maxconn, V(sessions), V(active),
            V(bufwaiters), cur, qlen, pool_used(pool_head_buffer), pool_allocated(pool_head_buffer),
            can_have(cfg.req_margin), can_have(0), V(accepted), V(requests), V(responses), V(srv_connects), V(buf_fail),
            V(offer_wakes), V(offer_declined), V(foreign_wakes), V(errors),
            V(aborts), V(refused), atomic_load(&stalled), atomic_load(&stalls), atomic_load(&gc_runs));
    dprintf(fd,
            "client timeouts: %lu\nidle timeouts: %lu\nconnect timeouts: %lu\nserver timeouts: %lu\n"
            "queue timeouts: %lu\nsend timeouts: %lu\nlistener pauses: %lu\n",
            V(timeouts[TK_CLIENT]), V(timeouts[TK_IDLE]), V(timeouts[TK_CONNECT]), V(timeouts[TK_SERVER]),
            V(timeouts[TK_QUEUE]), V(timeouts[TK_SEND]), V(paused));
}

/* One command per connection, as socat sends it: a line, then EOF. */
static long long stats_pause_until;        /* out of descriptors: the stats socket waits */

static void serve_stats(void)
{
    char cmd[256];
    size_t n = 0;
    struct timeval tv = { .tv_sec = 1 };
    int c = accept(stats_fd, NULL, NULL);

    if (c < 0) {
        if (errno == EMFILE || errno == ENFILE)
            stats_pause_until = now_ms() + 100;   /* level-triggered poll: not again at once */
        return;
    }
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    while (n < sizeof(cmd) - 1) {
        ssize_t r = read(c, cmd + n, sizeof(cmd) - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        if (memchr(cmd, '\n', n))
            break;
    }
    cmd[n] = 0;
    cmd[strcspn(cmd, "\r\n")] = 0;
    if (!strcmp(cmd, "show pools"))
        dump_pools_to_fd(c);
    else if (!strncmp(cmd, "show pools ", 11)) {
        /* "show pools byusage match relay_ 3 detailed", "show pools json" */
        if (dump_pools_to_fd_opts(c, cmd + 11) < 0 && errno == EINVAL)
            dprintf(c, "Bad options. Known: byname|bysize|byusage, match PREFIX, a count, detailed, json\n");
    } else if (!strcmp(cmd, "show info"))
        show_info(c);
    else
        dprintf(c, "Unknown command. Known: show pools [OPTIONS], show info\n");
    close(c);
}

static void watchdog_line(long long ms)
{
    struct wstats t;
    unsigned qlen;
    int cur;

    ctl_sum(&t);
    pthread_mutex_lock(&server.lock);
    qlen = server.qlen;
    cur = server.cur;
    pthread_mutex_unlock(&server.lock);
    fprintf(stderr,
            "relay: watchdog: stalled: no response for %.1f s with %ld requests in flight: %u queued for the server "
            "(%d of maxconn %d busy), %ld sessions waiting for a buffer, buffers %lu used of limit %u "
            "(reserve %u, request margin %d; a request can have %ld now, a response %ld)\n",
            (double)ms / 1000, V(active), qlen, cur, cfg.maxconn, V(bufwaiters), pool_used(pool_head_buffer),
            cfg.buflimit, cfg.reserve, cfg.req_margin, can_have(cfg.req_margin), can_have(0));
}

void ctl_loop(void)
{
    struct pollfd p[2] = { { .fd = sig_pipe[0], .events = POLLIN }, { .fd = stats_fd, .events = POLLIN } };
    long long last_progress = now_ms(), last_activity = last_progress;
    unsigned long last_resp = 0, last_act = 0;
    int gc_pending = 0;

    for (;;) {
        p[1].fd = now_ms() < stats_pause_until ? -1 : stats_fd;
        int n = poll(p, stats_fd >= 0 ? 2 : 1, 100);
        if (n > 0 && (p[0].revents & POLLIN)) {
            unsigned char sig;
            while (read(sig_pipe[0], &sig, 1) == 1) {
                if (sig == SIGUSR1)
                    dump_pools_to_fd(2);
                else
                    goto out;
            }
        }
        if (n > 0 && stats_fd >= 0 && (p[1].revents & POLLIN))
            serve_stats();

        struct wstats t;
        long long now = now_ms();
        ctl_sum(&t);
        long pending = V(active) + V(bufwaiters);
        unsigned long act = V(accepted) + V(requests) + V(responses) + V(aborts);
        if (V(responses) != last_resp || !pending) {
            if (atomic_load(&stalled))
                fprintf(stderr, "relay: watchdog: progress again after %.1f s\n",
                        (double)(now - last_progress) / 1000);
            atomic_store(&stalled, 0);
            last_resp = V(responses);
            last_progress = now;
        } else if (cfg.watchdog_ms && now - last_progress >= cfg.watchdog_ms && !atomic_load(&stalled)) {
            atomic_store(&stalled, 1);
            atomic_fetch_add(&stalls, 1);
            watchdog_line(now - last_progress);
        }
        if (act != last_act) {
            last_act = act;
            last_activity = now;
            gc_pending = 1;
        } else if (cfg.idle_gc_ms && gc_pending == 1 && !pending && now - last_activity >= cfg.idle_gc_ms) {
            atomic_fetch_add(&purge_epoch, 1);  /* idle: workers drop their idle server connections */
            for (int i = 0; i < cfg.threads; i++)
                wake_worker(&workers[i]);
            gc_pending = 2;
        } else if (gc_pending == 2 && !pending) {
            pool_gc(NULL);              /* a tick later: give the burst's memory back */
            atomic_fetch_add(&gc_runs, 1);
            gc_pending = 0;
        }
    }
out:
    if (stats_fd >= 0) {
        close(stats_fd);
        unlink(cfg.stats_path);
    }
}
