"""
plot.py -- compare every run under out/ with the uniform next-token baseline (CLM); --tokens and --categories
look inside one run (analysis.py).

  python plot.py                    # reads out/, writes out/compare.png and out/compare.md, prints the tables
  python plot.py --out_dir out/exp --arms CLM "SLM 0.6" --png out/two.png   # another folder, only these arms
  python plot.py --tokens out/slm0.6 [--text a.txt]   # which tokens a student keeps: out/slm0.6/tokens.png
  python plot.py --categories out/clm-ckpts   # H->H, L->H, H->L, L->L over a --keep_ckpts run: categories.png
  python plot.py --explain out/slm0.6 [--pages 300]   # what it keeps of each kind and role, and why: explain.md

Every pipeline (pipeline.json, made by train_ref.py) below --out_dir and its runs form one flat table of runs
(arm, learning rate, seed); pipelines that differ only in their seed form a group. Each arm is shown at its best
learning rate on the *validation* problems and measured on the *test* problems, whose (family, numbers) no
training split holds: the answer loss (the solution's tokens given the question) and greedy accuracy. Per arm,
median [min, max] over seeds of both, "x fewer tokens" to reach CLM's final value of each (a crossing before the
first evaluation after step 0 is only a bound), "x less compute" (the reference and the scoring pass counted
against SLM), and paired accuracy tests on the same problems (exact McNemar, paired bootstrap). Every learning
rate is listed too. With students at three or more ratios it also draws <png>-ratios.png.
"""
import glob
import json
import math
import os
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np

import analysis
from analysis import md_table
from infra import arg, atomic_write, cli, fail, read_json, read_pipeline


@dataclass
class PlotRun:
    out_dir: str = arg("out", "folder holding the pipelines and runs to compare (searched recursively)")
    png: str = arg("", "where to write the figure (default: <out_dir>/compare.png); the tables go beside it (.md)")
    arms: list = arg(None, "compare only these arms, named as in the table (e.g. CLM 'SLM 0.6')", nargs="+", type=str)
    tokens: str = arg("", "a student run folder (e.g. out/slm0.6): draw which tokens it keeps (its tokens.png)")
    categories: str = arg("", "a run folder with kept checkpoints (--keep_ckpts): the paper's token-loss categories")
    explain: str = arg("", "an SLM or ref-loss run folder (e.g. out/slm0.6): its selection explained kind by kind, "
                           "at step 0 and at the end, and slipped results against right ones (its explain.md)")
    text: str = arg("", "--tokens/--categories: text file(s) to use (comma-separated) instead of held-out pages")
    ratio: float = arg(0.6, "--tokens: the share of the shown tokens to keep")
    full: bool = arg(False, "print every table (not only the lesson) and draw every arm, what SLM keeps and the "
                            "learning-rate sweep in the figure")
    pages: int = arg(0, "held-out pages to use (default: 4 for --tokens, 200 for --categories, 300 for --explain)",
                     type=int)


# ==== Runs: one flat table ==================================================================================
CURVES = {"val": "val_loss", "val_answer": "val_answer_loss", "answer": "answer_loss", "acc": "acc"}


def parse(line):
    """The JSON record of a log line, or None where it is cut short (a killed writer): it costs its record only."""
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def read(path):
    """The JSON in a file, {} if there is none, None if it is not whole (read_json's cut_ok)."""
    return read_json(path, cut_ok=True)


def load_run(path, pipe, group, arm=None):
    """One row of the table: a run's config, its curves at every evaluation and its final answers; None for a
    folder that holds no run. pipe: its pipeline.json, with the pipeline's folder as "dir". A log line cut short
    is left out; a done.json cut short leaves the run unfinished."""
    cfg, log, evals, done = read(os.path.join(path, "config.json")), os.path.join(path, "log.jsonl"), [], \
        os.path.join(path, "done.json")
    if os.path.exists(log):
        with open(log, "rb") as f:
            evals = [rec for rec in map(parse, f) if isinstance(rec, dict) and "val_loss" in rec]
    if not cfg or not evals:
        return None
    return {"path": path, "pipe": pipe, "seed": pipe["seed"], "group": group, "cfg": cfg, "lr": cfg["lr"],
            "arm": arm or cfg.get("arm") or os.path.basename(path),
            "done": os.path.isfile(done) and read(done) is not None,
            "tokens": np.array([rec["tokens"] for rec in evals], dtype=float),
            **{k: np.array([rec.get(key, np.nan) for rec in evals], dtype=float) for k, key in CURVES.items()},
            "correct": answers(evals[-1]), "test": os.path.abspath(os.path.join(pipe["data_dir"], "eval.jsonl")),
            "flops": evals[-1]["flops"], "selected": [rec.get("selected", {}) for rec in evals],
            "composition": [rec.get("composition", {}) for rec in evals]}


def answers(rec):
    """Which test problems a record got right (bools, from its '0'/'1' string `correct`), or None."""
    return np.array([c == "1" for c in rec["correct"]]) if "correct" in rec else None


