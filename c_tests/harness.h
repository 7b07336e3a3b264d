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

#endif
