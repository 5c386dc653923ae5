//! MiniLM sentence embeddings against sentence-transformers' values (fixtures made with
//! `transformers` by scripts/golden/make_llm_fixtures.py).

use std::path::Path;

use gstick_models::bert::load_bert_embedder;
use gstick_models::hf::HfCheckpoint;
use gstick_models::tokenizer::tokenizer_from_hf;
use gstick_nn::{Executor, Mode};

#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let dir = gstick_data::assets_dir().join("minilm");
    assert!(
        dir.join("model.safetensors").exists(),
        "assets missing: run scripts/fetch-assets.sh"
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/minilm_embeddings.json");
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (net, config) = load_bert_embedder(&dir).unwrap();
    assert_eq!((config.layers, config.hidden, config.heads), (6, 384, 12));
    let tokenizer = tokenizer_from_hf(&HfCheckpoint::open(&dir).unwrap()).unwrap();
    let mut exec = Executor::new(Mode::Eval, 0);
    let mut worst = 1f64;
    for (i, sentence) in f["sentences"].as_array().unwrap().iter().enumerate() {
        let expected_ids: Vec<u32> = f["input_ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tokenizer
            .encode_with_special(sentence.as_str().unwrap())
            .unwrap();
        assert_eq!(ids, expected_ids, "tokens of sentence {i}");
        let ours = gstick_eval::embed(&mut exec, &net, &ids).unwrap();
        let reference: Vec<f32> = f["embeddings"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        worst = worst.min(gstick_eval::cosine(&ours, &reference));
    }
    eprintln!("MiniLM: minimum cosine to sentence-transformers {worst:.8}");
    assert!(worst >= 0.99999, "minimum cosine {worst}");
    // A model compared with itself is perfectly faithful.
    let ids: Vec<Vec<u32>> = (0..3)
        .map(|i| {
            tokenizer
                .encode_with_special(f["sentences"][i].as_str().unwrap())
                .unwrap()
        })
        .collect();
    let same = gstick_eval::embedding_fidelity(&net, &net, &ids).unwrap();
    assert!((same.min_cosine - 1.0).abs() < 1e-12);
}
