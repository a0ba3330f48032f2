/* Exact top-k scans over stored codes, fused: each code is read once, scored against a
 * group of queries while it is in cache, and kept only if it beats the worst of the k
 * results so far (a bounded heap per query). No score array the size of the collection is
 * written, and the scan runs on several threads without the GIL.
 *
 * Scores: fp32 codes and int8 codes (float query, already multiplied by the int8 scale)
 * give inner products; packed sign bits give -hamming (higher is better, like the others).
 * Results are sorted by score descending, then id ascending, as polymodal.index.topk
 * orders them; missing results are (-inf, -1).
 *
 * Kernels, chosen at run time by what the CPU has: AVX-512 (VNNI for int8 codes, VPOPCNTQ
 * for sign bits), AVX2 + FMA (and popcnt), or portable C. fp32 codes are bound by memory
 * bandwidth with any of them. int8 and sign-bit codes are not: widening int8 to float 8
 * lanes at a time, or counting bits a 64-bit word at a time, takes longer than reading the
 * codes; VNNI's integer dot products and the vector popcount bring both to the bandwidth
 * floor on one query (bench/search.py). `set_isa("avx2")` or `set_isa("generic")` caps
 * the kernels (the tests compare every level).
 *
 * The Python side (polymodal/index/native.py) checks dtypes, shapes, contiguity and
 * alignment; the checks here guard against what would corrupt memory if that were skipped:
 * a buffer shorter than its stated shape, sizes that overflow, a required array that is
 * None. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#define POLYMODAL_X86 1
#include <immintrin.h>
#endif

#define BLOCK_BYTES (32 << 10)  /* codes scored per step: they stay in L1/L2 across a query group */
#define MIN_BLOCK_ROWS 16
#define MAX_BLOCK_ROWS 1024     /* sign-bit codes: 1024 x 64 bytes */
#define QUERIES_PER_GROUP 16    /* queries scored against a block while it is in cache */
#define CHECK_ROWS 32           /* scores compared with the k-th best per branch */
#define MIN_BYTES_PER_THREAD (2 << 20) /* below this, a thread costs more than it saves */
#define CHUNK_BYTES (1 << 20)          /* rows a thread takes at a time from the shared counter */
#define THREAD_STACK_BYTES (1 << 20)   /* run_scan keeps 64 KB of scores on its stack (musl's default: 128 KB) */
#define MAX_THREADS 256
#define PADDING_ID INT64_MAX    /* sorts after every real id; returned as -1 */

/* ---------------------------------------------------------------- bounded heaps */

/* (s, id) ranks before (rs, rid): higher score, then smaller id. NaN never ranks before. */
static inline int ranks_before(float s, int64_t id, float rs, int64_t rid) {
    return s > rs || (s == rs && id < rid);
}

/* A heap of k results whose root is the worst; replace the root and sift down. */
static void heap_replace_root(float *hs, int64_t *hi, int64_t k, float s, int64_t id) {
    int64_t i = 0;
    for (;;) {
        int64_t child = 2 * i + 1;
        if (child >= k) break;
        if (child + 1 < k && ranks_before(hs[child], hi[child], hs[child + 1], hi[child + 1])) child++;
        if (!ranks_before(s, id, hs[child], hi[child])) break;
        hs[i] = hs[child];
        hi[i] = hi[child];
        i = child;
    }
    hs[i] = s;
    hi[i] = id;
}

static inline void heap_push(float *hs, int64_t *hi, int64_t k, float s, int64_t id) {
    if (ranks_before(s, id, hs[0], hi[0])) heap_replace_root(hs, hi, k, s, id);
}

static void heap_init(float *hs, int64_t *hi, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        hs[i] = -INFINITY;
        hi[i] = PADDING_ID;
    }
}

typedef struct {
    float score;
    int64_t id;
} result_t;

static int compare_results(const void *a, const void *b) {
    const result_t *x = a, *y = b;
    if (ranks_before(x->score, x->id, y->score, y->id)) return -1;
    if (ranks_before(y->score, y->id, x->score, x->id)) return 1;
    return 0;
}

/* Heap -> sorted results in place, padding ids as -1. */
static int heap_sort_into(float *hs, int64_t *hi, int64_t k, float *out_s, int64_t *out_i) {
    result_t *tmp = malloc((size_t)k * sizeof(result_t));
    if (!tmp) return -1;
    for (int64_t i = 0; i < k; i++) {
        tmp[i].score = hs[i];
        tmp[i].id = hi[i];
    }
    qsort(tmp, (size_t)k, sizeof(result_t), compare_results);
    for (int64_t i = 0; i < k; i++) {
        out_s[i] = tmp[i].score;
        out_i[i] = tmp[i].id == PADDING_ID ? -1 : tmp[i].id;
    }
    free(tmp);
    return 0;
}

/* ---------------------------------------------------------------- score kernels */

/* out[j * nrows + r] = score of query j against row r: rows[r], or rows[index[r]] where an
 * index is given (a filter's rows, read in place). `dim` counts elements of the codes' type
 * (floats, bytes, or 64-bit words for sign bits). */
typedef void (*score_fn)(const void *queries, int64_t nq, const void *rows, const int64_t *index, int64_t nrows,
                         int64_t dim, float *out);

/* One kernel per code type and instruction set: every query against every row, a row at a
 * time, read in order. DOT(query, row, dim) scores one pair; ATTR compiles the kernel for
 * the instruction set DOT uses (empty: the baseline). */
#define DEFINE_KERNEL(NAME, ATTR, QUERY_T, CODE_T, DOT)                                                            \
    ATTR static void NAME(const void *qv, int64_t nq, const void *rv, const int64_t *index, int64_t nrows,    \
                          int64_t dim, float *out) {                                                      \
        const QUERY_T *q = qv;                                                                              \
        const CODE_T *rows = rv;                                                                          \
        for (int64_t r = 0; r < nrows; r++) {                                                             \
            const CODE_T *row = rows + (index ? index[r] : r) * dim;                                      \
            for (int64_t j = 0; j < nq; j++) out[j * nrows + r] = DOT(q + j * dim, row, dim);              \
        }                                                                                                 \
    }

