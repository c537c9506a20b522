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
  4. evaluation: held-out loss, the loss of worked solutions given their questions, greedy answer accuracy
  5. training: the config, a Trainer (one optimizer step with the selection) and the loop that train_ref.py
     and train_slm.py both call

The machinery (checkpoints, run folders, locks, processes, presets, the command line) is in infra.py. This file
is a library; run train_ref.py, train_slm.py and plot.py.
"""
import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from infra import (Meter, append_log, atomic_write, autocast, barrier, batch_plan, check_config, check_vocab,
                   checkpoint, dist_setup, eval_steps, fail, gather, last_record, load_checkpoint, load_scores,
                   log_line, pack_bits, peak_flops, read_json, run_folder, start_line, this_process,
                   training_module)


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
        q, k, v = self.c_attn(x).split(C, dim=2)                         # 3 x (B, T, C)
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
        y = y.transpose(1, 2).contiguous().view(B, T, C)                  # (B, T, C)
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
    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(m.weight, mean=0.0, std=0.02)

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

    @classmethod
    def from_checkpoint(cls, ckpt):
        model = cls(GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
        return model

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

    def configure_optimizer(self, lr, weight_decay, betas, device):
        decay = [p for p in self.parameters() if p.dim() >= 2]  # matmuls and embeddings decay
        no_decay = [p for p in self.parameters() if p.dim() < 2]  # norms do not
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=str(device).startswith("cuda"))

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


def slm_loss(losses, weights, n=None):
    """Eq. 4: the mean loss over the selected tokens only (weights: the selection mask, or soft weights).
    Unselected tokens get exactly zero gradient. n: the count to divide by when the selection spans several
    processes. Nothing selected gives 0, not 0/0."""
    kept = torch.where(weights > 0, losses * weights, 0.0)  # an unselected inf loss stays out (inf * 0 = nan)
    count = weights.sum() if n is None else n
    return kept.sum() / (torch.where(count > 0, count, 1) if n is None else count)


def select_topk_global(scores, ratio, rank):
    """Exact top-k over the global batch of all data-parallel processes: each gathers every process's scores
    (the excess losses, never the tokens), makes the same selection and keeps its own part (rank)."""
    return select_topk(gather(scores), ratio)[rank]  # (W, B, T) -> this process's (B, T)


def soft_weights(scores, ratio, temperature):
    """Soft selection (--weighting soft, the paper's "reweighting" future work): weights sigmoid((score - threshold)
    / temperature), the threshold halfway between the k-th and (k+1)-th highest scores (k = n_selected(ratio, N)),
    so ratio sets where they cross 1/2; as the temperature (nats) goes to 0 they become select_topk's mask."""
    flat = scores.reshape(-1).float()
    k = n_selected(ratio, flat.numel())
    if k == flat.numel():
        return torch.ones_like(scores, dtype=torch.float)
    top = torch.topk(flat, k + 1).values
    return torch.sigmoid((scores.float() - (top[k - 1] + top[k]) / 2) / temperature)


def combine_refs(ref_losses, how):
    """One reference loss per token from several references' (the paper's "multiple reference models"):
    their mean, or their min (a token counts as learnable if any reference finds it easy). One: itself."""
    if len(ref_losses) == 1:
        return ref_losses[0]
    stacked = torch.stack(ref_losses)                       # (R, B, T)
    return stacked.mean(0) if how == "mean" else stacked.amin(0)


# ==========================================================================================================
# 3. Data: fixed aligned blocks, and the reference's scores cached once

class Blocks:
    """A token file cut into fixed, aligned blocks: block i is x = tokens[iT : iT+T], y = tokens[iT+1 : iT+T+1],
    so every token (but the first) is a target in exactly one block, always with the same context: what lets the
    reference score the whole file once. The order is reshuffled every epoch from the seed; batch `step` is a pure
    function of (seed, step), so a run's data position is its step. Under DDP rank r reads its own B blocks."""

    def __init__(self, tokens, block_size, batch_size, seed, labels=None, ref_losses=(), rank=0, world=1,
                 combine="mean"):
        self.tokens, self.labels, self.ref_losses, self.combine = tokens, labels, list(ref_losses), combine
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

    def read(self, ids):
        """Blocks `ids`: x, y (B, T) int64; the reference losses of the targets (several score files: combined)
        and their labels (B, T), each None where there are none."""
        x = self.rows(self.tokens, ids, 0, np.int64)
        y = self.rows(self.tokens, ids, 1, np.int64)
        ref = combine_refs([self.rows(r, ids, 1, np.float32) for r in self.ref_losses], self.combine) \
            if self.ref_losses else None
        lab = self.rows(self.labels, ids, 1, np.int64) if self.labels is not None else None
        return x, y, ref, lab


