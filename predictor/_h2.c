/* predictor._h2: a server-side HTTP/2 session of libnghttp2 (Debian's libnghttp2-14), for grpc_server.py.
 *
 * libnghttp2 does HTTP/2's framing, HPACK, flow control and protocol checks without I/O: bytes read from
 * a socket go in (recv), the bytes to write come out (send). Its callbacks run here, in C, and leave
 * one short list of events per recv, so a gRPC call costs Python a handful of objects, not a dozen
 * calls through ctypes (that cost ~80 us a call: README, Performance).
 *
 * Events, in the order libnghttp2 reported them:
 *   (HEADERS, stream_id, {wanted name: value}, header_bytes, end_stream)  a header block, whole
 *   (DATA, stream_id, bytes)                                               a piece of a request body
 *   (END, stream_id)                                                       the body is complete
 *   (CLOSED, stream_id, error_code)                                        the stream is gone
 * header_bytes counts every field as HPACK does (name + value + 32); values are kept only for the
 * wanted names, and only while the block stays under max_header_bytes.
 *
 * libnghttp2's public ABI (nghttp2.h, soname libnghttp2.so.14, stable since 1.0) is declared in
 * nghttp2_abi.h and below, so the build needs the library but not its -dev package.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

/* ---- libnghttp2's ABI ---------------------------------------------------------------------------- */
#include "nghttp2_abi.h"

typedef int (*nghttp2_on_data_chunk_recv_callback)(nghttp2_session *, uint8_t, int32_t, const uint8_t *, size_t,
                                                   void *);
void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks *, nghttp2_on_frame_callback);
void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks *,
                                                               nghttp2_on_data_chunk_recv_callback);
int nghttp2_session_server_new(nghttp2_session **, const nghttp2_session_callbacks *, void *);
void *nghttp2_session_find_stream(nghttp2_session *, int32_t); /* an nghttp2_stream *, or NULL */
int nghttp2_stream_get_state(void *);
int nghttp2_session_set_local_window_size(nghttp2_session *, uint8_t, int32_t, int32_t);
int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *);
int nghttp2_submit_response(nghttp2_session *, int32_t, const nghttp2_nv *, size_t, const nghttp2_data_provider *);
int nghttp2_submit_trailer(nghttp2_session *, int32_t, const nghttp2_nv *, size_t);
int nghttp2_submit_shutdown_notice(nghttp2_session *);
int nghttp2_submit_goaway(nghttp2_session *, uint8_t, int32_t, uint32_t, const uint8_t *, size_t);

enum { FRAME_DATA = 0, FRAME_HEADERS = 1, FLAG_END_STREAM = 0x01 };
enum { DATA_FLAG_EOF = 0x01, DATA_FLAG_NO_END_STREAM = 0x02 };
enum { STREAM_STATE_OPEN = 2, STREAM_STATE_HALF_CLOSED_REMOTE = 6 }; /* nghttp2_stream_proto_state */
enum { ERR_STREAM_CLOSED = -510, ERR_TEMPORAL_CALLBACK_FAILURE = -521, ERR_CALLBACK_FAILURE = -902 };
enum { EVENT_DATA = 0, EVENT_HEADERS = 1, EVENT_END = 2, EVENT_CLOSED = 3 };
#define MAX_FIELDS 16 /* header fields of one reply or trailer block */

/* ---- the Session type ---------------------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    nghttp2_session *session;
    PyObject *events;   /* list, handed over by recv() and take() */
    PyObject *replies;  /* stream id -> [body, bytes sent, trailers]: what the read callback sends */
    PyObject *wanted;   /* tuple of bytes: the header names whose values are kept */
    PyObject *block;    /* dict: the wanted fields of the header block arriving */
    Py_ssize_t block_bytes;
    Py_ssize_t max_header_bytes;
} Session;

static PyObject *Error; /* a fatal session error: the connection has to close */

static PyObject *session_error(int code) {
    return PyErr_Format(Error, "libnghttp2: %s", nghttp2_strerror(code));
}

