"""The Python API: the commands as functions, through the commands' own code.

```python
import contrastive

run = contrastive.fit("configs/simclr.yaml", trainer={"max_epochs": 1})
run.folder, run.checkpoint, run.encoder, run.metrics
model = contrastive.load(run.checkpoint)  # the method, eval mode: model.embed(uint8 images)
emb = contrastive.embed(run.checkpoint, "photos/")  # emb.z (N, D), emb.ids
rows = contrastive.similar(run.checkpoint, "photos/", out="pairs.png", top=8)
figures = contrastive.probe(run.checkpoint, data="VisionSetDataModule")  # kNN, linear probe
```

:func:`fit` is ``contrastive fit``: the keyword arguments are the command's keys, as a config
file would give them (``trainer={"max_epochs": 1}``, ``model="BYOL"``,
``data={"batch_size": 64}``, ``ckpt_path="last"``), parsed, checked and run by the same
LightningCLI; mistakes raise the command's one-line errors; :func:`probe` passes its keyword
arguments to its command the same way. :func:`embed` and :func:`similar`
parse their options with the commands' parsers (``batch_size=64`` is ``--batch_size 64``) and
run the commands' functions. Checkpoints load through the one safe loader
(:func:`contrastive.checkpoints.load_method`), checkpoints of methods built in Python included.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Run:
    """A finished ``fit``: where it wrote, and how it ended."""

    folder: Path  # the run folder (logs, config.yaml, checkpoints/, encoder/)
    checkpoint: Path | None  # its last checkpoint
    encoder: Path | None  # the encoder exported at the end (None: the method cannot be)
    metrics: dict[str, float] = field(default_factory=dict)  # the last logged values

    def load(self, device: str = "cpu"):
        """The trained method, from :attr:`checkpoint` (see :func:`load`)."""
        if self.checkpoint is None:
            raise FileNotFoundError(f"the run {self.folder} wrote no checkpoint")
        return load(self.checkpoint, device)


def fit(config: PathLike | Sequence[PathLike] | None = None, **overrides: Any) -> Run:
    """``contrastive fit --config CONFIG`` with ``overrides`` on top, and what it left.

    Args:
        config: a YAML config file, several (later ones win), or ``None``.
        **overrides: the command's keys and their values, as in a config file: a section as a
            dict (``trainer={"max_epochs": 1}``, ``model={"temperature": 0.2}``), a class by
            name (``model="BYOL"``, ``data="ImageFolderDataModule"``), ``ckpt_path="last"``.

    Raises:
        contrastive.cli.RunError: and the command's other one-line errors: a mistake in the
            config or the overrides.
        contrastive.methods.NonFiniteError: the loss or the weights stopped being finite.
    """
    from contrastive.cli import run_lightning
    from contrastive.export import ExportEncoder

    trainer = run_lightning(["fit", *config_args(config, overrides)]).trainer
    export = next((c for c in trainer.callbacks if isinstance(c, ExportEncoder)), None)
    last = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
    return Run(
        folder=Path(trainer.log_dir or trainer.default_root_dir),
        checkpoint=Path(last) if last else None,
        encoder=None if export is None else export.exported,
        metrics={k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
    )


def config_args(
    config: PathLike | Sequence[PathLike] | None, overrides: dict[str, Any]
) -> list[str]:
    """The options :func:`fit` and :func:`probe` pass their command: the configs, class names
    and paths as typed flags (so that a class from the working folder is allowed, as when
    typed), the rest as one more config (a JSON document, which ``--config`` reads as a file's
    contents)."""
    if config is None:
        configs = []
    elif isinstance(config, (str, os.PathLike)):
        configs = [config]
    else:
        configs = list(config)
    args = []
    for path in configs:
        args += ["--config", os.fspath(path)]
    rest = {}
    for key, value in overrides.items():
        if isinstance(value, (str, os.PathLike)):
            args.append(f"--{key}={os.fspath(value)}")
        else:
            rest[key] = value
    if rest:
        args += ["--config", json.dumps(rest, default=os.fspath)]
    return args


def probe(
    ckpt: PathLike,
    config: PathLike | None = None,
    trust_module: Sequence[str] = (),
    **overrides: Any,
) -> dict[str, float]:
    """``contrastive probe``: the kNN and linear-probe report of ``ckpt`` (printed, its PNG
    under ``out``), and its figures (``test/knn/<field>``, ``test/linear/<field>``, ...).

    Args:
        ckpt: a checkpoint.
        config: a YAML file of the command's options, or ``None``.
        trust_module: as :func:`load`'s.
        **overrides: the command's keys, as in a config file: ``data="VisionSetDataModule"``
            or ``data={"class_path": ..., "init_args": {...}}``, ``report={"probe_max_iter":
            100}``, ``accelerator``, ``out``.

    Raises:
        ValueError: one line: a mistaken option, or a checkpoint or data that does not load.
    """
    from argparse import ArgumentError

    from contrastive.cli_errors import one_line
    from contrastive.evaluation.probe import build_parser, run_probe

    parser = build_parser()
    argv = ["--ckpt", os.fspath(ckpt), *config_args(config, overrides)]
    argv += [arg for module in trust_module for arg in ("--trust_module", module)]
    try:
        parsed = parser.parse_args(argv)
    except ArgumentError as err:
        raise ValueError(one_line(err, argv, parser=parser)) from None
    return run_probe(parser, parsed)


def load(ckpt: PathLike, device: str = "cpu", trust_module: Sequence[str] = ()):
    """The method saved in ``ckpt``, in eval mode on ``device``, with ``embed(images)``.

    Args:
        ckpt: a checkpoint written by ``fit`` (or by a Lightning ``Trainer`` of a method built
            in Python).
        device: where the model goes.
        trust_module: modules outside ``contrastive`` whose classes the checkpoint may name
            (``--trust_module``): importing them runs their code.

    Raises:
        contrastive.checkpoints.CheckpointError: one line: the file cannot be read, names an
            untrusted module, or is no method's checkpoint.
    """
    from contrastive.checkpoints import load_method

    model, _ = load_method(ckpt, device, list(trust_module), what="checkpoint")
    return model


def embed(ckpt: PathLike, images: PathLike, out: PathLike | None = None, **options: Any):
    """``contrastive embed``: the images embedded by the checkpoint's method.

    Args:
        ckpt: a checkpoint.
        images: a folder, a manifest, or ``"shapes:N"``, as ``--images``.
        out: also write ``OUT`` and ``OUT.ids.jsonl`` as the command does; ``None``: only
            return them.
        **options: the command's other options by name: ``batch_size``, ``image_size``,
            ``device``, ``num_workers``, ``trust_module`` (a list), ``overwrite``, ...

    Returns:
        :class:`contrastive.collection.Embeddings`: ``z`` ``(N, D)`` float32 on the CPU, ``ids``,
        the ``rows`` of the collection they come from, and the ``skipped`` unreadable images.
    """
    from contrastive.explore import embed_images, run_embed

    args = _tool_args("embed", ckpt, images, out, options)
    return run_embed(args) if out is not None else embed_images(args)


def similar(ckpt: PathLike, images: PathLike, out: PathLike, **options: Any) -> list[dict]:
    """``contrastive similar``: the most similar pairs (or ``query``'s neighbours), drawn to
    ``out`` and returned as rows (``id_a``, ``id_b``, ``similarity``, ...).

    Args:
        **options: the command's options by name: ``top``, ``query``, ``compare_ckpt``,
            ``search``, ``batch_size``, ``trust_module`` (a list), ``overwrite``, ...
    """
    from contrastive.explore import run_similar

    return run_similar(_tool_args("similar", ckpt, images, out, options))


def _tool_args(command: str, ckpt, images, out, options: dict[str, Any]):
    """``options`` parsed by the command's own parser, as if typed."""
    from contrastive.explore import build_parser

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    known = {o[2:]: a for a in sub._actions for o in a.option_strings if o.startswith("--")}
    argv = [command, "--ckpt", os.fspath(ckpt), "--images", os.fspath(images)]
    argv += ["--out", os.fspath(out) if out is not None else os.devnull]
    for name, value in options.items():
        action = known.get(name)
        if action is None or name in ("ckpt", "images", "out", "help"):
            accepted = ", ".join(sorted(set(known) - {"ckpt", "images", "out", "help"}))
            raise TypeError(f"{command}() got an unexpected option {name!r} (options: {accepted})")
        flag = action.option_strings[0]
        if action.nargs == 0:  # a switch
            argv += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, os.fspath(item) if isinstance(item, os.PathLike) else str(item)]
        elif value is not None:
            argv += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    message = io.StringIO()
    try:
        with contextlib.redirect_stderr(message):
            return parser.parse_args(argv)
    except SystemExit:
        raise ValueError(message.getvalue().strip().removeprefix("error: ")) from None
