#!/usr/bin/env bash
# Build the arc-agent and arc-relay images with Debian's own tools and no registry:
#   1. a minimal Debian bookworm base with python3 (debootstrap), imported into podman
#      as localhost/cluster-connect/debian-python:bookworm (once per machine: minutes cold);
#   2. deploy/Containerfile built FROM it, one target per image (seconds warm).
# Usage: deploy/build-images.sh        -> localhost/cluster-connect/arc-{agent,relay}:VERSION
# Needs (Debian): apt-get install podman debootstrap runc
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'build-images: %s\n' "$*" >&2; }

for tool in podman debootstrap runc; do
  command -v "$tool" >/dev/null || { say "$tool not found: install it (Debian: apt-get install podman debootstrap runc)"; exit 3; }
done
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
prefix="${IMAGE_PREFIX:-localhost/cluster-connect}"
base="localhost/cluster-connect/debian-python:bookworm"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if ! podman image exists "$base"; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  say "making $base from $mirror with debootstrap (once per machine)"
  if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -20 "$work/debootstrap.log" >&2; say "debootstrap failed (log above)"; exit 1
  fi
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/* \
         "$work"/rootfs/usr/share/doc "$work"/rootfs/usr/share/man
  tar -C "$work/rootfs" -c . | podman import --change 'CMD ["/bin/sh"]' - "$base" >/dev/null
fi

# runc: crun refuses a hybrid cgroup layout. Explicit ulimits: podman's defaults lie
# above the hard limits here, and root without CAP_SYS_RESOURCE cannot raise them.
opts=(--runtime runc --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
# Behind a TLS-intercepting network pip must trust the host's CA bundle: mounted for
# the build only (deploy/Containerfile reads /run/host-ca.crt), never copied in.
ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
[ -f "$ca" ] && opts+=(-v "$ca:/run/host-ca.crt:ro")
for target in arc-agent arc-relay; do
  say "building $prefix/$target:$version"
  podman build -q "${opts[@]}" -f deploy/Containerfile --target "$target" -t "$prefix/$target:$version" . >/dev/null
done
say "built $prefix/arc-agent:$version and $prefix/arc-relay:$version"
