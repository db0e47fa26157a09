//! Checks of `kernels/reduce.rs` (`cuda/reduce.cu`): the deterministic sum and norm reductions of fp32 and bf16
//! vectors against an fp64 sum, each run twice (the same bits). Small sizes: one element, one partial block,
//! and sizes that leave a ragged last block.

use super::Scale;
use super::{bf, compare, rand, summary};
use crate::device::err;
use crate::device::kernels::reduce;
use crate::device::reference;
use crate::device::Device;
use crate::device::Dtype;
use crate::device::Result;
use crate::rng::Rng;

pub(super) fn check_reduce(dev: &dyn Device, s: Scale) -> Result<String> {
    use reduce::Reduction::*;
    let mut rng = Rng::new(13);
    let mut worst = 0f32;
    for &n in s.pick(&[1, 1000, 50_001, 70_001][..], &[1 << 24]) {
        let x = rand(&mut rng, n, 3.0);
        // As few partials as the launcher asks for: an overrun of the scratch is caught on the emulator.
        let (scratch, out) = (dev.alloc(4 * reduce::partials_for(n))?, dev.alloc(4)?);
        let scale = (reference::sum_of_squares(&x) * n as f64).sqrt() as f32;
        for dtype in [Dtype::F32, Dtype::Bf16] {
            let bx = match dtype {
                Dtype::F32 => dev.upload_new(&x)?,
                Dtype::Bf16 => dev.upload_new(&bf(&x))?,
            };
            for (r, want) in [
                (Sum, reference::sum(&x)),
                (SumOfSquares, reference::sum_of_squares(&x)),
                (Norm, reference::norm(&x)),
            ] {
                reduce::reduce(dev, out.ptr(), scratch.ptr(), bx.ptr(), dtype, n, r)?;
                let got = dev.download_vec::<f32>(out.ptr(), 1)?;
                reduce::reduce(dev, out.ptr(), scratch.ptr(), bx.ptr(), dtype, n, r)?;
                let again = dev.download_vec::<f32>(out.ptr(), 1)?;
                if got[0].to_bits() != again[0].to_bits() {
                    return err(format!(
                        "reduce {dtype:?} {r:?} n={n}: two runs gave {} and {}",
                        got[0], again[0]
                    ));
                }
                worst = worst.max(compare(
                    &format!("reduce {dtype:?} {r:?} n={n}"),
                    &got,
                    &[want as f32],
                    0.0,
                    1e-6 * scale,
                )?);
            }
        }
    }
    Ok(summary(worst))
}
