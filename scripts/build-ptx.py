#!/usr/bin/env python3
"""Compiles every kernels/cuda/*.cu with NVRTC into kernels/ptx/*.ptx (committed, embedded in
the binary, JIT-compiled by the driver for the GPU at hand).

  build-ptx.py           write the PTX files
  build-ptx.py --check   fail if a committed PTX file differs from what NVRTC makes now

NVRTC is found in $NVRTC_DIR (see scripts/cuda-tools.sh) or on the loader path.
"""
import ctypes
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "kernels" / "cuda"
OUT = ROOT / "kernels" / "ptx"
# Baseline virtual architecture: compute_75 (Turing). The kernels need dp4a (6.1+) and
# nothing newer, and every GPU from the RTX 20 series and T4 on (A100, RTX 30/40, H100 ...)
# JIT-compiles compute_75 PTX for itself.
ARCH = "compute_75"
# PTX ISA the files declare: 8.0, CUDA 12.0's, so that every CUDA 12 driver (R525 on; the
# generation cudarc's cuda-12090 bindings target) JIT-compiles them. NVRTC 12.9 writes its own
# ISA (8.8: R575 on) although the kernels use nothing newer; ptxas, which refuses an
# instruction that the declared ISA lacks, checks that in CI (scripts/check-ptx.sh).
PTX_ISA = b"8.0"
OPTIONS = [f"--gpu-architecture={ARCH}", "--std=c++17", f"--include-path={SRC}"]


def load_nvrtc():
    names = []
    if os.environ.get("NVRTC_DIR"):
        names.append(os.path.join(os.environ["NVRTC_DIR"], "libnvrtc.so.12"))
    names.append("libnvrtc.so.12")
    for n in names:
        try:
            return ctypes.CDLL(n)
        except OSError:
            pass
    sys.exit("build-ptx: libnvrtc.so.12 not found (run: eval \"$(scripts/cuda-tools.sh)\")")


def compile_one(nvrtc, path):
    prog = ctypes.c_void_p()
    src = path.read_bytes()
    rc = nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, path.name.encode(), 0, None, None)
    if rc != 0:
        sys.exit(f"build-ptx: nvrtcCreateProgram({path.name}) failed: {rc}")
    opts = (ctypes.c_char_p * len(OPTIONS))(*[o.encode() for o in OPTIONS])
    rc = nvrtc.nvrtcCompileProgram(prog, len(OPTIONS), opts)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    text = log.value.decode(errors="replace").strip()
    if rc != 0:
        sys.exit(f"build-ptx: {path.name} failed to compile:\n{text}")
    if text:
        print(f"{path.name}: {text}", file=sys.stderr)
    nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(prog, ptx)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return declare_isa(path.name, ptx.value)


def declare_isa(name, ptx):
    """`ptx` with its `.version` line set to PTX_ISA (never raised)."""
    lines = ptx.split(b"\n")
    at = [i for i, l in enumerate(lines) if l.startswith(b".version ")]
    if len(at) != 1:
        sys.exit(f"build-ptx: {name}: expected one .version line, found {len(at)}")
    made = lines[at[0]].split()[1]
    key = lambda v: tuple(int(x) for x in v.split(b"."))
    if key(made) < key(PTX_ISA):
        sys.exit(f"build-ptx: {name}: NVRTC wrote ISA {made.decode()}, older than {PTX_ISA.decode()}")
    lines[at[0]] = b".version " + PTX_ISA
    return b"\n".join(lines)


def main():
    check = "--check" in sys.argv[1:]
    nvrtc = load_nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    OUT.mkdir(exist_ok=True)
    stale = []
    sources = sorted(SRC.glob("*.cu"))
    for cu in sources:
        ptx = compile_one(nvrtc, cu)
        dst = OUT / (cu.stem + ".ptx")
        if check:
            if not dst.exists() or dst.read_bytes() != ptx:
                stale.append(dst.name)
        else:
            dst.write_bytes(ptx)
        print(f"{cu.name} -> {dst.relative_to(ROOT)} ({len(ptx)} bytes, NVRTC {major.value}.{minor.value}, {ARCH}, ISA {PTX_ISA.decode()})")
    extra = sorted(p.name for p in OUT.glob("*.ptx") if not (SRC / (p.stem + ".cu")).exists())
    if check and (stale or extra):
        sys.exit(f"build-ptx: committed PTX is stale: {stale + extra}; run scripts/build-ptx.py and commit")


if __name__ == "__main__":
    main()
