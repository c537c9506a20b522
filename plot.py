"""plot.py -- every run under --out_dir against CLM, each arm at the rate validation chose, on the test problems.

  python plot.py                                  # the lesson: reference alone, CLM, SLM; out/compare.png and .md
  python plot.py --full --arms CLM "SLM 0.6"      # every table and curve, only these arms
  python plot.py --out_dir out/x/seed0 --rates    # each arm's chosen rate, a line "<arm><TAB><rate><TAB><folder>"
  python plot.py --out_dir out/a --merge out/b=label   # b's students (another reference) as arms beside a's
  python plot.py --tokens out/slm0.6              # analysis.py: which tokens it keeps; also --categories, --explain
"""
import glob
import json
import math
import os
import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

import analysis
from analysis import md_table
from infra import arg, atomic_write, cli, fail, read_json, read_pipeline, read_run


@dataclass
class PlotRun:
    out_dir: str = arg("out", "folder holding the pipelines and runs to compare (searched recursively)")
    png: str = arg("", "where to write the figure (default: <out_dir>/compare.png); the tables go beside it (.md)")
    arms: list = arg(None, "compare only these arms, named as in the table (e.g. CLM 'SLM 0.6')", nargs="+", type=str)
    full: bool = arg(False, "print every table, not only the lesson; draw every arm's curves")
    rates: bool = arg(False, "print each arm's rate chosen on validation, '<arm><TAB><rate><TAB><folder>', and stop")
    merge: list = arg(None, "folder=label: its students join as '<arm> (<label>)'", nargs="+", type=str)
    tokens: str = arg("", "a student run folder (e.g. out/slm0.6): draw which tokens it keeps (its tokens.png)")
    categories: str = arg("", "a run folder with kept checkpoints (--keep_ckpts): the paper's token-loss categories")
    explain: str = arg("", "an SLM or ref-loss run folder: what its selection keeps, kind by kind (its explain.md)")
    text: str = arg("", "--tokens/--categories: text file(s) to use (comma-separated) instead of held-out pages")
    ratio: float = arg(0.6, "--tokens: the share of the shown tokens to keep")
    pages: int = arg(0, "held-out pages to use (default: 4 for --tokens, 200 for --categories, 300 for --explain)")


CURVES = {"tokens": "tokens", "val": "val_loss", "val_answer": "val_answer_loss", "answer": "answer_loss", "acc": "acc"}
SELECT = {"excess": "SLM", "random": "random", "ref_loss": "ref-loss"}
# what shapes a student beside its arm, rate and seed: arms are compared at one budget, batch, model and optimizer
SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "tokens_per_step", "max_tokens", "min_lr_frac",
         "warmup_frac", "weight_decay", "beta2", "grad_clip", "n_evals", "eval_problems", "val_problems",
         "eval_max_new")


def arm_name(cfg):
    """A student's arm in words, from the settings that make it."""
    if cfg["split"] == "ref_train":
        return "reference, longer"
    sel = cfg["ratio"] < 1 and cfg["select"] != "oracle"
    name = "oracle (math tokens)" if cfg["select"] == "oracle" else f"{SELECT[cfg['select']]} {cfg['ratio']:g}" \
        if sel else "CLM"
    return name + f" + HQ x{cfg['mix_hq']:g}" * bool(cfg["mix_hq"]) + " (global)" * (sel and cfg["scope"] == "global") \
        + " (online ref)" * (sel and cfg["select"] != "random" and cfg["ref_mode"] == "online") \
        + f" (soft {cfg['temperature']:g})" * (sel and cfg["weighting"] == "soft")


def load_run(path, pipe, group, name=None):
    """A run (None without evaluations): its curves, answers ('0'/'1' a problem) and arm (else from its settings)."""
    cfg, evals, done = read_run(path)
    if not cfg or not evals:
        return None
    order = 0 if name or cfg["seed"] == pipe["seed"] else cfg["seed"]  # a data order other than the pipeline's
    name, last = name or arm_name(cfg), evals[-1]
    return {"path": path, "pipe": pipe, "seed": pipe["seed"], "group": group, "cfg": cfg, "lr": cfg["lr"],
            "done": done, "name": name, "order": order, "arm": name + (f" (student seed {order})" if order else ""),
            "slm": cfg["split"] == "web" and cfg["select"] == "excess" and cfg["ratio"] < 1, "flops": last["flops"],
            "alone": name == "reference", "test": os.path.abspath(os.path.join(pipe["data_dir"], "eval.jsonl")),
            **{k: np.array([rec.get(key, np.nan) for rec in evals], dtype=float) for k, key in CURVES.items()},
            **{k: [rec.get(k, {}) for rec in evals] for k in ("selected", "composition")},
            "correct": np.array([c == "1" for c in last["correct"]]) if "correct" in last else None}


