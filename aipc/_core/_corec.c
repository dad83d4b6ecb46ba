/* aipc._core._corec: the checkpoint's decision, the readiness watcher's hot
 * steps and the common case of a pipe's send and receive, compiled.
 *
 * Optional, like aipc/_ringc.c: the package build compiles it when a C
 * compiler is there (hatch_build.py), and aipc/_core/_fd.py runs the same
 * steps in Python when it is not, or when AIPC_PURE_PYTHON=1 is set.
 *
 * skip_checkpoint() is _fd.py's _skip_checkpoint_py(), step for step: every
 * send and most receives of every mechanism ask it whether their checkpoint
 * may skip its pass of the loop. On asyncio's own loop and uvloop the Python
 * steps cost 0.5 to 0.9 µs here, a fifth of them in the getpid() system call
 * that asyncio's _get_running_loop() makes (running_loop() below avoids it);
 * compiled, they are a handful of attribute reads. running_loop() is
 * also what _fd.py's readiness waits use to tell that a watcher belongs to
 * the loop running now. On trio the Python steps
 * (_nothing_to_run_trio) are called: trio's state is plain attributes, which
 * the interpreter's specialised reads get faster than PyObject_GetAttr does.
 *
 * The state stays in _fd.py's module globals, where the Python steps and the
 * tests read and write it (_skipped, _last_loop): bind() hands this module
 * that dict. A loop or task without asyncio's private state gets False, as
 * in Python; a _last_loop of another shape is left to the Python steps.
 *
 * WatcherCore is the base class of _fd.py's _Watcher where this is built:
 * the registration's fields in C, and _cfire / _carm, which _fd.py installs
 * as the watcher's loop callback and arm(). Every wait on asyncio and uvloop
 * goes through both, so they are _fd.py's Python steps made compiled, step
 * for step; the Python steps stay (_WATCHER_PYTHON_STEPS), and the tests run
 * both on the same fields.
 *
 * ReceiveCore and SendCore are the base classes of _stream.py's
 * FdReceiveStream and FdSendStream where this is built: their state in C
 * fields (Python objects, which the Python steps read and write too), and
 * _creceive / _csend, the first step of every receive and send of a pipe or
 * a FIFO, which hand everything but the common case back to the Python steps
 * without having consumed or written anything.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define VERSION 4

/* bound by bind(): _fd.py's globals and what the steps read from them once */
static PyObject *g_globals;        /* _fd's module dict */
static PyObject *g_python;         /* _skip_checkpoint_py: the fallback */
static PyObject *g_trio_steps;     /* _nothing_to_run_trio */
static PyObject *g_learn_loop;     /* _learn_loop(loop) -> entry */
static PyObject *g_only_stale;     /* _only_stale_fires(ready) -> bool */
static PyObject *g_get_loop;       /* asyncio.events._get_running_loop */
static PyObject *g_current_tasks;  /* asyncio.tasks._current_tasks */
static PyObject *g_sniffio_thread; /* sniffio.thread_local */
static PyObject *g_sniffio_cvar;   /* sniffio.current_async_library_cvar */
static PyObject *g_asyncio_kind;   /* _ASYNCIO */
static PyObject *g_uvloop_kind;    /* _UVLOOP */
static long g_budget;              /* SKIP_BUDGET */
static Py_ssize_t g_uv_max_timers; /* _UV_MAX_TIMERS */
static Py_ssize_t g_large;         /* LARGE_OPERATION */

static PyObject *s_skipped, *s_last_loop, *s_name;
static PyObject *s_asyncio, *s_trio, *s_ready, *s_scheduled, *s_when;
static PyObject *s_time, *s_clock_resolution, *s_must_cancel, *s_anyio;

/* the answers of the steps below; ERROR: an exception is set */
#define NO 0
#define YES 1
#define PYTHON 2
#define ERROR -1

static int
truth_of(PyObject *obj) /* steals obj */
{
    if (obj == NULL) {
        return ERROR;
    }
    int r = PyObject_IsTrue(obj);
    Py_DECREF(obj);
    return r < 0 ? ERROR : r;
}

static int
attr_true(PyObject *obj, PyObject *name)
{
    return truth_of(PyObject_GetAttr(obj, name));
}

/* a < b for two objects, as Python's "<" */
static int
less(PyObject *a, PyObject *b, int op)
{
    return PyObject_RichCompareBool(a, b, op);
}

/* The running loop without asyncio's getpid().
 *
 * CPython 3.11's _get_running_loop() makes a getpid() system call on every
 * call, to tell a forked child from its parent (0.2 µs here, a tenth of a
 * decision). asyncio keeps the running loop in a holder object in the
 * thread's state dict and makes a new holder each time a thread starts or
 * stops running a loop. So while the thread's holder is the very object
 * seen last time (kept referenced here, so its address cannot be reused)
 * and no fork happened since (forget(), registered with
 * os.register_at_fork), the running loop is the one asyncio answered then.
 * Where there is no such holder (CPython 3.12 keeps the loop elsewhere and
 * dropped the getpid()), asyncio is asked each time. The price: the holder
 * seen last, and the loop it names, stay referenced until a decision sees
 * another one (a finished loop object outlives asyncio.run() by that much,
 * closed). */
static PyObject *s_holder_key;
static PyObject *c_holder; /* the holder seen last, or NULL */
static PyObject *c_loop;   /* the running loop it stood for */
static unsigned long c_thread;

