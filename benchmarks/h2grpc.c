/* h2grpc: an open-loop load generator for one unary gRPC method, over prior-knowledge HTTP/2 (h2c).
 *
 * What `h2load --h1 -m 1 --rps R` is for REST, for gRPC: N connections, one call in flight on each. A
 * connection's calls are due every 1/R s from when it opens; a call that falls due while one is in flight
 * goes out as soon as that reply is in (none is skipped), so a slow server sees the offered rate, not a
 * rate it sets itself. --rps 0 is a closed loop: the next call as soon as the reply is in. Connections
 * open spread over the first interval (connection i at i/(N R) s), so they do not send in lockstep.
 *
 * Unlike h2load it reads the gRPC status, from the response headers (trailers-only, as a refusal is sent)
 * or the trailers. For each call it logs `start_us<TAB>grpc_status<TAB>duration_us`: start is when the
 * HEADERS were submitted (wall clock, us since the epoch), duration runs until the stream closed, and
 * grpc_status is -1 when the stream closed without one (RST_STREAM, GOAWAY, connection error, --timeout).
 * A connection the server closes after a GOAWAY is opened again at once; one lost otherwise, after 100 ms
 * (given up after 5 losses with no call answered between), keeping its schedule. The one-line summary
 * on stdout counts calls by status, calls due but never sent (replies late at the end), and connections
 * opened, lost and given up; stderr says why each was lost.
 *
 * One thread, epoll, non-blocking sockets; libnghttp2's client session does the HTTP/2 (mem_recv and
 * mem_send). libnghttp2's public ABI (nghttp2.h, soname libnghttp2.so.14) is declared in
 * predictor/nghttp2_abi.h and below, so the build needs the library but not its -dev package:
 *     cc -O2 -o h2grpc benchmarks/h2grpc.c -l:libnghttp2.so.14       (benchmarks/h2grpc.py builds it)
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* ---- libnghttp2's ABI ---------------------------------------------------------------------------- */
#include "../predictor/nghttp2_abi.h"

typedef struct nghttp2_priority_spec nghttp2_priority_spec; /* only ever NULL here */
typedef int (*nghttp2_on_frame_not_send_callback)(nghttp2_session *, const nghttp2_frame *, int, void *);
void nghttp2_session_callbacks_set_on_frame_not_send_callback(nghttp2_session_callbacks *,
                                                              nghttp2_on_frame_not_send_callback);
int nghttp2_session_client_new(nghttp2_session **, const nghttp2_session_callbacks *, void *);
int32_t nghttp2_submit_request(nghttp2_session *, const nghttp2_priority_spec *, const nghttp2_nv *, size_t,
                               const nghttp2_data_provider *, void *);

enum { FRAME_HEADERS = 1, FRAME_GOAWAY = 7 };
enum { DATA_FLAG_EOF = 0x01, SETTINGS_ENABLE_PUSH = 0x02, ERROR_CANCEL = 0x08 };

/* ---- the run ------------------------------------------------------------------------------------- */
#define MAX_CONNECTIONS 20000
#define MAX_HEADERS 32
#define MAX_BODY (64 << 20)
#define OUT_HIGH (64 << 10)   /* stop taking frames from the session past this many unwritten bytes */
#define OUT_LIMIT (1 << 20)   /* a connection's write buffer never grows past this */
#define READ_CHUNK (64 << 10)
#define RECONNECT_NS 100000000LL /* a lost connection is opened again after 100 ms */
#define MAX_FAILURES 5           /* connections lost in a row with no call answered between: give it up */
#define STATUSES 18              /* grpc-status 0..16, and -1 at index 17 */
#define HIST_SUB 16
#define HIST_BUCKETS (40 * HIST_SUB)

enum { WAITING, CONNECTING, OPEN, GIVEN_UP };

typedef struct {
    int index, fd, state, events; /* events: what epoll watches now */
    nghttp2_session *session;
    int64_t opens_at;             /* monotonic ns: when it (re)opens, while WAITING */
    int64_t started;              /* monotonic ns: its first opening; its calls are due from here */
    long long sent, quota;        /* calls sent (the next one's number); --requests: its share */
    int failures, goaway, cancelled; /* cancelled: its call timed out, RST_STREAM submitted */
    long long closed_here;        /* calls closed on this connection (since it last opened) */
    /* the call in flight (stream_id 0: none) */
    int32_t stream_id;
    int grpc_status;
    size_t body_sent;
    int64_t call_mono, call_wall_us;
    /* bytes from the session not yet written */
    uint8_t *out;
    size_t out_len, out_off, out_cap;
} Conn;

