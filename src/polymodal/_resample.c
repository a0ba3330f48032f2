/* Pillow's antialiased resize (Image.resize with a box, BICUBIC or BILINEAR) of 8-bit RGB
 * images, bit for bit, several times faster.
 *
 * Why: for the small presets (64 px) Pillow's resize took as long per image as decoding the
 * JPEG, a third of what indexing a folder costs on top of the model. Pillow's passes are
 * scalar; here each output line is a sum of whole source lines times one coefficient each,
 * sixteen bytes at a time (AVX-512, AVX2 or portable C, chosen at run time).
 *
 * The arithmetic is Pillow 13's (src/libImaging/Resample.c): the same filter taps from the
 * float32 box, the same coefficients rounded to 22 fractional bits, int32 sums started at one
 * half, each pass clipped to 8 bits, the passes in the same order. Integer sums do not depend
 * on their order, so the results are Pillow's exactly; the tests hold them to that.
 *
 * Layout: the horizontal pass runs on the used block transposed (one column of the source is
 * one contiguous line), so that both passes are "accumulate k times a line". The output is
 * (H, W, 3) or, for the model's input, (3, H, W). Runs without the GIL. The Python side
 * (polymodal/resample.py) passes C-contiguous uint8 arrays. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS (32 - 8 - 2)

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86 1
#include <immintrin.h>
#endif

enum { FILTER_BICUBIC = 0, FILTER_BILINEAR = 1 };

static int level = 0; /* 2: AVX-512, 1: AVX2, 0: portable; set at import, changed by set_isa() (tests) */
static int cpu_level = 0;

/* --------------------------------------------------------------------------- coefficients */

static double bicubic_filter(double x) {
    /* Pillow's: Keys' cubic convolution with a = -0.5 */
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return 1.0 - x;
    return 0.0;
}

typedef struct {
    int ksize;       /* taps per output pixel (the filter's widest) */
    int *bounds;     /* (first source pixel, taps) per output pixel */
    int32_t *coeffs; /* ksize fixed-point coefficients per output pixel */
} Taps;

