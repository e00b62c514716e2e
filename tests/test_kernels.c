/* test_kernels.c — checks every SIMD kernel table this CPU can run (and the
 * scalar one itself) against the scalar reference: row dequantisation,
 * gemv, transposed gemv, gemm, dot and axpy over all weight dtypes (Q8_0 /
 * Q4_K on raw random blocks; test_quant covers them on encoded data), odd
 * shapes, FP8 block scales and strided token matrices; plus the FP8 decoder
 * on all 256 codes, the lightning indexer's decoder and blocked scorer
 * (bit-exact against an int64 reference) and the ISA selection rules.  Needs nothing beyond simd/,
 * so test_kernels_neon.sh cross-builds it for aarch64 and runs it under
 * qemu.  With --selection only the ISA selection is checked. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpu.h"
#include "kernels_isa.h"
#include "quant.h"
#include "worksplit.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static int failures;
static long checks;

#define FAIL(...) do { failures++; if (failures <= 20) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

static unsigned long long rng_state = 0x9e3779b97f4a7c15ull;

static unsigned rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state >> 32);
}

static float frand(void) { return (float)rnd() / 4294967296.0f * 2.0f - 1.0f; }

static float *rand_vec(size_t n)
{
    float *v = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        v[i] = frand();
    return v;
}

/* FP8 weight variants: block scales that are powers of two exercise the
 * exactness of the decode, other scales the rounding of the product. */
enum wkind { W_F32, W_BF16, W_F16, W_F8_POW2, W_F8_ANY, W_Q8_0, W_Q4_K, W_COUNT };
static const char *wkind_names[W_COUNT] = {"F32", "BF16", "F16", "F8/pow2-scale", "F8/any-scale", "Q8_0",
                                           "Q4_K"};

typedef struct test_mat {
    ds_mat m;
    void *data;
    float *scale;
    float *deq;      /* scalar-dequantised copy, for tolerances */
} test_mat;

static uint8_t rand_e4m3(void)
{
    uint8_t c;
    do
        c = (uint8_t)rnd();
    while ((c & 0x7f) == 0x7f);   /* NaN codes never occur in weights */
    return c;
}

/* Random bits in every quant, scale and min of a Q8_0 / Q4_K block, with d
 * and dmin kept in a sane range so the products stay finite. */
static void rand_block(ds_dtype dt, uint8_t *b)
{
    for (size_t i = 0; i < ds_dtype_block_bytes(dt); i++)
        b[i] = (uint8_t)rnd();
    const uint16_t d = ds_f32_to_f16(0.001f + 0.01f * (float)(rnd() % 1000) / 1000.0f);
    const uint16_t dmin = ds_f32_to_f16(0.0005f * (float)(rnd() % 1000) / 1000.0f);
    memcpy(b, &d, 2);
    if (dt == DS_DT_Q4_K)
        memcpy(b + 2, &dmin, 2);
}

static void make_mat(test_mat *t, enum wkind k, int rows, int cols)
{
    static const ds_dtype dts[W_COUNT] = {DS_DT_F32,     DS_DT_BF16, DS_DT_F16, DS_DT_F8_E4M3,
                                          DS_DT_F8_E4M3, DS_DT_Q8_0, DS_DT_Q4_K};
    const ds_dtype dt = dts[k];
    const size_t n = (size_t)rows * cols;
    size_t n_plain = n;   /* elements written one by one below */
    t->data = malloc(ds_dtype_row_bytes(dt, cols) * (size_t)rows);
    t->scale = NULL;
    if (ds_dtype_is_block(dt)) {
        const size_t nb = ds_dtype_row_bytes(dt, cols) * (size_t)rows / ds_dtype_block_bytes(dt);
        for (size_t i = 0; i < nb; i++)
            rand_block(dt, (uint8_t *)t->data + i * ds_dtype_block_bytes(dt));
        n_plain = 0;
    }
    for (size_t i = 0; i < n_plain; i++) {
        switch (dt) {
        case DS_DT_F32: ((float *)t->data)[i] = frand(); break;
        case DS_DT_BF16: ((uint16_t *)t->data)[i] = ds_f32_to_bf16(frand()); break;
        case DS_DT_F16: ((uint16_t *)t->data)[i] = ds_f32_to_f16(frand()); break;
        default: ((uint8_t *)t->data)[i] = rand_e4m3(); break;
        }
    }
    if (dt == DS_DT_F8_E4M3) {
        const size_t ns = (size_t)((rows + DS_QBLOCK - 1) / DS_QBLOCK) * ((cols + DS_QBLOCK - 1) / DS_QBLOCK);
        t->scale = malloc(sizeof(float) * ns);
        for (size_t i = 0; i < ns; i++)
            t->scale[i] = k == W_F8_POW2 ? ldexpf(1.0f, (int)(rnd() % 13) - 10)
                                         : 0.0005f + 0.05f * (float)(rnd() % 10000) / 10000.0f;
    }
    t->m = (ds_mat){.dtype = dt, .rows = rows, .cols = cols, .data = t->data, .scale = t->scale};
    t->deq = malloc(sizeof(float) * n);
    for (int r = 0; r < rows; r++)
        ds_kernels_scalar.mat_row(&t->m, r, t->deq + (size_t)r * cols);
}

static void free_mat(test_mat *t)
{
    free(t->data);
    free(t->scale);
    free(t->deq);
}

static int close_enough(float got, float want, double mag)
{
    return fabs((double)got - want) <= 1e-5 * mag + 1e-6;
}

/* sum_c |W[r][c] * x[c]|: the scale of the rounding differences. */
static double row_mag(const test_mat *t, int r, const float *x)
{
    double s = 0.0;
    for (int c = 0; c < t->m.cols; c++)
        s += fabs((double)t->deq[(size_t)r * t->m.cols + c] * x[c]);
    return s;
}

static void check_mat_row(const ds_kernels *k, const test_mat *t, const char *what)
{
    float *row = malloc(sizeof(float) * t->m.cols);
    for (int r = 0; r < t->m.rows; r++) {
        k->mat_row(&t->m, r, row);
        checks++;
        /* Dequantisation is exact in every ISA, so bitwise equal. */
        if (memcmp(row, t->deq + (size_t)r * t->m.cols, sizeof(float) * t->m.cols) != 0) {
            FAIL("%s %s: mat_row %d differs", k->name, what, r);
            break;
        }
    }
    free(row);
}

static void check_gemv(const ds_kernels *k, const test_mat *t, int r0, int nrows, const char *what)
{
    float *x = rand_vec(t->m.cols), *y = malloc(sizeof(float) * (nrows + 1));
    y[nrows] = 12345.0f;
    k->gemv(&t->m, r0, nrows, x, y);
    for (int i = 0; i < nrows; i++) {
        float want;
        ds_kernels_scalar.gemv(&t->m, r0 + i, 1, x, &want);
        checks++;
        if (!close_enough(y[i], want, row_mag(t, r0 + i, x))) {
            FAIL("%s %s: gemv r0=%d row %d: %.9g vs %.9g", k->name, what, r0, i, y[i], want);
            break;
        }
    }
    if (y[nrows] != 12345.0f)
        FAIL("%s %s: gemv wrote past y", k->name, what);
    free(x), free(y);
}

static void check_gemv_t(const ds_kernels *k, const test_mat *t, int r0, int nrows, const char *what)
{
    const int cols = t->m.cols;
    float *x = rand_vec(nrows), *y = malloc(sizeof(float) * (cols + 1)), *want = malloc(sizeof(float) * cols);
    y[cols] = 12345.0f;
    k->gemv_t(&t->m, r0, nrows, x, y);
    ds_kernels_scalar.gemv_t(&t->m, r0, nrows, x, want);
    for (int c = 0; c < cols; c++) {
        double mag = 0.0;
        for (int i = 0; i < nrows; i++)
            mag += fabs((double)t->deq[(size_t)(r0 + i) * cols + c] * x[i]);
        checks++;
        if (!close_enough(y[c], want[c], mag)) {
            FAIL("%s %s: gemv_t r0=%d n=%d col %d: %.9g vs %.9g", k->name, what, r0, nrows, c, y[c], want[c]);
            break;
        }
    }
    if (y[cols] != 12345.0f)
        FAIL("%s %s: gemv_t wrote past y", k->name, what);
    free(x), free(y), free(want);
}