/* Portable: eight partial sums, which compilers vectorise for the baseline (SSE2 on x86-64). */
#define DEFINE_GENERIC_DOT(NAME, CODE_T)                                                                  \
    static inline float NAME(const float *q, const CODE_T *x, int64_t dim) {                             \
        float acc[8] = {0};                                                                               \
        int64_t i = 0;                                                                                    \
        for (; i + 8 <= dim; i += 8)                                                                      \
            for (int l = 0; l < 8; l++) acc[l] += q[i + l] * (float)x[i + l];                             \
        float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));     \
        for (; i < dim; i++) s += q[i] * (float)x[i];                                                     \
        return s;                                                                                         \
    }

DEFINE_GENERIC_DOT(dot_f32_generic, float)
DEFINE_GENERIC_DOT(dot_i8_generic, int8_t)
DEFINE_KERNEL(f32_generic, , float, float, dot_f32_generic)
DEFINE_KERNEL(i8_generic, , float, int8_t, dot_i8_generic)

static inline int popcount64_portable(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int)((x * 0x0101010101010101ULL) >> 56);
}

/* Sign bits: -hamming distance over `dim` 64-bit words. */
static inline float hamming_generic_dot(const uint64_t *q, const uint64_t *x, int64_t words) {
    int64_t h = 0;
    for (int64_t w = 0; w < words; w++) h += popcount64_portable(q[w] ^ x[w]);
    return -(float)h;
}

DEFINE_KERNEL(hamming_generic, , uint64_t, uint64_t, hamming_generic_dot)

#ifdef POLYMODAL_X86
__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* AVX2 + FMA: four chains of 8 lanes along the row; LOAD8 reads 8 codes as floats. */
#define AVX2 __attribute__((target("avx2,fma")))
#define DEFINE_AVX2_DOT(NAME, CODE_T, LOAD8)                                                              \
    AVX2 static inline float NAME(const float *q, const CODE_T *x, int64_t dim) {                        \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                       \
        int64_t i = 0;                                                                                    \
        for (; i + 32 <= dim; i += 32) {                                                                  \
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), LOAD8(x + i), a0);                               \
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), LOAD8(x + i + 8), a1);                       \
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 16), LOAD8(x + i + 16), a2);                     \
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 24), LOAD8(x + i + 24), a3);                     \
        }                                                                                                 \
        for (; i + 8 <= dim; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), LOAD8(x + i), a0);     \
        float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));                   \
        for (; i < dim; i++) s += q[i] * (float)x[i];                                                     \
        return s;                                                                                         \
    }

AVX2 static inline __m256 load8_f32(const float *p) { return _mm256_loadu_ps(p); }

AVX2 static inline __m256 load8_i8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

DEFINE_AVX2_DOT(dot_f32_avx2, float, load8_f32)
DEFINE_AVX2_DOT(dot_i8_avx2, int8_t, load8_i8)
DEFINE_KERNEL(f32_avx2, AVX2, float, float, dot_f32_avx2)
DEFINE_KERNEL(i8_avx2, AVX2, float, int8_t, dot_i8_avx2)

#define POPCNT __attribute__((target("popcnt")))
POPCNT static inline float hamming_popcnt_dot(const uint64_t *q, const uint64_t *x, int64_t words) {
    int64_t h = 0;
    for (int64_t w = 0; w < words; w++) h += __builtin_popcountll(q[w] ^ x[w]);
    return -(float)h;
}

DEFINE_KERNEL(hamming_popcnt, POPCNT, uint64_t, uint64_t, hamming_popcnt_dot)

#define AVX512_FLOAT_TARGET "avx512f,avx512dq,avx512bw,avx512vl,fma"
#define AVX512_POPCNT_TARGET AVX512_FLOAT_TARGET ",avx512vpopcntdq"

/* One row at a time, read in order, with four independent chains of multiply-adds along it.
 * (Scoring 4 rows per pass, the query's vectors loaded once, was as fast in cache but 1.6x
 * slower from memory: the interleaved reads of 4 rows defeat the hardware prefetcher.) */
static inline __mmask16 tail_mask16(int64_t left) { return left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1); }

#define AVX512 __attribute__((target(AVX512_FLOAT_TARGET)))
#define DEFINE_AVX512_DOT(NAME, CODE_T, LOAD16)                                                           \
    AVX512 static inline float NAME(const float *q, const CODE_T *x, int64_t dim) {                      \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                       \
        int64_t i = 0;                                                                                    \
        for (; i + 64 <= dim; i += 64) {                                                                  \
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), LOAD16(0xFFFF, x + i), a0);                      \
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), LOAD16(0xFFFF, x + i + 16), a1);            \
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 32), LOAD16(0xFFFF, x + i + 32), a2);            \
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 48), LOAD16(0xFFFF, x + i + 48), a3);            \
        }                                                                                                 \
        for (; i < dim; i += 16) { /* the tail under a mask: no scalar loop */                           \
            __mmask16 m = tail_mask16(dim - i);                                                           \
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), LOAD16(m, x + i), a0);                  \
        }                                                                                                 \
        return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));          \
    }

AVX512 static inline __m512 load16_f32(__mmask16 m, const float *p) { return _mm512_maskz_loadu_ps(m, p); }

AVX512 static inline __m512 load16_i8(__mmask16 m, const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}

DEFINE_AVX512_DOT(dot_f32_avx512, float, load16_f32)
DEFINE_AVX512_DOT(dot_i8_avx512, int8_t, load16_i8)
DEFINE_KERNEL(f32_avx512, AVX512, float, float, dot_f32_avx512)
DEFINE_KERNEL(i8_avx512, AVX512, float, int8_t, dot_i8_avx512)

