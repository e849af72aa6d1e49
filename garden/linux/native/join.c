/*
 * garden-monitor's own exec of a process into a running container (join.h).
 *
 * The plan (fd 4 of the monitor, a memfd the server wrote) is a list of NUL-terminated
 * strings, key then value, in any order; `arg`, `env`, `cgroup` and `group` repeat:
 *
 *   ns N            CLONE_NEW* flags of the namespaces to join, CLONE_NEWPID among them
 *   cgroup PATH     a cgroup.procs file the process joins (one per hierarchy)
 *   seccomp PATH    the container's seccomp filter as raw BPF (crun's state `seccomp.bpf`)
 *   rlimit R S H    setrlimit(R, soft S, hard H), decimal
 *   uid N, gid N, group N     the user; `group`: each supplementary group
 *   bounding M, effective M, permitted M, inheritable M, ambient M    capability masks (hex)
 *   no_new_privs 0|1, umask OCTAL, cwd PATH (absolute in the container)
 *   arg S, env S    argv and the environment, in order; the first arg is the executable,
 *                   looked up on the env's PATH when it has no `/` (as crun and execvp do)
 *   exe PATH        what to exec instead of that lookup (the server found it already; a
 *                   relative one is relative to cwd)
 *
 * The steps and their order are crun's for `exec` (libcrun's join of a process): the cgroups
 * and rlimits while still root on the host, then every namespace at once through the init's
 * pidfd (the user namespace first: the rest are then joined as root inside it), the groups,
 * the bounding set, the uid and gid (keeping the capabilities across), the working dir, the
 * capabilities, no_new_privs, the seccomp filter last, exec. The monitor joins the pid
 * namespace itself (for its children only) so that one fork puts the child in it. Until exec
 * the child is not dumpable: a process of the container cannot look into it while it holds
 * the host's files.
 */
#define _GNU_SOURCE
#include "join.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

enum { MAX_PLAN = 64 << 20, MAX_RLIMITS = 32, MAX_BPF = 4096 };

struct limit {
    int resource;
    struct rlimit value;
};

struct plan {
    unsigned long ns;
    const char **cgroups;
    size_t ncgroups;
    const char *seccomp;
    struct limit rlimits[MAX_RLIMITS];
    size_t nrlimits;
    long uid, gid;
    gid_t *groups;
    size_t ngroups;
    uint64_t bounding, effective, permitted, inheritable, ambient;
    int no_new_privs;
    mode_t umask;
    const char *cwd, *exe;
    char **argv, **envp;
    size_t argc, envc;
};

static int parse_u64(const char *s, int base, uint64_t *out) {
    if (*s == '\0' || *s == '-' || *s == '+' || *s == ' ')
        return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, base);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

static int parse_id(const char *s, long *out) {
    uint64_t v;
    if (parse_u64(s, 10, &v) != 0 || v > 0xfffffffeULL)
        return -1;
    *out = (long)v;
    return 0;
}

/* "R S H": three decimals separated by one space each. */
static int parse_rlimit(const char *s, struct limit *out) {
    char buf[96];
    if (strlen(s) >= sizeof buf)
        return -1;
    strcpy(buf, s);
    char *soft = strchr(buf, ' ');
    char *hard = soft ? strchr(soft + 1, ' ') : NULL;
    if (hard == NULL)
        return -1;
    *soft++ = '\0';
    *hard++ = '\0';
    uint64_t r, sv, hv;
    if (parse_u64(buf, 10, &r) != 0 || r >= RLIM_NLIMITS || parse_u64(soft, 10, &sv) != 0 ||
        parse_u64(hard, 10, &hv) != 0 || sv > hv)
        return -1;
    out->resource = (int)r;
    out->value.rlim_cur = (rlim_t)sv;
    out->value.rlim_max = (rlim_t)hv;
    return 0;
}

