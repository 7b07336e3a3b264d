/* The bufpool shim's src/pool.c for HAProxy 2.6: HAProxy's pool API (as its
 * other sources call it, declared by our pool.h) served by bufpool through
 * the hbp_* bridge (bridge.h). Written for bufpool from HAProxy's declared
 * interface; not HAProxy's file. The mapping, the debug options and what
 * HAProxy needs beyond bufpool's contract: docs/HAPROXY.md.
 *
 * What is the shim's own, and what is bufpool's:
 * - bufpool keeps the objects, the thread caches, the shared caches, the
 *   limits, the counters and the release to the OS;
 * - the shim keeps one `struct pool_head` per HAProxy pool (HAProxy reads
 *   its `size`, writes `limit` and `minavail`), merges MEM_F_SHARED pools
 *   itself (bufpool has no getter for the size it rounded to), and keeps
 *   HAProxy's per-object debug words (tag, caller), poisoning and
 *   tune.fail-alloc, which need per-call flags or per-object words bufpool
 *   does not offer; -dM's cache words go to bufpool's debug modes. */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE     /* memfd_create */
#endif
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <haproxy/api.h>
#include <haproxy/applet.h>
#include <haproxy/cfgparse.h>
#include <haproxy/chunk.h>
#include <haproxy/cli.h>
#include <haproxy/errors.h>
#include <haproxy/global.h>
#include <haproxy/list.h>
#include <haproxy/pool.h>
#include <haproxy/tools.h>

#include "bridge.h"

int mem_poison_byte __read_mostly = 0x50;

uint pool_debugging __read_mostly = 0
#if defined(DEBUG_MEMORY_POOLS)
	| POOL_DBG_TAG
#endif
#if defined(DEBUG_POOL_TRACING)
	| POOL_DBG_CALLER
#endif
#if defined(DEBUG_FAIL_ALLOC)
	| POOL_DBG_FAIL_ALLOC
#endif
#if defined(DEBUG_DONT_SHARE_POOLS)
	| POOL_DBG_DONT_MERGE
#endif
#if defined(DEBUG_POOL_INTEGRITY)
	| POOL_DBG_INTEGRITY | POOL_DBG_COLD_FIRST
#endif
	/* CONFIG_HAP_NO_GLOBAL_POOLS (HAProxy's default with a fast malloc:
	 * its own shared lists were slower than malloc) is not carried over:
	 * bufpool's shared cache is another design. -dMno-global still works. */
#if !defined(CONFIG_HAP_POOLS)
	| POOL_DBG_NO_CACHE
#endif
	;

/* Every head, in creation order (show pools lists them so). */
static struct list shim_pools = LIST_HEAD_INIT(shim_pools);
static pthread_mutex_t shim_lock = PTHREAD_MUTEX_INITIALIZER;

static int shim_fail_rate;              /* tune.fail-alloc, percent */
static THREAD_LOCAL unsigned int shim_rnd;

/* The -dM words, the bit each sets or clears, and the bufpool debug word
 * it becomes (NULL: the shim does it itself). */
static const struct shim_dbg_word {
	uint bit;
	const char *on, *off;
	const char *bp_on, *bp_off;
	const char *help;
} shim_words[] = {
	{ POOL_DBG_FAIL_ALLOC, "fail",       "no-fail",      NULL, NULL,               "tune.fail-alloc percent of allocations fail (shim)" },
	{ POOL_DBG_DONT_MERGE, "no-merge",   "merge",        NULL, NULL,               "MEM_F_SHARED pools are not merged (shim)" },
	{ POOL_DBG_COLD_FIRST, "cold-first", "hot-first",    "cold-first", "hot-first", "idle objects reused oldest first (bufpool)" },
	{ POOL_DBG_INTEGRITY,  "integrity",  "no-integrity", "integrity", "no-integrity", "write-after-free check of idle objects (bufpool)" },
	{ POOL_DBG_NO_GLOBAL,  "no-global",  "global",       "no-global", "global",   "no shared cache (bufpool)" },
	{ POOL_DBG_NO_CACHE,   "no-cache",   "cache",        "no-cache", "cache",     "no thread cache (bufpool)" },
	{ POOL_DBG_CALLER,     "caller",     "no-caller",    NULL, NULL,               "last caller in a word at the object's end (shim)" },
	{ POOL_DBG_TAG,        "tag",        "no-tag",       NULL, NULL,               "pool named in a word after the object, checked at free (shim)" },
	{ POOL_DBG_POISON,     "poison",     "no-poison",    NULL, NULL,               "objects handed out filled with the -dM byte (shim)" },
	{ 0, NULL, NULL, NULL, NULL, NULL }
};

