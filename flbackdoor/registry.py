"""One registry per experiment axis (defense, attack, backdoor task, model, dataset source,
partitioner), keyed by the Hydra option name (``conf/<group>/<name>.yaml``).

An entry registers itself where it is defined (``@DEFENSES.register("krum")``); a registry
imports every module of the packages it names the first time it is asked, the way entry-point
plugins load, so adding an option is one module plus one YAML and nothing else is edited. The
packages are named as data: this shared package never imports the code that registers.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from flbackdoor.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, axis: str, packages: tuple[str, ...] = ()) -> None:
        self.axis = axis
        self._packages = packages
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(f"{self.axis} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for package in self._packages:
            pkg = importlib.import_module(package)
            for module in pkgutil.iter_modules(getattr(pkg, "__path__", []), f"{package}."):
                importlib.import_module(module.name)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __getitem__(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"{self.axis}={name!r} is not registered; registered: "
                              f"{', '.join(self.names())}") from None


def option_config(registry: Registry, values: Any) -> Any:
    """The typed config of one option: ``values`` (the option's YAML, composed) checked
    against the dataclass its registered entry declares as ``Config``: unknown keys and wrong
    types are a :class:`ConfigError` naming the key."""
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        values = dataclasses.asdict(values)
    values = dict(values or {})
    if "name" not in values:
        raise ConfigError(f"{registry.axis} needs a name (one of {', '.join(registry.names())})")
    cls = registry[values["name"]].Config
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = OmegaConf.merge(OmegaConf.structured(cls), values)
    except OmegaConfBaseException as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{registry.axis}={values['name']}: {first} "
                          f"(fields: {', '.join(f.name for f in dataclasses.fields(cls))})"
                          ) from None
    return OmegaConf.to_object(node)
