"""
data_real.py -- real corpora through Hugging Face `datasets` (hub names or local files), written as the files of
data.py's embedded corpus without token kinds: --web (noisy) streamed into web_base and web up to --max_tokens, --hq
(question/answer records) into ref_val (the first --hq_val) and ref_train, --eval the test problems. Documents that
share word 13-grams with a test or validation problem are dropped.

Run:  python data_real.py --web web.jsonl --hq train.jsonl --eval test.jsonl --data_dir data/mine
      python data_real.py --source owm-gsm8k --data_dir data/owm        # with the network
"""
import glob
import os
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass

from tqdm import tqdm

from data import MATH, NUMBER, SplitWriter, cl100k, ensure, extract_answer, finish
from infra import arg, cli, fail

GSM8K = dict(hq="openai/gsm8k:main:train", eval="openai/gsm8k:main:test", max_tokens=10_000_000)
REAL_PRESETS = {"owm-gsm8k": dict(web="open-web-math/open-web-math", **GSM8K),  # --source NAME; flags change them
                "finemath-gsm8k": dict(web="HuggingFaceTB/finemath:finemath-4plus", **GSM8K)}
FILE_TYPES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}  # `datasets` loaders


@dataclass
class RealConfig:
    web: str = arg("", "noisy corpus: a hub name org/name[:config[:split]] or local files (.jsonl .json .parquet "
                       ".txt; a glob or comma-separated)")
    hq: str = arg("", "high-quality subset (question/answer records): a hub name or files")
    eval: str = arg("", "evaluation problems: a hub name or files")
    web_field: str = arg("text", "the text field of the noisy corpus")
    hq_template: str = arg("Question: {question}\nAnswer: {answer}\n", "a high-quality record's text (\\n escapes)")
    eval_prompt: str = arg("Question: {question}\nAnswer:", "an evaluation record's prompt (\\n escapes)")
    eval_answer: str = arg("answer", "the field holding the answer: a number, or a solution whose final number "
                                     "follows #### or 'The answer is'")
    max_tokens: int = arg(0, "noisy-corpus tokens to take (0: all of local files; a hub dataset needs a budget)")
    base_share: float = arg(0.4, "share of the noisy documents (and, with a budget, tokens) for the base model")
    hq_val: int = arg(500, "high-quality records held out as ref_val")
    max_eval: int = arg(1319, "evaluation problems kept")
    ngram: int = arg(13, "drop documents overlapping a held-out problem in word n-grams (0: off)")
    ngram_share: float = arg(0.0, "...in more than this share of the problem's n-grams (0: any one; templated "
                                  "text, where problems share phrases, wants e.g. 0.5)")
    num_proc: int = arg(8, "tokenizer threads")


def local_files(spec):
    """The local files a source names (a path, a glob or comma-separated paths); [] for a hub name."""
    return [p for item in spec.split(",") for p in sorted(glob.glob(os.path.expanduser(item)))]


def looks_local(item):
    """Whether a source names files, not a hub dataset "org/name[:config[:split]]": it starts with . / or ~, holds a
    glob, has no org/ part, or has a file type (one rho reads, or a mistyped one: a short extension)."""
    return (item.startswith((".", "/", "~")) or "/" not in item or any(c in item for c in "*?[")
            or os.path.splitext(item)[1].lower() in FILE_TYPES
            or bool(re.fullmatch(r"\.[a-z]\w{0,6}", os.path.splitext(item.split(":")[0])[1].lower())))


def real_config(args):
    """The RealConfig of --source (custom, or a preset whose settings the flags change), checked before any work.
    Local paths are stored relative to the folder the command runs in: a moved project rebuilds the same config."""
    if args.source not in REAL_PRESETS and args.source != "custom":
        fail(f"unknown --source '{args.source}'", f"use custom or one of {', '.join(REAL_PRESETS)}")
    given = {k: getattr(args, k) for k, default in asdict(RealConfig()).items() if getattr(args, k) != default}
    rc = RealConfig(**{**REAL_PRESETS.get(args.source, {}), **given})
    for role in ("web", "hq", "eval"):
        if not getattr(rc, role):
            fail(f"no --{role} given for --source custom", "pass a hub name or local files")
        items = getattr(rc, role).split(",")
        for item in items:
            if looks_local(item) and not glob.glob(os.path.expanduser(item)):
                fail(f"no such file: {item}", f"pass existing files to --{role} (.jsonl .json .parquet .txt) or a "
                     "hub name like openai/gsm8k:main:train")
        setattr(rc, role, ",".join(os.path.relpath(os.path.expanduser(i)) if local_files(i) else i for i in items))
    if not rc.max_tokens and not local_files(rc.web):
        fail(f"--max_tokens 0 would stream all of the hub dataset {rc.web}", "pass a token budget, e.g. "
             "--max_tokens 10000000")
    return rc