/* The bufpool-mapped bits already handed to bufpool. */
static uint shim_pushed_dbg;
static int shim_pushed_uaf;

/* Hands bufpool the -dM words it implements that changed since the last
 * call. bufpool fixes its modes into each pool when it is created: this
 * runs before each create_pool. The environment's BUFPOOL_DEBUG is
 * bufpool's own and stays in force for what -dM does not change. */
static void shim_push_debugging(void)
{
	char words[256];
	size_t len = 0;
	const struct shim_dbg_word *w;

	words[0] = 0;
	for (w = shim_words; w->bit; w++) {
		const char *word;

		if (!w->bp_on || !((pool_debugging ^ shim_pushed_dbg) & w->bit))
			continue;
		word = (pool_debugging & w->bit) ? w->bp_on : w->bp_off;
		len += snprintf(words + len, sizeof(words) - len, "%s%s", len ? "," : "", word);
	}
#if defined(DEBUG_UAF)
	if (!shim_pushed_uaf) {
		len += snprintf(words + len, sizeof(words) - len, "%suaf", len ? "," : "");
		shim_pushed_uaf = 1;
	}
#endif
	(void)shim_pushed_uaf;
	if (len && hbp_set_debugging(words) != 0)
		ha_warning("bufpool refused the debug words '%s'\n", words);
	for (w = shim_words; w->bit; w++)
		if (w->bp_on)
			shim_pushed_dbg = (shim_pushed_dbg & ~w->bit) | (pool_debugging & w->bit);
}

/* The debug words of an object of <pool>: the tag right after its <size>
 * bytes, the caller in the last word. Either may be unaligned (MEM_F_EXACT
 * sizes): memcpy. */
static inline void shim_put_word(void *obj, size_t off, const void *val)
{
	memcpy((char *)obj + off, &val, sizeof(val));
}

static inline const void *shim_get_word(const void *obj, size_t off)
{
	const void *val;

	memcpy(&val, (const char *)obj + off, sizeof(val));
	return val;
}

static void shim_mark_alloc(struct pool_head *pool, void *obj, const void *caller)
{
	if (pool->dbg & POOL_DBG_TAG)
		shim_put_word(obj, pool->size, pool);
	if (pool->dbg & POOL_DBG_CALLER)
		shim_put_word(obj, pool->alloc_sz - sizeof(void *), caller);
}

/* At a free: the tag must name <pool>, else it is a double free (the tag
 * then holds the last freeing caller) or an object of another pool. */
static void shim_mark_free(struct pool_head *pool, void *obj, const void *caller)
{
	if (pool->dbg & POOL_DBG_TAG) {
		const void *tag = shim_get_word(obj, pool->size);

		if (tag != pool) {
			const struct pool_head *owner = NULL, *h;

			/* no lock: we are about to abort */
			list_for_each_entry(h, &shim_pools, list)
				if ((const void *)h == tag)
					owner = h;
			if (owner)
				fprintf(stderr, "haproxy+bufpool: wrong-pool free of %p to pool '%s': its tag names pool '%s'; "
				        "this call from %p\n", obj, pool->name, owner->name, caller);
			else
				fprintf(stderr, "haproxy+bufpool: double free (or overrun) of %p to pool '%s': its tag reads %p, "
				        "the last freeing caller for a double free; this call from %p\n", obj, pool->name, tag, caller);
			ABORT_NOW();
		}
		shim_put_word(obj, pool->size, caller);
	}
	if (pool->dbg & POOL_DBG_CALLER)
		shim_put_word(obj, pool->alloc_sz - sizeof(void *), caller);
}

/* HAProxy's code writes limit and minavail of the buffer pool directly:
 * they reach bufpool at the next allocation from the pool. */
