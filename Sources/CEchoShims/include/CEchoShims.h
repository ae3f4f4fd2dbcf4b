// CEchoShims: the few kernel interfaces Swift's Glibc module does not import.
//
// This header must NOT define _GNU_SOURCE: doing so gives the Clang module a
// different view of glibc's headers than Glibc's own module has, and the build
// fails with "'__rusage_who' has different definitions in different modules".
// The GNU-only functions (accept4, prlimit, pipe2, dup3) are therefore
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

/// accept4(2) with the flags Swift cannot name portably.
int CEchoShims_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
/// prlimit(2) on a resource given as a plain int (glibc's __rlimit_resource
/// enum imports inconsistently).
int CEchoShims_prlimit(pid_t pid, int resource, const struct rlimit *new_limit, struct rlimit *old_limit);
int CEchoShims_pipe2(int fds[2], int flags);
int CEchoShims_dup3(int oldfd, int newfd, int flags);
/// Number of CPUs this thread may run on (sched_getaffinity + CPU_COUNT, so
/// `taskset` is honoured); falls back to sysconf(_SC_NPROCESSORS_ONLN).
int CEchoShims_available_cpus(void);
/// The calling thread's kernel id (gettid(2)).
int CEchoShims_gettid(void);
/// Names the calling thread (pthread_setname_np(3)); at most 15 bytes are kept.
void CEchoShims_set_thread_name(const char *name);

// Macro constants whose import is unreliable or typed awkwardly.
static const uint32_t CEchoShims_EPOLLIN = EPOLLIN;
static const uint32_t CEchoShims_EPOLLOUT = EPOLLOUT;
static const uint32_t CEchoShims_EPOLLERR = EPOLLERR;
static const uint32_t CEchoShims_EPOLLHUP = EPOLLHUP;
static const uint32_t CEchoShims_EPOLLRDHUP = EPOLLRDHUP;
static const uint32_t CEchoShims_EPOLLEXCLUSIVE = EPOLLEXCLUSIVE;
static const uint32_t CEchoShims_EPOLLET = EPOLLET;
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
