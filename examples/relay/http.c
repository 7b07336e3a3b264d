/* HTTP/1.1 message scanner: see http.h. */
#include "http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

enum chunk_state {
    CS_SIZE0,       /* at the first hex digit of a chunk size */
    CS_SIZE,        /* in the hex digits */
    CS_EXT,         /* after the size: extensions, up to LF */
    CS_DATA,        /* `left` bytes of chunk data */
    CS_DATA_CR,     /* the CRLF after the data */
    CS_DATA_LF,
    CS_TRAILER,     /* at the start of a trailer line (or the final empty line) */
    CS_TRAILER_LINE,
    CS_LAST_LF,     /* the LF of the final empty line */
};

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static int ci_eq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    if (alen != blen)
        return 0;
    for (size_t i = 0; i < alen; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return 0;
    return 1;
}

/* The next item of the comma-separated list `v` from `*i` on, without its
 * surrounding blanks: its offset, its length in `*len` (0 for an empty
 * item); -1 at the end of the list. `*i` moves past the item. */
static long next_item(const char *v, size_t vlen, size_t *i, size_t *len)
{
    while (*i < vlen && (v[*i] == ' ' || v[*i] == '\t' || v[*i] == ','))
        (*i)++;
    if (*i >= vlen)
        return -1;
    size_t s = *i;
    while (*i < vlen && v[*i] != ',')
        (*i)++;
    size_t e = *i;
    while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
        e--;
    *len = e - s;
    return (long)s;
}

/* Does the comma-separated list `v` hold the token `tok` (case-insensitive)? */
static int has_token(const char *v, size_t vlen, const char *tok)
{
    size_t i = 0, len;
    long s;
    while ((s = next_item(v, vlen, &i, &len)) >= 0)
        if (len && ci_eq(v + s, len, tok))
            return 1;
    return 0;
}

size_t http_header_len(const char *p, size_t len)
{
    const char *q = p, *end = p + len;
    while ((q = memchr(q, '\n', (size_t)(end - q))) != NULL) {
        q++;
        if (q < end && *q == '\n')
            return (size_t)(q + 1 - p);
        if (q + 1 < end && q[0] == '\r' && q[1] == '\n')
            return (size_t)(q + 2 - p);
        if (q >= end)
            break;
    }
    return 0;
}