static void shim_sync_settings(struct pool_head *pool)
{
	unsigned int limit = pool->limit, minavail = pool->minavail;

	if (limit != pool->set_limit) {
		hbp_set_limit(pool->bp, limit);
		pool->set_limit = limit;
	}
	if (minavail != pool->set_minavail) {
		hbp_set_minavail(pool->bp, minavail);
		pool->set_minavail = minavail;
	}
}

static inline void shim_sync_if_changed(struct pool_head *pool)
{
	if (unlikely(pool->limit != pool->set_limit || pool->minavail != pool->set_minavail))
		shim_sync_settings(pool);
}

/* tune.fail-alloc: a share of allocations fails (xorshift per thread, a
 * fixed seed per thread), once HAProxy has started. */
static int shim_should_fail(void)
{
	unsigned int x = shim_rnd;

	/* not while HAProxy starts: its configuration must load */
	if (!shim_fail_rate || (global.mode & MODE_STARTING))
		return 0;
	/* seeded by HAProxy's thread number: the same run fails the same
	 * allocations (the threads' start-up included, so a configuration
	 * that starts once starts every time) */
	if (!x)
		x = 0x9e3779b9u ^ ((unsigned int)tid + 1) * 2654435761u;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	shim_rnd = x;
	return (int)(x % 100) < shim_fail_rate;
}

static size_t shim_page(void)
{
	static size_t pg;

	if (!pg) {
		long v = sysconf(_SC_PAGESIZE);

		pg = v > 0 ? (size_t)v : 4096;
	}
	return pg;
}

struct pool_head *create_pool(char *name, unsigned int size, unsigned int flags)
{
	struct pool_head *pool;
	struct hbp_pool *bp;
	unsigned int extra = 0, dbg = pool_debugging & (POOL_DBG_TAG | POOL_DBG_CALLER);
	unsigned int alloc_sz;

	if (pool_debugging & POOL_DBG_DONT_MERGE)
		flags &= ~MEM_F_SHARED;
	flags &= MEM_F_SHARED | MEM_F_EXACT;
	/* bufpool's rounding (16 bytes) done here, so that `size` is what
	 * the object really has: the tag word sits right after it. */
	if (!(flags & MEM_F_EXACT))
		size = (size + 15) & ~15U;
	if (!size)
		size = 1;
	if (dbg & POOL_DBG_TAG)
		extra += sizeof(void *);
	if (dbg & POOL_DBG_CALLER)
		extra += sizeof(void *);
	/* bufpool maps objects of a page or more in strides of whole pages:
	 * words that would spill into one more page (the 16384-byte buffers:
	 * 20480 bytes each, +25%) are left out for this pool. */
	if (extra && size >= shim_page()) {
		size_t pg = shim_page(), room = (size + pg - 1) / pg * pg;

		if (room < (size_t)size + extra) {
			dbg = 0;
			extra = 0;
		}
	}
	alloc_sz = size + extra;

	pthread_mutex_lock(&shim_lock);
	shim_push_debugging();
	bp = hbp_create(name, alloc_sz, !!(flags & MEM_F_SHARED), !!(flags & MEM_F_EXACT));
	if (!bp) {
		pthread_mutex_unlock(&shim_lock);
		return NULL;
	}
	/* bufpool merged it into a pool a head of ours serves: one user more. */
	if (flags & MEM_F_SHARED) {
		list_for_each_entry(pool, &shim_pools, list) {
			if (pool->bp == bp && pool->size == size && pool->flags == flags && pool->dbg == dbg) {
				pool->users++;
				pthread_mutex_unlock(&shim_lock);
				return pool;
			}
		}
	}
	pool = calloc(1, sizeof(*pool));
	if (!pool) {
		hbp_destroy(bp);
		pthread_mutex_unlock(&shim_lock);
		return NULL;
	}
	pool->size = size;
	pool->alloc_sz = alloc_sz;
	pool->flags = flags;
	pool->dbg = dbg;
	pool->users = 1;
	pool->bp = bp;
	snprintf(pool->name, sizeof(pool->name), "%s", name ? name : "");
	LIST_APPEND(&shim_pools, &pool->list);
	pthread_mutex_unlock(&shim_lock);
	return pool;
}

