/*
 * ezpz.extract._fastx: the C writer of ezpz's extraction. It holds no rules.
 *
 * write_files(records, umask) -> (written, errno)
 *
 * Each record is a tuple (dirfd, leaf, mode, mtime, data) of a regular file the checks in
 * Python (ezpz.extract.checks) have already accepted: dirfd is a descriptor of the
 * directory that holds it (resolved beneath the destination without following a symlink,
 * see ezpz.anchored), leaf its last path component (bytes), mode the permission bits to
 * apply, data a buffer holding its whole content (a view of the decoded block: no copy).
 *
 * With the GIL released, the records are written in order: openat(dirfd, leaf,
 * O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW), the data, the mode (created with it when the umask
 * keeps it, else fchmod), the mtime (futimens), close. The first record that fails stops the
 * batch: its index and errno are returned (written == len(records) and errno 0 when all
 * succeeded); Python reports or handles it (EEXIST: nothing was created). Ownership is never
 * restored. The only checks here are of the interface: a leaf is one non-empty component.
 *
 * find_all(data, needle, start, limit) -> list of offsets
 *
 * The offsets (from start on, at most limit of them) where needle occurs in data, found with
 * memmem with the GIL released: relocation's look for the old prefix in each decoded block.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

typedef struct {
    int dirfd;
    const char *leaf;
    int mode;
    long long mtime;
    Py_buffer data;
    int has_data;
} rec_t;

static int write_all(int fd, const char *p, Py_ssize_t n)
{
    while (n > 0) {
        size_t take = n > (1 << 30) ? (1 << 30) : (size_t)n;
        ssize_t w = write(fd, p, take);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= w;
    }
    return 0;
}

static int write_one(const rec_t *r, int umask_v)
{
    int direct = umask_v >= 0 && !(r->mode & umask_v);
    int fd = openat(r->dirfd, r->leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    direct ? (mode_t)r->mode : 0600);
    if (fd < 0)
        return errno;
    int err = 0;
    struct timespec ts[2];
    ts[0].tv_sec = ts[1].tv_sec = (time_t)r->mtime;
    ts[0].tv_nsec = ts[1].tv_nsec = 0;
    if (write_all(fd, r->data.buf, r->data.len) != 0 ||
        (!direct && fchmod(fd, (mode_t)r->mode) != 0) || futimens(fd, ts) != 0)
        err = errno;
    if (close(fd) != 0 && !err)
        err = errno;
    return err;
}

static int leaf_ok(const char *s, Py_ssize_t n)
{
    if (n <= 0 || n > 255 || memchr(s, '/', n) || memchr(s, 0, n))
        return 0;
    if (s[0] == '.' && (n == 1 || (n == 2 && s[1] == '.')))
        return 0;
    return 1;
}

static PyObject *write_files(PyObject *self, PyObject *args)
{
    PyObject *list;
    int umask_v;
    if (!PyArg_ParseTuple(args, "O!i", &PyList_Type, &list, &umask_v))
        return NULL;
    PyObject *items = PySequence_Tuple(list); /* a private, immutable copy of the batch */
    if (!items)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    rec_t *recs = PyMem_Calloc(n ? n : 1, sizeof(rec_t));
    PyObject *result = NULL;
    Py_ssize_t ready = 0;
    if (!recs) {
        PyErr_NoMemory();
        goto done;
    }
    for (; ready < n; ready++) {
        PyObject *t = PyTuple_GET_ITEM(items, ready);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 5) {
            PyErr_SetString(PyExc_TypeError, "a record is (dirfd, leaf, mode, mtime, data)");
            goto done;
        }
        rec_t *r = &recs[ready];
        PyObject *leaf = PyTuple_GET_ITEM(t, 1);
        if (!PyBytes_Check(leaf) || !leaf_ok(PyBytes_AS_STRING(leaf), PyBytes_GET_SIZE(leaf))) {
            PyErr_SetString(PyExc_ValueError, "a leaf is one non-empty path component (bytes)");
            goto done;
        }
        r->leaf = PyBytes_AS_STRING(leaf);
        r->dirfd = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 0));
        r->mode = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 2)) & 07777;
        r->mtime = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 3));
        if (PyErr_Occurred())
            goto done;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(t, 4), &r->data, PyBUF_SIMPLE) < 0)
            goto done;
        r->has_data = 1;
    }
    Py_ssize_t i = 0;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    for (; i < n; i++) {
        err = write_one(&recs[i], umask_v);
        if (err)
            break;
    }
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("(ni)", i, err);
done:
    if (recs) {
        for (Py_ssize_t k = 0; k < ready; k++)
            if (recs[k].has_data)
                PyBuffer_Release(&recs[k].data);
        PyMem_Free(recs);
    }
    Py_DECREF(items);
    return result;
}

static PyObject *find_all(PyObject *self, PyObject *args)
{
    Py_buffer data, needle;
    Py_ssize_t start, limit;
    if (!PyArg_ParseTuple(args, "y*y*nn", &data, &needle, &start, &limit))
        return NULL;
    PyObject *out = NULL;
    Py_ssize_t *found = NULL;
    Py_ssize_t count = 0;
    if (needle.len <= 0 || start < 0 || limit < 0) {
        PyErr_SetString(PyExc_ValueError, "find_all: an empty needle or a negative start/limit");
        goto done;
    }
    found = PyMem_Malloc((limit ? limit : 1) * sizeof(Py_ssize_t));
    if (!found) {
        PyErr_NoMemory();
        goto done;
    }
    const char *base = data.buf;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t pos = start;
    while (count < limit && pos + needle.len <= data.len) {
        const char *hit = memmem(base + pos, (size_t)(data.len - pos), needle.buf,
                                 (size_t)needle.len);
        if (!hit)
            break;
        found[count++] = hit - base;
        pos = hit - base + 1;
    }
    Py_END_ALLOW_THREADS
    out = PyList_New(count);
    for (Py_ssize_t k = 0; out && k < count; k++) {
        PyObject *v = PyLong_FromSsize_t(found[k]);
        if (!v) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k, v);
    }
done:
    PyMem_Free(found);
    PyBuffer_Release(&data);
    PyBuffer_Release(&needle);
    return out;
}

static PyMethodDef methods[] = {
    {"find_all", find_all, METH_VARARGS,
     "find_all(data, needle, start, limit) -> list of offsets\n\n"
     "Where needle occurs in data from start on (at most limit offsets), GIL released."},
    {"write_files", write_files, METH_VARARGS,
     "write_files(records, umask) -> (written, errno)\n\n"
     "Write accepted regular files: records are (dirfd, leaf, mode, mtime, data); the first "
     "failure stops the batch (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ezpz.extract._fastx",
    "The C writer of ezpz's extraction: batches of accepted files, GIL released.", -1, methods,
};

PyMODINIT_FUNC PyInit__fastx(void)
{
    return PyModule_Create(&module);
}