static struct {
    const char *host, *port, *path, *log_path;
    const uint8_t *body;
    size_t body_len;
    int connections;
    double rps, duration, timeout;
    long long requests;
    nghttp2_nv nva[MAX_HEADERS];
    size_t nvlen;
    struct addrinfo *addr;
    int epfd, timerfd;
    FILE *log;
    int64_t t0, end; /* monotonic ns; end 0: --requests */
    Conn *conns;
    /* totals */
    long long calls, by_status[STATUSES], unsent, opened, lost, gave_up;
    int again; /* a call ended outside the handling of socket events: tend the connections again at once */
    long long hist_ok[HIST_BUCKETS], hist_refused[HIST_BUCKETS];
    int64_t last_close;
} run;

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static void die(const char *what) {
    fprintf(stderr, "h2grpc: %s\n", what);
    exit(1);
}

/* microseconds -> a log-linear bucket (16 per power of two, about 6% wide) */
static int bucket_of(int64_t us) {
    if (us < HIST_SUB)
        return us < 0 ? 0 : (int)us;
    int e = 63 - __builtin_clzll((unsigned long long)us); /* >= 4 */
    int b = (e - 3) * HIST_SUB + (int)((us >> (e - 4)) & (HIST_SUB - 1));
    return b < HIST_BUCKETS ? b : HIST_BUCKETS - 1;
}

static double bucket_middle_ms(int b) {
    if (b < HIST_SUB)
        return b / 1000.0;
    int e = b / HIST_SUB + 3, sub = b % HIST_SUB;
    double low = (double)((int64_t)(HIST_SUB + sub) << (e - 4));
    return (low + (double)(1LL << (e - 4)) / 2) / 1000.0;
}

static double percentile_ms(const long long *hist, double q) {
    long long total = 0, seen = 0;
    for (int b = 0; b < HIST_BUCKETS; b++)
        total += hist[b];
    if (total == 0)
        return -1;
    long long rank = (long long)(q / 100 * (double)(total - 1)) + 1;
    for (int b = 0; b < HIST_BUCKETS; b++)
        if ((seen += hist[b]) >= rank)
            return bucket_middle_ms(b);
    return -1;
}

/* a percentile of a histogram as text, "-" when it is empty */
static const char *ms(const long long *hist, double q, char *out) {
    double v = percentile_ms(hist, q);
    snprintf(out, 32, v < 0 ? "-" : "%.2f ms", v);
    return out;
}

/* ---- calls --------------------------------------------------------------------------------------- */
static int64_t due_at(const Conn *c, long long n) { /* monotonic ns when call n of c is due */
    return c->started + (int64_t)((double)n * 1e9 / run.rps);
}

static void finish_call(Conn *c) {
    int64_t now = mono_ns(), duration_us = (now - c->call_mono) / 1000;
    int s = c->grpc_status;
    run.calls++;
    run.by_status[s >= 0 && s < STATUSES - 1 ? s : STATUSES - 1]++;
    if (s == 0)
        run.hist_ok[bucket_of(duration_us)]++;
    else if (s == 14)
        run.hist_refused[bucket_of(duration_us)]++;
    if (s >= 0)
        c->failures = 0;
    run.last_close = now;
    run.again = 1;
    if (run.log != NULL && fprintf(run.log, "%lld\t%d\t%lld\n", (long long)c->call_wall_us, s,
                                   (long long)duration_us) < 0)
        die("cannot write the log");
    c->stream_id = 0;
    c->cancelled = 0;
    c->closed_here++;
}

