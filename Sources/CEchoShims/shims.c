#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "CEchoShims.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <pthread.h>
#include <string.h>

int CEchoShims_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    return accept4(fd, addr, len, flags);
}

int CEchoShims_prlimit(pid_t pid, int resource, const struct rlimit *new_limit, struct rlimit *old_limit) {
    return prlimit(pid, (__rlimit_resource_t)resource, new_limit, old_limit);
}

int CEchoShims_pipe2(int fds[2], int flags) {
    return pipe2(fds, flags);
}

int CEchoShims_dup3(int oldfd, int newfd, int flags) {
    return dup3(oldfd, newfd, flags);
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

int CEchoShims_gettid(void) {
    return (int)syscall(SYS_gettid);
}

void CEchoShims_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, sizeof(buf) - 1);
    buf[sizeof(buf) - 1] = 0;
    pthread_setname_np(pthread_self(), buf);
}
