/* slowread: slow downloads for make haproxy-demo.
 *
 *   slowread PORT CONNS PATH CHUNK INTERVAL_MS
 *
 * Opens CONNS connections to 127.0.0.1:PORT (a small receive buffer on
 * each), sends `GET PATH` on each, then every INTERVAL_MS reads at most
 * CHUNK bytes from each connection, until each has its whole response
 * (headers and Content-Length bytes), when it is closed. So the proxy in
 * between holds its buffers for as long as the downloads last. Prints one
 * line (downloads completed, bytes, seconds); exit 0 when all completed. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct dl {
    int fd;
    size_t got;          /* bytes read */
    size_t want;         /* headers + body, once the headers are in; 0 before */
    char head[1024];     /* the first bytes, to find the headers' end */
    size_t hlen;
};

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Once the header block is complete: its length plus Content-Length. */
static void find_length(struct dl *d)
{
    char *end, *p;

    d->head[d->hlen < sizeof(d->head) ? d->hlen : sizeof(d->head) - 1] = 0;
    end = strstr(d->head, "\r\n\r\n");
    if (!end)
        return;
    for (p = d->head; p && p < end; p = strchr(p, '\n')) {
        if (*p == '\n')
            p++;
        if (!strncasecmp(p, "content-length:", 15)) {
            d->want = (size_t)(end + 4 - d->head) + strtoull(p + 15, NULL, 10);
            return;
        }
    }
    d->want = (size_t)(end + 4 - d->head);      /* no length: headers only */
}

int main(int argc, char **argv)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    int conns, left, done = 0, rcvbuf = 4096;
    size_t chunk, total = 0;
    struct dl *d;
    char req[512], *buf;
    long interval;
    double t0;

    if (argc != 6) {
        fprintf(stderr, "usage: slowread PORT CONNS PATH CHUNK INTERVAL_MS\n");
        return 2;
    }
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    conns = atoi(argv[2]);
    chunk = strtoull(argv[4], NULL, 10);
    interval = atol(argv[5]);
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nhost: slowread\r\n\r\n", argv[3]);
    d = calloc((size_t)conns, sizeof(*d));
    buf = malloc(chunk);
    if (!d || !buf || conns <= 0 || !chunk)
        return 2;
    t0 = now();
    for (int i = 0; i < conns; i++) {
        d[i].fd = socket(AF_INET, SOCK_STREAM, 0);
        if (d[i].fd < 0) {
            perror("slowread: socket");
            return 1;
        }
        setsockopt(d[i].fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
        if (connect(d[i].fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
            write(d[i].fd, req, strlen(req)) != (ssize_t)strlen(req)) {
            perror("slowread: connect");
            return 1;
        }
        fcntl(d[i].fd, F_SETFL, O_NONBLOCK);
    }
    left = conns;
    while (left > 0) {
        struct timespec ts = { interval / 1000, (interval % 1000) * 1000000L };

        nanosleep(&ts, NULL);            /* the pace of a slow client, not a synchronisation */
        for (int i = 0; i < conns; i++) {
            ssize_t n;

            if (d[i].fd < 0)
                continue;
            n = read(d[i].fd, buf, chunk);
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (n > 0) {
                if (d[i].hlen < sizeof(d[i].head) - 1) {
                    size_t k = sizeof(d[i].head) - 1 - d[i].hlen;
                    memcpy(d[i].head + d[i].hlen, buf, (size_t)n < k ? (size_t)n : k);
                    d[i].hlen += (size_t)n < k ? (size_t)n : k;
                }
                d[i].got += (size_t)n;
                total += (size_t)n;
                if (!d[i].want)
                    find_length(&d[i]);
                if (!d[i].want || d[i].got < d[i].want)
                    continue;
                done++;
            }
            close(d[i].fd);              /* complete, or closed / failed early */
            d[i].fd = -1;
            left--;
        }
    }
    printf("slowread: %d of %d downloads complete, %zu bytes, %.1f s\n", done, conns, total, now() - t0);
    return done == conns ? 0 : 1;
}
