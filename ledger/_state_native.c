/* The state tree's hot loops, compiled (optional; see ledger/state_native.py).
 *
 * The pure-Python definitions in ledger/state_native.py and ledger/state_chunk.py are the
 * reference: each function here computes byte for byte what its Python twin computes
 * (tests/test_state_native.py compares them on random chunks), without the interpreter's
 * cost per hash and per edit. Arguments a caller could get wrong (positions, lengths,
 * counts that disagree with the bitmaps) are checked before any offset is used and
 * refused with ValueError or TypeError. The hash is SHA-256 from the system's OpenSSL
 * library (libcrypto, linked at build time), through one EVP context fetched once and
 * reused (every call holds the GIL, so it is never shared):
 * ~117 ns for a node against ~290 ns for the one-shot SHA256(), which fetches the
 * algorithm on every call in OpenSSL 3.
 *
 * A chunk's body is the bytearray of ledger.state_chunk.Chunk: 32-byte hashes of the
 * existing positions (bit p of the bitmap eb) in position order, so the slot of p is the
 * number of set bits of eb below p.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define NODE_PREFIX 0x01 /* ledger.state.NODE_PREFIX */
#define LEAF_PREFIX 0x00 /* ledger.state.LEAF_PREFIX; the empty hash is 32 zero bytes */
#define POSITIONS 512    /* positions 1 .. 2 * SLOT0 - 1 of a chunk */
#define WORDS (POSITIONS / 64)

/* A bitmap (a non-negative int below 2**512) as eight little-endian 64-bit words. */
static int
bitmap_words(PyObject *v, uint64_t w[WORDS])
{
    unsigned char buf[WORDS * 8];
    if (!PyLong_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "a chunk bitmap must be an int");
        return -1;
    }
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t n = PyLong_AsNativeBytes(v, buf, sizeof buf,
                                        Py_ASNATIVEBYTES_LITTLE_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER
                                            | Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    int bad = n < 0 || n > (Py_ssize_t)sizeof buf;
#else
    /* Raises OverflowError for a negative int or one of more than 64 bytes. */
    int bad = _PyLong_AsByteArray((PyLongObject *)v, buf, sizeof buf, 1, 0) < 0;
#endif
    if (bad) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "a chunk bitmap must be a non-negative int below 2**512");
        return -1;
    }
    for (int i = 0; i < WORDS; i++) {
        uint64_t x = 0;
        for (int j = 7; j >= 0; j--)
            x = (x << 8) | buf[8 * i + j];
        w[i] = x;
    }
    return 0;
}

static inline int
bit(const uint64_t w[WORDS], long p)
{
    return (int)((w[p >> 6] >> (p & 63)) & 1);
}

/* The number of set bits below position p: the slot of p. */
static inline long
rank(const uint64_t w[WORDS], long p)
{
    long n = 0;
    long i = p >> 6;
    for (long j = 0; j < i; j++)
        n += __builtin_popcountll(w[j]);
    if (p & 63)
        n += __builtin_popcountll(w[i] & ((UINT64_C(1) << (p & 63)) - 1));
    return n;
}

#if OPENSSL_VERSION_NUMBER >= 0x30000000L
static EVP_MD *sha256_md;
#define DIGEST_INIT(ctx, md) EVP_DigestInit_ex2((ctx), (md), NULL)
#else /* OpenSSL 1.1: no fetching; the built-in implementation */
static const EVP_MD *sha256_md;
#define DIGEST_INIT(ctx, md) EVP_DigestInit_ex((ctx), (md), NULL)
#endif
static EVP_MD_CTX *sha256_ctx;

/* out = sha256(a + b + c); -1 with an exception set if OpenSSL fails. */
static int
sha256_3(const void *a, size_t na, const void *b, size_t nb, const void *c, size_t nc,
         unsigned char out[32])
{
    unsigned int n;
    if (DIGEST_INIT(sha256_ctx, sha256_md) != 1
        || EVP_DigestUpdate(sha256_ctx, a, na) != 1
        || (nb && EVP_DigestUpdate(sha256_ctx, b, nb) != 1)
        || (nc && EVP_DigestUpdate(sha256_ctx, c, nc) != 1)
        || EVP_DigestFinal_ex(sha256_ctx, out, &n) != 1) {
        ERR_clear_error(); /* leave nothing queued for hashlib */
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to compute a SHA-256");
        return -1;
    }
    return 0;
}

