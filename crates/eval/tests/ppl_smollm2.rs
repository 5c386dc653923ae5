//! SmolLM2 perplexity on the wiki evaluation text (seqlen 2048, first 8 windows) against the value
//! `transformers` gives for the same windows (tests/fixtures/smollm2_ppl.json of gstick-models).

use std::path::Path;

use gstick_models::gguf::Gguf;
use gstick_models::llama::load_llama_gguf;
use gstick_models::tokenizer::tokenizer_from_gguf;

// Large short-lived tensors: reuse freed memory instead of faulting in fresh pages (see the CLI).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[test]
fn perplexity_matches_transformers_within_0_1_percent() {
    let assets = gstick_data::assets_dir();
    let model = assets.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let text = assets.join("wiki/eval.txt");
    assert!(
        model.exists() && text.exists(),
        "assets missing: run scripts/fetch-assets.sh"
    );
    let fixture_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/smollm2_ppl.json");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_path).unwrap()).unwrap();

    let gguf = Gguf::open(&model).unwrap();
    let tokenizer = tokenizer_from_gguf(&gguf).unwrap();
    let (net, _) = load_llama_gguf(&gguf).unwrap();
    let ids = tokenizer
        .encode(&std::fs::read_to_string(&text).unwrap())
        .unwrap();
    assert_eq!(
        ids.len() as u64,
        fixture["tokens_total"].as_u64().unwrap(),
        "the whole text tokenizes identically"
    );

    let report = gstick_eval::perplexity(&net, &ids, 2048, Some(8), |_, _| {}).unwrap();
    let reference = fixture["ppl"].as_f64().unwrap();
    let rel = (report.ppl - reference).abs() / reference;
    eprintln!(
        "SmolLM2 ppl {:.5} vs transformers {reference:.5} (relative {rel:.2e}); {:.0} tokens/s",
        report.ppl, report.tokens_per_s
    );
    assert_eq!(report.predicted, 8 * 2047);
    for (w, (ours, theirs)) in report
        .window_nll
        .iter()
        .zip(fixture["nll_per_window"].as_array().unwrap())
        .enumerate()
    {
        assert!(
            (ours - theirs.as_f64().unwrap()).abs() < 1e-4,
            "window {w}: {ours} vs {theirs}"
        );
    }
    assert!(rel < 1e-3, "perplexity {} vs {reference}", report.ppl);

    // Layer by layer from the file (the calibration path's forward), the same numbers to the
    // bit: every layer sees exactly what it sees inside the whole network at 2048 tokens.
    let src = gstick_models::llama::GgufWeights::new(&gguf).unwrap();
    let mut lm = gstick_models::layerwise::LayerwiseLm::new(src.config.clone(), src).unwrap();
    let layerwise =
        gstick_eval::perplexity_layerwise(&mut lm, &ids, 2048, Some(2), |_, _| {}).unwrap();
    assert_eq!(layerwise.window_nll, report.window_nll[..2]);
}

#[test]
fn too_few_tokens_is_a_clear_error() {
    // Any network will do: the check happens before the first forward pass.
    let net = gstick_nn::Network::new();
    let err = gstick_eval::perplexity(&net, &[1, 2, 3], 2048, Some(1), |_, _| {}).unwrap_err();
    assert!(
        err.to_string().contains("0 whole window(s) of 2048"),
        "{err}"
    );
    let err = gstick_eval::perplexity(&net, &[1, 2, 3], 1, None, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("at least 2"), "{err}");
}
