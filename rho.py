"""rho.py -- Selective Language Modeling (RHO-1, Lin et al. 2024): the model, the method, data, evaluation, training."""
import functools
import itertools
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from infra import (Meter, append_log, atomic_write, autocast, barrier, check_ranges, dist_setup, eval_steps, fail,
                   gather, load_checkpoint, load_scores, log_line, peak_flops, read_json, read_log, run_folder,
                   save_checkpoint, training_module)


# 1. The model (nanoGPT's, without dropout: its train and eval modes are alike) ----------------------------------------
@dataclass
class GPTConfig:
    vocab_size: int = 1280
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, cache=None, mask=None):
        B, T, C = x.size()
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # 3 x (B, nh, T, hs)
                   for t in self.c_attn(x).split(C, dim=2))
        if cache is not None:  # decoding: the keys and values of the earlier positions are kept in cache = [k, v]
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)  # (B, nh, T_past+T, hs)
            cache[:] = [k, v]
        # causal among the new positions (a single new one sees every cached one), or the mask of left padding
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, mask=None):
        x = x + self.attn(self.ln_1(x), cache, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=False),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied embeddings
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                torch.nn.init.normal_(m.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():  # scaled init of the residual projections (GPT-2)
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @classmethod
    def from_checkpoint(cls, ckpt):
        model = cls(GPTConfig(**{k: ckpt["model_args"][k] for k in GPTConfig.__dataclass_fields__}))  # its shape
        model.load_state_dict(ckpt["model"])
        return model

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward): 6N plus attention (PaLM appendix B)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size

    def forward(self, idx, targets=None, caches=None, start=0, pad=None):
        """Logits (B, T, V), or with targets their token_losses (B, T); decoding: caches, start and left pad (B,)."""
        B, T = idx.size()
        pos, mask = torch.arange(start, start + T, dtype=torch.long, device=idx.device), None  # (T,)
        if pad is not None:
            keys = torch.arange(start + T, device=idx.device)                        # (S,) every key so far
            mask = (keys <= pos[:, None]) & (keys >= pad[:, None, None])             # (B, T, S): causal, unpadded
            mask = (mask | (keys == pos[:, None]))[:, None]  # (B, 1, T, S); a pad sees itself: finite, unused
            pos = (pos - pad[:, None]).clamp(min=0)                                  # (B, T)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, caches[i] if caches is not None else None, mask)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        return logits if targets is None else token_losses(logits, targets)

    def configure_optimizer(self, lr, weight_decay, betas, device):
        groups = [{"params": [p for p in self.parameters() if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in self.parameters() if p.dim() < 2], "weight_decay": 0.0}]  # norms: no decay
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=str(device).startswith("cuda"))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, stop=None, pad=None):
        """Greedy decoding of (B, T) prompts with a key/value cache until stop(row) for every row or a full block."""
        caches = [[] for _ in self.transformer.h]
        logits = self(idx, caches=caches, pad=pad)                       # (B, T, V)
        for i in range(min(max_new_tokens, self.config.block_size - idx.size(1) + 1)):
            nxt = logits[:, -1].argmax(-1, keepdim=True)                 # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)                           # (B, T+1)
            if stop is not None and i % 4 == 3 and all(stop(row) for row in idx.tolist()):
                break
            if idx.size(1) < self.config.block_size:
                logits = self(nxt, caches=caches, start=idx.size(1) - 1, pad=pad)  # (B, 1, V)
        return idx


# 2. The method: per-token losses, a score per token, the top-k of the batch, the mean loss over the kept --------------
def token_losses(logits, targets):
    """Cross-entropy of every token in float32, (B, T): losses[b, t] = -log P(x[t+1] | x[<=t]) (y[t] = x[t+1])."""
    B, T, V = logits.shape
    return F.cross_entropy(logits.float().view(B * T, V), targets.reshape(B * T), reduction="none").view(B, T)  # (B, T)


def excess_loss(student_losses, ref_losses):
    """The paper's L_delta = L_student - L_ref, detached: the selection carries no gradient."""
    return student_losses.detach() - ref_losses


SCORES = {"excess": excess_loss,              # --select: the score (B, T) whose top `ratio` get a loss: SLM's,
          "ref_loss": lambda losses, ref: -ref}  # or a control's: the lowest reference loss


def n_selected(ratio, n):
    """How many of n tokens a ratio keeps: ratio * n rounded half up, at least one."""
    return max(1, min(n, int(math.floor(ratio * n + 0.5))))