# what shapes a student beyond its arm's name, its rate and its seed is everything else in its config: budget,
# batch, model, evaluations, optimizer; not these (the arm's name says them, or they name files or how it ran)
NOT_SHAPE = ("arm", "lr", "seed", "ratio", "select", "mix_hq", "ref_mode", "scope", "weighting", "temperature",
             "margin", "combine", "sft", "init", "ref_ckpts", "score_files", "data_dir", "out_dir", "split", "part",
             "device", "compile", "overwrite", "resume", "keep_ckpts", "ckpt_every", "log_every")
DEFAULTS = asdict(analysis.rho.TrainConfig())  # a setting newer than a run counts as its default


def shape(cfg):
    """What shapes a student beyond its arm, rate and seed (the longer reference: but its budget, derived)."""
    derived = ("max_tokens", "tokens_per_step") if cfg.get("split") == "ref_train" and not cfg.get("sft") else ()
    return {k: cfg.get(k, v) for k, v in DEFAULTS.items() if k not in NOT_SHAPE + derived}


def find_runs(root, notes=None):
    """Every run below root (the pipelines' base and references included: pipeline.json's "ref" is the arm
    "reference", the others of a sweep "reference e<epochs> lr<lr>"), with its group: pipelines side by side
    in one folder with the same settings, corpus and reference, any seed, and their students of one kind (on the
    web corpus, or fine-tuning with --sft) and one shape (shape()). What pooling would hide is kept apart, each with
    a line in notes: students of another shape (their own group), a pipeline whose seed another of its group has
    (its own group), a second run of an arm at one rate in a pipeline (left out)."""
    runs, notes = [], [] if notes is None else notes
    for path in sorted(glob.glob(os.path.join(root, "**", "pipeline.json"), recursive=True)):
        pipe = read(path)
        if not isinstance(pipe, dict) or "settings" not in pipe:
            notes.append(f"{path} is not a whole pipeline.json: its runs are left out")
            continue
        pipe = {**read_pipeline(os.path.dirname(path)), "dir": os.path.dirname(path)}
        meta = read(os.path.join(pipe["data_dir"], "meta.json")) or {}
        corpus = {k: v for k, v in meta.get("data_config", meta.get("source", {})).items() if k != "seed"}
        ref = os.path.basename(os.path.dirname(pipe["ref"])) or "ref"  # the chosen one, maybe of a sweep
        students, refs = [], [("base", "base"), (ref, "reference")]
        for sub in sorted(os.listdir(pipe["dir"])):
            cfg = read(os.path.join(pipe["dir"], sub, "config.json"))
            if sub in ("base", ref) or not cfg or cfg.get("keep_ckpts"):  # --keep_ckpts: for --categories
                continue
            if cfg.get("arm") == "reference":  # another of train_ref.py's sweep: ref-e<epochs>-lr<lr>
                refs.append((sub, "reference " + sub.removeprefix("ref-").replace("-lr", " lr")))
            else:
                students.append((sub, "sft" if cfg.get("sft") else "", shape(cfg)))
        # the pipeline's settings, but the preset's defaults for what a pipeline records apart (the references it
        # swept) or does not fix (the students' rates)
        settings = {k: v for k, v in pipe["settings"].items() if k not in ("ref_epochs", "ref_lr", "lr", "lr_clm")}
        swept = sorted((float(r["ref_epochs"]), float(r["ref_lr"])) for r in pipe["ref_sweep"].values()) \
            if "ref_sweep" in pipe else [(pipe["settings"].get("ref_epochs"), pipe["settings"].get("ref_lr"))]
        # a group per kind and shape; the longer reference (a shape without its derived budget) joins those it fits
        fits = lambda k, sh, group: k == group[0] and group[1].items() >= sh.items()  # noqa: E731
        kinds = [(k, json.loads(sh)) for k, sh in sorted({(k, json.dumps(sh, sort_keys=True)) for _, k, sh in students
                                                          if "max_tokens" in sh})]
        for _, k, sh in students:
            kinds += [(k, sh)] * (not any(fits(k, sh, g) for g in kinds))
        for kind, sh in kinds or [("", {})]:
            group = json.dumps([os.path.dirname(pipe["dir"]), pipe["preset"], pipe["init"], settings, swept, corpus,
                                pipe.get("ref_web", 0), kind, sh], sort_keys=True)
            for sub, arm in refs + [(s, None) for s, k, h in students if fits(k, h, (kind, sh))]:
                runs.append(load_run(os.path.join(pipe["dir"], sub), pipe, group, arm))
        for kind in {k for k, _ in kinds}:
            shapes = [sh for k, sh in kinds if k == kind]
            if len(shapes) > 1:
                differ = sorted({k for sh in shapes for k in sh if sh[k] != shapes[0].get(k, sh[k])})
                notes.append(f"{pipe['dir']}: students that differ in {', '.join(differ)} are shown as separate "
                             "groups (arms are compared at one budget, batch and model)")
    runs, first, seen, kept = [run for run in runs if run], {}, {}, []
    for run in runs:
        d = run["pipe"]["dir"]
        other = first.setdefault((run["group"], run["seed"]), d)
        if other != d:  # pooled as seeds, two pipelines of one seed would count one pipeline twice
            notes.append(f"{d}: shown apart from {other}, a pipeline of the same settings and seed {run['seed']} "
                         "(a copy?): the pipelines of a group are its seeds")
            run["group"] += "\n" + d
        twin = seen.setdefault((run["group"], d, run["arm"], run["lr"]), run["path"])
        if twin != run["path"]:
            notes.append(f"{run['path']}: left out, a second run of {run['arm']} at lr {run['lr']:g} in {d} (beside "
                         f"{twin}): one run per arm and rate in a pipeline")
            continue
        kept.append(run)
    notes[:] = list(dict.fromkeys(notes))
    return kept


