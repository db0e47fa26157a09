#!/usr/bin/env python3
"""Checks an `export_checkpoint --to DIR` result with PyTorch itself (not part of the test suite; needs torch and,
for the tokenizer, tiktoken). Usage: python tools/check_upstream_export.py DIR [model_tag] [step]

- torch.load(weights_only=True) must accept model_<step>.pt; every tensor has the dtype upstream stores
  (wte and value_embeds bf16, the rest fp32) and the shape model_config implies;
- token_bytes.pt loads as an int32 vector of the vocabulary size;
- tokenizer.pkl unpickles to a tiktoken Encoding with that vocabulary size.
"""
import json, os, pickle, sys

import torch

base = sys.argv[1]
phase = os.path.join(base, "base_checkpoints")
tag = sys.argv[2] if len(sys.argv) > 2 else sorted(os.listdir(phase))[-1]
ckdir = os.path.join(phase, tag)
steps = sorted(int(f[6:-3]) for f in os.listdir(ckdir) if f.startswith("model_") and f.endswith(".pt"))
step = int(sys.argv[3]) if len(sys.argv) > 3 else steps[-1]
meta = json.load(open(os.path.join(ckdir, f"meta_{step:06d}.json")))
cfg = meta["model_config"]
sd = torch.load(os.path.join(ckdir, f"model_{step:06d}.pt"), map_location="cpu", weights_only=True)
C, L = cfg["n_embd"], cfg["n_layer"]
for name, t in sd.items():
    want = torch.bfloat16 if name.startswith(("transformer.wte", "value_embeds")) else torch.float32
    assert t.dtype == want, (name, t.dtype)
    assert t.is_contiguous(), name
assert sd["transformer.h.0.attn.c_q.weight"].shape == (C, C)
assert sd["resid_lambdas"].shape == (L,)
tb = torch.load(os.path.join(base, "tokenizer", "token_bytes.pt"), map_location="cpu", weights_only=True)
assert tb.dtype == torch.int32 and tb.shape == (cfg["vocab_size"],), (tb.dtype, tb.shape)
try:
    import tiktoken  # noqa: F401  (the pickle needs it importable)
    enc = pickle.load(open(os.path.join(base, "tokenizer", "tokenizer.pkl"), "rb"))
    assert enc.n_vocab == cfg["vocab_size"], enc.n_vocab
    print("tokenizer.pkl: ok,", enc.n_vocab, "tokens")
except ImportError:
    print("tiktoken not installed: tokenizer.pkl not checked")
print(f"{ckdir} step {step}: {len(sd)} tensors load with weights_only=True")
