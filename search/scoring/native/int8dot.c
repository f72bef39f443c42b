/* Approximate int8 scores for search/kernels.py's Int8Kernel, one pass over the matrix.
 *
 *   out[i*nq + j] = scales[i] * (w[2j] * dot(row_i, col_2j) + w[2j+1] * dot(row_i, col_2j+1))
 *
 * rows: n x dim int8 (the index's embeddings.npy, memory-mapped), cols: 2*nq x dim int8 (each
 * query quantised, then its residual quantised; see kernels.py), w: their scales.  The integer
 * dot products are exact on every path, so every path returns the same numbers; the Python side
 * widens them by a proven error bound and rescores candidates in float.
 *
 * Why C: one query against 1M x 384 int8 must run at memory speed (384 MB at ~15 GB/s = 26 ms).
 * numpy has no int8 product, onnxruntime's MatMulInteger packs the matrix first (~120 ms for one
 * query) and SIMD libraries that score one pair per call spend ~45 ms on call overhead.  Here rows
 * are read once, eight at a time, with both query columns applied to each load, and the next rows
 * are prefetched.  Paths: AVX-512 VNNI, AVX2, plain C; chosen at run time from the CPU's flags.
 *
 * Also here, for search/prefilter.py: the same products over int4 rows (two values per byte, half
 * the bytes to read) with each row's upper bound, and the int8 products for a list of row numbers
 * (the rows that bound lets through), read in place.
 * No libc calls, so the shared object runs on any x86-64 Linux (Amazon Linux 2023 included).
 */
#include <stdint.h>
#include <immintrin.h>

#define ROWS 8          /* rows per step: 8 rows x 2 columns = 16 accumulators */
#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 8 /* how far ahead to prefetch, measured: 8 rows (3 KB at dim 384) */
#endif

#ifndef INT4_PREFETCH_ROWS
#define INT4_PREFETCH_ROWS 32 /* int4 rows: 6 KB ahead (measured 16 / 32 / 64 rows: 15.7 / 15.3 / 15.6 ms for 1M) */
#endif
#ifndef UPPER_BLOCK_ROWS
#define UPPER_BLOCK_ROWS 8192 /* int4dot_upper: rows per block (32 KB of scores) */
#endif
#ifndef AT_PREFETCH_ROWS
#define AT_PREFETCH_ROWS 16 /* listed rows, scattered: measured 8 / 16 / 32 rows ahead: 5.4 / 3.6 / 3.8 ms for 58k of 1M */
#endif

enum { PATH_GENERIC = 1, PATH_AVX2 = 2, PATH_AVX512_VNNI = 3 };

/* factor * sum(column) for each of ``ncols`` query columns: what storing rows shifted to unsigned
 * (int8 + 128, int4 + 8) adds to each dot product, subtracted afterwards. */
static void column_bias(const int8_t *cols, int64_t ncols, int64_t dim, int32_t factor, int32_t *bias) {
    for (int64_t c = 0; c < ncols; c++) {
        int32_t sum = 0;
        for (int64_t d = 0; d < dim; d++) sum += cols[c * dim + d];
        bias[c] = factor * sum;
    }
}

/* Eight rows' totals for query j out to ``out`` (row-major, nq per row). */
static inline __attribute__((always_inline)) void store8(float *out, int64_t i, int64_t j, int64_t nq, const float *totals) {
    for (int t = 0; t < 8; t++) out[(i + t) * nq + j] = totals[t];
}

static void rows_generic(const int8_t *rows, int64_t first, int64_t n, int64_t dim, const float *scales,
                         const int8_t *cols, const float *w, int64_t nq, float *out) {
    for (int64_t i = first; i < n; i++) {
        const int8_t *r = rows + i * dim;
        for (int64_t j = 0; j < nq; j++) {
            int32_t d0 = 0, d1 = 0;
            const int8_t *c0 = cols + 2 * j * dim, *c1 = c0 + dim;
            for (int64_t d = 0; d < dim; d++) {
                d0 += (int32_t)r[d] * c0[d];
                d1 += (int32_t)r[d] * c1[d];
            }
            out[i * nq + j] = scales[i] * (w[2 * j] * (float)d0 + w[2 * j + 1] * (float)d1);
        }
    }
}

