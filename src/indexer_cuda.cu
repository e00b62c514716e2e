/* indexer_cuda.cu — CUDA offload of the DSA lightning indexer: a per-context
 * copy of the FP8 index-key cache on the GPU, a scoring kernel that is
 * bit-identical to indexer.c's CPU arithmetic, and a per-query top-k
 * (radix select + ordered scan) with ties going to the lower position.
 * The contract is documented in indexer_gpu.h.
 *
 * Why integers: e4m3 * 512 is an integer for every finite code (|v| <=
 * 229376 < 2^18), so a 128-long dot product is exact in int64 and a single
 * rounding to f32 reproduces the CPU's (float)((double)S * 2^-18) exactly
 * (S < 2^53, so (double)S is exact; scaling by 2^-18 is exact in either
 * precision).  Tensor-core FP8 MMA would round partial sums in an
 * unspecified order and could not promise identical top-k sets. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "indexer_gpu.h"
#include "index_tiles.h"

extern "C" {
extern const float ds_e4m3_table[256];   /* simd/dtype.c, the CPU's decoder */
ds_status ds_fail(ds_error *err, ds_status code, const char *fmt, ...);
}

#define DS_HD __host__ __device__ __forceinline__
/* unrolling matters on the device only; host compilers would warn */
#ifdef __CUDA_ARCH__
#define DS_UNROLL _Pragma("unroll")
#else
#define DS_UNROLL
#endif

