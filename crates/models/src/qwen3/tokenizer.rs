//! The Qwen3 tokenizer, built into the binary.
//!
//! ComfyUI ships the Qwen tokenizer inside its own code, so a ComfyUI models folder has no
//! `tokenizer.json` beside `qwen_3_4b.safetensors`. Veetance carries one too:
//! `data/qwen3_tokenizer.json.gz`, a `tokenizers`-crate `tokenizer.json` (NFC, Qwen2's split regex,
//! byte-level BPE with Qwen's 151,643 tokens and merges, Qwen3's 26 added tokens from
//! `<|endoftext|>` = 151643 to `</think>` = 151668), gzip-compressed (1.8 MB; 4.8 MB unpacked).
//! `.verify/files/make_tokenizer.py` builds it from ComfyUI's copy of the vocabulary (source and
//! commit recorded there) and checks it against two reference tokenizers; the fixture
//! `assets/files/qwen3_tokens.json` holds their token ids for the test here.
//!
//! It is unpacked and parsed once, on first use, and shared by every encoder.

use std::io::Read;
use std::sync::{Arc, OnceLock};

/// The gzip-compressed `tokenizer.json`.
const COMPRESSED: &[u8] = include_bytes!("../../data/qwen3_tokenizer.json.gz");

/// Where the built-in tokenizer comes from, for messages.
pub const BUILTIN_NAME: &str = "the built-in Qwen3 tokenizer";

/// How many ids the built-in tokenizer has (its highest is `</think>` = 151668); an embedding
/// table needs at least this many rows for it.
pub const BUILTIN_TOKENS: usize = 151_669;

/// The built-in Qwen3 tokenizer (unpacked and parsed on the first call, then shared).
pub fn builtin() -> Result<Arc<tokenizers::Tokenizer>, String> {
    static TOKENIZER: OnceLock<Result<Arc<tokenizers::Tokenizer>, String>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let mut json = Vec::with_capacity(5 << 20);
            flate2::read::GzDecoder::new(COMPRESSED)
                .read_to_end(&mut json)
                .map_err(|e| format!("{BUILTIN_NAME} could not be unpacked: {e}"))?;
            tokenizers::Tokenizer::from_bytes(&json)
                .map(Arc::new)
                .map_err(|e| format!("{BUILTIN_NAME} could not be read: {e}"))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Case {
        text: String,
        ids: Vec<u32>,
    }

    #[derive(serde::Deserialize)]
    struct Fixture {
        cases: Vec<Case>,
    }

    /// Token ids of varied texts (ASCII, accents composed and decomposed, CJK, Korean, Cyrillic,
    /// Greek, Arabic, Devanagari, emoji with joiners, digits, whitespace runs, contractions, the
    /// klein chat template with its special tokens) equal the reference tokenizers' ids.
    #[test]
    fn builtin_qwen3_tokenizer_gives_the_reference_token_ids() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../assets/files/qwen3_tokens.json"
        );
        let fixture: Fixture =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(fixture.cases.len() >= 20);
        let tokenizer = builtin().unwrap();
        for case in &fixture.cases {
            let enc = tokenizer.encode(case.text.as_str(), true).unwrap();
            assert_eq!(enc.get_ids(), case.ids.as_slice(), "{:?}", case.text);
        }
        for (token, id) in [
            ("<|endoftext|>", 151_643),
            ("<|im_start|>", 151_644),
            ("<|im_end|>", 151_645),
            ("<think>", 151_667),
            ("</think>", 151_668),
        ] {
            assert_eq!(tokenizer.token_to_id(token), Some(id), "{token}");
        }
        assert_eq!(tokenizer.get_vocab_size(true), BUILTIN_TOKENS);
        // Parsed once, then shared.
        assert!(Arc::ptr_eq(&tokenizer, &builtin().unwrap()));
    }
}
