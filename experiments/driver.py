"""
driver.py -- run an experiment of EXPERIMENTS.md in resumable batches: its runs in stages (pipelines, then their
students), at most --jobs at a time, each process on one thread (OMP_NUM_THREADS=1). Every job is one run folder:
every job runs with --resume: a finished run is reused, a killed one continues from its last checkpoint, a new one
starts, so the same command picks up where a stopped session left off.

  python experiments/driver.py regimes            # the map of regimes (seed 0, validation), 2 jobs at a time
  python experiments/driver.py regimes --dry      # print the jobs and which are done
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


def regimes():
    """The map: each cell a pipeline (corpus, base, reference) at the cpu preset, seed 0, and CLM and SLM 0.6 at
    two rates. The reference is tuned on validation in every cell (SWEEP_REF in the default cell, the strong
    corner of it elsewhere), but in default-cheapref: the demo's cheap one (4 epochs at 2e-3), on the same base."""
    base = "out/regimes/default/seed0/base/ckpt.pt"  # one base for the cells whose web corpus is the default's
    cells = {  # name: (corpus settings, extra train_ref flags)
        "default": ([], SWEEP_REF),
        "default-cheapref": ([], ["--base", base, "--ref_epochs", "4", "--ref_lr", "2e-3"]),
        "cover3": (["hq_families=3"], ["--base", base, *TUNED_REF]),
        "cover5": (["hq_families=5"], ["--base", base, *TUNED_REF]),
        "harm": (HARM, TUNED_REF),
        "harm-nocarry": ([*HARM, "carry_slips=false"], TUNED_REF),
        "noisy": (NOISY, TUNED_REF),
    }
    jobs = []
    for name, (corpus, extra) in cells.items():
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


PLANS = {"regimes": regimes}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("plan", choices=PLANS, help="which experiment")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time (this machine: 2 cores)")
    ap.add_argument("--dry", action="store_true", help="list the jobs and which are done; run nothing")
    args = ap.parse_args()
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
                running.append((name, proc, time.time()))
            if args.dry:
                print("\n".join(f"  todo: {j[1]}" for j in todo))
                break
            time.sleep(5)
            for r in [r for r in running if r[1].poll() is not None]:
                running.remove(r)
                print(f"  {r[0]}: exit {r[1].returncode} after {time.time() - r[2]:.0f}s", flush=True)


def done(job):
    target = job[2]
    if target.endswith("pipeline.json"):  # a pipeline is done when its file names a reference with scores
        pipe = json.load(open(target)) if os.path.exists(target) else {}
        return bool(pipe) and os.path.exists(pipe["scores"])
    return os.path.exists(target)


if __name__ == "__main__":
    main()
