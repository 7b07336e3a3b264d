/* Replacement for HAProxy 2.6's include/haproxy/pool.h, written for the
 * bufpool shim (examples/haproxy): the functions and macros HAProxy's
 * other sources call, implemented by the shim's src/pool.c on top of
 * bufpool. Not HAProxy's file. See docs/HAPROXY.md. */
#ifndef _HAPROXY_POOL_H
#define _HAPROXY_POOL_H

#include <string.h>

/* The headers HAProxy's own pool.h brings in: other files rely on them. */
#include <haproxy/api.h>
#include <haproxy/freq_ctr.h>
#include <haproxy/list.h>
#include <haproxy/pool-os.h>
#include <haproxy/pool-t.h>
#include <haproxy/thread.h>

/* Pools declared at file scope are created at the STG_POOL init stage. */
#define REGISTER_POOL(ptr, name, size) \
	INITCALL3(STG_POOL, create_pool_callback, (ptr), (name), (size))

#define DECLARE_POOL(ptr, name, size) \
	struct pool_head *(ptr) __read_mostly = NULL; \
	REGISTER_POOL(&ptr, name, size)

#define DECLARE_STATIC_POOL(ptr, name, size) \
	static struct pool_head *(ptr) __read_mostly; \
	REGISTER_POOL(&ptr, name, size)

extern int mem_poison_byte;   /* -dM<byte>; < 0: no poisoning */
extern uint pool_debugging;   /* POOL_DBG_* */

struct pool_head *create_pool(char *name, unsigned int size, unsigned int flags);
void create_pool_callback(struct pool_head **ptr, char *name, unsigned int size);
void *pool_destroy(struct pool_head *pool);
void pool_destroy_all(void);
void *__pool_alloc(struct pool_head *pool, unsigned int flags);
void __pool_free(struct pool_head *pool, void *ptr);
void *pool_alloc_nocache(struct pool_head *pool);
void pool_free_nocache(struct pool_head *pool, void *ptr);
void pool_flush(struct pool_head *pool);
void pool_gc(struct pool_head *pool_ctx);
void dump_pools_to_trash(void);
void dump_pools(void);
int pool_parse_debugging(const char *str, char **err);
int pool_total_failures(void);
unsigned long long pool_total_allocated(void);
unsigned long long pool_total_used(void);

#define pool_alloc(pool)  __pool_alloc((pool), 0)
#define pool_zalloc(pool) __pool_alloc((pool), POOL_F_MUST_ZERO)

/* NULL is accepted, as free() does. */
#define pool_free(pool, ptr) do {                       \
		typeof(ptr) __shim_ptr = (ptr);         \
		if (likely(__shim_ptr != NULL))         \
			__pool_free((pool), __shim_ptr); \
	} while (0)

#endif /* _HAPROXY_POOL_H */