/* gemm_t must give each token its gemv_t to the bit (batched decode's
 * absorbed queries equal a lone sequence's); Y's stride gap stays as it
 * was.  Levels without a form of their own loop gemv_t (ds_gemm_t). */
static void check_gemm_t(const ds_kernels *k, const test_mat *t, int r0, int nrows, int n, const char *what)
{
    if (!k->gemm_t)
        return;
    const int cols = t->m.cols, ldx = nrows + 3, ldy = cols + 5;
    float *X = rand_vec((size_t)n * ldx), *Y = malloc(sizeof(float) * (size_t)n * ldy);
    float *want = malloc(sizeof(float) * (size_t)cols);
    for (size_t i = 0; i < (size_t)n * ldy; i++)
        Y[i] = -777.0f;
    k->gemm_t(&t->m, r0, nrows, X, ldx, n, Y, ldy);
    for (int tk = 0; tk < n; tk++) {
        k->gemv_t(&t->m, r0, nrows, X + (size_t)tk * ldx, want);
        for (int c = 0; c < ldy; c++) {
            const float got = Y[(size_t)tk * ldy + c];
            checks++;
            if (c >= cols ? got != -777.0f : memcmp(&got, &want[c], sizeof got) != 0) {
                FAIL("%s %s: gemm_t r0=%d n=%d token %d col %d: %.9g vs gemv_t %.9g", k->name, what, r0, n, tk, c,
                     got, c < cols ? want[c] : -777.0f);
                goto out;
            }
        }
    }
out:
    free(X), free(Y), free(want);
}

/* Y has stride ldy > nrows; the gap must stay untouched. */
static void check_gemm(const ds_kernels *k, const test_mat *t, int r0, int nrows, int n, const char *what)
{
    const int cols = t->m.cols, ldx = cols + 3, ldy = nrows + 5;
    float *X = rand_vec((size_t)n * ldx);
    float *Y = malloc(sizeof(float) * (size_t)n * ldy), *W = malloc(sizeof(float) * (size_t)n * ldy);
    for (size_t i = 0; i < (size_t)n * ldy; i++)
        Y[i] = W[i] = -777.0f;
    k->gemm(&t->m, r0, nrows, X, ldx, n, Y, ldy);
    ds_kernels_scalar.gemm(&t->m, r0, nrows, X, ldx, n, W, ldy);
    for (int tk = 0; tk < n; tk++) {
        for (int i = 0; i < ldy; i++) {
            const size_t at = (size_t)tk * ldy + i;
            checks++;
            if (i >= nrows) {
                if (Y[at] != -777.0f) {
                    FAIL("%s %s: gemm wrote into the stride gap", k->name, what);
                    goto out;
                }
            } else if (!close_enough(Y[at], W[at], row_mag(t, r0 + i, X + (size_t)tk * ldx))) {
                FAIL("%s %s: gemm r0=%d n=%d token %d row %d: %.9g vs %.9g", k->name, what, r0, n, tk, i,
                     Y[at], W[at]);
                goto out;
            }
        }
    }
out:
    free(X), free(Y), free(W);
}

static void check_matrices(const ds_kernels *k)
{
    /* row and token counts leave every remainder of the GEMM tiles (AVX2
     * 3 rows x 4 tokens, AVX-512 4 x 4) */
    static const int rows_list[] = {1, 2, 3, 127, 129, 300};
    static const int cols_list[] = {1, 7, 64, 127, 128, 129, 200, 511, 576};
    /* Whole blocks only: one, several, and past the 512-column GEMM chunk. */
    static const int q8_cols[] = {32, 96, 544};
    static const int q4_cols[] = {256, 768};
    static const int n_list[] = {1, 2, 3, 4, 5, 8, 14, 15, 17};
    char what[96];
    for (int kind = 0; kind < W_COUNT; kind++) {
        const int *cl = kind == W_Q8_0 ? q8_cols : kind == W_Q4_K ? q4_cols : cols_list;
        const size_t ncl = kind == W_Q8_0   ? sizeof q8_cols / sizeof *q8_cols
                           : kind == W_Q4_K ? sizeof q4_cols / sizeof *q4_cols
                                            : sizeof cols_list / sizeof *cols_list;
        for (size_t ri = 0; ri < sizeof rows_list / sizeof *rows_list; ri++)
            for (size_t ci = 0; ci < ncl; ci++) {
                const int rows = rows_list[ri], cols = cl[ci];
                test_mat t;
                make_mat(&t, (enum wkind)kind, rows, cols);
                snprintf(what, sizeof what, "%s %dx%d", wkind_names[kind], rows, cols);
                check_mat_row(k, &t, what);
                check_gemv(k, &t, 0, rows, what);
                check_gemv_t(k, &t, 0, rows, what);
                if (rows > 2) {
                    /* Sub-ranges that start inside an FP8 scale block. */
                    check_gemv(k, &t, 1, rows - 2, what);
                    check_gemv_t(k, &t, rows / 3, rows - rows / 3 - 1, what);
                }
                for (size_t ni = 0; ni < sizeof n_list / sizeof *n_list; ni++) {
                    check_gemm_t(k, &t, rows > 2 ? 1 : 0, rows > 2 ? rows - 2 : rows, n_list[ni], what);
                    check_gemm(k, &t, 0, rows, n_list[ni], what);
                    if (rows > 2)
                        check_gemm(k, &t, 2, rows - 2, n_list[ni], what);
                }
                free_mat(&t);
            }
    }
}

static void check_dot_axpy(const ds_kernels *k)
{
    for (int n = 0; n <= 600; n += (n < 70 ? 1 : 37)) {
        float *a = rand_vec(n), *b = rand_vec(n + 1), *c = malloc(sizeof(float) * (n + 1));
        double mag = 0.0;
        for (int i = 0; i < n; i++)
            mag += fabs((double)a[i] * b[i]);
        float got = k->dot(a, b, n), want = ds_kernels_scalar.dot(a, b, n);
        checks++;
        if (!close_enough(got, want, mag))
            FAIL("%s: dot n=%d: %.9g vs %.9g", k->name, n, got, want);
        memcpy(c, b, sizeof(float) * (n + 1));
        const float alpha = frand();
        k->axpy(alpha, a, b, n);
        ds_kernels_scalar.axpy(alpha, a, c, n);
        for (int i = 0; i <= n; i++) {
            checks++;
            if (!close_enough(b[i], c[i], fabs((double)alpha * (i < n ? a[i] : 0.0f)) + fabs(c[i]))) {
                FAIL("%s: axpy n=%d at %d: %.9g vs %.9g", k->name, n, i, b[i], c[i]);
                break;
            }
        }
        free(a), free(b), free(c);
    }
}

/* ds_gemm_bf16 against ds_gemm_bf16_ref (x rounded to bf16, or for Q4_K
 * to int8 levels x 2^e per 256 columns; exact weight codes, f32 sums,
 * block multipliers in f32).  Both form the same exact
 * products (bf16 x bf16 fits f32) and differ only in the order of the f32
 * additions and in fusing the block multiply-add, so per output
 * |got - want| <= 2 * (cols + 8) * 2^-24 * mag, mag = sum |terms| over the
 * dot (the two worst-case summation error bounds added; Q4_K's min terms
 * dmin*m*sum(x) counted too).  That bound is rigorous; the differences seen
 * are far smaller.  When the rounded kernel is not in use (F32 / F16, or
 * no AVX512_BF16) ds_gemm_bf16 must be ds_gemm, bit for bit. */
static double bf16_mag(const test_mat *t, int r, const float *x)
{
    double s = 0.0;
    const int cols = t->m.cols;
    float *xq = t->m.dtype == DS_DT_Q4_K ? malloc(sizeof(float) * (size_t)cols) : NULL;
    if (xq)
        ds_q4_k_act_round(x, cols, xq);
    for (int c = 0; c < cols; c++) {
        const double xr = xq ? xq[c] : ds_bf16_to_f32(ds_f32_to_bf16(x[c]));
        double w = fabs((double)t->deq[(size_t)r * cols + c]);
        if (t->m.dtype == DS_DT_Q4_K) {
            const uint8_t *blk = (const uint8_t *)t->data + ds_dtype_row_bytes(DS_DT_Q4_K, cols) * (size_t)r +
                                 (size_t)(c / 256) * DS_Q4_K_BYTES;
            int sc, mn;
            ds_q4_k_scale_min(blk + DS_Q4_K_OFF_SCALES, (c % 256) / 32, &sc, &mn);
            w += 2.0 * fabs((double)ds_load_f16(blk + 2) * mn);   /* a*q and dmin*m, each at most |w| + dmin*m */
        }
        s += w * fabs(xr);
    }
    free(xq);
    return s;
}

