"""Ask your documents (issue 24): indexing rate, re-index of an unchanged tree, query latency
at many chunks, and retrieval quality on a small corpus written for it.

    .venv/bin/python -m bench.docs [--mb 100] [--files 10000] [--chunks 200000]

Everything runs in a temporary folder with Dolly's own tokenizer (the test fixture); the
figures go to stdout as a Markdown table. Text is generated: the words of this repository's
own prose and code, drawn with their real frequencies (so the token cache and the index see a
realistic mix of frequent and rare words; a larger real vocabulary would index slower).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import statistics
import tempfile
import time
from pathlib import Path

from dolly_desktop.documents import prepare
from dolly_desktop.documents.chunk import TokenCounter, chunk_blocks
from dolly_desktop.documents.index import DocIndex
from dolly_desktop.documents.parse import Block
from dolly_desktop.documents.retrieve import Bm25Retriever, retrieve

TOKENIZER = Path(__file__).parent.parent / "tests/fixtures/dolly-v2-tokenizer/tokenizer.json"
STOP = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "with", "was"]
REPO = Path(__file__).parent.parent


def repo_vocabulary() -> tuple[list[str], list[float]]:
    """English words with their real frequencies: every word of this repository's Markdown
    and Python (docstrings, comments, names split at underscores)."""
    counts: dict[str, int] = {}
    for path in [*REPO.glob("*.md"), *REPO.glob("docs/*.md"), *REPO.glob("dolly_desktop/**/*.py")]:
        for w in re.findall(r"[a-z]{2,}", path.read_text(errors="replace").lower()):
            counts[w] = counts.get(w, 0) + 1
    words = sorted(counts, key=lambda w: -counts[w])
    return words, [float(counts[w]) for w in words]


class Words:
    """Sentences of words drawn by frequency. `vocabulary` 0: this repository's words with
    their own counts (a few thousand: at 200k chunks nearly every word is in a large share of
    them, the worst case for a search). Else that many words, the repository's first and then
    made-up ones, drawn by Zipf's law (the r-th commonest with weight 1/r), as real text of
    this size has: by Heaps' law 200 MB of English holds some 10^5 distinct words."""

    def __init__(self, seed: int = 7, vocabulary: int = 0) -> None:
        self.rng = random.Random(seed)
        self.vocab, weights = repo_vocabulary()
        if vocabulary:
            made = random.Random(seed + 1000)
            known = set(self.vocab)
            while len(self.vocab) < vocabulary:
                w = "".join(
                    made.choice("bdfgklmnprstvz") + made.choice("aeiou")
                    for _ in range(made.randint(2, 4))
                )
                if w not in known:
                    known.add(w)
                    self.vocab.append(w)
            del self.vocab[vocabulary:]
            weights = [1 / r for r in range(1, len(self.vocab) + 1)]
        self.cum = list(_accumulate(weights))

    def sentence(self, n: int) -> str:
        words = self.rng.choices(self.vocab, cum_weights=self.cum, k=n)
        for i in range(0, n, 4):
            words[i] = self.rng.choice(STOP)
        return " ".join(words).capitalize() + "."

    def document(self, nbytes: int) -> str:
        parts, size, section = [], 0, 0
        while size < nbytes:
            if size // 4000 >= section:
                section += 1
                parts.append(f"\n## {self.sentence(3)[:-1]}\n")
            p = " ".join(self.sentence(self.rng.randint(8, 20)) for _ in range(5)) + "\n"
            parts.append(p)
            size += len(p) + 1
        return "\n".join(parts)


