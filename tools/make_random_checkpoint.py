#!/usr/bin/env python3
"""Write a random-weight checkpoint in the exact shape of a real-size RetNet.

Shapes (`--shape`):
- `fla-1.3b` (default): fla-hub/retnet-1.3B-100B. The same config.json fields, tensor names,
  shapes and dtype (bf16) as the published checkpoint, in two safetensors shards plus
  `model.safetensors.index.json`, as `save_pretrained` writes them: 1.35 B parameters, 2.7 GB.
- `torchscale-7b`: torchscale 0.3.0's `retnet_7b` preset (embed 4096, value 6912, 16 heads,
  FFN 6912, 32 layers) with a 32000-token vocabulary, as a torchscale state dict (`layers.N.
  retention.q_proj.weight`, ..., the `retnet_rel_pos` buffers in f32) in bf16 shards of about
  5 GB: 6.7 B parameters, 13.5 GB.

For measuring loads (host memory, time) of real-size models; the weights are random, so the
logits mean nothing. Never commit the output: write it under /tmp.

    python3 tools/make_random_checkpoint.py /tmp/retnet-1.3b [--shape fla-1.3b] [--seed 0] [--layers N]

Pure Python (no numpy or torch), fast enough because every tensor is built from random bytes
with C-level slicing: the low byte of each bf16 is random (exponent LSB and mantissa), the high
byte (sign and exponent) is mapped through a table, so every value is finite with a magnitude
in [2^-8, 2^-5) (linear layers; about what a trained model's weights are) or [2^-4, 2^-1)
(embeddings) and a random sign. Norm weights are 1.
"""
import argparse
import json
import math
import os
import random
import struct
import sys

# fla-hub/retnet-1.3B-100B config.json (`intermediate_size` null: fla derives 2816). Tensor names
# as fla's current `save_pretrained` writes them (separate gate_proj and up_proj).
CONFIG = {
    "architectures": ["RetNetForCausalLM"],
    "attn_mode": "chunk",
    "bos_token_id": 1,
    "conv_size": 4,
    "elementwise_affine": True,
    "eos_token_id": 2,
    "expand_k": 1,
    "expand_v": 2,
    "feature_map": None,
    "fuse_cross_entropy": True,
    "fuse_norm": True,
    "hidden_act": "swish",
    "hidden_ratio": 2,
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": None,
    "max_position_embeddings": 2048,
    "model_type": "retnet",
    "norm_eps": 1e-06,
    "num_heads": 8,
    "num_hidden_layers": 24,
    "num_kv_heads": None,
    "share_conv_kernel": True,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.39.1",
    "use_cache": True,
    "use_output_gate": True,
    "use_short_conv": False,
    "vocab_size": 32000,
}


# torchscale 0.3.0 `retnet_7b` (torchscale/model/retnet.py presets), RetNetConfig field names.
TORCHSCALE_7B = {
    "activation_fn": "swish",
    "decoder_embed_dim": 4096,
    "decoder_value_embed_dim": 6912,
    "decoder_retention_heads": 16,
    "decoder_ffn_embed_dim": 6912,
    "decoder_layers": 32,
    "decoder_normalize_before": True,
    "deepnorm": False,
    "subln": True,
    "layernorm_embedding": False,
    "layernorm_eps": 1e-06,
    "no_scale_embedding": True,
    "share_decoder_input_output_embed": False,
    "no_output_layer": False,
    "recurrent_chunk_size": 512,
    "vocab_size": 32000,
}


