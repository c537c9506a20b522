"""
driver.py -- run an experiment of EXPERIMENTS.md in resumable batches: its runs in stages (pipelines, then their
students), at most --jobs at a time, each process on one thread (OMP_NUM_THREADS=1). Every job is one run folder:
every job runs with --resume: a finished run is reused, a killed one continues from its last checkpoint, a new one
starts, so the same command picks up where a stopped session left off.

  python experiments/driver.py regimes             # the map of regimes (seed 0, validation), 2 jobs at a time
  python experiments/driver.py regimes --dry       # print the jobs and which are done
  python experiments/driver.py headline-default    # a cell in 3 pipelines, every arm, rates chosen on seed 0,
                                                   # then CLM and SLM on 2 more data orders (the noise floor)
  python experiments/driver.py extras-default      # seed 0: the ratio sweep and soft weighting at SLM's rate
  python experiments/driver.py ratios-default      # the ratios on seeds 1-2, and with the web-keeping ref; soft on 1-2
  python experiments/driver.py ratios_webref-default  # and with it on seeds 1-2 (its pipelines built again)
  python experiments/driver.py noise-default       # 3 more arms on 2 more data orders
  python experiments/driver.py edge-default        # a chosen rate at the edge of its sweep: widen it (repeat)
  python experiments/driver.py rerun-default       # CLM and SLM of the headline again (then save_runs.py)
  python experiments/driver.py hq-default          # CLM + HQ's epochs of the subset (2, 4, 8) chosen on seed 0
  python experiments/driver.py reflong-default     # the reference fine-tuned longer at higher rates (its edge)
  python experiments/driver.py cheapref-default    # the same bases with the cheap reference: CLM and SLM
  python experiments/driver.py margin-default      # beyond the paper: SLM with a margin on the excess loss
  python experiments/driver.py threshold-default   # beyond the paper: a token kept when its excess is above -m
  python experiments/driver.py webref-default      # beyond the paper: a reference that keeps some of the web
  python experiments/driver.py webref_edge-default # its share of the web: a smaller one on seed 0
  python experiments/driver.py refedge-default     # the reference's grid beyond its chosen corner, seed 0
  python experiments/driver.py refedge_more-default  # seed 0: the pairs beyond refedge's best (80 at 2.4e-2)
  python experiments/driver.py refcurve-default   # seed 0: SLM with 3 more subset-only references (refedge1-3)
  python experiments/driver.py refedge_tuned-default  # its choice in 3 pipelines x 3 data orders: SLM, ref-loss
  python experiments/driver.py webref_grid-default # the same for the web-keeping reference (--ref_web 4)
  python experiments/driver.py webref_tuned-default  # its chosen pair (80 epochs) in 3 pipelines x 3 data orders
  python experiments/driver.py webref_more-default   # seed 0: pairs around webref's 40 at 1.2e-2; its ref-loss again
  python experiments/driver.py refs_and_sft-default  # seed 0: 3 more references (mean, min); SFT and SFT-SLM
  python experiments/driver.py oracle-default      # the oracle and CLM in 3 pipelines x 3 data orders
  python experiments/driver.py lost-default        # as oracle: SLM 0.6 + HQ x4 (online) and random 0.6
  python experiments/driver.py refloss_floor-default  # and ref-loss 0.6 (its first runs' logs were lost)
  python experiments/driver.py categories-default  # seed 0's CLM keeping its checkpoints (plot.py --categories)
  python experiments/driver.py pair-harm-nocarry   # a map cell in 3 pipelines, CLM and SLM at the map's rates
  python experiments/driver.py demo                # the demo preset in 3 pipelines: cheap vs web-keeping reference
  python experiments/driver.py demo_strong         # the same, web-keeping references of 10 and 40 epochs at 1.2e-2
Logs: experiments/logs/<plan>/<job>.log. Then: python plot.py --out_dir out/headline/default
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


STUDENT_SEEDS = (100, 101)  # other data orders for the noise floor (a student's seed defaults to its pipeline's)
NOISE_ARMS = ("clm", "slm0.6")  # the arms run with every student seed in the headline
MORE_NOISE_ARMS = ("refloss0.6", "clm-mixhq4", "oracle")  # and after it (plan noise-<cell>)
HEADLINE_REF = {"default": ("40", "1.2e-2"), "harm-nocarry": ("40", "1.2e-2"), "noisy": ("40", "6e-3"),
                "harm": ("10", "6e-3")}  # the reference each cell's sweep chose on seed 0 (out/results/regimes.md)
MAP_LRS = {"harm-nocarry": {"clm": 3e-3, "slm0.6": 3e-3}, "noisy": {"clm": 3e-3, "slm0.6": 3e-3},
           "harm": {"clm": 1.5e-3, "slm0.6": 1.5e-3}}  # each arm's rate the map chose on seed 0 (regimes.md)


def out_of(cell, seed):
    return f"out/headline/{cell}/seed{seed}"


def pipelines(cell, name=None, ref=None, flags=()):
    """The cell's 3 pipelines (seeds 0-2; cells that share a base in the map get their own per seed), 16
    evaluations on 1,000 test problems, the reference the one the map's sweep chose on seed 0's validation. With a
    `name` and a `ref` (epochs, lr; several of each space-separated: a sweep): other pipelines, in
    out/headline/<name>, on the cell's corpora and bases, their references made with train_ref.py's `flags` too."""
    corpus, (epochs, lr) = CELLS[cell][0], ref or HEADLINE_REF[cell]
    return [(f"{name or cell}{seed}-pipeline", f"{out_of(name or cell, seed)}/pipeline.json",
             ["train_ref.py", "--preset", "cpu", "--seed", str(seed), "--data_dir", f"data/headline/{cell}{seed}",
              "--out_dir", out_of(name or cell, seed), "--n_evals", "16", "--eval_problems", "1000",
              *(["--base", f"{out_of(cell, seed)}/base/ckpt.pt"] if name else []), "--ref_epochs", *epochs.split(),
              "--ref_lr", *lr.split(), *flags] + (["--corpus", *corpus] if corpus else [])) for seed in (0, 1, 2)]


def student(cell, seed, arm, lr, student_seed=0, flags=None):
    """One student job: an arm of ARMS (or `flags`, named `arm`) at rate lr, on the pipeline's or another data order."""
    tail = ["--seed", str(student_seed)] if student_seed else []
    folder = arm + (f"-s{student_seed}" if student_seed else "") + f"-lr{lr:g}"  # as train_slm.py names it
    return (f"{cell}{seed}-{folder}", f"{out_of(cell, seed)}/{folder}/done.json",
            ["train_slm.py", "--out_dir", out_of(cell, seed), *(flags or ARMS[arm]), "--lr", str(lr), *tail])