static inline int
sha256_2(const void *a, size_t na, const void *b, size_t nb, unsigned char out[32])
{
    return sha256_3(a, na, b, nb, NULL, 0, out);
}

static inline int
node_hash(unsigned char msg[65], unsigned char out[32])
{
    msg[0] = NODE_PREFIX;
    return sha256_2(msg, 65, NULL, 0, out);
}

PyDoc_STRVAR(walk_up_doc,
"walk_up(body, eb, pos, cur) -> bytes\n\n"
"From position pos (its hash cur already in its slot) up to the chunk root: every\n"
"ancestor's hash is recomputed and written into its slot; returns the root's hash.");

static PyObject *
walk_up(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "walk_up takes (body, eb, pos, cur)");
        return NULL;
    }
    uint64_t eb[WORDS];
    if (bitmap_words(args[1], eb) < 0)
        return NULL;
    long pos = PyLong_AsLong(args[2]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    if (pos < 1 || pos >= POSITIONS || !bit(eb, pos)) {
        PyErr_SetString(PyExc_ValueError, "walk_up: pos must be an existing position of the chunk");
        return NULL;
    }
    char *cur;
    Py_ssize_t curlen;
    if (PyBytes_AsStringAndSize(args[3], &cur, &curlen) < 0)
        return NULL;
    if (curlen != 32) {
        PyErr_SetString(PyExc_ValueError, "walk_up: a hash is 32 bytes");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    unsigned char *b = view.buf;
    long need = rank(eb, POSITIONS) << 5;
    if (view.len < need) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "walk_up: the body is shorter than its bitmap says");
        return NULL;
    }
    unsigned char h[32], msg[65];
    memcpy(h, cur, 32);
    long s = rank(eb, pos) << 5;
    while (pos > 1) {
        if (pos & 1) {
            if (bit(eb, pos - 1))
                memcpy(msg + 1, b + s - 32, 64);
            else {
                memset(msg + 1, 0, 32);
                memcpy(msg + 33, h, 32);
            }
        }
        else if (bit(eb, pos + 1))
            memcpy(msg + 1, b + s, 64);
        else {
            memcpy(msg + 1, h, 32);
            memset(msg + 33, 0, 32);
        }
        if (node_hash(msg, h) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
        pos >>= 1;
        s = rank(eb, pos) << 5;
        memcpy(b + s, h, 32);
    }
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)h, 32);
}

PyDoc_STRVAR(rehash_full_doc,
"rehash_full(body, dirty, levels) -> None\n\n"
"For a full chunk (every position exists: the slot of p is p - 1): recompute the\n"
"ancestors of the positions in dirty, `levels` levels up, each level before its parents.");

