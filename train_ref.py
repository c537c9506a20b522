"""
train_ref.py -- step 1 of rho: data, base model, reference model, reference scores.

  1. builds the corpus (data.py) if it is missing
  2. pre-trains a small base model with plain next-token training on one part of the noisy web corpus
  3. fine-tunes a copy of the base on the high-quality math subset: the reference (as in the paper, the
     reference and the student start from the same base)
  4. scores every token of the student's part of the web corpus with the reference, once (float16 file)

  python train_ref.py                                       # data/, out/base, out/ref, out/ref/scores.bin
  python train_ref.py --seed 1 --data_dir data/seed1 --out_dir out/seed1
  python train_ref.py --init scratch --out_dir out/scratch  # ablation: no base, reference from scratch
  python train_ref.py --refs 3 --ref_data disjoint          # + 3 references on thirds of the subset, for
                                                            #   train_slm.py --refs 3 --combine mean|min
  python train_ref.py --preset cpu512 --data_dir data/example --out_dir out/example   # GSM8K-length text
Then: python train_slm.py --ratio 0.6
"""
import json
import os
from dataclasses import asdict, dataclass

import data
import rho
from infra import FolderLock, arg, atomic_write, barrier, cli, dist_setup, load_checkpoint, pick_device, preset, \
    read_json, score_stamp, TRAIN_KEYS