static char *read_all(int fd, size_t *len) {
    struct stat st;
    if (fstat(fd, &st) != 0)
        return NULL;
    if (st.st_size <= 0 || st.st_size > MAX_PLAN) {
        errno = EINVAL;
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    if (buf == NULL)
        return NULL;
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            free(buf);
            errno = n == 0 ? EINVAL : errno;
            return NULL;
        }
        got += (size_t)n;
    }
    buf[size] = '\0';
    *len = size;
    return buf;
}

/* Parse the plan in `buf` (which it keeps pointing into). 0, or -1 with errno = EINVAL. */
static int parse_plan(char *buf, size_t len, struct plan *p) {
    if (len == 0 || buf[len - 1] != '\0')
        goto bad;
    size_t strings = 0;
    for (size_t i = 0; i < len; i++)
        strings += buf[i] == '\0';
    /* Every list has at most one entry per key-value pair, plus its NULL. */
    size_t most = strings / 2 + 1;
    p->argv = calloc(most, sizeof *p->argv);
    p->envp = calloc(most, sizeof *p->envp);
    p->cgroups = calloc(most, sizeof *p->cgroups);
    p->groups = calloc(most, sizeof *p->groups);
    if (!p->argv || !p->envp || !p->cgroups || !p->groups)
        return -1;
    p->uid = p->gid = -1;
    p->umask = 022;
    int have_ns = 0;
    char *at = buf, *end = buf + len;
    while (at < end) {
        char *key = at;
        at += strlen(at) + 1;
        if (at >= end)
            goto bad;
        char *value = at;
        at += strlen(at) + 1;
        uint64_t n;
        long id;
        if (strcmp(key, "arg") == 0)
            p->argv[p->argc++] = value;
        else if (strcmp(key, "env") == 0)
            p->envp[p->envc++] = value;
        else if (strcmp(key, "cgroup") == 0 && value[0] == '/')
            p->cgroups[p->ncgroups++] = value;
        else if (strcmp(key, "group") == 0 && parse_id(value, &id) == 0)
            p->groups[p->ngroups++] = (gid_t)id;
        else if (strcmp(key, "ns") == 0 && parse_u64(value, 10, &n) == 0 && (n & CLONE_NEWPID)) {
            p->ns = (unsigned long)n;
            have_ns = 1;
        } else if (strcmp(key, "seccomp") == 0 && value[0] == '/')
            p->seccomp = value;
        else if (strcmp(key, "rlimit") == 0 && p->nrlimits < MAX_RLIMITS &&
                 parse_rlimit(value, &p->rlimits[p->nrlimits]) == 0)
            p->nrlimits++;
        else if (strcmp(key, "uid") == 0 && parse_id(value, &id) == 0)
            p->uid = id;
        else if (strcmp(key, "gid") == 0 && parse_id(value, &id) == 0)
            p->gid = id;
        else if (strcmp(key, "bounding") == 0 && parse_u64(value, 16, &n) == 0)
            p->bounding = n;
        else if (strcmp(key, "effective") == 0 && parse_u64(value, 16, &n) == 0)
            p->effective = n;
        else if (strcmp(key, "permitted") == 0 && parse_u64(value, 16, &n) == 0)
            p->permitted = n;
        else if (strcmp(key, "inheritable") == 0 && parse_u64(value, 16, &n) == 0)
            p->inheritable = n;
        else if (strcmp(key, "ambient") == 0 && parse_u64(value, 16, &n) == 0)
            p->ambient = n;
        else if (strcmp(key, "no_new_privs") == 0 && (!strcmp(value, "0") || !strcmp(value, "1")))
            p->no_new_privs = value[0] == '1';
        else if (strcmp(key, "umask") == 0 && parse_u64(value, 8, &n) == 0 && n <= 0777)
            p->umask = (mode_t)n;
        else if (strcmp(key, "cwd") == 0 && value[0] == '/')
            p->cwd = value;
        else if (strcmp(key, "exe") == 0 && value[0] != '\0')
            p->exe = value;
        else
            goto bad;
    }
    if (!have_ns || p->uid < 0 || p->gid < 0 || !p->cwd || p->argc == 0)
        goto bad;
    return 0;
bad:
    errno = EINVAL;
    return -1;
}

