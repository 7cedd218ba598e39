/* tls_loadgen.c - epoll, non-blocking, single-threaded TLS frame load generator.
 *
 * The TLS counterpart of ../shared/bench/c/loadgen.c, with the same frames,
 * modes and JSON output, so that its results read the same way.
 *
 * Frame: 16-byte big-endian header
 *   uint32 total_length (header + body), uint16 version, uint16 flag,
 *   uint16 service_id, uint16 command_id, uint16 seq_num, uint16 reserved
 * followed by body.  The server must echo each frame unchanged.
 *
 * Load mode:  N connections (TCP connect + TLS handshake, in batches), each
 *   keeps D frames in flight.  After a warm-up period, counts echoed frames
 *   for a fixed duration and records per-frame round-trip latency (send ->
 *   echo received) in a histogram.
 * Idle mode (--idle): opens N connections in batches, completes the handshake
 *   and one ping-pong on each (proving the server accepted and registered it),
 *   prints a JSON line with how many are up, then holds them for --hold
 *   seconds and exits.
 * --plain: the same over plain TCP, for comparison with the same client.
 * --ca FILE: verify the server's certificate against FILE, and that it is
 *   valid for 127.0.0.1 (without it, any certificate is accepted).
 *
 * Every frame is written with SSL_write as the plain loadgen writes it with
 * send: the frames queued for a connection go out in one SSL_write, as few
 * records as OpenSSL needs.  OpenSSL does the socket I/O itself (SSL_set_fd).
 *
 * Everything is bounded: a hard alarm() kills the process if it overruns.
 * Sockets use SO_LINGER{1,0} so closing does not leave TIME_WAIT behind.
 * Output: one JSON object on stdout.
 *
 * Build: cc -O2 -Wall -o tls_loadgen tls_loadgen.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define HDR 16
#define HIST_FINE_NS 250ULL            /* 250 ns buckets ... */
#define HIST_FINE_MAX 10000000ULL      /* ... up to 10 ms */
#define HIST_COARSE_NS 100000ULL       /* then 100 us buckets ... */
#define HIST_COARSE_MAX 5000000000ULL  /* ... up to 5 s */
#define NFINE (HIST_FINE_MAX / HIST_FINE_NS)
#define NCOARSE ((HIST_COARSE_MAX - HIST_FINE_MAX) / HIST_COARSE_NS)
#define READ_CHUNK 65536

enum { CONNECTING, HANDSHAKING, UP, FAILED };

typedef struct {
    int fd;
    int state;
    SSL *ssl; /* NULL with --plain */
    uint8_t *rbuf;
    size_t rlen, rcap;
    uint8_t *wbuf;
    size_t wlen, woff, wcap;
    uint64_t *ts;
    unsigned head, tail, cnt; /* ring of send timestamps */
    uint16_t seq_send, seq_recv;
    uint32_t events; /* what epoll is asked for now */
    int got_pong;
} conn_t;

static const char *host = "127.0.0.1";
static const char *ca_file = NULL;
static int port = 0, nconns = 1, depth = 1, body = 64, idle = 0, batch = 200, plain = 0;
static double duration = 5.0, warmup = 1.0, hold = 10.0;
static int epfd;
static SSL_CTX *ctx;
static conn_t *conns;
static uint8_t *tmpl;
static int flen;
static uint64_t hist[NFINE + NCOARSE + 1];
static uint64_t nlat = 0, latsum = 0, latmax = 0;
static uint64_t errors = 0, handshakes = 0;
static char first_error[160];

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + t.tv_nsec;
}

static void die(const char *m) {
    printf("{\"error\": \"%s: %s\"}\n", m, strerror(errno));
    fflush(stdout);
    exit(2);
}

/* Count an error; keep the first one's reason (OpenSSL's if it has one) for the report. */
static void fail(const char *what) {
    errors++;
    if (first_error[0]) return;
    unsigned long e = ERR_peek_error();
    char reason[120] = "";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    else if (errno) snprintf(reason, sizeof reason, "%s", strerror(errno));
    snprintf(first_error, sizeof first_error, "%s: %s", what, reason);
    for (char *p = first_error; *p; p++)
        if (*p == '"' || *p == '\\') *p = '\'';
}

