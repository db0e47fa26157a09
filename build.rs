//! Compiles the CUDA kernels of `cuda/` for the CPU against the kernel emulator (`cuda/emu/`), as one
//! translation unit so that the kernels' static registrars are linked with the runtime. The GPU build of
//! the same sources is `tools/build_ptx.sh` (checked in under `ptx/`).
use std::fs;
use std::path::{Path, PathBuf};

fn cu_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "cu"));
    v.sort();
    v
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let cuda = root.join("cuda");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut unity = format!("#include \"{}\"\n", cuda.join("emu/emu_runtime.cpp").display());
    for f in cu_files(&cuda).into_iter().chain(cu_files(&cuda.join("tests"))) {
        unity += &format!("#include \"{}\"\n", f.display());
    }
    let tu = out.join("emu_all.cpp");
    fs::write(&tu, unity).expect("writing the emulator's unity translation unit");
    // The `emu-profile` feature: the kernels' loads and stores call the profiler's hooks (GCC's outline
    // address-sanitizer checks, defined by cuda/emu/emu_profile.cpp, which is built uninstrumented).
    let profile = std::env::var_os("CARGO_FEATURE_EMU_PROFILE").is_some();
    let mut build = cc::Build::new();
    if profile {
        build
            .define("EMU_PROFILE", None)
            .flag("-fsanitize=kernel-address")
            .flag("-fno-sanitize-address-use-after-scope")
            .flag("--param=asan-instrumentation-with-call-threshold=0")
            .flag("--param=asan-stack=0")
            .flag("--param=asan-globals=0")
            // keep each access of the source one access, as nvcc emits it: no splitting of vector
            // types into scalars (SRA), no merging of scalars into vectors or wider stores
            .flag("-fno-tree-sra")
            .flag("-fno-tree-vectorize")
            .flag("-fno-tree-slp-vectorize")
            .flag("-fno-store-merging")
            // line tables and inlining records, to name each access's source line
            .flag("-g");
    }
    // EMU_USE_UCONTEXT=1: glibc's ucontext instead of the x86-64 context switch (portable, slower).
    println!("cargo:rerun-if-env-changed=EMU_USE_UCONTEXT");
    if std::env::var_os("EMU_USE_UCONTEXT").is_some_and(|v| v != "0") {
        build.define("EMU_USE_UCONTEXT", None);
    }
    build
        .cpp(true)
        .file(&tu)
        .include(&cuda)
        .flag("-std=c++17")
        .opt_level(2)
        .debug(false)
        // kernels pun uint4 <-> bf16x2 like all CUDA code
        .flag("-fno-strict-aliasing")
        // cc builds with -fPIC; the emulator's thread-locals are read on every threadIdx access
        .flag("-ftls-model=initial-exec")
        // large kernel frames probe their pages in order, so a fiber stack overflow hits the guard page
        .flag("-fstack-clash-protection")
        .flag("-Wno-unknown-pragmas")
        .flag("-Wno-unused-parameter")
        .compile("nanochat_emu");
    if profile {
        cc::Build::new()
            .cpp(true)
            .file(cuda.join("emu/emu_profile.cpp"))
            .include(&cuda)
            .define("EMU_PROFILE", None)
            .flag("-std=c++17")
            .opt_level(2)
            .debug(false)
            .flag("-ftls-model=initial-exec")
            .flag("-Wno-unknown-pragmas")
            .flag("-Wno-unused-parameter")
            .compile("nanochat_emu_profile");
    }
    println!("cargo:rerun-if-changed=cuda");
    for f in cu_files(&cuda).into_iter().chain(cu_files(&cuda.join("tests"))) {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    for h in [
        "emu/cuda_emu.h",
        "emu/emu_bf16.h",
        "emu/emu_registry.h",
        "emu/emu_runtime.cpp",
        "emu/emu_profile.cpp",
        "kernel_common.cuh",
        "ptx_helpers.cuh",
    ] {
        println!("cargo:rerun-if-changed={}", cuda.join(h).display());
    }
}
