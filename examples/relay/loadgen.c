/* loadgen: the relay's test and demo client, one epoll thread.
 *
 *   loadgen load  --port P [--conns C] [--requests R] [--path /size/N]
 *                 [--verify] [--timeout S]
 *       C keep-alive connections, R requests each, one at a time; with
 *       --verify every body must be the pattern of pattern.h, N bytes.
 *       Exit 0: all done; 1: a failure; 3: still incomplete at the timeout.
 *   loadgen idle  --port P --conns N [--parallel K] [--path P]
 *                 [--ready-file F] [--timeout S]
 *       N connections, one request each, then held open, idle, until
 *       SIGTERM or SIGINT; F gets "N" once all are idle.
 *   loadgen burst --port P --conns N [--path P] [--verify] [--timeout S]
 *       N connections at once, one request each, read whole, closed.
 *   loadgen stuck --port P --conns N --path P [--ready-file F] [--timeout S]
 *       N connections with a 4 KiB receive buffer, one request each, and
 *       nothing read: counts the connections the proxy reset or closed.
 *   loadgen ctl   --unix PATH COMMAND...
 *       sends COMMAND to a stats socket and prints the answer.
 * Loopback only: --host takes an IPv4 address (127.0.0.1). */
#include "http.h"
#include "pattern.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HDRSZ 4096

enum mode { M_LOAD, M_IDLE, M_BURST, M_SLOW, M_STUCK };
enum cstate { C_CONNECTING, C_SENDING, C_READING, C_IDLE, C_DONE };

struct lconn {
    int fd, state, requests;
    size_t sent, hlen, body_off;
    uint64_t left;
    struct hmsg rs;
    char hdr[HDRSZ];
};

static struct {
    enum mode mode;
    struct sockaddr_in addr;
    int conns, requests, parallel, verify, interval;
    double timeout;
    const char *path, *ready_file;
    size_t expect;                       /* body size to verify (from /size/N) */
} opt = { .conns = 10, .requests = 1, .timeout = 30, .path = "/" };

static char req[512];
static size_t req_len;
static int ep;
static unsigned long ok, failed, started, closed_idle, active;
static volatile sig_atomic_t stop_flag;
static unsigned char scratch[262144];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_stop(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void fail(struct lconn *c, const char *why)
{
    if (failed < 5)
        fprintf(stderr, "loadgen: connection %d: %s\n", c->fd, why);
    failed++;
    close(c->fd);
    c->state = C_DONE;
    active--;
}

static void finish(struct lconn *c)
{
    close(c->fd);
    c->state = C_DONE;
    active--;
}

static int start(struct lconn *c)
{
    int one = 1;

    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) {
        perror("loadgen: socket");
        return -1;
    }
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&opt.addr, sizeof(opt.addr)) < 0 && errno != EINPROGRESS) {
        perror("loadgen: connect");
        close(c->fd);
        return -1;
    }
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->state = C_CONNECTING;
    started++;
    active++;
    return 0;
}

static void send_request(struct lconn *c)
{
    while (c->sent < req_len) {
        ssize_t n = send(c->fd, req + c->sent, req_len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                fail(c, "send failed");
            return;
        }
        c->sent += (size_t)n;
    }
    c->state = C_READING;
}

static void next_request(struct lconn *c)
{
    c->sent = c->hlen = c->body_off = 0;
    c->left = 0;
    hmsg_reset(&c->rs);
    c->state = C_SENDING;
    send_request(c);
}

/* One response is in. */
static void response_done(struct lconn *c)
{
    ok++;
    c->requests++;
    if (opt.mode == M_IDLE) {
        c->state = C_IDLE;
        active--;
    } else if (opt.mode == M_LOAD && c->requests < opt.requests) {
        next_request(c);
    } else {
        finish(c);
    }
}

