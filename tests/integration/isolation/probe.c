/* Tries syscalls that a container must not be able to make (and a few it must), and prints
 * one line per attempt: "<name> <return value> <errno name>". Built static by the isolation
 * tests and copied into a container, whose busybox rootfs has no compiler or python. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/keyctl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *errname(int e) {
    switch (e) {
    case 0: return "OK";
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case EFAULT: return "EFAULT";
    case EBADF: return "EBADF";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case ESRCH: return "ESRCH";
    default: return "OTHER";
    }
}

static void report(const char *name, long rc) {
    printf("%s %ld %s\n", name, rc, rc < 0 ? errname(errno) : "OK");
    fflush(stdout);
}

/* A child made with raw clone(flags); reports whether the clone itself worked. */
static void try_clone(const char *name, unsigned long flags) {
    errno = 0;
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid((pid_t)pid, 0, 0);
    report(name, pid > 0 ? 0 : pid);
}

static int g_argc;
static char **g_argv;

/* With no arguments every attempt is made; else only those named. */
static int WANT(const char *name) {
    if (g_argc < 2) return 1;
    for (int i = 1; i < g_argc; i++)
        if (strcmp(g_argv[i], name) == 0) return 1;
    return 0;
}

int main(int argc, char **argv) {
    g_argc = argc;
    g_argv = argv;
    if (WANT("keyctl")) { errno = 0; report("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)); }
    if (WANT("add_key")) { errno = 0; report("add_key", syscall(SYS_add_key, "user", "garden-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING)); }
    if (WANT("request_key")) { errno = 0; report("request_key", syscall(SYS_request_key, "user", "garden-probe", 0, 0)); }
    if (WANT("unshare_user")) { errno = 0; report("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER)); }
    if (WANT("unshare_mount")) { errno = 0; report("unshare_mount", syscall(SYS_unshare, CLONE_NEWNS)); }
    if (WANT("setns")) { errno = 0; report("setns", syscall(SYS_setns, 0, 0)); }
    if (WANT("clone_newuser")) try_clone("clone_newuser", CLONE_NEWUSER);
    if (WANT("clone_newnet")) try_clone("clone_newnet", CLONE_NEWNET);
    if (WANT("clone_plain")) try_clone("clone_plain", 0);
    if (WANT("clone3")) { errno = 0; report("clone3", syscall(SYS_clone3, 0, 0)); }
    if (WANT("mount")) { errno = 0; report("mount", mount("none", "/tmp", "tmpfs", 0, 0)); }
    if (WANT("umount")) { errno = 0; report("umount", umount2("/proc", MNT_DETACH)); }
    if (WANT("bpf")) { errno = 0; report("bpf", syscall(SYS_bpf, 0, 0, 0)); }
    if (WANT("perf_event_open")) { errno = 0; report("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0)); }
    if (WANT("kexec_load")) { errno = 0; report("kexec_load", syscall(SYS_kexec_load, 0, 0, 0, 0)); }
    if (WANT("userfaultfd")) { errno = 0; report("userfaultfd", syscall(SYS_userfaultfd, 0)); }
    if (WANT("io_uring_setup")) { errno = 0; report("io_uring_setup", syscall(SYS_io_uring_setup, 1, 0)); }
    if (WANT("open_by_handle_at")) { errno = 0; report("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, 0, 0)); }
    if (WANT("vsock")) { errno = 0; long fd = socket(40 /* AF_VSOCK */, SOCK_STREAM, 0); report("vsock", fd); }
    if (WANT("personality")) { errno = 0; report("personality", personality(0x0040000 /* ADDR_NO_RANDOMIZE */)); }
    if (WANT("getpid")) { errno = 0; report("getpid", syscall(SYS_getpid) > 0 ? 0 : -1); }
    /* No such process: ESRCH when the filter lets ptrace through, EPERM when it does not. */
    if (WANT("ptrace")) { errno = 0; report("ptrace", ptrace(PTRACE_PEEKDATA, 0x7ffffff0, 0, 0)); }
#if defined(__x86_64__)
    /* A 32-bit compat syscall (getpid is 20 there); the filter kills a process that makes one,
     * so run it in a child and report how the child ended. */
    if (WANT("compat")) {
        pid_t pid = fork();
        if (pid == 0) {
            long rc;
            __asm__ volatile("int $0x80" : "=a"(rc) : "a"(20) : "memory");
            _exit(rc > 0 ? 0 : 1);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        printf("compat %d %s\n", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
               WIFSIGNALED(status) ? "SIGNALED" : "EXITED");
        fflush(stdout);
    }
#endif
    return 0;
}