static PyObject *
rehash_full(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "rehash_full takes (body, dirty, levels)");
        return NULL;
    }
    long levels = PyLong_AsLong(args[2]);
    if (levels == -1 && PyErr_Occurred())
        return NULL;
    if (levels < 0 || levels > 9) {
        PyErr_SetString(PyExc_ValueError, "rehash_full: levels out of range");
        return NULL;
    }
    uint64_t mark[WORDS] = {0};
    PyObject *seq = PySequence_Fast(args[1], "rehash_full: dirty must be a sequence of positions");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    long row = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* Only ints: their conversion runs no Python code that could change the list. */
        if (!PyLong_Check(items[i])) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "rehash_full: a position is an int");
            return NULL;
        }
        long p = PyLong_AsLong(items[i]);
        if (p == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        if (p < 1 || p >= POSITIONS) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "rehash_full: a position is out of range");
            return NULL;
        }
        long depth = 63 - __builtin_clzll((unsigned long long)p);
        if (row >= 0 && depth != row) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "rehash_full: the positions are all on one row");
            return NULL;
        }
        row = depth;
        mark[p >> 6] |= UINT64_C(1) << (p & 63);
    }
    Py_DECREF(seq);
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (view.len < (POSITIONS - 1) * 32) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "rehash_full: the body of a full chunk holds 511 hashes");
        return NULL;
    }
    unsigned char *b = view.buf;
    unsigned char msg[65];
    for (long l = 0; l < levels; l++) {
        uint64_t up[WORDS] = {0};
        for (int i = 0; i < WORDS; i++) {
            uint64_t x = mark[i];
            while (x) {
                long p = ((long)i << 6) | __builtin_ctzll(x);
                x &= x - 1;
                long a = p >> 1;
                up[a >> 6] |= UINT64_C(1) << (a & 63);
            }
        }
        for (int i = 0; i < WORDS; i++) {
            uint64_t x = up[i];
            while (x) {
                long a = ((long)i << 6) | __builtin_ctzll(x);
                x &= x - 1;
                if (a == 0)
                    continue;
                memcpy(msg + 1, b + ((2 * a - 1) << 5), 64);
                if (node_hash(msg, b + ((a - 1) << 5)) < 0) {
                    PyBuffer_Release(&view);
                    return NULL;
                }
            }
        }
        memcpy(mark, up, sizeof mark);
    }
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(leaf_hash_doc,
"leaf_hash(path, value) -> bytes\n\n"
"sha256(LEAF_PREFIX + path + sha256(value)): the hash of a leaf holding value at path.");

static PyObject *
leaf_hash(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "leaf_hash takes (path, value)");
        return NULL;
    }
    Py_buffer path, value;
    if (PyObject_GetBuffer(args[0], &path, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &value, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&path);
        return NULL;
    }
    unsigned char prefix = LEAF_PREFIX, vh[32], h[32];
    int failed = sha256_2(value.buf, (size_t)value.len, NULL, 0, vh) < 0
                 || sha256_3(&prefix, 1, path.buf, (size_t)path.len, vh, 32, h) < 0;
    PyBuffer_Release(&value);
    PyBuffer_Release(&path);
    if (failed)
        return NULL;
    return PyBytes_FromStringAndSize((const char *)h, 32);
}

PyDoc_STRVAR(path_leaf_doc,
"path_leaf(tag, key, value) -> (path, leaf hash)\n\n"
"path = sha256(tag + key), the key's place in the tree, and leaf_hash(path, value).");

static PyObject *
path_leaf(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "path_leaf takes (tag, key, value)");
        return NULL;
    }
    Py_buffer tag, key, value;
    if (PyObject_GetBuffer(args[0], &tag, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &key, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&tag);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &value, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&key);
        PyBuffer_Release(&tag);
        return NULL;
    }
    unsigned char msg[65], h[32];
    msg[0] = LEAF_PREFIX;
    int failed = sha256_2(tag.buf, (size_t)tag.len, key.buf, (size_t)key.len, msg + 1) < 0
                 || sha256_2(value.buf, (size_t)value.len, NULL, 0, msg + 33) < 0
                 || sha256_2(msg, 65, NULL, 0, h) < 0;
    PyBuffer_Release(&value);
    PyBuffer_Release(&key);
    PyBuffer_Release(&tag);
    if (failed)
        return NULL;
    PyObject *path = PyBytes_FromStringAndSize((const char *)msg + 1, 32);
    if (path == NULL)
        return NULL;
    PyObject *leaf = PyBytes_FromStringAndSize((const char *)h, 32);
    if (leaf == NULL) {
        Py_DECREF(path);
        return NULL;
    }
    PyObject *out = PyTuple_Pack(2, path, leaf);
    Py_DECREF(path);
    Py_DECREF(leaf);
    return out;
}

/* ---------------------------------------------------------------- chunk edits
 *
 * Twins of ledger.state_chunk.set_hash, set_leaf and decode_chunk, on a Chunk's
 * attributes (eb, lb, xb: bitmaps; ne, nl: counts; b: the body, a bytearray). */

