/* An HTTP/1.1 message scanner for a forwarding proxy: it finds where each
 * message ends in a byte stream, without copying or rewriting it. Headers
 * must fit in one buffer; bodies stream through (Content-Length, chunked,
 * or until the server closes). Shared by the relay, the test backend and
 * the test clients. */
#ifndef RELAY_HTTP_H
#define RELAY_HTTP_H

#include <stddef.h>
#include <stdint.h>

enum hm_state { HM_HDR, HM_BODY, HM_DONE };
enum hm_body { BODY_NONE, BODY_LEN, BODY_CHUNKED, BODY_EOF };

/* Flags of a message. */
#define HF_CLOSE    0x01   /* the connection closes after this message */
#define HF_HEAD     0x02   /* a HEAD request: its response has no body */
#define HF_INTERIM  0x04   /* a 1xx response: the real one follows */
#define HF_V10      0x08   /* HTTP/1.0 */

/* One message being scanned. `fwd` counts the bytes, from the first byte of
 * the buffer's data, that are known to belong to this message and may be
 * forwarded; bytes after them are not scanned yet (or belong to the next
 * message). The caller lowers `fwd` by what it sends. */
struct hmsg {
    unsigned char state;      /* enum hm_state */
    unsigned char body;       /* enum hm_body */
    unsigned char chunk;      /* chunk scanner state */
    unsigned char flags;      /* HF_* */
    unsigned short status;    /* response status code */
    uint64_t left;            /* body bytes, or chunk bytes, left to scan */
    size_t fwd;
};

static inline void hmsg_reset(struct hmsg *m)
{
    *m = (struct hmsg){ 0 };
}

/* Scans the `len` bytes at `p` (the buffer's data) past `m->fwd`. For a
 * response, `req_flags` are the flags of its request (HF_HEAD).
 * Returns 0, or -1 when the message is malformed, or -2 when its headers do
 * not fit in `room` bytes (the buffer is full without an end of headers). */
int hmsg_scan(struct hmsg *m, const char *p, size_t len, size_t room, int is_resp, int req_flags);

/* hmsg_scan for a message the relay forwards, in the buffer `area` of
 * `size` bytes holding `*data` bytes from `*head`. Once the headers are
 * whole, they are checked as hmsg_scan does and rewritten in place (the
 * bytes after them move, `*head` may become 0, `*data` changes): the
 * hop-by-hop fields are removed (Connection, the fields it names,
 * Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade), a request gets
 * `X-Forwarded-For: ..., <client>` (when `client` is not NULL) and
 * `Connection: keep-alive`, a response the relay's own Connection
 * (close when the request's flags have HF_CLOSE or the body is
 * close-delimited, keep-alive for an HTTP/1.0 client that keeps it).
 * The caller keeps HTTP_FWD_SLACK bytes of `size` free while the headers
 * come (-2 when they do not end before that, or the rewrite still does
 * not fit). Returns as hmsg_scan. */
#define HTTP_FWD_SLACK 128   /* the most the rewrite adds to a header block */
int hmsg_scan_fwd(struct hmsg *m, char *area, size_t *head, size_t *data, size_t size, int is_resp, int req_flags,
                  const char *client);

/* The peer address of socket `fd` as text in `buf` (`n` bytes), or NULL. */
const char *http_peer(int fd, char *buf, size_t n);

/* Length of the header block at `p` (through its empty line), or 0 when it
 * is not complete in `len` bytes. Accepts bare LF line ends. */
size_t http_header_len(const char *p, size_t len);

#endif
