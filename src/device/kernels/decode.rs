//! `cuda/decode.cu`: the kernels of a KV-cached step (inference only): RoPE/QK-norm at per-row positions
//! appending k and v to the cache, flash-decoding attention over the cache split along the key axis with
//! a final combine, and the smear of a one-token step from the cached previous embedding. Same math as
//! [`crate::cpu::decode`]. Layouts: q `(n, h, d)` bf16 for the `n` tokens of the step, caches
//! `(cache rows, t_max, hkv, d)` bf16 per layer; each token's cache row, position and smear source come in one
//! i32 table on the device ([`StepTokens`], [`TokenTable`]).

use super::as_i32;
use crate::device::{err, Arg, DevPtr, Device, Dim3, Result};

pub use crate::cpu::decode::StepShape;

const WARPS: u32 = 4;
const THREADS: u32 = WARPS * 32;
/// Keys a split should cover at least before the launcher splits further.
pub const SPLIT_KEYS: usize = 256;
/// Most key splits of one (query, head).
pub const MAX_SPLITS: usize = 64;
/// Blocks the split choice aims for: enough to fill a large GPU (132 SMs) about twice.
const TARGET_BLOCKS: usize = 264;

/// The tokens of one step on the host: token `j` goes to cache row `row[j]` at position `pos[j]`; its smear
/// source (`src_tok`: the token before it in its chunk, else `src_row`: its row's cached previous embedding,
/// for a one-token chunk of a non-empty row; -1 none); `last_row[j]`: the row whose previous embedding token
/// `j` becomes (its chunk's last token), else -1; `last`: each chunk's last token, in chunk order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepTokens {
    pub row: Vec<usize>,
    pub pos: Vec<usize>,
    pub src_tok: Vec<i32>,
    pub src_row: Vec<i32>,
    pub last_row: Vec<i32>,
    pub last: Vec<usize>,
}

impl StepTokens {
    /// Chunks of `lens[i]` tokens for cache rows `rows[i]` whose lengths before the step are `row_len[i]`.
    pub fn new(rows: &[usize], lens: &[usize], row_len: &[usize]) -> StepTokens {
        let mut s = StepTokens::default();
        for ((&r, &t), &l) in rows.iter().zip(lens).zip(row_len) {
            for i in 0..t {
                let j = s.row.len();
                s.row.push(r);
                s.pos.push(l + i);
                s.src_tok.push(if i > 0 { j as i32 - 1 } else { -1 });
                s.src_row.push(if i == 0 && t == 1 && l > 0 { r as i32 } else { -1 });
                s.last_row.push(if i + 1 == t { r as i32 } else { -1 });
            }
            s.last.push(s.row.len() - 1);
        }
        s
    }

    pub fn n(&self) -> usize {
        self.row.len()
    }

    /// The i32 table the kernels read, in the order of [`TokenTable`]: row, pos, src_tok, src_row,
    /// last_row, then `sel` (the tokens the decode attention runs for) and `last`.
    pub fn table(&self, sel: &[usize]) -> Vec<i32> {
        let mut t: Vec<i32> = self.row.iter().chain(&self.pos).map(|&v| v as i32).collect();
        t.extend(&self.src_tok);
        t.extend(&self.src_row);
        t.extend(&self.last_row);
        t.extend(sel.iter().chain(&self.last).map(|&v| v as i32));
        t
    }
}

/// Device addresses of the parts of an uploaded [`StepTokens::table`] (at `base`, for `n` tokens and
/// `m` selected ones).
#[derive(Clone, Copy, Debug)]
pub struct TokenTable {
    pub row: DevPtr,
    pub pos: DevPtr,
    pub src_tok: DevPtr,
    pub src_row: DevPtr,
    pub last_row: DevPtr,
    pub sel: DevPtr,
    pub last: DevPtr,
}

impl TokenTable {
    pub fn at(base: DevPtr, n: usize, m: usize) -> TokenTable {
        let a = |k: usize| base.at::<i32>(k);
        TokenTable {
            row: a(0),
            pos: a(n),
            src_tok: a(2 * n),
            src_row: a(3 * n),
            last_row: a(4 * n),
            sel: a(5 * n),
            last: a(5 * n + m),
        }
    }
}