/* ---- AVX-512 VNNI: vpdpbusd multiplies u8 x s8, so rows are flipped to u8 (v ^ 0x80 = v + 128)
 * and 128 * sum(column) is subtracted afterwards. */

#define T512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vnni")))

/* lane t of the result = sum of the 16 lanes of a[t] */
T512 static inline __m512i sum16(const __m512i *a) {
    __m512i b[8], c[4], d[2];
    for (int i = 0; i < 8; i++)
        b[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        c[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(b[2 * i], b[2 * i + 1]), _mm512_unpackhi_epi64(b[2 * i], b[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        d[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(c[2 * i], c[2 * i + 1], 0x88), _mm512_shuffle_i32x4(c[2 * i], c[2 * i + 1], 0xDD));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(d[0], d[1], 0x88), _mm512_shuffle_i32x4(d[0], d[1], 0xDD));
}

T512 static int64_t rows_avx512_vnni(const int8_t *rows, int64_t n, int64_t dim, const float *scales,
                                     const int8_t *cols, const float *w, int64_t nq, float *out) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    int32_t bias[2 * 16]; /* the flip to u8 adds 128 * sum(column) to each dot product */
    column_bias(cols, 2 * nq, dim, 128, bias);
    int64_t i = 0;
    for (; i + ROWS <= n; i += ROWS) {
        const int8_t *r = rows + i * dim;
        if (i + ROWS + PREFETCH_ROWS <= n)
            for (int64_t p = 0; p < ROWS * dim; p += 64) _mm_prefetch((const char *)(r + PREFETCH_ROWS * dim + p), _MM_HINT_T0);
        __m256 sc = _mm256_loadu_ps(scales + i);
        for (int64_t j = 0; j < nq; j++) {
            const int8_t *c0 = cols + 2 * j * dim, *c1 = c0 + dim;
            __m512i acc[2 * ROWS];
            for (int t = 0; t < 2 * ROWS; t++) acc[t] = _mm512_setzero_si512();
            for (int64_t k = 0; k < dim; k += 64) {
                __m512i q0 = _mm512_loadu_si512((const void *)(c0 + k)), q1 = _mm512_loadu_si512((const void *)(c1 + k));
                for (int t = 0; t < ROWS; t++) {
                    __m512i v = _mm512_xor_si512(_mm512_loadu_si512((const void *)(r + t * dim + k)), flip);
                    acc[t] = _mm512_dpbusd_epi32(acc[t], v, q0);
                    acc[ROWS + t] = _mm512_dpbusd_epi32(acc[ROWS + t], v, q1);
                }
            }
            /* lanes 0-7: column 0 of rows i..i+7, lanes 8-15: column 1 */
            __m512i offset = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(bias[2 * j])),
                                                _mm256_set1_epi32(bias[2 * j + 1]), 1);
            __m512 wv = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(w[2 * j])), _mm256_set1_ps(w[2 * j + 1]), 1);
            __m512 s = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sum16(acc), offset)), wv);
            __m256 total = _mm256_mul_ps(_mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1)), sc);
            float tmp[ROWS];
            _mm256_storeu_ps(nq == 1 ? out + i : tmp, total);
            if (nq > 1) store8(out, i, j, nq, tmp);
        }
    }
    return i;
}

/* ---- AVX2: vpmaddubsw multiplies u8 x s8 into saturating int16 pairs; |row| as u8 times the
 * column with the row's sign keeps every pair within 2 * 127 * 127 < 32767 (stored values and
 * query columns are clipped to [-127, 127]). */

#define T256 __attribute__((target("avx2,fma")))