typedef void (*gemm_fn)(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy);

/* ds_gemm_bf16_q4k_i8 as a gemm_fn (the AVX2 int8 form, whatever the
 * level in use); a call it declines leaves Y as it was, and fails below. */
static void gemm_q4k_i8(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    (void)ds_gemm_bf16_q4k_i8(m, r0, nrows, X, ldx, n, Y, ldy);
}

/* The int8 GEMM (ds_gemm_bf16_q4k_i8 takes it from DS_GEMM_BF16_MIN_N
 * tokens at the AVX2 level only) on any CPU with AVX2: the activations
 * packed as that call packs them, the rows in one call. */
static void gemm_q4k_i8_gemm(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
#if defined(__x86_64__) || defined(__i386__)
    const int cols = m->cols, nblk = cols / DS_Q4_K_BLOCK;
    int8_t *xq = malloc((size_t)n * cols);
    float *xd = malloc(sizeof(float) * (size_t)n * nblk), *xs = malloc(sizeof(float) * 8 * (size_t)n * nblk);
    int ok = 1;
    for (int t = 0; t < n && ok; t++)
        ok = ds_q4k_i8_pack_avx2(X + (size_t)t * ldx, cols, xq + (size_t)t * cols, xd + (size_t)t * nblk,
                                 xs + 8 * (size_t)t * nblk);
    if (ok)
        (void)ds_q4k_i8_gemm_avx2(m, r0, nrows, xq, xd, xs, n, Y, ldy);
    free(xq), free(xd), free(xs);
#else
    (void)m, (void)r0, (void)nrows, (void)X, (void)ldx, (void)n, (void)Y, (void)ldy;
#endif
}

static void check_gemm_bf16_with(gemm_fn fn, const test_mat *t, int r0, int nrows, int n, const char *what)
{
    const int cols = t->m.cols, ldx = cols + 5, ldy = nrows + 3;
    const int rounds = ds_gemm_bf16_rounds(t->m.dtype);
    float *X = rand_vec((size_t)n * ldx);
    float *Y = malloc(sizeof(float) * (size_t)n * ldy), *W = malloc(sizeof(float) * (size_t)n * ldy);
    for (size_t i = 0; i < (size_t)n * ldy; i++)
        Y[i] = W[i] = -777.0f;
    fn(&t->m, r0, nrows, X, ldx, n, Y, ldy);
    if (rounds)
        ds_gemm_bf16_ref(&t->m, r0, nrows, X, ldx, n, W, ldy);
    else
        ds_gemm(&t->m, r0, nrows, X, ldx, n, W, ldy);
    for (int tk = 0; tk < n; tk++)
        for (int i = 0; i < ldy; i++) {
            const size_t at = (size_t)tk * ldy + i;
            checks++;
            if (i >= nrows) {
                if (Y[at] != -777.0f) {
                    FAIL("gemm_bf16 %s: wrote into the stride gap", what);
                    goto out;
                }
                continue;
            }
            const double tol = rounds ? 2.0 * (cols + 8) * 0x1p-24 * bf16_mag(t, r0 + i, X + (size_t)tk * ldx) : 0.0;
            if (!(fabs((double)Y[at] - W[at]) <= tol)) {
                FAIL("gemm_bf16 %s: r0=%d n=%d token %d row %d: %.9g vs %.9g (tol %.3g)", what, r0, n, tk, i, Y[at],
                     W[at], tol);
                goto out;
            }
        }
out:
    free(X), free(Y), free(W);
}

static void check_gemm_bf16_one(const test_mat *t, int r0, int nrows, int n, const char *what)
{
    check_gemm_bf16_with(ds_gemm_bf16, t, r0, nrows, n, what);
}

/* The AVX2 int8 form of Q4_K products (CPUs without AVX512_BF16 / VNNI
 * decode through it) against the reference, as check_gemm_bf16_one: rows
 * split across threads or not, 1-15 tokens, tails of rows. */
static void check_gemm_q4k_i8(void)
{
    if (!ds_cpu_isa_supported(DS_ISA_AVX2))
        return;
    static const int rows_list[] = {1, 5, 33, 600};
    static const int cols_list[] = {256, 768, 2048};
    static const int n_list[] = {1, 2, 3, 8, 15};
    /* the GEMM: odd token and row counts are its tails */
    static const int gemm_n[] = {1, 2, 3, 5, 16, 19, 40};
    char what[96];
    for (size_t ri = 0; ri < sizeof rows_list / sizeof *rows_list; ri++)
        for (size_t ci = 0; ci < sizeof cols_list / sizeof *cols_list; ci++) {
            test_mat t;
            make_mat(&t, W_Q4_K, rows_list[ri], cols_list[ci]);
            snprintf(what, sizeof what, "Q4_K int8 (avx2) %dx%d", rows_list[ri], cols_list[ci]);
            for (size_t ni = 0; ni < sizeof n_list / sizeof *n_list; ni++) {
                check_gemm_bf16_with(gemm_q4k_i8, &t, 0, rows_list[ri], n_list[ni], what);
                if (rows_list[ri] > 2)
                    check_gemm_bf16_with(gemm_q4k_i8, &t, 2, rows_list[ri] - 2, n_list[ni], what);
            }
            snprintf(what, sizeof what, "Q4_K int8 GEMM (avx2) %dx%d", rows_list[ri], cols_list[ci]);
            for (size_t ni = 0; ni < sizeof gemm_n / sizeof *gemm_n; ni++) {
                check_gemm_bf16_with(gemm_q4k_i8_gemm, &t, 0, rows_list[ri], gemm_n[ni], what);
                if (rows_list[ri] > 2)
                    check_gemm_bf16_with(gemm_q4k_i8_gemm, &t, 1, rows_list[ri] - 2, gemm_n[ni], what);
            }
            free_mat(&t);
        }
#if defined(__x86_64__) || defined(__i386__)
    /* the GEMM (prefill) and the row kernel (decode) give the same bits, so a
     * token does not depend on which of them its step ran */
    {
        enum { R = 37, C = 768, N = 15, NB = C / DS_Q4_K_BLOCK };
        test_mat t;
        make_mat(&t, W_Q4_K, R, C);
        float *X = rand_vec((size_t)N * C), *ya = malloc(sizeof(float) * N * R), *yb = malloc(sizeof(float) * N * R);
        int8_t *xq = malloc((size_t)N * C);
        float *xd = malloc(sizeof(float) * N * NB), *xs = malloc(sizeof(float) * 8 * N * NB);
        int ok = 1;
        for (int tk = 0; tk < N; tk++)
            ok &= ds_q4k_i8_pack_avx2(X + (size_t)tk * C, C, xq + (size_t)tk * C, xd + tk * NB, xs + 8 * tk * NB);
        ds_q4k_i8_rows_avx2(&t.m, 0, R, xq, xd, xs, N, ya, R);
        ok &= ds_q4k_i8_gemm_avx2(&t.m, 0, R, xq, xd, xs, N, yb, R);
        checks++;
        if (!ok || memcmp(ya, yb, sizeof(float) * N * R))
            FAIL("Q4_K int8: the GEMM and the row kernel differ in their bits");
        free(X), free(ya), free(yb), free(xq), free(xd), free(xs);
        free_mat(&t);
    }
#endif
    /* a block holding Inf or NaN: declined, nothing written */
    test_mat t;
    make_mat(&t, W_Q4_K, 3, 512);
    float X[512], Y[3] = {-777.0f, -777.0f, -777.0f};
    for (int c = 0; c < 512; c++)
        X[c] = frand();
    X[300] = NAN;
    checks++;
    if (ds_gemm_bf16_q4k_i8(&t.m, 0, 3, X, 512, 1, Y, 3) || Y[0] != -777.0f)
        FAIL("gemm_q4k_i8 took a block holding NaN");
    free_mat(&t);
}

