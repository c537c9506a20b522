"""
rho.py -- Selective Language Modeling (RHO-1: Lin et al. 2024, "Not All Tokens Are What You Need") in one file.

Read top to bottom:
  1. the model: a small GPT (nanoGPT-style: causal SDPA attention, tied embeddings, scaled residual init)
  2. the method: per-token losses, the excess loss against a reference, top-k selection over the batch, and
     the SLM loss -- the mean over the selected tokens only (the paper's Eq. 4). Unselected tokens stay in the
     context (attention is never masked); only their loss is dropped. ratio 1.0 is plain next-token training.
     Beyond the paper: soft weights instead of top-k, and several references' losses combined into one.
  3. data: a token file cut into fixed, aligned blocks; the reference scores every token once, into a float16
     file aligned with the tokens, and SLM batches read their reference losses from it
  4. evaluation: held-out loss and greedy answer accuracy
  5. the one training loop that train_ref.py and train_slm.py both call

This file is a library; run train_ref.py, train_slm.py and plot.py.
"""
import contextlib
import json
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data as rdata

CKPT_VERSION = 1
SCORES_VERSION = 1
SELECTS = ("excess", "random", "ref_loss", "block", "oracle")  # SLM, then the controls (TrainConfig.select)


def fail(msg, fix):
    """A mistake the user can fix: one clear line, non-zero exit, no traceback."""
    raise SystemExit(f"error: {msg}; fix: {fix}")


# ==========================================================================================================
# 1. The model

@dataclass
class GPTConfig:
    vocab_size: int = 1280
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)                       # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:  # decoding: keys and values of earlier positions are kept in cache = [k, v]
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)  # (B, nh, T_past+T, hs)
            cache[:] = [k, v]
        # causal within the new positions; one new position may see every cached one
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=False),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied embeddings
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of the residual projections (GPT-2)
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward): 6N plus attention (PaLM appendix B)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size

    def forward(self, idx, caches=None, start=0):
        """Logits (B, T, V) of every position. For decoding, caches holds one [k, v] per layer and start is
        the position of idx[:, 0]."""
        B, T = idx.size()
        assert start + T <= self.config.block_size, f"sequence of {start + T} > block_size {self.config.block_size}"
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, caches[i] if caches is not None else None)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, V)

    def configure_optimizer(self, lr, weight_decay, betas, device_type):
        decay = [p for p in self.parameters() if p.dim() >= 2]  # matmuls and embeddings decay
        no_decay = [p for p in self.parameters() if p.dim() < 2]  # norms do not
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device_type == "cuda")

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, stop=None):
        """Greedy decoding of a (B, T) batch of equal-length prompts, with a key/value cache, until every
        row satisfies stop(row) or the block is full."""
        caches = [[] for _ in self.transformer.h]
        logits = self(idx, caches)                                       # (B, T, V)
        for i in range(min(max_new_tokens, self.config.block_size - idx.size(1) + 1)):
            nxt = logits[:, -1].argmax(-1, keepdim=True)                 # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)                           # (B, T+1)
            if stop is not None and i % 4 == 3 and all(stop(row) for row in idx.tolist()):
                break
            if idx.size(1) < self.config.block_size:
                logits = self(nxt, caches, start=idx.size(1) - 1)        # (B, 1, V)
        return idx


# ==========================================================================================================
# 2. The method: per-token loss, excess loss, selection, SLM loss

def token_losses(logits, targets):
    """Cross-entropy of every token, (B, T), in float32. targets are the inputs shifted by one
    (y[t] = x[t+1]), so losses[b, t] = -log P(x[t+1] | x[<=t])."""
    B, T, V = logits.shape
    return F.cross_entropy(logits.float().view(B * T, V), targets.reshape(B * T), reduction="none").view(B, T)


def excess_loss(student_losses, ref_losses):
    """The paper's L_delta(x_i) = L_student(x_i) - L_ref(x_i): high where the student still has to learn what
    the reference already knows. Detached: the selection carries no gradient."""
    return student_losses.detach() - ref_losses


def n_selected(ratio, n):
    """How many of n tokens a ratio keeps: ratio * n rounded half up, at least one."""
    return max(1, min(n, int(math.floor(ratio * n + 0.5))))


def select_topk(scores, ratio, valid=None):
    """Boolean mask, shape of scores, keeping exactly n_selected(ratio, N) of the N tokens: those with the
    highest score (over the whole batch, not per row). With a `valid` mask, only among the valid tokens."""
    if valid is not None:
        if not valid.any():
            return valid
        scores = scores.masked_fill(~valid, -math.inf)
    flat = scores.reshape(-1)
    k = n_selected(ratio, flat.numel() if valid is None else int(valid.sum()))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view_as(scores)


def combine_refs(ref_losses, how):
    """One reference loss per token from several references' (the paper's "multiple reference models"):
    their mean, or their min (a token counts as learnable if any reference finds it easy). One: itself."""
    if len(ref_losses) == 1:
        return ref_losses[0]
    stacked = torch.stack(ref_losses)                       # (R, B, T)
    return stacked.mean(0) if how == "mean" else stacked.amin(0)


