/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * streamer: a pipelining echo client for `make bench` — many SIZE-byte messages written back to
 * back, one send(2) per message, on CONNS connections at once, every echoed byte verified.
 *
 * Why it exists: echoload's stream mode writes as much as the socket takes in one send (its event
 * driver does not cut writes to --size), and its thread driver, which does, reports a false early
 * close at the end of a run when its reader runs on another CPU (see docs/bench-report.md). This
 * is the small client the benchmark needs until echoload can do it; it is a measuring stick, not
 * part of the product.
 *
 * One thread, non-blocking sockets, level-triggered epoll. Byte j of connection c is
 * table[(seed(c) + j) mod 65521] (a fixed pseudo-random table of prime period), so lost,
 * duplicated, reordered or crossed bytes all show as a mismatch at their stream offset. Each
 * connection writes message after message until the kernel pushes back (TCP_NODELAY: each
 * message leaves as its own segment, as with tcpkali --write-combine off), and reads whatever
 * has come back. After WARMUP seconds the next DURATION seconds are measured; then every
 * connection shuts down its write side and must get every byte back, then end of file, within
 * 10 s.
 *
 * Usage: streamer HOST:PORT CONNS SIZE DURATION WARMUP   (HOST numeric IPv4; seconds, decimals ok)
 * Prints one line of JSON; exit 0 if clean, 1 if any fault, 2 if it could not connect, 64 on bad
 * usage.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PERIOD 65521
#define RBUF (256 * 1024)
#define MAXSIZE (1024 * 1024)
#define DRAIN_NS (10 * 1000000000LL)

struct conn {
    int fd;
    uint32_t seed;
    uint64_t sent, received;
    int shut, done, writing;
};

static unsigned char *table; /* PERIOD + max(RBUF, MAXSIZE) bytes: any run up to that is contiguous */
static long faults;
static char first_fault[256];

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void fault(struct conn *c, int index, const char *what) {
    if (faults++ == 0)
        snprintf(first_fault, sizeof(first_fault), "connection %d: %s (sent %llu, received %llu)", index, what,
                 (unsigned long long)c->sent, (unsigned long long)c->received);
    close(c->fd);
    c->done = 1;
}

