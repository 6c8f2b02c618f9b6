/*
 * ezpz.extract._fastx: the common case of the checked tar extraction, in C.
 *
 * extract.SafeExtractor hands over the decoded block it is reading and the offset of the next
 * header. run() writes consecutive members that need nothing but the plainest handling and
 * stops, without side effects for that member, at the first one it does not take; the
 * Python loop then reads that member with all its checks and calls run() again. Taken are:
 *
 *   - regular files (type '0' or NUL) and directories (type '5') whose header and data lie
 *     whole in the block, optionally after a pax header holding nothing but one 'path' record;
 *   - with a valid unsigned header checksum, octal numeric fields, no ustar prefix field;
 *   - whose name is printable ASCII, relative (leading "./" aside), without empty, '.', '..'
 *     or over-long components, below PATH_MAX under the destination, of at least two
 *     components, whose parent directory the extraction already created as a real directory
 *     (so no component of it is a symlink of the archive) and whose top component is known to
 *     be a directory;
 *   - without setuid/setgid bits, whose size fits in the free-space budget, that is not a
 *     symlink of the archive, and whose path does not exist yet (O_EXCL / mkdir).
 *
 * Anything else (links, other types, GNU or other pax headers, errors of any kind, a write
 * that fails half-way: the partial file is left for the Python path, which clears the path
 * and reports the error in its own words) goes to the Python loop. Files are created with
 * O_NOFOLLOW|O_EXCL, their mode and mtime are set, ownership is never restored. The GIL is
 * released around each member's system calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define BLK 512
#define EZ_PATH_MAX 4096
#define EZ_NAME_MAX 255

/* Parse a numeric header field as tarfile's fast path does: optional leading spaces, octal
 * digits, then only NULs/spaces. Returns 0 and sets *out, or -1 for anything else. */
static int octal_field(const unsigned char *f, int len, long long *out)
{
    int i = 0;
    long long v = 0;
    while (i < len && f[i] == ' ')
        i++;
    while (i < len && f[i] >= '0' && f[i] <= '7') {
        if (v > (LLONG_MAX >> 3))
            return -1;
        v = (v << 3) | (f[i] - '0');
        i++;
    }
    for (; i < len; i++)
        if (f[i] != 0 && f[i] != ' ')
            return -1;
    *out = v;
    return 0;
}

/* Validate one header block: checksum, numeric fields. */
typedef struct {
    long long mode, size, mtime;
    char type;
    const unsigned char *name;
    int name_len;
} hdr_t;

static int parse_header(const unsigned char *h, hdr_t *out)
{
    long long chk;
    if (octal_field(h + 148, 8, &chk) < 0)
        return -1;
    unsigned long sum = 256;
    for (int i = 0; i < 148; i++)
        sum += h[i];
    for (int i = 156; i < BLK; i++)
        sum += h[i];
    if ((long long)sum != chk)
        return -1;
    if (octal_field(h + 100, 8, &out->mode) < 0 || octal_field(h + 124, 12, &out->size) < 0 ||
        octal_field(h + 136, 12, &out->mtime) < 0)
        return -1;
    /* uid/gid must parse too (tarfile would otherwise decide about the header) */
    long long dummy;
    if (octal_field(h + 108, 8, &dummy) < 0 || octal_field(h + 116, 8, &dummy) < 0)
        return -1;
    out->type = (char)h[156];
    out->name = h;
    const unsigned char *nul = memchr(h, 0, 100);
    out->name_len = nul ? (int)(nul - h) : 100;
    return 0;
}

/* The single 'path' record of a pax header's data, or -1. */
static int pax_path(const unsigned char *d, long long size, const unsigned char **val, int *vlen)
{
    long long len = 0;
    long long i = 0;
    while (i < size && d[i] >= '0' && d[i] <= '9') {
        len = len * 10 + (d[i] - '0');
        if (len > size)
            return -1;
        i++;
    }
    if (i == 0 || len != size || i >= size || d[i] != ' ')
        return -1;
    if (d[size - 1] != '\n')
        return -1;
    i++;
    if (size - i < 6 || memcmp(d + i, "path=", 5) != 0)
        return -1;
    *val = d + i + 5;
    *vlen = (int)(size - 1 - (i + 5));
    return 0;
}

/* Name checks (see the file comment). Returns the number of components, or -1. The name
 * has no trailing slash here. *last_slash is set to the offset of the last '/'. */
