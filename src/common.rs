//! Things every part of the program shares: where state lives.

use std::path::PathBuf;

/// `$NANOCHAT_BASE_DIR`, else `~/.cache/nanochat` (upstream's layout: tokenizer/, base_checkpoints/, ...).
pub fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NANOCHAT_BASE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("nanochat")
}

/// The speed field of a training log line: MFU (percent of the device's peak, `mfu: 41.20`) when the peak is
/// known, else the achieved rate (`gflop/s: 75.3`): the CPU reference has no meaningful bf16 peak, and an MFU of
/// 0.00 says nothing. Returns the text and the MFU for the metrics log (`None` without a peak).
pub fn speed_field(flops_per_s: f64, peak_flops: Option<f64>) -> (String, Option<f64>) {
    match peak_flops {
        Some(p) => {
            let mfu = 100.0 * flops_per_s / p;
            (format!("mfu: {mfu:.2}"), Some(mfu))
        }
        None => (format!("gflop/s: {:.1}", flops_per_s / 1e9), None),
    }
}

/// Peak dense bf16 FLOP/s of a device from its name (upstream `get_peak_flops`: case-insensitive substring
/// match, first hit in this order); `None` for unknown devices and the CPU (logs then show GFLOP/s, not MFU).
pub fn peak_bf16_flops(device_name: &str) -> Option<f64> {
    let name = device_name.to_lowercase();
    let has = |s: &str| name.contains(s);
    let table: &[(&dyn Fn() -> bool, f64)] = &[
        (&|| has("gb200") || has("grace blackwell"), 2.5e15),
        (&|| has("b200"), 2.25e15),
        (&|| has("b100"), 1.8e15),
        (&|| has("h200") && has("nvl"), 836e12),
        (&|| has("h200") && has("pcie"), 836e12),
        (&|| has("h200"), 989e12),
        (&|| has("h100") && has("nvl"), 835e12),
        (&|| has("h100") && has("pcie"), 756e12),
        (&|| has("h100"), 989e12),
        (&|| has("h800") && has("nvl"), 989e12),
        (&|| has("h800"), 756e12),
        (&|| has("a100") || has("a800"), 312e12),
        (&|| has("a40"), 149.7e12),
        (&|| has("a30"), 165e12),
        (&|| has("l40s"), 362e12),
        (&|| has("l4"), 121e12),
        (&|| has("mi355"), 2.5e15),
        (&|| has("mi325") || has("mi300x"), 1.3074e15),
        (&|| has("mi300a"), 980.6e12),
        (&|| has("mi250x"), 383e12),
        (&|| has("mi250"), 362.1e12),
        (&|| has("5090"), 209.5e12),
        (&|| has("4090"), 165.2e12),
        (&|| has("3090"), 71e12),
    ];
    table.iter().find(|(m, _)| m()).map(|&(_, f)| f)
}

/// Peak HBM bandwidth in bytes/s (upstream `get_peak_bandwidth`), `None` for unknown devices.
pub fn peak_bandwidth(device_name: &str) -> Option<f64> {
    let name = device_name.to_lowercase();
    let has = |s: &str| name.contains(s);
    let table: &[(&dyn Fn() -> bool, f64)] = &[
        (&|| has("gb200") || has("b200") || has("b100"), 8.0e12),
        (&|| has("h200"), 4.8e12),
        (&|| has("h100") && has("nvl"), 3.9e12),
        (&|| has("h100") && has("pcie"), 2.0e12),
        (&|| has("h100"), 3.35e12),
        (&|| has("h800") && has("pcie"), 2.0e12),
        (&|| has("h800"), 3.35e12),
        // A100: 40 GB HBM2 1.555 TB/s; 80 GB HBM2e 1.935 TB/s (PCIe), 2.039 TB/s (SXM).
        (&|| (has("a100") || has("a800")) && has("40gb"), 1.555e12),
        (&|| (has("a100") || has("a800")) && has("pcie"), 1.935e12),
        (&|| has("a100") || has("a800"), 2.039e12),
        (&|| has("a40"), 696e9),
        (&|| has("a30"), 933e9),
        (&|| has("l40s"), 864e9),
        (&|| has("l4"), 300e9),
        (&|| has("mi355"), 8e12),
        (&|| has("mi325"), 6e12),
        (&|| has("mi300x") || has("mi300a"), 5.3e12),
        (&|| has("mi250x") || has("mi250"), 3.28e12),
        (&|| has("5090"), 1.79e12),
        (&|| has("4090"), 1.01e12),
        (&|| has("3090"), 936e9),
    ];
    table.iter().find(|(m, _)| m()).map(|&(_, f)| f)
}

#[cfg(test)]
mod tests {

    #[test]
    fn speed_is_mfu_with_a_peak_and_gflops_without() {
        let h100 = peak_bf16_flops("NVIDIA H100 80GB HBM3");
        let (text, mfu) = speed_field(0.5 * h100.unwrap(), h100);
        assert_eq!((text.as_str(), mfu), ("mfu: 50.00", Some(50.0)));
        assert_eq!(peak_bf16_flops("cpu"), None);
        assert_eq!(speed_field(75.3e9, None), ("gflop/s: 75.3".to_string(), None));
    }
    use super::*;

    #[test]
    fn peak_tables_match_upstream_order() {
        assert_eq!(peak_bf16_flops("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(peak_bf16_flops("NVIDIA H100 PCIe"), Some(756e12));
        assert_eq!(peak_bf16_flops("NVIDIA H100 NVL"), Some(835e12));
        assert_eq!(peak_bf16_flops("NVIDIA H200"), Some(989e12));
        assert_eq!(peak_bf16_flops("NVIDIA A100-SXM4-80GB"), Some(312e12));
        assert_eq!(peak_bf16_flops("NVIDIA L40S"), Some(362e12));
        assert_eq!(peak_bf16_flops("NVIDIA L4"), Some(121e12));
        assert_eq!(peak_bf16_flops("cpu"), None);
        assert_eq!(peak_bandwidth("NVIDIA H100 80GB HBM3"), Some(3.35e12));
        assert_eq!(peak_bandwidth("NVIDIA H200"), Some(4.8e12));
    }
}
