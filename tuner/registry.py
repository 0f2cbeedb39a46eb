"""Model families by name: the built-in ``mlp`` and ``cnn`` and any installed plugin, in one registry.

A plugin is an installed Python package that declares an entry point in the ``tuneserve.models`` group::

    [project.entry-points."tuneserve.models"]
    resmlp = "resmlp:build"

The entry point names a factory ``(params, n_features, n_outputs, **options) -> nn.Module``: ``params``
are the trial's hyperparameters (the core four plus any dimension the spec adds), ``options`` the spec's
``model.options``. The built-in families are entry points of the same kind (declared here rather than in
package metadata so that a source checkout has them too) and are looked up and called the same way.
Only names found here are ever loaded: a spec names a registered family, never an import path.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol

from torch import nn

__all__ = [
    "BUILTIN_FAMILIES",
    "ENTRY_POINT_GROUP",
    "ModelFactory",
    "factory_options",
    "get_factory",
    "installed_plugins",
    "option_errors",
    "refresh",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tuneserve.models"
BUILTIN_FAMILIES: dict[str, EntryPoint] = {
    "mlp": EntryPoint(name="mlp", value="tuner.models:mlp_factory", group=ENTRY_POINT_GROUP),
    "cnn": EntryPoint(name="cnn", value="tuner.models:cnn_factory", group=ENTRY_POINT_GROUP),
}
_lock = threading.Lock()


class ModelFactory(Protocol):
    """Builds an initialised, untrained model for one trial."""

    def __call__(self, params: dict[str, Any], n_features: int, n_outputs: int, /, **options: Any) -> nn.Module: ...


@cache
def _entry_points() -> dict[str, EntryPoint]:
    found = dict(BUILTIN_FAMILIES)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN_FAMILIES:
            log.warning("model plugin %s (%s) ignored: the name of a built-in family", ep.name, ep.value)
        elif ep.name in found and found[ep.name].value != ep.value:
            log.warning("model plugin %s: %s ignored, %s registered first", ep.name, ep.value, found[ep.name].value)
        else:
            found.setdefault(ep.name, ep)
    return found


def installed_plugins() -> list[str]:
    """Names of the installed plugin families (sorted; the built-ins are not listed)."""
    return sorted(n for n in _entry_points() if n not in BUILTIN_FAMILIES)


@cache
def _load(name: str) -> ModelFactory:
    factory = _entry_points()[name].load()
    if not callable(factory):
        raise TypeError(f"the entry point of model family '{name}' is not callable")
    return factory  # type: ignore[no-any-return]


def get_factory(name: str) -> ModelFactory:
    """The factory registered under ``name``; ``KeyError`` when none is (the message lists the plugins)."""
    with _lock:
        if name not in _entry_points():
            raise KeyError(f"no model family '{name}' (installed plugins: {', '.join(installed_plugins()) or 'none'})")
        return _load(name)


def factory_options(factory: ModelFactory) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword options a factory takes (after its three positional arguments), and whether it takes
    any keyword (``**options``)."""
    params = list(inspect.signature(factory).parameters.values())[3:]
    named = {p.name: p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def option_errors(name: str, options: Mapping[str, Any]) -> list[str]:
    """``options...`` errors (relative to ``model``) for a plugin's options (unknown or missing), checked against its signature."""
    try:
        factory = get_factory(name)
    except KeyError:
        installed = ", ".join(installed_plugins()) or "none"
        return [f"name: no installed model plugin '{name}' (installed: {installed})"]
    except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not raised
        return [f"name: the model plugin '{name}' cannot be loaded: {type(exc).__name__}: {exc}"]
    named, any_kw = factory_options(factory)
    errors = []
    if not any_kw:
        errors += [f"options.{k}: not an option of the '{name}' plugin (known: {', '.join(named) or 'none'})"
                   for k in options if k not in named]
    errors += [f"options.{k}: is required by the '{name}' plugin"
               for k, p in named.items() if p.default is p.empty and k not in options]
    return errors


def refresh() -> None:
    """Forget what was found and loaded (after installing a plugin into the running interpreter)."""
    with _lock:
        _entry_points.cache_clear()
        _load.cache_clear()