static PyObject *s_eb, *s_lb, *s_xb, *s_ne, *s_nl, *s_b;
static PyObject *bit_int[POSITIONS]; /* 1 << p as Python ints */
static PyObject *chunk_type;         /* ledger.state_chunk.Chunk, set by bind() */

static int
get_bitmap(PyObject *c, PyObject *name, uint64_t w[WORDS], PyObject **out)
{
    PyObject *v = PyObject_GetAttr(c, name);
    if (v == NULL)
        return -1;
    if (bitmap_words(v, w) < 0) {
        Py_DECREF(v);
        return -1;
    }
    *out = v;
    return 0;
}

/* c.<name> = old | (1 << pos) or old ^ (1 << pos) */
static int
set_bit_attr(PyObject *c, PyObject *name, PyObject *old, long pos, int toggle)
{
    PyObject *v = toggle ? PyNumber_Xor(old, bit_int[pos]) : PyNumber_Or(old, bit_int[pos]);
    if (v == NULL)
        return -1;
    int r = PyObject_SetAttr(c, name, v);
    Py_DECREF(v);
    return r;
}

static int
add_count(PyObject *c, PyObject *name, long delta)
{
    PyObject *v = PyObject_GetAttr(c, name);
    if (v == NULL)
        return -1;
    long n = PyLong_AsLong(v);
    Py_DECREF(v);
    if (n == -1 && PyErr_Occurred())
        return -1;
    PyObject *nv = PyLong_FromLong(n + delta);
    if (nv == NULL)
        return -1;
    int r = PyObject_SetAttr(c, name, nv);
    Py_DECREF(nv);
    return r;
}

static PyObject *
get_body(PyObject *c)
{
    PyObject *b = PyObject_GetAttr(c, s_b);
    if (b != NULL && !PyByteArray_CheckExact(b)) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_TypeError, "a chunk's body must be a bytearray");
        return NULL;
    }
    return b;
}

static int
check_pos(long pos)
{
    if (pos < 1 || pos >= POSITIONS) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a chunk position is 1..511");
        return -1;
    }
    return 0;
}

/* A body that does not hold what its bitmaps and lengths say: ValueError, -1. */
static int
short_body(void)
{
    PyErr_SetString(PyExc_ValueError, "a chunk's body is shorter than its bitmaps say");
    return -1;
}

/* An edit's (chunk, pos, ...) arguments: their number, and the position into *pos. */
static int
edit_args(Py_ssize_t nargs, Py_ssize_t want, const char *usage, PyObject *const *args, long *pos)
{
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    *pos = PyLong_AsLong(args[1]);
    return check_pos(*pos);
}

/* Open a gap of n bytes at offset at of bytearray b (len grows by n). */
static int
open_gap(PyObject *b, Py_ssize_t at, Py_ssize_t n)
{
    Py_ssize_t len = PyByteArray_GET_SIZE(b);
    if (at < 0 || at > len)
        return short_body();
    if (PyByteArray_Resize(b, len + n) < 0)
        return -1;
    char *p = PyByteArray_AS_STRING(b);
    memmove(p + at + n, p + at, (size_t)(len - at));
    return 0;
}

static inline uint32_t
load_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void
store_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

PyDoc_STRVAR(set_hash_doc, "set_hash(chunk, pos, h): as ledger.state_chunk.set_hash.");

