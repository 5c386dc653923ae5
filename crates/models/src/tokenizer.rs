//! Tokenizers built from GGUF metadata (`tokenizer.ggml.*`), for byte-level BPE models
//! (`tokenizer.ggml.model` = "gpt2": SmolLM2, Qwen2, Llama 3).

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::gguf::Gguf;
use crate::{Error, Result};

/// A tokenizer with the special token ids the model declares.
pub struct TextTokenizer {
    pub inner: Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
}

impl TextTokenizer {
    /// Token ids of `text`, without special tokens (and with BOS first when the model asks for it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Config(format!("tokenizing: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids with the tokenizer's own special tokens and truncation (BERT: [CLS] ... [SEP]).
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Config(format!("tokenizing: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Config(format!("decoding: {e}")))
    }
}

fn strings(g: &Gguf, key: &str) -> Result<Vec<String>> {
    let arr = g
        .require(key)?
        .as_array()
        .ok_or_else(|| bad(g, format!("`{key}` is not an array")))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(g, format!("`{key}` holds a non-string")))
        })
        .collect()
}

fn bad(g: &Gguf, message: String) -> Error {
    Error::Load {
        path: g.path().display().to_string(),
        message,
    }
}

/// Builds the tokenizer of a GGUF file: BPE over the vocabulary and merges, digits split one by
/// one then byte-level pre-tokenization, byte-level decoding, control tokens as special tokens.
pub fn tokenizer_from_gguf(g: &Gguf) -> Result<TextTokenizer> {
    let model = g.require_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(bad(
            g,
            format!("tokenizer model `{model}` is not supported (gpt2 byte-level BPE is)"),
        ));
    }
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings(g, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| bad(g, format!("merge `{m}` is not two tokens")))
        })
        .collect::<Result<_>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| bad(g, format!("invalid BPE vocabulary: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let pre = Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ]);
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    // Control (3) and user-defined (4) tokens match as whole units, never split.
    if let Some(types) = g
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
    {
        let special: Vec<AddedToken> = types
            .iter()
            .zip(&tokens)
            .filter(|(ty, _)| matches!(ty.as_u64(), Some(3) | Some(4)))
            .map(|(_, t)| AddedToken::from(t.clone(), true))
            .collect();
        tok.add_special_tokens(special)
            .map_err(|e| bad(g, format!("special tokens: {e}")))?;
    }
    let id = |k: &str| g.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
    let add_bos = g
        .get("tokenizer.ggml.add_bos_token")
        .is_some_and(|v| *v == crate::gguf::MetaValue::Bool(true));
    Ok(TextTokenizer {
        inner: tok,
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        add_bos,
    })
}

/// Loads `tokenizer.json` from a Hugging Face directory; special ids come from `config.json`.
pub fn tokenizer_from_hf(ck: &crate::hf::HfCheckpoint) -> Result<TextTokenizer> {
    let path = ck.dir().join("tokenizer.json");
    let mut inner = Tokenizer::from_file(&path).map_err(|e| Error::Load {
        path: path.display().to_string(),
        message: format!("invalid tokenizer: {e}"),
    })?;
    // Sentence-embedding tokenizers often pad every input to a fixed length; we feed exact lengths.
    inner.with_padding(None);
    let id = |k: &str| ck.config[k].as_u64().map(|v| v as u32);
    Ok(TextTokenizer {
        inner,
        bos: id("bos_token_id"),
        eos: id("eos_token_id"),
        add_bos: false,
    })
}