void create_pool_callback(struct pool_head **ptr, char *name, unsigned int size)
{
	*ptr = create_pool(name, size, MEM_F_SHARED);
	if (!*ptr) {
		ha_alert("bufpool could not create pool '%s' of %u bytes: %s. Aborting.\n",
		         name, size, strerror(errno));
		exit(1);
	}
}

void *__pool_alloc(struct pool_head *pool, unsigned int flags)
{
	const void *caller = __builtin_return_address(0);
	void *obj;

	shim_sync_if_changed(pool);
	if (unlikely(pool_debugging & POOL_DBG_FAIL_ALLOC) && !(flags & POOL_F_NO_FAIL) && shim_should_fail()) {
		HA_ATOMIC_INC(&pool->shim_failed);
		return NULL;
	}
	obj = (flags & POOL_F_MUST_ZERO) ? hbp_zalloc(pool->bp) : hbp_alloc(pool->bp);
	if (unlikely(!obj))
		return NULL;
	if (unlikely(pool_debugging & POOL_DBG_POISON) && mem_poison_byte >= 0 &&
	    !(flags & (POOL_F_NO_POISON | POOL_F_MUST_ZERO)))
		memset(obj, mem_poison_byte, pool->size);
	if (unlikely(pool->dbg))
		shim_mark_alloc(pool, obj, caller);
	return obj;
}

void __pool_free(struct pool_head *pool, void *ptr)
{
	if (unlikely(pool->dbg))
		shim_mark_free(pool, ptr, __builtin_return_address(0));
	hbp_free(pool->bp, ptr);
}

void *pool_alloc_nocache(struct pool_head *pool)
{
	void *obj;

	shim_sync_if_changed(pool);
	obj = hbp_alloc_nocache(pool->bp);
	if (obj && pool->dbg)
		shim_mark_alloc(pool, obj, __builtin_return_address(0));
	return obj;
}

void pool_free_nocache(struct pool_head *pool, void *ptr)
{
	if (!ptr)
		return;
	if (pool->dbg)
		shim_mark_free(pool, ptr, __builtin_return_address(0));
	hbp_free_nocache(pool->bp, ptr);
}

void pool_flush(struct pool_head *pool)
{
	if (pool)
		hbp_flush(pool->bp);
}

/* bufpool's pool_gc works on every pool and every thread cache without
 * stopping HAProxy's threads: no thread_isolate() needed. */
void pool_gc(struct pool_head *pool_ctx)
{
	(void)pool_ctx;
	hbp_gc();
}

/* Another head served by the same bufpool pool? */
static int shim_bp_shared(const struct pool_head *pool)
{
	const struct pool_head *other;

	list_for_each_entry(other, &shim_pools, list)
		if (other != pool && other->bp == pool->bp)
			return 1;
	return 0;
}

void *pool_destroy(struct pool_head *pool)
{
	int ret;

	if (!pool)
		return NULL;
	pthread_mutex_lock(&shim_lock);
	ret = hbp_destroy(pool->bp);
	if (ret == -1) {
		/* objects still held: HAProxy's pool_destroy keeps such a pool too */
		pthread_mutex_unlock(&shim_lock);
		return pool;
	}
	if (--pool->users == 0) {
		LIST_DELETE(&pool->list);
		free(pool);
	}
	pthread_mutex_unlock(&shim_lock);
	return NULL;
}

/* At exit. With HAPROXY_BUFPOOL_EXIT_DUMP set in the environment, bufpool's
 * own dump goes to stderr first, then one line counting the pools that
 * still had objects out (a leak check for tests). */
void pool_destroy_all(void)
{
	struct pool_head *pool, *back;
	int report = getenv("HAPROXY_BUFPOOL_EXIT_DUMP") != NULL;
	int destroyed = 0, in_use = 0;

	if (report) {
		fflush(stderr);
		hbp_dump(2, NULL);
	}
	pthread_mutex_lock(&shim_lock);
	list_for_each_entry_safe(pool, back, &shim_pools, list) {
		int ret = 0;

		/* the last head of a bufpool pool takes all its users away */
		if (!shim_bp_shared(pool)) {
			do
				ret = hbp_destroy(pool->bp);
			while (ret > 0);
		}
		if (ret == -1) {
			in_use++;
			if (report)
				fprintf(stderr, "haproxy+bufpool: at exit, pool '%s' still has objects in use\n", pool->name);
			continue;
		}
		destroyed++;
		LIST_DELETE(&pool->list);
		free(pool);
	}
	pthread_mutex_unlock(&shim_lock);
	if (report)
		fprintf(stderr, "haproxy+bufpool: at exit, %d pools destroyed, %d still in use\n", destroyed, in_use);
}

