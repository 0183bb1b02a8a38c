"""The ``contrastive`` command: LightningCLI over every method and data module.

``contrastive fit|validate|test|predict --config X.yaml``; ``--model SimCLR`` or
``--model my_pkg.MyMethod`` picks a method by class path, ``--data`` a data module. Runs log to
``runs/<name>/version_N`` (a new version per run, so nothing earlier is overwritten) and
``--ckpt_path last`` continues the latest run that has a ``last.ckpt``. Without
``--trainer.precision`` a run takes the fastest precision for its hardware
(:func:`fastest_precision`).
``contrastive embed|similar --ckpt RUN.ckpt --images ...`` look at a trained embedding (see
:mod:`contrastive.explore`). ``contrastive data <tool> ...`` runs a data tool from
:mod:`contrastive.tools` (``contrastive data nga --root DIR`` downloads National Gallery of Art
images, ``contrastive data triplets ...`` writes a triplet manifest); each tool is a module
with ``main(argv) -> int``, listed in ``main``'s ``data_tools``.
``contrastive export --ckpt RUN.ckpt --out DIR`` writes a trained encoder
(:mod:`contrastive.export`), as every ``fit`` does into its run folder at the end.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import (
    ArgsType,
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)

import contrastive.datamodules  # noqa: F401  (registers the data modules' short names)
import contrastive.methods  # noqa: F401  (registers the methods' short names)
from contrastive.backbones import BackboneWeightsError, UnknownBackboneError, check_backbone_name
from contrastive.datamodules.common import DataError
from contrastive.export import ExportEncoder
from contrastive.methods import ContrastiveMethod, NonFiniteLossError

# Subcommands outside LightningCLI, for looking at a trained embedding (contrastive/explore.py).
INSPECT_COMMANDS = ("embed", "similar")


class RunError(RuntimeError):
    """A problem with the run's setup, reported to the user as one line."""


class SaveConfigNoOverwrite(SaveConfigCallback):
    """Saves the run's config next to its logs under a name that does not exist yet.

    The first config of a run directory is ``config.yaml``; a resumed or tested run adds
    ``config_1.yaml``, ``config_2.yaml``, ... so no earlier config is ever overwritten.
    """

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        log_dir = Path(trainer.log_dir or ".")
        name, n = "config.yaml", 0
        while (log_dir / name).exists():
            n += 1
            name = f"config_{n}.yaml"
        self.config_filename = name
        super().setup(trainer, pl_module, stage)


class ContrastiveCLI(LightningCLI):
    """LightningCLI with the project's defaults: methods and data modules chosen by class path,
    TensorBoard logs under ``runs/``, a checkpoint every N steps, resumable with ``last``."""

    def __init__(self, args: ArgsType = None, run: bool = True) -> None:
        super().__init__(
            ContrastiveMethod,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigNoOverwrite,
            # Methods configure their own optimizer (parameter groups, warmup, cosine), so the
            # CLI's generic --optimizer/--lr_scheduler would be a second way to do one thing.
            auto_configure_optimizers=False,
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": "contrastive"},
                }
            },
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ExportEncoder, "export")  # into the run folder at fit end
        parser.set_defaults(
            {
                "data": {"class_path": "contrastive.datamodules.ShapesDataModule"},
                "checkpoint.every_n_train_steps": 200,
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": -1,
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True  # checkpoints hold tensors and plain values only
        backbone = config.get("model.init_args.backbone")
        if isinstance(backbone, str):  # one clear line rather than jsonargparse's Union dump
            check_backbone_name(backbone)
        if config.get("ckpt_path") == "last":
            config.ckpt_path = str(_resume_latest_run(config.trainer))
        if config.get("trainer.precision") is None:  # not chosen by the config or the user
            config.trainer.precision = fastest_precision(config.get("trainer.accelerator"))


def fastest_precision(accelerator: object) -> str:
    """``"bf16-mixed"`` where the run may use a CUDA GPU with bf16, ``"32-true"`` elsewhere.

    On CPUs float32 is kept whatever the CPU: bf16 autocast made the shapes configs' small CNN
    7-12x slower even on a CPU with ``avx512_bf16`` (BENCHMARKS.md), while ResNets there gain
    from it; pass ``--trainer.precision bf16-mixed`` for those.
    """
    on_gpu = accelerator in (None, "auto", "gpu", "cuda")
    if on_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _resume_latest_run(trainer_config) -> Path:
    """Point the logger at the latest run with a ``last.ckpt`` and return that checkpoint."""
    logger = trainer_config.get("logger")
    init = getattr(logger, "init_args", None)
    if init is None or init.get("save_dir") is None:
        raise RunError("--ckpt_path last needs a logger with a save_dir to find earlier runs")
    root = Path(init.save_dir) / (init.get("name") or "")
    versions = [p for p in root.glob("version_*") if (p / "checkpoints" / "last.ckpt").is_file()]
    if not versions:
        raise RunError(f"--ckpt_path last: no earlier run with checkpoints/last.ckpt under {root}")
    latest = max(versions, key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    init.version = latest.name
    return latest / "checkpoints" / "last.ckpt"


def main(args: ArgsType = None) -> None:
    """Entry point of the ``contrastive`` console script."""
    # Like `python -m`, let --model my_pkg.MyMethod find packages in the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, (list, tuple)) and argv and argv[0] in INSPECT_COMMANDS:
        from contrastive.explore import main as explore_main  # PIL and drawing: only when asked

        explore_main(list(argv))
        return
    if isinstance(argv, (list, tuple)) and argv and argv[0] == "export":
        from contrastive.export import main as export_main

        export_main(list(argv[1:]))
        return
    if isinstance(argv, (list, tuple)) and argv and argv[0] == "data":
        # Data tools: `contrastive data <tool> ...`, each a module with main(argv) -> int.
        import importlib

        data_tools = {"nga": "contrastive.tools.nga", "triplets": "contrastive.tools.triplets"}
        tool = argv[1] if len(argv) > 1 else None
        if tool not in data_tools:
            usage = f"usage: contrastive data {{{','.join(data_tools)}}} [-h] ..."
            if tool in ("-h", "--help"):
                print(usage)
                raise SystemExit(0)
            problem = "name a data tool" if tool is None else f"unknown data tool {tool!r}"
            print(f"{usage}\nerror: {problem}", file=sys.stderr)
            raise SystemExit(2)
        status = importlib.import_module(data_tools[tool]).main(list(argv[2:]))
        if status:
            raise SystemExit(status)
        return
    try:
        ContrastiveCLI(args=args)
    except (
        NonFiniteLossError,
        RunError,
        UnknownBackboneError,
        BackboneWeightsError,
        DataError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
