#!/usr/bin/env python3
"""Checks an `export_checkpoint --to DIR` result with PyTorch itself (not part of the test suite; needs torch and,
for the tokenizer, tiktoken).

    python tools/check_upstream_export.py DIR [--tag TAG] [--step N] [--against UPSTREAM_DIR]

- torch.load(weights_only=True) must accept model_<step>.pt (and any optim_<step>_rank<r>.pt); every model tensor
  has the dtype upstream stores (wte and value_embeds bf16, the rest fp32) and the shape model_config implies;
- token_bytes.pt loads as an int32 vector of the vocabulary size;
- tokenizer.pkl unpickles to a tiktoken Encoding with that vocabulary size;
- with --against, the upstream base directory the checkpoint was imported from: the same tensor names, dtypes,
  shapes and values in the model file, the same structure and values in any optimizer files, and the same
  token_bytes and tokenizer ranks (an import then export must give back what upstream wrote).
"""
import argparse, json, os, pickle

import torch

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("dir", help="the directory export_checkpoint wrote")
ap.add_argument("--tag", help="model tag under base_checkpoints/ (default: the last one)")
ap.add_argument("--step", type=int, help="checkpoint step (default: the last one)")
ap.add_argument("--against", help="an upstream base directory to compare with, tensor by tensor")
args = ap.parse_args()


def ckpt(base):
    phase = os.path.join(base, "base_checkpoints")
    tag = args.tag or sorted(os.listdir(phase))[-1]
    d = os.path.join(phase, tag)
    steps = sorted(int(f[6:-3]) for f in os.listdir(d) if f.startswith("model_") and f.endswith(".pt"))
    return d, args.step if args.step is not None else steps[-1]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def same(a, b, where):
    """Structural and bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert (a.dtype, tuple(a.shape)) == (b.dtype, tuple(b.shape)), (where, a.dtype, a.shape, b.dtype, b.shape)
        assert torch.equal(a, b), f"{where}: values differ"
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, sorted(set(a) ^ set(b)))
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


ckdir, step = ckpt(args.dir)
meta = json.load(open(os.path.join(ckdir, f"meta_{step:06d}.json")))
cfg = meta["model_config"]
sd = load(os.path.join(ckdir, f"model_{step:06d}.pt"))
C, L = cfg["n_embd"], cfg["n_layer"]
for name, t in sd.items():
    want = torch.bfloat16 if name.startswith(("transformer.wte", "value_embeds")) else torch.float32
    assert t.dtype == want, (name, t.dtype)
    assert t.is_contiguous(), name
assert sd["transformer.h.0.attn.c_q.weight"].shape == (C, C)
assert sd["resid_lambdas"].shape == (L,)
optims = sorted(f for f in os.listdir(ckdir) if f.startswith(f"optim_{step:06d}_rank") and f.endswith(".pt"))
opt = {f: load(os.path.join(ckdir, f)) for f in optims}
tb = load(os.path.join(args.dir, "tokenizer", "token_bytes.pt"))
assert tb.dtype == torch.int32 and tb.shape == (cfg["vocab_size"],), (tb.dtype, tb.shape)
try:
    import tiktoken  # noqa: F401  (the pickle needs it importable)

    enc = pickle.load(open(os.path.join(args.dir, "tokenizer", "tokenizer.pkl"), "rb"))
    assert enc.n_vocab == cfg["vocab_size"], enc.n_vocab
    print("tokenizer.pkl: ok,", enc.n_vocab, "tokens")
except ImportError:
    enc = None
    print("tiktoken not installed: tokenizer.pkl not checked")
print(f"{ckdir} step {step}: {len(sd)} tensors and {len(opt)} optimizer files load with weights_only=True")

if args.against:
    up_dir, up_step = ckpt(args.against)
    assert up_step == step, (up_step, step)
    same(load(os.path.join(up_dir, f"model_{step:06d}.pt")), sd, "model")
    up_optims = sorted(f for f in os.listdir(up_dir) if f.startswith(f"optim_{step:06d}_rank") and f.endswith(".pt"))
    # export_checkpoint writes the model, its metadata and the tokenizer; optimizer files only when present.
    assert not optims or up_optims == optims, (up_optims, optims)
    for f in optims:
        same(load(os.path.join(up_dir, f)), opt[f], f)
    same(load(os.path.join(args.against, "tokenizer", "token_bytes.pt")), tb, "token_bytes")
    if enc is not None:
        up = pickle.load(open(os.path.join(args.against, "tokenizer", "tokenizer.pkl"), "rb"))
        assert up._mergeable_ranks == enc._mergeable_ranks, "mergeable ranks differ"
        assert up._special_tokens == enc._special_tokens, "special tokens differ"
        assert up._pat_str == enc._pat_str, "split pattern differs"
    print(f"identical to {up_dir} step {step}: model, {len(optims)} optimizer files, token_bytes, tokenizer")
