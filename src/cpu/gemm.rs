//! fp32 GEMM for the CPU reference: `matrixmultiply`'s blocked SIMD kernel (it picks AVX-512, AVX2 or SSE at run
//! time) on strided operands, split across the rayon pool by output rows or columns. Splitting here rather than
//! with matrixmultiply's own threads keeps one pool: a GEMM called from inside a parallel task (attention tiles,
//! one Muon matrix) just runs on that task's thread instead of oversubscribing the cores.

/// Whether an operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    N,
    T,
}

/// `c (m, n) = alpha · op(a) (m, k) · op(b) (k, n) + beta · c`, all row-major and contiguous.
/// `a` is stored as (m, k) when `ta == N`, else as (k, m); likewise `b` as (k, n) or (n, k).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm operand too small for ({m}, {n}, {k})"
    );
    let a = match ta {
        Trans::N => View::new(a, m, k, k, 1),
        Trans::T => View::new(a, m, k, 1, m),
    };
    let b = match tb {
        Trans::N => View::new(b, k, n, n, 1),
        Trans::T => View::new(b, k, n, 1, k),
    };
    gemm_view(alpha, a, b, beta, &mut c[..m * n]);
}

/// A (rows, cols) matrix read through row and column strides, so a transpose or a column block costs nothing.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// Panics unless every element the strides reach lies inside `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> View<'a> {
        let extent = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        };
        assert!(
            data.len() >= extent,
            "matrix view ({rows}, {cols}) with strides ({rs}, {cs}) needs {extent} elements, has {}",
            data.len()
        );
        View {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// Row-major (rows, cols).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View::new(data, rows, cols, cols, 1)
    }

    /// The transpose (no copy).
    pub fn t(self) -> View<'a> {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// Below this many multiply-adds a GEMM runs on the calling thread (splitting costs more than it saves).
const PAR_MIN_MACS: usize = 1 << 20;

/// `c (a.rows, b.cols, row-major) = alpha · a · b + beta · c`.
pub fn gemm_view(alpha: f32, a: View, b: View, beta: f32, c: &mut [f32]) {
    assert!(
        a.cols == b.rows && c.len() == a.rows * b.cols,
        "gemm: ({}, {}) · ({}, {}) into {} elements",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        c.len()
    );
    if a.rows == 0 || b.cols == 0 {
        return;
    }
    let out = Out {
        ptr: c.as_mut_ptr(),
        rs: b.cols,
    };
    let pieces = if a.rows * b.cols * a.cols >= PAR_MIN_MACS {
        rayon::current_num_threads()
    } else {
        1
    };
    split(alpha, a, b, beta, out, pieces);
}

/// The output block a piece writes: row-major with row stride `rs`, disjoint from every other piece's.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    rs: usize,
}

// SAFETY: pieces of one GEMM write disjoint blocks of `c` (split below), which outlives the rayon::join.
unsafe impl Send for Out {}

/// Halves the larger output dimension `pieces − 1` times (in parallel), then runs each block.
fn split(alpha: f32, a: View, b: View, beta: f32, c: Out, pieces: usize) {
    let (m, n) = (a.rows, b.cols);
    if pieces <= 1 || m.max(n) < 128 {
        // SAFETY: the views' bounds were checked when they were made; `c` spans (m, n) with row stride c.rs
        // inside the caller's slice and no other piece writes it.
        unsafe {
            matrixmultiply::sgemm(
                m,
                a.cols,
                n,
                alpha,
                a.data.as_ptr(),
                a.rs as isize,
                a.cs as isize,
                b.data.as_ptr(),
                b.rs as isize,
                b.cs as isize,
                beta,
                c.ptr,
                c.rs as isize,
                1,
            );
        }
        return;
    }
    let (p0, p1) = (pieces / 2, pieces - pieces / 2);
    if m >= n {
        let m0 = (m * p0 / pieces).next_multiple_of(8).min(m);
        let (a0, a1) = (
            View { rows: m0, ..a },
            View {
                data: &a.data[m0 * a.rs..],
                rows: m - m0,
                ..a
            },
        );
        // SAFETY: rows m0.. of c start m0·rs elements in.
        let c1 = Out {
            ptr: unsafe { c.ptr.add(m0 * c.rs) },
            rs: c.rs,
        };
        rayon::join(
            move || split(alpha, a0, b, beta, c, p0),
            move || split(alpha, a1, b, beta, c1, p1),
        );
    } else {
        let n0 = (n * p0 / pieces).next_multiple_of(8).min(n);
        let (b0, b1) = (
            View { cols: n0, ..b },
            View {
                data: &b.data[n0 * b.cs..],
                cols: n - n0,
                ..b
            },
        );
        // SAFETY: columns n0.. of c start n0 elements in.
        let c1 = Out {
            ptr: unsafe { c.ptr.add(n0) },
            rs: c.rs,
        };
        rayon::join(
            move || split(alpha, a, b0, beta, c, p0),
            move || split(alpha, a, b1, beta, c1, p1),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_for_all_transposes() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.71).cos()).collect();
        for ta in [Trans::N, Trans::T] {
            for tb in [Trans::N, Trans::T] {
                let ga = |i: usize, p: usize| {
                    if ta == Trans::N {
                        a[i * k + p]
                    } else {
                        a[p * m + i]
                    }
                };
                let gb = |p: usize, j: usize| {
                    if tb == Trans::N {
                        b[p * n + j]
                    } else {
                        b[j * k + p]
                    }
                };
                let mut c = vec![1.0f32; m * n];
                gemm(ta, tb, m, n, k, 2.0, &a, &b, 0.5, &mut c);
                for i in 0..m {
                    for j in 0..n {
                        let want = 0.5 + 2.0 * (0..k).map(|p| ga(i, p) * gb(p, j)).sum::<f32>();
                        assert!((c[i * n + j] - want).abs() < 1e-5);
                    }
                }
            }
        }
    }

    #[test]
    fn split_gemm_matches_naive_on_strided_views() {
        // Large enough to be split across the pool, odd sizes so the pieces are uneven, a transposed operand.
        let (m, n, k) = (300, 170, 40);
        let a: Vec<f32> = (0..k * m).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
        let mut c = vec![0.25f32; m * n];
        gemm_view(
            1.5,
            View::row_major(&a, k, m).t(),
            View::row_major(&b, k, n),
            2.0,
            &mut c,
        );
        for i in 0..m {
            for j in 0..n {
                let want = 0.5 + 1.5 * (0..k).map(|p| a[p * m + i] * b[p * n + j]).sum::<f32>();
                assert!(
                    (c[i * n + j] - want).abs() < 1e-3,
                    "({i}, {j}): {} vs {want}",
                    c[i * n + j]
                );
            }
        }
        let wide = (40, 600, 64);
        let a: Vec<f32> = (0..wide.0 * wide.2).map(|i| (i % 9) as f32 - 4.0).collect();
        let b: Vec<f32> = (0..wide.2 * wide.1).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut c = vec![0.0f32; wide.0 * wide.1];
        gemm(Trans::N, Trans::N, wide.0, wide.1, wide.2, 1.0, &a, &b, 0.0, &mut c);
        for i in 0..wide.0 {
            for j in 0..wide.1 {
                let want: f32 = (0..wide.2).map(|p| a[i * wide.2 + p] * b[p * wide.1 + j]).sum();
                assert_eq!(c[i * wide.1 + j], want, "({i}, {j})");
            }
        }
    }
}
