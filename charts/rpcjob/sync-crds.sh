#!/usr/bin/env bash
# Copies the repository's CRDs (the single source of truth, crds/) into the chart, byte for byte.
# Run after every change to crds/; tests/test_chart_crds.py fails while the copies differ.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mkdir -p "$here/files/crds"
rm -f "$here"/files/crds/*.yaml
cp "$root"/crds/*.yaml "$here/files/crds/"
echo "synced: $(cd "$here" && ls files/crds/*.yaml | tr '\n' ' ')"
