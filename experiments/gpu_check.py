"""
gpu_check.py -- the first command on a machine with a CUDA GPU: one line PASS / FAIL / SKIP per check, exit 1 if one
failed (--only tiny bench ddp score: some of them; --dir D: work in D). tiny: the tiny pipeline, compiled, 2
micro-batches a step, --resume; bench: train_slm.py --bench at the gpu preset's shape (26M); ddp (2+ GPUs): torchrun
with --scope global against one process on its batch; score: scoring and eval_loss at the gpt2 preset's shape.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import rho  # noqa: E402


def sh(d, script, *args, nproc=0):
    """Run a script of the repo in d (under torchrun with nproc processes): its output, or an error with its tail."""
    launch = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port=29571"] * bool(nproc)
    p = subprocess.Popen([sys.executable, *launch, f"{ROOT}/{script}", *args, "--device", "cuda"], cwd=d, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = p.communicate(timeout=400)[0]
    except subprocess.TimeoutExpired:
        p.terminate()  # torchrun stops its processes on SIGTERM
        out, p.returncode = p.communicate()[0], "none after 400 s"
    if p.returncode:
        raise RuntimeError(f"{script} {' '.join(args)}: exit {p.returncode}\n{out[-3000:]}")
    return out


def check_tiny(d):
    sh(d, "train_ref.py", "--preset", "tiny")
    sh(d, "train_slm.py", "--ratio", "0.6", "--tokens_per_step", "1024")  # 2 micro-batches of 8 x 64
    s = json.load(open(f"{d}/out/slm0.6/done.json"))
    os.remove(f"{d}/out/slm0.6/done.json")  # as if killed after its last checkpoint
    out = sh(d, "train_slm.py", "--ratio", "0.6", "--tokens_per_step", "1024", "--resume")
    assert "resuming at step" in out and np.isfinite(s["val_loss"]), out[-2000:]
    return f"SLM 0.6 with 2 micro-batches a step: val loss {s['val_loss']:.4f}, {s.get('tok_s', 0):,.0f} tok/s; resumed"


def check_bench(d):
    sh(d, "train_ref.py", "--preset", "tiny", "--n_layer", "8", "--n_head", "8", "--n_embd", "512", "--block_size",
       "256", "--out_dir", "out/bench")
    lines = [" ".join(x.split()) for x in sh(d, "train_slm.py", "--out_dir", "out/bench", "--bench", "--batch_size",
                                             "64").splitlines() if "tok/s" in x]  # 3 trainings, the scoring pass
    assert len(lines) == 4, lines
    return " | ".join(lines) + ("" if "mfu" in lines[0] else " (no MFU: this GPU is not in infra.PEAK_FLOPS)")


def check_ddp(d):
    if torch.cuda.device_count() < 2:
        return None
    sh(d, "train_ref.py", "--preset", "tiny")
    args = ["--ratio", "0.6", "--max_tokens", "16384", "--n_evals", "2", "--tokens_per_step", "2048"]
    sh(d, "train_slm.py", *args, "--scope", "global", "--name", "ddp2", nproc=2)  # 2 processes x 2 x 8 x 64
    sh(d, "train_slm.py", *args, "--batch_size", "16", "--name", "single16")     # 1 process x 2 x 16 x 64
    a, b = (json.load(open(f"{d}/out/{r}/done.json"))["val_loss"] for r in ("ddp2", "single16"))
    assert abs(a - b) < 0.05, (a, b)
    return f"val loss 2 processes {a:.4f}, one process {b:.4f}"


def check_score(d):
    V, T = 100_277, 1024
    model = rho.GPT(rho.GPTConfig(vocab_size=V, block_size=T, n_layer=12, n_head=12, n_embd=768)).to("cuda")
    tokens = np.random.default_rng(0).integers(0, V, 2 ** 21).astype(np.uint32)
    torch.cuda.reset_peak_memory_stats()
    tok_s = rho.score_corpus(model, tokens, T, os.path.join(d, "scores.bin"), "cuda", log=lambda *a: None)
    scores = np.fromfile(os.path.join(d, "scores.bin"), dtype=np.float16)[1:(len(tokens) - 1) // T * T + 1]
    val, peak = rho.eval_loss(model, rho.Blocks(tokens[:2 ** 18], T, 1, 0), "cuda"), torch.cuda.max_memory_allocated()
    mean, val = float(scores.astype(np.float32).mean()) - np.log(V), val - np.log(V)  # untrained: about log V
    assert np.isfinite(scores).all() and abs(mean) < 1 and abs(val) < 1 and peak < 12 * 2 ** 30, (mean, val, peak)
    return (f"{model.num_params() / 1e6:.1f}M params, {tok_s:,.0f} tok/s scoring, {rho.eval_batch('cuda', T, V, 512)} "
            f"blocks a batch, peak memory {peak / 2 ** 30:.1f} GiB")


def main():
    checks = ("tiny", "bench", "ddp", "score")  # score last: it runs in this process
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("--only", nargs="+", choices=checks, default=checks, help="the checks to run")
    ap.add_argument("--dir", default="", help="working folder (default: a new temporary one, kept)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: torch sees no CUDA GPU here; fix: run this on a machine with one (CUDA_VISIBLE_DEVICES unset)")
    d = os.path.abspath(args.dir or tempfile.mkdtemp(prefix="rho-gpu-check-"))
    os.makedirs(d, exist_ok=True)
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x "
          f"{torch.cuda.get_device_name(0)}; working in {d}", flush=True)
    failed = 0
    for name in (c for c in checks if c in args.only):
        t0 = time.time()
        try:
            note = globals()[f"check_{name}"](d)
            line = f"PASS {name}: {note}" if note is not None else f"SKIP {name}: needs 2 GPUs"
        except Exception as e:  # a failed check: its message's last lines, and on to the next check
            failed += 1
            line = f"FAIL {name}: " + "\n    ".join(str(e).strip().splitlines()[-12:] or [type(e).__name__])
        print(f"{line} ({time.time() - t0:.0f} s)", flush=True)
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}; outputs in {d}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
