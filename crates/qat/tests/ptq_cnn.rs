//! Static int8 post-training quantization of CNNs: calibration on a graph built here, and the
//! pretrained ccexam MNISTNet on mnist_5k through calibrate -> convert.

use gstick_data::{assets_dir, load_csv_images, Dataset};
use gstick_models::{lenet5, load_mnistnet, MNIST_MEAN, MNIST_STD};
use gstick_nn::train::evaluate;
use gstick_nn::CompAlgo;
use gstick_nn::{Executor, Mode};
use gstick_qat::{calibrate, CalibMethod, SimQat, SimQatConfig};

fn batches(
    d: &Dataset,
    size: usize,
) -> impl Iterator<Item = gstick_nn::Result<(candle_core::Tensor, candle_core::Tensor)>> + '_ {
    d.batches(size, None)
        .map(|b| b.map_err(|e| gstick_nn::Error::Config(e.to_string())))
}

#[test]
fn calibration_sets_ranges_from_data_and_restores_the_quantizers() {
    let mut net = lenet5(10, &mut gstick_nn::rng(0)).unwrap();
    SimQat::new(SimQatConfig::default())
        .unwrap()
        .apply(&mut net)
        .unwrap();
    let kinds_before: Vec<String> = net
        .nodes_recursive()
        .into_iter()
        .map(|(_, n)| n.kind().to_string())
        .collect();
    // Inputs in [0, 2): the input quantizer's range becomes [0, max) (0 is always included).
    let x = (gstick_nn::init::uniform(&[32, 1, 28, 28], 1.0, &mut gstick_nn::rng(3)).unwrap()
        + 1.0)
        .unwrap();
    let max = x.max_all().unwrap().to_scalar::<f32>().unwrap();
    let n = calibrate(
        &mut net,
        std::iter::once(Ok(x.clone())),
        CalibMethod::MinMax,
    )
    .unwrap();
    assert_eq!(n, 7);
    let kinds_after: Vec<String> = net
        .nodes_recursive()
        .into_iter()
        .map(|(_, n)| n.kind().to_string())
        .collect();
    assert_eq!(kinds_before, kinds_after, "observers swapped back");
    let fq = net
        .node(net.get("x_quant").unwrap())
        .unwrap()
        .cell()
        .unwrap();
    let fq = gstick_nn::cell::downcast::<gstick_qat::FakeQuant>(fq.as_ref()).unwrap();
    assert_eq!(
        fq.quantizer.min.tensor().to_vec1::<f32>().unwrap(),
        vec![0.0]
    );
    assert_eq!(
        fq.quantizer.max.tensor().to_vec1::<f32>().unwrap(),
        vec![max]
    );
    // A percentile range is inside the min/max one.
    let mut pnet = lenet5(10, &mut gstick_nn::rng(0)).unwrap();
    SimQat::new(SimQatConfig::default())
        .unwrap()
        .apply(&mut pnet)
        .unwrap();
    calibrate(
        &mut pnet,
        std::iter::once(Ok(x.clone())),
        CalibMethod::Percentile(99.0),
    )
    .unwrap();
    let fq = pnet
        .node(pnet.get("x_quant").unwrap())
        .unwrap()
        .cell()
        .unwrap();
    let fq = gstick_nn::cell::downcast::<gstick_qat::FakeQuant>(fq.as_ref()).unwrap();
    let pmax = fq.quantizer.max.tensor().to_vec1::<f32>().unwrap()[0];
    assert!(pmax < max && pmax > 0.9 * max, "{pmax} vs {max}");
    // Bad requests are refused with the field named.
    let e = calibrate(&mut pnet, std::iter::empty(), CalibMethod::MinMax)
        .unwrap_err()
        .to_string();
    assert!(e.contains("calib"), "{e}");
    let e = calibrate(
        &mut pnet,
        std::iter::once(Ok(x)),
        CalibMethod::Percentile(120.0),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("percentile"), "{e}");
    Executor::new(Mode::Eval, 0)
        .forward1(
            &net,
            &candle_core::Tensor::zeros(
                (1, 1, 28, 28),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
            .unwrap(),
        )
        .unwrap();
}

#[test]
fn ccexam_mnistnet_int8_ptq_scores_99_percent_on_mnist_5k() {
    let assets = assets_dir();
    let mut data = load_csv_images(&assets.join("mnist_5k.csv.gz"), 28, 28)
        .expect("run scripts/fetch-assets.sh");
    data.normalize(1.0 / 255.0, MNIST_MEAN, MNIST_STD);
    // Every 10th image (the file is sorted by label, so this covers every digit) calibrates.
    let (_, calib) = data.split_every(10);
    let mut net = load_mnistnet(&assets.join("ccexam/mnist.pth")).unwrap();
    let fp32 = evaluate(&net, batches(&data, 500)).unwrap().accuracy;
    let mut algo = SimQat::new(SimQatConfig::default()).unwrap();
    algo.apply(&mut net).unwrap();
    for method in [CalibMethod::MinMax, CalibMethod::Percentile(99.99)] {
        calibrate(
            &mut net,
            batches(&calib, 100).map(|b| b.map(|(x, _)| x)),
            method,
        )
        .unwrap();
        let fake = evaluate(&net, batches(&data, 500)).unwrap().accuracy;
        let mut deploy = net.clone();
        algo.convert(&mut deploy).unwrap();
        let int8 = evaluate(&deploy, batches(&data, 500)).unwrap().accuracy;
        eprintln!("ccexam MNISTNet mnist_5k: fp32 {fp32:.4}, {method:?} fake-quant {fake:.4}, int8 deploy {int8:.4}");
        assert!(int8 >= 0.99, "{method:?}: int8 accuracy {int8}");
        assert!(
            (int8 - fake).abs() <= 0.001,
            "{method:?}: deploy {int8} vs fake quant {fake}"
        );
    }
}
