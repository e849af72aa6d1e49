#!/usr/bin/env bash
# Sets up everything garden-trio needs on a Debian/Ubuntu machine, as root:
#   1. the Debian packages the server and its tests use,
#   2. a virtualenv in <repo>/.venv with the project installed editable, with its dev tools,
#      and garden-monitor (the small C monitor of batch processes) built into .venv/bin,
#   3. the default rootfs (busybox) in /usr/local/lib/garden/rootfs,
#   4. on a hybrid-cgroup host, unused cgroup2 controllers moved to v1 so that crun can run,
#   5. a Debian minbase tarball of the host's release (mmdebstrap, once, ~75 s) that the image
#      tests turn into a real image (tests/integration/test_images_debian.py).
# Every step checks first and does nothing when its work is already done, so a second run takes
# about a second. Safe to run concurrently (a lock serialises runs).
#
# Usage: scripts/setup.sh [--rebuild-rootfs] [--rebuild-minbase] [--help]
# Environment:
#   PYTHON              the interpreter for a new .venv (default: python3 on PATH, else /usr/bin/python3)
#   GARDEN_ROOTFS_DIR   where to build the default rootfs (default: /usr/local/lib/garden/rootfs)
#   GARDEN_MINBASE_TAR  where to keep the minbase tarball (default: /var/cache/garden-trio/debian-minbase.tar)
#   GARDEN_SKIP_MINBASE=1  do not build it (no Debian mirror): its test then skips, saying so
set -euo pipefail

# Bump when the rootfs contents below change: every machine then rebuilds it on its next setup.
readonly ROOTFS_VERSION=1
readonly ROOTFS_STAMP_NAME=.garden-rootfs-version

readonly PACKAGES=(
  runc crun conmon catatonit        # OCI runtimes, per-process monitor, init for PID 1
  nftables iptables iproute2        # container networking
  busybox-static                    # the default rootfs
  mmdebstrap                        # a Debian minbase image for the image tests (step 5)
  zstd                              # zstd-compressed image layers (docs/images.md)
  skopeo docker-registry            # registry tests: push images to a local registry
  e2fsprogs util-linux              # loop-image disk limits (mkfs.ext4, losetup, mount)
  python3 python3-venv python3-dev  # the server itself
  git ca-certificates procps curl   # curl: the 1 GiB file test and bench/files_bench streams
  gcc libc6-dev                     # garden-monitor (static), and the tests' syscall probe
  libjemalloc2                      # the server's allocator (garden/allocator.py)
)

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_DIR
readonly VENV_DIR="$REPO_DIR/.venv"
readonly VENV_STAMP="$VENV_DIR/.garden-setup-stamp"
# "compat": the editable install is a plain path in a .pth file. setuptools' default installs an
# import hook that every Python start loads (~15 ms of CPU here), which every `garden` command
# would pay (docs/adr/client-transport.md).
readonly EDITABLE_MODE=compat
readonly ROOTFS_DIR="${GARDEN_ROOTFS_DIR:-/usr/local/lib/garden/rootfs}"
readonly MINBASE_TAR="${GARDEN_MINBASE_TAR:-/var/cache/garden-trio/debian-minbase.tar}"
readonly MIN_PYTHON=(3 11)

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

REBUILD_ROOTFS=0
REBUILD_MINBASE=0
for arg in "$@"; do
  case "$arg" in
    --rebuild-rootfs) REBUILD_ROOTFS=1 ;;
    --rebuild-minbase) REBUILD_MINBASE=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $arg" ;;
  esac
done

if [[ $(id -u) -ne 0 ]]; then
  die "must run as root (it installs Debian packages and writes $ROOTFS_DIR); try: sudo $0"
fi

umask 022
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

# One setup at a time: scripts/serve and scripts/test may both start one.
lock_dir=/run/lock
[[ -d $lock_dir ]] || lock_dir=/tmp
if command -v flock >/dev/null; then
  exec 9>"$lock_dir/garden-trio-setup.lock"
  if ! flock -n 9; then
    log "waiting for another setup to finish..."
    flock 9
  fi
fi

# --- 1. Debian packages --------------------------------------------------------------------------

missing_packages() {
  # dpkg-query prints one line per known package and complains on stderr about unknown ones.
  local installed
  installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null \
    | awk '$2 == "installed" { print $1 }' || true)
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    grep -qxF "$pkg" <<<"$installed" || printf '%s\n' "$pkg"
  done
}