static int append_event(Session *self, PyObject *event) {
    if (event == NULL)
        return ERR_CALLBACK_FAILURE;
    int failed = PyList_Append(self->events, event);
    Py_DECREF(event);
    return failed ? ERR_CALLBACK_FAILURE : 0;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    Session *self = user_data;
    Py_XSETREF(self->block, PyDict_New());
    self->block_bytes = 0;
    return self->block == NULL ? ERR_CALLBACK_FAILURE : 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) {
    Session *self = user_data;
    self->block_bytes += namelen + valuelen + 32;
    if (self->block == NULL || self->block_bytes > self->max_header_bytes)
        return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(self->wanted);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyTuple_GET_ITEM(self->wanted, i);
        if ((size_t)PyBytes_GET_SIZE(key) == namelen && memcmp(PyBytes_AS_STRING(key), name, namelen) == 0) {
            /* a repeated field becomes one value, comma-joined as HTTP combines them (RFC 9110 5.3), so
             * two Authorization fields are one malformed value, not the last one */
            PyObject *seen = PyDict_GetItemWithError(self->block, key); /* borrowed */
            if (seen == NULL && PyErr_Occurred())
                return ERR_CALLBACK_FAILURE;
            Py_ssize_t before = seen == NULL ? 0 : PyBytes_GET_SIZE(seen) + 2;
            PyObject *v = PyBytes_FromStringAndSize(NULL, before + (Py_ssize_t)valuelen);
            if (v == NULL)
                return ERR_CALLBACK_FAILURE;
            char *out = PyBytes_AS_STRING(v);
            if (seen != NULL) {
                memcpy(out, PyBytes_AS_STRING(seen), (size_t)before - 2);
                memcpy(out + before - 2, ", ", 2);
            }
            memcpy(out + before, value, valuelen);
            int failed = PyDict_SetItem(self->block, key, v) < 0;
            Py_DECREF(v);
            return failed ? ERR_CALLBACK_FAILURE : 0;
        }
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data,
                         size_t len, void *user_data) {
    return append_event(user_data, Py_BuildValue("(iiy#)", EVENT_DATA, stream_id, data, (Py_ssize_t)len));
}

static int on_frame(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    Session *self = user_data;
    int end = (frame->hd.flags & FLAG_END_STREAM) != 0;
    if (frame->hd.type == FRAME_HEADERS && self->block != NULL) {
        PyObject *event = Py_BuildValue("(iiOnO)", EVENT_HEADERS, frame->hd.stream_id, self->block,
                                        self->block_bytes, end ? Py_True : Py_False);
        Py_CLEAR(self->block);
        return append_event(self, event);
    }
    if (frame->hd.type == FRAME_DATA && end)
        return append_event(self, Py_BuildValue("(ii)", EVENT_END, frame->hd.stream_id));
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data) {
    Session *self = user_data;
    PyObject *key = PyLong_FromLong(stream_id);
    if (key == NULL)
        return ERR_CALLBACK_FAILURE;
    int failed = PyDict_DelItem(self->replies, key) < 0; /* a reply it never finished: dropped */
    Py_DECREF(key);
    if (failed) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return ERR_CALLBACK_FAILURE;
        PyErr_Clear();
    }
    return append_event(self, Py_BuildValue("(iiI)", EVENT_CLOSED, stream_id, error_code));
}

/* fields: a tuple of (name, value) bytes pairs -> nv, pointing into those bytes, which the caller's
 * reference to `fields` keeps alive (libnghttp2 copies them). Tuples only: nothing here runs Python code. */
static Py_ssize_t to_nv(PyObject *fields, nghttp2_nv *nv) {
    if (!PyTuple_Check(fields)) {
        PyErr_SetString(PyExc_TypeError, "header fields must be a tuple of (name, value) pairs");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    if (n > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "at most %d header fields", MAX_FIELDS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(fields, i), *name, *value;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(name = PyTuple_GET_ITEM(pair, 0))
            || !PyBytes_Check(value = PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "a header field is a (bytes, bytes) pair");
            return -1;
        }
        nv[i] = (nghttp2_nv){(uint8_t *)PyBytes_AS_STRING(name), (uint8_t *)PyBytes_AS_STRING(value),
                             (size_t)PyBytes_GET_SIZE(name), (size_t)PyBytes_GET_SIZE(value), 0};
    }
    return n;
}

