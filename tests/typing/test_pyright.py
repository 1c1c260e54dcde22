"""pyright (strict) on user-style code: `samples/ok.py` must be clean, and `samples/bad.py` must
have an error on exactly the lines marked `# expect-error` (optionally `# expect-error[rule]`,
which also pins the diagnostic's rule) and nowhere else."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tokenize
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
SAMPLES = HERE / "samples"
PYRIGHT = Path(sys.executable).parent / "pyright"
EXPECT = re.compile(r"^#\s*expect-error(?:\[(?P<rule>\w+)\])?")

pytestmark = pytest.mark.timeout(180)

Errors = dict[int, set[str]]  # 1-based line -> rules reported there


@pytest.fixture(scope="module")
def errors_by_file() -> dict[str, Errors]:
    if not PYRIGHT.exists():
        pytest.skip(f"pyright is not installed next to {sys.executable}")
    proc = subprocess.run(
        [str(PYRIGHT), "--outputjson", "--project", str(HERE / "pyrightconfig.json")],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"pyright did not print JSON (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    found: dict[str, Errors] = defaultdict(lambda: defaultdict(set))
    for diag in report["generalDiagnostics"]:
        if diag["severity"] != "error":
            continue
        line = diag["range"]["start"]["line"] + 1
        found[Path(diag["file"]).name][line].add(diag.get("rule", ""))
    return found


def _messages(errors: Errors) -> str:
    return ", ".join(f"line {line}: {sorted(rules)}" for line, rules in sorted(errors.items()))


def test_typed_usage_is_clean(errors_by_file: dict[str, Errors]) -> None:
    errors = errors_by_file.get("ok.py", {})
    assert not errors, f"ok.py must type-check clean; pyright reported {_messages(errors)}"


def test_mistakes_are_errors_exactly_where_marked(errors_by_file: dict[str, Errors]) -> None:
    expected: dict[int, str | None] = {}
    with (SAMPLES / "bad.py").open("rb") as source:
        for token in tokenize.tokenize(source.readline):  # comments only, not docstrings
            match = EXPECT.match(token.string) if token.type == tokenize.COMMENT else None
            if match:
                expected[token.start[0]] = match["rule"]
    assert len(expected) >= 10, "bad.py lost its # expect-error lines"
    errors = errors_by_file.get("bad.py", {})

    missing = sorted(set(expected) - set(errors))
    unexpected = {line: rules for line, rules in errors.items() if line not in expected}
    wrong_rule = {
        line: (rule, sorted(errors[line]))
        for line, rule in expected.items()
        if rule is not None and line in errors and rule not in errors[line]
    }
    assert not missing, f"no pyright error on these # expect-error lines of bad.py: {missing}"
    assert not unexpected, f"pyright errors on unmarked lines of bad.py: {_messages(unexpected)}"
    assert not wrong_rule, f"lines of bad.py whose error is not the expected rule: {wrong_rule}"
