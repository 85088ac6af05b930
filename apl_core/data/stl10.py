"""STL-10, the paper's data: downloaded once with torchvision's download utilities, checked
against its md5 once, then memory-mapped (100,000 unlabeled images are 2.8 GB; nothing is
decoded). A mirror or a local copy: APL_STL10_URL, or data_dir pointing at stl10_binary/."""
from __future__ import annotations

import hashlib
import json
import os
import urllib.error
from pathlib import Path

import numpy as np
import torch

from .imageset import ImageSet

STL10_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
STL10_ARCHIVE = "stl10_binary.tar.gz"
STL10_ARCHIVE_MD5 = "91f7769df0f17e558f3565bffb0c7dfb"
STL10_FOLDER = "stl10_binary"
STL10_SIZE = 96
# md5 of the extracted files, as torchvision.datasets.STL10 lists them
STL10_FILE_MD5 = {
    "train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
    "train_y.bin": "5a34089d4802c674881badbb80307741",
    "unlabeled_X.bin": "5242ba1fed5e4be9e1e742405eb56ca4",
    "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
    "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
}
STL10_FILES = {  # split -> (images file, labels file)
    "unlabeled": ("unlabeled_X.bin", None),
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
}
STL10_CLASS_FILE = "class_names.txt"
VERIFIED_MARKER = ".apl_verified.json"


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not there and could not be downloaded."""


class CorruptDatasetError(RuntimeError):
    """A dataset file is truncated or does not match its checksum."""


def stl10_url() -> str:
    """The archive's URL: STL10_URL unless the environment variable APL_STL10_URL is set
    (a mirror, or a local server in the tests)."""
    return os.environ.get("APL_STL10_URL", STL10_URL)


def load_stl10(split: str, data_dir: str = "data", download: bool = True) -> ImageSet:
    """STL-10 split as a memory-mapped uint8 view (N, 3, 96, 96) plus labels 0..9.

    The files are looked for in data_dir/stl10_binary/ (or data_dir itself when it already
    is that folder), downloaded and extracted there when missing, and checked against their
    md5 once (remembered in a small marker file, so 2.6 GB are not re-hashed every load).
    """
    folder = _stl10_folder(Path(data_dir).expanduser(), split, download)
    images_file, labels_file = STL10_FILES[split]
    _check_stl10_image_file(folder / images_file)
    _verify_stl10_files(folder, [images_file] + ([labels_file] if labels_file else []))
    images = _read_stl10_images(folder / images_file)
    labels = None
    if labels_file is not None:
        labels = _read_stl10_labels(folder / labels_file)
        if len(labels) != len(images):
            raise CorruptDatasetError(
                f"{folder / labels_file} holds {len(labels)} labels for {len(images)} images in "
                f"{folder / images_file}: the files do not belong together; delete {folder} "
                f"and download STL-10 again"
            )
    classes = (folder / STL10_CLASS_FILE).read_text().split() if labels is not None else []
    return ImageSet(images, labels, classes)


def find_stl10(data_dir: str | Path, splits=tuple(STL10_FILES)) -> Path | None:
    """The folder holding STL-10's files of `splits` (data_dir/stl10_binary/ or data_dir
    itself), or None when they are not on disk."""
    data_dir = Path(data_dir).expanduser()
    needed = [name for split in splits for name in STL10_FILES[split] if name]
    for folder in (data_dir / STL10_FOLDER, data_dir):
        if all((folder / name).is_file() for name in needed + [STL10_CLASS_FILE]):
            return folder
    return None


def _stl10_folder(data_dir: Path, split: str, download: bool) -> Path:
    found = find_stl10(data_dir, (split,))
    if found is not None:
        return found
    needed = [name for name in STL10_FILES[split] if name] + [STL10_CLASS_FILE]
    folder = data_dir / STL10_FOLDER
    url = stl10_url()
    how_to_fix = (
        f"Download {url} (2.6 GB, md5 {STL10_ARCHIVE_MD5}) and extract it into {data_dir}, "
        f"or point the project at an existing copy with data_dir / --data-dir (the folder "
        f"that holds {STL10_FOLDER}/), or use dataset='synthetic', which needs no download."
    )
    if not download:
        raise DatasetNotFoundError(f"STL-10 files {needed} not found in {folder}. {how_to_fix}")
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(
            url, str(data_dir), filename=STL10_ARCHIVE, md5=STL10_ARCHIVE_MD5
        )
    except RuntimeError as error:  # torchvision's "File not found or corrupted.": md5 mismatch
        raise CorruptDatasetError(
            f"the downloaded archive {data_dir / STL10_ARCHIVE} does not match md5 "
            f"{STL10_ARCHIVE_MD5} (an interrupted or altered download). Delete it and try again. "
            f"{how_to_fix}"
        ) from error
    except (urllib.error.URLError, OSError) as error:
        raise DatasetNotFoundError(
            f"STL-10 files {needed} not found in {folder}, and downloading {url} failed "
            f"({error}). {how_to_fix}"
        ) from error
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise CorruptDatasetError(
            f"the archive from {url} did not contain {missing} under {STL10_FOLDER}/; "
            f"delete {data_dir / STL10_ARCHIVE} and download it again"
        )
    return folder


def _verify_stl10_files(folder: Path, names: list[str]) -> None:
    """Check the md5 of each file once; a marker records (size, mtime) of files that passed."""
    marker = folder / VERIFIED_MARKER
    try:
        verified = json.loads(marker.read_text())
    except (OSError, ValueError):
        verified = {}
    changed = False
    for name in names:
        path = folder / name
        stat = path.stat()
        expected = STL10_FILE_MD5[name]
        record = {"md5": expected, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if verified.get(name) == record:
            continue
        actual = _md5(path)
        if actual != expected:
            raise CorruptDatasetError(
                f"{path} is corrupted or truncated ({stat.st_size} bytes, md5 {actual}, expected "
                f"{expected}). Delete {folder} (and {STL10_ARCHIVE} next to it) and download "
                f"STL-10 again."
            )
        verified[name] = record
        changed = True
    if changed:
        try:
            marker.write_text(json.dumps(verified, indent=1))
        except OSError:
            pass  # a read-only copy: verify again next time


def _md5(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _check_stl10_image_file(path: Path) -> None:
    """A cheap check before the md5: the size must be a whole number of images."""
    image_bytes = 3 * STL10_SIZE * STL10_SIZE
    size = path.stat().st_size
    if size == 0 or size % image_bytes:
        raise CorruptDatasetError(
            f"{path} has {size} bytes, not a whole number of {image_bytes}-byte STL-10 images: "
            f"the file is truncated. Delete it (and {STL10_ARCHIVE}) and download STL-10 again."
        )


def _read_stl10_images(path: Path) -> torch.Tensor:
    """Memory-map an STL-10 image file as uint8 (N, 3, 96, 96).

    The format stores each image as 3 planes of 96 x 96 in column-major order, so the file
    reshapes to (N, 3, 96, 96) with the last two axes swapped: a transposed view, no copy.
    """
    image_bytes = 3 * STL10_SIZE * STL10_SIZE
    size = path.stat().st_size
    # mode "c" (copy-on-write) gives a writable array, so torch does not warn, and never
    # writes back to the file
    shape = (size // image_bytes, 3, STL10_SIZE, STL10_SIZE)
    array = np.memmap(path, dtype=np.uint8, mode="c", shape=shape)
    return torch.from_numpy(array).transpose(2, 3)


def _read_stl10_labels(path: Path) -> torch.Tensor:
    labels = torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64))
    if len(labels) == 0 or labels.min() < 1 or labels.max() > 10:
        raise CorruptDatasetError(
            f"{path} holds labels outside 1..10: the file is corrupted. Delete it and download "
            f"STL-10 again."
        )
    return labels - 1  # 1..10 on disk
