"""The ``contrastive`` command: LightningCLI over every method and data module.

``contrastive fit|validate|test|predict --config X.yaml``; ``--model SimCLR`` or
``--model my_pkg.MyMethod`` picks a method by class path, ``--data`` a data module. Runs log to
``runs/<name>/version_N`` (a new version per run, so nothing earlier is overwritten; ``fit``
prints the folder at its start and end) and ``--ckpt_path last`` continues the latest run: its
``last.ckpt`` if that loads, else its newest step checkpoint that does. Checkpoints are written
atomically and read as data (:mod:`contrastive.checkpoint_io`, :mod:`contrastive.checkpoints`).
Without ``--trainer.precision`` a run takes the faster precision for its model on its device,
measured once and cached (:mod:`contrastive.precision`). A typed mistake ends in one line and
exit status 2 (:mod:`contrastive.cli_errors`); ``--help`` prints the full usage.
``contrastive --help`` lists every subcommand (:data:`SUBCOMMANDS`): Lightning's four and the
tools, each with its own parser: ``embed``/``similar`` (:mod:`contrastive.explore`), ``export``,
``probe`` (:mod:`contrastive.evaluation.probe`) and ``data nga|triplets`` (:data:`DATA_TOOLS`).
Every option is spelled with underscores, as Lightning's.
"""

from __future__ import annotations

import difflib
import re
import sys
from argparse import ArgumentError
from pathlib import Path

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import (
    ArgsType,
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

import contrastive.datamodules  # noqa: F401  (registers the data modules' short names)
import contrastive.methods  # noqa: F401  (registers the methods' short names)
from contrastive.backbones import BackboneWeightsError, UnknownBackboneError, check_backbone_name
from contrastive.checkpoint_io import AtomicCheckpointIO, Checkpoints, resume_checkpoint
from contrastive.checkpoints import (
    CheckpointError,
    allow_working_folder,
    check_class_paths,
    import_guard,
    read_checkpoint,
)
from contrastive.cli_data import start_from_defaults
from contrastive.cli_errors import one_line, quiet_known_warnings
from contrastive.datamodules.common import DataError
from contrastive.export import ExportEncoder
from contrastive.methods import ContrastiveMethod, NonFiniteError
from contrastive.precision import choose_precision, device_for, device_name
from contrastive.runs import NoRunError, latest_run

# Lightning's own names for --ckpt_path, resolved by the Trainer (``last`` is resolved here).
SPECIAL_CKPT_PATHS = ("best", "hpc", "registry")


class RunError(ValueError):
    """A mistake in what the user typed for the run, reported as one line."""


#: Errors whose message is already the one line the user sees (exit status 2).
ONE_LINE_ERRORS = (
    RunError,
    UnknownBackboneError,
    BackboneWeightsError,
    DataError,
    CheckpointError,
    NoRunError,
)


@rank_zero_only
def say(message: str) -> None:
    """One line to stderr, from the first process only."""
    print(message, file=sys.stderr, flush=True)


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
    TensorBoard logs under ``runs/``, atomic checkpoints every N steps and at the end,
    resumable with ``last``, and typed mistakes raised rather than printed with the usage."""

    def __init__(self, args: ArgsType = None, run: bool = True) -> None:
        argv = sys.argv[1:] if args is None else args
        # Modules whose classes a --ckpt_path's hyper-parameters may name: those typed.
        typed = typed_class_paths(list(argv)) if isinstance(argv, (list, tuple)) else []
        self.trusted = sorted({name.split(".")[0] for name in typed})
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
            # Errors are raised (main turns them into one line) instead of printed with the
            # whole usage; the subcommands' parsers take this from the main one.
            parser_kwargs={"exit_on_error": False},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Checkpoints, "checkpoint")
        parser.add_lightning_class_args(ExportEncoder, "export")  # into the run folder at fit end
        parser.set_defaults(
            {
                "data": {"class_path": "contrastive.datamodules.ShapesDataModule"},
                "checkpoint.every_n_train_steps": 200,
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": -1,
                # Evaluation is callbacks (contrastive/evaluation/): a run whose config names
                # none gets the embedding report and predict's writer.
                "trainer.callbacks": [
                    {"class_path": "contrastive.evaluation.EmbeddingReport"},
                    {"class_path": "contrastive.evaluation.EmbeddingWriter"},
                ],
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:  # exit_on_error=False: raised instead of printed
            argv = list(sys.argv[1:] if args is None else args)
            raise RunError(one_line(err, argv, ONE_LINE_ERRORS, parser)) from None

    def _parse_ckpt_path(self) -> None:
        """Lightning's own (the checkpoint's hyper-parameters become the model's config), after
        the file is read as data and the classes it names are checked: only ``contrastive``'s,
        its libraries' and those the user typed are imported."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or not Path(path).is_file():
            return
        what = f"--ckpt_path {path}"
        hparams = read_checkpoint(path, what).get("hyper_parameters") or {}
        hint = "name it on the command line (--model {class_path}) or in your --config"
        check_class_paths(hparams, self.trusted, what, hint)
        with import_guard(self.trusted, what, hint):
            super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("weights_only") is False:
            raise RunError("--weights_only false: checkpoints are only ever read as data")
        backbone = config.get("model.init_args.backbone")
        if isinstance(backbone, str):  # one clear line rather than jsonargparse's Union dump
            check_backbone_name(backbone)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            config.ckpt_path = str(_resume_latest_run(config, self.subcommand))
        elif ckpt_path not in (None, *SPECIAL_CKPT_PATHS) and "://" not in str(ckpt_path):
            if not Path(ckpt_path).expanduser().is_file():
                raise RunError(f"--ckpt_path {ckpt_path}: no such checkpoint file")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError) as err:  # CheckpointError and DataError too
            # A value a class refused (``--data.batch_size 0``), wrapped by jsonargparse.
            raise RunError(one_line(err, [], ONE_LINE_ERRORS)) from err

    def instantiate_trainer(self, **kwargs) -> Trainer:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("trainer.precision") is None:  # not chosen by the config or the user
            config.trainer.precision = kwargs["precision"] = self._fastest_precision(config)
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _fastest_precision(self, config) -> str:
        """The faster precision for this model on this device, measured once and cached
        (:mod:`contrastive.precision`), on the data's image size and batch size."""
        device = device_for(config.get("trainer.accelerator"))
        data = dict(getattr(self.datamodule, "hparams", None) or {})
        size = data.get("image_size") or self.model.backbone.preprocessing.image_size
        choice = choose_precision(self.model, device, size, data.get("batch_size") or 256)
        if choice.source != "the only candidate":
            say(choice.describe(device_name(device)))
        return choice.precision

    def before_fit(self) -> None:
        say(f"run folder: {self.trainer.log_dir}")

    def after_fit(self) -> None:
        last = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none"
        say(f"run folder: {self.trainer.log_dir} (last checkpoint: {last})")


