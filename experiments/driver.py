"""The plans of EXPERIMENTS.md: `python experiments/driver.py <plan>` runs its stages of jobs, --jobs at a time on one
thread each, with --resume; a stage that is a function is chosen from the runs before it. Logs: experiments/logs/."""
import argparse
import functools
import glob
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, W4, C = "default", "default-webref4", "default-cheapref"  # default's reference, the web-keeping one, the cheap one
LRS, S3, SEEDS = (1.5e-3, 3e-3, 6e-3), (0, 1, 2), (100, 101)  # students' rates, pipelines' seeds, more data orders
ALL, NOISE = (0, *SEEDS), ("clm", "slm0.6")
HEAD = ("clm", "slm0.6", "refloss0.6", "random0.6", "oracle", "clm-mixhq4", "reflong")  # the headline's arms
RATIO, SOFT = ("slm0.4", "slm0.5", "slm0.7", "slm0.8"), ("slm0.6-soft0.1", "slm0.6-soft0.5")
ARMS = {  # a student's folder: its train_slm.py flags
    "clm": ["--ratio", "1.0"], "slm0.6": ["--ratio", "0.6"], "oracle": ["--select", "oracle"],
    "refloss0.6": ["--ratio", "0.6", "--select", "ref_loss"], "random0.6": ["--ratio", "0.6", "--select", "random"],
    "reflong": ["--ref_long"], "clm-ckpts": ["--ratio", "1.0", "--keep_ckpts"],
    **{f"clm-mixhq{n}": ["--ratio", "1.0", "--mix_hq", str(n)] for n in (2, 4, 8)},
    **{a: ["--ratio", a[3:]] for a in RATIO},
    **{a: ["--ratio", "0.6", "--weighting", "soft", "--temperature", a[-3:]] for a in SOFT}}
HARM, TUNED = ['mix={"math":3,"math_other":3,"math_wrong":3,"structured":1,"prose":1}'], ("10 40", "6e-3 1.2e-2")
CELLS = {  # the map's cells: corpus settings, the reference's epochs and rates swept, whether on default's base
    D: ([], ("4 10 40", "2e-3 6e-3 1.2e-2"), False), C: ([], ("4", "2e-3"), True),
    "cover3": (["hq_families=3"], TUNED, True), "cover5": (["hq_families=5"], TUNED, True),
    "harm": (HARM, TUNED, False), "harm-nocarry": ([*HARM, "carry_slips=false"], TUNED, False),
    "noisy": (['mix={"math":1.5,"math_other":3,"math_wrong":0.4,"structured":2,"prose":3}', "p_header=0.7",
               "p_footer=0.8", "p_gibberish=0.5"], TUNED, False)}


def pipe(name, out, data, seed, *flags):  # a job: its log's name, its done file, its command
    return (f"{name}-pipeline", f"{out}/pipeline.json",
            ["train_ref.py", "--preset", "cpu", "--seed", str(seed), "--data_dir", data, "--out_dir", out, *flags])


def hpipe(name, seed, epochs="40", lrs="1.2e-2", web=0, cell=D, root="headline", base=None):
    """A pipeline in out/<root>/<name>/seed<seed>: on `cell`'s corpus, on `base`'s base (cell's) if not name's own,
    its reference `epochs` at each of `lrs`, keeping web share `web`."""
    base, corpus = base or cell, CELLS[cell][0]
    on = ["--base", f"out/{root}/{base}/seed{seed}/base/ckpt.pt"] if base != name else []
    return pipe(f"{name}{seed}" if root == "headline" else name, f"out/{root}/{name}/seed{seed}",
                f"data/{root}/{cell}{seed}", seed, "--n_evals", "16" if root == "headline" else "8",
                "--eval_problems", "1000", *on, "--ref_epochs", *epochs.split(), "--ref_lr", *lrs.split(),
                *(["--ref_web", str(web)] if web else []), *(["--corpus", *corpus] if corpus else []))


