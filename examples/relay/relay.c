/* relay: an HTTP/1.1 reverse proxy on bufpool.
 *
 * One epoll loop per worker thread, each with its own listening socket
 * (SO_REUSEPORT) and its own sessions. A session is a client connection
 * plus the transaction in flight on it:
 *
 *   client --req buffer--> server connection --res buffer--> client
 *
 * The request buffer is taken with b_alloc_margin_fair(&req, reserve), the
 * response buffer with margin 0, each only when bytes arrive and behind the
 * sessions already waiting, and each is given back with b_release (which
 * wakes every waiter that can now have one) as soon as it is empty. A
 * session that gets no buffer queues its own struct buffer_wait with its
 * margin; the callback puts it back in its worker's run queue (or, from
 * another thread, in its worker's inbox, the buffer moved along with
 * b_move). No timer retries anyone: releases wake every waiter they can.
 * A request whose headers are in needs one of the server's maxconn slots:
 * without one it waits in the server's FIFO queue, holding its request
 * buffer, as in HAProxy. Server connections are kept alive and reused by
 * the worker that opened them.
 *
 * With the reserve, responses always find a buffer, so the session holding
 * the server always finishes and hands the slot on. With --req-margin 0,
 * queued requests can take every buffer while the slot holder waits for a
 * response buffer: the deadlock the reserve exists for; the watchdog
 * (ctl.c) reports it. */
#include "relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct config cfg;
struct server server = { .lock = PTHREAD_MUTEX_INITIALIZER };
struct worker *workers;
struct pool_head *pool_conn, *pool_sess;
atomic_int stopping;
atomic_int draining;
long long drain_deadline;
static atomic_long nsessions;             /* every worker's, against --max-clients */
atomic_ulong purge_epoch;

static _Thread_local struct worker *cur_worker;

/* ---------------------------------------------------------------- queues */

static void bufwait_forget(struct session *s);
static void timer_del(struct session *s);
static void timer_update(struct session *s);
static void listener_resume(struct worker *w);

static void runq_add(struct worker *w, struct session *s)
{
    if (s->in_runq)
        return;
    s->in_runq = 1;
    s->rnext = NULL;
    if (w->rq_tail)
        w->rq_tail->rnext = s;
    else
        w->rq_head = s;
    w->rq_tail = s;
    w->rq_len++;
}

static struct session *runq_pop(struct worker *w)
{
    struct session *s = w->rq_head;
    if (!s)
        return NULL;
    w->rq_head = s->rnext;
    if (!w->rq_head)
        w->rq_tail = NULL;
    w->rq_len--;
    s->in_runq = 0;
    return s;
}

static void wake_pipe(struct worker *w)
{
    if (!atomic_exchange(&w->wake_pending, 1)) {
        ssize_t r = write(w->wake_wr, "", 1);
        (void)r;                            /* a full pipe is already a wake-up */
    }
}

void wake_worker(struct worker *w)
{
    wake_pipe(w);
}

/* Links `s` at the tail of its owner's inbox; the inbox lock is held. */
static void inbox_link_locked(struct session *s)
{
    struct worker *w = s->w;

    if (s->in_inbox)
        return;
    s->in_inbox = 1;
    s->inext = NULL;
    s->iprev = w->itail;
    if (w->itail)
        w->itail->inext = s;
    else
        w->ihead = s;
    w->itail = s;
}

/* From another thread: into the owner's inbox, which it drains on its wake pipe. */
static void inbox_push(struct session *s)
{
    pthread_mutex_lock(&s->w->ilock);
    inbox_link_locked(s);
    pthread_mutex_unlock(&s->w->ilock);
    wake_pipe(s->w);
}

/* Sessions of the inbox into the run queue, in order; a buffer a callback
 * took for one becomes its request or response buffer (b_move). One it no
 * longer needs goes back once the lock is let go: b_release runs
 * callbacks, which take inbox locks. */
static void inbox_drain(struct worker *w)
{
    struct buffer spare[64];
    int nspare = 0, freed = 0;

    pthread_mutex_lock(&w->ilock);
    while (w->ihead) {
        struct session *s = w->ihead;
        w->ihead = s->inext;
        s->in_inbox = 0;
        if (s->gift.size) {
            if (b_move(s->gift_res ? &s->res : &s->req, &s->gift)) {
                s->gift_adopted = 1;
            } else if (nspare < 64) {
                spare[nspare] = BUF_NULL;   /* it got one meanwhile */
                b_move(&spare[nspare++], &s->gift);
            } else {
                b_free(&s->gift);           /* offers nothing: safe under the lock */
                freed = 1;
            }
        }
        runq_add(w, s);
    }
    w->itail = NULL;
    pthread_mutex_unlock(&w->ilock);
    for (int i = 0; i < nspare; i++)
        b_release(&spare[i]);
    if (freed)
        offer_buffers_margin(NULL);
}

/* A closing session leaves its owner's inbox, and gives back a buffer a
 * callback took for it. */
static void inbox_remove(struct session *s)
{
    struct worker *w = s->w;
    struct buffer b = BUF_NULL;

    pthread_mutex_lock(&w->ilock);
    if (s->in_inbox) {
        if (s->iprev)
            s->iprev->inext = s->inext;
        else
            w->ihead = s->inext;
        if (s->inext)
            s->inext->iprev = s->iprev;
        else
            w->itail = s->iprev;
        s->in_inbox = 0;
    }
    b_move(&b, &s->gift);                   /* NULL when there is none */
    pthread_mutex_unlock(&w->ilock);
    b_release(&b);
}

/* Puts `s` in its worker's run queue, from whichever thread. */
static void wake_session(struct session *s)
{
    if (s->w == cur_worker)
        runq_add(s->w, s);
    else
        inbox_push(s);
}

