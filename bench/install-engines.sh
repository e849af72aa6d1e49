#!/usr/bin/env bash
# Installs the engines the benchmarks compare against, from Debian, as root:
#   docker.io (Docker 20.10; its daemon is started here, see below) and podman (4.3, with the
#   CNI plugins for its bridge network), and imports the default busybox rootfs
#   (/usr/local/lib/garden/rootfs) into both as the image garden-bench/busybox:latest.
# A package that would remove or conflict with what is on the machine is not installed: that
# engine is skipped with a note (and `just bench` says it is not measured).
#
# dockerd is started with --iptables=false --ip-forward=false --ip-masq=false: it must not
# rewrite the host's firewall (its FORWARD policy DROP would break other programs' containers)
# nor change sysctls. Its bridge (docker0) still gets a veth per container, which is the cost
# the benchmark measures; nothing is routed outside the machine.
#
# Usage: bench/install-engines.sh [--no-docker] [--no-podman] [--stop-docker]
#   --stop-docker  stop a dockerd that this script started, and do nothing else
set -euo pipefail

readonly IMAGE=garden-bench/busybox:latest
readonly ROOTFS=${GARDEN_ROOTFS_DIR:-/usr/local/lib/garden/rootfs}
readonly DOCKERD_PIDFILE=/run/garden-bench-dockerd.pid
readonly DOCKERD_LOG=/var/log/garden-bench-dockerd.log
readonly DOCKER=/usr/bin/docker  # not /usr/local/bin/docker: the Debian client matches its daemon

want_docker=1
want_podman=1
for arg in "$@"; do
  case "$arg" in
    --no-docker) want_docker=0 ;;
    --no-podman) want_podman=0 ;;
    --stop-docker)
      if [[ -s $DOCKERD_PIDFILE ]] && kill "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null; then
        echo "install-engines: stopped dockerd $(cat "$DOCKERD_PIDFILE")"
        rm -f "$DOCKERD_PIDFILE"
      else
        echo "install-engines: no dockerd started by this script is running"
      fi
      exit 0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "install-engines: unknown argument $arg" >&2; exit 2 ;;
  esac
done

if [[ $(id -u) -ne 0 ]]; then
  echo "install-engines: run as root" >&2
  exit 2
fi
if [[ ! -x $ROOTFS/bin/busybox ]]; then
  echo "install-engines: no rootfs at $ROOTFS: run scripts/setup.sh first" >&2
  exit 2
fi

notes=()

# Install packages unless apt would remove anything or report a conflict; never start services
# on install (a policy-rc.d that says no, for the time of the install only).
install_packages() {
  local name=$1; shift
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    return 0
  fi
  [[ -n $(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit) ]] || apt-get update -qq
  local plan
  if ! plan=$(apt-get install -s --no-install-recommends "${missing[@]}" 2>&1); then
    notes+=("$name: not installed: apt cannot install ${missing[*]}: $(tail -n 3 <<<"$plan" | tr '\n' ' ')")
    return 1
  fi
  if grep -q '^Remv ' <<<"$plan"; then
    notes+=("$name: not installed: it would remove $(grep '^Remv ' <<<"$plan" | awk '{print $2}' | tr '\n' ' ')")
    return 1
  fi
  local made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
  [[ $made_policy -eq 0 ]] || rm -f /usr/sbin/policy-rc.d
  if [[ $rc -ne 0 ]]; then
    notes+=("$name: apt-get install ${missing[*]} failed (exit $rc)")
    return 1
  fi
}

import_image() {
  local what=$1; shift
  tar -C "$ROOTFS" -c . | "$@" import - "$IMAGE" >/dev/null
  echo "install-engines: $what: imported $ROOTFS as $IMAGE"
}

start_dockerd() {
  if "$DOCKER" version >/dev/null 2>&1; then
    return 0  # a daemon answers already (ours or someone's): use it as it is
  fi
  mkdir -p "$(dirname "$DOCKERD_LOG")"
  setsid /usr/sbin/dockerd \
    --iptables=false --ip-forward=false --ip-masq=false --userland-proxy=false \
    --host unix:///var/run/docker.sock --pidfile "$DOCKERD_PIDFILE" \
    </dev/null >>"$DOCKERD_LOG" 2>&1 &
  for _ in $(seq 1 120); do
    if "$DOCKER" version >/dev/null 2>&1; then
      echo "install-engines: dockerd started (log: $DOCKERD_LOG; stop: $0 --stop-docker)"
      return 0
    fi
    sleep 0.5
  done
  notes+=("docker: dockerd did not answer within 60 s; see $DOCKERD_LOG")
  return 1
}

if [[ $want_docker -eq 1 ]]; then
  if install_packages docker docker.io && start_dockerd; then
    import_image docker "$DOCKER"
  fi
fi

if [[ $want_podman -eq 1 ]]; then
  if install_packages podman podman containernetworking-plugins; then
    # No systemd here: cgroupfs manager and file events; crun refuses this host, so runc.
    import_image podman podman --runtime runc --cgroup-manager cgroupfs --events-backend file
  fi
fi

for note in "${notes[@]}"; do
  echo "install-engines: NOTE: $note" >&2
done
[[ ${#notes[@]} -eq 0 ]]