static void taps_free(Taps *t) {
    free(t->bounds);
    free(t->coeffs);
    t->bounds = NULL;
    t->coeffs = NULL;
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis; 0 on success, -1 out of
 * memory. in0 and in1 are float, as Pillow parses the box. */
static int taps_compute(int in_size, float in0, float in1, int out_size, int filter, Taps *t) {
    double (*f)(double) = filter == FILTER_BICUBIC ? bicubic_filter : bilinear_filter;
    double base_support = filter == FILTER_BICUBIC ? 2.0 : 1.0;
    double scale, filterscale;
    filterscale = scale = (double)(in1 - in0) / out_size;
    if (filterscale < 1.0) filterscale = 1.0;
    double support = base_support * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    t->ksize = ksize;
    t->bounds = malloc((size_t)out_size * 2 * sizeof(int));
    t->coeffs = malloc((size_t)out_size * ksize * sizeof(int32_t));
    double *k = malloc((size_t)ksize * sizeof(double));
    if (!t->bounds || !t->coeffs || !k) {
        free(k);
        taps_free(t);
        return -1;
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            double w = f((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        int32_t *out = &t->coeffs[(size_t)xx * ksize];
        for (int x = 0; x < ksize; x++) {
            double v = x < xmax ? k[x] : 0.0;
            out[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS)) : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        t->bounds[xx * 2] = xmin;
        t->bounds[xx * 2 + 1] = xmax;
    }
    free(k);
    return 0;
}

/* --------------------------------------------------------------------------- row kernels */

static inline uint8_t clip8(int32_t s) {
    int32_t v = s >> PRECISION_BITS; /* arithmetic shift, as Pillow's lookup table index */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* One output line: out[i] = clip8(1/2 + sum over taps t of first[t * stride + i] * k[t]).
 * The vector versions keep 16 (AVX-512) or 8 (AVX2) sums in a register across the taps. */
static void line_generic(const uint8_t *first, size_t stride, const int32_t *k, int taps, int n, uint8_t *out) {
    for (int i = 0; i < n; i++) {
        int32_t sum = 1 << (PRECISION_BITS - 1);
        for (int t = 0; t < taps; t++) sum += (int32_t)first[(size_t)t * stride + i] * k[t];
        out[i] = clip8(sum);
    }
}

#ifdef HAVE_X86
__attribute__((target("avx2"))) static void line_avx2(const uint8_t *first, size_t stride, const int32_t *k,
                                                      int taps, int n, uint8_t *out) {
    const __m256i half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1)), zero = _mm256_setzero_si256();
    const __m256i top = _mm256_set1_epi32(255);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i sum = half;
        for (int t = 0; t < taps; t++) {
            __m128i bytes = _mm_loadl_epi64((const __m128i *)(first + (size_t)t * stride + i));
            sum = _mm256_add_epi32(sum, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(bytes), _mm256_set1_epi32(k[t])));
        }
        sum = _mm256_min_epi32(_mm256_max_epi32(_mm256_srai_epi32(sum, PRECISION_BITS), zero), top);
        __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        _mm_storel_epi64((__m128i *)(out + i), _mm_packus_epi16(words, words));
    }
    if (i < n) line_generic(first + i, stride, k, taps, n - i, out + i);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) static void line_avx512(const uint8_t *first, size_t stride,
                                                                             const int32_t *k, int taps, int n,
                                                                             uint8_t *out) {
    const __m512i half = _mm512_set1_epi32(1 << (PRECISION_BITS - 1)), zero = _mm512_setzero_si512();
    const __m512i top = _mm512_set1_epi32(255);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512i sum = half;
        for (int t = 0; t < taps; t++) {
            __m128i bytes = _mm_maskz_loadu_epi8(m, first + (size_t)t * stride + i);
            sum = _mm512_add_epi32(sum, _mm512_mullo_epi32(_mm512_cvtepu8_epi32(bytes), _mm512_set1_epi32(k[t])));
        }
        sum = _mm512_min_epi32(_mm512_max_epi32(_mm512_srai_epi32(sum, PRECISION_BITS), zero), top);
        _mm_mask_storeu_epi8(out + i, m, _mm512_cvtepi32_epi8(sum));
    }
}
#endif

typedef void (*LineFn)(const uint8_t *, size_t, const int32_t *, int, int, uint8_t *);

/* --------------------------------------------------------------------------- resize */

typedef struct {
    const uint8_t *src;
    int width, height;
    float box[4];
    int out_w, out_h, filter, channels_first;
    uint8_t *dst;
} Job;

/* The horizontal pass over R rows (`stride` bytes apart) into (OW, R * 3): output column xx
 * as one contiguous line. The used columns are transposed first, so that each tap is a row. */
static uint8_t *horizontal_pass(LineFn line, const uint8_t *rows, size_t stride, int R, const Taps *ht, int OW) {
    const int x0 = ht->bounds[0], x1 = ht->bounds[OW * 2 - 2] + ht->bounds[OW * 2 - 1], C = x1 - x0;
    const size_t col = (size_t)R * 3;
    uint8_t *cols = malloc((size_t)C * col), *out = malloc((size_t)OW * col);
    if (!cols || !out) {
        free(cols);
        free(out);
        return NULL;
    }
    for (int r = 0; r < R; r++) {
        const uint8_t *s = rows + (size_t)r * stride + (size_t)x0 * 3;
        for (int x = 0; x < C; x++) memcpy(cols + (size_t)x * col + (size_t)r * 3, s + (size_t)x * 3, 3);
    }
    for (int xx = 0; xx < OW; xx++)
        line(cols + (size_t)(ht->bounds[xx * 2] - x0) * col, col,
                    &ht->coeffs[(size_t)xx * ht->ksize], ht->bounds[xx * 2 + 1], (int)col, out + (size_t)xx * col);
    free(cols);
    return out;
}