/* The buffer_wait callback: called by a release (b_release), on the thread
 * that releases, with no lock of the library held, and only when the
 * session's margin fits what can be had. On the session's own thread it
 * takes the buffer the session waits for, with the margin the session
 * itself uses (it was queued with it), as HAProxy's callbacks do; when it
 * cannot (another thread took it first), it returns 0 and the session
 * keeps its place in the queue. From another thread the session cannot be
 * touched: the buffer is taken into its hand-over slot and the session sent
 * to its worker. */
static int sess_buf_ready(void *target)
{
    struct session *s = target;
    struct worker *w = cur_worker;

    if (!w || s->w != w) {
        /* Another worker's session: the buffer is taken here, under the
         * owner's inbox lock, and handed over with the session. */
        struct worker *ow = s->w;
        int ok = 1;
        pthread_mutex_lock(&ow->ilock);
        if (!s->gift.size) {
            unsigned char res = s->wait_res_shared;
            if (!b_alloc_margin(&s->gift, res ? 0 : cfg.req_margin))
                ok = 0;
            else
                s->gift_res = res;
        }
        if (ok)
            inbox_link_locked(s);
        pthread_mutex_unlock(&ow->ilock);
        if (!ok) {
            if (w)
                INC(w, offer_declined);
            return 0;
        }
        if (w)
            INC(w, foreign_wakes);
        wake_pipe(ow);
        return 1;
    }
    struct buffer *b = s->wait_res ? &s->res : &s->req;
    if (!b->size && !b_alloc_margin(b, s->wait_res ? 0 : cfg.req_margin)) {
        INC(w, offer_declined);
        return 0;
    }
    INC(w, offer_wakes);
    bufwait_forget(s);                      /* it leaves the queue: we return 1 */
    runq_add(w, s);
    return 1;
}

/* ------------------------------------------------------------ the server */

/* Takes a slot, or queues `s` for one (0). */
static int server_acquire(struct session *s)
{
    int got = 0;

    pthread_mutex_lock(&server.lock);
    if (server.cur < cfg.maxconn && !server.qhead) {
        server.cur++;
        got = 1;
    } else {
        s->in_srvq = 1;
        s->qnext = NULL;
        s->qprev = server.qtail;
        if (server.qtail)
            server.qtail->qnext = s;
        else
            server.qhead = s;
        server.qtail = s;
        server.qlen++;
    }
    pthread_mutex_unlock(&server.lock);
    return got;
}

/* Gives a slot back: to the first queued session, or to the pool of slots.
 * Called with the server's lock held. The woken session is pushed to its
 * inbox under that lock, so that it cannot be freed in between. */
static void server_handoff_locked(void)
{
    struct session *n = server.qhead;

    if (!n) {
        server.cur--;
        return;
    }
    server.qhead = n->qnext;
    if (server.qhead)
        server.qhead->qprev = NULL;
    else
        server.qtail = NULL;
    server.qlen--;
    n->in_srvq = 0;
    n->granted = 1;
    wake_session(n);
}

static void server_release(void)
{
    pthread_mutex_lock(&server.lock);
    server_handoff_locked();
    pthread_mutex_unlock(&server.lock);
}

/* A session that waited for a slot: was it given one? */
static int server_take_grant(struct session *s)
{
    int g;

    pthread_mutex_lock(&server.lock);
    g = s->granted;
    s->granted = 0;
    pthread_mutex_unlock(&server.lock);
    return g;
}

/* A closing session that waited for a slot leaves the queue, or passes on
 * the slot it was just given. */
static void server_cancel(struct session *s)
{
    pthread_mutex_lock(&server.lock);
    if (s->in_srvq) {
        if (s->qprev)
            s->qprev->qnext = s->qnext;
        else
            server.qhead = s->qnext;
        if (s->qnext)
            s->qnext->qprev = s->qprev;
        else
            server.qtail = s->qprev;
        server.qlen--;
        s->in_srvq = 0;
    } else if (s->granted) {
        s->granted = 0;
        server_handoff_locked();
    }
    pthread_mutex_unlock(&server.lock);
}

/* ----------------------------------------------------------- connections */

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void conn_close(struct conn *c)
{
    close(c->fd);
    pool_free(pool_conn, c);
}

static struct conn *conn_new(struct worker *w, int fd, int kind, struct session *s)
{
    struct conn *c = pool_alloc(pool_conn);
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET };

    if (!c)
        return NULL;
    c->fd = fd;
    c->kind = (unsigned char)kind;
    c->flags = 0;
    c->sess = s;
    c->next = NULL;
    ev.data.ptr = c;
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        pool_free(pool_conn, c);
        return NULL;
    }
    return c;
}

