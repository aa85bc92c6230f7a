#!/usr/bin/env bash
# Set everything up (system packages, .venv) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
    echo "mpseal tests: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit $rc
