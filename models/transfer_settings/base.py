"""The settings of the transfer types and the registry that names them, without torch.

A transfer type is two small files, one in each folder, named alike:

* ``models/transfer_settings/<name>.py``: a frozen dataclass of its settings (``MethodConfig``
  subclass) registered by name with ``register_settings``; each field, declared with
  ``setting(default, help)``, is the command-line flag ``--<field>``, the ``create_model``
  keyword and an architecture setting saved in checkpoints (``--eval`` restores it);
  ``validate`` checks values that need no model;
* ``models/transfer/<name>.py``: the ``TransferMethod`` subclass (torch) that adds its modules
  to a built backbone, registered under the same name (``register_transfer``).

The settings live apart from the methods so that the command lines build their flags, and
``--help`` answers, without importing torch (a second or more and most of a gigabyte).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

# name -> the settings dataclass of the type registered under it.
TRANSFER_SETTINGS: Dict[str, Type["MethodConfig"]] = {}
# name -> a short description for --help.
TRANSFER_TITLES: Dict[str, str] = {}
# Former names of registered types, still accepted wherever a type name is read (old commands and
# checkpoints saved by old runs): alias -> registered name. ``canonical_transfer_type`` reads it.
TRANSFER_ALIASES: Dict[str, str] = {}


def setting(default: Any, help: str, choices: Optional[Sequence[Any]] = None) -> Any:
    """A transfer-type setting: a dataclass field whose metadata makes it a flag ``--<name>``."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class MethodConfig:
    """Settings of a transfer type (none for this base). Values are checked on construction."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the flag for a value no model could take."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_block_range(depth: int, start: Optional[int], end: Optional[int]) -> Tuple[int, int]:
    """Inclusive block range ``[start, end]``; defaults to every block. Bad ranges name the flags."""
    start = 0 if start is None else int(start)
    end = depth - 1 if end is None else int(end)
    if start < 0 or end < 0:
        raise ValueError(f"--prompt_start {start} / --prompt_end {end}: block indices must be >= 0")
    if start > end:
        raise ValueError(f"--prompt_start {start} is greater than --prompt_end {end}")
    if end >= depth:
        raise ValueError(f"--prompt_end {end} is past the last block: the model has {depth} blocks "
                         f"(0..{depth - 1})")
    return start, end


def check_num_tokens(num_tokens: int, flag: str = "--prompt_num_tokens") -> int:
    if int(num_tokens) < 1:
        raise ValueError(f"{flag} must be >= 1 for this transfer type, got {num_tokens}")
    return int(num_tokens)


@dataclass(frozen=True)
class BlockRange(MethodConfig):
    """Settings of types that adapt a range of blocks (flags named after APT's, as in its code)."""

    prompt_start: Optional[int] = setting(None, "first block adapted (default: 0)")
    prompt_end: Optional[int] = setting(None, "last block adapted, inclusive (default: the last)")

    def validate(self) -> None:
        for name in ("prompt_start", "prompt_end"):
            value = getattr(self, name)
            if value is not None and int(value) < 0:
                raise ValueError(f"--{name} {value}: block indices must be >= 0")
        if self.prompt_start is not None and self.prompt_end is not None and \
                self.prompt_start > self.prompt_end:
            raise ValueError(f"--prompt_start {self.prompt_start} is greater than --prompt_end "
                             f"{self.prompt_end}")

    def blocks(self, depth: int) -> Tuple[int, int]:
        """The inclusive block range in a model of ``depth`` blocks."""
        return resolve_block_range(depth, self.prompt_start, self.prompt_end)


@dataclass(frozen=True)
class PromptSettings(BlockRange):
    """Settings shared by the prompt types (APT, VPT, Approximated Prompt Tuning)."""

    prompt_num_tokens: int = setting(5, "prompt tokens per adapted block (P)")
    prompt_dropout: float = setting(0.0, "dropout on the prompt tokens while training")

    def validate(self) -> None:
        super().validate()
        check_num_tokens(self.prompt_num_tokens)
        if not 0.0 <= float(self.prompt_dropout) < 1.0:
            raise ValueError(f"--prompt_dropout must be in [0, 1), got {self.prompt_dropout}")


def register_settings(name: str, title: str, aliases: Sequence[str] = ()
                      ) -> Callable[[Type[MethodConfig]], Type[MethodConfig]]:
    """Class decorator: ``--transfer_type name`` takes these settings.

    Args:
        name: the registered name (what new checkpoints store).
        title: what the type is, for ``--help``.
        aliases: former names that still select it (``canonical_transfer_type``).
    """
    def wrap(cls: Type[MethodConfig]) -> Type[MethodConfig]:
        taken = [a for a in aliases
                 if a in TRANSFER_SETTINGS or TRANSFER_ALIASES.get(a, name) != name]
        if name in TRANSFER_ALIASES or taken or \
                TRANSFER_SETTINGS.get(name, cls) is not cls:
            raise ValueError(f"transfer type settings {cls.__name__}: the name "
                             f"{(taken or [name])[0]!r} is already another type's")
        TRANSFER_SETTINGS[name] = cls
        TRANSFER_TITLES[name] = title
        TRANSFER_ALIASES.update({alias: name for alias in aliases})
        return cls
    return wrap


def canonical_transfer_type(name: str) -> str:
    """The registered name that transfer type ``name`` stands for: a former name (``prompt``
    for ``apt``) becomes the current one; any other name comes back unchanged (an unknown one
    is refused by ``settings_class``). Every comparison of type names goes through it."""
    return TRANSFER_ALIASES.get(name, name)


def settings_class(name: str) -> Type[MethodConfig]:
    """The settings dataclass of type ``name`` (or of the type ``name`` is a former name of)."""
    canonical = canonical_transfer_type(name)
    if canonical not in TRANSFER_SETTINGS:
        raise ValueError(f"--transfer_type {name!r} is unknown; choose one of "
                         f"{', '.join(sorted(TRANSFER_SETTINGS))}")
    return TRANSFER_SETTINGS[canonical]


def setting_fields(name: str) -> Dict[str, dataclasses.Field]:
    """The settings of transfer type ``name``: field name -> dataclass field."""
    return {f.name: f for f in dataclasses.fields(settings_class(name))}


def all_setting_fields() -> Dict[str, Tuple[dataclasses.Field, List[str]]]:
    """Every registered type's settings: name -> (its one declaration, the types that use it).

    A setting shared by several types must be one declaration (a common base dataclass such as
    ``PromptSettings``), so its default and help exist once; two different declarations of one
    name are an error.
    """
    out: Dict[str, Tuple[dataclasses.Field, List[str]]] = {}
    for type_name in sorted(TRANSFER_SETTINGS):
        for f in dataclasses.fields(TRANSFER_SETTINGS[type_name]):
            if f.name in out and out[f.name][0] is not f:
                raise TypeError(f"transfer types {out[f.name][1][0]!r} and {type_name!r} declare "
                                f"the setting {f.name!r} twice: declare it once in a shared base "
                                f"dataclass")
            out.setdefault(f.name, (f, []))[1].append(type_name)
    return out


def make_config(name: str, settings: Dict[str, Any]) -> MethodConfig:
    """``config_class(**settings)`` of type ``name``; a setting it does not have is an error
    that names the type and its settings."""
    fields = setting_fields(name)
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ValueError(f"--transfer_type {name} has no setting {', '.join(unknown)} (its "
                         f"settings: {', '.join(sorted(fields)) or 'none'})")
    return settings_class(name)(**settings)
