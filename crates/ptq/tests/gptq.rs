//! GPTQ on a synthetic layer: it beats round-to-nearest on the layer-output error, and it agrees
//! with a straightforward (unblocked, plain-loop) implementation of the paper's algorithm.

use gstick_ptq::config::GptqConfig;
use gstick_ptq::gptq::{gptq, GptqError, Hessian};
use gstick_quant::scheme::{dequantize, int_range, qparams, quantize};
use gstick_quant::{Granularity, WeightScheme};

/// Deterministic pseudo-random values in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

const ROWS: usize = 24;
const COLS: usize = 64;
const SAMPLES: usize = 512;

/// Inputs with correlated features (x = z A), so the Hessian is far from diagonal.
fn inputs() -> Vec<f32> {
    let z = noise(SAMPLES * COLS, 1);
    let a = noise(COLS * COLS, 2);
    (0..SAMPLES * COLS)
        .map(|k| {
            let (s, j) = (k / COLS, k % COLS);
            let v: f64 = (0..COLS)
                .map(|m| z[s * COLS + m] * a[m * COLS + j] * if m == j { 3.0 } else { 0.3 })
                .sum();
            v as f32
        })
        .collect()
}

fn weight() -> Vec<f32> {
    noise(ROWS * COLS, 3)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// ||X Wᵀ - X Qᵀ||² for a dequantized Q.
fn output_error(x: &[f32], w: &[f32], q: &[f32]) -> f64 {
    let mut total = 0.0;
    for s in 0..SAMPLES {
        for r in 0..ROWS {
            let d: f64 = (0..COLS)
                .map(|j| x[s * COLS + j] as f64 * (w[r * COLS + j] - q[r * COLS + j]) as f64)
                .sum();
            total += d * d;
        }
    }
    total
}

fn cholesky(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            l[i * n + j] = if i == j {
                (a[i * n + i] - s).sqrt()
            } else {
                (a[i * n + j] - s) / l[j * n + j]
            };
        }
    }
    l
}

