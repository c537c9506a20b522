"""train_ref.py -- step 1 of rho: build the corpus (data.py) if missing, pre-train a base model on part of the web,
fine-tune a copy on the high-quality math (the reference, from the students' base as in the paper), score their web.

  python train_ref.py                       # the demo: data/, out/base, out/ref, out/ref/scores.bin; then train_slm.py
  python train_ref.py --preset cpu --seed 1 --data_dir data/seed1 --out_dir out/seed1   # the experiment's size
"""
import json
import os
from dataclasses import asdict, dataclass, fields

import data
import rho
from infra import FolderLock, arg, atomic_write, barrier, check_folder, check_passes, check_ranges, cli, dist_setup, \
    fail, load_checkpoint, pick_device, read_json, score_stamp, scores_match

# Model sizes and budgets (data.py has the embedded corpus sizes of the same names; README.md, the table)
CPU = dict(n_layer=4, n_head=4, n_embd=64, block_size=128, batch_size=8, base_tokens=2_500_000, base_lr=6e-3,
           ref_epochs=40, ref_lr=1.2e-2, student_tokens=3_000_000, lr=6e-3, n_evals=8, eval_problems=400, log_every=100)
PRESETS = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=64, batch_size=8, base_tokens=20_000, base_lr=3e-3,
                 ref_epochs=2, ref_lr=1e-3, student_tokens=20_000, lr=3e-3, n_evals=2, eval_problems=8,
                 eval_max_new=32, log_every=5),
    "demo": dict(CPU, lr=3e-3, n_evals=6, ref_evals=1),  # cpu's, its lr chosen on validation; base, ref: 2 evals
    "cpu": CPU,
    "cpu512": dict(n_layer=4, n_head=4, n_embd=128, block_size=512, batch_size=4, base_tokens=1_000_000, base_lr=3e-3,
                   ref_epochs=2, ref_lr=1e-3, student_tokens=1_000_000, lr=2e-3, n_evals=6, eval_problems=100,
                   val_problems=100, eval_max_new=256, log_every=25),
    # 131k tokens a step on 1 to 8 GPUs (1 GPU: 8 micro-batches), not a batch that grows with them
    "gpu": dict(n_layer=8, n_head=8, n_embd=512, block_size=256, batch_size=64, tokens_per_step=131_072,
                base_tokens=100_000_000, base_lr=3e-3, ref_epochs=3, ref_lr=1e-3, student_tokens=200_000_000, lr=2e-3,
                n_evals=20, eval_problems=1000, log_every=100),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=16, tokens_per_step=524_288,
                 base_tokens=1_000_000_000, base_lr=6e-4, ref_epochs=3, ref_lr=1e-4, student_tokens=2_000_000_000,
                 lr=6e-4, n_evals=20, eval_problems=500, eval_max_new=256, log_every=20),
}
SHAPE = ("n_layer", "n_head", "n_embd", "block_size")  # a model's shape, which a checkpoint fixes
SETTINGS = (*SHAPE, "base_tokens", "base_lr", "n_evals", "eval_problems", "val_problems", "eval_max_new")  # flags


