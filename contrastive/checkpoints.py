"""Reading checkpoints so that no file runs code: one loader for every place that loads one.

A checkpoint is data. :func:`read_checkpoint` reads tensors and plain values only
(``weights_only=True``) and turns every failure (a missing, truncated or foreign file, a pickle
naming a function) into one line. :func:`load_method` rebuilds the method a checkpoint names from
its hyper-parameters, and imports only:

- classes of ``contrastive`` and of the libraries it is built on (:data:`LIBRARIES`: the
  optimizer and augmentations a config names), and modules the user names on the command line
  (``--trust_module my_pkg``), checked in the hyper-parameters before anything is imported;
- while it instantiates them, no module from outside the Python installation (the working
  folder, a data folder) unless trusted, whatever string leads to the import
  (:class:`ImportGuard`).

The loading points: ``fit|validate|test|predict --ckpt_path`` (its hyper-parameters in
``ContrastiveCLI._parse_ckpt_path``, its state through
:class:`~contrastive.checkpoint_io.AtomicCheckpointIO`), ``embed``, ``similar`` and
``similar --compare_ckpt``, ``data triplets --ckpt``, ``export --ckpt`` and
``--wise_ft_base``, ``backbone_kwargs.checkpoint`` and ``Conditional(towers=...)`` (through
:func:`contrastive.backbones.load_weights`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import pickle
import site
import sys
import sysconfig
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Libraries whose classes a checkpoint written by this project names besides its own:
#: optimizers (``torch.optim.AdamW``, ``timm.optim.Lars``) and augmentations (``kornia``).
LIBRARIES = ("contrastive", "torch", "timm", "kornia")

TRUST_FLAG = "--trust_module"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file."""


class UntrustedModuleError(CheckpointError):
    """A checkpoint names a module the user has not trusted; the message names it and how to
    trust it."""


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """The checkpoint at ``path``, read on the CPU with ``weights_only=True``.

    Args:
        path: a file written by ``torch.save``.
        what: how the message names the file (``"--ckpt"``, ``"towers"``, ...).

    Raises:
        CheckpointError: one line: no such file, not a complete checkpoint (a truncated file),
            or a pickle that names code (which loading would run).
    """
    import torch  # here, so that the tools' parsers import this module without torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"{what}: no checkpoint file at {path}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message runs over several lines; its first names the refused global.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{what} {path}: refused, it holds more than tensors and plain values "
            f"({first.removeprefix('Weights only load failed. ')})"
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as err:
        cause = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        raise CheckpointError(f"{what} {path}: not a complete checkpoint ({cause})") from None


# ---- which modules a checkpoint may import ------------------------------------------------


