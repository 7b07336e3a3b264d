/* The bridge between HAProxy's pool layer (our pool.c, compiled inside
 * HAProxy's tree with HAProxy's headers) and bufpool (bridge.c, compiled
 * with bufpool.h alone). The two sides cannot share a translation unit:
 * both name a `struct pool_head`, a `struct buffer`, `create_pool`,
 * `pool_alloc`, `pool_head_buffer`... So pool.c sees bufpool only through
 * these hbp_* functions, and bridge.c plus libbufpool.a are linked into one
 * relocatable object in which every symbol but the hbp_* ones is made local
 * (build.sh: ld -r, then objcopy --keep-global-symbols=bridge.syms).
 * Written for bufpool; this file is not HAProxy's. */
#ifndef HBP_BRIDGE_H
#define HBP_BRIDGE_H

#include <stddef.h>

struct hbp_pool;                        /* a bufpool `struct pool_head *` */

/* bufpool's create_pool; `shared` and `exact` are MEM_F_SHARED and
 * MEM_F_EXACT. NULL on failure. */
struct hbp_pool *hbp_create(const char *name, unsigned int size, int shared, int exact);
/* bufpool's pool_destroy_ex: 0 freed, >0 users left, -1 in use, -2 bad. */
int hbp_destroy(struct hbp_pool *p);
void hbp_destroy_all(void);
void *hbp_alloc(struct hbp_pool *p);
void *hbp_zalloc(struct hbp_pool *p);
void hbp_free(struct hbp_pool *p, void *obj);
void *hbp_alloc_nocache(struct hbp_pool *p);
void hbp_free_nocache(struct hbp_pool *p, void *obj);
void hbp_flush(struct hbp_pool *p);
void hbp_gc(void);
void hbp_set_limit(struct hbp_pool *p, unsigned int n);
void hbp_set_minavail(struct hbp_pool *p, unsigned int n);

/* The counters of one pool, read with bufpool's getters. */
struct hbp_counters {
	unsigned long allocated, used, needed_avg, failed, released;
	unsigned int users;
};
void hbp_counters(const struct hbp_pool *p, struct hbp_counters *c);
unsigned long long hbp_total_allocated(void);
unsigned long long hbp_total_used(void);

/* bufpool's dump_pools_to_fd_opts (opts NULL: the plain dump). */
int hbp_dump(int fd, const char *opts);
/* bufpool's pool_set_debugging: 0, or -1 on a word it does not know. */
int hbp_set_debugging(const char *words);
/* bufpool's pool_maintenance_thread. */
int hbp_maintenance_thread(int on);
const char *hbp_version(void);

#endif
