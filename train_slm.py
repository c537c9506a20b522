"""
train_slm.py -- step 2 of rho: continue pre-training the base model on the unseen part of the web corpus, with
Selective Language Modeling (a loss on the top `ratio` of tokens by excess loss) or, at --ratio 1.0, plain
next-token training (CLM) on the same tokens, in the same order, from the same seed.

  python train_slm.py --ratio 0.6                  # SLM student       -> out/slm0.6
  python train_slm.py --ratio 1.0                  # CLM baseline      -> out/clm
  python train_slm.py --ratio 0.6 --select random  # control: a random 60% of tokens -> out/random0.6
  python train_slm.py --ratio 0.6 --select ref_loss    # control: the 60% the reference finds easiest
  python train_slm.py --select oracle              # control: every token labelled target math -> out/oracle
  python train_slm.py --ratio 1.0 --mix_hq 4       # control: CLM on the web mixed with 4 epochs of the HQ subset
  python train_slm.py --ref_long                   # control: the reference fine-tuned longer -> out/reflong
  python train_slm.py --ratio 0.6 --ref_mode online     # reference run every step instead of the score file
  python train_slm.py --ratio 0.6 1.0 --lr 3e-3 1e-2     # a sweep: every ratio at every learning rate
  python train_slm.py --ratio 0.4 0.5 0.6 0.7 0.8 1.0    # a ratio sweep (plot.py draws the ratio plot)
  python train_slm.py --ratio 1.0 --keep_ckpts     # CLM keeping every eval's checkpoint (plot.py --categories)
  python train_slm.py --ratio 0.6 --weighting soft --temperature 0.5   # soft weights instead of top-k
  python train_slm.py --bench                      # tokens/s of CLM, SLM (cached / online) and scoring
  torchrun --nproc_per_node=8 train_slm.py --ratio 0.6 --scope global   # DDP, exact top-k over all GPUs
Needs: python train_ref.py (same --out_dir). Then: python plot.py
"""
import itertools
import os
import tempfile
import time
from dataclasses import dataclass, fields

import numpy as np
import torch

import data
import rho
from infra import arg, check_passes, cli, dist_setup, fail, load_checkpoint, read_pipeline, sync
from train_ref import TRAIN_KEYS