static PyObject *
running_loop(void)
{
    PyObject *holder = NULL;
    PyObject *tsdict = PyThreadState_GetDict();
    unsigned long thread = PyThread_get_thread_ident();
    if (tsdict != NULL) {
        holder = PyDict_GetItemWithError(tsdict, s_holder_key);
        if (holder == NULL && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (holder != NULL && holder == c_holder && thread == c_thread) {
        return Py_NewRef(c_loop);
    }
    PyObject *loop = PyObject_CallNoArgs(g_get_loop);
    if (loop != NULL && loop != Py_None && holder != NULL) {
        c_thread = thread;
        Py_XSETREF(c_holder, Py_NewRef(holder));
        Py_XSETREF(c_loop, Py_NewRef(loop));
    }
    return loop;
}

static PyObject *
running_loop_py(PyObject *module, PyObject *unused)
{
    if (g_get_loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "aipc._core._corec is not bound");
        return NULL;
    }
    return running_loop();
}

static PyObject *
forget(PyObject *module, PyObject *unused)
{
    Py_CLEAR(c_holder);
    Py_CLEAR(c_loop);
    c_thread = 0;
    Py_RETURN_NONE;
}

/* _nothing_to_run(): asyncio's own loop and uvloop */
static int
asyncio_step(void)
{
    PyObject *loop = running_loop();
    if (loop == NULL) {
        return ERROR;
    }
    int answer = ERROR;
    PyObject *entry = PyDict_GetItemWithError(g_globals, s_last_loop);
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4) {
        answer = PYTHON;
        goto done;
    }
    Py_INCREF(entry);
    PyObject *known = PyObject_CallNoArgs(PyTuple_GET_ITEM(entry, 0));
    if (known == NULL) {
        Py_DECREF(entry);
        goto done;
    }
    Py_DECREF(known); /* only its identity matters; entry keeps it alive */
    if (known != loop) {
        Py_SETREF(entry, PyObject_CallOneArg(g_learn_loop, loop));
        if (entry == NULL) {
            goto done;
        }
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4) {
            Py_DECREF(entry);
            answer = PYTHON;
            goto done;
        }
    }
    PyObject *kind = PyTuple_GET_ITEM(entry, 1);
    if (kind == g_asyncio_kind) {
        PyObject *ready = PyObject_GetAttr(loop, s_ready);
        if (ready == NULL) {
            goto attr_error;
        }
        int r = PyObject_IsTrue(ready);
        if (r > 0) {
            r = truth_of(PyObject_CallOneArg(g_only_stale, ready));
            r = r == ERROR ? ERROR : !r;
        }
        Py_DECREF(ready);
        if (r != 0) {
            if (r < 0) {
                goto attr_error;
            }
            answer = NO;
            goto out;
        }
        PyObject *scheduled = PyObject_GetAttr(loop, s_scheduled);
        if (scheduled == NULL) {
            goto attr_error;
        }
        r = PyObject_IsTrue(scheduled);
        if (r > 0) {
            /* scheduled[0]._when < loop.time() + loop._clock_resolution */
            PyObject *first = PySequence_GetItem(scheduled, 0);
            PyObject *when = first ? PyObject_GetAttr(first, s_when) : NULL;
            Py_XDECREF(first);
            PyObject *now = when ? PyObject_CallMethodNoArgs(loop, s_time) : NULL;
            PyObject *res = now ? PyObject_GetAttr(loop, s_clock_resolution) : NULL;
            PyObject *limit = res ? PyNumber_Add(now, res) : NULL;
            r = limit ? less(when, limit, Py_LT) : -1;
            Py_XDECREF(when);
            Py_XDECREF(now);
            Py_XDECREF(res);
            Py_XDECREF(limit);
        }
        Py_DECREF(scheduled);
        if (r != 0) {
            if (r < 0) {
                goto attr_error;
            }
            answer = NO;
            goto out;
        }
    }
    else if (kind == g_uvloop_kind) {
        /* a uvloop handle hides whether it is cancelled: any entry counts */
        int r = PyObject_IsTrue(PyTuple_GET_ITEM(entry, 2));
        if (r != 0) {
            answer = r < 0 ? ERROR : NO;
            goto out;
        }
        PyObject *timers = PyTuple_GET_ITEM(entry, 3);
        Py_ssize_t count = PyObject_Size(timers);
        if (count < 0) {
            goto attr_error;
        }
        if (count > g_uv_max_timers) {
            answer = NO;
            goto out;
        }
        if (count) {
            PyObject *now = PyObject_CallMethodNoArgs(loop, s_time);
            PyObject *it = now ? PyObject_GetIter(timers) : NULL;
            PyObject *timer;
            r = 0;
            while (it && r == 0 && (timer = PyIter_Next(it)) != NULL) {
                PyObject *when = PyObject_CallMethod(timer, "when", NULL);
                r = when ? less(when, now, Py_LE) : -1;
                Py_XDECREF(when);
                Py_DECREF(timer);
            }
            if (it == NULL || PyErr_Occurred()) {
                r = -1;
            }
            Py_XDECREF(it);
            Py_XDECREF(now);
            if (r != 0) {
                if (r < 0) {
                    goto attr_error;
                }
                answer = NO;
                goto out;
            }
        }
    }
    else {
        answer = NO;
        goto out;
    }
    {
        PyObject *task = PyDict_GetItemWithError(g_current_tasks, loop);
        if (task == NULL) {
            answer = PyErr_Occurred() ? ERROR : NO;
            goto out;
        }
        int r = attr_true(task, s_must_cancel);
        if (r == ERROR) {
            goto attr_error;
        }
        answer = r ? NO : YES;
        goto out;
    }
