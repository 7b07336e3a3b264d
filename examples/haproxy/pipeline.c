/* pipeline: HTTP/1.1 pipelining check for make test-haproxy.
 *
 *   pipeline PORT SIZE...
 *
 * Opens one connection to 127.0.0.1:PORT, writes one `GET /size/SIZE`
 * request per argument in a single write (the last one with `connection:
 * close`), reads everything until the server closes, and checks that the
 * answers come in order, each `HTTP/1.1 200` with a Content-Length of SIZE
 * and the body of examples/relay/pattern.h. Exit 0 when all are right, 1
 * otherwise (one line says what was wrong). */
#include "../relay/pattern.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

static int fail(const char *what, int i)
{
    fprintf(stderr, "pipeline: response %d: %s\n", i + 1, what);
    return 1;
}

/* The value of header `name` in the block [p, end), or -1. */
static long header_value(const char *p, const char *end, const char *name)
{
    size_t n = strlen(name);

    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            break;
        if ((size_t)(eol - p) > n && !strncasecmp(p, name, n) && p[n] == ':')
            return strtol(p + n + 1, NULL, 10);
        p = eol + 1;
    }
    return -1;
}

int main(int argc, char **argv)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    size_t cap = 1 << 20, len = 0, off = 0;
    char *req, *in;
    size_t rlen = 0;
    int fd, i;

    if (argc < 3) {
        fprintf(stderr, "usage: pipeline PORT SIZE...\n");
        return 2;
    }
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    req = malloc((size_t)argc * 128);
    in = malloc(cap);
    if (!req || !in)
        return 2;
    for (i = 2; i < argc; i++)
        rlen += (size_t)sprintf(req + rlen, "GET /size/%s HTTP/1.1\r\nhost: t\r\n%s\r\n", argv[i],
                                i == argc - 1 ? "connection: close\r\n" : "");
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        perror("pipeline: connect");
        return 1;
    }
    if (write(fd, req, rlen) != (ssize_t)rlen) {
        perror("pipeline: write");
        return 1;
    }
    for (;;) {
        ssize_t n;

        if (len == cap) {
            cap *= 2;
            in = realloc(in, cap);
            if (!in)
                return 2;
        }
        n = read(fd, in + len, cap - len);
        if (n < 0) {
            perror("pipeline: read");
            return 1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);

    for (i = 0; i < argc - 2; i++) {
        long want = strtol(argv[i + 2], NULL, 10), got;
        const char *p = in + off, *end = in + len, *hend;

        if (end - p < 12 || memcmp(p, "HTTP/1.1 200", 12) != 0)
            return fail("not an HTTP/1.1 200 (missing, or out of order)", i);
        hend = NULL;
        for (const char *q = p; q + 4 <= end; q++)
            if (!memcmp(q, "\r\n\r\n", 4)) {
                hend = q + 4;
                break;
            }
        if (!hend)
            return fail("headers never end", i);
        got = header_value(p, hend, "content-length");
        if (got != want)
            return fail("content-length is not the size asked", i);
        if (end - hend < want)
            return fail("body cut short", i);
        for (long k = 0; k < want; k++)
            if ((unsigned char)hend[k] != pattern_byte((size_t)k))
                return fail("body differs from the pattern", i);
        off = (size_t)(hend - in) + (size_t)want;
    }
    if (off != len)
        return fail("bytes after the last response", argc - 3);
    printf("pipeline: %d pipelined responses in order, bodies right (%zu bytes read)\n", argc - 2, len);
    free(req);
    free(in);
    return 0;
}