def plot_module():
    """plot.py, imported when a stage needs it (its rules choose the rates; the driver itself starts light)."""
    sys.path.insert(0, ROOT)
    import plot
    return plot


def seed0_runs(cell, root=None):
    """Seed 0's runs of the arms of ARMS (not the other data orders), each with its folder's arm name (in `root`, a
    pipeline's folder, if given)."""
    plot = plot_module()
    runs = [r for r in plot.find_runs(root or out_of(cell, 0)) if r["cfg"].get("arm") not in (None, "reference")]
    for r in runs:
        r["folder"] = os.path.basename(r["path"]).rsplit("-lr", 1)[0]
    return plot, [r for r in runs if r["folder"] in ARMS]


def chosen_lrs(cell, root=None):
    """{arm folder: the rate seed 0's validation chose}, by plot's own rule (plot.best_lrs)."""
    plot, runs = seed0_runs(cell, root)
    folder = {r["arm"]: r["folder"] for r in runs}
    return {folder[arm]: lr for arm, lr in plot.best_lrs(runs).items()}


def widen(cell, arms=None):
    """Every arm (of `arms`; default: all) whose rate chosen on seed 0 is the highest (lowest) it was run at there, at
    twice (half) that rate, CLM and SLM first."""
    _, runs = seed0_runs(cell)
    jobs = []
    for arm, lr in sorted(chosen_lrs(cell).items(), key=lambda a: a[0] not in NOISE_ARMS):
        tried = sorted(r["cfg"]["lr"] for r in runs if r["folder"] == arm and r["done"])
        if (arms is None or arm in arms) and len(tried) > 1 and lr in (tried[0], tried[-1]):
            jobs.append(student(cell, 0, arm, lr * 2 if lr == tried[-1] else lr / 2))
    return jobs


def edge(cell):
    """After the headline: every arm whose chosen rate is at the edge of its sweep on seed 0 runs again beyond it
    (widen), then seeds 1-2 and the noise floor follow the new choice as in the headline. Run the plan again until
    it has nothing to run: then every chosen rate has a worse rate on both sides."""
    return [lambda: widen(cell), *headline(cell)[2:]]


def headline(cell, arms=tuple(ARMS), lrs=HEADLINE_LRS):
    """A cell in 3 pipelines. Stage 0-1: the pipelines, and on seed 0 every arm of `arms` at every rate of
    `lrs` (the reference fine-tuned longer at twice them, as its loss keeps falling with the rate). Stage 2:
    seeds 1 and 2, each arm at the rate seed 0's validation chose. Stage 3: the noise floor, the NOISE_ARMS again
    with STUDENT_SEEDS (other data orders) in every pipeline, at the same rates."""
    pipes = pipelines(cell)
    rates = lambda arm: [2 * x for x in lrs] if arm == "reflong" else list(lrs)  # noqa: E731
    return [pipes[:2],  # seed 2's pipeline runs beside seed 0's students
            pipes[2:] + [student(cell, 0, arm, lr) for arm in arms for lr in rates(arm)],
            lambda: [student(cell, seed, arm, lr) for seed in (1, 2) for arm, lr in chosen_lrs(cell).items()
                     if arm in arms],
            lambda: [student(cell, seed, arm, chosen_lrs(cell)[arm], s) for seed in (0, 1, 2) for arm in NOISE_ARMS
                     for s in STUDENT_SEEDS]]


