"""`korani data prepare`: read → clean → dedup → length filter → mix → split → write.

Memory stays flat in the input size: records stream through the stages one
at a time; kept conversations are spooled to a temporary JSONL file and only
their lengths stay in memory until the split is drawn. Everything is written
into a temporary directory beside OUT_DIR and moved into place at the end,
so an interrupted run leaves no half-written split and never touches an
earlier output. OUT_DIR is replaced only when korani wrote it (its marker
file, or the five files of an output from before markers) and only with
--overwrite; a source, the working directory or a directory of other files
is refused before any work (`korani_cli.outputs`). A run killed with SIGKILL
leaves its temporary directory; the next run with the same OUT_DIR removes it.

A --grounded file is not read record by record: data/grounded.py builds its
conversations (served RAG turns), which skip cleaning and dedup and are split
by article (whole articles to test, then valid, until each has its share).

Deterministic: the same inputs, options and seed give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol, Sequence, TextIO

from korani_cli import __version__
from korani_cli.data.clean import RULES, Cleaner, to_conversation
from korani_cli.data.dedup import DEFAULT_THRESHOLD, Deduplicator, normalised
from korani_cli.data.readers import SourceReadError, read_file
from korani_cli.data.records import SOURCES, Conversation, RawRecord, Reject
from korani_cli.data.sources import DataInputError, resolve_source
from korani_cli.errors import UsageError, excerpt
from korani_cli.outputs import guard_output_dir, reap_stale, replace_dir, temp_dir, write_marker
from korani_cli.template import CHARS_PER_TOKEN, DEFAULT_EOS, turn_text

SPLITS = ("train", "valid", "test")
RECORD_KEYS = {"koalpaca": ("instruction", "output"), "sharegpt": ("conversations", "id")}
BATCH = 512
MAX_WEIGHT = 100.0  # the largest --mix weight: how many times a train conversation may repeat
# What every output of `korani data prepare` holds, also those written before
# the marker file existed: such a directory may be replaced with --overwrite.
OUTPUT_FILES = ("train.jsonl", "valid.jsonl", "test.jsonl", "rejects.jsonl", "stats.json")


@dataclass(frozen=True)
class PrepareConfig:
    out_dir: Path
    koalpaca: tuple[str, ...] = ()
    sharegpt: tuple[str, ...] = ()
    grounded: tuple[str, ...] = ()  # SQuAD/KorQuAD-format JSON files (data/grounded.py)
    unanswerable: float = 0.1  # share of grounded questions that lose their gold passage
    negatives: str = "other-articles"  # where grounded hard negatives come from (grounded.NEGATIVES)
    tokenizer: str | None = None
    max_tokens: int = 1024
    valid: float = 0.1
    test: float = 0.1
    seed: int = 42
    mix: dict = field(default_factory=dict)
    overwrite: bool = False
    strict: bool = False
    disabled_rules: frozenset = frozenset()
    near_dup: bool = True
    near_dup_threshold: float = DEFAULT_THRESHOLD


class Progress(Protocol):
    def start(self, stage: str, total: float | None) -> None: ...

    def advance(self, stage: str, amount: float = 1) -> None: ...


class _Silent:
    def start(self, stage, total):
        pass

    def advance(self, stage, amount=1):
        pass


def parse_mix(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    mix = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in SOURCES:
            raise UsageError(
                f"--mix: cannot read {excerpt(part)}", f"write it as {','.join(f'{s}=1.0' for s in SOURCES)}"
            )
        try:
            weight = float(value)
        except ValueError:
            raise UsageError(
                f"--mix: {excerpt(value)} is not a number", "use weights like sharegpt=0.5"
            ) from None
        if not math.isfinite(weight):
            # nan is not "below 0", and inf is not "more than 100": say what was written.
            raise UsageError(
                f"--mix: the weight of {name} is {value.strip()}, not a number from 0 to {MAX_WEIGHT:g}",
                "use weights like sharegpt=0.5",
            )
        if weight < 0:
            raise UsageError(f"--mix: the weight of {name} must be ≥ 0", "use weights like sharegpt=0.5")
        if weight > MAX_WEIGHT:
            # Each train conversation is written `weight` times: 1e9 would fill the disk.
            raise UsageError(
                f"--mix: the weight of {name} is {value.strip()}, more than {MAX_WEIGHT:g}",
                f"use a weight between 0 and {MAX_WEIGHT:g}",
            )
        mix[name] = weight
    return mix


def validate(config: PrepareConfig) -> None:
    if not config.koalpaca and not config.sharegpt and not config.grounded:
        raise UsageError(
            "no data sources given", "pass --koalpaca SRC, --sharegpt SRC and/or --grounded FILE"
        )
    if not 0 <= config.unanswerable <= 1:
        raise UsageError(
            f"--unanswerable must be a fraction in [0, 1], got {config.unanswerable}",
            "e.g. --unanswerable 0.1",
        )
    from korani_cli.data.grounded import NEGATIVES

    if config.negatives not in NEGATIVES:
        raise UsageError(
            f"--negatives must be one of {', '.join(NEGATIVES)}, got {excerpt(config.negatives, 80)}",
            "e.g. --negatives retrieval",
        )
    for name, value in (("--valid", config.valid), ("--test", config.test)):
        if not 0 <= value < 1:
            raise UsageError(f"{name} must be a fraction in [0, 1), got {value}", f"e.g. {name} 0.1")
    if config.valid + config.test >= 1:
        raise UsageError("--valid + --test leave nothing for training", "lower them (e.g. 0.1 each)")
    unknown = set(config.disabled_rules) - set(RULES)
    if unknown:
        raise UsageError(
            f"unknown cleaning rule(s): {', '.join(sorted(unknown))}", f"rules are: {', '.join(RULES)}"
        )
    if config.max_tokens < 8:
        raise UsageError("--max-tokens is too small", "use at least a few hundred tokens")
    if not 0 < config.near_dup_threshold <= 1:
        raise UsageError("--near-dup-threshold must be in (0, 1]", "e.g. 0.8")


def _guard_output(config: PrepareConfig, sources) -> None:
    """Refuse an OUT_DIR that is not ours to write (see the module docstring)."""
    try:
        guard_output_dir(config.out_dir, overwrite=config.overwrite, sources=sources, legacy=OUTPUT_FILES)
    except OSError as exc:  # a name too long, a loop of links
        raise UsageError(f"cannot use -o {config.out_dir} ({exc.strerror})", "choose another -o") from None


def _local_sources(config: PrepareConfig) -> list[Path]:
    """The source arguments that name local paths (Hub ids are not checked yet)."""
    found = []
    for name in SOURCES:
        for spec in getattr(config, name):
            path = Path(spec).expanduser()
            try:
                if path.exists():
                    found.append(path)
            except OSError:
                pass  # resolve_source reports it
    return found


class _Lengths:
    """Token length of rendered turns: the real tokenizer's, or the character heuristic."""

    def __init__(self, tokenizer: str | None):
        self.tokenizer = None
        self.eos = DEFAULT_EOS
        if tokenizer:
            try:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
            except Exception as exc:  # transformers raises many unrelated types for a bad tokenizer
                raise UsageError(
                    f"cannot load the tokenizer '{tokenizer}' "
                    f"({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})",
                    "pass a local tokenizer directory, or leave --tokenizer out to count characters",
                ) from None
            self.eos = self.tokenizer.eos_token or DEFAULT_EOS
        self.measure = f"tokenizer:{tokenizer}" if tokenizer else f"chars/{CHARS_PER_TOKEN}"

    def count(self, text: str) -> int:
        """Tokens of one text (the context budget's measure of the grounded sources)."""
        if self.tokenizer is None or not text:
            return math.ceil(len(text) / CHARS_PER_TOKEN)  # (a fast tokenizer fails on "")
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def turn_lengths(self, convs: Sequence[Conversation]) -> list[list[int]]:
        pieces = [[turn_text(t.role, t.content, self.eos) for t in c.turns] for c in convs]
        if self.tokenizer is None:
            return [[math.ceil(len(p) / CHARS_PER_TOKEN) for p in ps] for ps in pieces]
        flat = [p for ps in pieces for p in ps]
        ids = self.tokenizer(flat, add_special_tokens=False)["input_ids"]
        out, i = [], 0
        for ps in pieces:
            out.append([len(x) for x in ids[i : i + len(ps)]])
            i += len(ps)
        return out