def slm(name, arm, lr, order=0, seed=0):
    """A student of out/headline/<name>/seed<seed> (or of the folder `name`) at rate lr on data order `order`."""
    out = name if "/" in name else f"out/headline/{name}/seed{seed}"
    root, pipeline, seed = out.split("/")[1:]
    tag = pipeline + (seed[-1] if root == "headline" or seed != "seed0" else "")  # seed 0 outside the headline: ""
    folder = arm + (f"-s{order}" if order else "") + f"-lr{lr:g}"  # as train_slm.py names it
    return (f"{tag}-{folder}", f"{out}/{folder}/done.json",
            ["train_slm.py", "--out_dir", out, *ARMS[arm], "--lr", str(lr), *(["--seed", str(order)] if order else [])])


def runs(name, arms, seeds=(0,), orders=(0,)):  # each arm of {arm: rate} in each seed's pipeline, on each order
    return [slm(name, a, x, t, s) for s in seeds for t in orders for a, x in arms.items()]


@functools.cache
def chosen(name):
    """{arm: its rate chosen on seed 0's validation by plot.py}"""
    out = subprocess.run([sys.executable, "plot.py", "--rates", "--out_dir", f"out/headline/{name}/seed0"],
                         stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT).stdout
    rows = [line.split("\t") for line in out.splitlines()]  # label, rate, folder
    return {row[2]: float(row[1]) for row in rows if row[-1] in ARMS}


def widen(name, arms=HEAD):
    """Seed 0: each arm whose chosen rate is the highest (lowest) it ran at, at twice (half) it; CLM and SLM first."""
    jobs = []
    for arm in sorted(chosen(name), key=lambda a: a not in NOISE):
        x = chosen(name)[arm]
        done = glob.glob(f"out/headline/{name}/seed0/{arm}-lr*/done.json")
        tried = sorted(float(p[:-len("/done.json")].rsplit("-lr", 1)[1]) for p in done)
        if arm in arms and len(tried) > 1 and x in (tried[0], tried[-1]):
            jobs.append(slm(name, arm, x * 2 if x == tried[-1] else x / 2))
    return jobs


def headline(arms=HEAD, lrs=LRS, name=D, ref=("40", "1.2e-2"), web=0):
    """3 pipelines, each arm at each rate on seed 0, then at its choice (name: beyond its edge too) on the others."""
    pipes = [hpipe(name, s, *ref, web) for s in S3]
    first = [pipes[:2], pipes[2:] + [slm(name, a, x * 2 if a == "reflong" else x) for a in arms for x in lrs]]
    if name != D:
        return [*first, lambda: widen(name, arms), lambda: runs(name, {a: chosen(name)[a] for a in arms}, S3, ALL)]
    return [*first, lambda: runs(D, {a: x for a, x in chosen(D).items() if a in arms}, (1, 2)),
            lambda: runs(D, {a: chosen(D)[a] for a in NOISE}, S3, SEEDS)]


def when(n, web=False, seed=0):
    """Issue 31: the pipeline of a subset of n problems; seed 0 on the 2,000 cell's base (the same web), others not."""
    out = f"out/when/subset{n}{'-webref4' * web}/seed{seed}"
    base = ["--base", "out/when/subset2000/seed0/base/ckpt.pt"] if seed == 0 and (n != 2000 or web) else []
    ref = ["--ref_web", "4", "--ref_epochs", "40", "--ref_lr", "1.2e-2"] if web else \
        ["--ref_epochs", "10", "40", "--ref_lr", "6e-3", "1.2e-2"]
    data = f"data/when/subset{n}" + (f"-seed{seed}" if seed else "")
    return pipe(f"when{n}{'w' * web}{seed or ''}", out, data, seed, *base, *ref, "--corpus", f"n_ref_train={n}")


def screen(*ns):
    """The pipelines of subsets ns with and without web, then seed 0's students at 3e-3 and 6e-3."""
    students = []
    for n, web in [(n, web) for n in ns for web in (0, 1)]:
        arms = ("slm0.6",) + ("clm-mixhq4",) * (not web) + ("clm", "oracle") * (n == 2000 and not web)
        students += [slm(f"out/when/subset{n}{'-webref4' * web}/seed0", a, x) for a in arms for x in (3e-3, 6e-3)]
    return [[when(n, w) for w in (0, 1) for n in ns if (n, w) != (2000, 0)], students]


