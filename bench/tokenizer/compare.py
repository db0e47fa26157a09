#!/usr/bin/env python3
"""Compare our tokenizer with the reference libraries (tiktoken, rustbpe).

Modes:
  check     our split == the reference regex's split (fancy-regex, via rustbpe+tiktoken, and Python `regex`)
            on the edge-case corpus; our merges == rustbpe's on the training corpus; tiktoken loaded with our
            exported rank file encodes held-out text to our ids.
  fixtures  regenerate tests/fixtures/tokenizer/* (expected outputs for the Rust tests) from the references.
  bench     encode MB/s (one thread, all threads) and training time, ours next to tiktoken / rustbpe.

Run through bench/tokenizer/run.sh, which builds the binaries and installs the references into a venv.
"""
import argparse
import base64
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import regex
import rustbpe
import tiktoken

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
            "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]
TRAIN_VOCAB = 256 + 9 + 600  # fixture training: 600 merges, small enough for ties to matter
BIN = os.environ.get("TOK_BIN_DIR", os.path.join(ROOT, "target", "release"))


# ----------------------------------------------------------------------------- corpora

def edge_cases():
    """Hand-picked edge cases for the split, plus seeded random strings over tricky characters."""
    cases = [
        "", "a", " ", "\n",
        "don't", "DON'T", "I'm", "I'M", "you'll", "YOU'LL", "You'Ll", "we've", "WE'VE", "they're", "THEY'RE",
        "it'd", "IT'D", "'s", "'S", "'sup", "''s", "' s", "'\u017f", "'x", "''", "o'clock", "rock'n'roll",
        "\u2019s", "it\u2019s", "'ll've're", " 's", "'1", "'\n",
        "1", "12", "123", "1234", "12345", "3.14159", "1,000,000", "x1y22z333", "\u0663\u0664\u0665", "\u00bd",
        "\u216b", "\u00b2\u00b3", "\u0967\u0968\u0969", " 42", "a42b", "2024-01-01",
        "a  b", "a   b", "a\tb", "a \t b", "  leading", "trailing  ", "trailing \n", "\n\n\n", "a\n\nb",
        "a \n b", "a\r\nb", "a\r\n\r\nb", " \r\n ", "\u00a0nbsp", "a\u3000b", "x\u2028y", "\x0b\x0c", "   ",
        "\t\t\tx", "a \n\n  b", "end \n", "  \n  x", "x  \n", "\r", "\r\r\n\n", " \t\n\t x",
        "!!!", " !!!", "...\n\n", "?!\r\n", "(a)", "[1]", "{x: 1}", "a+b=c", "#include <stdio.h>", "<|bos|>",
        "<|user_start|>hi<|user_end|>", "@user #tag", "e-mail", "C++", "$100.00", "50%", " .\n", "!\n!",
        "\u4f60\u597d\u4e16\u754c", "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
        "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645", "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
        "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e", "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4",
        "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5", "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
        "e\u0301", "\u00e9", "na\u00efve caf\u00e9", "Z\u0334\u0321\u034da\u0337l\u0336g\u0338o\u0335",
        "\U0001f642", "hello \U0001f44b world", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f1fa\U0001f1f8\U0001f1ec\U0001f1e7",
        "a\U0001f642b", "\x00\x01\x02", "a\x1fb", "\x7f", "\u200b zero width", "\ufeffbom", "\x1c\x1d x",
        "Hello world! How's it going? 123 + 4567 = 4690.\n\n\tIndented\r\n",
        "HELLO WORLD", "CamelCaseWord", "snake_case_word", "ALLCAPS'S", "    def f(x):\n        return x\n",
    ]
    pool = list("aZ'sdmtlLvVeErR ") + [" ", "  ", "\t", "\n", "\r", "\r\n", "1", "23", "!", ".", "-", "_",
            "\u00e9", "\u4e2d", "\U0001f642", "\u0301", "\u00a0", "\u3000", "\u0663", "\u00bd", "\u017f", "\x00", "\x1f"]
    rng = random.Random(1234)
    for _ in range(400):
        cases.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 30))))
    return cases


WORDS = ("the of and to in is that it was for on are as with his they at be this from have or by one had not but "
         "what all were when we there can an your which their said if do will each about how up out them then she "
         "many some so these would other into has more her two like him see time could no make than first been its "
         "who now people my made over did down only way find use may water long little very after words called just "
         "where most know get through back much before go good new write our used me man too any day same right look "
         "think also around another came come work three word must because does part even place well such here take "
         "why things help put years different away again off went old number great tell men say small every found "
         "still between name should home big give air line set own under read last never us left end along while "
         "might next sound below saw something thought both few those always looked show large often together asked "
         "house don't world going want school important until form food keep children feet land side without boy "
         "once animals life enough took sometimes four head above kind began almost live page got earth need far "
         "hand high year mother light parts country father let night following picture being study second eyes "
         "it's I'm we've they're you'll she'd").split()