/* lane t of the result = sum of the 8 lanes of a[t] */
T256 static inline __m256i sum8(const __m256i *a) {
    __m256i t0 = _mm256_hadd_epi32(a[0], a[1]), t1 = _mm256_hadd_epi32(a[2], a[3]);
    __m256i t2 = _mm256_hadd_epi32(a[4], a[5]), t3 = _mm256_hadd_epi32(a[6], a[7]);
    __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

/* Its block loop repeats the AVX-512 one's prefetch line on purpose: moving the prefetch and store
 * into a plain inline helper made gcc's AVX-512 loop 20% slower (measured, 1M x 384); the store's
 * always_inline ``store8`` measured the same as the code written out. */
T256 static int64_t rows_avx2(const int8_t *rows, int64_t n, int64_t dim, const float *scales,
                              const int8_t *cols, const float *w, int64_t nq, float *out) {
    const __m256i ones = _mm256_set1_epi16(1);
    int64_t i = 0;
    for (; i + ROWS <= n; i += ROWS) {
        const int8_t *r = rows + i * dim;
        if (i + ROWS + PREFETCH_ROWS <= n)
            for (int64_t p = 0; p < ROWS * dim; p += 64) _mm_prefetch((const char *)(r + PREFETCH_ROWS * dim + p), _MM_HINT_T0);
        __m256 sc = _mm256_loadu_ps(scales + i);
        for (int64_t j = 0; j < nq; j++) {
            const int8_t *c0 = cols + 2 * j * dim, *c1 = c0 + dim;
            __m256i acc0[ROWS], acc1[ROWS];
            for (int t = 0; t < ROWS; t++) acc0[t] = acc1[t] = _mm256_setzero_si256();
            for (int64_t k = 0; k < dim; k += 32) {
                __m256i q0 = _mm256_loadu_si256((const __m256i *)(c0 + k)), q1 = _mm256_loadu_si256((const __m256i *)(c1 + k));
                for (int t = 0; t < ROWS; t++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(r + t * dim + k));
                    __m256i mag = _mm256_abs_epi8(v);
                    acc0[t] = _mm256_add_epi32(acc0[t], _mm256_madd_epi16(_mm256_maddubs_epi16(mag, _mm256_sign_epi8(q0, v)), ones));
                    acc1[t] = _mm256_add_epi32(acc1[t], _mm256_madd_epi16(_mm256_maddubs_epi16(mag, _mm256_sign_epi8(q1, v)), ones));
                }
            }
            __m256 d0 = _mm256_cvtepi32_ps(sum8(acc0)), d1 = _mm256_cvtepi32_ps(sum8(acc1));
            __m256 total = _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(d0, _mm256_set1_ps(w[2 * j])),
                                                       _mm256_mul_ps(d1, _mm256_set1_ps(w[2 * j + 1]))), sc);
            float tmp[ROWS];
            _mm256_storeu_ps(nq == 1 ? out + i : tmp, total);
            if (nq > 1) store8(out, i, j, nq, tmp);
        }
    }
    return i;
}

/* ---- int4 prefilter rows (search/prefilter.py): dim/2 bytes per row, byte j holding dimension j
 * in its low nibble and dimension j + dim/2 in its high nibble, each stored as value + 8 (1..15).
 *
 *   out[i*nq + j] = scales[i] * (w[2j] * dot(nibbles_i, col_2j) + w[2j+1] * dot(nibbles_i, col_2j+1))
 *
 * Half the bytes of the int8 rows for the same number of integer products: the unpacking (a mask
 * and a shift) is cheaper than the memory traffic it saves.  The nibbles are already unsigned, so
 * vpdpbusd / vpmaddubsw take them as they are and 8 * sum(column) is subtracted afterwards
 * (vpmaddubsw cannot saturate: 2 * 15 * 127 < 32767). */

static void int4_generic(const uint8_t *rows, int64_t first, int64_t n, int64_t dim, const float *scales,
                         const int8_t *cols, const float *w, int64_t nq, float *out) {
    int64_t half = dim / 2;
    for (int64_t i = first; i < n; i++) {
        const uint8_t *r = rows + i * half;
        for (int64_t j = 0; j < nq; j++) {
            int32_t d0 = 0, d1 = 0;
            const int8_t *c0 = cols + 2 * j * dim, *c1 = c0 + dim;
            for (int64_t d = 0; d < half; d++) {
                int32_t lo = (int32_t)(r[d] & 0x0F) - 8, hi = (int32_t)(r[d] >> 4) - 8;
                d0 += lo * c0[d] + hi * c0[half + d];
                d1 += lo * c1[d] + hi * c1[half + d];
            }
            out[i * nq + j] = scales[i] * (w[2 * j] * (float)d0 + w[2 * j + 1] * (float)d1);
        }
    }
}

