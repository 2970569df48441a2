#!/usr/bin/env bash
# Build the Debian 12 (bookworm) systemd base image used by molecule and the lab,
# with debootstrap (no container registry is needed), and cache it: the build runs
# when the image is missing, when it was built by another version of this script
# (the image carries this script's digest as a label), or when FORCE=1.
# The image is a fresh machine as far as roles can tell: no package lists, no apt
# update stamp, and an SSH server whose host keys are made at each container's first
# boot (the lab reaches its hosts over SSH, as production does).
#
#   IMAGE   image name        (default: deepseek-cluster/debian12-systemd:latest)
#   MIRROR  Debian mirror URL (default: the first bookworm "main" source of this machine's apt)
set -euo pipefail

IMAGE=${IMAGE:-deepseek-cluster/debian12-systemd:latest}
SUITE=bookworm
PACKAGES=python3,python3-apt,systemd,systemd-sysv,dbus,iproute2,sudo,ca-certificates,curl,gnupg,procps,openssh-server
RECIPE=$(sha256sum "$0" | cut -c1-16)
LABEL=deepseek.cluster.image-recipe

log() { printf 'build-base-image: %s\n' "$*" >&2; }

built=$(docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$IMAGE" 2>/dev/null || true)
if [ "${FORCE:-0}" != 1 ] && [ "$built" = "$RECIPE" ]; then
  log "$IMAGE is present (FORCE=1 rebuilds it)"
  exit 0
fi
[ -z "$built" ] || log "$IMAGE was built by another version of this script: rebuilding it"

apt_mirror() {
  # deb822 sources first, then one-line sources; the first bookworm suite with "main" wins.
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    awk -v suite="$SUITE" '
      BEGIN { RS=""; FS="\n" }
      {
        uri=""; ok_suite=0; ok_comp=0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)       { split($i, a, /[ \t]+/); uri=a[2] }
          if ($i ~ /^Suites:/)     { n=split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok_suite=1 }
          if ($i ~ /^Components:/) { if ($i ~ /[ \t]main([ \t]|$)/) ok_comp=1 }
        }
        if (uri != "" && ok_suite && ok_comp) { print uri; exit }
      }' "$f"
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk -v suite="$SUITE" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { if ($(i+1) == suite) print $i; break } }' \
    || true
}

MIRROR=${MIRROR:-$(apt_mirror | head -n 1 || true)}
[ -n "$MIRROR" ] || { log "no $SUITE mirror found in this machine's apt sources; set MIRROR"; exit 1; }

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
fi

ROOTFS=$(mktemp -d /var/tmp/deepseek-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

log "debootstrap $SUITE from $MIRROR (about a minute)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
  || { tail -n 30 "$ROOTFS.log" >&2; exit 1; }
rm -f "$ROOTFS.log"

# Container niceties: no units that need real hardware, a machine-id made at first boot,
# no recommends, and an empty apt cache to keep the image small.
rm -f "$ROOTFS/etc/machine-id" && touch "$ROOTFS/etc/machine-id"
for unit in systemd-remount-fs.service systemd-udevd.service systemd-udev-trigger.service \
            getty.target console-getty.service systemd-firstboot.service sys-kernel-debug.mount \
            sys-kernel-config.mount sys-kernel-tracing.mount; do
  ln -sf /dev/null "$ROOTFS/etc/systemd/system/$unit"
done
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$ROOTFS/etc/apt/apt.conf.d/90-no-recommends"

# SSH: no host key in the image (every container would share it); each container makes its own
# at first boot, before sshd starts (what cloud images do). Keys only, no passwords.
rm -f "$ROOTFS"/etc/ssh/ssh_host_*
cat >"$ROOTFS/etc/systemd/system/ssh-host-keys.service" <<'UNIT'
[Unit]
Description=Generate this host's SSH host keys (first boot)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
UNIT
mkdir -p "$ROOTFS/etc/systemd/system/ssh.service.d"
printf '[Unit]\nRequires=ssh-host-keys.service\nAfter=ssh-host-keys.service\n' \
  >"$ROOTFS/etc/systemd/system/ssh.service.d/host-keys.conf"
printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n' \
  >"$ROOTFS/etc/ssh/sshd_config.d/deepseek-lab.conf"
# A fresh machine's package index: no lists and no update stamp (roles must refresh it themselves;
# molecule's prepare and the lab check that the hosts start this way).
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/lib/apt/periodic/update-success-stamp
mkdir -p "$ROOTFS"/var/lib/apt/lists/partial

log "importing the root filesystem as $IMAGE"
tar -C "$ROOTFS" -c . | docker import \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV container=docker' \
  --change "LABEL $LABEL=$RECIPE" \
  - "$IMAGE" >/dev/null
log "built $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