def _resume_latest_run(config, subcommand: str | None) -> Path:
    """Point the logger at the latest run with a checkpoint (:func:`contrastive.runs.latest_run`,
    any logger's layout) and return what to load from it: its ``last.ckpt`` if that loads,
    else its newest step checkpoint that does."""
    run = latest_run(config.trainer, config.get("checkpoint.dirpath"))
    path, step, note = resume_checkpoint(run.checkpoints)
    if note:
        say(f"warning: --ckpt_path last: {note}")
    say(f"{'resuming' if subcommand == 'fit' else 'loading'} {path} (step {step})")
    if run.logger_key is not None:  # log into the same run
        logger = config.trainer.logger
        logger = logger[0] if isinstance(logger, list) else logger
        logger.init_args[run.logger_key] = run.logger_value
    return path


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def typed_class_paths(argv: list[str]) -> list[str]:
    """Dotted names the user typed: command-line values and the ``class_path`` entries of the
    ``--config`` files named, or of a config given as text (the classes a run may import from
    the working folder)."""
    found = []
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        found.append(value)
        is_config = arg in ("--config", "-c") or arg.startswith("--config=")
        config = argv[i + 1] if arg in ("--config", "-c") and i + 1 < len(argv) else value
        if is_config:
            try:
                text = Path(config).read_text(errors="replace")
            except OSError:  # not a file: jsonargparse reads the value as the config itself
                text = config
            found += re.findall(r"class_path['\"]?:\s*['\"]?([\w.]+)", text)
    return [v for v in found if _DOTTED.match(v)]


