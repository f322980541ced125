"""The family registry: ``family name -> (model class, config class)``.

Each family registers once, with :func:`register_family` on its model class; ``deepmix.load``,
``deepmix train --model NAME``, ``evaluate`` and ``sample`` look families up here, so adding a
family touches no loader or command. Training objectives register in
:mod:`deepmix.training.objectives` under the same family name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ConfigError
from ..utils.config import config_from_dict, config_to_dict
from .base import Model

__all__ = ["Family", "register_family", "get_family", "family_names", "family_of",
           "model_from_config_dict", "model_config_dict"]

M = TypeVar("M", bound=type)


@dataclass(frozen=True)
class Family:
    """One registry entry."""

    name: str
    model_class: type
    config_class: type
    description: str = ""


_FAMILIES: dict[str, Family] = {}


def register_family(cls: M) -> M:
    """Class decorator: register a :class:`~deepmix.models.base.Model` subclass by its
    ``family`` and ``config_class``."""
    name = getattr(cls, "family", "")
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls.__name__} needs a class attribute family = '<name>'")
    if not issubclass(cls, Model):
        raise TypeError(f"{cls.__name__} must subclass deepmix.models.base.Model")
    existing = _FAMILIES.get(name)
    if existing is not None and existing.model_class is not cls:
        raise TypeError(f"model family '{name}' is registered already ({existing.model_class})")
    doc = (cls.__doc__ or "").strip().splitlines()
    _FAMILIES[name] = Family(name, cls, cls.config_class, doc[0] if doc else "")
    return cls


def family_names() -> list[str]:
    """The registered family names, in registration order."""
    return list(_FAMILIES)


def get_family(name: str) -> Family:
    """The registry entry of ``name``; a :class:`ConfigError` naming the known ones otherwise."""
    try:
        return _FAMILIES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"Unknown model family '{name}'; expected one of "
                          f"{', '.join(_FAMILIES)}") from None


def family_of(model: Any) -> Family:
    """The registry entry of a model instance."""
    for fam in _FAMILIES.values():
        if type(model) is fam.model_class:
            return fam
    for fam in _FAMILIES.values():
        if isinstance(model, fam.model_class):
            return fam
    raise ConfigError(f"{type(model).__name__} is not a registered deepmix model family")


def model_config_dict(model: Any) -> dict[str, Any]:
    """The JSON-ready ``"model"`` section of ``model``'s run folder."""
    return config_to_dict(model.config)


def model_from_config_dict(family: str, data: dict[str, Any], where: str | None = None) -> Any:
    """A fresh model of ``family`` from a ``"model"`` section (strict: unknown keys are errors)."""
    fam = get_family(family)
    cfg = config_from_dict(fam.config_class, data, where=where or f"'{family}' model config")
    return fam.model_class.from_config(cfg)