static ssize_t read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
    Conn *c = source->ptr;
    size_t n = run.body_len - c->body_sent;
    if (n > length)
        n = length;
    memcpy(buf, run.body + c->body_sent, n);
    c->body_sent += n;
    if (c->body_sent == run.body_len)
        *data_flags |= DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int submit_call(Conn *c) {
    nghttp2_data_provider provider = {{.ptr = c}, read_body};
    c->grpc_status = -1;
    c->body_sent = 0;
    c->call_mono = mono_ns();
    c->call_wall_us = wall_us();
    int32_t id = nghttp2_submit_request(c->session, NULL, run.nva, run.nvlen, &provider, NULL);
    if (id < 0) {
        fprintf(stderr, "h2grpc: connection %d: submit: %s\n", c->index, nghttp2_strerror(id));
        return -1;
    }
    c->stream_id = id;
    c->sent++;
    return 0;
}

/* ---- libnghttp2's callbacks ---------------------------------------------------------------------- */
static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) {
    Conn *c = user_data;
    if (frame->hd.type != FRAME_HEADERS || frame->hd.stream_id != c->stream_id || namelen != 11
        || memcmp(name, "grpc-status", 11) != 0)
        return 0;
    int status = 0;
    for (size_t i = 0; i < valuelen; i++) {
        if (i >= 3 || !isdigit(value[i]))
            return 0; /* not a status: left at -1 unless a valid one follows */
        status = status * 10 + (value[i] - '0');
    }
    if (valuelen > 0)
        c->grpc_status = status;
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    Conn *c = user_data;
    if (frame->hd.type != FRAME_GOAWAY)
        return 0;
    c->goaway = 1; /* no new call on it: opened again once its call is done */
    const nghttp2_goaway *g = &frame->goaway;
    if (g->error_code != 0) /* the server's reason, and its debug data (libnghttp2 says what went wrong) */
        fprintf(stderr, "h2grpc: connection %d: GOAWAY error %u: %.*s\n", c->index, g->error_code,
                (int)(g->opaque_data_len < 200 ? g->opaque_data_len : 200), (const char *)g->opaque_data);
    return 0;
}

static int on_frame_not_send(nghttp2_session *session, const nghttp2_frame *frame, int error, void *user_data) {
    Conn *c = user_data;
    if (frame->hd.type == FRAME_HEADERS && frame->hd.stream_id == c->stream_id) {
        finish_call(c); /* never sent (a GOAWAY came first): its stream is never opened, nor closed */
        c->goaway = 1;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data) {
    Conn *c = user_data;
    if (stream_id == c->stream_id)
        finish_call(c);
    return 0;
}

/* ---- connections --------------------------------------------------------------------------------- */
static void watch(Conn *c, int events) {
    if (events == c->events)
        return;
    struct epoll_event ev = {.events = (uint32_t)events, .data.ptr = c};
    if (epoll_ctl(run.epfd, c->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c->fd, &ev) != 0)
        die("epoll_ctl failed");
    c->events = events;
}

/* closes c (its call in flight logged, with no status unless one came) and schedules it to open again;
 * `why` NULL: a clean close, not counted as a failure */
static void lose(Conn *c, const char *why, int64_t now) {
    if (why != NULL)
        fprintf(stderr, "h2grpc: connection %d: %s\n", c->index, why);
    if (c->stream_id != 0)
        finish_call(c);
    if (c->session != NULL)
        nghttp2_session_del(c->session);
    c->session = NULL;
    if (c->fd >= 0 && close(c->fd) != 0)
        die("close failed");
    c->fd = -1;
    c->events = 0;
    c->out_len = c->out_off = 0;
    c->goaway = 0;
    c->closed_here = 0;
    run.lost += why != NULL;
    if (why != NULL && ++c->failures >= MAX_FAILURES) {
        c->state = GIVEN_UP;
        run.gave_up++;
        fprintf(stderr, "h2grpc: connection %d given up after %d failures\n", c->index, c->failures);
        return;
    }
    c->state = WAITING;
    c->opens_at = now + (why != NULL ? RECONNECT_NS : 0);
}

static void open_conn(Conn *c, int64_t now) {
    int fd = socket(run.addr->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, run.addr->ai_protocol);
    if (fd < 0)
        die("socket failed (too many connections for the file descriptor limit?)");
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        die("TCP_NODELAY failed");
    c->fd = fd;
    c->events = 0;
    run.opened++;
    if (c->started == 0)
        c->started = now;
    if (connect(fd, run.addr->ai_addr, run.addr->ai_addrlen) != 0 && errno != EINPROGRESS) {
        c->state = CONNECTING; /* lose() expects an fd */
        lose(c, strerror(errno), now);
        return;
    }
    c->state = CONNECTING;
    watch(c, EPOLLOUT);
}

static int start_session(Conn *c) {
    nghttp2_session_callbacks *callbacks;
    if (nghttp2_session_callbacks_new(&callbacks) != 0)
        return -1;
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(callbacks, on_frame_not_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    int rv = nghttp2_session_client_new(&c->session, callbacks, c);
    nghttp2_session_callbacks_del(callbacks);
    if (rv != 0) {
        c->session = NULL;
        return -1;
    }
    nghttp2_settings_entry no_push = {SETTINGS_ENABLE_PUSH, 0};
    return nghttp2_submit_settings(c->session, 0, &no_push, 1) == 0 ? 0 : -1;
}

/* writes what the session has to send; 0, or -1 when the connection failed */
static int flush(Conn *c) {
    for (;;) {
        if (c->out_off == c->out_len)
            c->out_off = c->out_len = 0;
        while (c->out_len < OUT_HIGH) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(c->session, &data);
            if (n < 0) {
                fprintf(stderr, "h2grpc: connection %d: %s\n", c->index, nghttp2_strerror((int)n));
                return -1;
            }
            if (n == 0)
                break;
            if (c->out_len + (size_t)n > c->out_cap) {
                size_t cap = c->out_len + (size_t)n;
                if (cap < 2 * c->out_cap)
                    cap = 2 * c->out_cap;
                if (cap > OUT_LIMIT)
                    die("a frame larger than the write buffer's limit");
                uint8_t *out = realloc(c->out, cap);
                if (out == NULL)
                    die("out of memory");
                c->out = out;
                c->out_cap = cap;
            }
            memcpy(c->out + c->out_len, data, (size_t)n);
            c->out_len += (size_t)n;
        }
        if (c->out_off == c->out_len)
            break;
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                watch(c, EPOLLIN | EPOLLOUT);
                return 0;
            }
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->out_off += (size_t)w;
    }
    watch(c, EPOLLIN);
    return 0;
}

