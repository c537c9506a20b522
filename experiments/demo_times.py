"""
demo_times.py -- where the demo's time goes, from a pipeline folder's logs (e.g. the out/ that fresh-run leaves):
each run's training and evaluation seconds, the scoring pass, and what is left of a measured total (install,
interpreter start-ups, the corpus, the plot).

  python experiments/demo_times.py out [TOTAL_SECONDS]
"""
import json
import os
import sys

folder, total = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None
rows = []
for run in ("base", "ref", "slm0.6", "clm"):
    with open(os.path.join(folder, run, "log.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    evals = sum("val_loss" in r for r in recs)
    rows.append((f"{run}: training, {recs[-1]['tokens'] / 1e6:.2f}M tokens", recs[-1]["time"] - recs[-1]["eval_time"]))
    rows.append((f"{run}: {evals} evaluations", recs[-1]["eval_time"]))
stamp = json.load(open(os.path.join(folder, "ref", "scores.bin.json")))
rows.insert(4, (f"scoring {stamp['length'] / 1e6:.2f}M tokens", stamp["length"] / stamp["tok_s"]))
if total:
    rows.append(("the rest: install, start-ups, corpus, plot", total - sum(t for _, t in rows)))
for name, t in rows + ([("total", total)] if total else []):
    print(f"| {name} | {t:.0f} s |")
