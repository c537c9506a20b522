"""analysis.py -- inside one run (plot.py --tokens, --categories, --explain): which tokens SLM keeps, the paper's
token loss categories, the selection explained kind by kind; across runs, what each arm keeps of each kind, the ratio
plot."""
import glob
import os
import pathlib
import re

import numpy as np
import torch

import data
import rho
from infra import atomic_write, fail, load_checkpoint, read_pipeline, read_run


def md_table(head, rows, caption=""):
    """Markdown lines: the caption and a blank line (if any), the header, its rule, a row per line."""
    return ([caption, ""] if caption else []) + ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"] + \
        ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def run_context(run_dir):
    """(config, pipeline, tokenizer, meta) of a run folder made by train_slm.py."""
    cfg, pipe = read_run(run_dir)[0], read_pipeline(os.path.dirname(os.path.normpath(run_dir)))
    if not cfg or not pipe:
        fail(f"{run_dir} is not a student run of a pipeline", "pass a folder made by train_slm.py, e.g. out/slm0.6")
    meta = data.read_meta(cfg["data_dir"])
    return cfg, pipe, data.Tokenizer(meta["vocab"]), meta


def load_model(path, meta):
    """(model in eval mode, its step), its vocabulary checked against the corpus's."""
    ckpt = load_checkpoint(path, meta=meta)
    return rho.GPT.from_checkpoint(ckpt).eval(), ckpt["step"]


@torch.no_grad()
def page_losses(model, ids):
    """The loss of every token of a page but the first, block by block, with the context training gives it."""
    T, out = model.config.block_size, []
    for i in range(0, len(ids) - 1, T):
        x = torch.tensor(ids[i:i + T + 1])[None]                     # (1, t + 1)
        out.append(rho.token_losses(model(x[:, :-1]), x[:, 1:])[0])  # (t,)
    return torch.cat(out).numpy()


def pages_to_use(args, cfg, tok, n):
    """(ids, kind labels or None) per page: the --text files, else --pages (default n) held-out pages."""
    if not args.text:
        return data.held_out_pages(cfg["data_dir"], args.pages or n)
    pages = []
    for path in args.text.split(","):
        ids = tok.encode(pathlib.Path(path).read_text("utf-8", "replace")) if os.path.isfile(path) else []
        if len(ids) < 2:
            fail(f"no text file at {path}, or one of fewer than two tokens", "pass text files, comma-separated")
        pages.append((ids, None))
    return pages


def token_picture(args):
    """Every token of a few pages coloured by its excess loss and kept or dropped at --ratio over all shown tokens."""
    cfg, pipe, tok, meta = run_context(args.tokens)
    student, step = load_model(os.path.join(args.tokens, "ckpt.pt"), meta)
    ref, _ = load_model(pipe["ref"], meta)
    pages = [{"pieces": tok.pieces(ids), "kinds": labels,  # the first token of a page has no loss
              "excess": np.r_[np.nan, page_losses(student, ids) - page_losses(ref, ids)]}
             for ids, labels in pages_to_use(args, cfg, tok, 4)]
    excess = np.concatenate([p["excess"] for p in pages])
    scored = ~np.isnan(excess)
    keep = np.zeros(len(excess), bool)
    keep[scored] = rho.select_topk(torch.tensor(excess[scored]), args.ratio).numpy()
    for p, kept in zip(pages, np.split(keep, np.cumsum([len(p["pieces"]) for p in pages])[:-1])):
        p["keep"] = kept
    lim = float(np.nanpercentile(np.abs(excess), 90)) or 1.0  # the colour scale saturates beyond it
    kinds = meta["kinds"] if pages[0]["kinds"] is not None else []
    png = os.path.join(args.tokens, "tokens.png")
    draw_tokens(pages, f"{args.tokens} (step {step}) against its reference: {args.ratio:.0%} of the shown tokens "
                "kept, those with the highest excess loss", lim, kinds, png)
    if kinds:
        lab = np.concatenate([p["kinds"] for p in pages])
        print("share of each kind kept: " + ", ".join(f"{k} {keep[scored & (lab == i)].mean():.0%}"
                                                      for i, k in enumerate(kinds) if (scored & (lab == i)).any()))
    print(f"kept {keep.sum():,} of {scored.sum():,} scored tokens; wrote {png}")
    return pages


