/* A tiny HTTP/1.1 origin server for relay's tests: one epoll thread,
 * keep-alive, and bodies of the pattern of pattern.h:
 *   GET /size/N      N bytes, Content-Length (HEAD: the headers alone)
 *   GET /chunked/N   N bytes, chunked, chunks of varied sizes, an extension
 *                    and a trailer
 *   GET /close/N     N bytes, no length: the body ends when we close
 *   POST /echo       the request body back (Content-Length; a chunked
 *                    request is echoed chunked, framing and all)
 *   GET /            "hello\n"
 *   GET /echo-headers  the request's header block back, as the body
 *   GET /conn-close/N  N bytes, Content-Length, then `connection: close`
 *                    and the connection closed
 *   GET /raw/NAME    a canned response, often a malformed one (raw_resp
 *                    below), the connection kept open
 * `--log PATH`: each request line is appended to PATH as it is read.
 *   GET /hang        never answered (the connection stays open until closed)
 * `backend --body N` prints the N-byte body and exits (what curl must get).
 * `backend --blackhole`: a server that never completes a handshake: it
 * listens with a backlog of 0, never accepts, and fills its accept queue
 * with a connection of its own, so that the kernel drops every later SYN
 * (the client stays in SYN-SENT, retrying: a connect timeout on loopback).
 * Listens on loopback only. */
#include "http.h"
#include "pattern.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define INSZ  65536
#define OUTSZ 65536

enum gen { GEN_NONE, GEN_PLAIN, GEN_CHUNKED, GEN_ECHO };

struct bconn {
    int fd;
    int responding, rd_eof, want_out;
    unsigned mask;                          /* events registered */
    struct hmsg rq;
    size_t in_len;
    int route, head_req, close_after, req_chunked;
    size_t size;
    unsigned char *echo;
    size_t echo_len, echo_cap;
    int gen, gen_end_sent;
    size_t gen_off, gen_total;
    size_t out_len, out_off;
    char in[INSZ];
    unsigned char out[OUTSZ];
};

enum route { R_ROOT, R_SIZE, R_CHUNKED, R_CLOSE, R_ECHO, R_ECHO_HDRS, R_CONN_CLOSE, R_404, R_HANG, R_RAW };