namespace {

constexpr int kScoreThreads = 128;   /* one key per thread */
constexpr int kHeadGroup = 32;       /* int64 accumulators held in registers at once */
constexpr int kDimChunk = 32;        /* key values decoded into registers at once */
constexpr int kTopkThreads = 1024;   /* one block per query */
constexpr size_t kScoreBudget = 64u << 20;   /* bytes of the score rows buffer */

/* ---- arithmetic shared by the kernels and the host emulation ---------- */

/* e4m3 (OCP "fn": bias 7, no infinities, 0x7f/0xff NaN) times 512: normal
 * (8+f) << (E-1), subnormal f.  NaN decodes to 0, as indexer.c's table. */
DS_HD int32_t e4m3_int(uint32_t b)
{
    uint32_t e = (b >> 3) & 15u, f = b & 7u;
    int32_t mag = (e == 0) ? (int32_t)f : (int32_t)((8u + f) << (e - 1));
    if (e == 15 && f == 7)
        mag = 0;
    return (b & 0x80u) ? -mag : mag;
}

/* f32 multiply / add rounded on their own: the CPU build (base x86-64, no
 * FMA) never contracts `s += w * d`, so neither may the GPU. */
DS_HD float mul_rn(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    volatile float r = a * b;   /* volatile: keep host compilers from fusing too */
    return r;
#endif
}

DS_HD float add_rn(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    volatile float r = a + b;
    return r;
#endif
}

/* Round-to-nearest int64 -> f32, then the exact 2^-18 scale. */
DS_HD float dot_to_float(long long s)
{
#ifdef __CUDA_ARCH__
    return __fmul_rn(__ll2float_rn(s), 0x1p-18f);
#else
    return (float)s * 0x1p-18f;
#endif
}

/* Decodes kDimChunk key bytes into integers. */
DS_HD void decode_key_chunk(const uint8_t *p, int32_t *out)
{
    uint32_t words[kDimChunk / 4];
#ifdef __CUDA_ARCH__
    /* two 16-byte loads: rows are head_dim (a multiple of 32) bytes apart */
    const uint4 *v = reinterpret_cast<const uint4 *>(p);
    uint4 a = __ldg(v), b = __ldg(v + 1);
    words[0] = a.x; words[1] = a.y; words[2] = a.z; words[3] = a.w;
    words[4] = b.x; words[5] = b.y; words[6] = b.z; words[7] = b.w;
#else
    memcpy(words, p, sizeof words);
#endif
DS_UNROLL
    for (int i = 0; i < kDimChunk; i++)
        out[i] = e4m3_int((words[i / 4] >> (8 * (i % 4))) & 0xffu);
}

/* Score of one key: q holds the query as e4m3 integers [heads][dim], w the
 * head weights.  Heads are processed in groups of kHeadGroup whose integer
 * dots are complete before their f32 terms are added, in head order. */
DS_HD float score_key(const int32_t *q, const float *w, int heads, int dim, const uint8_t *k8, float ks)
{
    float s = 0.0f;
    for (int h0 = 0; h0 < heads; h0 += kHeadGroup) {
        const int hn = heads - h0 < kHeadGroup ? heads - h0 : kHeadGroup;
        long long acc[kHeadGroup];
DS_UNROLL
        for (int hh = 0; hh < kHeadGroup; hh++)
            acc[hh] = 0;
        for (int d0 = 0; d0 < dim; d0 += kDimChunk) {
            int32_t kv[kDimChunk];
            decode_key_chunk(k8 + d0, kv);
DS_UNROLL
            for (int hh = 0; hh < kHeadGroup; hh++) {
                if (hh < hn) {
                    const int32_t *qr = q + (size_t)(h0 + hh) * dim + d0;
                    long long a = acc[hh];
DS_UNROLL
                    for (int dd = 0; dd < kDimChunk; dd++)
                        a += (long long)qr[dd] * kv[dd];
                    acc[hh] = a;
                }
            }
        }
DS_UNROLL
        for (int hh = 0; hh < kHeadGroup; hh++)
            if (hh < hn && acc[hh] > 0)          /* ReLU: dot > 0 iff S > 0 */
                s = add_rn(s, mul_rn(w[h0 + hh], dot_to_float(acc[hh])));
    }
    return mul_rn(s, ks);
}

/* Order-preserving map f32 -> uint32 (larger score, larger key).  -0 maps
 * like +0 because the CPU's comparisons treat them as equal. */
DS_HD uint32_t order_key(float f)
{
    uint32_t u;
#ifdef __CUDA_ARCH__
    u = __float_as_uint(f);
#else
    memcpy(&u, &f, 4);
#endif
    if ((u << 1) == 0)
        return 0x80000000u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* ---- kernels ------------------------------------------------------------ */

/* grid (key tiles, rows); row r is the query at position pos0 + r and sees
 * keys 0..pos0+r.  Dynamic shared memory: the query as integers + weights. */
__global__ void score_kernel(const uint8_t *__restrict__ keys, const float *__restrict__ kscale,
                             const uint8_t *__restrict__ q8, const float *__restrict__ w, int heads,
                             int dim, int pos0, float *__restrict__ scores, size_t pitch)
{
    extern __shared__ int4 smem[];   /* int4: 16-byte alignment */
    int32_t *q_s = reinterpret_cast<int32_t *>(smem);
    float *w_s = reinterpret_cast<float *>(q_s + heads * dim);
    const int r = blockIdx.y, n = pos0 + r + 1;
    const int j0 = blockIdx.x * blockDim.x;
    if (j0 >= n)
        return;                                  /* the whole block: no key of this row */
    const uint8_t *qrow = q8 + (size_t)r * heads * dim;
    for (int i = threadIdx.x; i < heads * dim; i += blockDim.x)
        q_s[i] = e4m3_int(qrow[i]);
    for (int i = threadIdx.x; i < heads; i += blockDim.x)
        w_s[i] = w[(size_t)r * heads + i];
    __syncthreads();
    const int j = j0 + threadIdx.x;
    if (j < n)
        scores[(size_t)r * pitch + j] = score_key(q_s, w_s, heads, dim, keys + (size_t)j * dim, kscale[j]);
}

/* Exclusive block-wide prefix count of `flag` in thread order; *total gets
 * the block's count.  Every thread of the block must call it. */
__device__ unsigned block_excl_count(bool flag, unsigned *warp_counts, unsigned *total)
{
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const unsigned ballot = __ballot_sync(0xffffffffu, flag);
    if (lane == 0)
        warp_counts[warp] = __popc(ballot);
    __syncthreads();
    unsigned before = __popc(ballot & ((1u << lane) - 1u)), tot = 0;
    for (unsigned i = 0; i < nw; i++) {
        unsigned c = warp_counts[i];
        before += i < warp ? c : 0u;
        tot += c;
    }
    __syncthreads();                             /* all read before the next write */
    *total = tot;
    return before;
}

/* Warp 0 finds the digit (scanning from 255 down) at which the running
 * count of candidates reaches krem.  Lane l owns digits 255-8l .. 248-8l. */
__device__ void pick_digit_warp(const unsigned *hist, unsigned krem, int shift, uint32_t prefix,
                                uint32_t *out_prefix, unsigned *out_krem)
{
    const unsigned lane = threadIdx.x & 31u;
    const int top = 255 - 8 * (int)lane;
    unsigned mine = 0;
    for (int b = top; b > top - 8; b--)
        mine += hist[b];
    unsigned incl = mine;
    for (int o = 1; o < 32; o <<= 1) {
        unsigned v = __shfl_up_sync(0xffffffffu, incl, o);
        if ((int)lane >= o)
            incl += v;
    }
    const unsigned excl = incl - mine;
    if (excl < krem && krem <= incl) {           /* exactly one lane */
        unsigned c = excl;
        for (int b = top; b > top - 8; b--) {
            if (c + hist[b] >= krem) {
                *out_prefix = prefix | ((uint32_t)b << shift);
                *out_krem = krem - c;
                break;
            }
            c += hist[b];
        }
    }
}

/* One block per row: selects the k = min(topk, n) best of scores[0..n) and
 * writes them ascending.  Radix select (8 bits a pass, most significant
 * first) finds the k-th largest key `thr` and how many keys equal to it
 * are needed (need_eq = k - #greater); the ordered scan then takes every key
 * above thr and the first need_eq keys equal to thr, i.e. ties go to the
 * lower positions, and emits positions in increasing order. */
__global__ void topk_kernel(const float *__restrict__ scores, size_t pitch, int pos0, int topk,
                            int32_t *__restrict__ sel, int sel_stride, int *__restrict__ nsel)
{
    __shared__ unsigned hist[256];
    __shared__ uint32_t s_prefix;
    __shared__ unsigned s_krem;
    __shared__ unsigned eq_counts[32], sel_counts[32];
    const int r = blockIdx.x, n = pos0 + r + 1, k = topk < n ? topk : n;
    const float *s = scores + (size_t)r * pitch;
    int32_t *out = sel + (size_t)r * sel_stride;
    if (threadIdx.x == 0)
        nsel[r] = k > 0 ? k : 0;
    if (k >= n) {
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            out[i] = i;
        return;
    }
    if (k <= 0)
        return;

    uint32_t prefix = 0, mask = 0;
    unsigned krem = (unsigned)k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x)
            hist[i] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            uint32_t key = order_key(s[i]);
            if ((key & mask) == prefix)
                atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x < 32)
            pick_digit_warp(hist, krem, shift, prefix, &s_prefix, &s_krem);
        __syncthreads();
        prefix = s_prefix;
        krem = s_krem;
        mask |= 255u << shift;
        __syncthreads();                         /* before hist / s_prefix are rewritten */
    }
    const uint32_t thr = prefix;
    const unsigned need_eq = krem;

    unsigned eq_base = 0, sel_base = 0;          /* block-uniform */
    for (int base = 0; base < n && sel_base < (unsigned)k; base += blockDim.x) {
        const int i = base + threadIdx.x;
        const uint32_t key = i < n ? order_key(s[i]) : 0u;
        const bool gt = i < n && key > thr, eq = i < n && key == thr;
        unsigned eq_total, sel_total;
        const unsigned eq_before = block_excl_count(eq, eq_counts, &eq_total);
        const bool take = gt || (eq && eq_base + eq_before < need_eq);
        const unsigned sel_before = block_excl_count(take, sel_counts, &sel_total);
        if (take)
            out[sel_base + sel_before] = i;
        eq_base += eq_total;
        sel_base += sel_total;
    }
}

