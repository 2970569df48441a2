#!/usr/bin/env bash
# The llmapi conformance suite against a served model (tests/conformance/README.md): set
# CONFORMANCE_HTTP_URL and CONFORMANCE_GRPC_URL (and the CA, certificate and key through the mTLS proxy).
# Extra arguments go to pytest. Exits with pytest's status.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
python=$root/.venv/bin/python3
[ -x "$python" ] || python=$(command -v python3) || { echo "conformance: no python3 (make venv)" >&2; exit 2; }
if [ -z "${CONFORMANCE_HTTP_URL:-}" ] && [ -z "${CONFORMANCE_GRPC_URL:-}" ]; then
  echo "conformance: set CONFORMANCE_HTTP_URL and/or CONFORMANCE_GRPC_URL (tests/conformance/README.md)" >&2
  exit 2
fi
cd "$root"
exec "$python" -m pytest -q -p no:cacheprovider tests/conformance "$@"
