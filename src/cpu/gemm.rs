//! Row-major fp32 GEMM for the CPU reference, on the `matrixmultiply` crate (blocked, SIMD, threaded).

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
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = match ta {
        Trans::N => (k as isize, 1),
        Trans::T => (1, m as isize),
    };
    let (rsb, csb) = match tb {
        Trans::N => (n as isize, 1),
        Trans::T => (1, k as isize),
    };
    // SAFETY: the assert above guarantees every index the strides reach lies inside a, b and c, which are
    // distinct slices (c is borrowed mutably, so it cannot alias a or b).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
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
}