def overhead(run):
    """FLOPs a run needs before its first step, the base model aside: a selection by a reference's losses pays the
    reference, and with cached scores the scoring pass (an online reference is counted per step); None: unknown."""
    cfg = run["cfg"]
    if cfg["ratio"] >= 1 or cfg["select"] not in ("excess", "ref_loss", "block") or \
            (cfg.get("split") != "web" and not cfg.get("sft")):
        return 0.0
    pipe = run["pipe"]
    cost = pipe.get("flops", {})
    refs = {pipe["ref"]: {"flops": cost.get("ref"), "flops_scoring": cost.get("scoring")},
            **{x["ckpt"]: x for x in pipe.get("refs", {}).values()}}
    used = [refs.get(ref) or {} for ref in cfg["ref_ckpts"].split(",")]
    parts = [x.get("flops") for x in used] + \
        [x.get("flops_scoring") for x in used if cfg["ref_mode"] == "cached" and not cfg.get("sft")]
    return None if None in parts else float(sum(parts))


# ==== Measures: tokens to reach a target, paired tests ======================================================
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


def reach(run, clm, key):
    """tokens_to_reach of clm's final value of curve `key`; NA where either lacks it or has under two evaluations."""
    target = clm[key][-1]
    if min(len(run["tokens"]), len(clm["tokens"])) < 2 or not np.isfinite(target) or not np.isfinite(run[key]).all():
        return NA
    return tokens_to_reach(run["tokens"], run[key], target, higher=key == "acc")


def x_fewer(run, clm, key):
    """How many times fewer tokens run needs than the baseline run clm to reach clm's final value of curve `key`
    (clm's tokens: those it needed itself to first reach it): (x, bound); x None if run never gets there, inf if it
    starts there, NaN if there is no such measure; bound: x is only a lower bound."""
    t, bound = reach(run, clm, key)
    if t is None or not np.isfinite(t):
        return (t, False) if t is None else NA
    return (math.inf if t == 0 else reach(clm, clm, key)[0] / t), bound


def x_less_compute(run, clm, key="answer"):
    """As x_fewer, for compute: each run's overhead counted (the base model, shared, left out)."""
    t, bound = reach(run, clm, key)
    (t_clm, _), o_run, o_clm = reach(clm, clm, key), overhead(run), overhead(clm)
    if t is None or not np.isfinite(t) or o_run is None or o_clm is None:
        return (t, False) if t is None else NA
    cost = o_run + t * run["flops"] / run["tokens"][-1]
    return ((o_clm + t_clm * clm["flops"] / clm["tokens"][-1]) / cost if cost else math.inf), bound


def mcnemar(a, b):
    """Exact two-sided McNemar test of paired right/wrong answers: (problems only a got right, only b got right,
    p-value), a binomial test of the discordant pairs at 1/2."""
    n10, n01 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = n10 + n01, min(n10, n01)
    return n10, n01, min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def paired(pairs, shared=False, n_boot=2000, seed=0):
    """Accuracy of a minus accuracy of b, from per-seed pairs (a, b) of right/wrong answers on the same problems
    (the first n of both, n the shorter): per seed (difference, McNemar p); pooled, the mean difference, its 95%
    paired bootstrap interval (problems resampled within each seed) and a p-value: McNemar on all seeds'
    discordant pairs, or where the seeds share their problems (shared), a sign-flip permutation test of each
    problem's mean difference over the seeds."""
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
        p = mcnemar(*map(np.concatenate, zip(*pairs)))[2]  # all seeds' discordant pairs together
    return {"per_seed": per, "diff": float(np.mean([d for d, _ in per])),
            "ci": tuple(np.percentile(boot, [2.5, 97.5])), "p": p}


# ==== Summaries: each arm at its best learning rate =========================================================
def val_key(runs):
    """The curve that picks learning rates: the validation answer loss, or where a run lacks it the whole text's."""
    return "val_answer" if all(np.isfinite(run["val_answer"][-1]) for run in runs) else "val"


def best_lrs(runs):
    """{arm: its best learning rate}, chosen on validation, never on test, from finished runs: the rates with the
    most pipelines, by the mean final val_key on the pipelines they share; an exact tie goes to the lower rate."""
    by = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        if run["done"]:
            by[run["arm"]][run["lr"]][run["pipe"]["dir"]] = run
    best = {}
    for arm, lrs in by.items():
        key, most = val_key([run for v in lrs.values() for run in v.values()]), max(len(v) for v in lrs.values())
        cands = {lr: v for lr, v in lrs.items() if len(v) == most}
        common = set.intersection(*(set(v) for v in cands.values()))
        best[arm] = min(cands, key=lambda lr: (np.mean([cands[lr][d][key][-1] for d in common]), lr))
    return best


