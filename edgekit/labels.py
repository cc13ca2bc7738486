"""Labelled evaluation data: input samples and their labels, read so that they stay aligned.

:func:`load_labelled` reads, besides everything :func:`edgekit.calibration.load_samples` takes
(unlabelled):

* an image folder whose sub-folders are classes (``data/cat/*.png``, ``data/dog/*.png``): an
  image's label is the index of its class folder among the sorted sub-folder names — the
  convention of torchvision's ``ImageFolder`` and Keras' ``image_dataset_from_directory``, so
  the ids match a model trained with either. A folder is labelled when it has two or more
  sub-folders and no image at its top level; a flat folder is unlabelled.
* a ``.npz`` file (or a ``{name: array}`` mapping) holding a ``labels`` (or ``label``) array
  next to the input arrays, one label per sample along its first axis. A key that names a model
  input is always an input, never labels; the other keys are ignored by the input reader.
* an iterable of ``(feeds, label)`` pairs (``feeds`` a dict of input name to array, or one
  array for a one-input model).

Labels are one per sample: class ids ``(N,)`` for classification, ``(N, steps)`` for
sequences, masks ``(N, H, W)`` for maps, targets of an output's shape for regression (see
:mod:`edgekit.metrics`). ``labels=`` gives them for data that carries none. With ``limit``,
the samples are the ones ``load_samples`` picks with the same ``seed``, and the labels are
those samples' labels.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# _choose is load_samples' own choice of samples: using it keeps labels on their samples.
from edgekit.calibration import DataReader, ImageOptions, _choose, find_images, load_samples
from edgekit.errors import DataError, UsageError

if TYPE_CHECKING:
    from edgekit.model import Feeds, TensorSpec

__all__ = ["LABEL_KEYS", "class_folders", "load_labelled"]

#: keys of a .npz (or mapping) that hold labels, in the order they are looked for
LABEL_KEYS: tuple[str, ...] = ("labels", "label")


def load_labelled(
    data: Any,
    inputs: Sequence[TensorSpec],
    image_options: ImageOptions | None = None,
    limit: int | None = None,
    seed: int = 0,
    *,
    labels: Any = None,
) -> tuple[list[Feeds], np.ndarray | None]:
    """Samples as feed dicts matching ``inputs``, and their labels (None when the data has
    none and ``labels`` is not given). ``labels`` holds one label per sample of the whole
    data, before ``limit`` picks some."""
    specs = list(inputs)
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1
    ):
        raise UsageError(f"the sample limit must be a whole number >= 1, got {limit!r}")
    given = None if labels is None else _as_labels(labels, "labels")
    if isinstance(data, str | os.PathLike) and str(data) != "random":
        path = Path(data)
        if path.is_dir():
            return _folder(path, specs, image_options, limit, seed, given)
        if path.suffix.lower() == ".npz" and path.is_file():
            given = _one_source(given, _npz_labels(path, specs), path.name)
    elif isinstance(data, Mapping):
        key = _label_key(data.keys(), specs)
        if key is not None:
            given = _one_source(given, _as_labels(data[key], f"'{key}'"), "the data mapping")
    elif isinstance(data, Iterable) and not isinstance(
        data, np.ndarray | bytes | bytearray | str | DataReader
    ):
        items = list(data)
        if items and _is_pair(items[0]):
            data, found = _split_pairs(items, specs)
            given = _one_source(given, found, "the (feeds, label) pairs")
        else:
            data = items
    if given is None:
        return load_samples(data, specs, image_options=image_options, limit=limit, seed=seed), None
    samples = load_samples(data, specs, image_options=image_options, seed=seed)
    _check_count(given, len(samples))
    chosen = _choose(len(samples), limit, seed)
    return [samples[i] for i in chosen], given[chosen]


def class_folders(folder: str | os.PathLike[str]) -> list[str] | None:
    """The sorted class names of a labelled image folder, or None for an unlabelled one."""
    root = Path(folder)
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(subdirs) < 2:
        return None
    images = find_images(root)
    top = [p for p in images if p.parent == root]
    if not top:
        return subdirs
    if len(top) == len(images):
        return None
    raise DataError(
        f"{root} holds images both at its top level ({top[0].name}, ...) and in sub-folders; "
        "for labelled data put every image in a class sub-folder (DATA/CLASS/image.png), for "
        "unlabelled data pass a folder without class sub-folders"
    )


def _folder(
    path: Path,
    specs: list[TensorSpec],
    options: ImageOptions | None,
    limit: int | None,
    seed: int,
    given: np.ndarray | None,
) -> tuple[list[Feeds], np.ndarray | None]:
    classes = class_folders(path)
    if classes is not None and given is not None:
        raise _two_sources(str(path))
    feeds = load_samples(path, specs, image_options=options, limit=limit, seed=seed)
    images = find_images(path)
    if classes is not None:
        index = {name: i for i, name in enumerate(classes)}
        given = np.array([index[p.relative_to(path).parts[0]] for p in images], np.int64)
    if given is None:
        return feeds, None
    _check_count(given, len(images))
    return feeds, given[_choose(len(images), limit, seed)]


def _npz_labels(path: Path, specs: list[TensorSpec]) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            key = _label_key(npz.files, specs)
            return None if key is None else _as_labels(npz[key], f"{path.name} '{key}'")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        # Unreadable: load_samples says so, with its one message for a broken .npz.
        return None


def _label_key(keys: Iterable[Any], specs: list[TensorSpec]) -> str | None:
    present = set(keys)
    names = {spec.name for spec in specs}
    return next((k for k in LABEL_KEYS if k in present and k not in names), None)


def _is_pair(item: Any) -> bool:
    return (
        isinstance(item, tuple | list)
        and len(item) == 2
        and isinstance(item[0], Mapping | np.ndarray)
    )


def _split_pairs(items: list[Any], specs: list[TensorSpec]) -> tuple[list[Any], np.ndarray]:
    feeds, found = [], []
    for i, item in enumerate(items):
        if not _is_pair(item):
            raise DataError(
                f"item {i} of the data is a {type(item).__name__}, but item 0 is a (feeds, "
                "label) pair; give every item as a (feeds, label) pair"
            )
        sample, label = item
        if isinstance(sample, np.ndarray):
            if len(specs) != 1:
                names = ", ".join(spec.name for spec in specs)
                raise DataError(
                    f"item {i} gives one array but the model has inputs {names}; give a dict "
                    "of input name to array"
                )
            sample = {specs[0].name: sample}
        feeds.append(sample)
        found.append(np.asarray(label))
    shapes = {a.shape for a in found}
    if len(shapes) > 1:
        raise DataError(
            f"the labels of the (feeds, label) pairs have different shapes "
            f"({', '.join(str(s) for s in sorted(shapes))}); give labels of one shape"
        )
    return feeds, _as_labels(np.stack(found), "the labels of the pairs")


def _as_labels(labels: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} cannot be read as an array ({exc}); give a numeric array") from exc
    if array.dtype.kind not in "biuf" or array.ndim == 0:
        raise DataError(
            f"{what} is a {array.dtype} array of shape {array.shape}; give numbers, one label "
            "per sample along the first axis"
        )
    return array


def _one_source(
    given: np.ndarray | None, found: np.ndarray | None, where: str
) -> np.ndarray | None:
    if given is not None and found is not None:
        raise _two_sources(where)
    return given if found is None else found


def _two_sources(where: str) -> UsageError:
    return UsageError(f"{where} carries its own labels; pass labels= only for data that has none")


def _check_count(labels: np.ndarray, samples: int) -> None:
    if len(labels) != samples:
        raise DataError(
            f"{len(labels)} labels for {samples} samples; give exactly one label per sample"
        )