static void on_readable(Conn *c, int64_t now) {
    static uint8_t buf[READ_CHUNK];
    for (int reads = 0; reads < 4; reads++) { /* then the other connections get their turn */
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) { /* after a GOAWAY and with no call in flight, a clean close */
            lose(c, n < 0 ? strerror(errno) : c->goaway && c->stream_id == 0 ? NULL : "closed by the server", now);
            return;
        }
        ssize_t rv = nghttp2_session_mem_recv(c->session, buf, (size_t)n);
        if (rv < 0) {
            lose(c, nghttp2_strerror((int)rv), now);
            return;
        }
        if ((size_t)n < sizeof buf)
            return;
    }
}

static int run_over(int64_t now) {
    return run.end != 0 && now >= run.end;
}

static int wants_a_call(Conn *c, int64_t now) { /* due, and allowed */
    if (run.end == 0 && c->sent >= c->quota)
        return 0;
    return run.rps == 0 || due_at(c, c->sent) <= now;
}

/* does what is due on c; the next time it needs attention (monotonic ns), or 0 for none */
static int64_t tend(Conn *c, int64_t now) {
    if (c->state == GIVEN_UP)
        return 0;
    if (c->state == WAITING) {
        int wanted = run.end != 0 ? !run_over(now) : c->sent < c->quota;
        if (!wanted)
            return 0;
        if (now < c->opens_at)
            return c->opens_at;
        open_conn(c, now);
        return 0;
    }
    if (c->state != OPEN || c->session == NULL)
        return 0;
    if (c->stream_id != 0) {
        int64_t expires = c->call_mono + (int64_t)(run.timeout * 1e9) * (1 + c->cancelled);
        if (now < expires)
            return expires;
        if (c->cancelled) { /* its RST_STREAM could not be sent in another timeout */
            lose(c, "a cancelled call's stream did not close", now);
            return 0;
        }
        int rv = nghttp2_submit_rst_stream(c->session, 0, c->stream_id, ERROR_CANCEL);
        if (rv != 0) {
            lose(c, nghttp2_strerror(rv), now);
            return 0;
        }
        c->cancelled = 1;
        if (flush(c) != 0) {
            lose(c, "write failed", now);
            return 0;
        }
        return tend(c, now); /* its stream closed when the RST_STREAM was sent (finish_call()), or not yet */
    }
    if (c->goaway) { /* opened again: at once, unless it was closed before it answered anything */
        lose(c, c->closed_here > 0 ? NULL : "GOAWAY before any call closed", now);
        return tend(c, now);
    }
    if (run_over(now))
        return 0;
    if (!wants_a_call(c, now))
        return run.end == 0 && c->sent >= c->quota ? 0 : due_at(c, c->sent);
    if (submit_call(c) != 0 || flush(c) != 0) {
        lose(c, "cannot send a call", now);
        return 0;
    }
    return tend(c, now); /* when the call times out */
}

