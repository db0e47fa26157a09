//! `cuda/embedding.cu`: the token-embedding gather and its deterministic backward.

use super::as_i32;
use crate::device::{err, Arg, DevPtr, Device, Dim3, Result};

const BLOCK: u32 = 256;

fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().position(|&i| i as usize >= vocab) {
        Some(p) => err(format!(
            "embedding: token {p} has id {} but the vocabulary has {vocab} rows",
            ids[p]
        )),
        None => Ok(()),
    }
}

/// `out (n, c) bf16 = table[ids]`, `ids (n)` i32 on the device; `host_ids` (the same ids) are checked
/// against the vocabulary size first.
pub fn embedding_forward(
    dev: &dyn Device,
    out: DevPtr,
    ids: DevPtr,
    table: DevPtr,
    host_ids: &[u32],
    vocab: usize,
    c: usize,
) -> Result<()> {
    check_ids(host_ids, vocab)?;
    let n = host_ids.len();
    if n == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(out),
        Arg::Ptr(ids),
        Arg::Ptr(table),
        Arg::I32(as_i32(n, "embedding rows")?),
        Arg::I32(as_i32(c, "embedding width")?),
    ];
    dev.launch(
        "embedding_forward",
        Dim3::x(n as u32),
        Dim3::x(BLOCK),
        0,
        &args,
    )
}

/// Token positions bucketed by id, in token order within a bucket: `(order, bucket_start, bucket_id)`.
pub fn buckets(ids: &[u32]) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let mut order: Vec<i32> = (0..ids.len() as i32).collect();
    order.sort_by_key(|&t| ids[t as usize]); // stable: equal ids keep token order
    let (mut start, mut id) = (Vec::new(), Vec::new());
    for (k, &t) in order.iter().enumerate() {
        let tid = ids[t as usize] as i32;
        if id.last() != Some(&tid) {
            start.push(k as i32);
            id.push(tid);
        }
    }
    start.push(order.len() as i32);
    (order, start, id)
}

/// `dtable (vocab, c) f32 += Σ_t dout[t]` over the tokens `t` with each id, from `dout (n, c)` bf16 and
/// the host copy of the ids. Deterministic: the same sums in the same order on every run.
pub fn embedding_backward(
    dev: &dyn Device,
    dtable: DevPtr,
    dout: DevPtr,
    host_ids: &[u32],
    vocab: usize,
    c: usize,
) -> Result<()> {
    check_ids(host_ids, vocab)?;
    if host_ids.is_empty() || c == 0 {
        return Ok(());
    }
    let (order, start, id) = buckets(host_ids);
    let (d_order, d_start, d_id) = (
        dev.upload_new(&order)?,
        dev.upload_new(&start)?,
        dev.upload_new(&id)?,
    );
    let grid = Dim3::xy(id.len() as u32, c.div_ceil(BLOCK as usize) as u32);
    let args = [
        Arg::Ptr(dtable),
        Arg::Ptr(dout),
        Arg::Ptr(d_order.ptr()),
        Arg::Ptr(d_start.ptr()),
        Arg::Ptr(d_id.ptr()),
        Arg::I32(id.len() as i32),
        Arg::I32(as_i32(c, "embedding width")?),
    ];
    dev.launch("embedding_backward", grid, Dim3::x(BLOCK), 0, &args)?;
    // The bucket buffers are freed on return: wait for the kernel that reads them.
    dev.synchronize()
}