def pipeline_runs(d, notes):
    """A pipeline's runs, a copy in each group of students' shape (the longer reference joins each it fits)."""
    pipe = {**read_pipeline(d), "dir": d}
    names = {"base": "base", os.path.basename(os.path.dirname(pipe["ref"])): "reference"}
    for k, r in sorted(pipe["ref_sweep"].items()):
        names.setdefault(os.path.basename(k), f"reference e{r['ref_epochs']:g} lr{r['ref_lr']:g}")
    students = {}  # folder: its shape (a student off the web has no web budget)
    for sub in sorted(os.listdir(d)):
        cfg = read_json(os.path.join(d, sub, "config.json"), cut_ok=True)
        if sub in names or not cfg or cfg["keep_ckpts"] or cfg.get("sft") or cfg["weighting"] == "margin" or \
                "," in cfg["ref_ckpt"] or not cfg["init"] or cfg["mix_hq"] and cfg["ratio"] < 1:
            continue  # kept checkpoints: for --categories; the others: settings retired since (EXPERIMENTS.md)
        skip = () if cfg["split"] == "web" else ("max_tokens", "tokens_per_step")
        students[sub] = {k: cfg[k] for k in SHAPE if k not in skip}
    shapes = []  # the web's shapes, then each that fits none of them
    for sh in sorted(students.values(), key=lambda sh: ("max_tokens" not in sh, json.dumps(sh, sort_keys=True))):
        if not any(group.items() >= sh.items() for group in shapes):
            shapes.append(sh)
    if len(shapes) > 1:
        differ = sorted({k for sh in shapes for k in sh if sh[k] != shapes[0].get(k, sh[k])})
        notes.append(f"{d}: students that differ in {', '.join(differ)} are shown as separate groups (arms are "
                     "compared at one budget, batch and model)")
    meta = read_json(os.path.join(pipe["data_dir"], "meta.json"), cut_ok=True) or {}
    refs = sorted((float(r["ref_epochs"]), float(r["ref_lr"])) for r in pipe["ref_sweep"].values())
    settings = {k: v for k, v in pipe["settings"].items() if k not in ("ref_epochs", "ref_lr", "lr", "lr_clm")}
    corpus = {k: v for k, v in meta.get("data_config", meta.get("source", {})).items() if k != "seed"}
    same = [os.path.dirname(d), pipe["preset"], pipe.get("ref_web", 0), refs, settings, corpus]
    runs = []
    for sh in shapes or [{}]:
        group = json.dumps(same + [sh], sort_keys=True)
        for sub in [*names, *(s for s, h in students.items() if sh.items() >= h.items())]:
            runs.append(load_run(os.path.join(d, sub), pipe, group, names.get(sub)))
    return runs


def find_runs(root, notes=None):
    """Every run below root, grouped: pipelines of one shape are its seeds; a copy or a twin run gets a note."""
    notes = [] if notes is None else notes
    paths = sorted(glob.glob(os.path.join(root, "**", "pipeline.json"), recursive=True))
    first, seen, kept = {}, {}, []
    for run in filter(None, [run for path in paths for run in pipeline_runs(os.path.dirname(path), notes)]):
        d = run["pipe"]["dir"]
        other = first.setdefault((run["group"], run["seed"]), d)
        if other != d:
            notes.append(f"{d}: shown apart from {other}, a pipeline of the same settings and seed {run['seed']} "
                         "(a copy?): the pipelines of a group are its seeds")
            run["group"] += "\n" + d
        twin = seen.setdefault((run["group"], d, run["arm"], run["lr"]), run["path"])
        if twin != run["path"]:
            notes.append(f"{run['path']}: left out, a second run of {run['arm']} at lr {run['lr']:g} in {d} (beside "
                         f"{twin}): one run per arm and rate in a pipeline")
        else:
            kept.append(run)
    return kept


