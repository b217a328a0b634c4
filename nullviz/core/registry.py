"""The one way a class joins a registry (attacks, attribution methods, noise kinds, finetuning methods, data
sources): a decorator that files it under its ``name`` and refuses a second class of the same name."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T", bound=type)


def registrar(registry: dict, what: str, instantiate: bool = True, reserved: tuple[str, ...] = ()
              ) -> Callable[[T], T]:
    """A class decorator adding the class — one instance of it, or (``instantiate=False``) the class itself — to
    ``registry`` under ``cls.name``. ``what`` names the kind with its article ("an attack"); a name already
    registered, or ``reserved``, raises ValueError."""

    def register(cls: T) -> T:
        if cls.name in registry or cls.name in reserved:
            raise ValueError(f"{what} named {cls.name!r} is registered already")
        registry[cls.name] = cls() if instantiate else cls
        return cls

    return register