/* int8 codes against a float query with the CPU's integer dot products (VNNI): the query is
 * split into two int16 terms, q ~ a1 q1 + a2 q2 (q2 holds what rounding q1 left), and each
 * term's product with the codes is exact in int32. What the split leaves is below 2^-30 of
 * the query's largest element, less than float32 rounding of the score itself, so the
 * scores equal the float kernels' to float precision (the tests check the rankings) while
 * each 32 codes cost one widening and two multiply-adds instead of two conversions and two
 * float multiply-adds per 16. Lanes hold at most dim/16 * 127 * 32767 in magnitude: exact
 * in int32 up to VNNI_MAX_DIM. */
#define VNNI_MAX_DIM 4096
#define VNNI_HEADER 64 /* bytes before q1: the two scales and the exponent, padded to a cache line */

static int64_t vnni_padded_dim(int64_t dim) { return (dim + 31) / 32 * 32; }

static int64_t vnni_query_bytes(int64_t dim) { return VNNI_HEADER + 2 * vnni_padded_dim(dim) * (int64_t)sizeof(int16_t); }

/* One float query -> [a1, a2, pad][q1 (padded dim)][q2 (padded dim)], zeros past dim. */
static void vnni_prepare(const float *q, int64_t dim, char *out) {
    int64_t padded = vnni_padded_dim(dim);
    float *scales = (float *)out;
    int32_t *exponent = (int32_t *)(out + 2 * sizeof(float));
    int16_t *q1 = (int16_t *)(out + VNNI_HEADER), *q2 = q1 + padded;
    memset(out, 0, (size_t)vnni_query_bytes(dim));
    float largest = 0.0f;
    for (int64_t i = 0; i < dim; i++) {
        if (isnan(q[i])) { /* NaN scores, as the float kernels give: nothing is returned */
            scales[0] = scales[1] = NAN;
            return;
        }
        largest = fabsf(q[i]) > largest ? fabsf(q[i]) : largest;
    }
    if (largest == 0.0f) return; /* scores 0 */
    /* the terms are of the query scaled by 2^-e into [1, 2): a2 stays a normal float for any
     * query, and the kernel scales the score back by 2^e */
    int e = ilogbf(largest);
    double a1 = ldexp(largest, -e) / 32767.0, a2 = a1 / 32767.0; /* |residual| <= a1 / 2 < 32767 a2 */
    for (int64_t i = 0; i < dim; i++) {
        double x = ldexp(q[i], -e);
        double first = nearbyint(x / a1);
        first = first > 32767 ? 32767 : first < -32767 ? -32767 : first;
        double rest = nearbyint((x - first * a1) / a2);
        q1[i] = (int16_t)first;
        q2[i] = (int16_t)(rest > 32767 ? 32767 : rest < -32767 ? -32767 : rest);
    }
    if (ldexp(a2, e) >= FLT_MIN && ldexp(a1, e) <= FLT_MAX) { /* the usual case: no rescaling per row */
        a1 = ldexp(a1, e);
        a2 = ldexp(a2, e);
        e = 0;
    }
    scales[0] = (float)a1;
    scales[1] = (float)a2;
    *exponent = e;
}

#define AVX512_VNNI_TARGET AVX512_FLOAT_TARGET ",avx512vnni"

/* One int8 row against one prepared query: four pairs of chains along the row. */
__attribute__((target(AVX512_VNNI_TARGET), always_inline)) static inline float i8_row_vnni(
    const char *prepared, const int8_t *x, int64_t dim) {
    const float *scales = (const float *)prepared;
    const int16_t *q1 = (const int16_t *)(prepared + VNNI_HEADER), *q2 = q1 + vnni_padded_dim(dim);
    __m512i s1[4], s2[4];
    for (int c = 0; c < 4; c++) s1[c] = s2[c] = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 128 <= dim; i += 128)
        for (int c = 0; c < 4; c++) {
            __m512i codes = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(x + i + 32 * c))); /* 32 x int16 */
            s1[c] = _mm512_dpwssd_epi32(s1[c], codes, _mm512_loadu_si512(q1 + i + 32 * c));
            s2[c] = _mm512_dpwssd_epi32(s2[c], codes, _mm512_loadu_si512(q2 + i + 32 * c));
        }
    for (; i < dim; i += 32) { /* the query is zero-padded: only the codes need a mask */
        __mmask32 m = dim - i >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << (dim - i)) - 1);
        __m512i codes = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, x + i));
        s1[0] = _mm512_dpwssd_epi32(s1[0], codes, _mm512_loadu_si512(q1 + i));
        s2[0] = _mm512_dpwssd_epi32(s2[0], codes, _mm512_loadu_si512(q2 + i));
    }
    __m512i t1 = _mm512_add_epi32(_mm512_add_epi32(s1[0], s1[1]), _mm512_add_epi32(s1[2], s1[3]));
    __m512i t2 = _mm512_add_epi32(_mm512_add_epi32(s2[0], s2[1]), _mm512_add_epi32(s2[2], s2[3]));
    float sum = _mm512_reduce_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(scales[0]), _mm512_cvtepi32_ps(t1),
                                                     _mm512_mul_ps(_mm512_set1_ps(scales[1]), _mm512_cvtepi32_ps(t2))));
    int32_t exponent = *(const int32_t *)(prepared + 2 * sizeof(float));
    return exponent ? ldexpf(sum, exponent) : sum;
}

__attribute__((target(AVX512_VNNI_TARGET))) static void i8_vnni(const void *qv, int64_t nq, const void *rv,
                                                                 const int64_t *index, int64_t nrows, int64_t dim,
                                                                 float *out) {
    const int8_t *rows = rv;
    int64_t stride = vnni_query_bytes(dim);
    for (int64_t r = 0; r < nrows; r++) {
        const int8_t *row = rows + (index ? index[r] : r) * dim;
        for (int64_t j = 0; j < nq; j++) out[j * nrows + r] = i8_row_vnni((const char *)qv + j * stride, row, dim);
    }
}

