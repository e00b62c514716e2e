/* test_quant.c — the Q8_0 / Q4_K block formats: encoders and decoders
 * against hand-computed blocks, quantisation error bounds on random data,
 * header/size helpers, and every kernel table this CPU can run against the
 * scalar reference on block-quantised matrices (odd row counts, several
 * blocks per row, GEMM chunk boundaries, several tokens, strided operands). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cpu.h"
#include "format.h"
#include "kernels_isa.h"
#include "quant.h"

static int failures;
static long checks;

#define FAIL(...) do { failures++; if (failures <= 20) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)
#define CHECK(cond, ...) do { checks++; if (!(cond)) FAIL(__VA_ARGS__); } while (0)

static unsigned long long rng_state = 0x2545f4914f6cdd1dull;

static unsigned rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state >> 32);
}

static float frand(void) { return (float)rnd() / 4294967296.0f * 2.0f - 1.0f; }

static float gauss(void)
{
    float u = ((float)rnd() + 1.0f) / 4294967296.0f, v = (float)rnd() / 4294967296.0f;
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

/* ---- hand-computed blocks ---------------------------------------------- */

/* amax 127 gives d = 1 (f16 0x3c00): the quants are the rounded values. */
static void check_q8_0_known(void)
{
    float x[32];
    for (int i = 0; i < 32; i++)
        x[i] = (float)(i - 16);
    x[0] = -127.0f;
    x[1] = 2.4f;     /* -> 2 */
    x[2] = -3.6f;    /* -> -4 */
    x[3] = 100.5f;   /* halves round away from zero -> 101 */
    x[31] = 126.6f;  /* -> 127 */
    static const uint8_t want[34] = {
        0x00, 0x3c,                                     /* d = 1.0 */
        0x81, 0x02, 0xfc, 0x65, 0xf4, 0xf5, 0xf6, 0xf7, /* -127, 2, -4, 101, -12, -11, -10, -9 */
        0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff, /* -8 .. -1 */
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, /* 0 .. 7 */
        0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x7f, /* 8 .. 14, 127 */
    };
    uint8_t got[34];
    ds_quant_q8_0(x, got, 1);
    for (int i = 0; i < 34; i++)
        CHECK(got[i] == want[i], "q8_0 known block: byte %d is 0x%02x, want 0x%02x", i, got[i], want[i]);
    float back[32];
    ds_dequant_q8_0(want, back, 1);
    for (int i = 0; i < 32; i++)
        CHECK(back[i] == (float)(int8_t)want[2 + i], "q8_0 decode %d: %g", i, (double)back[i]);

    /* d = 0.5 (0x3800): q * 0.5 exactly. */
    uint8_t half[34] = {0x00, 0x38};
    for (int i = 0; i < 32; i++)
        half[2 + i] = (uint8_t)(int8_t)(i * 8 - 128);
    ds_dequant_q8_0(half, back, 1);
    for (int i = 0; i < 32; i++)
        CHECK(back[i] == (float)(i * 8 - 128) * 0.5f, "q8_0 d=0.5 decode %d: %g", i, (double)back[i]);

    /* An all-zero block encodes to all-zero bytes. */
    float zero[32] = {0};
    ds_quant_q8_0(zero, got, 1);
    for (int i = 0; i < 34; i++)
        CHECK(got[i] == 0, "q8_0 zero block: byte %d is 0x%02x", i, got[i]);
}

/* d = 0.5 (0x3800), dmin = 0.25 (0x3400), scales and mins below, packed by
 * hand; quants qs[i] = 7i + 3 (mod 256). */
