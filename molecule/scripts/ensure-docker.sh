#!/usr/bin/env bash
# Make a Docker engine available on this machine, starting from nothing:
#   - installs Debian's openssh-client when ssh or ssh-keygen is missing (the lab and molecule reach
#     their containers over SSH),
#   - installs Debian's docker.io when dockerd is missing,
#   - starts dockerd in the background when no daemon answers (no systemd needed),
#   - waits until the socket answers.
# Safe to run repeatedly: it does nothing when the engine already answers.
set -euo pipefail

log() { printf 'ensure-docker: %s\n' "$*" >&2; }

if ! command -v ssh >/dev/null 2>&1 || ! command -v ssh-keygen >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || { log "ssh or ssh-keygen is missing and this is not root: install openssh-client first"; exit 1; }
  log "installing openssh-client from the distribution's archive"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq openssh-client >/dev/null
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || { log "dockerd is missing and this is not root: install docker.io first"; exit 1; }
  log "installing docker.io from the distribution's archive"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null 2>&1 && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    log "starting docker.service"
    systemctl start docker
  else
    log "starting dockerd in the background (log: /var/log/dockerd.log)"
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
fi

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    log "docker engine is up: $(docker version --format '{{.Server.Version}}')"
    exit 0
  fi
  sleep 1
done
log "docker engine did not answer within 60 s; last lines of its log:"
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
