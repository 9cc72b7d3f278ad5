#!/usr/bin/env bash
# Run the whole test suite: makes .venv (once), installs metamock with its test extras, runs pytest.
# Tests that need root and network namespaces skip on a laptop; with CI=true every skip is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,fast]'
exec .venv/bin/python -m pytest "$@"