def _accumulate(xs: list[float]):
    total = 0.0
    for x in xs:
        total += x
        yield total


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the indexing workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_indexing(tmp: Path, counter: TokenCounter, mb: int) -> dict[str, str]:
    """The same Markdown indexed twice, side by side: in one process, then as configured
    (worker processes for a job this big: documents.prepare)."""
    words = Words(1)
    root = tmp / "md"
    root.mkdir()
    per_file = 200_000
    total = 0
    for i in range(mb * 10**6 // per_file):
        text = words.document(per_file)
        (root / f"doc{i:04}.md").write_text(text)
        total += len(text.encode())
    out = {}
    for label, pool_from in (("one process", 10**15), ("with workers", prepare.POOL_MIN_BYTES)):
        saved, prepare.POOL_MIN_BYTES = prepare.POOL_MIN_BYTES, pool_from
        ix = DocIndex(tmp / f"index-{pool_from}.sqlite3")
        ix.add("md", [root])
        t0, c0 = time.perf_counter(), cpu_seconds()
        report = ix.index("md", TokenCounter(TOKENIZER))  # a cold token cache
        dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        prepare.POOL_MIN_BYTES = saved
        t0 = time.perf_counter()
        again = ix.index("md", counter)
        dt_again = time.perf_counter() - t0
        info = ix.info("md")
        ix.close()
        out[f"index Markdown, cold token cache, {label}"] = (
            f"{total / 1e6:.0f} MB, {report.files} files, {info.chunks:,} chunks in {dt:.1f} s: "
            f"**{total / 1e6 / dt:.1f} MB/s** ({total / 1e6 / cpu:.1f} MB per CPU-second)"
        )
    out["re-index it unchanged"] = f"{dt_again * 1000:.0f} ms ({again.unchanged} unchanged)"
    return out


def bench_reindex(tmp: Path, counter: TokenCounter, files: int) -> dict[str, str]:
    words = Words(2)
    root = tmp / "tree"
    for i in range(files):
        d = root / f"dir{i // 100:03}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"note{i:05}.txt").write_text(words.document(600))
    ix = DocIndex(tmp / "tree.sqlite3")
    ix.add("tree", [root])
    t0 = time.perf_counter()
    ix.index("tree", counter)
    first = time.perf_counter() - t0
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = ix.index("tree", counter)
        times.append(time.perf_counter() - t0)
        assert r.unchanged == files, r.line()
    ix.close()
    return {
        f"first index of {files:,} small files": f"{first:.1f} s",
        f"re-index of {files:,} unchanged files (best of 3)": f"**{min(times):.2f} s**",
    }


def bench_queries(
    tmp: Path, counter: TokenCounter, chunks: int, vocabulary: int = 0
) -> dict[str, str]:
    """Text files of 100 sentences, as many as make `chunks` chunks, indexed (the indexer's
    own path), then questions timed. `vocabulary`: see Words."""
    words = Words(3, vocabulary)
    tmp = tmp / f"vocabulary-{vocabulary}"
    tmp.mkdir()
    root = tmp / "big"
    root.mkdir()
    texts = ["\n\n".join(words.sentence(150) for _ in range(100))]
    per_file = len(chunk_blocks([Block(texts[0])], counter))  # chunks run across sentences
    while len(texts) * per_file < chunks:
        texts.append("\n\n".join(words.sentence(150) for _ in range(100)))
    for i, text in enumerate(texts):
        (root / f"b{i:05}.txt").write_text(text)
    db = tmp / "big.sqlite3"
    ix = DocIndex(db)
    ix.add("big", [root])
    t0 = time.perf_counter()
    ix.index("big", counter)
    build = time.perf_counter() - t0
    n = ix.info("big").chunks
    rng = random.Random(5)
    # Questions a person might ask of these files: a few words of a random chunk in a
    # question; and a worst case: 3-9 words drawn by frequency (mostly the commonest).
    ids = [r[0] for r in ix._db.execute("SELECT rowid FROM chunk_text")]
    own = []
    for i in rng.sample(ids, 300):
        body = ix._db.execute("SELECT body FROM chunk_text WHERE rowid = ?", (i,)).fetchone()
        text = body[0].split()
        k = rng.randint(0, max(0, len(text) - 8))
        own.append("What does " + " ".join(text[k : k + rng.randint(3, 7)]) + " mean?")
    common = []
    for _ in range(300):
        q = words.rng.choices(words.vocab, cum_weights=words.cum, k=rng.randint(3, 9))
        common.append("What does " + " ".join(q) + " mean?")
    ix.search(["big"], own[0], 20)  # warm
    kind = f"{vocabulary:,} words by Zipf's law" if vocabulary else "the repository's words"
    out = {f"index of {n:,} chunks, vocabulary {kind}": f"built in {build:.0f} s"}
    for label, questions in (("words of a chunk", own), ("commonest words", common)):
        lat = []
        for q in questions:
            t0 = time.perf_counter()
            ix.search(["big"], q, 20)
            lat.append((time.perf_counter() - t0) * 1000)
        lat.sort()
        p50, p95 = statistics.median(lat), lat[int(0.95 * len(lat))]
        out[f"query (bm25, top 20), {label}: p50 / p95 / max"] = (
            f"{p50:.1f} / **{p95:.1f}** / {lat[-1]:.1f} ms"
        )
    retriever = Bm25Retriever(ix)
    full = []
    for q in own[:100]:
        t0 = time.perf_counter()
        retrieve(retriever, ["big"], q, counter.count, 2048, 256)
        full.append((time.perf_counter() - t0) * 1000)
    full.sort()
    out["retrieve + pack (search, count whole prompts), p50 / p95"] = (
        f"{statistics.median(full):.1f} / **{full[94]:.1f} ms**"
    )
    ix.close()
    # The recall corpus again, as a second collection in this big index: the common-word
    # pruning is on here (it is not in a small index).
    for k, v in bench_recall(tmp, counter, db).items():
        out[f"{k}, inside the big index"] = v
    short = "Zipf vocabulary" if vocabulary else "small vocabulary"
    return {(k if k.startswith("index of") else f"{k} [{short}]"): v for k, v in out.items()}


# A corpus written for this bench: (file, section title, passage). Questions below name the
# passage they are answered by; "own" ones use the passage's words, "paraphrase" ones do not.
CORPUS = [
    ("lighthouse.md", "History", "The Harwick lighthouse was built in 1871 from granite "
     "quarried on the island, and its lamp was automated in 1987 when the last keeper left."),
    ("lighthouse.md", "Visiting", "Visitors can climb the 142 steps of the tower on weekends "
     "from May to September; tickets are sold at the ferry office, not at the gate."),
    ("bakery.md", "Sourdough", "The bakery feeds its sourdough starter twice a day with rye "
     "flour and keeps it at 24 degrees so the loaves rise overnight."),
    ("bakery.md", "Opening hours", "The shop opens at six in the morning on weekdays and "
     "closes at two in the afternoon; on Sundays it bakes only croissants."),
    ("bikes.md", "Chains", "A bicycle chain should be cleaned and oiled every 300 kilometres, "
     "and replaced once it has stretched by more than half a percent."),
    ("bikes.md", "Tyres", "Road tyres run best at six to eight bar, while gravel tyres need "
     "much less pressure, about two and a half bar, for grip on loose stones."),
    ("garden.md", "Tomatoes", "Tomato plants need six hours of direct sun, deep watering "
     "twice a week, and stakes once the stems climb past thirty centimetres."),
    ("garden.md", "Compost", "A compost heap turns to soil in about nine months if it is "
     "turned every fortnight and kept as damp as a wrung-out sponge."),
    ("office.md", "Printer", "The third-floor printer jams when glossy paper is loaded in "
     "tray two; use tray one for photos and report jams to facilities."),
    ("office.md", "Badges", "Lost access badges are replaced by security on the ground floor "
     "within a day; a temporary badge works only until eight in the evening."),
    ("astronomy.md", "Telescope", "The club's reflecting telescope has a 200 millimetre "
     "mirror and must cool outdoors for forty minutes before sharp views of Saturn."),
    ("astronomy.md", "Meteor showers", "The Perseid meteor shower peaks around the twelfth "
     "of August, best watched after midnight away from city lights."),
]  # fmt: skip
QUESTIONS = [
    (0, "own", "When was the Harwick lighthouse lamp automated?"),
    (0, "para", "What year did the last keeper leave the tower on the island?"),
    (1, "own", "Where are tickets sold to climb the lighthouse tower steps?"),
    (1, "para", "How many stairs does one walk up to reach the top of the lighthouse?"),
    (2, "own", "How often does the bakery feed its sourdough starter?"),
    (2, "para", "What temperature is the bread culture kept at?"),
    (3, "own", "When does the bakery shop open on weekdays?"),
    (3, "para", "What is baked on Sundays?"),
    (4, "own", "How often should a bicycle chain be cleaned and oiled?"),
    (4, "para", "When should I swap my bike's drive chain for a new one?"),
    (5, "own", "What pressure do gravel tyres need?"),
    (5, "para", "How hard should I pump road bike wheels?"),
    (6, "own", "How many hours of direct sun do tomato plants need?"),
    (6, "para", "How often should tomatoes be watered?"),
    (7, "own", "How long does a compost heap take to turn to soil?"),
    (7, "para", "How wet should compost be kept?"),
    (8, "own", "Why does the third-floor printer jam?"),
    (8, "para", "Which tray should I use for photos?"),
    (9, "own", "Who replaces lost access badges?"),
    (9, "para", "Until what time does a temporary pass work?"),
    (10, "own", "How long must the reflecting telescope cool outdoors?"),
    (10, "para", "How big is the mirror of the club's scope?"),
    (11, "own", "When does the Perseid meteor shower peak?"),
    (11, "para", "What time of night is best for watching the August shooting stars?"),
]


def write_recall_corpus(root: Path, seed: int = 4) -> None:
    """CORPUS as Markdown files: each passage in its own section among filler sections of
    generated text, so each file has several chunks and the answer is in exactly one."""
    words = Words(seed)
    root.mkdir(parents=True)
    by_file: dict[str, list[str]] = {}
    for name, title, passage in CORPUS:
        filler = "\n\n".join(words.sentence(18) for _ in range(25))
        by_file.setdefault(name, []).append(f"## {title}\n\n{passage}\n\n{filler}")
    for name, sections in by_file.items():
        (root / name).write_text("\n\n".join(sections))


def recall_ranks(ix: DocIndex, collection: str, depth: int = 5) -> dict[str, list[int | None]]:
    """For each kind of question ("own", "para"), the rank of the chunk holding its passage
    among the first `depth` hits (None: not among them)."""
    ranks: dict[str, list[int | None]] = {"own": [], "para": []}
    for k, kind, q in QUESTIONS:
        hits = ix.search([collection], q, depth)
        ranks[kind].append(next((i for i, h in enumerate(hits) if CORPUS[k][2] in h.text), None))
    return ranks


def bench_recall(tmp: Path, counter: TokenCounter, db: Path | None = None) -> dict[str, str]:
    root = tmp / ("corpus2" if db else "corpus")
    write_recall_corpus(root)
    ix = DocIndex(db or tmp / "recall.sqlite3")
    ix.add("c", [root])
    ix.index("c", counter)
    result = recall_ranks(ix, "c")
    n_chunks = ix.info("c").chunks
    ix.close()
    out = {}
    for kind, label in (("own", "the passage's own words"), ("para", "paraphrased")):
        ranks = result[kind]
        r1 = sum(r == 0 for r in ranks) / len(ranks)
        r5 = sum(r is not None for r in ranks) / len(ranks)
        out[f"recall@1 / @5, {len(ranks)} questions in {label} ({n_chunks} chunks)"] = (
            f"**{r1:.2f} / {r5:.2f}**"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100, help="Markdown to index (default: 100)")
    ap.add_argument("--files", type=int, default=10_000, help="small files to re-index")
    ap.add_argument("--chunks", type=int, default=200_000, help="chunks for query latency")
    ap.add_argument(
        "--vocabulary", type=int, default=200_000, help="distinct words of the second query corpus"
    )
    ap.add_argument(
        "--only", choices=("recall", "reindex", "indexing", "queries"), help="one part only"
    )
    a = ap.parse_args()
    counter = TokenCounter(TOKENIZER)
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((x.split(":", 1)[1].strip() for x in info.splitlines() if "model name" in x), "?")
    print(f"{os.cpu_count()} cores ({cpu}); load average at start {os.getloadavg()}", flush=True)
    rows: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-docs-") as d:
        tmp = Path(d)
        parts = {
            "recall": lambda: bench_recall(tmp, counter),
            "reindex": lambda: bench_reindex(tmp, counter, a.files),
            "indexing": lambda: bench_indexing(tmp, counter, a.mb),
            "queries": lambda: {
                **bench_queries(tmp, counter, a.chunks),
                **(bench_queries(tmp, counter, a.chunks, a.vocabulary) if a.vocabulary else {}),
            },
        }
        for name, part in parts.items():
            if a.only not in (None, name):
                continue
            got = part()
            for k, v in got.items():
                print(f"{k}: {v}", flush=True)
            rows.update(got)
    print(f"load average at the end {os.getloadavg()}")
    print("\n| what | figure |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
