#!/usr/bin/env bash
# Set up, fetch MNIST and run the demo: trains 2L-c, samples, scores, writes runs/demo/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/deepmix fetch mnist || echo "MNIST unavailable: the demo falls back to scikit-learn's 8x8 digits" >&2
exec .venv/bin/deepmix demo --out runs/demo "$@"
