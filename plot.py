"""
plot.py -- compare every run under out/: SLM students against the uniform next-token baseline (CLM).

  python plot.py                    # reads out/, writes out/compare.png and out/summary.md, prints the table
  python plot.py --out_dir out/exp  # another folder of pipelines

It finds every pipeline (a folder with pipeline.json, made by train_ref.py) below --out_dir and every student
run in it (made by train_slm.py). Pipelines that differ only in their seed are aggregated: curves show the mean
and the min-max band over seeds. Each arm (CLM, SLM at a ratio, the random control, ...) is shown at its best
learning rate (lowest mean final held-out loss over the seeds); the learning-rate panel shows every rate.
The table gives, per arm: final held-out loss and accuracy, the tokens SLM needed to reach the best CLM's final
held-out loss ("x fewer tokens", the paper's headline measure), and the total compute, which for SLM counts the
reference's training and the scoring pass.
"""
import glob
import json
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

import rho
from rho import arg


@dataclass
class PlotRun:
    out_dir: str = arg("out", "folder holding the pipelines and runs to compare (searched recursively)")
    png: str = arg("", "where to write the figure (default: <out_dir>/compare.png)")


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
            "selected": [r.get("selected", {}) for r in evals], "flops": evals[-1]["flops"]}


def arm_of(cfg, base):
    """A readable name for what a student run does (its learning rate aside)."""
    if cfg["ratio"] >= 1:
        name = "CLM"
    else:
        name = f"{'SLM' if cfg['select'] == 'excess' else 'random'} {cfg['ratio']:g}"
        name += " (online ref)" if cfg["select"] == "excess" and cfg["ref_scores"] == "online" else ""
    return name + (" (from scratch)" if base and not cfg["init"] else "")


def find_pipelines(root):
    pipes = []
    for pj in sorted(glob.glob(os.path.join(root, "**", "pipeline.json"), recursive=True)):
        d = os.path.dirname(pj)
        p = rho.read_json(pj)
        meta = rho.read_json(os.path.join(p["data_dir"], "meta.json")) if os.path.isabs(p["data_dir"]) else \
            rho.read_json(os.path.join(p["data_dir"], "meta.json"))
        dcfg = {k: v for k, v in meta.get("data_config", {}).items() if k != "seed"}
        runs = {}
        for sub in sorted(os.listdir(d)):
            r = load_run(os.path.join(d, sub))
            if r and r["cfg"].get("split") == "web":
                r["arm"], r["lr"] = arm_of(r["cfg"], p["base"]), r["cfg"]["lr"]
                runs[sub] = r
        pipes.append({"dir": d, "p": p, "seed": p["seed"], "runs": runs,
                      "base": load_run(os.path.join(d, "base")), "ref": load_run(os.path.join(d, "ref")),
                      "group": json.dumps([p["preset"], p["init"], p["settings"], dcfg], sort_keys=True)})
    return pipes


def tokens_to_reach(tokens, val, target):
    """First token count at which a curve reaches target (linear between evals); None if it never does."""
    for i in range(1, len(val)):
        if val[i] <= target:
            f = (val[i - 1] - target) / (val[i - 1] - val[i]) if val[i - 1] > val[i] else 1.0
            return tokens[i - 1] + f * (tokens[i] - tokens[i - 1])
    return None


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
        clm = by_arm["CLM"][best["CLM"]] if "CLM" in by_arm else None
        for arm, lrs in sorted(by_arm.items(), key=lambda kv: (kv[0] != "CLM", kv[0])):
            runs = lrs[best[arm]]
            row = {"arm": arm, "lr": best[arm], "lrs": sorted(lrs), "seeds": sorted(r["pipe"]["seed"] for r in runs),
                   "val": [r["val"][-1] for r in runs], "acc": [r["acc"][-1] for r in runs],
                   "ref_val": [r["pipe"]["ref"]["val"][-1] for r in runs if r["pipe"]["ref"]],
                   "flops": [], "x": [], "x_flops": [], "runs": runs, "by_lr": lrs}
            for r in runs:
                row["flops"].append(r["flops"] + overhead(r))
                twin = [c for c in clm or [] if c["pipe"] is r["pipe"]]
                if twin and arm != "CLM":
                    c = twin[0]
                    reach = tokens_to_reach(r["tokens"], r["val"], c["val"][-1])
                    row["x"].append(c["tokens"][-1] / reach if reach else None)
                    # the base model both start from is left out: it is the same for both
                    cost = overhead(r, base=False) + reach * r["flops"] / r["tokens"][-1] if reach else None
                    row["x_flops"].append((c["flops"] + overhead(c, base=False)) / cost if reach else None)
            rows.append(row)
        results.append({"key": key, "pipes": ps, "rows": rows, "by_arm": by_arm, "best": best})
    return results