/* ---- host side ------------------------------------------------------------ */

const char *cuda_msg(cudaError_t e) { return cudaGetErrorString(e); }

} /* namespace */

struct ds_gpu_indexer {
    int layers, ctx, dim, heads;
    int rows;                 /* queries scored per pass (rows of d_scores) */
    size_t pitch;             /* floats per score row */
    cudaStream_t stream;
    uint8_t *d_keys;          /* [layers][ctx][dim] */
    float *d_kscale;          /* [layers][ctx] */
    int *valid;               /* host: positions [0, valid[l]) are uploaded */
    uint8_t *d_q8;            /* [rows][heads][dim] */
    float *d_w;               /* [rows][heads] */
    float *d_scores;          /* [rows][pitch] */
    int32_t *d_sel;           /* grows on demand: [rows][sel_stride] */
    size_t sel_cap;
    int *d_nsel;              /* [rows] */
    size_t smem;              /* dynamic shared memory of score_kernel */
};

#define CU_TRY(call)                                                                           \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess)                                                                 \
            return ds_fail(err, e_ == cudaErrorMemoryAllocation ? DS_ERR_NOMEM : DS_ERR_UNSUPPORTED, \
                           "GPU indexer: %s: %s", #call, cuda_msg(e_));                        \
    } while (0)