/* The vertical pass: output row yy from source rows starting at bounds - y0, `n` bytes each. */
static void vertical_pass(LineFn line, const uint8_t *rows, size_t stride, int y0, const Taps *vt, int OH, int n,
                          uint8_t *out) {
    for (int yy = 0; yy < OH; yy++)
        line(rows + (size_t)(vt->bounds[yy * 2] - y0) * stride, stride,
                    &vt->coeffs[(size_t)yy * vt->ksize], vt->bounds[yy * 2 + 1], n, out + (size_t)yy * n);
}

/* (OW, R * 3) column lines back to (R, OW, 3) rows. */
static void columns_to_rows(const uint8_t *cols, int OW, int R, uint8_t *rows) {
    for (int r = 0; r < R; r++)
        for (int xx = 0; xx < OW; xx++)
            memcpy(rows + ((size_t)r * OW + xx) * 3, cols + (size_t)xx * R * 3 + (size_t)r * 3, 3);
}

/* 0 on success, -1 out of memory. Pillow 13's order of passes: horizontal first unless the
 * height shrinks by more than twice as many pixels as the width. */
static int resize_rgb(const Job *job) {
    LineFn line = line_generic;
#ifdef HAVE_X86
    if (level == 2) line = line_avx512;
    else if (level == 1) line = line_avx2;
#endif
    const int W = job->width, H = job->height, OW = job->out_w, OH = job->out_h;
    const float *box = job->box;
    int need_h = OW != W || box[0] != 0 || box[2] != OW;
    int need_v = OH != H || box[1] != 0 || box[3] != OH;
    int horizontal_first = !((H - OH) > 0 && (H - OH) > (W - OW) * 2);
    const size_t stride = (size_t)W * 3, out_stride = (size_t)OW * 3;
    Taps vt = {0}, ht = {0};
    uint8_t *a = NULL, *b = NULL, *hwc = job->channels_first ? malloc((size_t)OH * out_stride) : job->dst;
    int status = -1;
    if (!hwc) goto done;
    if (((need_h && horizontal_first) || need_v) && taps_compute(H, box[1], box[3], OH, job->filter, &vt) < 0)
        goto done;
    if (need_h && taps_compute(W, box[0], box[2], OW, job->filter, &ht) < 0) goto done;

    if (!need_h && !need_v) {
        memcpy(hwc, job->src, (size_t)H * stride);
    } else if (need_h && horizontal_first) {
        const int y0 = vt.bounds[0], R = vt.bounds[OH * 2 - 2] + vt.bounds[OH * 2 - 1] - y0;
        if (!(a = horizontal_pass(line, job->src + (size_t)y0 * stride, stride, R, &ht, OW))) goto done;
        if (need_v) {
            if (!(b = malloc((size_t)R * out_stride))) goto done;
            columns_to_rows(a, OW, R, b);
            vertical_pass(line, b, out_stride, y0, &vt, OH, (int)out_stride, hwc);
        } else {
            columns_to_rows(a, OW, R, hwc); /* R == OH: all rows */
        }
    } else if (!need_h) {
        vertical_pass(line, job->src, stride, 0, &vt, OH, (int)stride, hwc);
    } else {
        if (!(a = malloc((size_t)OH * stride))) goto done;
        vertical_pass(line, job->src, stride, 0, &vt, OH, (int)stride, a);
        if (!(b = horizontal_pass(line, a, stride, OH, &ht, OW))) goto done;
        columns_to_rows(b, OW, OH, hwc);
    }
    if (job->channels_first) {
        const size_t plane = (size_t)OW * OH;
        for (size_t i = 0; i < plane; i++)
            for (int c = 0; c < 3; c++) job->dst[c * plane + i] = hwc[i * 3 + c];
    }
    status = 0;
done:
    taps_free(&vt);
    taps_free(&ht);
    free(a);
    free(b);
    if (job->channels_first) free(hwc);
    return status;
}

/* --------------------------------------------------------------------------- Python */