T512 static int64_t int4_avx512_vnni(const uint8_t *rows, int64_t n, int64_t dim, const float *scales,
                                     const int8_t *cols, const float *w, int64_t nq, float *out) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    const int64_t half = dim / 2;
    int32_t bias[2 * 16]; /* storing value + 8 adds 8 * sum(column) to each dot product */
    column_bias(cols, 2 * nq, dim, 8, bias);
    int64_t i = 0;
    for (; i + ROWS <= n; i += ROWS) {
        const uint8_t *r = rows + i * half;
        if (i + ROWS + INT4_PREFETCH_ROWS <= n)
            for (int64_t p = 0; p < ROWS * half; p += 64) _mm_prefetch((const char *)(r + INT4_PREFETCH_ROWS * half + p), _MM_HINT_T0);
        __m256 sc = _mm256_loadu_ps(scales + i);
        for (int64_t j = 0; j < nq; j++) {
            const int8_t *c0 = cols + 2 * j * dim, *c1 = c0 + dim;
            __m512i acc[2 * ROWS];
            for (int t = 0; t < 2 * ROWS; t++) acc[t] = _mm512_setzero_si512();
            for (int64_t k = 0; k < half; k += 64) {
                __m512i q0l = _mm512_loadu_si512((const void *)(c0 + k)), q0h = _mm512_loadu_si512((const void *)(c0 + half + k));
                __m512i q1l = _mm512_loadu_si512((const void *)(c1 + k)), q1h = _mm512_loadu_si512((const void *)(c1 + half + k));
                for (int t = 0; t < ROWS; t++) {
                    __m512i v = _mm512_loadu_si512((const void *)(r + t * half + k));
                    __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                    acc[t] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[t], lo, q0l), hi, q0h);
                    acc[ROWS + t] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[ROWS + t], lo, q1l), hi, q1h);
                }
            }
            __m512i offset = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(bias[2 * j])),
                                                _mm256_set1_epi32(bias[2 * j + 1]), 1);
            __m512 wv = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(w[2 * j])), _mm256_set1_ps(w[2 * j + 1]), 1);
            __m512 s = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sum16(acc), offset)), wv);
            __m256 total = _mm256_mul_ps(_mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1)), sc);
            float tmp[ROWS];
            _mm256_storeu_ps(nq == 1 ? out + i : tmp, total);
            if (nq > 1) store8(out, i, j, nq, tmp);
        }
    }
    return i;
}