/* Feeds `n` bytes read from the connection to the response parser. */
static void feed(struct lconn *c, const unsigned char *p, size_t n)
{
    while (n && c->state == C_READING) {
        if (c->rs.state == HM_HDR) {
            size_t k = HDRSZ - c->hlen < n ? HDRSZ - c->hlen : n;
            memcpy(c->hdr + c->hlen, p, k);
            size_t h = http_header_len(c->hdr, c->hlen + k);
            if (!h) {
                c->hlen += k;
                p += k;
                n -= k;
                if (c->hlen == HDRSZ)
                    fail(c, "response headers too long");
                continue;
            }
            size_t used = h - c->hlen;      /* bytes of p in the headers */
            p += used;
            n -= used;
            c->hlen = h;
            if (hmsg_scan(&c->rs, c->hdr, h, HDRSZ, 1, 0) < 0) {
                fail(c, "bad response headers");
                return;
            }
            if (c->rs.status != 200) {
                fail(c, "status is not 200");
                return;
            }
            if (c->rs.body == BODY_NONE) {
                c->left = 0;
            } else if (c->rs.body == BODY_LEN) {
                c->left = c->rs.left;
            } else {
                fail(c, "the client reads Content-Length bodies only");
                return;
            }
            if (opt.verify && c->left != opt.expect) {
                fail(c, "wrong Content-Length");
                return;
            }
            if (!c->left)
                response_done(c);
            continue;
        }
        size_t k = (uint64_t)n < c->left ? n : (size_t)c->left;
        if (opt.verify) {
            for (size_t i = 0; i < k; i++) {
                if (p[i] != pattern_byte(c->body_off + i)) {
                    fail(c, "body differs from the pattern");
                    return;
                }
            }
        }
        c->body_off += k;
        c->left -= k;
        p += k;
        n -= k;
        if (!c->left)
            response_done(c);
    }
    if (n && c->state != C_DONE)
        fail(c, "bytes after the response");
}

static void on_event(struct lconn *c, unsigned ev)
{
    if (c->state == C_DONE)
        return;
    if (c->state == C_CONNECTING && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            fail(c, "connect failed");
            return;
        }
        next_request(c);
    } else if (c->state == C_SENDING && (ev & EPOLLOUT)) {
        send_request(c);
    }
    if (c->state == C_IDLE && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
        closed_idle++;                      /* the proxy closed an idle connection */
        close(c->fd);
        c->state = C_DONE;
        return;
    }
    while (c->state == C_READING && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
        ssize_t n = recv(c->fd, scratch, sizeof(scratch), 0);
        if (n > 0) {
            feed(c, scratch, (size_t)n);
            if ((size_t)n < sizeof(scratch))
                break;
            continue;
        }
        if (n == 0)
            fail(c, "connection closed before the response ended");
        else if (errno != EAGAIN && errno != EWOULDBLOCK)
            fail(c, "recv failed");
        break;
    }
}

static int ctl(int argc, char **argv)
{
    const char *path = NULL;
    char cmd[256] = "";
    int i = 2;

    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--unix") && i + 1 < argc)
            path = argv[++i];
        else
            break;
    }
    for (; i < argc; i++) {
        if (strlen(cmd) + strlen(argv[i]) + 2 >= sizeof(cmd))
            return 2;
        if (cmd[0])
            strcat(cmd, " ");
        strcat(cmd, argv[i]);
    }
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    if (!path || strlen(path) >= sizeof(a.sun_path) || !cmd[0]) {
        fprintf(stderr, "usage: loadgen ctl --unix PATH COMMAND...\n");
        return 2;
    }
    strcpy(a.sun_path, path);
    strcat(cmd, "\n");
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        write(fd, cmd, strlen(cmd)) != (ssize_t)strlen(cmd)) {
        perror("loadgen ctl");
        return 1;
    }
    shutdown(fd, SHUT_WR);
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n)
            return 1;
    return n < 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: loadgen load|idle|burst|slow|stuck --port P [--host A] [--conns N] [--requests R] [--path P]\n"
                    "               [--verify] [--parallel K] [--ready-file F] [--timeout S] [--interval MS (slow)]\n"
                    "       loadgen ctl --unix PATH COMMAND...\n");
}

/* loadgen slow: slowloris. Opens --conns connections and sends each one
 * byte of a request head that never ends every --interval ms (0: nothing
 * at all, the connections are only held). Counts the connections the proxy
 * closed and what it answered; done when all are closed, or at --timeout
 * (or SIGTERM). Exit 0: all closed by the proxy; 3: some still open. */
/* The number of connections open, into FILE (NULL: none), through a rename:
 * the test that polls for the file never reads half of it. */
static void write_ready(const char *file, int n)
{
    if (!file)
        return;
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", file);
    FILE *f = fopen(tmp, "w");
    if (f) {
        fprintf(f, "%d\n", n);
        fclose(f);
        rename(tmp, file);
    }
}