static int byte_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t expected, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->itemsize != 1 || view->len != expected) {
        PyErr_Format(PyExc_ValueError, "%s must be %zd uint8 values, got %zd bytes", name, expected, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *py_resize(PyObject *self, PyObject *args) {
    PyObject *src_obj, *dst_obj;
    Job job;
    if (!PyArg_ParseTuple(args, "Oii(ffff)Oiiip", &src_obj, &job.width, &job.height, &job.box[0], &job.box[1],
                          &job.box[2], &job.box[3], &dst_obj, &job.out_w, &job.out_h, &job.filter, &job.channels_first))
        return NULL;
    if (job.width <= 0 || job.height <= 0 || job.out_w <= 0 || job.out_h <= 0) {
        PyErr_Format(PyExc_ValueError, "sizes must be positive: %dx%d to %dx%d", job.width, job.height, job.out_w,
                     job.out_h);
        return NULL;
    }
    if (job.filter != FILTER_BICUBIC && job.filter != FILTER_BILINEAR) {
        PyErr_Format(PyExc_ValueError, "unknown filter %d", job.filter);
        return NULL;
    }
    const float *b = job.box; /* Pillow's checks, with its messages, and finite values */
    if (!isfinite(b[0]) || !isfinite(b[1]) || !isfinite(b[2]) || !isfinite(b[3])) {
        PyErr_SetString(PyExc_ValueError, "box values must be finite");
        return NULL;
    }
    if (b[0] < 0 || b[1] < 0) {
        PyErr_SetString(PyExc_ValueError, "box offset can't be negative");
        return NULL;
    }
    if (b[2] > job.width || b[3] > job.height) {
        PyErr_SetString(PyExc_ValueError, "box can't exceed original image size");
        return NULL;
    }
    if (b[2] - b[0] < 0 || b[3] - b[1] < 0) {
        PyErr_SetString(PyExc_ValueError, "box can't be empty");
        return NULL;
    }
    Py_buffer src, dst;
    if (byte_buffer(src_obj, &src, 0, (Py_ssize_t)job.width * job.height * 3, "src") < 0) return NULL;
    if (byte_buffer(dst_obj, &dst, 1, (Py_ssize_t)job.out_w * job.out_h * 3, "out") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    job.src = src.buf;
    job.dst = dst.buf;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = resize_rgb(&job);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (status < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static const char *ISA_NAMES[] = {"generic", "avx2", "avx512"};

static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int i = 0; i < 3; i++)
        if (strcmp(name, ISA_NAMES[i]) == 0) {
            if (i > cpu_level) {
                PyErr_Format(PyExc_ValueError, "this CPU has no %s", name);
                return NULL;
            }
            level = i;
            Py_RETURN_NONE;
        }
    PyErr_Format(PyExc_ValueError, "unknown kernel level %s (generic, avx2 or avx512)", name);
    return NULL;
}

static PyObject *py_isa(PyObject *self, PyObject *noargs) { return PyUnicode_FromString(ISA_NAMES[level]); }

static PyObject *py_cpu_isa(PyObject *self, PyObject *noargs) { return PyUnicode_FromString(ISA_NAMES[cpu_level]); }

static PyMethodDef methods[] = {
    {"resize", py_resize, METH_VARARGS,
     "resize(src, width, height, box, out, out_width, out_height, filter, channels_first): Pillow's resize of "
     "the RGB bytes src (height, width, 3) from box (x0, y0, x1, y1) into out: (out_height, out_width, 3), "
     "or (3, out_height, out_width) when channels_first. filter: 0 bicubic, 1 bilinear."},
    {"isa", py_isa, METH_NOARGS, "'avx512', 'avx2' or 'generic': the row kernels in use."},
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "The fastest row kernels this CPU runs."},
    {"set_isa", py_set_isa, METH_VARARGS, "set_isa(name) uses those row kernels (tests); at most cpu_isa()."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_resample", NULL, -1, methods};

PyMODINIT_FUNC PyInit__resample(void) {
#ifdef HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        cpu_level = 2;
    else if (__builtin_cpu_supports("avx2"))
        cpu_level = 1;
#endif
    level = cpu_level;
    return PyModule_Create(&module);
}