def rerun(cell):
    """The headline's core again, to keep its records this time (then save_runs.py): the 3 pipelines, CLM and SLM
    0.6 on seed 0 at the headline's rates and at twice the highest (where the edge plan took them), then seeds 1-2
    and the noise floor at the rates seed 0 chose. Same commands as the headline: on the same machine, the same
    numbers?"""
    return headline(cell, arms=NOISE_ARMS, lrs=(*HEADLINE_LRS, 2 * HEADLINE_LRS[-1]))


def hq(cell):
    """After the headline: CLM + HQ's epochs tuned like a rate. Seed 0: the subset mixed in 2, 4 and 8 times at the
    rate x4 chose (6e-3, out/results/headline-default.md); then seeds 1-2 with the count seed 0's validation
    prefers, beside x4 (the headline's); then x4's noise floor: STUDENT_SEEDS in every pipeline."""
    lr, counts = 6e-3, (2, 4, 8)
    job = lambda seed, n: student(cell, seed, f"clm-mixhq{n}", lr,  # noqa: E731
                                  flags=["--ratio", "1.0", "--mix_hq", str(n)])

    def best():
        runs = {r["path"]: r for r in plot_module().find_runs(out_of(cell, 0)) if r["done"]}
        val = {n: runs[f"{out_of(cell, 0)}/clm-mixhq{n}-lr{lr:g}"]["val_answer"][-1] for n in counts}
        print("  validation answer loss by epochs of the subset:", {n: round(float(v), 4) for n, v in val.items()})
        return [job(seed, n) for seed in (1, 2) for n in sorted({4, min(val, key=val.get)})]
    return [[job(0, n) for n in counts], best, [student(cell, seed, "clm-mixhq4", lr, s) for seed in (0, 1, 2)
                                                for s in STUDENT_SEEDS]]


def reflong(cell):
    """After the headline: the reference fine-tuned longer, whose chosen rate stayed the top of its sweep (edge), at
    1.2e-2 to 9.6e-2 on seed 0, then seeds 1-2 at the rate seed 0's validation chooses, then its noise floor
    (STUDENT_SEEDS in every pipeline)."""
    return [[student(cell, 0, "reflong", lr) for lr in (1.2e-2, 2.4e-2, 4.8e-2, 9.6e-2)],
            lambda: [student(cell, seed, "reflong", chosen_lrs(cell)["reflong"]) for seed in (1, 2)],
            lambda: [student(cell, seed, "reflong", chosen_lrs(cell)["reflong"], s) for seed in (0, 1, 2)
                     for s in STUDENT_SEEDS]]


def cheapref(cell):
    """The headline's bases and corpora with the first trial's cheap reference (4 epochs at 2e-3) instead of the
    tuned one: CLM and SLM 0.6 on seed 0 (SLM at 3e-3 and 6e-3), then seeds 1-2 at the rate chosen. What the
    reference's tuning alone changes, in 3 pipelines (folders out/headline/<cell>-cheapref)."""
    name = f"{cell}-cheapref"
    return [pipelines(cell, name, ("4", "2e-3")),
            [student(name, 0, "clm", 6e-3), student(name, 0, "slm0.6", 3e-3), student(name, 0, "slm0.6", 6e-3)],
            lambda: [student(name, seed, arm, lr) for seed in (1, 2) for arm, lr in chosen_lrs(name).items()]]


def choose(knobs, lr, path, what):
    """(knob, rate) by seed 0's validation answer loss: the knob of `knobs` lowest at rate lr, then its rate of lr/2,
    lr and 2 lr (those run); path(knob, rate) is the run's folder."""
    runs = {r["path"]: r for d in {os.path.dirname(path(k, lr)) for k in knobs}
            for r in plot_module().find_runs(d) if r["done"]}
    val = lambda k, x: float(runs[path(k, x)]["val_answer"][-1])  # noqa: E731
    k = min(knobs, key=lambda k: val(k, lr))
    print(f"  validation answer loss by {what}:", {k: round(val(k, lr), 4) for k in knobs})
    rates = [x for x in (lr / 2, lr, lr * 2) if path(k, x) in runs]
    print(f"  {what} {k:g}, validation answer loss by rate:", {x: round(val(k, x), 4) for x in rates})
    return k, min(rates, key=lambda x: val(k, x))


