"""
infra.py -- the machinery behind rho.py, so that rho.py can read as the method and its loop: errors and files,
the command line (a dataclass is the flags), checks of a run's flags, presets, devices, processes (DDP),
checkpoints, run folders (what one holds, and one writer at a time), reference score files, and the log (what the
loop measures between two records, and the line it prints). Nothing in here is the method.
"""
import argparse
import contextlib
import datetime
import fcntl
import glob
import hashlib
import json
import os
import time
from dataclasses import asdict, field, fields

import numpy as np
import torch


# ----------------------------------------------------------------------------------------------------------
# Errors and files

def fail(msg, fix):
    """A mistake the user can fix: one clear line, a non-zero exit, no traceback."""
    raise SystemExit(f"error: {msg}; fix: {fix}")


def atomic_write(path, content):
    """Write content (bytes, str, or a function that writes to an open binary file) to a temporary name, flush
    it to disk and rename it over path: a crash at any moment leaves the old file whole."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path):
    """The JSON in path, or {} if there is no such file."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def file_hash(path):
    """sha256 of a file, 16 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# The command line: every field of a dataclass is a --flag with its help

def arg(default, help, **kw):
    """A dataclass field that is also a command-line flag (kw: argparse's type, nargs, choices, metavar)."""
    return field(default_factory=lambda: default, metadata={"help": help, **kw})


def cli(cls, description, argv=None):
    """Parse the command line into dataclass `cls`: one --flag per field (plus its aliases), with its help and
    its default."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(cls):
        d, meta = f.default_factory(), dict(f.metadata)
        kind, names = meta.pop("type", type(d)), [f"--{f.name}", *meta.pop("aliases", [])]
        if kind is bool:
            ap.add_argument(*names, dest=f.name, action="store_true", help=meta.pop("help"))
        else:
            ap.add_argument(*names, dest=f.name, type=kind, default=d, **meta)
    return cls(**vars(ap.parse_args(argv)))


def check_config(cfg, choices):
    """The mistakes a TrainConfig's flags can hold (choices: the values its choice fields take), each refused
    with one line before anything is loaded."""
    if not 0.0 < cfg.ratio <= 1.0:
        fail(f"--ratio {cfg.ratio} is outside (0, 1]", "pass a share of tokens to keep, e.g. --ratio 0.6")
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            fail(f"unknown --{name} {getattr(cfg, name)}", f"use --{name} {'|'.join(allowed)}")
    if cfg.weighting == "soft" and (cfg.scope == "global" or cfg.temperature <= 0 or cfg.answer_only):
        fail("--weighting soft needs --scope local, a --temperature above 0 and no --sft", "change one of them")
    if cfg.answer_only and cfg.scope == "global":
        fail("--sft selects within each process's batch", "drop --scope global")
    if cfg.select in ("block", "oracle") and (cfg.scope == "global" or cfg.weighting == "soft" or cfg.answer_only):
        fail(f"--select {cfg.select} is a top-k of this process's batch", "drop --scope global, --weighting "
             "soft and --sft")
    if cfg.mix_hq and (cfg.ratio < 1 or cfg.select == "oracle"):
        fail("--mix_hq trains on every token (CLM)", "use --ratio 1.0 with --mix_hq")
    if not cfg.init and cfg.n_embd % cfg.n_head:
        fail(f"a width of {cfg.n_embd} does not split into {cfg.n_head} attention heads",
             "use an --n_embd that is a multiple of --n_head")


def batch_plan(cfg, n_tokens, n_val, T, world):
    """(micro-batches per optimizer step, tokens per step): gradient accumulation from --tokens_per_step, which
    must be a multiple of one micro-batch on every process; the data must hold one global batch (the validation
    split one block)."""
    B = cfg.batch_size
    if (n_tokens - 1) // T < B * world or (n_val - 1) // T < 1:
        fail(f"split '{cfg.split}' has {n_tokens:,} tokens, fewer than one batch of {B * world}x{T}",
             "build a larger corpus, or lower --batch_size or the block size")
    accum = max(1, cfg.tokens_per_step // (B * T * world))
    if cfg.tokens_per_step and cfg.tokens_per_step != accum * B * T * world:
        fail(f"tokens_per_step {cfg.tokens_per_step:,} is not a multiple of batch {B} x block {T} x {world} "
             "process(es)", f"use a multiple of {B * T * world:,}")
    return accum, accum * B * T * world


# ----------------------------------------------------------------------------------------------------------
# Presets: model sizes and budgets (data.py has the embedded corpus sizes of the same names)

PRESETS = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=64, batch_size=8, base_tokens=20_000, base_lr=3e-3,
                 ref_epochs=2, ref_lr=1e-3, student_tokens=20_000, lr=3e-3, lr_clm=3e-3, n_evals=2,
                 eval_problems=8, eval_max_new=32, log_every=5),
    "cpu": dict(n_layer=4, n_head=4, n_embd=64, block_size=128, batch_size=8, base_tokens=2_500_000,
                base_lr=6e-3, ref_epochs=4, ref_lr=2e-3, student_tokens=3_000_000, lr=3e-3, lr_clm=3e-3,
                n_evals=8, eval_problems=400, log_every=100),  # the experiment: --n_evals 16 --eval_problems 1000
    # GSM8K-length text on a CPU (data.py --source custom): a 512-token block, answers of up to 256 tokens
    "cpu512": dict(n_layer=4, n_head=4, n_embd=128, block_size=512, batch_size=4, base_tokens=1_000_000,
                   base_lr=3e-3, ref_epochs=2, ref_lr=1e-3, student_tokens=1_000_000, lr=2e-3, lr_clm=2e-3,
                   n_evals=6, eval_problems=100, eval_max_new=256, log_every=25),
    "gpu": dict(n_layer=8, n_head=8, n_embd=512, block_size=256, batch_size=64, base_tokens=100_000_000,
                base_lr=3e-3, ref_epochs=3, ref_lr=1e-3, student_tokens=200_000_000, lr=2e-3, lr_clm=2e-3,
                n_evals=20, eval_problems=1000, log_every=100),
    # GPT-2 small (124M) for real corpora (data.py --source owm-gsm8k): 0.5M tokens per optimizer step
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=16, tokens_per_step=524_288,
                 base_tokens=1_000_000_000, base_lr=6e-4, ref_epochs=3, ref_lr=1e-4, student_tokens=2_000_000_000,
                 lr=6e-4, lr_clm=6e-4, n_evals=20, eval_problems=500, eval_max_new=256, log_every=20),
}
TRAIN_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "tokens_per_step", "n_evals",
              "eval_problems", "eval_max_new", "log_every")  # preset keys that are TrainConfig fields


def preset(name):
    if name not in PRESETS:
        fail(f"unknown preset '{name}'", f"use one of: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


# ----------------------------------------------------------------------------------------------------------
# Devices

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 per GPU; others get no MFU


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {name} but this machine has no CUDA GPU", "drop --device (auto picks the CPU)")
    return name


def autocast(device):
    """bf16 autocast on CUDA; plain float32 on the CPU."""
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def peak_flops(device):
    if not str(device).startswith("cuda"):
        return None
    return next((v for k, v in PEAK_FLOPS.items() if k in torch.cuda.get_device_name(device)), None)


# ----------------------------------------------------------------------------------------------------------
# Processes: DDP under torchrun; one process without it

def dist_setup():
    """(rank, world, local_rank) of this process: from torchrun's environment, (0, 1, 0) without it."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return 0, 1, 0
    import atexit
    import torch.distributed as dist
    if not dist.is_initialized():
        # a long timeout: rank 0 alone scores a corpus (train_ref.py) while the others wait, for up to hours
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=datetime.timedelta(hours=6))
        atexit.register(lambda: dist.is_initialized() and (dist.barrier(), dist.destroy_process_group()))
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def this_process(device):
    """(rank, world, device) of this process: under torchrun one GPU per process (cuda:local_rank); TF32 on."""
    rank, world, local_rank = dist_setup()
    device = pick_device(device)
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return rank, world, device


