/* QuickGELU, x * sigmoid(a x), forward and backward in one pass each over float32 buffers.
 *
 * Why: in eager PyTorch the activation is three elementwise kernels forward (a x, sigmoid,
 * product) and five backward, each writing a fresh tensor the size of the MLP's hidden
 * layer; in a CPU training step of ViT-B/32 they took about 12% of the time. Here the
 * forward reads x once and writes y; the backward reads the gradient and x (the sigmoid is
 * recomputed, so autograd keeps x only) and writes the input's gradient.
 *
 *     y  = x s,                        s = 1 / (1 + exp(-a x))
 *     dx = dy s (1 + a x (1 - s))
 *
 * AVX-512 with an exp of about 1 ulp (Cephes' polynomial, scaled by VSCALEFPS, which also
 * gives inf and 0 outside float's range), or portable C with expf; chosen at run time.
 * Runs on the calling thread without the GIL: torch's own worker threads are still spinning
 * after the matrix multiply before it, and threads of ours would compete with them for the
 * cores. The Python side (polymodal/models/activations.py) passes contiguous float32
 * arrays of one size. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_X86 1
#include <immintrin.h>
#endif

static int use_avx512 = 0; /* set at import from the CPU's features; capped by set_generic() */
static int cpu_avx512 = 0;

static inline float sigmoid_scalar(float ax) { return 1.0f / (1.0f + expf(-ax)); }

static void forward_generic(const float *x, float *y, int64_t n, float a) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * sigmoid_scalar(a * x[i]);
}

static void backward_generic(const float *dy, const float *x, float *dx, int64_t n, float a) {
    for (int64_t i = 0; i < n; i++) {
        float s = sigmoid_scalar(a * x[i]);
        dx[i] = dy[i] * s * (1.0f + a * x[i] * (1.0f - s));
    }
}

#ifdef HAVE_X86
#define AVX512 __attribute__((target("avx512f,avx512dq,fma")))

AVX512 static inline __m512 exp512(__m512 v) {
    /* exp(v) = 2^n exp(r), n = round(v / ln 2), |r| <= ln 2 / 2; ln 2 split in two so that
     * n ln 2 is exact. Clamped so that n stays small; scalef saturates to inf and 0. */
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

AVX512 static inline __m512 sigmoid512(__m512 ax) {
    __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), ax))));
}

static inline __mmask16 tail16(int64_t left) { return left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1); }

AVX512 static void forward_avx512(const float *x, float *y, int64_t n, float a) {
    __m512 va = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, sigmoid512(_mm512_mul_ps(va, v))));
    }
}

AVX512 static void backward_avx512(const float *dy, const float *x, float *dx, int64_t n, float a) {
    __m512 va = _mm512_set1_ps(a), one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 av = _mm512_mul_ps(va, v);
        __m512 s = sigmoid512(av);
        __m512 slope = _mm512_fmadd_ps(av, _mm512_sub_ps(one, s), one); /* 1 + a x (1 - s) */
        __m512 g = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, dy + i), s), slope);
        _mm512_mask_storeu_ps(dx + i, m, g);
    }
}
#endif

/* --------------------------------------------------------------------------- Python */

/* Writable (when `writable`) C-contiguous float32 buffer of `view`; 0 on success. */
static int float_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->itemsize != 4 || view->format == NULL || view->format[0] != 'f' || view->format[1] != '\0') {
        PyErr_Format(PyExc_TypeError, "%s must hold float32", name);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Fills views[0..count) from objs, all float32 of one length, the last one writable. */
static int get_buffers(PyObject **objs, Py_buffer *views, int count, const char **names) {
    for (int i = 0; i < count; i++) {
        if (float_buffer(objs[i], &views[i], i == count - 1, names[i]) < 0) {
            while (i-- > 0) PyBuffer_Release(&views[i]);
            return -1;
        }
        if (views[i].len != views[0].len) {
            PyErr_Format(PyExc_ValueError, "%s has %zd values, %s has %zd", names[i], views[i].len / 4, names[0],
                         views[0].len / 4);
            for (; i >= 0; i--) PyBuffer_Release(&views[i]);
            return -1;
        }
    }
    return 0;
}

static PyObject *py_forward(PyObject *self, PyObject *args) {
    PyObject *objs[2];
    float a;
    if (!PyArg_ParseTuple(args, "OOf", &objs[0], &objs[1], &a)) return NULL;
    Py_buffer v[2];
    const char *names[2] = {"x", "out"};
    if (get_buffers(objs, v, 2, names) < 0) return NULL;
    int64_t n = (int64_t)(v[0].len / 4);
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_X86
    if (use_avx512) forward_avx512((const float *)v[0].buf, (float *)v[1].buf, n, a);
    else
#endif
        forward_generic((const float *)v[0].buf, (float *)v[1].buf, n, a);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v[0]);
    PyBuffer_Release(&v[1]);
    Py_RETURN_NONE;
}

static PyObject *py_backward(PyObject *self, PyObject *args) {
    PyObject *objs[3];
    float a;
    if (!PyArg_ParseTuple(args, "OOOf", &objs[0], &objs[1], &objs[2], &a)) return NULL;
    Py_buffer v[3];
    const char *names[3] = {"grad", "x", "out"};
    if (get_buffers(objs, v, 3, names) < 0) return NULL;
    int64_t n = (int64_t)(v[0].len / 4);
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_X86
    if (use_avx512) backward_avx512((const float *)v[0].buf, (const float *)v[1].buf, (float *)v[2].buf, n, a);
    else
#endif
        backward_generic((const float *)v[0].buf, (const float *)v[1].buf, (float *)v[2].buf, n, a);
    Py_END_ALLOW_THREADS
    for (int i = 0; i < 3; i++) PyBuffer_Release(&v[i]);
    Py_RETURN_NONE;
}

static PyObject *py_isa(PyObject *self, PyObject *noargs) { return PyUnicode_FromString(use_avx512 ? "avx512" : "generic"); }

static PyObject *py_set_generic(PyObject *self, PyObject *args) {
    int generic;
    if (!PyArg_ParseTuple(args, "p", &generic)) return NULL;
    use_avx512 = cpu_avx512 && !generic;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"quick_gelu", py_forward, METH_VARARGS, "quick_gelu(x, out, a): out = x * sigmoid(a * x)."},
    {"quick_gelu_backward", py_backward, METH_VARARGS,
     "quick_gelu_backward(grad, x, out, a): out = the gradient of quick_gelu's input."},
    {"isa", py_isa, METH_NOARGS, "'avx512' or 'generic': the kernels in use."},
    {"set_generic", py_set_generic, METH_VARARGS, "set_generic(True) uses the portable kernels (tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_activations", NULL, -1, methods};

PyMODINIT_FUNC PyInit__activations(void) {
#ifdef HAVE_X86
    __builtin_cpu_init();
    cpu_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#endif
    use_avx512 = cpu_avx512;
    return PyModule_Create(&module);
}
