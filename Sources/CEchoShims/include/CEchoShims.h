// SPDX-License-Identifier: Apache-2.0
// CEchoShims: the few kernel interfaces Swift's Glibc module does not import.
//
// This header must NOT define _GNU_SOURCE: doing so gives the Clang module a
// different view of glibc's headers than Glibc's own module has, and the build
// fails with "'__rusage_who' has different definitions in different modules".
// The GNU-only functions (accept4, prlimit, pipe2, close_range) are therefore
// declared here under our own prefixed names and defined in shims.c, which is
// compiled with _GNU_SOURCE.
#ifndef C_ECHO_SHIMS_H
#define C_ECHO_SHIMS_H

#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <unistd.h>
#include <sys/syscall.h>

/// accept4(2) with the flags Swift cannot name portably.
int CEchoShims_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
/// prlimit(2) on a resource given as a plain int (glibc's __rlimit_resource
/// enum imports inconsistently).
int CEchoShims_prlimit(pid_t pid, int resource, const struct rlimit *new_limit, struct rlimit *old_limit);
/// pipe2(2) (echoload's process driver).
int CEchoShims_pipe2(int fds[2], int flags);

/// Bytes in a TCP socket's send queue not yet acknowledged by the peer (ioctl SIOCOUTQ; ioctl
/// is variadic, so Swift cannot call it); -1 with errno on failure.
int CEchoShims_unsent_bytes(int fd);
/// Number of CPUs this thread may run on (sched_getaffinity + CPU_COUNT, so
/// `taskset` is honoured); falls back to sysconf(_SC_NPROCESSORS_ONLN).
int CEchoShims_available_cpus(void);
/// Names the calling thread (pthread_setname_np(3)); at most 15 bytes are kept.
void CEchoShims_set_thread_name(const char *name);

/// Whether the fork child's SIGTERM handler (see CEchoShims_child_signal_setup) has run.
int CEchoShims_stop_requested(void);
/// Installs a handler for `signo` that does nothing but interrupt a blocked system call
/// (no SA_RESTART): the thread model's way to wake a connection thread for a stop.
int CEchoShims_install_interrupt_handler(int signo);
/// In a freshly forked child, before anything else: every signal back to its default
/// disposition, SIGTERM to a handler that only records a stop request (one sig_atomic_t store;
/// no SA_RESTART, so a blocked recv(2)/send(2) returns EINTR and the child looks at the flag), SIGINT/SIGHUP/SIGPIPE ignored (the parent decides
/// when children stop), and only then the inherited mask cleared, so a SIGTERM that arrived
/// while the child was being set up is handled, never fatal.
void CEchoShims_child_signal_setup(void);
/// close_range(2): closes every descriptor from `first` up; on kernels before 5.9 (ENOSYS),
/// close(2) on each number up to the open-files limit.
int CEchoShims_close_from(unsigned int first);
/// Atomic add/load on memory shared between processes (MAP_SHARED), where Swift's
/// Synchronization.Atomic cannot be placed.
void CEchoShims_atomic_add_u64(uint64_t *p, uint64_t v);
uint64_t CEchoShims_atomic_load_u64(const uint64_t *p);
void CEchoShims_atomic_store_u64(uint64_t *p, uint64_t v);
/// Compare-and-swap on shared memory: if *p == *expected, stores desired and returns 1; else
/// writes the current value to *expected and returns 0.
int CEchoShims_atomic_cas_u64(uint64_t *p, uint64_t *expected, uint64_t desired);

/// Bytes a process-shared mutex needs (sizeof(pthread_mutex_t)), for placing one in a mapping.
unsigned long CEchoShims_shared_mutex_size(void);
/// Initializes a mutex at `m` (in MAP_SHARED memory) as PTHREAD_PROCESS_SHARED and
/// PTHREAD_MUTEX_ROBUST, so that processes forked after it share it and a holder that dies
/// does not leave it locked for good; 0 or an errno value.
int CEchoShims_shared_mutex_init(void *m);
/// Locks the mutex at `m`; if its last holder died holding it (EOWNERDEAD), marks it
/// consistent and takes it (what it guarded is counters: a count off by one is the worst case).
void CEchoShims_shared_mutex_lock(void *m);
/// Unlocks the mutex at `m`.
void CEchoShims_shared_mutex_unlock(void *m);