static ssize_t read_reply(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                          uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
    Session *self = user_data;
    PyObject *key = PyLong_FromLong(stream_id);
    if (key == NULL)
        return ERR_CALLBACK_FAILURE;
    PyObject *reply = PyDict_GetItemWithError(self->replies, key); /* borrowed */
    if (reply == NULL) {
        Py_DECREF(key);
        return PyErr_Occurred() ? ERR_CALLBACK_FAILURE : ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    PyObject *body = PyList_GET_ITEM(reply, 0), *trailers = PyList_GET_ITEM(reply, 2);
    Py_ssize_t sent = PyLong_AsSsize_t(PyList_GET_ITEM(reply, 1)), size = PyBytes_GET_SIZE(body);
    size_t chunk = (size_t)(size - sent) < length ? (size_t)(size - sent) : length;
    memcpy(buf, PyBytes_AS_STRING(body) + sent, chunk);
    ssize_t result = (ssize_t)chunk;
    if ((Py_ssize_t)(sent + chunk) < size) {
        PyObject *now = PyLong_FromSsize_t(sent + chunk);
        if (now == NULL)
            result = ERR_CALLBACK_FAILURE;
        else
            PyList_SetItem(reply, 1, now); /* steals `now` */
    } else if (trailers == Py_None) {
        *data_flags = DATA_FLAG_EOF;
        if (PyDict_DelItem(self->replies, key) < 0)
            result = ERR_CALLBACK_FAILURE;
    } else { /* the trailers end the stream */
        nghttp2_nv nv[MAX_FIELDS];
        Py_INCREF(reply); /* its trailers must outlive the deletion below until submitted */
        Py_ssize_t n = to_nv(trailers, nv);
        *data_flags = DATA_FLAG_EOF | DATA_FLAG_NO_END_STREAM;
        if (n < 0 || nghttp2_submit_trailer(session, stream_id, nv, (size_t)n) != 0
            || PyDict_DelItem(self->replies, key) < 0)
            result = ERR_CALLBACK_FAILURE;
        Py_DECREF(reply);
    }
    Py_DECREF(key);
    if (result == ERR_CALLBACK_FAILURE)
        PyErr_Clear();
    return result;
}

static int Session_init(Session *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"wanted", "max_header_bytes", "settings", NULL};
    PyObject *wanted, *settings;
    Py_ssize_t max_header_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!nO!", keywords, &PyTuple_Type, &wanted, &max_header_bytes,
                                     &PyDict_Type, &settings))
        return -1;
    if (self->events != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Session already initialised");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(wanted); i++)
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(wanted, i))) { /* exact: hashing them runs no Python code */
            PyErr_SetString(PyExc_TypeError, "wanted header names must be bytes");
            return -1;
        }
    nghttp2_settings_entry entries[8];
    Py_ssize_t n = 0, pos = 0;
    PyObject *id, *value;
    while (PyDict_Next(settings, &pos, &id, &value)) {
        if (n == 8) {
            PyErr_SetString(PyExc_ValueError, "at most 8 settings");
            return -1;
        }
        long key = PyLong_AsLong(id);
        unsigned long setting = PyLong_AsUnsignedLong(value);
        if (PyErr_Occurred())
            return -1;
        if (key < 1 || key > 0xffff || setting > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "a setting is a 16-bit identifier and a 32-bit value");
            return -1;
        }
        entries[n].settings_id = (int32_t)key;
        entries[n].value = (uint32_t)setting;
        n++;
    }
    Py_INCREF(wanted);
    Py_XSETREF(self->wanted, wanted);
    self->max_header_bytes = max_header_bytes;
    if ((self->events = PyList_New(0)) == NULL || (self->replies = PyDict_New()) == NULL)
        return -1;
    nghttp2_session_callbacks *callbacks;
    if (nghttp2_session_callbacks_new(&callbacks) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    int rv = nghttp2_session_server_new(&self->session, callbacks, self);
    nghttp2_session_callbacks_del(callbacks);
    if (rv != 0 || (rv = nghttp2_submit_settings(self->session, 0, entries, (size_t)n)) != 0) {
        session_error(rv);
        return -1;
    }
    return 0;
}

static void close_session(Session *self) {
    if (self->session != NULL) {
        nghttp2_session *session = self->session;
        self->session = NULL;
        nghttp2_session_del(session);
    }
}

static int Session_traverse(Session *self, visitproc visit, void *arg) {
    Py_VISIT(self->events);
    Py_VISIT(self->replies);
    Py_VISIT(self->block);
    Py_VISIT(self->wanted);
    return 0;
}

static int Session_clear(Session *self) {
    close_session(self);
    Py_CLEAR(self->events);
    Py_CLEAR(self->replies);
    Py_CLEAR(self->wanted);
    Py_CLEAR(self->block);
    return 0;
}

