"""
plot.py -- compare every run under out/ against the uniform next-token baseline (CLM), and look inside one run:
which tokens SLM keeps, and the paper's token-loss categories.

  python plot.py                    # reads out/, writes out/compare.png and out/compare.md, prints the tables
  python plot.py --out_dir out/exp  # another folder of pipelines
  python plot.py --arms CLM "SLM 0.6" --png out/two.png   # only these arms (names as in the table)
  python plot.py --tokens out/slm0.6            # held-out pages, every token coloured by its excess loss and
                                                # marked kept/dropped: out/slm0.6/tokens.png
  python plot.py --tokens out/slm0.6 --text a.txt   # the same for any text file
  python plot.py --categories out/clm-ckpts     # H->H, L->H, H->L, L->L over a run's kept checkpoints
                                                # (train_slm.py --ratio 1.0 --keep_ckpts): categories.png

It finds every pipeline (a folder with pipeline.json, made by train_ref.py) below --out_dir and every run in it,
as one flat table of runs (arm, learning rate, seed). Pipelines that differ only in their seed form a group. In a
group each arm is shown at its best learning rate, chosen on the *validation* problems (lowest mean final
val_answer_loss over the seeds), and measured on the *test* problems, whose (family, numbers) no training split
holds: the answer loss (the worked solution's tokens given the question) and greedy accuracy. Per arm, median
[min, max] over seeds: both measures, "x fewer tokens" to reach the best CLM's final value of each (a crossing
before the first evaluation after step 0 counts only as a bound), the compute to reach CLM's final answer loss
(the reference's training and the scoring pass counted against SLM), and a paired test of accuracy on the same
problems (exact McNemar per seed and pooled, a paired bootstrap interval of the difference). Every learning rate
is listed too. With students at three or more ratios it also draws <png>-ratios.png.
"""
import glob
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

import data
import rho
from infra import arg, atomic_write, check_vocab, cli, fail, kept_checkpoints, load_checkpoint, read_config, \
    read_json, unpack_bits


@dataclass
class PlotRun:
    out_dir: str = arg("out", "folder holding the pipelines and runs to compare (searched recursively)")
    png: str = arg("", "where to write the figure (default: <out_dir>/compare.png); the tables go beside it (.md)")
    arms: list = arg(None, "compare only these arms, named as in the table (e.g. CLM 'SLM 0.6')", nargs="+",
                     type=str)
    tokens: str = arg("", "a student run folder (e.g. out/slm0.6): draw which tokens it keeps against the "
                          "pipeline's reference, as tokens.png in that folder")
    categories: str = arg("", "a run folder with kept checkpoints (train_slm.py --keep_ckpts): sort held-out tokens "
                              "into the paper's H->H, L->H, H->L, L->L by their loss over training")
    text: str = arg("", "--tokens/--categories: text file(s) to use (comma-separated) instead of held-out pages")
    ratio: float = arg(0.6, "--tokens: the share of the shown tokens to keep")
    pages: int = arg(0, "held-out pages to use (default: 4 for --tokens, 200 for --categories)", type=int)


# ==========================================================================================================
# Runs: one flat table

CURVES = {"val": "val_loss", "val_answer": "val_answer_loss", "answer": "answer_loss", "acc": "acc"}


def load_run(path, pipe, group, arm=None):
    """One row of the table: a run's config, its curves at every evaluation and its final per-problem answers;
    None for a folder that holds no run."""
    cfg = read_config(path)
    recs = []
    if os.path.exists(os.path.join(path, "log.jsonl")):
        with open(os.path.join(path, "log.jsonl")) as f:
            recs = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in recs if "val_loss" in r]
    if not cfg or not evals:
        return None
    return {"path": path, "pipe": pipe, "seed": pipe["p"]["seed"], "group": group,
            "arm": arm or cfg.get("arm") or os.path.basename(path), "lr": cfg["lr"], "cfg": cfg,
            "done": os.path.exists(os.path.join(path, "done.json")),
            "tokens": np.array([r["tokens"] for r in evals], dtype=float),
            **{k: np.array([r.get(key, np.nan) for r in evals], dtype=float) for k, key in CURVES.items()},
            "correct": answers(evals[-1]), "test": os.path.abspath(os.path.join(cfg["data_dir"], "eval.jsonl")),
            "flops": evals[-1]["flops"], "selected": [r.get("selected", {}) for r in evals],
            "composition": [r.get("composition", {}) for r in evals]}


