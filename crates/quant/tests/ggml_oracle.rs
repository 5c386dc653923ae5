//! Our GGML dequantizers against candle's (an independent implementation) on blocks that candle
//! quantized from random data, for every format both support.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use gstick_quant::{GgmlError, GgmlType};

fn random(n: usize) -> Tensor {
    // A fixed pseudo-random sequence (no RNG dependency): values spread over about [-3, 3].
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 12.9898).sin() * 43758.547).fract() * 6.0 - 3.0)
        .collect();
    Tensor::from_vec(v, (n / 256, 256), &Device::Cpu).unwrap()
}

#[test]
fn dequantization_matches_candle() {
    let x = random(4 * 256);
    let cases = [
        (GgmlDType::F16, GgmlType::F16),
        (GgmlDType::BF16, GgmlType::BF16),
        (GgmlDType::Q4_0, GgmlType::Q4_0),
        (GgmlDType::Q4_1, GgmlType::Q4_1),
        (GgmlDType::Q5_0, GgmlType::Q5_0),
        (GgmlDType::Q5_1, GgmlType::Q5_1),
        (GgmlDType::Q8_0, GgmlType::Q8_0),
        (GgmlDType::Q4K, GgmlType::Q4K),
        (GgmlDType::Q5K, GgmlType::Q5K),
        (GgmlDType::Q6K, GgmlType::Q6K),
    ];
    for (theirs, ours) in cases {
        let q = QTensor::quantize(&x, theirs).unwrap();
        let bytes = q.data().unwrap();
        assert_eq!(
            bytes.len(),
            ours.bytes_for(1024).unwrap(),
            "{ours:?} block size"
        );
        let reference: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = ours.dequantize(&bytes, 1024).unwrap();
        assert_eq!(got, reference, "{ours:?}");
        // Sanity: the quantized values approximate the input.
        let original: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let err = original
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 0.6, "{ours:?}: max error {err}"); // 4-bit steps are ~0.4 here
    }
}

#[test]
fn sizes_are_checked() {
    assert_eq!(GgmlType::from_id(12).unwrap(), GgmlType::Q4K);
    assert_eq!(GgmlType::from_id(99), Err(GgmlError::UnknownType(99)));
    assert!(matches!(
        GgmlType::Q8_0.dequantize(&[0; 33], 32),
        Err(GgmlError::Size {
            expected: 34,
            got: 33,
            ..
        })
    ));
    assert!(matches!(
        GgmlType::Q4K.dequantize(&[0; 144], 100),
        Err(GgmlError::PartialBlock { .. })
    ));
    assert_eq!(
        GgmlType::Q2K.dequantize(&[0; 84], 256),
        Err(GgmlError::Unsupported(GgmlType::Q2K))
    );
    // Hand-made Q8_0 block: d = 0.5, q = 0..31 -> 0, 0.5, 1, ...
    let mut block = half::f16::from_f32(0.5).to_le_bytes().to_vec();
    block.extend((0..32).map(|q: i8| q as u8));
    let y = GgmlType::Q8_0.dequantize(&block, 32).unwrap();
    assert_eq!(y[3], 1.5);
    // Hand-made Q4_1 block: d = 1, m = -8, byte 0x21 -> low nibble 1, high nibble 2.
    let mut block = [
        half::f16::from_f32(1.0).to_le_bytes(),
        half::f16::from_f32(-8.0).to_le_bytes(),
    ]
    .concat();
    block.extend([0x21u8; 16]);
    let y = GgmlType::Q4_1.dequantize(&block, 32).unwrap();
    assert_eq!((y[0], y[16]), (-7.0, -6.0));
}
