"""driver.py -- the plans of EXPERIMENTS.md: `python experiments/driver.py <plan>` runs its stages of jobs, --jobs at
a time on one thread each, with --resume (a finished run is reused, a killed one continues). A stage that is a
function is chosen from the runs before it (each arm's rate chosen on seed 0's validation by plot.py, or the rate
beyond the edge of its sweep). Logs: experiments/logs/<plan>/<job>.log."""
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
RATES = ["plot.py", "--rates"]  # "<arm>\t<lr>\t<folder>" a line: each arm's rate chosen on validation
hout = "out/headline/{}/seed{}".format  # a pipeline's folder: hout(name, seed)
tag = lambda out: out.split("/")[2] + out[-1] * ("/headline/" in out or out[-1] != "0")  # noqa: E731  # <name><seed>
D, LRS, SEEDS, NOISE = "default", (1.5e-3, 3e-3, 6e-3), (100, 101), ("clm", "slm0.6")  # SEEDS: data orders
S3, ALL, W4, C = (0, 1, 2), (0, *SEEDS), f"{D}-webref4", f"{D}-cheapref"  # W4: the web-keeping reference
EDGE, LOST = [f"{D}-refedge{i}" for i in range(4)], {"clm": 6e-3, "random0.6": 3e-3}  # seed 0's refs; plan lost
HN, PAIR = "harm-nocarry", dict.fromkeys(NOISE, 3e-3)  # plan pair-harm-nocarry
HARM, TUNED = ['mix={"math":3,"math_other":3,"math_wrong":3,"structured":1,"prose":1}'], ("10 40", "6e-3 1.2e-2")
CELLS = {  # the map's cells: (corpus settings, the reference's epochs and rates swept, on default's base)
    D: ([], ("4 10 40", "2e-3 6e-3 1.2e-2"), 0), "default-cheapref": ([], ("4", "2e-3"), 1),
    "cover3": (["hq_families=3"], TUNED, 1), "cover5": (["hq_families=5"], TUNED, 1), "harm": (HARM, TUNED, 0),
    "harm-nocarry": ([*HARM, "carry_slips=false"], TUNED, 0), "noisy": ([
        'mix={"math":1.5,"math_other":3,"math_wrong":0.4,"structured":2,"prose":3}', "p_header=0.7", "p_footer=0.8",
        "p_gibberish=0.5"], TUNED, 0)}
HEAD = ("clm", "slm0.6", "refloss0.6", "random0.6", "oracle", "clm-mixhq4", "reflong")  # the headline's arms
RATIO, SOFT = ("slm0.4", "slm0.5", "slm0.7", "slm0.8"), ("slm0.6-soft0.1", "slm0.6-soft0.5")
ARMS = {  # folder: train_slm.py flags
    "clm": ["--ratio", "1.0"], "slm0.6": ["--ratio", "0.6"], "refloss0.6": ["--ratio", "0.6", "--select", "ref_loss"],
    "random0.6": ["--ratio", "0.6", "--select", "random"], "oracle": ["--select", "oracle"], "reflong": ["--ref_long"],
    **{f"clm-mixhq{n}": ["--ratio", "1.0", "--mix_hq", str(n)] for n in (2, 4, 8)},
    **{a: ["--ratio", a[3:]] for a in RATIO}, "clm-ckpts": ["--ratio", "1.0", "--keep_ckpts"],
    **{a: ["--ratio", "0.6", "--weighting", "soft", "--temperature", a[-3:]] for a in SOFT}}