static int slow_main(const char *ready_file, int interval)
{
    static const char head[] = "GET / HTTP/1.1\r\nhost: relay-test\r\nx-slow: ";
    int n = opt.conns, open_n = 0;
    unsigned long closed = 0, r408 = 0, r503 = 0, rother = 0;
    struct pollfd *pf = calloc((size_t)n, sizeof(*pf));
    size_t *sent = calloc((size_t)n, sizeof(*sent));
    char *answered = calloc((size_t)n, 1);

    if (!pf || !sent || !answered)
        return 1;
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&opt.addr, sizeof(opt.addr)) < 0) {
            perror("loadgen slow: connect");
            return 1;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        pf[i].fd = fd;
        pf[i].events = POLLIN;
        open_n++;
    }
    write_ready(ready_file, open_n);
    double deadline = now_s() + opt.timeout, next_send = now_s();
    while (open_n && !stop_flag && now_s() < deadline) {
        if (interval > 0 && now_s() >= next_send) {
            for (int i = 0; i < n; i++) {
                if (pf[i].fd < 0)
                    continue;
                char c = sent[i] < sizeof(head) - 1 ? head[sent[i]] : 'a';
                if (send(pf[i].fd, &c, 1, MSG_NOSIGNAL) == 1)
                    sent[i]++;
            }
            next_send = now_s() + interval / 1000.0;
        }
        int r = poll(pf, (nfds_t)n, interval > 0 ? interval : 100);
        for (int i = 0; r > 0 && i < n; i++) {
            if (pf[i].fd < 0 || !pf[i].revents)
                continue;
            char buf[512];
            ssize_t got = recv(pf[i].fd, buf, sizeof(buf) - 1, 0);
            if (got > 0 && !answered[i]) {
                buf[got] = 0;
                answered[i] = 1;
                if (!strncmp(buf, "HTTP/1.1 408", 12))
                    r408++;
                else if (!strncmp(buf, "HTTP/1.1 503", 12))
                    r503++;
                else
                    rother++;
            }
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                close(pf[i].fd);
                pf[i].fd = -1;
                open_n--;
                closed++;
            }
        }
    }
    printf("loadgen slow: %d connections, %lu closed by the proxy, %lu answered 408, %lu answered 503, "
           "%lu answered otherwise, %d still open\n", n, closed, r408, r503, rother, open_n);
    for (int i = 0; i < n; i++)
        if (pf[i].fd >= 0)
            close(pf[i].fd);
    free(pf);
    free(sent);
    free(answered);
    return open_n ? 3 : 0;
}

/* loadgen stuck: readers that stop. Each of --conns connections gets a
 * small receive buffer (set before connect, so the window stays small),
 * sends one request for --path and never reads. Done when the proxy has
 * reset or closed every one (poll sees POLLERR, POLLHUP or POLLRDHUP: a
 * FIN queued behind unread data would not show, a reset does), or at
 * --timeout. Exit 0: all ended by the proxy; 3: some still open. */
