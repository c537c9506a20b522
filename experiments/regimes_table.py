"""
regimes_table.py -- the map of regimes as one table, from the runs of `python experiments/driver.py regimes`:
per cell (a corpus and reference setting, seed 0), the reference chosen by its sweep, CLM and SLM 0.6 each at its
better rate, all on the VALIDATION problems (the screen chooses; the test problems wait for the chosen regime).
Where the high-quality subset covers only some families, the validation answer loss is also given on the covered
and the uncovered families apart (computed from the runs' final checkpoints).

  python experiments/regimes_table.py                 # prints the table, writes out/results/regimes.md
"""
import glob
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import rho  # noqa: E402
from infra import load_checkpoint, read_json  # noqa: E402


def val_families(seed, n):
    """The family of each validation problem, in val.jsonl's order (drawn again as data.documents draws them)."""
    keys = data.key_splits(seed)["ref_val"]
    return [i for i, _ in data.distinct_problems(random.Random(f"rho-{seed}-ref_val"), keys, n)]


def split_losses(ckpt_path, data_dir, covered):
    """Validation answer loss of a checkpoint on the covered and the uncovered families."""
    meta, tok = data.read_meta(data_dir), data.Tokenizer.from_meta(data_dir)
    probs = data.encode_problems(tok, data.load_eval(data_dir, "val"))
    fams = val_families(meta["data_config"]["seed"], len(probs))
    model = rho.GPT.from_checkpoint(load_checkpoint(ckpt_path)).eval()
    return [rho.eval_answer_loss(model, [p for p, f in zip(probs, fams) if (f < covered) == side], "cpu")
            for side in (True, False)]


def best(cell_dir, arm):
    """(lr, summary) of an arm's finished run with the lowest final validation answer loss, or None."""
    runs = [(read_json(os.path.join(d, "config.json"))["lr"], read_json(os.path.join(d, "done.json")), d)
            for d in glob.glob(os.path.join(cell_dir, f"{arm}-lr*")) if os.path.exists(os.path.join(d, "done.json"))]
    return min(runs, key=lambda r: r[1]["val_answer_loss"]) if runs else None


def row(name, cell_dir):
    pipe = read_json(os.path.join(cell_dir, "pipeline.json"))
    if not pipe:
        return None
    dcfg = data.read_meta(pipe["data_dir"])["data_config"]
    ref = pipe["ref_sweep"][os.path.dirname(pipe["ref"])]
    clm, slm = best(cell_dir, "clm"), best(cell_dir, "slm0.6")
    if name == "default-cheapref":  # its CLM is the default cell's (the same base and web corpus)
        clm = best(cell_dir.replace("default-cheapref", "default"), "clm")
    cols = [name, f"{ref['ref_epochs']:g} ep, {ref['ref_lr']:g} ({len(pipe['ref_sweep'])} tried): "
                  f"{ref['val_answer_loss']:.4f}"]
    for run in (clm, slm):
        cols.append(f"{run[1]['val_answer_loss']:.4f} ({run[0]:g})" if run else "-")
    cols.append(f"{slm[1]['val_answer_loss'] - clm[1]['val_answer_loss']:+.4f}" if clm and slm else "-")
    k = dcfg.get("hq_families", 10)
    if k < 10 and clm and slm:
        parts = [split_losses(os.path.join(r[2], "ckpt.pt"), pipe["data_dir"], k) for r in (clm, slm)]
        parts.append(split_losses(pipe["ref"], pipe["data_dir"], k))
        cols.append(" / ".join(f"{a:.3f}, {b:.3f}" for a, b in parts))
    else:
        cols.append("")
    return "| " + " | ".join(cols) + " |"


def main():
    lines = ["regimes (seed 0, cpu preset, 3M student tokens; validation answer loss, lower is better; each arm at "
             "the better of 1.5e-3 and 3e-3):", "",
             "| cell | reference chosen: epochs, lr (tried): its val answer loss | CLM (lr) | SLM 0.6 (lr) | SLM - CLM "
             "| covered, uncovered families: CLM / SLM / reference |", "|---|---|---|---|---|---|"]
    for cell_dir in sorted(glob.glob(os.path.join(ROOT, "out", "regimes", "*", "seed0"))):
        r = row(os.path.basename(os.path.dirname(cell_dir)), cell_dir)
        if r:
            lines.append(r)
    sweep = read_json(os.path.join(ROOT, "out", "regimes", "default", "seed0", "pipeline.json")).get("ref_sweep", {})
    if sweep:
        lines += ["", "the reference's sweep in the default cell (final validation answer loss, whole-text validation "
                  "loss):", "", "| epochs | lr | val answer loss | val loss |", "|---|---|---|---|"]
        lines += [f"| {r['ref_epochs']:g} | {r['ref_lr']:g} | {r['val_answer_loss']:.4f} | {r['val_loss']:.4f} |"
                  for r in sorted(sweep.values(), key=lambda r: (r["ref_epochs"], r["ref_lr"]))]
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.join(ROOT, "out", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "out", "results", "regimes.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