static ds_status check_shape(int layers, int ctx, int dim, int heads, ds_error *err)
{
    if (layers <= 0 || ctx <= 0 || heads <= 0 || dim <= 0 || dim % kDimChunk != 0)
        return ds_fail(err, DS_ERR_UNSUPPORTED,
                       "GPU indexer: unsupported shape (layers %d, context %d, head_dim %d, heads %d)",
                       layers, ctx, dim, heads);
    return DS_OK;
}

static ds_status pick_device(size_t smem, ds_error *err)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess)
        return ds_fail(err, DS_ERR_UNSUPPORTED, "GPU indexer: no usable CUDA device (%s)", cuda_msg(e));
    if (count == 0)
        return ds_fail(err, DS_ERR_UNSUPPORTED, "GPU indexer: no CUDA device");
    int dev = 0, optin = 0;
    CU_TRY(cudaGetDevice(&dev));
    CU_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (smem > (size_t)optin)
        return ds_fail(err, DS_ERR_UNSUPPORTED, "GPU indexer: a query needs %zu bytes of shared memory, the device has %d",
                       smem, optin);
    if (smem > 48u * 1024u)
        CU_TRY(cudaFuncSetAttribute(score_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    return DS_OK;
}

static ds_status alloc_buffers(ds_gpu_indexer *g, ds_error *err)
{
    const size_t P = (size_t)g->ctx, L = (size_t)g->layers;
    CU_TRY(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
    CU_TRY(cudaMalloc((void **)&g->d_keys, L * P * (size_t)g->dim));
    CU_TRY(cudaMalloc((void **)&g->d_kscale, L * P * sizeof(float)));
    CU_TRY(cudaMalloc((void **)&g->d_q8, (size_t)g->rows * g->heads * g->dim));
    CU_TRY(cudaMalloc((void **)&g->d_w, (size_t)g->rows * g->heads * sizeof(float)));
    CU_TRY(cudaMalloc((void **)&g->d_scores, (size_t)g->rows * g->pitch * sizeof(float)));
    CU_TRY(cudaMalloc((void **)&g->d_nsel, (size_t)g->rows * sizeof(int)));
    return DS_OK;
}

extern "C" ds_gpu_indexer *ds_gpu_indexer_create(int layers, int ctx_size, int head_dim, int n_heads,
                                                 ds_error *err)
{
    if (check_shape(layers, ctx_size, head_dim, n_heads, err) != DS_OK)
        return NULL;
    const size_t smem = (size_t)n_heads * head_dim * sizeof(int32_t) + (size_t)n_heads * sizeof(float);
    if (pick_device(smem, err) != DS_OK)
        return NULL;
    ds_gpu_indexer *g = (ds_gpu_indexer *)calloc(1, sizeof *g);
    int *valid = (int *)calloc((size_t)layers, sizeof(int));
    if (!g || !valid) {
        free(g);
        free(valid);
        ds_fail(err, DS_ERR_NOMEM, "GPU indexer: out of host memory");
        return NULL;
    }
    g->layers = layers;
    g->ctx = ctx_size;
    g->dim = head_dim;
    g->heads = n_heads;
    g->valid = valid;
    g->smem = smem;
    g->pitch = ((size_t)ctx_size + 63) & ~(size_t)63;   /* 256-byte aligned rows */
    size_t rows = kScoreBudget / (g->pitch * sizeof(float));
    g->rows = rows < 1 ? 1 : (rows > 256 ? 256 : (int)rows);
    if (alloc_buffers(g, err) != DS_OK) {
        ds_gpu_indexer_free(g);
        return NULL;
    }
    return g;
}

extern "C" void ds_gpu_indexer_free(ds_gpu_indexer *g)
{
    if (!g)
        return;
    /* errors ignored: after a sticky device error the frees may fail too */
    if (g->stream)
        cudaStreamSynchronize(g->stream);
    cudaFree(g->d_keys);
    cudaFree(g->d_kscale);
    cudaFree(g->d_q8);
    cudaFree(g->d_w);
    cudaFree(g->d_scores);
    cudaFree(g->d_sel);
    cudaFree(g->d_nsel);
    if (g->stream)
        cudaStreamDestroy(g->stream);
    free(g->valid);
    free(g);
}

extern "C" ds_status ds_gpu_indexer_sync_keys(ds_gpu_indexer *g, int layer, const uint8_t *k8_all,
                                              const float *ks_all, int start, int end, ds_error *err)
{
    if (!g || layer < 0 || layer >= g->layers || start < 0 || end < start || end > g->ctx)
        return ds_fail(err, DS_ERR_INVALID_ARG, "GPU indexer: bad key range [%d, %d) of layer %d", start, end, layer);
    /* Positions below start are unchanged on the host, but may never have
     * been uploaded (e.g. the GPU state was created mid-sequence). */
    const int lo = g->valid[layer] < start ? g->valid[layer] : start;
    if (end > lo) {
        const size_t dim = (size_t)g->dim, base = (size_t)layer * g->ctx;
        /* out of the host's tiles into rows */
        uint8_t *rows = (uint8_t *)malloc((size_t)(end - lo) * dim);
        if (!rows)
            return ds_fail(err, DS_ERR_NOMEM, "GPU indexer: out of memory for %d keys", end - lo);
        ds_index_keys_get(k8_all, g->dim, lo, end - lo, rows);
        const cudaError_t ce = cudaMemcpyAsync(g->d_keys + (base + lo) * dim, rows, (size_t)(end - lo) * dim,
                                               cudaMemcpyHostToDevice, g->stream);
        const cudaError_t se = ce == cudaSuccess ? cudaStreamSynchronize(g->stream) : ce;
        free(rows);
        CU_TRY(se);
        CU_TRY(cudaMemcpyAsync(g->d_kscale + base + lo, ks_all + lo, (size_t)(end - lo) * sizeof(float),
                               cudaMemcpyHostToDevice, g->stream));
        /* the host cache may be rewritten (truncate + re-eval) once we return */
        CU_TRY(cudaStreamSynchronize(g->stream));
    }
    g->valid[layer] = end;
    return DS_OK;
}

static ds_status ensure_sel(ds_gpu_indexer *g, size_t need, ds_error *err)
{
    if (need <= g->sel_cap)
        return DS_OK;
    cudaFree(g->d_sel);
    g->d_sel = NULL;
    g->sel_cap = 0;
    CU_TRY(cudaMalloc((void **)&g->d_sel, need * sizeof(int32_t)));
    g->sel_cap = need;
    return DS_OK;
}

/* Scores and selects queries [row0, row0+rows) of one select call. */
static ds_status run_rows(ds_gpu_indexer *g, int layer, const uint8_t *q8, const float *w, int row0, int rows,
                          int start, int topk, int32_t *sel, int *nsel, int sel_stride, float *scores,
                          size_t score_stride, ds_error *err)
{
    const size_t qbytes = (size_t)g->heads * g->dim, base = (size_t)layer * g->ctx;
    const int pos0 = start + row0, nmax = pos0 + rows;
    CU_TRY(cudaMemcpyAsync(g->d_q8, q8 + (size_t)row0 * qbytes, (size_t)rows * qbytes, cudaMemcpyHostToDevice,
                           g->stream));
    CU_TRY(cudaMemcpyAsync(g->d_w, w + (size_t)row0 * g->heads, (size_t)rows * g->heads * sizeof(float),
                           cudaMemcpyHostToDevice, g->stream));
    dim3 grid((unsigned)((nmax + kScoreThreads - 1) / kScoreThreads), (unsigned)rows);
    score_kernel<<<grid, kScoreThreads, g->smem, g->stream>>>(g->d_keys + base * g->dim, g->d_kscale + base, g->d_q8,
                                                              g->d_w, g->heads, g->dim, pos0, g->d_scores, g->pitch);
    CU_TRY(cudaGetLastError());
    topk_kernel<<<rows, kTopkThreads, 0, g->stream>>>(g->d_scores, g->pitch, pos0, topk, g->d_sel, sel_stride,
                                                      g->d_nsel);
    CU_TRY(cudaGetLastError());
    CU_TRY(cudaMemcpyAsync(sel + (size_t)row0 * sel_stride, g->d_sel, (size_t)rows * sel_stride * sizeof(int32_t),
                           cudaMemcpyDeviceToHost, g->stream));
    CU_TRY(cudaMemcpyAsync(nsel + row0, g->d_nsel, (size_t)rows * sizeof(int), cudaMemcpyDeviceToHost, g->stream));
    if (scores)   /* rows shorter than nmax get don't-care values past their end */
        CU_TRY(cudaMemcpy2DAsync(scores + (size_t)row0 * score_stride, score_stride * sizeof(float), g->d_scores,
                                 g->pitch * sizeof(float), (size_t)nmax * sizeof(float), (size_t)rows,
                                 cudaMemcpyDeviceToHost, g->stream));
    CU_TRY(cudaStreamSynchronize(g->stream));
    return DS_OK;
}

extern "C" ds_status ds_gpu_indexer_select(ds_gpu_indexer *g, int layer, const uint8_t *q8, const float *w, int T,
                                           int start, int topk, int32_t *sel, int *nsel, int sel_stride,
                                           float *scores, ds_error *err)
{
    if (!g || !q8 || !w || !sel || !nsel || layer < 0 || layer >= g->layers || T <= 0 || start < 0 ||
        start + T > g->ctx)
        return ds_fail(err, DS_ERR_INVALID_ARG, "GPU indexer: bad select arguments (layer %d, %d queries at %d)",
                       layer, T, start);
    if (g->valid[layer] < start + T)
        return ds_fail(err, DS_ERR_INVALID_ARG, "GPU indexer: keys of layer %d uploaded up to %d, queries need %d",
                       layer, g->valid[layer], start + T);
    const int last_k = topk < start + T ? topk : start + T;
    if (sel_stride < last_k)
        return ds_fail(err, DS_ERR_INVALID_ARG, "GPU indexer: selection stride %d below %d", sel_stride, last_k);
    ds_status st = ensure_sel(g, (size_t)g->rows * (sel_stride > 0 ? sel_stride : 1), err);
    for (int row0 = 0; st == DS_OK && row0 < T; row0 += g->rows) {
        const int rows = T - row0 < g->rows ? T - row0 : g->rows;
        st = run_rows(g, layer, q8, w, row0, rows, start, topk, sel, nsel, sel_stride, scores,
                      (size_t)start + T, err);
    }
    return st;
}

/* ---- host emulation (tests) ---------------------------------------------- */

extern "C" int ds_gpu_indexer_check_e4m3(void)
{
    for (int i = 0; i < 256; i++) {
        float v = ds_e4m3_table[i];
        int32_t want = v != v ? 0 : (int32_t)(v * 512.0f);
        if (e4m3_int((uint32_t)i) != want)
            return i + 1;
    }
    return 0;
}

extern "C" float ds_gpu_indexer_emulate_score(const uint8_t *q8, const float *w, int n_heads, int head_dim,
                                              const uint8_t *k8, float ks)
{
    int32_t *q = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_heads * head_dim);
    if (!q)
        return NAN;
    for (int i = 0; i < n_heads * head_dim; i++)
        q[i] = e4m3_int(q8[i]);
    float s = score_key(q, w, n_heads, head_dim, k8, ks);
    free(q);
    return s;
}

/* Sequential rendering of topk_kernel: the same radix passes, digit choice
 * and ordered scan. */
extern "C" int ds_gpu_indexer_emulate_topk(const float *score, int n, int k, int32_t *out)
{
    if (k >= n) {
        for (int i = 0; i < n; i++)
            out[i] = i;
        return n;
    }
    if (k <= 0)
        return 0;
    uint32_t prefix = 0, mask = 0;
    unsigned krem = (unsigned)k, hist[256];
    for (int shift = 24; shift >= 0; shift -= 8) {
        memset(hist, 0, sizeof hist);
        for (int i = 0; i < n; i++) {
            uint32_t key = order_key(score[i]);
            if ((key & mask) == prefix)
                hist[(key >> shift) & 255u]++;
        }
        unsigned c = 0;
        int b = 255;
        while (c + hist[b] < krem)
            c += hist[b--];
        prefix |= (uint32_t)b << shift;
        krem -= c;
        mask |= 255u << shift;
    }
    int m = 0;
    unsigned eq_seen = 0;
    for (int i = 0; i < n && m < k; i++) {
        uint32_t key = order_key(score[i]);
        if (key > prefix || (key == prefix && eq_seen++ < krem))
            out[m++] = i;
    }
    return m;
}