static int stuck_main(const char *ready_file)
{
    int n = opt.conns, open_n = 0, rcvbuf = 4096;
    unsigned long reset = 0;
    struct pollfd *pf = calloc((size_t)n, sizeof(*pf));

    if (!pf)
        return 1;
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) < 0 ||
            connect(fd, (struct sockaddr *)&opt.addr, sizeof(opt.addr)) < 0 ||
            send(fd, req, req_len, MSG_NOSIGNAL) != (ssize_t)req_len) {
            perror("loadgen stuck: connect or send");
            return 1;
        }
        pf[i].fd = fd;
        pf[i].events = POLLRDHUP;           /* not POLLIN: the bytes stay unread */
        open_n++;
    }
    write_ready(ready_file, open_n);
    double deadline = now_s() + opt.timeout;
    while (open_n && !stop_flag && now_s() < deadline) {
        int r = poll(pf, (nfds_t)n, 100);
        for (int i = 0; r > 0 && i < n; i++) {
            if (pf[i].fd < 0 || !(pf[i].revents & (POLLERR | POLLHUP | POLLRDHUP)))
                continue;
            close(pf[i].fd);
            pf[i].fd = -1;
            open_n--;
            reset++;
        }
    }
    printf("loadgen stuck: %d connections, %lu reset or closed by the proxy, %d still open\n", n, reset, open_n);
    for (int i = 0; i < n; i++)
        if (pf[i].fd >= 0)
            close(pf[i].fd);
    free(pf);
    return open_n ? 3 : 0;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = -1;

    if (argc < 2) {
        usage();
        return 2;
    }
    if (!strcmp(argv[1], "ctl"))
        return ctl(argc, argv);
    if (!strcmp(argv[1], "load"))
        opt.mode = M_LOAD;
    else if (!strcmp(argv[1], "idle"))
        opt.mode = M_IDLE;
    else if (!strcmp(argv[1], "burst"))
        opt.mode = M_BURST;
    else if (!strcmp(argv[1], "slow"))
        opt.mode = M_SLOW;
    else if (!strcmp(argv[1], "stuck"))
        opt.mode = M_STUCK;
    else {
        usage();
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(o, "--verify")) {
            opt.verify = 1;
            continue;
        }
        i++;
        if (!strcmp(o, "--port"))
            port = atoi(v);
        else if (!strcmp(o, "--host"))
            host = v;
        else if (!strcmp(o, "--conns"))
            opt.conns = atoi(v);
        else if (!strcmp(o, "--requests"))
            opt.requests = atoi(v);
        else if (!strcmp(o, "--parallel"))
            opt.parallel = atoi(v);
        else if (!strcmp(o, "--path"))
            opt.path = v;
        else if (!strcmp(o, "--ready-file"))
            opt.ready_file = v;
        else if (!strcmp(o, "--timeout"))
            opt.timeout = atof(v);
        else if (!strcmp(o, "--interval"))
            opt.interval = atoi(v);
        else {
            usage();
            return 2;
        }
    }
    opt.addr.sin_family = AF_INET;
    opt.addr.sin_port = htons((unsigned short)port);
    if (port <= 0 || port > 65535 || opt.conns < 1 || opt.requests < 1 ||
        inet_pton(AF_INET, host, &opt.addr.sin_addr) != 1) {
        usage();
        return 2;
    }
    if (opt.verify && sscanf(opt.path, "/size/%zu", &opt.expect) != 1) {
        fprintf(stderr, "loadgen: --verify needs a /size/N path\n");
        return 2;
    }
    if (opt.parallel <= 0)
        opt.parallel = opt.conns;
    req_len = (size_t)snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nhost: relay-test\r\nuser-agent: loadgen\r\n\r\n",
                               opt.path);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    if (opt.mode == M_SLOW)
        return slow_main(opt.ready_file, opt.interval);
    if (opt.mode == M_STUCK)
        return stuck_main(opt.ready_file);
    struct lconn *cs = calloc((size_t)opt.conns, sizeof(*cs));
    ep = epoll_create1(0);
    if (!cs || ep < 0)
        return 1;

    double t0 = now_s(), deadline = t0 + opt.timeout, t_ready = 0;
    int next = 0, ready_written = 0;
    struct epoll_event evs[512];
    for (;;) {
        while (next < opt.conns && (long)active < opt.parallel) {
            if (start(&cs[next]) < 0) {
                failed++;
                cs[next].state = C_DONE;
            }
            next++;
        }
        int all_started = next == opt.conns;
        if (all_started && active == 0) {
            if (opt.mode != M_IDLE)
                break;
            if (!ready_written) {
                ready_written = 1;
                t_ready = now_s();
                fprintf(stderr, "loadgen: %lu connections idle after %.2f s (%lu failed)\n", ok, t_ready - t0, failed);
                if (opt.ready_file) {
                    char tmp[4096];
                    snprintf(tmp, sizeof(tmp), "%s.tmp", opt.ready_file);
                    FILE *f = fopen(tmp, "w");
                    if (f) {
                        fprintf(f, "%lu %lu\n", ok, failed);
                        fclose(f);
                        rename(tmp, opt.ready_file);
                    }
                }
            }
            if (stop_flag)
                break;
        }
        if (stop_flag && opt.mode != M_IDLE)
            break;
        if (!ready_written && now_s() > deadline)
            break;
        int n = epoll_wait(ep, evs, 512, 100);
        for (int i = 0; i < n; i++)
            on_event(evs[i].data.ptr, evs[i].events);
    }
    double el = (ready_written ? t_ready : now_s()) - t0;
    unsigned long want = (unsigned long)opt.conns * (unsigned long)(opt.mode == M_LOAD ? opt.requests : 1);
    unsigned long incomplete = want > ok + failed ? want - ok - failed : 0;
    printf("loadgen %s: %d connections, %lu responses ok, %lu failed, %lu incomplete, %.2f s, %.0f responses/s%s\n",
           argv[1], opt.conns, ok, failed, incomplete, el, el > 0 ? (double)ok / el : 0.0,
           opt.mode == M_IDLE && closed_idle ? " (some idle connections were closed by the proxy)" : "");
    if (opt.mode == M_IDLE && closed_idle)
        printf("loadgen idle: %lu idle connections closed by the proxy\n", closed_idle);
    for (int i = 0; i < opt.conns; i++)
        if (cs[i].state != C_DONE)
            close(cs[i].fd);
    free(cs);
    if (failed || closed_idle)
        return 1;
    return incomplete ? 3 : 0;
}