@torch.no_grad()
def block_losses(model, blocks, device, batch_size):
    """(block ids, their token losses (b, T)) for every block of a file, in order, a batch at a time."""
    model.eval()
    for start in range(0, blocks.n, batch_size):
        ids = np.arange(start, min(start + batch_size, blocks.n))
        x, y, _, _ = blocks.read(ids)
        with autocast(device):
            yield ids, token_losses(model(x.to(device)), y.to(device))  # (b, T)
    model.train()


def score_corpus(model, tokens, block_size, path, device, batch_size=None, log=print):
    """Reference loss of every token of a file, once: float16, aligned with the tokens (scores[j]: token j's loss in
    its block; j = 0 and a ragged tail: NaN). Returns tokens/s. 32 blocks a batch suit a CPU's caches best."""
    batch_size = batch_size or (512 if str(device).startswith("cuda") else 32)
    blocks = Blocks(tokens, block_size, batch_size, seed=0)
    scores = np.full(len(tokens), np.nan, dtype=np.float16)
    t0, done = time.time(), 0
    for ids, losses in block_losses(model, blocks, device, batch_size):
        scores[ids[0] * block_size + 1: (ids[-1] + 1) * block_size + 1] = losses.half().cpu().numpy().reshape(-1)
        done += losses.numel()
        if ids[0] // batch_size % 200 == 0 or ids[-1] + 1 == blocks.n:
            log(f"scoring {done:,}/{blocks.n * block_size:,} tokens | {done / (time.time() - t0):,.0f} tok/s")
    atomic_write(path, scores.tobytes())
    return done / (time.time() - t0)


# ==========================================================================================================
# 4. Evaluation: held-out loss, answer loss, greedy answer accuracy

def eval_loss(model, blocks, device, batch_size=64):
    """Mean token loss over every block of a held-out file."""
    total, count = 0.0, 0
    for _, losses in block_losses(model, blocks, device, batch_size):
        total, count = total + losses.sum().item(), count + losses.numel()
    return total / count


@torch.no_grad()
def eval_answer_loss(model, problems, device, batch_size=64):
    """Mean loss of the worked-solution tokens given the question: each (prompt, solution) from position 0,
    the loss on the solution's tokens only (the question, with its random names and numbers, is unscored)."""
    model.eval()
    T, total, count = model.config.block_size, 0.0, 0
    for i in range(0, len(problems), batch_size):
        # (ids, solution length) each; a sequence longer than the block loses its beginning
        seqs = [((q + s)[-(T + 1):], min(len(s), T)) for q, s, _ in problems[i:i + batch_size]]
        L = max(len(ids) for ids, _ in seqs) - 1
        x, y = torch.zeros(len(seqs), L, dtype=torch.long), torch.zeros(len(seqs), L, dtype=torch.long)
        scored = torch.zeros(len(seqs), L, dtype=torch.bool)     # (b, L): targets that are solution tokens
        for j, (ids, n_s) in enumerate(seqs):                     # padding sits after a row's end: causal
            x[j, :len(ids) - 1], y[j, :len(ids) - 1] = torch.tensor(ids[:-1]), torch.tensor(ids[1:])
            scored[j, len(ids) - 1 - n_s:len(ids) - 1] = True     # the last n_s targets
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
    groups, room = {}, model.config.block_size - max_new_tokens
    for i, (q, _, answer) in enumerate(problems):
        q = q[-room:]  # a question too long to leave room for the answer loses its beginning
        groups.setdefault(len(q), []).append((i, q, answer))
    correct = [False] * len(problems)
    for n, group in groups.items():
        idx = torch.tensor([q for _, q, _ in group], device=device)
        with autocast(device):
            out = model.generate(idx, max_new_tokens, stop=lambda row: tok.eot in row[n:] or  # the answer line ends
                                 data.FINAL_LINE_RE.search(tok.decode(row[n:])) is not None)
        for row, (i, _, answer) in zip(out[:, n:].tolist(), group):
            row = row[:row.index(tok.eot)] if tok.eot in row else row
            correct[i] = data.extract_answer(tok.decode(row)) == answer
    model.train()
    return correct


