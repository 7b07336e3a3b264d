/* The pool core across threads (the pool part of the C contract):
 * - objects idle in another thread's cache count as allocated, not used;
 * - a thread that exits gives its cached objects back (to the shared cache,
 *   where main reuses them and pool_flush reaches them), including the
 *   objects it frees from a pthread key destructor;
 * - idle objects in another thread's cache never make an allocation fail,
 *   even while that thread is blocked, nor while two
 *   threads trade objects at the limit;
 * - objects allocated in one thread and freed in another (a producer and a
 *   consumer), with exact counters at the end.
 * Synchronisation is by pipes, barriers, condition variables and joins only.
 * Worker threads record what they saw; main does the CHECKs. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "bufpool.h"
#include "harness.h"

static int member(void *x, void *const *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == x)
            return 1;
    return 0;
}

/* A one-way signal between two threads: a pipe. */
struct signal { int fd[2]; };

static void sig_init(struct signal *s)
{
    if (pipe(s->fd) != 0) {
        perror("pipe");
        exit(2);
    }
}

static void sig_post(struct signal *s)
{
    char c = 1;
    if (write(s->fd[1], &c, 1) != 1) {
        perror("write");
        exit(2);
    }
}

static void sig_wait(struct signal *s)
{
    char c;
    if (read(s->fd[0], &c, 1) != 1) {
        perror("read");
        exit(2);
    }
}

static void sig_close(struct signal *s)
{
    close(s->fd[0]);
    close(s->fd[1]);
}

static void join(pthread_t t)
{
    if (pthread_join(t, NULL) != 0) {
        fprintf(stderr, "pthread_join failed\n");
        exit(2);
    }
}

static void start(pthread_t *t, void *(*fn)(void *), void *arg)
{
    if (pthread_create(t, NULL, fn, arg) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        exit(2);
    }
}

/* ---- a thread that caches objects, then exits ------------------------- */

#define EXIT_N 40
#define EXIT_SZ 96

struct cacher {
    struct pool_head *pool;
    void *obj[EXIT_N];
    size_t nulls;
    struct signal step, go;
};

/* Allocates EXIT_N objects, frees 4, reports; frees the rest, reports; exits. */
static void *cacher_main(void *arg)
{
    struct cacher *c = arg;
    for (int i = 0; i < EXIT_N; i++) {
        c->obj[i] = pool_alloc(c->pool);
        c->nulls += c->obj[i] == NULL;
        if (c->obj[i])
            memset(c->obj[i], 0xC3, EXIT_SZ);
    }
    for (int i = 0; i < 4; i++)
        pool_free(c->pool, c->obj[i]);
    sig_post(&c->step);
    sig_wait(&c->go);
    for (int i = 4; i < EXIT_N; i++)
        pool_free(c->pool, c->obj[i]);
    sig_post(&c->step);
    sig_wait(&c->go);
    return NULL;
}

/* minavail_all: keep the returned objects idle (else they may go to the OS). */
static void run_thread_exit(int minavail_all)
{
    struct cacher c = { .pool = create_pool("exiting", EXIT_SZ, 0) };
    pthread_t t;

    CHECK(c.pool != NULL);
    if (minavail_all)
        pool_set_minavail(c.pool, EXIT_N);
    sig_init(&c.step);
    sig_init(&c.go);
    start(&t, cacher_main, &c);

    sig_wait(&c.step);
    CHECK_EQ(c.nulls, 0);
    /* 4 objects idle in the other thread's cache: allocated, not used. */
    CHECK_EQ(pool_allocated(c.pool), EXIT_N);
    CHECK_EQ(pool_used(c.pool), EXIT_N - 4);
    pool_flush(c.pool); /* cannot reach another thread's cache */
    CHECK_EQ(pool_allocated(c.pool), EXIT_N);
    sig_post(&c.go);

    sig_wait(&c.step);
    CHECK_EQ(pool_allocated(c.pool), EXIT_N);
    CHECK_EQ(pool_used(c.pool), 0);
    pool_flush(c.pool);
    CHECK_EQ(pool_allocated(c.pool), EXIT_N);
    sig_post(&c.go);
    join(t);

    /* The thread is gone: its objects are back, not used, not leaked. */
    CHECK_EQ(pool_used(c.pool), 0);
    CHECK(pool_allocated(c.pool) <= EXIT_N);
    if (minavail_all) {
        /* They wait in the shared cache: main reuses them, nothing new. */
        void *mine[EXIT_N];
        size_t foreign = 0, nulls = 0;
        CHECK_EQ(pool_allocated(c.pool), EXIT_N);
        for (int i = 0; i < EXIT_N; i++) {
            mine[i] = pool_alloc(c.pool);
            nulls += mine[i] == NULL;
            foreign += !member(mine[i], c.obj, EXIT_N);
        }
        CHECK_EQ(nulls, 0);
        CHECK_EQ(foreign, 0);
        CHECK_EQ(pool_allocated(c.pool), EXIT_N);
        CHECK_EQ(pool_used(c.pool), EXIT_N);
        for (int i = 0; i < EXIT_N; i++)
            pool_free(c.pool, mine[i]);
        pool_set_minavail(c.pool, 0);
        pool_gc(NULL);
    } else {
        /* Wherever they went, pool_flush now reaches every one left. */
        pool_flush(c.pool);
    }
    CHECK_EQ(pool_allocated(c.pool), 0);
    CHECK(pool_destroy(c.pool) == NULL);
    sig_close(&c.step);
    sig_close(&c.go);
}

