#!/usr/bin/env bash
# Run `molecule test` for every role scenario, one after another.
#   run-molecule.sh                  main scenarios (what `make test` runs)
#   run-molecule.sh --extended       main and extended scenarios (`make test-extended`)
#   run-molecule.sh ROLE[:SCENARIO]  only these
# A scenario is extended when its directory holds a file named EXTENDED (it says why).
set -uo pipefail
cd "$(dirname "$0")/../.."

extended=0
selected=()
for arg in "$@"; do
  case "$arg" in
    --extended) extended=1 ;;
    *) selected+=("$arg") ;;
  esac
done

wanted() {  # role scenario
  [ ${#selected[@]} -eq 0 ] && return 0
  local s
  for s in "${selected[@]}"; do
    [ "$s" = "$1" ] || [ "$s" = "$1:$2" ] && return 0
  done
  return 1
}

passed=0 failed=0 skipped=0
failures=()
for cfg in roles/*/molecule/*/molecule.yml; do
  [ -e "$cfg" ] || continue
  dir=$(dirname "$cfg")
  scenario=$(basename "$dir")
  role=$(basename "$(dirname "$(dirname "$dir")")")
  wanted "$role" "$scenario" || continue
  if [ -e "$dir/EXTENDED" ] && [ $extended -eq 0 ]; then
    skipped=$((skipped + 1))
    continue
  fi
  echo "=== molecule: $role / $scenario ==="
  start=$(date +%s)
  # Container names carry the role (.config/molecule/config.yml); hostnames take no underscore.
  if (cd "roles/$role" && MOLECULE_ROLE="${role//_/-}" molecule test -s "$scenario"); then
    passed=$((passed + 1))
    echo "=== molecule: $role / $scenario passed in $(( $(date +%s) - start )) s ==="
  else
    failed=$((failed + 1))
    failures+=("$role/$scenario")
    echo "=== molecule: $role / $scenario FAILED after $(( $(date +%s) - start )) s ==="
  fi
done

echo "molecule: $passed passed, $failed failed, $skipped skipped"
[ ${#failures[@]} -eq 0 ] || { printf 'failed scenario: %s\n' "${failures[@]}"; exit 1; }
[ $((passed + failed)) -gt 0 ] || { echo "molecule: no scenario ran"; exit 1; }