def merge(root, others, notes):
    """root's first group and other folders' students as '<arm> (<label>)'; their CLMs must equal root's."""
    runs = find_runs(root, notes)
    runs = [run for run in runs if run["group"] == runs[0]["group"]]
    pipes = {run["seed"]: run["pipe"]["dir"] for run in runs}
    clms = {(run["seed"], run["lr"]): run for run in runs if run["arm"] == "CLM" and run["done"]}
    if bad := [other for other in others if "=" not in other]:
        fail(f"--merge {bad[0]} has no label", f"name its arms: --merge {bad[0]}=<label>")
    for folder, label in (other.split("=", 1) for other in others):
        for run in find_runs(folder, notes):  # of the seeds root has: another seed has nothing to pair with
            if run["seed"] not in pipes:
                continue
            if run["arm"] == "CLM":
                mine = clms.get((run["seed"], run["lr"]))
                if mine is None or not all(np.array_equal(run[k], mine[k]) for k in ("acc", "answer", "val")):
                    fail(f"{run['path']} differs from {root}'s CLM of seed {run['seed']} at lr {run['lr']:g} (or it "
                         "has none)", "merge folders on the same bases and corpora, run at one thread")
            elif run["arm"] != "base":
                name = f"{run['name']} ({label})"
                runs.append({**run, "group": runs[0]["group"], "pipe": {**run["pipe"], "dir": pipes[run["seed"]]},
                             "name": name, "arm": name + run["arm"][len(run["name"]):]})
    return runs


def overhead(run):
    """FLOPs before the first step, the base aside: selecting by the reference pays it, and cached, its scoring."""
    cfg = run["cfg"]
    if cfg["ratio"] >= 1 or cfg["select"] not in ("excess", "ref_loss") or cfg["split"] != "web":
        return 0.0
    parts = [run["pipe"].get("flops", {}).get(k) for k in ("ref", "scoring")[:1 + (cfg["ref_mode"] == "cached")]]
    return None if cfg["ref_ckpt"] != run["pipe"]["ref"] or None in parts else float(sum(parts))


def tokens_to_reach(tokens, ys, target, higher=False):
    """(tokens, bound) where a curve first reaches target (>= if higher), interpolated; None: never; bound: at most."""
    s = -1.0 if higher else 1.0
    ys, target = s * np.asarray(ys, float), s * target
    if ys[0] <= target:
        return 0.0, False
    i = next((i for i in range(1, len(ys)) if ys[i] <= target), None)
    if i is None or i == 1:
        return (None if i is None else float(tokens[1])), i == 1
    return float(tokens[i - 1] + (ys[i - 1] - target) / (ys[i - 1] - ys[i]) * (tokens[i] - tokens[i - 1])), False


def x_fewer(run, clm, key, compute=False):
    """(x, bound): how many times fewer tokens (compute: FLOPs) run needs than clm to reach clm's final `key`."""
    both = (run, clm)
    if min(len(r["tokens"]) for r in both) < 2 or not all(np.isfinite(r[key]).all() for r in both):
        return math.nan, False
    (t, bound), (t_clm, _) = (tokens_to_reach(r["tokens"], r[key], clm[key][-1], key == "acc") for r in both)
    if t is None:
        return None, False
    if compute:
        costs = [overhead(r) for r in both]
        if None in costs:
            return math.nan, False
        t, t_clm = (o + x * r["flops"] / r["tokens"][-1] for o, x, r in zip(costs, (t, t_clm), both))
    return (t_clm / t if t else math.inf), bound


def mcnemar(a, b):
    """Exact two-sided McNemar test of paired right/wrong answers: (only a right, only b right, p-value)."""
    n10, n01 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = n10 + n01, min(n10, n01)
    return n10, n01, min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def paired(pairs, shared=False, n_boot=2000, seed=0):
    """Accuracy of a minus b over per-seed pairs of answers: per seed, pooled (bootstrap interval over problems) and
    its p (McNemar; seeds sharing their problems: a sign-flip test of each problem's mean difference)."""
    rng = np.random.default_rng(seed)
    n = min(min(len(a), len(b)) for a, b in pairs)
    pairs = [(a[:n], b[:n]) for a, b in pairs]
    per = [(a.mean() - b.mean(), mcnemar(a, b)[2]) for a, b in pairs]
    draw = rng.integers(0, n, (n_boot, n))
    boot = np.mean([a[idx].mean(1) - b[idx].mean(1) for a, b in pairs
                    for idx in [draw if shared else rng.integers(0, n, (n_boot, n))]], axis=0)
    if shared and len(pairs) > 1:  # one pair: its exact McNemar p
        d = np.mean([a.astype(float) - b for a, b in pairs], axis=0)  # each problem's mean difference over seeds
        flips = rng.choice([-1.0, 1.0], (n_boot * 5, n))
        hits = int((np.abs(flips @ d) >= abs(d.sum()) - 1e-12).sum())  # the observed signs count as one draw:
        p = (hits + 1) / (len(flips) + 1) if d.any() else 1.0  # a permutation p is never 0
    else:
        p = mcnemar(*map(np.concatenate, zip(*pairs)))[2]
    diff, (lo, hi) = float(np.mean([d for d, _ in per])), np.percentile(boot, [2.5, 97.5])
    return {"per_seed": per, "diff": diff, "ci": (lo, hi), "p": p,
            "cell": f"{100 * diff:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}], p={p:.2g}"}


