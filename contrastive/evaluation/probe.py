"""``contrastive probe``: the embedding report (kNN and the linear probe, trained against random
init) of any checkpoint on any data module.

    contrastive probe --ckpt runs/simclr/version_0/checkpoints/last.ckpt
    contrastive probe --ckpt A.ckpt --data VisionSetDataModule --data.name fashion_mnist

The frozen encoder embeds the data module's bank and test queries once, without augmentation
(the data module's ``[bank, query]`` test loaders), and :class:`EmbeddingReport` fits the
probes and prints the table; its PNG goes to ``--out``.
"""

from __future__ import annotations

import sys
from argparse import ArgumentError
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch import LightningDataModule, Trainer

import contrastive.datamodules  # noqa: F401  (the data modules' short names)
from contrastive.checkpoints import add_trust_argument, load_method
from contrastive.cli_errors import one_line, underscored
from contrastive.datamodules.common import DataError
from contrastive.evaluation.embedding_report import EmbeddingReport


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="contrastive probe",
        description=" ".join(__doc__.split("\n\n")[0].split()),
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="the options in a YAML file")
    parser.add_argument("--ckpt", type=str, required=True, help="a method's checkpoint")
    add_trust_argument(parser)
    parser.add_subclass_arguments(LightningDataModule, "data", help="the data module to probe on")
    parser.set_defaults({"data": {"class_path": "contrastive.datamodules.ShapesDataModule"}})
    parser.add_class_arguments(EmbeddingReport, "report", help="kNN and linear probe settings")
    parser.add_argument("--accelerator", type=str, default="auto", help="cpu, gpu, auto")
    parser.add_argument("--out", type=Path, default=Path("runs/probe"), help="folder of the PNG")
    return parser


def main(argv: list[str]) -> dict[str, float]:
    """Run the probe; returns the logged figures (``test/knn/<field>``, ``test/linear/...``).

    Options are spelled as every command's (``--report.probe_max_iter``; the hyphenated
    spelling is read as the same). A mistyped option ends in one line and exit status 2, a
    checkpoint or data that does not load in one line and exit status 1.
    """
    parser = build_parser()
    argv = [underscored(arg) for arg in argv]
    try:
        config = parser.parse_args(argv)
    except ArgumentError as err:  # exit_on_error=False: raised instead of printed
        print(f"error: {one_line(err, argv, parser=parser)}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        return run_probe(parser, config)
    except ValueError as err:  # no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def run_probe(parser: ArgumentParser, config) -> dict[str, float]:
    """The probe of a parsed command line (:func:`build_parser`), its figures returned.

    Raises:
        ValueError: one line: the checkpoint or the data does not load.
    """
    try:
        objects = parser.instantiate_classes(config)
        model, _ = load_method(config.ckpt, torch.device("cpu"), config.trust)
        trainer = Trainer(
            accelerator=config.accelerator,
            devices=1,
            logger=False,
            callbacks=[objects.report],
            default_root_dir=config.out,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        results = trainer.test(model, datamodule=objects.data, verbose=False)
    except (DataError, ValueError) as err:  # CheckpointError is a ValueError
        raise ValueError(_one_line(err)) from None
    return results[0] if results else {}


def _one_line(err: Exception) -> str:
    """The reason in an error, on one line (jsonargparse's names it after ``Errors:``)."""
    lines = [line.strip(" -") for line in str(err).splitlines() if line.strip()]
    if "Errors:" in lines:
        lines = lines[lines.index("Errors:") + 1 :][:1]
    return "; ".join(lines)
