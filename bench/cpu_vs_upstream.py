"""One training step of upstream nanochat on the CPU (forward, backward, MuonAdamW step), timed the way
`cargo bench --bench cpu_model` times this project's: best of several steps after a warm-up.

Run by bench/cpu_vs_upstream.sh, which puts an upstream checkout first on sys.path:
    python bench/cpu_vs_upstream.py N_LAYER N_EMBD N_HEAD VOCAB T B [--steps 4] [--warmup 2]
Prints one line `upstream tok/s <x> step_ms <y> fwd_ms .. bwd_ms .. opt_ms ..`.
"""
import argparse
import time

import torch
from nanochat.gpt import GPT, GPTConfig

ap = argparse.ArgumentParser()
for name in ["n_layer", "n_embd", "n_head", "vocab", "T", "B"]:
    ap.add_argument(name, type=int)
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (the optimizer compiles on the first)")
args = ap.parse_args()

cfg = GPTConfig(sequence_len=args.T, vocab_size=args.vocab, n_layer=args.n_layer, n_head=args.n_head,
                n_kv_head=args.n_head, n_embd=args.n_embd, window_pattern="SSSL")
with torch.device("meta"):
    model = GPT(cfg)
model.to_empty(device="cpu")
model.init_weights()
optimizer = model.setup_optimizer()
gen = torch.Generator().manual_seed(0)
x = torch.randint(0, args.vocab, (args.B, args.T), generator=gen)
y = torch.randint(0, args.vocab, (args.B, args.T), generator=gen)


def step():
    t0 = time.perf_counter()
    loss = model(x, y)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


for _ in range(args.warmup):
    step()
best = min((step() for _ in range(args.steps)), key=sum)
total = sum(best)
print(f"upstream tok/s {args.B * args.T / total:.0f} step_ms {total * 1e3:.1f} fwd_ms {best[0] * 1e3:.1f} "
      f"bwd_ms {best[1] * 1e3:.1f} opt_ms {best[2] * 1e3:.1f} threads {torch.get_num_threads()}")
