#!/usr/bin/env python3
"""Builds the Qwen3 tokenizer Veetance embeds, and the token-id fixture that checks it.

Source of the vocabulary and merges (Qwen2/2.5/3 share them: 151,643 byte-level BPE tokens):
ComfyUI's own copy, which is what ComfyUI tokenizes Qwen3 prompts with,
  https://github.com/Comfy-Org/ComfyUI  commit a125cd84b054a57729b5eecab930ca9408719832
  comfy/text_encoders/qwen25_tokenizer/{vocab.json,merges.txt}  (files last changed in ec70ed6a)
read from a checkout given as the first argument, e.g.
  git -C <ComfyUI> show HEAD:comfy/text_encoders/qwen25_tokenizer/vocab.json > /tmp/qwen_tok/vocab.json
  (same for merges.txt), then: make_tokenizer.py /tmp/qwen_tok

The added tokens are Qwen3's (ids 151643..151668, from Qwen3's tokenizer_config.json): ComfyUI's
folder is Qwen2.5-VL's, whose ids 151665..151668 are <|img|>, <|endofimg|>, <|meta|>,
<|endofmeta|>; Qwen3 (and so diffusers and BFL for klein) has <tool_response>, </tool_response>,
<think>, </think> there. The klein chat template contains <think> and </think>, so they matter.

Writes
* crates/models/data/qwen3_tokenizer.json.gz: a `tokenizers`-crate tokenizer.json (NFC normaliser,
  Qwen2's split regex then byte-level, BPE, byte-level decoder, the added tokens), gzip level 9;
* assets/files/qwen3_tokens.json: token ids of ~20 varied texts from two reference tokenizers
  that must agree: a byte-level BPE written here in plain Python (NFC, added-token split, Qwen2's
  regex via the `regex` module, GPT-2's bytes-to-unicode, merge ranks; independent of the
  `tokenizers` crate), and transformers' Qwen2Tokenizer built from the same vocab/merges.
The written tokenizer.json is also checked against them with the Python `tokenizers` package.
"""

import gzip
import json
import os
import sys
import unicodedata

import regex

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT_TOKENIZER = os.path.join(ROOT, "crates", "models", "data", "qwen3_tokenizer.json.gz")
OUT_FIXTURE = os.path.join(ROOT, "assets", "files", "qwen3_tokens.json")

# Qwen2's pre-tokenizer pattern (tokenizer.json of Qwen2/2.5/3).
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen3's added tokens: (content, special) in id order from 151643.
ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
FIRST_ADDED = 151643

TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

TEXTS = [
    "a red fox sitting in the snow at dawn",
    "A photo of a cat on a windowsill, soft light, 85mm, f/1.8",
    "Numbers: 0 12 345 6789 3.14159 1,000,000 2024-06-01",
    "   leading and trailing spaces   ",
    "tabs\tand\t\tnew\nlines\n\n\nand\r\nwindows line ends",
    "many     spaces    between  words",
    "I'm sure they'LL say it's what we'd DONE, isn't it?",
    "Café, naïve, résumé, Ångström, façade",
    "Cafe\u0301 (decomposed) and \u212b (angstrom sign) before NFC",
    "一只在雪地里的红狐狸，黎明时分。",
    "東京の夜景、ネオンサイン、雨上がりの路地",
    "서울의 봄, 벚꽃이 핀 거리",
    "Привет, мир! Ελληνικά και العربية और हिन्दी",
    "emoji: 🦊❄️🌅 family 👨‍👩‍👧‍👦 flags 🇯🇵🇫🇷",
    "punctuation!!! ??? ... --- *** ((nested)) [brackets] {braces} <angle>",
    'code: fn main() { println!("hi {}", 42); } // done',
    "a <think> tag and <|im_end|> inside a user prompt",
    "",
    TEMPLATE.format("a red fox sitting in the snow at dawn"),
    TEMPLATE.format("masterpiece, best quality, 1girl, looking at viewer, 城市的夜晚 🌃"),
]