def best_lrs(runs):
    """{arm: its rate chosen on validation}, in table order: of the rates with most pipelines, the lowest val loss."""
    by, best = defaultdict(lambda: defaultdict(dict)), {}
    for run in runs:
        if run["done"]:
            by[run["arm"]][run["lr"]][run["pipe"]["dir"]] = run
    for arm in sorted(by, key=lambda arm: (arm != "base", arm != "reference", arm != "CLM", arm)):
        lrs = by[arm]
        ends = [run["val_answer"][-1] for v in lrs.values() for run in v.values()]
        key, most = "val_answer" if np.isfinite(ends).all() else "val", max(map(len, lrs.values()))
        cands = {lr: v for lr, v in lrs.items() if len(v) == most}
        common = set.intersection(*map(set, cands.values()))
        best[arm] = min(cands, key=lambda lr: (np.mean([cands[lr][d][key][-1] for d in common]), lr))
    return best


def summarize(found):
    """Per group: its runs, chosen rates and runs, a row per arm against the pipeline's CLM, the lesson's rows."""
    out = []
    for group in dict.fromkeys(run["group"] for run in found):
        runs = [run for run in found if run["group"] == group]
        best = best_lrs(runs)
        chosen = [run for run in runs if run["done"] and (run["lr"] == best[run["arm"]] or
                                                           run["arm"] in ("base", "reference"))]
        clms = {run["pipe"]["dir"]: run for run in chosen if run["arm"] == "CLM"}
        rows = {}
        for run in sorted((run for run in chosen if not run["order"]), key=lambda r: (r["seed"], r["pipe"]["dir"])):
            row = rows.setdefault(run["arm"], {"arm": run["arm"], "lr": run["lr"], "runs": [], "pairs": [],
                                               "x_answer": [], "x_acc": [], "x_flops": []})
            row["runs"].append(run)
            clm = clms.get(run["pipe"]["dir"])
            if clm is None or run is clm or run["arm"] == "base":
                continue
            for x, key, flops in (("x_answer", "answer", 0), ("x_acc", "acc", 0), ("x_flops", "answer", 1)):
                row[x].append(x_fewer(run, clm, key, flops))
            if run["correct"] is not None and clm["correct"] is not None:
                row["pairs"].append((run["correct"], clm["correct"]))
        slm = rows.get("SLM 0.6") or next((rows[a] for a in best if a in rows and rows[a]["runs"][0]["slm"]), None)
        out.append({"runs": runs, "best": best, "chosen": chosen, "rows": [rows[arm] for arm in best if arm in rows],
                    "seeds": sorted({run["seed"] for run in runs}), "dirs": sorted({r["pipe"]["dir"] for r in runs}),
                    "shared": len({run["test"] for run in runs}) == 1,  # the seeds share their test problems
                    "lesson": (rows.get("reference"), rows["CLM"], slm) if "CLM" in rows and slm else None})
    return out


def final(runs, key):
    """median [min, max] of the runs' finite final `key`; (k of n) where some lack it."""
    f, xs = "{:.1%}" if key == "acc" else "{:.4f}", [run[key][-1] for run in runs if np.isfinite(run[key][-1])]
    if not xs:
        return "-"
    out = f.format(xs[0]) if len(xs) == 1 else \
        f"{f.format(float(np.median(xs)))} [{f.format(min(xs))}, {f.format(max(xs))}]"
    return out + (f" ({len(xs)} of {len(runs)})" if len(xs) < len(runs) else "")


def med_x(xs):
    """median [min, max] of "x fewer"s (x, bound), the lower median; >= where a bound could raise it."""
    def fmt(v, bound):
        return "never" if v is None else "at start" if v == math.inf else f"{'>=' if bound else ''}{v:.2f}x"

    order = sorted((x for x in xs if x[0] is None or not math.isnan(x[0])), key=lambda x: (
        -1 if x[0] is None else x[0], not x[1]))
    if not order:
        return "-" if xs else ""
    i = (len(order) - 1) // 2
    mid, top = [(order[j][0], any(b for _, b in order[:j + 1]) and order[j][0] is not None)
                for j in (i, len(order) - 1)]
    return fmt(*mid) if len(order) == 1 else f"{fmt(*mid)} [{fmt(*order[0])}, {fmt(*top)}]"


