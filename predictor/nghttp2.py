"""The parts of libnghttp2 (Debian's libnghttp2-14, C) that grpc_native.py uses, through ctypes.

libnghttp2 does HTTP/2's framing, HPACK, flow control and its protocol checks without doing any I/O:
bytes read from a socket go in (`mem_recv`), callbacks report headers, data and stream ends, and the
bytes to write come out (`mem_send`). So it runs on our own event loop, in this process.
"""
from __future__ import annotations

import ctypes as C
from typing import Optional

SONAME = "libnghttp2.so.14"

# frame types and flags (RFC 9113 section 6)
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0, 1, 3, 4, 7
FLAG_END_STREAM = 0x01
# SETTINGS identifiers
MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE = 3, 4, 6
# HTTP/2 error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0, 1, 2, 7, 8, 11
# callback return values: reset this stream only / end the whole session
ERR_TEMPORAL_CALLBACK_FAILURE, ERR_CALLBACK_FAILURE = -521, -902
# the read callback's data flags
DATA_FLAG_EOF, DATA_FLAG_NO_END_STREAM = 0x01, 0x02


class FrameHeader(C.Structure):
    """nghttp2_frame_hd, the first member of every nghttp2_frame."""
    _fields_ = [("length", C.c_size_t), ("stream_id", C.c_int32), ("type", C.c_uint8), ("flags", C.c_uint8),
                ("reserved", C.c_uint8)]


class NV(C.Structure):
    _fields_ = [("name", C.c_char_p), ("value", C.c_char_p), ("namelen", C.c_size_t), ("valuelen", C.c_size_t),
                ("flags", C.c_uint8)]


class SettingsEntry(C.Structure):
    _fields_ = [("settings_id", C.c_int32), ("value", C.c_uint32)]


READ = C.CFUNCTYPE(C.c_ssize_t, C.c_void_p, C.c_int32, C.POINTER(C.c_char), C.c_size_t,
                   C.POINTER(C.c_uint32), C.c_void_p, C.c_void_p)


class DataProvider(C.Structure):
    _fields_ = [("source", C.c_void_p), ("read_callback", READ)]


ON_FRAME = C.CFUNCTYPE(C.c_int, C.c_void_p, C.POINTER(FrameHeader), C.c_void_p)
ON_DATA = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_uint8, C.c_int32, C.POINTER(C.c_char), C.c_size_t, C.c_void_p)
# name and value arrive as bytes: libnghttp2 guarantees them NUL-terminated (and, checking HTTP
# messaging as it does by default, free of NUL); cheaper than a pointer object per header
ON_HEADER = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_void_p, C.c_char_p, C.c_size_t, C.c_char_p, C.c_size_t,
                        C.c_uint8, C.c_void_p)
ON_CLOSE = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_int32, C.c_uint32, C.c_void_p)

_SIGNATURES = {
    "nghttp2_session_callbacks_new": (C.c_int, [C.POINTER(C.c_void_p)]),
    "nghttp2_session_callbacks_del": (None, [C.c_void_p]),
    "nghttp2_session_callbacks_set_on_begin_headers_callback": (None, [C.c_void_p, ON_FRAME]),
    "nghttp2_session_callbacks_set_on_header_callback": (None, [C.c_void_p, ON_HEADER]),
    "nghttp2_session_callbacks_set_on_data_chunk_recv_callback": (None, [C.c_void_p, ON_DATA]),
    "nghttp2_session_callbacks_set_on_frame_recv_callback": (None, [C.c_void_p, ON_FRAME]),
    "nghttp2_session_callbacks_set_on_stream_close_callback": (None, [C.c_void_p, ON_CLOSE]),
    "nghttp2_session_server_new": (C.c_int, [C.POINTER(C.c_void_p), C.c_void_p, C.c_void_p]),
    "nghttp2_session_del": (None, [C.c_void_p]),
    "nghttp2_session_mem_recv": (C.c_ssize_t, [C.c_void_p, C.c_char_p, C.c_size_t]),
    "nghttp2_session_mem_send": (C.c_ssize_t, [C.c_void_p, C.POINTER(C.POINTER(C.c_char))]),
    "nghttp2_session_want_read": (C.c_int, [C.c_void_p]),
    "nghttp2_session_want_write": (C.c_int, [C.c_void_p]),
    "nghttp2_session_set_local_window_size": (C.c_int, [C.c_void_p, C.c_uint8, C.c_int32, C.c_int32]),
    "nghttp2_session_get_last_proc_stream_id": (C.c_int32, [C.c_void_p]),
    "nghttp2_submit_settings": (C.c_int, [C.c_void_p, C.c_uint8, C.POINTER(SettingsEntry), C.c_size_t]),
    "nghttp2_submit_response": (C.c_int, [C.c_void_p, C.c_int32, C.POINTER(NV), C.c_size_t, C.POINTER(DataProvider)]),
    "nghttp2_submit_trailer": (C.c_int, [C.c_void_p, C.c_int32, C.POINTER(NV), C.c_size_t]),
    "nghttp2_submit_rst_stream": (C.c_int, [C.c_void_p, C.c_uint8, C.c_int32, C.c_uint32]),
    "nghttp2_submit_shutdown_notice": (C.c_int, [C.c_void_p]),
    "nghttp2_submit_goaway": (C.c_int, [C.c_void_p, C.c_uint8, C.c_int32, C.c_uint32, C.c_char_p, C.c_size_t]),
    "nghttp2_strerror": (C.c_char_p, [C.c_int]),
}


def load() -> Optional[C.CDLL]:
    """The library with its signatures declared, or None where it is not installed."""
    try:
        lib = C.CDLL(SONAME)
    except OSError:
        return None
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


def headers(pairs: list[tuple[bytes, bytes]]) -> C.Array:
    """An nghttp2_nv array; libnghttp2 copies it when a frame is submitted."""
    array = (NV * len(pairs))()
    for i, (name, value) in enumerate(pairs):
        array[i] = NV(name, value, len(name), len(value), 0)
    return array


def settings(entries: dict[int, int]) -> C.Array:
    array = (SettingsEntry * len(entries))()
    for i, (key, value) in enumerate(entries.items()):
        array[i] = SettingsEntry(key, value)
    return array