static void Session_dealloc(Session *self) {
    PyObject_GC_UnTrack(self);
    Session_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int open_session(Session *self) {
    if (self->session == NULL) {
        PyErr_SetString(PyExc_ValueError, "the session is closed");
        return 0;
    }
    return 1;
}

static PyObject *take_events(Session *self) {
    PyObject *events = self->events;
    if ((self->events = PyList_New(0)) == NULL) {
        self->events = events;
        return NULL;
    }
    return events;
}

static PyObject *Session_recv(Session *self, PyObject *arg) {
    Py_buffer data;
    if (!open_session(self) || PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    ssize_t rv = nghttp2_session_mem_recv(self->session, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    if (rv < 0) {
        if (!PyErr_Occurred())
            session_error((int)rv);
        return NULL;
    }
    return take_events(self);
}

static PyObject *Session_take(Session *self, PyObject *unused) {
    if (self->events == NULL || PyList_GET_SIZE(self->events) == 0)
        Py_RETURN_NONE;
    return take_events(self);
}

static PyObject *Session_send(Session *self, PyObject *unused) {
    if (!open_session(self))
        return NULL;
    const uint8_t *data;
    ssize_t size = nghttp2_session_mem_send(self->session, &data);
    if (size < 0)
        return session_error((int)size);
    if (size == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    /* usually one piece (a reply's frames); more when a large body goes out frame by frame (16 kB each).
     * The buffer doubles as it fills, so copying stays linear in the bytes sent whatever realloc does
     * (ASan's always copies). */
    PyObject *out = PyBytes_FromStringAndSize((const char *)data, size);
    Py_ssize_t used = size;
    while (out != NULL && (size = nghttp2_session_mem_send(self->session, &data)) > 0) {
        Py_ssize_t capacity = PyBytes_GET_SIZE(out);
        if (used + size > capacity && _PyBytes_Resize(&out, Py_MAX(2 * capacity, used + size)) < 0)
            break; /* out is NULL, MemoryError set */
        memcpy(PyBytes_AS_STRING(out) + used, data, (size_t)size);
        used += size;
    }
    if (out != NULL && size < 0) {
        Py_DECREF(out);
        return session_error((int)size);
    }
    if (out != NULL && used < PyBytes_GET_SIZE(out))
        _PyBytes_Resize(&out, used);
    return out;
}

static PyObject *Session_respond(Session *self, PyObject *args) {
    int32_t stream_id;
    PyObject *fields, *body = Py_None, *trailers = Py_None;
    if (!open_session(self) || !PyArg_ParseTuple(args, "iO|OO", &stream_id, &fields, &body, &trailers))
        return NULL;
    if (body != Py_None && !PyBytes_Check(body))
        return PyErr_Format(PyExc_TypeError, "body must be bytes or None");
    nghttp2_nv nv[MAX_FIELDS], checked[MAX_FIELDS];
    Py_ssize_t n = to_nv(fields, nv);
    if (n < 0 || (trailers != Py_None && to_nv(trailers, checked) < 0)) /* checked now, sent from read_reply */
        return NULL;
    void *stream = nghttp2_session_find_stream(self->session, stream_id); /* closed ones may be kept a while */
    int state = stream == NULL ? 0 : nghttp2_stream_get_state(stream);
    if (state != STREAM_STATE_OPEN && state != STREAM_STATE_HALF_CLOSED_REMOTE)
        return PyLong_FromLong(ERR_STREAM_CLOSED); /* nothing to answer any more: nothing kept */
    if (body == Py_None)
        return PyLong_FromLong(nghttp2_submit_response(self->session, stream_id, nv, (size_t)n, NULL));
    PyObject *key = PyLong_FromLong(stream_id), *reply = NULL;
    int known = key == NULL ? -1 : PyDict_Contains(self->replies, key);
    if (known == 1) {
        Py_DECREF(key);
        return PyErr_Format(PyExc_ValueError, "stream %d already has a reply", stream_id);
    }
    if (known < 0 || (reply = Py_BuildValue("[OiO]", body, 0, trailers)) == NULL
        || PyDict_SetItem(self->replies, key, reply) < 0) {
        Py_XDECREF(key);
        Py_XDECREF(reply);
        return NULL;
    }
    Py_DECREF(reply);
    nghttp2_data_provider provider = {{.ptr = NULL}, read_reply};
    int rv = nghttp2_submit_response(self->session, stream_id, nv, (size_t)n, &provider);
    if (rv != 0 && PyDict_DelItem(self->replies, key) < 0)
        PyErr_Clear();
    Py_DECREF(key);
    return PyLong_FromLong(rv);
}

static PyObject *Session_reset(Session *self, PyObject *args) {
    int32_t stream_id;
    uint32_t error_code;
    if (!open_session(self) || !PyArg_ParseTuple(args, "iI", &stream_id, &error_code))
        return NULL;
    return PyLong_FromLong(nghttp2_submit_rst_stream(self->session, 0, stream_id, error_code));
}

static PyObject *Session_goaway(Session *self, PyObject *args) {
    uint32_t error_code;
    if (!open_session(self) || !PyArg_ParseTuple(args, "I", &error_code))
        return NULL;
    int32_t last = nghttp2_session_get_last_proc_stream_id(self->session);
    return PyLong_FromLong(nghttp2_submit_goaway(self->session, 0, last, error_code, NULL, 0));
}

static PyObject *Session_shutdown_notice(Session *self, PyObject *unused) {
    if (!open_session(self))
        return NULL;
    return PyLong_FromLong(nghttp2_submit_shutdown_notice(self->session));
}

static PyObject *Session_set_connection_window(Session *self, PyObject *arg) {
    long size = PyLong_AsLong(arg);
    if (!open_session(self) || (size == -1 && PyErr_Occurred()))
        return NULL;
    if (size < 0 || size > INT32_MAX)
        return PyErr_Format(PyExc_ValueError, "a window is 0 to 2**31-1 bytes");
    return PyLong_FromLong(nghttp2_session_set_local_window_size(self->session, 0, 0, (int32_t)size));
}

static PyObject *Session_want_read(Session *self, PyObject *unused) {
    return PyBool_FromLong(self->session != NULL && nghttp2_session_want_read(self->session));
}

static PyObject *Session_want_write(Session *self, PyObject *unused) {
    return PyBool_FromLong(self->session != NULL && nghttp2_session_want_write(self->session));
}

static PyObject *Session_close(Session *self, PyObject *unused) {
    close_session(self);
    Py_RETURN_NONE;
}

static PyObject *strerror_(PyObject *module, PyObject *arg) {
    long code = PyLong_AsLong(arg);
    if (code == -1 && PyErr_Occurred())
        return NULL;
    return PyUnicode_FromString(nghttp2_strerror((int)code));
}

static PyMethodDef Session_methods[] = {
    {"recv", (PyCFunction)Session_recv, METH_O, "Feed bytes read from the socket; the events they gave."},
    {"take", (PyCFunction)Session_take, METH_NOARGS, "Events reported since (stream closes in send), or None."},
    {"send", (PyCFunction)Session_send, METH_NOARGS, "The bytes to write now (b'' if none)."},
    {"respond", (PyCFunction)Session_respond, METH_VARARGS,
     "respond(stream_id, fields, body=None, trailers=None) -> libnghttp2's result (0 or a negative code)."},
    {"reset", (PyCFunction)Session_reset, METH_VARARGS, "reset(stream_id, error_code): RST_STREAM."},
    {"goaway", (PyCFunction)Session_goaway, METH_VARARGS, "goaway(error_code): the final GOAWAY."},
    {"shutdown_notice", (PyCFunction)Session_shutdown_notice, METH_NOARGS, "The first GOAWAY of a graceful close."},
    {"set_connection_window", (PyCFunction)Session_set_connection_window, METH_O, "The connection's receive window."},
    {"want_read", (PyCFunction)Session_want_read, METH_NOARGS, NULL},
    {"want_write", (PyCFunction)Session_want_write, METH_NOARGS, NULL},
    {"close", (PyCFunction)Session_close, METH_NOARGS, "Free the session now; every later call raises."},
    {NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "predictor._h2.Session",
    .tp_doc = PyDoc_STR("Session(wanted, max_header_bytes, settings): libnghttp2's server side of one connection."),
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Session_init,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_traverse = (traverseproc)Session_traverse,
    .tp_clear = (inquiry)Session_clear,
    .tp_methods = Session_methods,
};

static PyMethodDef module_methods[] = {
    {"strerror", strerror_, METH_O, "libnghttp2's message for an error code."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "predictor._h2", .m_size = -1, .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__h2(void) {
    if (PyType_Ready(&SessionType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Error = PyErr_NewException("predictor._h2.Error", NULL, NULL);
    if (Error == NULL || PyModule_AddObjectRef(m, "Error", Error) < 0
        || PyModule_AddObjectRef(m, "Session", (PyObject *)&SessionType) < 0
        || PyModule_AddIntConstant(m, "DATA", EVENT_DATA) < 0 || PyModule_AddIntConstant(m, "HEADERS", EVENT_HEADERS) < 0
        || PyModule_AddIntConstant(m, "END", EVENT_END) < 0 || PyModule_AddIntConstant(m, "CLOSED", EVENT_CLOSED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