/* /raw/NAME: responses a proxy must check (RFC 9112), sent as they are. */
static const struct {
    const char *name, *text;
} raw_resp[] = {
    /* Both framings; the bytes after the chunked end would be a second,
     * unasked-for response on this connection. */
    { "te-cl", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
               "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsmuggled!" },
    { "cl-differ", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd" },
    { "cl-list", "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd" },
    { "cl-same", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc" },
    { "no-colon", "HTTP/1.1 200 OK\r\nX-No-Colon\r\nContent-Length: 2\r\n\r\nok" },
    { "sp-colon", "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok" },
    { "fold", "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok" },
    { "ctl", "HTTP/1.1 200 OK\r\nX-A: a\001b\r\nContent-Length: 2\r\n\r\nok" },
    { "status", "HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok" },
    { "hop", "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
             "Proxy-Connection: keep-alive\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Kept: yes\r\n"
             "Content-Length: 2\r\n\r\nok" },
};

static FILE *req_log;

static int ep;

/* Level-triggered: input only while there is room and no EOF, output only
 * while a send would block. */
static void update_events(struct bconn *c)
{
    unsigned m = (c->rd_eof || c->in_len == INSZ ? 0 : EPOLLIN) | (c->want_out ? EPOLLOUT : 0);
    struct epoll_event ev = { .events = m, .data.ptr = c };
    if (m != c->mask) {
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->mask = m;
    }
}

static void set_out(struct bconn *c, int on)
{
    c->want_out = on;
    update_events(c);
}

static void conn_free(struct bconn *c)
{
    close(c->fd);
    free(c->echo);
    free(c);
}

static void route_of(struct bconn *c, const char *p, size_t h)
{
    const char *sp = memchr(p, ' ', h);
    const char *path = sp ? sp + 1 : p;
    size_t n = 0;

    c->head_req = sp && sp - p == 4 && !memcmp(p, "HEAD", 4);
    c->route = R_404;
    if (!strncmp(path, "/ ", 2)) {
        c->route = R_ROOT;
        return;
    }
    if (!strncmp(path, "/echo ", 6)) {
        c->route = R_ECHO;
        return;
    }
    if (!strncmp(path, "/echo-headers ", 14)) {
        c->route = R_ECHO_HDRS;
        return;
    }
    if (!strncmp(path, "/hang ", 6)) {
        c->route = R_HANG;
        return;
    }
    if (!strncmp(path, "/raw/", 5)) {
        for (size_t i = 0; i < sizeof(raw_resp) / sizeof(raw_resp[0]); i++) {
            size_t l = strlen(raw_resp[i].name);
            if (!strncmp(path + 5, raw_resp[i].name, l) && path[5 + l] == ' ') {
                c->route = R_RAW;
                c->size = i;
            }
        }
        return;
    }
    static const struct { const char *prefix; int route; } r[] = {
        { "/size/", R_SIZE }, { "/chunked/", R_CHUNKED }, { "/close/", R_CLOSE }, { "/conn-close/", R_CONN_CLOSE },
    };
    for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
        size_t l = strlen(r[i].prefix);
        if (!strncmp(path, r[i].prefix, l)) {
            const char *d = path + l;
            while (*d >= '0' && *d <= '9')
                n = n * 10 + (size_t)(*d++ - '0');
            if (*d == ' ' || *d == '?') {
                c->route = r[i].route;
                c->size = n;
            }
            return;
        }
    }
}

static void out_printf(struct bconn *c, const char *fmt, size_t a, const char *b)
{
    int n = snprintf((char *)c->out + c->out_len, OUTSZ - c->out_len, fmt, a, b);
    if (n > 0)
        c->out_len += (size_t)n;
}

/* Starts the response to the request just read. */
static void respond(struct bconn *c)
{
    const char *conn_hdr = c->close_after ? "connection: close\r\n" : "";

    c->responding = 1;
    c->gen = GEN_NONE;
    c->gen_off = 0;
    c->gen_end_sent = 0;
    switch (c->route) {
    case R_ROOT:
        out_printf(c, "HTTP/1.1 200 OK\r\ncontent-length: %zu\r\n%s\r\nhello\n", 6, conn_hdr);
        break;
    case R_SIZE:
        out_printf(c, "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %zu\r\n%s\r\n",
                   c->size, conn_hdr);
        c->gen = c->head_req ? GEN_NONE : GEN_PLAIN;
        c->gen_total = c->size;
        break;
    case R_CHUNKED:
        out_printf(c, "HTTP/1.1 200 OK\r\nx-size: %zu\r\ntransfer-encoding: chunked\r\n%s\r\n", c->size, conn_hdr);
        c->gen = c->head_req ? GEN_NONE : GEN_CHUNKED;
        c->gen_total = c->size;
        break;
    case R_CLOSE:
        out_printf(c, "HTTP/1.1 200 OK\r\nx-size: %zu\r\nconnection: close%s\r\n\r\n", c->size, "");
        c->gen = GEN_PLAIN;
        c->gen_total = c->size;
        c->close_after = 1;
        break;
    case R_CONN_CLOSE:
        out_printf(c, "HTTP/1.1 200 OK\r\ncontent-length: %zu\r\nconnection: close%s\r\n\r\n", c->size, "");
        c->gen = GEN_PLAIN;
        c->gen_total = c->size;
        c->close_after = 1;
        break;
    case R_ECHO_HDRS:
        out_printf(c, "HTTP/1.1 200 OK\r\ncontent-length: %zu\r\n%s\r\n", c->echo_len, conn_hdr);
        c->gen = GEN_ECHO;
        c->gen_total = c->echo_len;
        break;
    case R_HANG:
        break;                              /* nothing, ever: see flush */
    case R_RAW: {
        size_t l = strlen(raw_resp[c->size].text);
        memcpy(c->out + c->out_len, raw_resp[c->size].text, l);
        c->out_len += l;
        break;
    }
    case R_ECHO:
        if (c->req_chunked)
            out_printf(c, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-echo: %zu\r\n%s\r\n", c->echo_len,
                       conn_hdr);
        else
            out_printf(c, "HTTP/1.1 200 OK\r\ncontent-length: %zu\r\n%s\r\n", c->echo_len, conn_hdr);
        c->gen = GEN_ECHO;
        c->gen_total = c->echo_len;
        break;
    default:
        out_printf(c, "HTTP/1.1 404 Not Found\r\ncontent-length: %zu\r\n%s\r\nnot found\n", 10, conn_hdr);
        break;
    }
}

/* Tops the output buffer up from the body generator. 1 once all is generated. */
static int generate(struct bconn *c)
{
    while (c->gen != GEN_NONE && c->out_len < OUTSZ - 64) {
        size_t room = OUTSZ - 64 - c->out_len, left = c->gen_total - c->gen_off;
        if (c->gen == GEN_PLAIN || c->gen == GEN_ECHO) {
            size_t n = left < room ? left : room;
            if (c->gen == GEN_PLAIN)
                pattern_fill(c->out + c->out_len, c->gen_off, n);
            else
                memcpy(c->out + c->out_len, c->echo + c->gen_off, n);
            c->out_len += n;
            c->gen_off += n;
            if (c->gen_off == c->gen_total)
                c->gen = GEN_NONE;
        } else {                            /* chunked: sizes 1..3000, one extension */
            if (!left) {
                if (room < 32)
                    break;
                out_printf(c, "0\r\nx-trailer: %zu%s\r\n\r\n", c->gen_total, "");
                c->gen = GEN_NONE;
                break;
            }
            size_t n = 1 + (c->gen_off * 7919 + 13) % 3000;
            if (n > left)
                n = left;
            if (n + 40 > room)
                break;
            out_printf(c, c->gen_off == 0 ? "%zx;first=%s\r\n" : "%zX%s\r\n", n, c->gen_off == 0 ? "yes" : "");
            pattern_fill(c->out + c->out_len, c->gen_off, n);
            c->out_len += n;
            memcpy(c->out + c->out_len, "\r\n", 2);
            c->out_len += 2;
            c->gen_off += n;
        }
    }
    return c->gen == GEN_NONE;
}

/* Reads requests from c->in; starts a response once one is whole. 0, or -1: close. */
static int parse(struct bconn *c)
{
    while (!c->responding && c->in_len) {
        int was_hdr = c->rq.state == HM_HDR;
        int r = hmsg_scan(&c->rq, c->in, c->in_len, INSZ, 0, 0);
        if (r < 0)
            return -1;
        if (c->rq.state == HM_HDR)
            return 0;
        size_t take = c->rq.fwd, body = 0;
        if (was_hdr) {
            size_t h = http_header_len(c->in, c->in_len);
            route_of(c, c->in, h);
            if (req_log) {
                const char *eol = memchr(c->in, '\n', h);
                fprintf(req_log, "%.*s\n", (int)(eol - c->in), c->in);
                fflush(req_log);
            }
            c->close_after = (c->rq.flags & HF_CLOSE) != 0;
            c->req_chunked = c->rq.body == BODY_CHUNKED;
            c->echo_len = 0;
            body = h;                       /* the body starts there */
            if (c->route == R_ECHO_HDRS) {
                unsigned char *e = realloc(c->echo, h);
                if (!e)
                    return -1;
                memcpy(e, c->in, h);
                c->echo = e;
                c->echo_cap = c->echo_len = h;
            }
        }
        if (c->route == R_ECHO && take > body) {
            size_t n = take - body;
            if (c->echo_len + n > c->echo_cap) {
                size_t cap = (c->echo_len + n) * 2;
                unsigned char *e = realloc(c->echo, cap);
                if (!e)
                    return -1;
                c->echo = e;
                c->echo_cap = cap;
            }
            memcpy(c->echo + c->echo_len, c->in + body, n);
            c->echo_len += n;
        }
        memmove(c->in, c->in + take, c->in_len - take);
        c->in_len -= take;
        c->rq.fwd = 0;
        if (c->rq.state == HM_DONE) {
            hmsg_reset(&c->rq);
            respond(c);
        }
    }
    return 0;
}

/* Writes what it can. 0, or -1: close now. */
static int flush(struct bconn *c)
{
    if (c->route == R_HANG)
        return 0;
    for (;;) {
        int done = generate(c);
        if (c->out_off < c->out_len) {
            ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    set_out(c, 1);
                    return 0;
                }
                return -1;
            }
            c->out_off += (size_t)n;
            if (c->out_off < c->out_len)
                continue;
        }
        c->out_off = c->out_len = 0;
        if (!done)
            continue;
        set_out(c, 0);
        c->responding = 0;
        if (c->close_after)
            return -1;
        if (parse(c) < 0)
            return -1;
        if (!c->responding)
            return 0;
    }
}

