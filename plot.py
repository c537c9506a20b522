"""
plot.py -- compare every run under out/: SLM students against the uniform next-token baseline (CLM); and look
inside one run: which tokens SLM keeps, and the paper's token-loss categories.

  python plot.py                    # reads out/, writes out/compare.png and out/compare.md, prints the table
  python plot.py --out_dir out/exp  # another folder of pipelines
  python plot.py --arms CLM "SLM 0.6" --png out/two.png   # only these arms (names as in the table)
  python plot.py --tokens out/slm0.6            # held-out pages, every token coloured by its excess loss and
                                                # marked kept/dropped: out/slm0.6/tokens.png and tokens.html
  python plot.py --tokens out/slm0.6 --text a.txt   # the same for any text file
  python plot.py --categories out/clm-ckpts     # H->H, L->H, H->L, L->L over a run's kept checkpoints
                                                # (train_slm.py --ratio 1.0 --keep_ckpts): categories.png

It finds every pipeline (a folder with pipeline.json, made by train_ref.py) below --out_dir and every student
run in it (made by train_slm.py). Pipelines that differ only in their seed are aggregated: curves show the mean
and the min-max band over seeds. Each arm (CLM, SLM at a ratio, the random control, ...) is shown at its best
learning rate (lowest mean final held-out loss over the seeds); the learning-rate panel shows every rate.
The table gives, per arm: final held-out loss and accuracy, the tokens SLM needed to reach the best CLM's final
held-out loss ("x fewer tokens", the paper's headline measure), and the total compute, which for SLM counts the
reference's training and the scoring pass. With students at several ratios it also draws compare-ratios.png (final
loss and accuracy against the ratio, each ratio at its best learning rate).
"""
import glob
import json
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

import data as rdata
import rho
from rho import arg


@dataclass
class PlotRun:
    out_dir: str = arg("out", "folder holding the pipelines and runs to compare (searched recursively)")
    png: str = arg("", "where to write the figure (default: <out_dir>/compare.png); the table goes beside it (.md)")
    arms: list = arg(None, "compare only these arms, named as in the table (e.g. CLM 'SLM 0.6')", nargs="+",
                     type=str)
    tokens: str = arg("", "a student run folder (e.g. out/slm0.6): draw which tokens it keeps against the "
                          "pipeline's reference, as tokens.png and tokens.html in that folder")
    categories: str = arg("", "a run folder with kept checkpoints (train_slm.py --keep_ckpts): sort held-out tokens "
                              "into the paper's H->H, L->H, H->L, L->L by their loss over training")
    text: str = arg("", "--tokens/--categories: text file(s) to use (comma-separated) instead of held-out pages")
    ratio: float = arg(0.6, "--tokens: the share of the shown tokens to keep")
    pages: int = arg(0, "held-out pages to use (default: 4 for --tokens, 200 for --categories)", type=int)


def load_run(path):
    cfg = rho.read_json(os.path.join(path, "config.json"))
    recs = []
    if os.path.exists(os.path.join(path, "log.jsonl")):
        with open(os.path.join(path, "log.jsonl")) as f:
            recs = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in recs if "val_loss" in r]
    if not cfg or not evals:
        return None
    return {"path": path, "cfg": cfg, "done": os.path.exists(os.path.join(path, "done.json")),
            "tokens": np.array([r["tokens"] for r in evals], dtype=float),
            "val": np.array([r["val_loss"] for r in evals]),
            "acc": np.array([r.get("acc", np.nan) for r in evals]),
            "selected": [r.get("selected", {}) for r in evals],
            "composition": [r.get("composition", {}) for r in evals], "flops": evals[-1]["flops"]}


def arm_of(cfg, base):
    """A readable name for what a student run does (its learning rate aside)."""
    if cfg["ratio"] >= 1:
        name = "CLM"
    else:
        name = f"{'SLM' if cfg['select'] == 'excess' else 'random'} {cfg['ratio']:g}"
        online = cfg["select"] == "excess" and cfg["ref_scores"] == "online" and not cfg.get("answer_only")
        name += " (online ref)" if online else ""  # (fine-tuning always runs its reference online)
        name += f" (soft {cfg['temperature']:g})" if cfg.get("weighting") == "soft" else ""
        n_refs = len(cfg["ref"].split(","))
        name += f" ({n_refs} refs, {cfg['combine']})" if cfg["select"] == "excess" and n_refs > 1 else ""
    name += " (from scratch)" if base and not cfg["init"] else ""
    return ("SFT " if cfg.get("answer_only") else "") + name