/* A head whose bufpool pool an earlier head already counted. */
static int shim_counted_before(const struct pool_head *pool)
{
	const struct pool_head *other;

	list_for_each_entry(other, &shim_pools, list) {
		if (other == pool)
			return 0;
		if (other->bp == pool->bp)
			return 1;
	}
	return 0;
}

/* HAProxy's "show pools" lines, every counter read from bufpool. */
void dump_pools_to_trash(void)
{
	struct pool_head *pool;
	struct hbp_counters c;
	int nbpools = 0;

	chunk_printf(&trash, "Dumping pools usage (served by bufpool %s). Use SIGQUIT to flush them.\n", hbp_version());
	pthread_mutex_lock(&shim_lock);
	list_for_each_entry(pool, &shim_pools, list) {
		hbp_counters(pool->bp, &c);
		chunk_appendf(&trash, "  - Pool %s (%u bytes) : %lu allocated (%llu bytes), %lu used"
		              ", needed_avg %lu, %lu failures, %u users, %lu released, @%p%s%s\n",
		              pool->name, pool->size, c.allocated, (ullong)c.allocated * pool->size, c.used,
		              c.needed_avg, c.failed + pool->shim_failed, pool->users, c.released, pool,
		              (pool->flags & MEM_F_SHARED) ? " [SHARED]" : "",
		              shim_counted_before(pool) ? " [same bufpool pool as above]" : "");
		nbpools++;
	}
	pthread_mutex_unlock(&shim_lock);
	chunk_appendf(&trash, "Total: %d pools, %llu bytes allocated, %llu used (bufpool's totals).\n",
	              nbpools, hbp_total_allocated(), hbp_total_used());
}

void dump_pools(void)
{
	dump_pools_to_trash();
	qfprintf(stderr, "%s", trash.area);
}

int pool_total_failures(void)
{
	struct pool_head *pool;
	struct hbp_counters c;
	int failed = 0;

	pthread_mutex_lock(&shim_lock);
	list_for_each_entry(pool, &shim_pools, list) {
		failed += pool->shim_failed;
		if (!shim_counted_before(pool)) {
			hbp_counters(pool->bp, &c);
			failed += (int)c.failed;
		}
	}
	pthread_mutex_unlock(&shim_lock);
	return failed;
}

unsigned long long pool_total_allocated(void)
{
	return hbp_total_allocated();
}

unsigned long long pool_total_used(void)
{
	return hbp_total_used();
}

/* -dM[<byte>][,word...]: the grammar of HAProxy's option. A leading number
 * (or nothing at all) sets the poisoning byte and turns poisoning on, a
 * negative one turns it off; the words set or clear features (table
 * above); "bufpool=WORD" hands WORD to bufpool's pool_set_debugging as it
 * is (tag, uaf, caller... in bufpool's meaning); "help" lists them.
 * Returns 1 on success, -1 with the help in <err>, -2 with an error. */
