//! Quantization arithmetic against cases computed by hand with the conventions of spec §3.0.

use gstick_quant::formats::gs::{pack_int4, unpack_int4};
use gstick_quant::scheme::{dequantize, int_range, qparams, quantize};
use gstick_quant::{Granularity, QParams, SchemeError, WeightScheme};

#[test]
fn integer_ranges() {
    assert_eq!(int_range(8, true, false), Ok((-128, 127)));
    assert_eq!(int_range(8, true, true), Ok((-127, 127)));
    assert_eq!(int_range(4, true, false), Ok((-8, 7)));
    assert_eq!(int_range(3, true, false), Ok((-4, 3)));
    assert_eq!(int_range(8, false, false), Ok((0, 255)));
    assert_eq!(int_range(9, true, false), Err(SchemeError::Bits(9)));
}

#[test]
fn symmetric_uses_the_whole_range() {
    // min -1, max 0.5: m = 1, scale = 2 / 255 (not 1 / 127), zero point 0.
    let p = qparams(-1.0, 0.5, (-128, 127), true);
    assert_eq!(
        p,
        QParams {
            scale: 2.0 / 255.0,
            zero_point: 0.0
        }
    );
    assert_eq!(quantize(0.5, p, (-128, 127)), 64); // 0.5 * 127.5 = 63.75 -> 64
    assert_eq!(quantize(-1.0, p, (-128, 127)), -128); // -127.5 rounds to even -128
    assert_eq!(quantize(1.0, p, (-128, 127)), 127); // 127.5 -> 128, clamped
                                                    // int4: scale = 2 * absmax / 15.
    assert_eq!(qparams(-3.0, 1.0, (-8, 7), true).scale, 6.0 / 15.0);
}

#[test]
fn asymmetric_zero_point() {
    // min -1, max 3, int8: scale = 4/255; zp = round(-128 + 63.75) = round(-64.25) = -64.
    let p = qparams(-1.0, 3.0, (-128, 127), false);
    assert_eq!(p.scale, 4.0 / 255.0);
    assert_eq!(p.zero_point, -64.0);
    assert_eq!(quantize(3.0, p, (-128, 127)), 127); // 191.25 - 64 = 127.25
    assert_eq!(quantize(-1.0, p, (-128, 127)), -128); // -63.75 - 64 = -127.75 -> -128
    assert!((dequantize(127, p) - 191.0 * 4.0 / 255.0).abs() < 1e-15);
    // Ties go to even, as numpy: zp = round(-0.5 - 0) with range [-1, 0] over 1 step.
    assert_eq!(qparams(0.5, 1.5, (-1, 0), false).zero_point, -2.0); // -1 - 0.5/1 = -1.5 -> -2
                                                                    // A constant range: scale 1, zero point 0.
    assert_eq!(
        qparams(0.7, 0.7, (-8, 7), false),
        QParams {
            scale: 1.0,
            zero_point: 0.0
        }
    );
}

#[test]
fn per_channel_and_per_group_weights() {
    // (2, 4) weight; per group of 2, symmetric int4: each pair gets scale 2*absmax/15.
    let w = [1.5f32, -0.75, 3.0, 0.0, -6.0, 2.0, 0.1, -0.1];
    let s = WeightScheme {
        bits: 4,
        granularity: Granularity::PerGroup(2),
        symmetric: true,
        narrow: false,
    };
    let q = s.quantize_weight(&w, 2, 4).unwrap();
    let scales: Vec<f64> = q.params.iter().map(|p| p.scale).collect();
    // Scales come from the f32 weights widened to f64 (0.1f32 is not 0.1).
    assert_eq!(
        scales,
        [
            3.0 / 15.0,
            6.0 / 15.0,
            12.0 / 15.0,
            2.0 * (0.1f32 as f64) / 15.0
        ]
    );
    // 1.5 / 0.2 = 7.5 -> 8 (ties to even) -> clamped to 7; -0.75 / 0.2 = -3.75 -> -4.
    assert_eq!(&q.values[..2], &[7, -4]);
    assert_eq!(q.values[4], -8); // -6 / 0.8 = -7.5 -> -8
    assert_eq!(q.params_at(1, 3), q.params[3]);
    let back = q.dequantize();
    assert!((back[1] - (-0.8)).abs() < 1e-6);
    // Per channel: one scale per row.
    let pc = WeightScheme {
        granularity: Granularity::PerChannel,
        ..s
    }
    .quantize_weight(&w, 2, 4)
    .unwrap();
    assert_eq!(pc.params.len(), 2);
    assert_eq!(pc.params[1].scale, 12.0 / 15.0);
    // Asymmetric per tensor: one zero point for everything.
    let pt = WeightScheme {
        bits: 8,
        granularity: Granularity::PerTensor,
        symmetric: false,
        narrow: false,
    };
    let t = pt.quantize_weight(&w, 2, 4).unwrap();
    assert_eq!(t.params.len(), 1);
    let err = t
        .dequantize()
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err <= (t.params[0].scale / 2.0) as f32 + 1e-6, "{err}");
    // Errors name the problem.
    assert_eq!(s.quantize_weight(&w, 2, 4).unwrap().values.len(), 8);
    let g3 = WeightScheme {
        granularity: Granularity::PerGroup(3),
        ..s
    };
    assert_eq!(
        g3.quantize_weight(&w, 2, 4).unwrap_err(),
        SchemeError::Group { group: 3, cols: 4 }
    );
    assert_eq!(
        s.quantize_weight(&w[..6], 2, 4).unwrap_err(),
        SchemeError::Shape {
            got: 6,
            rows: 2,
            cols: 4
        }
    );
    let mut bad = w;
    bad[6] = f32::NAN;
    assert_eq!(
        s.quantize_weight(&bad, 2, 4).unwrap_err(),
        SchemeError::NonFinite { row: 1 }
    );
}

#[test]
fn int4_nibble_order() {
    // Element 2j in the low nibble, 2j+1 in the high nibble.
    assert_eq!(pack_int4(&[1, -2, 7, -8]), vec![0xE1, 0x87]);
    assert_eq!(pack_int4(&[-1, 0, 5]), vec![0x0F, 0x05]);
    assert_eq!(unpack_int4(&[0xE1, 0x87], 4), vec![1, -2, 7, -8]);
    let all: Vec<i8> = (-8..8).collect();
    assert_eq!(unpack_int4(&pack_int4(&all), all.len()), all);
}
