/* The lineage graph answer for a walk that starts at versions, written in C.
 *
 * Same walk and same bytes as GraphIndex.answer in graph_index.py (the reference, which
 * also serves run and job starts, and every start where this module is not built). There,
 * per-node Python work (which edges of a partly reached node are in the answer, writing
 * them) was most of an answer of a few thousand nodes; here it is a loop over int arrays.
 *
 * It reads the index's own rows, under the GIL: a tuple per version (by node id) and per run
 * (by index) of (key: str, quoted id: bytes, fragment: bytes, the ids of its readers and
 * writers (a run: inputs and outputs) as bytes of int32, and their quoted ids, tuples in
 * the same order), and, contiguous, each fragment's head length and each run's sides (has
 * inputs, has outputs). Rows and fragments must be fresh (GraphIndex.refresh first). What
 * costs is reaching scattered Python objects, so a node is reached through as few of them
 * as can be: an edge's far end is written from the near end's row alone.
 *
 * Which edges a node has (D/U: the downstream/upstream walk, E: versions it expanded,
 * R: runs it reached):
 *   version: in = writers in R_D, and all writers with inputs if in E_U;
 *            out = readers in R_U, and all readers with outputs if in E_D;
 *   run:     in = all inputs if in R_U, else inputs in E_D if in R_D;
 *            out = all outputs if in R_D, else outputs in E_U if in R_U.
 * These are subsets of the fragment's lists (a version's writers with inputs and readers
 * with outputs; a run's inputs if it has outputs and outputs if it has inputs), so equal
 * counts mean the fragment is copied as it is.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { V_REACHED_D = 1, V_EXPANDED_D = 2, V_REACHED_U = 4, V_EXPANDED_U = 8, V_LISTED = 16 };
enum { R_DOWN = 1, R_UP = 2 };
enum { HAS_INPUTS = 1, HAS_OUTPUTS = 2 }; /* run_sides, kept by GraphIndex.put_run_io */
enum {
    ROW_KEY,
    ROW_QUOTED,
    ROW_FRAGMENT,
    ROW_READERS,   /* ids (bytes of int32) */
    ROW_WRITERS,   /* ids */
    ROW_READERS_Q, /* their quoted ids (a tuple of bytes, in the same order) */
    ROW_WRITERS_Q,
    ROW_SIZE
};
enum {
    ROW_INPUTS = ROW_READERS,
    ROW_OUTPUTS = ROW_WRITERS,
    ROW_INPUTS_Q = ROW_READERS_Q,
    ROW_OUTPUTS_Q = ROW_WRITERS_Q
};

static const char IN_EDGES[] = "\"inEdges\":[";
static const char OUT_EDGES[] = "],\"outEdges\":[";
static const char ORIGIN[] = "{\"origin\":";
static const char DESTINATION[] = ",\"destination\":";

/* ------------------------------------------------------------------ growable int vector */

typedef struct {
    int32_t *at;
    Py_ssize_t n, cap;
} ivec;

