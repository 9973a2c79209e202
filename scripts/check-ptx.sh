#!/usr/bin/env bash
# Assembles every kernels/ptx/*.ptx with `ptxas -v` for sm_80 and sm_90 (no GPU needed) and
# fails on any error or any spill. Prints a table of registers, shared memory and spills
# per kernel and architecture (the figures in docs/PERFORMANCE.md).
#   scripts/check-ptx.sh [--markdown]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PTXAS:-}" ]; then eval "$(scripts/cuda-tools.sh)"; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
status=0
if [ "${1:-}" = "--markdown" ]; then
  echo "| arch | file | kernel | registers | smem bytes | spill bytes |"
  echo "|---|---|---|---:|---:|---:|"
fi
for arch in sm_80 sm_90; do
  for ptx in kernels/ptx/*.ptx; do
    if ! "$PTXAS" -v --gpu-name "$arch" -o "$tmp/out.cubin" "$ptx" > "$tmp/log" 2>&1; then
      echo "check-ptx: $ptx does not assemble for $arch:" >&2; cat "$tmp/log" >&2; status=1; continue
    fi
    # ptxas -v: "Compiling entry function 'NAME' for 'sm_XX'", then "N bytes stack frame,
    # N bytes spill stores, N bytes spill loads" and "Used N registers, ... N bytes smem".
    python3 - "$arch" "$ptx" "$tmp/log" <<'PY' || status=1
import os, re, sys
arch, path, log = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
file = os.path.basename(path)
bad = 0
blocks = re.split(r"ptxas info\s*: Compiling entry function ", log)[1:]
# Every kernel must be reported: a changed log format must not pass as "no spills".
entries = len(re.findall(r"^\.visible \.entry ", open(path).read(), re.M))
if len(blocks) != entries:
    print(f"check-ptx: {file} has {entries} kernels but ptxas -v reported {len(blocks)} on {arch}", file=sys.stderr)
    bad = 1
for block in blocks:
    name = re.match(r"'([^']+)'", block).group(1)
    regs = re.search(r"Used (\d+) registers", block)
    smem = re.search(r"(\d+) bytes smem", block)
    st = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
    spill = int(st.group(1)) + int(st.group(2)) if st else 0
    print(f"| {arch} | {file} | {name} | {regs.group(1) if regs else '?'} | {smem.group(1) if smem else 0} | {spill} |")
    if spill:
        print(f"check-ptx: {name} spills {spill} bytes on {arch}", file=sys.stderr)
        bad = 1
sys.exit(bad)
PY
  done
done
exit $status
