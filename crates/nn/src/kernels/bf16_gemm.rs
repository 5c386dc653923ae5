//! y = x W^T with both operands rounded to bfloat16 and f32 accumulation: the optional
//! `--compute bf16` of inference. On CPUs with AMX (Sapphire Rapids and later) the products run
//! on the tile unit (`TDPBF16PS`, 16 x 16 x 32 per instruction); on CPUs with AVX512-BF16 (Zen 4
//! and later, Cooper Lake) the same packed operands go through `VDPBF16PS` (16 lanes x 2 pairs
//! per instruction, twice the f32 FMA's products); elsewhere the rounded operands go through
//! the f32 GEMM, the same arithmetic without the speed.
//!
//! Layout: x is rounded into rows padded to a multiple of 32 columns; W is packed once per call
//! into 1 KB tiles of 16 output columns x 32 inputs in AMX's pair order (tile row p holds, for
//! each output column n, inputs 2p and 2p+1). A micro-kernel keeps a 32 x 32 block of y in four
//! accumulator tiles while it walks the reduction, so each y value is summed by one thread in a
//! fixed order: results do not depend on the thread count.

/// f32 -> bf16, rounding to nearest even; NaN stays NaN.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    // Both results computed and one selected, so loops over slices vectorize.
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((b >> 16) | 0x40) as u16;
    if x.is_nan() {
        quiet_nan
    } else {
        rounded
    }
}

#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Whether this CPU and OS run AMX-BF16 (checked once; asks Linux for the tile state).
pub fn amx_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            amx::cpu_has_amx_bf16() && amx::request_tile_state()
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// Whether this CPU has AVX512-BF16 (`VDPBF16PS`).
pub fn avx512_bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether bf16 products run on bf16 hardware here (AMX tiles or AVX512-BF16), as opposed to
/// being emulated on the f32 GEMM.
pub fn hardware_available() -> bool {
    cfg!(all(target_arch = "x86_64", target_os = "linux"))
        && (amx_available() || avx512_bf16_available())
}

/// The bf16 hardware in use, for reports.
pub fn hardware_name() -> Option<&'static str> {
    if !hardware_available() {
        None
    } else if amx_available() {
        Some("AMX tiles")
    } else {
        Some("AVX512-BF16")
    }
}

/// y (m, n) = x (m, k) W^T for W (n, k), operands rounded to bf16, f32 sums.
pub fn bf16_linear(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, y: &mut [f32]) {
    assert!(
        x.len() == m * k && w.len() == n * k && y.len() == m * n,
        "bf16 linear: shapes ({m}, {k}) x ({n}, {k}) do not match the buffers"
    );
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if hardware_available() {
        return amx::linear(x, w, m, n, k, y);
    }
    emulated_linear(x, w, m, n, k, y)
}

/// The bf16 product without AMX: operands rounded, then the f32 GEMM (the reference the AMX
/// path is tested against).
pub fn emulated_linear(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, y: &mut [f32]) {
    super::linear::f32_linear(&round_bf16(x), &round_bf16(w), m, n, k, y);
}

