//! Values of the parameterless and normalization cells against hand computations.

use candle_core::{DType, Device, Tensor};
use gstick_nn::cells::*;
use gstick_nn::{Cell, CellCtx, Error, Mode};

fn run(cell: &dyn Cell, inputs: &[Tensor]) -> gstick_nn::Result<Tensor> {
    let mut rng = gstick_nn::rng(0);
    cell.forward(inputs, &mut CellCtx::new(Mode::Eval, &mut rng))
}

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

#[test]
fn activations() {
    let x = t(&[-4.0, -1.0, 0.0, 0.5, 3.0, 7.0], &[6]);
    let cases: [(ActivationKind, Vec<f32>); 7] = [
        (ActivationKind::Relu, vec![0.0, 0.0, 0.0, 0.5, 3.0, 7.0]),
        (ActivationKind::Relu6, vec![0.0, 0.0, 0.0, 0.5, 3.0, 6.0]),
        (
            ActivationKind::LeakyRelu { slope: 0.1 },
            vec![-0.4, -0.1, 0.0, 0.5, 3.0, 7.0],
        ),
        (
            ActivationKind::HSigmoid,
            vec![0.0, 2.0 / 6.0, 0.5, 3.5 / 6.0, 1.0, 1.0],
        ),
        (
            ActivationKind::HSwish,
            vec![0.0, -2.0 / 6.0, 0.0, 0.5 * 3.5 / 6.0, 3.0, 7.0],
        ),
        (
            ActivationKind::Sigmoid,
            [-4.0f32, -1.0, 0.0, 0.5, 3.0, 7.0]
                .iter()
                .map(|v| 1.0 / (1.0 + (-v).exp()))
                .collect(),
        ),
        (
            ActivationKind::Silu,
            [-4.0f32, -1.0, 0.0, 0.5, 3.0, 7.0]
                .iter()
                .map(|v| v / (1.0 + (-v).exp()))
                .collect(),
        ),
    ];
    for (kind, expected) in cases {
        close(
            &values(&run(&Activation(kind), std::slice::from_ref(&x)).unwrap()),
            &expected,
        );
    }
    // GELU (erf form) at a few known points.
    let g = values(
        &run(
            &Activation(ActivationKind::Gelu),
            &[t(&[-1.0, 0.0, 1.0], &[3])],
        )
        .unwrap(),
    );
    close(&g, &[-0.158_655_25, 0.0, 0.841_344_7]);
    let s = values(
        &run(
            &Activation(ActivationKind::Softmax { dim: 1 }),
            &[t(&[0.0, 0.0, 1.0, 1.0], &[2, 2])],
        )
        .unwrap(),
    );
    close(&s, &[0.5, 0.5, 0.5, 0.5]);
}

#[test]
fn arithmetic_and_shapes() {
    let a = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let b = t(&[10.0, 20.0], &[2]);
    close(
        &values(&run(&Add, &[a.clone(), b.clone()]).unwrap()),
        &[11.0, 22.0, 13.0, 24.0],
    );
    close(
        &values(&run(&Mul, &[a.clone(), b.clone(), b.clone()]).unwrap()),
        &[100.0, 800.0, 300.0, 1600.0],
    );
    assert!(matches!(
        run(&Add, std::slice::from_ref(&a)),
        Err(Error::Arity { .. })
    ));
    let x = Tensor::arange(0f32, 24.0, &Device::Cpu)
        .unwrap()
        .reshape((2, 3, 4))
        .unwrap();
    assert_eq!(
        run(&Flatten::default(), std::slice::from_ref(&x))
            .unwrap()
            .dims(),
        &[2, 12]
    );
    assert_eq!(
        run(
            &Reshape {
                shape: vec![0, -1, 2]
            },
            std::slice::from_ref(&x)
        )
        .unwrap()
        .dims(),
        &[2, 6, 2]
    );
    assert!(run(&Reshape { shape: vec![5, -1] }, std::slice::from_ref(&x)).is_err());
    assert!(run(
        &Reshape {
            shape: vec![-1, -1]
        },
        std::slice::from_ref(&x)
    )
    .is_err());
    assert_eq!(
        run(&Concat { dim: 1 }, &[x.clone(), x.clone()])
            .unwrap()
            .dims(),
        &[2, 6, 4]
    );
    assert_eq!(
        run(&GlobalAvgPool, &[x.reshape((1, 2, 3, 4)).unwrap()])
            .unwrap()
            .dims(),
        &[1, 2]
    );
    close(
        &values(&run(&GlobalAvgPool, &[x.reshape((1, 2, 3, 4)).unwrap()]).unwrap()),
        &[5.5, 17.5],
    );
}