def select_topk(scores, ratio):
    """Boolean mask keeping the n_selected(ratio, N) highest of the N scores, over the whole batch (not per row)."""
    flat = scores.reshape(-1)  # (N,)
    kept = torch.topk(flat, n_selected(ratio, flat.numel()), sorted=False).indices
    return torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, kept, True).view_as(scores)


def select_topk_global(scores, ratio, rank):
    """The top-k over every process's batch: each gathers all scores, selects alike and keeps its own part."""
    return select_topk(gather(scores), ratio)[rank]  # (W, B, T) -> this process's (B, T)


def soft_weights(scores, ratio, temperature):
    """--weighting soft: sigmoid((score - threshold) / temperature), the threshold where top-k cuts; at 0, its mask."""
    flat = scores.reshape(-1).float()  # (N,)
    k = n_selected(ratio, flat.numel())
    if k == flat.numel():
        return torch.ones_like(scores, dtype=torch.float)
    top = torch.topk(flat, k + 1).values
    return torch.sigmoid((scores.float() - (top[k - 1] + top[k]) / 2) / temperature)


def slm_loss(losses, weights, n=None):
    """Eq. 4: sum_i w_i L(x_i) / sum_i w_i, or / n (a global selection's share); nothing kept gives 0, not 0/0."""
    kept = torch.where(weights > 0, losses * weights, 0.0)  # a dropped inf loss stays out (inf * 0 = nan)
    return kept.sum() / (n if n is not None else torch.where(weights.sum() > 0, weights.sum(), 1))


