"""Every mistake a user types, as one line: what jsonargparse and the classes report, condensed.

The ``contrastive`` parser runs with ``exit_on_error=False``, so jsonargparse raises its error
instead of printing the usage and a nested report; :func:`one_line` reads the chain of
exceptions it raised (``__cause__``): the keys on the way down (``Parser key "model"``), the
class being configured, and the root cause (an unknown option, a wrong type, a missing class,
a value a class refused), and says it in one line with close matches where they help. An error
of the project's own that is already one line (a :class:`~contrastive.datamodules.common.DataError`,
a checkpoint error, ...) anywhere in the chain is used as it is.

The tools outside LightningCLI (``embed``, ``similar``, ``export``, ``data ...``) parse with
:class:`ToolParser`: the same one-line errors, and options spelled as LightningCLI's.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import inspect
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import yaml

_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS = re.compile(r"(?:Problem with given class_path |class_path=)'([\w.]+)'")
_OPTION = re.compile(r"Option '([^']+)' is not accepted")
_EXPECTED = re.compile(r"Expected a <class '([\w.]+)'>\. Got value: (.*)")
_NO_ATTRIBUTE = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'")
_SHORT_NAME = re.compile(r"Expected a dot import path string: (\S+)")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")
_NO_FILE = re.compile(r"File does not exist: '?([^']+)'?")
_GROUP_OPTION = re.compile(r"(Group|Subcommand) '([\w.]+)' does not accept option '([^']+)'")

# What a key takes, for the "did you mean" of an unknown class name: the package whose
# classes it lists, and what to call one.
_KINDS = {
    "model": ("contrastive.methods", "method"),
    "data": ("contrastive.datamodules", "data module"),
}


class ToolParser(argparse.ArgumentParser):
    """The tools' argument parser: options in LightningCLI's spelling, mistakes in one line.

    Lightning fixes the spelling of its options (``--ckpt_path``, ``--trainer.max_epochs``),
    so every option of every subcommand is written with underscores (``--batch_size``,
    ``--trust_module``), which ``--help`` shows; the hyphenated spelling (``--batch-size``) is
    read as the same option. A mistake prints ``error: PROG: ...`` and exits with status 2.
    """

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([underscored(a) for a in args], namespace)

    def error(self, message: str):
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def underscored(arg: str) -> str:
    """``--batch-size=8`` -> ``--batch_size=8``: an option's name in LightningCLI's spelling;
    its value, and anything that is not a ``--`` option, unchanged."""
    if not arg.startswith("--"):
        return arg
    name, equals, value = arg.partition("=")
    return "--" + name[2:].replace("-", "_") + equals + value


def chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes, outermost first."""
    found: list[BaseException] = []
    while error is not None and error not in found:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


def one_line(error: BaseException, argv: list[str], own: tuple[type, ...] = (), parser=None) -> str:
    """The mistake behind ``error`` (raised by parsing or instantiating ``argv``) in one line.

    Args:
        error: what the parser or a configured class raised.
        argv: the command line, to name the config file a YAML error is in.
        own: the project's one-line error types, used as they are when in the chain.
        parser: the parser that raised, for the close matches of an unknown option.
    """
    errors = chain(error)
    for e in errors:
        if own and isinstance(e, own):
            return _first_line(e)
    messages = [str(e) for e in errors]
    keys: list[str] = []
    for message in messages:
        key = _KEY.match(message.strip())
        if key and (not keys or keys[-1] != key.group(1)):
            keys.append(key.group(1))
    # The class being configured where it failed: the one named by the innermost message.
    classes = [m.group(1) for m in map(_CLASS.search, reversed(messages)) if m][:1]
    root = errors[-1]
    text = "\n".join(messages)
    key = "--" + ".init_args.".join(keys) if keys else ""

    if "Problems parsing config" in text or isinstance(root, yaml.YAMLError):
        return _yaml_error(argv)
    if match := _UNRECOGNIZED.search(text):
        return _unrecognized(match.group(1), argv, parser)
    if match := _GROUP_OPTION.search(text):  # a key of a config (a JSON one from the API)
        kind, group, option = match.groups()
        return _unrecognized(f"--{group + '.' if kind == 'Group' else ''}{option}", argv, parser)
    if match := _OPTION.search(text):  # before a missing file: jsonargparse tries a config
        return _unknown_option(key, match.group(1), classes)  # given as text as a path first
    if match := _NO_FILE.search(text):
        return f"{key or '--config'} {match.group(1)}: no such file"
    if match := _NO_ATTRIBUTE.search(text):
        module, name = match.groups()
        return _unknown_class(key, f"{module}.{name}", module, name, keys)
    if match := _SHORT_NAME.search(text):
        return _unknown_class(key, match.group(1), None, match.group(1), keys)
    if match := _EXPECTED.search(text):
        expected, value = match.groups()
        value = value.split("\n")[0]
        return f"{key}: expected {_a(expected)}, got {value!r}"
    where = _raised_in(root)
    return f"{where + ': ' if where else ''}{_first_line(root)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _a(type_name: str) -> str:
    name = type_name.rsplit(".", 1)[-1]
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    return names.get(name, f"a {name}")


