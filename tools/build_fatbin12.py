#!/usr/bin/env python3
"""Builds the CUDA 12 fatbin of the kernels (called by tools/build_ptx.sh; build time only).

The CUDA 12 compiler wheels on PyPI carry no nvcc driver, so the fatbin is put together from their libraries:
NVRTC (nvidia-cuda-nvrtc-cu12) compiles the unity source to PTX per target, ptxas (nvidia-cuda-nvcc-cu12)
assembles the SASS and prints the resource report, and libnvfatbin (nvidia-nvfatbin-cu12) packs sm_80 and
sm_90a SASS plus compute_80 PTX into one fatbin, the same contents as the CUDA 13 build.

    build_fatbin12.py SITE_PACKAGES UNITY_SOURCE OUT_DIR

Writes OUT_DIR/kernels.fatbin and OUT_DIR/ptxas.log (ptxas -v output).
"""
import ctypes
import os
import subprocess
import sys


def die(msg):
    sys.stderr.write(msg + "\n")
    sys.exit(1)


def main():
    if len(sys.argv) != 4:
        die(__doc__)
    site, unity, out = sys.argv[1:]
    nv = os.path.join(site, "nvidia")
    nvrtc = ctypes.CDLL(os.path.join(nv, "cuda_nvrtc", "lib", "libnvrtc.so.12"))
    fatbin = ctypes.CDLL(os.path.join(nv, "nvfatbin", "lib", "libnvfatbin.so.12"))
    ptxas = os.path.join(nv, "cuda_nvcc", "bin", "ptxas")
    headers = os.path.join(nv, "cuda_runtime", "include")
    source = open(unity, "rb").read()

    def compile_ptx(arch):
        prog = ctypes.c_void_p()
        rc = nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source, b"kernels.cu", 0, None, None)
        if rc != 0:
            die(f"nvrtcCreateProgram failed ({rc})")
        opts = [
            f"--gpu-architecture={arch}".encode(),
            b"-std=c++17",
            b"-I" + os.path.dirname(os.path.abspath(unity)).encode(),
            b"-I" + headers.encode(),
            b"--device-as-default-execution-space",
        ]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        text = log.value.decode(errors="replace").strip()
        if rc != 0:
            die(f"NVRTC ({arch}) failed:\n{text}")
        if "warning" in text:
            die(f"NVRTC ({arch}) printed warnings:\n{text}")
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetPTX(prog, ptx)
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
        return ptx.value

    log = []
    cubins = {}
    ptx80 = None
    for arch, sm in (("compute_80", "sm_80"), ("compute_90a", "sm_90a")):
        ptx = compile_ptx(arch)
        if arch == "compute_80":
            ptx80 = ptx
        ptx_path = os.path.join(out, f"{sm}.ptx")
        cubin_path = os.path.join(out, f"{sm}.cubin")
        open(ptx_path, "wb").write(ptx)
        r = subprocess.run(
            [ptxas, f"-arch={sm}", "-O3", "-v", "-warn-spills", ptx_path, "-o", cubin_path],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            die(f"ptxas ({sm}) failed:\n{r.stderr}")
        log.append(r.stderr)
        cubins[sm] = open(cubin_path, "rb").read()

    handle = ctypes.c_void_p()
    opts = (ctypes.c_char_p * 1)(b"-64")
    if fatbin.nvFatbinCreate(ctypes.byref(handle), opts, 1) != 0:
        die("nvFatbinCreate failed")
    for sm, arch in (("sm_80", b"80"), ("sm_90a", b"90a")):
        data = cubins[sm]
        if fatbin.nvFatbinAddCubin(handle, data, ctypes.c_size_t(len(data)), arch, b"kernels") != 0:
            die(f"nvFatbinAddCubin({sm}) failed")
    # PTX for GPUs newer than sm_90 (JIT-compiled by the driver).
    ptx = ptx80 + b"\0"
    if fatbin.nvFatbinAddPTX(handle, ptx, ctypes.c_size_t(len(ptx)), b"80", b"kernels", b"") != 0:
        die("nvFatbinAddPTX failed")
    size = ctypes.c_size_t()
    if fatbin.nvFatbinSize(handle, ctypes.byref(size)) != 0:
        die("nvFatbinSize failed")
    buf = ctypes.create_string_buffer(size.value)
    if fatbin.nvFatbinGet(handle, buf) != 0:
        die("nvFatbinGet failed")
    fatbin.nvFatbinDestroy(ctypes.byref(handle))
    open(os.path.join(out, "kernels.fatbin"), "wb").write(buf.raw)
    open(os.path.join(out, "ptxas.log"), "w").write("".join(log))


if __name__ == "__main__":
    main()