static struct sock_filter *read_bpf(const char *path, unsigned short *count) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    struct sock_filter *prog = NULL;
    if (fstat(fd, &st) != 0)
        goto out;
    if (st.st_size <= 0 || st.st_size % (off_t)sizeof *prog != 0 ||
        st.st_size > (off_t)(MAX_BPF * sizeof *prog)) {
        errno = EINVAL;
        goto out;
    }
    prog = malloc((size_t)st.st_size);
    if (prog == NULL)
        goto out;
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, (char *)prog + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            errno = n == 0 ? EINVAL : errno;
            free(prog);
            prog = NULL;
            goto out;
        }
        got += (size_t)n;
    }
    *count = (unsigned short)(st.st_size / (off_t)sizeof *prog);
out:;
    int saved = errno;
    close(fd);
    errno = saved;
    return prog;
}

static int cap_last(void) {
    char buf[16] = {0};
    int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 63;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    long last = n > 0 ? strtol(buf, NULL, 10) : 63;
    return last > 0 && last < 64 ? (int)last : 63;
}

/* In the child: tell the monitor which step failed (errno first) and end. */
_Noreturn static void fail(int fd, const char *step, const char *what) {
    int e = errno;
    char msg[600];
    int n = snprintf(msg, sizeof msg, "%d %s%s%s", e, step, what ? ": " : "", what ? what : "");
    ssize_t ignored = write(fd, msg, n > 0 && n < (int)sizeof msg ? (size_t)n : sizeof msg - 1);
    (void)ignored;
    _exit(127);
}

/* exec argv[0]: as it is when it has a `/`, else the first that runs of each dir of the env's
 * PATH (the default path without one), which the server already looked up. */
_Noreturn static void exec_found(const struct plan *p, int report) {
    const char *name = p->exe ? p->exe : p->argv[0];
    if (strchr(name, '/') != NULL || name[0] == '\0') {
        execve(name, p->argv, p->envp);
        fail(report, "exec", name);
    }
    const char *search = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (size_t i = 0; i < p->envc; i++)
        if (strncmp(p->envp[i], "PATH=", 5) == 0)
            search = p->envp[i] + 5; /* the last one wins, as in the server's lookup */
    int denied = 0;
    char full[4096];
    while (1) {
        const char *colon = strchr(search, ':');
        size_t dir_len = colon ? (size_t)(colon - search) : strlen(search);
        int n = snprintf(full, sizeof full, "%.*s/%s", (int)(dir_len ? dir_len : 1),
                         dir_len ? search : ".", name);
        if (n > 0 && n < (int)sizeof full) {
            execve(full, p->argv, p->envp);
            if (errno == EACCES)
                denied = 1;
            else if (errno != ENOENT && errno != ENOTDIR)
                fail(report, "exec", full);
        }
        if (colon == NULL)
            break;
        search = colon + 1;
    }
    errno = denied ? EACCES : ENOENT;
    fail(report, "exec", name);
}

