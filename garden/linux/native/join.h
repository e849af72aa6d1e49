/*
 * The exec of one process into a running container by garden-monitor itself, instead of the
 * OCI runtime's `exec --detach` (docs/adr/garden-monitor-exec.md): the steps crun takes for
 * an exec, from a plan the server wrote (garden/linux/join_plan.py says its format).
 */
#ifndef GARDEN_JOIN_H
#define GARDEN_JOIN_H

#include <sys/types.h>

/* Start the process the plan on `plan_fd` describes in the namespaces of the process behind
 * `init_pidfd` (the container's init) and return its host pid once it has exec'd. On failure
 * return -1 after writing "garden-monitor: STEP: REASON" to fd 2 (the process's stderr file);
 * `*child_status` is then the failed child's wait status, or -1 when no child was made. */
pid_t join_start(int plan_fd, int init_pidfd, int *child_status);

/* Every signal back to its default and unblocked (garden_monitor.c). */
void default_signals(void);

#endif