def margin(cell, ratio=0.6, margins=(0.5, 1, 2), lr=6e-3):
    """Beyond the paper, after the headline: SLM 0.6 with a margin on the excess (--weighting margin), which keeps
    the answers the student has learned. Seed 0: margins of 0.5, 1 and 2 nats at SLM's rate (6e-3); the margin seed
    0's validation chooses at half and twice that rate; then seeds 1-2 at the rate chosen, beside CLM and SLM at
    theirs (chosen_lrs: 6e-3 in the headline; reused where they exist)."""
    name = lambda m: f"slm{ratio:g}-margin{m:g}"  # noqa: E731
    arm = lambda m, rate, seed=0: student(cell, seed, name(m), rate, flags=[  # noqa: E731
        "--ratio", str(ratio), "--weighting", "margin", "--margin", str(m)])

    chosen = lambda: choose(margins, lr, lambda m, x: f"{out_of(cell, 0)}/{name(m)}-lr{x:g}", "margin")  # noqa: E731

    def rates():  # the chosen margin at half and twice the rate
        m, _ = chosen()
        return [arm(m, x) for x in (lr / 2, lr * 2)]

    def seeds():  # the chosen margin and rate on seeds 1-2; CLM and SLM at the rates the headline chose
        m, rate = chosen()
        return [arm(m, rate, seed) for seed in (1, 2)] + [student(cell, seed, a, chosen_lrs(cell)[a])
                                                          for seed in (0, 1, 2) for a in NOISE_ARMS]
    pipes = pipelines(cell)
    return [pipes[:2], pipes[2:] + [arm(m, lr) for m in margins], rates, seeds]


def threshold(cell):
    """The margin alone, a threshold: --ratio 0.01 leaves nearly every kept token to the margin, so a token gets a
    loss when its excess is above -margin, whatever the share. With the tuned reference the slipped results' excess
    (about -7 nats) lies between the target math's (about -1 to +0.6) and the other kinds' (below -10): margins of
    0.5, 1, 2 and 4 at 3e-3 (between SLM's rate and the oracle's) on seed 0, then as margin(). (0.5 was added when
    1, the smallest of the first grid, was chosen.)"""
    return margin(cell, ratio=0.01, margins=(0.5, 1, 2, 4), lr=3e-3)


def webref_pipes(cell, n=4):
    """The cell's 3 pipelines with its reference keeping the first 1/N of the base's web (--ref_web N), on its bases
    (folders out/headline/<cell>-webref<N>)."""
    return pipelines(cell, f"{cell}-webref{n}", HEADLINE_REF[cell], ["--ref_web", str(n)])


def webref(cell, parts=(1, 4), lr=6e-3):
    """Beyond the paper: a reference that keeps some web (train_ref.py --ref_web N), on the headline's bases, at its
    reference's epochs and rate: the subset 40 times shuffled with the first 1/N of the base's web (N = 1: 36% of
    its tokens; N = 4: 12%). Seed 0: SLM 0.6 at SLM's rate with each; the N seed 0's validation prefers at half and
    twice that rate, and CLM, and that N's pipelines on seeds 1-2; then SLM (at the rate chosen) and CLM on seeds
    1-2; then SLM's noise floor (STUDENT_SEEDS in every pipeline; CLM's are the headline's) and ref-loss 0.6 at SLM's
    rate in the 3 pipelines, and at half and a quarter of it on seed 0 (then seeds 1-2 at its chosen rate). Folders
    out/headline/<cell>-webref<N> (experiments/merge_arms.py puts them beside the headline's arms)."""
    name = lambda n: f"{cell}-webref{n}"  # noqa: E731

    chosen = lambda: choose(parts, lr, lambda n, x: f"{out_of(name(n), 0)}/slm0.6-lr{x:g}", "N")  # noqa: E731

    def rates():  # the chosen N: SLM at half and twice the rate, CLM, and the pipelines of seeds 1-2
        n, _ = chosen()
        return webref_pipes(cell, n)[1:] + [student(name(n), 0, "clm", lr)] + [student(name(n), 0, "slm0.6", x)
                                                                   for x in (lr / 2, lr * 2)]

    def seeds():
        n, rate = chosen()
        return [student(name(n), seed, arm, rate if arm != "clm" else lr) for seed in (1, 2) for arm in NOISE_ARMS]

    def noise():  # and ref-loss (no student term) with this reference: at SLM's rate, and lower on seed 0
        n, rate = chosen()
        return [student(name(n), seed, "slm0.6", rate, s) for seed in (0, 1, 2) for s in STUDENT_SEEDS] + \
            [student(name(n), seed, "refloss0.6", rate) for seed in (0, 1, 2)] + \
            [student(name(n), 0, "refloss0.6", x) for x in (rate / 2, rate / 4)]

    def refloss():  # ref-loss on seeds 1-2 at the rate seed 0's validation chose
        n, _ = chosen()
        return [student(name(n), seed, "refloss0.6", chosen_lrs(name(n))["refloss0.6"]) for seed in (1, 2)]
    return [[webref_pipes(cell, n)[0] for n in parts], [student(name(n), 0, "slm0.6", lr) for n in parts], rates,
            seeds, noise, refloss]


def webref_edge(cell):
    """webref's N = 4, the smaller share of its grid, was chosen: seed 0 with N = 16 (3% of the reference's tokens)."""
    return webref(cell, parts=(4, 16))[:2]