_Noreturn static void become(const struct plan *p, int init_pidfd, struct sock_fprog *filter,
                             int last_cap, int report) {
    default_signals();
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        fail(report, "dumpable", NULL);
    for (size_t i = 0; i < p->ncgroups; i++) {
        int fd = open(p->cgroups[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1)
            fail(report, "cgroup", p->cgroups[i]);
        close(fd);
    }
    for (size_t i = 0; i < p->nrlimits; i++)
        if (setrlimit(p->rlimits[i].resource, &p->rlimits[i].value) != 0)
            fail(report, "rlimit", NULL);
    unsigned long rest = p->ns & ~(unsigned long)CLONE_NEWPID;
    if (rest != 0 && setns(init_pidfd, (int)rest) != 0)
        fail(report, "setns", NULL);
    if (setgroups(p->ngroups, p->groups) != 0)
        fail(report, "setgroups", NULL);
    for (int cap = 0; cap <= last_cap; cap++)
        if (!(p->bounding >> cap & 1) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
            fail(report, "bounding set", NULL);
    if (setresgid((gid_t)p->gid, (gid_t)p->gid, (gid_t)p->gid) != 0)
        fail(report, "setresgid", NULL);
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 ||
        setresuid((uid_t)p->uid, (uid_t)p->uid, (uid_t)p->uid) != 0 ||
        prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0)
        fail(report, "setresuid", NULL);
    if (chdir(p->cwd) != 0)
        fail(report, "chdir", p->cwd);
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    for (int i = 0; i < 2; i++) {
        data[i].effective = (uint32_t)(p->effective >> (32 * i));
        data[i].permitted = (uint32_t)(p->permitted >> (32 * i));
        data[i].inheritable = (uint32_t)(p->inheritable >> (32 * i));
    }
    if (syscall(SYS_capset, &head, data) != 0)
        fail(report, "capset", NULL);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        fail(report, "ambient", NULL);
    for (int cap = 0; cap <= last_cap; cap++)
        if ((p->ambient >> cap & 1) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0)
            fail(report, "ambient", NULL);
    umask(p->umask);
    if (p->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail(report, "no_new_privs", NULL);
    /* Nothing of the monitor's but fds 0-2 may reach the process. */
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) != 0)
        fail(report, "close_range", NULL);
    if (filter != NULL && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, filter) != 0)
        fail(report, "seccomp", NULL);
    exec_found(p, report);
}

/* Write what the child said ("ERRNO STEP[: WHAT]") to fd 2 as the runtime would. */
static void say_failure(const char *said) {
    char *rest = NULL;
    long e = strtol(said, &rest, 10);
    if (rest == said || *rest != ' ')
        dprintf(2, "garden-monitor: %s\n", said);
    else
        dprintf(2, "garden-monitor: %s: %s\n", rest + 1, strerror((int)e));
}

pid_t join_start(int plan_fd, int init_pidfd, int *child_status) {
    *child_status = -1;
    size_t len = 0;
    struct plan p = {0};
    char *buf = read_all(plan_fd, &len);
    if (buf == NULL || parse_plan(buf, len, &p) != 0) {
        dprintf(2, "garden-monitor: plan: %s\n", strerror(errno));
        return -1;
    }
    struct sock_fprog filter = {0, NULL};
    if (p.seccomp != NULL) {
        filter.filter = read_bpf(p.seccomp, &filter.len);
        if (filter.filter == NULL) {
            dprintf(2, "garden-monitor: seccomp %s: %s\n", p.seccomp, strerror(errno));
            return -1;
        }
    }
    int last_cap = cap_last();
    /* For the monitor's children only: the monitor itself stays in the host's. */
    if (setns(init_pidfd, CLONE_NEWPID) != 0) {
        dprintf(2, "garden-monitor: setns pid: %s\n", strerror(errno));
        return -1;
    }
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
        dprintf(2, "garden-monitor: pipe: %s\n", strerror(errno));
        return -1;
    }
    pid_t child = fork();
    if (child < 0) {
        int e = errno;
        close(pipe_fds[0]);
        close(pipe_fds[1]);
        dprintf(2, "garden-monitor: fork: %s\n", strerror(e));
        return -1;
    }
    if (child == 0) {
        close(pipe_fds[0]);
        become(&p, init_pidfd, filter.filter ? &filter : NULL, last_cap, pipe_fds[1]);
    }
    close(pipe_fds[1]);
    char said[640];
    size_t got = 0;
    for (;;) { /* EOF once the exec closed the pipe (close-on-exec) or the child ended */
        ssize_t n = read(pipe_fds[0], said + got, sizeof said - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || (got += (size_t)n) == sizeof said - 1)
            break;
    }
    close(pipe_fds[0]);
    free(filter.filter);
    free(p.argv);
    free(p.envp);
    free(p.cgroups);
    free(p.groups);
    free(buf);
    if (got == 0)
        return child;
    said[got] = '\0';
    say_failure(said);
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    *child_status = status;
    errno = ECHILD;
    return -1;
}