/* ---- objects freed in a pthread key destructor ------------------------ */

#define KEY_N 10
#define KEY_SZ 64

struct keyed {
    struct pool_head *pool;
    void *obj[KEY_N];
    int use_before; /* touch the pool in the thread body first */
};

static pthread_key_t free_key;

/* Runs at thread exit, after the thread's body has returned. */
static void free_in_key_destructor(void *arg)
{
    struct keyed *k = arg;
    for (int i = 0; i < KEY_N; i++)
        pool_free(k->pool, k->obj[i]);
}

static void *keyed_main(void *arg)
{
    struct keyed *k = arg;
    if (k->use_before)
        pool_free(k->pool, pool_alloc(k->pool));
    if (pthread_setspecific(free_key, k) != 0)
        exit(2);
    return NULL;
}

/* Objects a thread frees while it exits (here from a pthread key
 * destructor, as C programs do with their per-thread state) are given back
 * too, whether or not the thread used the pool before. */
static void run_key_destructor(int use_before)
{
    struct keyed k = { .pool = create_pool("keyed", KEY_SZ, 0), .use_before = use_before };
    pthread_t t;
    size_t nulls = 0;

    CHECK(k.pool != NULL);
    for (int i = 0; i < KEY_N; i++) {
        k.obj[i] = pool_alloc(k.pool);
        nulls += k.obj[i] == NULL;
    }
    CHECK_EQ(nulls, 0);
    start(&t, keyed_main, &k);
    join(t);
    CHECK_EQ(pool_used(k.pool), 0);
    CHECK(pool_allocated(k.pool) <= KEY_N + 1);
    pool_flush(k.pool);
    CHECK_EQ(pool_allocated(k.pool), 0);
    CHECK(pool_destroy(k.pool) == NULL);
}

/* ---- point 6: idle objects in a blocked thread's cache ---------------- */

#define BLK_SZ 128

struct blocker {
    struct pool_head *pool;
    int n;
    void *obj[64];
    size_t nulls;
    struct signal ready, go;
};

/* Allocates n objects, dirties and frees them all (into its cache), then
 * blocks on a pipe until main is done. */
static void *blocker_main(void *arg)
{
    struct blocker *b = arg;
    for (int i = 0; i < b->n; i++) {
        b->obj[i] = pool_alloc(b->pool);
        b->nulls += b->obj[i] == NULL;
        if (b->obj[i])
            memset(b->obj[i], 0xA5, BLK_SZ);
    }
    for (int i = 0; i < b->n; i++)
        pool_free(b->pool, b->obj[i]);
    sig_post(&b->ready);
    sig_wait(&b->go);
    return NULL;
}

/* `nthreads` blocked threads hold all idle objects of a pool at its limit L
 * in their caches; main must get all L of them, then fail exactly once. */