def overhead(r, base=True):
    """FLOPs a run needed before its first step: the base model it starts from (if base) and, for SLM with
    cached scores, the reference's fine-tuning and the scoring pass (an online reference is counted per step)."""
    cost = r["pipe"]["p"].get("flops", {})
    extra = cost.get("base", 0) if r["cfg"]["init"] and base else 0
    if r["cfg"]["ratio"] < 1 and r["cfg"]["select"] == "excess":
        extra += cost.get("ref", 0) + (cost.get("scoring", 0) if r["cfg"]["ref_scores"] == "cached" else 0)
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
    lines = [f"pipelines: {', '.join(p['dir'] for p in ps)} (seeds {', '.join(str(p['seed']) for p in ps)}); "
             "mean [min, max] over seeds", "",
             "| run | lr (best of swept) | final val loss | final accuracy | x fewer tokens to reach CLM's final "
             "loss | x less compute to reach it (reference + scoring counted) | total compute, base included (TFLOP) |", "|---|---|---|---|---|---|---|"]
    for name in ("base", "ref"):
        ms = [p[name] for p in ps if p[name]]
        if ms:
            lines.append(f"| {name} model | {ms[0]['cfg']['lr']:g} | {fmt([m['val'][-1] for m in ms])} | "
                         f"{fmt([m['acc'][-1] for m in ms], '{:.1%}')} | | | |")
    for row in res["rows"]:
        cells = []
        for xs in (row["x"], row["x_flops"]):
            per = ["never" if x is None else f"{x:.2f}x" for x in xs]
            cells.append("" if row["arm"] == "CLM" else "-" if not xs else "never" if not any(xs) else
                         fmt([x for x in xs if x], "{:.2f}x") + (f" (seeds: {', '.join(per)})" if len(per) > 1 else ""))
        lines.append(f"| {row['arm']} | {row['lr']:g} (of {len(row['lrs'])}) | {fmt(row['val'])} | "
                     f"{fmt(row['acc'], '{:.1%}')} | {cells[0]} | {cells[1]} | "
                     f"{fmt([f / 1e12 for f in row['flops']], '{:.1f}')} |")
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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(results), 4, figsize=(22, 4.6 * len(results)), squeeze=False)
    for res, (ax_l, ax_a, ax_s, ax_lr) in zip(results, axes):
        colors = {}
        for row in res["rows"]:
            agg = aggregate(row["runs"])
            t = agg["tokens"] / 1e6
            label = f"{row['arm']} (lr {row['lr']:g}, {agg['n']} seed{'s' * (agg['n'] > 1)})"
            line, = ax_l.plot(t, agg["val"][0], label=label)
            colors[row["arm"]] = line.get_color()
            ax_l.fill_between(t, agg["val"][1], agg["val"][2], color=line.get_color(), alpha=0.2)
            ax_a.plot(t, agg["acc"][0], color=line.get_color(), label=label)
            ax_a.fill_between(t, agg["acc"][1], agg["acc"][2], color=line.get_color(), alpha=0.2)
            if row["arm"] != "CLM":  # same-learning-rate CLM curve, thin, for the same-lr comparison
                same = res["by_arm"].get("CLM", {}).get(row["lr"])
                if same and row["lr"] != res["best"].get("CLM"):
                    s = aggregate(same)
                    ax_l.plot(s["tokens"] / 1e6, s["val"][0], ":", color="gray", lw=1,
                              label=f"CLM at SLM's lr {row['lr']:g}")
        for name, style in (("ref", "--"), ("base", ":")):
            ms = [p[name] for p in res["pipes"] if p[name]]
            if ms:
                v = np.mean([m["val"][-1] for m in ms])
                ax_l.axhline(v, ls=style, color="k", lw=1, label=f"{name} model ({v:.3f})")
                ax_a.axhline(np.mean([m["acc"][-1] for m in ms]), ls=style, color="k", lw=1, label=f"{name} model")
        ax_l.set(xlabel="tokens seen (M)", ylabel="held-out loss on clean math", title="held-out loss (best lr per arm)")
        lo = min(min(r["val"]) for r in res["rows"]) if res["rows"] else 0
        ax_l.set_ylim(lo - 0.05, lo + 0.6)
        ax_a.set(xlabel="tokens seen (M)", ylabel="answer accuracy (greedy, exact)", title="held-out accuracy")
        # selection per kind, for the best SLM arm
        slm = [r for r in res["rows"] if r["arm"].startswith("SLM")]
        if slm and not any(slm[0]["runs"][0]["selected"]):
            ax_s.text(0.5, 0.5, "no ground-truth token kinds\n(real data): nothing to show", ha="center",
                      transform=ax_s.transAxes)
        elif slm:
            run = slm[0]["runs"][0]
            kinds = sorted({k for s in run["selected"] for k in s})
            for k in kinds:
                ax_s.plot(run["tokens"][1:] / 1e6, [s.get(k, np.nan) for s in run["selected"][1:]], label=k)
            ax_s.set(xlabel="tokens seen (M)", ylabel="share of the kind's tokens selected", ylim=(-0.02, 1.02),
                     title=f"what {slm[0]['arm']} keeps (seed {run['pipe']['seed']})")
        # final loss against learning rate, every arm
        for arm, lrs in res["by_arm"].items():
            xs = sorted(lrs)
            ys = [np.mean([r["val"][-1] for r in lrs[lr]]) for lr in xs]
            ax_lr.plot(xs, ys, "o-", label=arm, color=colors.get(arm))
        ax_lr.set(xscale="log", xlabel="peak learning rate", ylabel="final held-out loss (mean over seeds)",
                  title="learning-rate sweep")
        for ax in (ax_l, ax_a, ax_s, ax_lr):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(a):
    pipes = find_pipelines(a.out_dir)
    if not pipes:
        rho.fail(f"no pipelines under {a.out_dir}", "run `python train_ref.py && python train_slm.py --ratio 0.6 "
                                                     "&& python train_slm.py --ratio 1.0` first")
    results = summarize(pipes)
    report = [f"found {len(pipes)} pipeline(s): " + "; ".join(
        f"{p['dir']} (seed {p['seed']}: {', '.join(sorted(p['runs'])) or 'no student runs'})" for p in pipes)]
    for res in results:
        arms = {r["arm"] for r in res["rows"]}
        d = res["pipes"][0]["dir"]
        if "CLM" not in arms:
            report.append(f"missing: no CLM baseline in {d}; make it with `python train_slm.py --out_dir {d} --ratio 1.0`")
        if not any(a.startswith("SLM") for a in arms):
            report.append(f"missing: no SLM run in {d}; make it with `python train_slm.py --out_dir {d} --ratio 0.6`")
        report.append(table(res))
        unfinished = [r["path"] for row in res["rows"] for r in row["runs"] if not r["done"]]
        if unfinished:
            report.append(f"unfinished runs (shown as far as they got): {', '.join(unfinished)}")
    text = "\n\n".join(report)
    print(text)
    png = a.png or os.path.join(a.out_dir, "compare.png")
    plot(results, png)
    with open(os.path.join(a.out_dir, "summary.md"), "w") as f:
        f.write(text + "\n")
    print(f"\nwrote {png} and {os.path.join(a.out_dir, 'summary.md')}")


if __name__ == "__main__":
    main(rho.cli(PlotRun, __doc__.split("\n\n")[0].strip()))