/* Gives `s` a server connection: an idle one of this worker, or a new one. */
static int srv_attach(struct session *s)
{
    struct worker *w = s->w;
    struct conn *c = w->idle_srv;
    int one = 1;

    if (c) {
        w->idle_srv = c->next;
        w->n_idle_srv--;
        c->next = NULL;
        c->sess = s;
        s->srv = c;
        return 0;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    if (set_nonblock(fd) < 0 || setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
        close(fd);
        return -1;
    }
    int r = connect(fd, (struct sockaddr *)&cfg.server_addr, sizeof(cfg.server_addr));
    if (r < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    c = conn_new(w, fd, CK_SRV, s);
    if (!c) {
        close(fd);
        return -1;
    }
    c->flags = r == 0 ? CF_WR : CF_CONNECTING;
    s->srv = c;
    INC(w, srv_connects);
    return 0;
}

/* Detaches the server connection from `s`: kept for reuse, or closed. */
static void srv_detach(struct session *s, int reuse)
{
    struct worker *w = s->w;
    struct conn *c = s->srv;

    s->srv = NULL;
    c->sess = NULL;
    if (reuse && w->n_idle_srv < (unsigned)cfg.maxconn && !(c->flags & (CF_EOF | CF_ERR | CF_RD))) {
        c->next = w->idle_srv;
        w->idle_srv = c;
        w->n_idle_srv++;
    } else {
        conn_close(c);
    }
}

/* An idle server connection became readable: the server closed it. */
static void srv_idle_event(struct worker *w, struct conn *c)
{
    for (struct conn **pp = &w->idle_srv; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            w->n_idle_srv--;
            conn_close(c);
            return;
        }
    }
}

/* -------------------------------------------------------------- sessions */

static void list_add(struct session **head, struct session *s, size_t next_off, size_t prev_off)
{
    struct session **nx = (struct session **)((char *)s + next_off);
    struct session **pv = (struct session **)((char *)s + prev_off);

    *pv = NULL;
    *nx = *head;
    if (*head)
        *(struct session **)((char *)*head + prev_off) = s;
    *head = s;
}

static void list_del(struct session **head, struct session *s, size_t next_off, size_t prev_off)
{
    struct session *nx = *(struct session **)((char *)s + next_off);
    struct session *pv = *(struct session **)((char *)s + prev_off);

    if (pv)
        *(struct session **)((char *)pv + next_off) = nx;
    else
        *head = nx;
    if (nx)
        *(struct session **)((char *)nx + prev_off) = pv;
}

#define ALL_ADD(w, s)  list_add(&(w)->all, s, offsetof(struct session, anext), offsetof(struct session, aprev))
#define ALL_DEL(w, s)  list_del(&(w)->all, s, offsetof(struct session, anext), offsetof(struct session, aprev))

/* The session is no longer queued for a buffer (the owner's bookkeeping). */
static void bufwait_forget(struct session *s)
{
    if (!s->bufwait)
        return;
    s->bufwait = 0;
    ADD(s->w, bufwaiters, -1);
}

static void bufwait_done(struct session *s)
{
    if (!s->bufwait)
        return;
    b_dequeue(&s->bw);
    bufwait_forget(s);
}

/* A buffer for `s`: with `margin` buffers left to others after it and
 * nobody waiting ahead of it, or the session queues its buffer_wait in
 * class `crit` with that margin. Queueing answers 2 when a buffer is there
 * for it after all (a release came between the failure and the queueing):
 * it claims it at once. */
static int sess_alloc(struct session *s, struct buffer *b, int margin, unsigned crit)
{
    if (b->size)
        return 1;
    if (!b_alloc_margin_fair(b, margin)) {
        int res = b == &s->res;
        INC(s->w, buf_fail);
        if (s->bufwait && s->wait_res != res)
            bufwait_done(s);                /* it waited for the other buffer */
        if (!s->bufwait) {
            s->bufwait = 1;
            s->wait_res = (unsigned char)res;
            if (cfg.threads > 1) {          /* for a callback on another thread */
                pthread_mutex_lock(&s->w->ilock);
                s->wait_res_shared = (unsigned char)res;
                pthread_mutex_unlock(&s->w->ilock);
            }
            ADD(s->w, bufwaiters, 1);
        }
        if (b_queue_margin(crit, &s->bw, margin) != 2 || !b_alloc_margin(b, margin))
            return 0;
    }
    bufwait_done(s);
    return 1;
}

/* An empty buffer goes back at once, to whoever waits for it. */
static void sess_release(struct buffer *b)
{
    if (b->size && !b->data)
        b_release(b);
}

/* Reads from `c` into `*b`. 1: bytes came; 0: nothing now (no buffer, no
 * room, EAGAIN, EOF, which sets CF_EOF); -1: error. */
static int sess_recv(struct session *s, struct conn *c, struct buffer *b, int margin, unsigned crit)
{
    if (!sess_alloc(s, b, margin, crit))
        return 0;
    /* While headers come, HTTP_FWD_SLACK bytes stay free for their rewrite. */
    size_t slack = (b == &s->req ? s->rq.state : s->rs.state) == HM_HDR ? HTTP_FWD_SLACK : 0;
    if (b->head && b->head + b->data + slack >= b->size) {
        memmove(b->area, b->area + b->head, b->data);
        b->head = 0;
    }
    size_t room = b->size - b->head - b->data;
    room = room > slack ? room - slack : 0;
    if (!room)
        return 0;
    ssize_t n = recv(c->fd, b->area + b->head + b->data, room, 0);
    if (n > 0) {
        b->data += (size_t)n;
        if ((size_t)n < room && !(c->flags & CF_HUP))
            c->flags &= (unsigned char)~CF_RD;  /* drained: the next bytes bring an edge */
        return 1;
    }
    if (n == 0) {
        c->flags = (unsigned char)((c->flags & ~CF_RD) | CF_EOF);
        return 0;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        c->flags &= (unsigned char)~CF_RD;
        return 0;
    }
    return errno == EINTR ? 0 : -1;
}

/* Sends the first `*fwd` bytes of `*b` to `c`. 1: some went; 0: none; -1: error. */
static int sess_send(struct conn *c, struct buffer *b, size_t *fwd)
{
    ssize_t n = send(c->fd, b->area + b->head, *fwd, MSG_NOSIGNAL);
    if (n > 0) {
        if ((size_t)n < *fwd)
            c->flags &= (unsigned char)~CF_WR;
        b->head += (size_t)n;
        b->data -= (size_t)n;
        *fwd -= (size_t)n;
        if (!b->data)
            b->head = 0;
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        c->flags &= (unsigned char)~CF_WR;
        return 0;
    }
    return n < 0 && errno == EINTR ? 0 : -1;
}

/* An answer of our own, when nothing of the server's was sent yet. */
static void reply_error(struct session *s, int code)
{
    static const char r400[] = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    static const char r431[] =
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    static const char r502[] = "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    static const char r503[] = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    static const char r408[] = "HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    static const char r504[] = "HTTP/1.1 504 Gateway Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    const char *m = code == 400 ? r400 : code == 431 ? r431 : code == 502 ? r502 : code == 408 ? r408 :
                    code == 504 ? r504 : r503;
    ssize_t r = send(s->cli->fd, m, strlen(m), MSG_NOSIGNAL);

    (void)r;                                /* best effort: the connection closes next */
    INC(s->w, errors);
}

static void session_free(struct session *s)
{
    ADD(s->w, sessions, -1);
    pool_free(pool_sess, s);
}

/* Ends a session from its own worker: nothing else may refer to it after. */
static void session_close(struct session *s)
{
    struct worker *w = s->w;
    int held = s->req.size || s->res.size;

    if (s->slot == SLOT_WAIT)
        server_cancel(s);
    else if (s->slot == SLOT_HELD)
        server_release();
    s->slot = SLOT_NONE;
    if (s->srv) {
        s->srv->sess = NULL;
        conn_close(s->srv);
        s->srv = NULL;
    }
    bufwait_done(s);                        /* waits for a callback running elsewhere */
    inbox_remove(s);
    b_free(&s->req);
    b_free(&s->res);
    if (s->active)
        ADD(w, active, -1);
    timer_del(s);
    conn_close(s->cli);
    ALL_DEL(w, s);
    atomic_fetch_sub_explicit(&nsessions, 1, memory_order_relaxed);
    if (w->lpaused)
        listener_resume(w);                 /* a descriptor and a client slot came back */
    if (held)
        offer_buffers_margin(NULL);         /* the b_frees above, offered once the session is gone */
    if (s->in_runq)
        s->dead = 1;                        /* freed when the run queue gets to it */
    else
        session_free(s);
}

/* Runs a session as far as it can go without waiting. */
static void session_run(struct session *s)
{
    struct worker *w = s->w;
    struct conn *cli = s->cli;
    int progress, r;

    if (s->slot == SLOT_WAIT && server_take_grant(s))
        s->slot = SLOT_HELD;
    if (s->gift_adopted) {
        s->gift_adopted = 0;                /* woken with its buffer: out of the queue */
        bufwait_done(s);
    }
    do {
        progress = 0;

        /* 1. The client's request into the request buffer (margin: the reserve). */
        if (s->rq.state != HM_DONE && (cli->flags & CF_RD)) {
            r = sess_recv(s, cli, &s->req, cfg.req_margin, DB_CHANNEL);
            if (r < 0)
                goto abort;
            progress |= r;
        }
        if (s->rq.state != HM_DONE && s->req.data) {
            int was_hdr = s->rq.state == HM_HDR;
            char peer[64];                  /* X-Forwarded-For: the client */
            r = hmsg_scan_fwd(&s->rq, s->req.area, &s->req.head, &s->req.data, s->req.size, 0, 0,
                              was_hdr ? http_peer(cli->fd, peer, sizeof(peer)) : NULL);
            if (r < 0) {
                reply_error(s, r == -2 ? 431 : 400);
                goto abort;
            }
            if (was_hdr && s->rq.state != HM_HDR) {
                s->active = 1;
                ADD(w, active, 1);
                INC(w, requests);
                s->req_flags = s->rq.flags;
                if (s->rq.flags & HF_CLOSE)
                    s->close_after = 1;
            }
        }
        if (cli->flags & (CF_EOF | CF_ERR)) {
            if (!s->active && !s->req.data) {
                session_close(s);           /* an idle client left */
                return;
            }
            if (s->rq.state != HM_DONE || (cli->flags & CF_ERR))
                goto abort;
            s->close_after = 1;             /* half-closed after a whole request */
        }

        /* 2. A server slot (maxconn), then a server connection. */
        if (s->active && s->slot == SLOT_NONE && s->rs.state != HM_DONE) {
            s->slot = server_acquire(s) ? SLOT_HELD : SLOT_WAIT;
            if (s->slot == SLOT_WAIT)
                break;                      /* woken by server_handoff_locked */
        }
        if (s->slot == SLOT_HELD && !s->srv && s->rs.state != HM_DONE) {
            if (srv_attach(s) < 0) {
                reply_error(s, 503);
                goto abort;
            }
        }
        struct conn *srv = s->srv;

        /* 3. The request to the server. */
        if (srv && !(srv->flags & CF_CONNECTING) && s->rq.fwd && (srv->flags & CF_WR)) {
            r = sess_send(srv, &s->req, &s->rq.fwd);
            if (r < 0)
                goto srv_fail;
            progress |= r;
        }
        sess_release(&s->req);

        /* 4. The server's response into the response buffer (margin 0). */
        if (srv && s->rs.state != HM_DONE && (srv->flags & CF_RD)) {
            r = sess_recv(s, srv, &s->res, 0, DB_MUX_TX);
            if (r < 0)
                goto srv_fail;
            s->tprog |= (unsigned char)r;
            progress |= r;
        }
        if (s->rs.state != HM_DONE && s->res.data) {
            r = hmsg_scan_fwd(&s->rs, s->res.area, &s->res.head, &s->res.data, s->res.size, 1, s->req_flags, NULL);
            if (r < 0)
                goto srv_fail;
        }
        if (srv && (srv->flags & (CF_EOF | CF_ERR)) && s->rs.state != HM_DONE) {
            if (s->rs.state == HM_BODY && s->rs.body == BODY_EOF && !(srv->flags & CF_ERR))
                s->rs.state = HM_DONE;      /* a close-delimited body ends here */
            else
                goto srv_fail;
        }

        /* 5. The response to the client. */
        if (s->rs.fwd && (cli->flags & CF_WR)) {
            r = sess_send(cli, &s->res, &s->rs.fwd);
            if (r < 0)
                goto abort;
            s->tsent |= (unsigned char)r;
            progress |= r;
        }

        /* 6. The response was read whole: the server is free for the next. */
        if (s->rs.state == HM_DONE && srv && !(s->rs.flags & HF_INTERIM)) {
            int reuse = s->rq.state == HM_DONE && !s->rq.fwd && !(s->rs.flags & HF_CLOSE) &&
                        s->res.data == s->rs.fwd;
            srv_detach(s, reuse);
            s->slot = SLOT_NONE;
            server_release();
        }
        if (s->rs.state == HM_DONE && !s->rs.fwd && s->res.data && !(s->rs.flags & HF_INTERIM))
            s->res.data = 0;                /* bytes past the response: dropped */
        sess_release(&s->res);

        /* 7. The response was sent whole. */
        if (s->rs.state == HM_DONE && !s->rs.fwd) {
            if (s->rs.flags & HF_INTERIM) {
                hmsg_reset(&s->rs);         /* the final response follows */
                progress = 1;
                continue;
            }
            INC(w, responses);
            s->served = 1;
            s->active = 0;
            ADD(w, active, -1);
            if (s->close_after || s->rq.state != HM_DONE || s->rq.fwd || s->rs.body == BODY_EOF) {
                session_close(s);
                return;
            }
            hmsg_reset(&s->rq);
            hmsg_reset(&s->rs);
            progress = 1;                   /* a pipelined request may be in */
        }
    } while (progress);
    timer_update(s);                        /* may close it (draining) */
    return;

srv_fail:
    if (s->rs.state == HM_HDR)
        reply_error(s, 502);
abort:
    INC(w, aborts);
    session_close(s);
}

/* ------------------------------------------------------------ timers */

/* One timer per session, in one of its worker's lists, one list per kind.
 * A kind has one duration, so a list kept by appending at now + duration is
 * sorted: setting, moving and cancelling are O(1), and the loop looks at
 * six heads to choose epoll_wait's timeout. No timer thread. */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int timer_ms(int k)
{
    return k == TK_CLIENT ? cfg.t_client : k == TK_IDLE ? cfg.t_idle : k == TK_CONNECT ? cfg.t_connect :
           k == TK_SERVER ? cfg.t_server : k == TK_QUEUE ? cfg.t_queue : k == TK_SEND ? cfg.t_send : 0;
}

static void timer_del(struct session *s)
{
    struct worker *w = s->w;
    int k = s->tkind;

    if (k == TK_NONE)
        return;
    if (s->tprev)
        s->tprev->tnext = s->tnext;
    else
        w->tq_head[k] = s->tnext;
    if (s->tnext)
        s->tnext->tprev = s->tprev;
    else
        w->tq_tail[k] = s->tprev;
    s->tnext = s->tprev = NULL;
    s->tkind = TK_NONE;
}

static void timer_set(struct session *s, int k)
{
    struct worker *w = s->w;

    timer_del(s);
    s->tprog = s->tsent = 0;
    if (k == TK_NONE || timer_ms(k) <= 0)
        return;
    s->tkind = (unsigned char)k;
    s->expire = now_ms() + timer_ms(k);
    s->tnext = NULL;
    s->tprev = w->tq_tail[k];
    if (s->tprev)
        s->tprev->tnext = s;
    else
        w->tq_head[k] = s;
    w->tq_tail[k] = s;
}

/* Nothing in flight, nothing half-read: a keep-alive connection between
 * requests (or a new one that sent nothing yet). */
static int sess_idle(struct session *s)
{
    return !s->active && !s->req.data && s->rq.state == HM_HDR && !s->srv && s->slot == SLOT_NONE;
}

/* Which timeout applies to `s` now. */
static int timer_want(struct session *s)
{
    if (s->slot == SLOT_WAIT || s->bufwait)
        return TK_QUEUE;
    if (s->srv && (s->srv->flags & CF_CONNECTING))
        return TK_CONNECT;
    if (s->rs.fwd && !(s->cli->flags & CF_WR))
        return TK_SEND;                     /* the client takes nothing: re-armed whenever it does */
    if (s->srv && s->rs.state != HM_DONE)
        return TK_SERVER;                   /* re-armed whenever the server sends */
    if (!s->active && s->rq.state == HM_HDR)
        return s->req.data || !s->served ? TK_CLIENT : TK_IDLE;
    return TK_NONE;                         /* sending to a client that takes it: a run follows */
}

/* After a session ran: its timer follows its state. The client timer is not
 * re-armed while the head trickles in: the whole head must arrive in time. */
static void timer_update(struct session *s)
{
    int k = timer_want(s);

    if (atomic_load_explicit(&draining, memory_order_relaxed) && sess_idle(s)) {
        session_close(s);                   /* draining: idle connections go */
        return;
    }
    if (k != s->tkind || (k == TK_SERVER && s->tprog) || (k == TK_SEND && s->tsent))
        timer_set(s, k);
}

static void timer_expire(struct session *s)
{
    struct worker *w = s->w;
    int k = s->tkind;

    INC(w, timeouts[k]);
    timer_del(s);
    if (k == TK_CLIENT && s->req.data)
        reply_error(s, 408);                /* a head begun and not finished */
    else if ((k == TK_CONNECT || k == TK_QUEUE) && s->rs.state == HM_HDR)
        reply_error(s, 503);
    else if (k == TK_SERVER && s->rs.state == HM_HDR)
        reply_error(s, 504);                /* nothing of the response sent yet */
    else if (k == TK_SEND) {
        /* A client that reads nothing: reset rather than closed, or the
         * kernel would keep what it has not taken (up to the send buffer)
         * in an orphan socket until its retries give up. */
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        setsockopt(s->cli->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    session_close(s);                       /* idle, or a response cut: closed silently */
}

/* ------------------------------------------------------------ the listener */

/* Out of epoll (level-triggered, it would wake us for ever): at
 * --max-clients, on EMFILE/ENFILE. Tried again after `retry_ms`, or when
 * one of our sessions closes. */
static void listener_pause(struct worker *w, int retry_ms)
{
    if (!w->lpaused && w->lconn.fd >= 0) {
        epoll_ctl(w->ep, EPOLL_CTL_DEL, w->lconn.fd, NULL);
        w->lpaused = 1;
        INC(w, paused);
    }
    w->lretry = now_ms() + retry_ms;
}

static void listener_resume(struct worker *w)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &w->lconn };

    if (!w->lpaused || w->lconn.fd < 0 || atomic_load(&draining))
        return;
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, w->lconn.fd, &ev) == 0) {
        w->lpaused = 0;
        w->lretry = 0;
    }
}

