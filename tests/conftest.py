"""Fixtures shared by several test modules."""

import json
import os
import shutil
from pathlib import Path

import open_clip
import pytest
import torch

TINY = "Tiny-Test-ViT"


def pytest_configure(config):
    """Under pytest-xdist, the cores shared among the workers: each worker's torch, and the
    processes it starts (DDP, the CLI), get their share of threads rather than all of them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
        torch.set_num_threads(int(threads))


@pytest.fixture
def benchmarks_in_tmp(monkeypatch, tmp_path):
    """The scripts under ``benchmarks/`` importable (as they import each other), run from
    ``tmp_path`` so that what they write stays there."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _no_precision_measurement(tmp_path_factory, monkeypatch):
    """A run without --trainer.precision times the precisions its device offers
    (contrastive/precision.py): in the tests the CPU offers float32 alone, so nothing is timed
    and every run is float32; the cache goes to a temporary folder. test_precision.py tests the
    measurement, with a fake clock."""
    monkeypatch.setattr("contrastive.precision.cpu_bf16", lambda *cpuinfo: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny open_clip model config, registered, and a checkpoint of it saved to disk: the
    stand-in for a pretrained tag, which would need the network."""
    root = tmp_path_factory.mktemp("open_clip")
    config = {
        "embed_dim": 24,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    (root / f"{TINY}.json").write_text(json.dumps(config))
    open_clip.add_model_config(root)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    path = root / "tiny.pt"
    torch.save(model.state_dict(), path)
    return model.eval(), str(path)


@pytest.fixture(scope="session")
def timm_weights(tmp_path_factory):
    """timm's tiny ``test_resnet`` (headless) saved as safetensors: a pretrained timm model
    without the network, through ``pretrained_cfg_overlay=dict(file=...)``."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=0)
    path = tmp_path_factory.mktemp("timm") / "test_resnet.safetensors"
    save_file(model.state_dict(), path)
    return str(path)


DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
# In fonts-dejavu-core, and so on every machine with DejaVu (matplotlib ships them too).
CORE = [
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
]
EXTRA = ["DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono-BoldOblique.ttf"]


@pytest.fixture(scope="module")
def fonts(tmp_path_factory) -> Path:
    """A folder of DejaVu faces: the core six and three slanted ones (fonts-dejavu-extra)."""
    if not all((DEJAVU / name).is_file() for name in CORE + EXTRA):
        pytest.skip(f"the DejaVu fonts are not all in {DEJAVU}")
    folder = tmp_path_factory.mktemp("fonts")
    for name in CORE + EXTRA:
        shutil.copy(DEJAVU / name, folder / name)
    return folder