static void hist_add(uint64_t ns) {
    size_t i;
    if (ns < HIST_FINE_MAX) i = ns / HIST_FINE_NS;
    else if (ns < HIST_COARSE_MAX) i = NFINE + (ns - HIST_FINE_MAX) / HIST_COARSE_NS;
    else i = NFINE + NCOARSE;
    hist[i]++;
    nlat++;
    latsum += ns;
    if (ns > latmax) latmax = ns;
}

static double hist_pct(double p) {
    if (!nlat) return 0;
    uint64_t target = (uint64_t)(p * (double)nlat);
    if (target >= nlat) target = nlat - 1;
    uint64_t c = 0;
    for (size_t i = 0; i < NFINE + NCOARSE + 1; i++) {
        c += hist[i];
        if (c > target) {
            if (i < NFINE) return (i * HIST_FINE_NS + HIST_FINE_NS / 2) / 1000.0;
            if (i < NFINE + NCOARSE)
                return (HIST_FINE_MAX + (i - NFINE) * HIST_COARSE_NS + HIST_COARSE_NS / 2) / 1000.0;
            return HIST_COARSE_MAX / 1000.0;
        }
    }
    return 0;
}

static void want(conn_t *c, uint32_t events) {
    if (c->events == events) return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = events;
}

static void drop(conn_t *c) {
    if (c->state == FAILED) return;
    c->state = FAILED;
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
}

static void wbuf_reserve(conn_t *c, size_t extra) {
    if (c->woff && c->woff == c->wlen) c->woff = c->wlen = 0;
    if (c->wlen + extra > c->wcap) {
        /* Moving unsent bytes is allowed: SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER. */
        if (c->woff) {
            memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
            c->wlen -= c->woff;
            c->woff = 0;
        }
        while (c->wlen + extra > c->wcap) c->wcap = c->wcap ? c->wcap * 2 : 4096;
        c->wbuf = realloc(c->wbuf, c->wcap);
        if (!c->wbuf) die("realloc");
    }
}

static void enqueue_frame(conn_t *c, uint64_t t) {
    wbuf_reserve(c, flen);
    uint8_t *p = c->wbuf + c->wlen;
    memcpy(p, tmpl, flen);
    uint16_t s = htons(c->seq_send++);
    memcpy(p + 12, &s, 2);
    c->wlen += flen;
    c->ts[c->tail] = t;
    c->tail = (c->tail + 1) % (unsigned)depth;
    c->cnt++;
}

/* Write what is queued; returns 0, or -1 once the connection is dropped. */
static int flush(conn_t *c) {
    while (c->woff < c->wlen) {
        size_t left = c->wlen - c->woff;
        if (!c->ssl) {
            ssize_t n = send(c->fd, c->wbuf + c->woff, left, MSG_NOSIGNAL);
            if (n > 0) { c->woff += n; continue; }
            if (n < 0 && errno == EAGAIN) { want(c, EPOLLIN | EPOLLOUT); return 0; }
            if (n < 0 && errno == EINTR) continue;
            fail("send");
            drop(c);
            return -1;
        }
        /* A retry after WANT_WRITE may pass more bytes than before (partial writes on). */
        int n = SSL_write(c->ssl, c->wbuf + c->woff, left > 1 << 30 ? 1 << 30 : (int)left);
        if (n > 0) { c->woff += n; continue; }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE) { want(c, EPOLLIN | EPOLLOUT); return 0; }
        if (e == SSL_ERROR_WANT_READ) return 0; /* resumed by the next read */
        fail("SSL_write");
        drop(c);
        return -1;
    }
    c->woff = c->wlen = 0;
    want(c, EPOLLIN);
    return 0;
}

