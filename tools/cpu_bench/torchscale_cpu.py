#!/usr/bin/env python3
"""torchscale 0.3.0 on the CPU with the shipped model: recurrent greedy decode and prefill.

One JSON line per repetition on stdout: decode tok/s (recurrent form, token by token with a
shared incremental_state, the whole prefix passed each call, as torchscale's own generation
does) and prefill tok/s (parallel form, one call over the prompt; its recurrent form feeds a
prompt at the decode rate). float32 compute: the checkpoint's f16 weights upcast exactly, the same values
our CPU engine multiplies. Loading code as in tools/train/train.py.
"""
import argparse
import json
import os
import sys
import time
import types


def ensure_timm():
    """torchscale imports timm's drop_path only; a stub stands in if timm does not import."""
    try:
        from timm.models.layers import drop_path  # noqa: F401
    except Exception:
        for m in ["timm", "timm.models", "timm.models.layers"]:
            sys.modules.pop(m, None)
        timm = types.ModuleType("timm")
        models = types.ModuleType("timm.models")
        layers = types.ModuleType("timm.models.layers")
        layers.drop_path = lambda x, drop_prob=0.0, training=False: x
        models.layers = layers
        timm.models = models
        sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


ensure_timm()
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torchscale.architecture.config import RetNetConfig  # noqa: E402
from torchscale.architecture.retnet import RetNetDecoder  # noqa: E402


def load(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = RetNetConfig(**json.load(f))
    model = RetNetDecoder(cfg, embed_tokens=nn.Embedding(cfg.vocab_size, cfg.decoder_embed_dim))
    sd = load_file(os.path.join(model_dir, "model.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    allowed = {"output_projection.weight"} if cfg.share_decoder_input_output_embed else set()
    assert not unexpected and set(missing) <= allowed, (missing, unexpected)
    return model.to(dtype=torch.float32).eval()


def decode(model, prompt, n_new):
    buf = torch.zeros(len(prompt) + n_new, dtype=torch.long)
    buf[: len(prompt)] = torch.tensor(prompt)
    state = {}
    with torch.inference_mode():
        for i in range(len(prompt)):
            logits, _ = model(buf[None, : i + 1], incremental_state=state)
        start = time.perf_counter()
        for j in range(n_new):
            pos = len(prompt) + j
            buf[pos] = torch.argmax(logits[0, -1])
            if j + 1 < n_new:
                logits, _ = model(buf[None, : pos + 1], incremental_state=state)
        seconds = time.perf_counter() - start
    return n_new / seconds, bytes(buf[len(prompt):].tolist())


def prefill_parallel(model, toks):
    with torch.inference_mode():
        start = time.perf_counter()
        model(toks[None])
        return toks.numel() / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-file", required=True, help="prefill text (bytes)")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import torchscale

    model = load(a.model)
    with open(a.prompt_file, "rb") as f:
        toks = torch.tensor(list(f.read()[: a.prefill]), dtype=torch.long)
    decode(model, list(b"\n"), 16)  # warm-up
    prefill_parallel(model, toks)
    for rep in range(a.reps):
        tok_s, text = decode(model, list(b"\n"), a.decode)
        print(json.dumps({
            "engine": "torchscale", "version": torchscale.__version__ if hasattr(torchscale, "__version__") else "0.3.0",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "rep": rep,
            "decode_tok_s": tok_s,
            "prefill_parallel_tok_s": prefill_parallel(model, toks),
            "prefill_tokens": toks.numel(), "decode_tokens": a.decode,
            "text_head": text[:60].decode("utf-8", "replace"),
        }), flush=True)


if __name__ == "__main__":
    main()