def hpipe(name, seed, ref=("40", "1.2e-2"), *flags, cell=D, root="headline", base=""):
    """A job (name, its done file, command): a pipeline in out/<root>/<name>/seed<seed>, `ref`: (epochs, rates)."""
    out, corpus, evals = f"out/{root}/{name}/seed{seed}", CELLS[cell][0], "16" if root == "headline" else "8"
    base = base or f"out/{root}/{cell}/seed{seed}/base/ckpt.pt" * (name != cell)  # another name: the cell's base
    return (f"{tag(out)}-pipeline", f"{out}/pipeline.json", ["train_ref.py", "--preset", "cpu", "--seed", str(seed),
            "--data_dir", f"data/{root}/{cell}{seed}", "--out_dir", out, "--n_evals", evals, "--eval_problems", "1000",
            *["--base", base] * bool(base), "--ref_epochs", *ref[0].split(), "--ref_lr", *ref[1].split(), *flags,
            *["--corpus", *corpus] * bool(corpus)])


def slm(name, seed, arm, lr, s=0):
    """A student in out/headline/<name>/seed<seed> (or the folder `name`) at rate lr, on data order s if not 0, in
    the folder train_slm.py names it."""
    out, folder = name if "/" in name else hout(name, seed), arm + f"-s{s}" * bool(s) + f"-lr{lr:g}"
    return (f"{tag(out)}-{folder}", f"{out}/{folder}/done.json",
            ["train_slm.py", "--out_dir", out, *ARMS[arm], "--lr", str(lr), *["--seed", str(s)] * bool(s)])


def runs(name, arms, seeds=(0,), orders=(0,)):
    """Each arm of `arms` ({arm: rate}) in the pipeline of each of `seeds`, on each data order (0: the pipeline's)."""
    return [slm(name, s, a, x, t) for s in seeds for t in orders for a, x in arms.items()]


@functools.cache
def chosen(name):
    """{arm of ARMS: its rate chosen on seed 0's validation in out/headline/<name>}, by plot.py."""
    out = subprocess.run([sys.executable, *RATES, "--out_dir", hout(name, 0)], stdout=subprocess.PIPE, text=True,
                         check=True, cwd=ROOT).stdout
    return {a[2]: float(a[1]) for a in (line.split("\t") for line in out.splitlines()) if a[-1] in ARMS}


def widen(name, arms=HEAD):
    """Seed 0: each arm of `arms` whose chosen rate is the highest (lowest) it ran at there, at twice (half) it."""
    jobs = []
    for arm, x in sorted(chosen(name).items(), key=lambda a: a[0] not in NOISE):
        tried = sorted(float(p[:-10].rsplit("-lr", 1)[1]) for p in glob.glob(f"{hout(name, 0)}/{arm}-lr*/done.json"))
        if arm in arms and len(tried) > 1 and x in (tried[0], tried[-1]):
            jobs.append(slm(name, 0, arm, x * 2 if x == tried[-1] else x / 2))
    return jobs


def headline(arms=HEAD, lrs=LRS, name=D, ref=("40", "1.2e-2"), *flags):
    """3 pipelines; seed 0: each arm at each rate (reflong: twice them); seeds 1-2: at the rate seed 0 chose; NOISE
    on SEEDS. Another `name`: another reference on the same bases, each arm beyond the edge of `lrs`, all on SEEDS."""
    pipes = [hpipe(name, s, ref, *flags) for s in S3]
    first = [pipes[:2], pipes[2:] + [slm(name, 0, a, x * (1 + (a == "reflong"))) for a in arms for x in lrs]]
    if name != D:
        return [*first, lambda: widen(name, arms), lambda: runs(name, {a: chosen(name)[a] for a in arms}, S3, ALL)]
    return [*first, lambda: runs(D, {a: x for a, x in chosen(D).items() if a in arms}, (1, 2)),
            lambda: runs(D, {a: chosen(D)[a] for a in NOISE}, S3, SEEDS)]


