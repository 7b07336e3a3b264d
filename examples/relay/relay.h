/* relay: an HTTP/1.1 reverse proxy on bufpool. Shared declarations of the
 * event loop (relay.c) and the control side (ctl.c: stats socket, signals,
 * watchdog, idle gc). */
#ifndef RELAY_H
#define RELAY_H

#include "bufpool.h"
#include "http.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>

struct config {
    struct sockaddr_in listen_addr, server_addr;
    int threads;
    size_t bufsize;
    unsigned buflimit;        /* 0: unlimited */
    unsigned reserve;
    int req_margin;           /* margin of request buffers: the reserve unless told */
    int maxconn;              /* server maxconn */
    unsigned max_clients;     /* limit of the session pool, 0: none */
    const char *stats_path;   /* UNIX stats socket, or NULL */
    const char *port_file;    /* the bound port is written there */
    int watchdog_ms;          /* 0: off */
    int idle_gc_ms;           /* 0: off */
    int quiet;
    /* Timeouts in ms, 0: none (see timer_update in relay.c). */
    int t_client;             /* the whole request head, from its first byte (or the accept) */
    int t_idle;               /* a keep-alive connection between requests */
    int t_connect;            /* connecting to the server */
    int t_server;             /* the server silent while a response is awaited or read */
    int t_queue;              /* waiting for a buffer or a server slot */
    int t_send;               /* the client takes no byte of a response the relay has for it */
    int grace_ms;             /* SIGTERM: in-flight requests finish within it */
};

/* The one timer of a session: which timeout runs (TK_NONE: none). */
enum timer_kind { TK_NONE, TK_CLIENT, TK_IDLE, TK_CONNECT, TK_SERVER, TK_QUEUE, TK_SEND, TK_N };

/* A socket: a client, a server connection, or a worker's listener or wake
 * pipe (kind). From the "relay_conn" pool. */
enum conn_kind { CK_CLI, CK_SRV, CK_LISTEN, CK_WAKE };
#define CF_RD          0x01   /* may have bytes to read (or EOF) */
#define CF_WR          0x02   /* may take bytes */
#define CF_EOF         0x04   /* the peer closed its side */
#define CF_ERR         0x08
#define CF_CONNECTING  0x10
#define CF_HUP         0x20   /* epoll saw the peer's FIN: read until EOF */

struct session;

struct conn {
    int fd;
    unsigned char kind;
    unsigned char flags;
    struct session *sess;     /* NULL: an idle server connection */
    struct conn *next;        /* the worker's idle server connections */
};

enum slot_state { SLOT_NONE, SLOT_WAIT, SLOT_HELD };

/* A client connection and the transaction in flight on it. From the
 * "relay_sess" pool; owned by one worker thread. */
struct session {
    struct worker *w;
    struct conn *cli, *srv;
    struct buffer req, res;           /* allocated only while they hold bytes */
    struct hmsg rq, rs;
    struct buffer_wait bw;
    struct session *rnext;            /* run queue (owner) */
    struct session *inext, *iprev;    /* the owner's inbox (its lock) */
    struct session *qnext, *qprev;    /* server queue (the server's lock) */
    struct session *anext, *aprev;    /* the owner's sessions */
    unsigned char in_runq, dead, active, close_after, req_flags, slot;
    unsigned char bufwait;            /* queued for a buffer (owner's view) */
    unsigned char wait_res;           /* ... for the response buffer, else the request's */
    unsigned char in_inbox;           /* under the owner's inbox lock, with: */
    unsigned char wait_res_shared;    /* wait_res, for a callback on another thread */
    unsigned char gift_res;           /* which buffer `gift` is for */
    unsigned char gift_adopted;       /* (owner) a gift became req or res: dequeue */
    struct buffer gift;               /* a buffer such a callback took, moved in with b_move */
    unsigned char in_srvq, granted;   /* under the server's lock */
    unsigned char tkind;              /* its timer (owner): in w->tq[tkind] unless TK_NONE */
    unsigned char tprog;              /* the server sent bytes since the timer was set */
    unsigned char tsent;              /* bytes went to the client since the timer was set */
    unsigned char served;             /* a response was sent on this connection */
    struct session *tnext, *tprev;    /* the owner's timer list of that kind */
    long long expire;                 /* ms, CLOCK_MONOTONIC */
};

/* Counters a worker writes alone (relaxed stores) and the control thread reads. */
struct wstats {
    atomic_ulong accepted, requests, responses, buf_fail, offer_wakes, offer_declined, foreign_wakes,
        srv_connects, errors, aborts, refused,
        timeouts[TK_N], paused;
    atomic_long sessions, active, bufwaiters;
};

struct worker {
    int id;
    pthread_t th;
    int ep;
    struct conn lconn, wconn;          /* listener and wake pipe */
    int wake_wr;
    atomic_int wake_pending;
    struct session *rq_head, *rq_tail;
    unsigned rq_len;
    pthread_mutex_t ilock;
    struct session *ihead, *itail;
    struct conn *idle_srv;
    unsigned n_idle_srv;
    struct session *all;
    unsigned long purge_seen;
    struct wstats st;
    /* Timers: one FIFO per kind; each kind has one duration, so appending
     * at now + duration keeps each list sorted and the head is its next. */
    struct session *tq_head[TK_N], *tq_tail[TK_N];
    int lpaused;                       /* listener out of epoll: max clients, EMFILE, or drain */
    long long lretry;                  /* when to try the listener again (ms), 0: on a close only */
};

/* The backend: maxconn slots, and a FIFO of sessions waiting for one. */
struct server {
    pthread_mutex_t lock;
    int cur;
    unsigned qlen;
    struct session *qhead, *qtail;
};

extern struct config cfg;
extern struct server server;
extern struct worker *workers;
extern struct pool_head *pool_conn, *pool_sess;
extern atomic_int stopping;
extern atomic_int draining;               /* SIGTERM: finish what is in flight, accept nothing */
extern long long drain_deadline;          /* ms, CLOCK_MONOTONIC: set before draining */
extern atomic_ulong gc_runs, stalls;
extern atomic_ulong purge_epoch;          /* raised by ctl: workers close idle server connections */
extern atomic_int stalled;

void wake_worker(struct worker *w);      /* from any thread */

/* ctl.c */
int ctl_setup(void);                      /* stats socket and signal pipe */
void ctl_loop(void);                      /* until SIGTERM/SIGINT */
void ctl_sum(struct wstats *out);         /* all workers' counters */

#define INC(w, f) atomic_store_explicit(&(w)->st.f, atomic_load_explicit(&(w)->st.f, memory_order_relaxed) + 1, \
                                        memory_order_relaxed)
#define ADD(w, f, n) atomic_store_explicit(&(w)->st.f, atomic_load_explicit(&(w)->st.f, memory_order_relaxed) + (n), \
                                           memory_order_relaxed)

#endif
