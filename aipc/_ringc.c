/* aipc._ringc: the per-message steps of a shared-memory ring, compiled.
 *
 * Optional: the package build compiles it when a C compiler is there
 * (hatch_build.py), and aipc/_ring.py runs the same steps in Python when it
 * is not, or when AIPC_PURE_PYTHON=1 is set. See docs/rings.md.
 *
 * RingCore is the base class of aipc's ring ends. It holds the hot state of
 * an end as C fields, which Python reads and writes as ordinary attributes
 * (``_head``, ``_tail``, ...), so that every path of aipc/_ring.py keeps
 * working on the same state, and adds the two steps every message takes:
 *
 *   _cput(data)  the sender's: write one record at head if it fits, publish
 *                head (release store), full fence, read the receiver's
 *                sleep generation, ring its doorbell if it sleeps
 *   _ctake()     the receiver's: copy out the plain record at tail, publish
 *                tail, full fence, read the sender's generation, ring it if
 *                it sleeps waiting for room
 *
 * Records and the wake-up protocol are those of aipc/_ring.py's module
 * docstring; anything else (padding, batch records, a corrupt record, a
 * closed end) is left to the Python code, which raises the right error. The
 * shared words are read and written with the compiler's atomics (acquire
 * loads, release stores, a sequentially consistent fence), which is what the
 * protocol needs on any machine.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* header word indices: keep in step with aipc/_ring.py */
#define W_HEAD 8
#define W_TAIL 16
#define W_RX_SEQ 24
#define W_TX_SEQ 32
#define W_TX_CLOSED 40
#define W_RX_CLOSED 48
#define HEADER_WORDS 512 /* 4096 bytes */

/* _cput's answers */
#define PUT_SENT 1
#define PUT_FULL 0      /* no room: _need says how much is needed */
#define PUT_CLOSED -1   /* this end is closed */
#define PUT_BROKEN -2   /* the receiver closed the ring or died */
#define PUT_PYTHON -3   /* let the Python path decide (a corrupt tail) */

#define VERSION 3

typedef struct {
    PyObject_HEAD
    uint64_t *hdr;          /* NULL when not bound */
    unsigned char *data;
    long long head;         /* the sender's own / the last one the receiver saw */
    long long tail;         /* the receiver's own / the last one the sender saw */
    long long cap;
    long long need;
    long long seq;          /* this end's sleep generation (even: awake) */
    long long signalled;    /* the peer generation last rung for */
    long long messages;
    long long bytes;
    long long wakeups;
    int peer_fd;            /* the peer's doorbell (an eventfd) */
    char closed;
    char peer_gone;
} RingCore;

