#!/usr/bin/env bash
# Runs the whole test suite as root on a Debian/Ubuntu host: installs what the tests need
# (apt packages, the .venv with pip packages, the full-kernel guest runner), then pytest.
# This is the README's test command; .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
exec .venv/bin/python -m pytest tests "$@"