def refs_and_sft(cell, lrs=(6e-3, 1.2e-2)):
    """Seed 0, beyond the paper, with the tuned reference: several references (3 more, each on the whole subset
    with its own seed, at the reference's epochs and rate; out/headline/<cell>-refs3) combined by mean and min,
    beside CLM and SLM 0.6 of the same pipeline, at SLM's rate; and SFT-SLM: fine-tuning on the subset's answers, CLM
    and SLM 0.6 at the reference's rate and half of it (its budget: the reference's)."""
    name, lr = f"{cell}-refs3", 6e-3
    refs = lambda how: student(name, 0, f"slm0.6-refs3{how}", lr, flags=[  # noqa: E731
        "--ratio", "0.6", "--refs", "3", "--combine", how])
    sft = [student(cell, 0, f"sft-{arm}", x, flags=["--sft", *ARMS[arm]]) for arm in NOISE_ARMS for x in lrs]
    return [pipelines(cell, name, HEADLINE_REF[cell], ["--refs", "3"])[:1] + sft,
            [refs("mean"), refs("min"), *(student(name, 0, arm, lr) for arm in NOISE_ARMS)]]


def refedge(cell):
    """The reference's grid chose its corner (40 epochs at 1.2e-2) on seed 0: the pairs beyond it, 80 epochs at 1.2e-2
    and 2.4e-2 and 40 at 2.4e-2, on seed 0's base, each pipeline choosing among its own (folders
    out/headline/<cell>-refedge<i>); compare their validation answer loss with the corner's (pipeline.json). Then CLM
    and SLM 0.6 at 6e-3 with the reference the 80-epoch pipeline chose."""
    return [[pipelines(cell, f"{cell}-refedge{i}", ref)[0] for i, ref in enumerate([("80", "1.2e-2 2.4e-2"),
                                                                                     ("40", "2.4e-2")])],
            [student(f"{cell}-refedge0", 0, arm, 6e-3) for arm in NOISE_ARMS]]  # with the one 80 epochs chose


def refedge_more(cell):
    """After refedge: its best pair, 80 epochs at 2.4e-2, is again the grid's corner; the pairs beyond it on seed 0's
    base, 160 epochs at 2.4e-2 and 80 at 4.8e-2 (folders out/headline/<cell>-refedge2 and -refedge3), compared on
    validation with it (its pipeline.json under experiments/runs/)."""
    pairs = ((2, ("160", "2.4e-2")), (3, ("80", "4.8e-2")))
    return [[pipelines(cell, f"{cell}-refedge{i}", ref)[0] for i, ref in pairs]]


def refcurve(cell):
    """Does the reference's own validation predict SLM's? Seed 0, SLM 0.6 at 6e-3 with the subset-only references
    beyond the grid's corner that have no SLM run yet: refedge's 40 epochs at 2.4e-2 (its pipeline built again: it
    must equal the committed one) and refedge_more's two (160 at 2.4e-2, 80 at 4.8e-2)."""
    return [[pipelines(cell, f"{cell}-refedge1", ("40", "2.4e-2"))[0]],
            [student(f"{cell}-refedge{i}", 0, "slm0.6", 6e-3) for i in (1, 2, 3)]]


def webref4_name(cell, epochs, lr):
    """The folder name (under out/headline/) of a web-keeping reference's pipeline of `epochs` at `lr`."""
    return f"{cell}-webref4-{epochs}ep{lr}"


def webref4(cell, epochs, lr, name=None):
    """Seed 0's pipeline with a web-keeping reference (--ref_web 4) of `epochs` at `lr` on the cell's base, in
    out/headline/<name> (default: webref4_name)."""
    return pipelines(cell, name or webref4_name(cell, epochs, lr), (epochs, lr), ["--ref_web", "4"])[0]


def webref_grid(cell, grid=(("40", "1.2e-2"), ("80", "1.2e-2"), ("40", "2.4e-2"), ("80", "2.4e-2"))):
    """The web-keeping reference (--ref_web 4) kept the tuned reference's epochs and rate (40 at 1.2e-2), the
    corner of the first grid: that pair and the pairs beyond it on seed 0's base, one pipeline each (folders
    out/headline/<cell>-webref4-<epochs>ep<rate>); the reference with the lowest validation answer loss (the rule
    train_ref.py's sweep uses), then SLM 0.6 at 6e-3 with it and with the corner's, and CLM, on seed 0 (then on
    another data order too). All on one machine: the corner is built again, beside the others, because another
    machine's floating point gives another base (the pipelines of webref-default were built on one)."""
    def slm(seeds=(0,)):
        val = {(e, lr): json.load(open(webref4(cell, e, lr)[1]))["ref_sweep"] for e, lr in grid}
        val = {k: next(iter(v.values()))["val_answer_loss"] for k, v in val.items()}
        print("  the references' validation answer loss by (epochs, rate):", {k: round(v, 4) for k, v in val.items()})
        return [student(webref4_name(cell, *k), 0, "slm0.6", 6e-3, s)
                for k in dict.fromkeys([min(val, key=val.get), grid[0]]) for s in seeds] + \
            [student(cell, 0, "clm", 6e-3, s) for s in seeds]
    return [[pipelines(cell)[0]], [webref4(cell, e, lr) for e, lr in grid],
            slm, lambda: slm((0, STUDENT_SEEDS[0]))]  # then the same runs on another data order


