"""The public surface: `perdure.__all__` and what `perdure/__init__.py` binds must agree
(httpx's tests/test_exported_members.py), and the package ships type information."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import perdure

# Dunder names that are public on purpose.
PUBLIC_DUNDERS = {"__version__"}


def _defined_in_perdure(value: object) -> bool:
    module = getattr(value, "__module__", None) or ""
    return (inspect.isclass(value) or inspect.isfunction(value)) and (
        module == "perdure" or module.startswith("perdure.")
    )


def test_all_has_no_duplicates() -> None:
    assert len(perdure.__all__) == len(set(perdure.__all__))


def test_every_name_in_all_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from perdure import *", namespace)
    missing = [name for name in perdure.__all__ if name not in namespace]
    assert not missing, f"perdure.__all__ names what perdure does not define: {missing}"
    fresh = importlib.import_module("perdure")
    for name in perdure.__all__:
        assert getattr(fresh, name) is namespace[name]


def test_every_public_class_and_function_is_in_all() -> None:
    public = {
        name
        for name, value in vars(perdure).items()
        if not name.startswith("_") and _defined_in_perdure(value)
    }
    unlisted = sorted(public - set(perdure.__all__))
    assert not unlisted, (
        f"perdure/__init__.py binds public names missing from __all__: {unlisted} "
        "(add them to __all__, or import them under a private name)"
    )
    assert set(perdure.__all__) >= PUBLIC_DUNDERS


def test_package_is_typed() -> None:
    marker = Path(perdure.__file__).parent / "py.typed"
    assert marker.is_file(), f"{marker} is missing: type checkers would ignore perdure's hints"