def headline_table(res):
    """Each arm at its chosen rate: its test measures, x fewer tokens and compute to CLM's, paired against CLM."""
    rows = []
    for row in res["rows"]:
        swept = len({run["lr"] for run in res["runs"] if run["arm"] == row["arm"]})
        rows.append([row["arm"], f"{row['lr']:g} (of {swept})", final(row["runs"], "answer"),
                     final(row["runs"], "acc"), med_x(row["x_answer"]), med_x(row["x_acc"]), med_x(row["x_flops"]),
                     paired(row["pairs"], res["shared"])["cell"] if row["pairs"] else "", final(row["runs"], "val")])
    head = ["arm", "lr (of swept)", "test answer loss", "test accuracy", "x fewer tokens to CLM's answer loss",
            "x fewer tokens to CLM's accuracy", "x less compute to CLM's answer loss", "accuracy vs CLM, paired",
            "whole-text validation loss"]
    return md_table(head, rows, f"pipelines: {', '.join(res['dirs'])} (seeds {', '.join(map(str, res['seeds']))}); "
                    "each arm at its best learning rate on the validation problems; median [min, max] over seeds")


def paired_table(res):
    """Every SLM arm against every other arm (base aside), each pair once, on the same test problems."""
    rows, done = [], set()
    for slm in [row for row in res["rows"] if row["runs"][0]["slm"]]:
        mine = {run["seed"]: run["correct"] for run in slm["runs"] if run["correct"] is not None}
        for other in res["rows"]:
            if other is slm or other["arm"] == "base" or (other["arm"], slm["arm"]) in done:
                continue
            done.add((slm["arm"], other["arm"]))
            pairs = [(mine[r["seed"]], r["correct"]) for r in other["runs"]
                     if r["seed"] in mine and r["correct"] is not None]
            if pairs:
                t = paired(pairs, res["shared"])
                per_seed = ", ".join(f"{100 * d:+.1f} ({p:.2g})" for d, p in t["per_seed"])
                rows.append([f"{slm['arm']} vs {other['arm']}", per_seed, t["cell"]])
    if not rows:
        return []
    pooled = ("a sign-flip test of each problem's mean difference, the seeds sharing their test problems):"
              if res["shared"] and len(res["seeds"]) > 1 else "the McNemar p of all seeds' pairs together):")
    return [""] + md_table(["comparison", "per seed: difference (p)", "pooled"], rows, "paired accuracy tests on the "
                           "same test problems, SLM against each arm (difference in points, exact McNemar p per seed; "
                           "pooled: mean difference, its 95% bootstrap interval over the test problems (not over "
                           "training seeds), and " + pooled)


def rates_table(res):
    """Every rate of every arm, of finished runs, and each seed at the chosen rates."""
    by, arms = defaultdict(list), [row["arm"] for row in res["rows"]]
    for run in res["runs"]:
        if run["done"]:
            by[(run["arm"], run["lr"])].append(run)
    order = sorted(by, key=lambda k: (arms.index(k[0]) if k[0] in arms else len(arms), k))
    rows = [[arm, f"{lr:g}" + "*" * (res["best"].get(arm) == lr), len(by[arm, lr]),
             *(final(by[arm, lr], key) for key in ("val_answer", "answer", "acc", "val"))] for arm, lr in order]
    seeds = [[seed, *(next((f"{r['answer'][-1]:.4f} / {r['acc'][-1]:.1%}" for r in row["runs"] if r["seed"] == seed),
                           "-") for row in res["rows"])] for seed in res["seeds"]]
    head = ["arm", "lr", "seeds", "validation answer loss", "test answer loss", "test accuracy",
            "whole-text validation loss"]
    return ([""] + md_table(head, rows, "every learning rate (median over seeds; * = the rate chosen on validation):")
            + [""] + md_table(["seed", *arms], seeds, "per seed, each arm at its chosen rate (test answer loss / test "
                                                     "accuracy):"))