/// The paper's algorithm written plainly: per-channel, no blocks, no act-order.
fn reference_gptq(w: &[f32], h: &Hessian, scheme: WeightScheme) -> Vec<i8> {
    let n = COLS;
    let mut hd = h.h.clone();
    let mean = (0..n).map(|i| hd[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n {
        hd[i * n + i] += 0.01 * mean;
    }
    // H⁻¹ column by column from L Lᵀ x = e_k.
    let l = cholesky(&hd, n);
    let mut hinv = vec![0.0; n * n];
    for k in 0..n {
        let mut y = vec![0.0; n];
        for i in 0..n {
            let s: f64 = (0..i).map(|j| l[i * n + j] * y[j]).sum();
            y[i] = ((i == k) as u8 as f64 - s) / l[i * n + i];
        }
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|j| l[j * n + i] * x[j]).sum();
            x[i] = (y[i] - s) / l[i * n + i];
        }
        for i in 0..n {
            hinv[i * n + k] = x[i];
        }
    }
    let u = cholesky(&hinv, n); // lower; U = Lᵀ, so U[i][j] = u[j][i]
    let range = int_range(scheme.bits, true, scheme.narrow).unwrap();
    let mut out = vec![0i8; ROWS * n];
    for r in 0..ROWS {
        let mut row: Vec<f64> = w[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
        let (lo, hi) = row
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let p = qparams(lo, hi, range, scheme.symmetric);
        for i in 0..n {
            let q = quantize(row[i], p, range);
            out[r * n + i] = q as i8;
            let e = (row[i] - dequantize(q, p)) / u[i * n + i];
            for j in i + 1..n {
                row[j] -= e * u[j * n + i];
            }
        }
    }
    out
}

#[test]
fn gptq_beats_rtn_and_matches_the_reference() {
    let x = inputs();
    let w = weight();
    let mut h = Hessian::new(COLS);
    h.add(&x[..SAMPLES / 2 * COLS], SAMPLES / 2);
    h.add(&x[SAMPLES / 2 * COLS..], SAMPLES / 2);
    for (bits, granularity) in [
        (4, Granularity::PerChannel),
        (3, Granularity::PerChannel),
        (4, Granularity::PerGroup(32)),
    ] {
        let scheme = WeightScheme {
            bits,
            granularity,
            symmetric: true,
            narrow: false,
        };
        let rtn = scheme.quantize_weight(&w, ROWS, COLS).unwrap();
        // The paper's column order, as the plain-loop reference.
        let settings = GptqConfig {
            block_size: 16,
            ..GptqConfig::default()
        }
        .in_column_order();
        let (q, report) = gptq(&w, ROWS, COLS, &h, scheme, &settings).unwrap();
        let (e_rtn, e_gptq) = (
            output_error(&x, &w, &rtn.dequantize()),
            output_error(&x, &w, &q.dequantize()),
        );
        eprintln!("{bits}-bit {granularity:?}: output error RTN {e_rtn:.1}, GPTQ {e_gptq:.1} (loss {:.2})", report.loss);
        assert!(
            e_gptq < 0.8 * e_rtn,
            "{bits}-bit {granularity:?}: GPTQ {e_gptq} vs RTN {e_rtn}"
        );
        assert_eq!(report.damp_percent, 0.01);
        if granularity == Granularity::PerChannel {
            let reference = reference_gptq(&w, &h, scheme);
            let same = reference
                .iter()
                .zip(&q.values)
                .filter(|(a, b)| a == b)
                .count();
            assert!(
                same as f64 >= 0.995 * reference.len() as f64,
                "{same} of {} integers agree",
                reference.len()
            );
        }
    }
}

#[test]
fn act_order_static_groups_dead_columns_and_errors() {
    let x = inputs();
    let w = weight();
    let mut h = Hessian::new(COLS);
    // Column 5 never sees an input: a dead column.
    let mut xd = x.clone();
    for s in 0..SAMPLES {
        xd[s * COLS + 5] = 0.0;
    }
    h.add(&xd, SAMPLES);
    let scheme = WeightScheme {
        bits: 4,
        granularity: Granularity::PerGroup(32),
        symmetric: true,
        narrow: false,
    };
    let settings = GptqConfig {
        desc_act: true,
        static_groups: true,
        ..GptqConfig::default()
    };
    let (q, report) = gptq(&w, ROWS, COLS, &h, scheme, &settings).unwrap();
    assert_eq!(report.dead_columns, 1);
    assert!(
        (0..ROWS).all(|r| q.values[r * COLS + 5] == 0),
        "dead columns quantize to zero"
    );
    let rtn = scheme.quantize_weight(&w, ROWS, COLS).unwrap();
    assert!(output_error(&xd, &w, &q.dequantize()) < output_error(&xd, &w, &rtn.dequantize()));
    // Errors.
    let dynamic = GptqConfig {
        desc_act: true,
        static_groups: false,
        ..GptqConfig::default()
    };
    assert_eq!(
        gptq(&w, ROWS, COLS, &h, scheme, &dynamic).unwrap_err(),
        GptqError::ActOrderGroups
    );
    assert!(matches!(
        gptq(&w[..10], ROWS, COLS, &h, scheme, &settings),
        Err(GptqError::Shape { .. })
    ));
    // A slightly indefinite Hessian is dampened more until it factorizes; a hopeless one is an error.
    let per_channel = WeightScheme {
        granularity: Granularity::PerChannel,
        ..scheme
    };
    let mut mild = Hessian::new(COLS);
    mild.add(&x, SAMPLES);
    let mean = (0..COLS).map(|i| mild.h[i * COLS + i]).sum::<f64>() / COLS as f64;
    let c = (mild.h[0] * mild.h[COLS + 1]).sqrt() + 0.05 * mean;
    mild.h[1] = c;
    mild.h[COLS] = c;
    let (_, r) = gptq(&w, ROWS, COLS, &mild, per_channel, &GptqConfig::default()).unwrap();
    assert!(
        r.damp_percent > 0.01,
        "dampening was raised to {}",
        r.damp_percent
    );
    let mut hopeless = mild.clone();
    hopeless.h[1] = 1e9;
    hopeless.h[COLS] = 1e9;
    let err = gptq(
        &w,
        ROWS,
        COLS,
        &hopeless,
        per_channel,
        &GptqConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, GptqError::Indefinite(_)), "{err}");
    let mut nan = w.clone();
    nan[COLS + 3] = f32::NAN;
    let err = gptq(&nan, ROWS, COLS, &h, per_channel, &GptqConfig::default()).unwrap_err();
    assert_eq!(err.to_string(), "non-finite weight value in row 1");
}

/// The solve's matrix products run on the kernel threads; the integers and scales do not depend
/// on how many there are.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (rows, cols, samples) = (96, 384, 512);
    let x: Vec<f32> = noise(samples * cols, 7)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let w: Vec<f32> = noise(rows * cols, 8)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let mut h = Hessian::new(cols);
    h.add(&x, samples);
    let scheme = WeightScheme {
        bits: 4,
        granularity: Granularity::PerGroup(64),
        symmetric: true,
        narrow: false,
    };
    let run = |threads| {
        gstick_nn::kernels::set_kernel_threads(Some(threads));
        let (q, report) = gptq(&w, rows, cols, &h, scheme, &GptqConfig::default()).unwrap();
        (q.values, format!("{:?}", q.params), report.loss.to_bits())
    };
    let one = run(1);
    let two = run(2);
    gstick_nn::kernels::set_kernel_threads(None);
    assert!(one == two, "GPTQ changed with the thread count");
}
