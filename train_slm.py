"""
train_slm.py -- step 2 of rho: continue pre-training the base model on the unseen part of the web corpus,
with Selective Language Modeling (loss on the top `ratio` of tokens by excess loss) or, at --ratio 1.0,
plain next-token training (CLM) on the same tokens, in the same order, from the same seed.

  python train_slm.py --ratio 0.6                  # SLM student       -> out/slm0.6
  python train_slm.py --ratio 1.0                  # CLM baseline      -> out/clm
  python train_slm.py --ratio 0.6 --select random  # control: a random 60% of tokens -> out/random0.6
  python train_slm.py --ratio 0.6 --select ref_loss    # control: the 60% the reference finds easiest
  python train_slm.py --ratio 0.6 --select block   # control: the top 60% of blocks by mean excess loss
  python train_slm.py --select oracle              # control: every token labelled target math -> out/oracle
  python train_slm.py --ratio 1.0 --mix_hq 4       # control: CLM on the web mixed with 4 epochs of the HQ subset
  python train_slm.py --ref_long                   # control: the reference fine-tuned longer -> out/reflong
  python train_slm.py --ratio 0.6 --ref_mode online     # reference run every step instead of the score file
  python train_slm.py --ratio 0.6 1.0 --lr 3e-3 1e-2     # a sweep: every ratio at every learning rate
  python train_slm.py --ratio 0.4 0.5 0.6 0.7 0.8 1.0    # a ratio sweep (plot.py draws out/compare-ratios.png)
  python train_slm.py --ratio 1.0 --keep_ckpts     # CLM keeping every eval's checkpoint (plot.py --categories)
  python train_slm.py --ratio 0.6 --weighting soft --temperature 0.5   # soft weights instead of top-k
  python train_slm.py --ratio 0.6 --weighting margin --margin 1   # top-k plus every token with excess > -1
  python train_slm.py --ratio 0.6 --refs 3 --combine min  # 3 references (train_ref.py --refs 3), combined
  python train_slm.py --bench                      # tokens/s of CLM, SLM (cached / online) and scoring
  torchrun --nproc_per_node=8 train_slm.py --ratio 0.6 --scope global   # DDP, exact top-k over all GPUs
Needs: python train_ref.py (same --out_dir). Then: python plot.py
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
from infra import arg, check_passes, check_ranges, cli, dist_setup, fail, load_checkpoint, read_pipeline, sync
from train_ref import TRAIN_KEYS


@dataclass
class SlmRun:
    out_dir: str = arg("out", "pipeline folder made by train_ref.py; each run goes to out_dir/<name>")
    ratio: list = arg([0.6], "share of tokens that get a loss, in (0, 1]; 1.0 = plain next-token training (CLM); "
                             "several values run one after another", type=float, nargs="+")
    lr: list = arg(None, "peak learning rate(s) (default: the preset's tuned rate, one for SLM, one for CLM); "
                         "several values run one after another", type=float, nargs="+")
    select: str = arg("excess", "which tokens get a loss: excess (SLM: the top `ratio` by excess loss) or a "
                                "control: random (a random share), ref_loss (the top by -reference loss: no "
                                "student term), block (the top `ratio` of blocks by mean excess loss, every "
                                "token of a kept block), oracle (every token labelled target math; no ratio)",
                      choices=rho.CHOICES["select"])
    mix_hq: float = arg(0.0, "control: CLM (or, with --ratio < 1 and --ref_mode online, SLM: beyond the paper) on "
                             "the web split mixed with this many epochs of the high-quality subset (e.g. the "
                             "reference's 4), same token budget")
    ref_long: bool = arg(False, "control: no web at all; the base fine-tuned on the high-quality subset (a longer "
                                "reference) for the reference's tokens plus SLM's extra compute (its student "
                                "tokens and one scoring pass of the web split); the run folder is reflong")
    ref_mode: str = arg("cached", "cached: reference losses from the score file; online: run the reference "
                                  "every step", choices=rho.CHOICES["ref_mode"])
    scope: str = arg("local", "under torchrun: top-k within each process's batch (local, what public "
                              "reimplementations do) or exact top-k over the global batch (global)",
                     choices=rho.CHOICES["scope"])
    refs: int = arg(0, "use the pipeline's first N extra references (train_ref.py --refs) instead of its main "
                       "one, their per-token losses combined by --combine", type=int)
    combine: str = arg("mean", "--refs: one reference loss per token from several: mean or min",
                       choices=rho.CHOICES["combine"])
    weighting: str = arg("topk", "topk: the loss on the top `ratio` of tokens (the paper); soft: every token "
                                 "weighted by sigmoid((excess - threshold) / temperature), the threshold where "
                                 "top-k would cut; margin: the top `ratio` plus every token whose excess is "
                                 "above -margin", choices=rho.CHOICES["weighting"])
    temperature: float = arg(0.1, "--weighting soft: sharpness in nats of excess loss (towards 0: top-k)")
    margin: float = arg(1.0, "--weighting margin: in nats; a token the student predicts at most this much "
                             "better than the reference keeps its loss")
    sft: bool = arg(False, "fine-tune instead: question -> worked-answer pairs of the high-quality subset, a loss "
                           "on answer tokens only, --ratio < 1 choosing among them by excess loss against the "
                           "reference (run online); the run folder gets sft-")
    init: str = arg("base", "base: start from the pipeline's base model (the paper); scratch: from scratch",
                    choices=["base", "scratch"])
    max_tokens: int = arg(None, "tokens to train on, selected or not (default: the preset's)", type=int)
    batch_size: int = arg(None, "blocks per micro-batch per process (default: the preset's)", type=int)
    n_evals: int = arg(None, "evaluations (and checkpoints) over the run (default: the preset's)", type=int)
    tokens_per_step: int = arg(None, "tokens per optimizer step; a multiple of batch x block x processes, the "
                                     "rest is gradient accumulation (default: the preset's; 0: one micro-batch per "
                                     "process)", type=int)
    seed: int = arg(None, "seed of the student: its data order (default: the pipeline's seed); the run folder "
                          "gets -s<seed>, the arm ' (student seed <seed>)'", type=int)
    name: str = arg("", "run folder name under out_dir (default: clm, slm0.6, random0.6, ... plus -lr<lr> "
                        "when --lr is given)")
    device: str = arg("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    compile: str = arg("auto", "torch.compile: auto (on for cuda), on, off", choices=["auto", "on", "off"])
    overwrite: bool = arg(False, "replace a run of the same name made with another configuration")
    resume: bool = arg(False, "continue an unfinished (killed) run from its last checkpoint; a run "
                              "not started yet (or killed before its first checkpoint) starts")
    ckpt_every: float = arg(300.0, "seconds between checkpoints (at a logged step) besides every evaluation's: "
                                   "what a killed run loses at most; 0: at every logged step")
    keep_ckpts: bool = arg(False, "also keep the checkpoint of every evaluation (ckpt_<step>.pt), for "
                                  "plot.py --categories; the run folder gets -ckpts")
    bench: bool = arg(False, "measure training tokens/s of CLM, SLM with cached scores and SLM with an online "
                             "reference (same process, same model) and the scoring pass; trains nothing")


SELECT_NAMES = {"excess": ("SLM", "slm"), "random": ("random", "random"), "ref_loss": ("ref-loss", "refloss"),
                "block": ("block", "block")}  # --select: (the arm's word, the folder's)


def names(args, ratio, lr):
    """(arm, run folder) of one student run, from one list of what sets it apart: the arm is what the run is in
    words (plot.py's name for it, kept in its config), the folder where it goes (plus -lr<lr> with --lr)."""
    if args.ref_long:
        arm, folder = "reference, longer", "reflong"
    elif args.select == "oracle":
        arm, folder = "oracle (math tokens)", "oracle"
    elif ratio >= 1:
        arm, folder = "CLM", "clm"
    else:
        word, short = SELECT_NAMES[args.select]
        arm, folder = f"{word} {ratio:g}", f"{short}{ratio:g}"
    selective = ratio < 1 and args.select != "oracle" and not args.ref_long
    by_ref = selective and args.select != "random"
    for on, a, f in ((args.mix_hq, f" + HQ x{args.mix_hq:g}", f"-mixhq{args.mix_hq:g}"),
                     (by_ref and args.ref_mode == "online" and not args.sft, " (online ref)", "-online"),
                     (selective and args.scope == "global", " (global)", "-global"),
                     (selective and args.weighting == "soft", f" (soft {args.temperature:g})",
                      f"-soft{args.temperature:g}"),
                     (selective and args.weighting == "margin", f" (margin {args.margin:g})",
                      f"-margin{args.margin:g}"),
                     (by_ref and args.refs, f" ({args.refs} refs, {args.combine})",
                      f"-refs{args.refs}{args.combine}"),
                     (args.init == "scratch", " (from scratch)", "-scratch"),
                     (args.seed is not None, f" (student seed {args.seed})", f"-s{args.seed}"),
                     (args.keep_ckpts, "", "-ckpts")):
        if on:
            arm, folder = arm + a, folder + f
    folder = args.name or ("sft-" if args.sft else "") + folder + (f"-lr{lr:g}" if args.lr else "")
    return ("SFT " if args.sft else "") + arm, folder


def main(args):
    pipe = read_pipeline(args.out_dir)
    if not pipe and os.path.exists(os.path.join(args.out_dir, "config.json")):
        fail(f"{args.out_dir} is a run folder, not a pipeline's", "pass the pipeline's folder: --out_dir "
             f"{os.path.dirname(args.out_dir.rstrip('/')) or '.'}")
    if not pipe:
        fail(f"no reference pipeline in {args.out_dir}",
             f"run `python train_ref.py --out_dir {args.out_dir}` first")
    if not os.path.exists(os.path.join(pipe["data_dir"], "meta.json")):
        fail(f"the pipeline in {args.out_dir} trains on {pipe['data_dir']}, which holds no corpus",
             f"move its corpus there, or rebuild it with `python train_ref.py --preset {pipe['preset']} --seed "
             f"{pipe['seed']} --data_dir {pipe['data_dir']} --out_dir {args.out_dir}` (and the pipeline's other flags)")
    for flag, weighting in (("temperature", "soft"), ("margin", "margin")):  # a setting of another weighting
        if args.weighting != weighting and getattr(args, flag) != getattr(SlmRun(), flag):
            fail(f"--{flag} sets --weighting {weighting}, and this run weights by {args.weighting}",
                 f"add --weighting {weighting}, or drop --{flag}")
    check_ranges(args, (), ("refs",))
    if args.init == "base" and not pipe["base"]:
        fail(f"the pipeline in {args.out_dir} has no base model (made with --init scratch)",
             "pass --init scratch, or run train_ref.py with --init base")
    if len(set(args.ratio)) * len(set(args.lr or [0])) > 1 and args.name:
        fail("--name with several ratios or learning rates would put every run in one folder", "drop --name")
    if args.bench:
        return bench(args, pipe)
    for ratio, lr in itertools.product(args.ratio, args.lr or [None]):
        cfg = student_config(args, pipe, ratio, lr)
        s = rho.train(cfg)
        if dist_setup()[0] == 0:
            print(f"{cfg.out_dir}: val loss {s['val_loss']:.4f}, accuracy {s.get('acc', 0):.1%}")


def student_config(args, pipe, ratio, lr, **kw):
    """The TrainConfig of one student run: the pipeline's settings, this run's ratio and learning rate."""
    settings = pipe["settings"]
    lr = (settings["lr_clm"] if ratio >= 1 else settings["lr"]) if lr is None else lr
    given = lambda default: default if args.max_tokens is None else args.max_tokens  # noqa: E731
    refs = [{"ckpt": pipe["ref"], "scores": pipe["scores"]}]
    if args.refs:
        if len(pipe.get("refs", {})) < args.refs:
            fail(f"the pipeline in {args.out_dir} has {len(pipe.get('refs', {}))} extra reference(s), "
                 f"not {args.refs}",
                 f"train them with `python train_ref.py --out_dir {args.out_dir} --refs {args.refs}` (same settings)")
        refs = [pipe["refs"][f"r{i}"] for i in range(1, args.refs + 1)]
    arm, folder = names(args, ratio, lr)
    cfg = dict(arm=arm, data_dir=pipe["data_dir"], split="web", out_dir=os.path.join(args.out_dir, folder),
               init=pipe["base"] if args.init == "base" else "", ratio=ratio, select=args.select,
               ref_ckpts=",".join(x["ckpt"] for x in refs), score_files=",".join(x["scores"] for x in refs),
               mix_hq=args.mix_hq, combine=args.combine if args.refs else "mean", ref_mode=args.ref_mode,
               scope=args.scope, weighting=args.weighting, temperature=args.temperature,
               margin=args.margin,
               max_tokens=given(settings["student_tokens"]), lr=lr,
               seed=pipe["seed"] if args.seed is None else args.seed, device=args.device, compile=args.compile,
               overwrite=args.overwrite, resume=args.resume, keep_ckpts=args.keep_ckpts, ckpt_every=args.ckpt_every,
               **{k: settings[k] for k in TRAIN_KEYS if k in settings})
    splits = data.read_meta(pipe["data_dir"])["splits"]
    if not args.sft and not args.ref_long:
        check_passes("--max_tokens", args.max_tokens, splits["web"]["tokens"] + int(args.mix_hq * splits["ref_train"][
            "tokens"]), "web" + " with the subset mixed in" * bool(args.mix_hq))
    ref_tokens = int(pipe["ref_epochs"] * splits["ref_train"]["tokens"])  # the chosen reference's
    if args.sft:  # the reference's data and budget; a score file exists only for the web split
        cfg.update(split="ref_train", sft=True, ref_mode="online", tokens_per_step=0,
                   max_tokens=given(ref_tokens))
    if args.select == "oracle":  # the labels decide, not a ratio
        cfg.update(ratio=1.0)
    if args.ref_long:  # the reference's budget + SLM's extra: its student tokens and a scoring pass (a forward
        # pass costs a third of a training step)
        cfg.update(split="ref_train", ratio=1.0, tokens_per_step=0,
                   max_tokens=given(ref_tokens + cfg["max_tokens"] + splits["web"]["tokens"] // 3))
    for k in ("batch_size", "n_evals", "tokens_per_step"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    return rho.TrainConfig(**{**cfg, **kw})


def benchmark(cfgs, steps=10, rounds=20):
    """Step time of several configurations (e.g. CLM, SLM with cached scores, SLM with an online reference)
    on the same model and data, measured in the same process and interleaved round by round, so that the
    machine's drift hits every configuration alike. Returns {name: (tokens/s, step time / the first's, MFU)}:
    medians over rounds, the ratio paired within each round; MFU None where the GPU's peak is unknown (a CPU)."""
    trainers = {name: rho.Trainer(cfg) for name, cfg in cfgs.items()}
    times = {name: [] for name in cfgs}
    for tr in trainers.values():  # warm up (and compile)
        for i in range(3):
            tr.step(i)
    for rnd in range(rounds):
        for name, tr in trainers.items():
            sync(tr.device)
            t0 = time.perf_counter()
            for i in range(steps):
                tr.step(3 + rnd * steps + i)
            sync(tr.device)
            times[name].append((time.perf_counter() - t0) / steps)
    first = np.array(next(iter(times.values())))
    out = {}
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
    result = benchmark(cfgs)
    tr = rho.Trainer(cfgs["CLM"])
    ref = rho.GPT.from_checkpoint(load_checkpoint(pipe["ref"])).to(tr.device)
    n = min(len(tr.blocks.tokens), 1_000_000)
    with tempfile.TemporaryDirectory() as d:
        scoring = rho.score_corpus(ref, tr.blocks.tokens[:n], tr.T, os.path.join(d, "s.bin"), tr.device,
                                   log=lambda *a: None)
    clm = result["CLM"][0]
    print(f"benchmark on {tr.device} ({torch.get_num_threads()} threads), {tr.model.num_params() / 1e6:.2f}M params, "
          f"batch {tr.cfg.batch_size}x{tr.T}; medians of 20 interleaved rounds")
    for name, (tok_s, rel, mfu) in result.items():
        print(f"  {name:32s} {tok_s:>10,.0f} tok/s   step time {rel:.3f}x CLM's"
              + (f"   mfu {mfu:.1%}" if mfu is not None else ""))
    print(f"  {'scoring pass (forward only)':32s} {scoring:>10,.0f} tok/s   {scoring / clm:.1f}x CLM training")


if __name__ == "__main__":
    main(cli(SlmRun, __doc__.split("\n\n")[0].strip()))