/* A tchar of RFC 9110 5.6.2: what a field name is made of. */
static int is_tchar(int c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* What parse_headers learns, beyond the hmsg, for the forwarding rewrite. */
struct hinfo {
    uint64_t clen;
    int have_len, multi_len;        /* a Content-Length; more than one value */
    size_t conn_len, xff_len;
    char conn[256];                 /* the Connection values, comma-joined */
    char xff[1024];                 /* the X-Forwarded-For values, comma-joined */
};

/* Appends `v` to the comma-joined list `dst` (`*dlen` used of `cap`). */
static int join(char *dst, size_t *dlen, size_t cap, const char *v, size_t vlen)
{
    if (!vlen)
        return 0;
    if (*dlen + vlen + 2 > cap)
        return -1;
    if (*dlen) {
        memcpy(dst + *dlen, ", ", 2);
        *dlen += 2;
    }
    memcpy(dst + *dlen, v, vlen);
    *dlen += vlen;
    return 0;
}

/* Parses the start line and the headers, and enforces the framing rules
 * of RFC 9112 a forwarding intermediary needs (docs/RELAY.md, "HTTP
 * framing"). -1: malformed; -2: a list the relay keeps too long. */
static int parse_headers(struct hmsg *m, struct hinfo *hi, const char *p, size_t hlen, int is_resp, int req_flags)
{
    const char *eol = memchr(p, '\n', hlen);
    size_t l = (size_t)(eol - p);
    int v10;

    if (is_resp) {
        /* HTTP/1.x SP 3DIGIT */
        if (l < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
            return -1;
        v10 = p[7] == '0';
        int st = 0;
        for (int i = 9; i < 12; i++) {
            if (p[i] < '0' || p[i] > '9')
                return -1;
            st = st * 10 + (p[i] - '0');
        }
        m->status = (unsigned short)st;
    } else {
        /* METHOD SP URI SP HTTP/1.x */
        const char *sp = memchr(p, ' ', l);
        if (!sp || sp == p || l < 10)
            return -1;
        const char *ver = eol;
        while (ver > p && (ver[-1] == '\r'))
            ver--;
        if (ver - p < 8 || memcmp(ver - 8, "HTTP/1.", 7) != 0)
            return -1;
        v10 = ver[-1] == '0';
        if (sp - p == 4 && memcmp(p, "HEAD", 4) == 0)
            m->flags |= HF_HEAD;
    }
    if (v10)
        m->flags |= HF_V10 | HF_CLOSE;

    int te_seen = 0, te_chunked_last = 0;
    const char *line = eol + 1, *end = p + hlen;
    while (line < end) {
        const char *e = memchr(line, '\n', (size_t)(end - line));
        if (!e)
            break;
        const char *ce = e;                 /* the line's content, without CR LF */
        if (ce > line && ce[-1] == '\r')
            ce--;
        if (ce == line)
            break;                          /* the empty line that ends the block */
        /* Every header line is `name ":" OWS value OWS`: no obs-fold
         * continuation (a line starting with SP or HT), no line without a
         * colon, nothing but tchars in the name (so no space before the
         * colon), no control character but HT in the value. */
        const char *colon = memchr(line, ':', (size_t)(ce - line));
        if (!colon || colon == line)
            return -1;
        for (const char *q = line; q < colon; q++)
            if (!is_tchar((unsigned char)*q))
                return -1;
        for (const char *q = colon + 1; q < ce; q++) {
            unsigned char c = (unsigned char)*q;
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return -1;
        }
        size_t nlen = (size_t)(colon - line);
        const char *v = colon + 1, *ve = ce;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t vlen = (size_t)(ve - v);
        if (ci_eq(line, nlen, "content-length")) {
            /* One value, or a list of the same value (RFC 9110 8.6). */
            size_t i = 0;
            do {
                uint64_t n = 0;
                size_t d = 0;
                while (i < vlen && (v[i] == ' ' || v[i] == '\t'))
                    i++;
                while (i < vlen && v[i] >= '0' && v[i] <= '9') {
                    if (++d > 18)
                        return -1;
                    n = n * 10 + (uint64_t)(v[i++] - '0');
                }
                while (i < vlen && (v[i] == ' ' || v[i] == '\t'))
                    i++;
                if (!d || (i < vlen && v[i] != ','))
                    return -1;
                if (hi->have_len && n != hi->clen)
                    return -1;              /* differing lengths */
                if (hi->have_len)
                    hi->multi_len = 1;
                hi->have_len = 1;
                hi->clen = n;
            } while (i++ < vlen);
        } else if (ci_eq(line, nlen, "transfer-encoding")) {
            /* The codings of every Transfer-Encoding line, in order:
             * chunked may only be the last one, once. */
            size_t i = 0, len;
            long s;
            while ((s = next_item(v, vlen, &i, &len)) >= 0) {
                if (!len)
                    continue;
                if (te_chunked_last)
                    return -1;              /* a coding after chunked */
                te_seen = 1;
                te_chunked_last = ci_eq(v + s, len, "chunked");
            }
            if (!vlen)
                return -1;
        } else if (ci_eq(line, nlen, "connection")) {
            if (has_token(v, vlen, "close"))
                m->flags |= HF_CLOSE;
            else if (v10 && has_token(v, vlen, "keep-alive"))
                m->flags &= (unsigned char)~HF_CLOSE;
            if (join(hi->conn, &hi->conn_len, sizeof(hi->conn), v, vlen) < 0)
                return -2;
        } else if (!is_resp && ci_eq(line, nlen, "x-forwarded-for")) {
            if (join(hi->xff, &hi->xff_len, sizeof(hi->xff), v, vlen) < 0)
                return -2;
        }
        line = e + 1;
    }

    /* Transfer-Encoding with Content-Length: the relay's choice is to
     * reject the message (400 for a request, 502 for a response) rather
     * than forward one of the two framings, since the two may disagree
     * on where the message ends (request smuggling). A request's
     * Transfer-Encoding must end in chunked (RFC 9112 6.3: else its
     * length cannot be known), and an HTTP/1.0 request may not carry
     * one (RFC 9112 6.1). A response's that does not end in chunked is
     * read until the server closes (RFC 9112 6.3). */
    if (te_seen && hi->have_len)
        return -1;
    if (te_seen && !is_resp && (!te_chunked_last || v10))
        return -1;

    if (is_resp && ((m->status >= 100 && m->status < 200) || m->status == 204 || m->status == 304 ||
                    (req_flags & HF_HEAD))) {
        if (m->status >= 100 && m->status < 200) {
            if (m->status == 101)
                return -1;                  /* upgrades are not relayed */
            m->flags |= HF_INTERIM;
        }
        m->body = BODY_NONE;
    } else if (te_seen && te_chunked_last) {
        m->body = BODY_CHUNKED;
        m->chunk = CS_SIZE0;
        m->left = 0;
    } else if (hi->have_len) {
        m->body = hi->clen ? BODY_LEN : BODY_NONE;
        m->left = hi->clen;
    } else if (is_resp) {
        m->body = BODY_EOF;
        m->flags |= HF_CLOSE;
    } else {
        m->body = BODY_NONE;
    }
    return 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Runs the chunk scanner over p[m->fwd..len). */
static int scan_chunked(struct hmsg *m, const char *p, size_t len)
{
    size_t i = m->fwd;
    while (i < len && m->state != HM_DONE) {
        int c = (unsigned char)p[i];
        switch (m->chunk) {
        case CS_SIZE0:
        case CS_SIZE: {
            int h = hexval(c);
            if (h >= 0) {
                if (m->left >> 56)
                    return -1;          /* absurd chunk size */
                m->left = m->left * 16 + (uint64_t)h;
                m->chunk = CS_SIZE;
                i++;
            } else if (m->chunk == CS_SIZE0) {
                return -1;
            } else {
                m->chunk = CS_EXT;
            }
            break;
        }
        case CS_EXT:
            i++;
            if (c == '\n')
                m->chunk = m->left ? CS_DATA : CS_TRAILER;
            break;
        case CS_DATA: {
            size_t n = len - i;
            if ((uint64_t)n > m->left)
                n = (size_t)m->left;
            i += n;
            m->left -= n;
            if (!m->left)
                m->chunk = CS_DATA_CR;
            break;
        }
        case CS_DATA_CR:
            if (c == '\r') {
                m->chunk = CS_DATA_LF;
            } else if (c == '\n') {
                m->chunk = CS_SIZE0;
            } else {
                return -1;
            }
            i++;
            break;
        case CS_DATA_LF:
            if (c != '\n')
                return -1;
            i++;
            m->chunk = CS_SIZE0;
            break;
        case CS_TRAILER:
            if (c == '\r') {
                i++;
                m->chunk = CS_LAST_LF;
            } else if (c == '\n') {
                i++;
                m->state = HM_DONE;
            } else {
                m->chunk = CS_TRAILER_LINE;
            }
            break;
        case CS_TRAILER_LINE:
            i++;
            if (c == '\n')
                m->chunk = CS_TRAILER;
            break;
        case CS_LAST_LF:
            if (c != '\n')
                return -1;
            i++;
            m->state = HM_DONE;
            break;
        default:
            return -1;
        }
    }
    m->fwd = i;
    return 0;
}

/* Scans the body bytes p[m->fwd..len). */
static int scan_body(struct hmsg *m, const char *p, size_t len)
{
    if (m->state != HM_BODY || m->fwd >= len)
        return 0;
    switch (m->body) {
    case BODY_LEN: {
        size_t n = len - m->fwd;
        if ((uint64_t)n > m->left)
            n = (size_t)m->left;
        m->fwd += n;
        m->left -= n;
        if (!m->left)
            m->state = HM_DONE;
        return 0;
    }
    case BODY_CHUNKED:
        return scan_chunked(m, p, len);
    case BODY_EOF:
        m->fwd = len;
        return 0;
    default:
        return -1;
    }
}

int hmsg_scan(struct hmsg *m, const char *p, size_t len, size_t room, int is_resp, int req_flags)
{
    if (m->state == HM_HDR) {
        struct hinfo hi;
        size_t h = http_header_len(p, len);
        if (!h)
            return len >= room ? -2 : 0;
        hi.have_len = hi.multi_len = 0;
        hi.conn_len = hi.xff_len = 0;
        int r = parse_headers(m, &hi, p, h, is_resp, req_flags);
        if (r < 0)
            return r;
        m->fwd = h;
        m->state = m->body == BODY_NONE ? HM_DONE : HM_BODY;
    }
    return scan_body(m, p, len);
}

/* Hop-by-hop fields (RFC 9110 7.6.1), never forwarded. */
static const char *const hop_by_hop[] = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
};

/* Is the field named p[0..n) one the relay drops from what it forwards? */
static int dropped(const struct hinfo *hi, const char *p, size_t n, int is_resp)
{
    for (size_t i = 0; i < sizeof(hop_by_hop) / sizeof(hop_by_hop[0]); i++)
        if (ci_eq(p, n, hop_by_hop[i]))
            return 1;
    if (!is_resp && ci_eq(p, n, "x-forwarded-for"))
        return 1;                           /* re-added, with the client's address */
    if (hi->multi_len && ci_eq(p, n, "content-length"))
        return 1;                           /* re-added once */
    /* A field the Connection header names is hop-by-hop too, but never
     * the ones the framing or the routing rest on. */
    if (ci_eq(p, n, "content-length") || ci_eq(p, n, "transfer-encoding") || ci_eq(p, n, "host"))
        return 0;
    char name[64];
    if (n >= sizeof(name) || !hi->conn_len)
        return 0;
    memcpy(name, p, n);
    name[n] = 0;
    return has_token(hi->conn, hi->conn_len, name);
}

int hmsg_scan_fwd(struct hmsg *m, char *area, size_t *head, size_t *data, size_t size, int is_resp, int req_flags,
                  const char *client)
{
    if (m->state == HM_HDR) {
        struct hinfo hi;
        char *p = area + *head;
        size_t h = http_header_len(p, *data);
        if (!h)
            return *data + HTTP_FWD_SLACK >= size ? -2 : 0;
        hi.have_len = hi.multi_len = 0;
        hi.conn_len = hi.xff_len = 0;
        int r = parse_headers(m, &hi, p, h, is_resp, req_flags);
        if (r < 0)
            return r;

        /* The fields the relay adds, before the empty line. */
        char add[sizeof(hi.xff) + 160];
        size_t an = 0;
        int n;
        if (!is_resp) {
            if (client) {
                n = snprintf(add, sizeof(add), "X-Forwarded-For: %.*s%s%s\r\n", (int)hi.xff_len, hi.xff,
                             hi.xff_len ? ", " : "", client);
                an += (size_t)n;
            }
            /* Toward the server: its connections are kept for reuse. */
            n = snprintf(add + an, sizeof(add) - an, "Connection: keep-alive\r\n");
            an += (size_t)n;
        } else if (!(m->flags & HF_INTERIM)) {
            /* Toward the client: the relay's own decision, from the
             * request alone, except that a close-delimited response ends
             * with the client connection (the relay does not re-frame it). */
            const char *c = (req_flags & HF_CLOSE) || m->body == BODY_EOF ? "close"
                            : (req_flags & HF_V10)                        ? "keep-alive"
                                                                          : NULL;
            if (c) {
                n = snprintf(add + an, sizeof(add) - an, "Connection: %s\r\n", c);
                an += (size_t)n;
            }
        }
        if (hi.multi_len) {
            n = snprintf(add + an, sizeof(add) - an, "Content-Length: %llu\r\n", (unsigned long long)hi.clen);
            an += (size_t)n;
        }

        /* Drop the hop-by-hop lines in place: the kept ones slide down. */
        const char *eol = memchr(p, '\n', h);
        size_t w = (size_t)(eol + 1 - p), rd = w;
        while (rd < h) {
            const char *e = memchr(p + rd, '\n', h - rd);
            size_t ll = (size_t)(e + 1 - (p + rd));
            const char *colon = memchr(p + rd, ':', ll);
            if (!colon)
                break;                      /* the empty line */
            if (!dropped(&hi, p + rd, (size_t)(colon - (p + rd)), is_resp)) {
                memmove(p + w, p + rd, ll);
                w += ll;
            }
            rd += ll;
        }
        size_t nh = w + an + 2, rest = *data - h;
        if (*head + nh + rest > size) {
            if (nh + rest > size)
                return -2;
            memmove(area, p, *data);
            *head = 0;
            p = area;
        }
        memmove(p + nh, p + h, rest);       /* first: the added fields may cover it */
        memcpy(p + w, add, an);
        memcpy(p + w + an, "\r\n", 2);
        *data = nh + rest;
        m->fwd = nh;
        m->state = m->body == BODY_NONE ? HM_DONE : HM_BODY;
    }
    return scan_body(m, area + *head, *data);
}

const char *http_peer(int fd, char *buf, size_t n)
{
    struct sockaddr_storage a;
    socklen_t alen = sizeof(a);
    if (getpeername(fd, (struct sockaddr *)&a, &alen) < 0)
        return NULL;
    if (a.ss_family == AF_INET)
        return inet_ntop(AF_INET, &((struct sockaddr_in *)&a)->sin_addr, buf, (socklen_t)n);
    if (a.ss_family == AF_INET6)
        return inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&a)->sin6_addr, buf, (socklen_t)n);
    return NULL;
}
