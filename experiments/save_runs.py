"""
save_runs.py -- keep an experiment's record in the repository: every run's config.json, log.jsonl and done.json,
every pipeline.json, and the meta.json of the corpora they name (no checkpoints, no score files), copied under
experiments/runs/ with their paths. The tables can then be made again without training anything:

  python experiments/save_runs.py out/headline/default          # copy
  cp -r experiments/runs/out experiments/runs/data .             # put them back (plot.py reads out/ and data/)
  python plot.py --out_dir out/headline/default --png out/results/headline-default.png
"""
import glob
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(folders):
    os.chdir(ROOT)
    files = set()
    for folder in folders:
        for name in ("config.json", "log.jsonl", "done.json", "pipeline.json"):
            files.update(glob.glob(os.path.join(folder, "**", name), recursive=True))
        for pipe in glob.glob(os.path.join(folder, "**", "pipeline.json"), recursive=True):
            files.add(os.path.join(json.load(open(pipe))["data_dir"], "meta.json"))
    for path in sorted(files):
        dest = os.path.join(ROOT, "experiments", "runs", os.path.relpath(path, ROOT))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(path, dest)
    print(f"copied {len(files)} file(s) under experiments/runs/")


if __name__ == "__main__":
    main(sys.argv[1:])
