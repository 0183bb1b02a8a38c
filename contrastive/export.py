"""A trained encoder leaves the project: ``contrastive export`` and :func:`load_encoder`.

``contrastive export --ckpt RUN.ckpt --out DIR`` writes the method's backbone as
``backbone.safetensors`` (for CLIP also ``clip.safetensors``: both projections, the text tower
and the logit scale) and a ``config.json`` describing it: registry name and kwargs, the mean,
std and image size it was trained with, its embedding width, and the method and configuration
it came from. ``--format onnx`` writes ``encoder.onnx`` instead: uint8 images in, features out,
the normalisation inside. ``--wise_ft ALPHA`` interpolates the weights with those it started
from (WiSE-FT). Every ``fit`` exports its final encoder into its run folder
(:class:`ExportEncoder`).

An export is data only (safetensors and JSON), read back by
:func:`contrastive.encoder.load_encoder`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from safetensors.torch import save_file
from torch import Tensor, nn

from contrastive.backbones import (
    BackboneWeightsError,
    Preprocessing,
    UnknownBackboneError,
    create_backbone,
)
from contrastive.checkpoints import add_trust_argument
from contrastive.cli_errors import ToolParser
from contrastive.encoder import (
    CONFIG,
    FILES,
    VERSION,
    WEIGHT_KWARGS,
    Encoder,
    ExportError,
    load_encoder,
)
from contrastive.wise_ft import check_alpha, interpolate

CLIP_PARTS = ("image_projection", "text_projection", "text_tower", "log_logit_scale", "logit_bias")
PROBE_SIZE = 64  # side of the check images when the image size is not known


# ---- writing ------------------------------------------------------------------------------


def export_encoder(
    method: LightningModule,
    out: str | os.PathLike,
    *,
    data: dict | None = None,
    source: str = "",
    format: str = "safetensors",
    wise_ft: float | None = None,
    wise_ft_base: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``method``'s encoder to the folder ``out`` and check that it loads back.

    Args:
        method: a :class:`~contrastive.methods.ContrastiveMethod` whose ``embed`` is its
            backbone's features.
        out: the folder; refused when it holds files, unless ``overwrite``.
        data: the data module's hyper-parameters; its ``image_size`` is the training size.
        source: where the method came from (a checkpoint, a run folder), for ``config.json``.
        format: ``"safetensors"`` or ``"onnx"`` (needs ``pip install 'contrastive[onnx]'``).
        wise_ft: WiSE-FT's ``alpha``: 1 keeps the fine-tuned weights, 0 gives the base's.
        wise_ft_base: ``"pretrained"`` (what the backbone started from, the default) or a
            checkpoint.
        overwrite: replace the export files of a non-empty ``out`` (other files stay).

    Raises:
        ExportError: one line; nothing has been written then.
    """
    if format not in ("safetensors", "onnx"):
        raise ExportError(f"--format must be safetensors or onnx, got '{format}'")
    if format == "onnx":
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise ExportError(
                f"--format onnx needs {' and '.join(missing)}: pip install 'contrastive[onnx]'"
            )
    if wise_ft_base is not None and wise_ft is None:
        raise ExportError("--wise_ft_base needs --wise_ft ALPHA")
    if wise_ft is not None:
        check_alpha(wise_ft)
    wise_ft_base = wise_ft_base or "pretrained"
    out = Path(out).expanduser()
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not overwrite):
        raise ExportError(f"--out {out} exists and is not an empty folder; pass --overwrite")
    hparams = dict(method.hparams)
    name = hparams.get("backbone")
    if not isinstance(name, str):
        raise ExportError("the method has no registry backbone name in its hyper-parameters")
    mean, std = (tuple(t.flatten().tolist()) for t in (method.augment.mean, method.augment.std))
    size = (data or {}).get("image_size") or method.backbone.preprocessing.image_size
    preprocessing = Preprocessing(mean, std, size)
    parts = encoder_parts(method)
    interpolated = []
    if wise_ft is not None:
        base = wise_ft_base_parts(wise_ft_base, method)
        interpolated = [p for p in parts if p in base]
        for p in interpolated:
            parts[p] = interpolate(base[p], parts[p], wise_ft, p)
    was_training = method.training
    method.eval()
    try:
        with torch.inference_mode():
            check_embed_is_backbone(method, preprocessing)
        backbone = _float32_cpu(method.backbone, parts["backbone"])
        reference = Encoder(backbone, preprocessing).eval()
        config = {
            "version": VERSION,
            "backbone": name,
            "backbone_kwargs": {
                k: v
                for k, v in (hparams.get("backbone_kwargs") or {}).items()
                if k not in WEIGHT_KWARGS
            },
            "mean": list(mean),
            "std": list(std),
            "image_size": size,
            "embed_dim": reference.num_features,
            "method": hparams.get(
                "_class_path", f"{type(method).__module__}.{type(method).__name__}"
            ),
            "hyper_parameters": _jsonable({k: v for k, v in hparams.items() if k[0] != "_"}),
            "data": _jsonable(data or {}),
            "source": source,
            "wise_ft": None
            if wise_ft is None
            else {"alpha": wise_ft, "base": wise_ft_base, "parts": interpolated},
        }
        if "clip" in parts:
            config["clip"] = {"text_tower": _jsonable(hparams.get("text_tower"))}
        _write(out, config, parts, reference, format, overwrite)
    finally:
        method.train(was_training)
    return out