/* Eight tokens at once (column chunks) against each token alone (whole
 * rows): the same products in another order, so within sqrt(cols)
 * roundings of mag for random signs (2 % of it seen), a bound far tighter than
 * check_gemm_bf16_one's worst case; a chunk that paired the wrong
 * activations, sums or scales (Q4_K's min terms are small next to that
 * worst case) lands far outside it. */
static void check_chunks_vs_alone(const test_mat *t, const char *what)
{
    enum { N = 8 };
    const int rows = t->m.rows, cols = t->m.cols;
    float *X = rand_vec((size_t)N * cols), *Y = malloc(sizeof(float) * (size_t)N * rows);
    float *y1 = malloc(sizeof(float) * (size_t)rows);
    ds_gemm_bf16(&t->m, 0, rows, X, cols, N, Y, rows);
    for (int tk = 0; tk < N; tk++) {
        ds_gemm_bf16(&t->m, 0, rows, X + (size_t)tk * cols, cols, 1, y1, rows);
        for (int i = 0; i < rows; i++) {
            const double tol = sqrt((double)cols) * ldexp(1.0, -24) * bf16_mag(t, i, X + (size_t)tk * cols);
            checks++;
            if (fabs((double)Y[(size_t)tk * rows + i] - y1[i]) > tol) {
                FAIL("gemm_bf16 %s: 8 tokens vs alone: token %d row %d: %.9g vs %.9g (tol %.3g)", what, tk, i,
                     Y[(size_t)tk * rows + i], y1[i], tol);
                goto out;
            }
        }
    }
out:
    free(X), free(Y), free(y1);
}

static void check_gemm_bf16(void)
{
    /* 1000 x 129 and 600 x 300: past ds_worth_threads, the rows split across threads */
    static const int rows_list[] = {1, 17, 32, 33, 130, 600, 1000};
    static const int cols_list[] = {1, 7, 33, 128, 129, 300};
    static const int q8_cols[] = {32, 96, 128, 544};   /* odd and even block counts */
    static const int q4_cols[] = {256, 768};
    static const int n_list[] = {1, 2, 6, 7, 12, 13, 29};
    char what[96];
    for (int kind = 0; kind < W_COUNT; kind++) {
        const int *cl = kind == W_Q8_0 ? q8_cols : kind == W_Q4_K ? q4_cols : cols_list;
        const size_t ncl = kind == W_Q8_0   ? sizeof q8_cols / sizeof *q8_cols
                           : kind == W_Q4_K ? sizeof q4_cols / sizeof *q4_cols
                                            : sizeof cols_list / sizeof *cols_list;
        for (size_t ri = 0; ri < sizeof rows_list / sizeof *rows_list; ri++)
            for (size_t ci = 0; ci < ncl; ci++) {
                const int rows = rows_list[ri], cols = cl[ci];
                test_mat t;
                make_mat(&t, (enum wkind)kind, rows, cols);
                snprintf(what, sizeof what, "%s %dx%d", wkind_names[kind], rows, cols);
                for (size_t ni = 0; ni < sizeof n_list / sizeof *n_list; ni++) {
                    check_gemm_bf16_one(&t, 0, rows, n_list[ni], what);
                    if (rows > 2)
                        check_gemm_bf16_one(&t, 2, rows - 2, n_list[ni], what);
                }
                free_mat(&t);
            }
    }
    /* Rows wide enough that 7 or 8 tokens' activations go by in column
     * chunks (SMALL_X_BYTES in kernels_avx512bf16.c), each type's last
     * chunk partial: 2600 = 2 x 1024 + 552 (a masked FP8 tail), Q8_0's 81
     * blocks end on a lone one, Q4_K's 18 = 8 + 8 + 2. */
    static const int wide_rows[] = {5, 67};
    static const int wide_n[] = {7, 8, 13};
    for (int kind = 0; kind < W_COUNT; kind++) {
        const int cols = kind == W_Q8_0 ? 81 * 32 : kind == W_Q4_K ? 18 * 256 : 2600;
        for (size_t ri = 0; ri < sizeof wide_rows / sizeof *wide_rows; ri++) {
            test_mat t;
            make_mat(&t, (enum wkind)kind, wide_rows[ri], cols);
            snprintf(what, sizeof what, "%s %dx%d", wkind_names[kind], wide_rows[ri], cols);
            for (size_t ni = 0; ni < sizeof wide_n / sizeof *wide_n; ni++)
                check_gemm_bf16_one(&t, 1, wide_rows[ri] - 1, wide_n[ni], what);
            check_chunks_vs_alone(&t, what);
            free_mat(&t);
        }
    }
}

/* ds_gemm_bf16_parts: each part's results its own ds_gemm_bf16 call's to
 * the bit, whether the parts share activations (packed once) or not,
 * share a matrix, mix dtypes (FP8, Q8_0 and BF16 activations are packed
 * alike, Q4_K's differently: same X, separate packs), or include a part
 * the streaming kernel does not take (F32: every part on its own). */
static void check_gemm_bf16_parts(void)
{
    enum { COLS = 512, NP = 6 };
    static const int kinds[NP] = {W_Q4_K, W_F8_ANY, W_BF16, W_Q8_0, W_Q4_K, W_F32};
    static const int rows[NP] = {600, 70, 33, 130, 600, 17};
    static const int n_list[] = {1, 3, 8, 16};
    test_mat t[NP];
    for (int i = 0; i < NP; i++)
        make_mat(&t[i], (enum wkind)kinds[i], rows[i], COLS);
    for (size_t ni = 0; ni < sizeof n_list / sizeof *n_list; ni++) {
        const int n = n_list[ni];
        float *X1 = rand_vec((size_t)n * (COLS + 5)), *X2 = rand_vec((size_t)n * (COLS + 5));   /* same stride */
        for (int with_f32 = 0; with_f32 < 2; with_f32++) {
            /* part 4 is part 0's matrix, other rows, other activations; part 3
             * reads X1 at another stride */
            ds_gemm_part p[NP] = {{&t[0].m, 3, 597, X1, COLS + 5, NULL, 600}, {&t[1].m, 0, 70, X1, COLS + 5, NULL, 71},
                                  {&t[2].m, 1, 32, X2, COLS + 5, NULL, 35},   {&t[3].m, 0, 130, X1, COLS, NULL, 130},
                                  {&t[4].m, 0, 200, X2, COLS + 5, NULL, 203}, {&t[5].m, 0, 17, X2, COLS + 5, NULL, 17}};
            const int np = with_f32 ? NP : NP - 1;
            float *want[NP];
            for (int i = 0; i < np; i++) {
                p[i].Y = calloc((size_t)n * p[i].ldy, sizeof(float));
                want[i] = calloc((size_t)n * p[i].ldy, sizeof(float));
                ds_gemm_bf16(p[i].m, p[i].r0, p[i].nrows, p[i].X, p[i].ldx, n, want[i], p[i].ldy);
            }
            ds_gemm_bf16_parts(p, np, n);
            for (int i = 0; i < np; i++) {
                checks++;
                if (memcmp(p[i].Y, want[i], sizeof(float) * (size_t)n * p[i].ldy))
                    FAIL("gemm_bf16_parts: part %d (%s, %d rows) of %d, %d tokens differs from its own call", i,
                         wkind_names[kinds[i]], p[i].nrows, np, n);
                free(p[i].Y), free(want[i]);
            }
        }
        free(X1), free(X2);
    }
    for (int i = 0; i < NP; i++)
        free_mat(&t[i]);
}

/* The rounding itself: x = 1 + 2^-10 is 1 in bf16 and 3 + 3 * 2^-8 rounds
 * up to 3 + 2^-6 (bf16 spacing at 3 is 2^-6), so an all-ones row gives
 * exactly cols * 1 and cols * (3 + 2^-6) where the exact product would
 * not. */
