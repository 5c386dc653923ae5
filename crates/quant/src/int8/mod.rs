//! Integer kernels for int8 deployment: LLM Linears with int8 activations per token ([`a8w8`]),
//! and for CNNs unsigned 8-bit activations times signed 8-bit
//! weights with 32-bit accumulation (`C = A B^T`), and the activation (re)quantization of the
//! original's fake quantizer. AVX-512 VNNI, AVX2 or portable code is chosen at run time; integer
//! sums are exact, so every instruction set and thread count gives the same result.

pub mod a8w8;
mod avx2;
mod avx512vnni;
pub mod im2col;
pub mod pair_table;
pub mod quads;

/// Columns of both operands are padded with zeros to a multiple of this (one AVX-512 register
/// of bytes), so the SIMD loops have no tails.
pub const K_ALIGN: usize = 64;

/// Parameters of an unsigned 8-bit activation: x = (u - zero_point) * scale, and the nudged
/// float range `[min, max]` it represents (min = -zero_point * scale).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActQuant {
    pub scale: f32,
    pub zero_point: u8,
    pub min: f32,
    pub max: f32,
}

impl ActQuant {
    /// The integer of `x`, computed as the fake quantizer computes its value, so that a
    /// quantize-dequantize round trip equals fake quantization bit for bit.
    #[inline]
    pub fn quantize(&self, x: f32) -> u8 {
        let c = x.clamp(self.min, self.max);
        // Never negative, so truncation is the floor (and, unlike `floor` without SSE4.1,
        // inlines).
        let t = (c - self.min) / self.scale + 0.5;
        // Exactly the saturating `t as u8` (NaN to 0, then 0..=255), written so it vectorizes.
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 255.0) };
        // SAFETY: `t` is finite and within 0..=255.
        unsafe { t.to_int_unchecked::<i32>() as u8 }
    }

    #[inline]
    pub fn dequantize(&self, u: u8) -> f32 {
        u as f32 * self.scale + self.min
    }
}

/// A signed 8-bit (n, k) matrix (weights: one row per output channel), rows padded to
/// `k_padded` with zeros, with each row's sum (for the activation zero-point correction).
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Rows {
    pub rows: usize,
    pub cols: usize,
    pub k_padded: usize,
    pub data: Vec<i8>,
    pub row_sums: Vec<i32>,
}

impl Int8Rows {
    pub fn new(values: &[i8], rows: usize, cols: usize) -> Int8Rows {
        let k_padded = cols.div_ceil(K_ALIGN).max(1) * K_ALIGN;
        let mut data = vec![0i8; rows * k_padded];
        let mut row_sums = vec![0i32; rows];
        for r in 0..rows {
            let src = &values[r * cols..(r + 1) * cols];
            data[r * k_padded..r * k_padded + cols].copy_from_slice(src);
            row_sums[r] = src.iter().map(|&v| v as i32).sum();
        }
        Int8Rows {
            rows,
            cols,
            k_padded,
            data,
            row_sums,
        }
    }
}

/// Instruction sets of the integer GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntIsa {
    Avx512Vnni,
    Avx2,
    Portable,
}

impl IntIsa {
    pub fn name(self) -> &'static str {
        match self {
            IntIsa::Avx512Vnni => "avx512-vnni",
            IntIsa::Avx2 => "avx2",
            IntIsa::Portable => "portable",
        }
    }

    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            IntIsa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            IntIsa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            IntIsa::Portable => true,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best this CPU has, unless `GSTICK_ISA` names a supported lesser one
    /// (`avx512` selects VNNI here).
    pub fn detect() -> IntIsa {
        static CHOSEN: std::sync::OnceLock<IntIsa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let all = [IntIsa::Avx512Vnni, IntIsa::Avx2, IntIsa::Portable];
            let best = all
                .into_iter()
                .find(|i| i.supported())
                .unwrap_or(IntIsa::Portable);
            let wanted = match std::env::var("GSTICK_ISA").as_deref() {
                Ok("avx512") => Some(IntIsa::Avx512Vnni),
                Ok("avx2") => Some(IntIsa::Avx2),
                Ok("portable") => Some(IntIsa::Portable),
                _ => None,
            };
            wanted.filter(|i| i.supported()).unwrap_or(best)
        })
    }
}

/// `out[i * n + j] = sum_k a[i * k_padded + k] * b.data[j * k_padded + k]` for `m` rows of `a`
/// (unsigned, rows padded like `b`'s with zeros).
pub fn gemm_u8i8(isa: IntIsa, a: &[u8], m: usize, b: &Int8Rows, out: &mut [i32]) {
    let strides = Strides {
        row: b.rows,
        col: 1,
    };
    gemm_u8i8_strided(isa, a, m, b, out, strides);
}

/// Where result (i, j) is stored: `out[i * row + j * col]`. A convolution stores its result
/// transposed (channel-major), so its output needs no separate transpose.
#[derive(Clone, Copy, Debug)]
pub struct Strides {
    pub row: usize,
    pub col: usize,
}

/// [`gemm_u8i8`] with the result stored at `strides`.
pub fn gemm_u8i8_strided(
    isa: IntIsa,
    a: &[u8],
    m: usize,
    b: &Int8Rows,
    out: &mut [i32],
    strides: Strides,
) {
    let (k, n) = (b.k_padded, b.rows);
    let last = if m == 0 || n == 0 {
        0
    } else {
        (m - 1) * strides.row + (n - 1) * strides.col + 1
    };
    assert!(
        a.len() >= m * k && out.len() >= last,
        "gemm_u8i8: operand sizes"
    );
    assert!(isa.supported(), "gemm_u8i8: {} not supported", isa.name());
    match isa {
        // SAFETY: support was checked above; the loops stay inside the checked lengths.
        #[cfg(target_arch = "x86_64")]
        IntIsa::Avx512Vnni => unsafe { avx512vnni::gemm(a, m, b, out, strides) },
        #[cfg(target_arch = "x86_64")]
        IntIsa::Avx2 => unsafe { avx2::gemm(a, m, b, out, strides) },
        _ => gemm_portable(a, m, b, out, strides),
    }
}

fn gemm_portable(a: &[u8], m: usize, b: &Int8Rows, out: &mut [i32], s: Strides) {
    let k = b.k_padded;
    for i in 0..m {
        let row = &a[i * k..(i + 1) * k];
        for j in 0..b.rows {
            let w = &b.data[j * k..(j + 1) * k];
            out[i * s.row + j * s.col] =
                row.iter().zip(w).map(|(&x, &y)| x as i32 * y as i32).sum();
        }
    }
}