def layout(pieces, width):
    """([(line, column, shown text) per token], lines) in a grid width columns wide; a newline ends a line."""
    line, col, out = 0, 0, []
    for p in pieces:
        shown = p.replace("\t", "    ").replace("\n", "\u21b5").replace("\r", "")
        if col and col + len(shown) > width:
            line, col = line + 1, 0
        out.append((line, col, shown))
        col += len(shown)
        if "\n" in p:
            line, col = line + 1, 0
    return out, line + 1


def draw_tokens(pages, title, lim, kinds, path, width=110):
    """The pages, each token on a cell coloured by its excess loss, pale if dropped, its text in its kind's colour."""
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle
    cmap, grids = matplotlib.colormaps["coolwarm"], [layout(p["pieces"], width) for p in pages]
    cell = 12.0 / width  # inches per character
    fs, y_end = cell * 72 / 0.62, 3.0 + sum(n + 1.5 for _, n in grids) + 6  # 6 lines for the legend
    fig = plt.figure(figsize=(12.6, y_end * cell * 1.9))
    ax = fig.add_axes([0.02, 0.0, 0.96, 1.0], xlim=(0, width), ylim=(y_end, 0))
    ax.axis("off")
    ax.text(0, 0.5, title, fontsize=fs * 1.05, va="center")
    y0 = 3.0
    for i, (p, (cells, n_lines)) in enumerate(zip(pages, grids)):
        ax.text(0, y0 - 0.75, f"page {i + 1}", fontsize=fs, color="0.4", va="center")
        for j, ((line, col, shown), kept, v) in enumerate(zip(cells, p["keep"], p["excess"])):
            face = "0.9" if np.isnan(v) else cmap(0.5 + 0.5 * float(np.clip(v / lim, -1, 1)))
            ax.add_patch(Rectangle((col, y0 + line - 0.45), max(len(shown), 1), 0.9, color=face,
                                   alpha=0.85 if kept else 0.18, lw=0))
            color = "black" if p["kinds"] is None else f"C{p['kinds'][j] % 10}"
            ax.text(col, y0 + line, shown, fontsize=fs, family="monospace", va="center", color=color,
                    alpha=1.0 if kept else 0.5)
        y0 += n_lines + 1.5
    handles = [Patch(color=cmap(1.0), label=f"excess loss +{lim:.2f} (student worse than reference)"),
               Patch(color=cmap(0.0), label=f"excess loss -{lim:.2f}"),
               Patch(color="0.85", label="pale cell, faint text: dropped")]
    handles += [Patch(color=f"C{i % 10}", label=f"text: {k}") for i, k in enumerate(kinds)]
    ax.legend(handles=handles, loc="lower center", ncol=4, fontsize=fs * 0.9, frameon=False)
    fig.savefig(path, dpi=100)
    plt.close(fig)


CATEGORIES = ("H->H", "L->H", "H->L", "L->L")
PAPER_SHARES = (0.11, 0.12, 0.26, 0.51)  # RHO-1 §2.1, TinyLlama-1B on OpenWebMath


def categorize(losses, x, change=0.2, high=1.0):
    """(category, change) per token of losses (K checkpoints at x, N tokens) by its fitted change over the run:
    below -change H->L, above +change L->H; else H->H where the mean loss is >= high, else L->L."""
    x = (np.asarray(x, float) - x[0]) / (x[-1] - x[0])
    xc = x - x.mean()
    delta = xc @ (losses - losses.mean(0)) / (xc @ xc)  # (N,): the slope, i.e. the change over the unit span
    return np.select([delta < -change, delta > change, losses.mean(0) >= high], [2, 1, 0], 3), delta


