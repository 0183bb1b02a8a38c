"""``--data CLASS`` on top of a config that names another data class.

jsonargparse carries the config's data settings over to the new class wherever the new class
has a setting of the same name: ``--config configs/simclr.yaml --data ImageFolderDataModule``
trained at the shapes config's 32 px with its batch of 128, kNN bank of 4096 and no loader
workers, where the image-folder module's own defaults are 224 px, 256, 10000 and one worker per
core. A new class starts from its own defaults instead: :func:`start_from_defaults` puts
``--data null`` before such a ``--data CLASS`` (jsonargparse then has no earlier value to carry
over) and says in one line which of the config's values were not carried over. Settings given
after the switch (``--data.image_size 96``) apply as usual; naming the config's own class again
keeps its values.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import yaml

_CLASS_NAME = re.compile(r"[A-Za-z_][\w.]*")
_CONFIG_FLAGS = ("--config", "-c")


def start_from_defaults(args: list[str]) -> list[str]:
    """``args`` with ``--data null`` before each ``--data CLASS`` that switches class.

    A switch is a ``--data`` whose value is a class name or import path naming another class
    than the data class set before it (by a ``--config`` file or an earlier ``--data``). Prints
    one note per switch to stderr naming the earlier settings left behind.
    """
    out: list[str] = []
    current: tuple[str, dict] | None = None  # the data class so far and its settings
    i = 0
    while i < len(args):
        flag, value, width = _option(args, i)
        if flag in _CONFIG_FLAGS and value is not None:
            current = _config_data(value) or current
        elif flag == "--data" and value is not None and _is_class_name(value):
            if current is not None and _short(current[0]) != _short(value):
                out.append("--data=null")
                _note(value, *current)
            current = (value, {})
        out.extend(args[i : i + width])
        i += width
    return out


def _is_class_name(value: str) -> bool:
    """A class name or import path, not a config file (``data.yaml``) or an inline dict."""
    return bool(_CLASS_NAME.fullmatch(value)) and not (
        value.lower().endswith((".yaml", ".yml", ".json")) or Path(value).expanduser().exists()
    )


def _option(args: list[str], i: int) -> tuple[str, str | None, int]:
    """``(flag, value, tokens used)`` at ``args[i]``: ``--flag=v``, ``--flag v`` or neither."""
    token = args[i]
    if token.startswith("--") and "=" in token:
        flag, value = token.split("=", 1)
        return flag, value, 1
    if token in (*_CONFIG_FLAGS, "--data") and i + 1 < len(args):
        return token, args[i + 1], 2
    return token, None, 1


def _config_data(path: str) -> tuple[str, dict] | None:
    """The data class and settings a config file names, if it names one."""
    try:
        config = yaml.safe_load(Path(path).expanduser().read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None  # the CLI reports an unreadable config itself
    data = config.get("data") if isinstance(config, dict) else None
    if isinstance(data, str):
        return data, {}
    if isinstance(data, dict) and isinstance(data.get("class_path"), str):
        init_args = data.get("init_args")
        return data["class_path"], init_args if isinstance(init_args, dict) else {}
    return None


def _short(class_path: str) -> str:
    return class_path.rpartition(".")[2]


def _accepted(class_name: str) -> set[str] | None:
    """The ``__init__`` arguments of a data class by short name or import path."""
    module, _, name = class_name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module or "contrastive.datamodules"), name)
        return set(inspect.signature(cls.__init__).parameters) - {"self"}
    except (ImportError, AttributeError, ValueError, TypeError):
        return None


def _note(new: str, old: str, settings: dict) -> None:
    accepted = _accepted(new)
    left = [f"{k}={v}" for k, v in settings.items() if accepted is None or k in accepted]
    detail = f"; not carried over: {', '.join(left)}" if left else ""
    print(
        f"note: --data {new} replaces the config's {_short(old)} and starts from "
        f"{_short(new)}'s defaults{detail} (set them with --data.KEY)",
        file=sys.stderr,
    )
