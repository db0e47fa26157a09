//! `cuda/embedding.cu`: the token-embedding gather and its deterministic backward. The ids, their buckets
//! by id and the targets go to the device in one upload per micro-batch ([`upload_batch`]); the launchers
//! only launch.

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
    dev.launch("embedding_forward", Dim3::x(n as u32), Dim3::x(BLOCK), 0, &args)
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

/// Bytes of the device buffer [`upload_ids`] fills for `n` tokens: the ids, then their buckets
/// (`order` n, `bucket_start` at most n + 1, `bucket_id` at most n), all i32.
pub fn ids_bytes(n: usize) -> usize {
    (4 * n + 1) * 4
}

/// Bytes of the device buffer [`upload_batch`] fills for `n` tokens: [`ids_bytes`], then the `n` i32 targets.
pub fn batch_bytes(n: usize) -> usize {
    ids_bytes(n) + 4 * n
}

/// Where [`upload_batch`] puts the targets of `n` tokens in its buffer at `dst`.
pub fn targets_at(dst: DevPtr, n: usize) -> DevPtr {
    dst.byte_add(ids_bytes(n))
}

/// A micro-batch's token ids on the device, with the buckets [`embedding_backward`] reads.
#[derive(Clone, Copy, Debug)]
pub struct DeviceIds {
    /// `(n)` i32, what [`embedding_forward`] gathers by.
    pub ids: DevPtr,
    pub n: usize,
    order: DevPtr,
    bucket_start: DevPtr,
    bucket_id: DevPtr,
    buckets: usize,
}

/// Checks `ids` against the vocabulary, buckets them on the host (the sort runs once per micro-batch, not
/// once per embedding table) and copies ids and buckets to `dst` (at least [`ids_bytes`] bytes) in one upload.
pub fn upload_ids(dev: &dyn Device, dst: DevPtr, ids: &[u32], vocab: usize) -> Result<DeviceIds> {
    upload_batch(dev, dst, ids, None, vocab)
}

/// [`upload_ids`] with the micro-batch's `targets` (one per id) after them, at [`targets_at`]: everything
/// a micro-step sends to the device, in one upload at its start (`dst`: at least [`batch_bytes`] bytes).
pub fn upload_batch(
    dev: &dyn Device,
    dst: DevPtr,
    ids: &[u32],
    targets: Option<&[i32]>,
    vocab: usize,
) -> Result<DeviceIds> {
    check_ids(ids, vocab)?;
    let n = ids.len();
    let (order, start, id) = buckets(ids);
    let mut words: Vec<i32> = Vec::with_capacity(5 * n + 1);
    words.extend(ids.iter().map(|&i| i as i32));
    words.extend(&order);
    words.extend(&start);
    words.extend(&id);
    if let Some(y) = targets {
        if y.len() != n {
            return err(format!("{} targets for {n} ids", y.len()));
        }
        words.resize(4 * n + 1, 0);
        words.extend(y);
    }
    dev.upload(dst, bytemuck::cast_slice(&words))?;
    let at = |k: usize| dst.at::<i32>(k);
    Ok(DeviceIds {
        ids: dst,
        n,
        order: at(n),
        bucket_start: at(2 * n),
        bucket_id: at(2 * n + start.len()),
        buckets: id.len(),
    })
}

/// `dtable (vocab, c) f32 += Σ_t dout[t]` over the tokens `t` with each id, from `dout (n, c)` bf16 and the
/// buckets of [`upload_ids`]. Deterministic: the same sums in the same order on every run. Launches only.
pub fn embedding_backward(dev: &dyn Device, dtable: DevPtr, dout: DevPtr, ids: &DeviceIds, c: usize) -> Result<()> {
    if ids.n == 0 || c == 0 {
        return Ok(());
    }
    let grid = Dim3::xy(ids.buckets as u32, c.div_ceil(BLOCK as usize) as u32);
    let args = [
        Arg::Ptr(dtable),
        Arg::Ptr(dout),
        Arg::Ptr(ids.order),
        Arg::Ptr(ids.bucket_start),
        Arg::Ptr(ids.bucket_id),
        Arg::I32(ids.buckets as i32),
        Arg::I32(as_i32(c, "embedding width")?),
    ];
    dev.launch("embedding_backward", grid, Dim3::x(BLOCK), 0, &args)
}