WEB = lambda n, seeds=S3: [hpipe(f"{D}-webref{n}", s, ("40", "1.2e-2"), "--ref_web", str(n)) for s in seeds]  # noqa
W4PAIR = lambda e, x: hpipe(f"{W4}-{e}ep{x}", 0, (e, x), "--ref_web", "4")  # noqa: E731
DEFAULT = {  # plan <name>-default: the default cell's (EXPERIMENTS.md: The headline; SLM's best case)
    "headline": headline,
    "edge": lambda: [lambda: widen(D), *headline()[2:]],  # again until it has nothing to run
    "noise": lambda: [lambda: runs(D, {a: chosen(D)[a] for a in ("refloss0.6", "clm-mixhq4", "oracle")}, S3, SEEDS)],
    "extras": lambda: [lambda: runs(D, dict.fromkeys(RATIO + SOFT, chosen(D)["slm0.6"]))],
    "rerun": lambda: headline(NOISE, (*LRS, 1.2e-2)),
    "hq": lambda: [runs(D, {f"clm-mixhq{n}": 6e-3 for n in (2, 4, 8)}), runs(D, {"clm-mixhq4": 6e-3}, (1, 2)),
                   runs(D, {"clm-mixhq4": 6e-3}, S3, SEEDS)],  # x4 on seeds 1-2: seed 0's choice
    "reflong": lambda: [[slm(D, 0, "reflong", x) for x in (1.2e-2, 2.4e-2, 4.8e-2, 9.6e-2)], lambda: runs(
        D, {"reflong": chosen(D)["reflong"]}, (1, 2)), lambda: runs(D, {"reflong": chosen(D)["reflong"]}, S3, SEEDS)],
    "cheapref": lambda: [[hpipe(C, s, ("4", "2e-3")) for s in S3], [slm(C, 0, "clm", 6e-3), slm(C, 0, "slm0.6", 3e-3),
                         slm(C, 0, "slm0.6", 6e-3)], lambda: runs(C, chosen(C), (1, 2))],
    "oracle": lambda: [runs(D, {"oracle": 1.5e-3, "clm": 6e-3}, S3, ALL)],
    "lost": lambda: [[hpipe(D, 0), hpipe(D, 1)], [hpipe(D, 2), *runs(D, LOST, (0, 1), ALL)], runs(D, LOST, (2,), ALL)],
    "refloss_floor": lambda: [runs(D, {"refloss0.6": 6e-3}, S3, ALL)],
    "categories": lambda: [runs(D, {"clm-ckpts": 6e-3})],
    "webref": lambda: [[WEB(1)[0], WEB(4)[0]], [slm(f"{D}-webref{n}", 0, "slm0.6", 6e-3) for n in (1, 4)],
                       WEB(4)[1:] + [slm(W4, 0, "clm", 6e-3)] + [slm(W4, 0, "slm0.6", x) for x in (3e-3, 1.2e-2)],
                       runs(W4, dict.fromkeys(NOISE, 6e-3), (1, 2)),  # N = 4 at 6e-3: seed 0's choice
                       runs(W4, {"slm0.6": 6e-3}, S3, SEEDS) + runs(W4, {"refloss0.6": 6e-3}, S3) +
                       [slm(W4, 0, "refloss0.6", x) for x in (3e-3, 1.5e-3)],
                       lambda: runs(W4, {"refloss0.6": chosen(W4)["refloss0.6"]}, (1, 2))],
    "webref_edge": lambda: [[WEB(4)[0], WEB(16)[0]], [slm(f"{D}-webref{n}", 0, "slm0.6", 6e-3) for n in (4, 16)]],
    "webref_grid": lambda: [[hpipe(D, 0)], [W4PAIR(e, x) for e in ("40", "80") for x in ("1.2e-2", "2.4e-2")],
                            [j for s in (0, SEEDS[0]) for j in (slm(D, 0, "clm", 6e-3, s), *(  # 80: the grid's choice
                                slm(f"{W4}-{e}ep1.2e-2", 0, "slm0.6", 6e-3, s) for e in ("40", "80")))]],
    "webref_tuned": lambda: headline(("slm0.6",), (3e-3, 6e-3, 1.2e-2), f"{W4}-tuned", ("80", "1.2e-2"),
                                     "--ref_web", "4"),
    "webref_more": lambda: [[WEB(4)[0], *(W4PAIR(*p) for p in (("80", "6e-3"), ("40", "6e-3"), ("40", "2.4e-2"),
                                                               ("20", "1.2e-2")))], runs(W4, {"refloss0.6": 3e-3})],
    "refedge": lambda: [[hpipe(EDGE[0], 0, ("80", "1.2e-2 2.4e-2")), hpipe(EDGE[1], 0, ("40", "2.4e-2"))],
                        runs(EDGE[0], dict.fromkeys(NOISE, 6e-3))],
    "refedge_more": lambda: [[hpipe(EDGE[2], 0, ("160", "2.4e-2")), hpipe(EDGE[3], 0, ("80", "4.8e-2"))]],
    "refcurve": lambda: [[hpipe(EDGE[1], 0, ("40", "2.4e-2"))], [slm(EDGE[i], 0, "slm0.6", 6e-3) for i in (1, 2, 3)]],
    "refedge_tuned": lambda: headline(("slm0.6", "refloss0.6"), (3e-3, 6e-3, 1.2e-2), f"{D}-refedge-tuned",
                                      ("80", "2.4e-2")),
    "ratios": lambda: [lambda: runs(D, dict.fromkeys(RATIO, chosen(D)["slm0.6"]), (1, 2)) + runs(
        W4, dict.fromkeys(RATIO, 6e-3)), lambda: runs(D, dict.fromkeys(SOFT, chosen(D)["slm0.6"]), (1, 2))],
    "ratios_webref": lambda: [WEB(4, (1, 2)), runs(W4, dict.fromkeys(RATIO, 6e-3), (1, 2))]}