/* Read what there is; returns the number of complete frames consumed, or -1 once dropped. */
static int on_readable(conn_t *c, int measuring, int running) {
    int frames = 0;
    for (;;) {
        if (c->rcap - c->rlen < READ_CHUNK) {
            c->rcap = c->rcap ? c->rcap * 2 : 2 * READ_CHUNK;
            c->rbuf = realloc(c->rbuf, c->rcap);
            if (!c->rbuf) die("realloc");
        }
        size_t room = c->rcap - c->rlen;
        if (!c->ssl) {
            ssize_t n = recv(c->fd, c->rbuf + c->rlen, room, 0);
            if (n > 0) {
                c->rlen += n;
                if ((size_t)n < READ_CHUNK) break; /* probably drained */
                continue;
            }
            if (n < 0 && errno == EAGAIN) break;
            if (n < 0 && errno == EINTR) continue;
            fail(n == 0 ? "server closed" : "recv");
            drop(c);
            return -1;
        }
        /* One SSL_read returns at most one record: loop while OpenSSL holds more.  When
         * it holds nothing, stop rather than pay a recv() that would say EAGAIN; epoll
         * (level-triggered) reports the socket again if more came meanwhile. */
        int n = SSL_read(c->ssl, c->rbuf + c->rlen, room > 1 << 30 ? 1 << 30 : (int)room);
        if (n > 0) {
            c->rlen += n;
            if (!SSL_has_pending(c->ssl)) break;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ) break;
        if (e == SSL_ERROR_WANT_WRITE) { want(c, EPOLLIN | EPOLLOUT); break; }
        fail(e == SSL_ERROR_ZERO_RETURN ? "server sent close_notify" : "SSL_read");
        drop(c);
        return -1;
    }
    uint64_t t = now_ns();
    size_t off = 0;
    while (c->rlen - off >= HDR) {
        uint32_t len;
        memcpy(&len, c->rbuf + off, 4);
        len = ntohl(len);
        if (len != (uint32_t)flen) { fail("bad frame length"); drop(c); return -1; }
        if (c->rlen - off < len) break;
        uint16_t s;
        memcpy(&s, c->rbuf + off + 12, 2);
        if (ntohs(s) != c->seq_recv) fail("bad seq");
        c->seq_recv++;
        off += len;
        frames++;
        if (c->cnt) {
            uint64_t lat = t - c->ts[c->head];
            c->head = (c->head + 1) % (unsigned)depth;
            c->cnt--;
            if (measuring) hist_add(lat);
        } else {
            fail("unexpected frame");
        }
        c->got_pong = 1;
        if (running) enqueue_frame(c, t);
    }
    if (off) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
    if (c->wlen > c->woff) return flush(c) < 0 ? -1 : frames;
    return frames;
}

static int open_conn(conn_t *c, struct sockaddr_in *sa) {
    memset(c, 0, sizeof(*c));
    c->ts = calloc(depth, sizeof(uint64_t));
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) { fail("socket"); c->state = FAILED; return -1; }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (connect(c->fd, (struct sockaddr *)sa, sizeof *sa) < 0 && errno != EINPROGRESS) {
        fail("connect");
        close(c->fd);
        c->fd = -1;
        c->state = FAILED;
        return -1;
    }
    c->state = CONNECTING;
    c->events = EPOLLOUT;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

/* The connection is up (TCP, and TLS if any): 1 if it counts as up now, 0 if it waits
 * for its ping-pong (idle mode), -1 if it was dropped. */
static int on_up(conn_t *c) {
    c->state = UP;
    if (!idle) {
        want(c, EPOLLIN);
        return 1;
    }
    enqueue_frame(c, now_ns());
    if (flush(c) < 0) return -1;
    want(c, EPOLLIN | (c->wlen > c->woff ? EPOLLOUT : 0));
    return 0;
}

/* Drive the handshake one step: 1 done, 0 in progress, -1 dropped. */
static int handshake(conn_t *c) {
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        handshakes++;
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) { want(c, EPOLLIN); return 0; }
    if (e == SSL_ERROR_WANT_WRITE) { want(c, EPOLLIN | EPOLLOUT); return 0; }
    fail("TLS handshake");
    drop(c);
    return -1;
}

/* One readiness event while connections come up: 1 now up, 0 not yet, -1 dropped. */
static int connect_step(conn_t *c, uint32_t events) {
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            errno = err;
            fail("connect");
            drop(c);
            return -1;
        }
        if (plain) return on_up(c);
        c->ssl = SSL_new(ctx);
        if (!c->ssl || !SSL_set_fd(c->ssl, c->fd)) { fail("SSL_new"); drop(c); return -1; }
        SSL_set_connect_state(c->ssl);
        SSL_set_tlsext_host_name(c->ssl, "localhost");
        c->state = HANDSHAKING;
    }
    if (c->state == HANDSHAKING) {
        int r = handshake(c);
        return r == 1 ? on_up(c) : r;
    }
    if (c->state == UP && idle && !c->got_pong) {
        if ((events & EPOLLOUT) && flush(c) < 0) return -1;
        if (on_readable(c, 0, 0) < 0) return -1;
        return c->got_pong ? 1 : 0;
    }
    return 0;
}