def noise_tables(res, n_boot=2000, seed=0):
    """The noise floor: arms run on several data orders, their spread and each minus CLM, an SLM arm or a reference
    alone, paired by pipeline and data order (a two-level bootstrap); each row draws its own random numbers."""
    runs, lines = defaultdict(dict), []  # arm: {(pipeline, data order): run}
    for run in res["chosen"]:
        runs[run["name"]][(run["pipe"]["dir"], run["order"])] = run
    refs = sorted({run["name"] for run in res["chosen"] if run["alone"]})
    for base in ("CLM", *sorted({run["name"] for run in res["chosen"] if run["order"] and run["slm"]}), *refs):
        clm, rows = runs.get(base, {}), []
        if base in refs:  # one run per pipeline: paired with each data order of the same pipeline
            clm = {(d, s): run for (d, _), run in clm.items() for mine in runs.values() for e, s in mine if e == d}
        for arm, mine in runs.items():
            if arm != base and len({s for _, s in mine}) < 2:
                continue
            rng = np.random.default_rng([seed, zlib.crc32(f"{arm} - {base}".encode())])
            accs = [r["acc"][-1] for r in mine.values()]
            per_pipe = {d: [r["acc"][-1] for (e, _), r in mine.items() if e == d] for d, _ in mine}
            sds = [np.std(a, ddof=1) for a in per_pipe.values() if len(a) > 1]
            sd = f" (sd {np.std(accs, ddof=1):.1%})" if len(accs) > 1 else ""
            row = [arm, len(mine), f"{np.mean(accs):.1%}{sd}", f"{np.mean(sds):.1%}" if sds else "one per pipeline"]
            rows.append(row)
            if arm == base:
                row += [""] * 3
                continue
            for key, scale, fmt in (("acc", 100, "{:+.1f}"), ("answer", 1, "{:+.4f}")):
                diffs = {d: [scale * (r[key][-1] - clm[k][key][-1]) for k, r in mine.items() if k[0] == d and k in clm]
                         for d, _ in filter(clm.__contains__, mine)}  # pipeline: its runs' differences
                ds = [x for v in diffs.values() for x in v]
                boot = [np.mean([np.mean(rng.choice(diffs[p], len(diffs[p])))  # pipelines drawn, then their runs
                                 for p in rng.choice(list(diffs), len(diffs))]) for _ in range(n_boot)]
                lo, hi = np.percentile(boot, [2.5, 97.5])
                row.append(f"{fmt.format(np.mean(ds))} [{fmt.format(lo)}, {fmt.format(hi)}], "
                                f"{sum(x > 0 for x in ds)} of {len(ds)} above")
            pairs = [(r["correct"], clm[k]["correct"]) for k, r in mine.items()
                     if k in clm and r["correct"] is not None]
            row.append(paired(pairs, res["shared"])["cell"] if pairs else "")
        if any(row[0] != base for row in rows):  # something to pair
            head = ["arm", "runs", "test accuracy: mean (sd over runs)", "sd within a pipeline (data order alone)",
                    f"accuracy - {base} (pts): mean [95% interval over pipelines and data orders], runs above",
                    f"answer loss - {base}: same", "paired test on the problems (intervals over the problems only)"]
            lines += [""] + md_table(head, rows, "the noise floor: every pipeline with several data orders (student "
                                     f"seeds), each arm at its chosen rate, paired with {base} of the same pipeline"
                                     f"{'' if base in refs else ' and data order'}:")
    return lines


def lesson(res):
    """The lesson in markdown: a short table, SLM minus CLM in words (over pipelines, across runs), what SLM kept."""
    ref, clm, slm = res["lesson"]
    n, first = len(slm["runs"]), slm["runs"][0]
    web = first["pipe"].get("ref_web")
    hq = "the base fine-tuned on the high-quality subset" + (f" and 1/{web} of the base's web" if web else "")
    named = [(f"reference alone ({hq})", ref), ("CLM (every web token)", clm),
             (f"{slm['arm']} (the top {first['cfg']['ratio']:.0%} by excess loss)", slm)]
    cells = [[name, final(row["runs"], "acc"), final(row["runs"], "answer")] for name, row in named if row]
    lines = md_table(["model", "test accuracy", "test answer loss"], cells, f"The lesson ({', '.join(res['dirs'])}; "
                     f"students of {first['tokens'][-1] / 1e6:.3g}M web tokens; {len(first['correct'])} held-out test "
                     f"problems, greedy decoding, exact final number{'; median [min, max]' if n > 1 else ''}):")
    t = paired(slm["pairs"], res["shared"])
    if n == 1:  # an interval over the problems of one run: no verdict (that needs runs)
        lines += ["", f"{slm['arm']} vs CLM: {t['cell']} on the same problems of one run (the problems' noise only; "
                      "a verdict needs several pipelines)."]
    else:  # the verdict from the runs: each pipeline's difference, a bootstrap over pipelines
        d = 100 * np.array([diff for diff, _ in t["per_seed"]])
        lo, hi = np.percentile(np.random.default_rng(0).choice(d, (2000, n)).mean(1), [2.5, 97.5])
        verdict = "SLM beats CLM" if lo > 0 else "CLM beats SLM" if hi < 0 else "a tie"
        lines += ["", f"{slm['arm']} vs CLM over {n} pipelines: {d.mean():+.1f} pts [{lo:+.1f}, {hi:+.1f}] (95% "
                      f"bootstrap over pipelines; {', '.join(f'{x:+.1f}' for x in d)}): {verdict} across runs.",
                  f"On the same problems, pooled: {t['cell']} (the problems' noise only, not the runs')."]
    kept = [k for k in map(analysis.kept_over_run, slm["runs"]) if k]
    if kept:
        share = {kind: f"{np.mean([k[kind] for k in kept]):.0%}" for kind in ("math", "boilerplate", "math_wrong")}
        lines += ["", f"What {slm['arm']} kept of the web's tokens over its run (CLM keeps them all): the tokens the "
                      "reference predicts better than the student does", f"- target-format math: {share['math']}",
                  f"- boilerplate: {share['boilerplate']}", "- slipped results (the wrong number in a worked solution "
                  f"with a slip): {share['math_wrong']}"]
    return lines