@dataclass
class RunFlags:  # how a run is run, train_ref.py's and train_slm.py's
    device: str = arg("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    compile: str = arg("auto", "torch.compile: auto (on for cuda), on, off", choices=["auto", "on", "off"])
    overwrite: bool = arg(False, "replace a run (of the same name) made with another configuration")
    resume: bool = arg(False, "continue an unfinished (killed) run from its last checkpoint, or start one not started")
    ckpt_every: float = arg(300.0, "seconds between checkpoints besides every evaluation's (0: at every logged step)")


@dataclass
class RefRun(RunFlags):
    preset: str = arg("demo", f"sizes of corpus, model and budgets: {', '.join(PRESETS)} (gpt2: for a real corpus)")
    seed: int = arg(0, "seed of the whole pipeline: corpus, base model, reference")
    data_dir: str = arg("data", "corpus folder (the embedded toy corpus is built here if it holds none)")
    out_dir: str = arg("out", "pipeline folder: base/, ref/, ref/scores.bin and pipeline.json go here")
    corpus: list = arg([], "corpus settings: data.py's DataConfig fields", nargs="*", type=str, metavar="KEY=VALUE")
    base_tokens: int = arg(None, "tokens the base model is pre-trained on (default: the preset's)", type=int)
    base_lr: float = arg(None, "peak learning rate of the base model (default: the preset's)", type=float)
    base: str = arg("", "use this base model (e.g. another pipeline's out/base/ckpt.pt) instead of training one")
    ref_epochs: list = arg(None, "reference epochs over the subset, several: a sweep (default: the preset's)",
                           type=float, nargs="+")
    ref_lr: list = arg(None, "peak learning rate(s) of the reference (default: the preset's)", type=float, nargs="+")
    student_base: str = arg("", "beyond the paper: the students start from this base, the reference from its own")
    ref_web: int = arg(0, "beyond the paper: the reference trains on the first 1/N of the base's web too", type=int)
    block_size: int = arg(None, "context length of the models (default: the preset's)", type=int)
    n_layer: int = arg(None, "transformer blocks (default: the preset's)", type=int)
    n_head: int = arg(None, "attention heads (default: the preset's)", type=int)
    n_embd: int = arg(None, "model width (default: the preset's)", type=int)
    eval_max_new: int = arg(None, "tokens decoded per test problem (default: the preset's)", type=int)
    n_evals: int = arg(None, "log-spaced evaluations of each run, the students' too (default: the preset's)", type=int)
    eval_problems: int = arg(None, "test problems decoded at each evaluation (default: the preset's)", type=int)
    val_problems: int = arg(None, "validation problems for the answer loss (0: all; default: the preset's)", type=int)


def train_config(settings, args, **run):
    """A run's TrainConfig, each value from one place: the pipeline's settings, a flag given over them, then `run`."""
    given = {k: v for k, v in asdict(args).items() if v is not None}
    names = {f.name for f in fields(rho.TrainConfig)}
    return rho.TrainConfig(**{k: v for k, v in {**settings, **given, **run}.items() if k in names})


def pipeline_settings(args):
    """The preset's sizes and budgets, with the ones given as flags; with --base, the base's shape."""
    if args.preset not in PRESETS:
        fail(f"unknown preset '{args.preset}'", f"use one of: {', '.join(PRESETS)}")
    check_folder(args.out_dir)
    check_folder(args.data_dir)
    check_ranges(args, ("base_tokens", "base_lr", "ref_epochs", "ref_lr", "block_size", "n_layer", "n_head", "n_embd",
                        "n_evals"), ("seed", "ref_web", "eval_max_new", "eval_problems", "val_problems"))
    settings = {**PRESETS[args.preset], **{k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}}
    if args.base:  # the reference and the students take the base's shape: a flag cannot change it
        if os.path.isdir(args.base):
            fail(f"--base {args.base} is a folder", f"name its checkpoint: --base {os.path.join(args.base, 'ckpt.pt')}")
        shape = load_checkpoint(args.base, "base model")["model_args"]
        clash = [f"--{k} {getattr(args, k)}" for k in SHAPE if getattr(args, k) not in (None, shape[k])]
        if clash:
            fail(f"{', '.join(clash)} cannot change the base {args.base}: "
                 + ", ".join(f"{k} {shape[k]}" for k in SHAPE), "drop them, or train a base of that shape (no --base)")
        settings.update({k: shape[k] for k in SHAPE})
    student_base = load_checkpoint(args.student_base, "student base") if args.student_base else None
    if student_base and student_base["model_args"]["block_size"] != settings["block_size"]:
        fail(f"--student_base {args.student_base} has another block size than the reference", "pass its --block_size")
    return settings


def corpus(args):
    """The corpus in --data_dir: a real one (data_real.py) as it is, else the embedded one, built if missing."""
    if "source" in read_json(os.path.join(args.data_dir, "meta.json")):
        print(f"data: using the real corpus in {args.data_dir}")
    elif args.preset not in data.CORPUS_PRESETS:
        fail(f"--preset {args.preset} is for a real corpus, and {args.data_dir} holds none", "build one first with "
             f"`python data_real.py --source owm-gsm8k --data_dir {args.data_dir}`, or use --preset cpu")
    else:
        data.ensure(data.data_config(args.preset, args.corpus, seed=args.seed), args.data_dir, args.overwrite)


def main(args):
    settings = pipeline_settings(args)
    rank, _, _ = dist_setup(args.device)  # under torchrun, rank 0 writes and every rank trains
    if rank == 0:
        corpus(args)
    barrier()
    meta = data.read_meta(args.data_dir)
    own = {**settings, "n_evals": settings.get("ref_evals", settings["n_evals"])}  # the base's and references' runs
    base_ckpt = args.base or os.path.join(args.out_dir, "base", "ckpt.pt")
    if not args.base:
        check_passes("--base_tokens", args.base_tokens, meta["splits"]["web_base"]["tokens"], "web_base")
        rho.train(train_config(own, args, split="web_base", out_dir=os.path.dirname(base_ckpt),
                               max_tokens=own["base_tokens"], lr=own["base_lr"]))
    best, sweep = reference_sweep(args, own, meta, base_ckpt)
    ref, scores = os.path.join(best, "ckpt.pt"), os.path.join(best, "scores.bin")
    cost = {"base": read_json(os.path.join(os.path.dirname(base_ckpt), "done.json")).get("flops"),
            "ref": sweep[best]["flops"], "scoring": score(ref, scores, args, meta) if rank == 0 else 0}
    pipeline = {"preset": args.preset, "seed": args.seed, "data_dir": args.data_dir, "out_dir": args.out_dir,
                "settings": settings, "base": args.student_base or base_ckpt, "ref": ref, "scores": scores,
                "flops": cost, "ref_sweep": sweep, **{k: sweep[best][k] for k in ("ref_epochs", "ref_lr")},
                "ref_web": args.ref_web}
    if rank == 0:
        atomic_write(os.path.join(args.out_dir, "pipeline.json"), json.dumps(pipeline, indent=1))
        print(f"reference ready: {ref}; next: python train_slm.py --out_dir {args.out_dir} --ratio 0.6")
    barrier()


def reference_sweep(args, settings, meta, base_ckpt):
    """Train a reference per (epochs, lr) asked; returns the one of least validation answer loss, {folder: summary}."""
    grid = [(e, lr) for e in args.ref_epochs or [settings["ref_epochs"]] for lr in args.ref_lr or [settings["ref_lr"]]]
    runs, hq = {}, meta["splits"]["ref_train"]["tokens"]
    for epochs, lr in grid:
        out = os.path.join(args.out_dir, "ref" if len(grid) == 1 else f"ref-e{epochs:g}-lr{lr:g}")
        # --ref_web N: the subset `epochs` times (mix_hq) and the first 1/N of the base's web, shuffled together, once
        web = dict(split="web_base", part=f"0/{args.ref_web}", mix_hq=epochs) if args.ref_web else {}
        web_tokens = meta["splits"]["web_base"]["tokens"] // args.ref_web if args.ref_web else 0
        s = rho.train(train_config({**settings, "split": "ref_train"}, args, out_dir=out, lr=lr, init=base_ckpt,
                                   tokens_per_step=0, max_tokens=int(epochs * hq) + web_tokens, **web))
        runs[out] = {"ref_epochs": epochs, "ref_lr": lr, "val_answer_loss": s.get("val_answer_loss"),
                     "val_loss": s["val_loss"], "acc": s.get("acc"), "flops": s["flops"]}
    best = min(runs, key=lambda d: (runs[d]["val_answer_loss"] or runs[d]["val_loss"], d))
    if len(grid) > 1:
        print("reference sweep (validation answer loss):\n" + "\n".join(
            f"  {d}: {r['val_answer_loss']}" + ("  <- chosen" if d == best else "") for d, r in runs.items()))
    return best, runs


def score(ref_path, scores, args, meta):
    """Score the student's corpus with the reference once (reused while both are the same); returns its FLOPs."""
    ckpt, tokens = load_checkpoint(ref_path, "reference model"), data.load_tokens(args.data_dir, "web")[0]
    stamp, model = score_stamp(ref_path, ckpt, meta), rho.GPT.from_checkpoint(ckpt)
    with FolderLock(os.path.dirname(scores)):
        if scores_match(scores, stamp):
            print(f"{scores}: scores of this reference found, reusing them")
        else:
            device = pick_device(args.device)
            stamp["tok_s"] = rho.score_corpus(model.to(device), tokens, stamp["block_size"], scores, device)
            atomic_write(scores + ".json", json.dumps(stamp, indent=1))
    return len(tokens) * model.flops_per_token() // 3  # a forward pass is a third of a training step


if __name__ == "__main__":
    main(cli(RefRun, __doc__.split("\n\n")[0].strip()))
