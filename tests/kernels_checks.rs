//! The kernel benchmark's correctness mode (`nanochat::device::check`, what `kernel_bench` and the GPU
//! self-check run before timing) at CI sizes on the Emu device, under every schedule.

use nanochat::device::check::{all, Scale};
use nanochat::device::emu::EmuDevice;
use nanochat::device::{Device, Schedule};

#[test]
fn every_kernel_check_passes_on_the_emulator() {
    for s in Schedule::ALL {
        let dev = EmuDevice::new(s);
        for c in all() {
            let summary = (c.run)(&dev as &dyn Device, Scale::Small)
                .unwrap_or_else(|e| panic!("{} under {s:?}: {e}", c.name));
            assert!(summary.starts_with("ok"), "{}: {summary}", c.name);
        }
    }
}

#[test]
fn ptx_helper_checks_pass_on_the_emulator() {
    let dev = EmuDevice::new(Schedule::Reverse);
    for c in nanochat::device::check::ptx_helper_checks() {
        (c.run)(&dev as &dyn Device, Scale::Small).unwrap_or_else(|e| panic!("{}: {e}", c.name));
    }
}
