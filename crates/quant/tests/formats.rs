//! The storage formats: each encode read back by its decode, the GGML blocks held by the packed
//! kernels exactly as the file dequantizes them, and malformed tensors refused.

use gstick_quant::formats::gptq::{self, GptqLayout};
use gstick_quant::formats::gs::{self, GsTensors};
use gstick_quant::formats::{ggml_exact, q4_1, q8_0};
use gstick_quant::kernels::PackedWeight;
use gstick_quant::{GgmlType, Granularity, QuantizedWeight, WeightScheme};

fn noise(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn quantized(
    rows: usize,
    cols: usize,
    bits: u32,
    group: usize,
    symmetric: bool,
) -> QuantizedWeight {
    let scheme = WeightScheme {
        bits,
        granularity: if group == 0 {
            Granularity::PerChannel
        } else {
            Granularity::PerGroup(group)
        },
        symmetric,
        narrow: false,
    };
    let mut q = scheme
        .quantize_weight(
            &noise(rows as u64 * 31 + cols as u64, rows * cols),
            rows,
            cols,
        )
        .unwrap();
    q.round_scales_to_f16().unwrap();
    q
}

#[test]
fn gs_tensors_read_back_as_the_same_weight() {
    for (bits, group, symmetric) in [(4, 64, true), (4, 32, false), (8, 0, true), (3, 64, false)] {
        let q = quantized(8, 128, bits, group, symmetric);
        let t = gs::encode(&q).unwrap();
        assert_eq!(t.packed, bits <= 4);
        assert_eq!(
            gs::decode(8, 128, q.scheme, &t).unwrap(),
            q,
            "W{bits} g{group}"
        );
    }
}

#[test]
fn gs_decode_refuses_what_does_not_fit() {
    let q = quantized(4, 64, 4, 32, true);
    let good = gs::encode(&q).unwrap();
    let bad = |f: &dyn Fn(&mut GsTensors)| {
        let mut t = good.clone();
        f(&mut t);
        gs::decode(4, 64, q.scheme, &t).unwrap_err().to_string()
    };
    assert!(bad(&|t| t.weight_shape = [4, 64]).contains("needs packed"));
    assert!(bad(&|t| t.param_shape = [4, 1]).contains("scales"));
    assert!(bad(&|t| t.scale[3] = -1.0).contains("positive"));
    assert!(bad(&|t| t.scale[0] = f32::NAN).contains("positive"));
    // A value outside the scheme's range.
    let q8 = quantized(4, 64, 8, 32, true);
    let mut t = gs::encode(&q8).unwrap();
    t.weight[5] = 100;
    let mut seven = q8.scheme;
    seven.bits = 7;
    assert!(gs::decode(4, 64, seven, &t)
        .unwrap_err()
        .to_string()
        .contains("outside the 7-bit range"));
}

#[test]
fn gptq_tensors_read_back_as_the_same_weight() {
    for (bits, group, symmetric) in [(4, 64, false), (4, 0, true), (8, 0, true), (2, 32, false)] {
        let q = quantized(16, 128, bits, group, symmetric);
        let layout = GptqLayout::of(&q);
        let t = gptq::encode(&q).unwrap();
        let shapes = layout.shapes(16, 128).unwrap();
        assert_eq!(t.qweight.len(), shapes.qweight[0] * shapes.qweight[1]);
        let scales: Vec<f64> = t.scales.iter().map(|&s| s as f64).collect();
        let back = gptq::decode(16, 128, layout, &t.qweight, &t.qzeros, &scales).unwrap();
        assert_eq!(back.values, q.values, "W{bits} g{group}");
        assert_eq!(back.params, q.params, "W{bits} g{group}");
    }
    // Sizes that do not pack, and short tensors, are errors.
    let q = quantized(16, 128, 4, 64, true);
    assert!(GptqLayout::of(&q).shapes(15, 128).is_err());
    let t = gptq::encode(&q).unwrap();
    let scales: Vec<f64> = t.scales.iter().map(|&s| s as f64).collect();
    assert!(gptq::decode(
        16,
        128,
        GptqLayout::of(&q),
        &t.qweight[1..],
        &t.qzeros,
        &scales
    )
    .is_err());
}

#[test]
fn exact_ggml_blocks_dequantize_to_the_weight_and_run_on_the_kernels_as_stored() {
    for (bits, group, symmetric, ty) in [
        (8, 0, true, GgmlType::Q8_0),
        (4, 64, true, GgmlType::Q4_0),
        (4, 32, false, GgmlType::Q4_1),
    ] {
        let q = quantized(6, 128, bits, group, symmetric);
        let order: Vec<usize> = (0..6).rev().collect();
        let (got, bytes) = ggml_exact::encode(&q, &order).unwrap();
        assert_eq!(got, ty);
        let file = ty.dequantize(&bytes, 6 * 128).unwrap();
        let ours = q.dequantize();
        let max_dev = (0..6)
            .flat_map(|g| (0..128).map(move |c| (g, c)))
            .map(|(g, c)| (file[g * 128 + c] - ours[order[g] * 128 + c]).abs())
            .fold(0f32, f32::max);
        // Q4_1 stores the minimum in f16; the other grids are exact.
        if ty == GgmlType::Q4_1 {
            assert!(max_dev < 1e-3, "{ty:?}: {max_dev}");
        } else {
            assert_eq!(max_dev, 0.0, "{ty:?}");
        }
        // The kernels hold the blocks as stored: their rows are the file's values, bit for bit,
        // with the row order undone.
        let packed = PackedWeight::from_ggml(ty, &bytes, 6, 128, |r| order[r]).unwrap();
        let mut rows = vec![0f32; 6 * 128];
        packed.dequantize_rows(0, &mut rows);
        for r in 0..6 {
            let g = order[r];
            assert!(
                rows[r * 128..(r + 1) * 128]
                    .iter()
                    .zip(&file[g * 128..(g + 1) * 128])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{ty:?} row {r}"
            );
        }
    }
    // Grids that no GGML type holds are left to re-rounding.
    assert!(ggml_exact::exact_type(&quantized(2, 128, 3, 64, true)).is_some());
    assert!(ggml_exact::exact_type(&quantized(2, 128, 8, 64, false)).is_none());
}

#[test]
fn re_rounded_blocks_follow_the_reference_quantizers() {
    let x = noise(7, 64);
    let mut q8 = Vec::new();
    q8_0::quantize(&x, &mut q8);
    let back = GgmlType::Q8_0.dequantize(&q8, 64).unwrap();
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    assert!(x
        .iter()
        .zip(&back)
        .all(|(a, b)| (a - b).abs() <= amax / 127.0));
    let mut q41 = Vec::new();
    q4_1::quantize(&x, &mut q41);
    let back = GgmlType::Q4_1.dequantize(&q41, 64).unwrap();
    assert!(x
        .iter()
        .zip(&back)
        .all(|(a, b)| (a - b).abs() <= 2.0 / 15.0 * 0.51 + 1e-3));
}

#[test]
fn packed_ggml_refuses_other_types_and_wrong_sizes() {
    let q = quantized(2, 64, 8, 0, true);
    let (_, bytes) = ggml_exact::encode(&q, &[0, 1]).unwrap();
    assert!(PackedWeight::from_ggml(GgmlType::Q8_0, &bytes[1..], 2, 64, |r| r).is_err());
    assert!(PackedWeight::from_ggml(GgmlType::Q6K, &bytes, 2, 64, |r| r).is_err());
    assert!(PackedWeight::from_ggml(GgmlType::Q8_0, &bytes, 2, 64, |r| r + 1).is_err());
}
