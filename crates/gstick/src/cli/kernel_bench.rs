//! `gstick bench kernels`: the int8 and int4 deploy kernels against our f32 Linear path (candle's
//! matmul below 16 rows, faer above, as the Linear cell does), measured in the same run.
//!
//! The a8w8 column is dynamic A8W8: the input quantized to int8 per token (timed too) and
//! multiplied by int8 weights with int32 sums (`quant::int8::a8w8`).
//!
//! GEMV (one input row) cycles through enough copies of each weight to exceed the L3 cache, so
//! every call streams its weight from memory as decode does; GEMM (many rows) reuses one copy.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;
use gstick_quant::int8::a8w8::{self, A8W8Weight, TokenRows};
use gstick_quant::int8::IntIsa;
use gstick_quant::kernels::{linear_with, Isa, PackedWeight};
use gstick_quant::{Granularity, WeightScheme};

#[derive(Args)]
pub struct KernelBenchArgs {
    /// Input rows of the GEMM case.
    #[arg(long, default_value_t = 512)]
    pub gemm_rows: usize,
    /// Bytes of weights a GEMV pass streams (per format), in MiB; above the L3 size.
    #[arg(long, default_value_t = 256)]
    pub stream_mib: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub repeats: usize,
}

fn noise(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds per call: the median over `repeats` of a pass over `calls` calls.
fn time_calls(repeats: usize, calls: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    for i in 0..calls.min(8) {
        f(i)?; // warm-up
    }
    let mut t = Vec::new();
    for _ in 0..repeats {
        let start = Instant::now();
        for i in 0..calls {
            f(i)?;
        }
        t.push(start.elapsed().as_secs_f64() / calls as f64);
    }
    Ok(median(t))
}

struct Case {
    name: &'static str,
    rows: usize,
    cols: usize,
}

pub fn run(args: KernelBenchArgs) -> Result<()> {
    let threads = gstick_nn::kernels::kernel_threads();
    let isa = Isa::detect();
    let cases = [
        Case {
            name: "4096x4096",
            rows: 4096,
            cols: 4096,
        },
        Case {
            name: "smollm2 q/o_proj",
            rows: 576,
            cols: 576,
        },
        Case {
            name: "smollm2 k/v_proj",
            rows: 192,
            cols: 576,
        },
        Case {
            name: "smollm2 gate/up_proj",
            rows: 1536,
            cols: 576,
        },
        Case {
            name: "smollm2 down_proj",
            rows: 576,
            cols: 1536,
        },
    ];
    let int8 = WeightScheme {
        bits: 8,
        granularity: Granularity::PerChannel,
        symmetric: true,
        narrow: false,
    };
    let int4 = WeightScheme {
        bits: 4,
        granularity: Granularity::PerGroup(64),
        symmetric: true,
        narrow: false,
    };
    eprintln!(
        "kernels: {} ({} threads); f32 = our Linear path",
        isa.name(),
        threads
    );
    println!("| shape | rows in | f32 µs | int8 µs | int4 µs | a8w8 µs | int8 speedup | int4 speedup | a8w8 speedup | int4 GB/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut report = Vec::new();
    for case in &cases {
        let (n, k) = (case.rows, case.cols);
        let w = noise(n as u64, n * k);
        let packed8 = PackedWeight::from_quantized(&int8.quantize_weight(&w, n, k)?);
        let packed4 = PackedWeight::from_quantized(&int4.quantize_weight(&w, n, k)?);
        let q8 = int8.quantize_weight(&w, n, k)?;
        let a8w8_weight = A8W8Weight::new(
            &q8.values,
            n,
            k,
            q8.params.iter().map(|p| p.scale as f32).collect(),
        );
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu)?;
        for m in [1, args.gemm_rows] {
            let gemv = m < gstick_nn::kernels::linear::MIN_ROWS;
            let x = noise(7, m * k);
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu)?;
            // Copies enough to exceed the caches when streaming (GEMV); one copy otherwise.
            let copies = |bytes: usize| {
                if gemv {
                    (args.stream_mib << 20).div_ceil(bytes).max(1)
                } else {
                    1
                }
            };
            let f32_copies: Vec<Tensor> = (0..copies(4 * n * k))
                .map(|_| wt.copy())
                .collect::<candle_core::Result<_>>()?;
            let t_f32 = time_calls(args.repeats, f32_copies.len(), |i| {
                let w = &f32_copies[i];
                let y = if gemv {
                    xt.matmul(&w.t()?)?
                } else {
                    gstick_nn::kernels::linear::linear_no_grad(&xt, w)?
                };
                std::hint::black_box(y);
                Ok(())
            })?;
            let mut out = vec![0f32; m * n];
            let mut time_packed = |p: &PackedWeight| -> Result<f64> {
                let ws: Vec<PackedWeight> = (0..copies(p.bytes())).map(|_| p.clone()).collect();
                time_calls(args.repeats, ws.len(), |i| {
                    linear_with(isa, &x, m, &ws[i], &mut out, threads)?;
                    std::hint::black_box(&out);
                    Ok(())
                })
            };
            let t8 = time_packed(&packed8)?;
            let t4 = time_packed(&packed4)?;
            let a8w8_copies: Vec<A8W8Weight> = (0..copies(a8w8_weight.bytes()))
                .map(|_| a8w8_weight.clone())
                .collect();
            let mut tokens = TokenRows::default();
            let int_isa = IntIsa::detect();
            let ta8 = time_calls(args.repeats, a8w8_copies.len(), |i| {
                tokens
                    .quantize(&x, m, k)
                    .map_err(|row| anyhow::anyhow!("row {row} is not finite"))?;
                a8w8::linear(int_isa, &tokens, &a8w8_copies[i], None, &mut out, threads);
                std::hint::black_box(&out);
                Ok(())
            })?;
            let gbs = packed4.bytes() as f64 / t4 / 1e9;
            println!(
                "| {} | {m} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x | {:.2}x | {:.2}x | {} |",
                case.name,
                t_f32 * 1e6,
                t8 * 1e6,
                t4 * 1e6,
                ta8 * 1e6,
                t_f32 / t8,
                t_f32 / t4,
                t_f32 / ta8,
                if gemv {
                    format!("{gbs:.1}")
                } else {
                    "-".into()
                }
            );
            report.push(serde_json::json!({
                "shape": case.name, "rows_in": m, "f32_us": t_f32 * 1e6, "int8_us": t8 * 1e6,
                "int4_us": t4 * 1e6, "a8w8_us": ta8 * 1e6, "int8_speedup": t_f32 / t8,
                "int4_speedup": t_f32 / t4, "a8w8_speedup": t_f32 / ta8,
            }));
        }
    }
    // The row kernel on each instruction set this CPU has (4096 x 4096 int4, one input row).
    let (n, k) = (4096, 4096);
    let p = PackedWeight::from_quantized(&int4.quantize_weight(&noise(1, n * k), n, k)?);
    let ws: Vec<PackedWeight> = (0..(args.stream_mib << 20).div_ceil(p.bytes()))
        .map(|_| p.clone())
        .collect();
    let x = noise(2, k);
    let mut out = vec![0f32; n];
    let mut per_isa = serde_json::Map::new();
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable]
        .into_iter()
        .filter(|i| i.supported())
    {
        for t in [1, threads] {
            let s = time_calls(args.repeats, ws.len(), |i| {
                linear_with(isa, &x, 1, &ws[i], &mut out, t)?;
                Ok(())
            })?;
            eprintln!(
                "int4 GEMV 4096x4096 {} {t} thread(s): {:.1} µs, {:.1} GB/s",
                isa.name(),
                s * 1e6,
                p.bytes() as f64 / s / 1e9
            );
            per_isa.insert(format!("{}_{t}t_us", isa.name()), (s * 1e6).into());
        }
    }
    println!(
        "{}",
        serde_json::json!({"bench": "kernels", "cpu": crate::cli::bench::cpu_name(), "isa": isa.name(), "int_isa": IntIsa::detect().name(), "threads": threads, "cases": report, "int4_gemv_4096_by_isa": per_isa})
    );
    Ok(())
}