def encoder_parts(method: LightningModule) -> dict[str, dict[str, Tensor]]:
    """What an export writes: ``{"backbone": state}``, and ``"clip"`` for CLIP (state_dict keys
    as in the method)."""
    from contrastive.methods import CLIP

    parts = {"backbone": _tensors(method.backbone.state_dict())}
    if isinstance(method, CLIP):
        state = method.state_dict()
        parts["clip"] = _tensors({k: v for k, v in state.items() if k.split(".")[0] in CLIP_PARTS})
    return parts


def _tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # Own storage per tensor (safetensors refuses shared memory), on the CPU.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _float32_cpu(backbone: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """A copy of ``backbone`` with the weights ``state``, float32 on the CPU in eval mode: what
    :func:`load_encoder` will build, to check the export against."""
    copied = copy.deepcopy(backbone).to("cpu", torch.float32)
    copied.load_state_dict(state)
    return copied.eval()


def check_embed_is_backbone(method: LightningModule, preprocessing: Preprocessing) -> None:
    """Raise unless ``method`` represents normalised images by its backbone's features, which
    is all an export holds (not so for BYOL's ``representation="projector"`` or Conditional)."""
    weight = next(method.backbone.parameters(), None)
    dtype = weight.dtype if weight is not None else torch.float32
    images = _probe(preprocessing).to(method.device)  # (2, C, S, S) uint8
    views = method.augment.normalize(images).to(dtype)
    try:
        with torch.autocast(method.device.type, dtype, enabled=dtype != torch.float32):
            represented = method.embed(images)  # it normalises in float32: weights may be bf16
        features = method.backbone(views)
    except Exception as err:
        raise ExportError(
            f"the backbone does not run on a probe batch {tuple(views.shape)}: "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from None
    same_shape = represented.shape == features.shape
    if not same_shape or not torch.allclose(represented, features, rtol=1e-4, atol=1e-5):
        raise ExportError(
            f"{type(method).__name__}.embed is not its backbone's features (backbone "
            f"{tuple(features.shape)}, embed {tuple(represented.shape)}): an export holds the "
            "backbone alone"
        )


def _probe(preprocessing: Preprocessing) -> Tensor:
    """Two seeded uint8 images ``(2, C, S, S)`` to check the export with."""
    size = preprocessing.image_size or PROBE_SIZE
    shape = (2, len(preprocessing.mean), size, size)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


def _write(
    out: Path, config: dict, parts: dict, reference: Encoder, format: str, overwrite: bool
) -> None:
    """Write into a new sibling folder, check it, then move its files into ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if format == "onnx":
            config["files"] = {"onnx": FILES["onnx"]}
            _write_onnx(reference, staging / FILES["onnx"])
        else:
            config["files"] = {part: FILES[part] for part in parts}
            for part, tensors in parts.items():
                save_file(tensors, staging / FILES[part], metadata={"format": "pt"})
        (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if format == "safetensors":
            _check_loads_back(staging, reference)
        out.mkdir(exist_ok=True)
        for name in [CONFIG, *FILES.values()]:
            if (staging / name).exists():
                os.replace(staging / name, out / name)
            elif overwrite and (out / name).is_file():
                (out / name).unlink()  # a previous export's file this one does not have
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_loads_back(folder: Path, reference: Encoder) -> None:
    loaded = load_encoder(folder)
    probe = _probe(reference.preprocessing)
    with torch.inference_mode():
        expected, got = reference(probe), loaded(probe)
    if not torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
        worst = (got - expected).abs().max().item()
        raise ExportError(
            f"the exported encoder embeds differently from the method (max "
            f"difference {worst:.3g}): its backbone does not rebuild from the registry"
        )


def _write_onnx(encoder: Encoder, path: Path) -> None:
    """uint8 ``(B, C, S, S)`` -> ``(B, D)``, any batch size, through torch's dynamo exporter."""
    if encoder.image_size is None:
        raise ExportError(
            "--format onnx needs the training image size, which the run did not record"
        )
    probe = _probe(encoder.preprocessing)
    batch = torch.export.Dim("batch")
    try:
        torch.onnx.export(
            encoder,
            (probe,),
            path,
            input_names=["images"],
            output_names=["features"],
            dynamic_shapes=({0: batch},),
            external_data=False,  # one file
            verbose=False,
        )
    except Exception as err:  # the exporter's errors are many and long: their first line
        raise ExportError(
            f"torch.onnx.export failed: {type(err).__name__}: {_first_line(err)}"
        ) from None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def _jsonable(value):
    """Hyper-parameters as JSON: containers and plain values as they are, others as text."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


# ---- WiSE-FT's base ---------------------------------------------------------------------


def wise_ft_base_parts(spec: str, method: LightningModule) -> dict[str, dict[str, Tensor]]:
    """The weights WiSE-FT interpolates towards: ``"pretrained"`` rebuilds the backbone as the
    run's config did before training; otherwise ``spec`` is a checkpoint."""
    if spec != "pretrained":
        base, _ = load_checkpoint(spec, what="--wise_ft_base")
        return encoder_parts(base)
    name = method.hparams.get("backbone")
    kwargs = dict(method.hparams.get("backbone_kwargs") or {})
    if not kwargs.get("pretrained") and kwargs.get("checkpoint") is None:
        raise ExportError(
            f"--wise_ft_base pretrained: the backbone '{name}' was trained from random init (no "
            "pretrained or checkpoint in backbone_kwargs); pass a checkpoint to interpolate with"
        )
    try:
        return {"backbone": _tensors(create_backbone(name, **kwargs).state_dict())}
    except (BackboneWeightsError, UnknownBackboneError, FileNotFoundError, RuntimeError) as err:
        raise ExportError(f"--wise_ft_base pretrained: {err}") from None


def load_checkpoint(ckpt, trusted=(), what: str = "--ckpt") -> tuple[LightningModule, dict]:
    """The method saved in ``ckpt`` (eval, CPU) and its data module's hyper-parameters, through
    :mod:`contrastive.checkpoints` (classes outside ``contrastive`` from ``trusted`` only)."""
    from contrastive.checkpoints import CheckpointError, load_method, read_checkpoint

    try:
        method, _ = load_method(ckpt, torch.device("cpu"), trusted, what=what)
        state = read_checkpoint(ckpt, what)
    except CheckpointError as err:
        raise ExportError(str(err)) from None
    return method, dict(state.get("datamodule_hyper_parameters") or {})


# ---- at the end of fit, and the command -------------------------------------------------


class ExportEncoder(Callback):
    """At the end of ``fit``, export the final encoder into the run folder (on rank 0).

    The folder is ``<run>/encoder``, or ``encoder_1``, ``encoder_2``, ... when a resumed run has
    exported before, so no export is overwritten. A method an export cannot hold (its
    ``embed`` is not its backbone's features) gets a warning, and the run ends as usual.
    """

    exported: Path | None = None  # the folder written at the end of the last fit

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        run = Path(trainer.log_dir or trainer.default_root_dir)
        name, n = "encoder", 0
        while (run / name).exists():
            n += 1
            name = f"encoder_{n}"
        data = getattr(trainer.datamodule, "hparams", None)
        try:
            out = export_encoder(pl_module, run / name, data=dict(data or {}), source=str(run))
        except ExportError as err:
            rank_zero_warn(f"the final encoder was not exported: {err}")
            return
        self.exported = out
        rank_zero_info(f"exported the final encoder to {out} (contrastive.load_encoder loads it)")


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="contrastive export", description="Write an encoder to a folder.")
    parser.add_argument("--ckpt", required=True, help="a checkpoint of a ContrastiveMethod")
    add_trust_argument(parser)
    parser.add_argument("--out", required=True, help="a new or empty folder")
    parser.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors")
    parser.add_argument(
        "--wise_ft",
        type=float,
        default=None,
        metavar="ALPHA",
        help="WiSE-FT: (1 - ALPHA) * base + ALPHA * fine-tuned weights",
    )
    parser.add_argument(
        "--wise_ft_base",
        default=None,
        help="the base of --wise_ft: pretrained (what the backbone started from; the default) "
        "or a checkpoint",
    )
    parser.add_argument("--overwrite", action="store_true")
    return parser


def main(argv: list[str]) -> None:
    """Run ``contrastive export``; mistakes end with one line and exit code 1."""
    args = build_parser().parse_args(argv)
    try:
        method, data = load_checkpoint(args.ckpt, args.trust)
        out = export_encoder(
            method,
            args.out,
            data=data,
            source=str(args.ckpt),
            format=args.format,
            wise_ft=args.wise_ft,
            wise_ft_base=args.wise_ft_base,
            overwrite=args.overwrite,
        )
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"wrote {out}", file=sys.stderr)
