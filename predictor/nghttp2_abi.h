/* The part of libnghttp2's public ABI (nghttp2.h, soname libnghttp2.so.14) that both of the project's
 * HTTP/2 programs use: predictor/_h2.c (the native gRPC server's session) and benchmarks/h2grpc.c (the
 * gRPC load generator). Declared here rather than included, so building needs the library but not its
 * -dev package. Each program declares the few further calls only it makes. */
#ifndef PERF_PREDICTOR_NGHTTP2_ABI_H
#define PERF_PREDICTOR_NGHTTP2_ABI_H

#include <stdint.h>
#include <sys/types.h>

typedef struct nghttp2_session nghttp2_session;
typedef struct nghttp2_session_callbacks nghttp2_session_callbacks;
typedef struct {
    size_t length;
    int32_t stream_id;
    uint8_t type;
    uint8_t flags;
    uint8_t reserved;
} nghttp2_frame_hd;
typedef struct {
    nghttp2_frame_hd hd;
    int32_t last_stream_id;
    uint32_t error_code;
    uint8_t *opaque_data;
    size_t opaque_data_len;
    uint8_t reserved;
} nghttp2_goaway;
typedef union {
    nghttp2_frame_hd hd; /* every frame starts with its header */
    nghttp2_goaway goaway;
} nghttp2_frame;
typedef struct {
    uint8_t *name;
    uint8_t *value;
    size_t namelen;
    size_t valuelen;
    uint8_t flags;
} nghttp2_nv;
typedef struct {
    int32_t settings_id;
    uint32_t value;
} nghttp2_settings_entry;
typedef union {
    int fd;
    void *ptr;
} nghttp2_data_source;
typedef ssize_t (*nghttp2_data_source_read_callback)(nghttp2_session *, int32_t, uint8_t *, size_t, uint32_t *,
                                                     nghttp2_data_source *, void *);
typedef struct {
    nghttp2_data_source source;
    nghttp2_data_source_read_callback read_callback;
} nghttp2_data_provider;
typedef int (*nghttp2_on_frame_callback)(nghttp2_session *, const nghttp2_frame *, void *);
typedef int (*nghttp2_on_header_callback)(nghttp2_session *, const nghttp2_frame *, const uint8_t *, size_t,
                                          const uint8_t *, size_t, uint8_t, void *);
typedef int (*nghttp2_on_stream_close_callback)(nghttp2_session *, int32_t, uint32_t, void *);

int nghttp2_session_callbacks_new(nghttp2_session_callbacks **);
void nghttp2_session_callbacks_del(nghttp2_session_callbacks *);
void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *, nghttp2_on_header_callback);
void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *, nghttp2_on_frame_callback);
void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *,
                                                            nghttp2_on_stream_close_callback);
void nghttp2_session_del(nghttp2_session *);
ssize_t nghttp2_session_mem_recv(nghttp2_session *, const uint8_t *, size_t);
ssize_t nghttp2_session_mem_send(nghttp2_session *, const uint8_t **);
int nghttp2_session_want_read(nghttp2_session *);
int nghttp2_session_want_write(nghttp2_session *);
int nghttp2_submit_settings(nghttp2_session *, uint8_t, const nghttp2_settings_entry *, size_t);
int nghttp2_submit_rst_stream(nghttp2_session *, uint8_t, int32_t, uint32_t);
const char *nghttp2_strerror(int);

#endif
