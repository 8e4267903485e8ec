#!/usr/bin/env bash
# Put the project's wheel and every dependency wheel into a build-context folder,
# so that an image build installs with `pip install --no-index --find-links`
# and needs no network inside the build.
#
#   ops/fetch-wheels.sh [DEST]        # DEST defaults to ops/build/wheels
#
# Dependency wheels are downloaded for the image's interpreter and platform
# (CPython 3.11, glibc x86_64 by default; override with EV_WHEEL_PYTHON,
# EV_WHEEL_PLATFORMS), whatever the host runs. The project wheel is built from
# a copy of the working tree, so the tree itself is left untouched. pip uses
# the host's own index configuration.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$ROOT/ops/build/wheels}"
PYVER="${EV_WHEEL_PYTHON:-3.11}"
PLATFORMS="${EV_WHEEL_PLATFORMS:-manylinux_2_36_x86_64 manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64 linux_x86_64}"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

log() { echo "fetch-wheels: $*" >&2; }

mkdir -p "$DEST"
work="$(mktemp -d -t evcharge-wheels.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# 1. The project wheel, built from a clean copy of the sources.
mkdir -p "$work/src"
cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$work/src/"
for pkg in common broker station vehicle; do
    [ -d "$ROOT/$pkg" ] || continue
    tar -C "$ROOT" --exclude='__pycache__' --exclude='*.pyc' -cf - "$pkg" | tar -C "$work/src" -xf -
done
rm -f "$DEST"/*.whl   # a fresh, consistent set each time
log "building the project wheel"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$DEST" "$work/src" >&2

# 2. Every dependency, as binary wheels for the target interpreter and platform, at
#    the versions pinned in constraints.txt (`make lock` regenerates it).
platform_args=()
for p in $PLATFORMS; do platform_args+=(--platform "$p"); done
log "downloading dependency wheels for CPython $PYVER"
"$PYTHON" -m pip download --quiet --dest "$DEST" --only-binary=:all: \
    --constraint "$ROOT/constraints.txt" \
    --python-version "$PYVER" --implementation cp "${platform_args[@]}" \
    "$DEST"/evcharge-*.whl >&2

log "$(ls "$DEST" | wc -l) wheels in $DEST"
