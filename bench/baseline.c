/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * baseline: a minimal, correct epoll echo server in C — the measuring stick for `make bench`.
 *
 * Each loop is one thread with its own epoll instance, non-blocking sockets, level-triggered
 * events and one 64 KiB read buffer shared by that loop's connections. What a write does not take
 * is kept for that connection (at most one read's worth) and the connection is not read again
 * until it has drained, so a client that does not read meets TCP backpressure. Half-close: echo
 * everything, then close. A connection stays with the loop that accepted it.
 *
 * With more than one loop, connections are spread in one of two ways:
 *   reuseport  every loop has its own listener on the same port (SO_REUSEPORT): the kernel picks
 *              the listener by a hash of the connection's addresses and ports (the default);
 *   exclusive  one listener shared by every loop's epoll with EPOLLEXCLUSIVE: the kernel wakes
 *              one idle waiter per incoming connection.
 *
 * It is not part of the product: no configuration, no logging, no graceful stop. On SIGTERM or
 * SIGINT it prints how many connections each loop accepted ("loop I accepted N", stderr) and
 * exits 0.
 *
 * Usage: baseline [PORT [LOOPS [reuseport|exclusive]]]
 *   PORT 0 or none: ephemeral (prints "port N" on stdout); LOOPS default 1, 0 = one per CPU.
 *   "reuseport" given explicitly sets SO_REUSEPORT even on a single loop's listener, so that
 *   several baseline processes can listen on one port as a fleet (bench/scale.py).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSZ (64 * 1024)
#define MAXLOOPS 256

struct conn {
    int fd;
    char *pending; /* NULL unless a write is waiting */
    size_t off, len;
};

struct loop {
    pthread_t thread;
    int lfd;       /* the listener this loop accepts from */
    int exclusive; /* registered with EPOLLEXCLUSIVE (shared listener) */
    unsigned long accepted; /* written by the loop, read at exit (__atomic) */
};

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void conn_close(struct conn *c) {
    close(c->fd);
    free(c->pending);
    free(c);
}

static int make_listener(int port, int reuseport) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport && setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) die("SO_REUSEPORT");
    setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    return lfd;
}

static void *loop_run(void *arg) {
    struct loop *lp = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | (lp->exclusive ? EPOLLEXCLUSIVE : 0), .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lp->lfd, &ev) < 0) die("epoll_ctl");

    char *buf = malloc(BUFSZ);
    if (buf == NULL) die("malloc");
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                for (;;) {
                    int cfd = accept4(lp->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0) break; /* EAGAIN, or EMFILE: try again on the next event */
                    struct conn *nc = calloc(1, sizeof(*nc));
                    nc->fd = cfd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev) < 0) {
                        conn_close(nc);
                        continue;
                    }
                    __atomic_fetch_add(&lp->accepted, 1, __ATOMIC_RELAXED);
                }
                continue;
            }
            if (c->pending) {
                ssize_t w = send(c->fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EAGAIN || errno == EINTR) continue;
                    conn_close(c);
                    continue;
                }
                c->off += (size_t)w;
                if (c->off == c->len) {
                    free(c->pending);
                    c->pending = NULL;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
                }
                continue;
            }
            ssize_t r = recv(c->fd, buf, BUFSZ, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                conn_close(c);
                continue;
            }
            if (r < 0) continue;
            ssize_t w = send(c->fd, buf, (size_t)r, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno != EAGAIN && errno != EINTR) {
                    conn_close(c);
                    continue;
                }
                w = 0;
            }
            if (w < r) {
                c->len = (size_t)(r - w);
                c->off = 0;
                c->pending = malloc(c->len);
                memcpy(c->pending, buf + w, c->len);
                struct epoll_event cev = {.events = EPOLLOUT, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    long nloops = argc > 2 ? atol(argv[2]) : 1;
    if (nloops == 0) nloops = sysconf(_SC_NPROCESSORS_ONLN);
    int exclusive = 0;
    if (argc > 3) {
        if (strcmp(argv[3], "exclusive") == 0) {
            exclusive = 1;
        } else if (strcmp(argv[3], "reuseport") != 0) {
            fprintf(stderr, "baseline: unknown spreading '%s' (reuseport or exclusive)\n", argv[3]);
            return 64;
        }
    }
    if (port < 0 || port > 65535 || nloops < 1 || nloops > MAXLOOPS) {
        fprintf(stderr, "usage: baseline [PORT [LOOPS (1-%d, 0 = one per CPU) [reuseport|exclusive]]]\n", MAXLOOPS);
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);
    /* The loops never see SIGTERM/SIGINT: main waits for them with sigwait and reports. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    static struct loop loops[MAXLOOPS];
    /* "reuseport" named explicitly sets SO_REUSEPORT even with one loop, so that a fleet of
     * processes (make bench-scale) can share one port. */
    int reuseport = (nloops > 1 || argc > 3) && !exclusive;
    int first = make_listener(port, reuseport);
    struct sockaddr_in addr;
    socklen_t alen = sizeof(addr);
    getsockname(first, (struct sockaddr *)&addr, &alen);
    port = ntohs(addr.sin_port);
    for (long i = 0; i < nloops; i++) {
        loops[i].lfd = (i == 0 || !reuseport) ? first : make_listener(port, 1);
        loops[i].exclusive = exclusive;
    }
    /* Every listener is bound before the port is announced, so no connection meets a partial set. */
    printf("port %d\n", port);
    fflush(stdout);
    for (long i = 0; i < nloops; i++) {
        if (pthread_create(&loops[i].thread, NULL, loop_run, &loops[i]) != 0) die("pthread_create");
    }
    int sig;
    sigwait(&stop, &sig);
    for (long i = 0; i < nloops; i++)
        fprintf(stderr, "loop %ld accepted %lu\n", i, __atomic_load_n(&loops[i].accepted, __ATOMIC_RELAXED));
    fflush(stderr);
    _exit(0);
}