def loss_categories(args):
    """Held-out tokens in the paper's four categories by their loss over a run's kept checkpoints (and a picture)."""
    import matplotlib.pyplot as plt
    cfg, _, tok, meta = run_context(args.categories)
    paths = sorted(glob.glob(os.path.join(args.categories, "ckpt_*.pt")))  # ckpt_<step>.pt: in step order
    if len(paths) < 3:
        fail(f"{args.categories} kept {len(paths)} checkpoint(s); the categories need 3 or more",
             "train the run with `python train_slm.py --ratio 1.0 --keep_ckpts`")
    pages = pages_to_use(args, cfg, tok, 200)
    models = [load_model(path, meta) for path in paths]
    steps = [step for _, step in models]
    losses = np.stack([np.concatenate([page_losses(m, ids) for ids, _ in pages]) for m, _ in models])  # (K, N)
    cat, _ = categorize(losses, steps)
    shares = np.bincount(cat, minlength=4) / len(cat)
    lines = md_table(["category", "this run", "RHO-1 (1B, OpenWebMath)"],
                     [(c, f"{s:.0%}", f"{p:.0%}") for c, s, p in zip(CATEGORIES, shares, PAPER_SHARES)],
                     f"token-loss categories of {losses.shape[1]:,} held-out tokens over {len(paths)} checkpoints of "
                     f"{args.categories} (fitted change beyond +-0.2 nats: rising or falling; else high if mean loss "
                     ">= 1 nat)")
    if pages[0][1] is not None:
        lab = np.concatenate([labels[1:] for _, labels in pages])
        masks = [(k, lab == i) for i, k in enumerate(meta["kinds"]) if (lab == i).any()]
        lines += [""] + md_table(["kind", "tokens", *CATEGORIES], [[k, f"{m.sum():,}", *(
            f"{s:.0%}" for s in np.bincount(cat[m], minlength=4) / m.sum())] for k, m in masks])
    png = os.path.join(args.categories, "categories.png")
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs, rng = np.arange(4), np.random.default_rng(0)
    bars.bar(xs - 0.2, shares, 0.4, label="this run")
    bars.bar(xs + 0.2, PAPER_SHARES, 0.4, label="RHO-1, 1B")
    bars.set(xticks=xs, xticklabels=CATEGORIES, ylabel="share of held-out tokens", title="token-loss categories")
    for k, name in enumerate(CATEGORIES):
        idx = np.flatnonzero(cat == k)
        if len(idx):
            some = rng.choice(idx, min(20, len(idx)), replace=False)
            curves.plot(steps, losses[:, some], color=f"C{k}", lw=0.5, alpha=0.4)
            curves.plot(steps, losses[:, idx].mean(1), color=f"C{k}", lw=2.5, label=f"{name}: {shares[k]:.0%}")
    curves.set(xlabel="step", ylabel="token loss (nats)", title="mean token loss per category (thin: 20 tokens each)")
    for ax in (bars, curves):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print("\n".join(lines) + f"\n\nwrote {png}")
    return shares


ROLES = ["question", "solution text", "operands", "results", "final answer"]
PROBLEM_RE = re.compile(r"Question: [^\n]*\n(Answer: (?:[^\n]*\n)*?)#### (-?\d+)\n")