def _matches(name: str, known: list[str]) -> str:
    by_lower = {k.lower(): k for k in known}  # "Simclr" is a typo of "SimCLR"
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(by_lower[c] for c in close)}?" if close else ""


def _unknown_option(key: str, option: str, classes: list[str]) -> str:
    where = f"{key}.init_args.{option}" if key else f"--{option}"
    if not classes:
        return f"{where}: no such option"
    class_path = classes[-1]
    accepted = [p.name for p in init_parameters(_resolve(class_path))]
    name = class_path.rsplit(".", 1)[-1]
    return f"{where}: {name} takes no argument {option!r}{_matches(option, accepted)}"


def _unknown_class(key: str, given: str, module: str | None, name: str, keys: list[str]) -> str:
    key = key or "--model"
    kind = _KINDS.get(keys[0]) if len(keys) == 1 else None
    if kind is not None:
        package, what = kind
        known = _known_classes(package)
        listing = f" (known: {', '.join(known)})"
        return f"{key} {given}: no such {what}{_matches(name, known)}{listing}"
    known = [n for n in dir(sys.modules.get(module or "", None)) if not n.startswith("_")]
    return f"{key} {given}: no such class{_matches(name, known)}"


def _known_classes(package: str) -> list[str]:
    """The methods or data modules ``package`` exports (its ``__all__``), base class aside."""
    from lightning.pytorch import LightningDataModule, LightningModule

    from contrastive.methods import ContrastiveMethod

    module = importlib.import_module(package)
    classes = [getattr(module, name) for name in getattr(module, "__all__", [])]
    bases = (LightningModule, LightningDataModule)
    kept = [c for c in classes if inspect.isclass(c) and issubclass(c, bases)]
    return sorted(c.__name__ for c in kept if c is not ContrastiveMethod)


def _unrecognized(arguments: str, argv: list[str], parser) -> str:
    option = (arguments.split() or [arguments])[0].split("=", 1)[0]
    subcommands = getattr(parser, "_subcommands_action", None)
    subcommand = next((a for a in argv if not a.startswith("-")), None)
    if subcommands is not None and subcommand in subcommands._name_parser_map:
        parser = subcommands._name_parser_map[subcommand]
    known = list(getattr(parser, "_option_string_actions", None) or {})
    return f"{option}: no such option{_matches(option, known)}"


def _yaml_error(argv: list[str]) -> str:
    configs = [
        argv[i + 1] if arg in ("--config", "-c") and i + 1 < len(argv) else arg.split("=", 1)[1]
        for i, arg in enumerate(argv)
        if arg in ("--config", "-c") or arg.startswith("--config=")
    ]
    for config in configs:
        try:
            yaml.safe_load(Path(config).read_text())
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            return f"--config {config}: YAML syntax error{where}: {err.problem}"
        except (OSError, yaml.YAMLError) as err:
            return f"--config {config}: {_first_line(err)}"
    return "a value on the command line is not valid YAML"


def _raised_in(error: BaseException) -> str:
    """The class whose ``__init__`` raised ``error``, when it was one."""
    traceback, owner = error.__traceback__, ""
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            owner = type(frame.f_locals["self"]).__name__
        traceback = traceback.tb_next
    return owner


def _resolve(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    return getattr(sys.modules.get(module), name, None)


def init_parameters(cls: type | None) -> list[inspect.Parameter]:
    """The ``__init__`` parameters of ``cls`` and of the bases its ``**kwargs`` reach (every
    method passes its base's on), the subclass's first; ``self`` and ``*``/``**`` left out."""
    found: list[inspect.Parameter] = []
    for klass in getattr(cls, "__mro__", ()):
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        found += [p for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return found


# Warnings every run printed that say nothing to its user: the CLI's own way of passing the
# arguments, a hook the methods override on purpose (they make the views), and Lightning's use
# of a torch API that torch 2.14 deprecates.
KNOWN_WARNINGS = (
    "LightningCLI's args parameter is intended to run from within Python",
    "You have overridden `on_after_batch_transfer` in `LightningModule`",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


@contextlib.contextmanager
def quiet_known_warnings() -> Iterator[None]:
    """Leave out :data:`KNOWN_WARNINGS` inside the block; every other warning is shown."""
    with warnings.catch_warnings():
        for message in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield
