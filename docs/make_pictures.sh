#!/usr/bin/env bash
# Rebuild the README's picture of the bundled model on the real example renderings:
# one row per image: input | mesh from the input camera | mesh turned 90 degrees.
# Usage (from anywhere): bash docs/make_pictures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d "${TMPDIR:-/tmp}/p2m_pictures_XXXXXX")
trap 'rm -rf "$out"' EXIT
.venv/bin/p2m-geo predict ../shared/data/examples/*.png -o "$out" --model lite0-depth-synth3 \
  --preview docs/bundled_examples.png
.venv/bin/p2m-geo data mesh-quality "$out"/*.ply