def answers(rec):
    """Which test problems a record got right (bools), or None: the bits of `correct`, as many as make its `acc`
    (the last hex digit is padded with zeros)."""
    if "correct" not in rec:
        return None
    bits = np.array(unpack_bits(rec["correct"], 4 * len(rec["correct"])))
    n = next((n for n in range(len(bits), len(bits) - 4, -1) if n and abs(bits[:n].mean() - rec["acc"]) < 1e-9), None)
    return bits[:n] if n else None


def find_runs(root):
    """Every run below root (the pipelines' base and reference included), with the group it belongs to: pipelines
    side by side in one folder with the same settings, any seed, and students of one kind (on the web corpus, or
    fine-tuning with --sft). Students of another budget belong in a pipeline folder of their own."""
    runs = []
    for pj in sorted(glob.glob(os.path.join(root, "**", "pipeline.json"), recursive=True)):
        d, p = os.path.dirname(pj), read_json(pj)
        meta = read_json(os.path.join(p["data_dir"], "meta.json"))
        dcfg = {k: v for k, v in meta.get("data_config", meta.get("source", {})).items() if k != "seed"}
        pipe, students = {"dir": d, "p": p}, []
        for sub in sorted(os.listdir(d)):
            cfg = read_config(os.path.join(d, sub))
            if sub not in ("base", "ref") and cfg and not cfg.get("keep_ckpts"):  # --keep_ckpts: for --categories
                students.append((sub, "sft" if cfg.get("answer_only") else ""))
        for kind in sorted({k for _, k in students}) or [""]:
            group = json.dumps([os.path.dirname(d), p["preset"], p["init"], p["settings"], dcfg, kind], sort_keys=True)
            for sub, arm in [("base", "base"), ("ref", "reference")] + [(s, None) for s, k in students if k == kind]:
                r = load_run(os.path.join(d, sub), pipe, group, arm)
                if r:
                    runs.append(r)
    return runs


def overhead(r):
    """FLOPs a run needs before its first step, the base model aside: for a selection by a reference's losses, the
    reference's fine-tuning, and for cached scores also the scoring pass (an online reference is counted per step);
    None if the pipeline does not say."""
    cfg = r["cfg"]
    if cfg["ratio"] >= 1 or cfg["select"] not in ("excess", "ref_loss", "block") or \
            (cfg.get("split") != "web" and not cfg.get("answer_only")):
        return 0.0
    p = r["pipe"]["p"]
    cost = p.get("flops", {})
    refs = {p["ref"]: {"flops": cost.get("ref"), "flops_scoring": cost.get("scoring")},
            **{x["ckpt"]: x for x in p.get("refs", {}).values()}}
    parts = [(refs.get(ref) or {}).get("flops") for ref in cfg["ref_ckpts"].split(",")]
    if cfg["ref_mode"] == "cached" and not cfg.get("answer_only"):
        parts += [(refs.get(ref) or {}).get("flops_scoring") for ref in cfg["ref_ckpts"].split(",")]
    return None if None in parts else float(sum(parts))


# ==========================================================================================================
# Measures: tokens to reach a target, paired tests

def tokens_to_reach(tokens, ys, target, higher=False):
    """(tokens, bound) where a curve first reaches target (ys <= target; >= if higher), linear between
    evaluations: (0, False) if it starts there, (None, False) if it never does. A crossing between step 0 and the
    first evaluation after it is not interpolated: it gives that evaluation's tokens and bound=True."""
    s = -1.0 if higher else 1.0
    ys, target = s * np.asarray(ys, float), s * target
    if ys[0] <= target:
        return 0.0, False
    for i in range(1, len(ys)):
        if ys[i] <= target:  # ys[i-1] > target >= ys[i]
            if i == 1:
                return float(tokens[1]), True
            f = (ys[i - 1] - target) / (ys[i - 1] - ys[i])
            return float(tokens[i - 1] + f * (tokens[i] - tokens[i - 1])), False
    return None, False