def soft_weights(scores, ratio, temperature):
    """Soft selection (--weighting soft, the paper's "reweighting" future work): weights in (0, 1),
    sigmoid((score - threshold) / temperature), the threshold halfway between the k-th and (k+1)-th highest
    scores (k = n_selected(ratio, N)). ratio still sets where the weights cross 1/2; the temperature (in nats of
    excess loss) sets how sharply: as it goes to 0 the weights become select_topk's mask."""
    flat = scores.reshape(-1).float()
    k = n_selected(ratio, flat.numel())
    if k == flat.numel():
        return torch.ones_like(scores, dtype=torch.float)
    top = torch.topk(flat, k + 1).values
    return torch.sigmoid((scores.float() - (top[k - 1] + top[k]) / 2) / temperature)


def slm_loss(losses, mask, n=None):
    """Eq. 4: the mean loss over the selected tokens only. Unselected tokens get exactly zero gradient.
    n: the number of selected tokens to divide by when the selection spans several processes."""
    return (losses * mask).sum() / (mask.sum() if n is None else n)


def select_topk_global(scores, ratio):
    """Exact top-k over the global batch of all data-parallel ranks: every rank gathers every rank's scores
    (the excess losses, never the tokens), computes the same global selection and keeps its own part. The same
    tokens are selected as by one process on the concatenated batch."""
    import torch.distributed as dist
    gathered = [torch.empty_like(scores) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, scores.contiguous())
    return select_topk(torch.stack(gathered), ratio)[dist.get_rank()]  # (W, B, T) -> this rank's (B, T)


# ==========================================================================================================
# 3. Data: fixed aligned blocks, and the reference's scores cached once

