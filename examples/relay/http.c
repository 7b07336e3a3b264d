/* HTTP/1.1 message scanner: see http.h. */
#include "http.h"

#include <string.h>

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

/* Does the comma-separated list `v` hold the token `tok` (case-insensitive)? */
static int has_token(const char *v, size_t vlen, const char *tok)
{
    size_t i = 0;
    while (i < vlen) {
        while (i < vlen && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < vlen && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e > s && ci_eq(v + s, e - s, tok))
            return 1;
    }
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

/* Parses the start line and the headers that decide the framing. */
static int parse_headers(struct hmsg *m, const char *p, size_t hlen, int is_resp, int req_flags)
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

    int have_len = 0, chunked = 0;
    uint64_t clen = 0;
    const char *line = eol + 1, *end = p + hlen;
    while (line < end) {
        const char *e = memchr(line, '\n', (size_t)(end - line));
        if (!e)
            break;
        const char *colon = memchr(line, ':', (size_t)(e - line));
        if (colon) {
            size_t nlen = (size_t)(colon - line);
            const char *v = colon + 1, *ve = e;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            size_t vlen = (size_t)(ve - v);
            if (ci_eq(line, nlen, "content-length")) {
                uint64_t n = 0;
                if (vlen == 0 || vlen > 18)
                    return -1;
                for (size_t i = 0; i < vlen; i++) {
                    if (v[i] < '0' || v[i] > '9')
                        return -1;
                    n = n * 10 + (uint64_t)(v[i] - '0');
                }
                if (have_len && n != clen)
                    return -1;
                have_len = 1;
                clen = n;
            } else if (ci_eq(line, nlen, "transfer-encoding")) {
                if (has_token(v, vlen, "chunked"))
                    chunked = 1;
            } else if (ci_eq(line, nlen, "connection")) {
                if (has_token(v, vlen, "close"))
                    m->flags |= HF_CLOSE;
                else if (v10 && has_token(v, vlen, "keep-alive"))
                    m->flags &= (unsigned char)~HF_CLOSE;
            }
        }
        line = e + 1;
    }

    if (is_resp && ((m->status >= 100 && m->status < 200) || m->status == 204 || m->status == 304 ||
                    (req_flags & HF_HEAD))) {
        if (m->status >= 100 && m->status < 200) {
            if (m->status == 101)
                return -1;                  /* upgrades are not relayed */
            m->flags |= HF_INTERIM;
        }
        m->body = BODY_NONE;
    } else if (chunked) {
        m->body = BODY_CHUNKED;
        m->chunk = CS_SIZE0;
        m->left = 0;
    } else if (have_len) {
        m->body = clen ? BODY_LEN : BODY_NONE;
        m->left = clen;
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

int hmsg_scan(struct hmsg *m, const char *p, size_t len, size_t room, int is_resp, int req_flags)
{
    if (m->state == HM_HDR) {
        size_t h = http_header_len(p, len);
        if (!h)
            return len >= room ? -2 : 0;
        if (parse_headers(m, p, h, is_resp, req_flags) < 0)
            return -1;
        m->fwd = h;
        m->state = m->body == BODY_NONE ? HM_DONE : HM_BODY;
    }
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
