//! The fused inference path (Mode::Eval on f32) against candle's ops (the training path, which
//! autodiff differentiates): attention with RoPE and grouped-query heads, RMSNorm and SiLU give
//! the same values, and attention over the KV cache one position at a time equals attention over
//! the whole sequence.

use candle_core::{Device, Tensor};
use gstick_nn::cells::{Activation, ActivationKind, RmsNorm, Rope, SelfAttention};
use gstick_nn::{Cell, CellCtx, KvCache, Mode};

fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn run(cell: &dyn Cell, inputs: &[Tensor], mode: Mode) -> Vec<f32> {
    let mut rng = gstick_nn::rng(0);
    cell.forward(inputs, &mut CellCtx::new(mode, &mut rng))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(fused: &[f32], reference: &[f32], tolerance: f32, what: &str) {
    assert_eq!(fused.len(), reference.len());
    let worst = fused
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0f32, f32::max);
    assert!(
        worst <= tolerance,
        "{what}: worst relative difference {worst}"
    );
}

fn attention() -> SelfAttention {
    SelfAttention::causal(6, 2, 16, Rope::new(10_000.0)).unwrap()
}

#[test]
fn fused_attention_equals_the_reference_ops() {
    let (b, t) = (2, 150);
    let q = random(&[b, t, 96], 1);
    let k = random(&[b, t, 32], 2);
    let v = random(&[b, t, 32], 3);
    let inputs = [q, k, v];
    let att = attention();
    let fused = run(&att, &inputs, Mode::Eval);
    let reference = run(&att, &inputs, Mode::Train);
    assert_close(&fused, &reference, 1e-5, "causal GQA attention with RoPE");
    let encoder = SelfAttention::bidirectional(4, 8).unwrap();
    let x: Vec<Tensor> = (0..3).map(|i| random(&[1, 70, 32], 10 + i)).collect();
    assert_close(
        &run(&encoder, &x, Mode::Eval),
        &run(&encoder, &x, Mode::Train),
        1e-5,
        "bidirectional attention",
    );
}

#[test]
fn decoding_through_the_cache_equals_the_whole_sequence() {
    let t = 40;
    let (q, k, v) = (
        random(&[1, t, 96], 4),
        random(&[1, t, 32], 5),
        random(&[1, t, 32], 6),
    );
    let att = attention();
    let whole = run(&att, &[q.clone(), k.clone(), v.clone()], Mode::Eval);
    let mut cache = KvCache::new();
    let mut rng = gstick_nn::rng(0);
    let mut stepped = Vec::new();
    // A prompt of 7 positions, then one position at a time.
    let mut start = 0;
    for len in std::iter::once(7).chain(std::iter::repeat_n(1, t - 7)) {
        let part = |x: &Tensor| x.narrow(1, start, len).unwrap();
        let mut ctx = CellCtx {
            mode: Mode::Eval,
            rng: &mut rng,
            node: "layer.attention",
            cache: Some(&mut cache),
        };
        let out = att
            .forward(&[part(&q), part(&k), part(&v)], &mut ctx)
            .unwrap();
        stepped.extend(out.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        start += len;
    }
    assert_eq!(cache.positions("layer.attention"), t);
    assert_eq!(cache.bytes(), 2 * t * 32 * 4);
    assert_close(&stepped, &whole, 1e-6, "cached decode");
}

#[test]
fn the_cache_is_refused_on_the_training_path() {
    let att = attention();
    let x = [
        random(&[1, 3, 96], 7),
        random(&[1, 3, 32], 8),
        random(&[1, 3, 32], 9),
    ];
    let mut cache = KvCache::new();
    let mut rng = gstick_nn::rng(0);
    let mut ctx = CellCtx {
        mode: Mode::Train,
        rng: &mut rng,
        node: "a",
        cache: Some(&mut cache),
    };
    let err = att.forward(&x, &mut ctx).unwrap_err().to_string();
    assert!(err.contains("KV cache"), "{err}");
}

#[test]
fn fused_norm_and_silu_equal_the_reference_ops() {
    let x = random(&[3, 37, 100], 11);
    let norm = RmsNorm::from_tensor(random(&[100], 12), 1e-5).unwrap();
    let input = [x];
    assert_close(
        &run(&norm, &input, Mode::Eval),
        &run(&norm, &input, Mode::Train),
        1e-6,
        "RMSNorm",
    );
    let silu = Activation(ActivationKind::Silu);
    assert_close(
        &run(&silu, &input, Mode::Eval),
        &run(&silu, &input, Mode::Train),
        1e-6,
        "SiLU",
    );
}
