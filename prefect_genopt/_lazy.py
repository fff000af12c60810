"""Lazy package exports (PEP 562): a package re-exports its submodules' names without
importing them until one is used.

A package's ``__init__`` that imported its modules eagerly would load them all (and
what they import) whenever any one module of the package is imported, including the
modules that sit in a lower layer than the rest (``warehouse.access`` under the
``Warehouse`` class, ``replay.steps`` under the replay gate). With :func:`attach` the
package imports nothing until a name is asked for (docs/architecture.md, the layers).

Example (``prefect_genopt/optimize/__init__.py`` attaches its names this way):
    >>> from prefect_genopt import optimize
    >>> optimize.OptimizerSettings.__module__
    'prefect_genopt.optimize.config'
    >>> "OptimizerSettings" in dir(optimize)
    True
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["attach", "LazyPackage"]


class LazyPackage(types.ModuleType):
    """The module type :func:`attach` gives a package: a loaded submodule does not hide
    the name it exports under its own name.

    ``prefect_genopt.pipeline`` and ``prefect_genopt.feedback`` (and
    ``prefect_genopt.warehouse.ingest``) name both a submodule and the public function in
    it. The import system binds a submodule on its package once it is loaded; the
    package keeps the public function instead, as eager imports used to.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        names: Mapping[str, str] = self.__dict__.get("_lazy_names", {})
        if (
            isinstance(value, types.ModuleType)
            and names.get(name) == name
            and value.__name__ == f"{self.__name__}.{name}"
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


def attach(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose public ``names`` live in
    other modules (name -> module, relative to the package as in a relative import:
    ``"config"`` is ``.config``, ``"..proposals"`` a sibling package).

    A name is imported from its submodule on first access and kept on the package. A
    submodule not imported yet is imported on attribute access too
    (``prefect_genopt.optimize.llm`` works after ``import prefect_genopt.optimize``, as
    with eager imports).

    The package becomes a :class:`LazyPackage`, so a public name that is also the name
    of its submodule stays the public object once the submodule is loaded.

    Args:
        package: The package's ``__name__`` (called from its ``__init__``).
        names: Public name -> the module it lives in.
    """
    module = sys.modules[package]
    module._lazy_names = dict(names)  # type: ignore[attr-defined]
    module.__class__ = LazyPackage

    def __getattr__(name: str) -> Any:
        sub = names.get(name)
        if sub is not None:
            relative = sub if sub.startswith(".") else f".{sub}"
            value = getattr(importlib.import_module(relative, package), name)
            setattr(sys.modules[package], name, value)
            return value
        if not name.startswith("__"):
            full = f"{package}.{name}"
            if importlib.util.find_spec(full) is not None:
                return importlib.import_module(full)  # the import binds it on the package
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