def token_roles(pieces, kinds):
    """(role per token: an index into ROLES by its first non-space character, -1 outside target-format problems;
    slipped per token: in a problem holding a math_wrong token)."""
    text = "".join(pieces)
    first = np.cumsum([0] + [len(p) for p in pieces[:-1]]) + [len(p) - len(p.lstrip()) if p.strip() else 0
                                                             for p in pieces]
    role, problem = np.full(len(text), -1), np.full(len(text), -1)
    for i, p in enumerate(PROBLEM_RE.finditer(text)):
        problem[p.start():p.end()] = i
        role[p.start():p.start(1)], role[p.start(1):p.end()] = 0, 1
        for c in data.CALC_RE.finditer(text, p.start(1), p.end(1)):
            role[c.start(1):c.end(1)] = role[c.start(3):c.end(3)] = 2
            role[c.start(4):c.end(4)] = 3
        role[p.start(2):p.end(2)] = 4
    role, problem = role[first], problem[first]
    return role, (problem >= 0) & np.isin(problem, problem[(kinds == data.WRONG) & (problem >= 0)])


def auroc(pos, neg):
    """P(score(positive) > score(negative)), ties counted half (Mann-Whitney U / n_pos n_neg); NaN without both."""
    neg = np.sort(neg)
    lo, hi = np.searchsorted(neg, pos, "left"), np.searchsorted(neg, pos, "right")  # negatives below, not above
    return float((lo + hi).sum() / 2 / (len(pos) * len(neg))) if len(pos) * len(neg) else np.nan


def explain_scores(args):
    """Every scored token of held-out pages: kind, role, slipped, losses (reference, student at 0 and end), kept."""
    cfg, pipe, tok, meta = run_context(args.explain)
    if cfg["select"] not in ("excess", "ref_loss") or cfg["weighting"] == "soft":
        fail(f"{args.explain} is not SLM or ref-loss: the table ranks tokens by their score",
             "explain an SLM, ref-loss or CLM run (CLM: to see what SLM would keep)")
    pages = data.held_out_pages(cfg["data_dir"], args.pages or 300)
    per_page = [(np.array(kinds), *token_roles(tok.pieces(ids), np.array(kinds))) for ids, kinds in pages]
    tokens = {key: np.concatenate([page[i][1:] for page in per_page])  # the first token of a page has no loss
              for i, key in enumerate(("kind", "role", "slipped"))}
    ref = cfg["ref_ckpt"] or pipe["ref"]  # the run's own reference (CLM names none: the pipeline's)
    for name, path in (("ref", ref), ("start", cfg["init"]), ("end", os.path.join(args.explain, "ckpt.pt"))):
        model, tokens[f"step_{name}"] = load_model(path, meta)
        tokens[name] = np.concatenate([page_losses(model, ids) for ids, _ in pages])
    for when in ("start", "end"):  # the run's rule: the top ratio by its score
        tokens[f"excess_{when}"] = tokens[when] - tokens["ref"]
        score = rho.SCORES[cfg["select"]](torch.tensor(tokens[when]), torch.tensor(tokens["ref"]))
        tokens[f"keep_{when}"] = rho.select_topk(score, cfg["ratio"]).numpy()
    return cfg, tokens


