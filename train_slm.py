"""train_slm.py -- step 2 of rho: continue pre-training the base on the unseen web with Selective Language Modeling (a
loss on the top `ratio` of tokens by excess loss) or, at --ratio 1.0, CLM: the same tokens, in the same order.

  python train_slm.py --ratio 0.6 1.0                     # SLM -> out/slm0.6, then CLM -> out/clm
  python train_slm.py --ratio 0.6 --select random         # a control (README.md: the controls) -> out/random0.6
  torchrun --nproc_per_node=8 train_slm.py --ratio 0.6 --scope global   # DDP, exact top-k over all GPUs
"""
import itertools
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

import data
import rho
from infra import arg, check_passes, cli, fail, load_checkpoint, read_pipeline, sync
from train_ref import RunFlags, train_config


@dataclass
class SlmRun(RunFlags):
    out_dir: str = arg("out", "pipeline folder made by train_ref.py; each run goes to out_dir/<name>")
    ratio: list = arg([0.6], "share of tokens that get a loss, in (0, 1]; 1.0: CLM", type=float, nargs="+")
    lr: list = arg(None, "peak learning rate(s) (default: the preset's)", type=float, nargs="+")
    select: str = arg("excess", "by excess loss (SLM) or a control", choices=["excess", "random", "ref_loss", "oracle"])
    mix_hq: float = arg(0.0, "control: CLM on the web mixed with this many epochs of the high-quality subset")
    ref_long: bool = arg(False, "control: the reference trained on for SLM's extra compute (folder: reflong)")
    ref_mode: str = arg("cached", "the reference's losses: the score file's, or run it", choices=["cached", "online"])
    scope: str = arg("local", "under torchrun: top-k per process, or global", choices=["local", "global"])
    weighting: str = arg("topk", "keep the top-k, or sigmoid((excess - cut) / temperature)", choices=["topk", "soft"])
    temperature: float = arg(None, "--weighting soft: sharpness in nats of excess loss (not given: 0.1)", type=float)
    max_tokens: int = arg(None, "tokens to train on, selected or not (default: the preset's)", type=int)
    batch_size: int = arg(None, "blocks per micro-batch per process (default: the preset's)", type=int)
    n_evals: int = arg(None, "evaluations (and checkpoints) over the run (default: the preset's)", type=int)
    tokens_per_step: int = arg(None, "tokens per optimizer step (0: one micro-batch; default: the preset's)", type=int)
    seed: int = arg(None, "seed of the data order (default: the pipeline's); the run folder gets -s<seed>", type=int)
    name: str = arg("", "run folder name under out_dir (default: clm, slm0.6, random0.6, ... -lr<lr> with --lr)")
    keep_ckpts: bool = arg(False, "keep every evaluation's checkpoint, for plot.py --categories (folder: -ckpts)")
    bench: bool = arg(False, "measure tokens/s of CLM, SLM (cached, online) and scoring on one model; trains nothing")


def folder_name(args, ratio, lr):
    """The run folder of one student run, from what sets it apart (plot.py names its arm from its config)."""
    selective = ratio < 1 and args.select != "oracle" and not args.ref_long
    name = "reflong" if args.ref_long else "oracle" if args.select == "oracle" else "clm" if ratio >= 1 else \
        {"excess": "slm", "random": "random", "ref_loss": "refloss"}[args.select] + f"{ratio:g}"
    name += f"-mixhq{args.mix_hq:g}" * bool(args.mix_hq) \
        + "-online" * (selective and args.select != "random" and args.ref_mode == "online") \
        + "-global" * (selective and args.scope == "global") \
        + (f"-soft{args.temperature:g}" if selective and args.weighting == "soft" else "") \
        + f"-s{args.seed}" * (args.seed is not None) + "-ckpts" * args.keep_ckpts
    return args.name or name + (f"-lr{lr:g}" if args.lr else "")