NA = (math.nan, False)  # a measure that does not exist (no such curve, too few evaluations)


def reach(r, c, key):
    """(tokens at which run r first reaches run c's final value of curve `key`, bound), as tokens_to_reach; NA
    where either curve lacks the measure or has fewer than two evaluations."""
    target = c[key][-1]
    if len(r["tokens"]) < 2 or len(c["tokens"]) < 2 or not np.isfinite(target) or not np.isfinite(r[key]).all():
        return NA
    return tokens_to_reach(r["tokens"], r[key], target, higher=key == "acc")


def x_fewer(r, c, key):
    """How many times fewer tokens run r needs than run c to reach c's final value of curve `key`, c's tokens
    being those c itself needed to first reach it: (x, bound), x None if r never gets there, inf if it starts
    there, NaN if there is no such measure; bound: x is only a lower bound."""
    t, bound = reach(r, c, key)
    if t is None or not np.isfinite(t):
        return (t, False) if t is None else NA
    t_c, _ = reach(c, c, key)
    return (math.inf if t == 0 else t_c / t), bound


def x_less_compute(r, c, key="answer"):
    """How many times less compute r needs than c to reach c's final value of `key`, as x_fewer, each run's
    overhead counted (the reference and the scoring pass for SLM; the base model, shared, left out)."""
    t, bound = reach(r, c, key)
    (t_c, _), o_r, o_c = reach(c, c, key), overhead(r), overhead(c)
    if t is None or not np.isfinite(t) or o_r is None or o_c is None:
        return (t, False) if t is None else NA
    cost = o_r + t * r["flops"] / r["tokens"][-1]
    return ((o_c + t_c * c["flops"] / c["tokens"][-1]) / cost if cost else math.inf), bound


def mcnemar(a, b):
    """Exact two-sided McNemar test of paired right/wrong answers: (problems only a got right, only b got
    right, p-value)."""
    n10, n01 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = n10 + n01, min(n10, n01)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return n10, n01, p


def paired(pairs, shared=False, n_boot=2000, seed=0):
    """Accuracy of a minus accuracy of b over seeds, from per-seed pairs (a, b) of right/wrong answers on the same
    problems (the first n of both, n the shorter): per seed (difference, McNemar p), and pooled: the mean
    difference and its 95% paired bootstrap interval (the problems resampled, within each seed), and a p-value:
    the exact McNemar test of all seeds' discordant pairs, where every seed has its own test problems; where they
    share them (shared), a sign-flip permutation test of each problem's mean difference over the seeds."""
    rng = np.random.default_rng(seed)
    n = min(min(len(a), len(b)) for a, b in pairs)
    pairs = [(a[:n], b[:n]) for a, b in pairs]
    per = [(a.mean() - b.mean(), mcnemar(a, b)[2]) for a, b in pairs]
    draw = rng.integers(0, n, (n_boot, n))
    boot = np.mean([a[idx].mean(1) - b[idx].mean(1) for a, b in pairs
                    for idx in [draw if shared else rng.integers(0, n, (n_boot, n))]], axis=0)
    if shared:
        d = np.mean([a.astype(float) - b for a, b in pairs], axis=0)  # each problem's mean difference over seeds
        flips = rng.choice([-1.0, 1.0], (n_boot * 5, n))
        hits = int((np.abs(flips @ d) >= abs(d.sum()) - 1e-12).sum())  # the observed signs count as one draw:
        p = (hits + 1) / (len(flips) + 1) if d.any() else 1.0  # a permutation p is never 0
    else:
        n10, n01 = (sum(mcnemar(a, b)[i] for a, b in pairs) for i in (0, 1))
        k = min(n10, n01)
        p = min(1.0, 2 * sum(math.comb(n10 + n01, i) for i in range(k + 1)) / 2 ** (n10 + n01)) if n10 + n01 else 1.0
    return {"per_seed": per, "diff": float(np.mean([d for d, _ in per])),
            "ci": tuple(np.percentile(boot, [2.5, 97.5])), "p": p}


# ==========================================================================================================
# Summaries: each arm at its best learning rate

