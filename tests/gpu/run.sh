#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU and its driver (bare metal, a VM or a GPU container); needs
# nothing from the internet. From anywhere in a checkout:
#   tests/gpu/run.sh [OUTPUT_DIR]          (default: $OUT, else tests/gpu/output)
# Six checks (nvidia_host_facts, gpu_topology, nvidia_driver_verify, cdi, cuda, triton), each under its own
# timeout; one line per check (PASS/FAIL/SKIP name: ...), then "N skipped" and "N passed, N failed".
# Exits 0 only when no check failed. tests/gpu/README.md says what each check proves; gpu_check.py runs them.
# The deployed model's llmapi contract is a separate run: tests/conformance/run.sh (tests/gpu/README.md).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-${OUT:-$root/tests/gpu/output}}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
python=$root/.venv/bin/python3
[ -x "$python" ] || python=$(command -v python3) || { echo "gpu check: no python3 (make venv)" >&2; exit 2; }

# A Triton server the check started is stopped however the run ends (gpu_check.py stops it itself; this
# catches a check killed outright). Only the process named in the pid file, and only if it is tritonserver.
stop_triton() {
  local pid_file=$out/triton/server.pid pid
  [ -f "$pid_file" ] || return 0
  pid=$(cat "$pid_file")
  if [[ $pid =~ ^[0-9]+$ ]] && grep -q tritonserver "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  fi
  rm -f "$pid_file"
}
trap stop_triton EXIT
trap 'stop_triton; exit 130' INT
trap 'stop_triton; exit 143' TERM

"$python" "$root/tests/gpu/gpu_check.py" --out "$out"