UNICODE_WORDS = ["caf\u00e9", "na\u00efve", "\u00fcber", "\u4f60\u597d", "\u4e16\u754c", "\u041f\u0440\u0438\u0432\u0435\u0442",
                 "\u0645\u0631\u062d\u0628\u0627", "\U0001f642", "\u00e9t\u00e9", "\u3053\u3093\u306b\u3061\u306f"]


def synthetic_docs(seed, n_docs):
    """Deterministic English-like documents: Zipf-distributed words, punctuation, numbers, some unicode."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(WORDS))]
    docs = []
    for _ in range(n_docs):
        out = []
        for _ in range(rng.randint(1, 6)):
            sent = rng.choices(WORDS, weights, k=rng.randint(3, 18))
            if rng.random() < 0.2:
                sent.insert(rng.randrange(len(sent)), str(rng.randint(0, 10 ** rng.randint(1, 6))))
            if rng.random() < 0.1:
                sent.insert(rng.randrange(len(sent)), rng.choice(UNICODE_WORDS))
            s = " ".join(sent)
            s = s[0].upper() + s[1:]
            out.append(s + rng.choice([".", ".", ".", "!", "?", ";", ":", "...", ",\n"]))
        sep = rng.choice([" ", " ", "\n", "\n\n", "  "])
        docs.append(sep.join(out))
    return docs


# ----------------------------------------------------------------------------- references

def ranks_to_tiktoken(ranks):
    return "".join(f"{base64.b64encode(b).decode()} {r}\n" for b, r in ranks)


def rustbpe_ranks(docs, vocab):
    t = rustbpe.Tokenizer()
    t.train_from_iterator(iter(docs), vocab, pattern=SPLIT_PATTERN)
    return sorted(((bytes(b), r) for b, r in t.get_mergeable_ranks()), key=lambda x: x[1])


def encoding(ranks):
    mergeable = {b: r for b, r in ranks}
    return tiktoken.Encoding("nanochat-check", pat_str=SPLIT_PATTERN, mergeable_ranks=mergeable,
                             special_tokens={s: len(mergeable) + i for i, s in enumerate(SPECIALS)})


def fancy_regex_split(texts):
    """The split as fancy-regex (tiktoken's and rustbpe's engine) does it: train rustbpe until every chunk
    is one token, then tiktoken (whole-piece lookup first) returns exactly one token per piece."""
    total = sum(len(t.encode()) for t in texts)
    enc = encoding(rustbpe_ranks(texts, 256 + total + 1))
    out = []
    for t in texts:
        pieces = [enc.decode_single_token_bytes(i) for i in enc.encode_ordinary(t)]
        out.append([p.decode("utf-8") for p in pieces])
    return out


def python_regex_split(texts):
    pat = regex.compile(SPLIT_PATTERN)
    return [pat.findall(t) for t in texts]


def run_ours(args, stdin=None):
    r = subprocess.run([os.path.join(BIN, args[0])] + args[1:], input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{args[0]} failed:\n{r.stderr}")
    return r.stdout


def our_split(texts):
    return json.loads(run_ours(["tok_eval", "split"], json.dumps(texts)))


def train_ours(docs, vocab, workdir):
    """Train with our tok_train on the docs (one paragraph file) and return (tokenizer path, ranks)."""
    path = os.path.join(workdir, "docs.txt")
    write_docs(path, docs)
    out = os.path.join(workdir, "ours")
    run_ours(["tok_train", "--input-text", path, "--vocab-size", str(vocab), "--output-dir", out,
              "--doc-cap", "1000000000"])
    with open(os.path.join(out, "tokenizer.tiktoken")) as f:
        ranks = [(base64.b64decode(l.split()[0]), int(l.split()[1])) for l in f if l.strip()]
    return os.path.join(out, "tokenizer.bin"), ranks


def paragraphs(text):
    """tok_train --input-text's documents: blank-line separated paragraphs minus their final line break
    (a line is blank when it holds only White_Space characters, as Rust's str::trim sees them)."""
    docs, cur = [], ""
    for line in regex.findall(r"[^\n]*\n|[^\n]+$", text):
        if line.strip(" \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
                      "\u200a\u2028\u2029\u202f\u205f\u3000") == "":
            if cur:
                docs.append(cur)
            cur = ""
        else:
            cur += line
    if cur:
        docs.append(cur)
    return [d[:-1].removesuffix("\r") if d.endswith("\n") else d for d in docs]


def write_docs(path, docs):
    """One paragraph per document, as tok_train --input-text reads them (docs must hold no blank line)."""
    text = "\n\n".join(docs) + "\n"
    if paragraphs(text) != docs:
        sys.exit("documents do not survive the paragraph format; normalise them first")
    with open(path, "w") as f:
        f.write(text)


def train_docs():
    return [regex.sub(r"\n+", "\n", d).strip("\n") for d in synthetic_docs(7, 3000)]


# ----------------------------------------------------------------------------- modes

def compare(name, ours, ref, texts):
    bad = [i for i in range(len(texts)) if ours[i] != ref[i]]
    print(f"{name}: {len(texts) - len(bad)}/{len(texts)} equal")
    for i in bad[:10]:
        print(f"  text {texts[i]!r}\n    ours {ours[i]!r}\n    ref  {ref[i]!r}")
    return not bad


def check(_args):
    ok = True
    cases = edge_cases()
    fancy = fancy_regex_split(cases)
    ok &= compare("split vs fancy-regex (tiktoken/rustbpe)", our_split(cases), fancy, cases)
    compare("  (info) Python regex vs fancy-regex", python_regex_split(cases), fancy, cases)

    docs = train_docs()
    with tempfile.TemporaryDirectory() as tmp:
        ours_path, ours_ranks = train_ours(docs, TRAIN_VOCAB, tmp)
        ref_ranks = rustbpe_ranks(docs, TRAIN_VOCAB - 9)
        same = ours_ranks == ref_ranks
        print(f"merges vs rustbpe ({len(ref_ranks) - 256} merges): {'equal' if same else 'DIFFERENT'}")
        if not same:
            for i, (a, b) in enumerate(zip(ours_ranks, ref_ranks)):
                if a != b:
                    print(f"  first difference at id {i}: ours {a[0]!r} ref {b[0]!r}")
                    break
        ok &= same
        held = synthetic_docs(99, 300) + cases
        enc = encoding(ours_ranks)
        ref_ids = [enc.encode_ordinary(t) for t in held]
        our_ids = json.loads(run_ours(["tok_eval", "--tokenizer", ours_path, "encode"], json.dumps(held)))
        ok &= compare("held-out ids vs tiktoken with our exported ranks", our_ids, ref_ids, held)
    print("CHECK PASSED" if ok else "CHECK FAILED")
    sys.exit(0 if ok else 1)


def fixtures(_args):
    os.makedirs(FIX, exist_ok=True)
    cases = edge_cases()
    fancy = fancy_regex_split(cases)
    py = python_regex_split(cases)
    agree = sum(a == b for a, b in zip(fancy, py))
    print(f"fancy-regex and Python regex agree on {agree}/{len(cases)} cases; fixtures use fancy-regex")
    with open(os.path.join(FIX, "split_cases.json"), "w") as f:
        json.dump([{"text": t, "pieces": p} for t, p in zip(cases, fancy)], f, ensure_ascii=True, indent=0)
    docs = train_docs()
    with open(os.path.join(FIX, "train_docs.json"), "w") as f:
        json.dump(docs, f, ensure_ascii=True, indent=0)
    ranks = rustbpe_ranks(docs, TRAIN_VOCAB - 9)
    with open(os.path.join(FIX, "rustbpe_ranks.tiktoken"), "w") as f:
        f.write(ranks_to_tiktoken(ranks))
    held = synthetic_docs(99, 300) + cases
    enc = encoding(ranks)
    with open(os.path.join(FIX, "heldout.json"), "w") as f:
        json.dump([{"text": t, "ids": enc.encode_ordinary(t)} for t in held], f, ensure_ascii=True, indent=0)
    print(f"wrote fixtures to {FIX}")


def default_bench_text():
    files = sorted(p for p in glob.glob("/usr/share/games/fortunes/*") if "." not in os.path.basename(p))
    if not files:
        sys.exit("no --text given and no fortune files found (apt-get install fortunes)")
    parts = []
    for p in files:
        with open(p, encoding="utf-8", errors="replace") as f:
            parts.append(f.read().replace("\n%\n", "\n\n"))
    return "\n\n".join(parts)


def synthetic_text(mb, seed=5):
    """Web-like text at scale: a 300k-word pseudo-lexicon with Zipf frequencies, so the number of unique
    chunks grows with the corpus as it does on real data (repeating a small text would not)."""
    rng = random.Random(seed)
    syl = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "ch", "st", "er", "ing", "ed", "tion"]
    lex = list(dict.fromkeys(WORDS + ["".join(rng.choices(syl, k=rng.randint(1, 4))) for _ in range(300_000)]))
    cum, acc = [], 0.0
    for i in range(len(lex)):
        acc += 1.0 / (i + 1) ** 1.07
        cum.append(acc)
    out, size = [], 0
    while size < mb * 1e6:
        words = rng.choices(lex, cum_weights=cum, k=2000)
        for i in range(0, 2000, 12):
            s = " ".join(words[i:i + 12])
            s = s[0].upper() + s[1:] + rng.choice([". ", ". ", ", ", "! ", "? ", f" {rng.randint(0, 99999)}. "])
            out.append(s)
            size += len(s)
            if rng.random() < 0.15:
                out.append("\n\n" if rng.random() < 0.7 else "\n")
    return "".join(out)


