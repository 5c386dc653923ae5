//! The deploy kernels against the dequantized weight, on every instruction set this CPU has.

use gstick_quant::kernels::{linear_with, Isa, KernelError, PackedData, PackedWeight};
use gstick_quant::{Granularity, QuantizedWeight, WeightScheme};

/// A deterministic pseudo-random sequence in [-1, 1).
fn noise(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn quantized(rows: usize, cols: usize, scheme: WeightScheme, seed: u64) -> QuantizedWeight {
    scheme
        .quantize_weight(&noise(seed, rows * cols), rows, cols)
        .unwrap()
}

fn scheme(bits: u32, granularity: Granularity, symmetric: bool) -> WeightScheme {
    WeightScheme {
        bits,
        granularity,
        symmetric,
        narrow: false,
    }
}

/// x W^T in f64 with the dequantized weight, and the scale of its rounding error (sum |x||w|).
fn reference(x: &[f32], m: usize, q: &QuantizedWeight) -> (Vec<f64>, Vec<f64>) {
    let w = q.dequantize();
    let mut y = vec![0f64; m * q.rows];
    let mut mag = vec![0f64; m * q.rows];
    for i in 0..m {
        for r in 0..q.rows {
            for c in 0..q.cols {
                let (a, b) = (x[i * q.cols + c] as f64, w[r * q.cols + c] as f64);
                y[i * q.rows + r] += a * b;
                mag[i * q.rows + r] += (a * b).abs();
            }
        }
    }
    (y, mag)
}

fn isas() -> Vec<Isa> {
    [Isa::Avx512, Isa::Avx2, Isa::Portable]
        .into_iter()
        .filter(|i| i.supported())
        .collect()
}

#[test]
fn every_kernel_matches_the_dequantized_weight() {
    let cases = [
        (37, 96, scheme(8, Granularity::PerChannel, true)),
        (37, 100, scheme(8, Granularity::PerChannel, false)),
        (20, 96, scheme(8, Granularity::PerGroup(32), true)),
        (20, 96, scheme(8, Granularity::PerTensor, true)),
        (37, 128, scheme(4, Granularity::PerGroup(32), true)),
        (37, 128, scheme(4, Granularity::PerGroup(64), false)),
        (9, 96, scheme(4, Granularity::PerChannel, true)),
        (9, 100, scheme(4, Granularity::PerChannel, false)),
        (9, 96, scheme(4, Granularity::PerGroup(48), true)),
        (13, 256, scheme(3, Granularity::PerGroup(64), true)),
        (13, 256, scheme(2, Granularity::PerGroup(128), false)),
    ];
    for (case, &(rows, cols, s)) in cases.iter().enumerate() {
        let q = quantized(rows, cols, s, case as u64);
        let packed = PackedWeight::from_quantized(&q);
        let int4 = matches!(packed.data, PackedData::Int4(_));
        assert_eq!(
            int4,
            s.bits <= 4 && cols % 32 == 0 && !matches!(s.granularity, Granularity::PerGroup(48)),
            "case {case}"
        );
        for m in [1, 3, 8, 21] {
            let x = noise(100 + m as u64, m * cols);
            let (want, mag) = reference(&x, m, &q);
            for isa in isas() {
                for threads in [1, 2, 3] {
                    let mut y = vec![0f32; m * rows];
                    linear_with(isa, &x, m, &packed, &mut y, threads).unwrap();
                    for (j, (&got, (&w, &g))) in y.iter().zip(want.iter().zip(&mag)).enumerate() {
                        assert!(
                            (got as f64 - w).abs() <= 1e-5 * g + 1e-6,
                            "case {case} {s:?} m {m} {isa:?} threads {threads} output {j}: {got} vs {w}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let q = quantized(300, 512, scheme(4, Granularity::PerGroup(64), false), 7);
    let packed = PackedWeight::from_quantized(&q);
    for m in [1, 4, 40] {
        let x = noise(9, m * 512);
        for isa in isas() {
            let run = |threads| {
                let mut y = vec![0f32; m * 300];
                linear_with(isa, &x, m, &packed, &mut y, threads).unwrap();
                y
            };
            let one = run(1);
            for threads in [2, 3, 5] {
                assert_eq!(one, run(threads), "{isa:?} m {m} threads {threads}");
            }
        }
    }
}

#[test]
fn int4_chunks_hold_column_i_low_and_column_i_plus_16_high() {
    // One row whose integers are -8..7 then 7..-8: byte i = (q[i] + 8) | (q[i + 16] + 8) << 4.
    let values: Vec<i8> = (-8..8).chain((-8..8).rev()).collect();
    let q = QuantizedWeight {
        rows: 1,
        cols: 32,
        scheme: scheme(4, Granularity::PerChannel, true),
        values: values.clone(),
        params: vec![gstick_quant::QParams {
            scale: 0.5,
            zero_point: 0.0,
        }],
    };
    let packed = PackedWeight::from_quantized(&q);
    let PackedData::Int4(bytes) = &packed.data else {
        panic!("expected nibbles")
    };
    assert_eq!(bytes.len(), 16);
    for i in 0..16 {
        assert_eq!(bytes[i] & 0x0F, (values[i] + 8) as u8);
        assert_eq!(bytes[i] >> 4, (values[i + 16] + 8) as u8);
    }
    // The offset undoes the +8: w = 0.5 * u - 4 = 0.5 * q.
    assert_eq!(packed.offsets, vec![-4.0]);
    let mut w = vec![0f32; 32];
    packed.dequantize_rows(0, &mut w);
    let want: Vec<f32> = values.iter().map(|&v| v as f32 * 0.5).collect();
    assert_eq!(w, want);
}

#[test]
fn symmetric_int8_stores_no_offsets_and_bad_shapes_are_refused() {
    let q = quantized(4, 32, scheme(8, Granularity::PerChannel, true), 3);
    let packed = PackedWeight::from_quantized(&q);
    assert!(packed.offsets.is_empty());
    assert_eq!(packed.bytes(), 4 * 32 + 4 * 4);
    let mut y = vec![0f32; 4];
    assert_eq!(
        linear_with(Isa::Portable, &[0.0; 31], 1, &packed, &mut y, 1),
        Err(KernelError::Input {
            got: 31,
            rows: 1,
            cols: 32
        })
    );
    assert_eq!(
        linear_with(Isa::Portable, &[0.0; 32], 1, &packed, &mut y[..3], 1),
        Err(KernelError::Output {
            got: 3,
            expected: 4
        })
    );
}