def summarize(runs):
    """Per group: its runs, each arm's best rate and its row of the headline table (arm_rows)."""
    groups = defaultdict(list)
    for run in runs:
        groups[run["group"]].append(run)
    out = []
    for runs in groups.values():
        best, sft = best_lrs(runs), any(run["cfg"].get("sft") for run in runs)  # sft: a fine-tuning group
        base_arm = "SFT CLM" if sft else "CLM"
        chosen = [run for run in runs if run["done"] and (run["lr"] == best.get(run["arm"]) or  # each pipeline's
                                                          run["arm"] in ("base", "reference"))]  # own, whatever rate
        rows = arm_rows([run for run in chosen if STUDENT_SEED not in run["arm"]], base_arm)  # noise_table's
        order = lambda arm: (arm != "base", arm != "reference", arm != base_arm, arm)  # noqa: E731
        out.append({"sft": sft, "runs": runs, "best": best, "clm": base_arm, "chosen": chosen,
                    "rows": [rows[arm] for arm in sorted(rows, key=order)],
                    "seeds": sorted({run["seed"] for run in runs}),
                    "dirs": sorted({run["pipe"]["dir"] for run in runs}),
                    "shared": len({run["test"] for run in runs}) == 1})  # the seeds share their test problems
    return out


def arm_rows(chosen, base_arm):
    """{arm: its runs at its best rate, and the measures of each against the same pipeline's baseline run (CLM, or
    SFT CLM for fine-tuning): x fewer tokens, x less compute, and the answers to pair}."""
    clms, rows = {run["pipe"]["dir"]: run for run in chosen if run["arm"] == base_arm}, {}
    for run in sorted(chosen, key=lambda run: (run["seed"], run["pipe"]["dir"])):
        row = rows.setdefault(run["arm"], {"arm": run["arm"], "lr": run["lr"], "runs": [], "x_answer": [],
                                           "x_acc": [], "x_flops": [], "pairs": []})
        row["runs"].append(run)
        clm = clms.get(run["pipe"]["dir"])
        if clm is not None and run is not clm and run["arm"] != "base":
            row["x_answer"].append(x_fewer(run, clm, "answer"))
            row["x_acc"].append(x_fewer(run, clm, "acc"))
            row["x_flops"].append(x_less_compute(run, clm))
            if run["correct"] is not None and clm["correct"] is not None:
                row["pairs"].append((run["correct"], clm["correct"]))
    return rows


# ==== Tables (markdown) =====================================================================================
def med(xs, f="{:.4f}"):
    """median [min, max] of the finite values (one value: itself); how many there are, where some are missing."""
    n, xs = len(xs), [x for x in xs if x is not None and np.isfinite(x)]
    if not xs:
        return "-"
    out = f.format(xs[0]) if len(xs) == 1 else \
        f"{f.format(float(np.median(xs)))} [{f.format(min(xs))}, {f.format(max(xs))}]"
    return out + (f" ({len(xs)} of {n})" if len(xs) < n else "")


def final(runs, key):
    """med of the runs' final values of curve `key` (accuracy in percent)."""
    return med([run[key][-1] for run in runs], "{:.1%}" if key == "acc" else "{:.4f}")


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


def paired_cell(pairs, shared):
    """(the pooled paired test as a table cell, the test)."""
    t = paired(pairs, shared)
    return f"{100 * t['diff']:+.1f} pts [{100 * t['ci'][0]:+.1f}, {100 * t['ci'][1]:+.1f}], p={t['p']:.2g}", t


def headline_table(res):
    """Each arm at its best rate: its final measures, and against the baseline (CLM, or SFT CLM)."""
    clm, rows = res["clm"], []
    for row in res["rows"]:
        n_lr = len({run["lr"] for run in res["runs"] if run["arm"] == row["arm"]})
        rows.append([row["arm"], f"{row['lr']:g} (of {n_lr})", final(row["runs"], "answer"), final(row["runs"], "acc"),
                     med_x(row["x_answer"]), med_x(row["x_acc"]), med_x(row["x_flops"]),
                     paired_cell(row["pairs"], res["shared"])[0] if row["pairs"] else "", final(row["runs"], "val")])
    head = ["arm", "lr (of swept)", "test answer loss", "test accuracy", f"x fewer tokens to {clm}'s answer loss",
            f"x fewer tokens to {clm}'s accuracy", f"x less compute to {clm}'s answer loss",
            f"accuracy vs {clm}, paired", "whole-text validation loss"]
    return md_table(head, rows, ("fine-tuning on answer tokens (train_slm.py --sft), " if res["sft"] else "") +
                    f"pipelines: {', '.join(res['dirs'])} (seeds {', '.join(map(str, res['seeds']))}); each arm at "
                    "its best learning rate on the validation problems; median [min, max] over seeds")