def bench(args):
    if args.synthetic_mb:
        text = synthetic_text(args.synthetic_mb)
    elif args.text:
        text = "\n\n".join(open(p, encoding="utf-8", errors="replace").read() for p in args.text)
    else:
        text = default_bench_text()
    text = text * args.scale
    threads = args.threads or os.cpu_count()
    docs = [d for d in text.split("\n\n")]
    mb = len(text.encode()) / 1e6
    print(f"text: {mb:.2f} MB, {len(docs)} documents, threads {threads}")
    with tempfile.TemporaryDirectory() as tmp:
        # Training, side by side (both on all cores).
        train_docs_ = paragraphs(text)
        t = time.perf_counter()
        ours_path, ours_ranks = train_ours(train_docs_, args.vocab, tmp)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        ref_ranks = rustbpe_ranks(train_docs_, args.vocab - 9)
        t_ref = time.perf_counter() - t
        print(f"train vocab {args.vocab}: ours {t_ours:.2f}s (incl. process start + file writes), "
              f"rustbpe {t_ref:.2f}s, speedup {t_ref / t_ours:.2f}x, merges equal: {ours_ranks == ref_ranks}")

        # Encoding with the same merges (ours), same text, same thread counts.
        enc = encoding(ours_ranks)
        text_path = os.path.join(tmp, "bench.txt")
        with open(text_path, "w") as f:
            f.write(text)
        best = min(timed(lambda: enc.encode_ordinary(text)) for _ in range(args.repeat))
        tk1 = mb / best
        best = min(timed(lambda: enc.encode_ordinary_batch(docs, num_threads=threads)) for _ in range(args.repeat))
        tkn = mb / best
        out = run_ours(["tok_eval", "--tokenizer", ours_path, "bench", "--text", text_path,
                        "--threads", str(threads), "--repeat", str(args.repeat)])
        vals = dict(zip(out.split()[::2], out.split()[1::2]))
        o1, on = float(vals["single_thread_mb_s"]), float(vals["batch_mb_s"])
        print(f"encode 1 thread : ours {o1:8.2f} MB/s  tiktoken {tk1:8.2f} MB/s  ratio {o1 / tk1:.2f}x")
        print(f"encode {threads} threads: ours {on:8.2f} MB/s  tiktoken {tkn:8.2f} MB/s  ratio {on / tkn:.2f}x")
        ids_equal = enc.encode_ordinary(text[:2_000_000]) == json.loads(
            run_ours(["tok_eval", "--tokenizer", ours_path, "encode"], json.dumps([text[:2_000_000]])))[0]
        print(f"ids equal on the first 2 MB: {ids_equal}")


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    sub.add_parser("check", help="compare split, merges and ids with the references")
    sub.add_parser("fixtures", help="regenerate tests/fixtures/tokenizer from the references")
    b = sub.add_parser("bench", help="encode throughput and training time against tiktoken / rustbpe")
    b.add_argument("--text", nargs="*", help="UTF-8 text files (default: the fortunes package)")
    b.add_argument("--synthetic-mb", type=float, default=0, help="use this many MB of synthetic text")
    b.add_argument("--scale", type=int, default=1, help="repeat the text this many times")
    b.add_argument("--threads", type=int, default=0, help="threads for batch encoding (default: all)")
    b.add_argument("--vocab", type=int, default=8192, help="training vocab size incl. 9 specials")
    b.add_argument("--repeat", type=int, default=3, help="encode repetitions (best is kept)")
    args = ap.parse_args()
    {"check": check, "fixtures": fixtures, "bench": bench}[args.mode](args)


if __name__ == "__main__":
    main()