static void check_q4_k_known(void)
{
    static const uint8_t sc[8] = {1, 2, 3, 4, 17, 33, 63, 40};
    static const uint8_t mn[8] = {0, 5, 10, 63, 16, 32, 1, 48};
    static const uint8_t packed[12] = {
        0x41, 0x82, 0xc3, 0x84,   /* sc[0..3] | (sc[4..7] >> 4) << 6 */
        0x40, 0x85, 0x0a, 0xff,   /* mn[0..3] | (mn[4..7] >> 4) << 6 */
        0x01, 0x01, 0x1f, 0x08,   /* (sc[4..7] & 15) | (mn[4..7] & 15) << 4 */
    };
    uint8_t p[12];
    ds_q4_k_pack_scales(sc, mn, p);
    for (int i = 0; i < 12; i++)
        CHECK(p[i] == packed[i], "q4_k pack: byte %d is 0x%02x, want 0x%02x", i, p[i], packed[i]);
    for (int j = 0; j < 8; j++) {
        int s, m;
        ds_q4_k_scale_min(packed, j, &s, &m);
        CHECK(s == sc[j] && m == mn[j], "q4_k unpack %d: %d/%d, want %d/%d", j, s, m, sc[j], mn[j]);
    }
    uint8_t blk[144] = {0x00, 0x38, 0x00, 0x34};
    memcpy(blk + 4, packed, 12);
    for (int i = 0; i < 128; i++)
        blk[16 + i] = (uint8_t)(7 * i + 3);
    float w[256];
    ds_dequant_q4_k(blk, w, 1);
    for (int j = 0; j < 8; j++)
        for (int l = 0; l < 32; l++) {
            const int byte = blk[16 + 32 * (j / 2) + l];
            const int q = j & 1 ? byte >> 4 : byte & 15;
            const float want = 0.5f * sc[j] * q - 0.25f * mn[j];
            CHECK(w[32 * j + l] == want, "q4_k decode %d: %g, want %g", 32 * j + l, (double)w[32 * j + l],
                  (double)want);
        }
    /* A few worked by hand: qs[0] = 3 (lo 3, hi 0), qs[96] = 163 (hi 10),
     * qs[127] = 124 (hi 7). */
    CHECK(w[0] == 1.5f, "q4_k w[0] = %g, want 1.5", (double)w[0]);         /* 0.5*1*3 - 0 */
    CHECK(w[32] == -1.25f, "q4_k w[32] = %g, want -1.25", (double)w[32]);  /* 0.5*2*0 - 0.25*5 */
    CHECK(w[224] == 188.0f, "q4_k w[224] = %g, want 188", (double)w[224]); /* 0.5*40*10 - 0.25*48 */
    CHECK(w[255] == 128.0f, "q4_k w[255] = %g, want 128", (double)w[255]); /* 0.5*40*7 - 0.25*48 */

    /* Values that lie exactly on a representable grid come back exactly. */
    float x[256], y[256];
    for (int i = 0; i < 256; i++)
        x[i] = ((float)(i % 16) - 8.0f) * 0.984375f;   /* a = 63/64 = 63 d, b = 7.875 = 63 dmin */
    uint8_t q[144];
    ds_quant_q4_k(x, q, 1);
    ds_dequant_q4_k(q, y, 1);
    for (int i = 0; i < 256; i++)
        CHECK(y[i] == x[i], "q4_k on-grid round trip %d: %g, want %g", i, (double)y[i], (double)x[i]);
}

/* ---- error bounds ------------------------------------------------------- */

static double rel_rmse(ds_dtype dt, const float *x, size_t n)
{
    const size_t bytes = ds_dtype_row_bytes(dt, (int64_t)n);
    uint8_t *q = malloc(bytes);
    float *y = malloc(sizeof(float) * n);
    if (dt == DS_DT_Q8_0)
        ds_quant_q8_0(x, q, n / 32);
    else
        ds_quant_q4_k(x, q, n / 256);
    ds_convert_to_f32(dt, q, y, n);
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        e += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
        s += (double)x[i] * x[i];
    }
    free(q), free(y);
    return s > 0.0 ? sqrt(e / s) : sqrt(e);
}

static void check_error_bounds(void)
{
    const size_t n = 256 * 256;
    float *g = malloc(sizeof(float) * n), *u = malloc(sizeof(float) * n), *o = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) {
        g[i] = 0.02f * gauss();                  /* weight-like */
        u[i] = frand();
        o[i] = 1.0f + 0.1f * frand();             /* one-sided: exercises the mins */
    }
    const struct { const char *name; const float *x; } sets[] = {{"gaussian", g}, {"uniform", u}, {"offset", o}};
    for (size_t k = 0; k < 3; k++) {
        const double e8 = rel_rmse(DS_DT_Q8_0, sets[k].x, n), e4 = rel_rmse(DS_DT_Q4_K, sets[k].x, n);
        printf("relative RMSE %-8s Q8_0 %.4f%%  Q4_K %.4f%%\n", sets[k].name, 100 * e8, 100 * e4);
        CHECK(e8 < 0.01, "Q8_0 relative RMSE on %s data %.4f >= 1%%", sets[k].name, e8);
        CHECK(e4 < 0.08, "Q4_K relative RMSE on %s data %.4f >= 8%%", sets[k].name, e4);
    }
    /* Degenerate blocks: constant, zero, all negative; nothing non-finite. */
    float x[256], y[256];
    uint8_t q[144];
    const float consts[] = {0.0f, -3.0f, 5.0f};
    for (size_t c = 0; c < 3; c++) {
        for (int i = 0; i < 256; i++)
            x[i] = consts[c];
        ds_quant_q4_k(x, q, 1);
        ds_dequant_q4_k(q, y, 1);
        for (int i = 0; i < 256; i++)
            CHECK(isfinite(y[i]) && fabsf(y[i] - x[i]) <= 0.05f * fabsf(consts[c]) + 1e-6f,
                  "q4_k constant %g block: %g at %d", (double)consts[c], (double)y[i], i);
    }
    for (int i = 0; i < 256; i++)
        x[i] = -1.0f - (float)i / 256.0f;
    ds_quant_q4_k(x, q, 1);
    ds_dequant_q4_k(q, y, 1);
    double e = 0.0;
    for (int i = 0; i < 256; i++)
        e += (y[i] - x[i]) * (y[i] - x[i]);
    CHECK(sqrt(e / 256) < 0.02, "q4_k negative ramp RMSE %g", sqrt(e / 256));
    free(g), free(u), free(o);
}

static void check_sizes(void)
{
    CHECK(ds_dtype_row_bytes(DS_DT_Q8_0, 64) == 68, "Q8_0 row of 64");
    CHECK(ds_dtype_row_bytes(DS_DT_Q8_0, 48) == 0, "Q8_0 ragged row");
    CHECK(ds_dtype_row_bytes(DS_DT_Q4_K, 512) == 288, "Q4_K row of 512");
    CHECK(ds_dtype_row_bytes(DS_DT_Q4_K, 128) == 0, "Q4_K ragged row");
    CHECK(ds_dtype_row_bytes(DS_DT_BF16, 7) == 14, "BF16 row of 7");
    CHECK(ds_dtype_row_bytes(DS_DT_Q4_K, -256) == 0, "Q4_K negative row");
    CHECK(ds_dtype_row_bytes(DS_DT_Q8_0, 0) == 0, "Q8_0 empty row");
    CHECK(ds_dtype_size(DS_DT_Q8_0) == 0 && ds_dtype_block(DS_DT_Q4_K) == 256, "block geometry");
    CHECK(ds_dtype_from_name("Q8_0") == DS_DT_Q8_0 && ds_dtype_from_name("Q4_K") == DS_DT_Q4_K, "names");
    CHECK(strcmp(ds_dtype_name(DS_DT_Q4_K), "Q4_K") == 0, "name of Q4_K");
}

/* ---- safetensors headers ------------------------------------------------ */

/* Writes a one-tensor safetensors file (header padded to 8 bytes, data_len
 * zero bytes) and opens it; returns the status, *bytes the tensor's size. */
static ds_status open_one(const char *dtype, const char *shape, unsigned long long end, size_t data_len,
                          uint64_t *bytes, char *msg, size_t msglen)
{
    char header[256], path[] = "/tmp/test_quant_XXXXXX";
    int n = snprintf(header, sizeof header, "{\"w\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[0,%llu]}}",
                     dtype, shape, end);
    while (n % 8)
        header[n++] = ' ';
    const int fd = mkstemp(path);
    FILE *f = fdopen(fd, "wb");
    const uint64_t hl = (uint64_t)n;
    fwrite(&hl, 8, 1, f);
    fwrite(header, 1, (size_t)n, f);
    for (size_t i = 0; i < data_len; i++)
        fputc(0, f);
    fclose(f);
    ds_tensor_table *t = NULL;
    ds_error e = {0};
    ds_status s = ds_table_open_file(path, &t, &e);
    snprintf(msg, msglen, "%s", e.msg);
    if (s == DS_OK) {
        *bytes = ds_table_at(t, 0)->nbytes;
        ds_table_free(t);
    }
    unlink(path);
    return s;
}

static void check_headers(void)
{
    char msg[512];
    uint64_t bytes = 0;
    CHECK(open_one("Q8_0", "[2,64]", 136, 136, &bytes, msg, sizeof msg) == DS_OK && bytes == 136,
          "Q8_0 [2,64] in 136 bytes: %s", msg);
    CHECK(open_one("Q4_K", "[3,512]", 864, 864, &bytes, msg, sizeof msg) == DS_OK && bytes == 864,
          "Q4_K [3,512] in 864 bytes: %s", msg);
    CHECK(open_one("Q4_K", "[2,3,256]", 864, 864, &bytes, msg, sizeof msg) == DS_OK && bytes == 864,
          "Q4_K [2,3,256]: %s", msg);
    CHECK(open_one("Q8_0", "[2,64]", 135, 135, &bytes, msg, sizeof msg) == DS_ERR_FORMAT && strstr(msg, "fill"),
          "Q8_0 short range accepted: %s", msg);
    CHECK(open_one("Q8_0", "[2,48]", 102, 102, &bytes, msg, sizeof msg) == DS_ERR_FORMAT && strstr(msg, "multiple"),
          "Q8_0 ragged row accepted: %s", msg);
    CHECK(open_one("Q4_K", "[128]", 72, 72, &bytes, msg, sizeof msg) == DS_ERR_FORMAT, "Q4_K [128] accepted");
    CHECK(open_one("Q4_K", "[]", 0, 0, &bytes, msg, sizeof msg) == DS_ERR_FORMAT, "Q4_K scalar accepted");
    CHECK(open_one("Q8_0", "[4611686018427387904,64]", 136, 136, &bytes, msg, sizeof msg) == DS_ERR_FORMAT,
          "Q8_0 overflowing shape accepted: %s", msg);
    CHECK(open_one("Q8_0", "[0,64]", 0, 0, &bytes, msg, sizeof msg) == DS_OK && bytes == 0, "Q8_0 empty: %s", msg);
}

/* ---- kernels ------------------------------------------------------------ */

typedef struct qmat {
    ds_mat m;
    uint8_t *data;
    float *deq;
} qmat;

/* Random bits: every scale / min / nibble pattern, with d and dmin kept in
 * a sane range so the products stay finite. */
static void random_block(ds_dtype dt, uint8_t *b)
{
    const size_t bb = ds_dtype_block_bytes(dt);
    for (size_t i = 0; i < bb; i++)
        b[i] = (uint8_t)rnd();
    const uint16_t d = ds_f32_to_f16(0.001f + 0.01f * (float)(rnd() % 1000) / 1000.0f);
    const uint16_t dm = ds_f32_to_f16(0.0005f * (float)(rnd() % 1000) / 1000.0f);
    memcpy(b, &d, 2);
    if (dt == DS_DT_Q4_K)
        memcpy(b + 2, &dm, 2);
}

static void make_qmat(qmat *t, ds_dtype dt, int rows, int cols, int raw)
{
    const size_t rb = ds_dtype_row_bytes(dt, cols);
    const int blk = (int)ds_dtype_block(dt);
    t->data = malloc(rb * (size_t)rows);
    float *row = malloc(sizeof(float) * (size_t)cols);
    for (int r = 0; r < rows; r++) {
        uint8_t *dst = t->data + rb * (size_t)r;
        if (raw) {
            for (int c = 0; c < cols; c += blk)
                random_block(dt, dst + (size_t)(c / blk) * ds_dtype_block_bytes(dt));
            continue;
        }
        const float scale = 0.01f + (float)(rnd() % 100) / 100.0f;
        for (int c = 0; c < cols; c++)
            row[c] = scale * gauss();
        if (dt == DS_DT_Q8_0)
            ds_quant_q8_0(row, dst, (size_t)(cols / 32));
        else
            ds_quant_q4_k(row, dst, (size_t)(cols / 256));
    }
    free(row);
    t->m = (ds_mat){.dtype = dt, .rows = rows, .cols = cols, .data = t->data, .scale = NULL};
    t->deq = malloc(sizeof(float) * (size_t)rows * cols);
    for (int r = 0; r < rows; r++)
        ds_convert_to_f32(dt, t->data + rb * (size_t)r, t->deq + (size_t)r * cols, (size_t)cols);
}