static void run_blocked_steal(int nthreads, int per_thread, unsigned flags)
{
    struct blocker b[2];
    pthread_t t[2];
    struct pool_head *p = create_pool("blocked", BLK_SZ, flags);
    const int L = nthreads * per_thread;
    void *got[128], *all[128];
    size_t nulls = 0, foreign = 0, dirty_zalloc = 0, bad = 0;
    int nall = 0;

    CHECK(p != NULL);
    for (int k = 0; k < nthreads; k++) {
        b[k] = (struct blocker){ .pool = p, .n = per_thread };
        sig_init(&b[k].ready);
        sig_init(&b[k].go);
        start(&t[k], blocker_main, &b[k]);
        sig_wait(&b[k].ready);
        CHECK_EQ(b[k].nulls, 0);
        for (int i = 0; i < per_thread; i++)
            all[nall++] = b[k].obj[i];
    }
    /* Every object is idle in a blocked thread's cache. */
    CHECK_EQ(pool_allocated(p), L);
    CHECK_EQ(pool_used(p), 0);
    pool_flush(p);
    CHECK_EQ(pool_allocated(p), L);

    pool_set_limit(p, L);
    for (int i = 0; i < L; i++) {
        got[i] = (i % 3 == 0) ? pool_alloc(p) : (i % 3 == 1) ? pool_zalloc(p) : pool_alloc_nocache(p);
        nulls += got[i] == NULL;
        if (!got[i])
            continue;
        foreign += !member(got[i], all, nall);
        if (i % 3 == 1)
            dirty_zalloc += !all_bytes(got[i], BLK_SZ, 0);
        fill(got[i], BLK_SZ, i);
    }
    CHECK_EQ(nulls, 0);
    CHECK_EQ(foreign, 0);
    CHECK_EQ(dirty_zalloc, 0);
    CHECK_EQ(pool_allocated(p), L);
    CHECK_EQ(pool_used(p), L);
    CHECK_EQ(pool_failed(p), 0);
    /* Callers now really hold L objects: the next allocation fails. */
    CHECK(pool_alloc(p) == NULL);
    CHECK_EQ(pool_failed(p), 1);
    CHECK_EQ(pool_allocated(p), L);
    for (int i = 0; i < L; i++) {
        bad += got[i] && !intact(got[i], BLK_SZ, i);
        pool_free(p, got[i]);
    }
    CHECK_EQ(bad, 0);

    for (int k = 0; k < nthreads; k++) {
        sig_post(&b[k].go);
        join(t[k]);
        sig_close(&b[k].ready);
        sig_close(&b[k].go);
    }
    CHECK_EQ(pool_used(p), 0);
    CHECK_EQ(pool_allocated(p), L);
    pool_gc(NULL);
    CHECK_EQ(pool_allocated(p), 0);
    CHECK(pool_destroy(p) == NULL);
}

/* ---- a thread exiting while main allocates at the limit --------------- */

#define EXL_N 4000
#define EXL_ROUNDS 40

struct exiter {
    struct pool_head *pool;
    size_t nulls;
    struct signal cached;
};

static void *exiter_main(void *arg)
{
    struct exiter *e = arg;
    static void *o[EXL_N];
    for (int i = 0; i < EXL_N; i++) {
        o[i] = pool_alloc(e->pool);
        e->nulls += o[i] == NULL;
    }
    for (int i = 0; i < EXL_N; i++)
        pool_free(e->pool, o[i]);
    sig_post(&e->cached);
    return NULL; /* exits now: its cache goes back while main allocates */
}

/* Main allocates the whole limit while the thread that cached every idle
 * object exits: callers never hold the limit, so no allocation may fail,
 * wherever the exiting thread's objects are at that moment. */
static void test_exit_during_limit(void)
{
    static void *o[EXL_N];
    struct exiter e = { .pool = create_pool("exit-limit", 48, 0) };
    size_t nulls = 0, thread_nulls = 0;

    pool_set_limit(e.pool, EXL_N);
    pool_set_minavail(e.pool, EXL_N); /* returned objects stay idle */
    sig_init(&e.cached);
    for (int r = 0; r < EXL_ROUNDS; r++) {
        pthread_t t;
        start(&t, exiter_main, &e);
        sig_wait(&e.cached);
        for (int i = 0; i < EXL_N; i++) {
            o[i] = pool_alloc(e.pool);
            nulls += o[i] == NULL;
        }
        join(t);
        for (int i = 0; i < EXL_N; i++)
            pool_free(e.pool, o[i]);
        pool_gc(NULL); /* main's cache to the shared cache, for the next thread */
    }
    thread_nulls = e.nulls;
    CHECK_EQ(thread_nulls, 0);
    CHECK_EQ(nulls, 0);
    CHECK_EQ(pool_failed(e.pool), 0);
    CHECK_EQ(pool_used(e.pool), 0);
    CHECK_EQ(pool_allocated(e.pool), EXL_N);
    pool_flush(e.pool);
    CHECK_EQ(pool_allocated(e.pool), 0);
    CHECK(pool_destroy(e.pool) == NULL);
    sig_close(&e.cached);
}