/// Checks a step against the host tokens; returns the kernel ints (n, h, hkv, d, t_max, window clamped).
fn check(s: &StepShape, tok: &StepTokens, cache_rows: usize, positions: usize) -> Result<[i32; 6]> {
    let what = format!("cached step {s:?}");
    if s.hkv == 0 || s.h % s.hkv != 0 {
        return err(format!("{what}: query heads must be a multiple of kv heads"));
    }
    if ![8, 16, 32, 64, 128, 256].contains(&s.d) {
        return err(format!("{what}: head_dim must be 8, 16, 32, 64, 128 or 256"));
    }
    if tok.n() != s.n || tok.pos.len() != s.n {
        return err(format!("{what}: {} tokens listed", tok.n()));
    }
    if let Some(j) = (0..s.n).find(|&j| tok.row[j] >= cache_rows || tok.pos[j] >= s.t_max.min(positions)) {
        return err(format!(
            "{what}: token {j} at row {} position {} is outside the cache ({cache_rows} rows of {}) or the \
             rotary tables ({positions})",
            tok.row[j], tok.pos[j], s.t_max
        ));
    }
    as_i32(cache_rows * s.t_max * s.hkv * s.d, &format!("{what}: cache elements"))?;
    Ok([
        as_i32(s.n, &what)?,
        as_i32(s.h, &what)?,
        as_i32(s.hkv, &what)?,
        as_i32(s.d, &what)?,
        as_i32(s.t_max, &what)?,
        as_i32(s.window.min(s.t_max), &what)?,
    ])
}

fn warps_grid(units: usize, what: &str) -> Result<Dim3> {
    Ok(Dim3::x(super::blocks_for(units, WARPS, what)?))
}

/// RoPE at each token's position + QK-norm + ×1.2: q heads of `qk` (rows of `x_stride`, q heads then k
/// heads) to `q_out (n, h, d)`; k heads into `k_cache`, `v (n, hkv·d)` into `v_cache` (one layer's caches
/// of `cache_rows` rows) at each token's (row, position). `cos`/`sin` tables of `positions` rows.
#[allow(clippy::too_many_arguments)]
pub fn kv_rope_append(
    dev: &dyn Device,
    q_out: DevPtr,
    k_cache: DevPtr,
    v_cache: DevPtr,
    qk: DevPtr,
    v: DevPtr,
    cos: DevPtr,
    sin: DevPtr,
    table: &TokenTable,
    tok: &StepTokens,
    s: StepShape,
    cache_rows: usize,
    x_stride: usize,
    positions: usize,
) -> Result<()> {
    let [n, h, hkv, d, t_max, _] = check(&s, tok, cache_rows, positions)?;
    if x_stride < (s.h + s.hkv) * s.d {
        return err(format!(
            "kv_rope_append {s:?}: row stride {x_stride} shorter than (h + hkv)·d"
        ));
    }
    if s.n == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(q_out),
        Arg::Ptr(k_cache),
        Arg::Ptr(v_cache),
        Arg::Ptr(qk),
        Arg::Ptr(v),
        Arg::Ptr(cos),
        Arg::Ptr(sin),
        Arg::Ptr(table.row),
        Arg::Ptr(table.pos),
        Arg::I32(n),
        Arg::I32(h),
        Arg::I32(hkv),
        Arg::I32(d),
        Arg::I32(t_max),
        Arg::I32(as_i32(x_stride, "kv_rope_append row stride")?),
    ];
    let grid = warps_grid(s.n * (s.h + s.hkv), "kv_rope_append (token, head) pairs")?;
    dev.launch("kv_rope_append", grid, Dim3::x(THREADS), 0, &args)
}

/// Key splits for a step of `m` attending queries whose longest visible key range is `max_keys`: at least
/// [`SPLIT_KEYS`] keys a split, as many splits as it takes to give the GPU about [`TARGET_BLOCKS`] blocks, at
/// most [`MAX_SPLITS`].
pub fn choose_splits(s: &StepShape, m: usize, max_keys: usize) -> usize {
    let by_len = max_keys.div_ceil(SPLIT_KEYS).max(1);
    let by_blocks = TARGET_BLOCKS.div_ceil((m * s.h).max(1)).max(1);
    by_len.min(by_blocks).min(MAX_SPLITS)
}

/// The longest key range one of the tokens `sel` sees.
pub fn max_keys(s: &StepShape, tok: &StepTokens, sel: &[usize]) -> usize {
    sel.iter().map(|&j| tok.pos[j].min(s.window) + 1).max().unwrap_or(0)
}

/// f32 elements of the split partials (`part_o`, `part_ml`) [`decode_attention`] needs at `splits`.
pub fn split_scratch(s: &StepShape, splits: usize) -> (usize, usize) {
    if splits <= 1 {
        return (0, 0);
    }
    (s.n * s.h * splits * s.d, s.n * s.h * splits * 2)
}