/* Fires what expired; the ms until the next thing to do, or -1. */
static int timers_run(struct worker *w)
{
    long long now = now_ms(), next = -1;

    for (int k = TK_NONE + 1; k < TK_N; k++) {
        struct session *s;
        while ((s = w->tq_head[k]) && s->expire <= now)
            timer_expire(s);
        if (s && (next < 0 || s->expire - now < next))
            next = s->expire - now;
    }
    if (w->lpaused && w->lretry) {
        if (w->lretry <= now)
            listener_resume(w);
        else if (next < 0 || w->lretry - now < next)
            next = w->lretry - now;
    }
    if (atomic_load(&draining) && (next < 0 || drain_deadline - now < next))
        next = drain_deadline > now ? drain_deadline - now : 0;
    return next > 1000000 ? 1000000 : (int)next;
}

/* SIGTERM: the listener closes, idle connections close; 1 once nothing is
 * left in flight here or the grace period is over. */
static int drain_step(struct worker *w)
{
    if (w->lconn.fd >= 0) {
        if (!w->lpaused)
            epoll_ctl(w->ep, EPOLL_CTL_DEL, w->lconn.fd, NULL);
        close(w->lconn.fd);
        w->lconn.fd = -1;
        w->lpaused = 1;
        for (struct session *s = w->all, *n; s; s = n) {
            n = s->anext;
            if (sess_idle(s) && !s->in_runq)
                session_close(s);
        }
    }
    return !w->all || now_ms() >= drain_deadline;
}

