#!/usr/bin/env bash
# Build the collection tarball, install it into a temporary path, and run its site playbook
# from the INSTALLED copy (not this checkout) against a throwaway systemd container.
# Fails when the tarball misses a file the content needs, or carries test/lab artefacts.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=$(mktemp -d)
HOST=deepseek-collection-test
cleanup() { docker rm -f "$HOST" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

echo "== build"
ansible-galaxy collection build --force --output-path "$WORK/dist" . >/dev/null
TARBALL=$(ls "$WORK"/dist/deepseek-cluster-*.tar.gz)
echo "built $(basename "$TARBALL") ($(du -k "$TARBALL" | cut -f1) KiB)"

echo "== contents"
tar -tzf "$TARBALL" >"$WORK/files"
for forbidden in '^collections/' '^molecule/' '/molecule/' '^\.venv/' '^benchmarks/' '^tests/testkit/' '^\.ci/' '^\.config/' \
                 '^\.ansible/' '^inventories/lab/' '^ansible\.cfg$' '^changelogs/\.plugin-cache\.yaml$' '\.egg-info/'; do
  if grep -qE "$forbidden" "$WORK/files"; then
    echo "the tarball carries files matching $forbidden:"; grep -E "$forbidden" "$WORK/files" | head; exit 1
  fi
done
# Of tests/ only ansible-test's sanity ignore files ship.
tests_shipped=$(grep -E '^tests/' "$WORK/files" | grep -vE '^tests/(sanity/(ignore-[0-9.]+\.txt)?)?$' || true)
[ -z "$tests_shipped" ] || { echo "the tarball carries tests other than the sanity ignore files:"; head <<<"$tests_shipped"; exit 1; }
for required in MANIFEST.json FILES.json meta/runtime.yml playbooks/site.yml roles/node_exporter/tasks/main.yml \
                roles/node_exporter/meta/argument_specs.yml docs/roles/node_exporter.md LICENSE README.md \
                CHANGELOG.md changelogs/changelog.yaml changelogs/config.yaml; do
  grep -qx "$required" "$WORK/files" || { echo "the tarball lacks $required"; exit 1; }
done
echo "$(wc -l <"$WORK/files") entries, no test or lab artefacts"

echo "== install into a temporary collections path"
printf "[defaults]\n" >"$WORK/ansible.cfg"
ANSIBLE_COLLECTIONS_PATH="$WORK/collections" ANSIBLE_CONFIG="$WORK/ansible.cfg" \
  ansible-galaxy collection install --force --no-deps -p "$WORK/collections" "$TARBALL" >/dev/null
INSTALLED="$WORK/collections/ansible_collections/deepseek/cluster"
[ -f "$INSTALLED/MANIFEST.json" ] || { echo "install did not produce $INSTALLED"; exit 1; }

# From here on nothing may come from the checkout: run from the temporary directory, with
# only the temporary collections path (the pinned ansible bundle still provides community.*).
cd "$WORK"
export ANSIBLE_COLLECTIONS_PATH="$WORK/collections"
export ANSIBLE_CONFIG="$WORK/ansible.cfg"
unset ANSIBLE_ROLES_PATH

echo "== documentation renders from the installed copy"
ansible-doc -t role deepseek.cluster.node_exporter >/dev/null
ansible-doc deepseek.cluster.gpu_topology >/dev/null
ansible-doc -t filter deepseek.cluster.parallel_plan >/dev/null

echo "== run deepseek.cluster.site from the installed copy against a container"
docker rm -f "$HOST" >/dev/null 2>&1 || true
docker run -d --name "$HOST" --hostname "$HOST" --cap-add SYS_ADMIN --tmpfs /run --tmpfs /run/lock \
  -v /sys/fs/cgroup:/sys/fs/cgroup:rw deepseek-cluster/debian12-systemd:latest /sbin/init >/dev/null
for _ in $(seq 1 60); do
  state=$(docker exec "$HOST" systemctl is-system-running 2>/dev/null || true)
  case "$state" in running|degraded) break ;; esac
  sleep 1
done
cat >"$WORK/hosts.yml" <<YAML
all:
  hosts:
    $HOST:
      ansible_connection: community.docker.docker
      ansible_python_interpreter: /usr/bin/python3
YAML
ansible-playbook -vv -i "$WORK/hosts.yml" deepseek.cluster.site >"$WORK/run.log" 2>&1 \
  || { tail -n 40 "$WORK/run.log"; exit 1; }
grep -A1 '^PLAY RECAP' "$WORK/run.log"
# The role must have come from the installed copy, and the exporter must answer.
grep -q "task path: $INSTALLED/roles/node_exporter/" "$WORK/run.log" \
  || { echo "the role did not run from the installed copy"; exit 1; }
docker exec "$HOST" curl -sf http://127.0.0.1:9100/metrics >"$WORK/metrics" || true
grep -q '^node_cpu_seconds_total' "$WORK/metrics" \
  || { echo "node_exporter does not answer after the installed-copy run"; exit 1; }
echo "collection: 1 passed, 0 failed"