static int busy(void) { /* anything still to do: a call in flight, or one still to send */
    int64_t now = mono_ns();
    for (int i = 0; i < run.connections; i++) {
        Conn *c = &run.conns[i];
        if (c->state == GIVEN_UP)
            continue;
        if (c->stream_id != 0)
            return 1;
        if (run.end == 0 ? c->sent < c->quota : !run_over(now))
            return 1;
    }
    return 0;
}

static void arm(int64_t at) {
    static int64_t armed = -1;
    if (at == armed)
        return;
    armed = at;
    struct itimerspec when = {{0, 0}, {0, 0}};
    if (at > 0) {
        when.it_value.tv_sec = at / 1000000000LL;
        when.it_value.tv_nsec = at % 1000000000LL;
    }
    if (timerfd_settime(run.timerfd, TFD_TIMER_ABSTIME, &when, NULL) != 0)
        die("timerfd_settime failed");
}

/* ---- options ------------------------------------------------------------------------------------- */
static void usage(void) {
    fputs("usage: h2grpc --port P [--host H] --path /pkg.Service/Method --body FILE [--connections N]\n"
          "              [--rps R] (--duration S | --requests N) [--header name:value]... [--log FILE]\n"
          "              [--timeout S]\n"
          "  --body FILE     the whole gRPC message as sent: 5-byte prefix + protobuf\n"
          "  --rps R         calls a second on each connection (0: closed loop, the default)\n"
          "  --duration S    send for S seconds, then wait for the calls in flight\n"
          "  --requests N    N calls in all, shared among the connections\n"
          "  --timeout S     a call not closed after S seconds is cancelled and logged -1 (default 30)\n"
          "  --log FILE      one line a call: start_us<TAB>grpc_status<TAB>duration_us\n",
          stderr);
    exit(2);
}

static double number(const char *text, const char *option) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !(v >= 0) || v > 1e9) {
        fprintf(stderr, "h2grpc: %s: not a number >= 0: %s\n", option, text);
        exit(2);
    }
    return v;
}

static void add_header(const char *name, size_t namelen, const char *value, size_t valuelen) {
    if (run.nvlen == MAX_HEADERS)
        die("too many headers");
    run.nva[run.nvlen++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, namelen, valuelen, 0};
}

static void add_header_option(char *option) { /* name:value; the name lowercased, as HTTP/2 requires */
    char *colon = strchr(option, ':');
    if (colon == NULL || colon == option) {
        fprintf(stderr, "h2grpc: --header wants name:value, got %s\n", option);
        exit(2);
    }
    for (char *p = option; p < colon; p++)
        *p = (char)tolower((unsigned char)*p);
    char *value = colon + 1;
    while (*value == ' ')
        value++;
    add_header(option, (size_t)(colon - option), value, strlen(value));
}

static void read_body_file(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        die("cannot open --body");
    if (st.st_size < 5 || st.st_size > MAX_BODY)
        die("--body must hold one gRPC message: a 5-byte prefix and at most 64 MiB");
    uint8_t *body = malloc((size_t)st.st_size);
    if (body == NULL)
        die("out of memory");
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, body + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("cannot read --body");
        got += (size_t)n;
    }
    if (close(fd) != 0)
        die("cannot close --body");
    uint32_t length = (uint32_t)body[1] << 24 | (uint32_t)body[2] << 16 | (uint32_t)body[3] << 8 | body[4];
    if (body[0] > 1 || (size_t)length != got - 5)
        die("--body is not one gRPC message: its prefix's length is not the rest of the file");
    run.body = body;
    run.body_len = got;
}

