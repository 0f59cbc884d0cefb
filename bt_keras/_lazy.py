"""Package namespaces that import a name's module on first use (PEP 562).

Python runs a package's ``__init__`` before any of its submodules, so an
``__init__`` that imported its submodules eagerly would make
``import bt_keras.config`` (a YAML check) pay for importing TensorFlow. Each
package instead lists ``name -> module`` and gets its ``__getattr__`` and
``__dir__`` from :func:`lazy_namespace`.

Examples:

>>> import types
>>> ns = types.ModuleType("demo")
>>> getattr_, dir_ = lazy_namespace("demo", {"sqrt": "math"}, submodules=())
>>> getattr_("sqrt")(9.0), dir_()
(3.0, ['sqrt'])
"""

from __future__ import annotations

import importlib
import sys


def lazy_namespace(package: str, exports: dict, submodules=(), aliases=None):
    """``(__getattr__, __dir__)`` for ``package``.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module (absolute) that defines it.
        submodules: submodule names reachable as attributes (``bt_keras.data.pipelines``).
        aliases: old name -> ``(module, name)``, for renamed names kept importable.
    """
    aliases = aliases or {}

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        elif name in aliases:
            module, attr = aliases[name]
            value = getattr(importlib.import_module(module), attr)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if package in sys.modules:
            setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__():
        return sorted({*(n for n in exports if not n.startswith("_")), *submodules})

    return __getattr__, __dir__
