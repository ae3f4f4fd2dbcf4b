// SPDX-License-Identifier: Apache-2.0

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "CEchoShims.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <linux/sockios.h>
#include <pthread.h>
#include <string.h>
#include <signal.h>

int CEchoShims_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    return accept4(fd, addr, len, flags);
}

int CEchoShims_prlimit(pid_t pid, int resource, const struct rlimit *new_limit, struct rlimit *old_limit) {
    return prlimit(pid, (__rlimit_resource_t)resource, new_limit, old_limit);
}

int CEchoShims_pipe2(int fds[2], int flags) {
    return pipe2(fds, flags);
}

int CEchoShims_available_cpus(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

void CEchoShims_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, sizeof(buf) - 1);
    buf[sizeof(buf) - 1] = 0;
    pthread_setname_np(pthread_self(), buf);
}

static volatile sig_atomic_t stop_flag = 0;

static void on_stop_signal(int signo) {
    (void)signo;
    stop_flag = 1;
}

static int install_stop_handler(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: blocked I/O must return EINTR */
    return sigaction(signo, &sa, NULL);
}

int CEchoShims_stop_requested(void) {
    return stop_flag != 0;
}

static void on_interrupt_signal(int signo) {
    (void)signo;
}

int CEchoShims_install_interrupt_handler(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_interrupt_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    return sigaction(signo, &sa, NULL);
}

void CEchoShims_child_signal_setup(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (int s = 1; s < NSIG; s++) {
        if (s == SIGKILL || s == SIGSTOP) continue;
        (void)sigaction(s, &sa, NULL); /* EINVAL for the few numbers glibc reserves: fine */
    }
    sa.sa_handler = SIG_IGN;
    (void)sigaction(SIGINT, &sa, NULL);
    (void)sigaction(SIGHUP, &sa, NULL);
    (void)sigaction(SIGPIPE, &sa, NULL);
    (void)install_stop_handler(SIGTERM);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

int CEchoShims_close_from(unsigned int first) {
    if (close_range(first, ~0U, 0) == 0) return 0;
    if (errno != ENOSYS) return -1;
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = first; fd < max; fd++) (void)close((int)fd);
    return 0;
}

void CEchoShims_atomic_add_u64(uint64_t *p, uint64_t v) {
    __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

uint64_t CEchoShims_atomic_load_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

void CEchoShims_atomic_store_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

int CEchoShims_atomic_cas_u64(uint64_t *p, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

int CEchoShims_unsent_bytes(int fd) {
    int queued = 0;
    if (ioctl(fd, SIOCOUTQ, &queued) != 0) return -1;
    return queued;
}

unsigned long CEchoShims_shared_mutex_size(void) {
    return sizeof(pthread_mutex_t);
}

int CEchoShims_shared_mutex_init(void *m) {
    pthread_mutexattr_t attr;
    int err = pthread_mutexattr_init(&attr);
    if (err != 0) return err;
    err = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (err == 0) err = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (err == 0) err = pthread_mutex_init((pthread_mutex_t *)m, &attr);
    pthread_mutexattr_destroy(&attr);
    return err;
}

void CEchoShims_shared_mutex_lock(void *m) {
    if (pthread_mutex_lock((pthread_mutex_t *)m) == EOWNERDEAD) {
        pthread_mutex_consistent((pthread_mutex_t *)m);
    }
}

void CEchoShims_shared_mutex_unlock(void *m) {
    pthread_mutex_unlock((pthread_mutex_t *)m);
}