def paired_table(res):
    """Every SLM arm against every other arm (base aside), each pair once, on the same test problems."""
    rows, done = [], set()
    for slm in [row for row in res["rows"] if row["arm"].startswith(("SLM", "SFT SLM"))]:
        mine = {run["seed"]: run["correct"] for run in slm["runs"] if run["correct"] is not None}
        for other in res["rows"]:
            if other is slm or other["arm"] == "base" or (other["arm"], slm["arm"]) in done:
                continue
            done.add((slm["arm"], other["arm"]))
            pairs = [(mine[run["seed"]], run["correct"]) for run in other["runs"]
                     if run["seed"] in mine and run["correct"] is not None]
            if pairs:
                cell, t = paired_cell(pairs, res["shared"])
                rows.append([f"{slm['arm']} vs {other['arm']}",
                             ", ".join(f"{100 * d:+.1f} ({p:.2g})" for d, p in t["per_seed"]), cell])
    if not rows:
        return []
    pooled = ("a sign-flip test of each problem's mean difference, the seeds sharing their test problems):"
              if res["shared"] else "the McNemar p of all seeds' pairs together):")
    return [""] + md_table(["comparison", "per seed: difference (p)", "pooled"], rows,
                           "paired accuracy tests on the same test problems, SLM against each arm (difference in "
                           "points, exact McNemar p per seed; pooled: mean difference, its 95% bootstrap interval "
                           "over the test problems (not over training seeds), and " + pooled)


def rates_table(res):
    """Every learning rate of every arm, of finished runs (unfinished ones are listed below the tables)."""
    by, order = defaultdict(list), [row["arm"] for row in res["rows"]]
    for run in res["runs"]:
        if run["done"]:
            by[(run["arm"], run["lr"])].append(run)
    rank = lambda item: (order.index(item[0][0]) if item[0][0] in order else len(order), item[0])  # noqa: E731
    rows = [[arm, f"{lr:g}{'*' * (res['best'].get(arm) == lr)}", len(runs)] +
            [final(runs, key) for key in ("val_answer", "answer", "acc", "val")]
            for (arm, lr), runs in sorted(by.items(), key=rank)]
    return [""] + md_table(["arm", "lr", "seeds", "validation answer loss", "test answer loss", "test accuracy",
                            "whole-text validation loss"], rows,
                           "every learning rate (median over seeds; * = the rate chosen on validation):")


def seeds_table(res):
    """Each seed's final test answer loss and accuracy, each arm at its chosen rate."""
    rows = []
    for seed in res["seeds"]:
        runs = [next((run for run in row["runs"] if run["seed"] == seed), None) for row in res["rows"]]
        rows.append([seed] + [f"{run['answer'][-1]:.4f} / {run['acc'][-1]:.1%}" if run else "-" for run in runs])
    return [""] + md_table(["seed"] + [row["arm"] for row in res["rows"]], rows,
                           "per seed, each arm at its chosen rate (test answer loss / test accuracy):")


STUDENT_SEED = " (student seed "  # train_slm.py --seed: the same arm on another data order


def noise_tables(res):
    """noise_table against the baseline (CLM), then against each SLM arm run with several data orders."""
    slms = sorted({run["arm"].partition(STUDENT_SEED)[0] for run in res["chosen"] if STUDENT_SEED in run["arm"]
                   and run["arm"].startswith(("SLM", "SFT SLM"))})
    return noise_table(res, res["clm"]) + [line for slm in slms for line in noise_table(res, slm)]


def noise_table(res, base, n_boot=2000, seed=0):
    """The noise floor, for the arms run with several student seeds (data orders) in every pipeline, each at its
    chosen rate: the spread of the runs, and each arm minus the `base` arm's run of the same pipeline and data
    order, with a 95% interval from a two-level bootstrap (pipelines, then data orders within them): run-to-run
    variation, not only the test problems, counts; beside it, the paired test on the problems of all those pairs.
    Each row draws its own random numbers: a row reads the same whichever other arms are in the table."""
    runs = defaultdict(dict)  # arm: {(pipeline, student seed): run}
    for run in res["chosen"]:
        arm, _, student = run["arm"].partition(STUDENT_SEED)
        runs[arm][(run["pipe"]["dir"], student.rstrip(")") or "pipeline's")] = run
    clm, rows = runs.get(base, {}), []
    for arm, mine in runs.items():
        if len({s for _, s in mine}) < 2:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(f"{arm} - {base}".encode())])  # a row's own draws
        spread = [np.std([r["acc"][-1] for (d, _), r in mine.items() if d == pipe], ddof=1)
                  for pipe in {d for d, _ in mine}]
        row = [arm, len(mine), f"{np.mean([r['acc'][-1] for r in mine.values()]):.1%} "
               f"(sd {np.std([r['acc'][-1] for r in mine.values()], ddof=1):.1%})", f"{np.nanmean(spread):.1%}"]
        if arm != base:
            for key, f in (("acc", 100), ("answer", 1)):
                diffs = defaultdict(list)
                for (pipe, s), r in mine.items():
                    if (pipe, s) in clm:
                        diffs[pipe].append(f * (r[key][-1] - clm[(pipe, s)][key][-1]))
                pipes = list(diffs)
                boot = [np.mean([np.mean(rng.choice(diffs[p], len(diffs[p]))) for p in rng.choice(pipes, len(pipes))])
                        for _ in range(n_boot)]
                fmt = "{:+.1f}" if key == "acc" else "{:+.4f}"
                ds = [d for v in diffs.values() for d in v]
                lo, hi = np.percentile(boot, [2.5, 97.5])
                row.append(f"{fmt.format(np.mean(ds))} [{fmt.format(lo)}, {fmt.format(hi)}], "
                           f"{sum(d > 0 for d in ds)} of {len(ds)} above")
            pairs = [(r["correct"], clm[k]["correct"]) for k, r in mine.items()
                     if k in clm and r["correct"] is not None]
            row.append(paired_cell(pairs, res["shared"])[0] if pairs else "")
        rows.append(row + [""] * (7 - len(row)))
    if not rows:
        return []
    return [""] + md_table(["arm", "runs", "test accuracy: mean (sd over runs)", "sd within a pipeline (data order "
                            "alone)", f"accuracy - {base} (pts): mean [95% interval over pipelines and data "
                            "orders], runs above", f"answer loss - {base}: same", "paired test on the problems "
                            "(intervals over the problems only)"], rows,
                           "the noise floor: every pipeline with several data orders (student seeds), each arm at "
                           f"its chosen rate, paired with {base} of the same pipeline and data order:")


