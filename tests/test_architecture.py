"""The import walls of korani_cli (tools/import_graph.py): no cycle, search ↛ chat/train,
train ↛ chat/search, backends ↛ search/chat/train, template imports nothing of korani,
the core never imports or acts as the presentation layer."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "import_graph.py"


@pytest.fixture(scope="module")
def graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_korani_cli_keeps_its_walls():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 problem(s)" in proc.stdout


def plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


PLANTED = [
    # files of a small package → a fragment of the problem the checker must report
    (
        {
            "search/__init__.py": "",
            "search/answer.py": "def f():\n    from korani_cli.chat import memory\n",
            "chat/__init__.py": "",
            "chat/memory.py": "",
        },
        "search.answer:2 imports chat.memory (search ↛ chat)",
    ),
    ({"template.py": "from korani_cli import errors\n", "errors.py": ""}, "template:1 imports errors"),
    (
        {
            "commands/__init__.py": "",
            "commands/ask.py": "from korani_cli.rag import answer\n",
            "rag/__init__.py": "",
            "rag/answer.py": "",
        },
        "commands.ask:1 imports rag.answer (commands ↛ rag)",
    ),
    (
        {
            "models.py": "from korani_cli.backends import hf\n",
            "backends/__init__.py": "",
            "backends/hf.py": "from korani_cli.models import ModelSpec\n",
        },
        "cycle: backends.hf ↔ models",
    ),
    (
        {"search/__init__.py": "", "search/rank.py": "from .. import console\n", "console.py": ""},
        "search.rank:1 imports console (the core never imports the presentation layer)",
    ),
    (
        {"data/__init__.py": "", "data/prepare.py": "import sys\nsys.stderr.write('x')\n"},
        "data.prepare:2 writes to sys.stderr",
    ),
    (
        {
            "train/__init__.py": "",
            "train/run.py": "from korani_cli.train import model as mdl\n",
            "train/model.py": "",
            "search/__init__.py": "",
            "search/rank.py": "from korani_cli.search import budget\n",
            "search/budget.py": "",
        },
        None,
    ),
]


@pytest.mark.parametrize("files, expected", PLANTED, ids=[str(i) for i in range(len(PLANTED))])
def test_the_checker_finds_a_planted_break(graph, tmp_path, files, expected):
    plant(tmp_path, files)
    known = graph.modules(tmp_path)
    found = graph.edges(known)
    problems = (
        [f"cycle: {' ↔ '.join(c)}" for c in graph.cycles(found)]
        + graph.wall_breaks(found)
        + graph.printers(known)
    )
    if expected is None:
        assert problems == [] and len(found) == 2  # edges inside an area are fine, and are seen
    else:
        assert any(expected in p for p in problems), problems
