//! Fused multi-head attention for inference, on the token-major layout the projections produce
//! ((positions, heads * head_dim) rows): no head transposes, no mask tensor, no score tensor for
//! the whole sequence. Queries go in blocks of [`QUERY_BLOCK`] rows; for each block and head the
//! scores against the keys it may see (a causal block stops at its last row's position) are one
//! matrix product, the softmax runs in place on vectorized exp, and a second product adds the
//! values into the output. Grouped-query heads read their shared key/value head in place.
//!
//! Blocks are spread over the cores (block i to thread i mod n, which balances the causal
//! blocks' growing cost), and each block is computed the same way on any thread, so results do
//! not depend on the thread count.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use super::vector_math::{self, MathPath};

/// Query rows per block: with SmolLM2's 3 query heads per key/value head, a 192 x 2048 score
/// block (1.5 MB) stays in a core's 2 MB L2 cache.
pub const QUERY_BLOCK: usize = 64;

/// The head layout of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Query row i (of t) sees keys up to position (keys - t + i); otherwise it sees them all.
    pub causal: bool,
}

impl AttentionDims {
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// softmax(q k^T) v for one sequence. `q` is (t, heads * head_dim), already rotated and scaled by
/// 1/sqrt(head_dim); `k` and `v` are (keys, kv_heads * head_dim) with keys >= t, the last t of
/// them at the queries' positions. Writes `out` (t, heads * head_dim).
pub fn attend(dims: AttentionDims, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    attend_on(MathPath::best(), dims, q, k, v, out)
}

/// [`attend`] with the vector-math path chosen by the caller (tests compare paths).
pub fn attend_on(
    path: MathPath,
    dims: AttentionDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
) {
    let (qw, kw) = (dims.q_width(), dims.kv_width());
    let t = q.len() / qw.max(1);
    let keys = k.len() / kw.max(1);
    assert!(
        q.len() == t * qw && out.len() == q.len() && k.len() == keys * kw && v.len() == k.len(),
        "attention buffers do not match {dims:?}"
    );
    assert!(keys >= t, "attention has {t} queries but only {keys} keys");
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if super::compute() == super::Compute::Bf16 && super::bf16_gemm::hardware_available() {
        return amx_attention::attend(path, dims, q, k, v, out);
    }
    let blocks: Vec<(usize, &mut [f32])> = out.chunks_mut(QUERY_BLOCK * qw).enumerate().collect();
    super::for_each_interleaved(blocks, t * keys * qw, |(b, out_block)| {
        let mut scratch = Scratch::default();
        attend_block(
            path,
            dims,
            q,
            k,
            v,
            b * QUERY_BLOCK,
            keys - t,
            out_block,
            &mut scratch,
        );
    });
}

/// One block of query rows starting at row r0, for every head. `offset` is the position of
/// query row 0. The query heads that share a key/value head are stacked into one product, so
/// each key and value block is packed once per group instead of once per head.
#[allow(clippy::too_many_arguments)]
fn attend_block(
    path: MathPath,
    dims: AttentionDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    r0: usize,
    offset: usize,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let (qw, kw, d) = (dims.q_width(), dims.kv_width(), dims.head_dim);
    let rows = out.len() / qw;
    let total = k.len() / kw;
    // A causal block needs the keys up to its last row's position.
    let keys = if dims.causal {
        offset + r0 + rows
    } else {
        total
    };
    let group = dims.heads / dims.kv_heads;
    let stacked = group * rows;
    scratch.scores.resize(stacked * keys, 0.0);
    scratch.queries.resize(stacked * d, 0.0);
    scratch.out.resize(stacked * d, 0.0);
    for kv in 0..dims.kv_heads {
        stack_queries(dims, q, r0, rows, kv, &mut scratch.queries);
        let kb = MatRef::from_row_major_slice_with_stride(&k[kv * d..], keys, d, kw);
        let vb = MatRef::from_row_major_slice_with_stride(&v[kv * d..], keys, d, kw);
        matmul(
            MatMut::from_row_major_slice_mut(&mut scratch.scores, stacked, keys),
            Accum::Replace,
            MatRef::from_row_major_slice(&scratch.queries, stacked, d),
            kb.transpose(),
            1.0f32,
            Par::Seq,
        );
        softmax_rows(
            path,
            dims,
            &mut scratch.scores,
            keys,
            rows,
            offset + r0,
            keys,
        );
        matmul(
            MatMut::from_row_major_slice_mut(&mut scratch.out, stacked, d),
            Accum::Replace,
            MatRef::from_row_major_slice(&scratch.scores, stacked, keys),
            vb,
            1.0f32,
            Par::Seq,
        );
        unstack_outputs(dims, &scratch.out, d, rows, kv, out);
    }
}

/// Copies query rows r0..r0+rows of the heads sharing key/value head `kv` into `stacked`: row
/// j * rows + i is query row r0 + i of head kv * group + j.
fn stack_queries(
    dims: AttentionDims,
    q: &[f32],
    r0: usize,
    rows: usize,
    kv: usize,
    stacked: &mut [f32],
) {
    let (qw, d) = (dims.q_width(), dims.head_dim);
    let group = dims.heads / dims.kv_heads;
    for j in 0..group {
        let h = kv * group + j;
        for i in 0..rows {
            let src = (r0 + i) * qw + h * d;
            stacked[(j * rows + i) * d..][..d].copy_from_slice(&q[src..src + d]);
        }
    }
}

/// Softmax in place over each stacked row of scores (`width` values per row, the first `keys`
/// scored): a causal row of query position p sees keys 0..=p, where stacked row r holds the
/// query at position `first_position + r % rows`. What a row may not see becomes 0.
fn softmax_rows(
    path: MathPath,
    dims: AttentionDims,
    scores: &mut [f32],
    width: usize,
    rows: usize,
    first_position: usize,
    keys: usize,
) {
    for (r, row) in scores.chunks_exact_mut(width).enumerate() {
        let visible = if dims.causal {
            first_position + r % rows + 1
        } else {
            keys
        };
        let (seen, hidden) = row.split_at_mut(visible);
        let m = vector_math::max(path, seen);
        let sum = vector_math::exp_shifted_sum(path, seen, m);
        vector_math::scale(path, seen, 1.0 / sum);
        hidden.fill(0.0);
    }
}

/// Writes stacked output rows (`stride` values apart, the inverse of [`stack_queries`]) into
/// their heads' columns of `out`.
fn unstack_outputs(
    dims: AttentionDims,
    stacked: &[f32],
    stride: usize,
    rows: usize,
    kv: usize,
    out: &mut [f32],
) {
    let (qw, d) = (dims.q_width(), dims.head_dim);
    let group = dims.heads / dims.kv_heads;
    for j in 0..group {
        let h = kv * group + j;
        for i in 0..rows {
            out[i * qw + h * d..][..d].copy_from_slice(&stacked[(j * rows + i) * stride..][..d]);
        }
    }
}

/// Attention with bf16 operands on AMX tiles (`--compute bf16`): the same blocks as the f32
/// path, the two products on the tile unit. Keys are packed once per key/value head as the
/// "weight" of the score product and values, transposed, as that of the output product; a
/// causal block multiplies only the prefix of keys it may see. The softmax stays f32, its
/// probabilities rounded to bf16 for the second product.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx_attention {
    use super::super::bf16_gemm::amx::{multiply_block_part, PackedWeight, RoundedRows};
    use super::*;

