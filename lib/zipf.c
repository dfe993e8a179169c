/*
 * zipf.c - rejection-inversion Zipf sampling (see zipf.h).
 *
 * Ranks are 1..n here and shifted to 0..n-1 on the way out. h(x) = x^-s is
 * the unnormalised density; H is an antiderivative of it, written through
 * expm1 and log1p so that it stays accurate when s is close to 1 (where the
 * textbook (x^(1-s) - 1) / (1 - s) loses every digit). A draw inverts H at a
 * uniform point of [H(n + 0.5), H(1.5) - 1], rounds to the nearest rank k and
 * keeps it when the point falls under the area that belongs to k: the
 * acceptance rate is high for every s, so the expected cost is a few
 * logarithms and exponentials.
 */
#include "zipf.h"

#include <errno.h>
#include <math.h>

/* log1p(x) / x, continuous at 0. */
static double log1p_over(double x)
{
    if (fabs(x) > 1e-8)
        return log1p(x) / x;
    return 1 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x));
}

/* expm1(x) / x, continuous at 0. */
static double expm1_over(double x)
{
    if (fabs(x) > 1e-8)
        return expm1(x) / x;
    return 1 + x * 0.5 * (1 + x * (1.0 / 3.0) * (1 + 0.25 * x));
}

static double h(double s, double x)
{
    return exp(-s * log(x));
}

static double h_integral(double s, double x)
{
    double lx = log(x);

    return expm1_over((1 - s) * lx) * lx;
}

static double h_integral_inverse(double s, double x)
{
    double t = x * (1 - s);

    /* Rounding can push t below the domain of log1p. */
    if (t < -1)
        t = -1;
    return exp(log1p_over(t) * x);
}

int zipf_init(struct zipf *z, uint64_t n, double s)
{
    if (n == 0 || !(s > 0 && s <= ZIPF_S_MAX))
        return -EINVAL;
    z->n = n;
    z->s = s;
    z->h_x1 = h_integral(s, 1.5) - 1;
    z->h_n = h_integral(s, (double)n + 0.5);
    z->s_accept = 2 - h_integral_inverse(s, h_integral(s, 2.5) - h(s, 2));
    return 0;
}

uint64_t zipf_rand(uint64_t *state)
{
    uint64_t x = (*state += 0x9e3779b97f4a7c15ull);

    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t zipf_next(const struct zipf *z, uint64_t *state)
{
    for (;;) {
        double u01 = (double)(zipf_rand(state) >> 11) * 0x1.0p-53;
        double u = z->h_n + u01 * (z->h_x1 - z->h_n);
        double x = h_integral_inverse(z->s, u);
        double kd = floor(x + 0.5);
        uint64_t k;

        /* Clamped to 1..n; a double as large as 2^64 has no uint64_t. */
        if (kd < 1)
            kd = 1;
        if (kd >= 0x1.0p64 || (uint64_t)kd > z->n) {
            k = z->n;
            kd = (double)k;
        } else {
            k = (uint64_t)kd;
        }
        if (kd - x <= z->s_accept || u >= h_integral(z->s, kd + 0.5) - h(z->s, kd))
            return k - 1;
    }
}
