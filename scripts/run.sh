#!/usr/bin/env bash
# Sets up ./.venv (scripts/setup.sh), then runs the main job in the foreground; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/imreactor up "$@"
