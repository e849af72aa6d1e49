/*
 * garden-monitor: the monitor of one batch process (no stdin, no TTY) of garden-trio.
 *
 * It outlives the server, like conmon, but does only what a batch process needs: it execs the
 * process into its container itself (join.c; docs/adr/garden-monitor-exec.md) or runs the OCI
 * runtime's `exec --detach`, is the parent of the process (child subreaper), reports the
 * process's pid, waits for it and writes its exit status to a file. It is small and static so
 * that starting it costs a fraction of conmon's start (no shared libraries to map, no glib, no
 * double fork): docs/adr/garden-monitor.md.
 *
 * Usage (garden/linux/monitor.py starts it; nobody else should):
 *
 *     garden-monitor PROCESS_DIR EXIT_NAME RUNTIME [RUNTIME_ARG...]
 *     garden-monitor PROCESS_DIR EXIT_NAME --join
 *     garden-monitor --tty-wait EXECUTABLE ARGV0 [ARG...]
 *
 * The second form starts the process itself instead of the runtime (join.c): fd 4 is the plan
 * (join.c says its format), fd 5 a pidfd of the container's init, whose namespaces it joins.
 * The third runs inside a container, as a TTY process's first program (bind-mounted read-only
 * at /.garden-monitor): it waits until its terminal has a size, at most TTY_WAIT_MS, and execs
 * EXECUTABLE with ARGV0 ARG... crun sets an exec'd TTY's size from outside only after the
 * process has exec'd, so a program could read 0x0 (`stty size` failed under load).
 *
 *   fd 0          the process's stdin (the server gives /dev/null)
 *   fd 1, fd 2    the process's stdout and stderr (the server gives the files `stdout` and
 *                 `stderr` of PROCESS_DIR, opened O_APPEND); the runtime's own error
 *                 messages land in stderr too, as they would with conmon's passthrough
 *   fd 3          the write end of the sync pipe: one line, then closed:
 *                   "P <pid>\n"     the process runs (or has run) as host pid <pid>
 *                   "E <status>\n"  the runtime failed (its exit status, or 128+signal);
 *                                   the reason is at the end of the `stderr` file
 *                   "M <errno>\n"   the monitor itself failed (errno of what it tried)
 *
 * In PROCESS_DIR it writes `monitor.pid` (its own pid, before anything else) and, once the
 * process has exited, `exit/EXIT_NAME` (temp file + rename): the exit status in decimal,
 * 128+signal for a process killed by a signal. The runtime is expected to write the process's
 * pid to PROCESS_DIR/pid (`--pid-file`); with --join the monitor writes it. No exit file means
 * the status is unknown.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "join.h"

enum { SYNC_FD = 3, PLAN_FD = 4, INIT_PIDFD = 5, TTY_WAIT_MS = 2000 };

static int sync_fd = SYNC_FD;

static void tell(char kind, long value) {
    char line[32];
    int n = snprintf(line, sizeof line, "%c %ld\n", kind, value);
    if (sync_fd >= 0) {
        ssize_t ignored = write(sync_fd, line, (size_t)n); /* a gone reader: EPIPE, ignored */
        (void)ignored;
        close(sync_fd);
        sync_fd = -1;
    }
}

static long status_code(int status) {
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 255;
}

/* Write `text` to `name` in the current directory through a temp file and a rename. */
static int write_file(const char *name, const char *text) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", name) >= (int)sizeof tmp)
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    size_t len = strlen(text);
    ssize_t done = write(fd, text, len);
    if (close(fd) != 0 || done != (ssize_t)len) {
        unlink(tmp);
        return -1;
    }
    return rename(tmp, name);
}

static long read_pid_file(const char *name) {
    char buf[32] = {0};
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    char *end = NULL;
    long pid = strtol(buf, &end, 10);
    return (end != buf && pid > 0) ? pid : -1;
}

/* In the runtime's child: every signal back to its default and unblocked, as a process
 * started by a shell would find them (the server ignores SIGPIPE, which would be inherited;
 * an ignored signal stays ignored across exec). The raw syscall, because glibc's sigaction()
 * refuses its own real-time signals 32 and 33, which can arrive ignored too. */
void default_signals(void) {
    struct {
        void (*handler)(int);
        unsigned long flags;
        void (*restorer)(void);
        unsigned long mask;
    } dfl = {SIG_DFL, 0, NULL, 0};
    for (int sig = 1; sig <= 64; sig++)
        syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof dfl.mask); /* EINVAL: KILL, STOP */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Close every fd from `first` on: what the server did not mark close-on-exec (hypercorn
 * makes its listening sockets inheritable) must not stay open in a monitor that outlives it,
 * where a listening socket would keep the next server off its port. */
