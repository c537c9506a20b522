"""infra.py -- the machinery behind rho.py: one-line errors, atomic files, the command line, devices and DDP,
checkpoints, run folders (one writer each), score files, and what the log measures."""
import argparse
import atexit
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import sys
import time
import zipfile
from dataclasses import asdict, field, fields

import numpy as np
import torch
import torch.distributed as dist


def fail(msg, fix):
    raise SystemExit(f"error: {msg}; fix: {fix}")


def interrupted(kind, value, tb, hook=sys.excepthook):
    """Ctrl-C outside a training loop (which names its checkpoint itself): one line, not a traceback."""
    if not issubclass(kind, KeyboardInterrupt):
        return hook(kind, value, tb)
    print("error: interrupted; fix: run the same command again (a killed run: with --resume)", file=sys.stderr)


sys.excepthook = interrupted


def atomic_write(path, content):
    """Write content (bytes, str, or a function of a binary file) beside path, then rename: a crash keeps the old."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            content(f) if callable(content) else f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path, cut_ok=False):
    """The JSON in path ({} if no file); one not valid (cut short by a kill) is refused, or with cut_ok is None."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:  # not JSON, or not UTF-8
        if cut_ok:
            return None
        fail(f"{path} is not valid JSON (cut short by a kill?)",
             "delete it and run the command that writes it again (a run folder: the same command with --resume)")


def check_ranges(obj, positive=(), nonneg=()):
    """Refuse a flag of obj (None: not given; a list: each value) not above 0 (positive) or below 0 (nonneg)."""
    for name in (*positive, *nonneg):
        pos, values = name in positive, getattr(obj, name)
        for v in values if isinstance(values, list) else [values]:
            if v is not None and not (v > 0 if pos else v >= 0):  # NaN fails both
                fail(f"--{name} {v} is {'not above 0' if pos else 'below 0'}",
                     f"pass --{name} {'above 0' if pos else '0 or more'}, or drop it for the default")


def check_passes(flag, budget, n, split):
    """Refuse a token budget given as a flag that passes over a split more than once (10% slack for rounding)."""
    if budget is not None and budget > 1.1 * n:
        fail(f"{flag} {budget:,} is {budget / n:.1f} passes over split '{split}' ({n:,} tokens)",
             f"pass {flag} {n} or less, or build a larger corpus")


def read_pipeline(out_dir):
    """out_dir's pipeline.json ({} if none), its paths re-expressed from out_dir: a moved pipeline uses its files."""
    pipe = read_json(os.path.join(out_dir, "pipeline.json"))
    was = pipe.get("out_dir")
    for k in ("data_dir", "base", "ref", "scores") if was and not os.path.isabs(was) else ():
        new = os.path.normpath(os.path.join(out_dir, os.path.relpath(pipe[k], was)))
        if not os.path.isabs(pipe[k]) and (os.path.exists(new) or not os.path.exists(pipe[k])):
            pipe[k] = new
    return pipe