def find_pipelines(root):
    pipes = []
    for pj in sorted(glob.glob(os.path.join(root, "**", "pipeline.json"), recursive=True)):
        d = os.path.dirname(pj)
        p = rho.read_json(pj)
        meta = rho.read_json(os.path.join(p["data_dir"], "meta.json"))
        dcfg = {k: v for k, v in meta.get("data_config", {}).items() if k != "seed"}
        runs = {"": {}, "sft": {}}  # students on the web corpus; fine-tuned on answers (train_slm.py --sft)
        for sub in sorted(os.listdir(d)):
            r = load_run(os.path.join(d, sub))
            if r and (r["cfg"].get("split") == "web" or r["cfg"].get("answer_only")) \
                    and not r["cfg"].get("keep_ckpts"):  # runs for --categories are left out of the comparison
                r["arm"], r["lr"] = arm_of(r["cfg"], p["base"]), r["cfg"]["lr"]
                runs["sft" if r["cfg"].get("answer_only") else ""][sub] = r
        for kind, rs in runs.items():
            if rs or not kind:
                pipes.append({"dir": d, "p": p, "seed": p["seed"], "runs": rs, "sft": bool(kind),
                              "base": load_run(os.path.join(d, "base")), "ref": load_run(os.path.join(d, "ref")),
                              "group": json.dumps([p["preset"], p["init"], p["settings"], dcfg, kind], sort_keys=True)})
    return pipes


def tokens_to_reach(tokens, val, target):
    """First token count at which a curve reaches target (linear between evals); None if it never does."""
    for i in range(1, len(val)):
        if val[i] <= target:
            f = (val[i - 1] - target) / (val[i - 1] - val[i]) if val[i - 1] > val[i] else 1.0
            return tokens[i - 1] + f * (tokens[i] - tokens[i - 1])
    return None


def x_fewer(r, c):
    """How many times fewer tokens run r needed than run c to reach c's final held-out loss (None: never)."""
    reach = tokens_to_reach(r["tokens"], r["val"], c["val"][-1])
    return c["tokens"][-1] / reach if reach else None


def aggregate(runs):
    """Mean, min and max curves over runs (seeds), on the first run's token grid."""
    t = runs[0]["tokens"]
    out = {"tokens": t, "n": len(runs)}
    for key in ("val", "acc"):
        ys = np.stack([np.interp(t, r["tokens"], r[key]) for r in runs])
        out[key] = (ys.mean(0), ys.min(0), ys.max(0))
    return out


def summarize(pipes):
    """Per group of seeds: each arm's best learning rate, its runs, and the comparison with CLM."""
    groups = defaultdict(list)
    for p in pipes:
        groups[p["group"]].append(p)
    results = []
    for key, ps in groups.items():
        by_arm = defaultdict(lambda: defaultdict(list))  # arm -> lr -> [run per seed]
        for p in ps:
            for r in p["runs"].values():
                by_arm[r["arm"]][r["lr"]].append(r | {"pipe": p})
        best = {arm: min(lrs, key=lambda lr: (-len(lrs[lr]), np.mean([r["val"][-1] for r in lrs[lr]])))
                for arm, lrs in by_arm.items()}
        rows = []
        base_arm = "SFT CLM" if ps[0]["sft"] else "CLM"  # the baseline of this group: every token, ratio 1
        clm = by_arm[base_arm][best[base_arm]] if base_arm in by_arm else None
        for arm, lrs in sorted(by_arm.items(), key=lambda kv: (kv[0] != base_arm, kv[0])):
            runs = lrs[best[arm]]
            row = {"arm": arm, "lr": best[arm], "lrs": sorted(lrs), "seeds": sorted(r["pipe"]["seed"] for r in runs),
                   "val": [r["val"][-1] for r in runs], "acc": [r["acc"][-1] for r in runs],
                   "ref_val": [r["pipe"]["ref"]["val"][-1] for r in runs if r["pipe"]["ref"]],
                   "flops": [], "x": [], "x_flops": [], "runs": runs, "by_lr": lrs}
            for r in runs:
                row["flops"].append(r["flops"] + overhead(r))
                twin = [c for c in clm or [] if c["pipe"] is r["pipe"]]
                if twin and arm != base_arm:
                    c = twin[0]
                    row["x"].append(x_fewer(r, c))
                    reach = c["tokens"][-1] / row["x"][-1] if row["x"][-1] else None
                    # the base model both start from is left out: it is the same for both
                    cost = overhead(r, base=False) + reach * r["flops"] / r["tokens"][-1] if reach else None
                    row["x_flops"].append((c["flops"] + overhead(c, base=False)) / cost if reach else None)
            rows.append(row)
        results.append({"key": key, "pipes": ps, "rows": rows, "by_arm": by_arm, "best": best, "clm": base_arm})
    return results