static void check_bf16_rounding(void)
{
    enum { COLS = 96, ROWS = 40 };
    static const ds_dtype dts[] = {DS_DT_BF16, DS_DT_F8_E4M3, DS_DT_Q8_0};
    for (size_t d = 0; d < sizeof dts / sizeof *dts; d++) {
        const ds_dtype dt = dts[d];
        if (!ds_gemm_bf16_rounds(dt))
            continue;
        uint8_t data[ROWS * COLS * 2];
        float scale[1] = {1.0f};
        for (int r = 0; r < ROWS; r++)
            for (int c = 0; c < COLS; c++) {
                if (dt == DS_DT_BF16)
                    ((uint16_t *)data)[r * COLS + c] = ds_f32_to_bf16(1.0f);
                else if (dt == DS_DT_F8_E4M3)
                    data[r * COLS + c] = ds_f32_to_e4m3(1.0f);
                else if (c % 32 == 0) {
                    uint8_t *b = data + (size_t)(r * COLS + c) / 32 * 34;
                    const uint16_t one = ds_f32_to_f16(1.0f);
                    memcpy(b, &one, 2);
                    memset(b + 2, 1, 32);
                }
            }
        ds_mat m = {.dtype = dt, .rows = ROWS, .cols = COLS, .data = data, .scale = scale};
        float X[2 * COLS], Y[2 * ROWS];
        for (int c = 0; c < COLS; c++) {
            X[c] = 1.0f + 0x1p-10f;
            X[COLS + c] = 3.0f + 3 * 0x1p-8f;
        }
        ds_gemm_bf16(&m, 0, ROWS, X, COLS, 2, Y, ROWS);
        for (int r = 0; r < ROWS; r++) {
            checks += 2;
            if (Y[r] != (float)COLS || Y[ROWS + r] != (float)COLS * (3.0f + 0x1p-6f))
                FAIL("gemm_bf16 %s: rounding of x: row %d gives %.9g, %.9g; want %d, %.9g", ds_dtype_name(dt), r, Y[r],
                     Y[ROWS + r], COLS, (float)COLS * (3.0f + 0x1p-6f));
        }
    }
}

/* Q4_K's coarser rounding of x, through every path (decode kernel for 1
 * and 5 tokens, panel GEMM for 20): all-ones weights (d = 1, sc = 1,
 * m = 0, quants 1) against x with largest value 127, so the levels are
 * whole numbers: 2.5 -> 2, 3.5 -> 4, -1.6 -> -2 and 0.49 -> 0, and every
 * row's dot is 127 + 2 + 4 - 2 = 131 in the first block.  The second
 * block's largest value is 0.75 (a step of 2^-7): 0.1 -> 13 / 128. */
static void check_q4k_act_rounding(void)
{
    enum { ROWS = 37, COLS = 512, NB = COLS / DS_Q4_K_BLOCK };
    static uint8_t data[ROWS * NB * DS_Q4_K_BYTES];
    const uint8_t ones[8] = {1, 1, 1, 1, 1, 1, 1, 1}, zeros[8] = {0};
    for (int b = 0; b < ROWS * NB; b++) {
        uint8_t *blk = data + (size_t)b * DS_Q4_K_BYTES;
        const uint16_t one = ds_f32_to_f16(1.0f), zero = 0;
        memcpy(blk, &one, 2);
        memcpy(blk + 2, &zero, 2);
        ds_q4_k_pack_scales(ones, zeros, blk + DS_Q4_K_OFF_SCALES);
        memset(blk + DS_Q4_K_OFF_QS, 0x11, 128);
    }
    const ds_mat m = {.dtype = DS_DT_Q4_K, .rows = ROWS, .cols = COLS, .data = data};
    static const int ns[] = {1, 5, 20};
    for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
        const int n = ns[k];
        float *X = calloc((size_t)n * COLS, sizeof(float)), *Y = malloc(sizeof(float) * (size_t)n * ROWS);
        for (int t = 0; t < n; t++) {
            float *x = X + (size_t)t * COLS;
            for (int c = 5; c < 256; c++)
                x[c] = 0.49f;
            x[0] = 127.0f, x[1] = 2.5f, x[2] = 3.5f, x[3] = -1.6f, x[4] = 0.3f;
            x[256] = -0.75f, x[257] = 0.1f;
        }
        ds_gemm_bf16(&m, 0, ROWS, X, COLS, n, Y, ROWS);
        const float want = 131.0f + (-96.0f + 13.0f) / 128.0f;
        for (int i = 0; i < n * ROWS; i++) {
            checks++;
            if (Y[i] != want) {
                FAIL("gemm_bf16 Q4_K, %d tokens: x's rounding: row %d gives %.9g, want %.9g", n, i % ROWS, Y[i], want);
                break;
            }
        }
        free(X), free(Y);
    }
}

/* All 256 codes through both decode paths (row dequantisation and the row
 * dot product with one-hot vectors), against ds_e4m3_table. */
static void check_e4m3_codes(const ds_kernels *k)
{
    uint8_t codes[256], finite[256];
    float scale[2] = {1.0f, 1.0f}, row[256], x[256] = {0};   /* 256 columns: two scale blocks */
    for (int i = 0; i < 256; i++) {
        codes[i] = (uint8_t)i;
        finite[i] = (i & 0x7f) == 0x7f ? 0 : (uint8_t)i;   /* NaN * 0 would poison the one-hot dots */
    }
    ds_mat m = {.dtype = DS_DT_F8_E4M3, .rows = 1, .cols = 256, .data = codes, .scale = scale};
    k->mat_row(&m, 0, row);
    m.data = finite;
    for (int i = 0; i < 256; i++) {
        const float want = ds_e4m3_table[i];
        x[i] = 1.0f;
        float got;
        k->gemv(&m, 0, 1, x, &got);
        x[i] = 0.0f;
        if ((i & 0x7f) == 0x7f)
            continue;   /* NaN codes: decoded to anything, as long as nothing faults */
        checks += 2;
        if (row[i] != want || signbit(row[i]) != signbit(want))
            FAIL("%s: e4m3 code 0x%02x -> %.9g, want %.9g (mat_row)", k->name, i, row[i], want);
        if (got != want)
            FAIL("%s: e4m3 code 0x%02x -> %.9g, want %.9g (gemv)", k->name, i, got, want);
    }
}

/* The indexer kernels against an independent exact reference: e4m3 codes
 * (NaN codes included, read as 0) to doubles, and the blocked scorer versus
 * int64 dots of value * 2^9 integers rounded once to f32, then the ReLU-
 * weighted head sum in head order with unfused f32 products, times the key
 * scale — bit for bit, over odd head counts, dims and key counts. */
static int64_t e4m3_int(uint8_t c)
{
    return (c & 0x7f) == 0x7f ? 0 : (int64_t)(ds_e4m3_table[c] * 512.0f);
}

/* The approximate score against the exact one (want, checked above): within
 * its bound, and the bound tight enough to be of use, at most 1e-4 of
 * ks * sum_h |w_h| max_d |q_hd| * sum_d |k_d| (computed here in double). */
/* bf16: the AVX512_BF16 form (ds_index_scores_approx_bf16) instead of
 * table k's; skipped where it cannot run. */
static int approx_bf16_ran;   /* shapes the AVX512_BF16 indexer form ran on */

static void check_index_approx(const ds_kernels *k, int bf16, const uint8_t *q8, const uint8_t *k8, const double *qt,
                               const float *w, const float *ks, int nh, int dim, int n, int mode, const float *want)
{
    const int hs = DS_INDEX_HSTRIDE(nh);
    float *qf = calloc((size_t)dim * hs, sizeof(float)), *sc = malloc(sizeof(float) * n), *bd = malloc(sizeof(float) * n);
    const char *name = bf16 ? "avx512_bf16" : k->name;
    for (size_t i = 0; i < (size_t)dim * hs; i++)
        qf[i] = (float)qt[i];
    int ran = 1;
#if defined(__x86_64__) || defined(__i386__)
    if (bf16) {   /* the keys in the cache's tiles, from the first tile or the second */
        const int j0 = mode % 2 ? DS_INDEX_TILE : 0;
        uint8_t *tiles = calloc(ds_index_tiles_bytes(j0 + n, dim), 1);
        for (int j = 0; j < n; j++)
            ds_index_key_put(tiles, dim, j0 + j, k8 + (size_t)j * dim);
        ran = ds_index_scores_approx_bf16(qf, nh, dim, w, tiles, j0, ks, n, sc, bd);
        free(tiles);
    } else
#endif
        k->index_scores_approx(qf, nh, dim, w, k8, ks, n, sc, bd);
    if (!ran) {
        free(qf), free(sc), free(bd);
        return;
    }
    if (bf16)
        approx_bf16_ran++;
    double c = 0.0;
    for (int h = 0; h < nh; h++) {
        double mq = 0.0;
        for (int d = 0; d < dim; d++)
            mq = fmax(mq, fabs((double)e4m3_int(q8[h * dim + d]) / 512.0));
        c += fabs((double)w[h]) * mq;
    }
    int bad = 0;
    for (int j = 0; j < n; j++) {
        double l1 = 0.0;
        for (int d = 0; d < dim; d++)
            l1 += fabs((double)e4m3_int(k8[(size_t)j * dim + d]) / 512.0);
        const double err = fabs((double)sc[j] - want[j]), use = 1e-4 * (ks[j] * c * l1 + fabs(want[j])) + 1e-30;
        checks += 2;
        if (!(err <= bd[j]) && bad++ < 3)
            FAIL("%s: approximate index score heads %d dim %d keys %d mode %d key %d: %.9g, exact %.9g, bound %.3g",
                 name, nh, dim, n, mode, j, sc[j], want[j], bd[j]);
        if (!(bd[j] <= use) && bad++ < 3)
            FAIL("%s: approximate index score bound %.3g too loose (%.3g) heads %d dim %d mode %d", name, bd[j],
                 use, nh, dim, mode);
    }
    free(qf), free(sc), free(bd);
}

