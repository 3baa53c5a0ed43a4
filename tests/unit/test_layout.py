"""
The import graph runs one way: assembly (service, workers) imports the parts;
the parts import neither it nor each other backwards (admin does not import
service, certs does not import sni), even for type checking.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tlsgate"


def imports_of(package: str) -> set[str]:
    found: set[str] = set()
    for path in (SRC / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("admin", "tlsgate.service"),
        ("admin", "tlsgate.workers"),
        ("certs", "tlsgate.sni"),
        ("tracker", "tlsgate.service"),
    ],
)
def test_no_backward_import(package: str, forbidden: str) -> None:
    bad = {
        m
        for m in imports_of(package)
        if m == forbidden or m.startswith(forbidden + ".")
    }
    assert not bad, f"tlsgate/{package} imports {sorted(bad)}"


def test_the_gateway_parts_do_not_import_their_assembly() -> None:
    tree = ast.parse((SRC / "_gateway.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {
        m for m in modules if m and m.startswith(("tlsgate.service", "tlsgate.admin"))
    }