def _fail(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def run_lightning(args: list[str]) -> ContrastiveCLI:
    """``contrastive fit|validate|test|predict ARGS``, raising what :func:`main` reports.

    The one way a run starts, from the command line and from :func:`contrastive.fit`.

    Raises:
        RunError: and the other :data:`ONE_LINE_ERRORS`: a typed mistake, in one line.
        NonFiniteError: the loss or the weights stopped being finite.
    """
    # Like `python -m`, --model my_pkg.MyMethod finds my_pkg in the working folder; the folder
    # goes on the import path only for such a class the user typed.
    allow_working_folder(typed_class_paths(args))
    args = start_from_defaults(model_from_checkpoint(args))  # --data CLASS: its own defaults
    with quiet_known_warnings():
        return ContrastiveCLI(args=args)


def model_from_checkpoint(args: list[str]) -> list[str]:
    """``validate|test|predict --ckpt_path FILE`` with neither ``--model`` nor ``--config``:
    ``--model`` the checkpoint's method, when it is one of ``contrastive``'s (a class from
    elsewhere is named by the user, which trusts its module)."""
    flags = [a.split("=", 1)[0] for a in args]
    if not args or args[0] not in ("validate", "test", "predict"):
        return args
    if {"--model", "--config", "-c"} & set(flags) or "--ckpt_path" not in flags:
        return args
    i = flags.index("--ckpt_path")
    path = args[i].split("=", 1)[1] if "=" in args[i] else (args[i + 1 : i + 2] or [""])[0]
    if not Path(path).is_file():
        return args  # Lightning's names (best, last) and missing files are reported later
    hparams = read_checkpoint(path, f"--ckpt_path {path}").get("hyper_parameters") or {}
    class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    if isinstance(class_path, str) and class_path.startswith("contrastive."):
        return [*args, f"--model={class_path}"]
    return args


def _run_explore(argv: list[str]) -> None:
    from contrastive.explore import main as explore_main  # PIL and drawing: only when asked

    explore_main(argv)


def _run_export(argv: list[str]) -> None:
    from contrastive.export import main as export_main

    export_main(argv[1:])


def _run_probe(argv: list[str]) -> None:
    from contrastive.evaluation.probe import main as probe_main  # the linear probe command

    probe_main(argv[1:])


#: ``contrastive data <tool>``: each a module with ``main(argv) -> int``.
DATA_TOOLS = {"nga": "contrastive.tools.nga", "triplets": "contrastive.tools.triplets"}


def _run_data(argv: list[str]) -> None:
    import importlib

    tool = argv[1] if len(argv) > 1 else None
    if tool not in DATA_TOOLS:
        usage = f"usage: contrastive data {{{','.join(DATA_TOOLS)}}} [-h] ..."
        if tool in ("-h", "--help"):
            print(usage)
            raise SystemExit(0)
        problem = "name a data tool" if tool is None else f"unknown data tool {tool!r}"
        print(f"{usage}\nerror: {problem}", file=sys.stderr)
        raise SystemExit(2)
    status = importlib.import_module(DATA_TOOLS[tool]).main(list(argv[2:]))
    if status:
        raise SystemExit(status)


#: Every subcommand, as ``contrastive --help`` lists it: LightningCLI's (``None``: run by
#: :func:`run_lightning`) and the tools, each run with the whole command line.
SUBCOMMANDS = {
    "fit": ("train a method: --config X.yaml, --model, --data, --trainer.*", None),
    "validate": ("the validation metrics of a checkpoint (--ckpt_path)", None),
    "test": ("the trained-vs-random-init table of a checkpoint (--ckpt_path)", None),
    "predict": ("the embeddings of the test split (--ckpt_path)", None),
    "embed": ("write the embeddings of a set of images", _run_explore),
    "similar": ("draw the most similar pairs of images, or an image's neighbours", _run_explore),
    "export": ("write a trained encoder to a folder (safetensors or ONNX)", _run_export),
    "probe": ("the kNN and linear-probe report of a checkpoint on any data", _run_probe),
    "data": (f"data tools: {', '.join(DATA_TOOLS)} (contrastive data TOOL --help)", _run_data),
}


def usage() -> str:
    """What ``contrastive --help`` prints: every subcommand and the flag style."""
    width = max(map(len, SUBCOMMANDS))
    lines = [
        f"usage: contrastive {{{','.join(SUBCOMMANDS)}}} ...",
        "",
        "Contrastive and self-supervised representation learning on PyTorch Lightning.",
        "",
        "subcommands (contrastive SUBCOMMAND --help lists its options):",
        *(f"  {name:<{width}}  {text}" for name, (text, _) in SUBCOMMANDS.items()),
        "",
        "Options are spelled with underscores, as Lightning's (--ckpt_path, --trainer.max_epochs,",
        "--batch_size); the tools also read --batch-size as --batch_size.",
    ]
    return "\n".join(lines)


def main(args: ArgsType = None) -> None:
    """Entry point of the ``contrastive`` console script.

    Exit status: 0 done, 1 a run that failed (a non-finite loss), 2 a typed mistake (one line),
    143 stopped by SIGTERM or Ctrl-C (``last.ckpt`` written).
    """
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    command = argv[0]
    if command not in SUBCOMMANDS and not command.startswith("-"):
        close = difflib.get_close_matches(command, list(SUBCOMMANDS), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        _fail(f"unknown subcommand {command!r}{hint} (contrastive --help lists them)", 2)
    tool = SUBCOMMANDS.get(command, (None, None))[1]
    if tool is not None:
        tool(argv)
        return
    try:
        run_lightning(argv)
    except ONE_LINE_ERRORS as err:
        _fail(str(err), 2)
    except NonFiniteError as err:
        _fail(str(err), 1)
    except SIGTERMException:
        raise SystemExit(143) from None


if __name__ == "__main__":
    main()
