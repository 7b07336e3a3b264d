/* The body pattern the test backend serves and the test client checks:
 * byte i of every body is pattern_byte(i). Period 65521 (a prime), so that
 * no buffer size lines up with it. */
#ifndef RELAY_PATTERN_H
#define RELAY_PATTERN_H

#include <stddef.h>

#define PATTERN_PERIOD 65521u

static inline unsigned char pattern_byte(size_t i)
{
    size_t k = i % PATTERN_PERIOD;
    return (unsigned char)("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_"[(k * 37 + k / 61) % 64]);
}

/* Fills `p` with `n` bytes of the pattern from offset `off`. */
static inline void pattern_fill(unsigned char *p, size_t off, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pattern_byte(off + i);
}

#endif