def explain(args):
    """What the run keeps of each kind and math role at step 0 and the end, and how scores tell slipped results."""
    cfg, t = explain_scores(args)
    rows, cells = [("all", np.ones(len(t["ref"]), bool))], []
    for i, k in enumerate(data.KINDS):
        rows += [(k, t["kind"] == i)] + [(f"math: {r}", (t["kind"] == i) & (t["role"] == j))
                                         for j, r in enumerate(ROLES) if i == data.MATH]
    for name, m in rows:
        if m.any():
            s, e, r = (t[k][m].mean() for k in ("start", "end", "ref"))
            cells.append([name, f"{m.mean():.1%}", f"{s:.3f} / {e:.3f}", f"{r:.3f}", f"{s - r:+.3f} / {e - r:+.3f}",
                          f"{t['keep_start'][m].mean():.1%} / {t['keep_end'][m].mean():.1%}"])
    arm, by = ("SLM", "excess") if cfg["select"] == "excess" else ("ref-loss", "the reference's loss, lowest first")
    lines = [f"# {args.explain}: {arm} {cfg['ratio']:g} explained on {len(t['ref']):,} tokens of {args.pages or 300} "
             "held-out pages", ""] + md_table(
        ["tokens", "share", "student loss (0 / end)", "reference loss", "excess (0 / end)", "kept (0 / end)"], cells,
        f"step 0 (step {t['step_start']}, {cfg['init']}) and end (step {t['step_end']}) of the student against the "
        f"reference ({t['step_ref']} steps); excess = student - reference; kept: the top {cfg['ratio']:.0%} by "
        f"{by} over all these tokens")
    wrong = t["kind"] == data.WRONG
    right = (t["kind"] == data.MATH) & (t["role"] == 3) & ~t["slipped"]
    scores = (("reference loss", "ref"), ("student loss, step 0", "start"), ("student loss, end", "end"),
              ("excess, step 0", "excess_start"), ("excess, end", "excess_end"))
    lines += [""] + md_table(["score", "slipped", "correct", "AUROC"], [
        [name, f"{t[k][wrong].mean():.3f}", f"{t[k][right].mean():.3f}", f"{auroc(t[k][wrong], t[k][right]):.3f}"]
        for name, k in scores], f"slipped results (math_wrong, {wrong.sum()} tokens) against the results of correct "
        f"solutions ({right.sum()} tokens): mean of each score and its AUROC at telling them apart (slipped = "
        "positive)")
    path = os.path.join(args.explain, "explain.md")
    atomic_write(path, "\n".join(lines) + "\n")
    print("\n".join(lines) + f"\n\nwrote {path}")
    return t


def kept_over_run(run):
    """{kind: share kept, 'precision': share of math in the kept}, records weighted by tokens; None without kinds."""
    recs = [(t1 - t0, s, c) for t0, t1, s, c in zip(run["tokens"], run["tokens"][1:], run["selected"][1:],
                                                    run["composition"][1:]) if s]
    if not recs:
        return None
    w = np.array([d for d, _, _ in recs]) / sum(d for d, _, _ in recs)
    out = {k: float(np.dot(w, [s.get(k, np.nan) for _, s, _ in recs])) for k in recs[-1][1]}
    out["precision"] = float(np.dot(w, [c.get("math", np.nan) for _, _, c in recs]))
    return out


def selection_table(res):
    """What each arm that drops tokens keeps of each token kind over its run, at its chosen rate (markdown lines)."""
    rows = [(row["arm"], [kept_over_run(run) for run in row["runs"]]) for row in res["rows"]]
    rows = [(arm, ks) for arm, ks in rows if ks and all(ks) and min(v for kind, v in ks[0].items()
                                                                    if kind != "precision") < 0.999]
    if not rows:
        return []
    kinds = list(rows[0][1][0])
    return [""] + md_table(["arm", *kinds], [[arm] + [f"{np.median([k.get(kind, np.nan) for k in ks]):.1%}"
                                                      for kind in kinds] for arm, ks in rows],
                           "share of each kind's tokens kept over the run (each arm at its chosen rate; median over "
                           "seeds; precision: the share of target math among the kept tokens):")


def plot_ratios(sweeps, path):
    """Final test answer loss and accuracy against the ratio; sweeps: per group, [(ratio, row at its best lr)]."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, what in zip(axes, ("answer", "acc"), ("final test answer loss", "final test accuracy")):
        for rows in sweeps:
            ys = [np.array([run[key][-1] for run in row["runs"]]) for _, row in rows]
            mid = np.array([np.median(y) for y in ys])
            spread = [mid - [y.min() for y in ys], [y.max() for y in ys] - mid]
            ax.errorbar([ratio for ratio, _ in rows], mid, yerr=spread, fmt="o-", capsize=3,
                        label=f"{len(rows[0][1]['runs'])} seed(s)")
        ax.set(xlabel="ratio (share of tokens with a loss; 1.0 = CLM)", ylabel=what, title=f"{what} against the ratio")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