CURVE_PANELS = {"answer": ("test answer loss (solution tokens given the question)", "nats/token"),
                "acc": ("test accuracy (greedy, exact final number)", "accuracy"),
                "val": ("validation loss, whole text", "nats/token")}


def aggregate(runs, key):
    """Mean, min and max of curve `key` over runs (seeds), on the first run's token grid."""
    t = runs[0]["tokens"]
    ys = np.stack([np.interp(t, run["tokens"], run[key]) for run in runs])
    return t, ys.mean(0), ys.min(0), ys.max(0)


def band(ax, row, key, label, **style):
    """An arm's mean curve `key` against tokens (M) over its runs, in a min-max band."""
    t, mean, lo, hi = aggregate(row["runs"], key)
    line, = ax.plot(t / 1e6, mean, label=label, **style)
    ax.fill_between(t / 1e6, lo, hi, color=line.get_color(), alpha=0.15)


def draw_curves(ax, res, key):
    """Curve `key` of each arm (base aside) at its best rate, log-scaled beyond the first evaluation; blank without."""
    rows = [row for row in res["rows"] if row["arm"] != "base"]
    if not any(np.isfinite(run[key]).any() for row in rows for run in row["runs"]):
        return ax.set_visible(False)
    for row in rows:  # in the same order in every panel: an arm has one colour in a row of panels
        band(ax, row, key, f"{row['arm']} (lr {row['lr']:g}, {len(row['runs'])} seed(s))")
    first = min((run["tokens"][1] for run in res["chosen"] if len(run["tokens"]) > 1), default=1e6) / 1e6
    ax.set(xlabel="tokens seen (M; linear below the first evaluation)", ylabel=CURVE_PANELS[key][1],
           title=CURVE_PANELS[key][0])
    ax.set_xscale("symlog", linthresh=first)


def draw_lesson(ax, res, key):
    """Curve `key` of CLM, SLM (marked) and the best control against tokens, the reference alone dashed at its end."""
    ref, clm, slm = res["lesson"]
    band(ax, clm, key, f"{clm['arm']} ({len(clm['runs'])} run(s))", color="tab:gray")
    controls = [row for row in res["rows"] if row["runs"][0]["cfg"]["split"] == "web" and row["arm"] != "CLM" and
                not row["runs"][0]["slm"]]  # the best control: the highest mean test accuracy of the others on the web
    if best := max(controls, key=lambda row: np.mean([run["acc"][-1] for run in row["runs"]]), default=None):
        band(ax, best, key, f"{best['arm']}, the best control ({len(best['runs'])} run(s))", color="tab:green")
    band(ax, slm, key, f"{slm['arm']} ({len(slm['runs'])} run(s))", color="tab:red", lw=2.5, marker="o")
    if ref:
        ax.axhline(np.mean([run[key][-1] for run in ref["runs"]]), color="tab:blue", ls="--",
                   label="reference alone (end of its fine-tuning)")
    ax.set(xlabel="web tokens the student has seen (M)", ylabel=CURVE_PANELS[key][1], title=CURVE_PANELS[key][0])


