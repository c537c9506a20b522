"""
driver.py -- run an experiment of EXPERIMENTS.md in resumable batches: its runs in stages (pipelines, then their
students), at most --jobs at a time, each process on one thread (OMP_NUM_THREADS=1). Every job is one run folder:
every job runs with --resume: a finished run is reused, a killed one continues from its last checkpoint, a new one
starts, so the same command picks up where a stopped session left off.

  python experiments/driver.py regimes            # the map of regimes (seed 0, validation), 2 jobs at a time
  python experiments/driver.py regimes --dry      # print the jobs and which are done
  python experiments/driver.py headline-noisy     # a cell in 3 pipelines, every arm at 3 rates
Logs: experiments/logs/<plan>/<job>.log. Then: python plot.py --out_dir out/regimes
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCREEN = dict(lrs=(1.5e-3, 3e-3), ratios=(1.0, 0.6))
SWEEP_REF = ["--ref_epochs", "4", "10", "40", "--ref_lr", "2e-3", "6e-3", "1.2e-2"]  # the default cell's
TUNED_REF = ["--ref_epochs", "10", "40", "--ref_lr", "6e-3", "1.2e-2"]  # the other cells': the strong corner
NOISY = ['mix={"math":1.5,"math_other":3,"math_wrong":0.4,"structured":2,"prose":3}', "p_header=0.7",
         "p_footer=0.8", "p_gibberish=0.5"]
HARM = ['mix={"math":3,"math_other":3,"math_wrong":3,"structured":1,"prose":1}']


CELLS = {  # name: (corpus settings, extra train_ref flags); cells on the default web corpus share its base
    "default": ([], SWEEP_REF),
    "default-cheapref": ([], ["--base", "out/regimes/default/seed0/base/ckpt.pt", "--ref_epochs", "4", "--ref_lr",
                              "2e-3"]),
    "cover3": (["hq_families=3"], ["--base", "out/regimes/default/seed0/base/ckpt.pt", *TUNED_REF]),
    "cover5": (["hq_families=5"], ["--base", "out/regimes/default/seed0/base/ckpt.pt", *TUNED_REF]),
    "harm": (HARM, TUNED_REF),
    "harm-nocarry": ([*HARM, "carry_slips=false"], TUNED_REF),
    "noisy": (NOISY, TUNED_REF),
}
ARMS = {  # folder: train_slm flags -- every arm of the headline, each swept over HEADLINE_LRS
    "clm": ["--ratio", "1.0"], "slm0.6": ["--ratio", "0.6"], "refloss0.6": ["--ratio", "0.6", "--select", "ref_loss"],
    "random0.6": ["--ratio", "0.6", "--select", "random"], "oracle": ["--select", "oracle"],
    "clm-mixhq4": ["--ratio", "1.0", "--mix_hq", "4"], "reflong": ["--ref_long"],
    "slm0.6-mixhq4-online": ["--ratio", "0.6", "--mix_hq", "4", "--ref_mode", "online"]}
HEADLINE_LRS = (1.5e-3, 3e-3, 6e-3)


def headline(cell):
    """A cell in 3 pipelines (seeds 0-2; the cells that share a base get their own per seed), 16 evaluations on
    1,000 test problems, every arm of ARMS at every rate of HEADLINE_LRS (the reference fine-tuned longer at twice
    them, as its loss keeps falling with the rate)."""
    corpus, extra = CELLS[cell]
    extra = [x for i, x in enumerate(extra) if x != "--base" and (i == 0 or extra[i - 1] != "--base")]
    jobs = []
    for seed in (0, 1, 2):
        out = f"out/headline/{cell}/seed{seed}"
        jobs.append((0, f"{cell}{seed}-pipeline", f"{out}/pipeline.json",
                     ["train_ref.py", "--preset", "cpu", "--seed", str(seed), "--data_dir",
                      f"data/headline/{cell}{seed}", "--out_dir", out, "--n_evals", "16", "--eval_problems", "1000",
                      *extra] + (["--corpus", *corpus] if corpus else [])))
        for arm, flags in ARMS.items():
            for lr in (2 * x for x in HEADLINE_LRS) if arm == "reflong" else HEADLINE_LRS:
                jobs.append((1, f"{cell}{seed}-{arm}-lr{lr:g}", f"{out}/{arm}-lr{lr:g}/done.json",
                             ["train_slm.py", "--out_dir", out, *flags, "--lr", str(lr)]))
    return jobs


def regimes():
    """The map: each cell a pipeline (corpus, base, reference) at the cpu preset, seed 0, and CLM and SLM 0.6 at
    two rates. The reference is tuned on validation in every cell (SWEEP_REF in the default cell, the strong
    corner of it elsewhere), but in default-cheapref: the demo's cheap one (4 epochs at 2e-3), on the same base."""
    jobs = []
    for name, (corpus, extra) in CELLS.items():
        out = f"out/regimes/{name}/seed0"
        jobs.append((1 if "--base" in extra else 0, f"{name}-pipeline", f"{out}/pipeline.json",
                     ["train_ref.py", "--preset", "cpu", "--seed", "0", "--data_dir", f"data/regimes/{name}0",
                      "--out_dir", out, "--n_evals", "8", "--eval_problems", "1000", *extra]
                     + (["--corpus", *corpus] if corpus else [])))
        for ratio in SCREEN["ratios"] if name != "default-cheapref" else (0.6,):  # its CLM is default's
            for lr in SCREEN["lrs"]:
                folder = f"{'clm' if ratio == 1 else f'slm{ratio:g}'}-lr{lr:g}"
                jobs.append((2, f"{name}-{folder}", f"{out}/{folder}/done.json",
                             ["train_slm.py", "--out_dir", out, "--ratio", str(ratio), "--lr", str(lr)]))
    return jobs


