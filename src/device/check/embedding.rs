//! Checks of `kernels/embedding.rs` (`cuda/embedding.cu`): the gather and the bucketed backward against `cpu::ops`.
//! Ids repeat and leave rows of the table unused; the backward adds to a nonzero gradient.

use super::Scale;
use super::{bf, compare, down_bf, rand, summary};
use crate::cpu::ops;
use crate::device::kernels::embedding;
use crate::device::Device;
use crate::device::Result;
use crate::rng::Rng;

pub(super) fn check_embedding(dev: &dyn Device, s: Scale) -> Result<String> {
    let mut rng = Rng::new(16);
    let mut worst = 0f32;
    for &(vocab, c, n) in s.pick(&[(40, 70, 150), (50, 70, 200)][..], &[(32768, 1280, 16384)]) {
        let shape = format!("vocab {vocab}, {n}x{c}");
        let table = rand(&mut rng, vocab * c, 1.0);
        let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u64 / 2) as u32).collect();
        let (bt, bids, out) = (
            dev.upload_new(&bf(&table))?,
            dev.alloc(embedding::ids_bytes(n))?,
            dev.alloc(2 * n * c)?,
        );
        let dids = embedding::upload_ids(dev, bids.ptr(), &ids, vocab)?;
        embedding::embedding_forward(dev, out.ptr(), dids.ids, bt.ptr(), &ids, vocab, c)?;
        let mut want = vec![0f32; n * c];
        ops::embedding_forward(&mut want, &ids, &table, c);
        compare(
            &format!("embedding_forward {shape}"),
            &down_bf(dev, out.ptr(), n * c)?,
            &want,
            0.0,
            0.0,
        )?;
        let (dout, dtable0) = (rand(&mut rng, n * c, 1.0), rand(&mut rng, vocab * c, 0.1));
        let (bdo, bdt) = (dev.upload_new(&bf(&dout))?, dev.upload_new(&dtable0)?);
        embedding::embedding_backward(dev, bdt.ptr(), bdo.ptr(), &dids, c)?;
        let mut want = dtable0;
        ops::embedding_backward(&mut want, &dout, &ids, c);
        worst = worst.max(compare(
            &format!("embedding_backward {shape}"),
            &dev.download_vec::<f32>(bdt.ptr(), vocab * c)?,
            &want,
            1e-5,
            1e-5,
        )?);
    }
    Ok(summary(worst))
}
