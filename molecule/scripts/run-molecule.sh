#!/usr/bin/env bash
# Run `molecule test` for every role scenario.
#   run-molecule.sh                  main scenarios (what `make test` runs)
#   run-molecule.sh --extended       main and extended scenarios (`make test-extended`)
#   run-molecule.sh ROLE[:SCENARIO]  only these
# A scenario is extended when its directory holds a file named EXTENDED (it says why).
# MOLECULE_JOBS (default 2) scenarios run at once, each in containers and networks named after its role
# (.config/molecule/config.yml), so that they never share one. A scenario's output goes to
# .cache/molecule-logs/<role>-<scenario>.log and is printed whole when it ends.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

extended=0
selected=()
for arg in "$@"; do
  case "$arg" in
    --extended) extended=1 ;;
    *) selected+=("$arg") ;;
  esac
done
jobs_max=${MOLECULE_JOBS:-2}
case "$jobs_max" in
  '' | *[!0-9]* | 0) echo "MOLECULE_JOBS must be a positive integer, got '$jobs_max'" >&2; exit 2 ;;
esac

wanted() {  # role scenario
  [ ${#selected[@]} -eq 0 ] && return 0
  local s
  for s in "${selected[@]}"; do
    [ "$s" = "$1" ] || [ "$s" = "$1:$2" ] && return 0
  done
  return 1
}

logs=.cache/molecule-logs
mkdir -p "$logs"

run_one() {  # role scenario: one `molecule test`, its output in its log, its result as the exit status
  local role=$1 scenario=$2 start rc
  start=$(date +%s)
  # Container names carry the role (.config/molecule/config.yml); hostnames take no underscore.
  (cd "roles/$role" && MOLECULE_ROLE="${role//_/-}" molecule test -s "$scenario") >"$logs/$role-$scenario.log" 2>&1
  rc=$?
  echo "$(( $(date +%s) - start ))" >"$logs/$role-$scenario.seconds"
  return $rc
}

queue=()
skipped=0
# Reverse order of roles: triton_server, the longest scenario, starts first, and the two that download
# Triton's wheels into the shared cache (triton_server, mtls_proxy) never start together.
mapfile -t configs < <(printf '%s\n' roles/*/molecule/*/molecule.yml | sort -r)
for cfg in "${configs[@]}"; do
  [ -e "$cfg" ] || continue
  dir=$(dirname "$cfg")
  scenario=$(basename "$dir")
  role=$(basename "$(dirname "$(dirname "$dir")")")
  wanted "$role" "$scenario" || continue
  if [ -e "$dir/EXTENDED" ] && [ $extended -eq 0 ]; then
    skipped=$((skipped + 1))
    continue
  fi
  queue+=("$role:$scenario")
done

passed=0 failed=0
failures=()
declare -A running=()  # pid -> role:scenario

reap() {  # wait for one scenario to end, print its log and count it
  local pid rc item
  wait -n -p pid "${!running[@]}"
  rc=$?
  item=${running[$pid]}
  unset "running[$pid]"
  local role=${item%%:*} scenario=${item#*:}
  echo "=== molecule: $role / $scenario (output follows) ==="
  cat "$logs/$role-$scenario.log"
  if [ $rc -eq 0 ]; then
    passed=$((passed + 1))
    echo "=== molecule: $role / $scenario passed in $(cat "$logs/$role-$scenario.seconds") s ==="
  else
    failed=$((failed + 1))
    failures+=("$role/$scenario")
    echo "=== molecule: $role / $scenario FAILED after $(cat "$logs/$role-$scenario.seconds") s ==="
  fi
}

for item in "${queue[@]}"; do
  while [ ${#running[@]} -ge "$jobs_max" ]; do reap; done
  echo "=== molecule: ${item%%:*} / ${item#*:} started ==="
  run_one "${item%%:*}" "${item#*:}" &
  running[$!]=$item
done
while [ ${#running[@]} -gt 0 ]; do reap; done

echo "molecule: $passed passed, $failed failed, $skipped skipped"
[ ${#failures[@]} -eq 0 ] || { printf 'failed scenario: %s\n' "${failures[@]}"; exit 1; }
[ $((passed + failed)) -gt 0 ] || { echo "molecule: no scenario ran"; exit 1; }