MAP = [hpipe(c, 0, ref, cell=c, root="regimes", base=on * "out/regimes/default/seed0/base/ckpt.pt")
       for c, (_, ref, on) in CELLS.items()]  # each cell's pipeline, seed 0


def when(n, web=False, seed=0):
    """Issue 31's screen: a pipeline whose subset has n problems (web: the web-keeping reference), seed 0 on the base
    of subset 2000's (the web, test and vocabulary do not depend on n), another seed on its own; students at 3e-3 and
    6e-3."""
    out = f"out/when/subset{n}{'-webref4' * web}/seed{seed}"
    ref = ["--ref_web", "4", "--ref_epochs", "40", "--ref_lr", "1.2e-2"] if web else \
        ["--ref_epochs", "10", "40", "--ref_lr", "6e-3", "1.2e-2"]
    base = ["--base", "out/when/subset2000/seed0/base/ckpt.pt"] * (seed == 0 and (n != 2000 or web))
    pipe = (f"when{n}{'w' * web}{seed or ''}-pipeline", f"{out}/pipeline.json", [
        "train_ref.py", "--preset", "cpu", "--seed", str(seed), "--data_dir", f"data/when/subset{n}" + f"-seed{seed}" *
        bool(seed), "--out_dir", out, *base, *ref, "--corpus", f"n_ref_train={n}"])
    arms = ("slm0.6",) + ("clm-mixhq4",) * (not web) + ("clm", "oracle") * (n == 2000 and not web)
    return pipe, [slm(out, 0, a, x) for a in arms for x in (3e-3, 6e-3)], out