static int close_enough(float got, float want, double mag)
{
    return fabs((double)got - want) <= 1e-5 * mag + 1e-6;
}

static double row_mag(const qmat *t, int r, const float *x)
{
    double s = 0.0;
    for (int c = 0; c < t->m.cols; c++)
        s += fabs((double)t->deq[(size_t)r * t->m.cols + c] * x[c]);
    return s;
}

static float *rand_vec(size_t n)
{
    float *v = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        v[i] = frand();
    return v;
}

static void check_kernels_on(const ds_kernels *k, const qmat *t, const char *what)
{
    const int rows = t->m.rows, cols = t->m.cols;
    float *row = malloc(sizeof(float) * (size_t)cols);
    for (int r = 0; r < rows; r++) {
        k->mat_row(&t->m, r, row);
        checks++;
        if (memcmp(row, t->deq + (size_t)r * cols, sizeof(float) * (size_t)cols) != 0) {
            FAIL("%s %s: mat_row %d differs from the decoder", k->name, what, r);
            break;
        }
    }
    free(row);

    /* gemv over the whole matrix and a sub-range starting at row 1. */
    float *x = rand_vec((size_t)cols), *y = malloc(sizeof(float) * (size_t)(rows + 1));
    for (int r0 = 0; r0 <= (rows > 2); r0++) {
        const int n = rows - 2 * r0;
        y[n] = 12345.0f;
        k->gemv(&t->m, r0, n, x, y);
        for (int i = 0; i < n; i++) {
            float want;
            ds_kernels_scalar.gemv(&t->m, r0 + i, 1, x, &want);
            CHECK(close_enough(y[i], want, row_mag(t, r0 + i, x)), "%s %s: gemv r0=%d row %d: %.9g vs %.9g",
                  k->name, what, r0, i, (double)y[i], (double)want);
        }
        CHECK(y[n] == 12345.0f, "%s %s: gemv wrote past y", k->name, what);
    }
    free(x), free(y);

    /* gemv_t over rows r0 .. r0+n-1. */
    const int r0 = rows / 3, n = rows - rows / 3;
    float *xt = rand_vec((size_t)n), *yt = malloc(sizeof(float) * (size_t)(cols + 1));
    float *wt = malloc(sizeof(float) * (size_t)cols);
    yt[cols] = 12345.0f;
    k->gemv_t(&t->m, r0, n, xt, yt);
    ds_kernels_scalar.gemv_t(&t->m, r0, n, xt, wt);
    for (int c = 0; c < cols; c++) {
        double mag = 0.0;
        for (int i = 0; i < n; i++)
            mag += fabs((double)t->deq[(size_t)(r0 + i) * cols + c] * xt[i]);
        checks++;
        if (!close_enough(yt[c], wt[c], mag)) {
            FAIL("%s %s: gemv_t col %d: %.9g vs %.9g", k->name, what, c, (double)yt[c], (double)wt[c]);
            break;
        }
    }
    CHECK(yt[cols] == 12345.0f, "%s %s: gemv_t wrote past y", k->name, what);
    free(xt), free(yt), free(wt);

    /* gemm with several tokens, strided X and Y (the gap must stay). */
    static const int n_list[] = {1, 2, 3, 5, 17};
    for (size_t ni = 0; ni < sizeof n_list / sizeof *n_list; ni++) {
        const int nt = n_list[ni], g0 = rows > 2 ? 2 : 0, nr = rows - g0;
        const int ldx = cols + 3, ldy = nr + 5;
        float *X = rand_vec((size_t)nt * ldx);
        float *Y = malloc(sizeof(float) * (size_t)nt * ldy), *W = malloc(sizeof(float) * (size_t)nt * ldy);
        for (size_t i = 0; i < (size_t)nt * ldy; i++)
            Y[i] = W[i] = -777.0f;
        k->gemm(&t->m, g0, nr, X, ldx, nt, Y, ldy);
        ds_kernels_scalar.gemm(&t->m, g0, nr, X, ldx, nt, W, ldy);
        int bad = 0;
        for (int tk = 0; tk < nt && !bad; tk++)
            for (int i = 0; i < ldy && !bad; i++) {
                const size_t at = (size_t)tk * ldy + i;
                checks++;
                if (i >= nr ? Y[at] != -777.0f
                            : !close_enough(Y[at], W[at], row_mag(t, g0 + i, X + (size_t)tk * ldx))) {
                    FAIL("%s %s: gemm n=%d token %d row %d: %.9g vs %.9g", k->name, what, nt, tk, i,
                         (double)Y[at], (double)W[at]);
                    bad = 1;
                }
            }
        free(X), free(Y), free(W);
    }
}

