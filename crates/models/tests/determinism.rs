//! Same seed, same bits: LeNet-5 training through our conv / pool kernels and candle's GEMM gives
//! bit-identical weights whatever the number of threads.

use candle_core::{Device, Tensor};
use gstick_nn::kernels::set_kernel_threads;
use gstick_nn::optim::AdamW;
use gstick_nn::schedule::LrSchedule;
use gstick_nn::train::{Progress, Trainer};
use gstick_nn::{named_params, Network};
use rand::Rng as _;

fn data(seed: u64) -> (Tensor, Tensor) {
    let mut rng = gstick_nn::rng(seed);
    let n = 48;
    let x: Vec<f32> = (0..n * 28 * 28)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let y: Vec<u32> = (0..n).map(|_| rng.random_range(0..10)).collect();
    (
        Tensor::from_vec(x, (n, 1, 28, 28), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, n, &Device::Cpu).unwrap(),
    )
}

fn train(kernel_threads: usize, rayon_threads: usize) -> Vec<Vec<f32>> {
    set_kernel_threads(Some(kernel_threads));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon_threads)
        .build()
        .unwrap();
    let weights = pool.install(|| {
        let mut net: Network = gstick_models::lenet5(10, &mut gstick_nn::rng(1)).unwrap();
        let (x, y) = data(2);
        let mut trainer = Trainer::new(Box::new(AdamW::new(0.01)), LrSchedule::constant(1e-3));
        trainer.progress = Progress::Quiet;
        trainer
            .fit(&mut net, 2, 3, |_| {
                (0..3)
                    .map(|b| Ok((x.narrow(0, b * 16, 16)?, y.narrow(0, b * 16, 16)?)))
                    .collect::<Vec<_>>()
                    .into_iter()
            })
            .unwrap();
        named_params(&net)
            .iter()
            .map(|(_, p)| p.tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    });
    set_kernel_threads(None);
    weights
}

#[test]
fn lenet_training_is_bit_identical_for_any_thread_count() {
    let reference = train(1, 1);
    assert_eq!(reference, train(1, 1));
    assert_eq!(reference, train(2, 2), "2 kernel threads, 2 rayon threads");
    assert_eq!(reference, train(3, 1), "3 kernel threads (more than cores)");
    let untrained: Vec<Vec<f32>> =
        named_params(&gstick_models::lenet5(10, &mut gstick_nn::rng(1)).unwrap())
            .iter()
            .map(|(_, p)| p.tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
    assert_ne!(reference, untrained, "training changed the weights");
}
