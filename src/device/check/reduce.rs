//! Checks of `kernels/reduce.rs` (`cuda/reduce.cu`): the deterministic sum and norm reductions against an fp64 sum.

use super::Scale;
use super::{compare, rand, summary};
use crate::device::err;
use crate::device::kernels::reduce;
use crate::device::reference;
use crate::device::Device;
use crate::device::Dtype;
use crate::device::Result;
use crate::rng::Rng;

pub(super) fn check_reduce(dev: &dyn Device, s: Scale) -> Result<String> {
    use reduce::Reduction::*;
    let n = if s == Scale::Small { 50_001 } else { 1 << 24 };
    let mut rng = Rng::new(13);
    let x = rand(&mut rng, n, 3.0);
    let (bx, scratch, out) = (
        dev.upload_new(&x)?,
        dev.alloc(4 * reduce::MAX_PARTIALS)?,
        dev.alloc(4)?,
    );
    let mut worst = 0f32;
    let scale = (reference::sum_of_squares(&x) * n as f64).sqrt() as f32;
    for (r, want) in [
        (Sum, reference::sum(&x)),
        (SumOfSquares, reference::sum_of_squares(&x)),
        (Norm, reference::norm(&x)),
    ] {
        reduce::reduce(dev, out.ptr(), scratch.ptr(), bx.ptr(), Dtype::F32, n, r)?;
        let got = dev.download_vec::<f32>(out.ptr(), 1)?;
        reduce::reduce(dev, out.ptr(), scratch.ptr(), bx.ptr(), Dtype::F32, n, r)?;
        let again = dev.download_vec::<f32>(out.ptr(), 1)?;
        if got[0].to_bits() != again[0].to_bits() {
            return err(format!(
                "reduce {r:?}: two runs gave {} and {}",
                got[0], again[0]
            ));
        }
        worst = worst.max(compare(
            &format!("reduce {r:?}"),
            &got,
            &[want as f32],
            0.0,
            1e-6 * scale,
        )?);
    }
    Ok(summary(worst))
}