/* ---- two threads trading objects at the limit ------------------------ */

#define SWAP_K 16
#define SWAP_ROUNDS 2000
#define SWAP_SZ 64
#define SWAP_LIMIT (SWAP_K + SWAP_K / 2)

struct swapper {
    struct pool_head *pool;
    pthread_barrier_t *bar;
    void **mine, **theirs; /* batches, written before and read after a barrier */
    unsigned id, n, their_id, their_n;
    size_t nulls, bad, over_limit;
};

/* Each round, thread 1 allocates SWAP_K objects and thread 2 SWAP_K / 2;
 * each frees the other's batch into its own cache. So thread 1 always finds
 * too few objects in its own cache and must take the rest from thread 2's
 * cache, while thread 2 is taking from it too. Callers never hold more than
 * SWAP_LIMIT objects, so no allocation may fail. */
static void *swapper_main(void *arg)
{
    struct swapper *s = arg;
    for (unsigned r = 0; r < SWAP_ROUNDS; r++) {
        for (unsigned i = 0; i < s->n; i++) {
            s->mine[i] = pool_alloc(s->pool);
            s->nulls += s->mine[i] == NULL;
            if (s->mine[i])
                fill(s->mine[i], SWAP_SZ, s->id * 7919u + r * 31u + i);
        }
        s->over_limit += pool_allocated(s->pool) > SWAP_LIMIT;
        pthread_barrier_wait(s->bar);
        for (unsigned i = 0; i < s->their_n; i++) {
            if (!s->theirs[i])
                continue;
            s->bad += !intact(s->theirs[i], SWAP_SZ, s->their_id * 7919u + r * 31u + i);
            pool_free(s->pool, s->theirs[i]);
        }
        pthread_barrier_wait(s->bar);
    }
    return NULL;
}

static void test_swap_at_limit(void)
{
    struct pool_head *p = create_pool("swap", SWAP_SZ, 0);
    pthread_barrier_t bar;
    void *batch[2][SWAP_K];
    struct swapper s[2];
    pthread_t t[2];

    pool_set_limit(p, SWAP_LIMIT);
    pthread_barrier_init(&bar, NULL, 2);
    s[0] = (struct swapper){ .pool = p, .bar = &bar, .mine = batch[0], .theirs = batch[1],
                             .id = 1, .n = SWAP_K, .their_id = 2, .their_n = SWAP_K / 2 };
    s[1] = (struct swapper){ .pool = p, .bar = &bar, .mine = batch[1], .theirs = batch[0],
                             .id = 2, .n = SWAP_K / 2, .their_id = 1, .their_n = SWAP_K };
    for (int k = 0; k < 2; k++)
        start(&t[k], swapper_main, &s[k]);
    for (int k = 0; k < 2; k++)
        join(t[k]);
    pthread_barrier_destroy(&bar);
    for (int k = 0; k < 2; k++) {
        CHECK_EQ(s[k].nulls, 0);
        CHECK_EQ(s[k].bad, 0);
        CHECK_EQ(s[k].over_limit, 0);
    }
    CHECK_EQ(pool_failed(p), 0);
    CHECK_EQ(pool_used(p), 0);
    CHECK(pool_allocated(p) <= SWAP_LIMIT);
    pool_flush(p); /* the threads' caches went back on exit */
    CHECK_EQ(pool_allocated(p), 0);
    CHECK(pool_destroy(p) == NULL);
}

/* ---- producer / consumer: allocated here, freed there ----------------- */

#define Q_CAP 64
#define PC_ITEMS 50000
#define PC_SZ 200

struct queue {
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    void *item[Q_CAP];
    unsigned seq[Q_CAP];
    unsigned head, count;
};

struct prodcons {
    struct pool_head *pool;
    struct queue q;
    pthread_barrier_t done;
    size_t prod_nulls, cons_bad, consumed, cons_foreign_seq;
};

static void q_push(struct queue *q, void *item, unsigned seq)
{
    pthread_mutex_lock(&q->lock);
    while (q->count == Q_CAP)
        pthread_cond_wait(&q->not_full, &q->lock);
    unsigned at = (q->head + q->count) % Q_CAP;
    q->item[at] = item;
    q->seq[at] = seq;
    q->count++;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->lock);
}