def torchscale_tensors(config):
    """(name, shape, kind) of a torchscale 0.3.0 RetNetDecoder state dict."""
    d = config["decoder_embed_dim"]
    v = config["decoder_value_embed_dim"]
    f = config["decoder_ffn_embed_dim"]
    heads = config["decoder_retention_heads"]
    out = [("embed_tokens.weight", [config["vocab_size"], d], "embed")]
    out += [
        ("retnet_rel_pos.angle", [d // heads], "angle"),
        ("retnet_rel_pos.decay", [heads], "decay"),
    ]
    for i in range(config["decoder_layers"]):
        p = f"layers.{i}."
        out += [
            (p + "retention.q_proj.weight", [d, d], "linear"),
            (p + "retention.k_proj.weight", [d, d], "linear"),
            (p + "retention.v_proj.weight", [v, d], "linear"),
            (p + "retention.g_proj.weight", [v, d], "linear"),
            (p + "retention.out_proj.weight", [d, v], "linear"),
            (p + "retention_layer_norm.weight", [d], "norm"),
            (p + "ffn.fc1.weight", [f, d], "linear"),
            (p + "ffn.fc2.weight", [d, f], "linear"),
            (p + "ffn.gate.weight", [f, d], "linear"),
            (p + "final_layer_norm.weight", [d], "norm"),
        ]
    out += [("layer_norm.weight", [d], "norm"), ("output_projection.weight", [config["vocab_size"], d], "embed")]
    return out


def ffn_width(hidden, ratio):
    # fla's RetNetMLP: int(hidden * ratio * 2 / 3) rounded up to a multiple of 256.
    width = int(hidden * ratio * 2 / 3)
    return 256 * ((width + 255) // 256)


def tensors(config):
    """(name, shape, kind) in the order of fla's state dict."""
    d = config["hidden_size"]
    k = int(d * config["expand_k"])
    v = int(d * config["expand_v"])
    f = config["intermediate_size"] or ffn_width(d, config["hidden_ratio"])
    heads = config["num_heads"]
    out = [("model.embeddings.weight", [config["vocab_size"], d], "embed")]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "attn_norm.weight", [d], "norm"),
            (p + "attn.q_proj.weight", [k, d], "linear"),
            (p + "attn.k_proj.weight", [k, d], "linear"),
            (p + "attn.v_proj.weight", [v, d], "linear"),
            (p + "attn.g_proj.weight", [v, d], "linear"),
            (p + "attn.o_proj.weight", [d, v], "linear"),
            (p + "attn.g_norm_swish_gate.weight", [v // heads], "norm"),
            (p + "mlp_norm.weight", [d], "norm"),
            (p + "mlp.gate_proj.weight", [f, d], "linear"),
            (p + "mlp.up_proj.weight", [f, d], "linear"),
            (p + "mlp.down_proj.weight", [d, f], "linear"),
        ]
    out += [("model.norm.weight", [d], "norm"), ("lm_head.weight", [config["vocab_size"], d], "embed")]
    return out


def high_byte_table(rng, exponent_top7):
    """Maps any byte to sign | one of the given 7-bit exponent tops, uniformly at random."""
    return bytes((rng.getrandbits(1) << 7) | rng.choice(exponent_top7) for _ in range(256))


def bf16_bytes(rng, count, kind, tables):
    if kind == "norm":
        return struct.pack("<H", 0x3F80) * count  # 1.0
    # bf16 = [sign:1][exponent:8][mantissa:7]; little-endian: low byte first.
    data = bytearray(rng.randbytes(2 * count))
    data[1::2] = bytes(data[1::2]).translate(tables[kind])
    return data


def f32_buffer(kind, count):
    """torchscale's RetNetRelPos buffers: angle = 1/10000^linspace(0, 1, K/2), each repeated
    twice; decay = log(1 - 2^(-5 - h)), computed in f32 as torch does."""
    if kind == "angle":
        pairs = count // 2
        values = []
        for i in range(pairs):
            a = 1.0 / 10000 ** (i / (pairs - 1) if pairs > 1 else 0.0)
            values += [a, a]
    else:
        values = [math.log(struct.unpack("<f", struct.pack("<f", 1.0 - 2.0 ** (-5 - h)))[0]) for h in range(count)]
    return struct.pack(f"<{count}f", *values)


def dtype(kind):
    return "F32" if kind in ("angle", "decay") else "BF16"


def nbytes(shape, kind="linear"):
    n = 4 if dtype(kind) == "F32" else 2
    for s in shape:
        n *= s
    return n


def write_shard(path, entries, rng, tables):
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, kind in entries:
        size = nbytes(shape, kind)
        header[name] = {"dtype": dtype(kind), "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for name, shape, kind in entries:
            if dtype(kind) == "F32":
                out.write(f32_buffer(kind, nbytes(shape, kind) // 4))
                continue
            count = nbytes(shape) // 2
            # Large tensors in slices, so this script's own memory stays small.
            step = 1 << 24
            for start in range(0, count, step):
                out.write(bf16_bytes(rng, min(step, count - start), kind, tables))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output directory (e.g. /tmp/retnet-1.3b)")
    parser.add_argument("--shape", choices=["fla-1.3b", "torchscale-7b"], default="fla-1.3b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers, for a quick check")
    args = parser.parse_args()
    if args.shape == "fla-1.3b":
        config, layers_key, make = dict(CONFIG), "num_hidden_layers", tensors
        shard_count = 2
    else:
        config, layers_key, make = dict(TORCHSCALE_7B), "decoder_layers", torchscale_tensors
        shard_count = None  # about 5 GB each, as save_pretrained's default would cut them
    if args.layers is not None:
        config[layers_key] = args.layers
    rng = random.Random(args.seed)
    # Exponent tops (exponent >> 1): 59..60 → [2^-8, 2^-5); 61..62 → [2^-4, 2^-1).
    tables = {"linear": high_byte_table(rng, [59, 60]), "embed": high_byte_table(rng, [61, 62])}
    entries = make(config)
    total = sum(nbytes(s, k) for _, s, k in entries)
    shard_bytes = -(-total // shard_count) if shard_count else 5 << 30
    # Shards cut at tensor boundaries once they reach shard_bytes.
    shards, running = [[]], 0
    for entry in entries:
        if running >= shard_bytes:
            shards.append([])
            running = 0
        shards[-1].append(entry)
        running += nbytes(entry[1], entry[2])
    os.makedirs(args.out, exist_ok=True)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_shard(os.path.join(args.out, name), shard, rng, tables)
        weight_map.update({n: name for n, _, _ in shard})
    params = sum(nbytes(s, k) // (4 if dtype(k) == "F32" else 2) for _, s, k in entries)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"{args.out}: {args.shape}, {params:,} parameters, {total:,} bytes in {len(shards)} shards", file=sys.stderr)


if __name__ == "__main__":
    main()