/* ------------------------------------------------------------ the loop */

static void accept_clients(struct worker *w)
{
    for (int i = 0; i < 64; i++) {
        if (cfg.max_clients && atomic_load_explicit(&nsessions, memory_order_relaxed) >= (long)cfg.max_clients) {
            listener_pause(w, 100);         /* full: new clients wait in the backlog */
            return;
        }
        int fd = accept(w->lconn.fd, NULL, NULL);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                listener_pause(w, 100);     /* out of descriptors: try again later, or on a close */
            return;                         /* EAGAIN, or an error for the next event */
        }
        int one = 1;
        struct session *s = pool_zalloc(pool_sess);
        if (!s || set_nonblock(fd) < 0 || setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
            INC(w, refused);
            pool_free(pool_sess, s);
            close(fd);
            continue;
        }
        s->w = w;
        s->cli = conn_new(w, fd, CK_CLI, s);
        if (!s->cli) {
            INC(w, refused);
            pool_free(pool_sess, s);
            close(fd);
            continue;
        }
        buffer_wait_init(&s->bw, s, sess_buf_ready);
        ALL_ADD(w, s);
        atomic_fetch_add_explicit(&nsessions, 1, memory_order_relaxed);
        timer_set(s, TK_CLIENT);
        INC(w, accepted);
        ADD(w, sessions, 1);
    }
}