def file_hash(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def arg(default, help, **kw):
    """A dataclass field that is also a command-line flag (kw: argparse's type, nargs, choices, metavar)."""
    return field(default_factory=lambda: default, metadata={"help": help, **kw})


def cli(cls, description, argv=None):
    """Parse the command line into dataclass `cls`: one --flag per field, with its help and default."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(cls):
        default, meta = f.default_factory(), dict(f.metadata)
        kind = meta.pop("type", type(default))
        if kind is bool:
            ap.add_argument(f"--{f.name}", action="store_true", help=meta.pop("help"))
        else:
            ap.add_argument(f"--{f.name}", type=kind, default=default, **meta)
    return cls(**vars(ap.parse_args(argv)))


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", name):
        fail(f"unknown --device {name}", "use auto, cpu, cuda or cuda:<index>")
    if name.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {name} but this machine has no CUDA GPU", "drop --device (auto picks the CPU)")
    return name


def autocast(device):
    """bf16 autocast on CUDA; plain float32 on the CPU."""
    on = str(device).startswith("cuda")
    return torch.autocast("cuda" if on else "cpu", dtype=torch.bfloat16, enabled=on)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def peak_flops(device):
    """Dense bf16 FLOP/s of one GPU, for MFU (None: a GPU not listed, or the CPU)."""
    name = torch.cuda.get_device_name(device) if str(device).startswith("cuda") else ""
    return next((v for k, v in {"H100": 989e12, "H200": 989e12, "A100": 312e12}.items() if k in name), None)


def dist_setup(device="auto"):
    """(rank, world, device) of this process: (0, 1, device) alone; under torchrun process i takes cuda:i (its local
    rank), and the first call joins the process group: NCCL on that GPU before the first collective, or gloo."""
    device = pick_device(device)
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return 0, 1, device
    local_rank, cuda = int(os.environ.get("LOCAL_RANK", 0)), device.startswith("cuda")
    if cuda and device != "cuda":
        fail(f"--device {device} under torchrun would put every process on one GPU",
             "use --device cuda (process i takes cuda:<its local rank>)")
    if cuda and local_rank >= torch.cuda.device_count():
        fail(f"torchrun started more processes on this machine than its {torch.cuda.device_count()} GPU(s)",
             f"use --nproc_per_node={torch.cuda.device_count()} or fewer")
    device = f"cuda:{local_rank}" if cuda else device
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=torch.device(device) if cuda else None,
                                timeout=datetime.timedelta(hours=6))  # long: rank 0 may score a corpus alone
        # no collective on the way out: a rank that fails must exit, not wait in a barrier the others never join
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return dist.get_rank(), dist.get_world_size(), device


def training_module(model, compile, device, world):
    """The module a training step runs: on CUDA with TF32 and compiled (--compile auto), under DDP with torchrun."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if compile == "on" or (compile == "auto" and device.startswith("cuda")):
        model = torch.compile(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[int(device.split(":")[1])] if device.startswith("cuda") else None)
    return model


def barrier():
    return dist.is_initialized() and dist.barrier()


def all_sum(t):  # in place, over processes
    return dist.is_initialized() and dist.all_reduce(t) or t


def from_rank0(obj):
    box = [obj]
    return dist.is_initialized() and dist.broadcast_object_list(box, src=0) or box[0]


def gather(t):
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts)


def save_checkpoint(path, tr, step, meter=None):
    """A Trainer's state at a logged step (the step is the data position), written atomically."""
    cuda = torch.cuda.get_rng_state(tr.device) if str(tr.device).startswith("cuda") else None  # this process's GPU
    ckpt = {"model": tr.model.state_dict(), "model_args": asdict(tr.model.config), "optimizer":
            tr.optimizer.state_dict(), "step": step, "config": asdict(tr.cfg), "vocab_hash": tr.meta["vocab_hash"],
            "meter": meter.state() if meter else {},
            "rng": {"torch": torch.get_rng_state(), "select": tr.sel_gen.get_state(), "cuda": cuda}}
    atomic_write(path, lambda f: torch.save(ckpt, f))


def restore(tr, ckpt):
    """Put a checkpoint back into a Trainer: it trains on from the checkpoint's step."""
    tr.start, tr.resumed, tr.meter_state = ckpt["step"], True, ckpt["meter"]
    tr.model.load_state_dict(ckpt["model"])
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    tr.sel_gen.set_state(ckpt["rng"]["select"])
    if ckpt["rng"]["cuda"] is not None and str(tr.device).startswith("cuda"):  # on the GPU it runs on now
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], tr.device)