static int ivec_push(ivec *v, int32_t x) {
    if (v->n == v->cap) {
        Py_ssize_t cap = v->cap ? v->cap * 2 : 256;
        int32_t *at = PyMem_Realloc(v->at, (size_t)cap * sizeof(int32_t));
        if (at == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        v->at = at;
        v->cap = cap;
    }
    v->at[v->n++] = x;
    return 0;
}

static void ivec_free(ivec *v) {
    PyMem_Free(v->at);
    v->at = NULL;
    v->n = v->cap = 0;
}

/* ------------------------------------------------------------------ ids: bytes or array('i') */

typedef struct {
    const int32_t *at;
    Py_ssize_t n;
    Py_buffer view;
    int held;
} ints;

/* The ints of a row's ids (bytes of native int32: their data is in the object, one miss
 * fewer than an array's) or of an array('i'); None is empty. */
static int ints_open(PyObject *obj, ints *out) {
    out->at = NULL;
    out->n = 0;
    out->held = 0;
    if (obj == NULL || obj == Py_None)
        return 0;
    if (PyBytes_CheckExact(obj)) {
        if (PyBytes_GET_SIZE(obj) % 4 != 0) {
            PyErr_SetString(PyExc_TypeError, "ids: bytes of int32 expected");
            return -1;
        }
        out->at = (const int32_t *)PyBytes_AS_STRING(obj);
        out->n = PyBytes_GET_SIZE(obj) / 4;
        return 0;
    }
    if (PyObject_GetBuffer(obj, &out->view, PyBUF_FORMAT) < 0)
        return -1;
    out->held = 1;
    if (out->view.itemsize != 4 || out->view.format == NULL || strcmp(out->view.format, "i") != 0) {
        PyBuffer_Release(&out->view);
        out->held = 0;
        PyErr_SetString(PyExc_TypeError, "expected array('i')");
        return -1;
    }
    out->at = (const int32_t *)out->view.buf;
    out->n = out->view.len / 4;
    return 0;
}

static void ints_close(ints *x) {
    if (x->held)
        PyBuffer_Release(&x->view);
    x->held = 0;
}

/* ------------------------------------------------------------------ the state of one call */

typedef struct {
    PyObject *rows, *run_rows; /* lists of tuples: by node id, by run */
    Py_ssize_t max_node, runs;
    ints version_heads, run_heads;
    uint8_t *vflag; /* by node id */
    uint8_t *rflag; /* by run */
    const uint8_t *sides; /* by run: HAS_INPUTS | HAS_OUTPUTS */
    ivec listed_versions, listed_runs;
} state;

/* An item of a version's row (borrowed); NULL with an error if the version has no row. */
static PyObject *version_item(state *s, int32_t node, int item) {
    PyObject *row = PyList_GET_ITEM(s->rows, node);
    if (!PyTuple_CheckExact(row) || PyTuple_GET_SIZE(row) != ROW_SIZE) {
        PyErr_Format(PyExc_KeyError, "version %d has no row", (int)node);
        return NULL;
    }
    return PyTuple_GET_ITEM(row, item);
}

/* An item of a run's row (borrowed). Only listed runs are read: their rows were checked
 * (list_run). */
static PyObject *run_item(state *s, int32_t run, int item) {
    return PyTuple_GET_ITEM(PyList_GET_ITEM(s->run_rows, run), item);
}

/* A run is in the answer: its row must be (str, bytes, bytes, ids, ids, quoted, quoted). */
static int list_run(state *s, int32_t run) {
    PyObject *row = PyList_GET_ITEM(s->run_rows, run);
    if (!PyTuple_CheckExact(row) || PyTuple_GET_SIZE(row) != ROW_SIZE ||
        !PyUnicode_Check(PyTuple_GET_ITEM(row, ROW_KEY)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(row, ROW_QUOTED)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(row, ROW_FRAGMENT))) {
        PyErr_Format(PyExc_TypeError, "run %d: a row is (str, bytes, bytes, ids, ids, ...)",
                     (int)run);
        return -1;
    }
    return ivec_push(&s->listed_runs, run);
}

static int check_node(state *s, int32_t node) {
    if (node < 0 || node > s->max_node) {
        PyErr_Format(PyExc_ValueError, "version node %d out of range", (int)node);
        return -1;
    }
    return 0;
}

static int check_run(state *s, int32_t run) {
    if (run < 0 || run >= s->runs) {
        PyErr_Format(PyExc_ValueError, "run %d out of range", (int)run);
        return -1;
    }
    return 0;
}

/* The quoted ids beside n ids in a row (a tuple of as many bytes; None when n is 0). */
static PyObject *quoted_of(PyObject *q, Py_ssize_t n) {
    if ((q == Py_None && n == 0) || (PyTuple_CheckExact(q) && PyTuple_GET_SIZE(q) == n))
        return q;
    PyErr_SetString(PyExc_TypeError, "a row's quoted ids do not match its ids");
    return NULL;
}

/* ------------------------------------------------------------------ prefetching */

/* A walk or a write is chains of dependent loads into scattered objects (list slot, row
 * tuple, its items): each loop over nodes asks for the row of the node AHEAD * 2 places
 * on, and for the items it will read of the node AHEAD places on, so the misses overlap
 * instead of following one another. */
enum { AHEAD = 6 };

static inline void ahead_row(PyObject *list, Py_ssize_t bound, int32_t id) {
    if (id >= 0 && id < bound)
        __builtin_prefetch(PyList_GET_ITEM(list, id));
}

static inline void ahead_items(PyObject *list, Py_ssize_t bound, int32_t id, int a, int b) {
    if (id < 0 || id >= bound)
        return;
    PyObject *row = PyList_GET_ITEM(list, id);
    if (!PyTuple_CheckExact(row) || PyTuple_GET_SIZE(row) != ROW_SIZE)
        return;
    __builtin_prefetch(PyTuple_GET_ITEM(row, a));
    if (b >= 0)
        __builtin_prefetch(PyTuple_GET_ITEM(row, b));
}

/* In a loop over ids[0:n] at i: rows of a list bounded by bound, items a and b. */
#define PREFETCH(list, bound, ids, i, n, a, b)                                                 \
    do {                                                                                       \
        if ((i) + 2 * AHEAD < (n))                                                             \
            ahead_row((list), (bound), (ids)[(i) + 2 * AHEAD]);                                \
        if ((i) + AHEAD < (n))                                                                 \
            ahead_items((list), (bound), (ids)[(i) + AHEAD], (a), (b));                        \
    } while (0)

/* ------------------------------------------------------------------ the walk */

/* Breadth first through at most depth runs, each version expanded once: as
 * GraphIndex._walk, with the sets as flags. */
static int walk(state *s, const ivec *seeds, Py_ssize_t depth, int down) {
    const uint8_t reached_flag = down ? V_REACHED_D : V_REACHED_U;
    const uint8_t expanded_flag = down ? V_EXPANDED_D : V_EXPANDED_U;
    const uint8_t run_flag = down ? R_DOWN : R_UP;
    const int near_item = down ? ROW_READERS : ROW_WRITERS;
    const int far_item = down ? ROW_OUTPUTS : ROW_INPUTS;
    const uint8_t far_side = down ? HAS_OUTPUTS : HAS_INPUTS;
    ivec frontier = {0}, next = {0}, new_runs = {0};
    int rc = -1;

    for (Py_ssize_t i = 0; i < seeds->n; i++) {
        int32_t v = seeds->at[i];
        if (!(s->vflag[v] & reached_flag)) {
            s->vflag[v] |= reached_flag;
            if (ivec_push(&frontier, v) < 0)
                goto done;
        }
    }
    for (Py_ssize_t level = 0; level < depth && frontier.n > 0; level++) {
        new_runs.n = 0;
        for (Py_ssize_t i = 0; i < frontier.n; i++) {
            PREFETCH(s->rows, s->max_node + 1, frontier.at, i, frontier.n, near_item, -1);
            int32_t v = frontier.at[i];
            s->vflag[v] |= expanded_flag;
            PyObject *near_obj = version_item(s, v, near_item);
            if (near_obj == NULL)
                goto done;
            ints near;
            if (ints_open(near_obj, &near) < 0)
                goto done;
            for (Py_ssize_t j = 0; j < near.n; j++) {
                int32_t r = near.at[j];
                if (check_run(s, r) < 0) {
                    ints_close(&near);
                    goto done;
                }
                if (s->rflag[r] & run_flag)
                    continue;
                if (!(s->sides[r] & far_side)) /* barren: reached, it adds nothing */
                    continue;
                if (!(s->rflag[r] & (R_DOWN | R_UP)) && list_run(s, r) < 0) {
                    ints_close(&near);
                    goto done;
                }
                s->rflag[r] |= run_flag;
                if (ivec_push(&new_runs, r) < 0) {
                    ints_close(&near);
                    goto done;
                }
            }
            ints_close(&near);
        }
        next.n = 0;
        for (Py_ssize_t i = 0; i < new_runs.n; i++) {
            PREFETCH(s->run_rows, s->runs, new_runs.at, i, new_runs.n, far_item, -1);
            ints far;
            if (ints_open(run_item(s, new_runs.at[i], far_item), &far) < 0)
                goto done;
            for (Py_ssize_t j = 0; j < far.n; j++) {
                int32_t x = far.at[j];
                if (check_node(s, x) < 0) {
                    ints_close(&far);
                    goto done;
                }
                if (s->vflag[x] & reached_flag)
                    continue;
                s->vflag[x] |= reached_flag;
                if (ivec_push(&next, x) < 0) {
                    ints_close(&far);
                    goto done;
                }
                if (!(s->vflag[x] & V_LISTED)) {
                    s->vflag[x] |= V_LISTED;
                    if (ivec_push(&s->listed_versions, x) < 0) {
                        ints_close(&far);
                        goto done;
                    }
                }
            }
            ints_close(&far);
        }
        ivec swap = frontier;
        frontier = next;
        next = swap;
    }
    rc = 0;
done:
    ivec_free(&frontier);
    ivec_free(&next);
    ivec_free(&new_runs);
    return rc;
}

/* ------------------------------------------------------------------ ordering by id */

typedef struct {
    uint64_t prefix; /* 8 bytes of the key at some offset, big-endian, 0-padded (sort_keys) */
    const char *utf8;
    Py_ssize_t len;
    int32_t id;
} keyed;

/* Code point order (Python's str order) is UTF-8 byte order. */
static int keyed_cmp(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    Py_ssize_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->utf8, y->utf8, (size_t)n);
    if (c != 0)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

static int prefix_cmp(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    return (x->prefix > y->prefix) - (x->prefix < y->prefix);
}

/* a[0:n] in prefix order: a stable byte-wise radix sort (8 passes, a pass skipped when
 * all its bytes are equal), qsort when small or out of memory. */
static void sort_by_prefix(keyed *a, Py_ssize_t n) {
    keyed *tmp = n < 64 ? NULL : PyMem_Malloc((size_t)n * sizeof(keyed));
    if (tmp == NULL) {
        qsort(a, (size_t)n, sizeof(keyed), prefix_cmp);
        return;
    }
    keyed *from = a, *to = tmp;
    for (int shift = 0; shift < 64; shift += 8) {
        Py_ssize_t count[257] = {0};
        for (Py_ssize_t i = 0; i < n; i++)
            count[((from[i].prefix >> shift) & 0xff) + 1]++;
        int one_bucket = 0;
        for (int b = 1; b <= 256; b++)
            one_bucket |= count[b] == n;
        if (one_bucket)
            continue;
        for (int b = 1; b <= 256; b++)
            count[b] += count[b - 1];
        for (Py_ssize_t i = 0; i < n; i++)
            to[count[(from[i].prefix >> shift) & 0xff]++] = from[i];
        keyed *swap = from;
        from = to;
        to = swap;
    }
    if (from != a)
        memcpy(a, from, (size_t)n * sizeof(keyed));
    PyMem_Free(tmp);
}

/* Sorted as keyed_cmp sorts, comparing integers: ids share long beginnings
 * ("dataset:s3://lake:..."), so a group is sorted on the 8 bytes past its common
 * beginning (big-endian), then each run of equal ones the same way, past theirs. A key
 * ending inside those 8 bytes pads with 0 (as a NUL would): such a run is sorted whole. */
static void sort_keys(keyed *a, Py_ssize_t n, Py_ssize_t common) {
    if (n < 2)
        return;
    /* Every key here is at least common long and shares its first common bytes. */
    Py_ssize_t lcp = a[0].len;
    for (Py_ssize_t i = 1; i < n && lcp > common; i++) {
        Py_ssize_t j = common, m = a[i].len < lcp ? a[i].len : lcp;
        while (j < m && a[i].utf8[j] == a[0].utf8[j])
            j++;
        lcp = j;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t p = 0;
        for (Py_ssize_t j = lcp; j < lcp + 8; j++)
            p = (p << 8) | (j < a[i].len ? (uint8_t)a[i].utf8[j] : 0);
        a[i].prefix = p;
    }
    sort_by_prefix(a, n);
    for (Py_ssize_t i = 0; i < n;) {
        Py_ssize_t j = i + 1, shortest = a[i].len;
        while (j < n && a[j].prefix == a[i].prefix) {
            shortest = a[j].len < shortest ? a[j].len : shortest;
            j++;
        }
        if (j - i > 1) {
            if (shortest < lcp + 8)
                qsort(a + i, (size_t)(j - i), sizeof(keyed), keyed_cmp);
            else
                sort_keys(a + i, j - i, lcp + 8);
        }
        i = j;
    }
}

/* ids sorted by their key (a str from a dict by node id, or a list by run). */
static keyed *sorted_by_key(state *s, const ivec *ids, int versions) {
    keyed *out = PyMem_Malloc((size_t)(ids->n ? ids->n : 1) * sizeof(keyed));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    PyObject *list = versions ? s->rows : s->run_rows;
    Py_ssize_t bound = versions ? s->max_node + 1 : s->runs;
    for (Py_ssize_t i = 0; i < ids->n; i++) {
        PREFETCH(list, bound, ids->at, i, ids->n, ROW_KEY, -1);
        int32_t id = ids->at[i];
        PyObject *k = versions ? version_item(s, id, ROW_KEY) : run_item(s, id, ROW_KEY);
        if (k == NULL) {
            PyMem_Free(out);
            return NULL;
        }
        out[i].utf8 = PyUnicode_AsUTF8AndSize(k, &out[i].len);
        if (out[i].utf8 == NULL) {
            PyMem_Free(out);
            return NULL;
        }
        out[i].id = id;
    }
    sort_keys(out, ids->n, 0);
    return out;
}

/* ------------------------------------------------------------------ the output */

typedef struct {
    PyObject *bytes;
    Py_ssize_t len, cap;
} writer;

static int put(writer *w, const char *p, Py_ssize_t n) {
    if (w->len + n > w->cap) {
        Py_ssize_t cap = (w->len + n) * 2;
        if (_PyBytes_Resize(&w->bytes, cap) < 0)
            return -1;
        w->cap = cap;
    }
    memcpy(PyBytes_AS_STRING(w->bytes) + w->len, p, (size_t)n);
    w->len += n;
    return 0;
}

static int put_bytes(writer *w, PyObject *b) {
    if (!PyBytes_Check(b)) {
        PyErr_SetString(PyExc_TypeError, "expected bytes");
        return -1;
    }
    return put(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
}

#define PUT_LIT(w, lit) put((w), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* A fragment's head (everything up to and including its own "inEdges":[) is as long as
 * GraphIndex.refresh wrote it; checked against what it must end with. */
static Py_ssize_t head_len(PyObject *fragment, const ints *heads, int32_t id) {
    static const Py_ssize_t tail = sizeof(IN_EDGES) - 1;
    if (!PyBytes_Check(fragment) || id >= heads->n)
        return -1;
    Py_ssize_t head = heads->at[id];
    if (head < tail || head > PyBytes_GET_SIZE(fragment) ||
        memcmp(PyBytes_AS_STRING(fragment) + head - tail, IN_EDGES, (size_t)tail) != 0)
        return -1;
    return head;
}

/* head, in-edges from others to me, out-edges from me to others, "]}" */
static int put_node(writer *w, PyObject *fragment, Py_ssize_t head, PyObject *me,
                    PyObject **origins, Py_ssize_t n_in, PyObject **destinations,
                    Py_ssize_t n_out) {
    if (head < 0) {
        PyErr_SetString(PyExc_ValueError, "a fragment without its edge lists");
        return -1;
    }
    if (put(w, PyBytes_AS_STRING(fragment), head) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < n_in; i++) {
        if ((i > 0 && PUT_LIT(w, ",") < 0) || PUT_LIT(w, ORIGIN) < 0 ||
            put_bytes(w, origins[i]) < 0 || PUT_LIT(w, DESTINATION) < 0 || put_bytes(w, me) < 0 ||
            PUT_LIT(w, "}") < 0)
            return -1;
    }
    if (PUT_LIT(w, OUT_EDGES) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < n_out; i++) {
        if ((i > 0 && PUT_LIT(w, ",") < 0) || PUT_LIT(w, ORIGIN) < 0 || put_bytes(w, me) < 0 ||
            PUT_LIT(w, DESTINATION) < 0 || put_bytes(w, destinations[i]) < 0 || PUT_LIT(w, "}") < 0)
            return -1;
    }
    return PUT_LIT(w, "]}");
}

/* Quoted ids of the other ends, grown as needed. */
typedef struct {
    PyObject **at;
    Py_ssize_t n, cap;
} refs;

static int refs_push(refs *r, PyObject *o) {
    if (r->n == r->cap) {
        Py_ssize_t cap = r->cap ? r->cap * 2 : 64;
        PyObject **at = PyMem_Realloc(r->at, (size_t)cap * sizeof(PyObject *));
        if (at == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        r->at = at;
        r->cap = cap;
    }
    r->at[r->n++] = o; /* borrowed: the index holds them, and nothing runs Python here */
    return 0;
}

static int put_version(state *s, writer *w, int32_t v, refs *ins, refs *outs) {
    PyObject *fragment = version_item(s, v, ROW_FRAGMENT);
    if (fragment == NULL)
        return -1;
    PyObject *me = version_item(s, v, ROW_QUOTED);
    PyObject *writers_obj = version_item(s, v, ROW_WRITERS);
    PyObject *readers_obj = version_item(s, v, ROW_READERS);
    ints writers, readers;
    if (ints_open(writers_obj, &writers) < 0)
        return -1;
    if (ints_open(readers_obj, &readers) < 0) {
        ints_close(&writers);
        return -1;
    }
    int rc = -1;
    PyObject *writers_q = quoted_of(version_item(s, v, ROW_WRITERS_Q), writers.n);
    PyObject *readers_q = quoted_of(version_item(s, v, ROW_READERS_Q), readers.n);
    if (writers_q == NULL || readers_q == NULL)
        goto done;
    const int all_in = s->vflag[v] & V_EXPANDED_U, all_out = s->vflag[v] & V_EXPANDED_D;
    Py_ssize_t whole_in = 0, whole_out = 0;
    ins->n = outs->n = 0;
    for (Py_ssize_t i = 0; i < writers.n; i++) {
        int32_t r = writers.at[i];
        if (check_run(s, r) < 0)
            goto done;
        const int has_inputs = s->sides[r] & HAS_INPUTS;
        whole_in += has_inputs != 0;
        if (((s->rflag[r] & R_DOWN) || (all_in && has_inputs)) &&
            refs_push(ins, PyTuple_GET_ITEM(writers_q, i)) < 0)
            goto done;
    }
    for (Py_ssize_t i = 0; i < readers.n; i++) {
        int32_t r = readers.at[i];
        if (check_run(s, r) < 0)
            goto done;
        const int has_outputs = s->sides[r] & HAS_OUTPUTS;
        whole_out += has_outputs != 0;
        if (((s->rflag[r] & R_UP) || (all_out && has_outputs)) &&
            refs_push(outs, PyTuple_GET_ITEM(readers_q, i)) < 0)
            goto done;
    }
    if (ins->n == whole_in && outs->n == whole_out)
        rc = put_bytes(w, fragment);
    else
        rc = put_node(w, fragment, head_len(fragment, &s->version_heads, v), me, ins->at, ins->n,
                      outs->at, outs->n);
done:
    ints_close(&writers);
    ints_close(&readers);
    return rc;
}

/* The quoted ids of a run's ends (quoted: beside them in its row): all of them, or those
 * with a flag. */
static int run_ends(state *s, const ints *ends, PyObject *quoted, int every, uint8_t flag,
                    refs *out) {
    out->n = 0;
    if (quoted_of(quoted, ends->n) == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < ends->n; i++) {
        int32_t x = ends->at[i];
        if (check_node(s, x) < 0)
            return -1;
        if (!every && !(s->vflag[x] & flag))
            continue;
        if (refs_push(out, PyTuple_GET_ITEM(quoted, i)) < 0)
            return -1;
    }
    return 0;
}

static int put_run(state *s, writer *w, int32_t r, refs *ins, refs *outs) {
    const int in_down = s->rflag[r] & R_DOWN, in_up = s->rflag[r] & R_UP;
    ints inputs, outputs;
    if (ints_open(run_item(s, r, ROW_INPUTS), &inputs) < 0)
        return -1;
    if (ints_open(run_item(s, r, ROW_OUTPUTS), &outputs) < 0) {
        ints_close(&inputs);
        return -1;
    }
    int rc = -1;
    ins->n = outs->n = 0;
    if ((in_up || in_down) &&
        run_ends(s, &inputs, run_item(s, r, ROW_INPUTS_Q), in_up, V_EXPANDED_D, ins) < 0)
        goto done;
    if ((in_down || in_up) &&
        run_ends(s, &outputs, run_item(s, r, ROW_OUTPUTS_Q), in_down, V_EXPANDED_U, outs) < 0)
        goto done;
    Py_ssize_t whole_in = outputs.n ? inputs.n : 0, whole_out = inputs.n ? outputs.n : 0;
    PyObject *fragment = run_item(s, r, ROW_FRAGMENT);
    if (ins->n == whole_in && outs->n == whole_out)
        rc = put_bytes(w, fragment);
    else
        rc = put_node(w, fragment, head_len(fragment, &s->run_heads, r),
                      run_item(s, r, ROW_QUOTED), ins->at, ins->n, outs->at, outs->n);
done:
    ints_close(&inputs);
    ints_close(&outputs);
    return rc;
}

/* ------------------------------------------------------------------ entry point */

PyDoc_STRVAR(answer_doc,
             "answer(seeds, depth, downstream, upstream, rows, version_heads, run_rows,"
             " run_heads, run_sides) -> bytes\n\n"
             "The graph JSON of a walk from versions (seeds: node ids); see the module.");

static PyObject *answer(PyObject *self, PyObject *args) {
    PyObject *seeds_obj;
    Py_ssize_t depth;
    int downstream, upstream;
    state s;
    memset(&s, 0, sizeof s);
    PyObject *sides_obj, *version_heads_obj, *run_heads_obj;
    if (!PyArg_ParseTuple(args, "OnppO!OO!OO!", &seeds_obj, &depth, &downstream, &upstream,
                          &PyList_Type, &s.rows, &version_heads_obj, &PyList_Type, &s.run_rows,
                          &run_heads_obj, &PyByteArray_Type, &sides_obj))
        return NULL;
    Py_ssize_t max_node = PyList_GET_SIZE(s.rows) - 1;
    if (max_node > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "rows: more than node ids can be");
        return NULL;
    }
    s.max_node = max_node;
    s.runs = PyList_GET_SIZE(s.run_rows);
    if (PyByteArray_GET_SIZE(sides_obj) != s.runs) {
        PyErr_SetString(PyExc_TypeError, "run_sides: expected a byte per run");
        return NULL;
    }
    s.sides = (const uint8_t *)PyByteArray_AS_STRING(sides_obj);

    PyObject *result = NULL;
    keyed *versions = NULL, *runs = NULL;
    ivec seeds = {0};
    refs ins = {0}, outs = {0};
    writer w = {NULL, 0, 0};
    if (ints_open(version_heads_obj, &s.version_heads) < 0)
        return NULL;
    if (ints_open(run_heads_obj, &s.run_heads) < 0) {
        ints_close(&s.version_heads);
        return NULL;
    }
    s.vflag = PyMem_Calloc((size_t)max_node + 1, 1);
    s.rflag = PyMem_Calloc((size_t)(s.runs ? s.runs : 1), 1);
    if (s.vflag == NULL || s.rflag == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *iter = PyObject_GetIter(seeds_obj);
    if (iter == NULL)
        goto done;
    PyObject *item;
    while ((item = PyIter_Next(iter)) != NULL) {
        long v = PyLong_AsLong(item);
        Py_DECREF(item);
        if ((v == -1 && PyErr_Occurred()) || check_node(&s, (int32_t)(v > INT32_MAX ? -1 : v)) < 0 ||
            ivec_push(&seeds, (int32_t)v) < 0) {
            Py_DECREF(iter);
            goto done;
        }
        if (!(s.vflag[v] & V_LISTED)) {
            s.vflag[v] |= V_LISTED;
            if (ivec_push(&s.listed_versions, (int32_t)v) < 0) {
                Py_DECREF(iter);
                goto done;
            }
        }
    }
    Py_DECREF(iter);
    if (PyErr_Occurred())
        goto done;

    if (downstream && walk(&s, &seeds, depth, 1) < 0)
        goto done;
    if (upstream && walk(&s, &seeds, depth, 0) < 0)
        goto done;

    versions = sorted_by_key(&s, &s.listed_versions, 1);
    if (versions == NULL)
        goto done;
    runs = sorted_by_key(&s, &s.listed_runs, 0);
    if (runs == NULL)
        goto done;

    /* The listed ids in answer order (for prefetching), then sizes: a partly listed node is
     * never longer than its fragment. */
    for (Py_ssize_t i = 0; i < s.listed_versions.n; i++)
        s.listed_versions.at[i] = versions[i].id;
    for (Py_ssize_t i = 0; i < s.listed_runs.n; i++)
        s.listed_runs.at[i] = runs[i].id;
    const int32_t *vs = s.listed_versions.at, *rs = s.listed_runs.at;
    const Py_ssize_t nv = s.listed_versions.n, nr = s.listed_runs.n, bound = max_node + 1;
    Py_ssize_t size = 16 + s.listed_versions.n + s.listed_runs.n;
    for (Py_ssize_t i = 0; i < nv; i++) {
        PREFETCH(s.rows, bound, vs, i, nv, ROW_FRAGMENT, -1);
        PyObject *f = version_item(&s, vs[i], ROW_FRAGMENT);
        if (f == NULL)
            goto done;
        if (!PyBytes_Check(f)) {
            PyErr_SetString(PyExc_TypeError, "fragments must be bytes");
            goto done;
        }
        size += PyBytes_GET_SIZE(f);
    }
    for (Py_ssize_t i = 0; i < nr; i++) {
        PREFETCH(s.run_rows, s.runs, rs, i, nr, ROW_FRAGMENT, -1);
        size += PyBytes_GET_SIZE(run_item(&s, rs[i], ROW_FRAGMENT));
    }
    w.bytes = PyBytes_FromStringAndSize(NULL, size);
    if (w.bytes == NULL)
        goto done;
    w.cap = size;
    if (PUT_LIT(&w, "{\"graph\":[") < 0)
        goto done;
    Py_ssize_t written = 0;
    for (Py_ssize_t i = 0; i < nv; i++, written++) {
        PREFETCH(s.rows, bound, vs, i, nv, ROW_READERS, ROW_WRITERS);
        if ((written && PUT_LIT(&w, ",") < 0) || put_version(&s, &w, vs[i], &ins, &outs) < 0)
            goto done;
    }
    for (Py_ssize_t i = 0; i < nr; i++, written++) {
        PREFETCH(s.run_rows, s.runs, rs, i, nr, ROW_INPUTS, ROW_OUTPUTS);
        if ((written && PUT_LIT(&w, ",") < 0) || put_run(&s, &w, rs[i], &ins, &outs) < 0)
            goto done;
    }
    if (PUT_LIT(&w, "]}") < 0 || _PyBytes_Resize(&w.bytes, w.len) < 0)
        goto done;
    result = w.bytes;
    w.bytes = NULL;
done:
    Py_XDECREF(w.bytes);
    PyMem_Free(versions);
    PyMem_Free(runs);
    PyMem_Free(ins.at);
    PyMem_Free(outs.at);
    ivec_free(&seeds);
    ivec_free(&s.listed_versions);
    ivec_free(&s.listed_runs);
    PyMem_Free(s.vflag);
    PyMem_Free(s.rflag);
    ints_close(&s.version_heads);
    ints_close(&s.run_heads);
    return result;
}

static PyMethodDef methods[] = {
    {"answer", answer, METH_VARARGS, answer_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_graph_answer",
    "The lineage graph answer of a walk from versions, in C (see graph_index.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__graph_answer(void) { return PyModule_Create(&module); }
