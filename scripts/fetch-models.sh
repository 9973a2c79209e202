#!/usr/bin/env bash
# Fetch real GGUF models into ./models (git-ignored) with the shared, sha256-checked fetcher.
# Usage: scripts/fetch-models.sh [smollm2|smollm2-variants|gemma3|qwen05|qwen15|all]...  (default: smollm2)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${FERRITE_SHARED:-$ROOT/../shared}
[ -x "$SHARED/models/fetch.sh" ] || [ -f "$SHARED/models/fetch.sh" ] || {
  echo "fetch-models: $SHARED/models/fetch.sh not found (set FERRITE_SHARED)" >&2; exit 2; }
command -v unzip >/dev/null || { echo "fetch-models: needs unzip (apt-get install -y unzip)" >&2; exit 2; }
for m in "${@:-smollm2}"; do
  case "$m" in smollm2-variants|all)
    python3 -c 'import gguf, numpy' 2>/dev/null || python3 -m pip install -q gguf numpy ;;
  esac
done
# A symlinked ./models (pointing at a shared cache) is kept as is.
mkdir -p "$ROOT/models"
exec bash "$SHARED/models/fetch.sh" "$ROOT/models" "${@:-smollm2}"