static void parse(int argc, char **argv) {
    static const struct option options[] = {
        {"host", required_argument, NULL, 'h'},        {"port", required_argument, NULL, 'p'},
        {"path", required_argument, NULL, 'P'},        {"body", required_argument, NULL, 'b'},
        {"connections", required_argument, NULL, 'c'}, {"rps", required_argument, NULL, 'r'},
        {"duration", required_argument, NULL, 'D'},    {"requests", required_argument, NULL, 'n'},
        {"header", required_argument, NULL, 'H'},      {"log", required_argument, NULL, 'l'},
        {"timeout", required_argument, NULL, 'T'},     {NULL, 0, NULL, 0},
    };
    static char authority[300];
    const char *body = NULL;
    char *extra[MAX_HEADERS];
    int n_extra = 0, opt;
    run.host = "127.0.0.1";
    run.connections = 1;
    run.timeout = 30;
    while ((opt = getopt_long(argc, argv, "h:p:P:b:c:r:D:n:H:l:T:", options, NULL)) != -1) {
        switch (opt) {
        case 'h': run.host = optarg; break;
        case 'p': run.port = optarg; break;
        case 'P': run.path = optarg; break;
        case 'b': body = optarg; break;
        case 'c': run.connections = (int)number(optarg, "--connections"); break;
        case 'r': run.rps = number(optarg, "--rps"); break;
        case 'D': run.duration = number(optarg, "--duration"); break;
        case 'n': run.requests = (long long)number(optarg, "--requests"); break;
        case 'H':
            if (n_extra == MAX_HEADERS)
                die("too many --header");
            extra[n_extra++] = optarg;
            break;
        case 'l': run.log_path = optarg; break;
        case 'T': run.timeout = number(optarg, "--timeout"); break;
        default: usage();
        }
    }
    if (optind != argc || run.port == NULL || run.path == NULL || body == NULL || run.connections < 1
        || run.connections > MAX_CONNECTIONS || (run.duration > 0) == (run.requests > 0) || run.timeout <= 0)
        usage();
    read_body_file(body);
    if (snprintf(authority, sizeof authority, "%s:%s", run.host, run.port) >= (int)sizeof authority)
        die("host too long");
    add_header(":method", 7, "POST", 4);
    add_header(":scheme", 7, "http", 4);
    add_header(":path", 5, run.path, strlen(run.path));
    add_header(":authority", 10, authority, strlen(authority));
    add_header("content-type", 12, "application/grpc", 16);
    add_header("te", 2, "trailers", 8);
    for (int i = 0; i < n_extra; i++)
        add_header_option(extra[i]);
}

