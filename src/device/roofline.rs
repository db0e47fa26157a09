//! What the benchmarks measure against: the peak bf16 FLOP/s and memory bandwidth of the device they run
//! on (looked up from its name; an unknown device gets no percentages, and says so), and one timing loop.

use super::{Device, Result};
use crate::common::{peak_bandwidth, peak_bf16_flops};
use std::time::Instant;

/// The roofline of one device.
#[derive(Clone, Debug)]
pub struct Peaks {
    pub device: String,
    /// Dense bf16 FLOP/s.
    pub flops: Option<f64>,
    /// Memory bytes/s.
    pub bytes_per_s: Option<f64>,
}

impl Peaks {
    pub fn of(dev: &dyn Device) -> Peaks {
        Peaks::of_name(&dev.name())
    }

    pub fn of_name(name: &str) -> Peaks {
        Peaks {
            device: name.to_string(),
            flops: peak_bf16_flops(name),
            bytes_per_s: peak_bandwidth(name),
        }
    }

    /// `flops / seconds` as a percentage of the peak, if the peak is known.
    pub fn flops_pct(&self, flops: f64, seconds: f64) -> Option<f64> {
        self.flops.map(|p| 100.0 * flops / seconds / p)
    }

    /// `bytes / seconds` as a percentage of the peak bandwidth, if known.
    pub fn bytes_pct(&self, bytes: f64, seconds: f64) -> Option<f64> {
        self.bytes_per_s.map(|p| 100.0 * bytes / seconds / p)
    }

    /// One line naming the peaks the percentages refer to.
    pub fn describe(&self) -> String {
        match (self.flops, self.bytes_per_s) {
            (None, None) => format!(
                "peaks: {} is not in the peak table; no percentages are shown",
                self.device
            ),
            (f, b) => format!(
                "peaks of {}: {} bf16 dense, {} memory",
                self.device,
                f.map_or("unknown".to_string(), |f| format!("{:.0} TFLOP/s", f / 1e12)),
                b.map_or("unknown".to_string(), |b| format!("{:.2} TB/s", b / 1e12)),
            ),
        }
    }
}

/// A percentage for a table cell, or "-" when the peak is unknown.
pub fn pct_cell(p: Option<f64>) -> String {
    p.map_or("-".to_string(), |p| format!("{p:.1}%"))
}

/// Mean seconds per call of `f` over `iters` calls (at least 1), after 3 warm-up calls; the device is
/// synchronised before the clock starts and before it stops.
pub fn time(dev: &dyn Device, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    dev.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..iters.max(1) {
        f()?;
    }
    dev.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() / iters.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_follow_the_device_name() {
        let h200 = Peaks::of_name("NVIDIA H200");
        assert_eq!((h200.flops, h200.bytes_per_s), (Some(989e12), Some(4.8e12)));
        let h100 = Peaks::of_name("NVIDIA H100 80GB HBM3");
        assert_eq!((h100.flops, h100.bytes_per_s), (Some(989e12), Some(3.35e12)));
        let pcie = Peaks::of_name("NVIDIA H100 PCIe");
        assert_eq!((pcie.flops, pcie.bytes_per_s), (Some(756e12), Some(2.0e12)));
        let a40g = Peaks::of_name("NVIDIA A100-SXM4-40GB");
        assert_eq!((a40g.flops, a40g.bytes_per_s), (Some(312e12), Some(1.555e12)));
        let a80g = Peaks::of_name("NVIDIA A100-SXM4-80GB");
        assert_eq!((a80g.flops, a80g.bytes_per_s), (Some(312e12), Some(2.039e12)));
        let emu = Peaks::of_name("emu (forward schedule)");
        assert_eq!((emu.flops, emu.bytes_per_s), (None, None));
        assert!(emu.describe().contains("not in the peak table"));
        assert_eq!(pct_cell(emu.bytes_pct(1.0, 1.0)), "-");
        // 3.35 TB moved in 2 s on an H100 SXM: half the bandwidth.
        assert_eq!(pct_cell(h100.bytes_pct(3.35e12, 2.0)), "50.0%");
    }
}