static void conn_event(struct worker *w, struct conn *c, unsigned ev)
{
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        c->flags |= CF_RD;
    if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        c->flags |= CF_HUP;                 /* no edge will follow the EOF */
    if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        c->flags |= CF_WR;
    if ((c->flags & CF_CONNECTING) && (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))) {
        int err = 0;
        socklen_t len = sizeof(err);
        c->flags &= (unsigned char)~CF_CONNECTING;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err)
            c->flags |= CF_ERR;
    }
    if (!c->sess) {
        if (c->flags & CF_RD)
            srv_idle_event(w, c);
        return;
    }
    runq_add(w, c->sess);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event evs[256];

    cur_worker = w;
    while (!atomic_load(&stopping)) {
        if (atomic_load(&draining) && drain_step(w))
            break;
        int timeout = w->rq_len ? 0 : -1;
        int tnext = timers_run(w);
        if (tnext >= 0 && (timeout < 0 || tnext < timeout))
            timeout = tnext;
        int n = epoll_wait(w->ep, evs, 256, timeout);

        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->kind == CK_LISTEN) {
                accept_clients(w);
            } else if (c->kind == CK_WAKE) {
                /* The pipe first, then the flag, then the inbox: a push
                 * that saw the flag set is in the inbox we drain next. */
                char tmp[64];
                while (read(c->fd, tmp, sizeof(tmp)) > 0)
                    ;
                atomic_store(&w->wake_pending, 0);
                inbox_drain(w);
                unsigned long pe = atomic_load(&purge_epoch);
                if (pe != w->purge_seen) {
                    /* The relay has been idle: server connections kept
                     * for reuse go, so that the gc that follows finds
                     * their objects idle. */
                    w->purge_seen = pe;
                    while (w->idle_srv) {
                        struct conn *ic = w->idle_srv;
                        w->idle_srv = ic->next;
                        conn_close(ic);
                    }
                    w->n_idle_srv = 0;
                }
            } else {
                conn_event(w, c, evs[i].events);
            }
        }
        for (unsigned todo = w->rq_len; todo; todo--) {
            struct session *s = runq_pop(w);
            if (!s)
                break;
            if (s->dead)
                session_free(s);
            else
                session_run(s);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------ start, stop */

static int listen_socket(struct sockaddr_in *a)
{
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)a, sizeof(*a)) < 0 || listen(fd, 4096) < 0 || set_nonblock(fd) < 0) {
        close(fd);
        return -1;
    }
    if (a->sin_port == 0) {
        socklen_t len = sizeof(*a);
        if (getsockname(fd, (struct sockaddr *)a, &len) < 0) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

static int worker_setup(struct worker *w, int id)
{
    int p[2];
    struct epoll_event ev = { .events = EPOLLIN };

    w->id = id;
    pthread_mutex_init(&w->ilock, NULL);
    w->ep = epoll_create1(0);
    w->lconn.fd = listen_socket(&cfg.listen_addr);
    if (w->ep < 0 || w->lconn.fd < 0 || pipe(p) < 0)
        return -1;
    set_nonblock(p[0]);
    set_nonblock(p[1]);
    w->lconn.kind = CK_LISTEN;
    w->wconn.fd = p[0];
    w->wconn.kind = CK_WAKE;
    w->wake_wr = p[1];
    ev.data.ptr = &w->lconn;
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, w->lconn.fd, &ev) < 0)
        return -1;
    ev.data.ptr = &w->wconn;
    return epoll_ctl(w->ep, EPOLL_CTL_ADD, w->wconn.fd, &ev);
}

