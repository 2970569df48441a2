#!/usr/bin/env bash
# Put this machine back where a fresh one starts, as far as this project is concerned, so that
# `make distclean test` (or `make distclean lab`) reproduces a first run from nothing:
#   - lab, molecule and collection-test containers, and the lab network;
#   - the base image (built again by the next make target that needs it);
#   - the virtualenvs and every cache this checkout or its roles keep: .venv, .venv-sanity, .cache
#     (Triton wheels, the lab CA and SSH key), the controller-side tarball cache
#     ~/.cache/deepseek.cluster, molecule's per-scenario state, tool caches.
# Left alone: the docker engine and other system packages (a fresh machine gets them from the same
# make targets, but removing them here would touch what other work may use), and pip's own download
# cache (it changes what is downloaded, never what is installed).
set -uo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-deepseek-cluster/debian12-systemd:latest}

log() { printf 'distclean: %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
  ids=$(docker ps -aq --filter label=deepseek.cluster.lab; docker ps -aq --filter label=deepseek.cluster.molecule
        docker ps -aq --filter "ancestor=$IMAGE"; docker ps -aq --filter name=deepseek-collection-test)
  if [ -n "$ids" ]; then
    log "removing containers: $(docker inspect --format '{{.Name}}' $ids | tr -d / | sort -u | tr '\n' ' ')"
    docker rm -f $(printf '%s\n' $ids | sort -u) >/dev/null
  fi
  nets=$(docker network ls -q --filter label=deepseek.cluster.lab; docker network ls -q --filter label=deepseek.cluster.molecule)
  [ -z "$nets" ] || docker network rm $nets >/dev/null
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "removing the image $IMAGE"
    docker image rm -f "$IMAGE" >/dev/null
  fi
else
  log "no docker engine answers: no containers or image to remove"
fi

# Molecule keeps each scenario's state in ~/.ansible/tmp/molecule.<checksum of the role name>.<scenario>
# (molecule/scenario.py, molecule/text.py: urlsafe base64 of sha256, first 4 characters).
for dir in roles/*/molecule/*/; do
  role=$(basename "$(dirname "$(dirname "$dir")")")
  scenario=$(basename "$dir")
  sum=$(python3 -c 'import base64, hashlib, sys
print(base64.urlsafe_b64encode(hashlib.sha256(sys.argv[1].encode()).digest()).decode()[:4])' "$role")
  rm -rf "$HOME/.ansible/tmp/molecule.$sum.$scenario"
done

log "removing virtualenvs and caches"
rm -rf .venv .venv-sanity .cache .ruff_cache .pytest_cache "$HOME/.cache/deepseek.cluster"
find . -name __pycache__ -type d -prune -exec rm -rf {} +
log "done: the next make target starts from nothing"
