/* Seed 001: a reserve of buffers that keeps responses flowing.
 *
 * A single-threaded event loop simulates a proxy in front of one server
 * with maxconn 1. Each session, when woken, goes through four steps:
 *   NEW      needs a request buffer (margin = the reserve), then asks for
 *            the server: takes it if free, else waits in the server queue;
 *   CONNECT  the server connection is up: the request is sent;
 *   RESPONSE needs a response buffer (margin 0) to receive the response;
 *   CLOSE    frees both buffers and the server, hands the server to the
 *            next queued session and offers the freed buffers.
 * A failed allocation queues the session in the buffer wait queue; its
 * callback wakes the session's task (puts it in the run queue).
 *
 * With a limit of 6 buffers and 10000 sessions, arriving all at once, one
 * per scheduler turn (overload: a session takes 4 turns), or at random
 * with a chance of 20% a turn (80% load, so queues come and go), every
 * session completes. With margin 0 for requests, the request buffers eat
 * every buffer while the session holding the server waits for a response
 * buffer: the run queue drains with sessions left, the deadlock the reserve
 * exists for, and the harness must see it. Without a limit every session
 * takes exactly 4 wake-ups; the harness prints wake-ups per session for
 * the limited and unlimited runs. */
#include "bufpool.h"
#include "harness.h"

#include <stdlib.h>
#include <string.h>

#define NSESS     10000
#define BUFSIZE   16384
#define RESERVED  2
#define LIMIT     6

enum state { ST_NEW, ST_QUEUED, ST_CONNECT, ST_RESPONSE, ST_CLOSE, ST_DONE };

struct session {
    int id;
    enum state st;
    int in_runq;
    int was_woken;                          /* by the buffer wait queue */
    unsigned long wakeups;
    struct buffer req, res;
    struct buffer_wait bw;
};

static struct session *sess;
static int *runq, rq_head, rq_len;      /* ring of session ids */
static int *srvq, sq_head, sq_len;      /* server queue (FIFO) */
static int srv_busy, srv_max_busy;
static int req_margin;
static unsigned long completed, wakeups, buf_failures, refailures;

static void task_wakeup(struct session *s)
{
    if (s->in_runq)
        return;
    s->in_runq = 1;
    runq[(rq_head + rq_len++) % NSESS] = s->id;
}

/* The buffer wait queue callback: wake the session's task. Already
 * scheduled: 0, keep the place in the wait queue. */
static int session_buf_available(void *target)
{
    struct session *s = target;

    if (s->in_runq)
        return 0;
    task_wakeup(s);
    s->was_woken = 1;
    return 1;
}

/* Allocates a buffer, or queues the session to be woken when one may be had. */
static int session_alloc(struct session *s, struct buffer *b, int margin)
{
    int woken = s->was_woken;

    s->was_woken = 0;
    if (b_alloc_margin(b, margin)) {
        b_dequeue(&s->bw);
        return 1;
    }
    buf_failures++;
    refailures += woken;                    /* a wake-up for nothing */
    CHECK(b_queue(&s->bw) == 1);
    return 0;
}

static void server_release(void)
{
    srv_busy--;
    if (sq_len) {
        struct session *next = &sess[srvq[sq_head]];
        sq_head = (sq_head + 1) % NSESS;
        sq_len--;
        srv_busy++;
        next->st = ST_CONNECT;
        task_wakeup(next);
    }
}

static void process_session(struct session *s)
{
    s->wakeups++;
    wakeups++;
    switch (s->st) {
    case ST_NEW:
        if (!session_alloc(s, &s->req, req_margin))
            return;
        memcpy(s->req.area, "GET / HTTP/1.1\r\n\r\n", 18);
        s->req.data = 18;
        if (srv_busy < 1) {
            srv_busy++;
            s->st = ST_CONNECT;
            task_wakeup(s);                 /* the connect event */
        } else {
            s->st = ST_QUEUED;
            srvq[(sq_head + sq_len++) % NSESS] = s->id;
        }
        if (srv_busy > srv_max_busy)
            srv_max_busy = srv_busy;
        return;
    case ST_QUEUED:
        return;                             /* spurious: still waiting for the server */
    case ST_CONNECT:
        s->st = ST_RESPONSE;
        task_wakeup(s);                     /* the response arrives */
        return;
    case ST_RESPONSE:
        if (!session_alloc(s, &s->res, 0))
            return;
        memcpy(s->res.area, "HTTP/1.1 200 OK\r\n\r\n", 19);
        s->res.data = 19;
        s->st = ST_CLOSE;
        task_wakeup(s);                     /* the response was sent */
        return;
    case ST_CLOSE:
        CHECK(s->req.size == BUFSIZE && s->res.size == BUFSIZE);
        b_free(&s->req);
        b_free(&s->res);
        CHECK(s->req.size == 0 && s->req.area == NULL && s->res.size == 0);
        server_release();
        offer_buffers(s, (unsigned)rq_len);
        s->st = ST_DONE;
        completed++;
        return;
    case ST_DONE:
        CHECK(!"a finished session was woken");
        return;
    }
}

/* Runs NSESS sessions to the end or to a deadlock (run queue empty with
 * every session arrived and some left). Before each turn, `per_turn`
 * sessions arrive with a chance of `pct` percent (NSESS, 100: all at once),
 * drawn from a fixed pseudo-random sequence. Returns the number completed. */