/* After every worker stopped: frees what they held, from this thread. */
static void worker_cleanup(struct worker *w)
{
    for (struct session *s; (s = runq_pop(w));)
        if (s->dead)
            pool_free(pool_sess, s);
    for (struct session *s = w->ihead; s; s = s->inext) {
        b_free(&s->gift);
    }
    w->ihead = w->itail = NULL;
    while (w->all) {
        struct session *s = w->all;
        bufwait_done(s);
        b_free(&s->req);
        b_free(&s->res);
        if (s->srv)
            conn_close(s->srv);
        conn_close(s->cli);
        ALL_DEL(w, s);
        pool_free(pool_sess, s);
    }
    while (w->idle_srv) {
        struct conn *c = w->idle_srv;
        w->idle_srv = c->next;
        conn_close(c);
    }
    if (w->lconn.fd >= 0)
        close(w->lconn.fd);
    close(w->wconn.fd);
    close(w->wake_wr);
    close(w->ep);
}

static int parse_addr(const char *s, struct sockaddr_in *a)
{
    char host[64];
    const char *colon = strrchr(s, ':');

    if (!colon || (size_t)(colon - s) >= sizeof(host))
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    memset(a, 0, sizeof(*a));
    a->sin_family = AF_INET;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535 || inet_pton(AF_INET, host[0] ? host : "127.0.0.1", &a->sin_addr) != 1)
        return -1;
    a->sin_port = htons((unsigned short)port);
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: relay --server ADDR:PORT [options]\n"
            "  --listen ADDR:PORT   where clients connect (127.0.0.1:8080; port 0: any, see --port-file)\n"
            "  --server ADDR:PORT   the backend (IPv4)\n"
            "  --threads N          worker threads, one epoll loop each (1)\n"
            "  --bufsize BYTES      buffer size (16384)\n"
            "  --buflimit N         buffers, held and idle (0: no limit)\n"
            "  --reserve N          buffers kept for responses (2)\n"
            "  --req-margin N       margin of request buffers (the reserve; 0 reproduces the deadlock)\n"
            "  --maxconn N          requests in flight to the server, the rest queue (1)\n"
            "  --max-clients N      client connections (0: no limit)\n"
            "  --stats PATH         UNIX socket answering 'show pools [OPTIONS]', 'show info'\n"
            "                       (OPTIONS: byname|bysize|byusage, match PREFIX, N, detailed, json)\n"
            "  --port-file PATH     write the listening port there once ready\n"
            "  --watchdog MS        report a stall after MS without a response (1000; 0: off)\n"
            "  --idle-gc MS         pool_gc() after MS without traffic (1000; 0: off)\n"
            "  --timeout-client MS  the whole request head must arrive within it, else 408 (10000; 0: none)\n"
            "  --timeout-idle MS    a keep-alive connection between requests, then closed (30000)\n"
            "  --timeout-connect MS connecting to the server, else 503 (5000)\n"
            "  --timeout-server MS  the server silent while a response is due, else 504 (30000)\n"
            "  --timeout-queue MS   waiting for a buffer or a server slot, else 503 (10000)\n"
            "  --timeout-send MS    a client that takes no response byte for MS is reset (30000)\n"
            "  --grace MS           SIGTERM/SIGINT: in-flight requests finish within it (5000)\n"
            "  --quiet              no start-up line\n"
            "BUFPOOL_DEBUG in the environment reaches the library (e.g. BUFPOOL_DEBUG=tag,integrity).\n"
            "SIGUSR1 writes 'show pools' to stderr; SIGTERM/SIGINT drain, then stop.\n");
}