def three(cell, name, ref, flags=(), arms=("slm0.6",), lrs=(3e-3, 6e-3, 1.2e-2)):
    """A reference of `ref` (epochs, lr), made with train_ref.py's `flags` too, in the cell's 3 pipelines on the
    headline's bases (folders out/headline/<name>): each of `arms` at every rate of `lrs` on seed 0, then, at the
    rate its validation chose (beyond `lrs` if it is at their edge: widen), on seeds 1-2 and on STUDENT_SEEDS in every
    pipeline. CLM's runs are the headline's (the same bases and data orders): experiments/merge_arms.py pairs them."""
    pipes = pipelines(cell, name, ref, flags)
    return [pipes[:2], [pipes[2]] + [student(name, 0, arm, x) for arm in arms for x in lrs], lambda: widen(name, arms),
            lambda: [student(name, seed, arm, chosen_lrs(name)[arm], s) for arm in arms for seed in (0, 1, 2)
                     for s in (0, *STUDENT_SEEDS)]]


def webref_tuned(cell):
    """The web-keeping reference at the pair webref_grid's validation chose (80 epochs at 1.2e-2; that grid ran on
    another machine's base) in 3 pipelines x 3 data orders (folders out/headline/<cell>-webref4-tuned), SLM 0.6 at
    3e-3, 6e-3 and 1.2e-2 on seed 0 (three())."""
    return three(cell, f"{cell}-webref4-tuned", ("80", "1.2e-2"), ["--ref_web", "4"])


def refedge_tuned(cell):
    """The subset-only reference at the pair refedge's validation chose, and refedge_more's confirmed (80 epochs at
    2.4e-2, beyond the headline's 9-pair grid), in 3 pipelines x 3 data orders (folders
    out/headline/<cell>-refedge-tuned): SLM 0.6 and ref-loss 0.6, each at 3e-3, 6e-3 and 1.2e-2 on seed 0 (three())."""
    return three(cell, f"{cell}-refedge-tuned", ("80", "2.4e-2"), arms=("slm0.6", "refloss0.6"))


def webref_more(cell):
    """Seed 0, after webref_tuned, whose 80 epochs at 1.2e-2 lost to the 40 of webref on validation in all 3 of
    this cell's pipelines (webref_grid, on another machine's base, had chosen 80): the web-keeping reference's pairs
    around 40 at 1.2e-2 on this cell's base (20 at 1.2e-2; 40 at 6e-3 and 2.4e-2; 80 at 6e-3; folders
    out/headline/<cell>-webref4-<epochs>ep<rate>), compared on validation; and webref's 40-epoch pipeline again
    (its logs must equal the committed ones) with its ref-loss 0.6 at the rate validation chose there (3e-3), whose
    folders were lost, for plot.py --explain."""
    grid = [webref4(cell, e, lr) for e, lr in (("80", "6e-3"), ("40", "6e-3"), ("40", "2.4e-2"), ("20", "1.2e-2"))]
    forty = webref_pipes(cell)[0]
    return [[forty, *grid], [student(f"{cell}-webref4", 0, "refloss0.6", 3e-3)]]


def oracle(cell, rates=(("oracle", 1.5e-3), ("clm", 6e-3))):
    """The oracle's noise floor, whose seed-0 sweep folders were lost with a machine: in 3 pipelines, on the
    pipeline's data order and STUDENT_SEEDS, at the rate the headline chose (out/results/headline-default.md),
    with CLM (6e-3) on the same data orders to be paired with."""
    return [[student(cell, seed, arm, rate, s) for seed in (0, 1, 2) for s in (0, *STUDENT_SEEDS)
             for arm, rate in rates]]


def lost(cell):
    """The noise floor of the two arms whose seed-0 sweeps were lost with a machine, as oracle(): SLM 0.6 + HQ x4
    (online reference) and random 0.6, at the rates the headline chose (1.5e-3, 3e-3), with CLM. Seeds 0-1's
    students run beside seed 2's pipeline, so that no core waits for it."""
    pipes, jobs = pipelines(cell), oracle(cell, (("slm0.6-mixhq4-online", 1.5e-3), ("clm", 6e-3)))[0]
    jobs += oracle(cell, (("random0.6", 3e-3),))[0]
    first = [j for j in jobs if not j[0].startswith(f"{cell}2-")]
    return [pipes[:2], [pipes[2], *first], [j for j in jobs if j not in first]]


def refloss_floor(cell):
    """Ref-loss 0.6's noise floor again, at the rate the headline chose (6e-3): its first runs' folders were lost
    before their logs were saved (after lost(), whose pipelines it uses)."""
    return oracle(cell, (("refloss0.6", 6e-3),))


def categories(cell, lr=6e-3):
    """The paper's token-loss categories (plot.py --categories): seed 0's CLM again, keeping every evaluation's
    checkpoint (the same run as the headline's CLM: the same numbers at one thread)."""
    return [[student(cell, 0, "clm-ckpts", lr, flags=["--ratio", "1.0", "--keep_ckpts"])]]