# ==========================================================================================================
# 5. Training: the config, one optimizer step with the selection, and the loop

SELECTS = ("excess", "random", "ref_loss", "block", "oracle")  # SLM, then the controls (TrainConfig.select)
CHOICES = dict(select=SELECTS, ref_mode=("cached", "online"), scope=("local", "global"), weighting=("topk", "soft"),
               combine=("mean", "min"), eval_schedule=("log", "even"))  # the values TrainConfig's choices take


@dataclass
class TrainConfig:
    arm: str = ""                 # what the run is, in words (plot.py's name for it); set by the scripts
    # what to train on
    data_dir: str = "data"        # corpus built by data.py
    split: str = "web"            # training split: web (student), web_base (base model), ref_train (reference)
    part: str = ""                # "i/n": train on the i-th of n equal parts of the split only (0-based)
    answer_only: bool = False     # fine-tuning: a loss on answer tokens only (after "Answer:"), selection among them
    out_dir: str = "out/clm"      # log.jsonl, config.json, ckpt.pt go here
    init: str = ""                # checkpoint to start from ('' = from scratch)
    # model, when starting from scratch
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    # selective language modeling
    ratio: float = 1.0            # share of tokens that get a loss; 1.0 = uniform next-token training (CLM)
    select: str = "excess"        # excess (SLM), or a control: random, ref_loss, block, oracle (Trainer.select_tokens)
    mix_hq: float = 0.0           # CLM on the split mixed with this many epochs of the high-quality subset
    ref_ckpts: str = ""           # reference checkpoint(s), comma-separated (selections by the reference)
    ref_mode: str = "cached"      # cached: read the reference's losses from score files; online: run it each step
    score_files: str = ""         # the score files (float16, aligned with the split's tokens), one per reference
    combine: str = "mean"         # several references: their per-token losses' mean or min
    scope: str = "local"          # under DDP: top-k within each rank's batch (local) or over the global batch
    weighting: str = "topk"       # topk: keep the top ratio (the paper); soft: sigmoid weights (soft_weights)
    temperature: float = 0.1      # soft weighting: sharpness, in nats of excess loss
    # optimisation
    batch_size: int = 32          # blocks per micro-batch per process
    tokens_per_step: int = 0      # per optimizer step (0: one micro-batch per process); more: accumulation
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

    @property
    def uses_reference(self):  # whether tokens are selected by a reference's losses
        return self.ratio < 1.0 and self.select in ("excess", "ref_loss", "block")


def load_reference(cfg, meta, tokens, T, device):
    """The references of a selection by reference losses: (score files if cached, models if online), or ([], [])."""
    if not cfg.uses_reference:
        return [], []
    refs, files = cfg.ref_ckpts.split(","), cfg.score_files.split(",")
    if cfg.ref_mode == "cached" and len(files) != len(refs):
        fail(f"{len(refs)} reference(s) but {len(files)} score file(s)", "give one score file per reference")
    scores, models = [], []
    for ref, path in zip(refs, files if cfg.ref_mode == "cached" else refs):
        ckpt = load_checkpoint(ref, "reference model")
        check_vocab(ckpt, meta, ref)
        if cfg.ref_mode == "cached":
            scores.append(load_scores(path, ref, tokens, T, meta, cfg.split))
        elif ckpt["model_args"]["block_size"] != T:
            fail("the reference and the student have different block sizes", "train both with one preset")
        else:
            models.append(GPT.from_checkpoint(ckpt).to(device).eval())
    return scores, models


