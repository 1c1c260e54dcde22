"""README.md's quickstart is examples/quickstart.py, and it runs; its options table matches
the engine's option table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from perdure.engine.config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def quickstart_block() -> str:
    section = README.split("## Quickstart", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README.md has no python block under '## Quickstart'"
    return match.group(1)


def test_quickstart_is_the_example_file() -> None:
    assert quickstart_block() == (ROOT / "examples" / "quickstart.py").read_text("utf-8")


def test_quickstart_runs_on_a_fresh_sqlite_database(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart_block(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERDURE_")}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"run_\w+ -> Receipt\(item='book', total=29\.97\)\n", done.stdout)
    assert (tmp_path / ".perdure" / "perdure.db").exists()  # the default embedded database


def test_configuration_table_lists_every_option() -> None:
    rows = [line for line in README.splitlines() if line.startswith("| `")]
    for spec in OPTIONS:
        row = next((r for r in rows if r.startswith(f"| `{spec.name}` |")), None)
        assert row is not None, f"README.md's configuration table lacks {spec.name}"
        assert f"`{spec.env}`" in row
        flag = "--" + spec.name.replace("_", "-")
        assert f"`{flag}`" in row
