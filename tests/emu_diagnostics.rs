//! Planted bugs (cuda/tests/emu_bugs.cu), each caught by the matching emulator diagnostic with a
//! readable message, under every schedule; and launch-argument mismatches from the Rust side.

use nanochat::device::emu::EmuDevice;
use nanochat::device::{Arg, Device, Dim3, Schedule};

/// Launches `kernel` on every schedule and returns the error messages.
fn errors(kernel: &str, grid: u32, block: u32, smem: u32, args: &dyn Fn(&dyn Device) -> Vec<Arg>) -> Vec<String> {
    Schedule::ALL
        .iter()
        .map(|&s| {
            let dev = EmuDevice::new(s);
            let d: &dyn Device = &dev;
            let a = args(d);
            match d.launch(kernel, Dim3::x(grid), Dim3::x(block), smem, &a) {
                Ok(()) => panic!("{kernel} under {s:?}: the bug went unnoticed"),
                Err(e) => e.0,
            }
        })
        .collect()
}

fn assert_all_contain(msgs: &[String], parts: &[&str]) {
    for m in msgs {
        for p in parts {
            assert!(m.contains(p), "message {m:?} lacks {p:?}");
        }
    }
}

/// A leaked buffer: its address stays valid for the kernel whatever the closure's lifetime.
fn buf(d: &dyn Device, bytes: usize) -> Arg {
    let b = d.alloc(bytes).unwrap();
    let a = Arg::from(&b);
    std::mem::forget(b);
    a
}

#[test]
fn divergent_barrier_names_both_sites() {
    let m = errors("bug_divergent_barrier", 1, 64, 0, &|d| vec![buf(d, 256)]);
    assert_all_contain(
        &m,
        &[
            "kernel `bug_divergent_barrier` block (0,0,0)",
            "divergent __syncthreads",
            "emu_bugs.cu:8",
            "emu_bugs.cu:10",
        ],
    );
}

#[test]
fn barrier_after_early_return_is_reported() {
    let m = errors("bug_exit_then_barrier", 1, 64, 0, &|d| vec![buf(d, 256), Arg::I32(40)]);
    for msg in &m {
        assert!(
            msg.contains("post-exit barrier") || msg.contains("thread exited while"),
            "unexpected message {msg:?}"
        );
        assert!(msg.contains("emu_bugs.cu:20"), "{msg}");
    }
}

#[test]
fn shuffle_naming_exited_lanes_is_reported() {
    let m = errors("bug_partial_shuffle", 1, 32, 0, &|d| vec![buf(d, 128)]);
    for msg in &m {
        assert!(
            msg.contains("names exited lanes") || msg.contains("wait at a warp collective"),
            "unexpected message {msg:?}"
        );
        assert!(msg.contains("emu_bugs.cu:28"), "{msg}");
    }
}

#[test]
fn deadlock_is_grouped_by_wait_site() {
    let m = errors("bug_deadlock", 1, 64, 0, &|d| vec![buf(d, 256)]);
    assert_all_contain(
        &m,
        &[
            "deadlock",
            "16 thread(s) [0..15] wait at __shfl_xor_sync (emu_bugs.cu:36)",
            "48 thread(s) [16..63] wait at __syncthreads (emu_bugs.cu:37)",
        ],
    );
}

#[test]
fn out_of_bounds_read_hits_the_guard_page() {
    // Buffers end against the guard page once rounded up to 16 bytes (the alignment the allocator
    // promises): 48 floats end exactly there, so the off-by-one read faults.
    let m = errors("bug_oob_read", 1, 64, 0, &|d| {
        let inp = d.upload_new(&[1f32; 48]).unwrap();
        let a = Arg::from(&inp);
        std::mem::forget(inp);
        vec![buf(d, 192), a, Arg::I32(48)]
    });
    assert_all_contain(
        &m,
        &[
            "out-of-bounds access to device buffer",
            "(192 bytes) at byte offset 192 (past its end)",
            "thread (47,0,0)",
        ],
    );
}

#[test]
fn dynamic_shared_memory_overrun_is_caught() {
    let m = errors("bug_smem_overrun", 1, 64, 256, &|d| vec![buf(d, 256), Arg::I32(64)]);
    assert_all_contain(
        &m,
        &[
            "out-of-bounds access to dynamic shared memory at byte offset 256 (size 256)",
            "thread (63,0,0)",
        ],
    );
}

#[test]
fn fiber_stack_overflow_is_caught() {
    let m = errors("bug_stack_overflow", 1, 32, 0, &|d| vec![buf(d, 128)]);
    assert_all_contain(&m, &["fiber stack overflow", "EMU_STACK_KB"]);
}

#[test]
fn caller_outside_its_mask_is_reported() {
    let m = errors("bug_not_in_mask", 1, 32, 0, &|d| vec![buf(d, 128)]);
    assert_all_contain(&m, &["__shfl_sync at emu_bugs.cu:69", "is not in its mask 0x00000001"]);
}

#[test]
fn livelock_is_reported() {
    let m = errors("bug_livelock", 1, 32, 0, &|d| {
        let f = d.upload_new(&[0i32]).unwrap();
        let a = Arg::from(&f);
        std::mem::forget(f);
        vec![a]
    });
    assert_all_contain(&m, &["livelock", "32 thread(s) [0..31] wait at"]);
}

