"""The text files that describe an image folder: a ``subset`` list of class folders and a
held-out ``val_labels`` file (ImageNet's ``LOC_val_solution.csv``, Caffe's ``val.txt``).

Both are read as UTF-8, a byte-order mark allowed (:func:`contrastive.files.read_text`); a
file in another encoding is one :class:`ImageFolderError` line with the offset of its first
bad byte.
"""

from __future__ import annotations

from pathlib import Path

from contrastive.datamodules.common import DataError
from contrastive.files import TableError, read_text


class ImageFolderError(DataError):
    """A folder, subset file or label file that cannot be used; the message is one line."""


def _text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 list or label file (a byte-order mark skipped)."""
    try:
        return read_text(path).splitlines()
    except TableError as err:
        raise ImageFolderError(str(err)) from None


def read_name_list(path: Path) -> list[str]:
    """The names in a list file: one per line, blank lines and ``#`` comments skipped."""
    names = []
    for line in _text_lines(path):
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def classes_to_keep(subset: Path | None, all_classes: list[str], root: Path) -> list[str]:
    """The class folders of ``root`` (``all_classes``) that ``subset`` lists, sorted; all of
    them without a subset file."""
    if subset is None:
        return all_classes
    if not subset.is_file():
        raise ImageFolderError(f"subset file {subset} does not exist")
    wanted = read_name_list(subset)
    missing = sorted(set(wanted) - set(all_classes))
    if missing:
        raise ImageFolderError(
            f"subset {subset} names {len(missing)} classes with no folder in "
            f"{root}: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}"
        )
    if not wanted:
        raise ImageFolderError(f"subset file {subset} lists no classes")
    return sorted(set(wanted))


def read_val_labels(
    labels_file: Path,
    val_root: Path,
    images: list[Path],
    root: Path,
    all_classes: list[str],
    keep: dict[str, int],
) -> tuple[list[Path], list[int], int]:
    """The held-out images a label file lists, with their labels.

    Args:
        labels_file: ``filename,class`` lines (comma, tab or space separated; further fields
            ignored; a first line naming no class is a header). The filename may omit its
            extension; the class is a class folder name or an index into ``all_classes``.
        val_root: The flat folder the files are in.
        images: The images found in ``val_root``.
        root: The training folder (for messages).
        all_classes: Its class folders, sorted.
        keep: The kept classes and their labels; files of other classes are dropped.

    Returns:
        The listed files of kept classes (a listed file that is missing is skipped when read),
        their labels, and how many images of ``val_root`` the file does not list.
    """
    by_name = {p.relative_to(val_root).as_posix(): p for p in images}
    by_stem = {str(Path(name).with_suffix("")): p for name, p in by_name.items()}
    known = set(all_classes)
    paths, labels, listed = [], [], set()
    lines = _text_lines(labels_file)
    for number, line in enumerate(lines, start=1):
        fields = line.replace(",", " ").replace("\t", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2:
            raise ImageFolderError(
                f"{labels_file}:{number}: expected 'filename,class', got {line!r}"
            )
        filename, label = fields[0], fields[1]
        if label.isdigit() and label not in known:
            if int(label) >= len(all_classes):
                raise ImageFolderError(
                    f"{labels_file}:{number}: class index {label} out of range for "
                    f"{len(all_classes)} class folders in {root}"
                )
            label = all_classes[int(label)]
        if label not in known:
            if number == 1:
                continue  # a header line
            raise ImageFolderError(
                f"{labels_file}:{number}: class {label!r} is not a class folder of {root}"
            )
        path = by_name.get(filename) or by_stem.get(filename) or val_root / filename
        listed.add(path)
        if label in keep:
            paths.append(path)  # a listed file that is missing is skipped when read
            labels.append(keep[label])
    if not listed:
        raise ImageFolderError(f"no 'filename,class' lines in {labels_file}")
    unlisted = sum(1 for p in images if p not in listed)
    return paths, labels, unlisted