static const unsigned char *at(const struct conn *c, uint64_t offset) {
    return table + (c->seed + offset) % PERIOD;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: streamer HOST:PORT CONNS SIZE DURATION WARMUP\n");
        return 64;
    }
    char host[64];
    const char *colon = strrchr(argv[1], ':');
    int conns = atoi(argv[2]);
    long size = atol(argv[3]);
    double duration = atof(argv[4]), warmup = atof(argv[5]);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    if (!colon || (size_t)(colon - argv[1]) >= sizeof(host) || conns < 1 || conns > 10000 || size < 1 ||
        size > MAXSIZE || duration <= 0 || warmup < 0) {
        fprintf(stderr, "streamer: bad arguments (HOST:PORT, 1-10000 connections, 1-%d bytes, seconds)\n", MAXSIZE);
        return 64;
    }
    memcpy(host, argv[1], (size_t)(colon - argv[1]));
    host[colon - argv[1]] = 0;
    addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "streamer: %s is not a numeric IPv4 address\n", host);
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);

    size_t tlen = PERIOD + (RBUF > MAXSIZE ? RBUF : MAXSIZE);
    table = malloc(tlen);
    unsigned char *rbuf = malloc(RBUF);
    struct conn *cs = calloc((size_t)conns, sizeof(*cs));
    if (!table || !rbuf || !cs) {
        perror("streamer: malloc");
        return 3;
    }
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < PERIOD; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        table[i] = (unsigned char)(x >> 24);
    }
    for (size_t i = PERIOD; i < tlen; i++) table[i] = table[i - PERIOD];

    int ep = epoll_create1(EPOLL_CLOEXEC);
    int one = 1;
    for (int i = 0; i < conns; i++) {
        struct conn *c = &cs[i];
        c->seed = (uint32_t)(((uint64_t)i * 7919u + 1) % PERIOD);
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
            fprintf(stderr, "streamer: connect %s (connection %d): %s\n", argv[1], i, strerror(errno));
            return 2;
        }
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int nb = 1;
        ioctl(c->fd, FIONBIO, &nb);
        c->writing = 1;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
            perror("streamer: epoll_ctl");
            return 3;
        }
    }

    int64_t t0 = now_ns();
    int64_t start = t0 + (int64_t)(warmup * 1e9), end = start + (int64_t)(duration * 1e9);
    int64_t drain_deadline = 0;
    uint64_t window_sent = 0, window_received = 0, total_sent = 0, total_received = 0;
    int open = conns, stopping = 0;
    struct epoll_event events[256];
    while (open > 0) {
        int64_t now = now_ns();
        if (!stopping && now >= end) {
            /* End of the measured period: no more messages; every byte sent must come back. */
            stopping = 1;
            drain_deadline = now + DRAIN_NS;
            for (int i = 0; i < conns; i++) {
                struct conn *c = &cs[i];
                if (c->done) continue;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                c->writing = 0;
                shutdown(c->fd, SHUT_WR);
                c->shut = 1;
            }
        }
        if (stopping && now >= drain_deadline) {
            for (int i = 0; i < conns; i++)
                if (!cs[i].done) {
                    fault(&cs[i], i, "no echo or no end of file within 10 s of the end");
                    open--;
                }
            break;
        }
        int64_t until = stopping ? drain_deadline : end;
        int timeout = (int)((until - now) / 1000000) + 1;
        int n = epoll_wait(ep, events, 256, timeout > 100 ? 100 : timeout);
        if (n < 0 && errno != EINTR) {
            perror("streamer: epoll_wait");
            return 3;
        }
        now = now_ns();
        int in_window = now >= start && now < end;
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;
            struct conn *c = &cs[i];
            if (c->done) continue;
            if (events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                for (;;) {
                    ssize_t r = recv(c->fd, rbuf, RBUF, 0);
                    if (r > 0) {
                        if (c->received + (uint64_t)r > c->sent) {
                            fault(c, i, "more bytes back than were sent");
                            open--;
                            break;
                        }
                        if (memcmp(rbuf, at(c, c->received), (size_t)r) != 0) {
                            fault(c, i, "echoed bytes differ from those sent");
                            open--;
                            break;
                        }
                        c->received += (uint64_t)r;
                        total_received += (uint64_t)r;
                        if (in_window) window_received += (uint64_t)r;
                        if (r < RBUF) break;
                        continue;
                    }
                    if (r == 0) {
                        if (c->shut && c->received == c->sent) {
                            close(c->fd);
                            c->done = 1;
                        } else {
                            fault(c, i, "server closed the connection with echo owed");
                        }
                        open--;
                        break;
                    }
                    if (errno == EINTR) continue;
                    if (errno != EAGAIN) {
                        fault(c, i, strerror(errno));
                        open--;
                    }
                    break;
                }
            }
            if (c->done || !c->writing || !(events[k].events & EPOLLOUT) || stopping) continue;
            for (;;) {
                /* One message per send; a partly taken message is finished first. */
                size_t want = (size_t)(size - (long)(c->sent % (uint64_t)size));
                ssize_t w = send(c->fd, at(c, c->sent), want, MSG_NOSIGNAL);
                if (w > 0) {
                    c->sent += (uint64_t)w;
                    total_sent += (uint64_t)w;
                    if (in_window) window_sent += (uint64_t)w;
                    continue;
                }
                if (w < 0 && errno == EINTR) continue;
                if (w < 0 && errno != EAGAIN) {
                    fault(c, i, strerror(errno));
                    open--;
                }
                break;
            }
        }
    }
    printf("{\"connections\": %d, \"size\": %ld, \"measured_seconds\": %.3f, \"bytes_sent\": %llu, "
           "\"bytes_received\": %llu, \"total_bytes_sent\": %llu, \"total_bytes_received\": %llu, "
           "\"megabytes_per_second_sent\": %.3f, \"megabytes_per_second_received\": %.3f, \"faults\": %ld, "
           "\"first_fault\": %s%s%s, \"clean\": %s}\n",
           conns, size, duration, (unsigned long long)window_sent, (unsigned long long)window_received,
           (unsigned long long)total_sent, (unsigned long long)total_received, window_sent / duration / 1e6,
           window_received / duration / 1e6, faults, faults ? "\"" : "", faults ? first_fault : "null",
           faults ? "\"" : "", faults ? "false" : "true");
    return faults ? 1 : 0;
}