/// Values rounded to bf16 and widened back to f32 (the operands of the emulated products).
pub fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&a| from_bf16(to_bf16(a))).collect()
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) mod amx {
    use std::arch::asm;

    use crate::kernels::vector_math::{self, MathPath};

    /// Rows and columns of y one micro-kernel call computes.
    const BLOCK: usize = 32;
    /// Inputs per tile (32 bf16 = 64 bytes per tile row).
    const TILE_K: usize = 32;

    /// CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
    pub fn cpu_has_amx_bf16() -> bool {
        if std::arch::x86_64::__cpuid(0).eax < 7 {
            return false;
        }
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        edx & (1 << 22) != 0 && edx & (1 << 24) != 0
    }

    /// Linux hands out the 8 KB tile register state only on request (arch_prctl
    /// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); without it the first tile instruction faults.
    pub fn request_tile_state() -> bool {
        const SYS_ARCH_PRCTL: isize = 158;
        const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
        const XFEATURE_XTILEDATA: usize = 18;
        let ret: isize;
        // SAFETY: a plain system call with integer arguments; it touches no memory of ours.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack)
            );
        }
        ret == 0
    }

    /// The 64-byte tile configuration: palette 1, all eight tiles 16 rows x 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    impl TileConfig {
        fn all_16x64() -> Self {
            let mut c = TileConfig {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                bytes_per_row: [0; 16],
                rows: [0; 16],
            };
            for t in 0..8 {
                c.bytes_per_row[t] = 64;
                c.rows[t] = 16;
            }
            c
        }
    }

    /// W (n, k) as bf16 tiles: for each block of 16 output columns, `k_tiles` tiles of 16 rows
    /// x 32 values in pair order, zero beyond n and k.
    pub struct PackedWeight {
        data: Vec<u16>,
        pub n_pad: usize,
        k_tiles: usize,
    }

    impl PackedWeight {
        /// Packs W, over the cores when `parallel`.
        pub fn new(w: &[f32], n: usize, k: usize, parallel: bool) -> Self {
            let k_tiles = k.div_ceil(TILE_K);
            let k_pad = k_tiles * TILE_K;
            let n_pad = n.div_ceil(BLOCK) * BLOCK;
            let mut data = vec![0u16; n_pad / 16 * k_tiles * 512];
            let tiles: Vec<(usize, &mut [u16])> =
                data.chunks_mut(k_tiles * 512).enumerate().collect();
            let path = MathPath::best();
            let pack = |(nb, out): (usize, &mut [u16])| {
                // The block's 16 rows rounded (vectorized), then each input pair moved.
                let mut rows = vec![0u16; 16 * k_pad];
                for col in 0..16.min(n.saturating_sub(nb * 16)) {
                    let row = nb * 16 + col;
                    vector_math::to_bf16(
                        path,
                        &w[row * k..(row + 1) * k],
                        &mut rows[col * k_pad..],
                    );
                }
                for kt in 0..k_tiles {
                    let tile = &mut out[kt * 512..(kt + 1) * 512];
                    for p in 0..16 {
                        for col in 0..16 {
                            let src = col * k_pad + kt * TILE_K + 2 * p;
                            tile[p * 32 + col * 2] = rows[src];
                            tile[p * 32 + col * 2 + 1] = rows[src + 1];
                        }
                    }
                }
            };
            if parallel {
                crate::kernels::for_each_interleaved(tiles, n * k, pack);
            } else {
                tiles.into_iter().for_each(pack);
            }
            PackedWeight {
                data,
                n_pad,
                k_tiles,
            }
        }
    }

    /// x (m, k) as bf16 rows of `k_pad` values, with zero rows up to a multiple of 32.
    pub struct RoundedRows {
        data: Vec<u16>,
        k_pad: usize,
    }

    impl RoundedRows {
        pub fn new(x: &[f32], m: usize, k: usize, parallel: bool) -> Self {
            let k_pad = k.div_ceil(TILE_K) * TILE_K;
            let mut data = vec![0u16; m.div_ceil(BLOCK) * BLOCK * k_pad];
            let path = MathPath::best();
            let round = |piece: usize, out: &mut [u16]| {
                for (r, out_row) in out.chunks_exact_mut(k_pad).enumerate() {
                    let src = &x[(piece * 16 + r) * k..][..k];
                    vector_math::to_bf16(path, src, out_row);
                }
            };
            if parallel {
                crate::kernels::for_each_chunk(&mut data[..m * k_pad], 16 * k_pad, round);
            } else {
                data[..m * k_pad]
                    .chunks_mut(16 * k_pad)
                    .enumerate()
                    .for_each(|(i, c)| round(i, c));
            }
            RoundedRows { data, k_pad }
        }
    }

    /// Rows 32 * block .. of x times W: writes `out`, (rows, w.n_pad) with rows <= 32 (the
    /// valid rows of the block).
    pub fn multiply_block(x: &RoundedRows, block: usize, w: &PackedWeight, out: &mut [f32]) {
        multiply_block_part(x, block, w, w.n_pad, out)
    }

    /// [`multiply_block`] over W's first `columns` outputs (a multiple of 32) and the first
    /// x.k_pad / 32 input tiles (x may be narrower than W: causal attention reads a prefix of
    /// the keys). `out` is (rows, columns).
    pub fn multiply_block_part(
        x: &RoundedRows,
        block: usize,
        w: &PackedWeight,
        columns: usize,
        out: &mut [f32],
    ) {
        let rows = out.len() / columns.max(1);
        let k_tiles = x.k_pad / TILE_K;
        assert!(
            k_tiles <= w.k_tiles
                && columns.is_multiple_of(BLOCK)
                && columns <= w.n_pad
                && rows <= BLOCK
                && (block + 1) * BLOCK * x.k_pad <= x.data.len(),
            "AMX block shapes do not match"
        );
        if !super::amx_available() {
            // SAFETY: `hardware_available` (every caller's gate) found AVX512-BF16; the shapes
            // were checked above.
            return unsafe { dot_bf16::multiply_block_part(x, block, w, columns, k_tiles, out) };
        }
        let mut staging = [0f32; BLOCK * BLOCK];
        let config = TileConfig::all_16x64();
        // SAFETY: the tile state was granted (`amx_available`), the configuration is valid and
        // every tile load and store stays inside its buffer: `x` holds 32 rows from row
        // 32 * block (padded to a multiple of 32), `w` holds n_pad / 16 column blocks of
        // w.k_tiles tiles (k_tiles of them read), and C goes to `staging` (32 x 32 f32).
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack));
            for nb in 0..columns / BLOCK {
                kernel_32x32(
                    x.data.as_ptr().add(block * BLOCK * x.k_pad),
                    x.k_pad * 2,
                    w.data.as_ptr().add(nb * 2 * w.k_tiles * 512),
                    k_tiles,
                    w.k_tiles * 512,
                    staging.as_mut_ptr(),
                );
                for r in 0..rows {
                    out[r * columns + nb * BLOCK..][..BLOCK]
                        .copy_from_slice(&staging[r * BLOCK..(r + 1) * BLOCK]);
                }
            }
            asm!("tilerelease", options(nostack));
        }
    }

    /// The same block products on AVX512-BF16: for each input pair index, one 64-byte load
    /// of a packed tile row holds that pair for 16 output columns, and `VDPBF16PS` adds both
    /// products into 16 f32 lanes; an x pair is broadcast to meet it. 8 rows x 32 columns
    /// of y stay in 16 registers while the reduction is walked.
    mod dot_bf16 {
        use std::arch::x86_64::*;

        use super::{PackedWeight, RoundedRows, BLOCK, TILE_K};

        /// Rows of y per register block.
        const ROWS: usize = 8;

        /// # Safety
        /// The CPU must have AVX512-BF16; shapes as `multiply_block_part` checks them.
        #[target_feature(enable = "avx512f,avx512bf16")]
        pub unsafe fn multiply_block_part(
            x: &RoundedRows,
            block: usize,
            w: &PackedWeight,
            columns: usize,
            k_tiles: usize,
            out: &mut [f32],
        ) {
            let rows = out.len() / columns.max(1);
            let a = x.data.as_ptr().add(block * BLOCK * x.k_pad);
            for nb in 0..columns / BLOCK {
                let b0 = w.data.as_ptr().add(nb * 2 * w.k_tiles * 512);
                let b1 = b0.add(w.k_tiles * 512);
                for r0 in (0..rows).step_by(ROWS) {
                    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
                    for kt in 0..k_tiles {
                        for p in 0..TILE_K / 2 {
                            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(
                                b0.add(kt * 512 + p * 32).cast(),
                            ));
                            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(
                                b1.add(kt * 512 + p * 32).cast(),
                            ));
                            for (r, acc) in acc.iter_mut().enumerate() {
                                // Rows past `rows` are the zero padding of RoundedRows.
                                let pair = (a.add((r0 + r) * x.k_pad + kt * TILE_K + 2 * p)
                                    as *const i32)
                                    .read_unaligned();
                                let xv: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                                acc[0] = _mm512_dpbf16_ps(acc[0], xv, w0);
                                acc[1] = _mm512_dpbf16_ps(acc[1], xv, w1);
                            }
                        }
                    }
                    for (r, acc) in acc.iter().enumerate().take(rows.saturating_sub(r0)) {
                        let dst = out.as_mut_ptr().add((r0 + r) * columns + nb * BLOCK);
                        _mm512_storeu_ps(dst, acc[0]);
                        _mm512_storeu_ps(dst.add(16), acc[1]);
                    }
                }
            }
        }
    }

    pub fn linear(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, y: &mut [f32]) {
        let weight = PackedWeight::new(w, n, k, true);
        let input = RoundedRows::new(x, m, k, true);
        let n_pad = weight.n_pad;
        // y's rows are written in place when the blocks fit it exactly, else into a padded copy.
        let direct = n_pad == n;
        let mut padded = if direct {
            Vec::new()
        } else {
            vec![0f32; m * n_pad]
        };
        let out: &mut [f32] = if direct { y } else { &mut padded };
        let row_blocks: Vec<(usize, &mut [f32])> =
            out.chunks_mut(BLOCK * n_pad).enumerate().collect();
        crate::kernels::for_each_interleaved(row_blocks, m * n * k / 64, |(mb, out_rows)| {
            multiply_block(&input, mb, &weight, out_rows)
        });
        if !direct {
            for (r, y_row) in y.chunks_exact_mut(n).enumerate() {
                y_row.copy_from_slice(&padded[r * n_pad..r * n_pad + n]);
            }
        }
    }

    /// C (32 x 32 f32, row-major at `c`) = A (32 rows at `a`, `a_stride` bytes apart) times the
    /// two 16-column weight blocks at `b` and `b + b_block` (their first `k_tiles` 1 KB tiles).
    ///
    /// # Safety
    /// Tiles configured 16 x 64 bytes; `a` readable for 32 rows of k_tiles * 64 bytes, `b` and
    /// `b + b_block` for k_tiles KB each, `c` writable for 4 KB.
    #[inline(always)]
    unsafe fn kernel_32x32(
        a: *const u16,
        a_stride: usize,
        b: *const u16,
        k_tiles: usize,
        b_block: usize,
        c: *mut f32,
    ) {
        let b1 = b.add(b_block);
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack)
        );
        for kt in 0..k_tiles {
            let a0 = a.add(kt * TILE_K);
            let a1 = a0.add(16 * a_stride / 2);
            asm!(
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tileloadd tmm6, [{b0} + {bs}*1]",
                "tileloadd tmm7, [{b1} + {bs}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0,
                a1 = in(reg) a1,
                s = in(reg) a_stride,
                b0 = in(reg) b.add(kt * 512),
                b1 = in(reg) b1.add(kt * 512),
                bs = in(reg) 64usize,
                options(nostack)
            );
        }
        let row_bytes = BLOCK * 4;
        asm!(
            "tilestored [{c00} + {s}*1], tmm0",
            "tilestored [{c01} + {s}*1], tmm1",
            "tilestored [{c10} + {s}*1], tmm2",
            "tilestored [{c11} + {s}*1], tmm3",
            c00 = in(reg) c,
            c01 = in(reg) c.add(16),
            c10 = in(reg) c.add(16 * BLOCK),
            c11 = in(reg) c.add(16 * BLOCK + 16),
            s = in(reg) row_bytes,
            options(nostack)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values as values;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even neighbour (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// The hardware path (AMX or AVX512-BF16, where the machine has one) equals the rounded
    /// f32 product up to the summation order, on shapes with and without padding.
    #[test]
    fn bf16_linear_matches_the_rounded_f32_product() {
        for (m, n, k) in [(64, 96, 64), (50, 40, 70), (1, 17, 33), (130, 576, 576)] {
            let x = values(m * k, 1);
            let w = values(n * k, 2);
            let mut got = vec![0f32; m * n];
            bf16_linear(&x, &w, m, n, k, &mut got);
            let mut want = vec![0f32; m * n];
            emulated_linear(&x, &w, m, n, k, &mut want);
            for i in 0..m * n {
                // The bound scales with the sum of |products| (at most k here).
                assert!(
                    (got[i] - want[i]).abs() <= 1e-5 * k as f32,
                    "({m}, {n}, {k}) [{i}]: {} vs {}",
                    got[i],
                    want[i]
                );
            }
            let mut again = vec![0f32; m * n];
            crate::kernels::set_kernel_threads(Some(1));
            bf16_linear(&x, &w, m, n, k, &mut again);
            crate::kernels::set_kernel_threads(None);
            assert_eq!(again, got, "thread count changed the result");
        }
    }
}