/* Connect conns[lo..hi) and wait until they are up (in idle mode, after one ping-pong). */
static int connect_batch(int lo, int hi, struct sockaddr_in *sa) {
    int pending = 0, ok = 0;
    for (int i = lo; i < hi; i++) {
        if (open_conn(&conns[i], sa) == 0) pending++;
        else return -1;
    }
    struct epoll_event evs[512];
    uint64_t deadline = now_ns() + 20ULL * 1000000000ULL;
    while (pending > 0 && now_ns() < deadline) {
        int n = epoll_wait(epfd, evs, 512, 100);
        for (int k = 0; k < n; k++) {
            conn_t *c = evs[k].data.ptr;
            if (c->state == FAILED) continue;
            if (c->state == UP && (!idle || c->got_pong)) {
                /* already counted: in idle mode, keep reading what the server sends */
                if (c->ssl) {
                    char tmp[4096];
                    while (SSL_read(c->ssl, tmp, sizeof tmp) > 0) {}
                }
                continue;
            }
            int r = connect_step(c, evs[k].events);
            if (r != 0) pending--;
            if (r == 1) ok++;
        }
    }
    return ok;
}

static SSL_CTX *make_ctx(void) {
    SSL_CTX *x = SSL_CTX_new(TLS_client_method());
    if (!x) return NULL;
    SSL_CTX_set_min_proto_version(x, TLS1_2_VERSION);
    SSL_CTX_set_mode(x, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Read ahead: one recv fills OpenSSL's buffer with every record that is there, rather
     * than two recvs (record header, then body) per record.  Servers that send one small
     * record per frame would otherwise make the load generator the bottleneck. */
    SSL_CTX_set_read_ahead(x, 1);
    SSL_CTX_set_default_read_buffer_len(x, READ_CHUNK);
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(x, ca_file, NULL) != 1) return NULL;
        SSL_CTX_set_verify(x, SSL_VERIFY_PEER, NULL);
        X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(x), host);
    } else {
        SSL_CTX_set_verify(x, SSL_VERIFY_NONE, NULL);
    }
    return x;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--port")) port = atoi(v), i++;
        else if (!strcmp(a, "--host")) host = v, i++;
        else if (!strcmp(a, "--conns")) nconns = atoi(v), i++;
        else if (!strcmp(a, "--depth")) depth = atoi(v), i++;
        else if (!strcmp(a, "--body")) body = atoi(v), i++;
        else if (!strcmp(a, "--duration")) duration = atof(v), i++;
        else if (!strcmp(a, "--warmup")) warmup = atof(v), i++;
        else if (!strcmp(a, "--hold")) hold = atof(v), i++;
        else if (!strcmp(a, "--batch")) batch = atoi(v), i++;
        else if (!strcmp(a, "--ca")) ca_file = v, i++;
        else if (!strcmp(a, "--idle")) idle = 1;
        else if (!strcmp(a, "--plain")) plain = 1;
        else { fprintf(stderr, "unknown arg %s\n", a); return 1; }
    }
    if (!port || depth < 1 || nconns < 1 || batch < 1) { fprintf(stderr, "bad args\n"); return 1; }
    if (strcmp(host, "127.0.0.1") != 0) { fprintf(stderr, "loopback 127.0.0.1 only\n"); return 1; }
    if (idle) depth = 1;

    /* hard upper bound on run time */
    alarm((unsigned)(idle ? hold + 120 : warmup + duration + 90));
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    if (!plain && !(ctx = make_ctx())) {
        fail("TLS context");
        printf("{\"error\": \"%s\"}\n", first_error);
        return 2;
    }

    flen = HDR + body;
    tmpl = calloc(1, flen);
    uint32_t l = htonl(flen);
    memcpy(tmpl, &l, 4);
    uint16_t v16;
    v16 = htons(1); memcpy(tmpl + 4, &v16, 2);   /* version */
    v16 = htons(0); memcpy(tmpl + 6, &v16, 2);   /* flag */
    v16 = htons(2); memcpy(tmpl + 8, &v16, 2);   /* service_id */
    v16 = htons(7); memcpy(tmpl + 10, &v16, 2);  /* command_id */
    for (int i = 0; i < body; i++) tmpl[HDR + i] = (uint8_t)(i * 31 + 7);

    epfd = epoll_create1(0);
    conns = calloc(nconns, sizeof(conn_t));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &sa.sin_addr);

    uint64_t tc0 = now_ns();
    int up = 0;
    for (int lo = 0; lo < nconns; lo += batch) {
        int hi = lo + batch < nconns ? lo + batch : nconns;
        int ok = connect_batch(lo, hi, &sa);
        if (ok < 0) break;
        up += ok;
        if (ok < hi - lo) break; /* stop at the first batch that did not fully come up */
    }
    double connect_s = (now_ns() - tc0) / 1e9;
    const char *proto = plain ? "tcp" : "tls";

    if (idle) {
        printf("{\"mode\": \"idle\", \"transport\": \"%s\", \"requested\": %d, \"up\": %d, "
               "\"connect_s\": %.3f, \"errors\": %lu, \"first_error\": \"%s\"}\n",
               proto, nconns, up, connect_s, (unsigned long)errors, first_error);
        fflush(stdout);
        /* hold until hold expires or we are killed (SIGTERM default action) */
        uint64_t end = now_ns() + (uint64_t)(hold * 1e9);
        while (now_ns() < end) usleep(50000);
        return 0;
    }
    if (up < nconns) {
        printf("{\"error\": \"only %d of %d connections came up (%s)\"}\n", up, nconns, first_error);
        return 2;
    }

    uint64_t t0 = now_ns();
    uint64_t tw = t0 + (uint64_t)(warmup * 1e9);
    uint64_t te = tw + (uint64_t)(duration * 1e9);
    for (int i = 0; i < nconns; i++) {
        for (int k = 0; k < depth; k++) enqueue_frame(&conns[i], t0);
        flush(&conns[i]);
    }
    struct epoll_event evs[1024];
    uint64_t frames = 0;
    int measuring = 0;
    uint64_t tmeas0 = tw, tnow = t0;
    double cpu0 = 0;
    while ((tnow = now_ns()) < te) {
        if (!measuring && tnow >= tw) { measuring = 1; tmeas0 = tnow; cpu0 = cpu_s(); }
        int n = epoll_wait(epfd, evs, 1024, 50);
        for (int k = 0; k < n; k++) {
            conn_t *c = evs[k].data.ptr;
            if (c->state != UP) continue;
            if ((evs[k].events & EPOLLOUT) && flush(c) < 0) continue;
            if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                int r = on_readable(c, measuring, 1);
                if (r > 0 && measuring) frames += r;
            }
        }
    }
    double secs = (te > tmeas0 ? te - tmeas0 : 1) / 1e9;
    double fps = frames / secs;
    double client_cpu = (cpu_s() - cpu0) / secs;
    const char *cipher = "";
    const char *version = "";
    if (!plain && conns[0].ssl) {
        cipher = SSL_get_cipher_name(conns[0].ssl);
        version = SSL_get_version(conns[0].ssl);
    }
    printf("{\"transport\": \"%s\", \"tls_version\": \"%s\", \"cipher\": \"%s\", \"conns\": %d, "
           "\"depth\": %d, \"body\": %d, \"duration_s\": %.3f, \"frames\": %lu, "
           "\"fps\": %.1f, \"lat_n\": %lu, \"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, "
           "\"p999_us\": %.2f, \"mean_us\": %.2f, \"max_us\": %.1f, \"errors\": %lu, "
           "\"first_error\": \"%s\", \"connect_s\": %.3f, \"client_cpu\": %.3f}\n",
           proto, version, cipher, nconns, depth, body, secs, (unsigned long)frames, fps,
           (unsigned long)nlat, hist_pct(0.50), hist_pct(0.90), hist_pct(0.99), hist_pct(0.999),
           nlat ? latsum / (double)nlat / 1000.0 : 0, latmax / 1000.0, (unsigned long)errors,
           first_error, connect_s, client_cpu);
    fflush(stdout);
    for (int i = 0; i < nconns; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}
