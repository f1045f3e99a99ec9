"""Lazy re-exports for package ``__init__`` modules (PEP 562), so that importing a light
submodule (``utils.config``, ``models.config``: the flags and settings of the command lines)
does not import the package's heavy ones (torch, timm) as a side effect.

A package declares which submodule holds each name it re-exports; ``pkg.name`` and
``from pkg import name`` import that submodule on first use, as an eager ``from .sub import
name`` in the ``__init__`` would have at import time. The table is plain data, so the names a
package offers stay listed in one place, and a name that is not in it is an ``AttributeError``
as usual.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Sequence, Tuple


def lazy_exports(package: str, table: Dict[str, Sequence[str]]
                 ) -> Tuple[List[str], Callable[[str], Any], Callable[[], List[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for package ``package``.

    Args:
        package: the package's ``__name__``.
        table: module (relative, ``".dist"``, or absolute) -> the names the package exports
            from it.

    Returns:
        ``(__all__, __getattr__, __dir__)``, to be assigned in the package's ``__init__``.
    """
    where: Dict[str, str] = {}
    for module, names in table.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} re-exported from both {where[name]} and "
                                 f"{module}")
            where[name] = module

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        setattr(importlib.import_module(package), name, value)  # later lookups skip this hook
        return value

    def __dir__() -> List[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(where))

    return list(where), __getattr__, __dir__