@dataclass
class SlmRun:
    out_dir: str = arg("out", "pipeline folder made by train_ref.py; each run goes to out_dir/<name>")
    ratio: list = arg([0.6], "share of tokens that get a loss, in (0, 1]; 1.0 = plain next-token training (CLM); "
                             "several values run one after another", type=float, nargs="+")
    lr: list = arg(None, "peak learning rate(s) (default: the preset's tuned rate, one for SLM, one for CLM); "
                         "several values run one after another", type=float, nargs="+")
    select: str = arg("excess", "which tokens get a loss: excess (SLM: the top `ratio` by excess loss) or a "
                                "control: random (a random share), ref_loss (the top by -reference loss: no student "
                                "term), oracle (every token labelled target math; no ratio)",
                      choices=rho.CHOICES["select"])
    mix_hq: float = arg(0.0, "control: CLM on the web split mixed with this many epochs of the high-quality subset "
                             "(e.g. the reference's 4), same token budget")
    ref_long: bool = arg(False, "control: no web at all; the base fine-tuned on the high-quality subset (a longer "
                                "reference) for the reference's tokens plus SLM's extra compute (its student tokens "
                                "and one scoring pass of the web split); the run folder is reflong")
    ref_mode: str = arg("cached", "cached: reference losses from the score file; online: run the reference every "
                                  "step", choices=rho.CHOICES["ref_mode"])
    scope: str = arg("local", "under torchrun: top-k within each process's batch (local, what public "
                              "reimplementations do) or exact top-k over the global batch (global)",
                     choices=rho.CHOICES["scope"])
    weighting: str = arg("topk", "topk: the loss on the top `ratio` of tokens (the paper); soft: every token "
                                 "weighted by sigmoid((excess - threshold) / temperature), the threshold where top-k "
                                 "would cut", choices=rho.CHOICES["weighting"])
    temperature: float = arg(None, "--weighting soft: sharpness in nats of excess loss, towards 0: top-k (not "
                                   "given: 0.1)", type=float)
    max_tokens: int = arg(None, "tokens to train on, selected or not (default: the preset's)", type=int)
    batch_size: int = arg(None, "blocks per micro-batch per process (default: the preset's)", type=int)
    n_evals: int = arg(None, "evaluations (and checkpoints) over the run (default: the preset's)", type=int)
    tokens_per_step: int = arg(None, "tokens per optimizer step; a multiple of batch x block x processes, the rest "
                                     "is gradient accumulation (default: the preset's; 0: one micro-batch per "
                                     "process)", type=int)
    seed: int = arg(None, "seed of the student: its data order (default: the pipeline's seed); the run folder gets "
                          "-s<seed>", type=int)
    name: str = arg("", "run folder name under out_dir (default: clm, slm0.6, random0.6, ... plus -lr<lr> when "
                        "--lr is given)")
    device: str = arg("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    compile: str = arg("auto", "torch.compile: auto (on for cuda), on, off", choices=["auto", "on", "off"])
    overwrite: bool = arg(False, "replace a run of the same name made with another configuration")
    resume: bool = arg(False, "continue an unfinished (killed) run from its last checkpoint; a run not started yet "
                              "(or killed before its first checkpoint) starts")
    ckpt_every: float = arg(300.0, "seconds between checkpoints (at a logged step) besides every evaluation's: "
                                   "what a killed run loses at most; 0: at every logged step")
    keep_ckpts: bool = arg(False, "also keep the checkpoint of every evaluation (ckpt_<step>.pt), for plot.py "
                                  "--categories; the run folder gets -ckpts")
    bench: bool = arg(False, "measure training tokens/s of CLM, SLM with cached scores and SLM with an online "
                             "reference (same process, same model) and the scoring pass; trains nothing")


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
    """The TrainConfig of one student run: the pipeline's settings, the flags given, this run's ratio and rate."""
    settings, splits = pipe["settings"], data.read_meta(pipe["data_dir"])["splits"]
    lr = (settings["lr_clm"] if ratio >= 1 else settings["lr"]) if lr is None else lr
    folder = folder_name(args, ratio, lr)
    given = {f.name: getattr(args, f.name) for f in fields(rho.TrainConfig) if getattr(args, f.name, None) is not None}
    cfg = {**{k: settings[k] for k in TRAIN_KEYS if k in settings}, "max_tokens": settings["student_tokens"], **given,
           "data_dir": pipe["data_dir"], "out_dir": os.path.join(args.out_dir, folder), "ratio": ratio,
           "lr": lr, "init": pipe["base"], "ref_ckpt": pipe["ref"], "score_file": pipe["scores"],
           "seed": pipe["seed"] if args.seed is None else args.seed}
    if not args.ref_long:
        check_passes("--max_tokens", args.max_tokens, splits["web"]["tokens"] + int(args.mix_hq * splits["ref_train"][
            "tokens"]), "web" + " with the subset mixed in" * bool(args.mix_hq))
    if args.select == "oracle":  # the labels decide, not a ratio
        cfg.update(ratio=1.0)
    if args.ref_long:  # the reference's budget + SLM's extra: its student tokens and a scoring pass (a forward
        # pass costs a third of a training step)
        ref_tokens = int(pipe["ref_epochs"] * splits["ref_train"]["tokens"])
        cfg.update(split="ref_train", ratio=1.0, tokens_per_step=given.get("tokens_per_step", 0),
                   max_tokens=ref_tokens + cfg["max_tokens"] + splits["web"]["tokens"] // 3 if args.max_tokens is None
                   else args.max_tokens)
    return rho.TrainConfig(**{**cfg, **kw})


def main(args):
    pipe = read_pipeline(args.out_dir)
    if not pipe and os.path.exists(os.path.join(args.out_dir, "config.json")):
        fail(f"{args.out_dir} is a run folder, not a pipeline's", "pass the pipeline's folder: --out_dir "
             f"{os.path.dirname(args.out_dir.rstrip('/')) or '.'}")
    if not pipe:
        fail(f"no reference pipeline in {args.out_dir}", f"run `python train_ref.py --out_dir {args.out_dir}` first")
    if not os.path.exists(os.path.join(pipe["data_dir"], "meta.json")):
        fail(f"the pipeline in {args.out_dir} trains on {pipe['data_dir']}, which holds no corpus",
             f"move its corpus there, or rebuild it with `python train_ref.py --preset {pipe['preset']} --seed "
             f"{pipe['seed']} --data_dir {pipe['data_dir']} --out_dir {args.out_dir}` (and the pipeline's other flags)")
    if args.temperature is not None and args.weighting != "soft":
        fail(f"--temperature sets --weighting soft, and this run weights by {args.weighting}",
             "add --weighting soft, or drop --temperature")
    args.temperature = 0.1 if args.temperature is None else args.temperature
    if len(set(args.ratio)) * len(set(args.lr or [0])) > 1 and args.name:
        fail("--name with several ratios or learning rates would put every run in one folder", "drop --name")
    if args.bench:
        return bench(args, pipe)
    for ratio, lr in itertools.product(args.ratio, args.lr or [None]):
        cfg = student_config(args, pipe, ratio, lr)
        s = rho.train(cfg)
        if dist_setup()[0] == 0:
            print(f"{cfg.out_dir}: val loss {s['val_loss']:.4f}, accuracy {s.get('acc', 0):.1%}")


def benchmark(cfgs, steps=10, rounds=20):
    """Step time of several configurations on the same model and data, in the same process, interleaved round by
    round so that the machine's drift hits each alike. {name: (tokens/s, step time / the first's, MFU or None)}:
    medians over rounds, the ratio paired within each round."""
    trainers = {name: rho.Trainer(cfg) for name, cfg in cfgs.items()}
    times = {name: [] for name in cfgs}
    for tr in trainers.values():  # warm up (and compile)
        for i in range(3):
            tr.step(i)
    for rnd, (name, tr) in itertools.product(range(rounds), trainers.items()):
        sync(tr.device)
        t0 = time.perf_counter()
        for i in range(steps):
            tr.step(3 + rnd * steps + i)
        sync(tr.device)
        times[name].append((time.perf_counter() - t0) / steps)
    first, out = np.array(next(iter(times.values()))), {}
    for name, tr in trainers.items():
        tok_s = tr.tokens_per_step / float(np.median(times[name]))
        out[name] = (tok_s, float(np.median(np.array(times[name]) / first)),
                     tok_s / tr.world * tr.flops_per_token / tr.peak if tr.peak else None)
    return out


def bench(args, pipe):
    ratio = args.ratio[0] if args.ratio[0] < 1 else 0.6
    cfgs = {"CLM": student_config(args, pipe, 1.0, None),
            f"SLM {ratio:g}, cached scores": student_config(args, pipe, ratio, None),
            f"SLM {ratio:g}, online reference": student_config(args, pipe, ratio, None, ref_mode="online")}
    result, tr = benchmark(cfgs), rho.Trainer(cfgs["CLM"])
    ref = rho.GPT.from_checkpoint(load_checkpoint(pipe["ref"])).to(tr.device)
    with tempfile.TemporaryDirectory() as d:
        scoring = rho.score_corpus(ref, tr.blocks.tokens[:1_000_000], tr.T, os.path.join(d, "s.bin"), tr.device,
                                   log=lambda *a: None)
    print(f"benchmark on {tr.device} ({torch.get_num_threads()} threads), {tr.model.num_params() / 1e6:.2f}M params, "
          f"batch {tr.cfg.batch_size}x{tr.T}; medians of 20 interleaved rounds")
    for name, (tok_s, rel, mfu) in result.items():
        print(f"  {name:32s} {tok_s:>10,.0f} tok/s   step time {rel:.3f}x CLM's" + (f"   mfu {mfu:.1%}" * bool(mfu)))
    print(f"  {'scoring pass (forward only)':32s} {scoring:>10,.0f} tok/s   {scoring / result['CLM'][0]:.1f}x CLM "
          "training")


if __name__ == "__main__":
    main(cli(SlmRun, __doc__.split("\n\n")[0].strip()))
