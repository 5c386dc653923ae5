//! The weight layout the deploy kernels read: integers stored as int8 or as packed nibbles, and one
//! affine map per block, `w = scale * u + offset`, where `u` is the stored integer.
//!
//! Folding the zero point into an f32 offset lets one kernel serve symmetric and asymmetric
//! schemes (and GGUF's Q4_1 "scale and minimum" blocks): a row's output is
//! `sum_g scale_g * dot(x_g, u_g) + offset_g * sum(x_g)`.

use crate::formats::{q4_0, q4_1, q8_0, FormatError, GgmlType};
use crate::scheme::{Granularity, QuantizedWeight};

/// Columns per int4 chunk. A chunk is 16 bytes: byte `i` holds column `i` in its low nibble and
/// column `i + 16` in its high nibble, so SIMD code splits a chunk with one mask and one shift.
/// (The export format's order, 2j low and 2j+1 high, is a different layout for a different reader.)
pub const INT4_CHUNK: usize = 32;

/// How the integers are stored.
#[derive(Clone, Debug, PartialEq)]
pub enum PackedData {
    /// One signed byte per value, row-major.
    Int8(Vec<i8>),
    /// Unsigned nibbles `u = q + 8` (0..15), [`INT4_CHUNK`] columns per 16 bytes, row-major.
    Int4(Vec<u8>),
}

/// An (out, in) weight ready for the deploy kernels.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeight {
    pub rows: usize,
    pub cols: usize,
    /// Columns per block; `cols` for per-channel weights.
    pub group: usize,
    pub data: PackedData,
    /// One per (row, block), row-major.
    pub scales: Vec<f32>,
    /// One per (row, block), row-major; empty when every offset is zero (symmetric int8), which
    /// lets the kernels skip the per-block input sums.
    pub offsets: Vec<f32>,
}

impl PackedWeight {
    /// Packs a quantized weight. Weights of 4 bits or fewer use nibbles when every block is a whole
    /// number of [`INT4_CHUNK`] columns; anything else is stored as int8, which holds every
    /// supported bit width.
    pub fn from_quantized(q: &QuantizedWeight) -> PackedWeight {
        let group = match q.scheme.granularity {
            Granularity::PerGroup(g) => g,
            _ => q.cols,
        };
        let blocks = q.cols / group.max(1);
        let nibbles =
            q.scheme.bits <= 4 && q.cols > 0 && group.is_multiple_of(INT4_CHUNK) && q.rows > 0;
        // The stored integer is q + shift.
        let shift = if nibbles { 8.0 } else { 0.0 };
        let mut scales = Vec::with_capacity(q.rows * blocks);
        let mut offsets = Vec::with_capacity(q.rows * blocks);
        for r in 0..q.rows {
            for b in 0..blocks {
                let p = q.params_at(r, b * group);
                scales.push(p.scale as f32);
                offsets.push((-(p.zero_point + shift) * p.scale) as f32);
            }
        }
        if offsets.iter().all(|&o| o == 0.0) {
            offsets.clear();
        }
        let data = if nibbles {
            PackedData::Int4(pack_chunks(&q.values))
        } else {
            PackedData::Int8(q.values.clone())
        };
        PackedWeight {
            rows: q.rows,
            cols: q.cols,
            group,
            data,
            scales,
            offsets,
        }
    }

