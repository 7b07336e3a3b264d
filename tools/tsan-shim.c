/* The memory intrinsics an LLVM-instrumented Rust library calls under
 * -Zsanitizer=thread, for GCC's libtsan, which does not define them. The
 * calls below go to libc through libtsan's own interceptors, so TSan still
 * sees each access. Linked into the TSan builds of the C harnesses only. */
#include <string.h>

void *__tsan_memset(void *d, int c, size_t n);
void *__tsan_memcpy(void *d, const void *s, size_t n);
void *__tsan_memmove(void *d, const void *s, size_t n);

void *__tsan_memset(void *d, int c, size_t n) { return memset(d, c, n); }
void *__tsan_memcpy(void *d, const void *s, size_t n) { return memcpy(d, s, n); }
void *__tsan_memmove(void *d, const void *s, size_t n) { return memmove(d, s, n); }
