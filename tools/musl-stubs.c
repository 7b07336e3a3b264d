/* Stubs that let a static musl program link libbufpool.a, which is built
 * for the GNU target: the Rust standard library there names a few glibc
 * symbols that bufpool never reaches at run time; pool_gc() calls glibc's
 * malloc_trim() and the caller debug mode glibc's backtrace(): musl has
 * neither. */
#include <stddef.h>

int __res_init(void);
const char *gnu_get_libc_version(void);
int _dl_find_object(void *pc, void *result);
int malloc_trim(size_t pad);

/* DNS resolver reset: std::net only; bufpool does no networking. */
int __res_init(void) { return 0; }

/* Asked by std for glibc-version workarounds; "musl" parses as no version. */
const char *gnu_get_libc_version(void) { return "musl"; }

/* Unwinder lookup (glibc 2.35+): -1 tells the unwinder to fall back to
 * dl_iterate_phdr. bufpool is built with panic=abort and never unwinds. */
int _dl_find_object(void *pc, void *result) { (void)pc; (void)result; return -1; }

/* pool_gc() ends with malloc_trim(); musl returns freed memory by itself. 0: nothing released here. */
int malloc_trim(size_t pad) { (void)pad; return 0; }

/* The `caller` debug mode asks glibc's backtrace() for the caller of a pool
 * function; musl has none. 0 frames: the caller shows as unknown. */
int backtrace(void **buffer, int size);
int backtrace(void **buffer, int size) { (void)buffer; (void)size; return 0; }
