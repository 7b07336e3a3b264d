/* bufpool's side of the HAProxy shim: each hbp_* function is one call of
 * bufpool's C API (see bridge.h for why the two sides are apart). */
#include "bridge.h"

#include <bufpool.h>

struct hbp_pool *hbp_create(const char *name, unsigned int size, int shared, int exact)
{
	unsigned int flags = (shared ? MEM_F_SHARED : 0) | (exact ? MEM_F_EXACT : 0);

	return (struct hbp_pool *)create_pool(name, size, flags);
}

int hbp_destroy(struct hbp_pool *p) { return pool_destroy_ex((struct pool_head *)p); }
void hbp_destroy_all(void) { pool_destroy_all(); }
void *hbp_alloc(struct hbp_pool *p) { return pool_alloc((struct pool_head *)p); }
void *hbp_zalloc(struct hbp_pool *p) { return pool_zalloc((struct pool_head *)p); }
void hbp_free(struct hbp_pool *p, void *obj) { pool_free((struct pool_head *)p, obj); }
void *hbp_alloc_nocache(struct hbp_pool *p) { return pool_alloc_nocache((struct pool_head *)p); }
void hbp_free_nocache(struct hbp_pool *p, void *obj) { pool_free_nocache((struct pool_head *)p, obj); }
void hbp_flush(struct hbp_pool *p) { pool_flush((struct pool_head *)p); }
void hbp_gc(void) { pool_gc(NULL); }
void hbp_set_limit(struct hbp_pool *p, unsigned int n) { pool_set_limit((struct pool_head *)p, n); }
void hbp_set_minavail(struct hbp_pool *p, unsigned int n) { pool_set_minavail((struct pool_head *)p, n); }

void hbp_counters(const struct hbp_pool *p, struct hbp_counters *c)
{
	const struct pool_head *ph = (const struct pool_head *)p;

	c->allocated = pool_allocated(ph);
	c->used = pool_used(ph);
	c->needed_avg = pool_needed_avg(ph);
	c->failed = pool_failed(ph);
	c->released = pool_released(ph);
	c->users = pool_users(ph);
}

unsigned long long hbp_total_allocated(void) { return pool_total_allocated(); }
unsigned long long hbp_total_used(void) { return pool_total_used(); }
int hbp_dump(int fd, const char *opts) { return dump_pools_to_fd_opts(fd, opts); }
int hbp_set_debugging(const char *words) { return pool_set_debugging(words); }
int hbp_maintenance_thread(int on) { return pool_maintenance_thread(on); }
const char *hbp_version(void) { return bufpool_version(); }
