/* Tiny test harness shared by the C tests: CHECK records a failure with its
 * file, line and expression, and DONE() prints the tally and exits non-zero
 * when anything failed. Only the C standard library is used. */
#ifndef BUFPOOL_TEST_HARNESS_H
#define BUFPOOL_TEST_HARNESS_H

#include <stdio.h>
#include <stdlib.h>

static int harness_checks;
static int harness_failures;

#define CHECK(cond) do { \
        harness_checks++; \
        if (!(cond)) { \
            harness_failures++; \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        } \
    } while (0)

/* CHECK_EQ for unsigned long long values, printing both sides on failure. */
#define CHECK_EQ(a, b) do { \
        unsigned long long va_ = (unsigned long long)(a), vb_ = (unsigned long long)(b); \
        harness_checks++; \
        if (va_ != vb_) { \
            harness_failures++; \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %llu, %s == %llu\n", \
                    __FILE__, __LINE__, #a, va_, #b, vb_); \
        } \
    } while (0)

#define DONE(name) do { \
        printf("%s: %d checks, %d failed\n", (name), harness_checks, harness_failures); \
        return harness_failures ? 1 : 0; \
    } while (0)

#include <stddef.h>

/* Fills `n` bytes with a pattern that depends on `seed`. */
static inline void fill(void *p, size_t n, unsigned seed)
{
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(seed * 131u + i * 7u + 1u);
}

/* Does `p` still hold the pattern `fill(p, n, seed)` wrote? */
static inline int intact(const void *p, size_t n, unsigned seed)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)(seed * 131u + i * 7u + 1u))
            return 0;
    return 1;
}

/* Are all `n` bytes at `p` equal to `v`? */
static inline int all_bytes(const void *p, size_t n, unsigned char v)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != v)
            return 0;
    return 1;
}

#endif