def student_config(args, pipe, ratio, lr, **kw):
    """The TrainConfig of one student run: the pipeline's settings, the flags given over them, this run's own."""
    settings, splits = pipe["settings"], data.read_meta(pipe["data_dir"])["splits"]
    defaults = {**settings, "max_tokens": settings["student_tokens"], "seed": pipe["seed"]}
    run = dict(data_dir=pipe["data_dir"], out_dir=os.path.join(args.out_dir, folder_name(args, ratio, lr)),
               ratio=1.0 if args.select == "oracle" else ratio, lr=settings["lr"] if lr is None else lr,
               init=pipe["base"], ref_ckpt=pipe["ref"], score_file=pipe["scores"])
    if args.ref_long:  # the reference's budget + SLM's extra: its student tokens and a scoring pass (a third a token)
        ref_tokens = int(pipe["ref_epochs"] * splits["ref_train"]["tokens"]) + splits["web"]["tokens"] // 3
        defaults.update(tokens_per_step=0, max_tokens=ref_tokens + defaults["max_tokens"])
        run.update(split="ref_train", ratio=1.0)
    else:
        check_passes("--max_tokens", args.max_tokens, splits["web"]["tokens"] + int(args.mix_hq * splits["ref_train"][
            "tokens"]), "web" + " with the subset mixed in" * bool(args.mix_hq))
    return train_config(defaults, args, **run, **kw)


def main(args):
    pipe = read_pipeline(args.out_dir)
    if not pipe:  # a run folder named by mistake, or no pipeline yet
        up = os.path.dirname(args.out_dir.rstrip("/")) or "."
        fail(f"no reference pipeline in {args.out_dir}", f"pass the pipeline folder: --out_dir {up}" if os.path.exists(
            os.path.join(args.out_dir, "config.json")) else f"run `python train_ref.py --out_dir {args.out_dir}` first")
    if args.temperature is not None and args.weighting != "soft":
        fail(f"--temperature is for --weighting soft, not {args.weighting}", "add --weighting soft, or drop it")
    args.temperature = 0.1 if args.temperature is None else args.temperature
    if len(set(args.ratio)) * len(set(args.lr or [0])) > 1 and args.name:
        fail("--name with several ratios or learning rates would put every run in one folder", "drop --name")
    if args.bench:
        return bench(args, pipe)
    for ratio, lr in itertools.product(args.ratio, args.lr or [None]):
        rho.train(student_config(args, pipe, ratio, lr))


def bench(args, pipe, steps=10, rounds=20):
    """Tokens/s of CLM, SLM (cached, online) and scoring on one model; rounds interleaved against drift, medians."""
    ratio = args.ratio[0] if args.ratio[0] < 1 else 0.6
    runs = {"CLM": (1.0, {}), f"SLM {ratio:g}, cached scores": (ratio, {}),
            f"SLM {ratio:g}, online reference": (ratio, {"ref_mode": "online"})}
    trainers = {name: rho.Trainer(student_config(args, pipe, r, None, **kw)) for name, (r, kw) in runs.items()}
    times = {name: [] for name in runs}
    for rnd, (name, tr) in itertools.product(range(rounds + 1), trainers.items()):
        sync(tr.device)
        t0 = time.perf_counter()
        for i in range(steps):
            tr.step(rnd * steps + i)
        sync(tr.device)
        times[name].append((time.perf_counter() - t0) / steps)
    times = {name: np.array(t[1:]) for name, t in times.items()}  # round 0: the warm-up (and compilation)
    tr, ref = trainers["CLM"], rho.GPT.from_checkpoint(load_checkpoint(pipe["ref"]))
    with tempfile.TemporaryDirectory() as d:
        scoring = rho.score_corpus(ref.to(tr.device), tr.blocks.tokens[:1_000_000], tr.T, os.path.join(d, "s.bin"),
                                   tr.device, log=lambda *a: None)
    print(f"benchmark on {tr.device} ({torch.get_num_threads()} threads), {tr.model.num_params() / 1e6:.2f}M params, "
          f"batch {tr.cfg.batch_size}x{tr.T}; medians of {rounds} interleaved rounds")
    for name, tr in trainers.items():
        tok_s = tr.tokens_per_step / np.median(times[name])
        mfu = f"   mfu {tok_s / tr.world * tr.flops_per_token / tr.peak:.1%}" if tr.peak else ""
        print(f"  {name:32s} {tok_s:>10,.0f} tok/s   step time {np.median(times[name] / times['CLM']):.3f}x CLM's{mfu}")
    clm = trainers["CLM"].tokens_per_step / np.median(times["CLM"])
    print(f"  {'scoring pass (forward only)':32s} {scoring:>10,.0f} tok/s   {scoring / clm:.1f}x CLM training")


if __name__ == "__main__":
    main(cli(SlmRun, __doc__.split("\n\n")[0].strip()))