class Blocks:
    """A token file cut into fixed, aligned blocks: block i is x = tokens[iT : iT+T], y = tokens[iT+1 : iT+T+1],
    so every token (but the first) is a target in exactly one block, always with the same context. That is
    what lets the reference score the whole file once. The block order is reshuffled every epoch from the
    seed, and batch `step` is a pure function of (seed, step): the data position of a run is its step.
    Under DDP the global batch is batch_size * world blocks and rank r reads its own batch_size of them."""

    def __init__(self, tokens, block_size, batch_size, seed, labels=None, scores=(), rank=0, world=1,
                 combine="mean"):
        self.tokens, self.labels, self.scores, self.combine = tokens, labels, list(scores), combine
        self.T, self.B, self.seed, self.rank, self.world = block_size, batch_size, seed, rank, world
        self.n = (len(tokens) - 1) // block_size
        self._perm = (None, None)

    def perm(self, epoch):
        if self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return self._perm[1]

    def block_ids(self, step):
        first = step * self.B * self.world + self.rank * self.B
        g = np.arange(first, first + self.B)
        return np.array([self.perm(e)[p] for e, p in zip(g // self.n, g % self.n)])

    def rows(self, arr, ids, offset, dtype):
        """Rows of blocks `ids` of an array aligned with the tokens (offset 1: aligned with the targets)."""
        rows = [arr[i * self.T + offset: i * self.T + offset + self.T] for i in ids]
        return torch.from_numpy(np.stack(rows).astype(dtype))

    def batch(self, step, ids=None):
        """x, y (B, T) int64; ref losses (several score files: combined) and labels of the targets (B, T), or
        None."""
        ids = self.block_ids(step) if ids is None else ids
        x = self.rows(self.tokens, ids, 0, np.int64)
        y = self.rows(self.tokens, ids, 1, np.int64)
        ref = combine_refs([self.rows(s, ids, 1, np.float32) for s in self.scores], self.combine) \
            if self.scores else None
        lab = self.rows(self.labels, ids, 1, np.int64) if self.labels is not None else None
        return x, y, ref, lab


@torch.no_grad()
def score_corpus(model, tokens, block_size, path, device, batch_size=None, log=print):
    """Reference loss of every token of a file, once: float16, aligned with the tokens (scores[j] is the loss
    of token j in its block; j = 0 and a ragged tail have none: NaN). Written to a temporary name, renamed.
    Batches of 32 blocks suit a CPU's caches best; a GPU wants large ones."""
    batch_size = batch_size or (512 if str(device).startswith("cuda") else 32)
    model.eval()
    blocks = Blocks(tokens, block_size, batch_size, seed=0)
    scores = np.full(len(tokens), np.nan, dtype=np.float16)
    t0, done = time.time(), 0
    for start in range(0, blocks.n, batch_size):
        ids = np.arange(start, min(start + batch_size, blocks.n))
        x, y, _, _ = blocks.batch(0, ids)
        with autocast(device):
            losses = token_losses(model(x.to(device)), y.to(device))  # (b, T)
        scores[ids[0] * block_size + 1: (ids[-1] + 1) * block_size + 1] = losses.half().cpu().numpy().reshape(-1)
        done += losses.numel()
        if start // batch_size % 200 == 0 or start + batch_size >= blocks.n:
            log(f"scoring {done:,}/{blocks.n * block_size:,} tokens | {done / (time.time() - t0):,.0f} tok/s")
    rdata.write_atomic(path, scores.tobytes())
    return done / (time.time() - t0)


# ==========================================================================================================
# 4. Evaluation: held-out loss, greedy answer accuracy

def autocast(device):
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def eval_loss(model, blocks, device, batch_size=64):
    """Mean token loss over every block of a held-out file, in order."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, blocks.n, batch_size):
        x, y, _, _ = blocks.batch(0, np.arange(start, min(start + batch_size, blocks.n)))
        with autocast(device):
            losses = token_losses(model(x.to(device)), y.to(device))
        total, count = total + losses.sum().item(), count + losses.numel()
    model.train()
    return total / count


ANSWER_RE = re.compile(r"(?:####|[Tt]he answer is)\s*\$?(-?[\d,]*\d)")
FINAL_LINE_RE = re.compile(r"(?:####|[Tt]he answer is)[^\n]*\n")


def extract_answer(text):
    """The final number of a worked solution: after '####' (GSM8K) or 'The answer is'; None if absent."""
    m = ANSWER_RE.search(text)
    return int(m.group(1).replace(",", "")) if m else None


@torch.no_grad()
def eval_answer_loss(model, tok, problems, device, batch_size=64):
    """Mean loss of the worked-solution tokens given the question: each problem (prompt + solution) from position
    0, the loss on the solution's tokens only (the question, with its random names and numbers, is unscored)."""
    model.eval()
    T, seqs = model.config.block_size, []
    for p in problems:
        q = tok.encode(p["prompt"])
        seqs.append(((q + tok.encode(p["solution"]))[:T + 1], len(q)))
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        L = max(len(ids) for ids, _ in chunk) - 1
        x, y = torch.zeros(len(chunk), L, dtype=torch.long), torch.zeros(len(chunk), L, dtype=torch.long)
        scored = torch.zeros(len(chunk), L, dtype=torch.bool)   # (b, L): targets that are solution tokens
        for j, (ids, n_q) in enumerate(chunk):                   # padding sits after a row's end: causal
            x[j, :len(ids) - 1], y[j, :len(ids) - 1] = torch.tensor(ids[:-1]), torch.tensor(ids[1:])
            scored[j, n_q - 1:len(ids) - 1] = True
        with autocast(device):
            losses = token_losses(model(x.to(device)), y.to(device))  # (b, L)
        total += losses[scored.to(device)].sum().item()
        count += int(scored.sum())
    model.train()
    return total / max(1, count)


@torch.no_grad()
def eval_accuracy(model, tok, problems, device, max_new_tokens=64):
    """Whether each problem's greedy continuation ends in the right final number (exact match), as a list of
    bools in the problems' order. Prompts of equal length are decoded together, so no padding is needed."""
    model.eval()
    groups = {}
    for i, p in enumerate(problems):
        ids = tok.encode(p["prompt"])
        groups.setdefault(len(ids), []).append((i, ids, p["answer"]))

    def stop(row):
        return tok.eot in row or FINAL_LINE_RE.search(tok.decode(row)) is not None

    correct = [False] * len(problems)
    for n, group in groups.items():
        idx = torch.tensor([ids for _, ids, _ in group], device=device)
        with autocast(device):
            out = model.generate(idx, max_new_tokens, stop=lambda row: stop(row[n:]))
        for row, (i, _, ans) in zip(out[:, n:].tolist(), group):
            row = row[:row.index(tok.eot)] if tok.eot in row else row
            correct[i] = extract_answer(tok.decode(row)) == ans
    model.train()
    return correct


def pack_bits(bools):
    """A list of bools as a hex string (4 per digit, first bool in the highest bit of the first digit)."""
    s = "".join("1" if b else "0" for b in bools)
    s += "0" * (-len(s) % 4)
    return "".join(f"{int(s[i:i + 4], 2):x}" for i in range(0, len(s), 4))


def unpack_bits(hexstr, n):
    return [c == "1" for c in "".join(f"{int(h, 16):04b}" for h in hexstr)[:n]]


def eval_steps(max_iters, n_evals, schedule="log", first=0.005):
    """The steps to evaluate at: 0, the last step and, in between, n_evals - 1 more, evenly spaced or (log)
    log-spaced from `first` of the run, so that early training, where curves move fastest, is sampled densely."""
    if schedule == "even":
        every = max(1, math.ceil(max_iters / max(1, n_evals)))
        return sorted(set(range(0, max_iters, every)) | {max_iters})
    pts = np.maximum(1, np.round(max_iters * np.geomspace(first, 1.0, max(1, n_evals)))).astype(int)
    return sorted({0, max_iters, *pts.tolist()})


# ==========================================================================================================
# 5. Checkpoints

def save_checkpoint(path, tr, step):
    """The uncompiled model, optimizer, step (= data position), RNG states and config of a Trainer; written to
    a temporary name, then renamed, so a crash mid-write leaves the previous checkpoint intact."""
    ckpt = {"version": CKPT_VERSION, "model": tr.model.state_dict(), "model_args": asdict(tr.model.config),
            "optimizer": tr.optimizer.state_dict(), "step": step, "config": asdict(tr.cfg),
            "vocab_hash": tr.meta["vocab_hash"],
            "rng": {"torch": torch.get_rng_state(), "select": tr.sel_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def kept_checkpoints(run_dir):
    """The checkpoints a run kept at every evaluation (--keep_ckpts), in step order."""
    import glob
    return sorted(glob.glob(os.path.join(run_dir, "ckpt_*.pt")))


def model_from_checkpoint(ckpt):
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model


# ==========================================================================================================
# 6. The training loop (both scripts)

@dataclass
class TrainConfig:
    arm: str = ""                 # what the run is, in words (plot.py's name for it); set by the scripts
    # what to train on
    data_dir: str = "data"        # corpus built by data.py
    split: str = "web"            # training split: web (student), web_base (base model), ref_train (reference)
    part: str = ""                # "i/n": train on the i-th of n equal parts of the split only (0-based)
    answer_only: bool = False     # fine-tuning: a loss on answer tokens only (those after "Answer:"); the
                                  # selection (ratio < 1) chooses among them
    out_dir: str = "out/clm"      # log.jsonl, config.json, ckpt.pt go here
    init: str = ""                # checkpoint to start from ('' = from scratch)
    # model, when starting from scratch
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    # selective language modeling
    ratio: float = 1.0            # share of tokens that get a loss; 1.0 = uniform next-token training (CLM)
    select: str = "excess"        # which tokens get a loss: excess (SLM: top-k by excess loss) or a control:
                                  # random, ref_loss (top-k by -reference loss), block (the top blocks by mean
                                  # excess loss, every token of a kept block), oracle (the tokens labelled math)
    mix_hq: float = 0.0           # CLM on the split mixed with this many epochs of the high-quality subset
    ref: str = ""                 # reference checkpoint (select=excess); several: comma-separated
    ref_scores: str = "cached"    # cached: read the reference's loss from the score file; online: run it each step
    scores: str = ""              # the score file (float16, aligned with the split's tokens); one per reference
    combine: str = "mean"         # several references: their per-token losses' mean or min
    scope: str = "local"          # under DDP: top-k within each rank's batch (local) or over the global batch
    weighting: str = "topk"       # topk: keep the top ratio (the paper); soft: sigmoid weights (soft_weights)
    temperature: float = 0.1      # soft weighting: sharpness, in nats of excess loss
    # optimisation
    batch_size: int = 32          # blocks per micro-batch per process
    tokens_per_step: int = 0      # tokens per optimizer step (0: one micro-batch on every process); must be a
                                  # multiple of batch_size * block_size * processes (gradient accumulation)
    max_tokens: int = 1_000_000   # tokens processed (selected or not)
    lr: float = 3e-3
    min_lr_frac: float = 0.1      # cosine decays to lr * min_lr_frac
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0
    # evaluation and logging
    eval_schedule: str = "log"    # log: evaluations log-spaced from 0.5% of the run (dense early); even: evenly
    n_evals: int = 10
    eval_problems: int = 1000     # test problems decoded for accuracy at each eval (0: skip)
    eval_max_new: int = 64        # tokens decoded per problem
    log_every: int = 10
    seed: int = 0
    device: str = "auto"          # auto: cuda if available, else cpu
    compile: str = "auto"         # auto: torch.compile on cuda only
    overwrite: bool = False       # replace a run in out_dir made with another configuration
    resume: bool = False          # continue an unfinished run in out_dir from its last checkpoint
    keep_ckpts: bool = False      # also keep every evaluation's checkpoint as ckpt_<step>.pt (plot.py --categories)


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {name} but this machine has no CUDA GPU", "drop --device (auto picks the CPU)")
    return name


def check_vocab(ckpt, meta, path):
    if ckpt.get("vocab_hash") != meta["vocab_hash"]:
        fail(f"{path} was trained on a corpus with another vocabulary (vocab {ckpt.get('vocab_hash')}, data "
             f"{meta['vocab_hash']})", "rebuild the pipeline on this data with `python train_ref.py`")


RUN_FLAGS = ("overwrite", "resume", "arm")  # how to treat out_dir, and a label: not part of what a run is


def check_out_dir(cfg):
    """'reuse' if out_dir holds a finished run of exactly this configuration, 'resume' if it holds an unfinished
    one and --resume was given, 'new' if the run is to be made; refuses anything else (one line, exit 1)."""
    old = read_json(os.path.join(cfg.out_dir, "config.json"))
    if not old or cfg.overwrite:
        if cfg.resume and not old:
            fail(f"nothing to resume in {cfg.out_dir}", "drop --resume to start the run")
        return "new"
    # a setting that a run's config.json lacks (the run predates it) counts as that setting's default
    same = {k: v for k, v in {**asdict(TrainConfig()), **old}.items() if k not in RUN_FLAGS} == \
        {k: v for k, v in asdict(cfg).items() if k not in RUN_FLAGS}
    if same and os.path.exists(os.path.join(cfg.out_dir, "done.json")):
        return "reuse"
    if same and cfg.resume and os.path.exists(os.path.join(cfg.out_dir, "ckpt.pt")):
        return "resume"
    if same:
        fail(f"{cfg.out_dir} holds an unfinished run of this configuration",
             "pass --resume to continue it, or --overwrite to start again")
    fail(f"{cfg.out_dir} holds a run with another configuration",
         "pass --overwrite to replace it, or choose another --out_dir / --name")


def init_out_dir(cfg):
    os.makedirs(cfg.out_dir, exist_ok=True)
    for name in ("log.jsonl", "done.json", "ckpt.pt", *map(os.path.basename, kept_checkpoints(cfg.out_dir))):
        if os.path.exists(os.path.join(cfg.out_dir, name)):
            os.remove(os.path.join(cfg.out_dir, name))
    rdata.write_atomic(os.path.join(cfg.out_dir, "config.json"), json.dumps(asdict(cfg), indent=1).encode())


def resume_from_checkpoint(tr, cfg, write=True):
    """Restore model, optimizer, RNG states and step from out_dir/ckpt.pt, and cut the log back to that step
    (the data position is the step: batch i is a pure function of the seed and i)."""
    ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), "checkpoint to resume")
    tr.model.load_state_dict(ckpt["model"])
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    tr.sel_gen.set_state(ckpt["rng"]["select"])
    if ckpt["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    path = os.path.join(cfg.out_dir, "log.jsonl")
    keep = []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                break
            if rec["step"] > ckpt["step"]:
                break
            keep.append(line if line.endswith("\n") else line + "\n")
    if write:
        rdata.write_atomic(path, "".join(keep).encode())
    return ckpt["step"]


# peak dense bf16 FLOP/s per GPU, for MFU; a GPU not listed gets no MFU (never a guess)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device):
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def dist_setup():
    """(rank, world, local_rank) of this process: from torchrun's environment, (0, 1, 0) without it."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return 0, 1, 0
    import atexit
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(lambda: dist.is_initialized() and (dist.barrier(), dist.destroy_process_group()))
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


class Trainer:
    """Everything one run needs, loaded and checked before anything is written: data, model, optimizer,
    reference (scores or model). step(i) does optimizer step i; evaluate() measures the model. Under torchrun
    every process builds one, each reading its own share of every batch (DDP)."""

    def __init__(self, cfg):
        if not 0.0 < cfg.ratio <= 1.0:
            fail(f"--ratio {cfg.ratio} is outside (0, 1]", "pass a share of tokens to keep, e.g. --ratio 0.6")
        if cfg.select not in SELECTS or cfg.ref_scores not in ("cached", "online") \
                or cfg.scope not in ("local", "global") or cfg.weighting not in ("topk", "soft"):
            fail(f"unknown --select {cfg.select} / --ref_scores {cfg.ref_scores} / --scope {cfg.scope} / "
                 f"--weighting {cfg.weighting}", f"use --select {'|'.join(SELECTS)}, --ref_scores cached|online, "
                 "--scope local|global, --weighting topk|soft")
        if cfg.weighting == "soft" and (cfg.scope == "global" or cfg.temperature <= 0 or cfg.answer_only):
            fail("--weighting soft needs --scope local, a --temperature above 0 and no --sft", "change one of them")
        if cfg.answer_only and cfg.scope == "global":
            fail("--sft selects within each process's batch", "drop --scope global")
        if cfg.select in ("block", "oracle") and (cfg.scope == "global" or cfg.weighting == "soft" or cfg.answer_only):
            fail(f"--select {cfg.select} is a top-k of this process's batch", "drop --scope global, --weighting "
                 "soft and --sft")
        if cfg.mix_hq and (cfg.ratio < 1 or cfg.select == "oracle"):
            fail("--mix_hq trains on every token (CLM)", "use --ratio 1.0 with --mix_hq")
        self.cfg = cfg
        self.rank, self.world, local_rank = dist_setup()
        self.device = device = pick_device(cfg.device)
        if device == "cuda" and self.world > 1:
            self.device = device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        if device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # data
        self.meta = meta = rdata.read_meta(cfg.data_dir)
        self.tok = rdata.Tokenizer(meta["vocab"])
        tokens, self.labels = rdata.load_tokens(cfg.data_dir, cfg.split)
        if cfg.part:
            i, n = map(int, cfg.part.split("/"))
            lo, hi = i * len(tokens) // n, (i + 1) * len(tokens) // n
            tokens, self.labels = tokens[lo:hi], (self.labels[lo:hi] if self.labels is not None else None)
        if cfg.mix_hq:  # the high-quality subset, mix_hq times over, appended: the blocks are shuffled together
            hq, _ = rdata.load_tokens(cfg.data_dir, "ref_train")
            hq = np.resize(np.asarray(hq), int(cfg.mix_hq * len(hq)))
            tokens = np.concatenate([tokens, hq])
            if self.labels is not None:
                self.labels = np.concatenate([self.labels, np.full(len(hq), rdata.MATH, np.uint8)])
        if cfg.select == "oracle" and self.labels is None:
            fail(f"--select oracle needs the token kinds of the embedded corpus; split '{cfg.split}' has none",
                 "use the embedded corpus (python data.py)")
        val_tokens, _ = rdata.load_tokens(cfg.data_dir, "ref_val")
        self.val_problems = rdata.load_eval(cfg.data_dir, "val")
        self.problems = rdata.load_eval(cfg.data_dir)[:cfg.eval_problems]
        if cfg.eval_problems and not self.problems:
            fail(f"{cfg.data_dir}/eval.jsonl holds no problems", "rebuild the data, or set eval_problems to 0")
        # model: from a checkpoint (base model) or from scratch
        if cfg.init:
            ckpt = load_checkpoint(cfg.init, "initial model")
            check_vocab(ckpt, meta, cfg.init)
            self.model = model_from_checkpoint(ckpt)
        else:
            self.model = GPT(GPTConfig(vocab_size=meta["vocab_size"], block_size=cfg.block_size,
                                       n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd))
        self.T = T = self.model.config.block_size
        B, W = cfg.batch_size, self.world
        if (len(tokens) - 1) // T < B * W or (len(val_tokens) - 1) // T < 1:
            fail(f"split '{cfg.split}' has {len(tokens):,} tokens, fewer than one batch of {B * W}x{T}",
                 "build a larger corpus, or lower --batch_size or the block size")
        self.accum = max(1, cfg.tokens_per_step // (B * T * W))
        if cfg.tokens_per_step and cfg.tokens_per_step != self.accum * B * T * W:
            fail(f"tokens_per_step {cfg.tokens_per_step:,} is not a multiple of batch {B} x block {T} x {W} "
                 "process(es)", f"use a multiple of {B * T * W:,}")
        self.tokens_per_step = self.accum * B * T * W
        self.model.to(device)
        # the reference: its losses from the score file (cached) or its model (online)
        self.ref_models, scores = [], []
        if cfg.ratio < 1.0 and cfg.select in ("excess", "ref_loss", "block"):
            if cfg.combine not in ("mean", "min"):
                fail(f"unknown --combine {cfg.combine}", "use --combine mean or min")
            refs, files = cfg.ref.split(","), cfg.scores.split(",")
            if cfg.ref_scores == "cached" and len(files) != len(refs):
                fail(f"{len(refs)} reference(s) but {len(files)} score file(s)", "give one score file per reference")
            for i, ref in enumerate(refs):
                rckpt = load_checkpoint(ref, "reference model")
                check_vocab(rckpt, meta, ref)
                if cfg.ref_scores == "online":
                    self.ref_models.append(model_from_checkpoint(rckpt).to(device).eval())
                    if self.ref_models[-1].config.block_size != T:
                        fail("the reference and the student have different block sizes", "train both with one preset")
                else:
                    scores.append(load_scores(files[i], ref, tokens, T, meta, cfg.split))
        self.blocks = Blocks(tokens, T, B, cfg.seed, labels=self.labels, scores=scores, rank=self.rank, world=W,
                             combine=cfg.combine)
        self.answers = rdata.answer_mask(self.tok, np.asarray(tokens)) if cfg.answer_only else None
        if self.answers is not None and not self.answers.any():
            fail(f"split '{cfg.split}' has no answer tokens (nothing follows 'Answer:')",
                 "fine-tune on question/answer pairs (the ref_train split)")
        self.val_blocks = Blocks(val_tokens, T, B, 0)
        self.max_iters = max(1, cfg.max_tokens // self.tokens_per_step)
        self.warmup = max(1, int(cfg.warmup_frac * self.max_iters))
        self.optimizer = self.model.configure_optimizer(cfg.lr, cfg.weight_decay, (0.9, cfg.beta2),
                                                        device.split(":")[0])
        use_compile = cfg.compile == "on" or (cfg.compile == "auto" and device.startswith("cuda"))
        self.compiled = torch.compile(self.model) if use_compile else self.model
        self.train_model = self.compiled
        if W > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.train_model = DDP(self.compiled, device_ids=[local_rank] if device.startswith("cuda") else None)
        self.sel_gen = torch.Generator().manual_seed(cfg.seed + 1)  # for --select random; the same on every rank
        self.flops_per_token = self.model.flops_per_token() + self.model.flops_per_token() // 3 * len(self.ref_models)
        self.peak = peak_flops(device)

    def lr_at(self, it):
        """Linear warmup, then cosine decay to lr * min_lr_frac."""
        c = self.cfg
        if it < self.warmup:
            return c.lr * (it + 1) / self.warmup
        frac = min(1.0, (it - self.warmup) / max(1, self.max_iters - self.warmup))
        return c.lr * (c.min_lr_frac + (1 - c.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))

    def select(self, losses, x, y, ref_losses, valid=None, labels=None):
        """Which tokens of the batch get a loss: all (ratio 1), the top by excess loss (SLM) or a control's
        choice (random, ref_loss, block, oracle: see TrainConfig.select); with --scope global, chosen over the
        batches of all processes together; with --weighting soft, weights."""
        c, B = self.cfg, losses.size(0)
        if c.select == "oracle":  # the ground truth: every token labelled target math, whatever the ratio
            return labels.to(losses.device) == rdata.MATH
        if c.ratio >= 1.0:
            return torch.ones_like(losses, dtype=torch.bool) if valid is None else valid
        if c.select == "random":  # one draw for the global batch, so every scope sees the same numbers
            scores = torch.rand((B * self.world, losses.size(1)), generator=self.sel_gen)
            scores = scores[self.rank * B:(self.rank + 1) * B].to(losses.device)
        else:
            if self.ref_models:  # online: the same numbers the score files would hold
                with torch.no_grad(), autocast(self.device):
                    ref_losses = combine_refs([token_losses(m(x), y).half().float() for m in self.ref_models],
                                              c.combine)
            ref_losses = ref_losses.to(losses.device)
            # ref_loss: the tokens the reference finds easiest, whatever the student knows
            scores = -ref_losses if c.select == "ref_loss" else excess_loss(losses, ref_losses)
        if c.select == "block":  # whole blocks: the top ratio of rows by their mean excess loss
            return select_topk(scores.mean(1), c.ratio)[:, None].expand_as(losses)
        if c.scope == "global" and self.world > 1:
            return select_topk_global(scores, c.ratio)
        if c.weighting == "soft":
            return soft_weights(scores, c.ratio, c.temperature)
        return select_topk(scores, c.ratio, valid)

    def step(self, step):
        """Optimizer step `step`: `accum` micro-batches (each: forward, per-token losses, selection, SLM loss,
        backward), then one update. Returns the mean loss (0-dim tensor), the masks and the labels."""
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(step)
        total, masks, labels = 0.0, [], []
        for micro in range(self.accum):
            ids = self.blocks.block_ids(step * self.accum + micro)
            x, y, ref_losses, lab = self.blocks.batch(None, ids)
            valid = self.blocks.rows(self.answers, ids, 1, bool).to(self.device) if self.cfg.answer_only else None
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast(self.device):
                logits = self.train_model(x)                             # (B, T, V)
            losses = token_losses(logits, y)                             # (B, T)
            mask = self.select(losses, x, y, ref_losses, valid, lab)     # (B, T) bool, or soft weights
            # with a global selection, ranks keep different counts; DDP averages gradients over ranks,
            # so each rank divides by the global count / world to get the global mean over selected tokens
            n = n_selected(self.cfg.ratio, mask.numel() * self.world) / self.world \
                if self.cfg.scope == "global" and self.world > 1 else None
            loss = slm_loss(losses, mask, n)
            sync = micro == self.accum - 1 or self.world == 1
            ctx = self.train_model.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                (loss / self.accum).backward()
            total += loss.detach() / self.accum
            masks.append(mask)
            labels.append(lab)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, torch.cat(masks), (torch.cat(labels) if labels[0] is not None else None)

    def evaluate(self):
        """val_loss: whole-text loss on the validation split; val_answer_loss and answer_loss: the loss of the
        worked solutions given the questions, on the validation and the test problems; acc: test accuracy, and
        correct: which test problems were right (hex bits, for paired tests between runs)."""
        out = {"val_loss": eval_loss(self.compiled, self.val_blocks, self.device)}
        for key, problems in (("val_answer_loss", self.val_problems), ("answer_loss", self.problems)):
            if problems and "solution" in problems[0]:
                out[key] = eval_answer_loss(self.model, self.tok, problems, self.device)
        if self.problems:
            correct = eval_accuracy(self.model, self.tok, self.problems, self.device, self.cfg.eval_max_new)
            out.update(acc=sum(correct) / len(correct), correct=pack_bits(correct))
        return out


def load_scores(path, ref_path, tokens, T, meta, split):
    """The reference's cached scores, refused if they were made by another reference, corpus or block size."""
    if not os.path.exists(path):
        fail(f"no reference scores at {path}", "run `python train_ref.py` (it scores the corpus)")
    scores = np.memmap(path, dtype=np.float16, mode="r")
    stamp = read_json(path + ".json")
    if len(scores) != len(tokens) or stamp.get("format_version") != SCORES_VERSION \
            or stamp.get("ref_sha") != file_hash(ref_path) or stamp.get("block_size") != T \
            or stamp.get("vocab_hash") != meta["vocab_hash"] \
            or stamp.get("corpus_sha256") != meta["splits"][split].get("sha256"):
        fail(f"{path} does not belong to this reference, corpus and block size",
             "score again with `python train_ref.py` (or use --ref_scores online)")
    return scores


def train(cfg, log=print):
    """Train one model (ratio < 1: with SLM) and return its summary, the final log record. Under torchrun,
    rank 0 evaluates, logs and checkpoints; every rank trains."""
    state = check_out_dir(cfg)
    if state == "reuse":
        log(f"{cfg.out_dir}: finished run with this configuration found, reusing it")
        return read_json(os.path.join(cfg.out_dir, "done.json"))
    tr = Trainer(cfg)
    master = tr.rank == 0
    log = log if master else (lambda *a: None)
    barrier()
    if state == "resume":
        start = resume_from_checkpoint(tr, cfg, write=master)
        log(f"{cfg.out_dir}: resuming at step {start}")
    else:
        start = 0
        if master:
            init_out_dir(cfg)  # everything checked: only now is anything written
    barrier()
    max_iters, per_step = tr.max_iters, tr.tokens_per_step
    evals = set(eval_steps(max_iters, cfg.n_evals, cfg.eval_schedule))
    kinds = tr.meta["kinds"] or rdata.KINDS
    if tr.labels is None and cfg.split.startswith("web"):
        log(f"note: {cfg.split} has no ground-truth token kinds (real data): selection statistics are skipped")
    sel_counts, tot_counts = torch.zeros(len(kinds), device=tr.device), torch.zeros(len(kinds), device=tr.device)
    log(f"training {cfg.out_dir}: {tr.model.num_params() / 1e6:.2f}M params, {max_iters} steps of {per_step:,} "
        f"tokens ({tr.world} process(es) x {tr.accum} micro-batch(es) of {cfg.batch_size}x{tr.T}), ratio "
        f"{cfg.ratio} ({cfg.select}{', ' + cfg.scope + ' selection' if tr.world > 1 else ''}), lr {cfg.lr:g}, "
        f"on {tr.device}")
    t_start = t_last = time.time()
    loss_sum, loss_n, record = torch.zeros((), device=tr.device), 0, {}
    for step in range(start, max_iters + 1):
        last = step == max_iters
        # ---- evaluate and log (a resumed run logged its first step already)
        evaluating = step in evals
        if (evaluating or step % cfg.log_every == 0) and not (step == start and state == "resume"):
            loss_mean = float(all_mean(loss_sum)) / max(1, loss_n)
            if loss_n and not math.isfinite(loss_mean):  # stop before any checkpoint of a broken model
                fail(f"the loss became {loss_mean} near step {step} (the last good checkpoint is kept)",
                     "lower --lr")
            t_window = time.time() - t_last
            record = {"step": step, "tokens": step * per_step, "lr": tr.lr_at(min(step, max_iters - 1)),
                      "flops": step * per_step * tr.flops_per_token, "time": round(time.time() - t_start, 2)}
            if loss_n:
                record["train_loss"] = loss_mean
                record["tok_s"] = loss_n * per_step / max(1e-9, t_window)
                if tr.peak:
                    record["mfu"] = record["tok_s"] / tr.world * tr.flops_per_token / tr.peak
            if evaluating:
                all_sum(sel_counts), all_sum(tot_counts)
                if master:
                    record.update(tr.evaluate())
                if tr.labels is not None and tot_counts.sum() > 0:  # selection since the last eval, per kind
                    record["selected"] = {k: round((s / t).item(), 4) for k, s, t in
                                          zip(kinds, sel_counts, tot_counts) if t > 0}
                    record["precision"] = round((sel_counts[rdata.MATH] / sel_counts.sum()).item(), 4)
                    record["composition"] = {k: round((s / sel_counts.sum()).item(), 4)  # precision per kind
                                             for k, s in zip(kinds, sel_counts)}
                sel_counts.zero_(), tot_counts.zero_()
            if master:
                with open(os.path.join(cfg.out_dir, "log.jsonl"), "a") as f:
                    f.write(json.dumps(record) + "\n")
            eta = (max_iters - step) * (time.time() - t_start) / max(1, step - start)
            log(f"step {step:5d}/{max_iters} | tokens {record['tokens']:>10,} | "
                + (f"loss {record['train_loss']:.4f} | " if "train_loss" in record else "")
                + (f"val {record['val_loss']:.4f} | " if "val_loss" in record else "")
                + (f"acc {record['acc']:.1%} | " if "acc" in record else "")
                + (f"precision {record['precision']:.0%} | " if "precision" in record else "")
                + (f"{record['tok_s']:,.0f} tok/s | " if "tok_s" in record else "")
                + (f"mfu {record['mfu']:.1%} | " if "mfu" in record else "") + f"eta {eta:.0f}s")
            loss_sum, loss_n = torch.zeros((), device=tr.device), 0
            if evaluating and master:
                save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), tr, step)
                if cfg.keep_ckpts:
                    save_checkpoint(os.path.join(cfg.out_dir, f"ckpt_{step:06d}.pt"), tr, step)
            barrier()
            t_last = time.time()
        if last:
            break
        # ---- one training step
        loss, mask, labels = tr.step(step)
        if labels is not None:
            labels = labels.to(tr.device).view(-1)
            tot_counts += torch.bincount(labels, minlength=len(kinds))
            sel_counts += torch.bincount(labels, weights=mask.view(-1).float(), minlength=len(kinds))
        loss_sum += loss
        loss_n += 1
    summary = {**record, "params": tr.model.num_params(), "max_iters": max_iters}
    if master:
        rdata.write_atomic(os.path.join(cfg.out_dir, "done.json"), json.dumps(summary, indent=1).encode())
    barrier()
    return read_json(os.path.join(cfg.out_dir, "done.json"))  # every rank returns rank 0's summary


def distributed():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def barrier():
    if distributed():
        distributed().barrier()


def all_sum(t):
    if distributed():
        distributed().all_reduce(t)
    return t


def all_mean(t):
    return all_sum(t.clone()) / (distributed().get_world_size() if distributed() else 1)


def benchmark(cfgs, steps=10, rounds=20):
    """Step time of several configurations (e.g. CLM, SLM with cached scores, SLM with an online reference)
    on the same model and data, measured in the same process and interleaved round by round, so that the
    machine's drift hits every configuration alike. Returns {name: (tokens/s, step time / the first's)}:
    medians over rounds, the ratio paired within each round."""
    trainers = {name: Trainer(cfg) for name, cfg in cfgs.items()}
    times = {name: [] for name in cfgs}
    for tr in trainers.values():  # warm up (and compile)
        for i in range(3):
            tr.step(i)
    for r in range(rounds):
        for name, tr in trainers.items():
            sync(tr.device)
            t0 = time.perf_counter()
            for i in range(steps):
                tr.step(3 + r * steps + i)
            sync(tr.device)
            times[name].append((time.perf_counter() - t0) / steps)
    first = np.array(next(iter(times.values())))
    return {name: (tr.tokens_per_step / float(np.median(times[name])),
                   float(np.median(np.array(times[name]) / first))) for name, tr in trainers.items()}


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ==========================================================================================================
# 7. Presets and the command line (shared by the scripts)

# sizes of model and budgets; data.py has the corpus sizes of the same names
PRESETS = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=64, batch_size=8, base_tokens=20_000, base_lr=3e-3,
                 ref_epochs=2, ref_lr=1e-3, student_tokens=20_000, lr=3e-3, lr_clm=3e-3, n_evals=2,
                 eval_problems=8, log_every=5),
    "cpu": dict(n_layer=4, n_head=4, n_embd=64, block_size=128, batch_size=8, base_tokens=2_500_000,
                base_lr=6e-3, ref_epochs=4, ref_lr=2e-3, student_tokens=3_000_000, lr=3e-3, lr_clm=3e-3,
                n_evals=16, eval_problems=1000, log_every=100),
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


def arg(default, help, **kw):
    """A dataclass field that is also a command-line flag."""
    return field(default_factory=lambda: default, metadata={"help": help, **kw})


def cli(cls, description, argv=None):
    """Parse the command line into dataclass `cls`: one --flag per field, with its help."""
    import argparse
    ap = argparse.ArgumentParser(description=description)
    for f in fields(cls):
        d, meta = f.default_factory(), dict(f.metadata)
        kind = meta.pop("type", type(d))
        if kind is bool:
            ap.add_argument(f"--{f.name}", action="store_true", help=meta.pop("help"))
        else:
            ap.add_argument(f"--{f.name}", type=kind, default=d, **meta)
    return cls(**vars(ap.parse_args(argv)))


def file_hash(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def read_json(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)