/* The indexer key tiles: every (position, dimension) of a tile at its own
 * byte inside the tile, and keys back out of the tiles as they went in. */
static void check_index_tiles(void)
{
    static const int dims[] = {1, 32, 64, 100, 128, 256};
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        const int dim = dims[di], n = 3 * DS_INDEX_TILE + 5;
        const size_t tb = ds_index_tile_bytes(dim);
        unsigned char *seen = calloc(tb, 1);
        int dup = 0, out = 0;
        for (int i = 0; i < DS_INDEX_TILE; i++)
            for (int d = 0; d < dim; d++) {
                const size_t at = ds_index_code_at(DS_INDEX_TILE + i, dim, d);
                if (at < tb || at >= 2 * tb)
                    out++;
                else if (seen[at - tb]++)
                    dup++;
            }
        checks++;
        if (dup || out)
            FAIL("index tiles dim %d: %d codes share a byte, %d outside their tile", dim, dup, out);
        uint8_t *rows = malloc((size_t)n * dim), *back = malloc((size_t)n * dim);
        uint8_t *tiles = calloc(ds_index_tiles_bytes(n, dim), 1);
        for (size_t i = 0; i < (size_t)n * dim; i++)
            rows[i] = (uint8_t)rnd();
        for (int j = n - 1; j >= 0; j--)
            ds_index_key_put(tiles, dim, j, rows + (size_t)j * dim);
        ds_index_keys_get(tiles, dim, 0, n, back);
        checks++;
        if (memcmp(rows, back, (size_t)n * dim))
            FAIL("index tiles dim %d: keys do not come back out as they went in", dim);
        free(seen), free(rows), free(back), free(tiles);
    }
}

static void check_index(const ds_kernels *k)
{
    {
        uint8_t codes[256];
        double got[256];
        for (int i = 0; i < 256; i++)
            codes[i] = (uint8_t)i;
        for (int off = 0; off < 256; off += 37) {   /* odd lengths and offsets: tails */
            const int n = 256 - off;
            k->e4m3_to_f64(codes + off, (size_t)n, got);
            for (int i = 0; i < n; i++) {
                checks++;
                if (got[i] != (double)e4m3_int(codes[off + i]) / 512.0)
                    FAIL("%s: e4m3_to_f64 code 0x%02x -> %.9g", k->name, off + i, got[i]);
            }
        }
    }
    static const int shapes[][3] = {   /* heads, dim, keys */
        {16, 128, 1}, {16, 128, 7}, {16, 128, 9}, {16, 128, 127}, {16, 128, 1000}, {4, 128, 33},
        {8, 128, 17}, {13, 64, 21}, {17, 129, 15}, {64, 128, 40}, {1, 1, 3}, {3, 7, 5}, {24, 33, 11},
        {16, 128, 8}, {16, 128, 15}, {16, 128, 16}, {16, 128, 23}, {16, 256, 19}, {2, 300, 9}, {40, 100, 31}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int nh = shapes[si][0], dim = shapes[si][1], n = shapes[si][2], hs = DS_INDEX_HSTRIDE(nh);
        for (int mode = 0; mode < 4; mode++) {
            uint8_t *q8 = malloc((size_t)nh * dim), *k8 = malloc((size_t)n * dim);
            double *qt = calloc((size_t)dim * hs, sizeof(double)), *kd = malloc(sizeof(double) * (size_t)n * dim);
            float *w = malloc(sizeof(float) * nh), *ks = malloc(sizeof(float) * n);
            float *got = malloc(sizeof(float) * n);
            for (int i = 0; i < nh * dim; i++)   /* mode 1: runs of the largest magnitudes */
                q8[i] = (uint8_t)(mode == 1 ? (rnd() & 1 ? 0x7e : 0xfe) : rnd());
            for (int i = 0; i < n * dim; i++)    /* mode 2: smallest; mode 3: positive only */
                k8[i] = (uint8_t)(mode == 2 ? (0x01 | (rnd() & 0x80)) : mode == 3 ? rnd() & 0x7f : rnd());
            for (int h = 0; h < nh; h++)
                w[h] = frand() * (mode == 2 ? 1e-3f : 4.0f);
            for (int j = 0; j < n; j++)
                ks[j] = ldexpf(1.0f + (float)(rnd() & 7) / 8.0f, (int)(rnd() % 16) - 12);
            for (int h = 0; h < nh; h++)
                for (int d = 0; d < dim; d++)
                    qt[(size_t)d * hs + h] = (double)e4m3_int(q8[h * dim + d]) / 512.0;
            k->e4m3_to_f64(k8, (size_t)n * dim, kd);
            for (int j = 0; j < n; j++)
                got[j] = -1.0f;
            float *got8 = malloc(sizeof(float) * n);
            k->index_scores(qt, nh, dim, w, kd, ks, n, got);
            if (dim <= DS_INDEX_MAXDIM)
                k->index_scores_fp8(qt, nh, dim, w, k8, ks, n, got8);
            else
                memcpy(got8, got, sizeof(float) * n);
            int bad = 0;
            for (int j = 0; j < n; j++) {
                float s = 0.0f;
                for (int h = 0; h < nh; h++) {
                    int64_t acc = 0;
                    for (int d = 0; d < dim; d++)
                        acc += e4m3_int(q8[h * dim + d]) * e4m3_int(k8[(size_t)j * dim + d]);
                    const float dh = (float)((double)acc / 262144.0);
                    if (dh > 0.0f) {
                        volatile float p = w[h] * dh;
                        s += p;
                    }
                }
                const float want = s * ks[j];
                checks++;
                if (memcmp(&want, &got[j], sizeof want) != 0 && bad++ < 3)
                    FAIL("%s: index score heads %d dim %d keys %d mode %d key %d: %.9g, want %.9g", k->name, nh,
                         dim, n, mode, j, got[j], want);
                checks++;
                if (memcmp(&want, &got8[j], sizeof want) != 0 && bad++ < 3)
                    FAIL("%s: index score from FP8 heads %d dim %d keys %d mode %d key %d: %.9g, want %.9g", k->name,
                         nh, dim, n, mode, j, got8[j], want);
            }
            if (k->index_scores_approx && dim <= DS_INDEX_MAXDIM)
                check_index_approx(k, 0, q8, k8, qt, w, ks, nh, dim, n, mode, got);
#if defined(__x86_64__) || defined(__i386__)
            if (k == &ds_kernels_avx512 && dim <= DS_INDEX_MAXDIM)
                check_index_approx(k, 1, q8, k8, qt, w, ks, nh, dim, n, mode, got);
#endif
            free(q8), free(k8), free(qt), free(kd), free(w), free(ks), free(got), free(got8);
        }
    }
}

/* gemm_tn against the scalar reference (sums in k order there, fused or
 * not in the SIMD forms): odd sizes, column tails, strided X and Y, token
 * ranges that do not start at 0; the gap after each Y row stays as is.
 * Then ds_gemm_tn_f32, whose threads add partial sums over row ranges. */