def noise(cell):
    """After the headline: MORE_NOISE_ARMS with STUDENT_SEEDS in every pipeline, at their chosen rates."""
    return [lambda: [student(cell, seed, arm, chosen_lrs(cell)[arm], s) for arm in MORE_NOISE_ARMS
                     for seed in (0, 1, 2) for s in STUDENT_SEEDS]]


def pair(cell):
    """A cell of the map in 3 pipelines, CLM and SLM 0.6 only, each at the rate the map chose on seed 0."""
    pipes = pipelines(cell)
    return [pipes[:2], pipes[2:] + [student(cell, seed, arm, lr) for seed in (0, 1, 2)
                                    for arm, lr in MAP_LRS[cell].items()]]


def extras(cell):
    """Seed 0 of a headline cell, SLM's own rate (chosen in the headline): the ratio sweep (0.4-0.8 beside the
    headline's 0.6 and CLM) and soft weighting at two temperatures, each a single run (validation first)."""
    def jobs():
        lr = chosen_lrs(cell)["slm0.6"]
        return ratio_sweep(cell, 0, lr) + soft(cell, 0, lr)
    return [jobs]


def soft(cell, seed, lr, temperatures=(0.1, 0.5)):
    """SLM 0.6 with soft weighting (sigmoid of the excess over the top-k threshold) at each temperature, at rate lr."""
    return [student(cell, seed, f"slm0.6-soft{t:g}", lr, flags=["--ratio", "0.6", "--weighting", "soft",
                                                                 "--temperature", str(t)]) for t in temperatures]


def ratio_sweep(cell, seed, lr, ratios=(0.4, 0.5, 0.7, 0.8)):
    """SLM at the ratios beside the headline's 0.6 (and CLM's 1.0), one run each at rate lr."""
    return [student(cell, seed, f"slm{r:g}", lr, flags=["--ratio", str(r)]) for r in ratios]


def ratios(cell):
    """After extras, whose single runs on seed 0 could not rank the ratios: the same sweep on seeds 1-2 (3 pipelines a
    ratio, at SLM's rate chosen in the headline), and on seed 0 with the web-keeping reference (webref_more's
    pipeline, equal to the committed one; at its SLM's rate, 6e-3). Then soft weighting (extras' two temperatures) on
    seeds 1-2 too."""
    return [lambda: [j for seed in (1, 2) for j in ratio_sweep(cell, seed, chosen_lrs(cell)["slm0.6"])] +
            ratio_sweep(f"{cell}-webref4", 0, 6e-3),
            lambda: [j for seed in (1, 2) for j in soft(cell, seed, chosen_lrs(cell)["slm0.6"])]]


def ratios_webref(cell):
    """The ratio sweep with the web-keeping reference on seeds 1-2 too: webref's pipelines of those seeds built again
    (their logs must equal the committed ones), then the ratios at its SLM's rate (6e-3)."""
    return [webref_pipes(cell)[1:], [j for seed in (1, 2) for j in ratio_sweep(f"{cell}-webref4", seed, 6e-3)]]


CHEAP = ["--ref_epochs", "4", "--ref_lr", "2e-3"]  # the first trial's reference, the demo's until this plan
DEMO_REFS = {"cheap": CHEAP, "webref4": ["--ref_web", "4", *CHEAP],  # the demo's references: train_ref.py flags
             **{f"webref4-{e}ep": ["--ref_web", "4", "--ref_epochs", e, "--ref_lr", "1.2e-2"] for e in ("10", "40")}}


def demo(refs=("cheap", "webref4"), lrs=(3e-3, 6e-3)):
    """The demo preset (train_ref.py's default: half the cpu preset's corpus and budgets, 400 test problems) in 3
    pipelines (seeds 0-2, folders out/demo/<ref>/seed<s>): the cheap reference (4 epochs at 2e-3, the demo's when
    this ran), and on the same base the other DEMO_REFS (by default the same reference keeping a quarter of the base's
    web, --ref_web 4). Seed 0: CLM and SLM 0.6 at the demo's rate then (3e-3) and twice it, SLM beside each reference
    (CLM does not use one: experiments/merge_arms.py pairs them); then seeds 1-2 at the rates seed 0's validation
    chose. Does the demo, at its budget, show what the headline shows? (demo_strong: the web-keeping reference at the
    headline's 1.2e-2 for 10 and 40 epochs, SLM at 6e-3, the rate validation chose for CLM and SLM above.)"""
    out = lambda ref, seed: f"out/demo/{ref}/seed{seed}"  # noqa: E731
    pipe = lambda ref, seed: (f"demo-{ref}{seed}-pipeline", f"{out(ref, seed)}/pipeline.json", [  # noqa: E731
        "train_ref.py", "--seed", str(seed), "--data_dir", f"data/demo{seed}", "--out_dir", out(ref, seed),
        *DEMO_REFS[ref]] + (["--base", f"{out('cheap', seed)}/base/ckpt.pt"] if ref != "cheap" else []))
    job = lambda ref, seed, arm, lr: (f"demo-{ref}{seed}-{arm}-lr{lr:g}",  # noqa: E731
                                      f"{out(ref, seed)}/{arm}-lr{lr:g}/done.json",
                                      ["train_slm.py", "--out_dir", out(ref, seed), *ARMS[arm], "--lr", str(lr)])

    def seeds():
        return [job(ref, seed, arm, lr) for ref in refs for arm, lr in chosen_lrs(None, out(ref, 0)).items()
                for seed in (1, 2)]
    return [[pipe("cheap", s) for s in (0, 1, 2)],
            [pipe(ref, 0) for ref in refs[1:]] + [job("cheap", 0, arm, lr) for arm in NOISE_ARMS for lr in lrs],
            [job(ref, 0, "slm0.6", lr) for ref in refs[1:] for lr in lrs] + [pipe(ref, s) for ref in refs[1:]
                                                                                for s in (1, 2)], seeds]