def bytes_to_unicode():
    """GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class ReferenceBpe:
    """Byte-level BPE as Qwen2's slow tokenizer does it, in plain Python."""

    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
        self.byte_map = bytes_to_unicode()
        self.pattern = regex.compile(PATTERN)
        self.added = {c: FIRST_ADDED + i for i, (c, _) in enumerate(ADDED)}
        # Longest first, so that no added token hides a longer one.
        self.added_re = regex.compile("|".join(regex.escape(c) for c in sorted(self.added, key=len, reverse=True)))
        self.cache = {}

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == float("inf"):
                break
            first, second = parts[i], parts[i + 1]
            merged, j = [], 0
            while j < len(parts):
                if j < len(parts) - 1 and parts[j] == first and parts[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def encode_plain(self, text):
        text = unicodedata.normalize("NFC", text)
        ids = []
        for piece in self.pattern.findall(text):
            word = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab[p] for p in self.bpe(word))
        return ids

    def encode(self, text):
        ids, pos = [], 0
        for m in self.added_re.finditer(text):
            ids.extend(self.encode_plain(text[pos:m.start()]))
            ids.append(self.added[m.group(0)])
            pos = m.end()
        ids.extend(self.encode_plain(text[pos:]))
        return ids


def tokenizer_json(vocab, merges):
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": FIRST_ADDED + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": special}
            for i, (c, special) in enumerate(ADDED)
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab, "merges": merges,
        },
    }


def main(src):
    with open(os.path.join(src, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(src, "merges.txt"), encoding="utf-8") as f:
        merges = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#version")]
    assert len(vocab) == FIRST_ADDED and max(vocab.values()) == FIRST_ADDED - 1, len(vocab)
    print(f"vocab {len(vocab)}, merges {len(merges)}")

    reference = ReferenceBpe(vocab, merges)
    ids_a = [reference.encode(t) for t in TEXTS]

    from transformers import Qwen2Tokenizer
    # transformers 5's Qwen2Tokenizer adds <|endoftext|> itself (as the next id, 151643).
    hf = Qwen2Tokenizer(vocab=dict(vocab), merges=[tuple(m.split(" ")) for m in merges])
    hf.add_tokens([c for c, _ in ADDED[1:]], special_tokens=False)
    for c, _ in ADDED:
        assert hf.convert_tokens_to_ids(c) == reference.added[c], c
    ids_b = [hf.encode(t, add_special_tokens=False) for t in TEXTS]
    for t, a, b in zip(TEXTS, ids_a, ids_b):
        assert a == b, f"the two references disagree on {t!r}:\n{a}\n{b}"

    data = json.dumps(tokenizer_json(vocab, merges), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    from tokenizers import Tokenizer
    ours = Tokenizer.from_str(data.decode("utf-8"))
    for t, a in zip(TEXTS, ids_a):
        got = ours.encode(t, add_special_tokens=True).ids
        assert got == a, f"our tokenizer.json differs on {t!r}:\n{got}\n{a}"
        assert ours.decode(got, skip_special_tokens=False) == unicodedata.normalize("NFC", t), t

    os.makedirs(os.path.dirname(OUT_TOKENIZER), exist_ok=True)
    with open(OUT_TOKENIZER, "wb") as f:
        f.write(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"wrote {os.path.relpath(OUT_TOKENIZER, ROOT)}: {len(data)} bytes of json, "
          f"{os.path.getsize(OUT_TOKENIZER)} gzipped")
    fixture = {
        "source": "Comfy-Org/ComfyUI a125cd84 comfy/text_encoders/qwen25_tokenizer + Qwen3 added tokens",
        "references": "plain-Python byte-level BPE (.verify/files/make_tokenizer.py) == transformers Qwen2Tokenizer",
        "cases": [{"text": t, "ids": a} for t, a in zip(TEXTS, ids_a)],
    }
    with open(OUT_FIXTURE, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=0)
    print(f"wrote {os.path.relpath(OUT_FIXTURE, ROOT)} ({os.path.getsize(OUT_FIXTURE)} bytes), "
          f"{sum(map(len, ids_a))} tokens")


if __name__ == "__main__":
    main(sys.argv[1])
