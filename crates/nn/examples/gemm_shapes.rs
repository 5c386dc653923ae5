//! Times the f32 Linear kernel on the shapes of an LLM forward pass (SmolLM2 by default), to see
//! which ones run below the machine's GEMM speed: `cargo run --release -p gstick-nn --example
//! gemm_shapes [rows]`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use gstick_nn::kernels::linear::linear_no_grad;

fn main() -> candle_core::Result<()> {
    let rows: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2048);
    for (name, n, k) in [
        ("q/o_proj", 576, 576),
        ("k/v_proj", 192, 576),
        ("gate/up_proj", 1536, 576),
        ("down_proj", 576, 1536),
        ("lm_head", 49152, 576),
    ] {
        let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        linear_no_grad(&x, &w)?;
        let reps = 5;
        let started = Instant::now();
        for _ in 0..reps {
            linear_no_grad(&x, &w)?;
        }
        let secs = started.elapsed().as_secs_f64() / reps as f64;
        let gflops = 2.0 * (rows * n * k) as f64 / secs / 1e9;
        println!(
            "{name:>13} {rows}x{k} -> {n}: {:.2} ms, {gflops:.0} GFLOP/s",
            secs * 1e3
        );
    }
    Ok(())
}