attr_error:
    /* a loop or task without asyncio's private state: never skip */
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        answer = NO;
    }
    else {
        answer = ERROR;
    }
out:
    Py_DECREF(entry);
done:
    Py_DECREF(loop);
    return answer;
}

static PyObject *
python_steps(void)
{
    return PyObject_CallNoArgs(g_python);
}

static PyObject *
skip_checkpoint(PyObject *module, PyObject *unused)
{
    if (g_globals == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "aipc._core._corec is not bound");
        return NULL;
    }
    PyObject *skipped = PyDict_GetItemWithError(g_globals, s_skipped);
    if (skipped == NULL || !PyLong_CheckExact(skipped)) {
        return PyErr_Occurred() ? NULL : python_steps();
    }
    long count = PyLong_AsLong(skipped);
    if (count == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (count >= g_budget) {
        Py_RETURN_FALSE;
    }
    /* current_library(), as _skip_checkpoint_py reads it */
    PyObject *lib = PyObject_GetAttr(g_sniffio_thread, s_name);
    if (lib == NULL) {
        return NULL;
    }
    if (lib == Py_None) {
        Py_DECREF(lib);
        if (PyContextVar_Get(g_sniffio_cvar, NULL, &lib) < 0) {
            return NULL;
        }
        int set = lib == NULL ? 0 : PyObject_IsTrue(lib);
        if (set < 0) {
            Py_DECREF(lib);
            return NULL;
        }
        if (!set) { /* sniffio's "or": unset, None or empty */
            Py_XDECREF(lib);
            lib = Py_NewRef(s_asyncio);
        }
    }
    int answer;
    if (lib == s_asyncio
        || (PyUnicode_Check(lib) && PyUnicode_Compare(lib, s_asyncio) == 0)) {
        answer = asyncio_step();
    }
    else if (lib == s_trio
             || (PyUnicode_Check(lib) && PyUnicode_Compare(lib, s_trio) == 0)) {
        /* trio's state is plain attributes, which the interpreter's
         * specialised reads get faster than PyObject_GetAttr does: the
         * Python steps there (the checks of _skipped done, they recheck) */
        Py_DECREF(lib);
        return PyObject_CallNoArgs(g_trio_steps);
    }
    else {
        answer = PyErr_Occurred() ? ERROR : NO;
    }
    Py_DECREF(lib);
    if (answer == ERROR) {
        return NULL;
    }
    if (answer == PYTHON) {
        return python_steps();
    }
    if (answer == NO) {
        Py_RETURN_FALSE;
    }
    PyObject *more = PyLong_FromLong(count + 1);
    if (more == NULL || PyDict_SetItem(g_globals, s_skipped, more) < 0) {
        Py_XDECREF(more);
        return NULL;
    }
    Py_DECREF(more);
    Py_RETURN_TRUE;
}

static PyObject *
get_global(const char *name)
{
    PyObject *value = PyDict_GetItemString(g_globals, name);
    if (value == NULL) {
        PyErr_Format(PyExc_RuntimeError, "aipc._core._corec: _fd has no %s", name);
        return NULL;
    }
    return Py_NewRef(value);
}

static PyObject *
bind(PyObject *module, PyObject *globals)
{
    if (!PyDict_Check(globals)) {
        PyErr_SetString(PyExc_TypeError, "bind() takes _fd's module dict");
        return NULL;
    }
    Py_XSETREF(g_globals, Py_NewRef(globals));
    PyObject *budget = NULL, *max_timers = NULL, *large = NULL;
    Py_CLEAR(g_python);
    Py_CLEAR(g_trio_steps);
    Py_CLEAR(g_learn_loop);
    Py_CLEAR(g_only_stale);
    Py_CLEAR(g_get_loop);
    Py_CLEAR(g_current_tasks);
    Py_CLEAR(g_sniffio_thread);
    Py_CLEAR(g_sniffio_cvar);
    Py_CLEAR(g_asyncio_kind);
    Py_CLEAR(g_uvloop_kind);
    if (!(g_python = get_global("_skip_checkpoint_py"))
        || !(g_trio_steps = get_global("_nothing_to_run_trio"))
        || !(g_learn_loop = get_global("_learn_loop"))
        || !(g_only_stale = get_global("_only_stale_fires"))
        || !(g_get_loop = get_global("_get_running_loop"))
        || !(g_current_tasks = get_global("_current_tasks"))
        || !(g_sniffio_thread = get_global("_sniffio_thread"))
        || !(g_sniffio_cvar = get_global("_sniffio_cvar"))
        || !(g_asyncio_kind = get_global("_ASYNCIO"))
        || !(g_uvloop_kind = get_global("_UVLOOP"))
        || !(budget = get_global("SKIP_BUDGET"))
        || !(large = get_global("LARGE_OPERATION"))
        || !(max_timers = get_global("_UV_MAX_TIMERS"))) {
        goto fail;
    }
    if (!PyDict_CheckExact(g_current_tasks) || !PyContextVar_CheckExact(g_sniffio_cvar)) {
        PyErr_SetString(PyExc_TypeError, "aipc._core._corec: unexpected asyncio or sniffio state");
        goto fail;
    }
    g_budget = PyLong_AsLong(budget);
    g_large = PyLong_AsSsize_t(large);
    g_uv_max_timers = PyLong_AsSsize_t(max_timers);
    if (PyErr_Occurred()) {
        goto fail;
    }
    Py_DECREF(budget);
    Py_DECREF(max_timers);
    Py_DECREF(large);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(budget);
    Py_XDECREF(max_timers);
    Py_XDECREF(large);
    Py_CLEAR(g_globals);
    return NULL;
}