install_packages() {
  command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian and Ubuntu"
  local missing
  mapfile -t missing < <(missing_packages)
  if ((${#missing[@]} == 0)); then
    log "packages: all ${#PACKAGES[@]} present"
    return
  fi
  log "packages: installing ${missing[*]}"
  apt-get update -q </dev/null >&2
  apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null >&2
  if printf '%s\n' "${missing[@]}" | grep -qx docker-registry; then
    keep_system_registry_off
  fi
  mapfile -t missing < <(missing_packages)
  ((${#missing[@]} == 0)) || die "packages still missing after apt-get install: ${missing[*]}"
}

# Debian's docker-registry package enables a system registry on :5000 (all addresses). The
# tests start registries of their own on 127.0.0.1, so the one this run installed stays off.
keep_system_registry_off() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    systemctl disable --now docker-registry.service >&2 || true
    log "packages: disabled the docker-registry system service (tests run their own)"
  fi
}

# --- 2. Python virtualenv ------------------------------------------------------------------------

# Prints the interpreter's "major minor" if it is new enough and can create venvs; fails otherwise.
python_ok() {
  "$1" - "${MIN_PYTHON[@]}" <<'EOF' 2>/dev/null
import sys
import ensurepip, venv  # noqa: F401  (Debian needs python3-venv for these)
if sys.version_info[:2] < (int(sys.argv[1]), int(sys.argv[2])):
    sys.exit(1)
print(sys.version.split()[0])
EOF
}

pick_python() {
  local candidate
  for candidate in ${PYTHON:+"$PYTHON"} python3 /usr/bin/python3; do
    command -v "$candidate" >/dev/null || continue
    if python_ok "$candidate" >/dev/null; then
      command -v "$candidate"
      return
    fi
    log "python: skipping $candidate (needs >= ${MIN_PYTHON[0]}.${MIN_PYTHON[1]} with venv)"
  done
  die "no python3 >= ${MIN_PYTHON[0]}.${MIN_PYTHON[1]} with the venv module found"
}

setup_venv() {
  if [[ -e $VENV_DIR ]] && ! python_ok "$VENV_DIR/bin/python" >/dev/null; then
    log "venv: $VENV_DIR is broken or too old; recreating it"
    rm -rf "$VENV_DIR"
  fi
  if [[ ! -e $VENV_DIR ]]; then
    local python
    python=$(pick_python)
    log "venv: creating $VENV_DIR with $python ($(python_ok "$python"))"
    "$python" -m venv "$VENV_DIR"
  fi

  # Reinstall only when pyproject.toml (or the interpreter, or the repo's place) changed.
  local want have=
  want="$(sha256sum <"$REPO_DIR/pyproject.toml" | cut -d' ' -f1) $(python_ok "$VENV_DIR/bin/python") $REPO_DIR $EDITABLE_MODE"
  [[ -f $VENV_STAMP ]] && have=$(<"$VENV_STAMP")
  if [[ $want == "$have" && -x $VENV_DIR/bin/just ]]; then
    log "venv: up to date ($VENV_DIR)"
    return
  fi
  if [[ -n $have ]]; then
    log "venv: pip install -e '.[dev]' (pyproject.toml, python or repo path changed)"
  else
    log "venv: pip install -e '.[dev]'"
  fi
  rm -f "$VENV_STAMP"
  (cd "$REPO_DIR" && "$VENV_DIR/bin/python" -m pip install -q -e '.[dev]' \
    --config-settings "editable_mode=$EDITABLE_MODE" </dev/null >&2)
  printf '%s\n' "$want" >"$VENV_STAMP"
}

# --- 3. Default rootfs ---------------------------------------------------------------------------

rootfs_want_stamp() {
  local busybox_version
  busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)
  printf 'garden-rootfs %s busybox-static %s\n' "$ROOTFS_VERSION" "$busybox_version"
}

# Fills an empty directory with a busybox rootfs.
populate_rootfs() {
  local root=$1 busybox=/bin/busybox applet
  [[ -x $busybox ]] || die "rootfs: $busybox (from busybox-static) not found"

  chmod 0755 "$root"
  mkdir -p "$root"/{bin,usr/bin,etc,proc,sys,dev,run,tmp,var/tmp,root,home/vcap}
  ln -s bin "$root/sbin"
  ln -s bin "$root/usr/sbin"
  install -m 0755 "$busybox" "$root/bin/busybox"
  # Relative links so they resolve the same inside the container and when seen from the host.
  while read -r applet; do
    [[ -n $applet && $applet != busybox ]] || continue
    ln -s busybox "$root/bin/$applet"
    ln -s ../../bin/busybox "$root/usr/bin/$applet"
  done < <("$busybox" --list)
  [[ -L $root/bin/sh ]] || ln -s busybox "$root/bin/sh"

  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
vcap:x:1000:1000:vcap:/home/vcap:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
vcap:x:1000:
nogroup:x:65534:
EOF
  cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF
  : >"$root/etc/resolv.conf"
  : >"$root/.catatonit" # bind-mount target for the host's catatonit (PID 1)
  chmod 1777 "$root/tmp" "$root/var/tmp"
  chmod 0700 "$root/root"
  chown 1000:1000 "$root/home/vcap"
}

setup_rootfs() {
  local want have=
  want=$(rootfs_want_stamp)
  [[ -f $ROOTFS_DIR/$ROOTFS_STAMP_NAME ]] && have=$(<"$ROOTFS_DIR/$ROOTFS_STAMP_NAME")
  if [[ $want == "$have" && $REBUILD_ROOTFS -eq 0 ]]; then
    log "rootfs: up to date ($ROOTFS_DIR)"
    return
  fi
  log "rootfs: building $ROOTFS_DIR (${want})"

  local parent new old=
  parent=$(dirname "$ROOTFS_DIR")
  mkdir -p "$parent"
  # Build beside the final place (same filesystem), then rename into place.
  new=$(mktemp -d "$parent/.rootfs-new.XXXXXX")
  # shellcheck disable=SC2064  # expand now: $new is local
  trap "rm -rf '$new'" EXIT
  populate_rootfs "$new"
  chroot "$new" /bin/sh -c 'id -u >/dev/null' \
    || die "rootfs: /bin/sh does not run in the new rootfs (is /bin/busybox static?)"
  printf '%s\n' "$want" >"$new/$ROOTFS_STAMP_NAME"

  if [[ -e $ROOTFS_DIR || -L $ROOTFS_DIR ]]; then
    old="$parent/.rootfs-old.$(date +%Y%m%d%H%M%S).$$"
    mv -T "$ROOTFS_DIR" "$old"
  fi
  mv -T "$new" "$ROOTFS_DIR"
  trap - EXIT

  if [[ -n $old ]]; then
    if [[ ! -e $old/$ROOTFS_STAMP_NAME ]]; then
      log "rootfs: the previous $ROOTFS_DIR was not built by this script; kept it as $old"
    elif grep -qF "$ROOTFS_DIR" /proc/self/mountinfo; then
      log "rootfs: the previous rootfs may be in use by a mount; kept it as $old (remove it later)"
    else
      rm -rf "$old"
    fi
  fi
  log "rootfs: built $ROOTFS_DIR ($(du -sh "$ROOTFS_DIR" | cut -f1))"
}

# --- 4. cgroups: let crun run on a hybrid host ----------------------------------------------------
# crun 1.8 refuses a hybrid host (v1 hierarchies plus a cgroup2 at unified/) whose cgroup2 holds
# controllers; systemd often leaves one there unused (hugetlb). A controller that no cgroup2 group
# enables can be given its own v1 hierarchy, as systemd would in hybrid mode: then cgroup2 holds
# none, crun works, and `--runtime auto` picks it (docs/adr/crun-on-hybrid-hosts.md). Without this
# step the server uses runc. Nothing else on the host changes; a reboot undoes it.

free_cgroup2_controllers() {
  local unified=/sys/fs/cgroup/unified controller held
  [[ -f $unified/cgroup.controllers && ! -f /sys/fs/cgroup/cgroup.controllers ]] || return 0
  held=$(<"$unified/cgroup.controllers")
  [[ -n $held ]] || return 0
  if [[ -n $(<"$unified/cgroup.subtree_control") ]]; then
    log "cgroups: cgroup2 at $unified delegates controllers; leaving it (the server will use runc)"
    return 0
  fi
  for controller in $held; do
    if mkdir -p "/sys/fs/cgroup/$controller" 2>/dev/null \
      && mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller" 2>/dev/null; then
      log "cgroups: mounted the unused $controller controller as a v1 hierarchy (for crun)"
    else
      log "cgroups: could not move $controller off cgroup2; the server will use runc"
    fi
  done
}

# --- 5. A Debian minbase tarball for the image tests ----------------------------------------------
# `mmdebstrap --variant=minbase` of the host's release and architecture from the apt sources the
# host itself uses (its mirror, proxy and Valid-Until settings), written as a tar beside the
# final place and renamed into it. Built once: a second run only compares the stamp (release and
# architecture). mmdebstrap took 75 s here, debootstrap 104 s before any tar (docs/images.md).

minbase_want_stamp() {
  local id codename
  id=$(. /etc/os-release && echo "${ID:-}")
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [[ $id == debian && -n $codename ]] || return 1
  printf 'garden-minbase 1 %s %s\n' "$codename" "$(dpkg --print-architecture)"
}

# The apt lines of the host's own sources for its release (and its -updates/-security suites).
minbase_sources() {
  local codename=$1
  apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Created-By: Packages' \
    2>/dev/null | awk -v r="$codename" '$2 == r || index($2, r "-") == 1 { print "deb " $0 }' \
    | sort -u
}

setup_minbase() {
  if [[ ${GARDEN_SKIP_MINBASE:-} == 1 ]]; then
    log "minbase: skipped (GARDEN_SKIP_MINBASE=1); the Debian image test will skip"
    return
  fi
  local want have= stamp="$MINBASE_TAR.stamp"
  if ! want=$(minbase_want_stamp); then
    log "minbase: not a Debian host; skipped (set GARDEN_SKIP_MINBASE=1 so its test skips)"
    return
  fi
  [[ -f $stamp && -f $MINBASE_TAR ]] && have=$(<"$stamp")
  if [[ $want == "$have" && $REBUILD_MINBASE -eq 0 ]]; then
    log "minbase: up to date ($MINBASE_TAR)"
    return
  fi
  local codename sources opts=() value
  codename=$(awk '{ print $3 }' <<<"$want")
  sources=$(minbase_sources "$codename")
  if [[ -z $sources ]]; then
    apt-get update -q </dev/null >&2
    sources=$(minbase_sources "$codename")
  fi
  [[ -n $sources ]] || sources="deb http://deb.debian.org/debian $codename main"
  # mmdebstrap's apt does not read the host's apt.conf.d: pass on what reaches the mirror.
  for key in Acquire::Check-Valid-Until Acquire::http::Proxy Acquire::https::Proxy; do
    value=$(apt-config dump --format '%v%n' "$key" 2>/dev/null | head -n1 || true)
    [[ -n $value ]] && opts+=(--aptopt="$key \"$value\"")
  done
  log "minbase: building $MINBASE_TAR ($codename, from: $(tr '\n' ';' <<<"$sources"))"
  mkdir -p "$(dirname "$MINBASE_TAR")"
  local new started=$SECONDS
  new=$(mktemp "$MINBASE_TAR.new.XXXXXX")
  # shellcheck disable=SC2064  # expand now: $new is local
  trap "rm -f '$new'" EXIT
  # A failure (the mirror unreachable) does not stop the setup: everything else still works,
  # and the one test that needs the tarball fails, saying to run setup again.
  if ! mmdebstrap --quiet --variant=minbase --format=tar --aptopt='Acquire::Retries "3"' \
    "${opts[@]}" "$codename" "$new" - <<<"$sources" >&2; then
    rm -f "$new"
    trap - EXIT
    log "minbase: mmdebstrap FAILED; tests/integration/test_images_debian.py will fail until a" \
      "setup builds it (GARDEN_SKIP_MINBASE=1 skips it where no Debian mirror is reachable)"
    return 0
  fi
  chmod 0644 "$new"
  mv -f "$new" "$MINBASE_TAR"
  trap - EXIT
  printf '%s\n' "$want" >"$stamp"
  log "minbase: built $MINBASE_TAR ($(du -h "$MINBASE_TAR" | cut -f1), $((SECONDS - started)) s)"
}

install_packages
setup_venv
log "garden-monitor: building $VENV_DIR/bin/garden-monitor"
"$REPO_DIR/scripts/build-monitor" "$VENV_DIR/bin/garden-monitor"
setup_rootfs
free_cgroup2_controllers
setup_minbase
log "ready"