    /// Packs a (rows, cols) weight stored as GGML blocks of Q8_0, Q4_0 or Q4_1, row `r` taken
    /// from stored row `source_row(r)` (GGUF permutes the rows of q/k projections). The stored
    /// integers are kept as they are (GGML's nibble order is the kernels' chunk order), so the
    /// kernels compute with exactly the values the file dequantizes to.
    pub fn from_ggml(
        ty: GgmlType,
        data: &[u8],
        rows: usize,
        cols: usize,
        source_row: impl Fn(usize) -> usize,
    ) -> Result<PackedWeight, FormatError> {
        let block = ty.block_len();
        if !matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1) {
            return Err(FormatError(format!(
                "{} blocks do not run on the packed kernels (Q8_0, Q4_0, Q4_1 do)",
                ty.name()
            )));
        }
        let expected = ty
            .bytes_for(rows * cols)
            .map_err(|e| FormatError(e.to_string()))?;
        if !cols.is_multiple_of(block) || data.len() != expected {
            return Err(FormatError(format!(
                "{} data of {} bytes does not hold {rows} rows of {cols} values",
                ty.name(),
                data.len()
            )));
        }
        let row_bytes = cols / block * ty.block_bytes();
        let blocks = rows * cols / block;
        let (mut scales, mut offsets) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        let mut ints = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            let src = source_row(r);
            if src >= rows {
                return Err(FormatError(format!(
                    "row {r} maps to stored row {src} of {rows}"
                )));
            }
            for b in data[src * row_bytes..(src + 1) * row_bytes].chunks_exact(ty.block_bytes()) {
                let (d, m, q) = match ty {
                    GgmlType::Q8_0 => {
                        let (d, q) = q8_0::kernel_block(b);
                        (d, 0.0, q)
                    }
                    GgmlType::Q4_0 => q4_0::kernel_block(b),
                    _ => q4_1::kernel_block(b),
                };
                scales.push(d);
                offsets.push(m);
                ints.extend_from_slice(q);
            }
        }
        if offsets.iter().all(|&o| o == 0.0) {
            offsets.clear();
        }
        let data = match ty {
            GgmlType::Q8_0 => PackedData::Int8(ints.into_iter().map(|b| b as i8).collect()),
            _ => PackedData::Int4(ints),
        };
        Ok(PackedWeight {
            rows,
            cols,
            group: block,
            data,
            scales,
            offsets,
        })
    }

    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.cols / self.group.max(1)
    }

    /// Bytes held: integers, scales and offsets.
    pub fn bytes(&self) -> usize {
        let ints = match &self.data {
            PackedData::Int8(v) => v.len(),
            PackedData::Int4(v) => v.len(),
        };
        ints + 4 * (self.scales.len() + self.offsets.len())
    }

    /// The offset of (row, block), zero when none are stored.
    pub fn offset(&self, row: usize, block: usize) -> f32 {
        self.offsets
            .get(row * self.blocks() + block)
            .copied()
            .unwrap_or(0.0)
    }

    /// Writes rows `start..start + out.len() / cols` as f32, row-major, into `out`.
    pub fn dequantize_rows(&self, start: usize, out: &mut [f32]) {
        self.dequantize_rows_inline(start, out)
    }

    /// The body of [`Self::dequantize_rows`], inlined into the SIMD-enabled copies the GEMM path
    /// calls so that the compiler vectorizes it for the wider registers.
    #[inline(always)]
    pub(crate) fn dequantize_rows_inline(&self, start: usize, out: &mut [f32]) {
        let (cols, group, blocks) = (self.cols, self.group, self.blocks());
        for (i, row) in out.chunks_exact_mut(cols).enumerate() {
            let r = start + i;
            for (b, block) in row.chunks_exact_mut(group).enumerate() {
                let (s, o) = (self.scales[r * blocks + b], self.offset(r, b));
                let first = r * cols + b * group;
                match &self.data {
                    PackedData::Int8(v) => {
                        for (y, &q) in block.iter_mut().zip(&v[first..first + group]) {
                            *y = s * q as f32 + o;
                        }
                    }
                    PackedData::Int4(v) => {
                        let bytes = &v[first / 2..(first + group) / 2];
                        for (chunk, packed) in block
                            .chunks_exact_mut(INT4_CHUNK)
                            .zip(bytes.chunks_exact(INT4_CHUNK / 2))
                        {
                            for i in 0..INT4_CHUNK / 2 {
                                chunk[i] = s * (packed[i] & 0x0F) as f32 + o;
                                chunk[i + INT4_CHUNK / 2] = s * (packed[i] >> 4) as f32 + o;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Nibble chunks of signed values in -8..7 (the caller guarantees the range).
fn pack_chunks(values: &[i8]) -> Vec<u8> {
    values
        .chunks_exact(INT4_CHUNK)
        .flat_map(|chunk| {
            let (lo, hi) = chunk.split_at(INT4_CHUNK / 2);
            lo.iter()
                .zip(hi)
                .map(|(&l, &h)| ((l + 8) as u8) | (((h + 8) as u8) << 4))
                .collect::<Vec<u8>>()
        })
        .collect()
}
