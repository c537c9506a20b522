"""
gpu_check.py -- the first command to run on a machine with a CUDA GPU. The CUDA path (bf16, TF32, torch.compile,
fused AdamW, NCCL under torchrun) has been checked on a CPU only (tests/test_cuda_path.py); this runs it, one line
PASS / FAIL / SKIP per check, in under 10 minutes on one GPU. Exits 1 if a check failed.

  python experiments/gpu_check.py                 # every check (ddp: only with 2 or more GPUs)
  python experiments/gpu_check.py --only tiny     # one or more of: tiny bench ddp score

  tiny   the tiny pipeline on --device cuda (compiled), a student with 2 micro-batches a step, and --resume
  bench  train_slm.py --bench (tokens/s and MFU) on the gpu preset's model (26M) over the tiny corpus
  ddp    torchrun, 2 processes (NCCL), --scope global with 2 micro-batches a step, against one process on their
         batch: the same selection, so the same validation loss up to bf16
  score  score_corpus and eval_loss with the gpt2 preset's model: block 1,024, a vocabulary of 100,277
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CHECKS = ("tiny", "bench", "ddp", "score")


def sh(script, *args, cwd, nproc=0, timeout=400):
    """Run a script of the repo (under torchrun with nproc processes); its output, or an error with its tail."""
    launch = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port=29571"] if nproc else []
    p = subprocess.Popen([sys.executable, *launch, os.path.join(ROOT, script), *args], cwd=cwd, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = p.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        p.terminate()  # torchrun stops its processes on SIGTERM
        out = p.communicate()[0]
        raise RuntimeError(f"{script} {' '.join(args)}: no end after {timeout} s\n{out[-3000:]}")
    if p.returncode:
        raise RuntimeError(f"{script} {' '.join(args)}: exit {p.returncode}\n{out[-3000:]}")
    return out


def done(d, run):
    with open(os.path.join(d, "out", run, "done.json")) as f:
        return json.load(f)


def pipeline(d):
    """The tiny preset's pipeline on the GPU (reused once made)."""
    sh("train_ref.py", "--preset", "tiny", "--device", "cuda", cwd=d)


def check_tiny(d):
    pipeline(d)
    sh("train_slm.py", "--ratio", "0.6", "--device", "cuda", "--tokens_per_step", "1024", cwd=d)  # 2 x 8 x 64
    s = done(d, "slm0.6")
    os.remove(os.path.join(d, "out", "slm0.6", "done.json"))  # as if killed after its last checkpoint
    out = sh("train_slm.py", "--ratio", "0.6", "--device", "cuda", "--tokens_per_step", "1024", "--resume", cwd=d)
    assert "resuming at step" in out and math.isfinite(s["val_loss"]), out[-2000:]
    return f"SLM 0.6 with 2 micro-batches a step: val loss {s['val_loss']:.4f}, {s.get('tok_s', 0):,.0f} tok/s; resumed"


def check_bench(d):
    sh("train_ref.py", "--preset", "tiny", "--n_layer", "8", "--n_head", "8", "--n_embd", "512", "--block_size", "256",
       "--out_dir", "out/bench", "--device", "cuda", cwd=d)
    out = sh("train_slm.py", "--out_dir", "out/bench", "--bench", "--batch_size", "64", "--device", "cuda", cwd=d)
    lines = [" ".join(x.split()) for x in out.splitlines() if "tok/s" in x]  # 3 trainings and the scoring pass
    assert len(lines) == 4, out[-2000:]
    return " | ".join(lines) + ("" if "mfu" in lines[0] else " (no MFU: this GPU is not in infra.PEAK_FLOPS)")


def check_ddp(d):
    import torch
    if torch.cuda.device_count() < 2:
        return None
    pipeline(d)
    args = ["--ratio", "0.6", "--device", "cuda", "--max_tokens", "16384", "--n_evals", "2",
            "--tokens_per_step", "2048"]
    sh("train_slm.py", *args, "--scope", "global", "--name", "ddp2", nproc=2, cwd=d)   # 2 processes x 2 x 8 x 64
    sh("train_slm.py", *args, "--batch_size", "16", "--name", "single16", cwd=d)       # 1 process x 2 x 16 x 64
    a, b = done(d, "ddp2")["val_loss"], done(d, "single16")["val_loss"]
    assert abs(a - b) < 0.05, (a, b)
    return f"val loss 2 processes {a:.4f}, one process {b:.4f}"


def check_score(d):
    import numpy as np
    import torch
    import rho
    V, T = 100_277, 1024
    torch.manual_seed(0)
    model = rho.GPT(rho.GPTConfig(vocab_size=V, block_size=T, n_layer=12, n_head=12, n_embd=768)).to("cuda")
    tokens = np.random.default_rng(0).integers(0, V, 2 ** 21).astype(np.uint32)
    torch.cuda.reset_peak_memory_stats()
    tok_s = rho.score_corpus(model, tokens, T, os.path.join(d, "scores.bin"), "cuda", log=lambda *a: None)
    scores = np.fromfile(os.path.join(d, "scores.bin"), dtype=np.float16)[1:(len(tokens) - 1) // T * T + 1]
    val = rho.eval_loss(model, rho.Blocks(tokens[:2 ** 18], T, 1, 0), "cuda")
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    assert np.isfinite(scores).all() and abs(float(scores.astype(np.float32).mean()) - math.log(V)) < 1.0
    assert abs(val - math.log(V)) < 1.0 and peak < 12, (val, peak)
    return (f"{model.num_params() / 1e6:.1f}M params (the gpt2 preset's shape), {tok_s:,.0f} tok/s scoring, "
            f"{rho.eval_batch('cuda', T, V, 512)} blocks a batch, peak memory {peak:.1f} GiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS), help="the checks to run")
    ap.add_argument("--dir", default="", help="working folder (default: a new temporary one, kept)")
    args = ap.parse_args()
    import torch
    from infra import fail
    if not torch.cuda.is_available():
        fail("torch sees no CUDA GPU here", "run this on a machine with one (and CUDA_VISIBLE_DEVICES unset)")
    d = os.path.abspath(args.dir or tempfile.mkdtemp(prefix="rho-gpu-check-"))
    os.makedirs(d, exist_ok=True)
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x "
          f"{torch.cuda.get_device_name(0)}; working in {d}", flush=True)
    failed = 0
    for name in (c for c in CHECKS if c in args.only):  # score last: it is the one that runs in this process
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
