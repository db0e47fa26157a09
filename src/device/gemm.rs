//! The GEMM of the kernel devices, with cuBLASLt's semantics, described row-major:
//!
//! ```text
//! for each batch i:  C_i (m, n) = alpha * op(A_i) (m, k) @ op(B_i) (k, n) + beta * C_i
//! ```
//!
//! A and B are bf16; accumulation is fp32; C is bf16 or fp32 (for bf16, `alpha * acc + beta * C` is
//! computed in fp32 and rounded once). `op(X)` is X (`Op::N`, stored (rows, cols) with row stride `ld`)
//! or its transpose (`Op::T`, stored (cols, rows)). Batches are `stride_*` elements apart. `beta = 1`
//! accumulates (weight gradients across micro-steps); with `beta = 0`, C is not read.
//!
//! [`Gemm::run_on_host`] is the Emu device's implementation and the reference the CUDA path is checked
//! against by the GPU self-check.

use super::{err, DevPtr, Dtype, Result};
use half::bf16;

/// Whether an operand is used as stored or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// bf16; (m, k) if `op_a == N`, else (k, m); row stride `lda` elements.
    pub a: DevPtr,
    pub lda: usize,
    pub op_a: Op,
    /// bf16; (k, n) if `op_b == N`, else (n, k); row stride `ldb` elements.
    pub b: DevPtr,
    pub ldb: usize,
    pub op_b: Op,
    /// (m, n) of `c_dtype`, row stride `ldc` elements.
    pub c: DevPtr,
    pub ldc: usize,
    pub c_dtype: Dtype,
    pub alpha: f32,
    pub beta: f32,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl Gemm {
    /// A single, dense, non-transposed C = A @ B.
    pub fn new(m: usize, n: usize, k: usize, a: DevPtr, b: DevPtr, c: DevPtr, c_dtype: Dtype) -> Gemm {
        Gemm {
            m,
            n,
            k,
            a,
            lda: k,
            op_a: Op::N,
            b,
            ldb: n,
            op_b: Op::N,
            c,
            ldc: n,
            c_dtype,
            alpha: 1.0,
            beta: 0.0,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
        }
    }

    /// Sets op(A) = A^T (A stored (k, m), dense) .
    pub fn transpose_a(mut self) -> Gemm {
        self.op_a = Op::T;
        self.lda = self.m;
        self
    }

    /// Sets op(B) = B^T (B stored (n, k), dense).
    pub fn transpose_b(mut self) -> Gemm {
        self.op_b = Op::T;
        self.ldb = self.k;
        self
    }

    /// Stored (rows, cols) of A and B.
    fn stored_a(&self) -> (usize, usize) {
        match self.op_a {
            Op::N => (self.m, self.k),
            Op::T => (self.k, self.m),
        }
    }
    fn stored_b(&self) -> (usize, usize) {
        match self.op_b {
            Op::N => (self.k, self.n),
            Op::T => (self.n, self.k),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let (ar, ac) = self.stored_a();
        let (br, bc) = self.stored_b();
        if self.m == 0 || self.n == 0 || self.k == 0 || self.batch == 0 {
            return err(format!(
                "gemm: empty shape m={} n={} k={} batch={}",
                self.m, self.n, self.k, self.batch
            ));
        }
        if self.lda < ac || self.ldb < bc || self.ldc < self.n {
            return err(format!(
                "gemm: leading dimensions too small: A is ({ar}, {ac}) with lda {}, B is ({br}, {bc}) with ldb {}, \
                 C is ({}, {}) with ldc {}",
                self.lda, self.ldb, self.m, self.n, self.ldc
            ));
        }
        let (ea, eb, ec) = self.extents();
        let overlaps = |p: DevPtr, n: usize| p.0 < self.c.0 + ec as u64 && self.c.0 < p.0 + n as u64;
        if overlaps(self.a, ea) || overlaps(self.b, eb) {
            return err("gemm: output C overlaps an input");
        }
        Ok(())
    }

    /// The byte alignment (a power of two, at most 256) that A, B and C keep in every batch: what a GEMM
    /// library may assume of the pointers when it picks an algorithm.
    pub fn alignments(&self) -> [u32; 3] {
        let align = |p: DevPtr, stride_bytes: usize| -> u32 {
            let stride = if self.batch > 1 { stride_bytes as u64 } else { 0 };
            1 << (p.0 | stride | 256).trailing_zeros()
        };
        [
            align(self.a, self.stride_a * 2),
            align(self.b, self.stride_b * 2),
            align(self.c, self.stride_c * self.c_dtype.size()),
        ]
    }

    /// Bytes spanned by A, B and C over all batches.
    pub fn extents(&self) -> (usize, usize, usize) {
        let span =
            |rows: usize, cols: usize, ld: usize, stride: usize| (self.batch - 1) * stride + (rows - 1) * ld + cols;
        let (ar, ac) = self.stored_a();
        let (br, bc) = self.stored_b();
        (
            span(ar, ac, self.lda, self.stride_a) * 2,
            span(br, bc, self.ldb, self.stride_b) * 2,
            span(self.m, self.n, self.ldc, self.stride_c) * self.c_dtype.size(),
        )
    }

    /// Runs the GEMM on host copies of the operands (`a`, `b`, `c` start at the respective pointers and
    /// span [`Gemm::extents`]). fp32 accumulation (blocked, like the GPU's: not in plain k order).
    pub fn run_on_host(&self, a: &[u8], b: &[u8], c: &mut [u8]) {
        let (m, n, k) = (self.m, self.n, self.k);
        let rd = |s: &[u8], i: usize| bf16::from_bits(u16::from_ne_bytes([s[2 * i], s[2 * i + 1]])).to_f32();
        let mut opa = vec![0f32; m * k];
        let mut opb = vec![0f32; k * n];
        let mut acc = vec![0f32; m * n];
        for bi in 0..self.batch {
            let (oa, ob, oc) = (bi * self.stride_a, bi * self.stride_b, bi * self.stride_c);
            for i in 0..m {
                for p in 0..k {
                    let idx = match self.op_a {
                        Op::N => i * self.lda + p,
                        Op::T => p * self.lda + i,
                    };
                    opa[i * k + p] = rd(a, oa + idx);
                }
            }
            for p in 0..k {
                for j in 0..n {
                    let idx = match self.op_b {
                        Op::N => p * self.ldb + j,
                        Op::T => j * self.ldb + p,
                    };
                    opb[p * n + j] = rd(b, ob + idx);
                }
            }
            crate::cpu::gemm::gemm_view(
                1.0,
                crate::cpu::gemm::View::row_major(&opa, m, k),
                crate::cpu::gemm::View::row_major(&opb, k, n),
                0.0,
                &mut acc,
            );
            for i in 0..m {
                for j in 0..n {
                    let at = oc + i * self.ldc + j;
                    let v = self.alpha * acc[i * n + j];
                    match self.c_dtype {
                        Dtype::F32 => {
                            let s = &mut c[4 * at..4 * at + 4];
                            let old = f32::from_ne_bytes([s[0], s[1], s[2], s[3]]);
                            let out = if self.beta == 0.0 { v } else { v + self.beta * old };
                            s.copy_from_slice(&out.to_ne_bytes());
                        }
                        Dtype::Bf16 => {
                            let s = &mut c[2 * at..2 * at + 2];
                            let old = bf16::from_bits(u16::from_ne_bytes([s[0], s[1]])).to_f32();
                            let out = if self.beta == 0.0 { v } else { v + self.beta * old };
                            s.copy_from_slice(&bf16::from_f32(out).to_bits().to_ne_bytes());
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignments_hold_in_every_batch_and_are_capped_at_256() {
        let g = Gemm::new(4, 4, 4, DevPtr(0x10000), DevPtr(0x10042), DevPtr(0x10040), Dtype::F32);
        assert_eq!(g.alignments(), [256, 2, 64]);
        let mut b = g.clone();
        b.a = DevPtr(0x20000);
        b.batch = 3;
        b.stride_a = 24; // 48 bytes apart: the second matrix is only 16-byte aligned
        b.stride_b = 0;
        b.stride_c = 64; // 256 bytes of fp32
        assert_eq!(b.alignments(), [16, 2, 64]);
    }
}