def figure(path, draw, results, keys, width, height):
    """A figure of panels, a row per group and a column per curve key: draw(ax, res, key) each."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(results), len(keys), figsize=(width * len(keys), height * len(results)),
                             squeeze=False)
    for res, row in zip(results, axes):
        for key, ax in zip(keys, row):
            draw(ax, res, key)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args):
    import matplotlib
    matplotlib.use("Agg")
    if args.tokens or args.categories or args.explain:
        return (analysis.token_picture if args.tokens else analysis.loss_categories if args.categories else
                analysis.explain)(args)
    png, notes = args.png or os.path.join(args.out_dir, "compare.png"), []
    if args.png and not os.path.isdir(os.path.dirname(png) or "."):
        fail(f"--png {png}: there is no folder {os.path.dirname(png)}", "create it, or name a png in a folder that "
                                                                         "exists")
    runs = merge(args.out_dir, args.merge, notes) if args.merge else find_runs(args.out_dir, notes)
    print("".join(note + "\n" for note in dict.fromkeys(notes)), end="")
    if os.path.exists(os.path.join(args.out_dir, "config.json")):
        fail(f"{args.out_dir} is a run folder, not a folder of pipelines",
             f"pass the folder above it: --out_dir {os.path.dirname(args.out_dir.rstrip('/')) or '.'}")
    if not runs:
        fail(f"no pipelines under {args.out_dir}", "run `python train_ref.py && python train_slm.py --ratio 0.6 "
                                                   "&& python train_slm.py --ratio 1.0` first")
    if args.arms and (missing := set(args.arms) - {run["arm"] for run in runs}):
        fail(f"no runs of arm(s) {', '.join(sorted(missing))} under {args.out_dir}",
             f"use arm names from: {', '.join(sorted({run['arm'] for run in runs}))}")
    runs = [run for run in runs if run["name"] in (*args.arms, "base", "reference")] if args.arms else runs
    if args.rates:
        for res in summarize(runs):  # the arm, its rate, its run folder's name without -lr<rate>
            folders = {run["arm"]: os.path.basename(run["path"]).rsplit("-lr", 1)[0] for run in res["chosen"]}
            print("\n".join(f"{arm}\t{lr:g}\t{folders.get(arm, '')}" for arm, lr in res["best"].items()))
        return
    write_report(runs, png, args.full)


def write_report(runs, png, full=False):
    """Print the lesson (full: every table), write every table beside png (.md) and the figure."""
    results, report, stem = summarize(runs), [], os.path.splitext(png)[0]
    lessons = ["\n".join(lesson(res)) for res in results if res["lesson"]]
    for res in results:
        report.append("\n".join(headline_table(res) + paired_table(res) + noise_tables(res) + rates_table(res) +
                                analysis.selection_table(res)))
        if unfinished := [run["path"] for run in res["runs"] if not run["done"]]:
            report.append(f"unfinished runs (shown as far as they got): {', '.join(unfinished)}")
    sweeps = [sorted(((row["runs"][0]["cfg"]["ratio"], row) for row in res["rows"] if row["arm"] in (  # CLM as 1.0
        "CLM", f"SLM {row['runs'][0]['cfg']['ratio']:g}")), key=lambda x: x[0]) for res in results]
    if sweeps := [rows for rows in sweeps if len(rows) >= 3]:  # groups with three ratios or more
        analysis.plot_ratios(sweeps, stem + "-ratios.png")
        report.append("\n".join(md_table(["ratio", "lr", "test answer loss", "test accuracy"], [
            [f"{ratio:g}", f"{row['lr']:g}", final(row["runs"], "answer"), final(row["runs"], "acc")] for rows in
            sweeps for ratio, row in rows], "ratio sweep (each ratio at its best learning rate; median [min, max] "
            "over seeds):") + [f"wrote {stem}-ratios.png"]))
    print("\n\n".join(lessons + report if full or not lessons else lessons))
    if full or not lessons:
        drawn = [run for run in runs if run["arm"] != "base"]
        keys = [key for key in CURVE_PANELS if any(np.isfinite(run[key]).any() for run in drawn)] or ["val"]
        figure(png, draw_curves, results, keys, 5.6, 4.8)
    else:
        figure(png, draw_lesson, [res for res in results if res["lesson"]], ("acc", "answer"), 5.5, 4.2)
    atomic_write(stem + ".md", "\n\n".join(lessons + report) + "\n")
    print(f"\nwrote {png} and {stem}.md" + ("" if full or not lessons else " (every table: python plot.py --full)"))


if __name__ == "__main__":
    main(cli(PlotRun, __doc__.split("\n\n")[0].strip()))