def width(w, web=False):
    """Issue 31's third axis: a reference of width w, fine-tuned from its own base (pre-trained on subset 2000's web;
    web: the web-keeping reference on it), guides students of subset 2000's base; SLM 0.6 at 3e-3 and 6e-3."""
    out, small = f"out/when/subset2000-ref{w}{'-webref4' * web}/seed0", f"out/when/subset2000-ref{w}/seed0/base/ckpt.pt"
    ref = ["--base", small, "--ref_web", "4", "--ref_epochs", "40", "--ref_lr"] if web else \
        ["--n_embd", str(w), "--n_head", str(w // 16), "--ref_epochs", "10", "40", "--ref_lr", "6e-3"]
    return (f"width{w}{'w' * web}-pipeline", f"{out}/pipeline.json", [
        "train_ref.py", "--preset", "cpu", "--seed", "0", "--data_dir", "data/when/subset2000", "--out_dir", out, *ref,
        "1.2e-2", "2.4e-2", "--student_base", "out/when/subset2000/seed0/base/ckpt.pt", "--corpus", "n_ref_train=2000"]
    ), [slm(out, 0, "slm0.6", x) for x in (3e-3, 6e-3)]


W1000 = {"slm0.6": 3e-3, "clm": 3e-3, "clm-mixhq4": 3e-3, "oracle": 6e-3}  # seed 0's choices (out/results/when.md)
WHEN = lambda *ns: [[when(n, w)[0] for w in (0, 1) for n in ns if (n, w) != (2000, 0)],  # noqa: E731
                    [j for n in ns for w in (0, 1) for j in when(n, w)[1]]]
PLANS = {**{f"{k}-{D}": v for k, v in DEFAULT.items()}, "regimes": lambda: [  # the map: CLM and SLM at 2 rates
    [p for p in MAP if "--base" not in p[2]], [p for p in MAP if "--base" in p[2]],  # (default-cheapref: no CLM)
    [slm(f"out/regimes/{c}/seed0", 0, a, x) for c in CELLS for a in NOISE[c == "default-cheapref":] for x in LRS[:2]]],
    "when": lambda: [[when(2000)[0]], *WHEN(2000, 250), *WHEN(1000, 500)],  # issue 31: the subset's size
    "width": lambda: [[width(w)[0] for w in (32, 16)], [width(w, 1)[0] for w in (32, 16)],  # issue 31: a small ref
                      [j for w in (32, 16) for web in (0, 1) for j in width(w, web)[1]]],
    "when3": lambda: [[when(1000, 1, s)[0] for s in (1, 2)], *([slm(when(1000, 1, s)[2], 0, a, x, t) for s in S3 for (
        a, x) in W1000.items() if t == 0 or a != "oracle"] for t in (0, *SEEDS))],  # the best cell, 3 pipelines
    "pair-harm-nocarry": lambda: [[hpipe(HN, s, cell=HN) for s in (0, 1)], [hpipe(HN, 2, cell=HN), *runs(HN, PAIR, (
        0, 1))], runs(HN, PAIR, (2,))]}  # the map's cell in 3 pipelines, CLM and SLM at the rate the map chose


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("plan", choices=PLANS, help="which experiment")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time (this machine: 2 cores)")
    ap.add_argument("--dry", action="store_true", help="list the jobs to do; run nothing")
    args = ap.parse_args()
    os.chdir(ROOT)  # the jobs' paths are relative to the repository
    logs = os.path.join("experiments", "logs", args.plan)
    os.makedirs(logs, exist_ok=True)

    def done(job):  # a pipeline whose pipeline.json names a reference with scores; a student with its done.json
        return os.path.exists(job[1]) and (not job[1].endswith("pipeline.json") or
                                           os.path.exists(json.load(open(job[1]))["scores"]))

    def run(job):  # one job on one thread, with --resume, its output appended to its log; its exit status
        with open(os.path.join(logs, f"{job[0]}.log"), "a") as log:
            print(f"\n$ {' '.join(job[2])} --resume", file=log, flush=True)
            t0, rc = time.time(), subprocess.call([sys.executable, *job[2], "--resume"], stdout=log,
                                                  stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
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
        print("".join(f"  todo: {' '.join(j[2])}\n" for j in todo * args.dry), end="")
        with ThreadPoolExecutor(args.jobs) as pool:  # the next stages are chosen from these runs, not a partial set
            if any(list(pool.map(run, todo * (not args.dry)))):
                sys.exit(f"stage {i}: a job failed (logs: {logs}); fix: see its log, then run the plan again")


if __name__ == "__main__":
    main()
