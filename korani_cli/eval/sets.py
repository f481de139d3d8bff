"""Evaluation sets → typed values: KorQuAD-1.0-format QA files and instruction JSONL.

A KorQuAD file's paragraphs become pages (one per paragraph, its own URL, the
article title as page title): the retrieval pool. Its questions carry their
gold answers and the page they were asked about. An instruction file is JSONL
with `instruction` and an optional `input` (top level, or in KULLM's
`instances[0]`).

Which questions a run asks is decided here too: a seeded permutation of all of
them, of which a run takes the first `limit`; a question is unanswerable (its
gold page left out of the pool) when its place in the permutation says so, so
the fraction is exact for every prefix and a longer run extends a shorter one.

Files that cannot be read, or are not of the expected shape, are an
`EvalDataError` naming the first place that is wrong.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from korani_cli.errors import UsageError, excerpt
from korani_cli.eval import EvalDataError
from korani_cli.untrusted import clean, clean_line

KORQUAD_DEV = Path("eval") / "korquad" / "KorQuAD_v1.0_dev.json"
KULLM_PROMPTS = Path("eval") / "chat" / "kullm_user_oriented_instructions_eval.jsonl"
# Each flag's own named set, and what else it takes: a hint offers only what its flag accepts.
NAMED = {"--set": {"korquad-dev": KORQUAD_DEV}, "--prompts": {"kullm": KULLM_PROMPTS}}
ACCEPTS = {
    "--set": "korquad-dev or a path to a KorQuAD-1.0-format JSON file",
    "--prompts": "kullm or a path to a JSONL file of instructions",
}
COMMAND = {"--set": "korani eval rag", "--prompts": "korani eval chat"}


@dataclass(frozen=True)
class Paragraph:
    page_id: str  # "<article>.<paragraph>", both 0-based
    url: str
    title: str
    text: str


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: tuple  # gold answer texts
    page_id: str  # the paragraph it was asked about


@dataclass(frozen=True)
class QASet:
    path: Path
    sha256: str
    paragraphs: tuple  # Paragraph
    questions: tuple  # Question, in file order


@dataclass(frozen=True)
class Instruction:
    id: str
    instruction: str
    input: str

    def prompt(self) -> str:
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


@dataclass(frozen=True)
class PromptSet:
    path: Path
    sha256: str
    prompts: tuple  # Instruction, in file order


def shared_dirs() -> list[Path]:
    """Where `../shared` may be: beside the project checkout, or beside the working directory."""
    import korani_cli

    return [
        Path(korani_cli.__file__).resolve().parents[1].parent / "shared",
        Path.cwd().resolve().parent / "shared",
    ]


def resolve_set(spec: str, flag: str) -> Path:
    """A named set (--set korquad-dev, --prompts kullm) or a path."""
    named = NAMED[flag]
    if spec in named:
        for base in shared_dirs():
            if (base / named[spec]).is_file():
                return base / named[spec]
        raise EvalDataError(
            f"{flag} {spec}: {named[spec]} is not in ../shared beside korani",
            f"pass {flag} PATH to a copy of the file",
        )
    other = next((f for f, sets in NAMED.items() if f != flag and spec in sets), None)
    if other is not None:  # `--set kullm`: the other command's set, which this one cannot read
        raise UsageError(
            f"{flag} {spec}: {spec} is the set of `{COMMAND[other]} {other}`, "
            f"not one `{COMMAND[flag]}` reads",
            f"pass {flag} {ACCEPTS[flag]}",
        )
    path = Path(spec).expanduser()
    if not path.is_file():
        raise EvalDataError(f"{flag} {spec}: no such file", f"pass {flag} {ACCEPTS[flag]}")
    return path


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EvalDataError(f"cannot read {path} ({exc.strerror})", f"check {flag}") from None


def _expect(value, kind: type, where: str, path: Path):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = {dict: "an object", list: "a list", str: "a string", int: "an integer"}[kind]
        raise EvalDataError(
            f"{path} is not in KorQuAD 1.0 format: {where} should be {name}",
            "pass a file shaped like KorQuAD_v1.0_dev.json: {data: [{title, paragraphs: [{context, qas: "
            "[{id, question, answers: [{text}]}]}]}]}",
        )
    return value


def load_korquad(path: Path) -> QASet:
    data = _read(path, "--set")
    try:
        root = json.loads(data.decode("utf-8-sig"))
    except RecursionError:
        # As `data prepare` reads it (readers.decode_problem, too_deep): [[[[… 100,000 deep.
        raise EvalDataError(
            f"{path} is nested too deeply to be a KorQuAD file (over about 1,000 levels)",
            "pass a KorQuAD-1.0-format JSON file",
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise EvalDataError(
            f"{path} is not JSON ({excerpt(str(exc).splitlines()[0], 100)})",
            "pass a KorQuAD-1.0-format JSON file",
        ) from None
    articles = _expect(_expect(root, dict, "the top level", path).get("data"), list, "data", path)
    paragraphs: list[Paragraph] = []
    questions: list[Question] = []
    seen: set[str] = set()
    for a, article in enumerate(articles):
        _expect(article, dict, f"data[{a}]", path)
        title = clean_line(_expect(article.get("title"), str, f"data[{a}].title", path))
        for p, para in enumerate(_expect(article.get("paragraphs"), list, f"data[{a}].paragraphs", path)):
            where = f"data[{a}].paragraphs[{p}]"
            _expect(para, dict, where, path)
            page_id = f"{a}.{p}"
            text = clean(_expect(para.get("context"), str, f"{where}.context", path))
            url = f"https://ko.wikipedia.org/wiki/{title.replace(' ', '_')}#p{page_id}"
            paragraphs.append(Paragraph(page_id, url, title, text))
            for q, qa in enumerate(_expect(para.get("qas"), list, f"{where}.qas", path)):
                qwhere = f"{where}.qas[{q}]"
                _expect(qa, dict, qwhere, path)
                qid = str(qa.get("id", f"{page_id}.{q}"))
                question = clean_line(_expect(qa.get("question"), str, f"{qwhere}.question", path))
                answers = _expect(qa.get("answers"), list, f"{qwhere}.answers", path)
                golds = tuple(
                    clean_line(
                        _expect(
                            _expect(ans, dict, f"{qwhere}.answers[{i}]", path).get("text"),
                            str,
                            f"{qwhere}.answers[{i}].text",
                            path,
                        )
                    )
                    for i, ans in enumerate(answers)
                )
                if not golds or not question or not any(golds):
                    raise EvalDataError(
                        f"{path}: {qwhere} has no question text or no gold answer",
                        "every question needs its text and at least one answer",
                    )
                if qid in seen:
                    raise EvalDataError(
                        f"{path}: question id {qid!r} appears twice ({qwhere})",
                        "give every question its own id",
                    )
                seen.add(qid)
                questions.append(Question(qid, question, golds, page_id))
    if not questions:
        raise EvalDataError(
            f"{path} holds no questions", "pass a KorQuAD-1.0-format file with at least one question"
        )
    if not any(p.text.strip() for p in paragraphs):
        raise EvalDataError(
            f"{path}: every paragraph's context is empty, so there is nothing to retrieve",
            'give the paragraphs their text in "context"',
        )
    return QASet(path, hashlib.sha256(data).hexdigest(), tuple(paragraphs), tuple(questions))


def load_prompts(path: Path) -> PromptSet:
    data = _read(path, "--prompts")
    prompts: list[Instruction] = []
    fix = 'every line must be a JSON object with "instruction" (and optionally "input")'
    try:
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise EvalDataError(f"{path} is not UTF-8 text", fix) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except RecursionError:
            raise EvalDataError(
                f"{path} line {number} is nested too deeply (over about 1,000 levels)", fix
            ) from None
        except ValueError:
            raise EvalDataError(f"{path} line {number} is not JSON", fix) from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("instruction"), str)
            or not row["instruction"].strip()
        ):
            raise EvalDataError(f'{path} line {number} has no "instruction" text', fix)
        extra = row.get("input")
        if (
            extra is None
            and isinstance(row.get("instances"), list)
            and row["instances"]
            and isinstance(row["instances"][0], dict)
        ):
            extra = row["instances"][0].get("input")
        if extra is not None and not isinstance(extra, str):
            raise EvalDataError(f'{path} line {number}: "input" is not text', fix)
        prompts.append(
            Instruction(
                str(row.get("id", f"line{number}")),
                clean(row["instruction"]).strip(),
                clean(extra or "").strip(),
            )
        )
    if not prompts:
        raise EvalDataError(f"{path} holds no instructions", fix)
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise EvalDataError(f"{path}: an id appears twice", "give every line its own id, or none")
    return PromptSet(path, hashlib.sha256(data).hexdigest(), tuple(prompts))


def order(ids: list[str], seed: int) -> list[str]:
    """The seeded permutation a run walks; a run with --limit N takes its first N."""
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def unanswerable_at(position: int, fraction: float) -> bool:
    """Whether the question at `position` of the permutation loses its gold page:
    evenly spread, so any first N hold exactly floor(N × fraction) of them."""
    f = Fraction(fraction).limit_denominator(10_000)
    return (position + 1) * f // 1 > position * f // 1