T256 static int64_t int4_avx2(const uint8_t *rows, int64_t n, int64_t dim, const float *scales,
                              const int8_t *cols, const float *w, int64_t nq, float *out) {
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F);
    const int64_t half = dim / 2;
    int32_t bias[2 * 16];
    column_bias(cols, 2 * nq, dim, 8, bias);
    int64_t i = 0;
    for (; i + ROWS <= n; i += ROWS) {
        const uint8_t *r = rows + i * half;
        if (i + ROWS + INT4_PREFETCH_ROWS <= n)
            for (int64_t p = 0; p < ROWS * half; p += 64) _mm_prefetch((const char *)(r + INT4_PREFETCH_ROWS * half + p), _MM_HINT_T0);
        __m256 sc = _mm256_loadu_ps(scales + i);
        for (int64_t j = 0; j < nq; j++) {
            const int8_t *c0 = cols + 2 * j * dim, *c1 = c0 + dim;
            __m256i acc0[ROWS], acc1[ROWS];
            for (int t = 0; t < ROWS; t++) acc0[t] = acc1[t] = _mm256_setzero_si256();
            for (int64_t k = 0; k < half; k += 32) {
                __m256i q0l = _mm256_loadu_si256((const __m256i *)(c0 + k)), q0h = _mm256_loadu_si256((const __m256i *)(c0 + half + k));
                __m256i q1l = _mm256_loadu_si256((const __m256i *)(c1 + k)), q1h = _mm256_loadu_si256((const __m256i *)(c1 + half + k));
                for (int t = 0; t < ROWS; t++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(r + t * half + k));
                    __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, q0l), _mm256_maddubs_epi16(hi, q0h));
                    __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, q1l), _mm256_maddubs_epi16(hi, q1h));
                    acc0[t] = _mm256_add_epi32(acc0[t], _mm256_madd_epi16(p0, ones));
                    acc1[t] = _mm256_add_epi32(acc1[t], _mm256_madd_epi16(p1, ones));
                }
            }
            __m256 d0 = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum8(acc0), _mm256_set1_epi32(bias[2 * j])));
            __m256 d1 = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum8(acc1), _mm256_set1_epi32(bias[2 * j + 1])));
            __m256 total = _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(d0, _mm256_set1_ps(w[2 * j])),
                                                       _mm256_mul_ps(d1, _mm256_set1_ps(w[2 * j + 1]))), sc);
            float tmp[ROWS];
            _mm256_storeu_ps(nq == 1 ? out + i : tmp, total);
            if (nq > 1) store8(out, i, j, nq, tmp);
        }
    }
    return i;
}

/* ---- the same integer products for listed rows only (the int4 prefilter's survivors), one query:
 * out[i] = scales[idx[i]] * (w[0] * dot(row_idx[i], col_0) + w[1] * dot(row_idx[i], col_1)).
 * Rows are read in place, eight at a time, the next eight prefetched: no gathered copy. */

static void at_generic(const int8_t *rows, const int64_t *idx, int64_t first, int64_t m, int64_t dim,
                       const float *scales, const int8_t *cols, const float *w, float *out) {
    for (int64_t i = first; i < m; i++) {
        const int8_t *r = rows + idx[i] * dim;
        int32_t d0 = 0, d1 = 0;
        for (int64_t d = 0; d < dim; d++) {
            d0 += (int32_t)r[d] * cols[d];
            d1 += (int32_t)r[d] * cols[dim + d];
        }
        out[i] = scales[idx[i]] * (w[0] * (float)d0 + w[1] * (float)d1);
    }
}

T512 static int64_t at_avx512_vnni(const int8_t *rows, const int64_t *idx, int64_t m, int64_t dim,
                                   const float *scales, const int8_t *cols, const float *w, float *out) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    int32_t bias[2];
    column_bias(cols, 2, dim, 128, bias);
    __m512i offset = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(bias[0])), _mm256_set1_epi32(bias[1]), 1);
    __m512 wv = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(w[0])), _mm256_set1_ps(w[1]), 1);
    int64_t i = 0;
    for (; i + ROWS <= m; i += ROWS) {
        const int8_t *r[ROWS];
        float sc[ROWS];
        for (int t = 0; t < ROWS; t++) { r[t] = rows + idx[i + t] * dim; sc[t] = scales[idx[i + t]]; }
        if (i + ROWS + AT_PREFETCH_ROWS <= m)
            for (int t = AT_PREFETCH_ROWS; t < AT_PREFETCH_ROWS + ROWS; t++)
                for (int64_t p = 0; p < dim; p += 64) _mm_prefetch((const char *)(rows + idx[i + t] * dim + p), _MM_HINT_T0);
        __m512i acc[2 * ROWS];
        for (int t = 0; t < 2 * ROWS; t++) acc[t] = _mm512_setzero_si512();
        for (int64_t k = 0; k < dim; k += 64) {
            __m512i q0 = _mm512_loadu_si512((const void *)(cols + k)), q1 = _mm512_loadu_si512((const void *)(cols + dim + k));
            for (int t = 0; t < ROWS; t++) {
                __m512i v = _mm512_xor_si512(_mm512_loadu_si512((const void *)(r[t] + k)), flip);
                acc[t] = _mm512_dpbusd_epi32(acc[t], v, q0);
                acc[ROWS + t] = _mm512_dpbusd_epi32(acc[ROWS + t], v, q1);
            }
        }
        __m512 s = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sum16(acc), offset)), wv);
        __m256 total = _mm256_mul_ps(_mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1)), _mm256_loadu_ps(sc));
        _mm256_storeu_ps(out + i, total);
    }
    return i;
}