    pub fn attend(
        path: MathPath,
        dims: AttentionDims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) {
        let (qw, kw, d) = (dims.q_width(), dims.kv_width(), dims.head_dim);
        let t = q.len() / qw;
        let keys = k.len() / kw;
        let mut packed: Vec<Option<(PackedWeight, PackedWeight)>> =
            (0..dims.kv_heads).map(|_| None).collect();
        let heads: Vec<(usize, &mut Option<(PackedWeight, PackedWeight)>)> =
            packed.iter_mut().enumerate().collect();
        crate::kernels::for_each_interleaved(heads, keys * kw * 2, |(h, slot)| {
            let kh: Vec<f32> = (0..keys)
                .flat_map(|j| k[j * kw + h * d..][..d].iter().copied())
                .collect();
            let mut vt = vec![0f32; d * keys];
            for j in 0..keys {
                for c in 0..d {
                    vt[c * keys + j] = v[j * kw + h * d + c];
                }
            }
            *slot = Some((
                PackedWeight::new(&kh, keys, d, false),
                PackedWeight::new(&vt, d, keys, false),
            ));
        });
        let packed: Vec<(PackedWeight, PackedWeight)> = packed.into_iter().flatten().collect();
        let blocks: Vec<(usize, &mut [f32])> =
            out.chunks_mut(QUERY_BLOCK * qw).enumerate().collect();
        crate::kernels::for_each_interleaved(blocks, t * keys * qw, |(b, out_block)| {
            block(
                path,
                dims,
                q,
                &packed,
                b * QUERY_BLOCK,
                keys - t,
                keys,
                out_block,
            )
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        path: MathPath,
        dims: AttentionDims,
        q: &[f32],
        packed: &[(PackedWeight, PackedWeight)],
        r0: usize,
        offset: usize,
        total: usize,
        out: &mut [f32],
    ) {
        let (qw, d) = (dims.q_width(), dims.head_dim);
        let rows = out.len() / qw;
        let keys = if dims.causal {
            offset + r0 + rows
        } else {
            total
        };
        // The tile products write whole groups of 32 columns.
        let (columns, d_pad) = (keys.div_ceil(32) * 32, d.div_ceil(32) * 32);
        let stacked = dims.heads / dims.kv_heads * rows;
        let mut queries = vec![0f32; stacked * d];
        let mut scores = vec![0f32; stacked * columns];
        let mut result = vec![0f32; stacked * d_pad];
        for (kv, (packed_k, packed_vt)) in packed.iter().enumerate() {
            stack_queries(dims, q, r0, rows, kv, &mut queries);
            let qr = RoundedRows::new(&queries, stacked, d, false);
            for (blk, part) in scores.chunks_mut(32 * columns).enumerate() {
                multiply_block_part(&qr, blk, packed_k, columns, part);
            }
            softmax_rows(path, dims, &mut scores, columns, rows, offset + r0, keys);
            let probs = RoundedRows::new(&scores, stacked, columns, false);
            for (blk, part) in result.chunks_mut(32 * d_pad).enumerate() {
                multiply_block_part(&probs, blk, packed_vt, d_pad, part);
            }
            unstack_outputs(dims, &result, d_pad, rows, kv, out);
        }
    }
}

/// Buffers of one [`attend_block`] call, resized for its block.
#[derive(Default)]
struct Scratch {
    queries: Vec<f32>,
    scores: Vec<f32>,
    out: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values as values;

    /// Attention written out directly in f64, the reference.
    fn naive(dims: AttentionDims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (qw, kw, d) = (dims.q_width(), dims.kv_width(), dims.head_dim);
        let t = q.len() / qw;
        let keys = k.len() / kw;
        let group = dims.heads / dims.kv_heads;
        let mut out = vec![0f32; q.len()];
        for i in 0..t {
            for h in 0..dims.heads {
                let kv = h / group;
                let visible = if dims.causal { keys - t + i + 1 } else { keys };
                let s: Vec<f64> = (0..visible)
                    .map(|j| {
                        (0..d)
                            .map(|x| q[i * qw + h * d + x] as f64 * k[j * kw + kv * d + x] as f64)
                            .sum()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for x in 0..d {
                    let o: f64 = (0..visible)
                        .map(|j| e[j] / z * v[j * kw + kv * d + x] as f64)
                        .sum();
                    out[i * qw + h * d + x] = o as f32;
                }
            }
        }
        out
    }

    fn check(dims: AttentionDims, t: usize, keys: usize) {
        let q = values(t * dims.q_width(), 1);
        let k = values(keys * dims.kv_width(), 2);
        let v = values(keys * dims.kv_width(), 3);
        let want = naive(dims, &q, &k, &v);
        let mut got = vec![0f32; q.len()];
        attend(dims, &q, &k, &v, &mut got);
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{a} vs {b} ({dims:?})"
            );
        }
        for p in MathPath::available() {
            let mut other = vec![0f32; q.len()];
            attend_on(p, dims, &q, &k, &v, &mut other);
            assert_eq!(other, got, "path {p:?}");
        }
    }

    #[test]
    fn matches_direct_attention_causal_grouped_and_with_a_prefix() {
        let gqa = AttentionDims {
            heads: 6,
            kv_heads: 2,
            head_dim: 8,
            causal: true,
        };
        check(gqa, 150, 150); // several blocks, the last one partial
        check(gqa, 1, 37); // one decode step after 36 cached positions
        check(gqa, 70, 100); // a chunk of new positions after a prefix
        let encoder = AttentionDims {
            heads: 4,
            kv_heads: 4,
            head_dim: 16,
            causal: false,
        };
        check(encoder, 90, 90);
    }

    /// The bf16 hardware path (AMX or AVX512-BF16) stays within bf16 rounding of the f32 path, and is
    /// deterministic across thread counts.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn bf16_tiles_stay_near_f32() {
        if !crate::kernels::bf16_gemm::hardware_available() {
            return; // no bf16 hardware on this CPU: the emulated path is the f32 one
        }
        for (dims, t, keys) in [
            (
                AttentionDims {
                    heads: 6,
                    kv_heads: 2,
                    head_dim: 64,
                    causal: true,
                },
                150,
                150,
            ),
            (
                AttentionDims {
                    heads: 6,
                    kv_heads: 2,
                    head_dim: 64,
                    causal: true,
                },
                1,
                77,
            ),
            (
                AttentionDims {
                    heads: 4,
                    kv_heads: 4,
                    head_dim: 32,
                    causal: false,
                },
                45,
                45,
            ),
        ] {
            let q: Vec<f32> = values(t * dims.q_width(), 1)
                .iter()
                .map(|v| v * 0.3)
                .collect();
            let k = values(keys * dims.kv_width(), 2);
            let v = values(keys * dims.kv_width(), 3);
            let want = naive(dims, &q, &k, &v);
            let mut got = vec![0f32; q.len()];
            super::amx_attention::attend(MathPath::best(), dims, &q, &k, &v, &mut got);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 2e-2, "{a} vs {b} ({dims:?}, t {t})");
            }
            crate::kernels::set_kernel_threads(Some(1));
            let mut one = vec![0f32; q.len()];
            super::amx_attention::attend(MathPath::best(), dims, &q, &k, &v, &mut one);
            crate::kernels::set_kernel_threads(None);
            assert_eq!(one, got);
        }
    }

    #[test]
    fn thread_count_does_not_change_results() {
        let dims = AttentionDims {
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            causal: true,
        };
        let t = 300;
        let (q, k, v) = (values(t * 64, 4), values(t * 32, 5), values(t * 32, 6));
        let run = |threads| {
            crate::kernels::set_kernel_threads(Some(threads));
            let mut out = vec![0f32; q.len()];
            attend(dims, &q, &k, &v, &mut out);
            out
        };
        let one = run(1);
        let three = run(3);
        crate::kernels::set_kernel_threads(None);
        assert_eq!(one, three);
    }
}