static PyObject *
set_hash(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long pos;
    if (edit_args(nargs, 3, "set_hash takes (chunk, pos, hash)", args, &pos) < 0)
        return NULL;
    PyObject *c = args[0];
    if (!PyBytes_Check(args[2]) || PyBytes_GET_SIZE(args[2]) != 32) {
        PyErr_SetString(PyExc_ValueError, "set_hash: a hash is 32 bytes");
        return NULL;
    }
    uint64_t eb[WORDS];
    PyObject *ebo;
    if (get_bitmap(c, s_eb, eb, &ebo) < 0)
        return NULL;
    PyObject *b = get_body(c);
    if (b == NULL) {
        Py_DECREF(ebo);
        return NULL;
    }
    Py_ssize_t s = rank(eb, pos) << 5;
    int ok = 0;
    if (bit(eb, pos)) {
        if (s + 32 > PyByteArray_GET_SIZE(b))
            short_body();
        else {
            memcpy(PyByteArray_AS_STRING(b) + s, PyBytes_AS_STRING(args[2]), 32);
            ok = 1;
        }
    }
    else if (open_gap(b, s, 32) == 0) {
        memcpy(PyByteArray_AS_STRING(b) + s, PyBytes_AS_STRING(args[2]), 32);
        ok = set_bit_attr(c, s_eb, ebo, pos, 0) == 0 && add_count(c, s_ne, 1) == 0;
    }
    Py_DECREF(b);
    Py_DECREF(ebo);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* Sum of the first n u32 lengths at offset lo of the body (the key and value bytes of
 * the leaves before), checked against the body's size. */
static int
lengths_before(const unsigned char *p, Py_ssize_t len, Py_ssize_t lo, long n, Py_ssize_t *sum)
{
    if (lo < 0 || lo + 4 * (Py_ssize_t)n > len)
        return short_body();
    uint64_t t = 0;
    for (long i = 0; i < n; i++)
        t += load_u32(p + lo + 4 * i);
    if (t > (uint64_t)len)
        return short_body();
    *sum = (Py_ssize_t)t;
    return 0;
}

PyDoc_STRVAR(set_leaf_doc, "set_leaf(chunk, pos, key, value, x): as ledger.state_chunk.set_leaf.");

static PyObject *
set_leaf(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long pos;
    if (edit_args(nargs, 5, "set_leaf takes (chunk, pos, key, value, x)", args, &pos) < 0)
        return NULL;
    PyObject *c = args[0];
    if (!PyBytes_Check(args[2]) || !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "set_leaf: the key and value are bytes");
        return NULL;
    }
    int x = PyObject_IsTrue(args[4]);
    if (x < 0)
        return NULL;
    Py_ssize_t kl = PyBytes_GET_SIZE(args[2]), vl = PyBytes_GET_SIZE(args[3]);
    if (kl > UINT32_MAX || vl > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "set_leaf: a key or value is too long");
        return NULL;
    }
    PyObject *lbo = NULL, *xbo = NULL, *b = NULL, *ne_o = NULL, *nl_o = NULL;
    uint64_t lb[WORDS], xb[WORDS];
    int ok = 0;
    if (get_bitmap(c, s_lb, lb, &lbo) < 0 || get_bitmap(c, s_xb, xb, &xbo) < 0)
        goto done;
    if ((b = get_body(c)) == NULL || (ne_o = PyObject_GetAttr(c, s_ne)) == NULL
        || (nl_o = PyObject_GetAttr(c, s_nl)) == NULL)
        goto done;
    long ne = PyLong_AsLong(ne_o);
    if (ne == -1 && PyErr_Occurred())
        goto done;
    long nl = PyLong_AsLong(nl_o);
    if (nl == -1 && PyErr_Occurred())
        goto done;
    /* Every offset below comes from ne and nl: refuse counts the bitmaps contradict.
     * With nl the number of leaves, a leaf's lengths lie before every key (o >= at + 8). */
    if (ne < 0 || ne >= POSITIONS || nl != rank(lb, POSITIONS)) {
        PyErr_SetString(PyExc_ValueError, "set_leaf: the chunk's counts disagree with its bitmaps "
                        "(ne is 0..511, nl the number of leaves in lb)");
        goto done;
    }
    Py_ssize_t lo = (Py_ssize_t)ne * 32;
    long r = rank(lb, pos) << 1;
    Py_ssize_t len = PyByteArray_GET_SIZE(b), before;
    if (lengths_before((unsigned char *)PyByteArray_AS_STRING(b), len, lo, r, &before) < 0)
        goto done;
    Py_ssize_t at = lo + 4 * r;                          /* this leaf's lengths */
    Py_ssize_t o = lo + (Py_ssize_t)nl * 8 + before; /* this leaf's key */
    Py_ssize_t add = kl + vl;
    if (bit(lb, pos)) {
        if (at + 8 > len) {
            short_body();
            goto done;
        }
        unsigned char *p = (unsigned char *)PyByteArray_AS_STRING(b);
        uint64_t old64 = (uint64_t)load_u32(p + at) + load_u32(p + at + 4);
        if (o > len || old64 > (uint64_t)(len - o)) {
            short_body();
            goto done;
        }
        Py_ssize_t old = (Py_ssize_t)old64;
        if (add > old) {
            if (open_gap(b, o + old, add - old) < 0)
                goto done;
        }
        else if (add < old) {
            /* Checks that the body may shrink (no view on it) before moving a byte. */
            if (PySequence_DelSlice(b, o + add, o + old) < 0)
                goto done;
        }
        p = (unsigned char *)PyByteArray_AS_STRING(b);
        memcpy(p + o, PyBytes_AS_STRING(args[2]), (size_t)kl);
        memcpy(p + o + kl, PyBytes_AS_STRING(args[3]), (size_t)vl);
        store_u32(p + at, (uint32_t)kl);
        store_u32(p + at + 4, (uint32_t)vl);
    }
    else {
        if (o > len) {
            short_body();
            goto done;
        }
        /* One resize: the lengths go in at `at`, the bytes at `o` (after the lengths). */
        if (open_gap(b, o, add + 8) < 0)
            goto done;
        unsigned char *p = (unsigned char *)PyByteArray_AS_STRING(b);
        memmove(p + at + 8, p + at, (size_t)(o - at));
        store_u32(p + at, (uint32_t)kl);
        store_u32(p + at + 4, (uint32_t)vl);
        memcpy(p + o + 8, PyBytes_AS_STRING(args[2]), (size_t)kl);
        memcpy(p + o + 8 + kl, PyBytes_AS_STRING(args[3]), (size_t)vl);
        if (set_bit_attr(c, s_lb, lbo, pos, 0) < 0 || add_count(c, s_nl, 1) < 0)
            goto done;
    }
    if (x != bit(xb, pos) && set_bit_attr(c, s_xb, xbo, pos, 1) < 0)
        goto done;
    ok = 1;