int pool_parse_debugging(const char *str, char **err)
{
	uint new_dbg;
	char *end;
	long v;

	v = strtol(str, &end, 0);
	if (!*end || *end == ',') {
		mem_poison_byte = *str ? (int)v : 0x50;
		if (mem_poison_byte >= 0)
			pool_debugging |= POOL_DBG_POISON;
		else
			pool_debugging &= ~POOL_DBG_POISON;
		str = end;
	}
	new_dbg = pool_debugging;

	while (*str) {
		const struct shim_dbg_word *w;
		size_t len = strcspn(str, ",");

		if (!len) {
			str++;
			continue;
		}
		if (len == 4 && !strncmp(str, "help", 4)) {
			ha_free(err);
			memprintf(err, "-dM alone poisons objects with byte 0x50 when handed out; -dM<byte> picks the byte\n"
			          "(a negative one: no poisoning). Then comma-separated words ('*': current setting).\n"
			          "This HAProxy's pools are served by bufpool %s (see docs/HAPROXY.md):\n\n"
			          "    set               clear            description\n"
			          "  -----------------+-----------------+-----------------------------------------\n",
			          hbp_version());
			for (w = shim_words; w->bit; w++)
				memprintf(err, "%s  %c %-15s|%c %-15s| %s\n", *err,
				          (pool_debugging & w->bit) ? '*' : ' ', w->on,
				          (pool_debugging & w->bit) ? ' ' : '*', w->off, w->help);
			memprintf(err, "%s    bufpool=WORD        one of bufpool's own debug words (bufpool=help lists them)\n", *err);
			return -1;
		}
		if (len > 8 && !strncmp(str, "bufpool=", 8)) {
			char word[64];

			snprintf(word, sizeof(word), "%.*s", (int)(len - 8), str + 8);
			if (hbp_set_debugging(word) != 0) {
				memprintf(err, "bufpool refused the debug word <%s>", word);
				return -2;
			}
			str += len;
			continue;
		}
		for (w = shim_words; w->bit; w++) {
			if (strlen(w->on) == len && !strncmp(str, w->on, len)) {
				new_dbg |= w->bit;
				break;
			}
			if (strlen(w->off) == len && !strncmp(str, w->off, len)) {
				new_dbg &= ~w->bit;
				break;
			}
		}
		if (!w->bit) {
			memprintf(err, "unknown pool debugging feature <%.*s>", (int)len, str);
			return -2;
		}
		str += len;
	}
	pool_debugging = new_dbg;
	return 1;
}

/* "show pools": HAProxy's lines with bufpool's counters.
 * "show pools bufpool [byname|bysize|byusage] [match P] [N] [detailed] [json]":
 * bufpool's own dump (dump_pools_to_fd_opts), through a memfd, sent in as
 * many pieces as the output buffer needs. */
struct shim_show_ctx {
	int fd;          /* the memfd holding bufpool's dump, or -1 */
	off_t off;       /* what was already sent */
};

static int shim_cli_parse_show_pools(char **args, char *payload, struct appctx *appctx, void *private)
{
	struct shim_show_ctx *ctx = applet_reserve_svcctx(appctx, sizeof(*ctx));
	char opts[256];
	size_t len = 0;
	int arg;

	ctx->fd = -1;
	ctx->off = 0;
	if (!*args[2])
		return 0;
	if (strcmp(args[2], "bufpool") != 0)
		return cli_err(appctx, "show pools: no argument, or 'bufpool' and bufpool's dump options\n");
	opts[0] = 0;
	for (arg = 3; *args[arg]; arg++)
		len += snprintf(opts + len, len < sizeof(opts) ? sizeof(opts) - len : 0, "%s%s", len ? " " : "", args[arg]);
	if (len >= sizeof(opts))
		return cli_err(appctx, "show pools bufpool: options too long\n");
	ctx->fd = memfd_create("bufpool-dump", MFD_CLOEXEC);
	if (ctx->fd < 0)
		return cli_err(appctx, "show pools bufpool: memfd_create failed\n");
	if (hbp_dump(ctx->fd, opts) != 0) {
		close(ctx->fd);
		ctx->fd = -1;
		return cli_err(appctx, "show pools bufpool: bufpool refused these options (byname|bysize|byusage, match PREFIX, N, detailed, json)\n");
	}
	return 0;
}

static int shim_cli_io_show_pools(struct appctx *appctx)
{
	struct shim_show_ctx *ctx = appctx->svcctx;
	ssize_t n;

	if (ctx->fd < 0) {
		dump_pools_to_trash();
		return applet_putchk(appctx, &trash) == -1 ? 0 : 1;
	}
	for (;;) {
		n = pread(ctx->fd, trash.area, trash.size / 2, ctx->off);
		if (n <= 0)
			return 1;
		trash.data = n;
		if (applet_putchk(appctx, &trash) == -1)
			return 0;      /* called again when there is room */
		ctx->off += n;
	}
}

