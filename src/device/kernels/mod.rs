//! Rust launchers of the kernels of `cuda/`, one module per `.cu` file, same names and argument order
//! (outputs, saved statistics, inputs, weights, sizes). A launcher owns the launch geometry and checks
//! its shape preconditions; it does not synchronise.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod decode;
pub mod elementwise;
pub mod embedding;
pub mod model_ops;
pub mod muon;
pub mod reduce;
pub mod rmsnorm;
pub mod rope_qknorm;

use super::{err, Arg, DevPtr, Device, Dim3, Result};

/// Threads per block of the one-element-per-thread kernels.
pub const ELEMENTWISE_BLOCK: u32 = 256;
/// Threads per block of the one-row-per-block kernels (RMSNorm, cross-entropy).
pub const ROW_BLOCK: u32 = 256;

/// Blocks covering `n` elements at `block` threads each, as a grid x dimension.
pub(crate) fn blocks_for(n: usize, block: u32, what: &str) -> Result<u32> {
    let b = n.div_ceil(block as usize);
    u32::try_from(b).or_else(|_| err(format!("{what}: {n} elements need more than 2^32 blocks")))
}

/// A grid of one block per row (or per matrix) for `n` of them.
pub(crate) fn one_block_each(n: usize, what: &str) -> Result<Dim3> {
    Ok(Dim3::x(blocks_for(n, 1, what)?))
}

/// A row count or width as the kernels' `int`.
pub(crate) fn as_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).or_else(|_| err(format!("{what}: {v} does not fit a 32-bit kernel argument")))
}

/// Launches `name` with one [`ROW_BLOCK`]-thread block per row for `rows` rows (nothing for 0), passing
/// `ptrs` and then `ints`: the signature of the one-row-per-block kernels.
pub(crate) fn launch_rows(dev: &dyn Device, name: &str, rows: usize, ptrs: &[DevPtr], ints: &[i32]) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let args: Vec<Arg> = ptrs
        .iter()
        .map(|&p| Arg::Ptr(p))
        .chain(ints.iter().map(|&i| Arg::I32(i)))
        .collect();
    dev.launch(name, one_block_each(rows, name)?, Dim3::x(ROW_BLOCK), 0, &args)
}
