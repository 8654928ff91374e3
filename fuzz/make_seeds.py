#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/: small hand-made inputs of each format, and
copies of the repo's own small workflows and fixtures. Run from anywhere; it rewrites only the
files it names (a campaign's own finds, kept by `.verify/fuzz.sh --keep`, stay).

    python3 fuzz/make_seeds.py
"""

import json
import shutil
import struct
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def copy(target, src, name=None):
    put(target, name or Path(src).name, (ROOT / src).read_bytes())


# ---------------------------------------------------------------- .ron workflows
for ron in sorted((ROOT / "workflows").glob("*.ron")):
    copy("workflow_ron", ron.relative_to(ROOT))
put("workflow_ron", "layout_groups.ron", """(
    version: 1,
    description: Some("hand-made: every section"),
    nodes: [
        (id: "g", type: "GradientImage", params: {"width": 64, "height": 32, "flag": true, "f": 1.5, "s": "x"}),
        (id: "save", type: "SaveImage", params: {"filename_prefix": "a\\"b"}),
    ],
    links: [(from: ("g", "image"), to: ("save", "images"))],
    layout: Some((positions: {"g": (0.0, -1.5), "save": (320.0, 0.0)}, groups: [(title: "G", rect: (0.0, 0.0, 10.0, 10.0), color: Some("#ff0000"))])),
)
""")
put("workflow_ron", "newer_version.ron", "(version: 7, nodes: [])\n")
put("workflow_ron", "bad_id.ron", '(version: 1, nodes: [(id: "a b", type: "X"), (id: "a b", type: "Y")])\n')

# ---------------------------------------------------------------- ComfyUI JSON
api = json.loads((ROOT / "tests/python/fixtures/klein_tiny_api.json").read_text())
put("comfy_json", "klein_tiny_api.json", json.dumps(api))


def ui_node(i, ty, mode=0, inputs=(), outputs=(), widgets=None, **extra):
    n = {"id": i, "type": ty, "mode": mode, "pos": [i * 10, i * 20],
         "inputs": list(inputs), "outputs": list(outputs)}
    if widgets is not None:
        n["widgets_values"] = widgets
    n.update(extra)
    return n


def inp(name, ty, link, widget=False):
    d = {"name": name, "type": ty, "link": link}
    if widget:
        d["widget"] = {"name": name}
    return d


def out(name, ty, links):
    return {"name": name, "type": ty, "links": links}


ui = {
    "version": 0.4,
    "nodes": [
        ui_node(1, "UNETLoader", outputs=[out("MODEL", "MODEL", [1])], widgets=["m.safetensors", "default"]),
        ui_node(2, "CLIPLoader", outputs=[out("CLIP", "CLIP", [2, 3])], widgets=["te.safetensors", "flux2", "default"]),
        ui_node(3, "CLIPTextEncode", inputs=[inp("clip", "CLIP", 2)], outputs=[out("CONDITIONING", "CONDITIONING", [4])], widgets=["a fox"]),
        ui_node(4, "CLIPTextEncode", mode=4, inputs=[inp("clip", "CLIP", 3)], outputs=[out("CONDITIONING", "CONDITIONING", [])], widgets=[""]),
        ui_node(5, "CFGGuider", inputs=[inp("model", "MODEL", 1), inp("positive", "CONDITIONING", 4), inp("negative", "CONDITIONING", None)], outputs=[out("GUIDER", "GUIDER", [5])], widgets=[4.5]),
        ui_node(6, "PrimitiveNode", outputs=[out("INT", "INT", [6])], widgets=[42, "fixed"]),
        ui_node(7, "sg-seed", inputs=[inp("seed", "INT", 6, widget=True)], outputs=[out("NOISE", "NOISE", [7])], widgets=[]),
        ui_node(8, "SamplerCustomAdvanced", inputs=[inp("noise", "NOISE", 7), inp("guider", "GUIDER", 5)]),
        ui_node(9, "Note", widgets=["just a note"]),
        ui_node(10, "Reroute", inputs=[inp("", "*", None)], outputs=[out("", "*", [])]),
    ],
    "links": [[1, 1, 0, 5, 0, "MODEL"], [2, 2, 0, 3, 0, "CLIP"], [3, 2, 0, 4, 0, "CLIP"],
              [4, 3, 0, 5, 1, "CONDITIONING"], [5, 5, 0, 8, 1, "GUIDER"], [6, 6, 0, 7, 0, "INT"],
              [7, 7, 0, 8, 0, "NOISE"]],
    "definitions": {"subgraphs": [{
        "id": "sg-seed", "name": "Seeded",
        "inputs": [{"id": "a", "name": "seed", "type": "INT", "linkIds": [10]}],
        "outputs": [{"id": "c", "name": "NOISE", "type": "NOISE", "linkIds": [12]}],
        "nodes": [ui_node(1, "RandomNoise", inputs=[inp("noise_seed", "INT", 10, widget=True)],
                          outputs=[out("NOISE", "NOISE", [12])], widgets=[5, "randomize"])],
        "links": [
            {"id": 10, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "INT"},
            {"id": 12, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "NOISE"},
        ],
    }]},
    "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
}
put("comfy_json", "ui_subgraph.json", json.dumps(ui))
put("comfy_json", "ui_widgets_by_name.json", json.dumps({"version": 0.4, "nodes": [
    ui_node(1, "EmptyFlux2LatentImage", widgets={"height": 512, "width": 256, "batch_size": 2}),
    ui_node(2, "SaveImage", inputs=[inp("images", "IMAGE", None)], widgets=[["a", "b"]]),
], "links": []}))
put("comfy_json", "api_unknown_class.json", json.dumps({"1": {"class_type": "KSampler", "inputs": {"seed": 1}}}))

# ---------------------------------------------------------------- PNG
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width, height, color_type, bit_depth, rows, extra=(), interlace=0, trailing=()):
    """rows: raw scanlines without filter bytes."""
    raw = b"".join(b"\x00" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace))
    for c in extra:
        out += c
    out += chunk(b"IDAT", zlib.compress(raw))
    for c in trailing:
        out += c
    return out + chunk(b"IEND", b"")


def text(key, value):
    return chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))


def ztext(key, value):
    return chunk(b"zTXt", key.encode("latin-1") + b"\x00\x00" + zlib.compress(value.encode("latin-1")))


def itext(key, value, compressed=False):
    body = value.encode()
    if compressed:
        body = zlib.compress(body)
    return chunk(b"iTXt", key.encode("latin-1") + b"\x00" + bytes([1 if compressed else 0, 0]) + b"en\x00\x00" + body)


rgb2x2 = [bytes([255, 0, 0, 0, 255, 0]), bytes([0, 0, 255, 255, 255, 255])]
ron_small = '(version: 1, nodes: [(id: "g", type: "GradientImage")])\n'
put("png_text", "veetance_workflow.png", png(2, 2, 2, 8, rgb2x2, [text("veetance-workflow", ron_small), text("parameters", "seed: 1")]))
put("png_text", "veetance_workflow_ztxt.png", png(2, 2, 2, 8, rgb2x2, [ztext("veetance-workflow", ron_small)]))
put("png_text", "comfy_prompt_workflow.png", png(2, 2, 2, 8, rgb2x2, [
    itext("prompt", json.dumps({"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ü"}}})),
    itext("workflow", json.dumps({"version": 0.4, "nodes": [ui_node(1, "SaveImage", widgets=["x"])], "links": []}), compressed=True),
]))
put("png_text", "text_after_idat.png", png(1, 1, 0, 8, [b"\x80"], trailing=[text("workflow", json.dumps(ui))]))

put("png_image", "rgb8.png", png(2, 2, 2, 8, rgb2x2))
put("png_image", "rgba8.png", png(2, 1, 6, 8, [bytes([1, 2, 3, 4, 5, 6, 7, 8])]))
put("png_image", "gray1.png", png(9, 2, 0, 1, [b"\xaa\x80", b"\x55\x00"]))
put("png_image", "gray_alpha16.png", png(1, 2, 4, 16, [b"\x12\x34\xff\xff", b"\x00\x00\x80\x00"]))
put("png_image", "rgb16.png", png(1, 1, 2, 16, [b"\x00\x01\x80\x00\xff\xff"]))
put("png_image", "palette_trns.png", png(3, 1, 3, 4, [b"\x01\x20"], [chunk(b"PLTE", bytes([0, 0, 0, 255, 0, 0, 0, 255, 0])), chunk(b"tRNS", b"\x00\x80")]))
# An Adam7 header over rows written plainly: the decoder must read or refuse it, never crash.
put("png_image", "interlaced.png", png(3, 3, 0, 8, [b"\x01\x02\x03"] * 3, interlace=1))
copy("png_image", "assets/tiny-models/input/edit-reference.png")

# ---------------------------------------------------------------- safetensors
def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    header = {}
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


put("safetensors", "plain.safetensors", safetensors([
    ("a.weight", "F32", [2, 2], f32(1, 2, 3, 4)),
    ("b.bias", "F16", [2], b"\x00\x3c\x00\xc0"),
    ("c", "BF16", [1], b"\x80\x3f"),
    ("d", "I64", [1], struct.pack("<q", -5)),
    ("e", "U8", [3], b"abc"),
]))
quant_json = json.dumps({"format": "float8_e4m3fn"}).encode()
put("safetensors", "comfy_quant.safetensors", safetensors([
    ("blk.weight", "F8_E4M3", [2, 2], b"\x38\x40\xb8\x00"),
    ("blk.weight_scale", "F32", [], f32(0.5)),
    ("blk.comfy_quant", "U8", [len(quant_json)], quant_json),
]))
put("safetensors", "quant_metadata.safetensors", safetensors([
    ("x.weight", "F8_E4M3", [1, 4], b"\x38\x40\xb8\x00"),
    ("x.weight_scale", "F32", [1], f32(2.0)),
], {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": {"x": {"format": "nvfp4"}}})}))
put("safetensors", "scaled_fp8.safetensors", safetensors([
    ("model.scaled_fp8", "F8_E4M3", [0], b""),
    ("model.l.weight", "F8_E4M3", [2], b"\x38\x40"),
    ("model.l.scale_weight", "F32", [1], f32(3.0)),
]))
put("safetensors", "lora_peft.safetensors", safetensors([
    ("transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight", "F32", [1, 2], f32(1, 2)),
    ("transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight", "F32", [2, 1], f32(3, 4)),
], {"lora_adapter_metadata": json.dumps({"lora_alpha": 2, "alpha_pattern": {"to_q": 4}, "use_rslora": True})}))
put("safetensors", "lora_kohya.safetensors", safetensors([
    ("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "F16", [1, 2], b"\x00\x3c\x00\x3c"),
    ("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight", "F16", [2, 1], b"\x00\x3c\x00\x3c"),
    ("lora_unet_double_blocks_0_img_attn_qkv.alpha", "F32", [], f32(1)),
]))
z = lambda *shape: b"\x00" * (4 * max(1, __import__("math").prod(shape)))
put("safetensors", "flux2_bfl_names.safetensors", safetensors([
    ("double_blocks.0.img_attn.qkv.weight", "F32", [1, 1], z(1)),
    ("img_in.weight", "F32", [16, 4], z(16, 4)),
    ("txt_in.weight", "F32", [16, 2], z(16, 2)),
    ("single_blocks.0.norm.query_norm.scale", "F32", [8], z(8)),
    ("single_blocks.1.linear1.weight", "F32", [1], z(1)),
]))
put("safetensors", "qwen3_names.safetensors", safetensors([
    ("model.embed_tokens.weight", "F32", [4, 8], z(4, 8)),
    ("model.layers.0.self_attn.q_norm.weight", "F32", [2], z(2)),
    ("model.layers.0.self_attn.q_proj.weight", "F32", [4, 8], z(4, 8)),
    ("model.layers.0.self_attn.k_proj.weight", "F32", [2, 8], z(2, 8)),
    ("model.layers.0.mlp.gate_proj.weight", "F32", [6, 8], z(6, 8)),
    ("model.layers.2.input_layernorm.weight", "F32", [8], z(8)),
]))
put("safetensors", "vae_names.safetensors", safetensors([
    ("encoder.down.0.block.0.conv1.weight", "F32", [32, 3, 1, 1], z(32, 3)),
    ("encoder.down.1.block.0.conv1.weight", "F32", [64, 32, 1, 1], z(64, 32)),
    ("encoder.conv_in.weight", "F32", [32, 3, 1, 1], z(32, 3)),
    ("decoder.up.0.block.0.conv1.weight", "F32", [32, 32, 1, 1], z(32, 32)),
    ("decoder.up.1.block.0.conv1.weight", "F32", [64, 64, 1, 1], z(64, 64)),
    ("decoder.conv_in.weight", "F32", [64, 4, 1, 1], z(64, 4)),
    ("decoder.conv_out.weight", "F32", [3, 32, 1, 1], z(3, 32)),
]))
copy("safetensors", "assets/parity/schedule_ref.safetensors")
copy("safetensors", "assets/files/vae_small_decoder_ref.safetensors")

# ---------------------------------------------------------------- GGUF
GGML = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22),
        "Q5_1": (7, 32, 24), "Q8_0": (8, 32, 34), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110),
        "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210), "BF16": (30, 1, 2),
        "IQ4_XS": (23, 256, 136)}


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gvalue(v):
    if isinstance(v, bool):
        return struct.pack("<IB", 7, v)
    if isinstance(v, int):
        return struct.pack("<Iq", 11, v) if v < 0 else struct.pack("<IQ", 10, v)
    if isinstance(v, float):
        return struct.pack("<If", 6, v)
    if isinstance(v, str):
        return struct.pack("<I", 8) + gstr(v)
    if isinstance(v, list):  # int arrays (u32 elements)
        return struct.pack("<IIQ", 9, 4, len(v)) + b"".join(struct.pack("<I", x) for x in v)
    raise TypeError(v)


def gguf(meta, tensors, version=3, alignment=32):
    """tensors: list of (name, type name, shape outermost first)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(meta))
    for k, v in meta.items():
        out += gstr(k) + gvalue(v)
    data = b""
    infos = b""
    import random
    rnd = random.Random(7)
    for name, ty, shape in tensors:
        code, block, size = GGML[ty]
        n = 1
        for d in shape:
            n *= d
        raw = bytes(rnd.randrange(256) for _ in range(n // block * size))
        if ty in ("F32",):
            raw = f32(*[rnd.uniform(-1, 1) for _ in range(n)])
        data += b"\x00" * (-len(data) % alignment)
        infos += gstr(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in reversed(shape))
        infos += struct.pack("<IQ", code, len(data))
        data += raw
    out += infos
    out += b"\x00" * (-len(out) % alignment)
    return out + data


put("gguf", "qwen3_meta.gguf", gguf({
    "general.architecture": "qwen3", "qwen3.block_count": 2, "qwen3.embedding_length": 64,
    "qwen3.feed_forward_length": 96, "qwen3.attention.head_count": 4, "qwen3.attention.head_count_kv": 2,
    "qwen3.attention.key_length": 16, "qwen3.attention.layer_norm_rms_epsilon": 1e-6,
    "qwen3.rope.freq_base": 1000000.0,
}, [("token_embd.weight", "Q8_0", [4, 64]), ("blk.0.attn_norm.weight", "F32", [64]),
    ("blk.0.attn_q.weight", "Q4_0", [64, 64])]))
put("gguf", "kquants.gguf", gguf({"general.architecture": "flux", "general.alignment": 64}, [
    ("a", "Q2_K", [1, 256]), ("b", "Q3_K", [1, 256]), ("c", "Q4_K", [1, 256]), ("d", "Q5_K", [1, 256]),
    ("e", "Q6_K", [1, 256]), ("f", "Q4_1", [2, 32]), ("g", "Q5_0", [1, 32]), ("h", "Q5_1", [1, 32]),
    ("i", "F16", [2, 2]), ("j", "BF16", [3]), ("k", "IQ4_XS", [1, 256]),
], alignment=64))
put("gguf", "orig_shape.gguf", gguf({"comfy.gguf.orig_shape.w": [4, 8], "general.architecture": "flux"},
                                    [("w", "F16", [32]), ("double_blocks.0.img_attn.qkv.weight", "F32", [2, 2])], version=2))

# ---------------------------------------------------------------- model configs
for cfg in ["assets/parity/qwen3_tiny_config.json", "assets/parity/flux2_tiny_diffusers/config.json",
            "assets/parity/vae_tiny_diffusers/config.json", "assets/tiny-models/vae/flux2-vae-tiny/config.json",
            "assets/tiny-models/text_encoders/qwen3-tiny.config.json"]:
    copy("model_config", cfg, cfg.replace("/", "_"))

# ---------------------------------------------------------------- tokenizers
copy("tokenizer_json", "assets/parity/tokenizer.json", "qwen3_tiny_tokenizer.json")
cases = json.loads((ROOT / "assets/files/qwen3_tokens.json").read_text())["cases"]
for i, case in enumerate(cases):
    put("prompt_tokens", "case%02d.txt" % i, case["text"])
put("prompt_tokens", "special_tokens.txt", "<|im_end|>\n<|im_start|>system\n<think></think> <|endoftext|>")
put("prompt_tokens", "long.txt", "a red fox in the snow, " * 60)

# ---------------------------------------------------------------- server bodies
put("server_prompt", "api.json", json.dumps({"prompt": api, "client_id": "c1", "extra_data": {"extra_pnginfo": {"x": 1}}}))
put("server_prompt", "ui.json", json.dumps({"prompt": ui, "number": "3", "front": True,
                                            "partial_execution_targets": ["8", 9]}))
put("server_prompt", "prompt_id.json", json.dumps({"prompt": {"1": {"class_type": "SaveImage", "inputs": {}}},
                                                   "prompt_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "number": 1.5}))
put("server_prompt", "no_prompt.json", "{}")


def multipart(boundary, fields):
    body = b""
    for name, filename, value in fields:
        body += b"--" + boundary + b"\r\n"
        disp = b'Content-Disposition: form-data; name="' + name + b'"'
        if filename is not None:
            disp += b'; filename="' + filename + b'"'
        body += disp + b"\r\n"
        if filename is not None:
            body += b"Content-Type: image/png\r\n"
        body += b"\r\n" + value + b"\r\n"
    return boundary + b"\n" + body + b"--" + boundary + b"--\r\n"


tiny_png = png(1, 1, 0, 8, [b"\x80"])
put("server_upload", "image.txt", multipart(b"XyZ", [(b"image", b"a.png", tiny_png)]))
put("server_upload", "all_fields.txt", multipart(b"----b0undary", [
    (b"image", b"fox (1).png", tiny_png), (b"overwrite", None, b"true"), (b"type", None, b"temp"),
    (b"subfolder", None, b"a/b\\c/./d")]))
put("server_upload", "path_tricks.txt", multipart(b"b", [(b"image", b"..%2F..%2Fx.png", b"x"), (b"subfolder", None, b"../up")]))

put("server_ws", "feature_flags.json", json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
put("server_ws", "other.json", json.dumps({"type": "hello", "data": [1, 2]}))
put("server_ws", "flags_false.json", '{"type":"feature_flags","data":{"supports_preview_metadata":"yes"}}')

print("seeds written under", CORPUS.relative_to(ROOT))
