//! Deploy kernels for weight-only quantized Linear layers: `y = x W^T` with `W` held as int8 or
//! packed int4 plus per-block scales, never as a full f32 copy.
//!
//! - Few input rows (decode): a row kernel streams the integers and accumulates in f32 registers;
//!   AVX-512 or AVX2 chosen at run time, with a portable fallback. Memory traffic is 1/4 (int8)
//!   or about 1/8 (int4) of the f32 weight's.
//! - Many input rows (prefill): the weight is dequantized one panel of rows at a time into a
//!   buffer that stays in the core's L2 cache, and faer's f32 matrix multiply runs on the panel,
//!   so prefill keeps the f32 GEMM's speed while the weight in memory stays quantized.
//!
//! Every output value is computed by one thread in a fixed order, so results do not depend on the
//! thread count.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod gemm;
pub mod packed;
pub mod portable;
pub mod q8_dot;

pub use packed::{PackedData, PackedWeight};

/// Input rows from which the panel (GEMM) path is used.
pub const GEMM_MIN_ROWS: usize = 8;

/// Instruction sets the row kernel can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Whether this CPU can run it.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            Isa::Portable => true,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best this CPU supports, unless `GSTICK_ISA` (avx512, avx2 or portable) asks for a
    /// supported lesser one.
    pub fn detect() -> Isa {
        static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let wanted = std::env::var("GSTICK_ISA").ok();
            let best = [Isa::Avx512, Isa::Avx2, Isa::Portable]
                .into_iter()
                .find(|i| i.supported())
                .unwrap_or(Isa::Portable);
            [Isa::Avx512, Isa::Avx2, Isa::Portable]
                .into_iter()
                .find(|i| Some(i.name()) == wanted.as_deref() && i.supported())
                .unwrap_or(best)
        })
    }
}

/// Shape errors of a kernel call.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("input has {got} values, {rows} rows of {cols} expected")]
    Input {
        got: usize,
        rows: usize,
        cols: usize,
    },
    #[error("output has {got} values, {expected} expected")]
    Output { got: usize, expected: usize },
    #[error("{0} is not supported by this CPU")]
    Unsupported(&'static str),
}

/// `out (m, rows) = x (m, cols) W^T` with the best instruction set and `threads` threads.
pub fn linear(
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    out: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    linear_with(Isa::detect(), x, m, w, out, threads)
}

/// [`linear`] with a chosen instruction set for the row kernel (tests and benchmarks compare them).
pub fn linear_with(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    out: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    if x.len() != m * w.cols {
        return Err(KernelError::Input {
            got: x.len(),
            rows: m,
            cols: w.cols,
        });
    }
    if out.len() != m * w.rows {
        return Err(KernelError::Output {
            got: out.len(),
            expected: m * w.rows,
        });
    }
    if !isa.supported() {
        return Err(KernelError::Unsupported(isa.name()));
    }
    if m >= GEMM_MIN_ROWS {
        gemm::panels(isa, x, m, w, out, threads.max(1));
    } else {
        rows_parallel(isa, x, m, w, out, threads.max(1));
    }
    Ok(())
}

/// The row kernel over all (input row, weight row) pairs, weight rows split across threads.
fn rows_parallel(isa: Isa, x: &[f32], m: usize, w: &PackedWeight, out: &mut [f32], threads: usize) {
    let n = w.rows;
    // Small layers are not worth waking a second thread for.
    let threads = if n * w.cols < 1 << 16 { 1 } else { threads };
    let per_task = n.div_ceil(threads).next_multiple_of(4).max(4);
    let sums: Vec<Vec<f32>> = (0..m)
        .map(|i| block_sums(&x[i * w.cols..(i + 1) * w.cols], w))
        .collect();
    let task = |start: usize, len: usize| -> Vec<f32> {
        let mut part = vec![0f32; m * len];
        for i in 0..m {
            let xi = &x[i * w.cols..(i + 1) * w.cols];
            let dst = &mut part[i * len..(i + 1) * len];
            row_kernel(isa, w, xi, start, dst);
            add_offsets(w, &sums[i], start, dst);
        }
        part
    };
    let starts: Vec<usize> = (0..n).step_by(per_task).collect();
    let parts: Vec<Vec<f32>> = if starts.len() == 1 {
        vec![task(0, n)]
    } else {
        use rayon::prelude::*;
        starts
            .par_iter()
            .map(|&s| task(s, per_task.min(n - s)))
            .collect()
    };
    for (&s, part) in starts.iter().zip(&parts) {
        let len = part.len() / m.max(1);
        for i in 0..m {
            out[i * n + s..i * n + s + len].copy_from_slice(&part[i * len..(i + 1) * len]);
        }
    }
}

/// Rows `start..start + out.len()` of `x W^T` for one input row `x`, on the calling thread (the
/// batch-1 decoder splits rows over its own threads).
pub fn rows_into(isa: Isa, w: &PackedWeight, x: &[f32], start: usize, out: &mut [f32]) {
    assert!(
        isa.supported(),
        "{} is not supported by this CPU",
        isa.name()
    );
    assert!(
        x.len() == w.cols && start + out.len() <= w.rows,
        "rows_into: shapes do not match"
    );
    row_kernel(isa, w, x, start, out);
    if !w.offsets.is_empty() {
        add_offsets(w, &block_sums(x, w), start, out);
    }
}

fn row_kernel(isa: Isa, w: &PackedWeight, x: &[f32], start: usize, out: &mut [f32]) {
    match isa {
        // SAFETY: `linear_with` checked that the CPU supports the instruction set.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::scaled_dots(w, x, start, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::scaled_dots(w, x, start, out) },
        _ => portable::scaled_dots(w, x, start, out),
    }
}

/// Sum of the input over each block (empty when the weight has no offsets).
fn block_sums(x: &[f32], w: &PackedWeight) -> Vec<f32> {
    if w.offsets.is_empty() {
        return Vec::new();
    }
    x.chunks_exact(w.group).map(|c| c.iter().sum()).collect()
}

fn add_offsets(w: &PackedWeight, sums: &[f32], start: usize, out: &mut [f32]) {
    if w.offsets.is_empty() {
        return;
    }
    let blocks = w.blocks();
    for (i, y) in out.iter_mut().enumerate() {
        let offs = &w.offsets[(start + i) * blocks..(start + i + 1) * blocks];
        *y += offs.iter().zip(sums).map(|(o, s)| o * s).sum::<f32>();
    }
}
