//! The inference Linear kernel (faer) against candle's matmul, and its independence from the
//! thread count.

use candle_core::{Device, Tensor};
use gstick_nn::kernels::linear::linear_no_grad;
use gstick_nn::kernels::set_kernel_threads;

fn data(rows: usize, cols: usize, seed: u32) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

#[test]
fn matches_candle_and_ignores_thread_count() {
    for (m, k, n) in [(64, 576, 1536), (300, 100, 7), (17, 1536, 576)] {
        let x = data(m, k, 1);
        let w = data(n, k, 2);
        let reference = x.matmul(&w.t().unwrap()).unwrap();
        let ours = linear_no_grad(&x, &w).unwrap();
        let scale = reference
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = (&ours - &reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "{m}x{k}x{n}: differs by {diff} (scale {scale})"
        );
        let mut results = Vec::new();
        for threads in [1, 2, 3] {
            set_kernel_threads(Some(threads));
            results.push(
                linear_no_grad(&x, &w)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
        }
        set_kernel_threads(None);
        assert!(
            results.iter().all(|r| r == &results[0]),
            "{m}x{k}x{n}: thread count changed the result"
        );
    }
    let bad = linear_no_grad(&data(4, 3, 0), &data(5, 4, 0))
        .unwrap_err()
        .to_string();
    assert!(bad.contains("3 features"), "{bad}");
}
