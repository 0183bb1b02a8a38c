"""GeneCIS (Vaze et al., CVPR 2023, arXiv:2306.07969): conditional image retrieval, zero-shot.

Each of the four tasks is a JSON list, one record per query (github.com/facebookresearch/genecis,
``genecis/*.json``): a reference image, a condition text, a target and a gallery of
distractors; the model must rank the target first among target and gallery for (reference,
condition). The images are the user's own copies (their licences keep them out of this repo):

================  =========  ==========================================  ============
task              gallery    image entries                               images
================  =========  ==========================================  ============
focus_attribute   10         ``{"image_id", "instance_bbox": [x,y,w,h]}``  Visual Genome
change_attribute  15         the same                                    Visual Genome
focus_object      15         ``{"val_image_id": 189213}``                COCO val2017
change_object     15         the same                                    COCO val2017
================  =========  ==========================================  ============

The gallery column counts the target with the distractors (the paper's Table 1); a record
whose gallery has another size is kept, scored on its own gallery, and reported in one
warning at setup. Files: COCO ``{id:012d}.jpg``, Visual Genome ``{image_id}.jpg``, both in
``images``. An attribute image is the object's box grown by 0.7 of its width and height and
clamped to the image (:func:`dilated_box`), padded to a square with black, exactly as
GeneCIS's own ``VAWValSubset``: its formula grows the box to the left and up only (``right =
left + 1.7 w`` is the box's own right edge unless ``left`` was clamped at 0). Pixels are read
as stored (no EXIF rotation, as GeneCIS's Pillow reads them), then resized to ``image_size``
(the shorter side, then the centre).

A record with a missing or unreadable image, or a box outside its image, is skipped and
counted (the method's skip report names the first few). A malformed file or record is a
one-line error naming the file, the record and the key.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import NamedTuple

import lightning
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from contrastive.datamodules.common import Collate, DataError, EvaluationData, Skipped, Tokenizer
from contrastive.datamodules.images import read_image, resize_center_crop


class Task(NamedTuple):
    """A GeneCIS task: whose images its records name, and how many images each ranks."""

    kind: str  # "object" (COCO val2017 ids) or "attribute" (Visual Genome ids and boxes)
    gallery_size: int  # the target and its distractors


TASKS = {
    "focus_attribute": Task("attribute", 10),
    "change_attribute": Task("attribute", 15),
    "focus_object": Task("object", 15),
    "change_object": Task("object", 15),
}
DILATION = 0.7  # GeneCIS's: the box grows by 0.7 of its width and height


class ImageRef(NamedTuple):
    """One image of a record: its file name and, for attribute tasks, the object's box."""

    file: str
    box: tuple[float, float, float, float] | None  # (x, y, w, h)


class Record(NamedTuple):
    """One query: the reference, the condition, and the target first among the gallery."""

    number: int  # position in the annotation file
    condition: str
    reference: ImageRef
    gallery: tuple[ImageRef, ...]  # target first


def dilated_box(
    box: tuple[float, float, float, float], width: int, height: int, dilation: float = DILATION
) -> tuple[int, int, int, int]:
    """GeneCIS's crop of an object box ``(x, y, w, h)`` in a ``width x height`` image.

    ``left = max(0, x - d w)``, ``top = max(0, y - d h)``, ``right = min(width, left +
    (1 + d) w)``, ``bottom = min(height, top + (1 + d) h)``, each rounded as Pillow's crop
    rounds (Python's ``round``, halves to even).

    Returns:
        ``(left, top, right, bottom)`` pixel edges.
    """
    x, y, w, h = box
    left, top = max(0.0, x - dilation * w), max(0.0, y - dilation * h)
    right = min(float(width), left + (1 + dilation) * w)
    bottom = min(float(height), top + (1 + dilation) * h)
    return round(left), round(top), round(right), round(bottom)