static unsigned long run(unsigned limit, int margin, int per_turn, int pct)
{
    unsigned long rng = 12345;

    CHECK_EQ(dynbuf_init(BUFSIZE, RESERVED, limit), 0);
    req_margin = margin;
    rq_head = rq_len = sq_head = sq_len = 0;
    srv_busy = srv_max_busy = 0;
    completed = wakeups = buf_failures = refailures = 0;
    for (int i = 0; i < NSESS; i++) {
        struct session *s = &sess[i];
        s->id = i;
        s->st = ST_NEW;
        s->in_runq = 0;
        s->was_woken = 0;
        s->wakeups = 0;
        s->req = BUF_NULL;
        s->res = BUF_NULL;
        buffer_wait_init(&s->bw, s, session_buf_available);
    }
    int arrived = 0;
    for (unsigned long t = 0; rq_len || arrived < NSESS; t++) {
        rng = rng * 6364136223846793005UL + 1442695040888963407UL;
        int arrive = pct >= 100 || (int)((rng >> 33) % 100) < pct;
        for (int k = 0; arrive && k < per_turn && arrived < NSESS; k++)
            task_wakeup(&sess[arrived++]);
        if (!rq_len)
            continue;                       /* idle turn: wait for arrivals */
        struct session *s = &sess[runq[rq_head]];
        rq_head = (rq_head + 1) % NSESS;
        rq_len--;
        s->in_runq = 0;
        process_session(s);
        if (limit)
            CHECK(pool_allocated(pool_head_buffer) <= limit);
    }
    CHECK(srv_max_busy <= 1);
    return completed;
}

/* Leaves no session queued and no buffer held, whatever the run did. */
static void cleanup(void)
{
    for (int i = 0; i < NSESS; i++) {
        b_dequeue(&sess[i].bw);
        CHECK(!b_is_queued(&sess[i].bw));
        b_free(&sess[i].req);
        b_free(&sess[i].res);
    }
    CHECK_EQ(pool_used(pool_head_buffer), 0);
}

struct figures { unsigned long wakeups, failures, refailures; };

static struct figures limited_run(int per_turn, int pct)
{
    unsigned long done = run(LIMIT, RESERVED, per_turn, pct);
    struct figures f = { wakeups, buf_failures, refailures };

    CHECK_EQ(done, NSESS);
    CHECK(buf_failures > 0);                /* there was contention */
    for (int i = 0; i < NSESS; i++) {
        CHECK(sess[i].st == ST_DONE);
        CHECK(!b_is_queued(&sess[i].bw));
    }
    cleanup();
    return f;
}

static unsigned long unlimited_run(int per_turn, int pct)
{
    unsigned long done = run(0, RESERVED, per_turn, pct);

    CHECK_EQ(done, NSESS);
    CHECK_EQ(wakeups, 4UL * NSESS);         /* four steps, never a failure */
    CHECK_EQ(buf_failures, 0);
    cleanup();
    return wakeups;
}

int main(void)
{
    sess = calloc(NSESS, sizeof(*sess));
    runq = calloc(NSESS, sizeof(*runq));
    srvq = calloc(NSESS, sizeof(*srvq));
    CHECK(sess && runq && srvq);
    if (!sess || !runq || !srvq)
        DONE("test_001_proxy_reserve");

    /* Limited, requests leave the reserve: everyone completes. */
    struct figures burst = limited_run(NSESS, 100), steady = limited_run(1, 100), paced = limited_run(1, 20);

    /* Limited, requests take the reserve too: the deadlock must show. */
    unsigned long done = run(LIMIT, 0, NSESS, 100);
    CHECK(done < NSESS);
    int stuck_resp = 0;
    for (int i = 0; i < NSESS; i++)
        stuck_resp += sess[i].st == ST_RESPONSE && b_is_queued(&sess[i].bw);
    CHECK_EQ(stuck_resp, 1);                 /* the server holder waits for a response buffer */
    CHECK_EQ(pool_used(pool_head_buffer), LIMIT); /* all of them request buffers */
    printf("margin 0 for requests: deadlock after %lu of %d sessions (%d request buffers held)\n",
           done, NSESS, LIMIT);
    cleanup();

    /* Unlimited: the reference. */
    unsigned long ref_burst = unlimited_run(NSESS, 100), ref_steady = unlimited_run(1, 100),
                  ref_paced = unlimited_run(1, 20);

    printf("wake-ups per session, %d sessions, limit %d buffers, reserve %d:\n", NSESS, LIMIT, RESERVED);
    printf("  all arrive at once:  limited %.3f (%lu failed allocations, %lu after a wake-up), unlimited %.3f\n",
           (double)burst.wakeups / NSESS, burst.failures, burst.refailures, (double)ref_burst / NSESS);
    printf("  one arrival a turn:  limited %.3f (%lu failed allocations, %lu after a wake-up), unlimited %.3f\n",
           (double)steady.wakeups / NSESS, steady.failures, steady.refailures, (double)ref_steady / NSESS);
    printf("  random, 80%% load:    limited %.3f (%lu failed allocations, %lu after a wake-up), unlimited %.3f\n",
           (double)paced.wakeups / NSESS, paced.failures, paced.refailures, (double)ref_paced / NSESS);
    free(sess);
    free(runq);
    free(srvq);
    DONE("test_001_proxy_reserve");
}