def best_lrs(runs):
    """{arm: its best learning rate}, chosen on validation, never on test, from finished runs: the rates with the
    most pipelines, compared on the pipelines they share by the mean final validation answer loss (the whole-text
    validation loss for an arm whose runs lack it); an exact tie goes to the lower rate."""
    by = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        if r["done"]:
            by[r["arm"]][r["lr"]][r["pipe"]["dir"]] = r
    best = {}
    for arm, lrs in by.items():
        key = "val_answer" if all(np.isfinite(r["val_answer"][-1]) for v in lrs.values() for r in v.values()) else "val"
        most = max(len(v) for v in lrs.values())
        cands = {lr: v for lr, v in lrs.items() if len(v) == most}
        common = set.intersection(*(set(v) for v in cands.values()))
        best[arm] = min(cands, key=lambda lr: (np.mean([cands[lr][d][key][-1] for d in common]), lr))
    return best


def summarize(runs):
    """Per group: its runs, each arm's best rate and, per arm at that rate, the measures of each finished run
    against the same pipeline's baseline (CLM, or SFT CLM for fine-tuning) at its best rate."""
    groups = defaultdict(list)
    for r in runs:
        groups[r["group"]].append(r)
    out = []
    for key, rs in groups.items():
        best = best_lrs(rs)
        sft = any(r["cfg"].get("answer_only") for r in rs)  # a fine-tuning group (its base and reference aside)
        base_arm = "SFT CLM" if sft else "CLM"
        chosen = [r for r in rs if r["done"] and r["lr"] == best.get(r["arm"])]
        clm = {r["pipe"]["dir"]: r for r in chosen if r["arm"] == base_arm}
        rows = {}
        for r in sorted(chosen, key=lambda r: (r["seed"], r["pipe"]["dir"])):
            row = rows.setdefault(r["arm"], {"arm": r["arm"], "lr": r["lr"], "runs": [], "x_answer": [], "x_acc": [],
                                             "x_flops": [], "pairs": []})
            row["runs"].append(r)
            c = clm.get(r["pipe"]["dir"])
            if c is not None and r is not c and r["arm"] != "base":
                row["x_answer"].append(x_fewer(r, c, "answer"))
                row["x_acc"].append(x_fewer(r, c, "acc"))
                row["x_flops"].append(x_less_compute(r, c))
                if r["correct"] is not None and c["correct"] is not None:
                    row["pairs"].append((r["correct"], c["correct"]))
        order = lambda arm: (arm != "base", arm != "reference", arm != base_arm, arm)  # noqa: E731
        out.append({"key": key, "sft": sft, "runs": rs, "best": best, "clm": base_arm, "chosen": chosen,
                    "rows": [rows[a] for a in sorted(rows, key=order)], "shared": len({r["test"] for r in rs}) == 1,
                    "seeds": sorted({r["seed"] for r in rs}), "dirs": sorted({r["pipe"]["dir"] for r in rs})})
    return out


def med(xs, f="{:.4f}"):
    """median [min, max] of the finite values (one value: itself); how many there are, where some are missing."""
    n, xs = len(xs), [x for x in xs if x is not None and np.isfinite(x)]
    if not xs:
        return "-"
    out = f.format(xs[0]) if len(xs) == 1 else \
        f"{f.format(float(np.median(xs)))} [{f.format(min(xs))}, {f.format(max(xs))}]"
    return out + (f" ({len(xs)} of {n})" if len(xs) < n else "")


def fmt_x(x):
    """One "x fewer" (x, bound): 2.31x, >=5.00x (bound), never, at start, - (no such measure)."""
    v, bound = x
    return "never" if v is None else "-" if math.isnan(v) else "at start" if v == math.inf else \
        f"{'>=' if bound else ''}{v:.2f}x"


def med_x(xs):
    """median [min, max] of several "x fewer" ("never" below every value, "at start" above): the lower median of
    an even count; the median and the maximum marked >= where a bound could raise them."""
    if not xs:
        return ""
    xs = [x for x in xs if x[0] is None or not math.isnan(x[0])]
    if not xs:
        return "-"
    order = sorted(xs, key=lambda x: (-1 if x[0] is None else x[0], not x[1]))
    i = (len(order) - 1) // 2
    mid = (order[i][0], any(b for _, b in order[:i + 1]) and order[i][0] is not None)
    top = (order[-1][0], any(b for _, b in order) and order[-1][0] is not None)
    return fmt_x(mid) if len(order) == 1 else f"{fmt_x(mid)} [{fmt_x(order[0])}, {fmt_x(top)}]"


