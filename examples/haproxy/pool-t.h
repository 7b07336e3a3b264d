/* Replacement for HAProxy 2.6's include/haproxy/pool-t.h, written for the
 * bufpool shim (examples/haproxy): the types and constants HAProxy's code
 * names, with every pool served by bufpool. Not HAProxy's file: the names
 * and values below are those HAProxy's other sources use, the rest is ours.
 * See docs/HAPROXY.md. */
#ifndef _HAPROXY_POOL_T_H
#define _HAPROXY_POOL_T_H

#include <haproxy/api-t.h>
#include <haproxy/list-t.h>

/* create_pool() flags, as HAProxy's callers pass them. */
#define MEM_F_SHARED        0x1     /* may merge with a pool of the same size and flags */
#define MEM_F_EXACT         0x2     /* size not rounded up */

/* __pool_alloc() flags. */
#define POOL_F_NO_POISON    0x1     /* no poisoning, even with -dM */
#define POOL_F_MUST_ZERO    0x2     /* the object comes zeroed */
#define POOL_F_NO_FAIL      0x4     /* never made to fail by tune.fail-alloc */

/* The -dM debugging features (pool_debugging), with HAProxy's values. */
#define POOL_DBG_FAIL_ALLOC 0x001   /* fail:       tune.fail-alloc percent of allocations fail */
#define POOL_DBG_DONT_MERGE 0x002   /* no-merge:   MEM_F_SHARED is ignored */
#define POOL_DBG_COLD_FIRST 0x004   /* cold-first: bufpool's cold-first */
#define POOL_DBG_INTEGRITY  0x008   /* integrity:  bufpool's integrity */
#define POOL_DBG_NO_GLOBAL  0x010   /* no-global:  bufpool's no-global */
#define POOL_DBG_NO_CACHE   0x020   /* no-cache:   bufpool's no-cache */
#define POOL_DBG_CALLER     0x040   /* caller:     a word at the object's end names the last caller */
#define POOL_DBG_TAG        0x080   /* tag:        a word after the object names its pool */
#define POOL_DBG_POISON     0x100   /* poison:     objects handed out are filled with mem_poison_byte */

struct hbp_pool;

/* One pool as HAProxy sees it. HAProxy's code outside the pool layer reads
 * `size` (several pools), and writes `limit` and `minavail` of the buffer
 * pool (src/dynbuf.c) directly: the shim hands those two to bufpool at the
 * next allocation that sees them differ from what it last handed over. */
struct pool_head {
	unsigned int limit;         /* at most this many objects (0: none) */
	unsigned int minavail;      /* idle objects kept before releasing */
	unsigned int size;          /* object size HAProxy may use */
	unsigned int flags;         /* MEM_F_* as merged */
	unsigned int users;         /* create_pool calls merged into this head */
	unsigned int alloc_sz;      /* object size asked of bufpool: size + debug words */
	unsigned int dbg;           /* the POOL_DBG_TAG|CALLER words this pool carries */
	unsigned int set_limit;     /* limit last handed to bufpool */
	unsigned int set_minavail;  /* minavail last handed to bufpool */
	unsigned int shim_failed;   /* allocations failed by tune.fail-alloc */
	struct hbp_pool *bp;        /* the bufpool pool behind */
	struct list list;           /* all heads, in creation order */
	char name[12];              /* as HAProxy keeps it */
};

#endif /* _HAPROXY_POOL_T_H */
