#!/usr/bin/env bash
# ansible-test sanity on the collection as built (the tarball's files), from a temporary
# ansible_collections/deepseek/cluster tree (ansible-test requires that layout).
# The sanity tools (pylint, validate-modules ...) go into a virtualenv of their own, .venv-sanity,
# with the same ansible-core as the project (ansible-test --requirements installs them from PyPI).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CORE=$(grep -E '^ansible-core==' requirements.txt)
if [ ! -x .venv-sanity/bin/ansible-test ] || ! grep -qx "$CORE" <<<"$(.venv-sanity/bin/pip freeze 2>/dev/null)"; then
  python3 -m venv --clear .venv-sanity
  .venv-sanity/bin/pip install --quiet "$CORE"
fi
export PATH="$ROOT/.venv-sanity/bin:$PATH"
# ansible-test bootstraps pip in its sanity virtualenvs with a script it downloads from a host that
# is not reachable here; give it the offline stand-in under the cache name it looks for.
PIP_VERSION=$(python3 - <<'PY'
import re, pathlib, ansible_test
src = (pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py").read_text()
print(re.search(r"pip='([0-9.]+)'", src).group(1))
PY
)
mkdir -p ~/.ansible/test/cache
cp tests/sanity/get_pip_offline.py "$HOME/.ansible/test/cache/get_pip_${PIP_VERSION//./_}.py"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
DEST="$WORK/ansible_collections/deepseek/cluster"
mkdir -p "$DEST"
# The collection as it ships: the files of the tarball `ansible-galaxy collection build` makes (galaxy.yml's
# build_ignore leaves out the project's tooling, the lab and the tests, all but the sanity ignore files, so
# those name shipped files only).
ansible-galaxy collection build --force --output-path "$WORK/dist" . >/dev/null
tar -xzf "$WORK"/dist/deepseek-cluster-*.tar.gz -C "$DEST"
cd "$DEST"
PY=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
ansible-test sanity --local --requirements --python "$PY" --color no "$@"
echo "ansible-test sanity: 1 passed, 0 failed"