#[test]
fn misaligned_ldmatrix_is_reported() {
    let m = errors("bug_ldmatrix_misaligned", 1, 32, 0, &|d| vec![buf(d, 128)]);
    assert_all_contain(&m, &["ldmatrix.x4: address", "is not 16-byte aligned"]);
}

#[test]
fn argument_count_and_size_mismatches() {
    let dev = EmuDevice::new(Schedule::Forward);
    let d: &dyn Device = &dev;
    let out = d.alloc(64 * 4).unwrap();
    let inp = d.alloc(64 * 4).unwrap();
    let e = d
        .launch(
            "emu_block_reverse",
            Dim3::x(1),
            Dim3::x(64),
            0,
            &[(&out).into(), (&inp).into()],
        )
        .unwrap_err();
    assert!(
        e.0.contains("emu_block_reverse(float*, float const*, int)` takes 3 parameter(s), the launch passed 2"),
        "{e}"
    );
    let e = d
        .launch(
            "emu_block_reverse",
            Dim3::x(1),
            Dim3::x(64),
            0,
            &[(&out).into(), (&inp).into(), Arg::I64(64)],
        )
        .unwrap_err();
    assert!(
        e.0.contains("parameter 2 is int (4 bytes), the launch passed 8 bytes"),
        "{e}"
    );
    let e = d.launch("no_such_kernel", Dim3::x(1), Dim3::x(1), 0, &[]).unwrap_err();
    assert!(e.0.contains("no kernel named `no_such_kernel`"), "{e}");
    let e = d
        .launch(
            "emu_block_reverse",
            Dim3::x(1),
            Dim3::x(2048),
            0,
            &[(&out).into(), (&inp).into(), Arg::I32(1)],
        )
        .unwrap_err();
    assert!(e.0.contains("invalid block (2048,1,1)"), "{e}");
    let e = d
        .launch(
            "emu_block_reverse",
            Dim3::x(1),
            Dim3::x(32),
            300_000,
            &[(&out).into(), (&inp).into(), Arg::I32(1)],
        )
        .unwrap_err();
    assert!(e.0.contains("dynamic shared memory exceed"), "{e}");
}

#[test]
fn copies_outside_buffers_are_errors() {
    let dev = EmuDevice::new(Schedule::Forward);
    let d: &dyn Device = &dev;
    let b = d.alloc(16).unwrap();
    let e = d.upload(b.ptr(), &[0u8; 17]).unwrap_err();
    assert!(e.0.contains("run past the end of the 16-byte buffer"), "{e}");
    let c = d.alloc(32).unwrap();
    d.upload(b.ptr(), &[7u8; 16]).unwrap();
    d.copy(c.ptr().byte_add(8), b.ptr(), 16).unwrap();
    assert_eq!(d.download_vec::<u8>(c.ptr().byte_add(8), 16).unwrap(), vec![7u8; 16]);
    let e = d.copy(c.ptr().byte_add(20), b.ptr(), 16).unwrap_err();
    assert!(e.0.contains("copy destination"), "{e}");
    let e = d.copy(c.ptr().byte_add(4), c.ptr(), 16).unwrap_err();
    assert!(e.0.contains("overlap"), "{e}");
    let mut out = [0u8; 4];
    let stale = b.ptr();
    drop(b);
    let e = d.download(stale, &mut out).unwrap_err();
    assert!(e.0.contains("not inside any live device buffer"), "{e}");
}

#[test]
fn the_emulator_keeps_working_after_a_failed_launch() {
    let dev = EmuDevice::new(Schedule::Forward);
    let d: &dyn Device = &dev;
    let out = d.alloc(256).unwrap();
    assert!(d
        .launch("bug_deadlock", Dim3::x(1), Dim3::x(64), 0, &[(&out).into()])
        .is_err());
    assert!(d
        .launch("bug_stack_overflow", Dim3::x(1), Dim3::x(32), 0, &[(&out).into()])
        .is_err());
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let inp = d.upload_new(&x).unwrap();
    d.launch(
        "emu_block_reverse",
        Dim3::x(1),
        Dim3::x(64),
        0,
        &[(&out).into(), (&inp).into(), Arg::I32(64)],
    )
    .unwrap();
    let y: Vec<f32> = d.download_vec(out.ptr(), 64).unwrap();
    assert_eq!(y[0], 63.0);
}

#[test]
fn divergent_warp_collectives_name_both_sites() {
    let m = errors("bug_divergent_shuffle", 1, 32, 0, &|d| vec![buf(d, 128)]);
    assert_all_contain(
        &m,
        &[
            "divergent warp collectives: __shfl_xor_sync at emu_bugs.cu:",
            "wait at emu_bugs.cu:",
        ],
    );
    for msg in &m {
        assert!(
            msg.contains("emu_bugs.cu:95") && msg.contains("emu_bugs.cu:97"),
            "{msg}"
        );
    }
}

#[test]
fn misaligned_cp_async_is_reported() {
    let m = errors("bug_cp_async_misaligned", 1, 16, 0, &|d| {
        let inp = d.upload_new(&[1f32; 64]).unwrap();
        let a = Arg::from(&inp);
        std::mem::forget(inp);
        vec![buf(d, 64), a]
    });
    assert_all_contain(&m, &["cp.async (shared address): address", "is not 16-byte aligned"]);
}
