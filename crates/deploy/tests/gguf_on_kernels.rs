//! SmolLM2's GGUF (Q4_1 Linears) on the integer kernels: every packed Linear holds exactly the
//! weight the float loader dequantizes (q/k rows un-permuted), and the logits agree.

use candle_core::{Device, Tensor};
use gstick_deploy::{load, load_gguf_on_kernels, PackedLinear};
use gstick_nn::cell::downcast;
use gstick_nn::cells::Linear;
use gstick_nn::{Executor, Mode};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[test]
fn packed_gguf_linears_equal_the_dequantized_ones() {
    let path = gstick_data::assets_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let packed = load_gguf_on_kernels(&path).expect("run scripts/fetch-assets.sh");
    let float = load(&path).unwrap();
    let report = packed.deploy.clone().unwrap();
    assert_eq!(report.layers, 30 * 7);
    assert!(float.deploy.is_none());
    let floats: std::collections::BTreeMap<String, Linear> = float
        .net
        .nodes_recursive()
        .into_iter()
        .filter_map(|(n, node)| {
            node.cell()
                .and_then(|c| downcast::<Linear>(c.as_ref()))
                .map(|l| (n, l.clone()))
        })
        .collect();
    let mut checked = 0;
    for (name, node) in packed.net.nodes_recursive() {
        let Some(p) = node
            .cell()
            .and_then(|c| downcast::<PackedLinear>(c.as_ref()))
        else {
            continue;
        };
        if !(name.contains("layers.0.") || name.contains("layers.29.")) {
            continue;
        }
        let mut rows = vec![0f32; p.packed.rows * p.packed.cols];
        p.packed.dequantize_rows(0, &mut rows);
        let w: Vec<f32> = floats[&name]
            .weight
            .tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            rows.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: the packed weight differs from the dequantized one"
        );
        assert_eq!(p.label, "Q4_1");
        checked += 1;
    }
    assert_eq!(checked, 14);
    // The same logits, up to the order of the sums.
    let ids: Vec<u32> = (0..40).map(|i| 100 + 37 * i).collect();
    let x = Tensor::from_vec(ids, (1, 40), &Device::Cpu).unwrap();
    let a = Executor::new(Mode::Eval, 0)
        .forward1(&float.net, &x)
        .unwrap();
    let b = Executor::new(Mode::Eval, 0)
        .forward1(&packed.net, &x)
        .unwrap();
    let diff = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = a
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-3 * scale, "logits differ by {diff} (max {scale})");
}