static void on_readable(struct bconn *c)
{
    for (;;) {
        if (c->in_len == INSZ)
            break;                          /* full: wait for the response to be sent */
        ssize_t n = recv(c->fd, c->in + c->in_len, INSZ - c->in_len, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            if (!c->responding || c->route == R_HANG)
                goto close;
            c->close_after = 1;
            c->rd_eof = 1;
            break;
        }
        if (n < 0)
            break;
        c->in_len += (size_t)n;
        if (parse(c) < 0)
            goto close;
    }
    if (c->responding && flush(c) < 0)
        goto close;
    update_events(c);
    return;
close:
    conn_free(c);
}

int main(int argc, char **argv)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    const char *port_file = NULL;
    int one = 1;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int blackhole = 0;
    for (int i = 1; i < argc; i += 2) {
        if (!strcmp(argv[i], "--blackhole")) {
            blackhole = 1;
            i--;
        } else if (i + 1 == argc) {
            fprintf(stderr, "backend: %s needs a value\n", argv[i]);
            return 2;
        } else if (!strcmp(argv[i], "--body")) {
            size_t n = strtoull(argv[i + 1], NULL, 10);
            unsigned char buf[4096];
            for (size_t off = 0; off < n;) {
                size_t k = n - off < sizeof(buf) ? n - off : sizeof(buf);
                pattern_fill(buf, off, k);
                if (fwrite(buf, 1, k, stdout) != k)
                    return 1;
                off += k;
            }
            return 0;
        } else if (!strcmp(argv[i], "--port")) {
            a.sin_port = htons((unsigned short)atoi(argv[i + 1]));
        } else if (!strcmp(argv[i], "--log")) {
            req_log = fopen(argv[i + 1], "a");
            if (!req_log) {
                perror("backend: --log");
                return 1;
            }
        } else if (!strcmp(argv[i], "--port-file")) {
            port_file = argv[i + 1];
        } else {
            fprintf(stderr, "usage: backend [--port N] [--port-file PATH] [--log PATH] [--blackhole] | --body N\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    socklen_t alen = sizeof(a);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, blackhole ? 0 : 4096) < 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &alen) < 0) {
        perror("backend: listen");
        return 1;
    }
    if (blackhole) {
        /* One connection of our own fills the accept queue (backlog 0
         * holds one); it is never accepted, so every later SYN is dropped.
         * The port file is written once that connection is established. */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct pollfd pf = { .fd = fd, .events = POLLOUT };
        int err = 0;
        socklen_t el = sizeof(err);
        if (fd < 0 || fcntl(fd, F_SETFL, O_NONBLOCK) < 0 ||
            (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno != EINPROGRESS) || poll(&pf, 1, 10000) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
            perror("backend: --blackhole: filling the accept queue");
            return 1;
        }
    }
    fcntl(lfd, F_SETFL, O_NONBLOCK);
    ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    if (port_file) {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s.tmp", port_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%d\n", ntohs(a.sin_port)) < 0 || fclose(f) != 0 || rename(tmp, port_file) < 0) {
            perror("backend: port file");
            return 1;
        }
    }
    if (blackhole)
        for (;;)
            pause();                        /* until a signal ends us */
    for (;;) {
        struct epoll_event evs[128];
        int n = epoll_wait(ep, evs, 128, -1);
        for (int i = 0; i < n; i++) {
            struct bconn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept(lfd, NULL, NULL)) >= 0) {
                    c = calloc(1, sizeof(*c));
                    if (!c) {
                        close(fd);
                        continue;
                    }
                    fcntl(fd, F_SETFL, O_NONBLOCK);
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    c->fd = fd;
                    c->mask = EPOLLIN;
                    struct epoll_event cev = { .events = EPOLLIN, .data.ptr = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            if (evs[i].events & EPOLLOUT) {
                if (flush(c) < 0) {
                    conn_free(c);
                    continue;
                }
                update_events(c);
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(c);
        }
    }
}