static int check_name(const unsigned char *n, int len, int dest_len, int *last_slash,
                      int *first_slash)
{
    if (len <= 0 || n[0] == '/' || n[0] == '\\')
        return -1;
    if (dest_len + 1 + len >= EZ_PATH_MAX)
        return -1;
    int comps = 0, start = 0;
    *last_slash = -1;
    *first_slash = -1;
    for (int i = 0; i <= len; i++) {
        if (i < len) {
            unsigned char c = n[i];
            if (c < 0x20 || c > 0x7e)
                return -1;
            if (c != '/')
                continue;
        }
        int clen = i - start;
        if (clen == 0 || clen > EZ_NAME_MAX)
            return -1;
        if (n[start] == '.' && (clen == 1 || (clen == 2 && n[start + 1] == '.')))
            return -1;
        comps++;
        if (i < len) {
            if (*first_slash < 0)
                *first_slash = i;
            *last_slash = i;
        }
        start = i + 1;
    }
    return comps;
}

static int write_all(int fd, const unsigned char *p, long long n)
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

/* run(buf, pos, prefix, made, dirs, files, symlinks, tops, umask, budget)
 *   -> (pos, last_header, members, files, dirs, bytes, declared) */
static PyObject *fast_run(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos;
    Py_buffer prefix;
    PyObject *made, *dirs, *files, *symlinks, *tops;
    int umask_v;
    long long budget;
    if (!PyArg_ParseTuple(args, "y*ny*O!O!O!O!O!iL", &view, &pos, &prefix, &PySet_Type, &made,
                          &PyList_Type, &dirs, &PySet_Type, &files, &PyDict_Type, &symlinks,
                          &PyDict_Type, &tops, &umask_v, &budget))
        return NULL;

    const unsigned char *buf = view.buf;
    Py_ssize_t blen = view.len;
    Py_ssize_t last_header = -1;
    long long n_members = 0, n_files = 0, n_dirs = 0, n_bytes = 0, declared = 0;
    int dest_len = (int)prefix.len - 1;
    char path[EZ_PATH_MAX + 2];
    PyObject *result = NULL;
    /* one-entry caches: consecutive members mostly share their parent and top */
    char last_parent[EZ_PATH_MAX + 2];
    int last_parent_len = -1;
    char last_top[EZ_NAME_MAX + 1];
    int last_top_len = -1;

    if (prefix.len < 1 || prefix.len > EZ_PATH_MAX || pos < 0) {
        PyErr_SetString(PyExc_ValueError, "bad prefix or position");
        goto done;
    }
    memcpy(path, prefix.buf, prefix.len);

    while (pos >= 0 && blen - pos >= BLK) {
        const unsigned char *h = buf + pos;
        hdr_t hd;
        if (parse_header(h, &hd) < 0)
            break;
        const unsigned char *name = hd.name;
        int name_len = hd.name_len;
        Py_ssize_t hpos = pos;
        if (hd.type == 'x') {
            long long psize = hd.size;
            Py_ssize_t pdata = pos + BLK;
            Py_ssize_t next = pdata + ((psize + BLK - 1) / BLK) * BLK;
            if (psize <= 0 || psize > blen || next > blen - BLK)
                break;
            const unsigned char *val;
            int vlen;
            if (pax_path(buf + pdata, psize, &val, &vlen) < 0)
                break;
            hpos = next;
            h = buf + hpos;
            if (parse_header(h, &hd) < 0)
                break;
            name = val;
            name_len = vlen;
        }
        if (h[345] != 0)  /* ustar prefix field: left to tarfile */
            break;
        int is_dir;
        if (hd.type == '0' || (hd.type == 0 && !(hd.name_len && hd.name[hd.name_len - 1] == '/')))
            is_dir = 0;
        else if (hd.type == '5')
            is_dir = 1;
        else
            break;
        if (is_dir) {
            if (hd.size != 0)
                break;
            while (name_len > 0 && name[name_len - 1] == '/')
                name_len--;
        }
        /* "./a/b" (archives made with `tar -C env -cf - .`) is "a/b", as the checks read it */
        while (name_len > 2 && name[0] == '.' && name[1] == '/') {
            name += 2;
            name_len -= 2;
        }
        long long size = is_dir ? 0 : hd.size;
        Py_ssize_t data = hpos + BLK;
        Py_ssize_t next = data + ((size + BLK - 1) / BLK) * BLK;
        if (size < 0 || size > blen || next > blen)
            break;
        long long mode = hd.mode & 07777;
        if (mode & (S_ISUID | S_ISGID))
            break;
        if (!is_dir && budget >= 0 && declared + size > budget)
            break;
        int last_slash, first_slash;
        if (check_name(name, name_len, dest_len, &last_slash, &first_slash) < 2)
            break;

        /* the top component must be known as a directory */
        if (!(last_top_len == first_slash && memcmp(last_top, name, first_slash) == 0)) {
            PyObject *top = PyUnicode_DecodeASCII((const char *)name, first_slash, NULL);
            if (!top)
                goto done;
            PyObject *v = PyDict_GetItemWithError(tops, top);
            Py_DECREF(top);
            if (!v && PyErr_Occurred())
                goto done;
            if (v != Py_True)
                break;
            memcpy(last_top, name, first_slash);
            last_top_len = first_slash;
        }
        memcpy(path + prefix.len, name, name_len);
        path[prefix.len + name_len] = 0;
        int parent_len = (int)prefix.len + last_slash;
        /* the parent must be a directory this extraction made */
        if (!(last_parent_len == parent_len && memcmp(last_parent, path, parent_len) == 0)) {
            PyObject *parent = PyUnicode_DecodeFSDefaultAndSize(path, parent_len);
            if (!parent)
                goto done;
            int r = PySet_Contains(made, parent);
            Py_DECREF(parent);
            if (r < 0)
                goto done;
            if (!r)
                break;
            memcpy(last_parent, path, parent_len);
            last_parent_len = parent_len;
        }
        PyObject *rel = PyUnicode_DecodeASCII((const char *)name, name_len, NULL);
        if (!rel)
            goto done;
        if (PyDict_GET_SIZE(symlinks)) {
            int r = PyDict_Contains(symlinks, rel);
            if (r != 0) {
                Py_DECREF(rel);
                if (r < 0)
                    goto done;
                break;
            }
        }
        PyObject *abs_path = NULL;
        if (is_dir) {
            abs_path = PyUnicode_DecodeFSDefaultAndSize(path, prefix.len + name_len);
            if (!abs_path) {
                Py_DECREF(rel);
                goto done;
            }
            int r = PySet_Contains(made, abs_path);
            if (r != 0) {
                Py_DECREF(rel);
                Py_DECREF(abs_path);
                if (r < 0)
                    goto done;
                break;
            }
        }

        int ok = 0;
        Py_BEGIN_ALLOW_THREADS
        if (is_dir) {
            ok = mkdir(path, 0700) == 0;
        } else {
            int direct = umask_v >= 0 && !(mode & umask_v);
            int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                          direct ? (mode_t)mode : 0600);
            if (fd >= 0) {
                struct timespec ts[2];
                ts[0].tv_sec = ts[1].tv_sec = (time_t)hd.mtime;
                ts[0].tv_nsec = ts[1].tv_nsec = 0;
                ok = write_all(fd, buf + data, size) == 0 &&
                     (direct || fchmod(fd, (mode_t)mode) == 0) && futimens(fd, ts) == 0;
                if (close(fd) != 0)
                    ok = 0;
            }
        }
        Py_END_ALLOW_THREADS
        if (!ok) {
            Py_DECREF(rel);
            Py_XDECREF(abs_path);
            break;  /* the Python path redoes this member and reports what went wrong */
        }
        int err = 0;
        if (is_dir) {
            PyObject *item = Py_BuildValue("(OLL)", abs_path, mode, hd.mtime);
            err = !item || PySet_Add(made, abs_path) < 0 || PyList_Append(dirs, item) < 0 ||
                  PySet_Discard(files, rel) < 0;
            Py_XDECREF(item);
            n_dirs++;
        } else {
            err = PySet_Add(files, rel) < 0;
            n_files++;
            n_bytes += size;
            declared += size;
        }
        Py_DECREF(rel);
        Py_XDECREF(abs_path);
        if (err)
            goto done;
        n_members++;
        last_header = hpos;
        pos = next;
    }
    result = Py_BuildValue("(nnLLLLL)", pos, last_header, n_members, n_files, n_dirs, n_bytes,
                           declared);
done:
    PyBuffer_Release(&view);
    PyBuffer_Release(&prefix);
    return result;
}

static PyMethodDef methods[] = {
    {"run", fast_run, METH_VARARGS,
     "run(buf, pos, prefix, made, dirs, files, symlinks, tops, umask, budget) -> "
     "(pos, last_header, members, files, dirs, bytes, declared)\n\n"
     "Write the plain members of the decoded tar block ``buf`` from ``pos`` on; stop at the "
     "first member that needs the full Python path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ezpz.extract._fastx",
    "The common case of ezpz's checked tar extraction, in C (see extract.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastx(void)
{
    return PyModule_Create(&module);
}