def regimes():
    """The map: each cell a pipeline (corpus, base, reference) at the cpu preset, seed 0, and CLM and SLM 0.6 at
    two rates. The reference is tuned on validation in every cell (SWEEP_REF in the default cell, the strong
    corner of it elsewhere), but in default-cheapref: the demo's cheap one (4 epochs at 2e-3), on the same base."""
    stages = [[], [], []]
    for name, (corpus, extra) in CELLS.items():
        out = f"out/regimes/{name}/seed0"
        stages[1 if "--base" in extra else 0].append(
            (f"{name}-pipeline", f"{out}/pipeline.json",
             ["train_ref.py", "--preset", "cpu", "--seed", "0", "--data_dir", f"data/regimes/{name}0", "--out_dir",
              out, "--n_evals", "8", "--eval_problems", "1000", *extra] + (["--corpus", *corpus] if corpus else [])))
        for ratio in SCREEN["ratios"] if name != "default-cheapref" else (0.6,):  # its CLM is default's
            for lr in SCREEN["lrs"]:
                folder = f"{'clm' if ratio == 1 else f'slm{ratio:g}'}-lr{lr:g}"
                stages[2].append((f"{name}-{folder}", f"{out}/{folder}/done.json",
                                  ["train_slm.py", "--out_dir", out, "--ratio", str(ratio), "--lr", str(lr)]))
    return stages


# the cells each kind of plan has its settings for
COVERED = {headline: HEADLINE_REF, extras: HEADLINE_REF, noise: HEADLINE_REF, edge: HEADLINE_REF, rerun: HEADLINE_REF,
           reflong: HEADLINE_REF, pair: MAP_LRS, hq: ("default",), cheapref: ("default",), margin: ("default",),
           threshold: ("default",), oracle: ("default",), lost: ("default",), webref_grid: ("default",),
           webref_tuned: ("default",), refloss_floor: ("default",), webref_more: ("default",),
           refedge_more: ("default",), refedge_tuned: ("default",), ratios: ("default",),
           ratios_webref: ("default",), refcurve: ("default",),
           categories: ("default",), webref: ("default",), webref_edge: ("default",), refedge: ("default",),
           refs_and_sft: ("default",)}
PLANS = {"regimes": regimes, "demo": demo, "demo_strong": lambda: demo(("cheap", *list(DEMO_REFS)[2:]), (6e-3,)),
         **{f"{kind.__name__}-{c}": (lambda c=c, kind=kind: kind(c)) for kind, cells in COVERED.items() for c in cells}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("plan", choices=PLANS, help="which experiment")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time (this machine: 2 cores)")
    ap.add_argument("--dry", action="store_true", help="list the jobs and which are done; run nothing")
    args = ap.parse_args()
    os.chdir(ROOT)  # the jobs' paths are relative to the repository
    stages, logs = PLANS[args.plan](), os.path.join(ROOT, "experiments", "logs", args.plan)
    os.makedirs(logs, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for i, stage in enumerate(stages):  # a stage may be a function: its jobs depend on the stages before it
        if callable(stage) and args.dry:
            print(f"stage {i}: chosen when the stages before it are done")
            continue
        stage = stage() if callable(stage) else stage
        todo = [j for j in stage if not done(j)]
        print(f"stage {i}: {len(todo)} job(s) to run of {len(stage)}", flush=True)
        running, failed = [], 0
        while todo or running:
            while todo and len(running) < args.jobs and not args.dry:
                name, target, argv = todo.pop(0)
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
                failed += r[1].returncode != 0
        if failed:  # the next stages are chosen from these runs: not from a partial set
            sys.exit(f"stage {i}: {failed} job(s) failed (logs: {logs}); fix: see their logs, then run the plan again")


def done(job):
    target = job[1]
    if target.endswith("pipeline.json"):  # a pipeline is done when its file names a reference with scores
        pipe = json.load(open(target)) if os.path.exists(target) else {}
        return bool(pipe) and os.path.exists(pipe["scores"])
    return os.path.exists(target)


if __name__ == "__main__":
    main()