def training_module(model, compile, device, world):
    """The module a training step runs: the model compiled (--compile auto: on CUDA), under DDP with torchrun."""
    if compile == "on" or (compile == "auto" and device.startswith("cuda")):
        model = torch.compile(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[int(device.split(":")[1])] if device.startswith("cuda") else None)
    return model


def distributed():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def barrier():
    if distributed():
        distributed().barrier()


def all_sum(t):
    """Sum a tensor over processes, in place."""
    if distributed():
        distributed().all_reduce(t)
    return t


def all_mean(t):
    return all_sum(t.clone()) / (distributed().get_world_size() if distributed() else 1)


def from_rank0(obj):
    """Rank 0's obj, on every rank."""
    if distributed():
        box = [obj]
        distributed().broadcast_object_list(box, src=0)
        obj = box[0]
    return obj


def gather(t):
    """Every process's tensor t, stacked: (world, *t.shape), the same on every process."""
    parts = [torch.empty_like(t) for _ in range(distributed().get_world_size())]
    distributed().all_gather(parts, t.contiguous())
    return torch.stack(parts)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: the uncompiled model, optimizer, step (= data position), RNG states; loaded without pickle code

CKPT_VERSION = 1


def save_checkpoint(path, tr, step):
    """A Trainer's state at `step`, written atomically."""
    ckpt = {"version": CKPT_VERSION, "model": tr.model.state_dict(), "model_args": asdict(tr.model.config),
            "optimizer": tr.optimizer.state_dict(), "step": step, "config": asdict(tr.cfg),
            "vocab_hash": tr.meta["vocab_hash"],
            "rng": {"torch": torch.get_rng_state(), "select": tr.sel_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}
    atomic_write(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path, what="checkpoint"):
    """Load safely (weights_only=True: tensors and plain containers, never code)."""
    if not os.path.exists(path):
        fail(f"no {what} at {path}", "train it first with `python train_ref.py` (or pass the right path)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that wants to run code, or a damaged file
        fail(f"{path} is not a loadable rho checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})",
             "use a checkpoint written by rho, or train it again")
    if not isinstance(ckpt, dict) or ckpt.get("version") != CKPT_VERSION:
        fail(f"{path} was written by an incompatible version of rho", "train it again with this version")
    return ckpt


def check_vocab(ckpt, meta, path):
    if ckpt.get("vocab_hash") != meta["vocab_hash"]:
        fail(f"{path} was trained on a corpus with another vocabulary (vocab {ckpt.get('vocab_hash')}, data "
             f"{meta['vocab_hash']})", "rebuild the pipeline on this data with `python train_ref.py`")


def checkpoint(tr, step):
    """The run's checkpoint at an evaluation (and, with --keep_ckpts, a copy kept for every evaluation)."""
    save_checkpoint(os.path.join(tr.cfg.out_dir, "ckpt.pt"), tr, step)
    if tr.cfg.keep_ckpts:
        save_checkpoint(os.path.join(tr.cfg.out_dir, f"ckpt_{step:06d}.pt"), tr, step)


def kept_checkpoints(run_dir):
    """The checkpoints a run kept at every evaluation (--keep_ckpts), in step order."""
    return sorted(glob.glob(os.path.join(run_dir, "ckpt_*.pt")))


def restore(tr, ckpt):
    """Put a checkpoint's model, optimizer and RNG states back into a Trainer; its first step is the checkpoint's
    (the data position is the step: batch i is a pure function of the seed and i)."""
    tr.start, tr.resumed = ckpt["step"], True
    tr.model.load_state_dict(ckpt["model"])
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    tr.sel_gen.set_state(ckpt["rng"]["select"])
    if ckpt["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])


# ----------------------------------------------------------------------------------------------------------
# Run folders: what a folder holds (config.json, log.jsonl, ckpt.pt, done.json), and one writer at a time

RUN_FLAGS = ("overwrite", "resume", "arm")  # how to treat out_dir, and a label: not part of what a run is
OLD_KEYS = {"ref": "ref_ckpts", "scores": "score_files", "ref_scores": "ref_mode"}  # config.json keys renamed


def read_config(run_dir):
    """A run's config.json, keys of older versions renamed ({} if there is none)."""
    return {OLD_KEYS.get(k, k): v for k, v in read_json(os.path.join(run_dir, "config.json")).items()}


def run_state(cfg, defaults, inputs):
    """'reuse' if cfg.out_dir holds a finished run of exactly this configuration and inputs, 'resume' if it
    holds an unfinished one and --resume was given, 'new' if the run is to be made; refuses anything else."""
    old = read_config(cfg.out_dir)
    if not old or cfg.overwrite:
        if cfg.resume and not old:
            fail(f"nothing to resume in {cfg.out_dir}", "drop --resume to start the run")
        return "new"
    # a setting that a run's config.json lacks (the run predates it) counts as that setting's default
    mine = {k: v for k, v in asdict(cfg).items() if k not in RUN_FLAGS}
    if {k: v for k, v in {**defaults, **old}.items() if k in mine} != mine:
        fail(f"{cfg.out_dir} holds a run with another configuration",
             "pass --overwrite to replace it, or choose another --out_dir / --name")
    if old.get("inputs", inputs) != inputs:
        fail(f"{cfg.out_dir} holds a run made from other inputs (data, initial model or reference changed since)",
             "pass --overwrite to train it again on these")
    if os.path.exists(os.path.join(cfg.out_dir, "done.json")):
        return "reuse"
    if cfg.resume and os.path.exists(os.path.join(cfg.out_dir, "ckpt.pt")):
        return "resume"
    if cfg.resume:
        fail(f"{cfg.out_dir} holds an unfinished run that stopped before its first checkpoint",
             "pass --overwrite to start it again")
    fail(f"{cfg.out_dir} holds an unfinished run of this configuration",
         "pass --resume to continue it, or --overwrite to start again")


def init_run_folder(cfg, inputs):
    """Start a run folder afresh: the previous run's files removed, config.json written."""
    os.makedirs(cfg.out_dir, exist_ok=True)
    for name in ("log.jsonl", "done.json", "ckpt.pt", *map(os.path.basename, kept_checkpoints(cfg.out_dir))):
        if os.path.exists(os.path.join(cfg.out_dir, name)):
            os.remove(os.path.join(cfg.out_dir, name))
    atomic_write(os.path.join(cfg.out_dir, "config.json"), json.dumps({**asdict(cfg), "inputs": inputs}, indent=1))


def cut_log(run_dir, step):
    """Cut log.jsonl back to the records up to `step` (a killed run may have logged past its last checkpoint,
    and its last line may be cut short)."""
    path, keep = os.path.join(run_dir, "log.jsonl"), []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["step"] > step:
                    break
            except json.JSONDecodeError:
                break
            keep.append(line if line.endswith("\n") else line + "\n")
    atomic_write(path, "".join(keep))


class FolderLock:
    """One writer per folder: an exclusive flock on <folder>/.lock, held until release (or the process's end: the
    kernel drops the lock of a killed process, so a stale lock file never blocks). A second writer gets one line
    naming the holder."""

    def __init__(self, folder, probe=False):
        os.makedirs(folder, exist_ok=True)
        self.f = open(os.path.join(folder, ".lock"), "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.seek(0)
            holder = self.f.read().strip() or "another process"
            self.f.close()
            fail(f"{folder} is being written by {holder}", "wait for it to finish, or write somewhere else "
                 "(another --out_dir or --name)")
        if not probe:  # the holder's name, for the line another writer gets
            self.f.truncate(0)
            self.f.write(f"process {os.getpid()}")
            self.f.flush()

    @staticmethod
    def check(folder):
        """Refuse, with the same line, a folder that another process is writing now; take nothing."""
        if os.path.exists(os.path.join(folder, ".lock")):
            FolderLock(folder, probe=True).release()

    def release(self):
        self.f.close()  # closing the file drops the lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def run_inputs(cfg):
    """What a run is made from beyond its flags: the training split's data and the initial and reference models,
    by hash, so that a run is not reused once one of them has been made again."""
    split = read_json(os.path.join(cfg.data_dir, "meta.json")).get("splits", {}).get(cfg.split, {})
    refs = cfg.ref_ckpts.split(",") if cfg.uses_reference and cfg.ref_ckpts else []
    return {"data": split.get("sha256"), "init": file_hash(cfg.init) if os.path.exists(cfg.init) else cfg.init,
            "refs": [file_hash(r) if os.path.exists(r) else r for r in refs]}


@contextlib.contextmanager
def run_folder(cfg, log, make_trainer):
    """The run folder's side of a run. Yields None for a finished run of this configuration (reused), else the
    trainer -- built (everything loaded and checked) before anything is written, the folder then locked for one
    writer and started afresh or, with --resume, restored from its checkpoint (tr.start, tr.resumed) with the log
    cut back to it. Under torchrun rank 0 locks and writes; every rank builds its trainer."""
    defaults, inputs = asdict(type(cfg)()), run_inputs(cfg)
    if dist_setup()[0] == 0:  # rank 0 holds the folder for every rank
        FolderLock.check(cfg.out_dir)  # a folder in use is reported as such, whatever it holds
    state = run_state(cfg, defaults, inputs)
    barrier()  # every rank has read the folder before rank 0 writes to it
    if state == "reuse":
        log(f"{cfg.out_dir}: finished run with this configuration found, reusing it")
        yield None
        return
    tr = make_trainer(cfg, log)
    lock = FolderLock(cfg.out_dir) if tr.rank == 0 else None
    try:  # again, now that rank 0 holds the folder; its answer is every rank's
        state = from_rank0(run_state(cfg, defaults, inputs) if lock else None)
        if state == "reuse":
            log(f"{cfg.out_dir}: finished by another process meanwhile, reusing it")
            yield None
            return
        if state == "resume":
            restore(tr, load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), "checkpoint to resume"))
            if lock:
                cut_log(cfg.out_dir, tr.start)
            log(f"{cfg.out_dir}: resuming at step {tr.start}")
        elif lock:
            init_run_folder(cfg, inputs)  # everything checked: only now is anything written
        barrier()
        yield tr
    finally:
        if lock:
            lock.release()


# ----------------------------------------------------------------------------------------------------------
# Reference score files: float16 losses aligned with a split's tokens, and a stamp of what made them

SCORES_VERSION = 1


def score_stamp(ref_path, ref_ckpt, meta, split="web"):
    """What a score file must match to be used: the reference, the corpus, the block size."""
    return {"format_version": SCORES_VERSION, "dtype": "float16", "length": meta["splits"][split]["tokens"],
            "ref_sha": file_hash(ref_path), "ref_config": ref_ckpt["config"], "vocab_hash": meta["vocab_hash"],
            "corpus_sha256": meta["splits"][split]["sha256"], "block_size": ref_ckpt["model_args"]["block_size"],
            "split": split}


def load_scores(path, ref_path, tokens, T, meta, split):
    """The reference's cached scores (a float16 memmap), refused if they were made by another reference, corpus
    or block size."""
    if not os.path.exists(path):
        fail(f"no reference scores at {path}", "run `python train_ref.py` (it scores the corpus)")
    scores = np.memmap(path, dtype=np.float16, mode="r")
    stamp = read_json(path + ".json")
    if len(scores) != len(tokens) or stamp.get("format_version") != SCORES_VERSION \
            or stamp.get("ref_sha") != file_hash(ref_path) or stamp.get("block_size") != T \
            or stamp.get("vocab_hash") != meta["vocab_hash"] \
            or stamp.get("corpus_sha256") != meta["splits"][split].get("sha256"):
        fail(f"{path} does not belong to this reference, corpus and block size",
             "score again with `python train_ref.py` (or use --ref_mode online)")
    return scores


# ----------------------------------------------------------------------------------------------------------
# The log: per-problem answers as bits, what the loop measures between two records, the human line

def pack_bits(bools):
    """A list of bools as a hex string (4 per digit, the first bool in the highest bit of the first digit)."""
    s = "".join("1" if b else "0" for b in bools)
    s += "0" * (-len(s) % 4)
    return "".join(f"{int(s[i:i + 4], 2):x}" for i in range(0, len(s), 4))


def unpack_bits(hexstr, n):
    return [c == "1" for c in "".join(f"{int(h, 16):04b}" for h in hexstr)[:n]]


class Meter:
    """What the loop logs between two records: the training loss, the time spent training and evaluating (for
    tokens/s and the ETA), and per token kind (kinds: their names; math: the target's index) how many tokens
    there were and how many were selected."""

    def __init__(self, tr, kinds, math):
        self.tr, self.kinds, self.math = tr, kinds, math
        self.seen = torch.zeros(len(self.kinds), device=tr.device)
        self.kept = torch.zeros(len(self.kinds), device=tr.device)
        self.t_train = self.t_eval = 0.0
        self.steps = self.evals = 0
        self.reset()

    def reset(self):
        """Start a window: training from now until the next record counts as training time."""
        self.loss, self.n, self.t_mark = torch.zeros((), device=self.tr.device), 0, time.time()

    def record(self, step):
        """A log record at `step`: tokens, lr, FLOPs and, if steps were trained since the last one, their mean
        loss (averaged over processes; a loss that is not finite stops the run here, before any checkpoint of
        the broken model), tokens/s and MFU. Starts the next window."""
        tr = self.tr
        rec = {"step": step, "tokens": step * tr.tokens_per_step, "lr": tr.lr_at(min(step, tr.max_iters - 1)),
               "flops": step * tr.tokens_per_step * tr.flops_per_token}
        if self.n:
            loss = float(all_mean(self.loss)) / self.n  # waits for the device: the window's time is its work
            if not np.isfinite(loss):
                fail(f"the loss became {loss} near step {step} (the last good checkpoint is kept)", "lower --lr")
            window = time.time() - self.t_mark
            self.t_train += window
            rec.update(train_loss=loss, tok_s=self.n * tr.tokens_per_step / max(1e-9, window))
            if tr.peak:
                rec["mfu"] = rec["tok_s"] / tr.world * tr.flops_per_token / tr.peak
        rec["time"] = round(self.t_train + self.t_eval, 2)
        return rec

    def timed(self, evaluate):
        """evaluate()'s result, its time counted for the ETA."""
        t0 = time.time()
        out = evaluate()
        self.t_eval, self.evals = self.t_eval + time.time() - t0, self.evals + 1
        return out

    def add(self, loss, weights, labels):
        """One optimizer step's mean loss, selection and token kinds."""
        self.loss += loss
        self.n, self.steps = self.n + 1, self.steps + 1
        if labels is not None:
            labels = labels.to(self.tr.device).view(-1)
            self.seen += torch.bincount(labels, minlength=len(self.kinds))
            self.kept += torch.bincount(labels, weights=weights.view(-1).float(), minlength=len(self.kinds))

    def selection(self):
        """Since the last evaluation: the share of each kind's tokens kept (recall), the share of math among the
        kept (precision) and what the kept tokens are (composition); counts summed over processes."""
        all_sum(self.seen), all_sum(self.kept)
        out = {}
        if self.tr.labels is not None and self.seen.sum() > 0 and self.kept.sum() > 0:
            out = {"selected": {k: round((s / t).item(), 4) for k, s, t in zip(self.kinds, self.kept, self.seen) if t > 0},
                   "precision": round((self.kept[self.math] / self.kept.sum()).item(), 4),
                   "composition": {k: round((s / self.kept.sum()).item(), 4) for k, s in zip(self.kinds, self.kept)}}
        self.seen.zero_(), self.kept.zero_()
        return out

    def eta(self, step, evals_left):
        """Seconds left: the remaining steps at the mean training step time, the remaining evaluations at the mean
        evaluation time; None before the first training step."""
        if not self.steps:
            return None
        per_eval = self.t_eval / self.evals if self.evals else 0.0
        return (self.tr.max_iters - step) * self.t_train / self.steps + evals_left * per_eval


def log_line(rec, max_iters, eta):
    """The human line of a log record."""
    fields = [f"step {rec['step']:5d}/{max_iters}", f"tokens {rec['tokens']:>10,}"]
    for key, f in (("train_loss", "loss {:.4f}"), ("val_loss", "val {:.4f}"), ("answer_loss", "answer {:.4f}"),
                   ("acc", "acc {:.1%}"), ("precision", "precision {:.0%}"), ("tok_s", "{:,.0f} tok/s"),
                   ("mfu", "mfu {:.1%}")):
        if key in rec:
            fields.append(f.format(rec[key]))
    return " | ".join(fields + [f"eta {eta:.0f}s" if eta is not None else "eta -"])


def eval_steps(max_iters, n_evals, schedule="log", first=0.005):
    """The steps to evaluate at: 0, the last step and, in between, n_evals - 1 more, evenly spaced or (log)
    log-spaced from `first` of the run, so that early training, where curves move fastest, is sampled densely."""
    if schedule == "even":
        every = max(1, -(-max_iters // max(1, n_evals)))
        return sorted(set(range(0, max_iters, every)) | {max_iters})
    pts = np.maximum(1, np.round(max_iters * np.geomspace(first, 1.0, max(1, n_evals)))).astype(int)
    return sorted({0, max_iters, *pts.tolist()})


def start_line(tr):
    """The line a run starts with."""
    c = tr.cfg
    note = f"\nnote: {c.split} has no ground-truth token kinds (real data): selection statistics are skipped" \
        if tr.labels is None and c.split.startswith("web") else ""
    return (f"training {c.out_dir}: {tr.model.num_params() / 1e6:.2f}M params, {tr.max_iters} steps of "
            f"{tr.tokens_per_step:,} tokens ({tr.world} process(es) x {tr.accum} micro-batch(es) of "
            f"{c.batch_size}x{tr.T}), ratio {c.ratio} ({c.select}{', ' + c.scope + ' selection' if tr.world > 1 else ''}), "
            f"lr {c.lr:g}, on {tr.device}{note}")


def append_log(run_dir, record):
    with open(os.path.join(run_dir, "log.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def last_record(run_dir):
    """The last record of a run's log."""
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return json.loads(f.read().splitlines()[-1])