def load_checkpoint(path, what="checkpoint", meta=None):
    """Load safely (weights_only: tensors and plain containers, never code); with meta, of the corpus's vocabulary."""
    if not os.path.exists(path):
        fail(f"no {what} at {path}", "train it first with `python train_ref.py` (or pass the right path)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        why = "" if isinstance(ckpt, dict) and "model_args" in ckpt else "another program's file"
    except Exception as e:  # a pickle that wants to run code, or a damaged file: its first line
        why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    if why:
        fail(f"{path} is not a loadable rho checkpoint ({why})", "use a checkpoint written by rho, or train it again")
    if meta and ckpt["vocab_hash"] != meta["vocab_hash"]:
        fail(f"{path} was trained on a corpus with another vocabulary (vocab {ckpt['vocab_hash']}, data "
             f"{meta['vocab_hash']})", "rebuild the pipeline on this data with `python train_ref.py`")
    return ckpt


def check_folder(folder):
    """Refuse a folder to write in that is a file, or lies below one."""
    path = os.path.normpath(folder)
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    if path and not os.path.isdir(path):
        fail(f"{path} is a file, not a folder", f"name a folder (not {path}) as --out_dir / --data_dir")


class FolderLock(contextlib.AbstractContextManager):
    """One writer per folder: an flock on <folder>/.lock, which the kernel drops when its holder dies; a folder it
    made that nothing else filled is removed on exit."""

    def __init__(self, folder):
        check_folder(folder)
        self.folder, self.made = folder, not os.path.exists(folder)
        os.makedirs(folder, exist_ok=True)
        self.f = open(os.path.join(folder, ".lock"), "w")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.close()
            fail(f"{folder} is being written by another process", "wait for it to finish, or write to another folder")

    def __exit__(self, *exc):
        if self.made and os.listdir(self.folder) == [".lock"]:  # removed while still held: no one can enter
            os.remove(os.path.join(self.folder, ".lock"))
            os.rmdir(self.folder)
        self.f.close()  # drops the lock


# not what a run *is*: how it is run, and its files' paths (compared by what they hold, in "inputs")
NOT_THE_RUN = ("overwrite", "resume", "ckpt_every", "data_dir", "out_dir", "init", "ref_ckpt", "score_file")


def run_state(cfg, config, log):
    """'reuse' a finished run of this configuration, 'resume' an unfinished one (--resume), else 'new': in an empty
    folder, or replacing what it holds, said in one line (--overwrite; without it, refused)."""
    old, ckpt = read_json(os.path.join(cfg.out_dir, "config.json")), os.path.join(cfg.out_dir, "ckpt.pt")
    if not old:
        return "new"
    done = os.path.exists(os.path.join(cfg.out_dir, "done.json"))
    changed = [f"{k} {old.get(k)} -> {v}" if k != "inputs" else "its data, initial model or reference"
               for k, v in config.items() if k not in NOT_THE_RUN and old.get(k) != v]
    why = f"a run with another configuration ({', '.join(changed[:4])})" if changed else \
        "a finished run whose ckpt.pt is damaged or missing" if done and not zipfile.is_zipfile(ckpt) else ""
    if done and not why:
        return "reuse"
    if cfg.resume and not why:
        return "resume" if os.path.exists(ckpt) else "new"
    if not cfg.overwrite:
        fail(f"{cfg.out_dir} holds {why or 'an unfinished run of this configuration'}",
             "pass --overwrite to replace it" + ("" if why else ", or --resume to continue it"))
    log(f"{cfg.out_dir}: replacing {why or 'an unfinished run'} (--overwrite)")
    return "new"


@contextlib.contextmanager
def run_folder(cfg, log, make_trainer):
    """Hold cfg.out_dir (rank 0 writes) and yield None to reuse a finished run of this configuration, else the
    trainer, built before anything is written: a new run's folder emptied, or a resumed one restored from ckpt.pt."""
    split = read_json(os.path.join(cfg.data_dir, "meta.json")).get("splits", {}).get(cfg.split, {})
    paths = {"init": cfg.init, "ref": cfg.ref_ckpt if cfg.uses_reference else ""}  # compared by what they hold
    inputs = {"data": split.get("sha256"), **{k: file_hash(p) if os.path.exists(p) else p for k, p in paths.items()}}
    config, writer = {**asdict(cfg), "inputs": inputs}, dist_setup(cfg.device)[0] == 0
    with FolderLock(cfg.out_dir) if writer else contextlib.nullcontext():  # rank 0's refusal: torchrun stops the rest
        state = from_rank0(run_state(cfg, config, log) if writer else None)
        if state == "reuse":
            log(f"{cfg.out_dir}: finished run with this configuration found, reusing it")
            yield None
            return
        tr = make_trainer(cfg, log)
        if state == "resume":
            restore(tr, load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), "checkpoint to resume"))
            log(f"{cfg.out_dir}: resuming at step {tr.start}")
        if writer and state == "new":  # the previous run's files go; config.json says what this one is
            for name in os.listdir(cfg.out_dir):
                if re.fullmatch(r"log\.jsonl|done\.json|ckpt(_\d+)?\.pt", name):
                    os.remove(os.path.join(cfg.out_dir, name))
            atomic_write(os.path.join(cfg.out_dir, "config.json"), json.dumps(config, indent=1))
        elif writer:  # a killed run may have logged past its checkpoint
            kept = [r for r in read_log(cfg.out_dir) if r["step"] <= tr.start]
            atomic_write(os.path.join(cfg.out_dir, "log.jsonl"), "".join(json.dumps(r) + "\n" for r in kept))
        barrier()
        yield tr