static void close_others(int first) {
    if (syscall(SYS_close_range, (unsigned)first, ~0U, 0) == 0)
        return;
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = first; fd < (max > 0 ? max : 1024); fd++)
        close((int)fd);
}

/* The runtime's `exec --detach` as a child; the process's pid once it has exited 0 (from the
 * pid file it wrote), else -1 after telling the server why. */
static long run_runtime(char **runtime_argv) {
    pid_t runtime = fork();
    if (runtime < 0) {
        tell('M', errno);
        return -1;
    }
    if (runtime == 0) {
        default_signals();
        execv(runtime_argv[0], runtime_argv);
        dprintf(2, "garden-monitor: exec %s: %s\n", runtime_argv[0], strerror(errno));
        _exit(127);
    }
    int status = 0;
    while (waitpid(runtime, &status, 0) < 0) {
        if (errno != EINTR) {
            tell('M', errno);
            return -1;
        }
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        tell('E', status_code(status));
        return -1;
    }
    long pid = read_pid_file("pid");
    if (pid <= 0)
        tell('M', ENOENT);
    return pid;
}

/* The process started by join.c; its pid once it has exec'd and the pid file says so, else
 * -1 after telling the server why. */
static long run_joined(void) {
    int child_status = -1;
    pid_t pid = join_start(PLAN_FD, INIT_PIDFD, &child_status);
    close(PLAN_FD);
    close(INIT_PIDFD);
    if (pid < 0) {
        tell('E', child_status >= 0 ? status_code(child_status) : 127);
        return -1;
    }
    char text[32];
    snprintf(text, sizeof text, "%ld", (long)pid);
    if (write_file("pid", text) != 0) {
        int e = errno;
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        tell('M', e);
        return -1;
    }
    return pid;
}

/* --tty-wait: until fd 0, a terminal, has rows and columns (not a terminal: at once). */
static int tty_wait_then_exec(char **argv) {
    struct timespec step = {0, 1000 * 1000};
    for (int waited = 0; waited < TTY_WAIT_MS; waited++) {
        struct winsize ws;
        if (ioctl(0, TIOCGWINSZ, &ws) != 0 || (ws.ws_row != 0 && ws.ws_col != 0))
            break;
        nanosleep(&step, NULL);
    }
    execv(argv[0], argv + 1);
    fprintf(stderr, "garden-monitor: exec %s: %s\n", argv[0], strerror(errno));
    return 127;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "--tty-wait") == 0)
        return tty_wait_then_exec(argv + 2);
    int join = argc == 4 && strcmp(argv[3], "--join") == 0;
    if (argc < 4) {
        fprintf(stderr, "usage: garden-monitor PROCESS_DIR EXIT_NAME (RUNTIME [ARG...] | --join)\n");
        return 2;
    }
    const char *process_dir = argv[1];
    const char *exit_name = argv[2];
    if (strchr(exit_name, '/') != NULL || fcntl(SYNC_FD, F_SETFD, FD_CLOEXEC) != 0 ||
        (join && (fcntl(PLAN_FD, F_SETFD, FD_CLOEXEC) != 0 ||
                  fcntl(INIT_PIDFD, F_SETFD, FD_CLOEXEC) != 0))) {
        fprintf(stderr, "garden-monitor: a plain EXIT_NAME, the sync pipe on fd 3 (--join: the"
                        " plan on fd 4, the init's pidfd on fd 5)\n");
        return 2;
    }
    close_others(join ? INIT_PIDFD + 1 : SYNC_FD + 1);
    signal(SIGPIPE, SIG_IGN);
    if (getsid(0) != getpid())
        setsid(); /* no signals from the server's terminal or process group */
    if (chdir(process_dir) != 0 || prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
        tell('M', errno);
        return 1;
    }
    char pid_text[32];
    snprintf(pid_text, sizeof pid_text, "%ld", (long)getpid());
    if (write_file("monitor.pid", pid_text) != 0) {
        tell('M', errno);
        return 1;
    }

    long pid = join ? run_joined() : run_runtime(argv + 3);
    if (pid <= 0)
        return 1;
    /* The process's files are its own now; the monitor keeps none of them open. */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (null > 2)
            close(null);
    }
    tell('P', pid);

    /* The process is our child (--join, or the runtime has gone and we are its subreaper), and
     * so is whatever of the runtime's was still around. Reap them all until the process. */
    int status = 0;
    for (;;) {
        pid_t got = waitpid(-1, &status, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return 1; /* not our child after all: no exit file, the status is unknown */
        }
        if (got == pid)
            break;
    }
    char code[16], path[4096];
    snprintf(code, sizeof code, "%ld", status_code(status));
    if (snprintf(path, sizeof path, "exit/%s", exit_name) >= (int)sizeof path)
        return 1;
    return write_file(path, code) == 0 ? 0 : 1;
}