def overhead(r, base=True):
    """FLOPs a run needed before its first step: the base model it starts from (if base) and, for SLM with
    cached scores, the reference's fine-tuning and the scoring pass (an online reference is counted per step)."""
    p, cfg = r["pipe"]["p"], r["cfg"]
    cost = p.get("flops", {})
    extra = cost.get("base", 0) if cfg["init"] and base else 0
    if cfg["ratio"] < 1 and cfg["select"] == "excess":
        refs = {p["ref"]: {"flops": cost.get("ref", 0), "flops_scoring": cost.get("scoring", 0)},
                **{x["ckpt"]: x for x in p.get("refs", {}).values()}}
        for ref in cfg["ref"].split(","):
            extra += refs[ref]["flops"] + (refs[ref]["flops_scoring"] if cfg["ref_scores"] == "cached" else 0)
    return extra


def fmt(xs, f="{:.4f}"):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and np.isnan(x))]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f.format(xs[0])
    return f"{f.format(np.mean(xs))} [{f.format(min(xs))}, {f.format(max(xs))}]"


def table(res):
    ps = res["pipes"]
    lines = [("fine-tuning on answer tokens (train_slm.py --sft), " if ps[0]["sft"] else "") +
             f"pipelines: {', '.join(p['dir'] for p in ps)} (seeds {', '.join(str(p['seed']) for p in ps)}); "
             "mean [min, max] over seeds", "",
             "| run | lr (best of swept) | final val loss | final accuracy | x fewer tokens to reach CLM's final "
             "loss | x less compute to reach it (reference + scoring counted) | total compute, base included (TFLOP) |",
             "|---|---|---|---|---|---|---|"]
    for name in ("base", "ref"):
        ms = [p[name] for p in ps if p[name]]
        if ms:
            lines.append(f"| {name} model | {ms[0]['cfg']['lr']:g} | {fmt([m['val'][-1] for m in ms])} | "
                         f"{fmt([m['acc'][-1] for m in ms], '{:.1%}')} | | | |")
    for row in res["rows"]:
        cells = []
        for xs in (row["x"], row["x_flops"]):
            per = ["never" if x is None else f"{x:.2f}x" for x in xs]
            cells.append("" if row["arm"] == res["clm"] else "-" if not xs else "never" if not any(xs) else
                         fmt([x for x in xs if x], "{:.2f}x") + (f" (seeds: {', '.join(per)})" if len(per) > 1 else ""))
        lines.append(f"| {row['arm']} | {row['lr']:g} (of {len(row['lrs'])}) | {fmt(row['val'])} | "
                     f"{fmt(row['acc'], '{:.1%}')} | {cells[0]} | {cells[1]} | "
                     f"{fmt([f / 1e12 for f in row['flops']], '{:.1f}')} |")
    clms = res["by_arm"].get(res["clm"], {})
    same = [(arm, lr, lrs[lr]) for arm, lrs in sorted(res["by_arm"].items()) if arm != res["clm"]
            for lr in sorted(lrs) if lr in clms]
    if same:
        lines += ["", "at the same learning rate as CLM:", "",
                  "| run | lr | final val loss (CLM's) | final accuracy (CLM's) | x fewer tokens than CLM at this lr |",
                  "|---|---|---|---|---|"]
        for arm, lr, runs in same:
            clm = clms[lr]
            xs = [x_fewer(r, c) for r in runs for c in clm if c["pipe"] is r["pipe"]]
            per = ", ".join("never" if x is None else f"{x:.2f}x" for x in xs)
            (val, acc), (c_val, c_acc) = ([[r[k][-1] for r in rs] for k in ("val", "acc")] for rs in (runs, clm))
            lines.append(f"| {arm} | {lr:g} | {fmt(val)} ({fmt(c_val)}) | {fmt(acc, '{:.1%}')} "
                         f"({fmt(c_acc, '{:.1%}')}) | {per or '-'} |")
    lines += ["", "per seed (best learning rate per arm):", "",
              "| seed | base val / acc | ref val / acc | " + " | ".join(f"{r['arm']} val / acc" for r in res["rows"])
              + " |", "|---" * (3 + len(res["rows"])) + "|"]
    for p in sorted(ps, key=lambda p: p["seed"]):
        cells = [f"{m['val'][-1]:.4f} / {m['acc'][-1]:.1%}" if m else "-" for m in (p["base"], p["ref"])]
        for row in res["rows"]:
            r = [r for r in row["runs"] if r["pipe"] is p]
            cells.append(f"{r[0]['val'][-1]:.4f} / {r[0]['acc'][-1]:.1%}" if r else "-")
        lines.append(f"| {p['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(results), 5, figsize=(27, 4.6 * len(results)), squeeze=False)
    for res, (ax_l, ax_a, ax_s, ax_c, ax_lr) in zip(results, axes):
        colors, drawn = {}, []  # drawn: learning rates whose CLM curve is already drawn
        for row in res["rows"]:
            agg = aggregate(row["runs"])
            t = agg["tokens"] / 1e6
            label = f"{row['arm']} (lr {row['lr']:g}, {agg['n']} seed{'s' * (agg['n'] > 1)})"
            line, = ax_l.plot(t, agg["val"][0], label=label)
            colors[row["arm"]] = line.get_color()
            ax_l.fill_between(t, agg["val"][1], agg["val"][2], color=line.get_color(), alpha=0.2)
            ax_a.plot(t, agg["acc"][0], color=line.get_color(), label=label)
            ax_a.fill_between(t, agg["acc"][1], agg["acc"][2], color=line.get_color(), alpha=0.2)
            if row["arm"] != res["clm"]:  # same-learning-rate CLM curve, thin, for the same-lr comparison
                same = res["by_arm"].get(res["clm"], {}).get(row["lr"])
                if same and row["lr"] not in (res["best"].get(res["clm"]), *drawn):
                    drawn.append(row["lr"])
                    s = aggregate(same)
                    ax_l.plot(s["tokens"] / 1e6, s["val"][0], ":", color="gray", lw=1,
                              label=f"CLM at lr {row['lr']:g}")
        for name, style in (("ref", "--"), ("base", ":")):
            ms = [p[name] for p in res["pipes"] if p[name]]
            if ms:
                v = np.mean([m["val"][-1] for m in ms])
                ax_l.axhline(v, ls=style, color="k", lw=1, label=f"{name} model ({v:.3f})")
                ax_a.axhline(np.mean([m["acc"][-1] for m in ms]), ls=style, color="k", lw=1, label=f"{name} model")
        ax_l.set(xlabel="tokens seen (M)", ylabel="held-out loss on clean math",
                 title="held-out loss (best lr per arm)" + (", fine-tuning (--sft)" if res["pipes"][0]["sft"] else ""))
        lo = min(min(r["val"]) for r in res["rows"]) if res["rows"] else 0
        ax_l.set_ylim(lo - 0.05, lo + 0.6)
        ax_a.set(xlabel="tokens seen (M)", ylabel="answer accuracy (greedy, exact)", title="held-out accuracy")
        # selection per kind, for the best SLM arm
        slm = sorted((r for r in res["rows"] if "SLM" in r["arm"]), key=lambda r: not r["arm"].endswith("SLM 0.6"))
        if slm and not any(slm[0]["runs"][0]["selected"]):
            ax_s.text(0.5, 0.5, "no ground-truth token kinds\n(real data or fine-tuning)", ha="center",
                      transform=ax_s.transAxes)
        elif slm:
            run = slm[0]["runs"][0]
            kinds = sorted({k for s in run["selected"] for k in s})
            t = run["tokens"][1:] / 1e6
            for k in kinds:
                ax_s.plot(t, [s.get(k, np.nan) for s in run["selected"][1:]], label=k)
                if any(run["composition"]):
                    ax_c.plot(t, [s.get(k, np.nan) for s in run["composition"][1:]], label=k)
            ax_s.set(xlabel="tokens seen (M)", ylabel="share of the kind's tokens kept (recall)", ylim=(-0.02, 1.02),
                     title=f"what {slm[0]['arm']} keeps of each kind (seed {run['pipe']['seed']})")
            ax_c.set(xlabel="tokens seen (M)", ylabel="share of the kept tokens (precision: math)", ylim=(-0.02, 1.02),
                     title=f"what {slm[0]['arm']}'s kept tokens are (seed {run['pipe']['seed']})")
        # final loss against learning rate, every arm
        for arm, lrs in res["by_arm"].items():
            xs = sorted(lrs)
            ys = [np.mean([r["val"][-1] for r in lrs[lr]]) for lr in xs]
            ax_lr.plot(xs, ys, "o-", label=arm, color=colors.get(arm))
        ax_lr.set(xscale="log", xlabel="peak learning rate", ylabel="final held-out loss (mean over seeds)",
                  title="learning-rate sweep")
        for ax in (ax_l, ax_a, ax_s, ax_c, ax_lr):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_ratios(results, path):
    """Final held-out loss and accuracy against the ratio (1.0 = CLM), each ratio at its best learning rate, where
    a group of pipelines has students at three or more ratios. Returns the table lines ([] if nothing drawn)."""
    import matplotlib.pyplot as plt
    groups = []
    for res in results:
        rows = sorted((r["runs"][0]["cfg"]["ratio"], r) for r in res["rows"]
                      if r["arm"] == res["clm"]
                      or r["arm"].removeprefix("SFT ") == f"SLM {r['runs'][0]['cfg']['ratio']:g}")
        if len(rows) >= 3:
            groups.append((res, rows))
    if not groups:
        return []
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    lines = ["ratio sweep (each ratio at its best learning rate; mean [min, max] over seeds):", "",
             "| ratio | lr | final val loss | final accuracy |", "|---|---|---|---|"]
    for res, rows in groups:
        x = [ratio for ratio, _ in rows]
        for ax, key in ((ax_l, "val"), (ax_a, "acc")):
            ys = [np.array(r[key]) for _, r in rows]
            mean = np.array([y.mean() for y in ys])
            ax.errorbar(x, mean, yerr=[mean - [y.min() for y in ys], [y.max() for y in ys] - mean], fmt="o-",
                        capsize=3, label=f"{len(rows[0][1]['val'])} seed(s)")
        lines += [f"| {ratio:g} | {r['lr']:g} | {fmt(r['val'])} | {fmt(r['acc'], '{:.1%}')} |" for ratio, r in rows]
        refs = [p["ref"] for p in res["pipes"] if p["ref"]]
        if refs:
            ax_l.axhline(np.mean([m["val"][-1] for m in refs]), ls="--", color="k", lw=1, label="ref model")
    ax_l.set(xlabel="ratio (share of tokens with a loss; 1.0 = CLM)", ylabel="final held-out loss",
             title="final held-out loss against the ratio")
    ax_a.set(xlabel="ratio (share of tokens with a loss; 1.0 = CLM)", ylabel="final answer accuracy",
             title="final accuracy against the ratio")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return lines + [f"wrote {path}"]


# ==========================================================================================================
# Inside one run: which tokens SLM keeps (--tokens), the paper's token-loss categories (--categories)

CATEGORIES = ("H->H", "L->H", "H->L", "L->L")
PAPER_SHARES = (0.11, 0.12, 0.26, 0.51)  # RHO-1 §2.1, TinyLlama-1B on OpenWebMath


def categorize(losses, x=None, change=0.2, high=1.0):
    """The paper's token-loss categories. losses: (K, N), N tokens' losses at K checkpoints taken at x (e.g.
    steps). A line is fitted to each token's losses over x scaled to [0, 1]; its fitted change from the first
    checkpoint to the last decides: below -change H->L, above +change L->H; in between H->H if the token's mean
    loss is at least `high` (nats), else L->L. Returns (category index per token into CATEGORIES, change)."""
    K = losses.shape[0]
    x = np.linspace(0, 1, K) if x is None else (np.asarray(x, float) - x[0]) / (x[-1] - x[0])
    xc = x - x.mean()
    delta = xc @ (losses - losses.mean(0)) / (xc @ xc)  # (N,): the slope, i.e. the change over the unit span
    return np.select([delta < -change, delta > change, losses.mean(0) >= high], [2, 1, 0], 3), delta


def run_context(run_dir):
    """(config, pipeline, tokenizer, meta) of a run folder made by train_slm.py."""
    cfg = rho.read_json(os.path.join(run_dir, "config.json"))
    pipe = rho.read_json(os.path.join(os.path.dirname(os.path.normpath(run_dir)), "pipeline.json"))
    if not cfg or not pipe:
        rho.fail(f"{run_dir} is not a student run of a pipeline", "pass a folder made by train_slm.py, e.g. out/slm0.6")
    meta = rdata.read_meta(cfg["data_dir"])
    return cfg, pipe, rdata.Tokenizer(meta["vocab"]), meta


def load_model(path, meta):
    ckpt = rho.load_checkpoint(path)
    rho.check_vocab(ckpt, meta, path)
    return rho.model_from_checkpoint(ckpt).eval(), ckpt["step"]


@torch.no_grad()
def page_losses(model, ids):
    """The loss of every token of a page but the first, block by block, with the context training gives it."""
    T, out = model.config.block_size, []
    for i in range(0, len(ids) - 1, T):
        x = torch.tensor(ids[i:i + T + 1])[None]                # (1, t + 1)
        out.append(rho.token_losses(model(x[:, :-1]), x[:, 1:])[0])  # (t,)
    return torch.cat(out).numpy()


def pages_to_use(a, cfg, tok, n):
    """(ids, labels or None) per page: the --text files, else n held-out pages of the embedded corpus."""
    if not a.text:
        return rdata.held_out_pages(cfg["data_dir"], a.pages or n)
    pages = []
    for path in a.text.split(","):
        if not os.path.isfile(path):
            rho.fail(f"no text file at {path}", "pass existing text files to --text (comma-separated)")
        with open(path, encoding="utf-8", errors="replace") as f:
            ids = tok.encode(f.read())
        if len(ids) < 2:
            rho.fail(f"{path} holds fewer than two tokens", "pass a text file with some text in it")
        pages.append((ids, None))
    return pages


def token_picture(a):
    """Every token of a few pages coloured by its excess loss (student minus reference) and marked kept or dropped
    at --ratio over all shown tokens; with the embedded corpus, a strip under each token gives its true kind."""
    cfg, pipe, tok, meta = run_context(a.tokens)
    student, step = load_model(os.path.join(a.tokens, "ckpt.pt"), meta)
    ref, _ = load_model(pipe["ref"], meta)
    pages = []
    for ids, labels in pages_to_use(a, cfg, tok, 4):
        s, r = page_losses(student, ids), page_losses(ref, ids)
        pages.append({"pieces": tok.pieces(ids), "s": np.r_[np.nan, s], "r": np.r_[np.nan, r],
                      "kinds": labels})
    excess = np.concatenate([p["s"] - p["r"] for p in pages])
    scored = ~np.isnan(excess)
    keep = np.zeros(len(excess), bool)
    keep[scored] = rho.select_topk(torch.tensor(excess[scored]), a.ratio).numpy()  # the first tokens have no loss
    at = np.cumsum([0] + [len(p["pieces"]) for p in pages])
    for p, lo, hi in zip(pages, at[:-1], at[1:]):
        p["excess"], p["keep"] = excess[lo:hi], keep[lo:hi]
    title = (f"{a.tokens} (step {step}) against its reference: {a.ratio:.0%} of the shown tokens kept, those with "
             f"the highest excess loss")
    lim = float(np.nanpercentile(np.abs(excess), 90)) or 1.0  # the colour scale saturates beyond it
    kinds = meta.get("kinds") or []
    png, html = os.path.join(a.tokens, "tokens.png"), os.path.join(a.tokens, "tokens.html")
    draw_tokens(pages, title, lim, kinds, png)
    write_tokens_html(pages, title, lim, kinds, html)
    if kinds and pages[0]["kinds"] is not None:
        lab = np.concatenate([p["kinds"] for p in pages])
        print("share of each kind kept: " + ", ".join(
            f"{k} {keep[scored & (lab == i)].mean():.0%}" for i, k in enumerate(kinds) if (scored & (lab == i)).any()))
    print(f"wrote {png} and {html}")


def excess_color(v, lim):
    """RGB of an excess loss: blue (the student knows it better than the reference) to red (worse)."""
    import matplotlib
    return matplotlib.colormaps["coolwarm"](0.5 + 0.5 * float(np.clip(v / lim, -1, 1)))[:3]


KIND_COLORS = ["#2ca02c", "#17becf", "#d62728", "#9467bd", "#8c564b", "#7f7f7f", "#e377c2", "#000000"]


def layout(pieces, width):
    """(line, column, shown text) of every token in a monospace grid width columns wide; a newline inside a
    token is shown as a return sign and starts a new line."""
    line, col, out = 0, 0, []
    for p in pieces:
        shown = p.replace("\t", "    ").replace("\n", "\u21b5").replace("\r", "")
        if col and col + len(shown) > width:
            line, col = line + 1, 0
        out.append((line, col, shown))
        col += len(shown)
        if "\n" in p:
            line, col = line + 1, 0
    return out, line + 1


def draw_tokens(pages, title, lim, kinds, path, width=110):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Patch, Rectangle
    placed, y0 = [], 3.0
    for i, p in enumerate(pages):
        cells, n_lines = layout(p["pieces"], width)
        placed.append((y0, i, p, cells))
        y0 += n_lines + 1.5
    cell = 12.0 / width  # inches per character
    y_end = y0 + 6  # room for the legend
    fig = plt.figure(figsize=(12.6, y_end * cell * 1.9))
    ax = fig.add_axes([0.02, 0.0, 0.96, 1.0])
    ax.set(xlim=(0, width), ylim=(y_end, 0))
    ax.axis("off")
    fs = cell * 72 / 0.62
    ax.text(0, 0.5, title, fontsize=fs * 1.05, va="center")
    rects, faces = [], []
    for y, i, p, cells in placed:
        ax.text(0, y - 0.75, f"page {i + 1}", fontsize=fs, color="0.4", va="center")
        for j, (line, col, shown) in enumerate(cells):
            kept, v = bool(p["keep"][j]), p["excess"][j]
            rects.append(Rectangle((col, y + line - 0.45), max(len(shown), 1), 0.9))
            faces.append((*excess_color(v, lim), 0.85 if kept else 0.18) if not np.isnan(v) else (0.9, 0.9, 0.9, 1))
            if p["kinds"] is not None:
                rects.append(Rectangle((col, y + line + 0.32), max(len(shown), 1), 0.13))
                faces.append(KIND_COLORS[p["kinds"][j] % len(KIND_COLORS)])
            ax.text(col, y + line, shown, fontsize=fs, family="monospace", va="center",
                    color="black" if kept else "0.55")
    ax.add_collection(PatchCollection(rects, facecolors=faces, edgecolors="none"))
    handles = [Patch(color=excess_color(lim, lim), label=f"excess loss +{lim:.2f} (student worse than reference)"),
               Patch(color=excess_color(-lim, lim), label=f"excess loss -{lim:.2f}"),
               Patch(color="0.85", label="pale, grey text: dropped; dark: kept")]
    if pages[0]["kinds"] is not None:
        handles += [Patch(color=KIND_COLORS[i], label=f"strip: {k}") for i, k in enumerate(kinds)]
    ax.legend(handles=handles, loc="lower center", ncol=4, fontsize=fs * 0.9, frameon=False)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_tokens_html(pages, title, lim, kinds, path):
    import html
    hexc = lambda rgb: "#" + "".join(f"{round(c * 255):02x}" for c in rgb)  # noqa: E731
    legend = "".join(f'<span style="border-bottom:4px solid {KIND_COLORS[i]}">{k}</span> ' for i, k in enumerate(kinds))
    out = [f"<!doctype html><meta charset='utf-8'><title>rho: tokens</title><style>body{{font:14px monospace;"
           f"margin:2em}}.p{{white-space:pre-wrap;line-height:1.9;border:1px solid #ccc;padding:1em;margin:1em 0}}"
           f".d{{opacity:.35}}</style><h3>{html.escape(title)}</h3><p>background: excess loss from "
           f"<span style='background:{hexc(excess_color(-lim, lim))}'>-{lim:.2f}</span> to "
           f"<span style='background:{hexc(excess_color(lim, lim))}'>+{lim:.2f}</span>; faded: dropped; "
           f"hover a token for its numbers" + (f"; underline: true kind: {legend}" if pages[0]["kinds"] is not None
                                                 else "") + "</p>"]
    for p in pages:
        spans = []
        for j, piece in enumerate(p["pieces"]):
            v, kept = p["excess"][j], bool(p["keep"][j])
            tip = "no loss (first token)" if np.isnan(v) else (f"excess {v:+.3f} = student {p['s'][j]:.3f} - "
                                                               f"reference {p['r'][j]:.3f}; "
                                                               f"{'kept' if kept else 'dropped'}")
            style = f"background:{hexc(excess_color(v, lim))};" if not np.isnan(v) else ""
            if p["kinds"] is not None:
                tip += f"; kind {kinds[p['kinds'][j]]}"
                style += f"border-bottom:3px solid {KIND_COLORS[p['kinds'][j] % len(KIND_COLORS)]}"
            spans.append(f'<span class="{"" if kept else "d"}" style="{style}" title="{html.escape(tip)}">'
                         f"{html.escape(piece)}</span>")
        out.append('<div class="p">' + "".join(spans) + "</div>")
    rdata.write_atomic(path, "\n".join(out).encode())


def loss_categories(a):
    """Sort held-out tokens into the paper's four categories by their loss over a run's kept checkpoints."""
    import matplotlib.pyplot as plt
    cfg, pipe, tok, meta = run_context(a.categories)
    paths = rho.kept_checkpoints(a.categories)
    if len(paths) < 3:
        rho.fail(f"{a.categories} kept {len(paths)} checkpoint(s); the categories need 3 or more",
                 "train the run with `python train_slm.py --ratio 1.0 --keep_ckpts`")
    pages = pages_to_use(a, cfg, tok, 200)
    steps, losses = [], []
    for path in paths:
        model, step = load_model(path, meta)
        steps.append(step)
        losses.append(np.concatenate([page_losses(model, ids) for ids, _ in pages]))
    losses = np.stack(losses)                                   # (K checkpoints, N tokens)
    cat, delta = categorize(losses, steps)
    shares = np.bincount(cat, minlength=4) / len(cat)
    lines = [f"token-loss categories of {losses.shape[1]:,} held-out tokens over {len(paths)} checkpoints of "
             f"{a.categories} (fitted change beyond +-0.2 nats: rising or falling; else high if mean loss >= 1 nat)",
             "", "| category | this run | RHO-1 (1B, OpenWebMath) |", "|---|---|---|"]
    lines += [f"| {c} | {s:.0%} | {p:.0%} |" for c, s, p in zip(CATEGORIES, shares, PAPER_SHARES)]
    if pages[0][1] is not None and meta.get("kinds"):
        lab = np.concatenate([labels[1:] for _, labels in pages])
        lines += ["", "| kind | tokens | " + " | ".join(CATEGORIES) + " |", "|---" * 6 + "|"]
        for i, k in enumerate(meta["kinds"]):
            c = cat[lab == i]
            if len(c):
                lines.append(f"| {k} | {len(c):,} | " + " | ".join(f"{s:.0%}" for s in np.bincount(c, minlength=4)
                                                                 / len(c)) + " |")
    fig, axes = plt.subplots(1, 5, figsize=(22, 4))
    xs = np.arange(4)
    axes[0].bar(xs - 0.2, shares, 0.4, label="this run")
    axes[0].bar(xs + 0.2, PAPER_SHARES, 0.4, label="RHO-1, 1B")
    axes[0].set(xticks=xs, xticklabels=CATEGORIES, ylabel="share of held-out tokens", title="token-loss categories")
    axes[0].legend()
    rng = np.random.default_rng(0)
    for k, ax in enumerate(axes[1:]):
        idx = np.flatnonzero(cat == k)
        for j in rng.choice(idx, min(20, len(idx)), replace=False):
            ax.plot(steps, losses[:, j], color="0.6", lw=0.7)
        if len(idx):
            ax.plot(steps, losses[:, idx].mean(1), color="C3", lw=2, label="mean of the category")
            ax.legend(fontsize=8)
        ax.set(title=f"{CATEGORIES[k]}: {shares[k]:.0%} of tokens", xlabel="step", ylabel="token loss (nats)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png = os.path.join(a.categories, "categories.png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print("\n".join(lines) + f"\n\nwrote {png}")
    return shares


def main(a):
    import matplotlib
    matplotlib.use("Agg")
    if a.tokens:
        return token_picture(a)
    if a.categories:
        return loss_categories(a)
    pipes = find_pipelines(a.out_dir)
    if not pipes:
        rho.fail(f"no pipelines under {a.out_dir}", "run `python train_ref.py && python train_slm.py --ratio 0.6 "
                                                     "&& python train_slm.py --ratio 1.0` first")
    if a.arms:
        names = {r["arm"] for p in pipes for r in p["runs"].values()}
        if set(a.arms) - names:
            rho.fail(f"no runs of arm(s) {', '.join(sorted(set(a.arms) - names))} under {a.out_dir}",
                     f"use arm names from: {', '.join(sorted(names))}")
        for p in pipes:
            p["runs"] = {k: r for k, r in p["runs"].items() if r["arm"] in a.arms}
        pipes = [p for p in pipes if p["runs"] or not p["sft"]]
    results = summarize(pipes)
    found = defaultdict(list)
    for p in pipes:
        found[(p["dir"], p["seed"])] += p["runs"]
    report = [f"found {len(found)} pipeline(s): " + "; ".join(
        f"{d} (seed {seed}: {', '.join(sorted(runs)) or 'no student runs'})" for (d, seed), runs in found.items())]
    for res in results:
        arms = {r["arm"] for r in res["rows"]}
        d, sft = res["pipes"][0]["dir"], " --sft" if res["pipes"][0]["sft"] else ""
        if res["clm"] not in arms:
            report.append(f"missing: no CLM baseline in {d}; make it with "
                          f"`python train_slm.py --out_dir {d} --ratio 1.0{sft}`")
        if not any("SLM" in a for a in arms):
            report.append(f"missing: no SLM run in {d}; make it with "
                          f"`python train_slm.py --out_dir {d} --ratio 0.6{sft}`")
        report.append(table(res))
        unfinished = [r["path"] for row in res["rows"] for r in row["runs"] if not r["done"]]
        if unfinished:
            report.append(f"unfinished runs (shown as far as they got): {', '.join(unfinished)}")
    png = a.png or os.path.join(a.out_dir, "compare.png")
    stem = os.path.splitext(png)[0]
    report.append("\n".join(plot_ratios(results, stem + "-ratios.png")))
    text = "\n\n".join(r for r in report if r)
    print(text)
    plot(results, png)
    summary = stem + ".md"
    with open(summary, "w") as f:
        f.write(text + "\n")
    print(f"\nwrote {png} and {summary}")


if __name__ == "__main__":
    main(rho.cli(PlotRun, __doc__.split("\n\n")[0].strip()))