T256 static int64_t at_avx2(const int8_t *rows, const int64_t *idx, int64_t m, int64_t dim,
                            const float *scales, const int8_t *cols, const float *w, float *out) {
    const __m256i ones = _mm256_set1_epi16(1);
    int64_t i = 0;
    for (; i + ROWS <= m; i += ROWS) {
        const int8_t *r[ROWS];
        float sc[ROWS];
        for (int t = 0; t < ROWS; t++) { r[t] = rows + idx[i + t] * dim; sc[t] = scales[idx[i + t]]; }
        if (i + ROWS + AT_PREFETCH_ROWS <= m)
            for (int t = AT_PREFETCH_ROWS; t < AT_PREFETCH_ROWS + ROWS; t++)
                for (int64_t p = 0; p < dim; p += 64) _mm_prefetch((const char *)(rows + idx[i + t] * dim + p), _MM_HINT_T0);
        __m256i acc0[ROWS], acc1[ROWS];
        for (int t = 0; t < ROWS; t++) acc0[t] = acc1[t] = _mm256_setzero_si256();
        for (int64_t k = 0; k < dim; k += 32) {
            __m256i q0 = _mm256_loadu_si256((const __m256i *)(cols + k)), q1 = _mm256_loadu_si256((const __m256i *)(cols + dim + k));
            for (int t = 0; t < ROWS; t++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(r[t] + k));
                __m256i mag = _mm256_abs_epi8(v);
                acc0[t] = _mm256_add_epi32(acc0[t], _mm256_madd_epi16(_mm256_maddubs_epi16(mag, _mm256_sign_epi8(q0, v)), ones));
                acc1[t] = _mm256_add_epi32(acc1[t], _mm256_madd_epi16(_mm256_maddubs_epi16(mag, _mm256_sign_epi8(q1, v)), ones));
            }
        }
        __m256 d0 = _mm256_cvtepi32_ps(sum8(acc0)), d1 = _mm256_cvtepi32_ps(sum8(acc1));
        __m256 total = _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(d0, _mm256_set1_ps(w[0])),
                                                   _mm256_mul_ps(d1, _mm256_set1_ps(w[1]))), _mm256_loadu_ps(sc));
        _mm256_storeu_ps(out + i, total);
    }
    return i;
}

/* The best path this CPU and dim allow, capped at ``limit`` (0: no cap).  Tests cap it to run
 * every path on one machine. */
