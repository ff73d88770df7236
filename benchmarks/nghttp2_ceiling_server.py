"""A candidate, measured only: gRPC's HTTP/2 served inside the Python process by libnghttp2 (C, through
ctypes) on uvloop, answering every ModelInfer with the framework ceiling's fixed reply.

benchmarks/framework_ceiling.py runs it beside uvicorn, grpc.aio and the Envoy front to show what an
in-process native HTTP/2 front would allow, the design that would let gRPC overtake REST JSON at
concurrency 1 (README, Performance). It is not the served design: no limits, errors, deadlines, other
RPCs or flow control of large replies; it needs Debian's libnghttp2-14, which the image lacks.

    python benchmarks/nghttp2_ceiling_server.py --port PORT
"""
import asyncio
import ctypes as C
import sys

import uvloop

from framework_ceiling import REPLY

lib = C.CDLL("libnghttp2.so.14")
BODY = b"\x00" + len(REPLY).to_bytes(4, "big") + REPLY


class FrameHd(C.Structure):
    _fields_ = [("length", C.c_size_t), ("stream_id", C.c_int32), ("type", C.c_uint8), ("flags", C.c_uint8),
                ("reserved", C.c_uint8)]


class NV(C.Structure):
    _fields_ = [("name", C.c_char_p), ("value", C.c_char_p), ("namelen", C.c_size_t), ("valuelen", C.c_size_t),
                ("flags", C.c_uint8)]


READ_CB = C.CFUNCTYPE(C.c_ssize_t, C.c_void_p, C.c_int32, C.POINTER(C.c_uint8), C.c_size_t,
                      C.POINTER(C.c_uint32), C.c_void_p, C.c_void_p)


class DataProvider(C.Structure):
    _fields_ = [("source", C.c_void_p), ("read_callback", READ_CB)]


FRAME_CB = C.CFUNCTYPE(C.c_int, C.c_void_p, C.POINTER(FrameHd), C.c_void_p)
DATA_CB = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_uint8, C.c_int32, C.POINTER(C.c_char), C.c_size_t, C.c_void_p)
HEADER_CB = C.CFUNCTYPE(C.c_int, C.c_void_p, C.POINTER(FrameHd), C.POINTER(C.c_char), C.c_size_t,
                        C.POINTER(C.c_char), C.c_size_t, C.c_uint8, C.c_void_p)
CLOSE_CB = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_int32, C.c_uint32, C.c_void_p)
lib.nghttp2_session_mem_recv.restype = C.c_ssize_t
lib.nghttp2_session_mem_recv.argtypes = [C.c_void_p, C.c_char_p, C.c_size_t]
lib.nghttp2_session_mem_send.restype = C.c_ssize_t
lib.nghttp2_session_mem_send.argtypes = [C.c_void_p, C.POINTER(C.POINTER(C.c_char))]
lib.nghttp2_submit_response.argtypes = [C.c_void_p, C.c_int32, C.POINTER(NV), C.c_size_t, C.POINTER(DataProvider)]
lib.nghttp2_submit_trailer.argtypes = [C.c_void_p, C.c_int32, C.POINTER(NV), C.c_size_t]


def nva(pairs):
    arr = (NV * len(pairs))()
    for i, (k, v) in enumerate(pairs):
        arr[i] = NV(k, v, len(k), len(v), 0)
    return arr


RESP_HEADERS = nva([(b":status", b"200"), (b"content-type", b"application/grpc")])
TRAILERS = nva([(b"grpc-status", b"0")])
HEADERS, DATA = 1, 0
END_STREAM = 1


class Conn(asyncio.Protocol):
    def __init__(self):
        self.streams = {}
        self.session = C.c_void_p()
        cbs = C.c_void_p()
        lib.nghttp2_session_callbacks_new(C.byref(cbs))
        self._cbs = [FRAME_CB(self.on_frame), DATA_CB(self.on_data), HEADER_CB(self.on_header),
                     CLOSE_CB(self.on_close)]
        lib.nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, self._cbs[0])
        lib.nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, self._cbs[1])
        lib.nghttp2_session_callbacks_set_on_header_callback(cbs, self._cbs[2])
        lib.nghttp2_session_callbacks_set_on_stream_close_callback(cbs, self._cbs[3])
        lib.nghttp2_session_server_new(C.byref(self.session), cbs, None)
        lib.nghttp2_session_callbacks_del(cbs)
        self.reader = READ_CB(self.read)
        self.provider = DataProvider(None, self.reader)
        self.pending = {}
        lib.nghttp2_submit_settings(self.session, 0, None, 0)

    def connection_made(self, transport):
        self.transport = transport
        self.flush()

    def flush(self):
        ptr = C.POINTER(C.c_char)()
        out = []
        while True:
            n = lib.nghttp2_session_mem_send(self.session, C.byref(ptr))
            if n <= 0:
                break
            out.append(C.string_at(ptr, n))
        if out:
            self.transport.write(b"".join(out))

    def data_received(self, data):
        n = lib.nghttp2_session_mem_recv(self.session, data, len(data))
        if n < 0:
            self.transport.close()
            return
        self.flush()

    def on_header(self, session, frame, name, namelen, value, valuelen, flags, ud):
        if namelen == 5 and name[:5] == b":path":
            self.streams.setdefault(frame.contents.stream_id, [b"", []])[0] = value[:valuelen]
        return 0

    def on_data(self, session, flags, stream_id, data, length, ud):
        self.streams.setdefault(stream_id, [b"", []])[1].append(data[:length])
        return 0

    def on_frame(self, session, frame, ud):
        hd = frame.contents
        if hd.type in (HEADERS, DATA) and hd.flags & END_STREAM:
            sid = hd.stream_id
            # a real front would route on the path and parse the body: the row pays for collecting them
            path, chunks = self.streams.pop(sid, (b"", []))
            self.pending[sid] = BODY
            lib.nghttp2_submit_response(self.session, sid, RESP_HEADERS, 2, C.byref(self.provider))
        return 0

    def read(self, session, stream_id, buf, length, data_flags, source, ud):
        body = self.pending.pop(stream_id, b"")
        chunk = body[:length]  # never more than nghttp2 offers room for
        C.memmove(buf, chunk, len(chunk))
        if len(body) > length:
            self.pending[stream_id] = body[length:]
        else:
            data_flags[0] = 0x01 | 0x02  # EOF, NO_END_STREAM: the trailers end the stream
            lib.nghttp2_submit_trailer(self.session, stream_id, TRAILERS, 1)
        return len(chunk)

    def on_close(self, session, stream_id, error_code, ud):
        self.streams.pop(stream_id, None)
        return 0


async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[sys.argv.index("--port") + 1])))
