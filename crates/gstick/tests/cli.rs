//! The `gstick` binary as a user runs it, on the real assets (fetched by scripts/fetch-assets.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

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

fn asset(rel: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/assets")
        .join(rel);
    let p = std::env::var_os("GSTICK_ASSETS").map_or(p, |d| std::path::PathBuf::from(d).join(rel));
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-assets.sh",
        p.display()
    );
    p.display().to_string()
}

#[test]
fn language_model_commands() {
    let model = asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let text = asset("wiki/eval.txt");
    // Perplexity of 2 windows of 256 tokens, with any further arguments.
    let ppl_with = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "ppl",
            "--model",
            &model,
            "--text",
            &text,
            "--seqlen",
            "256",
            "--windows",
            "2",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = gstick(&args);
        assert!(ok, "{err}");
        json(&out)
    };
    let v = ppl_with(&[]);
    assert_eq!(
        (v["tokens"].as_u64(), v["windows"].as_u64()),
        (Some(512), Some(2))
    );
    let ppl = v["ppl"].as_f64().unwrap();
    assert!(ppl > 2.0 && ppl < 40.0, "{v}");
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(v["compute"], "f32");

    // bf16 arithmetic (AMX tiles where present, emulated elsewhere) changes perplexity by a
    // fraction of a percent, and the report says where it ran.
    let bf16 = ppl_with(&["--compute", "bf16"]);
    assert!(bf16["compute"].as_str().unwrap().contains("bf16"), "{bf16}");
    let change = bf16["ppl"].as_f64().unwrap() / ppl - 1.0;
    assert!(
        change.abs() < 0.005 && change != 0.0,
        "bf16 changed perplexity by {change}"
    );

    let (ok, out, err) = gstick(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "3",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("The capital of France is Paris"), "{out}");
    // The batch-1 decoder ran it (a fallback to the executor would say so).
    assert!(!err.contains("graph executor"), "{err}");

    // Decode speed of each weight variant, on the decoder; the llama.cpp baseline is optional.
    let (ok, out, err) = gstick(&[
        "bench",
        "decode",
        "--model",
        &model,
        "--tokens",
        "6",
        "--no-llama-cpp",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    for key in ["fp32", "w8", "w4"] {
        assert!(
            v[format!("{key}_tokens_per_s")].as_f64().unwrap() > 0.0,
            "{v}"
        );
    }
    assert_eq!(v["prompt_tokens"].as_u64(), Some(16), "{v}");
    assert_eq!(v["quantized_head"], "int8");

    // GPTQ time, the llm-compressor baseline skipped.
    let (ok, out, err) = gstick(&[
        "bench",
        "gptq",
        "--model",
        &model,
        "--calib",
        &text,
        "--nsamples",
        "1",
        "--seqlen",
        "64",
        "--no-llm-compressor",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert!(v["gstick_seconds"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(
        (v["bits"].as_u64(), v["group"].as_u64()),
        (Some(4), Some(64))
    );

    let (ok, _, err) = gstick(&[
        "eval",
        "ppl",
        "--model",
        &model,
        "--text",
        &text,
        "--seqlen",
        "2048",
        "--windows",
        "100000",
    ]);
    assert!(!ok && err.contains("whole window(s) of 2048"), "{err}");
    let (ok, _, err) = gstick(&["convert", "--model", &model, "--out", &text]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = gstick(&["generate", "--model", &text, "--prompt", "hi"]);
    assert!(!ok && err.contains("not a GGUF file"), "{err}");
}

#[test]
fn embedding_fidelity_of_a_model_with_itself() {
    let minilm = asset("minilm");
    let dir = std::env::temp_dir().join(format!("gstick-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("sentences.txt");
    std::fs::write(
        &text,
        "A cat sits on the mat.\n\nQuantization makes models smaller.\n",
    )
    .unwrap();
    let (ok, out, err) = gstick(&[
        "eval",
        "embed",
        "--model",
        &minilm,
        "--ref",
        &minilm,
        "--text",
        text.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["sentences"], 2);
    assert!(v["min_cosine"].as_f64().unwrap() > 0.999999, "{v}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Dynamic A8W8 on MiniLM (RTN int8 weights per channel, int8 activations per token, computed on
/// the int8 kernel) keeps its sentence embeddings: mean cosine to the float model at least 0.99,
/// on sentences of the wiki evaluation text.
#[test]
fn minilm_w8a8_dynamic_keeps_its_sentence_embeddings() {
    let minilm = asset("minilm");
    let dir = std::env::temp_dir().join(format!("gstick-embed-a8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wiki = std::fs::read_to_string(asset("wiki/eval.txt")).unwrap();
    let sentences: Vec<&str> = wiki
        .split(". ")
        .map(str::trim)
        .filter(|s| (40..300).contains(&s.len()) && !s.contains('\n'))
        .take(200)
        .collect();
    assert_eq!(sentences.len(), 200);
    let text = dir.join("sentences.txt");
    std::fs::write(&text, sentences.join("\n")).unwrap();
    let recipe = root().join("examples/recipes/w8a8_dynamic.yaml");
    let run = |recipe: &Path| {
        gstick(&[
            "eval",
            "embed",
            "--model",
            &minilm,
            "--ref",
            &minilm,
            "--text",
            text.to_str().unwrap(),
            "--recipe",
            recipe.to_str().unwrap(),
            "--json",
        ])
    };
    let (ok, out, err) = run(&recipe);
    assert!(ok, "{err}");
    let v = json(&out);
    eprintln!("MiniLM W8A8 dynamic: {v}");
    assert_eq!(v["sentences"], 200);
    // Six encoder layers of six Linears each.
    assert_eq!(v["quantized_linears"], 36, "{v}");
    assert_eq!(
        v["quantization"],
        serde_json::json!(["W8-per_channel-A8-per_token"])
    );
    let mean = v["mean_cosine"].as_f64().unwrap();
    assert!((0.99..1.0).contains(&mean), "{v}");
    // Recipes that need calibration are refused, naming why.
    let (ok, _, err) = run(&root().join("examples/recipes/w8a8_static_smooth.yaml"));
    assert!(!ok && err.contains("calibration"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quantize_writes_a_gguf_with_a_report_and_refuses_bad_requests() {
    let model = asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let calib = asset("wiki/calib.txt");
    let dir = std::env::temp_dir().join(format!("gstick-cli-quantize-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("w8");
    let report = dir.join("report.json");
    let (ok, stdout, err) = gstick(&[
        "quantize",
        "--model",
        &model,
        "--algo",
        "rtn",
        "--bits",
        "8",
        "--calib",
        &calib,
        "--nsamples",
        "1",
        "--seqlen",
        "64",
        "--format",
        "gguf",
        "--out",
        out.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("W8-per_channel"), "no summary table: {err}");
    let v = json(&stdout);
    assert_eq!(v["config"], "W8-per_channel");
    assert_eq!(v["export"]["max_abs_deviation"], 0.0);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["layers"].as_array().unwrap().len(), 30);
    assert!(out.join("model.gguf").exists());

    // The output exists now: a second run must refuse instead of overwriting it.
    let (ok, _, err) = gstick(&[
        "quantize",
        "--model",
        &model,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("already exists"), "{err}");
    // Invalid settings fail before any work, naming what is wrong.
    let (ok, _, err) = gstick(&[
        "quantize",
        "--model",
        &model,
        "--bits",
        "5",
        "--out",
        dir.join("x").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--bits 5"), "{err}");
    let (ok, _, err) = gstick(&[
        "quantize",
        "--model",
        &model,
        "--algo",
        "gptq",
        "--bits",
        "4",
        "--group",
        "64",
        "--out",
        dir.join("y").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--calib"), "{err}");
    let (ok, _, err) = gstick(&[
        "quantize",
        "--model",
        &model,
        "--bits",
        "4",
        "--group",
        "48",
        "--out",
        dir.join("z").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("group_size"), "{err}");
    // A GPTQ setting asked of another algorithm, or beside a recipe, is refused, not ignored.
    let (ok, _, err) = gstick(&[
        "quantize",
        "--model",
        &model,
        "--algo",
        "rtn",
        "--sink-share",
        "0.3",
        "--out",
        dir.join("s").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("--sink-share") && err.contains("--algo gptq"),
        "{err}"
    );
    let (ok, _, err) = gstick(&[
        "quantize",
        "--model",
        &model,
        "--recipe",
        "any.yaml",
        "--damp",
        "0.1",
        "--out",
        dir.join("d").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("--damp") && err.contains("--recipe"),
        "{err}"
    );
    for name in ["s", "d"] {
        assert!(!dir.join(name).exists(), "{name} was written");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quantize_refuses_what_is_not_implemented_and_writes_nothing() {
    let model = asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let calib = asset("wiki/calib.txt");
    let dir = std::env::temp_dir().join(format!("gstick-cli-refuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Each is a configuration the original accepts; none may turn into a weight-only model.
    let cases = [
        (
            "smooth.yaml",
            "outliers_suppression: smooth\nweight_quant_dtype: int8\n",
            "outliers_suppression",
            "not implemented",
        ),
        (
            "osp.toml",
            "act_quant_dtype = \"int8\"\noutliers_suppression = \"outlier-suppression+\"\n",
            "outliers_suppression",
            "not implemented",
        ),
        (
            "a8w4.yaml",
            "weight_quant_dtype: int4\nweight_quant_granularity: per_group\ngroup_size: 64\n\
             precision_recovery: gptq\nact_quant_dtype: int8\nact_quant_granularity: per_token\n\
             gptq:\n  desc_act: false\n",
            "gptq.desc_act",
            // The original's own rule (spec §3.8).
            "needs GPTQ with act-order",
        ),
        (
            "policy.yaml",
            "weight_quant_dtype: int8\n\
             layer_policies:\n  - pattern: 'model\\.layers\\.0\\.'\n    weight_quant_dtype: int8\n    \
             act_quant_dtype: int8\n    outliers_suppression: outlier-suppression+\n",
            "outliers_suppression",
            "not implemented",
        ),
    ];
    for (name, text, field, why) in cases {
        let recipe = dir.join(name);
        std::fs::write(&recipe, text).unwrap();
        let out = dir.join(format!("{name}.out"));
        let (ok, _, err) = gstick(&[
            "quantize",
            "--model",
            &model,
            "--recipe",
            recipe.to_str().unwrap(),
            "--calib",
            &calib,
            "--nsamples",
            "1",
            "--seqlen",
            "64",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!ok, "{name} was accepted");
        assert!(err.contains(field) && err.contains(why), "{name}: {err}");
        assert!(!out.exists(), "{name}: an output directory was written");
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| {
            !n.to_string_lossy().ends_with(".yaml") && !n.to_string_lossy().ends_with(".toml")
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_yaml_recipe_quantizes_to_gs_and_the_directory_runs_on_the_integer_kernels() {
    let model = asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let calib = asset("wiki/calib.txt");
    let text = asset("wiki/eval.txt");
    let dir = std::env::temp_dir().join(format!("gstick-cli-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // int4 groups of 64 everywhere, int8 per channel for the MLP down projections.
    let recipe = dir.join("recipe.yaml");
    std::fs::write(
        &recipe,
        "weight_quant_dtype: int4\nweight_quant_granularity: per_group\ngroup_size: 64\n\
         layer_policies:\n  - pattern: 'model\\.layers\\.\\d+\\.mlp\\.down_proj'\n    \
         weight_quant_dtype: int8\n    weight_quant_granularity: per_channel\n    group_size: 0\n",
    )
    .unwrap();
    let out = dir.join("gs");
    let (ok, stdout, err) = gstick(&[
        "quantize",
        "--model",
        &model,
        "--recipe",
        recipe.to_str().unwrap(),
        "--calib",
        &calib,
        "--nsamples",
        "1",
        "--seqlen",
        "64",
        "--format",
        "gs",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("W8-per_channel") && err.contains("W4-per_group"),
        "{err}"
    );
    assert_eq!(json(&stdout)["config"], "W4-per_group");

    // Loading the directory deploys it: every quantized Linear packed, 7 per layer.
    let ppl_of = |m: &str| {
        let (ok, out, err) = gstick(&[
            "eval",
            "ppl",
            "--model",
            m,
            "--text",
            &text,
            "--seqlen",
            "256",
            "--windows",
            "2",
            "--json",
        ]);
        assert!(ok, "{err}");
        (json(&out)["ppl"].as_f64().unwrap(), err)
    };
    let (quant, err) = ppl_of(out.to_str().unwrap());
    assert!(err.contains("deploy: 210 Linear layers"), "{err}");
    let (float, _) = ppl_of(&model);
    assert!(
        quant > float && quant < float * 1.5,
        "float {float}, int4/int8 {quant}"
    );
    // bf16 arithmetic is for float Linears: asked of the integer kernels, it is refused.
    let (ok, _, err) = gstick(&[
        "eval",
        "ppl",
        "--model",
        out.to_str().unwrap(),
        "--text",
        &text,
        "--compute",
        "bf16",
    ]);
    assert!(
        !ok && err.contains("--compute bf16 applies to float models"),
        "{err}"
    );
    let (ok, generated, err) = gstick(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "3",
    ]);
    assert!(ok, "{err}");
    assert!(
        generated.starts_with("The capital of France is"),
        "{generated}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn qat_and_ptq_cnn_report_float_fake_quant_and_int8_accuracy() {
    let dir = std::env::temp_dir().join(format!("gstick-cli-qat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("qat");
    let (ok, stdout, err) = gstick(&[
        "qat",
        "--model",
        "lenet5",
        "--limit",
        "6000",
        "--fp32-epochs",
        "1",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("DenseQuant"), "no summary: {err}");
    let v = json(&stdout);
    let (fp32, deploy) = (
        v["fp32_accuracy"].as_f64().unwrap(),
        v["deploy_accuracy"].as_f64().unwrap(),
    );
    assert!(fp32 > 0.6 && deploy > fp32 - 0.03, "{v}");
    assert!(v["quant_accuracy"].as_f64().is_some());
    for f in [
        "fp32.safetensors",
        "qat.safetensors",
        "model.onnx",
        "report.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let (ok, _, err) = gstick(&["qat", "--out", out.to_str().unwrap()]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = gstick(&[
        "qat",
        "--model",
        "ccexam-mnist",
        "--out",
        dir.join("x").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("ptq-cnn"), "{err}");

    let out = dir.join("ptq");
    let (ok, stdout, err) = gstick(&[
        "ptq-cnn",
        "--model",
        "ccexam-mnist",
        "--dataset",
        "mnist5k",
        "--calib",
        "200",
        "--all",
        "--method",
        "percentile",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let v = json(&stdout);
    assert!(v["deploy_accuracy"].as_f64().unwrap() >= 0.99, "{v}");
    assert_eq!(v["samples"], 5000);
    let (ok, _, err) = gstick(&[
        "ptq-cnn",
        "--model",
        "lenet5",
        "--out",
        dir.join("y").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--checkpoint"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