# 3. Data: fixed aligned blocks, and the reference's scores cached once ------------------------------------------------
class Blocks:
    """A token file cut into aligned blocks, x = tokens[iT:iT+T], y = tokens[iT+1:iT+T+1] (the reference scores each
    token once); batch `step` is a function of (seed, step), so that a run's place in the data is its step."""
    def __init__(self, tokens, block_size, batch_size, seed, labels=None, ref_losses=None, rank=0, world=1):
        self.tokens, self.labels, self.ref_losses = tokens, labels, ref_losses
        self.T, self.B, self.seed, self.rank, self.world = block_size, batch_size, seed, rank, world
        self.n = (len(tokens) - 1) // block_size

    @functools.lru_cache(maxsize=4)
    def perm(self, epoch):  # the order of the blocks in each pass
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def block_ids(self, step):
        g = np.arange(self.B) + (step * self.world + self.rank) * self.B  # places in the global data order
        return np.array([self.perm(e)[p] for e, p in zip(g // self.n, g % self.n)])

    def read(self, ids):
        """x, y (B, T), and the targets' reference losses and labels (B, T) or None."""
        at = np.asarray(ids)[:, None] * self.T + np.arange(1, self.T + 1)  # (B, T): the targets' places in the file
        x, y = (torch.from_numpy(self.tokens[i].astype(np.int64)) for i in (at - 1, at))
        ref = None if self.ref_losses is None else torch.from_numpy(self.ref_losses[at].astype(np.float32))
        return x, y, ref, None if self.labels is None else torch.from_numpy(self.labels[at].astype(np.int64))


@torch.no_grad()
def block_losses(model, blocks, device, batch_size):
    """(block ids, their token losses (b, T)) for every block of a file, in order."""
    for start in range(0, blocks.n, batch_size):
        ids = np.arange(start, min(start + batch_size, blocks.n))
        x, y, _, _ = blocks.read(ids)
        with autocast(device):
            yield ids, model(x.to(device), y.to(device))  # (b, T)


def eval_batch(device, T, V, most):
    """Blocks a batch without gradients: at most `most`, their logits (10 B each) within 4 GiB on CUDA, 1 on CPU."""
    return max(1, min(most, (2 ** 32 if str(device).startswith("cuda") else 2 ** 30) // (10 * T * V)))


def score_corpus(model, tokens, block_size, path, device, batch_size=None, log=print):
    """Write the reference loss of every token of a file to path, float16 aligned with the tokens; returns tok/s."""
    batch_size = batch_size or eval_batch(device, block_size, model.config.vocab_size,
                                          512 if str(device).startswith("cuda") else 32)
    blocks, scores, t0 = Blocks(tokens, block_size, 1, 0), np.full(len(tokens), np.nan, dtype=np.float16), time.time()
    for ids, losses in block_losses(model, blocks, device, batch_size):
        scores[ids[0] * block_size + 1: (ids[-1] + 1) * block_size + 1] = losses.half().cpu().numpy().reshape(-1)
        if ids[0] // batch_size % 100 == 99 or ids[-1] + 1 == blocks.n:  # a line every 100 batches, and at the end
            log(f"scoring: {ids[-1] + 1:,}/{blocks.n:,} blocks, {time.time() - t0:.0f}s")
    atomic_write(path, scores.tobytes())
    return blocks.n * block_size / (time.time() - t0)


# 4. Evaluation: held-out loss, answer loss, greedy answer accuracy ----------------------------------------------------
def eval_loss(model, blocks, device):
    """Mean token loss over every block of a held-out file."""
    batches = block_losses(model, blocks, device, eval_batch(device, blocks.T, model.config.vocab_size, 64))
    return sum(losses.sum().item() for _, losses in batches) / (blocks.n * blocks.T)


@torch.no_grad()
def eval_answer_loss(model, problems, device, batch_size=None):
    """Mean loss of the worked solutions' tokens given their questions (unscored: random names and numbers)."""
    T, total, count = model.config.block_size, 0.0, 0
    batch_size = batch_size or eval_batch(device, T, model.config.vocab_size, 64)
    for i in range(0, len(problems), batch_size):
        rows = problems[i:i + batch_size]
        ids = nn.utils.rnn.pad_sequence([torch.tensor((q + s)[-(T + 1):]) for q, s, _ in rows], batch_first=True)
        scored = nn.utils.rnn.pad_sequence([torch.tensor([False] * len(q) + [True] * len(s))[-(T + 1):][1:]
                                            for q, s, _ in rows], batch_first=True)  # (b, L): the solution's targets
        with autocast(device):
            losses = model(ids[:, :-1].to(device), ids[:, 1:].to(device))  # (b, L)
        total += losses[scored.to(device)].sum().item()
        count += int(scored.sum())
    return total / max(1, count)


@torch.no_grad()
def eval_accuracy(model, tok, problems, device, max_new_tokens=64, batch_size=64):
    """Whether each problem's greedy answer is its final number; prompts batched by length, the rest left-padded."""
    room = model.config.block_size - max_new_tokens  # a question too long for the answer loses its beginning
    todo = sorted(((i, q[-room:], answer) for i, (q, _, answer) in enumerate(problems)), key=lambda p: len(p[1]))
    groups = [list(g) for _, g in itertools.groupby(todo, key=lambda p: len(p[1]))]  # by length, in order
    rest = [p for g in groups if len(g) < 8 for p in g]
    batches = [g for g in groups if len(g) >= 8] + [rest[j:j + batch_size] for j in range(0, len(rest), batch_size)]
    correct = [False] * len(problems)
    for group in batches:
        n = max(len(q) for _, q, _ in group)
        pad = torch.tensor([n - len(q) for _, q, _ in group], device=device)
        idx = torch.tensor([[tok.eot] * (n - len(q)) + q for _, q, _ in group], device=device)  # (b, n)
        with autocast(device):  # until the answer line ends
            out = model.generate(idx, max_new_tokens, pad=pad if pad.any() else None, stop=lambda row: tok.eot in
                                 row[n:] or data.FINAL_LINE_RE.search(tok.decode(row[n:])) is not None)
        for row, (i, _, answer) in zip(out[:, n:].tolist(), group):
            row = row[:row.index(tok.eot)] if tok.eot in row else row
            correct[i] = data.extract_answer(tok.decode(row)) == answer
    return correct


# 5. Training: the config, one optimizer step with the selection, and the loop -----------------------------------------
@dataclass
class TrainConfig:
    data_dir: str = "data"        # corpus built by data.py (embedded) or data_real.py
    split: str = "web"            # training split: web (student), web_base (base model), ref_train (reference)
    part: str = ""                # "i/n": train on the i-th of n equal parts of the split only (0-based)
    mix_hq: float = 0.0           # the split mixed with this many epochs of the high-quality subset
    out_dir: str = "out/clm"      # log.jsonl, config.json, ckpt.pt go here
    init: str = ""                # checkpoint to start from ('' = a new model of the shape below)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    ratio: float = 1.0            # share of tokens that get a loss; 1.0 = uniform next-token training (CLM)
    select: str = "excess"        # excess (SLM), or a control: random, ref_loss (SCORES), oracle (labelled math)
    ref_ckpt: str = ""            # the reference checkpoint (selections by the reference)
    ref_mode: str = "cached"      # cached: its losses from the score file; online: run it each step
    score_file: str = ""          # its losses of every token of the split (float16, train_ref.py writes it)
    scope: str = "local"          # under DDP: top-k within each rank's batch (local) or over the global batch
    weighting: str = "topk"       # topk: keep the top ratio (the paper); soft: sigmoid weights (soft_weights)
    temperature: float = 0.1      # soft weighting: sharpness, in nats of excess loss
    batch_size: int = 32          # blocks per micro-batch per process
    tokens_per_step: int = 0      # per optimizer step (0: one micro-batch per process); more: accumulation
    max_tokens: int = 1_000_000   # tokens processed (selected or not)
    lr: float = 3e-3
    min_lr_frac: float = 0.1      # cosine decays to lr * min_lr_frac
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0
    n_evals: int = 10             # log-spaced from 0.5% of the run (dense early, where curves move fastest)
    eval_problems: int = 1000     # test problems decoded for accuracy at each eval (0: skip)
    val_problems: int = 0         # validation problems for the validation answer loss (0: all)
    eval_max_new: int = 64        # tokens decoded per problem
    log_every: int = 10
    seed: int = 0
    device: str = "auto"          # auto: cuda if available, else cpu
    compile: str = "auto"         # auto: torch.compile on cuda only
    overwrite: bool = False       # replace a run in out_dir made with another configuration
    resume: bool = False          # continue an unfinished run in out_dir from its last checkpoint
    keep_ckpts: bool = False      # also keep every evaluation's checkpoint as ckpt_<step>.pt (plot.py --categories)
    ckpt_every: float = 300.0     # seconds: a checkpoint at the first logged step after this long (and every eval)

    @property
    def uses_reference(self):  # whether tokens are selected by a reference's losses
        return self.ratio < 1.0 and self.select in ("excess", "ref_loss")

    def __post_init__(self):  # a config's mistakes, each refused in one line before anything is loaded
        check_ranges(self, positive=("n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_tokens", "lr",
                                     "n_evals", "log_every", "temperature"),
                     nonneg=("mix_hq", "tokens_per_step", "eval_problems", "val_problems", "eval_max_new", "seed",
                             "min_lr_frac", "warmup_frac", "weight_decay", "grad_clip", "ckpt_every"))
        if not 0.0 < self.ratio <= 1.0:
            fail(f"--ratio {self.ratio} is outside (0, 1]", "pass a share of tokens to keep, e.g. --ratio 0.6")
        if self.weighting == "soft" and self.scope == "global":
            fail("--weighting soft weights the tokens of each process's batch", "drop --scope global")
        if self.select == "oracle" and (self.scope == "global" or self.weighting == "soft" or self.mix_hq):
            fail("--select oracle keeps the labelled math of each batch", "drop --scope global, --weighting, --mix_hq")
        if self.mix_hq and self.ratio < 1:
            fail("--mix_hq is a control of plain next-token training", "use it with --ratio 1.0")
        if not self.init and self.n_embd % self.n_head:
            fail(f"--n_embd {self.n_embd} does not split into {self.n_head} heads", "pass a multiple of --n_head")


def batch_plan(cfg, n_tokens, n_val, T, world):
    """(micro-batches per optimizer step, tokens per step), once the data holds one global batch."""
    B = cfg.batch_size
    if (n_tokens - 1) // T < B * world or (n_val - 1) // T < 1:
        fail(f"split '{cfg.split}' has {n_tokens:,} tokens, fewer than one batch of {B * world}x{T}", "build a larger "
             "corpus, or lower the batch (train_slm.py --batch_size) or the block (train_ref.py --block_size)")
    accum = max(1, cfg.tokens_per_step // (B * T * world))
    if cfg.tokens_per_step and cfg.tokens_per_step != accum * B * T * world:
        fail(f"tokens_per_step {cfg.tokens_per_step:,} is not a multiple of batch {B} x block {T} x {world} "
             "process(es)", f"use a multiple of {B * T * world:,}")
    return accum, accum * B * T * world


class Trainer:
    """One run, loaded and checked before anything is written (under torchrun: one a process, each its share)."""
    def __init__(self, cfg, log=print):
        self.cfg = cfg
        self.rank, self.world, self.device = dist_setup(cfg.device)
        self.start, self.resumed, self.meter_state = 0, False, {}  # a resumed run's: infra.restore sets them
        torch.manual_seed(cfg.seed)
        self.meta, self.tok, tokens, self.labels, val_tokens = data.training_data(cfg)
        model = GPT.from_checkpoint(load_checkpoint(cfg.init, "initial model", self.meta)) if cfg.init else \
            GPT(GPTConfig(self.meta["vocab_size"], cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd))  # a new one
        self.model = model.to(self.device)
        self.T = self.model.config.block_size
        self.accum, self.tokens_per_step = batch_plan(cfg, len(tokens), len(val_tokens), self.T, self.world)
        self.val_blocks = Blocks(val_tokens, self.T, cfg.batch_size, 0)
        self.problems, val = data.eval_problems(cfg, self.T, log if self.rank == 0 else None)
        self.val_problems = val[:cfg.val_problems or None]
        ref = load_checkpoint(cfg.ref_ckpt, "reference model", self.meta) if cfg.uses_reference else None
        online = ref is not None and cfg.ref_mode == "online"  # its losses: run it, else read its score file
        self.ref_model = GPT.from_checkpoint(ref).to(self.device) if online else None
        scores = load_scores(cfg.score_file, cfg.ref_ckpt, ref, self.meta, cfg.split, self.T) \
            if ref is not None and not online else None
        self.blocks = Blocks(tokens, self.T, cfg.batch_size, cfg.seed, self.labels, scores, self.rank, self.world)
        self.max_iters = max(1, cfg.max_tokens // self.tokens_per_step)
        self.warmup = max(1, int(cfg.warmup_frac * self.max_iters))
        self.optimizer = self.model.configure_optimizer(cfg.lr, cfg.weight_decay, (0.9, cfg.beta2), self.device)
        self.train_model = training_module(self.model, cfg.compile, self.device, self.world)  # compiled, or DDP
        self.sel_gen = torch.Generator().manual_seed(cfg.seed + 1)  # --select random: the same draws on every rank
        # a global top-k keeps other counts on each rank, and DDP averages: each divides by the global count / world
        self.n_kept = (n_selected(cfg.ratio, cfg.batch_size * self.T * self.world) / self.world
                       if cfg.scope == "global" and self.world > 1 else None)
        self.flops_per_token = self.model.flops_per_token() * (4 if online else 3) // 3  # online: a forward more
        self.peak = peak_flops(self.device)

    def lr_at(self, it):
        """Linear warmup, then cosine decay to lr * min_lr_frac."""
        c = self.cfg
        if it < self.warmup:
            return c.lr * (it + 1) / self.warmup
        frac = min(1.0, (it - self.warmup) / max(1, self.max_iters - self.warmup))
        return c.lr * (c.min_lr_frac + (1 - c.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))

    def select_tokens(self, losses, x, y, ref_losses, labels):
        """Which tokens get a loss (a mask or soft weights): the top `ratio` by the --select score, or the labels."""
        c, (B, T) = self.cfg, losses.shape
        if c.select == "oracle":
            return labels.to(losses.device) == data.MATH
        if c.ratio >= 1.0:
            return torch.ones_like(losses, dtype=torch.bool)
        if self.ref_model is not None:  # online: rounded through float16 like the score file, so both select alike
            with torch.no_grad(), autocast(self.device):
                ref_losses = self.ref_model(x, y).half().float()  # (B, T)
        if c.select == "random":  # one draw for the global batch, so that every scope sees the same numbers
            scores = torch.rand((B * self.world, T), generator=self.sel_gen)[self.rank * B:(self.rank + 1) * B]
            scores = scores.to(losses.device)
        else:
            scores = SCORES[c.select](losses, ref_losses.to(losses.device, non_blocking=True))  # (B, T)
        if c.scope == "global" and self.world > 1:
            return select_topk_global(scores, c.ratio, self.rank)
        return soft_weights(scores, c.ratio, c.temperature) if c.weighting == "soft" else select_topk(scores, c.ratio)

    def step(self, step):
        """One optimizer step of `accum` micro-batches; returns the mean loss, the selection and the token kinds."""
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(step)
        total, kept, labels = 0.0, [], []
        for micro in range(self.accum):
            x, y, ref_losses, lab = self.blocks.read(self.blocks.block_ids(step * self.accum + micro))
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.world > 1:  # DDP: all-reduce the gradients in the last micro-batch's backward only
                self.train_model.require_backward_grad_sync = micro == self.accum - 1
            with autocast(self.device):
                losses = self.train_model(x, y)                          # (B, T)
            weights = self.select_tokens(losses, x, y, ref_losses, lab)  # (B, T): a mask, or soft weights
            loss = slm_loss(losses, weights, self.n_kept) / self.accum
            loss.backward()
            total += loss.detach()
            kept.append(weights)
            labels.append(lab)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, torch.cat(kept), (torch.cat(labels) if labels[0] is not None else None)

    def evaluate(self):
        """val_loss, the answer loss on validation and test problems, test accuracy (correct: each problem's 0/1)."""
        out = {"val_loss": eval_loss(self.model, self.val_blocks, self.device)}
        for key, problems in (("val_answer_loss", self.val_problems), ("answer_loss", self.problems)):
            if problems and problems[0][1] is not None:
                out[key] = eval_answer_loss(self.model, problems, self.device)
        if self.problems:
            correct = eval_accuracy(self.model, self.tok, self.problems, self.device, self.cfg.eval_max_new)
            out.update(acc=sum(correct) / len(correct), correct="".join("01"[c] for c in correct))
        return out


def train(cfg, log=print):
    """Train one model and return its summary, the final log record. Rank 0 evaluates, logs and checkpoints."""
    log, done = log if dist_setup(cfg.device)[0] == 0 else (lambda *a: None), os.path.join(cfg.out_dir, "done.json")
    with run_folder(cfg, log, Trainer) as tr:  # one writer a folder; tr None: a finished run, reused
        if tr is None:
            return read_json(done)
        sel = "" if cfg.ratio >= 1 and cfg.select != "oracle" else f" ({cfg.select})"
        log(f"training {cfg.out_dir}: {tr.model.num_params() / 1e6:.2f}M params, {tr.max_iters} steps of "
            f"{tr.tokens_per_step:,} tokens ({tr.world} process(es) x {tr.accum} micro-batch(es) of {cfg.batch_size}x"
            f"{tr.T}), ratio {cfg.ratio}{sel}, lr {cfg.lr:g}, on {tr.device}" + "\nnote: this corpus has no "
            "ground-truth token kinds: selection statistics are skipped" * (tr.labels is None))
        evals, master = eval_steps(tr.max_iters, cfg.n_evals), tr.rank == 0
        meter = Meter(tr, tr.meta["kinds"] or data.KINDS, data.MATH)
        meter.load(tr.meter_state if master else {})  # resumed between evaluations: what was counted since the last
        saved, step = (time.time(), tr.start if tr.resumed else None), tr.start
        try:
            for step in range(tr.start, tr.max_iters + 1):
                if (step in evals or step % cfg.log_every == 0) and not (tr.resumed and step == tr.start):
                    record = meter.record(step)  # the mean training loss since the last record, tokens/s, lr, FLOPs
                    if step in evals:  # rank 0 measures the model; every rank counts what it selected
                        record.update(**(meter.timed(tr.evaluate) if master else {}), **meter.selection())
                    if master:  # a checkpoint at every evaluation and every ckpt_every s: a blow-up keeps the last good
                        append_log(cfg.out_dir, record)
                        if step in evals or time.time() - saved[0] >= cfg.ckpt_every:
                            save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), tr, step, meter)
                            saved = (time.time(), step)
                        if cfg.keep_ckpts and step in evals:  # every evaluation's, for plot.py --categories
                            save_checkpoint(os.path.join(cfg.out_dir, f"ckpt_{step:06d}.pt"), tr, step)
                    log(log_line(record, tr.max_iters, meter.eta(step, sum(s > step for s in evals))))
                    barrier()
                    meter.reset()
                if step == tr.max_iters:
                    break
                meter.add(*tr.step(step))  # one optimizer step: forward, selection, SLM loss, backward, update
        except KeyboardInterrupt:
            fail(f"interrupted at step {step}" + (f"; {cfg.out_dir}/ckpt.pt holds step {saved[1]}"
                                                  if saved[1] is not None else ", before its first checkpoint"),
                 f"continue with `{shlex.join(['python', *sys.argv])}{' --resume' * ('--resume' not in sys.argv)}`")
        if master:  # the summary: the final record (a run resumed at its last step logged it before)
            atomic_write(done, json.dumps({**read_log(cfg.out_dir)[-1], "params": tr.model.num_params(),
                                           "max_iters": tr.max_iters}, indent=1))
        barrier()
        return read_json(done)  # every rank returns rank 0's summary