def pct(d):
    return f"{100 * d:+.1f}"


def tables(res):
    """The markdown tables of one group: the headline table, paired tests, every learning rate, per seed."""
    return "\n".join(headline_table(res) + paired_table(res) + rates_table(res) + seeds_table(res) +
                     selection_table(res))


def paired_cell(pairs, shared):
    t = paired(pairs, shared)
    return f"{pct(t['diff'])} pts [{pct(t['ci'][0])}, {pct(t['ci'][1])}], p={t['p']:.2g}", t


def headline_table(res):
    lines = [("fine-tuning on answer tokens (train_slm.py --sft), " if res["sft"] else "") +
             f"pipelines: {', '.join(res['dirs'])} (seeds {', '.join(map(str, res['seeds']))}); each arm at its best "
             "learning rate on the validation problems; median [min, max] over seeds", "",
             f"| arm | lr (of swept) | test answer loss | test accuracy | x fewer tokens to {res['clm']}'s answer loss | "
             f"x fewer tokens to {res['clm']}'s accuracy | x less compute to {res['clm']}'s answer loss | accuracy vs "
             f"{res['clm']}, paired | whole-text validation loss |", "|---|---|---|---|---|---|---|---|---|"]
    for row in res["rows"]:
        rs = row["runs"]
        n_lr = len({r["lr"] for r in res["runs"] if r["arm"] == row["arm"]})
        vs = paired_cell(row["pairs"], res["shared"])[0] if row["pairs"] else ""
        lines.append(f"| {row['arm']} | {row['lr']:g} (of {n_lr}) | {med([r['answer'][-1] for r in rs])} | "
                     f"{med([r['acc'][-1] for r in rs], '{:.1%}')} | {med_x(row['x_answer'])} | "
                     f"{med_x(row['x_acc'])} | {med_x(row['x_flops'])} | {vs} | "
                     f"{med([r['val'][-1] for r in rs])} |")
    return lines


def paired_table(res):
    """Every SLM arm against every other arm (base aside), each pair once, on the same test problems."""
    slm = [row for row in res["rows"] if row["arm"].startswith(("SLM", "SFT SLM"))]
    lines = ["", "paired accuracy tests on the same test problems, SLM against each arm (difference in points, "
             "exact McNemar p per seed; pooled: mean difference, its 95% bootstrap interval over the test problems "
             "(not over training seeds), and " + ("a sign-flip test of each problem's mean difference, the seeds "
                                                  "sharing their test problems):" if res["shared"] else
                                                  "the McNemar p of all seeds' pairs together):"),
             "", "| comparison | per seed: difference (p) | pooled |", "|---|---|---|"]
    done = set()
    for s in slm:
        mine = {r["seed"]: r["correct"] for r in s["runs"] if r["correct"] is not None}
        for other in res["rows"]:
            if other is s or other["arm"] == "base" or (other["arm"], s["arm"]) in done:
                continue
            done.add((s["arm"], other["arm"]))
            pairs = [(mine[r["seed"]], r["correct"]) for r in other["runs"] if r["seed"] in mine and
                     r["correct"] is not None]
            if pairs:
                cell, t = paired_cell(pairs, res["shared"])
                lines.append(f"| {s['arm']} vs {other['arm']} | " + ", ".join(
                    f"{pct(d)} ({p:.2g})" for d, p in t["per_seed"]) + f" | {cell} |")
    return lines if len(lines) > 5 else []


