#!/usr/bin/env bash
# Renders docs/architecture.dot to docs/architecture.svg (Graphviz; Debian: apt-get install graphviz).
set -euo pipefail
cd "$(dirname "$0")"
command -v dot >/dev/null || { echo "Graphviz 'dot' is missing: apt-get install -y graphviz" >&2; exit 1; }
dot -Tsvg architecture.dot -o architecture.svg
echo "wrote docs/architecture.svg"