def _fit(conv: Conversation, lengths: list[int], limit: int) -> tuple[Conversation | None, int, bool]:
    """The longest prefix ending on an assistant turn within `limit` tokens."""
    best, total, best_total = 0, 0, 0
    for i, (turn, n) in enumerate(zip(conv.turns, lengths)):
        total += n
        if total > limit:
            break
        if turn.role == "assistant":
            best, best_total = i + 1, total
    if best == 0:
        return None, sum(lengths), False
    truncated = best < len(conv.turns)
    return (
        (Conversation(conv.id, conv.source, conv.turns[:best]) if truncated else conv),
        best_total,
        truncated,
    )


def _percentiles(values: list[int]) -> dict:
    if not values:
        return {"count": 0}
    s = sorted(values)

    def pct(p):
        return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]

    return {
        "count": len(s),
        "mean": round(sum(s) / len(s), 1),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": s[-1],
        "total": sum(s),
    }


def prepare(config: PrepareConfig, progress: Progress | None = None) -> dict:
    """Run the whole pipeline; returns the stats (also written to stats.json)."""
    progress = progress or _Silent()
    validate(config)
    hint = "choose another -o (a new directory on a writable disk)"
    try:
        out = config.out_dir.expanduser().resolve()
        # First, so that the guard judges what is really there: an old output
        # set aside by a run killed mid-rename is put back.
        reap_stale(out)  # temporary directories of runs killed with SIGKILL
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of symlinks
        raise UsageError(
            f"cannot use -o {config.out_dir} ({getattr(exc, 'strerror', None) or exc})", hint
        ) from None
    # Before any work (a Hub download, a tokenizer): is OUT_DIR ours to write?
    _guard_output(config, _local_sources(config))
    sources = [(name, spec) for name in SOURCES for spec in getattr(config, name)]
    files = [(name, f) for name, spec in sources for f in _resolve(name, spec)]
    _guard_output(config, [f for _, f in files])  # Hub files live in a cache that -o might hold
    lengths = _Lengths(config.tokenizer)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(out)
    except OSError as exc:
        blocker = next((a for a in out.parents if a.exists() or a.is_symlink()), None)
        if blocker is not None and not blocker.is_dir():
            raise UsageError(
                f"cannot create -o {config.out_dir}: {blocker} is not a directory", hint
            ) from None
        raise UsageError(f"cannot create -o {config.out_dir} ({exc.strerror})", hint) from None
    try:
        stats = _run(config, files, lengths, tmp, progress)
        write_marker(
            tmp,
            "data prepare",
            koalpaca=list(config.koalpaca),
            sharegpt=list(config.sharegpt),
            grounded=list(config.grounded),
            seed=config.seed,
            fingerprint=stats["fingerprint"],
        )
        replace_dir(tmp, out)
    except SourceReadError as exc:
        raise DataInputError(
            f"cannot read {exc.path} ({exc.strerror})",
            "check the file (is it on a failing disk, or being rewritten?)",
        ) from None
    except OSError as exc:
        raise UsageError(
            f"cannot write -o {config.out_dir} ({exc.strerror})", f"free some space or {hint}"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def _resolve(name: str, spec: str) -> list[Path]:
    """A source's files; a --grounded source is a local JSON file (or a directory of them), never a Hub id."""
    if name != "grounded":
        return resolve_source(spec)
    fix = "pass a local SQuAD/KorQuAD-format .json file (or a directory of them) to --grounded"
    try:
        exists = Path(spec).expanduser().exists()
    except OSError:
        exists = False
    if not exists:
        raise DataInputError(f"--grounded {spec}: no such file or directory", fix)
    found = [f for f in resolve_source(spec) if f.suffix.lower() == ".json"]
    if not found:
        raise DataInputError(f"--grounded {spec}: no .json file there", fix)
    return found


def _json_line(value) -> str:
    """One JSON text, UTF-8 safe: a file name that is not UTF-8 (Python keeps its
    bytes as lone surrogates) falls back to \\u escapes instead of failing the write."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True)
    return text


def _run(config: PrepareConfig, files, lengths: _Lengths, tmp: Path, progress: Progress) -> dict:
    """The pipeline's four steps, in `tmp`: spool, split, write, stats."""
    spooled = _spool(config, files, lengths, tmp, progress)
    split_of = _draw_splits(spooled.kept, config)
    splits = _write_splits(config, spooled, split_of, tmp, progress)
    stats = _stats(config, files, lengths, spooled, splits, _groups(spooled.kept, split_of))
    _write_json(tmp / "stats.json", stats)
    return stats


class _Kept(NamedTuple):
    """What the split and the stats need of one spooled conversation (its text stays on disk)."""

    source: str
    tokens: int
    exchanges: int
    group: str | None = None  # conversations of one group (a grounded article) share a split


@dataclass
class _Spooled:
    """What reading, cleaning, dedup and the length fit kept (in `path`, one JSON line each) and counted."""

    path: Path
    fingerprint: str  # sha256 of every source byte read
    kept: list[_Kept] = field(default_factory=list)
    records_in: Counter = field(default_factory=Counter)  # per source
    mix_dropped: Counter = field(default_factory=Counter)
    truncated: Counter = field(default_factory=Counter)
    rejects: Counter = field(default_factory=Counter)  # per reason
    rejects_by_source: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    cleaning: dict[str, int] = field(default_factory=dict)  # per rule: how often it changed a record
    unanswerable: int = 0  # grounded conversations kept whose answer is the abstention


class _Spooler:
    """Step 1's sinks: rejects go to rejects.jsonl, kept conversations — fitted to
    --max-tokens in batches, one tokenizer call per batch — to the spool file."""

    def __init__(
        self, config: PrepareConfig, lengths: _Lengths, spooled: _Spooled, rejects: TextIO, spool: TextIO
    ):
        self.config, self.lengths, self.spooled = config, lengths, spooled
        self.rejects, self.spool = rejects, spool
        self.batch: list[tuple[Conversation, RawRecord]] = []

    def reject(self, r: Reject) -> None:
        if self.config.strict and r.kind == "input":
            raise DataInputError(
                f"{r.file}, {r.position}: {r.reason.replace('_', ' ')} ({r.detail})",
                "fix the record, or drop --strict to skip and count bad records",
            )
        self.spooled.rejects[r.reason] += 1
        self.spooled.rejects_by_source[r.source][r.reason] += 1
        self.rejects.write(_json_line(r.to_json()) + "\n")

    def keep(self, conv: Conversation, raw: RawRecord, group: str | None = None) -> None:
        self.batch.append((conv, raw, group))
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return  # (a tokenizer fails on an empty batch: grounded sources flush one by one)
        limit = self.config.max_tokens
        for (conv, raw, group), turn_lengths in zip(
            self.batch, self.lengths.turn_lengths([c for c, _, _ in self.batch])
        ):
            fitted, tokens, was_cut = _fit(conv, turn_lengths, limit)
            if fitted is None:
                self.reject(
                    Reject(
                        raw.source,
                        raw.file,
                        raw.position,
                        "too_long",
                        f"the first exchange alone is {tokens} tokens (> --max-tokens {limit})",
                    )
                )
                continue
            self.spooled.truncated[conv.source] += was_cut
            self.spool.write(json.dumps(fitted.to_json(), ensure_ascii=False) + "\n")
            exchanges = sum(1 for t in fitted.turns if t.role == "assistant")
            self.spooled.kept.append(_Kept(conv.source, tokens, exchanges, group))
        self.batch.clear()


def _spool(config: PrepareConfig, files, lengths: _Lengths, tmp: Path, progress: Progress) -> _Spooled:
    """Step 1: read → clean → mix → dedup → fit, streaming; kept conversations go to a spool file."""
    fingerprint = hashlib.sha256()
    progress.start("read", sum(f.stat().st_size for _, f in files))
    progress.start("clean", None)
    progress.start("dedup", None)

    def on_bytes(data: bytes) -> None:
        fingerprint.update(data)
        progress.advance("read", len(data))

    cleaner = Cleaner(frozenset(config.disabled_rules))
    dedup = Deduplicator(config.near_dup_threshold, near=config.near_dup)
    mix_rng = random.Random(f"mix:{config.seed}")
    spooled = _Spooled(tmp / "spool.jsonl", "")
    with (
        (tmp / "rejects.jsonl").open("w", encoding="utf-8") as rej_fh,
        spooled.path.open("w", encoding="utf-8") as spool,
    ):
        sink = _Spooler(config, lengths, spooled, rej_fh, spool)
        for name, path in files:
            if name == "grounded":
                _spool_grounded(config, path, lengths, spooled, sink, mix_rng, on_bytes, progress)
                continue
            for item in read_file(name, path, on_bytes, RECORD_KEYS[name]):
                if isinstance(item, Reject):
                    # A bad line or element was a record too; a bad file was not.
                    spooled.records_in[name] += item.position != "file"
                    sink.reject(item)
                    continue
                spooled.records_in[name] += 1
                conv = to_conversation(item, cleaner)
                progress.advance("clean")
                if isinstance(conv, Reject):
                    sink.reject(conv)
                    continue
                weight = config.mix.get(name, 1.0)
                if weight < 1.0 and mix_rng.random() >= weight:
                    spooled.mix_dropped[name] += 1
                    continue
                text = normalised(conv)
                progress.advance("dedup")
                first = dedup.exact_of(conv, text)
                if first is not None:
                    sink.reject(
                        Reject(
                            item.source, item.file, item.position, "exact_duplicate", f"same text as {first}"
                        )
                    )
                    continue
                first = dedup.near_of(conv, text)
                if first is not None:
                    sink.reject(
                        Reject(
                            item.source,
                            item.file,
                            item.position,
                            "near_duplicate",
                            f"near-duplicate of {first}",
                        )
                    )
                    continue
                sink.keep(conv, item)
        sink.flush()
    spooled.fingerprint = fingerprint.hexdigest()
    spooled.cleaning = {rule: cleaner.counts[rule] for rule in RULES if rule not in config.disabled_rules}
    if not spooled.kept:
        reasons = (
            ", ".join(f"{k} {v}" for k, v in spooled.rejects.most_common(5)) or "the sources hold no records"
        )
        raise DataInputError(
            f"no conversation survived reading and cleaning ({reasons})", "check the sources and their format"
        )
    return spooled


def _spool_grounded(config, path, lengths, spooled, sink, mix_rng, on_bytes, progress) -> None:
    """Step 1 for a --grounded file: its conversations are built, not read, so they skip the
    cleaning rules and dedup (every question of a paragraph shares its passages: near-dup would
    take them for copies); the mix and the length fit apply as to the other sources."""
    from korani_cli.data import grounded
    from korani_cli.rag.budget import default_tokens

    options = grounded.Options(
        config.unanswerable,
        config.seed,
        source_tokens=default_tokens(config.max_tokens, grounded.ANSWER_ROOM),
        negatives=config.negatives,
    )
    weight = config.mix.get("grounded", 1.0)
    for item in grounded.read(path, options, lengths.count, on_bytes):
        spooled.records_in["grounded"] += 1
        progress.advance("clean")
        if isinstance(item.result, Reject):
            sink.reject(item.result)
            continue
        if weight < 1.0 and mix_rng.random() >= weight:
            spooled.mix_dropped["grounded"] += 1
            continue
        before = len(spooled.kept)
        sink.keep(item.result, item.raw, item.group)
        sink.flush()  # one by one: whether it was kept decides the unanswerable count
        spooled.unanswerable += item.unanswerable and len(spooled.kept) > before


def _draw_splits(kept: list[_Kept], config: PrepareConfig) -> list[str]:
    """Step 2: the split of each spooled conversation, by shuffled index: exact
    sizes, all turns of a conversation together. Conversations with a group (a
    grounded article) are split by group, so that no article is in two splits."""
    singles = [i for i, k in enumerate(kept) if k.group is None]
    split_of = [""] * len(kept)
    n = len(singles)
    order = list(range(n))
    random.Random(f"split:{config.seed}").shuffle(order)
    n_test, n_valid = round(n * config.test), round(n * config.valid)
    for rank, index in enumerate(order):
        split = "test" if rank < n_test else "valid" if rank < n_test + n_valid else "train"
        split_of[singles[index]] = split
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(kept):
        if k.group is not None:
            groups[k.group].append(i)
    names = sorted(groups)
    random.Random(f"split-groups:{config.seed}").shuffle(names)
    total = sum(len(members) for members in groups.values())
    # Whole groups go to test, then valid, until each holds its share of the conversations.
    want_test, want_valid = round(total * config.test), round(total * config.valid)
    filled = {"test": 0, "valid": 0}
    for name in names:
        members = groups[name]
        if filled["test"] < want_test:
            split = "test"
        elif filled["valid"] < want_valid:
            split = "valid"
        else:
            split = "train"
        filled[split] = filled.get(split, 0) + len(members)
        for i in members:
            split_of[i] = split
    return split_of


@dataclass
class _SplitStats:
    conversations: int = 0
    by_source: Counter = field(default_factory=Counter)
    exchanges: Counter = field(default_factory=Counter)  # conversations by their number of exchanges
    tokens: list[int] = field(default_factory=list)


def _write_splits(
    config: PrepareConfig, spooled: _Spooled, split_of: list[str], tmp: Path, progress: Progress
) -> dict[str, _SplitStats]:
    """Step 3: the spool, line by line, into train/valid/test.jsonl (--mix weights above 1 repeat
    in train)."""
    up_rng = random.Random(f"upsample:{config.seed}")
    splits = {s: _SplitStats() for s in SPLITS}
    progress.start("write", len(split_of))
    handles = {s: (tmp / f"{s}.jsonl").open("w", encoding="utf-8") for s in SPLITS}
    try:
        with spooled.path.open(encoding="utf-8") as spool:
            for index, line in enumerate(spool):
                split = split_of[index]
                kept = spooled.kept[index]
                copies = 1
                weight = config.mix.get(kept.source, 1.0)
                if split == "train" and weight > 1.0:
                    # Up-weighting repeats a source in train only: copies in
                    # valid/test would measure memorisation.
                    copies = int(weight) + (up_rng.random() < weight - int(weight))
                for _ in range(copies):
                    handles[split].write(line)
                    st = splits[split]
                    st.conversations += 1
                    st.by_source[kept.source] += 1
                    st.exchanges[kept.exchanges] += 1
                    st.tokens.append(kept.tokens)
                progress.advance("write")
    finally:
        for fh in handles.values():
            fh.close()
    spooled.path.unlink()
    return splits


def _groups(kept: list[_Kept], split_of: list[str]) -> dict[str, list[str]]:
    """Each split's groups ("<file>#<article index>" of --grounded files), in file and article order:
    which articles a held-out evaluation (korani eval rag) may use."""

    def key(group: str):
        file, _, article = group.rpartition("#")
        return file, int(article)

    found: dict[str, set] = {split: set() for split in SPLITS}
    for k, split in zip(kept, split_of):
        if k.group is not None:
            found[split].add(k.group)
    return {split: sorted(groups, key=key) for split, groups in found.items()}


def _stats(
    config: PrepareConfig,
    files,
    lengths: _Lengths,
    spooled: _Spooled,
    splits: dict[str, _SplitStats],
    groups: dict[str, list[str]],
) -> dict:
    """Step 4: stats.json — the parameters, what each source gave and lost, and each split."""
    return {
        "korani_version": __version__,
        "params": {
            "koalpaca": list(config.koalpaca),
            "sharegpt": list(config.sharegpt),
            "grounded": list(config.grounded),
            "unanswerable": config.unanswerable,
            "negatives": config.negatives,
            "tokenizer": config.tokenizer,
            "max_tokens": config.max_tokens,
            "valid": config.valid,
            "test": config.test,
            "seed": config.seed,
            "mix": config.mix,
            "strict": config.strict,
            "disabled_rules": sorted(config.disabled_rules),
            "near_dup": config.near_dup,
            "near_dup_threshold": config.near_dup_threshold,
        },
        "length_measure": lengths.measure,
        "eos_token": lengths.eos,
        "fingerprint": spooled.fingerprint,
        "inputs": {
            s: {
                "files": [{"path": str(f), "bytes": f.stat().st_size} for name, f in files if name == s],
                "records_in": spooled.records_in[s],
                "records_out": sum(st.by_source[s] for st in splits.values()),
                "mix_dropped": spooled.mix_dropped[s],
                "truncated": spooled.truncated[s],
                "rejects": dict(sorted(spooled.rejects_by_source[s].items())),
                **({"unanswerable": spooled.unanswerable, "articles": groups} if s == "grounded" else {}),
            }
            for s in SOURCES
            if any(name == s for name, _ in files)
        },
        "rejects": dict(sorted(spooled.rejects.items())),
        "cleaning": spooled.cleaning,
        "splits": {
            s: {
                "conversations": st.conversations,
                "by_source": dict(sorted(st.by_source.items())),
                "exchanges": {str(k): v for k, v in sorted(st.exchanges.items())},
                "tokens": _percentiles(st.tokens),
            }
            for s, st in splits.items()
        },
    }


def _write_json(path: Path, value: dict) -> None:
    text = json.dumps(value, ensure_ascii=False, indent=2)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # see _json_line
        text = json.dumps(value, ensure_ascii=True, indent=2)
    path.write_text(text + "\n", encoding="utf-8")
