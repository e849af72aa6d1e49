"""The seccomp profile of unprivileged containers, as the OCI `linux.seccomp` object. Pure data.

An allowlist in the spirit of the runtime's default (Docker's/containerd's): every syscall not
named here fails with EPERM. What it keeps out of an unprivileged container, whatever its
capabilities inside its user namespace:
- new namespaces: `unshare`, `setns`, and `clone` with any CLONE_NEW* flag (so no `unshare -U`
  and no nested user namespace from which the kernel's namespaced-root code would be reachable);
  `clone3` answers ENOSYS, so libcs fall back to `clone`, whose flags a filter can see;
- mounts of any kind (`mount`, `umount2`, the new mount API, `pivot_root`);
- the kernel keyring (`keyctl`, `add_key`, `request_key`): keys are not namespaced;
- `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_*`, `kexec_*`, kernel modules, `reboot`,
  `swapon`/`swapoff`, clock setting, `acct`, `quotactl`, `lookup_dcookie`, `nfsservctl`,
  `open_by_handle_at`, `iopl`/`ioperm`, `syslog`, `vhangup`, NUMA policy calls;
- `socket(AF_VSOCK)` and `personality` other than the ordinary ones.
`ptrace` and `process_vm_*` are allowed, as Docker allows them on kernels >= 4.8 (which closed
the seccomp bypass through ptrace); `chroot` is allowed because CAP_SYS_CHROOT is granted.

Names libseccomp does not know are skipped by runc, and runc makes syscalls newer than any it
knows answer ENOSYS, so new libc fallbacks keep working.
"""

from __future__ import annotations

import platform
from typing import Any

EPERM = 1
ENOSYS = 38
AF_VSOCK = 40

# clone flags that make a new namespace: NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
# (CLONE_NEWTIME only works with clone3 and unshare, both refused).
CLONE_NEW_FLAGS = 0x7E020000

# personality(2) values Docker allows: PER_LINUX, UNAME26 and PER_LINUX32 (with and without
# UNAME26), and 0xffffffff (a query).
PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Allowed whatever the arguments. Alphabetical, then ptrace and its kin; order does not matter.
ALLOWED = _words(
    """
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown
    chown32 chroot clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
    clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
    copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
    epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
    exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod
    fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr
    flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
    ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
    getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32
    getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
    getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage
    getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr
    inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy
    io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc
    kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32
    lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat
    lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat
    mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open
    mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap
    msgctl msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep
    newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2
    pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2
    prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead
    readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages
    removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending
    rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
    rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
    sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval
    sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
    sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
    semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
    setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
    setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
    setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32
    setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask
    sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat
    sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
    timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create
    timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
    truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes
    vfork vmsplice wait4 waitid waitpid write writev
    ptrace process_vm_readv process_vm_writev
    """
)

# Per machine (`uname -m`): the one libseccomp architecture the filter covers and the syscalls
# only that architecture has. Only the native ABI: a compat syscall (a 32-bit `int 0x80` on
# x86_64) fails the filter's architecture check and kills the caller. Docker also admits the
# compat ABIs, for 32-bit userlands; leaving them out closes the compat syscall paths (the
# entry of CVE-2021-22555, for one) and halves the cost of building the filter, which runc
# pays at every container start and every exec (docs/adr/isolation.md).
ARCHES: dict[str, tuple[str, tuple[str, ...]]] = {
    "x86_64": ("SCMP_ARCH_X86_64", ("arch_prctl", "modify_ldt")),
    "aarch64": ("SCMP_ARCH_AARCH64", ()),
    "armv7l": (
        "SCMP_ARCH_ARM",
        _words(
            "arm_fadvise64_64 arm_sync_file_range breakpoint cacheflush set_tls sync_file_range2"
        ),
    ),
    "ppc64le": ("SCMP_ARCH_PPC64LE", ("sync_file_range2", "swapcontext")),
    "riscv64": ("SCMP_ARCH_RISCV64", ("riscv_flush_icache",)),
    "s390x": (
        "SCMP_ARCH_S390X",
        _words("s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr"),
    ),
}

# What must never be in the allowlist of an unprivileged container: tests check this.
FORBIDDEN = frozenset(
    _words(
        """
    unshare setns clone3 mount umount umount2 pivot_root fsopen fsconfig fsmount fspick
    move_mount open_tree mount_setattr keyctl add_key request_key bpf perf_event_open
    userfaultfd io_uring_setup io_uring_enter io_uring_register kexec_load kexec_file_load
    init_module finit_module delete_module reboot swapon swapoff settimeofday clock_settime
    clock_settime64 stime acct quotactl quotactl_fd lookup_dcookie nfsservctl open_by_handle_at
    iopl ioperm syslog vhangup get_mempolicy set_mempolicy mbind move_pages kcmp pidfd_getfd
    sethostname setdomainname fanotify_init uselib ustat sysfs _sysctl vm86 vm86old
    create_module get_kernel_syms query_module
    """
    )
)


def _rule(names: list[str], action: str = "SCMP_ACT_ALLOW", **extra: Any) -> dict[str, Any]:
    return {"names": names, "action": action, **extra}


def profile(machine: str | None = None) -> dict[str, Any]:
    """The `linux.seccomp` object for an unprivileged container on `machine` (default: this
    host's, as `uname -m` says)."""
    arch = machine if machine is not None else platform.machine()
    native, arch_calls = ARCHES.get(arch, (None, ()))
    clone_flags_arg = 1 if arch == "s390x" else 0  # s390 swaps clone's first two arguments
    syscalls = [
        _rule(sorted({*ALLOWED, *arch_calls})),
        _rule(
            ["clone"],
            args=[
                {
                    "index": clone_flags_arg,
                    "value": CLONE_NEW_FLAGS,
                    "valueTwo": 0,
                    "op": "SCMP_CMP_MASKED_EQ",
                }
            ],
        ),
        _rule(["clone3"], "SCMP_ACT_ERRNO", errnoRet=ENOSYS),
        _rule(["socket"], args=[{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}]),
    ]
    for value in PERSONALITIES:
        syscalls.append(
            _rule(["personality"], args=[{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}])
        )
    out: dict[str, Any] = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "syscalls": syscalls,
    }
    if native is not None:
        out["architectures"] = [native]
    return out