def ratio_sweeps(results):
    """Per group with students at three or more ratios (CLM as 1.0): [(ratio, its row)] in ratio order."""
    ratio = lambda row: row["runs"][0]["cfg"]["ratio"]  # noqa: E731
    sweeps = [sorted(((ratio(row), row) for row in res["rows"] if row["arm"] == res["clm"]
                      or row["arm"].removeprefix("SFT ") == f"SLM {ratio(row):g}"), key=lambda x: x[0])
              for res in results]
    return [rows for rows in sweeps if len(rows) >= 3]


def ratio_table(sweeps):
    return md_table(["ratio", "lr", "test answer loss", "test accuracy"],
                    [[f"{ratio:g}", f"{row['lr']:g}", final(row["runs"], "answer"), final(row["runs"], "acc")]
                     for rows in sweeps for ratio, row in rows],
                    "ratio sweep (each ratio at its best learning rate; median [min, max] over seeds):")


# ==== The lesson: reference alone, CLM and SLM, the paired test in words, what SLM kept =====================
def lesson_rows(res):
    """(reference, CLM, SLM) rows of a group for the lesson (SLM: 'SLM 0.6' if run, else the first SLM arm), or
    None where the group lacks CLM or SLM."""
    rows = {row["arm"]: row for row in res["rows"]}
    slm = rows.get("SLM 0.6") or next((row for arm, row in rows.items() if arm.startswith("SLM")), None)
    return (rows.get("reference"), rows[res["clm"]], slm) if res["clm"] in rows and slm else None


def verdict(t):
    """A paired test (paired()) in words."""
    if t["p"] >= 0.05:
        return "a tie: the difference is within what chance gives on these problems"
    return "SLM beats CLM on the same problems" if t["diff"] > 0 else "CLM beats SLM on the same problems"