def rates_table(res):
    lines = ["", "every learning rate (median over seeds; * = the rate chosen on validation):", "",
             "| arm | lr | seeds | validation answer loss | test answer loss | test accuracy | whole-text "
             "validation loss |", "|---|---|---|---|---|---|---|"]
    by, order = defaultdict(list), [row["arm"] for row in res["rows"]]
    for r in res["runs"]:
        if r["done"]:  # (unfinished runs are listed below the tables)
            by[(r["arm"], r["lr"])].append(r)
    for (arm, lr), rs in sorted(by.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order else
                                                           len(order), kv[0])):
        star = "*" if res["best"].get(arm) == lr else ""
        lines.append(f"| {arm} | {lr:g}{star} | {len(rs)} | {med([r['val_answer'][-1] for r in rs])} | "
                     f"{med([r['answer'][-1] for r in rs])} | {med([r['acc'][-1] for r in rs], '{:.1%}')} | "
                     f"{med([r['val'][-1] for r in rs])} |")
    return lines


def seeds_table(res):
    lines = ["", "per seed, each arm at its chosen rate (test answer loss / test accuracy):", "",
             "| seed | " + " | ".join(row["arm"] for row in res["rows"]) + " |", "|---" * (1 + len(res["rows"])) + "|"]
    for seed in res["seeds"]:
        cells = []
        for row in res["rows"]:
            r = [r for r in row["runs"] if r["seed"] == seed]
            cells.append(f"{r[0]['answer'][-1]:.4f} / {r[0]['acc'][-1]:.1%}" if r else "-")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return lines


def kept_over_run(r):
    """{kind: share of its tokens kept over the whole run, 'precision': share of math among the kept}: each
    evaluation's record covers the tokens since the one before, weighted by them; None without token kinds."""
    recs = [(t1 - t0, s, c) for t0, t1, s, c in zip(r["tokens"], r["tokens"][1:], r["selected"][1:],
                                                    r["composition"][1:]) if s]
    if not recs:
        return None
    w = np.array([d for d, _, _ in recs]) / sum(d for d, _, _ in recs)
    out = {k: float(np.dot(w, [s.get(k, np.nan) for _, s, _ in recs])) for k in recs[-1][1]}
    out["precision"] = float(np.dot(w, [c.get("math", np.nan) for _, _, c in recs]))
    return out


def selection_table(res):
    """What each arm that drops tokens keeps of each token kind over its run, at its chosen rate."""
    rows = [(row["arm"], [kept_over_run(r) for r in row["runs"]]) for row in res["rows"]]
    drops = lambda k: min(v for kind, v in k.items() if kind != "precision") < 0.999  # noqa: E731
    rows = [(arm, ks) for arm, ks in rows if ks and all(ks) and drops(ks[0])]
    if not rows:
        return []
    kinds = list(rows[0][1][0])
    lines = ["", "share of each kind's tokens kept over the run (each arm at its chosen rate; median over seeds; "
             "precision: the share of target math among the kept tokens):", "",
             "| arm | " + " | ".join(kinds) + " |", "|---" * (1 + len(kinds)) + "|"]
    for arm, ks in rows:
        lines.append(f"| {arm} | " + " | ".join(f"{np.median([k.get(kind, np.nan) for k in ks]):.1%}"
                                              for kind in kinds) + " |")
    return lines


def aggregate(runs, key):
    """Mean, min and max of curve `key` over runs (seeds), on the first run's token grid."""
    t = runs[0]["tokens"]
    ys = np.stack([np.interp(t, r["tokens"], r[key]) for r in runs])
    return t, ys.mean(0), ys.min(0), ys.max(0)