static void check_kernels(const ds_kernels *k)
{
    static const int rows_list[] = {1, 3, 37, 129};
    /* Q8_0: one block, several, and rows past the 512-column GEMM chunk;
     * Q4_K: one super-block, two, and 2.5 chunks. */
    static const int q8_cols[] = {32, 96, 544, 1056};
    static const int q4_cols[] = {256, 512, 768, 1280};
    char what[96];
    for (int raw = 0; raw < 2; raw++)
        for (int d = 0; d < 2; d++) {
            const ds_dtype dt = d ? DS_DT_Q4_K : DS_DT_Q8_0;
            const int *cl = d ? q4_cols : q8_cols;
            for (size_t ri = 0; ri < sizeof rows_list / sizeof *rows_list; ri++)
                for (int ci = 0; ci < 4; ci++) {
                    qmat t;
                    make_qmat(&t, dt, rows_list[ri], cl[ci], raw);
                    snprintf(what, sizeof what, "%s%s %dx%d", ds_dtype_name(dt), raw ? "/raw" : "",
                             rows_list[ri], cl[ci]);
                    check_kernels_on(k, &t, what);
                    free(t.data), free(t.deq);
                }
        }
}

/* ---- Q4_K activations (ds_q4_k_act_round) ------------------------------ */

/* Hand-computed blocks: the largest |x| picks 2^e so that it lands on
 * 64..127 levels, values go to the nearest level (ties to even). */
static void check_q4_k_act_known(void)
{
    float x[256], y[256];
    /* amax 127: e = 0, the levels are the rounded values */
    for (int i = 0; i < 256; i++)
        x[i] = 0.0f;
    x[0] = 127.0f, x[1] = 2.5f, x[2] = 3.5f, x[3] = -0.5f, x[4] = -1.6f, x[5] = 0.49f;
    ds_q4_k_act_round(x, 256, y);
    static const float w1[6] = {127.0f, 2.0f, 4.0f, -0.0f, -2.0f, 0.0f};
    for (int i = 0; i < 6; i++)
        CHECK(y[i] == w1[i] && signbit(y[i]) == signbit(w1[i]), "act amax 127: y[%d] = %g, want %g", i, y[i], w1[i]);
    /* amax 127.5 rounds to 128 at e = 0: e = 1, steps of 2 */
    x[0] = -127.5f, x[1] = 3.0f, x[2] = 5.0f, x[3] = 1.0f;
    ds_q4_k_act_round(x, 256, y);
    static const float w2[4] = {-128.0f, 4.0f, 4.0f, 0.0f};
    for (int i = 0; i < 4; i++)
        CHECK(y[i] == w2[i], "act amax 127.5: y[%d] = %g, want %g", i, y[i], w2[i]);
    /* amax 1.0: e = -6 (64 levels to 1.0), a step of 1/64 */
    x[0] = 1.0f, x[1] = 0.3f, x[2] = -1.0f / 128.0f, x[3] = 3.0f / 128.0f;
    ds_q4_k_act_round(x, 256, y);
    static const float w3[4] = {1.0f, 19.0f / 64.0f, -0.0f, 2.0f / 64.0f};
    for (int i = 0; i < 4; i++)
        CHECK(y[i] == w3[i], "act amax 1: y[%d] = %.9g, want %.9g", i, y[i], w3[i]);
    /* each block on its own: block 1 all zero, block 2 amax 0.75 (e = -7) */
    float x3[768], y3[768];
    for (int i = 0; i < 768; i++)
        x3[i] = i < 256 ? 100.0f * frand() : i < 512 ? 0.0f : 0.5f;
    x3[600] = -0.75f;
    x3[601] = 0.1f;   /* 12.8 / 128 -> 13 / 128 */
    ds_q4_k_act_round(x3, 768, y3);
    int zeros = 1;
    for (int i = 256; i < 512; i++)
        zeros &= y3[i] == 0.0f;
    CHECK(zeros, "act: an all-zero block stays zero");
    CHECK(y3[600] == -0.75f && y3[601] == 13.0f / 128.0f && y3[512] == 0.5f, "act amax 0.75: %.9g %.9g %.9g",
          y3[600], y3[601], y3[512]);
    /* Inf / NaN: the block is passed as it is */
    x[0] = INFINITY, x[1] = 0.3f;
    ds_q4_k_act_round(x, 256, y);
    CHECK(isinf(y[0]) && y[1] == 0.3f, "act with Inf: %g %g", y[0], y[1]);
    x[0] = NAN;
    ds_q4_k_act_round(x, 256, y);
    CHECK(isnan(y[0]) && y[1] == 0.3f, "act with NaN: %g %g", y[0], y[1]);
}