def records(spec, what):
    """The records (dicts) of a hub name or local files, streamed with `datasets`; a source that cannot be read, or
    holds no record, is a one-line error."""
    import datasets
    parts, n = local_files(spec), 0
    kinds = {FILE_TYPES.get(os.path.splitext(p)[1].lower()) for p in parts}
    if parts and (len(kinds) != 1 or None in kinds):
        fail(f"cannot read {spec} (one kind of .jsonl, .json, .parquet or .txt files expected)",
             "pass files of one of those kinds")
    if parts and all(os.path.getsize(p) == 0 for p in parts):
        fail(f"{spec} is empty", "pass a dataset or files with records in them")
    name, config, split = (spec.split(":") + [None, None])[:3]
    try:
        stream = (datasets.load_dataset(kinds.pop(), data_files=parts, split="train", streaming=True) if parts
                  else datasets.load_dataset(name, config or None, split=split or "train", streaming=True))
        for n, rec in enumerate(stream, 1):
            yield rec
    except Exception as e:  # on loading, or a malformed record met while streaming
        why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
        if parts:
            fail(f"cannot read {what} {spec} ({why})", "check that the files are well-formed")
        fail(f"cannot load '{spec}' from the Hugging Face hub ({why})", "check the name and the network, or work "
             "offline with the embedded default (python data.py) or local files (--web/--hq/--eval FILES)")
    if n == 0:
        fail(f"{what} {spec} is empty", "pass a dataset or files with records in them")


def field(rec, spec, name=None, template=None):
    """A record's field `name`, or `template` filled with its fields; a missing field is a one-line error."""
    try:
        return rec[name] if template is None else template.format(**rec)
    except KeyError as e:
        fail(f"{spec} has no field '{e.args[0]}' (fields: {', '.join(rec)})", "name the text field with --web_field, "
             "or the fields of --hq_template / --eval_prompt / --eval_answer")