@dataclass
class RefRun:
    preset: str = arg("cpu", "sizes of corpus, model and budgets: tiny, cpu, gpu (embedded corpus), cpu512 "
                             "(GSM8K-length text on a CPU), gpt2 (124M, for a real corpus built with data.py --source)")
    seed: int = arg(0, "seed of the whole pipeline: corpus, base model, reference")
    data_dir: str = arg("data", "corpus folder (built here if missing)")
    out_dir: str = arg("out", "pipeline folder: base/, ref/, ref/scores.bin and pipeline.json go here")
    corpus: list = arg([], "corpus settings (data.py's DataConfig fields, JSON values), e.g. n_ref_train=4000 "
                           "'mix={\"math\": 6, \"prose\": 1}'", nargs="*", type=str, metavar="KEY=VALUE")
    init: str = arg("base", "base: reference = base fine-tuned on the high-quality subset (the paper's setting); "
                            "scratch: no base, the reference is trained from scratch", choices=["base", "scratch"])
    base_tokens: int = arg(None, "tokens the base model is pre-trained on (default: the preset's)", type=int)
    base_lr: float = arg(None, "peak learning rate of the base model (default: the preset's)", type=float)
    ref_epochs: float = arg(None, "epochs over the high-quality subset for the reference (default: the preset's)",
                            type=float)
    ref_lr: float = arg(None, "peak learning rate of the reference (default: the preset's)", type=float)
    block_size: int = arg(None, "context length of the models (default: the preset's)", type=int)
    n_layer: int = arg(None, "transformer blocks (default: the preset's)", type=int)
    n_head: int = arg(None, "attention heads (default: the preset's)", type=int)
    n_embd: int = arg(None, "model width (default: the preset's)", type=int)
    eval_max_new: int = arg(None, "tokens decoded per test problem; the block must leave room for the question "
                                  "(default: the preset's)", type=int)
    n_evals: int = arg(None, "evaluations over each run, log-spaced, the students' too (default: the preset's)",
                       type=int)
    eval_problems: int = arg(None, "test problems decoded at each evaluation, the students' too (default: the "
                                   "preset's)", type=int)
    device: str = arg("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    compile: str = arg("auto", "torch.compile: auto (on for cuda), on, off", choices=["auto", "on", "off"])
    overwrite: bool = arg(False, "replace runs in out_dir that were made with another configuration")
    resume: bool = arg(False, "continue an unfinished (killed) base or reference run from its last checkpoint")
    refs: int = arg(0, "also train this many extra references (out_dir/refs/r1, ...) and score the corpus with "
                       "each, for train_slm.py --refs", type=int)
    ref_data: str = arg("seeds", "what the extra references train on: seeds (the whole subset, other seeds) or "
                                 "disjoint (each its own equal part of the subset)", choices=["seeds", "disjoint"])


def main(r):
    p = preset(r.preset)  # the preset's sizes and budgets, with the ones given as flags
    p.update({k: v for k, v in asdict(r).items() if v is not None and (k in p or k in TRAIN_KEYS)})
    rank, _, _ = dist_setup()  # under torchrun, rank 0 writes and every rank trains
    if rank == 0:
        if "source" in read_json(os.path.join(r.data_dir, "meta.json")):  # built by data.py --source ...
            print(f"data: using the real corpus in {r.data_dir}")
        else:
            data.ensure(data.data_config(r.preset, r.corpus, seed=r.seed), r.data_dir, r.overwrite)
    barrier()
    meta = data.read_meta(r.data_dir)
    common = dict(data_dir=r.data_dir, seed=r.seed, device=r.device, compile=r.compile, overwrite=r.overwrite,
                  resume=r.resume, **{k: p[k] for k in TRAIN_KEYS if k in p})
    base_ckpt = os.path.join(r.out_dir, "base", "ckpt.pt")
    cost = {}
    if r.init == "base":
        s = rho.train(rho.TrainConfig(arm="base", split="web_base", out_dir=os.path.join(r.out_dir, "base"),
                                      max_tokens=p["base_tokens"], lr=p["base_lr"], **common))
        cost["base"] = s["flops"]
    ref_tokens = int(p["ref_epochs"] * meta["splits"]["ref_train"]["tokens"])
    # the high-quality subset is small: a reference takes one micro-batch per step, whatever the preset's;
    # the main one (ref/) trains on all of it, extra ones (refs/r<i>) on other seeds or their own part of it
    refs = {"ref": dict(out_dir=os.path.join(r.out_dir, "ref"))}
    for i in range(1, r.refs + 1):
        part = f"{i - 1}/{r.refs}" if r.ref_data == "disjoint" else ""
        refs[f"r{i}"] = dict(out_dir=os.path.join(r.out_dir, "refs", f"r{i}"), part=part,
                             seed=r.seed + (0 if part else i))
    for name, kw in refs.items():
        share = 1 / r.refs if kw.get("part") else 1
        s = rho.train(rho.TrainConfig(arm="reference", split="ref_train", max_tokens=int(ref_tokens * share),
                                      lr=p["ref_lr"], init=base_ckpt if r.init == "base" else "",
                                      **{**common, "tokens_per_step": 0, **kw}))
        kw.update(ckpt=os.path.join(kw["out_dir"], "ckpt.pt"), scores=os.path.join(kw["out_dir"], "scores.bin"),
                  flops=s["flops"])
        kw["flops_scoring"] = score(kw["ckpt"], kw["scores"], r, meta) if rank == 0 else 0
    cost.update(ref=refs["ref"]["flops"], scoring=refs["ref"]["flops_scoring"])
    pipeline = {"preset": r.preset, "seed": r.seed, "data_dir": r.data_dir, "init": r.init, "settings": p,
                "base": base_ckpt if r.init == "base" else "", "ref": refs["ref"]["ckpt"],
                "scores": refs["ref"]["scores"], "flops": cost,
                "refs": {name: {k: kw[k] for k in ("ckpt", "scores", "flops", "flops_scoring")}
                         for name, kw in refs.items() if name != "ref"}, "ref_data": r.ref_data}
    if rank == 0:
        atomic_write(os.path.join(r.out_dir, "pipeline.json"), json.dumps(pipeline, indent=1))
        print(f"reference ready: {pipeline['ref']}; next: python train_slm.py --out_dir {r.out_dir} --ratio 0.6"
              + (" --init scratch" if r.init == "scratch" else ""))
    barrier()


def score(ref_path, scores, r, meta):
    """Score the student's corpus with a reference, once (reused while reference and corpus are the same), the
    reference's folder locked meanwhile; returns the FLOPs of the pass."""
    ckpt = load_checkpoint(ref_path, "reference model")
    stamp = score_stamp(ref_path, ckpt, meta)
    tokens, _ = data.load_tokens(r.data_dir, "web")
    model = rho.GPT.from_checkpoint(ckpt)
    with FolderLock(os.path.dirname(scores)):
        old = read_json(scores + ".json")
        if os.path.exists(scores) and {k: old.get(k) for k in stamp} == stamp:
            print(f"{scores}: scores of this reference found, reusing them")
        else:
            device = pick_device(r.device)
            stamp["tok_s"] = rho.score_corpus(model.to(device), tokens, stamp["block_size"], scores, device)
            atomic_write(scores + ".json", json.dumps(stamp, indent=1))
    return len(tokens) * model.flops_per_token() // 3  # a forward pass is a third of a training step


if __name__ == "__main__":
    main(cli(RefRun, __doc__.split("\n\n")[0].strip()))