def pad_square(image: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` -> ``(3, S, S)``, ``S = max(H, W)``, centred on black (GeneCIS's
    ``expand2square``: the offset is the floor of half the difference)."""
    _, h, w = image.shape
    side = max(h, w)
    out = image.new_zeros(3, side, side)
    top, left = (side - h) // 2, (side - w) // 2
    out[:, top : top + h, left : left + w] = image
    return out


def _image_ref(entry: object, kind: str, where: str) -> ImageRef:
    """An image entry of a record, checked; raises :class:`DataError` naming ``where``."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    if kind == "object":
        key = "val_image_id"
        if not isinstance(entry.get(key), int) or isinstance(entry[key], bool):
            other = " (an attribute task's file?)" if "image_id" in entry else ""
            raise DataError(f"{where}: expected an integer '{key}'{other}")
        return ImageRef(f"{entry[key]:012d}.jpg", None)
    if "image_id" not in entry or "instance_bbox" not in entry:
        other = " (an object task's file?)" if "val_image_id" in entry else ""
        raise DataError(f"{where}: expected 'image_id' and 'instance_bbox'{other}")
    image_id, box = entry["image_id"], entry["instance_bbox"]
    if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or "/" in str(image_id):
        raise DataError(f"{where}: 'image_id' must be a number, got {image_id!r}")
    if not (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
    ):
        raise DataError(f"{where}: 'instance_bbox' must be four numbers [x, y, w, h], got {box!r}")
    return ImageRef(f"{image_id}.jpg", tuple(float(v) for v in box))


def read_annotations(path: str | Path, task: str) -> list[Record]:
    """The records of one task's annotation file.

    Raises:
        DataError: An unknown task, a missing or malformed file, or a malformed record.
    """
    if task not in TASKS:
        raise DataError(f"genecis: unknown task '{task}'; expected one of {', '.join(TASKS)}")
    kind = TASKS[task].kind
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"genecis: annotation file not found: '{path}'") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"genecis: '{path}' is not JSON: {error}") from None
    if not isinstance(data, list):
        raise DataError(f"genecis: '{path}' must hold a JSON list of records")
    records = []
    for number, row in enumerate(data):
        where = f"{path} record {number}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        missing = [k for k in ("condition", "reference", "target", "gallery") if k not in row]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}")
        if not isinstance(row["condition"], str) or not row["condition"].strip():
            raise DataError(f"{where}: 'condition' must be a non-empty string")
        if not isinstance(row["gallery"], list):
            raise DataError(f"{where}: 'gallery' must be a list of images")
        reference = _image_ref(row["reference"], kind, f"{where} 'reference'")
        target = _image_ref(row["target"], kind, f"{where} 'target'")
        gallery = [
            _image_ref(g, kind, f"{where} 'gallery'[{i}]") for i, g in enumerate(row["gallery"])
        ]
        records.append(Record(number, row["condition"], reference, (target, *gallery)))
    return records


class GeneCISDataset(Dataset):
    """One task's records with their images.

    Each item is a dict: ``"image"`` ``(3, S, S)`` uint8 (the reference), ``"text"`` (the
    condition), ``"gallery"`` ``(G, 3, S, S)`` uint8 with the target first and black padding
    after a shorter record's images, ``"gallery_mask"`` ``(G,)`` which of them are images,
    ``"target"`` (0), ``"task"`` (the task's position in the data module's list) and
    ``"index"`` (``offset`` + the record's number in the file); or a :class:`Skipped` naming
    the first image that could not be used.

    Args:
        records: The task's records.
        images: The folder of image files.
        image_size: Output height and width.
        gallery_size: ``G``, at least every record's gallery.
        task: The task's position among the tasks scored together.
        offset: Added to the record's number: ids unique across the tasks scored together.
    """

    def __init__(
        self,
        records: list[Record],
        images: str | Path,
        image_size: int,
        gallery_size: int,
        task: int = 0,
        offset: int = 0,
    ) -> None:
        self.records, self.images = records, Path(images)
        self.image_size, self.gallery_size = image_size, gallery_size
        self.task, self.offset = task, offset

    def __len__(self) -> int:
        return len(self.records)

    def load(self, ref: ImageRef) -> torch.Tensor | Skipped:
        """One image, cropped (attribute tasks) and resized; or why it cannot be."""
        path = self.images / ref.file
        image = read_image(path, exif=False)
        if isinstance(image, Skipped):
            return image
        if ref.box is None:
            return resize_center_crop(image, self.image_size)
        left, top, right, bottom = dilated_box(ref.box, image.shape[2], image.shape[1])
        if right <= left or bottom <= top:
            return Skipped(f"{path} box {list(ref.box)}", "box outside the image")
        crop = pad_square(image[:, top:bottom, left:right])  # (3, side, side)
        return resize_center_crop(crop, self.image_size)

    def __getitem__(self, index: int) -> dict | Skipped:
        record = self.records[index]
        images = []
        for ref in (record.reference, *record.gallery):
            image = self.load(ref)
            if isinstance(image, Skipped):
                return image
            images.append(image)
        size = self.image_size
        gallery = torch.zeros(self.gallery_size, 3, size, size, dtype=torch.uint8)
        gallery[: len(record.gallery)] = torch.stack(images[1:])
        return {
            "image": images[0],
            "text": record.condition,
            "gallery": gallery,  # (G, 3, S, S), the target first
            "gallery_mask": torch.arange(self.gallery_size) < len(record.gallery),  # (G,)
            "target": 0,
            "task": self.task,
            "index": self.offset + record.number,
        }


class GeneCISDataModule(lightning.LightningDataModule):
    """GeneCIS tasks for ``contrastive test`` (zero-shot: there is no train split).

    One task, or several scored in one run (the scorer reports each, and the average R@1):
    ``task``, ``annotations`` and ``images`` are then lists, ``images`` one folder for all or
    one per task.

    Args:
        task: ``focus_attribute``, ``change_attribute``, ``focus_object`` or ``change_object``.
        annotations: The task's JSON file (``genecis/<task>.json`` of the GeneCIS repository).
        images: The folder of COCO val2017 (object tasks) or Visual Genome (attribute tasks)
            images.
        image_size: Height and width the images are resized to.
        gallery_size: Images ranked per record, the target included; ``None``: each task's
            (see the module docstring). Records of another size are reported and kept.
        batch_size: Records per batch.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        task: str | list[str],
        annotations: str | list[str],
        images: str | list[str],
        image_size: int = 224,
        gallery_size: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        tasks = [task] if isinstance(task, str) else list(task)
        files = [annotations] if isinstance(annotations, str) else list(annotations)
        folders = [images] if isinstance(images, str) else list(images)
        unknown = [t for t in tasks if t not in TASKS]
        if not tasks or unknown:
            name = unknown[0] if unknown else ""
            raise ValueError(f"unknown GeneCIS task '{name}'; expected one of {', '.join(TASKS)}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"GeneCIS tasks named twice: {tasks}")
        if len(files) != len(tasks) or len(folders) not in (1, len(tasks)):
            raise ValueError(
                f"{len(tasks)} GeneCIS tasks need as many annotations files (got {len(files)}) "
                f"and one images folder or one per task (got {len(folders)})"
            )
        for name, value in (("image_size", image_size), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if gallery_size is not None and gallery_size < 2:
            raise ValueError(
                f"gallery_size must be >= 2 (a target, a distractor), got {gallery_size}"
            )
        self.save_hyperparameters()
        self.tasks, self.annotations = tasks, files
        self.images = folders * len(tasks) if len(folders) == 1 else folders
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.gallery_sizes = [gallery_size or TASKS[t].gallery_size for t in tasks]
        self.tokenizer: Tokenizer | None = None  # set by methods that read text
        self.records: dict[str, int] = {}  # each task's records, after setup
        self.mismatched: dict[str, list[int]] = {}  # each task's records of another gallery size
        self._dataset: ConcatDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        loaded = []
        for task, file, images, size in zip(
            self.tasks, self.annotations, self.images, self.gallery_sizes, strict=True
        ):
            if not Path(images).expanduser().is_dir():
                raise DataError(f"genecis {task}: images folder not found: '{images}'")
            records = read_annotations(Path(file).expanduser(), task)
            if not records:
                raise DataError(f"genecis: '{file}' holds no records")
            mismatched = [r.number for r in records if len(r.gallery) != size]
            if mismatched:
                self.mismatched[task] = mismatched
                first = ", ".join(str(n) for n in mismatched[:5])
                warnings.warn(
                    f"genecis {task}: {len(mismatched)} of {len(records)} records "
                    f"rank other than {size} images (records {first}...); each is scored on "
                    "its own gallery",
                    stacklevel=2,
                )
            self.records[task] = len(records)
            loaded.append((records, Path(images).expanduser()))
        # One gallery width for all, so that records of every task share a batch.
        largest = max(*self.gallery_sizes, *(len(r.gallery) for rs, _ in loaded for r in rs))
        datasets, offset = [], 0
        for number, (records, images) in enumerate(loaded):
            datasets.append(
                GeneCISDataset(records, images, self.image_size, largest, number, offset)
            )
            offset += len(records)
        self._dataset = ConcatDataset(datasets)

    def evaluation_data(self) -> EvaluationData:
        """One test loader of records, no labels and no bank: each record ranks its own
        gallery, a task's records counted (the scorer reports those skipped)."""
        return EvaluationData(gallery_tasks=dict(self.records), has_bank=False)

    def test_dataloader(self) -> DataLoader:
        """The tasks' records, task by task in file order."""
        if self._dataset is None:
            raise RuntimeError("call setup() before asking GeneCISDataModule for a dataloader")
        return DataLoader(
            self._dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=Collate(self.tokenizer),
        )


__all__ = [
    "DILATION",
    "TASKS",
    "GeneCISDataModule",
    "GeneCISDataset",
    "Record",
    "dilated_box",
    "pad_square",
    "read_annotations",
]
