#!/usr/bin/env bash
# Build the collection tarball, install it into a temporary path, and render the documentation of every
# module, filter and role from the INSTALLED copy (not this checkout). Fails when the tarball misses a file
# the content needs, or carries test/lab artefacts. make lab-test runs deepseek.cluster.site from an installed
# tarball against the lab.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=$(mktemp -d)
cleanup() { rm -rf "$WORK"; }
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

# Every play of deepseek.cluster.site runs from an installed tarball against the lab, through ansible-runner as
# AWX runs it: the first converge of make lab-test (deepseek_testkit.lab.installed_collection).
echo "== every module, filter and role documented in the installed copy"
for kind in module filter role; do
  listed=$(ansible-doc -t "$kind" -l deepseek.cluster 2>/dev/null | grep -o '^deepseek\.cluster\.[a-z0-9_]*')
  [ -n "$listed" ] || { echo "no $kind of deepseek.cluster is listed"; exit 1; }
  for name in $listed; do
    ansible-doc -t "$kind" "$name" >/dev/null 2>"$WORK/doc.err" || { echo "$kind $name:"; cat "$WORK/doc.err"; exit 1; }
    if grep -q "WARNING" "$WORK/doc.err"; then echo "$kind $name:"; cat "$WORK/doc.err"; exit 1; fi
  done
  echo "$(echo "$listed" | wc -l) ${kind}s render"
done
echo "collection: 1 passed, 0 failed"