static void shim_cli_release_show_pools(struct appctx *appctx)
{
	struct shim_show_ctx *ctx = appctx->svcctx;

	if (ctx && ctx->fd >= 0) {
		close(ctx->fd);
		ctx->fd = -1;
	}
}

/* "debug pools misuse double-free|wrong-pool" (expert mode, like HAProxy's
 * "debug dev panic"): frees an object of a fresh pool twice, or into
 * another pool, to show that the tag word (-dM's default) catches it: the
 * process aborts with one line on stderr. Refused when the tag word is off,
 * as the misuse would then go unnoticed and corrupt the pool. */
static int shim_cli_parse_misuse(char **args, char *payload, struct appctx *appctx, void *private)
{
	struct pool_head *a, *b;
	void *obj;
	int twice;

	if (!cli_has_level(appctx, ACCESS_LVL_ADMIN))
		return 1;
	if (strcmp(args[3], "double-free") == 0)
		twice = 1;
	else if (strcmp(args[3], "wrong-pool") == 0)
		twice = 0;
	else
		return cli_err(appctx, "debug pools misuse: double-free or wrong-pool\n");
	if (!(pool_debugging & POOL_DBG_TAG))
		return cli_err(appctx, "debug pools misuse: the tag word is off (-dMno-tag): refused\n");
	a = create_pool("misuse-a", 64, 0);
	b = create_pool("misuse-b", 64, 0);   /* same size, not merged: the tag at the same place */
	obj = a ? pool_alloc(a) : NULL;
	if (!b || !obj) {
		pool_free(a, obj);
		pool_destroy(a);
		pool_destroy(b);
		return cli_err(appctx, "debug pools misuse: no memory\n");
	}
	if (twice) {
		pool_free(a, obj);
		pool_free(a, obj);      /* aborts: the tag now names the first free's caller */
	} else {
		pool_free(b, obj);      /* aborts: the tag names misuse-a */
	}
	return cli_err(appctx, "debug pools misuse: not caught\n");
}

static struct cli_kw_list shim_cli_kws = {{ },{
	{ { "show", "pools", NULL }, "show pools [bufpool [opts]]              : memory pools (served by bufpool)",
	  shim_cli_parse_show_pools, shim_cli_io_show_pools, shim_cli_release_show_pools },
	{ { "debug", "pools", "misuse", NULL }, "debug pools misuse double-free|wrong-pool : abort on a pool misuse the tag word catches",
	  shim_cli_parse_misuse, NULL, NULL, NULL, ACCESS_EXPERT },
	{{},}
}};

INITCALL1(STG_REGISTER, cli_register_kw, &shim_cli_kws);

/* global "tune.fail-alloc <percent>" */
static int shim_parse_fail_alloc(char **args, int section_type, struct proxy *curpx,
                                 const struct proxy *defpx, const char *file, int line, char **err)
{
	if (too_many_args(1, args, err, NULL))
		return -1;
	shim_fail_rate = atoi(args[1]);
	if (shim_fail_rate < 0 || shim_fail_rate > 100) {
		memprintf(err, "'%s' expects a percentage from 0 to 100.", args[0]);
		return -1;
	}
	return 0;
}

/* global "no-memory-trimming": accepted; bufpool's pool_gc trims malloc
 * always (docs/HAPROXY.md). */
static int shim_parse_no_trim(char **args, int section_type, struct proxy *curpx,
                              const struct proxy *defpx, const char *file, int line, char **err)
{
	if (too_many_args(0, args, err, NULL))
		return -1;
	return 0;
}

static struct cfg_kw_list shim_cfg_kws = {ILH, {
	{ CFG_GLOBAL, "tune.fail-alloc", shim_parse_fail_alloc },
	{ CFG_GLOBAL, "no-memory-trimming", shim_parse_no_trim },
	{ 0, NULL, NULL }
}};

INITCALL1(STG_REGISTER, cfg_register_keywords, &shim_cfg_kws);

/* "haproxy -vv" says who serves the pools. */
static void shim_build_options(void)
{
	char *msg = NULL;

	memprintf(&msg, "Memory pools served by bufpool %s (examples/haproxy shim).", hbp_version());
	hap_register_build_opts(msg, 1);
}

INITCALL0(STG_REGISTER, shim_build_options);