/// recv(2), send(2), sendmsg(2) and epoll_wait(2) as raw system calls. glibc's wrappers are cancellation
/// points: in a multi-threaded process each call also enables and disables asynchronous
/// cancellation (about 60 instructions per call, a third of echod's user-space cost per echoed
/// message when measured with callgrind). echod never cancels threads, so the hot path skips
/// that bookkeeping (nor does echoload). errno is set as by the wrappers.
static inline long CEchoShims_recv(int fd, void *buf, size_t len, int flags) {
    return syscall(SYS_recvfrom, fd, buf, len, flags, (void *)0, (void *)0);
}
static inline long CEchoShims_send(int fd, const void *buf, size_t len, int flags) {
    return syscall(SYS_sendto, fd, buf, len, flags, (void *)0, 0);
}
static inline long CEchoShims_sendmsg(int fd, const struct msghdr *message, int flags) {
    return syscall(SYS_sendmsg, fd, message, flags);
}
static inline int CEchoShims_epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout) {
#ifdef SYS_epoll_wait
    return (int)syscall(SYS_epoll_wait, epfd, events, maxevents, timeout);
#else
    /* arm64, riscv64 and newer ports have only epoll_pwait. */
    return (int)syscall(SYS_epoll_pwait, epfd, events, maxevents, timeout, (void *)0, 0);
#endif
}

/// struct mmsghdr, which <sys/socket.h> declares only under _GNU_SOURCE (see the top of this
/// file): the same layout, under our own name, for recvmmsg(2) and sendmmsg(2).
struct CEchoShims_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};

/// recvmmsg(2) and sendmmsg(2) as raw system calls (GNU-only in glibc, and cancellation points
/// there like recv(2)): a batch of datagrams per call on the UDP echo path. errno is set as by
/// glibc's wrappers. recvmmsg gets no timeout (the sockets are non-blocking).
static inline int CEchoShims_recvmmsg(int fd, struct CEchoShims_mmsghdr *messages, unsigned int count, int flags) {
    return (int)syscall(SYS_recvmmsg, fd, messages, count, flags, (void *)0);
}
static inline int CEchoShims_sendmmsg(int fd, struct CEchoShims_mmsghdr *messages, unsigned int count, int flags) {
    return (int)syscall(SYS_sendmmsg, fd, messages, count, flags);
}

// Macro constants whose import is unreliable or typed awkwardly.
static const uint32_t CEchoShims_EPOLLIN = EPOLLIN;
static const uint32_t CEchoShims_EPOLLOUT = EPOLLOUT;
static const uint32_t CEchoShims_EPOLLERR = EPOLLERR;
static const uint32_t CEchoShims_EPOLLHUP = EPOLLHUP;
static const uint32_t CEchoShims_EPOLLRDHUP = EPOLLRDHUP;
static const uint32_t CEchoShims_EPOLLEXCLUSIVE = EPOLLEXCLUSIVE;
static const int CEchoShims_SOCK_NONBLOCK = SOCK_NONBLOCK;
static const int CEchoShims_SOCK_CLOEXEC = SOCK_CLOEXEC;
static const int CEchoShims_SOCK_STREAM = SOCK_STREAM;
static const int CEchoShims_SOCK_DGRAM = SOCK_DGRAM;
static const int CEchoShims_IP_BIND_ADDRESS_NO_PORT = 24;
static const int CEchoShims_RLIMIT_NOFILE = RLIMIT_NOFILE;
static const int CEchoShims_RLIMIT_NPROC = RLIMIT_NPROC;
static const int CEchoShims_RLIMIT_CORE = RLIMIT_CORE;
static const int CEchoShims_RLIMIT_STACK = RLIMIT_STACK;

#endif