def width(w, web=False, seed=0):
    """Issue 31: a reference of width w, from its own base on the 2,000 cell's web, guiding that cell's students (seed
    0: the base of the subset-only pipeline; another seed: its own, in the web-keeping pipeline)."""
    out = f"out/when/subset2000-ref{w}{'-webref4' * web}/seed{seed}"
    small = f"out/when/subset2000-ref{w}/seed0/base/ckpt.pt"
    shape = ["--n_embd", str(w), "--n_head", str(w // 16)]
    ref = [*(["--base", small] if seed == 0 else shape), "--ref_web", "4", "--ref_epochs", "40", "--ref_lr"] if web \
        else [*shape, "--ref_epochs", "10", "40", "--ref_lr", "6e-3"]
    data = "data/when/subset2000" + (f"-seed{seed}" if seed else "")
    return pipe(f"width{w}{'w' * web}{seed or ''}", out, data, seed, *ref, "1.2e-2", "2.4e-2", "--student_base",
                f"out/when/subset2000{'-webref4' * bool(seed)}/seed{seed}/base/ckpt.pt", "--corpus", "n_ref_train=2000")


def budget(m=10, pages=80_000):
    """Issue 31: CLM and SLM 0.6 of m million web tokens (at the 2,000 cell's rate, 3e-3) on a web of `pages` pages,
    with its own base and the web-keeping reference (the demo's)."""
    out = f"out/when/budget{m}m-webref4/seed0"
    ref = ["--corpus", f"n_web={pages}", "--ref_web", "4", "--ref_epochs", "40", "--ref_lr", "1.2e-2"]
    students = [(name, done, [*cmd, "--max_tokens", str(m * 10**6)]) for name, done, cmd in
                (slm(out, a, 3e-3) for a in ("slm0.6", "clm"))]
    return [[pipe(f"budget{m}m", out, f"data/when/budget{m}m", 0, *ref)], students]


EDGE = [f"{D}-refedge{i}" for i in range(4)]  # seed 0's references beyond the corner
W1000 = {"slm0.6": 3e-3, "clm": 3e-3, "clm-mixhq4": 3e-3, "oracle": 6e-3}  # seed 0's choices (out/results/when.md)
LOST, HN, HN_RATES = {"clm": 6e-3, "random0.6": 3e-3}, "harm-nocarry", dict.fromkeys(NOISE, 3e-3)
PLANS = {  # plan: its stages (a stage: its jobs, or a function choosing them from the runs before)
    "headline-default": headline,
    "edge-default": lambda: [lambda: widen(D), *headline()[2:]],  # again until it has nothing to run
    "noise-default": lambda: [lambda: runs(D, {a: chosen(D)[a] for a in ("refloss0.6", "clm-mixhq4", "oracle")},
                                           S3, SEEDS)],
    "extras-default": lambda: [lambda: runs(D, dict.fromkeys(RATIO + SOFT, chosen(D)["slm0.6"]))],
    "rerun-default": lambda: headline(NOISE, (*LRS, 1.2e-2)),
    "hq-default": lambda: [runs(D, {f"clm-mixhq{n}": 6e-3 for n in (2, 4, 8)}), runs(D, {"clm-mixhq4": 6e-3}, (1, 2)),
                           runs(D, {"clm-mixhq4": 6e-3}, S3, SEEDS)],  # x4 at 6e-3: seed 0's choice
    "reflong-default": lambda: [[slm(D, "reflong", x) for x in (1.2e-2, 2.4e-2, 4.8e-2, 9.6e-2)],
                                lambda: runs(D, {"reflong": chosen(D)["reflong"]}, (1, 2)),
                                lambda: runs(D, {"reflong": chosen(D)["reflong"]}, S3, SEEDS)],
    "cheapref-default": lambda: [[hpipe(C, s, "4", "2e-3") for s in S3],
                                 [slm(C, "clm", 6e-3), slm(C, "slm0.6", 3e-3), slm(C, "slm0.6", 6e-3)],
                                 lambda: runs(C, chosen(C), (1, 2))],
    "oracle-default": lambda: [runs(D, {"oracle": 1.5e-3, "clm": 6e-3}, S3, ALL)],
    "lost-default": lambda: [[hpipe(D, 0), hpipe(D, 1)], [hpipe(D, 2), *runs(D, LOST, (0, 1), ALL)],
                             runs(D, LOST, (2,), ALL)],
    "refloss_floor-default": lambda: [runs(D, {"refloss0.6": 6e-3}, S3, ALL)],
    "categories-default": lambda: [runs(D, {"clm-ckpts": 6e-3})],
    "webref-default": lambda: [[hpipe(f"{D}-webref{n}", 0, web=n) for n in (1, 4)],
                               [slm(f"{D}-webref{n}", "slm0.6", 6e-3) for n in (1, 4)],
                               [hpipe(W4, 1, web=4), hpipe(W4, 2, web=4), slm(W4, "clm", 6e-3),
                                slm(W4, "slm0.6", 3e-3), slm(W4, "slm0.6", 1.2e-2)],
                               runs(W4, dict.fromkeys(NOISE, 6e-3), (1, 2)),  # N = 4 at 6e-3: seed 0's choice
                               [*runs(W4, {"slm0.6": 6e-3}, S3, SEEDS), *runs(W4, {"refloss0.6": 6e-3}, S3),
                                slm(W4, "refloss0.6", 3e-3), slm(W4, "refloss0.6", 1.5e-3)],
                               lambda: runs(W4, {"refloss0.6": chosen(W4)["refloss0.6"]}, (1, 2))],
    "webref_edge-default": lambda: [[hpipe(f"{D}-webref{n}", 0, web=n) for n in (4, 16)],
                                    [slm(f"{D}-webref{n}", "slm0.6", 6e-3) for n in (4, 16)]],
    "webref_grid-default": lambda: [[hpipe(D, 0)], [hpipe(f"{W4}-{e}ep{x}", 0, e, x, 4)
                                                    for e in ("40", "80") for x in ("1.2e-2", "2.4e-2")],
                                    [j for s in (0, 100) for j in (slm(D, "clm", 6e-3, s), *(  # 80: its choice
                                        slm(f"{W4}-{e}ep1.2e-2", "slm0.6", 6e-3, s) for e in ("40", "80")))]],
    "webref_tuned-default": lambda: headline(["slm0.6"], (3e-3, 6e-3, 1.2e-2), f"{W4}-tuned", ("80", "1.2e-2"), 4),
    "webref_more-default": lambda: [[hpipe(W4, 0, web=4), *(hpipe(f"{W4}-{e}ep{x}", 0, e, x, 4) for e, x in (
                                    ("80", "6e-3"), ("40", "6e-3"), ("40", "2.4e-2"), ("20", "1.2e-2")))],
                                    runs(W4, {"refloss0.6": 3e-3})],
    "refedge-default": lambda: [[hpipe(EDGE[0], 0, "80", "1.2e-2 2.4e-2"), hpipe(EDGE[1], 0, "40", "2.4e-2")],
                                runs(EDGE[0], dict.fromkeys(NOISE, 6e-3))],
    "refedge_more-default": lambda: [[hpipe(EDGE[2], 0, "160", "2.4e-2"), hpipe(EDGE[3], 0, "80", "4.8e-2")]],
    "refcurve-default": lambda: [[hpipe(EDGE[1], 0, "40", "2.4e-2")], [slm(e, "slm0.6", 6e-3) for e in EDGE[1:]]],
    "refedge_tuned-default": lambda: headline(["slm0.6", "refloss0.6"], (3e-3, 6e-3, 1.2e-2), f"{D}-refedge-tuned",
                                              ("80", "2.4e-2")),
    "ratios-default": lambda: [lambda: runs(D, dict.fromkeys(RATIO, chosen(D)["slm0.6"]), (1, 2)) +
                               runs(W4, dict.fromkeys(RATIO, 6e-3)),
                               lambda: runs(D, dict.fromkeys(SOFT, chosen(D)["slm0.6"]), (1, 2))],
    "ratios_webref-default": lambda: [[hpipe(W4, 1, web=4), hpipe(W4, 2, web=4)],
                                      runs(W4, dict.fromkeys(RATIO, 6e-3), (1, 2))],
    "regimes": lambda: [  # the map: each cell's pipeline (default's base first), CLM and SLM at 2 rates
        [hpipe(c, 0, *ref, cell=c, root="regimes") for c, (_, ref, on) in CELLS.items() if not on],
        [hpipe(c, 0, *ref, cell=c, root="regimes", base=D) for c, (_, ref, on) in CELLS.items() if on],
        [slm(f"out/regimes/{c}/seed0", a, x) for c in CELLS for a in NOISE[c == C:] for x in LRS[:2]]],
    "when": lambda: [[when(2000)], *screen(2000, 250), *screen(1000, 500)],  # issue 31: the subset's size
    "width": lambda: [[width(32), width(16)], [width(32, 1), width(16, 1)],  # issue 31: a small reference
                      [slm(f"out/when/subset2000-ref{w}{'-webref4' * web}/seed0", "slm0.6", x)
                       for w in (32, 16) for web in (0, 1) for x in (3e-3, 6e-3)]],
    "width3": lambda: [[when(2000, 1, s) for s in (1, 2)], [width(32, 1, s) for s in (1, 2)],  # its best cell
                       [*(slm(f"out/when/subset2000-ref32-webref4/seed{s}", a, x) for s in S3 for a, x in
                          (("slm0.6", 3e-3), ("clm", 3e-3), ("clm-mixhq4", 6e-3))),
                        *(slm(f"out/when/subset2000-webref4/seed{s}", "slm0.6", 3e-3) for s in (1, 2))]],
    "budget": budget,  # issue 31: a 10M-token student
    "when3": lambda: [[when(1000, 1, 1), when(1000, 1, 2)],  # the best cell in 3 pipelines at seed 0's choices
                      *[[slm(f"out/when/subset1000-webref4/seed{s}", a, x, t) for s in S3 for a, x in W1000.items()
                         if t == 0 or a != "oracle"] for t in (0, *SEEDS)]],
    "pair-harm-nocarry": lambda: [[hpipe(HN, 0, cell=HN), hpipe(HN, 1, cell=HN)],  # the map's cell at its rate
                                  [hpipe(HN, 2, cell=HN), *runs(HN, HN_RATES, (0, 1))], runs(HN, HN_RATES, (2,))],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("plan", choices=PLANS, help="which experiment")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time (this machine: 2 cores)")
    ap.add_argument("--dry", action="store_true", help="list the jobs to do; run nothing")
    args = ap.parse_args()
    os.chdir(ROOT)  # the jobs' paths are relative to the repository
    logs = f"experiments/logs/{args.plan}"
    os.makedirs(logs, exist_ok=True)

    def done(job):  # a student with its done.json; a pipeline whose pipeline.json names a reference with scores
        if not os.path.exists(job[1]):
            return False
        return job[1].endswith("done.json") or os.path.exists(json.load(open(job[1]))["scores"])

    def run(job):  # one job on one thread with --resume, appending to its log; its exit status
        with open(f"{logs}/{job[0]}.log", "a") as log:
            print(f"\n$ {' '.join(job[2])} --resume", file=log, flush=True)
            t0 = time.time()
            rc = subprocess.call([sys.executable, *job[2], "--resume"], stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, OMP_NUM_THREADS="1"))
        print(f"  {job[0]}: exit {rc} after {time.time() - t0:.0f}s", flush=True)
        return rc
    for i, stage in enumerate(PLANS[args.plan]()):
        if callable(stage) and args.dry:
            print(f"stage {i}: chosen when the stages before it are done")
            continue
        chosen.cache_clear()  # the runs have changed
        stage = stage() if callable(stage) else stage
        todo = [j for j in stage if not done(j)]
        print(f"stage {i}: {len(todo)} job(s) to run of {len(stage)}", flush=True)
        if args.dry:
            print("".join(f"  todo: {' '.join(j[2])}\n" for j in todo), end="")
        elif any(list(ThreadPoolExecutor(args.jobs).map(run, todo))):  # all of a stage before the next is chosen
            sys.exit(f"stage {i}: a job failed (logs: {logs}); fix: see its log, then run the plan again")


if __name__ == "__main__":
    main()
