"""
merge_arms.py -- the students of other pipeline folders on the same bases and corpora (another reference: e.g.
driver.py's webref or cheapref plans) as arms of one headline table, so that every arm is paired with every other on
the same test problems and pipelines, with all of plot.py's tables. Their CLM runs must equal the headline's
(the same base, data and seed: CLM does not use the reference); they are checked, then left out.

  python experiments/merge_arms.py out/headline/default out/headline/default-webref4="web-keeping ref" \
      --png out/results/headline-webref.png --arms CLM "SLM 0.6" "SLM 0.6 (web-keeping ref)" ...
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import plot  # noqa: E402
from infra import fail  # noqa: E402


def merge(main, others):
    """main's students on the web (its first group: not --sft's), plus each other folder's runs but CLM and the base,
    named '<arm> (<label>)' and filed under main's pipeline of the same seed (each keeps its own pipeline's costs)."""
    runs = plot.find_runs(main)
    runs = [r for r in runs if r["group"] == runs[0]["group"]]
    pipes, clms = {r["seed"]: r["pipe"]["dir"] for r in runs}, {(r["seed"], r["lr"]): r for r in runs
                                                                    if r["arm"] == "CLM" and r["done"]}
    for folder, label in others:
        for run in plot.find_runs(folder):
            if run["arm"] == "CLM":
                mine = clms.get((run["seed"], run["lr"]))
                if mine is None or not all(np.array_equal(run[k], mine[k]) for k in ("acc", "answer", "val")):
                    fail(f"{run['path']} differs from {main}'s CLM of seed {run['seed']} at lr {run['lr']:g} (or "
                         "it has none)", "merge folders on the same bases and corpora, run at one thread")
            elif run["arm"] != "base" and run["seed"] in pipes:
                arm, seed, rest = run["arm"].partition(plot.STUDENT_SEED)  # the label before a student seed's
                runs.append({**run, "arm": f"{arm} ({label}){seed}{rest}", "group": runs[0]["group"],
                             "pipe": {**run["pipe"], "dir": pipes[run["seed"]]}})
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("main", help="the headline's folder of pipelines (seed<N> below it)")
    ap.add_argument("others", nargs="+", help="folder=label: another folder of pipelines on the same bases")
    ap.add_argument("--png", required=True, help="where to write the figure; the tables go beside it (.md)")
    ap.add_argument("--arms", nargs="+", help="only these arms (the merged ones by their new names), as plot.py --arms")
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    runs = merge(args.main, [o.split("=", 1) for o in args.others])
    plot.write_report(plot.only_arms(runs, args.arms) if args.arms else runs, args.png)


if __name__ == "__main__":
    main()