PLANS = {"regimes": regimes, **{f"headline-{c}": (lambda c=c: headline(c)) for c in CELLS}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("plan", choices=PLANS, help="which experiment")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time (this machine: 2 cores)")
    ap.add_argument("--dry", action="store_true", help="list the jobs and which are done; run nothing")
    args = ap.parse_args()
    os.chdir(ROOT)  # the jobs' paths are relative to the repository
    jobs, logs = PLANS[args.plan](), os.path.join(ROOT, "experiments", "logs", args.plan)
    os.makedirs(logs, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for stage in sorted({j[0] for j in jobs}):
        todo = [j for j in jobs if j[0] == stage and not done(j)]
        print(f"stage {stage}: {len(todo)} job(s) to run of {sum(j[0] == stage for j in jobs)}", flush=True)
        running = []
        while todo or running:
            while todo and len(running) < args.jobs and not args.dry:
                _, name, target, argv = todo.pop(0)
                cmd = [sys.executable, os.path.join(ROOT, argv[0]), *argv[1:], "--resume"]
                log = open(os.path.join(logs, f"{name}.log"), "a")
                log.write(f"\n$ {' '.join(cmd)}\n")
                log.flush()
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
                running.append((name, proc, time.time(), log))
            if args.dry:
                print("\n".join(f"  todo: {j[1]}" for j in todo))
                break
            time.sleep(5)
            for r in [r for r in running if r[1].poll() is not None]:
                running.remove(r)
                r[3].close()
                print(f"  {r[0]}: exit {r[1].returncode} after {time.time() - r[2]:.0f}s", flush=True)


def done(job):
    target = job[2]
    if target.endswith("pipeline.json"):  # a pipeline is done when its file names a reference with scores
        pipe = json.load(open(target)) if os.path.exists(target) else {}
        return bool(pipe) and os.path.exists(pipe["scores"])
    return os.path.exists(target)


if __name__ == "__main__":
    main()