def plot(results, path):
    """Per group: test answer loss, test accuracy and whole-text validation loss against tokens (each arm at its
    best rate, mean and min-max band over seeds), what the first SLM arm keeps of each kind, and the rate sweep."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(results), 5, figsize=(28, 4.8 * len(results)), squeeze=False)
    for res, (ax_ans, ax_acc, ax_val, ax_sel, ax_lr) in zip(results, axes):
        colors = {}
        for row in res["rows"]:
            if row["arm"] == "base":
                continue
            for ax, key in ((ax_ans, "answer"), (ax_acc, "acc"), (ax_val, "val")):
                t, mean, lo, hi = aggregate(row["runs"], key)
                line, = ax.plot(t / 1e6, mean, color=colors.get(row["arm"]),
                                label=f"{row['arm']} (lr {row['lr']:g}, {len(row['runs'])} seed(s))")
                colors[row["arm"]] = line.get_color()
                ax.fill_between(t / 1e6, lo, hi, color=line.get_color(), alpha=0.15)
        for ax, title, ylabel in ((ax_ans, "test answer loss (solution tokens given the question)", "nats/token"),
                                  (ax_acc, "test accuracy (greedy, exact final number)", "accuracy"),
                                  (ax_val, "validation loss, whole text", "nats/token")):
            first = min((r["tokens"][1] for r in res["chosen"] if len(r["tokens"]) > 1), default=1e6) / 1e6
            ax.set(xscale="symlog", xlabel="tokens seen (M; linear below the first evaluation)", ylabel=ylabel,
                   title=title + (", fine-tuning (--sft)" if res["sft"] else ""))
            ax.set_xscale("symlog", linthresh=first)
        slm = next((row for row in res["rows"] if row["arm"].startswith("SLM") and any(row["runs"][0]["selected"])), None)
        if slm is None:
            ax_sel.text(0.5, 0.5, "no SLM run with ground-truth token kinds\n(real data or fine-tuning)",
                        ha="center", transform=ax_sel.transAxes)
        else:
            r = slm["runs"][0]
            for k in sorted({k for s in r["selected"] for k in s}):
                ax_sel.plot(r["tokens"][1:] / 1e6, [s.get(k, np.nan) for s in r["selected"][1:]], label=k)
            ax_sel.set(xscale="log", xlabel="tokens seen (M)", ylabel="share of the kind's tokens kept",
                       ylim=(-0.02, 1.02), title=f"what {slm['arm']} keeps of each kind (seed {r['seed']})")
        by = defaultdict(lambda: defaultdict(list))
        for r in res["runs"]:
            by[r["arm"]][r["lr"]].append(r["val_answer"][-1])
        for arm, lrs in by.items():
            if len(lrs) > 1:
                xs = sorted(lrs)
                ax_lr.plot(xs, [np.mean(lrs[lr]) for lr in xs], "o-", label=arm, color=colors.get(arm))
        ax_lr.set(xscale="log", xlabel="peak learning rate", ylabel="final validation answer loss (mean over seeds)",
                  title="learning-rate sweep (chosen on validation)")
        for ax in (ax_ans, ax_acc, ax_val, ax_sel, ax_lr):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_ratios(results, path):
    """Final test answer loss and accuracy against the ratio (1.0 = CLM), each ratio at its best learning rate,
    where a group has students at three or more ratios. Returns the table lines ([] if nothing drawn)."""
    import matplotlib.pyplot as plt
    groups = []
    for res in results:
        rows = sorted((row["runs"][0]["cfg"]["ratio"], row) for row in res["rows"]
                      if row["arm"] == res["clm"]
                      or row["arm"].removeprefix("SFT ") == f"SLM {row['runs'][0]['cfg']['ratio']:g}")
        if len(rows) >= 3:
            groups.append((res, rows))
    if not groups:
        return []
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    lines = ["ratio sweep (each ratio at its best learning rate; median [min, max] over seeds):", "",
             "| ratio | lr | test answer loss | test accuracy |", "|---|---|---|---|"]
    for res, rows in groups:
        x = [ratio for ratio, _ in rows]
        for ax, key in ((ax_l, "answer"), (ax_a, "acc")):
            ys = [np.array([r[key][-1] for r in row["runs"]]) for _, row in rows]
            mid = np.array([np.median(y) for y in ys])
            ax.errorbar(x, mid, yerr=[mid - [y.min() for y in ys], [y.max() for y in ys] - mid], fmt="o-",
                        capsize=3, label=f"{len(rows[0][1]['runs'])} seed(s)")
        lines += [f"| {ratio:g} | {row['lr']:g} | {med([r['answer'][-1] for r in row['runs']])} | "
                  f"{med([r['acc'][-1] for r in row['runs']], '{:.1%}')} |" for ratio, row in rows]
    for ax, what in ((ax_l, "final test answer loss"), (ax_a, "final test accuracy")):
        ax.set(xlabel="ratio (share of tokens with a loss; 1.0 = CLM)", ylabel=what, title=f"{what} against the ratio")
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
    cfg = read_config(run_dir)
    pipe = read_json(os.path.join(os.path.dirname(os.path.normpath(run_dir)), "pipeline.json"))
    if not cfg or not pipe:
        fail(f"{run_dir} is not a student run of a pipeline", "pass a folder made by train_slm.py, e.g. out/slm0.6")
    meta = data.read_meta(cfg["data_dir"])
    return cfg, pipe, data.Tokenizer(meta["vocab"]), meta


def load_model(path, meta):
    ckpt = load_checkpoint(path)
    check_vocab(ckpt, meta, path)
    return rho.GPT.from_checkpoint(ckpt).eval(), ckpt["step"]


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
        return data.held_out_pages(cfg["data_dir"], a.pages or n)
    pages = []
    for path in a.text.split(","):
        if not os.path.isfile(path):
            fail(f"no text file at {path}", "pass existing text files to --text (comma-separated)")
        with open(path, encoding="utf-8", errors="replace") as f:
            ids = tok.encode(f.read())
        if len(ids) < 2:
            fail(f"{path} holds fewer than two tokens", "pass a text file with some text in it")
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
    png = os.path.join(a.tokens, "tokens.png")
    draw_tokens(pages, title, lim, kinds, png)
    if kinds and pages[0]["kinds"] is not None:
        lab = np.concatenate([p["kinds"] for p in pages])
        print("share of each kind kept: " + ", ".join(
            f"{k} {keep[scored & (lab == i)].mean():.0%}" for i, k in enumerate(kinds) if (scored & (lab == i)).any()))
    print(f"kept {keep.sum():,} of {scored.sum():,} scored tokens; wrote {png}")
    return pages


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


def loss_categories(a):
    """Sort held-out tokens into the paper's four categories by their loss over a run's kept checkpoints."""
    cfg, pipe, tok, meta = run_context(a.categories)
    paths = kept_checkpoints(a.categories)
    if len(paths) < 3:
        fail(f"{a.categories} kept {len(paths)} checkpoint(s); the categories need 3 or more",
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
    png = os.path.join(a.categories, "categories.png")
    draw_categories(steps, losses, cat, shares, png)
    print("\n".join(lines) + f"\n\nwrote {png}")
    return shares


def draw_categories(steps, losses, cat, shares, path):
    """The shares beside the paper's, and 20 example tokens' losses over training per category."""
    import matplotlib.pyplot as plt
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(a):
    import matplotlib
    matplotlib.use("Agg")
    if a.tokens:
        return token_picture(a)
    if a.categories:
        return loss_categories(a)
    runs = find_runs(a.out_dir)
    if not runs:
        fail(f"no pipelines under {a.out_dir}", "run `python train_ref.py && python train_slm.py --ratio 0.6 "
                                                     "&& python train_slm.py --ratio 1.0` first")
    if a.arms:
        names = {r["arm"] for r in runs}
        if set(a.arms) - names:
            fail(f"no runs of arm(s) {', '.join(sorted(set(a.arms) - names))} under {a.out_dir}",
                 f"use arm names from: {', '.join(sorted(names))}")
        runs = [r for r in runs if r["arm"] in a.arms or r["arm"] in ("base", "reference")]
    results = summarize(runs)
    report = []
    for res in results:
        arms, d = {r["arm"] for r in res["runs"]}, res["dirs"][0]
        sft = " --sft" if res["sft"] else ""
        if res["clm"] not in arms:
            report.append(f"missing: no CLM baseline in {d}; make it with "
                          f"`python train_slm.py --out_dir {d} --ratio 1.0{sft}`")
        report.append(tables(res))
        unfinished = [r["path"] for r in res["runs"] if not r["done"]]
        if unfinished:
            report.append(f"unfinished runs (shown as far as they got): {', '.join(unfinished)}")
    png = a.png or os.path.join(a.out_dir, "compare.png")
    stem = os.path.splitext(png)[0]
    report.append("\n".join(plot_ratios(results, stem + "-ratios.png")))
    text = "\n\n".join(r for r in report if r)
    print(text)
    plot(results, png)
    atomic_write(stem + ".md", text + "\n")
    print(f"\nwrote {png} and {stem}.md")


if __name__ == "__main__":
    main(cli(PlotRun, __doc__.split("\n\n")[0].strip()))