#[test]
fn pooling_values() {
    let x = Tensor::arange(0f32, 16.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 4, 4))
        .unwrap();
    close(
        &values(&run(&Pool2d::max(2, 2), std::slice::from_ref(&x)).unwrap()),
        &[5.0, 7.0, 13.0, 15.0],
    );
    let padded = Pool2d::new(PoolKind::Max, 3, 2, 1).unwrap();
    close(
        &values(&run(&padded, &[(x.clone() * -1.0).unwrap()]).unwrap()),
        &[0.0, -1.0, -4.0, -5.0],
    );
    let avg = Pool2d::new(PoolKind::Avg, 2, 2, 0).unwrap();
    close(
        &values(&run(&avg, std::slice::from_ref(&x)).unwrap()),
        &[2.5, 4.5, 10.5, 12.5],
    );
    assert!(Pool2d::new(PoolKind::Max, 2, 2, 2).is_err());
}

#[test]
fn embedding_and_norms() {
    let table = t(&[0.0, 1.0, 10.0, 11.0, 20.0, 21.0], &[3, 2]);
    let e = Embedding::from_tensor(table).unwrap();
    let ids = Tensor::new(&[[2u32, 0], [1, 1]], &Device::Cpu).unwrap();
    let y = run(&e, &[ids]).unwrap();
    assert_eq!(y.dims(), &[2, 2, 2]);
    close(&values(&y), &[20.0, 21.0, 0.0, 1.0, 10.0, 11.0, 10.0, 11.0]);

    let x = t(&[1.0, 2.0, 3.0, 4.0], &[1, 4]);
    let ln = LayerNorm::new(4, 0.0).unwrap();
    let std = (1.25f32).sqrt();
    close(
        &values(&run(&ln, std::slice::from_ref(&x)).unwrap()),
        &[-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std],
    );
    let rms = RmsNorm::from_tensor(t(&[1.0, 1.0, 2.0, 2.0], &[4]), 0.0).unwrap();
    let r = (7.5f32).sqrt();
    close(
        &values(&run(&rms, &[x]).unwrap()),
        &[1.0 / r, 2.0 / r, 6.0 / r, 8.0 / r],
    );
}

#[test]
fn linear_and_conv_validate_shapes() {
    let mut rng = gstick_nn::rng(0);
    assert!(Conv2d::new(
        3,
        4,
        3,
        Conv2dConfig {
            groups: 2,
            ..Default::default()
        },
        true,
        &mut rng
    )
    .is_err());
    let conv = Conv2d::new(2, 4, 3, Conv2dConfig::default(), true, &mut rng).unwrap();
    let wrong_channels = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let err = run(&conv, &[wrong_channels]).unwrap_err().to_string();
    assert!(err.contains("channels"), "{err}");
    let too_small = Tensor::zeros((1, 2, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(run(&conv, &[too_small]).is_err());
    let lin = Linear::new(3, 2, false, &mut rng).unwrap();
    assert!(run(
        &lin,
        &[Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap()]
    )
    .is_err());
    assert!(matches!(run(&lin, &[]), Err(Error::Arity { .. })));
}