def final_number(value):
    """The answer of an eval record: a number, a number written alone, or the final number of a solution."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*" + NUMBER + r"\s*", str(value))
    return int(m.group(1).replace(",", "")) if m else extract_answer(str(value))


def held_out_record(rec, rc, spec):
    """[{"prompt", "answer", "solution"}] of a question/answer record (the solution: what --hq_template adds after
    the --eval_prompt text, where it starts with it), or [] if the record has no final number."""
    answer = final_number(field(rec, spec, rc.eval_answer))
    if answer is None:
        return []
    prompt, full = field(rec, spec, template=rc.eval_prompt), field(rec, spec, template=rc.hq_template)
    return [{"prompt": prompt, "answer": answer,
             **({"solution": full[len(prompt):]} if full.startswith(prompt) else {})}]


def ngrams(w, n):
    """The set of n-grams of a list of words (fewer than n words: all of them, as one)."""
    return {" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


class Decontaminator:
    """Drops documents holding more than `share` of a held-out problem's word n-grams (0: any one, as GPT-3 and
    OpenWebMath with 13), or all of a problem shorter than n words; counts what it dropped, per source."""

    def __init__(self, problems, n, share=0.0):
        self.share, self.dropped, self.index, self.sizes, self.lengths = share, Counter(), {}, [], {n}
        for i, p in enumerate(problems if n else []):
            w = re.findall(r"[a-z0-9]+", (p["prompt"] + " " + p.get("solution", "")).lower())
            self.lengths.add(min(n, len(w)))
            grams = ngrams(w, n)
            self.sizes.append(len(grams))
            for g in grams:
                self.index.setdefault(g, []).append(i)

    def clean(self, text, source):
        w = re.findall(r"[a-z0-9]+", text.lower())
        grams = set().union(*(ngrams(w, k) for k in self.lengths)) if self.index else ()
        hits = Counter(i for g in grams for i in self.index.get(g, ()))
        if any(k > self.share * self.sizes[i] for i, k in hits.items()):
            self.dropped[source] += 1
            return False
        return True


def build_real(rc, data_dir):
    """Tokenize real corpora into data_dir, without labels (real data has no ground-truth kinds). The held-out problems
    come first, so that every document sharing n-grams with one is dropped; nothing is left if a source fails."""
    enc, base_budget = cl100k(), int(rc.max_tokens * rc.base_share)
    budgets = {"web_base": base_budget, "web": rc.max_tokens - base_budget, "ref_val": 0, "ref_train": 0}
    writers = {split: SplitWriter(enc, os.path.join(data_dir, split), 256 if split.startswith("web") else 2000,
                                  budget, rc.num_proc) for split, budget in budgets.items()}  # web pages are longer
    if any(p.endswith(".txt") for p in local_files(rc.web)):
        print(f"note: {rc.web} is read as one document per line (.txt); use .jsonl for multi-line documents")
    try:
        evals = [p for rec in records(rc.eval, "evaluation set") for p in held_out_record(rec, rc, rc.eval)]
        evals = evals[:rc.max_eval]
        if not evals:
            fail(f"no record of {rc.eval} has a final number in '{rc.eval_answer}'", "name the answer field with "
                 "--eval_answer")
        hq = list(records(rc.hq, "high-quality subset"))
        vals = [v for rec in hq[:rc.hq_val] for v in held_out_record(rec, rc, rc.hq)]
        clean = Decontaminator(evals + vals, rc.ngram, rc.ngram_share)
        for i, rec in enumerate(hq):
            text = field(rec, rc.hq, template=rc.hq_template)
            if i < rc.hq_val or clean.clean(text, "high-quality"):
                writers["ref_val" if i < rc.hq_val else "ref_train"].add([(text, MATH)])
        stream_web(rc, writers, clean)
        for w in writers.values():
            w.close()
        if not writers["ref_train"].tokens:
            fail(f"{rc.hq} has no records left for ref_train after holding out --hq_val {rc.hq_val}", "lower --hq_val")
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    if clean.dropped:
        print(f"decontamination: dropped {', '.join(f'{n:,} {s} document(s)' for s, n in clean.dropped.items())} "
              f"overlapping a test or validation problem in {rc.ngram}-grams of words")
    return finish(data_dir, enc, writers, evals, vals, (), {"source": asdict(rc), "decontamination": {
        "ngram": rc.ngram, "share": rc.ngram_share, "dropped_documents": clean.dropped}})


def stream_web(rc, writers, clean):
    """The noisy corpus, a document at a time: to web_base while its share of the documents is below base_share, else
    to web; one that a full split cannot take goes to the other. The progress bar: every 0.5 s, 15 s in a log file."""
    base, web = writers["web_base"], writers["web"]
    n_docs = n_base = 0
    with tqdm(desc=f"tokenizing {rc.web}", total=rc.max_tokens or None, unit="tok", unit_scale=True,
              mininterval=0.5 if sys.stderr.isatty() else 15) as bar:
        for rec in records(rc.web, "noisy corpus"):
            text = str(field(rec, rc.web, rc.web_field))
            if not clean.clean(text, "noisy corpus"):
                continue
            first, other = (base, web) if n_base < rc.base_share * (n_docs + 1) else (web, base)
            n_docs, n_base = n_docs + 1, n_base + (first is base)
            for doc in (first.add([(text, MATH)]) if not first.full else [[(text, MATH)]]):
                if not other.full:
                    other.add(doc)
            bar.update(base.tokens + web.tokens - bar.n)
            if base.full and web.full:
                break
        for doc in base.flush():  # what the base's last chunk had no room for; then web's pending documents
            web.add(doc)
        web.flush()
        bar.update(base.tokens + web.tokens - bar.n)
    got = base.tokens + web.tokens
    if rc.max_tokens and got < rc.max_tokens:
        fail(f"{rc.web} holds {got:,} tokens, fewer than --max_tokens {rc.max_tokens:,}",
             f"pass --max_tokens {got} or less, or 0 to take all of it")


@dataclass
class RealRun(RealConfig):
    data_dir: str = arg("data", "where to write the corpus")
    source: str = arg("custom", f"custom (give --web, --hq, --eval) or a preset: {', '.join(REAL_PRESETS)}")
    overwrite: bool = arg(False, "rebuild even if data_dir holds another corpus")


def main(args):
    for name in ("hq_template", "eval_prompt"):  # \n escapes typed on the command line
        setattr(args, name, getattr(args, name).encode("latin-1", "backslashreplace").decode("unicode_escape"))
    ensure(real_config(args), args.data_dir, args.overwrite, build_real, "source")


if __name__ == "__main__":
    main(cli(RealRun, "Build a corpus from real data (Hugging Face hub names or local files) through `datasets`."))