/* WatcherCore: the state of _fd.py's _Watcher (a persistent asyncio/uvloop
 * registration of one fd) in C fields, and the two steps every wait takes
 * through it: arm() before the task awaits, _fire() as the loop's callback.
 * They are _Watcher._fire and _Watcher.arm of the Python steps, step for
 * step; the rarer methods (_register, unregister, disarm, close,
 * _ready_now) stay in Python, which reads these fields as ordinary
 * attributes. */
typedef struct {
    PyObject_HEAD
    PyObject *also, *attempt, *fd, *idle, *loop, *readable, *registered;
    PyObject *reports_twice, *resumes, *stale, *waiter;
} WatcherCore;

static PyObject *s_waiter_class, *s_busy, *s_resume, *s_set_result;
static PyObject *s_set_exception, *s_done, *s_create_future;
static PyObject *s_register, *s_ready_now, *s_unregister;
static PyObject *g_zero;

#define W_FIELDS(X) X(also) X(attempt) X(fd) X(idle) X(loop) X(readable) X(registered) \
    X(reports_twice) X(resumes) X(stale) X(waiter)

static int
watcher_traverse(WatcherCore *self, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(self->f);
    W_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int
watcher_clear(WatcherCore *self)
{
#define CLEAR(f) Py_CLEAR(self->f);
    W_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void
watcher_dealloc(WatcherCore *self)
{
    PyObject_GC_UnTrack(self);
    watcher_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* a field read by the steps: AttributeError if __init__ did not set it */
static PyObject *
field(PyObject *value, const char *name)
{
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "_Watcher has no %s yet", name);
    }
    return value;
}
#define FIELD(self, f) field((self)->f, #f)

/* waiter.done(), for any future */
static int
future_done(PyObject *waiter)
{
    return truth_of(PyObject_CallMethodNoArgs(waiter, s_done));
}

static PyObject *
waiter_class(void)
{
    PyObject *cls = PyDict_GetItemWithError(g_globals, s_waiter_class);
    if (cls == NULL && !PyErr_Occurred()) {
        PyErr_SetString(PyExc_RuntimeError, "aipc._core._corec: _fd has no _Waiter");
    }
    return cls;
}

static PyObject *
watcher_fire(WatcherCore *self, PyObject *unused)
{
    if (FIELD(self, waiter) == NULL || FIELD(self, stale) == NULL || FIELD(self, idle) == NULL
        || FIELD(self, attempt) == NULL || FIELD(self, reports_twice) == NULL) {
        return NULL;
    }
    /* the waiter of now, held: the steps below run Python code */
    PyObject *waiter = Py_NewRef(self->waiter);
    PyObject *attempt = NULL, *result = NULL, *error = NULL, *answer = NULL;
    int r;
    if (self->stale == Py_True) {
        /* the report after a readiness-only fire (see _Watcher.__init__) */
        Py_SETREF(self->stale, Py_NewRef(Py_False));
        r = waiter == Py_None ? 1 : future_done(waiter);
        if (r == 0) {
            r = truth_of(PyObject_CallMethodNoArgs((PyObject *)self, s_ready_now));
            r = r < 0 ? r : !r;
        }
        if (r != 0) {
            answer = r < 0 ? NULL : Py_NewRef(Py_None);
            goto out;
        }
    }
    r = waiter == Py_None ? 1 : future_done(waiter);
    if (r != 0) {
        if (r < 0) {
            goto out;
        }
        /* ready with nobody waiting: unregister at the second in a row */
        long idle = PyLong_AsLong(self->idle);
        if (idle == -1 && PyErr_Occurred()) {
            goto out;
        }
        Py_SETREF(self->idle, PyLong_FromLong(idle + 1));
        if (self->idle == NULL) {
            goto out;
        }
        if (idle + 1 >= 2) {
            answer = PyObject_CallMethodNoArgs((PyObject *)self, s_unregister);
        }
        else {
            answer = Py_NewRef(Py_None);
        }
        goto out;
    }
    Py_SETREF(self->idle, Py_NewRef(g_zero));
    attempt = Py_NewRef(self->attempt);
    if (attempt != Py_None) {
        result = PyObject_CallNoArgs(attempt);
        if (result == NULL) {
            if (PyErr_ExceptionMatches(PyExc_BlockingIOError)) {
                PyErr_Clear(); /* stale readiness: keep waiting */
                answer = Py_NewRef(Py_None);
                goto out;
            }
            /* any other exception goes to the waiter */
            PyObject *type, *tb;
            PyErr_Fetch(&type, &error, &tb);
            PyErr_NormalizeException(&type, &error, &tb);
            if (tb != NULL) {
                PyException_SetTraceback(error, tb);
            }
            Py_XDECREF(type);
            Py_XDECREF(tb);
        }
    }
    if (result == NULL) {
        result = Py_NewRef(Py_True); /* readiness only, or beside an error */
    }
    Py_SETREF(self->waiter, Py_NewRef(Py_None));
    Py_SETREF(self->attempt, Py_NewRef(Py_None));
    PyObject *cls = waiter_class();
    if (cls == NULL) {
        goto out;
    }
    PyObject *done;
    if (Py_IS_TYPE(waiter, (PyTypeObject *)cls)) {
        done = PyObject_CallMethodObjArgs(waiter, s_resume, result,
                                          error ? error : Py_None, NULL);
        r = truth_of(done);
        if (r != 0) { /* the task has run and acted: nothing stale */
            answer = r < 0 ? NULL : Py_NewRef(Py_None);
            goto out;
        }
    }
    else {
        done = error == NULL ? PyObject_CallMethodOneArg(waiter, s_set_result, result)
                             : PyObject_CallMethodOneArg(waiter, s_set_exception, error);
        if (done == NULL) {
            goto out;
        }
        Py_DECREF(done);
    }
    if (attempt == Py_None) {
        Py_SETREF(self->stale, Py_NewRef(self->reports_twice));
    }
    answer = Py_NewRef(Py_None);
out:
    Py_DECREF(waiter);
    Py_XDECREF(attempt);
    Py_XDECREF(result);
    Py_XDECREF(error);
    return answer;
}

static PyObject *
watcher_arm(WatcherCore *self, PyObject *attempt)
{
    if (FIELD(self, waiter) == NULL || FIELD(self, resumes) == NULL
        || FIELD(self, loop) == NULL || FIELD(self, registered) == NULL
        || FIELD(self, readable) == NULL) {
        return NULL;
    }
    int r;
    if (self->waiter != Py_None) {
        /* another task waits (a cancelled waiter's future is done) */
        if ((r = future_done(self->waiter)) <= 0) {
            if (r == 0) {
                PyObject *anyio = PyDict_GetItemWithError(g_globals, s_anyio);
                PyObject *busy = anyio ? PyObject_GetAttr(anyio, s_busy) : NULL;
                if (busy != NULL) {
                    PyErr_SetString(busy, self->readable == Py_True ? "reading from" : "writing to");
                    Py_DECREF(busy);
                }
                else if (!PyErr_Occurred()) {
                    PyErr_SetString(PyExc_RuntimeError, "aipc._core._corec: _fd has no anyio");
                }
            }
            return NULL;
        }
    }
    PyObject *waiter;
    if (self->resumes == Py_True) {
        PyObject *cls = waiter_class();
        waiter = cls ? PyObject_CallOneArg(cls, self->loop) : NULL;
    }
    else {
        waiter = PyObject_CallMethodNoArgs(self->loop, s_create_future);
    }
    if (waiter == NULL) {
        return NULL;
    }
    Py_SETREF(self->waiter, Py_NewRef(waiter));
    Py_SETREF(self->attempt, Py_NewRef(attempt));
    if (self->registered != Py_True) {
        /* the first wait, or the first since an idle unregister: the
         * Python steps' _register() (not a hot path) */
        PyObject *res = PyObject_CallMethodNoArgs((PyObject *)self, s_register);
        if (res == NULL) {
            Py_DECREF(waiter);
            return NULL;
        }
        Py_DECREF(res);
    }
    /* the task yields to the loop on this pending future: the budget of
     * skipped checkpoints starts over */
    if (PyDict_SetItem(g_globals, s_skipped, g_zero) < 0) {
        Py_DECREF(waiter);
        return NULL;
    }
    return waiter;
}

static PyMethodDef watcher_methods[] = {
    {"_cfire", (PyCFunction)watcher_fire, METH_NOARGS,
     "_Watcher._fire, compiled: the loop's callback"},
    {"_carm", (PyCFunction)watcher_arm, METH_O,
     "_Watcher.arm, compiled: the future the task awaits"},
    {NULL, NULL, 0, NULL},
};

#define MEMBER(f) {#f, T_OBJECT_EX, offsetof(WatcherCore, f), 0, NULL},
static PyMemberDef watcher_members[] = {
    W_FIELDS(MEMBER)
    {NULL, 0, 0, 0, NULL},
};
#undef MEMBER

static PyTypeObject WatcherCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aipc._core._corec.WatcherCore",
    .tp_basicsize = sizeof(WatcherCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The fields and hot steps of _fd._Watcher (see aipc/_core/_corec.c).",
    .tp_traverse = (traverseproc)watcher_traverse,
    .tp_clear = (inquiry)watcher_clear,
    .tp_dealloc = (destructor)watcher_dealloc,
    .tp_methods = watcher_methods,
    .tp_members = watcher_members,
    .tp_new = PyType_GenericNew,
};

static PyObject *s_fd_attr;

/* the descriptor an FdHandle holds now: its _fd, or -2 once closed (-1
 * there), ERROR with an exception set if it cannot be read */
static int
handle_fd(PyObject *handle)
{
    PyObject *fd_obj = PyObject_GetAttr(handle, s_fd_attr);
    if (fd_obj == NULL) {
        return ERROR;
    }
    long fd = PyLong_AsLong(fd_obj);
    Py_DECREF(fd_obj);
    if (fd == -1 && PyErr_Occurred()) {
        return ERROR;
    }
    return fd < 0 || fd > INT_MAX ? -2 : (int)fd;
}

/* ReceiveCore: the counters and state of _stream.py's FdReceiveStream in C
 * fields, and _creceive, a receive's common case made compiled: the bytes
 * are there (or FIONREAD says none are), and the checkpoint skips its pass.
 * Every receive of a pipe or a FIFO asks it first; None sends the receive
 * down its Python steps, which take over exactly where this left off:
 * nothing is ever consumed unless it is returned or kept in _pending. */
typedef struct {
    PyObject_HEAD
    PyObject *handle;   /* _handle: the FdHandle (its _fd is read per call) */
    PyObject *pending;  /* _pending: bytes read, not yet returned */
    /* Python objects, not C numbers, although C reads them: the Python
     * steps read and write them too, and the interpreter specialises its
     * reads and writes of object fields only (a bool or long long field
     * made the Python steps' round trip 2 % slower) */
    PyObject *receiving;    /* _receiving: True or False */
    PyObject *expect_empty; /* _expect_empty: the last receive emptied the pipe */
    PyObject *fast;         /* _cfast: the stream reads with os.read */
    PyObject *nbytes, *ops, *syscalls, *waits; /* _bytes ... : ints */
} ReceiveCore;

#define R_FIELDS(X) X(handle) X(pending) X(receiving) X(expect_empty) X(fast) \
    X(nbytes) X(ops) X(syscalls) X(waits)

/* add n to an int field */
static int
add_count(PyObject **field, Py_ssize_t n)
{
    long long value = 0;
    if (*field != NULL) {
        value = PyLong_AsLongLong(*field);
        if (value == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    PyObject *more = PyLong_FromLongLong(value + n);
    if (more == NULL) {
        return -1;
    }
    Py_XSETREF(*field, more);
    return 0;
}

static void
set_bool(PyObject **field, int value)
{
    Py_XSETREF(*field, Py_NewRef(value ? Py_True : Py_False));
}

static int
receive_traverse(ReceiveCore *self, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(self->f);
    R_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int
receive_clear(ReceiveCore *self)
{
#define CLEAR(f) Py_CLEAR(self->f);
    R_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void
receive_dealloc(ReceiveCore *self)
{
    PyObject_GC_UnTrack(self);
    receive_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* FdReceiveStream.receive's common case. Returns the bytes (counted, the
 * checkpoint's pass skipped), False when the receive must wait for readiness
 * (FIONREAD saw nothing queued, or the read failed with EAGAIN), or None
 * for the Python steps (a read's bytes that still need their checkpoint are
 * then in _pending, which those steps return first). */
static PyObject *
receive_fast(ReceiveCore *self, PyObject *arg)
{
    if (self->fast != Py_True || self->receiving != Py_False || !PyLong_CheckExact(arg)
        || self->pending == NULL || self->handle == NULL
        || !PyBytes_CheckExact(self->pending) || PyBytes_GET_SIZE(self->pending)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t max = PyLong_AsSsize_t(arg);
    if (max < 1) {
        PyErr_Clear(); /* the Python steps raise the argument's error */
        Py_RETURN_NONE;
    }
    int fd = handle_fd(self->handle);
    if (fd < 0) {
        /* closed: the Python steps raise ClosedResourceError */
        return fd == ERROR ? NULL : Py_NewRef(Py_None);
    }
    Py_ssize_t queued = -1;
    if (self->expect_empty == Py_True) {
        int count;
        if (ioctl(fd, FIONREAD, &count) == 0) {
            if (count == 0) {
                Py_RETURN_FALSE;
            }
            queued = count;
        }
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, max);
    if (data == NULL) {
        return NULL;
    }
    ssize_t n;
    int error;
    Py_BEGIN_ALLOW_THREADS /* as os.read: a large read copies for a while */
    n = read(fd, PyBytes_AS_STRING(data), (size_t)max);
    error = errno;
    Py_END_ALLOW_THREADS
    if (n <= 0) {
        Py_DECREF(data);
        if (n < 0 && (error == EAGAIN || error == EWOULDBLOCK)) {
            Py_RETURN_FALSE;
        }
        /* the end of the stream (or a FIFO without a writer yet), or an
         * error: the Python steps read again and say which */
        Py_RETURN_NONE;
    }
    if (n < max && _PyBytes_Resize(&data, n) < 0) {
        return NULL;
    }
    set_bool(&self->expect_empty, n < max || (queued >= 0 && queued <= max));
    PyObject *skip = NULL;
    if (add_count(&self->syscalls, 1) == 0) {
        skip = skip_checkpoint(NULL, NULL);
    }
    if (skip == Py_True) {
        Py_DECREF(skip);
        if (add_count(&self->nbytes, n) == 0 && add_count(&self->ops, 1) == 0) {
            return data;
        }
        skip = NULL; /* a counter failed: the bytes go to _pending below */
    }
    if (skip == NULL) {
        /* a counter or the decision failed: the Python steps meet it again,
         * with the bytes kept */
        PyErr_Clear();
    }
    Py_XDECREF(skip);
    Py_SETREF(self->pending, data);
    Py_RETURN_NONE;
}

static PyMethodDef receive_methods[] = {
    {"_creceive", (PyCFunction)receive_fast, METH_O,
     "FdReceiveStream.receive's common case, compiled (see aipc/_core/_corec.c)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef receive_members[] = {
    {"_handle", T_OBJECT_EX, offsetof(ReceiveCore, handle), 0, NULL},
    {"_pending", T_OBJECT_EX, offsetof(ReceiveCore, pending), 0, NULL},
    {"_receiving", T_OBJECT_EX, offsetof(ReceiveCore, receiving), 0, NULL},
    {"_expect_empty", T_OBJECT_EX, offsetof(ReceiveCore, expect_empty), 0, NULL},
    {"_cfast", T_OBJECT_EX, offsetof(ReceiveCore, fast), 0, NULL},
    {"_bytes", T_OBJECT_EX, offsetof(ReceiveCore, nbytes), 0, NULL},
    {"_ops", T_OBJECT_EX, offsetof(ReceiveCore, ops), 0, NULL},
    {"_syscalls", T_OBJECT_EX, offsetof(ReceiveCore, syscalls), 0, NULL},
    {"_waits", T_OBJECT_EX, offsetof(ReceiveCore, waits), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ReceiveCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aipc._core._corec.ReceiveCore",
    .tp_basicsize = sizeof(ReceiveCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The fields and common case of _stream.FdReceiveStream (see aipc/_core/_corec.c).",
    .tp_traverse = (traverseproc)receive_traverse,
    .tp_clear = (inquiry)receive_clear,
    .tp_dealloc = (destructor)receive_dealloc,
    .tp_methods = receive_methods,
    .tp_members = receive_members,
    .tp_new = PyType_GenericNew,
};

/* SendCore: the same for _stream.py's FdSendStream. _csend(item) is the
 * first step of every send: for bytes that may go out at once (not over
 * LARGE_OPERATION, or not over a quarter of the kernel buffer the Python
 * steps measured, _buffer_size), with SIGPIPE ignored, it takes the checkpoint's
 * decision *before* writing, as send does, and on a skip writes with
 * write(2). It returns True when all was written, the count written
 * (possibly 0: the buffer is full) when the Python steps must go on from
 * there without another checkpoint, and None, having written nothing, for
 * everything else (the checkpoint makes its pass, an error, a closed or
 * broken stream, another kind of buffer), which the Python steps then do
 * from the start. */
typedef struct {
    PyObject_HEAD
    PyObject *handle;   /* _handle */
    /* Python objects, as ReceiveCore's */
    PyObject *sending;  /* _sending: True or False */
    PyObject *broken;   /* _broken */
    PyObject *fast;     /* _cfast: the stream writes with os.write */
    PyObject *kbuf;     /* _buffer_size: the kernel buffer large sends are paced by */
    PyObject *nbytes, *ops, *syscalls, *waits;
} SendCore;

#define S_FIELDS(X) X(handle) X(sending) X(broken) X(fast) X(kbuf) X(nbytes) X(ops) \
    X(syscalls) X(waits)

static PyObject *g_getsignal, *g_sigpipe, *g_sig_ign;

static int
send_traverse(SendCore *self, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(self->f);
    S_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int
send_clear(SendCore *self)
{
#define CLEAR(f) Py_CLEAR(self->f);
    S_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void
send_dealloc(SendCore *self)
{
    PyObject_GC_UnTrack(self);
    send_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* _signal.getsignal(SIGPIPE) == SIG_IGN, as _stream.py asks it: Python's
 * own record of the disposition, which is what it set at start-up (the raw
 * _signal module: signal.getsignal's enum conversion costs about 1 µs) */
static int
sigpipe_ignored(void)
{
    if (g_getsignal == NULL) {
        PyObject *mod = PyImport_ImportModule("_signal");
        if (mod == NULL) {
            return ERROR;
        }
        g_getsignal = PyObject_GetAttrString(mod, "getsignal");
        g_sigpipe = PyObject_GetAttrString(mod, "SIGPIPE");
        g_sig_ign = PyObject_GetAttrString(mod, "SIG_IGN");
        Py_DECREF(mod);
        if (g_getsignal == NULL || g_sigpipe == NULL || g_sig_ign == NULL) {
            Py_CLEAR(g_getsignal);
            Py_CLEAR(g_sigpipe);
            Py_CLEAR(g_sig_ign);
            return ERROR;
        }
    }
    PyObject *now = PyObject_CallOneArg(g_getsignal, g_sigpipe);
    if (now == NULL) {
        return ERROR;
    }
    int same = PyObject_RichCompareBool(now, g_sig_ign, Py_EQ);
    Py_DECREF(now);
    return same;
}

static PyObject *
send_fast(SendCore *self, PyObject *item)
{
    if (self->fast != Py_True || self->sending != Py_False || self->broken != Py_False
        || self->handle == NULL || !PyBytes_CheckExact(item)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(item);
    if (len == 0) {
        Py_RETURN_NONE;
    }
    if (len > g_large) {
        long long kbuf = self->kbuf == NULL ? 0 : PyLong_AsLongLong(self->kbuf);
        if (kbuf == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (kbuf <= 0 || 4 * (long long)len > kbuf) {
            Py_RETURN_NONE;
        }
    }
    int fd = handle_fd(self->handle);
    if (fd < 0) {
        return fd == ERROR ? NULL : Py_NewRef(Py_None);
    }
    int ignored = sigpipe_ignored();
    if (ignored != 1) {
        PyErr_Clear(); /* the Python steps guard the write themselves */
        Py_RETURN_NONE;
    }
    PyObject *skip = skip_checkpoint(NULL, NULL);
    if (skip != Py_True) {
        if (skip == NULL) {
            PyErr_Clear(); /* the Python checkpoint raises it again */
        }
        Py_XDECREF(skip);
        Py_RETURN_NONE;
    }
    Py_DECREF(skip);
    ssize_t n;
    int error;
    Py_BEGIN_ALLOW_THREADS /* as os.write: a large write copies for a while */
    n = write(fd, PyBytes_AS_STRING(item), (size_t)len);
    error = errno;
    Py_END_ALLOW_THREADS
    if (n < 0) {
        if (error == EAGAIN || error == EWOULDBLOCK) {
            return PyLong_FromLong(0);
        }
        /* EPIPE and the rest: nothing was written, and the Python steps'
         * own write raises what it means */
        Py_RETURN_NONE;
    }
    /* written: a counter that cannot be counted (no memory) raises, and
     * the send is then cancelled-like: a prefix may be out */
    if (add_count(&self->nbytes, n) < 0 || add_count(&self->syscalls, 1) < 0) {
        return NULL;
    }
    if (n == len) {
        if (add_count(&self->ops, 1) < 0) {
            return NULL;
        }
        Py_RETURN_TRUE;
    }
    return PyLong_FromSsize_t(n);
}

static PyMethodDef send_methods[] = {
    {"_csend", (PyCFunction)send_fast, METH_O,
     "FdSendStream.send's common case, compiled (see aipc/_core/_corec.c)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef send_members[] = {
    {"_handle", T_OBJECT_EX, offsetof(SendCore, handle), 0, NULL},
    {"_sending", T_OBJECT_EX, offsetof(SendCore, sending), 0, NULL},
    {"_broken", T_OBJECT_EX, offsetof(SendCore, broken), 0, NULL},
    {"_cfast", T_OBJECT_EX, offsetof(SendCore, fast), 0, NULL},
    {"_buffer_size", T_OBJECT_EX, offsetof(SendCore, kbuf), 0, NULL},
    {"_bytes", T_OBJECT_EX, offsetof(SendCore, nbytes), 0, NULL},
    {"_ops", T_OBJECT_EX, offsetof(SendCore, ops), 0, NULL},
    {"_syscalls", T_OBJECT_EX, offsetof(SendCore, syscalls), 0, NULL},
    {"_waits", T_OBJECT_EX, offsetof(SendCore, waits), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SendCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aipc._core._corec.SendCore",
    .tp_basicsize = sizeof(SendCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The fields and common case of _stream.FdSendStream (see aipc/_core/_corec.c).",
    .tp_traverse = (traverseproc)send_traverse,
    .tp_clear = (inquiry)send_clear,
    .tp_dealloc = (destructor)send_dealloc,
    .tp_methods = send_methods,
    .tp_members = send_members,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef corec_methods[] = {
    {"bind", bind, METH_O,
     "bind(globals): use _fd's module dict for the state and the Python steps"},
    {"running_loop", running_loop_py, METH_NOARGS,
     "asyncio.events._get_running_loop(), without its getpid() when it can"},
    {"forget", forget, METH_NOARGS,
     "forget the running loop seen last (in a child after fork)"},
    {"skip_checkpoint", skip_checkpoint, METH_NOARGS,
     "_fd._skip_checkpoint_py(), compiled: True when this checkpoint skips its pass"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef corec_module = {
    PyModuleDef_HEAD_INIT,
    "aipc._core._corec",
    "The checkpoint's decision and the watcher's steps, compiled (see aipc/_core/_corec.c).",
    -1,
    corec_methods,
};

#define INTERN(var, text)                                  \
    do {                                                   \
        if ((var = PyUnicode_InternFromString(text)) == NULL) { \
            return NULL;                                   \
        }                                                  \
    } while (0)

PyMODINIT_FUNC
PyInit__corec(void)
{
    INTERN(s_holder_key, "__asyncio_running_event_loop__");
    INTERN(s_skipped, "_skipped");
    INTERN(s_last_loop, "_last_loop");
    INTERN(s_name, "name");
    INTERN(s_asyncio, "asyncio");
    INTERN(s_trio, "trio");
    INTERN(s_ready, "_ready");
    INTERN(s_scheduled, "_scheduled");
    INTERN(s_when, "_when");
    INTERN(s_time, "time");
    INTERN(s_clock_resolution, "_clock_resolution");
    INTERN(s_must_cancel, "_must_cancel");
    INTERN(s_anyio, "anyio");
    INTERN(s_waiter_class, "_Waiter");
    INTERN(s_busy, "BusyResourceError");
    INTERN(s_resume, "resume");
    INTERN(s_set_result, "set_result");
    INTERN(s_set_exception, "set_exception");
    INTERN(s_done, "done");
    INTERN(s_create_future, "create_future");
    INTERN(s_register, "_register");
    INTERN(s_ready_now, "_ready_now");
    INTERN(s_unregister, "unregister");
    INTERN(s_fd_attr, "_fd");
    if ((g_zero = PyLong_FromLong(0)) == NULL) {
        return NULL;
    }
    if (PyType_Ready(&WatcherCoreType) < 0 || PyType_Ready(&ReceiveCoreType) < 0
        || PyType_Ready(&SendCoreType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&corec_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "WatcherCore", (PyObject *)&WatcherCoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "ReceiveCore", (PyObject *)&ReceiveCoreType) < 0
        || PyModule_AddObjectRef(m, "SendCore", (PyObject *)&SendCoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "VERSION", VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