/* Per-row bit counts of one query against up to 8 rows, as 8 lanes of per-word counts each. */
__attribute__((target(AVX512_POPCNT_TARGET))) static inline __m512i popcount_row(const uint64_t *q,
                                                                                const uint64_t *x, int64_t words) {
    __m512i acc = _mm512_setzero_si512();
    for (int64_t w = 0; w < words; w += 8) {
        __mmask8 m = words - w >= 8 ? 0xFF : (__mmask8)((1u << (words - w)) - 1);
        __m512i bits = _mm512_xor_si512(_mm512_maskz_loadu_epi64(m, q + w), _mm512_maskz_loadu_epi64(m, x + w));
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(bits));
    }
    return acc;
}

/* Lane r of the result = the sum of v[r]'s 8 lanes: a transpose-and-add tree (21 instructions
 * for 8 rows instead of a horizontal reduction of each). */
__attribute__((target(AVX512_POPCNT_TARGET))) static inline __m512i sum_lanes8(const __m512i v[8]) {
    __m512i p[4];
    for (int i = 0; i < 4; i++) /* each 128-bit chunk: (v[2i] pair sum, v[2i+1] pair sum) */
        p[i] = _mm512_add_epi64(_mm512_unpacklo_epi64(v[2 * i], v[2 * i + 1]),
                                _mm512_unpackhi_epi64(v[2 * i], v[2 * i + 1]));
    __m512i h[2];
    for (int i = 0; i < 2; i++)
        h[i] = _mm512_add_epi64(_mm512_shuffle_i64x2(p[2 * i], p[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_i64x2(p[2 * i], p[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_epi64(_mm512_shuffle_i64x2(h[0], h[1], _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i64x2(h[0], h[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

__attribute__((target(AVX512_POPCNT_TARGET), always_inline)) static inline void hamming_rows_avx512(
    const uint64_t *q, int64_t nq, const uint64_t *rows, int64_t nrows, int64_t words, float *out) {
    int64_t r = 0;
    for (; r + 8 <= nrows; r += 8) {
        const uint64_t *x = rows + r * words;
        for (int64_t j = 0; j < nq; j++) {
            __m512i counts[8];
            for (int i = 0; i < 8; i++) counts[i] = popcount_row(q + j * words, x + i * words, words);
            __m256 scores = _mm512_cvtepi64_ps(_mm512_sub_epi64(_mm512_setzero_si512(), sum_lanes8(counts)));
            _mm256_storeu_ps(out + j * nrows + r, scores);
        }
    }
    for (; r < nrows; r++)
        for (int64_t j = 0; j < nq; j++) {
            __m512i counts = popcount_row(q + j * words, rows + r * words, words);
            out[j * nrows + r] = -(float)_mm512_reduce_add_epi64(counts);
        }
}

/* Codes of 256, 512 and 1024 bits get kernels compiled for their width: the masked loads of
 * the general loop cost more than the popcounts (2.4 vs 1.1 ns per 512-bit code). Eight
 * consecutive rows a pass: no index (kernel_t.indexes is 0; a filter's rows are gathered). */
__attribute__((target(AVX512_POPCNT_TARGET))) static void hamming_avx512(const void *qv, int64_t nq,
                                                                          const void *rv, const int64_t *index,
                                                                          int64_t nrows, int64_t words, float *out) {
    (void)index;
    switch (words) {
    case 4: hamming_rows_avx512(qv, nq, rv, nrows, 4, out); break;
    case 8: hamming_rows_avx512(qv, nq, rv, nrows, 8, out); break;
    case 16: hamming_rows_avx512(qv, nq, rv, nrows, 16, out); break;
    default: hamming_rows_avx512(qv, nq, rv, nrows, words, out);
    }
}
#endif

enum { KIND_F32, KIND_I8, KIND_HAMMING, N_KINDS };
static const int64_t CODE_BYTES[N_KINDS] = {4, 1, 8};  /* bytes per element of the codes */
static const int64_t QUERY_BYTES[N_KINDS] = {4, 4, 8}; /* bytes per element of the queries */

enum { ISA_GENERIC, ISA_AVX2, ISA_AVX512 };
static int isa_cap = ISA_AVX512; /* set_isa: the widest kernels allowed */

/* What the CPU running us has (the kernels are compiled for every level regardless). */
#ifdef POLYMODAL_X86
#define CPU_HAS(feature) __builtin_cpu_supports(feature)
#else
#define CPU_HAS(feature) 0
#endif

static int cpu_has_avx2_fma(void) { return CPU_HAS("avx2") && CPU_HAS("fma"); }
static int cpu_has_popcnt(void) { return CPU_HAS("popcnt"); }
static int cpu_has_avx512(void) {
    return CPU_HAS("avx512f") && CPU_HAS("avx512dq") && CPU_HAS("avx512bw") && CPU_HAS("avx512vl") && cpu_has_avx2_fma();
}
static int cpu_has_avx512_popcnt(void) { return cpu_has_avx512() && CPU_HAS("avx512vpopcntdq"); }
static int cpu_has_avx512_vnni(void) { return cpu_has_avx512() && CPU_HAS("avx512vnni"); }

/* A score kernel and the layout of the queries it reads: as given (prepare NULL, `query_bytes`
 * per element), or rewritten once per scan by `prepare` into `prepared_bytes(dim)` each. */
typedef void (*prepare_fn)(const float *query, int64_t dim, char *out);
typedef struct {
    score_fn score;
    prepare_fn prepare;
    int64_t (*prepared_bytes)(int64_t dim);
    int indexes; /* reads a filter's rows in place through an index; else they are gathered */
} kernel_t;

/* `finite`: the queries hold no infinity (the VNNI split needs a finite scale; the float
 * kernels give an infinite query infinite scores, and so must every level). */
static kernel_t pick_kernel(int kind, int64_t dim, int finite) {
    kernel_t plain = {NULL, NULL, NULL, 1};
#ifdef POLYMODAL_X86
    if (isa_cap >= ISA_AVX512) {
        if (kind == KIND_I8 && cpu_has_avx512_vnni() && dim <= VNNI_MAX_DIM && finite)
            return (kernel_t){i8_vnni, vnni_prepare, vnni_query_bytes, 1};
        if (kind == KIND_F32 && cpu_has_avx512()) plain.score = f32_avx512;
        if (kind == KIND_I8 && cpu_has_avx512()) plain.score = i8_avx512;
        if (kind == KIND_HAMMING && cpu_has_avx512_popcnt()) plain.score = hamming_avx512, plain.indexes = 0;
    }
    if (!plain.score && isa_cap >= ISA_AVX2) {
        if (kind == KIND_F32 && cpu_has_avx2_fma()) plain.score = f32_avx2;
        if (kind == KIND_I8 && cpu_has_avx2_fma()) plain.score = i8_avx2;
        if (kind == KIND_HAMMING && cpu_has_popcnt()) plain.score = hamming_popcnt;
    }
#else
    (void)dim;
    (void)finite;
#endif
    if (!plain.score) plain.score = kind == KIND_F32 ? f32_generic : kind == KIND_I8 ? i8_generic : hamming_generic;
    return plain;
}

/* ---------------------------------------------------------------- worker threads */

/* Helper threads that live for the process and sleep between scans. Starting threads per
 * scan cost 60-130 us before the first code was read and, waiting in pthread_join, ~90 us
 * after the last: 15% of a 1.3 ms scan of 1M sign-bit codes. A helper is woken in a few
 * microseconds while the caller already scans, and the caller spins the last few
 * microseconds until the helpers are done. The helpers never spin while idle, so they take
 * no core from torch's threads or anyone else's. A scan that finds the pool in use (a
 * second Python thread searching at the same time) starts threads of its own. */
typedef void *(*job_fn)(void *);

static struct {
    pthread_mutex_t busy; /* held by the one call using the helpers */
    pthread_mutex_t lock; /* guards the fields below */
    pthread_cond_t wake;
    int helpers;          /* started so far */
    uint64_t generation;  /* one more for every task */
    job_fn fn;
    char *jobs;
    size_t job_size;
    int njobs;            /* job 0 is the caller's; helper h runs job h + 1 */
    _Atomic int pending;  /* helpers' jobs of this task not yet done */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static uint64_t helper_start_generation[MAX_THREADS];

static void *helper_main(void *arg) {
    int index = (int)(intptr_t)arg;
    uint64_t seen = helper_start_generation[index];
    for (;;) {
        pthread_mutex_lock(&pool.lock);
        while (pool.generation == seen) pthread_cond_wait(&pool.wake, &pool.lock);
        seen = pool.generation;
        job_fn fn = pool.fn;
        char *jobs = pool.jobs;
        size_t size = pool.job_size;
        int mine = index + 1 < pool.njobs;
        pthread_mutex_unlock(&pool.lock);
        if (mine) {
            fn(jobs + (size_t)(index + 1) * size);
            atomic_fetch_sub(&pool.pending, 1);
        }
    }
    return NULL;
}

/* A forked child has none of the parent's threads: it starts its own when it scans. */
static void pool_after_fork(void) {
    pthread_mutex_init(&pool.busy, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pool.helpers = 0;
}

static inline void cpu_relax(void) {
#ifdef POLYMODAL_X86
    _mm_pause();
#endif
}

/* Run jobs[0..njobs) (each `size` bytes), each exactly once, on the caller and helpers. */
static void run_parallel(job_fn fn, void *jobs, size_t size, int njobs) {
    char *base = jobs;
    if (njobs > 1 && pthread_mutex_trylock(&pool.busy) == 0) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, THREAD_STACK_BYTES);
        while (pool.helpers < njobs - 1) { /* no task is out: the generation is steady */
            pthread_t handle;
            helper_start_generation[pool.helpers] = pool.generation;
            if (pthread_create(&handle, &attr, helper_main, (void *)(intptr_t)pool.helpers) != 0) break;
            pool.helpers++;
        }
        pthread_attr_destroy(&attr);
        int shared = pool.helpers + 1 < njobs ? pool.helpers + 1 : njobs;
        pthread_mutex_lock(&pool.lock);
        pool.fn = fn;
        pool.jobs = base;
        pool.job_size = size;
        pool.njobs = shared;
        atomic_store(&pool.pending, shared - 1);
        pool.generation++;
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
        fn(base);
        for (int t = shared; t < njobs; t++) fn(base + (size_t)t * size); /* no helper could be started */
        for (long spins = 0; atomic_load(&pool.pending) > 0; spins++) {
            if (spins < (1 << 16))
                cpu_relax();
            else
                nanosleep(&(struct timespec){0, 20000}, NULL); /* a helper is still busy, or off its core */
        }
        pthread_mutex_unlock(&pool.busy);
        return;
    }
    pthread_t handles[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK_BYTES);
    for (int t = 1; t < njobs; t++) started[t] = pthread_create(&handles[t], &attr, fn, base + (size_t)t * size) == 0;
    pthread_attr_destroy(&attr);
    fn(base);
    for (int t = 1; t < njobs; t++) {
        if (started[t])
            pthread_join(handles[t], NULL);
        else
            fn(base + (size_t)t * size); /* no thread could be started: run its job here */
    }
}

/* ---------------------------------------------------------------- the fused scan */

typedef struct {
    score_fn score;
    const char *queries;
    int64_t nq, dim, k, query_stride, row_stride; /* strides in bytes */
    const char *codes;
    const int64_t *rows; /* NULL: every row in order; else scan codes[rows[i]] (a filter) */
    const int64_t *ids;  /* NULL: the row number is the id */
    char *gather;        /* rows given to a kernel that cannot index: this thread's buffer of one block */
    int64_t n, chunk_rows, block;
    _Atomic int64_t *next_chunk; /* shared by the threads of one scan */
    float *heap_s;               /* nq x k, this thread's own */
    int64_t *heap_i;
} scan_job;

/* Rows begin..end against queries g..g+QUERIES_PER_GROUP, block by block, into this
 * thread's heaps. */
static void scan_rows(const scan_job *job, int64_t g, int64_t begin, int64_t end, int64_t block, float *scores) {
    int64_t group = job->nq - g < QUERIES_PER_GROUP ? job->nq - g : QUERIES_PER_GROUP;
    for (int64_t start = begin; start < end; start += block) {
        int64_t rows = end - start < block ? end - start : block;
        const char *codes = job->codes + start * job->row_stride;
        const int64_t *index = NULL;
        if (job->rows && !job->gather) { /* a filter: its rows read in place */
            codes = job->codes;
            index = job->rows + start;
        } else if (job->rows) { /* ... or gathered into a buffer that stays in cache */
            for (int64_t r = 0; r < rows; r++)
                memcpy(job->gather + r * job->row_stride, job->codes + job->rows[start + r] * job->row_stride,
                       (size_t)job->row_stride);
            codes = job->gather;
        }
        job->score(job->queries + g * job->query_stride, group, codes, index, rows, job->dim, scores);
        for (int64_t j = 0; j < group; j++) {
            float *hs = job->heap_s + (g + j) * job->k;
            int64_t *hi = job->heap_i + (g + j) * job->k;
            const float *row_scores = scores + j * rows;
            for (int64_t r0 = 0; r0 < rows; r0 += CHECK_ROWS) {
                /* Most rows fall below the k-th score so far: CHECK_ROWS of them are ruled out
                 * by one branch on a compare the compiler vectorises (a branch per row cost
                 * more than the sign-bit kernel itself). */
                int64_t r1 = rows - r0 < CHECK_ROWS ? rows : r0 + CHECK_ROWS;
                float worst = hs[0];
                int any = 0;
                for (int64_t r = r0; r < r1; r++) any |= row_scores[r] >= worst;
                if (!any) continue;
                for (int64_t r = r0; r < r1; r++) {
                    if (!(row_scores[r] >= hs[0])) continue;
                    int64_t id = job->ids ? job->ids[start + r] : job->rows ? job->rows[start + r] : start + r;
                    heap_push(hs, hi, job->k, row_scores[r], id);
                }
            }
        }
    }
}

/* Threads take chunks of rows from a shared counter rather than a fixed share each: a thread
 * that starts late (a core waking from idle, a busy neighbour) then costs its lateness
 * once, not its whole share after the others are done. Results do not depend on which
 * thread scores which rows: every heap orders ties by id. */
static void *run_scan(void *arg) {
    scan_job *job = arg;
    float scores[MAX_BLOCK_ROWS * QUERIES_PER_GROUP];
    int64_t block = job->block;
    for (;;) {
        int64_t begin = atomic_fetch_add(job->next_chunk, 1) * job->chunk_rows;
        if (begin >= job->n) break;
        int64_t end = job->n - begin < job->chunk_rows ? job->n : begin + job->chunk_rows;
        for (int64_t g = 0; g < job->nq; g += QUERIES_PER_GROUP) scan_rows(job, g, begin, end, block, scores);
    }
    return NULL;
}

/* The array arguments of a call: each C-contiguous, at least `needed` bytes, writable where
 * asked; None only where optional (the view stays empty, buf NULL). */
typedef struct {
    PyObject *obj;
    Py_ssize_t needed; /* -1: the sizes overflow */
    int writable;
    int optional; /* None is accepted: buf stays NULL */
    const char *name;
    Py_buffer view;
} array_arg;

/* a * b * c bytes, or -1 if that overflows */
static Py_ssize_t bytes_of(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c) {
    Py_ssize_t ab, abc;
    if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc)) return -1;
    return abc;
}

static void release_arrays(array_arg *arrays, int n) {
    for (int i = 0; i < n; i++)
        if (arrays[i].view.obj) PyBuffer_Release(&arrays[i].view);
}

/* 0, or -1 with an exception set and nothing held. */
static int get_arrays(array_arg *arrays, int n) {
    for (int i = 0; i < n; i++) {
        array_arg *a = &arrays[i];
        if (a->needed < 0) {
            PyErr_Format(PyExc_ValueError, "%s: its size overflows", a->name);
            release_arrays(arrays, i);
            return -1;
        }
        if (a->obj == Py_None && a->optional) continue;
        if (PyObject_GetBuffer(a->obj, &a->view, (a->writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0) {
            release_arrays(arrays, i);
            return -1;
        }
        if (a->view.len < a->needed) {
            PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, %zd needed", a->name, a->view.len, a->needed);
            release_arrays(arrays, i + 1);
            return -1;
        }
    }
    return 0;
}

static int clamp_threads(int threads, int64_t by_size) {
    int n = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    return by_size < n ? (by_size < 1 ? 1 : (int)by_size) : n;
}

/* scan(kind, queries, codes, rows_or_None, ids_or_None, nq, n, n_codes, dim, k, threads, out_scores,
 * out_ids): n rows scanned, codes[0..n) or, with rows, codes[rows[0..n)] of the n_codes there are
 * (ids then default to the rows). */
static PyObject *py_scan(PyObject *self, PyObject *args) {
    int kind, threads;
    PyObject *q_obj, *c_obj, *rows_obj, *ids_obj, *os_obj, *oi_obj;
    Py_ssize_t nq, n, n_codes, dim, k;
    if (!PyArg_ParseTuple(args, "iOOOOnnnnniOO", &kind, &q_obj, &c_obj, &rows_obj, &ids_obj, &nq, &n, &n_codes, &dim,
                          &k, &threads, &os_obj, &oi_obj))
        return NULL;
    if (kind < 0 || kind >= N_KINDS || nq < 0 || n < 0 || n_codes < 0 || dim <= 0 || k <= 0 ||
        (rows_obj == Py_None && n > n_codes) ||
        bytes_of(nq, k, MAX_THREADS * 8) < 0) { /* every thread's heaps must be addressable */
        PyErr_SetString(PyExc_ValueError, "scan: bad kind or sizes");
        return NULL;
    }
    array_arg arrays[] = {{q_obj, bytes_of(nq, dim, QUERY_BYTES[kind]), 0, 0, "queries"},
                          {c_obj, bytes_of(n_codes, dim, CODE_BYTES[kind]), 0, 0, "codes"},
                          {rows_obj, bytes_of(n, 8, 1), 0, 1, "rows"},
                          {ids_obj, bytes_of(n, 8, 1), 0, 1, "ids"},
                          {os_obj, bytes_of(nq, k, 4), 1, 0, "out_scores"},
                          {oi_obj, bytes_of(nq, k, 8), 1, 0, "out_ids"}};
    if (get_arrays(arrays, 6) < 0) return NULL;
    const char *queries = arrays[0].view.buf, *codes = arrays[1].view.buf;
    const int64_t *rows = arrays[2].view.buf, *ids = arrays[3].view.buf;
    float *out_s = arrays[4].view.buf;
    int64_t *out_i = arrays[5].view.buf;
    for (int64_t i = 0; rows && i < n; i++) {
        if (rows[i] < 0 || rows[i] >= n_codes) {
            PyErr_Format(PyExc_ValueError, "rows[%lld] = %lld is not a row of the %lld codes", (long long)i,
                         (long long)rows[i], (long long)n_codes);
            release_arrays(arrays, 6);
            return NULL;
        }
    }

    int64_t row_bytes = dim * CODE_BYTES[kind];
    int64_t block = BLOCK_BYTES / row_bytes;
    block = block < MIN_BLOCK_ROWS ? MIN_BLOCK_ROWS : block > MAX_BLOCK_ROWS ? MAX_BLOCK_ROWS : block;
    int nthreads = clamp_threads(threads, row_bytes * n / MIN_BYTES_PER_THREAD);
    int finite = 1;
    if (kind == KIND_I8)
        for (int64_t i = 0; i < nq * dim && finite; i++) finite = !isinf(((const float *)queries)[i]);
    kernel_t kernel = pick_kernel(kind, dim, finite);
    int64_t query_stride = kernel.prepare ? kernel.prepared_bytes(dim) : dim * QUERY_BYTES[kind];
    /* the queries in the kernel's layout, where it has one */
    char *prepared = kernel.prepare ? aligned_alloc(64, (size_t)(nq * query_stride) + 64) : NULL;
    float *heap_s = malloc((size_t)(nthreads * nq * k) * sizeof(float) + 1);
    int64_t *heap_i = malloc((size_t)(nthreads * nq * k) * sizeof(int64_t) + 1);
    /* with rows, for a kernel that cannot index: one block of gathered rows per thread (32 KB,
     * or 16 rows where those are larger) */
    int gathers = rows && !kernel.indexes;
    char *gather = gathers ? malloc((size_t)(nthreads * block * row_bytes) + 1) : NULL;
    int failed = !heap_s || !heap_i || (kernel.prepare && !prepared) || (gathers && !gather);
    if (!failed) {
        scan_job jobs[MAX_THREADS];
        _Atomic int64_t next_chunk = 0;
        int64_t chunk_rows = CHUNK_BYTES / row_bytes < 1 ? 1 : CHUNK_BYTES / row_bytes;
        heap_init(heap_s, heap_i, nthreads * nq * k);
        if (prepared) {
            for (int64_t j = 0; j < nq; j++)
                kernel.prepare((const float *)queries + j * dim, dim, prepared + j * query_stride);
            queries = prepared;
        }
        for (int t = 0; t < nthreads; t++)
            jobs[t] = (scan_job){.score = kernel.score, .queries = queries, .nq = nq, .dim = dim, .k = k,
                                 .query_stride = query_stride, .row_stride = row_bytes, .codes = codes, .rows = rows,
                                 .ids = ids, .gather = gather ? gather + t * block * row_bytes : NULL, .n = n,
                                 .chunk_rows = chunk_rows, .block = block, .next_chunk = &next_chunk,
                                 .heap_s = heap_s + t * nq * k, .heap_i = heap_i + t * nq * k};
        Py_BEGIN_ALLOW_THREADS;
        run_parallel(run_scan, jobs, sizeof(scan_job), nthreads);
        /* merge every thread's heaps into the first thread's, then sort */
        for (int t = 1; t < nthreads; t++)
            for (int64_t j = 0; j < nq; j++)
                for (int64_t i = 0; i < k; i++)
                    heap_push(heap_s + j * k, heap_i + j * k, k, jobs[t].heap_s[j * k + i], jobs[t].heap_i[j * k + i]);
        for (int64_t j = 0; j < nq && !failed; j++)
            failed = heap_sort_into(heap_s + j * k, heap_i + j * k, k, out_s + j * k, out_i + j * k) < 0;
        Py_END_ALLOW_THREADS;
    }
    free(prepared);
    free(gather);
    free(heap_s);
    free(heap_i);
    release_arrays(arrays, 6);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- streaming top-k */

typedef struct {
    float *heap_s;
    int64_t *heap_i;
    const float *scores;
    const int64_t *ids;
    int64_t k, b, begin, end; /* queries begin..end of this thread */
} push_job;

static void *run_push(void *arg) {
    push_job *job = arg;
    for (int64_t j = job->begin; j < job->end; j++) {
        float *hs = job->heap_s + j * job->k;
        int64_t *hi = job->heap_i + j * job->k;
        const float *row = job->scores + j * job->b;
        for (int64_t r = 0; r < job->b; r++) heap_push(hs, hi, job->k, row[r], job->ids[r]);
    }
    return NULL;
}

/* push(heap_scores, heap_ids, scores, ids, nq, k, b, threads): fold a block of scores (nq, b)
 * with ids (b,) into heaps (nq, k) that start as (-inf, INT64_MAX) and stay in heap order. */
static PyObject *py_push(PyObject *self, PyObject *args) {
    PyObject *hs_obj, *hi_obj, *s_obj, *i_obj;
    Py_ssize_t nq, k, b;
    int threads;
    if (!PyArg_ParseTuple(args, "OOOOnnni", &hs_obj, &hi_obj, &s_obj, &i_obj, &nq, &k, &b, &threads)) return NULL;
    if (nq < 0 || k <= 0 || b < 0) {
        PyErr_SetString(PyExc_ValueError, "push: bad sizes");
        return NULL;
    }
    array_arg arrays[] = {{hs_obj, bytes_of(nq, k, 4), 1, 0, "heap_scores"},
                          {hi_obj, bytes_of(nq, k, 8), 1, 0, "heap_ids"},
                          {s_obj, bytes_of(nq, b, 4), 0, 0, "scores"},
                          {i_obj, bytes_of(b, 8, 1), 0, 0, "ids"}};
    if (get_arrays(arrays, 4) < 0) return NULL;
    int nthreads = clamp_threads(threads, nq * b * 4 / MIN_BYTES_PER_THREAD);
    if (nthreads > nq) nthreads = nq < 1 ? 1 : (int)nq; /* each thread owns whole queries' heaps */
    push_job jobs[MAX_THREADS];
    for (int t = 0; t < nthreads; t++)
        jobs[t] = (push_job){.heap_s = arrays[0].view.buf, .heap_i = arrays[1].view.buf,
                             .scores = arrays[2].view.buf, .ids = arrays[3].view.buf, .k = k, .b = b,
                             .begin = nq * t / nthreads, .end = nq * (t + 1) / nthreads};
    Py_BEGIN_ALLOW_THREADS;
    run_parallel(run_push, jobs, sizeof(push_job), nthreads);
    Py_END_ALLOW_THREADS;
    release_arrays(arrays, 4);
    Py_RETURN_NONE;
}

/* finish(heap_scores, heap_ids, nq, k, out_scores, out_ids): sort each heap. */
static PyObject *py_finish(PyObject *self, PyObject *args) {
    PyObject *hs_obj, *hi_obj, *os_obj, *oi_obj;
    Py_ssize_t nq, k;
    if (!PyArg_ParseTuple(args, "OOnnOO", &hs_obj, &hi_obj, &nq, &k, &os_obj, &oi_obj)) return NULL;
    if (nq < 0 || k <= 0) {
        PyErr_SetString(PyExc_ValueError, "finish: bad sizes");
        return NULL;
    }
    array_arg arrays[] = {{hs_obj, bytes_of(nq, k, 4), 1, 0, "heap_scores"},
                          {hi_obj, bytes_of(nq, k, 8), 1, 0, "heap_ids"},
                          {os_obj, bytes_of(nq, k, 4), 1, 0, "out_scores"},
                          {oi_obj, bytes_of(nq, k, 8), 1, 0, "out_ids"}};
    if (get_arrays(arrays, 4) < 0) return NULL;
    int failed = 0;
    for (int64_t j = 0; j < nq && !failed; j++)
        failed = heap_sort_into((float *)arrays[0].view.buf + j * k, (int64_t *)arrays[1].view.buf + j * k, k,
                                (float *)arrays[2].view.buf + j * k, (int64_t *)arrays[3].view.buf + j * k) < 0;
    release_arrays(arrays, 4);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- kernel choice */

/* The widest kernels in use, as "avx512", "avx2" or "generic" (a CPU with AVX-512 but no
 * vector popcount runs sign-bit codes on the AVX2 level's popcnt kernel). */
static PyObject *py_isa(PyObject *self, PyObject *noargs) {
    if (isa_cap >= ISA_AVX512 && cpu_has_avx512()) return PyUnicode_FromString("avx512");
    if (isa_cap >= ISA_AVX2 && cpu_has_avx2_fma()) return PyUnicode_FromString("avx2");
    return PyUnicode_FromString("generic");
}

static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    if (strcmp(name, "generic") == 0)
        isa_cap = ISA_GENERIC;
    else if (strcmp(name, "avx2") == 0)
        isa_cap = ISA_AVX2;
    else if (strcmp(name, "auto") == 0 || strcmp(name, "avx512") == 0)
        isa_cap = ISA_AVX512;
    else {
        PyErr_Format(PyExc_ValueError, "set_isa: 'auto', 'avx512', 'avx2' or 'generic', not '%s'", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", py_scan, METH_VARARGS, "Fused exact top-k scan over codes (see polymodal.index.native)."},
    {"push", py_push, METH_VARARGS, "Fold a block of scores into bounded heaps."},
    {"finish", py_finish, METH_VARARGS, "Sort bounded heaps into results."},
    {"isa", py_isa, METH_NOARGS, "The kernels in use: 'avx512', 'avx2' or 'generic'."},
    {"set_isa", py_set_isa, METH_VARARGS, "Cap the kernels: 'auto', 'avx512', 'avx2' or 'generic'."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", "Fused exact top-k scans (C).", -1, methods};

PyMODINIT_FUNC PyInit__scan(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    pthread_atfork(NULL, NULL, pool_after_fork);
    PyModule_AddIntConstant(m, "KIND_F32", KIND_F32);
    PyModule_AddIntConstant(m, "KIND_I8", KIND_I8);
    PyModule_AddIntConstant(m, "KIND_HAMMING", KIND_HAMMING);
    return m;
}