static void *q_pop(struct queue *q, unsigned *seq)
{
    pthread_mutex_lock(&q->lock);
    while (q->count == 0)
        pthread_cond_wait(&q->not_empty, &q->lock);
    void *item = q->item[q->head];
    *seq = q->seq[q->head];
    q->head = (q->head + 1) % Q_CAP;
    q->count--;
    pthread_cond_signal(&q->not_full);
    pthread_mutex_unlock(&q->lock);
    return item;
}

static void *producer_main(void *arg)
{
    struct prodcons *pc = arg;
    for (unsigned s = 1; s <= PC_ITEMS; s++) {
        void *o = (s % 2) ? pool_alloc(pc->pool) : pool_zalloc(pc->pool);
        if (!o) {
            pc->prod_nulls++;
            continue;
        }
        fill(o, PC_SZ, s);
        q_push(&pc->q, o, s);
    }
    q_push(&pc->q, NULL, 0);
    pthread_barrier_wait(&pc->done); /* all consumed */
    pthread_barrier_wait(&pc->done); /* main has looked */
    return NULL;
}

static void *consumer_main(void *arg)
{
    struct prodcons *pc = arg;
    unsigned seq, expect = 1;
    void *o;
    while ((o = q_pop(&pc->q, &seq)) != NULL) {
        pc->cons_bad += !intact(o, PC_SZ, seq);
        pc->cons_foreign_seq += seq < expect;
        expect = seq + 1;
        pool_free(pc->pool, o);
        pc->consumed++;
    }
    pthread_barrier_wait(&pc->done);
    pthread_barrier_wait(&pc->done);
    return NULL;
}

/* limit 0: unlimited. With Q_CAP + 2, the producer's allocations at the
 * limit must take the idle objects from the consumer's cache. */
static void run_prodcons(unsigned limit)
{
    struct prodcons pc = { .pool = create_pool("prodcons", PC_SZ, 0) };
    pthread_t prod, cons;
    unsigned long long used0 = pool_total_used();

    CHECK(pc.pool != NULL);
    pool_set_limit(pc.pool, limit);
    pthread_mutex_init(&pc.q.lock, NULL);
    pthread_cond_init(&pc.q.not_empty, NULL);
    pthread_cond_init(&pc.q.not_full, NULL);
    pthread_barrier_init(&pc.done, NULL, 3);
    start(&cons, consumer_main, &pc);
    start(&prod, producer_main, &pc);

    pthread_barrier_wait(&pc.done);
    /* Both threads are alive and still: every object is back, none used. */
    CHECK_EQ(pc.prod_nulls, 0);
    CHECK_EQ(pc.consumed, PC_ITEMS);
    CHECK_EQ(pc.cons_bad, 0);
    CHECK_EQ(pc.cons_foreign_seq, 0);
    CHECK_EQ(pool_used(pc.pool), 0);
    CHECK_EQ(pool_total_used(), used0);
    CHECK_EQ(pool_failed(pc.pool), 0);
    unsigned long alive = pool_allocated(pc.pool);
    CHECK(alive > 0 && alive <= PC_ITEMS);
    if (limit)
        CHECK(alive <= limit);
    pthread_barrier_wait(&pc.done);
    join(prod);
    join(cons);

    /* The threads' caches went back on exit; flush reaches every idle object. */
    CHECK_EQ(pool_used(pc.pool), 0);
    CHECK(pool_allocated(pc.pool) <= alive);
    pool_flush(pc.pool);
    CHECK_EQ(pool_allocated(pc.pool), 0);
    CHECK(pool_destroy(pc.pool) == NULL);
    pthread_barrier_destroy(&pc.done);
    pthread_cond_destroy(&pc.q.not_empty);
    pthread_cond_destroy(&pc.q.not_full);
    pthread_mutex_destroy(&pc.q.lock);
}

int main(void)
{
    run_thread_exit(1);
    run_thread_exit(0);
    if (pthread_key_create(&free_key, free_in_key_destructor) != 0)
        exit(2);
    run_key_destructor(1);
    run_key_destructor(0);
    run_blocked_steal(1, 32, 0);
    run_blocked_steal(2, 16, 0);
    run_blocked_steal(1, 20, MEM_F_EXACT | POOL_F_SHARED_NONE);
    test_swap_at_limit();
    test_exit_during_limit();
    run_prodcons(0);
    run_prodcons(Q_CAP + 2);
    DONE("test_pool_threads");
}
