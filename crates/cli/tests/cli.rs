//! The `gstick` binary as a user runs it, on the real assets (fetched by scripts/fetch-assets.sh).

use std::process::Command;

fn gstick(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gstick"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(stdout: &str) -> serde_json::Value {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one JSON line on stdout: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

#[test]
fn train_then_eval_a_checkpoint_with_json_output() {
    let dir = std::env::temp_dir().join(format!("gstick-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("lenet.safetensors");
    let ckpt_s = ckpt.to_str().unwrap();
    let (ok, out, err) = gstick(&[
        "train",
        "--model",
        "lenet5",
        "--dataset",
        "mnist5k",
        "--epochs",
        "2",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--nesterov",
        "--weight-decay",
        "1e-4",
        "--warmup-steps",
        "10",
        "--seed",
        "3",
        "--out",
        ckpt_s,
        "--json",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["samples"], 1000);
    let trained = v["accuracy"].as_f64().unwrap();
    assert!(trained > 0.8, "{v}");
    assert!(
        err.contains("\"event\":\"epoch\""),
        "JSON-lines progress on stderr when not a terminal: {err}"
    );

    let (ok, out, err) = gstick(&[
        "eval",
        "--model",
        "lenet5",
        "--dataset",
        "mnist5k",
        "--checkpoint",
        ckpt_s,
        "--json",
    ]);
    assert!(ok, "{err}");
    let e = json(&out);
    assert_eq!(e["samples"], 1000);
    assert_eq!(
        e["accuracy"].as_f64().unwrap(),
        trained,
        "the checkpoint reproduces the trained network"
    );

    // A checkpoint of another architecture is refused with the reason.
    let (ok, _, err) = gstick(&[
        "eval",
        "--model",
        "mnistnet",
        "--dataset",
        "mnist5k",
        "--checkpoint",
        ckpt_s,
    ]);
    assert!(!ok);
    assert!(err.contains("missing `features.0.weight`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_pretrained_ccexam_model() {
    let (ok, out, err) = gstick(&[
        "eval",
        "--model",
        "ccexam-mnist",
        "--dataset",
        "mnist5k",
        "--all",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["samples"], 5000);
    assert!(v["accuracy"].as_f64().unwrap() >= 0.99, "{v}");
}

#[test]
fn graph_table_dot_and_errors() {
    let (ok, out, err) = gstick(&["graph", "--model", "resnet20"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("layer2.0.downsample.0") && out.contains("BasicBlock"),
        "{out}"
    );
    let (ok, out, _) = gstick(&["graph", "--model", "resnet20", "--fuse-conv-bn"]);
    assert!(ok && !out.contains("BatchNorm2d"));
    let dot = std::env::temp_dir().join(format!("gstick-{}.dot", std::process::id()));
    let (ok, _, err) = gstick(&["graph", "--model", "lenet5", "--dot", dot.to_str().unwrap()]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&dot).unwrap();
    assert!(text.starts_with("digraph") && text.contains("conv1"));
    std::fs::remove_file(&dot).unwrap();
    // Wrong input size and bad settings are errors with a reason, not panics.
    let (ok, _, err) = gstick(&[
        "train",
        "--model",
        "lenet5",
        "--dataset",
        "digits",
        "--epochs",
        "1",
    ]);
    assert!(!ok && err.contains("28x28"), "{err}");
    let (ok, _, err) = gstick(&["train", "--epochs", "0"]);
    assert!(!ok && err.contains("at least 1"), "{err}");
    let (ok, _, err) = gstick(&["eval", "--model", "lenet5"]);
    assert!(!ok && err.contains("--checkpoint"), "{err}");
}

#[test]
fn resnet20_trains_on_digits() {
    let (ok, out, err) = gstick(&[
        "train",
        "--model",
        "resnet20",
        "--dataset",
        "digits",
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["samples"], 299);
    assert!(v["accuracy"].as_f64().unwrap() > 0.8, "{v}");
}