class Trainer:
    """Everything one run needs, loaded and checked before anything is written. step(i) does optimizer step i,
    evaluate() measures the model. Under torchrun every process builds one and reads its share of every batch."""

    def __init__(self, cfg, log=print):
        check_config(cfg, CHOICES)
        self.cfg = cfg
        self.rank, self.world, self.device = this_process(cfg.device)  # its place under torchrun, its device
        self.start, self.resumed = 0, False  # the first step to train (a resumed run: its checkpoint's)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.meta, self.tok, tokens, self.labels, self.answers, self.val_tokens = data.training_data(cfg)
        if cfg.init:  # the model: a checkpoint's (the base model), or a new one
            ckpt = load_checkpoint(cfg.init, "initial model")
            check_vocab(ckpt, self.meta, cfg.init)
            self.model = GPT.from_checkpoint(ckpt).to(self.device)
        else:
            self.model = GPT(GPTConfig(vocab_size=self.meta["vocab_size"], block_size=cfg.block_size,
                                       n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd)).to(self.device)
        self.T = self.model.config.block_size
        self.accum, self.tokens_per_step = batch_plan(cfg, len(tokens), len(self.val_tokens), self.T, self.world)
        self.val_blocks = Blocks(self.val_tokens, self.T, cfg.batch_size, 0)
        self.problems, self.val_problems = data.eval_problems(cfg, self.T, log if self.rank == 0 else None)
        score_files, self.ref_models = load_reference(cfg, self.meta, tokens, self.T, self.device)
        self.blocks = Blocks(tokens, self.T, cfg.batch_size, cfg.seed, labels=self.labels, ref_losses=score_files,
                             rank=self.rank, world=self.world, combine=cfg.combine)
        self.max_iters = max(1, cfg.max_tokens // self.tokens_per_step)
        self.warmup = max(1, int(cfg.warmup_frac * self.max_iters))
        self.optimizer = self.model.configure_optimizer(cfg.lr, cfg.weight_decay, (0.9, cfg.beta2), self.device)
        # the step's forward runs train_model (compiled on CUDA, under DDP with torchrun); self.model stays the
        # plain module that checkpoints save and evaluation decodes with
        self.train_model = training_module(self.model, cfg.compile, self.device, self.world)
        self.sel_gen = torch.Generator().manual_seed(cfg.seed + 1)  # for --select random; the same on every rank
        # an online reference adds one forward pass per token, and a forward pass is a third of a training step
        self.flops_per_token = self.model.flops_per_token() + self.model.flops_per_token() // 3 * len(self.ref_models)
        self.peak = peak_flops(self.device)

    def lr_at(self, it):
        """Linear warmup, then cosine decay to lr * min_lr_frac."""
        c = self.cfg
        if it < self.warmup:
            return c.lr * (it + 1) / self.warmup
        frac = min(1.0, (it - self.warmup) / max(1, self.max_iters - self.warmup))
        return c.lr * (c.min_lr_frac + (1 - c.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))

    def select_tokens(self, losses, x, y, ref_losses, valid=None, labels=None):
        """Which tokens of the batch get a loss: all (ratio 1); SLM: the top `ratio` by excess loss; or a control:
        random (a random share), ref_loss (the top by -reference loss: no student term), block (the top blocks by
        mean excess loss, every token of a kept block), oracle (the tokens labelled target math). --scope global:
        chosen over every process's batch; --weighting soft: weights instead of a mask."""
        c, B = self.cfg, losses.size(0)
        if c.select == "oracle":  # the ground truth, whatever the ratio
            return labels.to(losses.device) == data.MATH
        if c.ratio >= 1.0:
            return torch.ones_like(losses, dtype=torch.bool) if valid is None else valid
        if c.select == "random":  # one draw for the global batch, so every scope sees the same numbers
            scores = torch.rand((B * self.world, losses.size(1)), generator=self.sel_gen)
            scores = scores[self.rank * B:(self.rank + 1) * B].to(losses.device)
        else:
            if self.ref_models:  # online: rounded through float16 like the score files, so both select alike
                with torch.no_grad(), autocast(self.device):
                    ref_losses = combine_refs([token_losses(m(x), y).half().float() for m in self.ref_models],
                                              c.combine)
            ref_losses = ref_losses.to(losses.device)
            # ref_loss: the tokens the reference finds easiest, whatever the student knows
            scores = -ref_losses if c.select == "ref_loss" else excess_loss(losses, ref_losses)
        if c.select == "block":  # whole blocks: the top ratio of rows by their mean excess loss
            return select_topk(scores.mean(1), c.ratio)[:, None].expand_as(losses)
        if c.scope == "global" and self.world > 1:
            return select_topk_global(scores, c.ratio, self.rank)
        if c.weighting == "soft":
            return soft_weights(scores, c.ratio, c.temperature)
        return select_topk(scores, c.ratio, valid)

    def step(self, step):
        """Optimizer step `step`: `accum` micro-batches (each: forward, per-token losses, selection, SLM loss,
        backward), then one update. Returns the mean loss (0-dim tensor), the selection and the labels."""
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(step)
        total, kept, labels = 0.0, [], []
        for micro in range(self.accum):
            ids = self.blocks.block_ids(step * self.accum + micro)
            x, y, ref_losses, lab = self.blocks.read(ids)
            valid = self.blocks.rows(self.answers, ids, 1, bool).to(self.device) if self.answers is not None else None
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast(self.device):
                logits = self.train_model(x)                             # (B, T, V)
            losses = token_losses(logits, y)                             # (B, T)
            weights = self.select_tokens(losses, x, y, ref_losses, valid, lab)  # (B, T): a mask, or soft weights
            # with a global selection ranks keep different counts, and DDP averages gradients over ranks: so
            # each rank divides by the global count / world, which makes the average the global mean
            n = n_selected(self.cfg.ratio, weights.numel() * self.world) / self.world \
                if self.cfg.scope == "global" and self.world > 1 else None
            loss = slm_loss(losses, weights, n)
            last = micro == self.accum - 1 or self.world == 1  # DDP: all-reduce gradients on the last one only
            with self.train_model.no_sync() if not last else contextlib.nullcontext():
                (loss / self.accum).backward()
            total += loss.detach() / self.accum
            kept.append(weights)
            labels.append(lab)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, torch.cat(kept), (torch.cat(labels) if labels[0] is not None else None)

    def evaluate(self):
        """val_loss: whole-text loss on the validation split; val_answer_loss and answer_loss: the loss of the
        worked solutions given the questions, on the validation and the test problems; acc: test accuracy, and
        correct: which test problems were right (hex bits, for paired tests between runs)."""
        out = {"val_loss": eval_loss(self.model, self.val_blocks, self.device)}
        for key, problems in (("val_answer_loss", self.val_problems), ("answer_loss", self.problems)):
            if problems and problems[0][1] is not None:
                out[key] = eval_answer_loss(self.model, problems, self.device)
        if self.problems:
            correct = eval_accuracy(self.model, self.tok, self.problems, self.device, self.cfg.eval_max_new)
            out.update(acc=sum(correct) / len(correct), correct=pack_bits(correct))
        return out


def train(cfg, log=print):
    """Train one model (ratio < 1: with SLM) and return its summary, the final log record. Under torchrun,
    rank 0 evaluates, logs and checkpoints; every rank trains."""
    log = log if dist_setup()[0] == 0 else (lambda *a: None)
    with run_folder(cfg, log, Trainer) as tr:
        if tr is None:  # a finished run of this configuration: reused
            return read_json(os.path.join(cfg.out_dir, "done.json"))
        log(start_line(tr))
        evals, master = eval_steps(tr.max_iters, cfg.n_evals, cfg.eval_schedule), tr.rank == 0
        meter = Meter(tr, tr.meta["kinds"] or data.KINDS, data.MATH)
        for step in range(tr.start, tr.max_iters + 1):
            evaluating = step in evals
            if (evaluating or step % cfg.log_every == 0) and not (tr.resumed and step == tr.start):  # logged
                record = meter.record(step)  # the training loss (refused if not finite), tokens/s, lr, FLOPs
                if evaluating:  # rank 0 measures the model; every rank sums its selection counts
                    record.update(**(meter.timed(tr.evaluate) if master else {}), **meter.selection())
                if master:
                    append_log(cfg.out_dir, record)
                    if evaluating:  # only a finite model gets here: the last good checkpoint survives a blow-up
                        checkpoint(tr, step)
                log(log_line(record, tr.max_iters, meter.eta(step, sum(s > step for s in evals))))
                barrier()
                meter.reset()
            if step == tr.max_iters:
                break
            meter.add(*tr.step(step))
        if master:  # the final record (a run resumed at its last step logged it before)
            atomic_write(os.path.join(cfg.out_dir, "done.json"), json.dumps(
                {**last_record(cfg.out_dir), "params": tr.model.num_params(), "max_iters": tr.max_iters}, indent=1))
        barrier()
        return read_json(os.path.join(cfg.out_dir, "done.json"))  # every rank returns rank 0's summary