def _under(name: str, packages: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def check_class_paths(
    hparams: Any, trusted: Sequence[str], what: str, hint: str = f"pass {TRUST_FLAG} {{top}}"
) -> None:
    """Refuse a checkpoint whose hyper-parameters name a class outside the trusted modules.

    Every ``class_path`` (a config's classes) and ``_class_path`` (the method) is checked
    before anything is imported; a name without a dot is a short name that jsonargparse looks
    up among classes already imported.

    Args:
        hparams: the checkpoint's ``hyper_parameters``.
        trusted: modules besides :data:`LIBRARIES` the user named.
        what: how the message names the file.
        hint: how to trust the module, formatted with ``top`` (its top-level package) and
            ``class_path``.

    Raises:
        UntrustedModuleError: names the class, the module and how to trust it.
    """
    for class_path in _class_paths(hparams):
        module = class_path.rpartition(".")[0]
        if module and not _under(module, (*LIBRARIES, *trusted)):
            how = hint.format(top=module.split(".")[0], class_path=class_path)
            raise UntrustedModuleError(
                f"{what}: the checkpoint names the class {class_path}, from the module {module} "
                f"outside contrastive; importing it would run its code: if you trust it, {how}"
            )


def _class_paths(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("class_path", "_class_path") and isinstance(item, str):
                yield item
            else:
                yield from _class_paths(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _class_paths(item)


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else ())
    roots.add(site.getusersitepackages())
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


class ImportGuard(importlib.abc.MetaPathFinder):
    """While active, refuses to import a module found outside the Python installation.

    Libraries import what they need lazily (a text tower's ``sentence_transformers``), so
    modules under the installation's ``site-packages`` and standard library pass, as do
    ``contrastive``, :data:`LIBRARIES` and the trusted modules; a module that would come from
    anywhere else (the working folder, a data folder on ``sys.path``) is refused. Modules
    already imported are not looked up again and pass.
    """

    def __init__(
        self, trusted: Sequence[str], what: str, hint: str = f"pass {TRUST_FLAG} {{top}}"
    ) -> None:
        self.trusted = (*LIBRARIES, *trusted)
        self.what, self.hint = what, hint
        self.roots = _installed_roots()
        self.refused: list[str] = []

    def find_spec(self, name: str, path=None, target=None):
        if _under(name, self.trusted):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        origins = [] if spec is None else [spec.origin, *(spec.submodule_search_locations or [])]
        outside = [
            o
            for o in origins
            if o
            and o not in ("built-in", "frozen")
            and not os.path.realpath(o).startswith(self.roots)
        ]
        if not outside:
            return None  # installed, or not found at all (the import fails by itself)
        self.refused.append(name)
        raise self.error(name)

    def error(self, name: str) -> UntrustedModuleError:
        how = self.hint.format(top=name.split(".")[0], class_path=name)
        return UntrustedModuleError(
            f"{self.what}: loading the checkpoint would import the module {name} from outside "
            f"the Python installation (which runs its code): if you trust it, {how}"
        )


@contextmanager
def import_guard(
    trusted: Sequence[str], what: str, hint: str = f"pass {TRUST_FLAG} {{top}}"
) -> Iterator[ImportGuard]:
    """:class:`ImportGuard` on ``sys.meta_path`` for the duration of the block.

    A refusal inside the block is raised as :class:`UntrustedModuleError` at its end, even when
    the code that imported (jsonargparse resolving a class path) caught the first one.
    """
    guard = ImportGuard(trusted, what, hint)
    sys.meta_path.insert(0, guard)
    try:
        yield guard
    except Exception:
        if guard.refused:
            raise guard.error(guard.refused[0]) from None
        raise
    finally:
        sys.meta_path.remove(guard)
    if guard.refused:
        raise guard.error(guard.refused[0])


def load_method(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    trusted: Sequence[str] = (),
    what: str = "--ckpt",
):
    """The method saved in a checkpoint, in eval mode on ``device``, and how its training data
    read images.

    Args:
        path: a Lightning checkpoint written by ``contrastive fit``.
        device: where the model goes.
        trusted: modules besides ``contrastive`` whose classes the checkpoint may name (the
            user's ``--trust_module``).
        what: how messages name the file.

    Returns:
        ``(model, reading)``: the data module's image size (``None`` when it recorded none),
        resize mode and pixel limit (:meth:`~contrastive.datamodules.images.Reading.of_data`).

    Raises:
        CheckpointError: the file cannot be read, or is no method's checkpoint.
        UntrustedModuleError: it names a module outside ``contrastive`` that is not trusted.
    """
    state = read_checkpoint(path, what)
    hparams = state.get("hyper_parameters")
    class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    if not isinstance(class_path, str) or "." not in class_path:
        raise CheckpointError(f"{what} {path}: not a contrastive checkpoint (no method class)")
    if class_path.startswith("__main__."):
        raise CheckpointError(
            f"{what} {path}: its method {class_path} was defined in the script that trained it, "
            "which no other program can import: define it in a module (my_methods.py) and pass "
            f"{TRUST_FLAG} my_methods"
        )
    check_class_paths(hparams, trusted, what)
    allow_working_folder(trusted)  # a module the user trusts may sit in the working folder
    module_name, _, class_name = class_path.rpartition(".")
    from contrastive.methods import ContrastiveMethod

    with import_guard(trusted, what):
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as err:
            raise CheckpointError(f"{what} {path}: cannot import {class_path}: {err}") from None
        if not (isinstance(cls, type) and issubclass(cls, ContrastiveMethod)):
            raise CheckpointError(f"{what} {path}: {class_path} is not a ContrastiveMethod")
        try:
            model = cls.load_from_checkpoint(
                Path(path).expanduser(), map_location=device, weights_only=True
            )
        except (TypeError, ValueError, KeyError) as err:  # jsonargparse's errors are ValueErrors
            if isinstance(err, CheckpointError):
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(
                f"{what} {path}: cannot rebuild {class_path} from its hyper-parameters: {first}"
            ) from None
    from contrastive.datamodules.images import Reading

    reading = Reading.of_data(state.get("datamodule_hyper_parameters"))
    return model.eval().to(device), reading


def name_method_class(method: torch.nn.Module, checkpoint: dict[str, Any]) -> None:
    """Name ``method``'s class in ``checkpoint``'s hyper-parameters as LightningCLI does.

    Built in Python, a method's hyper-parameters are plain values, without its class (and
    without the modules passed in): named here, with a text tower's config (its weights are in
    the state_dict), every command rebuilds the method through :func:`load_method`, and
    ``load_from_checkpoint`` still works. A checkpoint LightningCLI wrote is left as it is.
    """
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "_class_path" in hparams:
        return
    cls = type(method)
    named = {
        "_class_path": f"{cls.__module__}.{cls.__qualname__}",
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
    }
    tower = getattr(getattr(method, "text_tower", None), "config", None)
    if tower is not None and "text_tower" not in hparams:
        named["text_tower"] = tower
    checkpoint["hyper_parameters"] = {**named, **hparams}


def add_trust_argument(parser, what: str = "--ckpt") -> None:
    """``--trust_module MODULE`` (repeatable, into ``args.trust``) on an argparse parser."""
    parser.add_argument(
        TRUST_FLAG,
        dest="trust",
        action="append",
        default=[],
        metavar="MODULE",
        help=f"a module outside contrastive whose classes {what} may name (its code runs when "
        "the checkpoint loads); repeatable",
    )


def allow_working_folder(modules: Sequence[str]) -> None:
    """Put the working folder first on the import path if one of ``modules`` (names the user
    typed: ``--model my_pkg.X``, ``--trust_module my_pkg``) is found there and nowhere else.

    Otherwise the folder stays off the path, so no file in it is imported by accident.
    """
    cwd = os.getcwd()
    if cwd in sys.path:
        return
    for name in modules:
        top = name.split(".")[0]
        here = (Path(cwd) / f"{top}.py").is_file() or (Path(cwd) / top).is_dir()
        if here and importlib.util.find_spec(top) is None:
            sys.path.insert(0, cwd)
            return


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint file, or a run folder's newest ``**/checkpoints/last.ckpt`` (``Conditional``'s
    ``towers``).

    Raises:
        CheckpointError: one line naming ``towers`` and the path.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(p.glob("**/checkpoints/last.ckpt"), key=lambda f: f.stat().st_mtime)
        if not found:
            raise CheckpointError(f"towers: no checkpoints/last.ckpt under the folder {path}")
        return found[-1]
    if not p.is_file():
        raise CheckpointError(f"towers: no checkpoint file at {path}")
    return p