static inline uint64_t
load(uint64_t *word)
{
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

/* After publishing: ring the doorbell of a peer seen asleep in generation
 * seq, once per generation. 0 done, -1 with an exception set, 1 the doorbell
 * is gone (this end was closed). */
static int
wake_peer(RingCore *self, uint64_t seq)
{
    if ((long long)seq == self->signalled) {
        return 0;
    }
    self->signalled = (long long)seq;
    if (self->peer_fd < 0) {
        return 1;
    }
    uint64_t one = 1;
    while (write(self->peer_fd, &one, sizeof one) < 0) {
        if (errno == EAGAIN) {
            break; /* the count is at its maximum: the peer is woken anyway */
        }
        if (errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        /* as os.eventfd_write does (PEP 475): run the signal handlers, and
         * retry unless one of them raised */
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
    self->wakeups++;
    return 0;
}

/* Publish head (the sender) or tail (the receiver) at word w, then the full
 * fence, then the peer's generation at word seq_w: ring it if it sleeps.
 * 1 done, 0 the doorbell is gone (closed meanwhile), -1 an exception. */
static int
publish(RingCore *self, int w, long long value, int seq_w)
{
    uint64_t *hdr = self->hdr;
    __atomic_store_n(&hdr[w], (uint64_t)value, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* StoreLoad: the word, then the generation */
    uint64_t seq = load(&hdr[seq_w]);
    if (seq & 1) {
        int r = wake_peer(self, seq);
        if (r) {
            return r > 0 ? 0 : -1;
        }
    }
    return 1;
}

static PyObject *
core_bind(RingCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_bind(header, data, peer_fd)");
        return NULL;
    }
    Py_buffer hdr, data;
    if (PyObject_GetBuffer(args[0], &hdr, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &data, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&hdr);
        return NULL;
    }
    int fd = PyLong_AsLong(args[2]);
    int ok = !(fd == -1 && PyErr_Occurred());
    if (ok && (hdr.len < HEADER_WORDS * 8 || ((uintptr_t)hdr.buf & 7)
               || data.len != self->cap || ((uintptr_t)data.buf & 7)
               || self->cap < 16 || (self->cap & (self->cap - 1)))) {
        PyErr_SetString(PyExc_ValueError,
                        "_bind: a 4096-byte header and a data area of _cap bytes, "
                        "8-byte aligned, _cap a power of two");
        ok = 0;
    }
    /* The pointers outlive the buffers: the caller keeps both views (and the
     * mapping under them) until it calls _unbind(). */
    if (ok) {
        self->hdr = (uint64_t *)hdr.buf;
        self->data = (unsigned char *)data.buf;
        self->peer_fd = fd;
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&hdr);
    if (!ok) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
core_unbind(RingCore *self, PyObject *unused)
{
    self->hdr = NULL;
    self->data = NULL;
    self->peer_fd = -1;
    Py_RETURN_NONE;
}

/* Whether this sender may send at all: PUT_SENT, PUT_CLOSED or PUT_BROKEN. */
static int
sendable(RingCore *self)
{
    if (self->closed || self->hdr == NULL) {
        return PUT_CLOSED;
    }
    if (load(&self->hdr[W_RX_CLOSED]) || self->peer_gone) {
        return PUT_BROKEN;
    }
    return PUT_SENT;
}

/* Whether an n-byte record fits at head now (a padding record first if it
 * does not fit before the end of the area). PUT_SENT: it fits, and *rec is
 * where the record starts (self->head, or 0 mod cap after padding); else
 * PUT_FULL (self->need set), PUT_CLOSED, PUT_BROKEN or PUT_PYTHON. */
static int
room(RingCore *self, long long n, long long *rec)
{
    int code = sendable(self);
    if (code != PUT_SENT) {
        return code;
    }
    long long cap = self->cap, head = self->head;
    if (n < 0 || n > cap / 2 - 8) {
        return PUT_PYTHON; /* the caller checks the size first */
    }
    long long off = head & (cap - 1);
    long long size = 8 + ((n + 7) & -8);
    long long to_end = cap - off;
    long long need = size <= to_end ? size : to_end + size;
    if (cap - (head - self->tail) < need) {
        /* the receiver's word: a peer may have written anything there */
        uint64_t raw = load(&self->hdr[W_TAIL]);
        if (raw > (uint64_t)head || (uint64_t)head - raw > (uint64_t)cap) {
            return PUT_PYTHON; /* corrupt: the Python steps raise */
        }
        self->tail = (long long)raw;
        if (cap - (head - self->tail) < need) {
            self->need = need;
            return PUT_FULL;
        }
    }
    *rec = size > to_end ? head + to_end : head;
    return PUT_SENT;
}

/* The n-byte record at rec is written: its word (and the padding from
 * self->head to rec, if any), then the count and the publish of head. */
static PyObject *
send_record(RingCore *self, long long rec, long long n)
{
    long long mask = self->cap - 1;
    unsigned char *data = self->data;
    if (rec != self->head) {
        *(uint64_t *)(data + (self->head & mask)) = 1; /* padding to the end */
    }
    *(uint64_t *)(data + (rec & mask)) = (uint64_t)n << 1;
    self->bytes += n;
    self->messages++;
    self->head = rec + 8 + ((n + 7) & -8);
    int r = publish(self, W_HEAD, self->head, W_RX_SEQ);
    if (r < 0) {
        return NULL;
    }
    return PyLong_FromLong(r ? PUT_SENT : PUT_CLOSED);
}

/* The plain record at tail: the offset of its payload in the data area,
 * with *n its length and *after the tail after it; -1 when the Python steps
 * decide (nothing there, padding, a batch record, corruption, closed). */
static long long
plain_record(RingCore *self, long long *n, long long *after)
{
    uint64_t *hdr = self->hdr;
    if (self->closed || hdr == NULL) {
        return -1;
    }
    long long cap = self->cap, tail = self->tail, head = self->head;
    if (head == tail) {
        /* the sender's word: a peer may have written anything there */
        uint64_t raw = load(&hdr[W_HEAD]);
        if (raw <= (uint64_t)tail || raw - (uint64_t)tail > (uint64_t)cap) {
            return -1;
        }
        head = (long long)raw;
        self->head = head;
    }
    long long off = tail & (cap - 1);
    uint64_t word = *(uint64_t *)(self->data + off);
    if ((word & 1) || (word >> 1) > (uint64_t)cap) {
        return -1;
    }
    long long size = 8 + (((long long)(word >> 1) + 7) & -8);
    if (size > head - tail || off + size > cap) {
        return -1;
    }
    *n = (long long)(word >> 1);
    *after = tail + size;
    return off + 8;
}

static PyObject *
core_put(RingCore *self, PyObject *item)
{
    Py_buffer view;
    const char *src;
    long long n, rec;
    int release = 0;
    if (PyBytes_CheckExact(item)) {
        src = PyBytes_AS_STRING(item);
        n = PyBytes_GET_SIZE(item);
    }
    else {
        if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        src = view.buf;
        n = view.len;
        release = 1;
    }
    int code = room(self, n, &rec);
    if (code == PUT_SENT && n) {
        memcpy(self->data + (rec & (self->cap - 1)) + 8, src, (size_t)n);
    }
    if (release) {
        PyBuffer_Release(&view);
    }
    if (code != PUT_SENT) {
        return PyLong_FromLong(code);
    }
    return send_record(self, rec, n);
}

/* receive_lease's plain record: (offset of the payload in the data area,
 * its length, tail after it), counted as received; None for the Python
 * steps. The caller made sure something is there. */
static PyObject *
core_lease(RingCore *self, PyObject *unused)
{
    long long n, after;
    long long start = plain_record(self, &n, &after);
    if (start < 0) {
        Py_RETURN_NONE;
    }
    self->messages++;
    self->bytes += n;
    return Py_BuildValue("(LLL)", start, n, after);
}

/* A lease ended: give its room back up to tail (and ring a sender waiting
 * for it). 1 done, 0 for the Python steps. */
static PyObject *
core_release(RingCore *self, PyObject *arg)
{
    long long tail = PyLong_AsLongLong(arg);
    if (tail == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (self->closed || self->hdr == NULL) {
        return PyLong_FromLong(0);
    }
    if (tail == self->tail) {
        return PyLong_FromLong(1);
    }
    self->tail = tail;
    int r = publish(self, W_TAIL, tail, W_TX_SEQ);
    if (r < 0) {
        return NULL;
    }
    return PyLong_FromLong(r);
}

/* loan(n)'s room: (offset of the payload in the data area, head before
 * (padding included), head where the record starts) if it fits now; else
 * 0 no room (_need set), -1 closed, -2 broken, -3 the Python steps. */
static PyObject *
core_loan(RingCore *self, PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg), rec;
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int code = room(self, n, &rec);
    if (code != PUT_SENT) {
        return PyLong_FromLong(code);
    }
    return Py_BuildValue("(LLL)", (rec & (self->cap - 1)) + 8, self->head, rec);
}

/* commit(n) of a loan made at (start, head): the padding word if any, the
 * record word, then publish. 1 sent, -1 closed, -2 broken, -3 Python. */
static PyObject *
core_commit(RingCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_ccommit(start, head, n)");
        return NULL;
    }
    long long start = PyLong_AsLongLong(args[0]);
    long long rec = PyLong_AsLongLong(args[1]);
    long long n = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    int code = sendable(self);
    if (code != PUT_SENT) {
        return PyLong_FromLong(code);
    }
    long long cap = self->cap;
    /* what loan() lent: the record at rec, after padding from start */
    if (start != self->head || rec < start || rec - start >= cap || n < 0
        || n > cap / 2 - 8 || (rec & (cap - 1)) + 8 + ((n + 7) & -8) > cap) {
        return PyLong_FromLong(PUT_PYTHON);
    }
    return send_record(self, rec, n);
}

static PyObject *
core_take(RingCore *self, PyObject *unused)
{
    long long n, after;
    long long start = plain_record(self, &n, &after);
    if (start < 0) {
        Py_RETURN_NONE;
    }
    PyObject *item = PyBytes_FromStringAndSize((const char *)self->data + start, n);
    if (item == NULL) {
        return NULL;
    }
    self->tail = after;
    self->messages++;
    self->bytes += n;
    if (publish(self, W_TAIL, after, W_TX_SEQ) < 0) {
        Py_DECREF(item);
        return NULL;
    }
    return item;
}

/* The receiver's wait, before it sleeps: 1 if a message can be taken
 * (head moved), 0 if it may sleep (its generation made odd, a full fence, and
 * head and the sender's closed flag re-checked: the wake-up protocol; call
 * _cwoke() after the wait), -1 for the Python steps to decide (this end
 * closed, the sender closed or gone, a corrupt head). */
static PyObject *
core_ready(RingCore *self, PyObject *unused)
{
    uint64_t *hdr = self->hdr;
    if (self->closed || hdr == NULL) {
        return PyLong_FromLong(-1);
    }
    long long tail = self->tail;
    if (self->head != tail) {
        return PyLong_FromLong(1);
    }
    for (;;) {
        /* the flag before head: the sender publishes its last head before
         * the flag, so a set flag and an unchanged head mean the end */
        uint64_t closed = load(&hdr[W_TX_CLOSED]);
        uint64_t head = load(&hdr[W_HEAD]);
        if (head != (uint64_t)tail) {
            if (head < (uint64_t)tail || head - (uint64_t)tail > (uint64_t)self->cap) {
                return PyLong_FromLong(-1); /* corrupt: the Python steps raise */
            }
            self->head = (long long)head;
            return PyLong_FromLong(1);
        }
        if (closed || self->peer_gone) {
            return PyLong_FromLong(-1);
        }
        uint64_t seq = (uint64_t)self->seq + 1; /* odd: going to sleep */
        __atomic_store_n(&hdr[W_RX_SEQ], seq, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* StoreLoad: the generation, then the re-check */
        if (load(&hdr[W_HEAD]) == (uint64_t)tail && !load(&hdr[W_TX_CLOSED])) {
            return PyLong_FromLong(0);
        }
        /* the sender acted meanwhile: awake again, and look once more */
        self->seq += 2;
        __atomic_store_n(&hdr[W_RX_SEQ], (uint64_t)self->seq, __ATOMIC_RELAXED);
    }
}

/* After the wait that _cready() allowed (also when it failed): awake. */
static PyObject *
core_woke(RingCore *self, PyObject *unused)
{
    self->seq += 2;
    if (!self->closed && self->hdr != NULL) {
        __atomic_store_n(&self->hdr[W_RX_SEQ], (uint64_t)self->seq, __ATOMIC_RELAXED);
    }
    Py_RETURN_NONE;
}

static PyObject *
ringc_fence(PyObject *module, PyObject *unused)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"_bind", (PyCFunction)(void (*)(void))core_bind, METH_FASTCALL,
     "_bind(header, data, peer_fd): point at the mapped views (kept by the caller)."},
    {"_unbind", (PyCFunction)core_unbind, METH_NOARGS,
     "_unbind(): forget the views and the doorbell (before they are released)."},
    {"_cput", (PyCFunction)core_put, METH_O,
     "_cput(data) -> 1 sent, 0 no room (_need set), -1 closed, -2 broken, "
     "-3 the Python path decides."},
    {"_ctake", (PyCFunction)core_take, METH_NOARGS,
     "_ctake() -> the next plain record as bytes, or None: the Python path decides."},
    {"_clease", (PyCFunction)core_lease, METH_NOARGS,
     "_clease() -> (payload offset, length, tail after) of the plain record "
     "at tail, counted as received, or None: the Python steps decide."},
    {"_crelease", (PyCFunction)core_release, METH_O,
     "_crelease(tail) -> 1 the room up to tail given back (and the sender "
     "rung if it waits), 0 the Python steps decide."},
    {"_cloan", (PyCFunction)core_loan, METH_O,
     "_cloan(n) -> (payload offset, head before, record head), or 0 no room "
     "(_need set), -1 closed, -2 broken, -3 the Python steps decide."},
    {"_ccommit", (PyCFunction)(void (*)(void))core_commit, METH_FASTCALL,
     "_ccommit(start, head, n) -> 1 sent, -1 closed, -2 broken, -3 the Python "
     "steps decide."},
    {"_cready", (PyCFunction)core_ready, METH_NOARGS,
     "_cready() -> 1 a message is there, 0 asleep (call _cwoke() after the "
     "wait), -1 the Python steps decide."},
    {"_cwoke", (PyCFunction)core_woke, METH_NOARGS,
     "_cwoke(): the receiver's wait ended; its generation is even again."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef core_members[] = {
    {"_head", T_LONGLONG, offsetof(RingCore, head), 0, NULL},
    {"_tail", T_LONGLONG, offsetof(RingCore, tail), 0, NULL},
    {"_cap", T_LONGLONG, offsetof(RingCore, cap), 0, NULL},
    {"_need", T_LONGLONG, offsetof(RingCore, need), 0, NULL},
    {"_seq", T_LONGLONG, offsetof(RingCore, seq), 0, NULL},
    {"_signalled", T_LONGLONG, offsetof(RingCore, signalled), 0, NULL},
    {"_messages", T_LONGLONG, offsetof(RingCore, messages), 0, NULL},
    {"_bytes", T_LONGLONG, offsetof(RingCore, bytes), 0, NULL},
    {"_wakeups", T_LONGLONG, offsetof(RingCore, wakeups), 0, NULL},
    {"_closed", T_BOOL, offsetof(RingCore, closed), 0, NULL},
    {"_peer_gone", T_BOOL, offsetof(RingCore, peer_gone), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *
core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* the subclasses' __init__ sets the fields */
    RingCore *self = (RingCore *)PyType_GenericNew(type, args, kwds);
    if (self != NULL) {
        self->peer_fd = -1;
        self->signalled = -1;
    }
    return (PyObject *)self;
}

static int
core_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    return 0; /* takes whatever the subclass's __init__ passes on */
}

static PyTypeObject RingCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aipc._ringc.RingCore",
    .tp_basicsize = sizeof(RingCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The compiled hot state and per-message steps of a ring end.",
    .tp_methods = core_methods,
    .tp_members = core_members,
    .tp_init = core_init,
    .tp_new = core_new,
};

static PyMethodDef module_methods[] = {
    {"fence", ringc_fence, METH_NOARGS, "A full memory fence."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ringc_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aipc._ringc",
    .m_doc = "The per-message steps of aipc's shared-memory rings, compiled.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__ringc(void)
{
    if (PyType_Ready(&RingCoreType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&ringc_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&RingCoreType);
    if (PyModule_AddObject(m, "RingCore", (PyObject *)&RingCoreType) < 0
        || PyModule_AddIntConstant(m, "VERSION", VERSION) < 0) {
        Py_DECREF(&RingCoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