def lesson(res):
    """The demo's lesson, as markdown lines: a short table, SLM minus CLM on the same problems with its verdict
    (over several pipelines, the run-level one), and what SLM kept of three kinds of web token."""
    ref, clm, slm = lesson_rows(res)
    n, cfg = len(slm["runs"]), slm["runs"][0]["cfg"]
    web = slm["runs"][0]["pipe"].get("ref_web")
    cells = [[name, final(row["runs"], "acc"), final(row["runs"], "answer")] for name, row in (
        ("reference alone (the base fine-tuned on the high-quality subset" +
         (f" and 1/{web} of the base's web)" if web else ")"), ref), ("CLM (every web token)", clm),
        (f"{slm['arm']} (the top {cfg['ratio']:.0%} by excess loss)", slm)) if row]
    lines = md_table(["model", "test accuracy", "test answer loss"], cells,
                     f"The lesson ({', '.join(res['dirs'])}; students of {slm['runs'][0]['tokens'][-1] / 1e6:.3g}M "
                     "web tokens; "
                     f"{len(slm['runs'][0]['correct'])} held-out test problems, greedy decoding, exact final number"
                     f"{'; median [min, max]' if n > 1 else ''}):")
    cell, t = paired_cell(slm["pairs"], res["shared"])
    if n == 1:
        lines += ["", f"{slm['arm']} vs CLM: {cell}: {verdict(t)}."]
    else:  # the verdict from the runs: each pipeline's difference, a bootstrap over pipelines
        d = 100 * np.array([dd for dd, _ in t["per_seed"]])
        boot = np.random.default_rng(0).choice(d, (2000, n)).mean(1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        word = "SLM beats CLM" if lo > 0 else "CLM beats SLM" if hi < 0 else "a tie"
        lines += ["", f"{slm['arm']} vs CLM over {n} pipelines: {d.mean():+.1f} pts [{lo:+.1f}, {hi:+.1f}] "
                      f"(95% bootstrap over pipelines; {', '.join(f'{x:+.1f}' for x in d)}): {word} across runs.",
                  f"On the same problems, pooled: {cell} (the problems' noise only, not the runs')."]
    kept = [k for k in map(analysis.kept_over_run, slm["runs"]) if k]
    if kept:
        share = lambda kind: f"{np.mean([k[kind] for k in kept]):.0%}"  # noqa: E731
        lines += ["", f"What {slm['arm']} kept of the web's tokens over its run (CLM keeps them all): the tokens the "
                      "reference predicts better than the student does",
                  f"- target-format math: {share('math')}", f"- boilerplate: {share('boilerplate')}",
                  f"- slipped results (the wrong number in a worked solution with a slip): {share('math_wrong')}"]
    return lines


# ==== The figure: curves against tokens, what SLM keeps, the learning-rate sweep ============================
CURVE_PANELS = {"answer": ("test answer loss (solution tokens given the question)", "nats/token"),
                "acc": ("test accuracy (greedy, exact final number)", "accuracy"),
                "val": ("validation loss, whole text", "nats/token")}


def aggregate(runs, key):
    """Mean, min and max of curve `key` over runs (seeds), on the first run's token grid."""
    t = runs[0]["tokens"]
    ys = np.stack([np.interp(t, run["tokens"], run[key]) for run in runs])
    return t, ys.mean(0), ys.min(0), ys.max(0)


def panels(res):
    """{panel: draw(ax, colors)} of the panels of compare.png a group has data for: each curve some run has, what
    an SLM arm keeps of each token kind (the embedded corpus only), the learning-rate sweep (two or more rates)."""
    runs = [run for row in res["rows"] if row["arm"] != "base" for run in row["runs"]]
    out = {key: lambda ax, colors, key=key: draw_curves(ax, res, key, colors) for key in CURVE_PANELS
           if any(np.isfinite(run[key]).any() for run in runs)}
    slm = next((row for row in res["rows"] if row["arm"].startswith("SLM") and any(row["runs"][0]["selected"])), None)
    if slm:
        out["kept"] = lambda ax, colors: draw_kept(ax, slm)
    by = defaultdict(lambda: defaultdict(list))
    for run in res["runs"]:
        by[run["arm"]][run["lr"]].append(run)
    if any(len(lrs) > 1 for lrs in by.values()):
        out["lr"] = lambda ax, colors: draw_lrs(ax, {arm: lrs for arm, lrs in by.items() if len(lrs) > 1}, colors)
    return out


def draw_curves(ax, res, key, colors):
    """Curve `key` against tokens, each arm (base aside) at its best rate: the mean and min-max band over seeds."""
    for row in res["rows"]:
        if row["arm"] != "base":
            t, mean, lo, hi = aggregate(row["runs"], key)
            line, = ax.plot(t / 1e6, mean, color=colors.get(row["arm"]),
                            label=f"{row['arm']} (lr {row['lr']:g}, {len(row['runs'])} seed(s))")
            colors[row["arm"]] = line.get_color()
            ax.fill_between(t / 1e6, lo, hi, color=line.get_color(), alpha=0.15)
    first = min((run["tokens"][1] for run in res["chosen"] if len(run["tokens"]) > 1), default=1e6) / 1e6
    ax.set(xlabel="tokens seen (M; linear below the first evaluation)", ylabel=CURVE_PANELS[key][1],
           title=CURVE_PANELS[key][0] + (", fine-tuning (--sft)" if res["sft"] else ""))
    ax.set_xscale("symlog", linthresh=first)


def draw_kept(ax, row):
    """What the first run of an SLM arm keeps of each token kind over training."""
    run = row["runs"][0]
    for kind in sorted({kind for s in run["selected"] for kind in s}):
        ax.plot(run["tokens"][1:] / 1e6, [s.get(kind, np.nan) for s in run["selected"][1:]], label=kind)
    ax.set(xscale="log", xlabel="tokens seen (M)", ylabel="share of the kind's tokens kept", ylim=(-0.02, 1.02),
           title=f"what {row['arm']} keeps of each kind (seed {run['seed']})")


def draw_lrs(ax, sweep, colors):
    """The final validation measure (val_key) against the learning rate: sweep = {arm: {lr: [runs]}}."""
    key = val_key([run for lrs in sweep.values() for runs in lrs.values() for run in runs])
    for arm, lrs in sweep.items():
        ax.plot(sorted(lrs), [np.mean([run[key][-1] for run in lrs[lr]]) for lr in sorted(lrs)], "o-", label=arm,
                color=colors.get(arm))
    ax.set(xscale="log", xlabel="peak learning rate", title="learning-rate sweep (chosen on validation)",
           ylabel=f"final {'validation answer' if key == 'val_answer' else 'whole-text validation'} loss (mean)")


def plot(results, path):
    """compare.png, a row per group and only the panels with data (see panels)."""
    import matplotlib.pyplot as plt
    have = [panels(res) for res in results]
    cols = [p for p in (*CURVE_PANELS, "kept", "lr") if any(p in shown for shown in have)] or ["val"]
    fig, axes = plt.subplots(len(results), len(cols), figsize=(5.6 * len(cols), 4.8 * len(results)), squeeze=False)
    for shown, row_axes in zip(have, axes):
        colors = {}  # each arm's colour, the same in every panel of the row
        for panel, ax in zip(cols, row_axes):
            ax.set_visible(panel in shown)
            if panel in shown:
                shown[panel](ax, colors)
                ax.grid(alpha=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def lesson_plot(results, path):
    """The lesson at a glance: test accuracy and answer loss against tokens for CLM and SLM (marked), the
    reference alone as a dashed line at its final value; a row per group that has the three."""
    import matplotlib.pyplot as plt
    groups = [(res, lesson_rows(res)) for res in results if lesson_rows(res)]
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4.2 * len(groups)), squeeze=False)
    for (res, (ref, clm, slm)), row_axes in zip(groups, axes):
        for ax, key in zip(row_axes, ("acc", "answer")):
            for row, style in ((clm, dict(color="tab:gray")), (slm, dict(color="tab:red", lw=2.5, marker="o"))):
                t, mean, lo, hi = aggregate(row["runs"], key)
                ax.plot(t / 1e6, mean, label=f"{row['arm']} ({len(row['runs'])} run(s))", **style)
                ax.fill_between(t / 1e6, lo, hi, color=style["color"], alpha=0.15)
            if ref:
                ax.axhline(np.mean([run[key][-1] for run in ref["runs"]]), color="tab:blue", ls="--",
                           label="reference alone (end of its fine-tuning)")
            ax.set(xlabel="web tokens the student has seen (M)", ylabel=CURVE_PANELS[key][1],
                   title=CURVE_PANELS[key][0])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args):
    import matplotlib
    matplotlib.use("Agg")
    if args.tokens or args.categories or args.explain:
        return analysis.token_picture(args) if args.tokens else analysis.loss_categories(args) \
            if args.categories else analysis.explain(args)
    png, notes = args.png or os.path.join(args.out_dir, "compare.png"), []
    if args.png and not os.path.isdir(os.path.dirname(png) or "."):
        fail(f"--png {png}: there is no folder {os.path.dirname(png)}", "create it, or name a png in a folder "
                                                                         "that exists")
    runs = find_runs(args.out_dir, notes)
    print("\n".join(notes) + "\n" * bool(notes), end="")
    if os.path.exists(os.path.join(args.out_dir, "config.json")):
        fail(f"{args.out_dir} is a run folder, not a folder of pipelines",
             f"pass the folder above it: --out_dir {os.path.dirname(args.out_dir.rstrip('/')) or '.'}")
    if not runs:
        fail(f"no pipelines under {args.out_dir}", "run `python train_ref.py && python train_slm.py --ratio 0.6 "
                                                   "&& python train_slm.py --ratio 1.0` first")
    if args.arms:
        names = {run["arm"] for run in runs}
        if set(args.arms) - names:
            fail(f"no runs of arm(s) {', '.join(sorted(set(args.arms) - names))} under {args.out_dir}",
                 f"use arm names from: {', '.join(sorted(names))}")
        runs = only_arms(runs, args.arms)
    write_report(runs, png, args.full)


