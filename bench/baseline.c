/*
 * baseline: a minimal, correct epoll echo server in C — the measuring stick for `make bench`.
 *
 * Single thread, non-blocking sockets, level-triggered epoll, one 64 KiB read buffer shared by
 * all connections. What a write does not take is kept for that connection (at most one read's
 * worth) and the connection is not read again until it has drained, so a client that does not
 * read meets TCP backpressure. Half-close: echo everything, then close.
 *
 * It is not part of the product: no configuration, no logging, no graceful stop beyond exiting
 * on SIGTERM/SIGINT. Usage: baseline [PORT]  (0 or none: ephemeral; prints "port N" on stdout).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSZ (64 * 1024)

struct conn {
    int fd;
    char *pending; /* NULL unless a write is waiting */
    size_t off, len;
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

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    socklen_t alen = sizeof(addr);
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("port %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) die("epoll_ctl");

    static char buf[BUFSZ];
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
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0) break; /* EAGAIN, or EMFILE: try again on the next event */
                    struct conn *nc = calloc(1, sizeof(*nc));
                    nc->fd = cfd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev) < 0) conn_close(nc);
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
}