done:
    Py_XDECREF(lbo);
    Py_XDECREF(xbo);
    Py_XDECREF(b);
    Py_XDECREF(ne_o);
    Py_XDECREF(nl_o);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
int_from_le(const unsigned char *p, Py_ssize_t n)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_FromUnsignedNativeBytes(p, (size_t)n, Py_ASNATIVEBYTES_LITTLE_ENDIAN);
#else
    return _PyLong_FromByteArray(p, (size_t)n, 1, 0);
#endif
}

static long
popcount_le(const unsigned char *p, Py_ssize_t n)
{
    long t = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        t += __builtin_popcount(p[i]);
    return t;
}

PyDoc_STRVAR(decode_chunk_doc,
"decode_chunk(raw) -> Chunk | None\n\n"
"As ledger.state_chunk.decode_chunk for a record that is not compact; None for a\n"
"compact one (the caller decodes those: the top chunks, read once per process).");

static PyObject *
decode_chunk(PyObject *self, PyObject *arg)
{
    if (chunk_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "decode_chunk: bind(Chunk) was not called");
        return NULL;
    }
    Py_buffer raw;
    if (PyObject_GetBuffer(arg, &raw, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *p = raw.buf;
    Py_ssize_t n = raw.len;
    PyObject *out = NULL, *eb = NULL, *lb = NULL, *xb = NULL, *b = NULL, *ne = NULL, *nl = NULL;
    if (n < 3)
        goto bad;
    if (p[0] & 0x80) {
        PyBuffer_Release(&raw);
        Py_RETURN_NONE;
    }
    Py_ssize_t o = (Py_ssize_t)p[0] + 1;
    if (o >= n)
        goto bad;
    Py_ssize_t e = o + p[o] + 1;
    if (e >= n)
        goto bad;
    Py_ssize_t x = e + p[e] + 1;
    if (x > n || p[0] > WORDS * 8 || p[o] > WORDS * 8 || p[e] > WORDS * 8)
        goto bad;
    if ((eb = int_from_le(p + 1, o - 1)) == NULL || (lb = int_from_le(p + o + 1, e - o - 1)) == NULL
        || (xb = int_from_le(p + e + 1, x - e - 1)) == NULL
        || (ne = PyLong_FromLong(popcount_le(p + 1, o - 1))) == NULL
        || (nl = PyLong_FromLong(popcount_le(p + o + 1, e - o - 1))) == NULL
        || (b = PyByteArray_FromStringAndSize((const char *)p + x, n - x)) == NULL)
        goto done;
    PyObject *fields[6] = {eb, lb, xb, ne, nl, b};
    out = PyObject_Vectorcall(chunk_type, fields, 6, NULL);
    goto done;
bad:
    PyErr_SetString(PyExc_ValueError, "decode_chunk: a malformed chunk record");
done:
    PyBuffer_Release(&raw);
    Py_XDECREF(eb);
    Py_XDECREF(lb);
    Py_XDECREF(xb);
    Py_XDECREF(ne);
    Py_XDECREF(nl);
    Py_XDECREF(b);
    return out;
}

PyDoc_STRVAR(bind_doc, "bind(Chunk): the class decode_chunk makes chunks of.");

static PyObject *
bind(PyObject *self, PyObject *arg)
{
    if (!PyType_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "bind takes the Chunk class");
        return NULL;
    }
    Py_XSETREF(chunk_type, Py_NewRef(arg));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"set_hash", (PyCFunction)(void (*)(void))set_hash, METH_FASTCALL, set_hash_doc},
    {"set_leaf", (PyCFunction)(void (*)(void))set_leaf, METH_FASTCALL, set_leaf_doc},
    {"decode_chunk", (PyCFunction)decode_chunk, METH_O, decode_chunk_doc},
    {"bind", (PyCFunction)bind, METH_O, bind_doc},
    {"path_leaf", (PyCFunction)(void (*)(void))path_leaf, METH_FASTCALL, path_leaf_doc},
    {"walk_up", (PyCFunction)(void (*)(void))walk_up, METH_FASTCALL, walk_up_doc},
    {"rehash_full", (PyCFunction)(void (*)(void))rehash_full, METH_FASTCALL, rehash_full_doc},
    {"leaf_hash", (PyCFunction)(void (*)(void))leaf_hash, METH_FASTCALL, leaf_hash_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ledger._state_native",
    "The state tree's hot loops, compiled (see ledger/state_native.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__state_native(void)
{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
    sha256_md = EVP_sha256();
#endif
    sha256_ctx = EVP_MD_CTX_new();
    if (sha256_md == NULL || sha256_ctx == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256 for the state tree");
        return NULL;
    }
    if ((s_eb = PyUnicode_InternFromString("eb")) == NULL
        || (s_lb = PyUnicode_InternFromString("lb")) == NULL
        || (s_xb = PyUnicode_InternFromString("xb")) == NULL
        || (s_ne = PyUnicode_InternFromString("ne")) == NULL
        || (s_nl = PyUnicode_InternFromString("nl")) == NULL
        || (s_b = PyUnicode_InternFromString("b")) == NULL)
        return NULL;
    PyObject *one = PyLong_FromLong(1);
    if (one == NULL)
        return NULL;
    for (long p = 0; p < POSITIONS; p++) {
        PyObject *sh = PyLong_FromLong(p);
        bit_int[p] = sh == NULL ? NULL : PyNumber_Lshift(one, sh);
        Py_XDECREF(sh);
        if (bit_int[p] == NULL) {
            Py_DECREF(one);
            return NULL;
        }
    }
    Py_DECREF(one);
    return PyModule_Create(&module);
}