/* Properties on random blocks of every scale: at most 127 levels, the
 * largest at least 64 (unless the exponent floor), the error at most half
 * a step, bf16 holds every value, and rounding again changes nothing.
 * The AVX-512 form equals the scalar one bit for bit. */
static void check_q4_k_act_random(void)
{
    enum { N = 256 * 7 };
    static float x[N], y[N], z[N], v[N];
    for (int rep = 0; rep < 300; rep++) {
        for (int b = 0; b < N / 256; b++) {
            const float mag = ldexpf(1.0f, (int)(rnd() % 270) - 150);   /* zero and subnormal blocks too */
            for (int i = 0; i < 256; i++)
                x[256 * b + i] = (rnd() % 5 == 0 ? gauss() * 8.0f : gauss()) * mag;
        }
        if (rep % 10 == 3)
            x[rnd() % N] = rep % 20 == 3 ? NAN : -INFINITY;
        ds_q4_k_act_round(x, N, y);
        ds_q4_k_act_round(y, N, z);
        for (int b = 0; b < N / 256; b++) {
            const float *xb = x + 256 * b, *yb = y + 256 * b;
            float amax = 0.0f;
            int finite = 1;
            for (int i = 0; i < 256; i++) {
                finite &= isfinite(xb[i]);
                amax = fmaxf(amax, fabsf(xb[i]));
            }
            if (!finite) {
                CHECK(!memcmp(xb, yb, sizeof(float) * 256), "act: a non-finite block is copied");
                continue;
            }
            const int e = ds_q4_k_act_exp(amax);
            const float step = ldexpf(1.0f, e);
            float qmax = 0.0f;
            int ok = 1;
            for (int i = 0; i < 256; i++) {
                const float q = yb[i] / step;
                ok &= q == rintf(q) && fabsf(q) <= 127.0f && fabsf(yb[i] - xb[i]) <= 0.5f * step &&
                      ds_bf16_to_f32(ds_f32_to_bf16(yb[i])) == yb[i];
                qmax = fmaxf(qmax, fabsf(q));
            }
            CHECK(ok, "act block %d (amax %g): a value off its level", b, amax);
            CHECK(qmax >= 64.0f || e == -126, "act block %d: largest level %g < 64 at e = %d", b, qmax, e);
        }
        int same = 1;
        for (int i = 0; i < N; i++)
            same &= (y[i] == z[i]) || (isnan(y[i]) && isnan(z[i]));
        CHECK(same, "act: rounding a rounded row changed it");
#if defined(__x86_64__) || defined(__i386__)
        if (ds_cpu_get_features()->avx512) {
            ds_q4_k_act_round_avx512(x, N, v);
            CHECK(!memcmp(y, v, sizeof y), "act: the AVX-512 form differs from the scalar one (rep %d)", rep);
        }
#endif
    }
}

int main(void)
{
    check_sizes();
    check_q4_k_act_known();
    check_q4_k_act_random();
    check_headers();
    check_q8_0_known();
    check_q4_k_known();
    check_error_bounds();
    printf("kernels:");
    for (int i = 0; i < DS_ISA_COUNT; i++) {
        const ds_kernels *k = ds_kernels_for((ds_isa)i);
        if (!k)
            continue;
        const int before = failures;
        check_kernels(k);
        printf(" %s(%s)", k->name, failures == before ? "ok" : "FAIL");
        fflush(stdout);
    }
    printf("\n%ld checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