def only_arms(runs, arms):
    """The runs of these arms (their other data orders too), with the base and the reference."""
    return [run for run in runs if run["arm"].partition(STUDENT_SEED)[0] in (*arms, "base", "reference")]


def write_report(runs, png, full=False):
    """The lesson of each group that has CLM and SLM (printed; with full, or where no group has them, every table
    too) and every table, written beside the figure png (<png stem>.md); the figure: the lesson's (full: every
    arm, what SLM keeps, the learning-rate sweep)."""
    results, report = summarize(runs), []
    lessons = ["\n".join(lesson(res)) for res in results if lesson_rows(res)]
    for res in results:
        if res["clm"] not in {run["arm"] for run in res["runs"]}:
            report.append(f"missing: no CLM baseline in {res['dirs'][0]}; make it with `python train_slm.py "
                          f"--out_dir {res['dirs'][0]} --ratio 1.0{' --sft' if res['sft'] else ''}`")
        report.append("\n".join(headline_table(res) + paired_table(res) + noise_tables(res) + rates_table(res) +
                                seeds_table(res) +
                                analysis.selection_table(res)))
        unfinished = [run["path"] for run in res["runs"] if not run["done"]]
        if unfinished:
            report.append(f"unfinished runs (shown as far as they got): {', '.join(unfinished)}")
    stem, sweeps = os.path.splitext(png)[0], ratio_sweeps(results)
    if sweeps:
        analysis.plot_ratios(sweeps, stem + "-ratios.png")
        report.append("\n".join(ratio_table(sweeps) + [f"wrote {stem}-ratios.png"]))
    print("\n\n".join(lessons + report if full or not lessons else lessons))
    if full or not lessons:
        plot(results, png)
    else:
        lesson_plot(results, png)
    atomic_write(stem + ".md", "\n\n".join(lessons + report) + "\n")
    print(f"\nwrote {png} and {stem}.md" + ("" if full or not lessons else " (every table: python plot.py --full)"))


if __name__ == "__main__":
    main(cli(PlotRun, __doc__.split("\n\n")[0].strip()))