def read_log(run_dir):
    path, records = os.path.join(run_dir, "log.jsonl"), []
    with open(path, "rb") if os.path.exists(path) else contextlib.nullcontext([]) as f:
        for line in f:
            with contextlib.suppress(ValueError):  # not JSON, or not UTF-8
                records.append(json.loads(line))
    return records


def read_run(path):
    """(config, evaluation records, finished) of a run folder; a file cut short by a kill costs only what it holds."""
    done = os.path.join(path, "done.json")
    evals, finished = [r for r in read_log(path) if "val_loss" in r], read_json(done, cut_ok=True) is not None
    return read_json(os.path.join(path, "config.json"), cut_ok=True), evals, os.path.isfile(done) and finished


def append_log(run_dir, record):
    with open(os.path.join(run_dir, "log.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def score_stamp(ref_path, ref_ckpt, meta, split="web"):
    """What a score file must match to be used: the reference, the corpus, the block size."""
    return {"dtype": "float16", "length": meta["splits"][split]["tokens"], "ref_sha": file_hash(ref_path),
            "ref_config": ref_ckpt["config"], "vocab_hash": meta["vocab_hash"], "split": split,
            "corpus_sha256": meta["splits"][split]["sha256"], "block_size": ref_ckpt["model_args"]["block_size"]}


def scores_match(path, stamp):
    """Whether path holds `length` float16 losses and its sidecar (path.json) every value of the stamp."""
    old = read_json(path + ".json")
    return os.path.exists(path) and os.path.getsize(path) == 2 * stamp["length"] and \
        {k: old.get(k) for k in stamp} == stamp


def load_scores(path, ref_path, ref_ckpt, meta, split, block_size):
    """The reference's cached scores, a float16 memmap: refused if another reference, corpus or block made them."""
    if not scores_match(path, score_stamp(ref_path, ref_ckpt, meta, split)) or \
            block_size != ref_ckpt["model_args"]["block_size"]:
        fail(f"{path} is missing, cut short, or does not belong to this reference, corpus and block size",
             "score again with `python train_ref.py` (or use --ref_mode online)")
    return np.memmap(path, dtype=np.float16, mode="r")


class Meter:
    """What the loop measures: since the last record, the mean loss and the time training and evaluating (apart, for
    tokens/s and the ETA); since the last evaluation, per token kind the tokens seen and kept (math: its index)."""

    def __init__(self, tr, kinds, math):
        self.tr, self.kinds, self.math = tr, kinds, math
        self.seen, self.kept = (torch.zeros(len(kinds), device=tr.device) for _ in range(2))
        self.t_train = self.t_eval = 0.0
        self.steps = self.evals = 0
        self.reset()

    def state(self):  # what a checkpoint between two evaluations keeps for an exact resume
        return {"seen": self.seen.cpu(), "kept": self.kept.cpu(),
                "t": torch.tensor([self.t_train, self.t_eval], dtype=torch.float64)}

    def load(self, state):
        if state:
            self.seen.copy_(state["seen"])
            self.kept.copy_(state["kept"])
            self.t_train, self.t_eval = state["t"].tolist()

    def reset(self):  # training from now until the next record counts as training time
        self.loss, self.n, self.t_mark = torch.zeros((), device=self.tr.device), 0, time.time()

    def add(self, loss, weights, labels):
        self.loss, self.n, self.steps = self.loss + loss, self.n + 1, self.steps + 1
        if labels is not None:  # index_add_, not bincount: on CUDA bincount syncs with the host
            labels = labels.to(self.tr.device, non_blocking=True).view(-1)
            self.seen.index_add_(0, labels, torch.ones_like(labels, dtype=self.seen.dtype))
            self.kept.index_add_(0, labels, weights.reshape(-1).to(self.kept.dtype))

    def record(self, step):
        """A log record: tokens, lr, FLOPs and, if steps were trained since the last one, their mean loss over
        processes (one not finite stops the run, before any checkpoint of the broken model), tokens/s, MFU."""
        tr = self.tr
        rec = {"step": step, "tokens": step * tr.tokens_per_step, "lr": tr.lr_at(min(step, tr.max_iters - 1)),
               "flops": step * tr.tokens_per_step * tr.flops_per_token}
        if self.n:
            loss = float(all_sum(self.loss.clone()) / tr.world) / self.n  # waits for the device
            if not np.isfinite(loss):
                fail(f"the loss became {loss} near step {step} (the last good checkpoint is kept)", "lower --lr")
            window = time.time() - self.t_mark
            self.t_train += window
            rec.update(train_loss=loss, tok_s=self.n * tr.tokens_per_step / max(1e-9, window))
            if tr.peak:
                rec["mfu"] = rec["tok_s"] / tr.world * tr.flops_per_token / tr.peak
        rec.update(time=round(self.t_train + self.t_eval, 2), eval_time=round(self.t_eval, 2))  # seconds so far
        return rec

    def timed(self, evaluate):
        t0 = time.time()
        out = evaluate()
        self.t_eval, self.evals = self.t_eval + time.time() - t0, self.evals + 1
        return out

    def selection(self):
        """Since the last evaluation, over processes: the share of each kind kept, of math among the kept, the kept."""
        seen, kept, out = all_sum(self.seen), all_sum(self.kept), {}
        if self.tr.labels is not None and seen.sum() > 0 and kept.sum() > 0:
            out = {"selected": {k: round((s / t).item(), 4) for k, s, t in zip(self.kinds, kept, seen) if t > 0},
                   "precision": round((kept[self.math] / kept.sum()).item(), 4),
                   "composition": {k: round((s / kept.sum()).item(), 4) for k, s in zip(self.kinds, kept)}}
        self.seen.zero_()
        self.kept.zero_()
        return out

    def eta(self, step, evals_left):
        """Seconds left: the steps left at the mean step time, the evaluations left at the mean evaluation time."""
        if self.steps:
            per_eval = self.t_eval / self.evals if self.evals else 0.0
            return (self.tr.max_iters - step) * self.t_train / self.steps + evals_left * per_eval


def log_line(rec, max_iters, eta):
    """The human line of a log record."""
    shown = [f"{name} {rec[k]:{f}}" for k, name, f in (
        ("train_loss", "loss", ".4f"), ("val_loss", "val", ".4f"), ("answer_loss", "answer", ".4f"),
        ("acc", "acc", ".1%"), ("precision", "precision", ".0%"), ("tok_s", "tok/s", ",.0f"), ("mfu", "mfu", ".1%"))
        if k in rec]
    left = "-" if eta is None else f"{eta:.0f}s"
    return " | ".join([f"step {rec['step']:5d}/{max_iters}", f"tokens {rec['tokens']:>10,}", *shown, f"eta {left}"])


def eval_steps(max_iters, n_evals, first=0.005):
    """0, max_iters and n_evals - 1 steps log-spaced from `first` of the run: dense early, where curves move."""
    pts = np.maximum(1, np.round(max_iters * np.geomspace(first, 1.0, n_evals))).astype(int) if n_evals > 1 else ()
    return sorted({0, max_iters, *map(int, pts)})