static int parse_args(int argc, char **argv)
{
    int have_server = 0, margin_set = 0;

    cfg.threads = 1;
    cfg.bufsize = 16384;
    cfg.reserve = 2;
    cfg.maxconn = 1;
    cfg.watchdog_ms = 1000;
    cfg.idle_gc_ms = 1000;
    cfg.t_client = 10000;
    cfg.t_idle = 30000;
    cfg.t_connect = 5000;
    cfg.t_server = 30000;
    cfg.t_queue = 10000;
    cfg.t_send = 30000;
    cfg.grace_ms = 5000;
    parse_addr("127.0.0.1:8080", &cfg.listen_addr);
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        long n = v ? strtol(v, &end, 10) : 0;
        int num_ok = v && *v && end && !*end && n >= 0;

        if (!strcmp(o, "--quiet")) {
            cfg.quiet = 1;
            continue;
        }
        if (!strcmp(o, "--help") || !v) {
            usage();
            return -1;
        }
        i++;
        if (!strcmp(o, "--listen")) {
            if (parse_addr(v, &cfg.listen_addr) < 0)
                goto bad;
        } else if (!strcmp(o, "--server")) {
            if (parse_addr(v, &cfg.server_addr) < 0)
                goto bad;
            have_server = 1;
        } else if (!strcmp(o, "--stats")) {
            cfg.stats_path = v;
        } else if (!strcmp(o, "--port-file")) {
            cfg.port_file = v;
        } else if (!num_ok) {
            goto bad;
        } else if (!strcmp(o, "--threads") && n >= 1 && n <= 64) {
            cfg.threads = (int)n;
        } else if (!strcmp(o, "--bufsize") && n >= 1024) {
            cfg.bufsize = (size_t)n;
        } else if (!strcmp(o, "--buflimit")) {
            cfg.buflimit = (unsigned)n;
        } else if (!strcmp(o, "--reserve") && n < 1000) {
            cfg.reserve = (unsigned)n;
        } else if (!strcmp(o, "--req-margin") && n < 1000) {
            cfg.req_margin = (int)n;
            margin_set = 1;
        } else if (!strcmp(o, "--maxconn") && n >= 1) {
            cfg.maxconn = (int)n;
        } else if (!strcmp(o, "--max-clients")) {
            cfg.max_clients = (unsigned)n;
        } else if (!strcmp(o, "--watchdog")) {
            cfg.watchdog_ms = (int)n;
        } else if (!strcmp(o, "--idle-gc")) {
            cfg.idle_gc_ms = (int)n;
        } else if (!strcmp(o, "--timeout-client") && n <= 86400000) {
            cfg.t_client = (int)n;
        } else if (!strcmp(o, "--timeout-idle") && n <= 86400000) {
            cfg.t_idle = (int)n;
        } else if (!strcmp(o, "--timeout-connect") && n <= 86400000) {
            cfg.t_connect = (int)n;
        } else if (!strcmp(o, "--timeout-server") && n <= 86400000) {
            cfg.t_server = (int)n;
        } else if (!strcmp(o, "--timeout-queue") && n <= 86400000) {
            cfg.t_queue = (int)n;
        } else if (!strcmp(o, "--timeout-send") && n <= 86400000) {
            cfg.t_send = (int)n;
        } else if (!strcmp(o, "--grace") && n <= 86400000) {
            cfg.grace_ms = (int)n;
        } else {
            goto bad;
        }
        continue;
bad:
        fprintf(stderr, "relay: bad option %s %s\n", o, v);
        return -1;
    }
    if (!have_server) {
        usage();
        return -1;
    }
    if (!margin_set)
        cfg.req_margin = (int)cfg.reserve;
    return 0;
}

int main(int argc, char **argv)
{
    sigset_t block;
    int rc = 0;

    if (parse_args(argc, argv) < 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;                       /* one descriptor per connection */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int r = dynbuf_init(cfg.bufsize, cfg.reserve, cfg.buflimit);
    if (r < 0) {
        fprintf(stderr, "relay: dynbuf_init(%zu, %u, %u) = %d%s\n", cfg.bufsize, cfg.reserve, cfg.buflimit, r,
                r == -1 ? " (the limit must be above the reserve)" : "");
        if (r == -1)
            return 2;
    }
    pool_conn = create_pool("relay_conn", sizeof(struct conn), 0);
    pool_sess = create_pool("relay_sess", sizeof(struct session), 0);
    if (!pool_conn || !pool_sess) {
        fprintf(stderr, "relay: create_pool failed\n");
        return 1;
    }
    if (cfg.max_clients)
        pool_set_limit(pool_sess, cfg.max_clients);

    /* Workers get every signal blocked; the control loop takes them. */
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    if (ctl_setup() < 0)
        return 1;
    workers = calloc((size_t)cfg.threads, sizeof(*workers));
    if (!workers)
        return 1;
    for (int i = 0; i < cfg.threads; i++) {
        if (worker_setup(&workers[i], i) < 0) {
            perror("relay: listen");
            return 1;
        }
    }
    pthread_sigmask(SIG_BLOCK, &block, NULL);
    for (int i = 0; i < cfg.threads; i++)
        if (pthread_create(&workers[i].th, NULL, worker_main, &workers[i]) != 0)
            return 1;
    pthread_sigmask(SIG_UNBLOCK, &block, NULL);

    if (cfg.port_file) {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s.tmp", cfg.port_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%d\n", ntohs(cfg.listen_addr.sin_port)) < 0 || fclose(f) != 0 ||
            rename(tmp, cfg.port_file) < 0) {
            perror("relay: port file");
            return 1;
        }
    }
    if (!cfg.quiet) {
        const char *dbg = getenv("BUFPOOL_DEBUG");
        fprintf(stderr,
                "relay: listening on 127.0.0.1:%d, server %s:%d maxconn %d, %d thread(s), bufsize %zu, "
                "buffer limit %u, reserve %u, request margin %d%s%s\n",
                ntohs(cfg.listen_addr.sin_port), inet_ntoa(cfg.server_addr.sin_addr),
                ntohs(cfg.server_addr.sin_port), cfg.maxconn, cfg.threads, cfg.bufsize, cfg.buflimit, cfg.reserve,
                cfg.req_margin, dbg ? ", BUFPOOL_DEBUG=" : "", dbg ? dbg : "");
    }

    ctl_loop();

    /* Drain: workers close their listeners and idle connections, finish
     * what is in flight, and stop once empty or at the deadline. */
    drain_deadline = now_ms() + cfg.grace_ms;
    atomic_store(&draining, 1);
    for (int i = 0; i < cfg.threads; i++) {
        atomic_store(&workers[i].wake_pending, 0);
        wake_pipe(&workers[i]);
    }
    for (int i = 0; i < cfg.threads; i++)
        pthread_join(workers[i].th, NULL);
    atomic_store(&stopping, 1);
    for (int i = 0; i < cfg.threads; i++)
        worker_cleanup(&workers[i]);
    unsigned long held = pool_used(pool_head_buffer), sess = pool_used(pool_sess), conns = pool_used(pool_conn);
    if (held || sess || conns) {
        fprintf(stderr, "relay: leak at exit: %lu buffers, %lu sessions, %lu connections held\n", held, sess, conns);
        rc = 1;
    }
    if (pool_destroy(pool_sess) || pool_destroy(pool_conn))
        rc = 1;
    pool_destroy_all();
    free(workers);
    return rc;
}