static void check_gemm_tn_one(const ds_kernels *k, int n, int cols, int nt, int whole)
{
    const int ldx = n + 3, ldy = cols + 2, t0 = whole || nt <= 4 ? 0 : 1;
    float *A = rand_vec((size_t)n * cols), *X = rand_vec((size_t)nt * ldx);
    float *Y = malloc(sizeof(float) * (size_t)nt * ldy), *W = malloc(sizeof(float) * (size_t)nt * ldy);
    for (size_t i = 0; i < (size_t)nt * ldy; i++)
        Y[i] = W[i] = -777.0f;
    if (whole && !ds_gemm_tn_f32(A, n, cols, X, ldx, nt, Y, ldy))
        goto out;
    if (!whole)
        k->gemm_tn(A, n, cols, X, ldx, t0, nt, Y, ldy);
    ds_kernels_scalar.gemm_tn(A, n, cols, X, ldx, t0, nt, W, ldy);
    int bad = 0;
    for (int t = 0; t < nt; t++)
        for (int j = 0; j < ldy; j++) {
            const size_t at = (size_t)t * ldy + j;
            checks++;
            if (t < t0 || j >= cols) {
                if (Y[at] != -777.0f && bad++ < 3)
                    FAIL("%s: gemm_tn n=%d cols=%d nt=%d wrote outside its rows at %d,%d", k->name, n, cols, nt, t, j);
                continue;
            }
            double mag = 0.0;
            for (int r = 0; r < n; r++)
                mag += fabs((double)X[(size_t)t * ldx + r] * A[(size_t)r * cols + j]);
            if (!close_enough(Y[at], W[at], mag) && bad++ < 3)
                FAIL("%s: gemm_tn%s n=%d cols=%d nt=%d at %d,%d: %.9g vs %.9g", k->name, whole ? " (threaded)" : "",
                     n, cols, nt, t, j, Y[at], W[at]);
        }
out:
    free(A), free(X), free(Y), free(W);
}

static void check_gemm_tn(const ds_kernels *k)
{
    if (!k->gemm_tn)
        return;
    static const int ns[] = {1, 7, 64, 256, 301}, colss[] = {1, 15, 16, 17, 64, 100, 512, 576};
    static const int nts[] = {1, 3, 4, 5, 16, 17};
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
        for (size_t b = 0; b < sizeof colss / sizeof *colss; b++)
            for (size_t c = 0; c < sizeof nts / sizeof *nts; c++)
                check_gemm_tn_one(k, ns[a], colss[b], nts[c], 0);
    if (k == ds_kernels_active())
        for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
            for (size_t c = 0; c < sizeof nts / sizeof *nts; c++)
                check_gemm_tn_one(k, ns[a], 512, nts[c], 1);
}

/* softmax against the scalar reference (expf): each probability within a
 * few ulp relative, over sizes with tails, wide and narrow spreads, and
 * -inf entries (masked keys), which must come out exactly 0. */
static void check_softmax(const ds_kernels *k)
{
    if (!k->softmax)
        return;
    static const int sizes[] = {1, 2, 7, 16, 17, 100, 2048, 2049};
    static const float spread[] = {0.01f, 3.0f, 30.0f, 200.0f};
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (size_t b = 0; b < sizeof spread / sizeof *spread; b++) {
            const int n = sizes[a];
            float *x = rand_vec((size_t)n), *y = malloc(sizeof(float) * (size_t)n);
            for (int i = 0; i < n; i++) {
                x[i] *= spread[b];
                if (n > 2 && i % 5 == 3)
                    x[i] = -INFINITY;
            }
            memcpy(y, x, sizeof(float) * (size_t)n);
            k->softmax(y, n);
            ds_kernels_scalar.softmax(x, n);
            int bad = 0;
            for (int i = 0; i < n; i++) {
                checks++;
                if (!(fabs((double)y[i] - x[i]) <= 2e-6 * x[i] + 1e-37) && bad++ < 3)
                    FAIL("%s: softmax n=%d spread %g [%d]: %.9g vs %.9g", k->name, n, spread[b], i, y[i], x[i]);
            }
            free(x), free(y);
        }
}

/* The chosen level honours DSINFER_ISA when the CPU has it, else is the best. */
static void check_selection(void)
{
    const char *env = getenv("DSINFER_ISA");
    const ds_isa got = ds_cpu_isa();
    int want = env && *env ? ds_isa_from_name(env) : -1;
    if (want < 0 || !ds_cpu_isa_supported((ds_isa)want))
        want = ds_cpu_isa_best();
    checks++;
    if ((int)got != want)
        FAIL("selected %s, expected %s", ds_isa_name(got), ds_isa_name((ds_isa)want));
    if (ds_kernels_active() != ds_kernels_for(got))
        FAIL("active table is not the one of %s", ds_isa_name(got));
    if (!ds_cpu_isa_supported(DS_ISA_SCALAR) || !ds_kernels_for(DS_ISA_SCALAR))
        FAIL("scalar level must always be available");
}


/* The absorbed decode attention over cached keys (ds_attn_*), every level's
 * form (the scalar one included) against the definitions computed here in
 * double from the unpacked query: latents as f32 or e4m3 with a scale per
 * 128 (widths that are not multiples of 16 or 128), rope keys as f32 or
 * bf16, scattered positions or a run from a base, 1 to 3 head blocks. */
static float attn_key_lat(const ds_attn_keys *k, int j, int c)
{
    if (k->lat_f32)
        return k->lat_f32[(size_t)j * k->kvl + c];
    return ds_e4m3_to_f32(k->lat_q[(size_t)j * k->kvl + c]) * k->lat_s[(size_t)j * ((k->kvl + 127) / 128) + c / 128];
}

static float attn_key_rope(const ds_attn_keys *k, int j, int r)
{
    if (k->rope_f32)
        return k->rope_f32[(size_t)j * k->rope + r];
    uint32_t u = (uint32_t)k->rope_bf16[(size_t)j * k->rope + r] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void check_attn_one(const ds_kernels *k, int nh, int kvl, int rope, int n, int fmt, int scattered)
{
    const int npool = 3 * n + 5, nb = (kvl + 127) / 128, nhb = (nh + 15) / 16, nc = (kvl + 15) / 16;
    float *latf = rand_vec((size_t)npool * kvl), *ls = malloc(sizeof(float) * (size_t)npool * nb);
    uint8_t *lq = malloc((size_t)npool * kvl);
    float *rf = rand_vec((size_t)npool * rope);
    uint16_t *rb = malloc(sizeof(uint16_t) * ((size_t)npool * rope + 1));
    for (size_t i = 0; i < (size_t)npool * kvl; i++)
        do
            lq[i] = (uint8_t)rnd();
        while ((lq[i] & 0x7f) == 0x7f);     /* the cache never holds NaN codes */
    for (int i = 0; i < npool * nb; i++)
        ls[i] = ldexpf(1.0f + (float)(rnd() & 7) / 8.0f, (int)(rnd() % 9) - 8);
    for (int i = 0; i < npool * rope; i++)
        rb[i] = (uint16_t)(0x3c00 + (rnd() & 0x03ff)) ^ (uint16_t)(rnd() & 0x8000);
    ds_attn_keys keys = {kvl, rope, fmt & 1 ? NULL : latf, lq, ls, fmt & 2 ? NULL : rf, rb};
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++)
        pos[i] = (int32_t)(rnd() % (unsigned)npool);
    const int base = scattered ? 0 : (int)(rnd() % (unsigned)(npool - n + 1));
    float *qa = rand_vec((size_t)nh * kvl), *qr = rand_vec((size_t)nh * (rope + 3));
    float *qp = aligned_alloc(64, (sizeof(float) * ds_attn_q_floats(nh, kvl, rope) + 63) / 64 * 64);
    ds_attn_pack_q(qa, kvl, qr, rope + 3, nh, kvl, rope, qp);
    const int lds = n + 2;
    float *sc = malloc(sizeof(float) * (size_t)nhb * lds * 16);
    float *o = aligned_alloc(64, sizeof(float) * (size_t)nhb * nc * 256);
    for (size_t i = 0; i < (size_t)nhb * lds * 16; i++)
        sc[i] = 12345.0f;
    k->attn_scores(&keys, scattered ? pos : NULL, base, n, qp, nhb, sc, lds);
    for (int i = 0; i < n; i++) {
        const int j = scattered ? pos[i] : base + i;
        for (int h = 0; h < nhb * 16; h++) {
            double want = 0.0, mag = 0.0;
            for (int c = 0; h < nh && c < kvl; c++) {
                want += (double)qa[(size_t)h * kvl + c] * attn_key_lat(&keys, j, c);
                mag += fabs((double)qa[(size_t)h * kvl + c] * attn_key_lat(&keys, j, c));
            }
            for (int r = 0; h < nh && r < rope; r++) {
                want += (double)qr[(size_t)h * (rope + 3) + r] * attn_key_rope(&keys, j, r);
                mag += fabs((double)qr[(size_t)h * (rope + 3) + r] * attn_key_rope(&keys, j, r));
            }
            const float got = sc[((size_t)(h / 16) * lds + i) * 16 + h % 16];
            checks++;
            if (!(fabs(got - want) <= (kvl + rope + 16) * 6e-8 * mag + 1e-30))
                FAIL("%s: attn_scores nh %d kvl %d rope %d n %d fmt %d key %d head %d: %.9g, want %.9g", k->name, nh,
                     kvl, rope, n, fmt, i, h, got, want);
        }
    }
    /* softmax against the scalar steps on the same scores */
    float *sm = malloc(sizeof(float) * (size_t)nhb * lds * 16);
    memcpy(sm, sc, sizeof(float) * (size_t)nhb * lds * 16);
    ds_kernels_scalar.attn_softmax(sm, n, nhb, lds, 0.37f);
    k->attn_softmax(sc, n, nhb, lds, 0.37f);
    for (int b = 0; b < nhb; b++)
        for (int i = 0; i < n; i++)
            for (int h = 0; h < 16; h++) {
                const size_t at = ((size_t)b * lds + i) * 16 + h;
                checks++;
                if (!(fabsf(sc[at] - sm[at]) <= 1e-5f * sm[at] + 1e-7f))
                    FAIL("%s: attn_softmax n %d block %d key %d head %d: %.9g, want %.9g", k->name, n, b, i, h, sc[at],
                         sm[at]);
            }
    k->attn_wsum(&keys, scattered ? pos : NULL, base, n, sc, nhb, lds, o);
    for (int h = 0; h < nhb * 16; h++)
        for (int c = 0; c < nc * 16; c++) {
            double want = 0.0, mag = 0.0;
            for (int i = 0; c < kvl && i < n; i++) {
                const double t = (double)sc[((size_t)(h / 16) * lds + i) * 16 + h % 16] *
                                 attn_key_lat(&keys, scattered ? pos[i] : base + i, c);
                want += t;
                mag += fabs(t);
            }
            const float got = o[(((size_t)(h / 16) * nc + c / 16) * 16 + h % 16) * 16 + c % 16];
            checks++;
            if (!(fabs(got - want) <= (n + 16) * 6e-8 * mag + 1e-30))
                FAIL("%s: attn_wsum nh %d kvl %d n %d fmt %d head %d column %d: %.9g, want %.9g", k->name, nh, kvl, n,
                     fmt, h, c, got, want);
        }
    free(latf), free(ls), free(lq), free(rf), free(rb), free(pos), free(qa), free(qr), free(qp), free(sc), free(o);
    free(sm);
}

