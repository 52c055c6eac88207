"""The package reads in short pieces: no function or method of sar_lightning spans more than 60 lines (its
``def`` line to its last line), and the sampler's ``generate`` at most 50."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sar_lightning"
LIMIT = 60
LIMITS = {"generate": 50}
MODULES = sorted(PACKAGE.rglob("*.py"))


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_longer_than_its_limit(path):
    long = [f"{path.relative_to(PACKAGE)}:{line} {name} ({length} lines > {LIMITS.get(name, LIMIT)})"
            for name, line, length in _functions(path) if length > LIMITS.get(name, LIMIT)]
    assert not long, "split these into named helpers: " + "; ".join(long)


def test_the_walk_sees_the_sampler():
    assert any(name == "generate" for name, _, _ in _functions(PACKAGE / "core" / "sampling.py"))
