"""Every code block of the README and the docs runs (Python) or parses (fastmeta commands).

Fenced blocks are found in README.md, docs/*.md and benchmarks/README.md. ```python
blocks are executed in order, one namespace per page, in a temporary working directory; in ```sh
blocks every line that starts with ``fastmeta`` or ``python -m fastmeta`` is parsed by
the real argument parser (so the options it shows exist and accept the values shown),
without running it. A block preceded by a line ``<!-- doc-test: skip (reason) -->`` is
neither run nor parsed; say why in the reason.
"""
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from fastmeta.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
FENCE = re.compile(r"(?P<skip><!-- doc-test: skip[^\n]*-->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def _blocks(lang, page):
    for m in FENCE.finditer(page.read_text()):
        if m["lang"] == lang and not m["skip"]:
            yield m["body"]


@pytest.mark.parametrize("page", [p for p in PAGES if list(_blocks("python", p))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, tmp_path, monkeypatch):
    # A page's blocks run in order in one namespace, as a reader would paste them.
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_block__"}
    for i, code in enumerate(_blocks("python", page)):
        exec(compile(code, f"<{page.name} block {i}>", "exec"), namespace)


def _commands():
    for page in PAGES:
        for m in FENCE.finditer(page.read_text()):
            if m["lang"] != "sh" or m["skip"]:
                continue
            for line in m["body"].splitlines():
                for part in line.split("#")[0].split("&&"):
                    words = shlex.split(part)
                    if words[:3] == ["python", "-m", "fastmeta"]:
                        words = words[2:]
                    if words and words[0] == "fastmeta":
                        yield pytest.param(words[1:], id=" ".join(words))


@pytest.mark.parametrize("argv", list(_commands()))
def test_fastmeta_commands_in_the_docs_parse(argv):
    args = build_parser().parse_args(argv)
    assert args.run is not None


def test_there_are_blocks_to_check():
    assert sum(len(list(_blocks("python", p))) for p in PAGES) >= 2 and len(list(_commands())) >= 2


def test_nothing_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    # Spelled in pieces so that this file does not match its own search.
    errata = "".join(("ERR", "ATA"))
    needles = (errata + ".md", errata + " section", "../" + "shared", "/work/" + "shared")
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".json", ".toml", ".txt", ".cfg") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{name}: {needle}" for needle in needles if needle in text]
    assert not offenders, offenders