/// `out (n, h, d)` bf16, rows `sel` only: those queries of `q (n, h, d)` attending to one layer's caches,
/// in `splits` key splits (1: no partials; more: `part_o`, `part_ml` of [`split_scratch`] elements, then
/// the combine). `table.sel` holds `sel`.
#[allow(clippy::too_many_arguments)]
pub fn decode_attention(
    dev: &dyn Device,
    out: DevPtr,
    part_o: DevPtr,
    part_ml: DevPtr,
    q: DevPtr,
    k_cache: DevPtr,
    v_cache: DevPtr,
    table: &TokenTable,
    tok: &StepTokens,
    sel: &[usize],
    s: StepShape,
    cache_rows: usize,
    splits: usize,
) -> Result<()> {
    let [_, h, hkv, d, t_max, window] = check(&s, tok, cache_rows, usize::MAX)?;
    if splits == 0 || splits > MAX_SPLITS {
        return err(format!("decode_attention {s:?}: {splits} splits (1..={MAX_SPLITS})"));
    }
    if let Some(&j) = sel.iter().find(|&&j| j >= s.n) {
        return err(format!("decode_attention {s:?}: selected token {j} out of range"));
    }
    if sel.is_empty() || s.h == 0 {
        return Ok(());
    }
    let m = as_i32(sel.len(), "decode_attention queries")?;
    let grid = Dim3 {
        x: splits as u32,
        y: s.h as u32,
        z: m as u32,
    };
    let mut args = vec![
        Arg::Ptr(out),
        Arg::Ptr(part_o),
        Arg::Ptr(part_ml),
        Arg::Ptr(q),
        Arg::Ptr(k_cache),
        Arg::Ptr(v_cache),
        Arg::Ptr(table.row),
        Arg::Ptr(table.pos),
        Arg::Ptr(table.sel),
    ];
    args.extend([m, h, hkv, d, t_max, window, splits as i32].map(Arg::I32));
    dev.launch("decode_attention", grid, Dim3::x(THREADS), 0, &args)?;
    if splits == 1 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(out),
        Arg::Ptr(part_o),
        Arg::Ptr(part_ml),
        Arg::Ptr(table.sel),
        Arg::I32(m),
        Arg::I32(h),
        Arg::I32(d),
        Arg::I32(splits as i32),
    ];
    dev.launch(
        "decode_combine",
        warps_grid(sel.len() * s.h, "decode_combine")?,
        Dim3::x(THREADS),
        0,
        &args,
    )
}

/// `out (n, c)` bf16: the smear of each token from its source (see [`StepTokens`]): `x[j] +
/// lambda·sigmoid(w · x[j, :k])·source`, or `x[j]`; then the chunks' last tokens become their rows'
/// previous embeddings in `prev (cache rows, c)`. `w (k)`, `lambda (1)` f32 on the device, `k <= 32`.
#[allow(clippy::too_many_arguments)]
pub fn decode_smear(
    dev: &dyn Device,
    out: DevPtr,
    prev: DevPtr,
    x: DevPtr,
    w: DevPtr,
    lambda: DevPtr,
    table: &TokenTable,
    tok: &StepTokens,
    cache_rows: usize,
    c: usize,
    k: usize,
) -> Result<()> {
    if k == 0 || k > 32 || k > c {
        return err(format!("decode_smear: gate width {k} must be in 1..=min(32, {c})"));
    }
    let n = tok.n();
    let bad_row = |r: i32| r >= cache_rows as i32;
    if tok.src_tok.iter().enumerate().any(|(j, &s)| s >= j as i32)
        || tok.src_row.iter().chain(&tok.last_row).any(|&r| bad_row(r))
    {
        return err("decode_smear: smear sources must be earlier tokens or cache rows".to_string());
    }
    if n == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(out),
        Arg::Ptr(prev),
        Arg::Ptr(x),
        Arg::Ptr(w),
        Arg::Ptr(lambda),
        Arg::Ptr(table.src_tok),
        Arg::Ptr(table.src_row),
        Arg::Ptr(table.last_row),
        Arg::I32(as_i32(n, "decode_smear tokens")?),
        Arg::I32(as_i32(c, "decode_smear width")?),
        Arg::I32(k as i32),
    ];
    dev.launch(
        "decode_smear",
        warps_grid(n, "decode_smear")?,
        Dim3::x(THREADS),
        0,
        &args,
    )
}

/// Bytes one step reads from the caches: every visible key and value of each query in `sel`, per kv head.
pub fn cache_bytes_read(s: &StepShape, tok: &StepTokens, sel: &[usize]) -> usize {
    let keys: usize = sel.iter().map(|&j| tok.pos[j].min(s.window) + 1).sum();
    2 * keys * s.hkv * s.d * 2
}