/* ---- main ---------------------------------------------------------------------------------------- */
int main(int argc, char **argv) {
    parse(argc, argv);
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        die("signal failed");
    struct rlimit files; /* a descriptor for each connection, and a few more */
    if (getrlimit(RLIMIT_NOFILE, &files) != 0)
        die("getrlimit failed");
    if (files.rlim_cur < (rlim_t)run.connections + 32) {
        files.rlim_cur = files.rlim_max < (rlim_t)run.connections + 32 ? files.rlim_max : (rlim_t)run.connections + 32;
        if (setrlimit(RLIMIT_NOFILE, &files) != 0)
            die("setrlimit failed");
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rv = getaddrinfo(run.host, run.port, &hints, &run.addr);
    if (rv != 0) {
        fprintf(stderr, "h2grpc: %s:%s: %s\n", run.host, run.port, gai_strerror(rv));
        return 1;
    }
    if (run.log_path != NULL) {
        if ((run.log = fopen(run.log_path, "w")) == NULL)
            die("cannot open --log");
        if (setvbuf(run.log, NULL, _IOFBF, 1 << 20) != 0)
            die("setvbuf failed");
    }
    run.epfd = epoll_create1(EPOLL_CLOEXEC);
    run.timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (run.epfd < 0 || run.timerfd < 0)
        die("epoll/timerfd failed");
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(run.epfd, EPOLL_CTL_ADD, run.timerfd, &tev) != 0)
        die("epoll_ctl failed");
    run.conns = calloc((size_t)run.connections, sizeof(Conn));
    if (run.conns == NULL)
        die("out of memory");

    run.t0 = mono_ns();
    run.end = run.duration > 0 ? run.t0 + (int64_t)(run.duration * 1e9) : 0;
    for (int i = 0; i < run.connections; i++) {
        Conn *c = &run.conns[i];
        c->index = i;
        c->fd = -1;
        c->state = WAITING;
        /* spread over the first interval: connection i at i/(N R) s */
        c->opens_at = run.t0 + (run.rps > 0 ? (int64_t)((double)i * 1e9 / (run.rps * run.connections)) : 0);
        c->quota = run.requests / run.connections + (i < run.requests % run.connections);
    }

    struct epoll_event events[256];
    while (busy()) {
        int64_t now = mono_ns(), next = run.end != 0 && !run_over(now) ? run.end : 0;
        run.again = 0;
        for (int i = 0; i < run.connections; i++) {
            int64_t at = tend(&run.conns[i], now);
            if (at > 0 && (next == 0 || at < next))
                next = at;
        }
        if (!busy())
            break;
        arm(next);
        int n = epoll_wait(run.epfd, events, 256, run.again ? 0 : -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait failed");
        }
        now = mono_ns();
        for (int i = 0; i < n; i++) {
            Conn *c = events[i].data.ptr;
            if (c == NULL) {
                uint64_t expirations;
                if (read(run.timerfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                    die("timerfd read failed");
                continue;
            }
            if (c->state == CONNECTING) {
                int error = 0;
                socklen_t len = sizeof error;
                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0) {
                    lose(c, strerror(error != 0 ? error : errno), now);
                    continue;
                }
                if (start_session(c) != 0)
                    die("cannot start an HTTP/2 session");
                c->state = OPEN;
                if (flush(c) != 0)
                    lose(c, "write failed", now);
                continue;
            }
            if (c->state != OPEN)
                continue;
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(c, now);
            if (c->state == OPEN && flush(c) != 0)
                lose(c, "write failed", now);
            if (c->state == OPEN && !nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session)
                && c->out_off == c->out_len)
                lose(c, c->stream_id != 0 ? "the session ended with a call in flight" : NULL, now);
        }
    }

    int64_t stop = mono_ns();
    for (int i = 0; i < run.connections; i++) {
        Conn *c = &run.conns[i];
        if (run.end != 0 && c->state != GIVEN_UP && c->started != 0) { /* due before the end, never sent */
            long long due = (long long)((double)(run.end - c->started) * run.rps / 1e9 - 1e-9) + 1;
            if (run.rps > 0 && due > c->sent)
                run.unsent += due - c->sent;
        }
        if (c->state != WAITING && c->state != GIVEN_UP)
            lose(c, NULL, stop);
        free(c->out);
    }
    char p[4][32];
    double seconds = (double)((run.end != 0 ? run.end : run.last_close > 0 ? run.last_close : stop) - run.t0) / 1e9;
    printf("h2grpc: %lld calls in %.2f s (%.1f/s) on %d connections at %g/s each: OK %lld, UNAVAILABLE %lld, "
           "other status %lld, no status %lld; OK p50 %s p99 %s; UNAVAILABLE p50 %s p99 %s; "
           "due but unsent %lld; connections opened %lld, lost %lld, given up %lld\n",
           run.calls, seconds, seconds > 0 ? (double)run.calls / seconds : 0.0, run.connections, run.rps,
           run.by_status[0], run.by_status[14], run.calls - run.by_status[0] - run.by_status[14]
           - run.by_status[STATUSES - 1], run.by_status[STATUSES - 1], ms(run.hist_ok, 50, p[0]), ms(run.hist_ok, 99, p[1]),
           ms(run.hist_refused, 50, p[2]), ms(run.hist_refused, 99, p[3]), run.unsent, run.opened, run.lost, run.gave_up);
    if (run.log != NULL && fclose(run.log) != 0)
        die("cannot write the log");
    free(run.conns);
    free((void *)run.body);
    freeaddrinfo(run.addr);
    if (close(run.epfd) != 0 || close(run.timerfd) != 0)
        die("close failed");
    return fflush(stdout) == 0 ? 0 : 1;
}
