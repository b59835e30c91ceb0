/* repr(x) of a finite double, as CPython writes it (float.__repr__, and so json.dumps), without
 * Python: the digits come from Ryu (ryu/, vendored unchanged, see ryu/README.md), the layout is
 * CPython's (Python/pystrtod.c, format_float_short, 'r' mode).
 *
 * Why the digits are the same: repr asks David Gay's dtoa for the shortest digit string that
 * reads back as x, and of several such strings the one nearest to x (mode 0). Ryu computes the
 * same string: the shortest decimal inside x's rounding interval, correctly rounded, the interval's
 * ends included when x's significand is even (round-half-even on reading, as dtoa assumes), ties
 * of the last digit to even. tests/test_float_text.py holds the two to the same text on millions
 * of doubles.
 *
 * The layout, with the digits d1 d2 ... dn and decpt such that x = 0.d1d2...dn * 10**decpt:
 * fixed notation when -4 < decpt <= 16 (1e-4 <= |x| < 1e16), "0." and zeros in front when
 * decpt <= 0, zeros and ".0" behind a whole number; otherwise "d1.d2...dne+XX" (no point when
 * n == 1), the exponent signed and of at least two digits. Zero is "0.0" / "-0.0".
 *
 * Ryu's d2s.c (here ryu/d2s.c.h, so that the project's C-source rules -- .gitignore, the builds'
 * "*.c" globs -- leave it alone) is compiled into the one module that includes this header, its
 * public functions (d2s & co., which we do not call) hidden from the module's dynamic symbols.
 */
#ifndef TC_REPR_H
#define TC_REPR_H

/* Ryu's standard headers first, outside the hidden region: malloc & co. must keep their default
 * visibility. */
#include <assert.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif
#include "ryu/d2s.c.h"
#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

/* Longest text: "-" + 17 digits + "." + "e-308" = 24 (fixed notation is at most 23). */
#define TC_REPR_MAX 24

/* Writes repr(x) for a finite x at out (TC_REPR_MAX bytes; no terminating zero); returns its
 * length. Not for NaN or infinities (the caller's business: repr spells them "nan", "inf"). */
static inline size_t tc_repr_double(char *out, double x)
{
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    const int neg = (int)(bits >> 63);
    const uint64_t mant = bits & ((UINT64_C(1) << DOUBLE_MANTISSA_BITS) - 1);
    const uint32_t expo = (uint32_t)((bits >> DOUBLE_MANTISSA_BITS)
                                     & ((1u << DOUBLE_EXPONENT_BITS) - 1));
    char *o = out;
    if (neg)
        *o++ = '-';
    if (expo == 0 && mant == 0) {
        memcpy(o, "0.0", 3);
        return (size_t)(o + 3 - out);
    }
    floating_decimal_64 v;
    if (d2d_small_int(mant, expo, &v)) {
        /* a whole number below 2**53: Ryu's own shortcut; its zeros go into the exponent, as
         * d2s_buffered_n does, so the digits are the shortest */
        while (v.mantissa % 10 == 0) {
            v.mantissa /= 10;
            v.exponent++;
        }
    } else {
        v = d2d(mant, expo);
    }

    /* the digits, right to left, two at a time */
    char dig[20];
    uint64_t m = v.mantissa;
    int n = (int)decimalLength17(m), i = n;
    while (m >= 100) {
        const uint32_t c = (uint32_t)(m % 100) << 1;
        m /= 100;
        i -= 2;
        memcpy(dig + i, DIGIT_TABLE + c, 2);
    }
    if (m >= 10) {
        i -= 2;
        memcpy(dig + i, DIGIT_TABLE + ((uint32_t)m << 1), 2);
    } else {
        dig[--i] = (char)('0' + m);
    }

    const int decpt = n + v.exponent;
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {                   /* "0.000123" */
            memcpy(o, "0.", 2);
            memset(o + 2, '0', (size_t)-decpt);
            memcpy(o + 2 - decpt, dig, (size_t)n);
            o += 2 - decpt + n;
        } else if (decpt < n) {             /* "12.34" */
            memcpy(o, dig, (size_t)decpt);
            o[decpt] = '.';
            memcpy(o + decpt + 1, dig + decpt, (size_t)(n - decpt));
            o += n + 1;
        } else {                            /* "1200.0" */
            memcpy(o, dig, (size_t)n);
            memset(o + n, '0', (size_t)(decpt - n));
            memcpy(o + decpt, ".0", 2);
            o += decpt + 2;
        }
        return (size_t)(o - out);
    }
    *o++ = dig[0];                          /* "1.2345e+16", "5e-324" */
    if (n > 1) {
        *o++ = '.';
        memcpy(o, dig + 1, (size_t)(n - 1));
        o += n - 1;
    }
    int e = decpt - 1;
    *o++ = 'e';
    *o++ = e < 0 ? '-' : '+';
    if (e < 0)
        e = -e;
    if (e >= 100) {
        *o++ = (char)('0' + e / 100);
        e %= 100;
    }
    memcpy(o, DIGIT_TABLE + 2 * e, 2);
    return (size_t)(o + 2 - out);
}

#endif
