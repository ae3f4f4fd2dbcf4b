/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * udp_baseline: a minimal UDP echo server in C — the measuring stick for the UDP point of
 * `make bench` (bench/udp.py).
 *
 * One thread, one non-blocking UDP socket on 127.0.0.1, one epoll instance, level-triggered. On
 * each wake-up: recvmmsg(2) of up to 32 datagrams into buffers of 65,507 bytes allocated once,
 * sendmmsg(2) of all of them back to their sources, up to 4 rounds before waiting again (the same
 * batch sizes as echod's DatagramEcho). What sendmmsg does not take at once is dropped. No
 * filtering, no limits, no counters beyond what it prints at the end: the cost of the system
 * calls and nothing else.
 *
 * Not part of the product. On SIGTERM or SIGINT it prints "received N echoed M" on stderr and
 * exits 0.
 *
 * Usage: udp_baseline [PORT]   (0 or none: ephemeral; prints "port N" on stdout)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 32
#define ROUNDS 4
#define MAXDGRAM 65507
#define STRIDE (64 * 1024)

static volatile sig_atomic_t stop;

static void on_signal(int s) {
    (void)s;
    stop = 1;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("socket"); return 1; }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("bind"); return 1; }
    socklen_t len = sizeof addr;
    getsockname(fd, (struct sockaddr *)&addr, &len);
    printf("port %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    char *buffers = malloc((size_t)BATCH * STRIDE);
    struct iovec rv[BATCH], sv[BATCH];
    struct sockaddr_in6 peers[BATCH];
    struct mmsghdr in[BATCH], out[BATCH];
    if (!buffers) return 1;
    for (int i = 0; i < BATCH; i++) {
        rv[i].iov_base = sv[i].iov_base = buffers + (size_t)i * STRIDE;
        rv[i].iov_len = MAXDGRAM;
        memset(&in[i], 0, sizeof in[i]);
        in[i].msg_hdr.msg_iov = &rv[i];
        in[i].msg_hdr.msg_iovlen = 1;
        in[i].msg_hdr.msg_name = &peers[i];
        memset(&out[i], 0, sizeof out[i]);
        out[i].msg_hdr.msg_iov = &sv[i];
        out[i].msg_hdr.msg_iovlen = 1;
        out[i].msg_hdr.msg_name = &peers[i];
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    unsigned long long received = 0, echoed = 0;
    while (!stop) {
        struct epoll_event got;
        if (epoll_wait(ep, &got, 1, 1000) <= 0) continue;
        for (int round = 0; round < ROUNDS; round++) {
            for (int i = 0; i < BATCH; i++) in[i].msg_hdr.msg_namelen = sizeof peers[i];
            int n = recvmmsg(fd, in, BATCH, MSG_DONTWAIT, NULL);
            if (n <= 0) break;
            received += (unsigned)n;
            for (int i = 0; i < n; i++) {
                sv[i].iov_len = in[i].msg_len;
                out[i].msg_hdr.msg_namelen = in[i].msg_hdr.msg_namelen;
            }
            int sent = 0;
            while (sent < n) {
                int k = sendmmsg(fd, out + sent, (unsigned)(n - sent), MSG_DONTWAIT);
                if (k > 0) { sent += k; continue; }
                if (k < 0 && errno == EINTR) continue;
                if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS) sent++;  /* skip one */
                else break;
            }
            echoed += (unsigned)sent;
            if (n < BATCH) break;
        }
    }
    fprintf(stderr, "received %llu echoed %llu\n", received, echoed);
    return 0;
}