int int8dot_path(int64_t dim, int limit) {
    int best = PATH_GENERIC;
    __builtin_cpu_init();
    if (dim % 32 == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = PATH_AVX2;
    if (dim % 64 == 0 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni")) best = PATH_AVX512_VNNI;
    return (limit > 0 && limit < best) ? limit : best;
}

/* Returns the path used, or -1 for bad arguments.  nq: 1..16 queries (2 columns each). */
int int8dot_scores(const int8_t *rows, int64_t n, int64_t dim, const float *scales,
                   const int8_t *cols, const float *w, int64_t nq, float *out, int limit) {
    if (n < 0 || dim <= 0 || nq < 1 || nq > 16) return -1;
    int path = int8dot_path(dim, limit);
    int64_t done = 0;
    if (path == PATH_AVX512_VNNI) done = rows_avx512_vnni(rows, n, dim, scales, cols, w, nq, out);
    else if (path == PATH_AVX2) done = rows_avx2(rows, n, dim, scales, cols, w, nq, out);
    rows_generic(rows, done, n, dim, scales, cols, w, nq, out);
    return path;
}

/* The best int4 path: the packed row is dim/2 bytes, so the SIMD paths need dim/2 to be a multiple
 * of their register width. */
int int4dot_path(int64_t dim, int limit) {
    int best = PATH_GENERIC;
    __builtin_cpu_init();
    if (dim % 64 == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = PATH_AVX2;
    if (dim % 128 == 0 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni")) best = PATH_AVX512_VNNI;
    return (limit > 0 && limit < best) ? limit : best;
}

/* int8dot_scores for int4 prefilter rows (dim: unpacked dimensions, even). */
int int4dot_scores(const uint8_t *rows, int64_t n, int64_t dim, const float *scales,
                   const int8_t *cols, const float *w, int64_t nq, float *out, int limit) {
    if (n < 0 || dim <= 0 || dim % 2 || nq < 1 || nq > 16) return -1;
    int path = int4dot_path(dim, limit);
    int64_t done = 0;
    if (path == PATH_AVX512_VNNI) done = int4_avx512_vnni(rows, n, dim, scales, cols, w, nq, out);
    else if (path == PATH_AVX2) done = int4_avx2(rows, n, dim, scales, cols, w, nq, out);
    int4_generic(rows, done, n, dim, scales, cols, w, nq, out);
    return path;
}

/* int8dot_scores for the rows listed in idx (m of them), one query (2 columns). */
int int8dot_scores_at(const int8_t *rows, const int64_t *idx, int64_t m, int64_t dim, const float *scales,
                      const int8_t *cols, const float *w, float *out, int limit) {
    if (m < 0 || dim <= 0) return -1;
    int path = int8dot_path(dim, limit);
    int64_t done = 0;
    if (path == PATH_AVX512_VNNI) done = at_avx512_vnni(rows, idx, m, dim, scales, cols, w, out);
    else if (path == PATH_AVX2) done = at_avx2(rows, idx, m, dim, scales, cols, w, out);
    at_generic(rows, idx, done, m, dim, scales, cols, w, out);
    return path;
}

/* The int4 prefilter's upper bound of every row's exact score, one query (search/prefilter.py):
 * out[i] = a + residuals[i] * qnorm + scales[i] * qterm + slack * (|a| + 1), a = the int4 score.
 * With top_n > 0 it also keeps the top_n rows by a (a min-heap in top_val / top_idx, which the caller
 * fills with -inf / -1): the search's seed rows, found without a pass over ``out`` in numpy. */
static void heap_push(float *val, int64_t *idx, int64_t size, float v, int64_t i) {
    int64_t p = 0; /* replace the root (the smallest kept), then sift it down */
    for (;;) {
        int64_t c = 2 * p + 1;
        if (c >= size) break;
        if (c + 1 < size && val[c + 1] < val[c]) c++;
        if (val[c] >= v) break;
        val[p] = val[c], idx[p] = idx[c], p = c;
    }
    val[p] = v, idx[p] = i;
}

int int4dot_upper(const uint8_t *rows, int64_t n, int64_t dim, const float *scales, const float *residuals,
                  const int8_t *cols, const float *w, float qnorm, float qterm, float slack, float *out,
                  int64_t top_n, float *top_val, int64_t *top_idx, int limit) {
    if (n < 0 || dim <= 0 || dim % 2 || top_n < 0) return -1;
    int path = int4dot_path(dim, limit);
    /* in blocks, so the scores are still in cache when their bounds are added (measured on 1M rows:
     * one 4 MB pass then a second one cost 20 ms instead of 15) */
    for (int64_t first = 0; first < n; first += UPPER_BLOCK_ROWS) {
        int64_t m = n - first < UPPER_BLOCK_ROWS ? n - first : UPPER_BLOCK_ROWS;
        int4dot_scores(rows + first * (dim / 2), m, dim, scales + first, cols, w, 1, out + first, limit);
        if (top_n > 0) /* its own loop, so the one below has no branch and vectorises */
            for (int64_t i = first; i < first + m; i++)
                if (out[i] > top_val[0]) heap_push(top_val, top_idx, top_n, out[i], i);
        for (int64_t i = first; i < first + m; i++) {
            float a = out[i];
            out[i] = a + residuals[i] * qnorm + scales[i] * qterm + slack * ((a < 0 ? -a : a) + 1.0f);
        }
    }
    return path;
}