static void check_attn(const ds_kernels *k)
{
    if (!k->attn_scores)
        return;
    static const int shapes[][4] = {   /* heads, kvl, rope, keys */
        {16, 512, 64, 37}, {4, 512, 64, 5}, {20, 200, 40, 19}, {1, 17, 3, 1}, {33, 128, 64, 9}, {16, 130, 16, 64}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int fmt = 0; fmt < 4; fmt++)
            check_attn_one(k, shapes[si][0], shapes[si][1], shapes[si][2], shapes[si][3], fmt, (int)(si + fmt) % 2);
}

/* The work split hands every unit out exactly once, in runs from some
 * range's front or back, whatever the team: thread 0 dawdles after each
 * chunk, so the others must take from the back of its range; a team
 * smaller than asked for leaves ranges with no owner, which must be taken
 * too. */
static void check_worksplit(void)
{
    static const int n_list[] = {0, 1, 7, 64, 1000, 4099};
    static const int chunk_list[] = {1, 3, 32};
    for (int nth = 1; nth <= 4; nth++)
        for (size_t ni = 0; ni < sizeof n_list / sizeof *n_list; ni++)
            for (size_t ci = 0; ci < sizeof chunk_list / sizeof *chunk_list; ci++) {
                const int n = n_list[ni], chunk = chunk_list[ci];
                int *owner = malloc(sizeof(int) * (size_t)(n + 1));
                for (int u = 0; u < n; u++)
                    owner[u] = -1;
                int bad = 0, stolen = 0;
                ds_split *sp = ds_split_begin(nth, n);
                if (!sp) {
                    FAIL("worksplit: no memory for %d threads", nth);
                    free(owner);
                    return;
                }
#ifdef _OPENMP
                const int team = nth > 2 ? nth - 1 : nth;   /* one range with no thread of its own */
#pragma omp parallel num_threads(team) reduction(+ : bad, stolen)
#endif
                {
#ifdef _OPENMP
                    const int id = omp_get_thread_num();
#else
                    const int id = 0;
#endif
                    const int own_lo = (int)((long)n * id / nth), own_hi = (int)((long)n * (id + 1) / nth);
                    for (int lo, k; (k = ds_split_next(sp, id, chunk, &lo)) > 0;) {
                        if (k > chunk || lo < 0 || lo + k > n)
                            bad++;
                        if (lo < own_lo || lo >= own_hi)
                            stolen++;
                        for (int u = lo; u < lo + k && u < n && u >= 0; u++) {
                            if (__atomic_exchange_n(&owner[u], id, __ATOMIC_RELAXED) != -1)
                                bad++;
                        }
                        if (id == 0) {
                            volatile double x = 1.0;   /* a slow core */
                            for (int i = 0; i < 20000; i++)
                                x = x * 1.0000001 + 1e-9;
                        }
                    }
                }
                for (int u = 0; u < n; u++)
                    if (owner[u] < 0)
                        bad++;
                checks++;
                if (bad)
                    FAIL("worksplit: %d threads, %d units, chunk %d: %d units lost, given twice or out of range", nth,
                         n, chunk, bad);
#ifdef _OPENMP
                /* with a range left ownerless, someone must have taken from it */
                if (nth > 2 && n >= nth && !stolen)
                    FAIL("worksplit: %d threads (team %d), %d units, chunk %d: no unit was taken from another range",
                         nth, team, n, chunk);
#endif
                free(owner);
            }
}

int main(int argc, char **argv)
{
    const int selection_only = argc > 1 && strcmp(argv[1], "--selection") == 0;
    const ds_cpu_features *f = ds_cpu_get_features();
    printf("cpu: avx2=%d avx512=%d avx512_bf16=%d avx512_vnni=%d neon=%d; selected %s%s%s\n", f->avx2,
           f->avx512, f->avx512_bf16, f->avx512_vnni, f->neon, ds_cpu_isa_name(),
           ds_cpu_isa_note() ? " — " : "", ds_cpu_isa_note() ? ds_cpu_isa_note() : "");
    check_selection();
    check_worksplit();
    check_index_tiles();
    if (selection_only) {
        printf("%ld checks, %d failures\n", checks, failures);
        return failures ? 1 : 0;
    }
    printf("tested:");
    for (int i = 0; i < DS_ISA_COUNT; i++) {
        const ds_kernels *k = ds_kernels_for((ds_isa)i);
        if (!k)
            continue;
        const int before = failures;
        check_e4m3_codes(k);
        check_dot_axpy(k);
        check_matrices(k);
        check_index(k);
        check_gemm_tn(k);
        check_softmax(k);
        check_attn(k);
        printf(" %s(%s)", k->name, failures == before ? "ok" : "FAIL");
        fflush(stdout);
    }
    const int before = failures;
    check_gemm_bf16();
    check_gemm_bf16_parts();
    check_gemm_q4k_i8();
    check_bf16_rounding();
    check_q4k_act_rounding();
    printf("\ngemm_bf16 (%s): %s\n", !ds_gemm_bf16_native()                   ? "rounded copy and f32 kernels"
           : ds_cpu_get_features()->avx512_vbmi ? "avx512_bf16 panel kernel from 16 tokens, streaming kernel below"
                                                : "avx512_bf16 panel kernel from 16 tokens, rounded copy below",
           failures == before ? "ok" : "FAIL");
    printf("indexer approximate scores on avx512_bf16: %d shapes x modes checked\n", approx_bf16_ran);
    printf("%ld checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
