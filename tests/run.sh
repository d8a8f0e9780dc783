#!/usr/bin/env bash
# Runs the whole test suite (as root, on a Debian/Ubuntu host). Same command as in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest tests "$@"
