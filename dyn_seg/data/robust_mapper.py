"""A dataset mapper for semantic segmentation that fails early and names the bad file.

detectron2's ``DatasetMapper`` reads images and label maps with PIL conversions that hide
bad data: a 16-bit image or label is clipped to 255 without a word, a label value that is
neither a class nor the ignore value only surfaces as an index error inside the loss (or a
device-side assert on a GPU), and an image/label size mismatch breaks somewhere inside
the augmentations. :class:`DynSegDatasetMapper` reads the files itself and raises
:class:`DatasetFileError`, whose message names the file and the offending value, at the
moment the sample is loaded. ``datasets/check_dataset.py`` finds every such problem of a
dataset at once, before training.

What is read, and how (also tabulated in ``docs/BAD_INPUT.md``):

* images: 8-bit RGB as is; grayscale, palette, RGBA and CMYK converted to 3 channels
  (``INPUT.FORMAT``); 16-bit-per-channel RGB as 8 bits by Pillow (it keeps the high byte);
  16-bit (or 32-bit / float) single-channel images are rejected: their value range is not
  known, so any scaling to 8 bits would be a guess.
* label maps: one channel of class ids, 8 or 16 bit; values must be ``< num_classes`` or
  equal to the ignore value. Palette and multi-channel label files are rejected (detectron2
  would turn palette indices or colours into luminance).
"""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps

__all__ = [
    "DatasetFileError",
    "DynSegDatasetMapper",
    "read_image_file",
    "read_label_file",
]

#: Pillow modes of images with more than 8 bits in one channel.
WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
#: Pillow modes a label map may have: one channel of integers.
LABEL_MODES = ("L", "1", "I;16", "I;16B", "I;16L", "I;16N", "I")
_MAX_LISTED_VALUES = 10
_CHECK_TOOL = "datasets/check_dataset.py lists every problem of a dataset at once"


class DatasetFileError(ValueError):
    """An image or label file that cannot be used; the message names the file.

    ``file_name`` holds the file's path. The constructor accepts the message alone, so
    that a DataLoader worker can re-raise the error in the main process.
    """

    def __init__(self, message: str, file_name: Optional[str] = None):
        super().__init__(message)
        self.file_name = file_name


def _open_fully(file_name: str, kind: str) -> Image.Image:
    """Open and decode ``file_name`` completely (a truncated file fails here, not later)."""
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()
            return ImageOps.exif_transpose(image)
    except FileNotFoundError as e:
        raise DatasetFileError(f"{kind} file not found: {file_name}", file_name) from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # Pillow reports unknown formats, truncated data and corrupt chunks with these
        raise DatasetFileError(
            f"cannot decode {kind.lower()} file {file_name} (corrupt, truncated or not an "
            f"image): {type(e).__name__}: {e}. {_CHECK_TOOL}.",
            file_name,
        ) from e


def read_image_file(file_name: str, format: str = "BGR") -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 array in ``format`` (``"BGR"`` or ``"RGB"``).

    Grayscale, palette, RGBA and CMYK images are converted to 3 channels. Raises
    :class:`DatasetFileError` naming the file when it is missing, cannot be decoded, or is a
    16-bit (or wider) single-channel image.
    """
    image = _open_fully(file_name, "Image")
    if image.mode in WIDE_GRAY_MODES:
        raise DatasetFileError(
            f"image file {file_name} has {image.mode} pixels (16-bit or wider single channel); "
            "dyn_seg reads 8-bit images only and will not guess how to scale it: convert it to "
            "8-bit RGB, e.g. Image.fromarray((np.asarray(img) >> 8).astype(np.uint8)) for "
            f"full-range 16-bit data. {_CHECK_TOOL}.",
            file_name,
        )
    return utils.convert_PIL_to_numpy(image, format)


def _format_values(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:_MAX_LISTED_VALUES])
    if len(values) > _MAX_LISTED_VALUES:
        shown += f", ... ({len(values)} values)"
    return shown


def read_label_file(file_name: str, num_classes: int, ignore_label: int) -> np.ndarray:
    """Read a label map as an (H, W) integer array and check its values.

    Every value must be a class id ``0 .. num_classes - 1`` or ``ignore_label``. The array
    is uint8 when every allowed value fits into 8 bits, else float32 (exact for these
    integers; detectron2 resizes label maps with PIL for uint8 and with torch's nearest
    interpolation, which has no integer kernels, otherwise). Raises
    :class:`DatasetFileError` naming the file (and the bad values) otherwise.
    """
    label = _open_fully(file_name, "Label")
    if label.mode not in LABEL_MODES:
        if label.mode == "P":
            reason = ("is a palette image: detectron2 would read the colours' luminance, not "
                      "the indices; save the indices as a grayscale PNG "
                      "(datasets/prepare_voc.py does this for VOC)")
        else:
            reason = (f"has mode {label.mode} ({len(label.getbands())} channels); a label map "
                      "needs one channel of class ids (8 or 16 bit)")
        raise DatasetFileError(f"label file {file_name} {reason}. {_CHECK_TOOL}.", file_name)
    values = np.asarray(label)
    if values.dtype == bool:  # mode "1"
        values = values.astype(np.uint8)
    bad_mask = ((values >= num_classes) & (values != ignore_label)) | (values < 0)
    if bad_mask.any():
        bad = np.unique(values[bad_mask])
        raise DatasetFileError(
            f"label file {file_name} has values {_format_values(bad)}, which are neither a "
            f"class id (0..{num_classes - 1}, MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes}) "
            f"nor the ignore value {ignore_label} (MODEL.SEM_SEG_HEAD.IGNORE_VALUE); fix the "
            f"labels or these settings. {_CHECK_TOOL}.",
            file_name,
        )
    dtype = np.uint8 if max(num_classes - 1, ignore_label) <= 255 else np.float32
    return values.astype(dtype, copy=False)


class DynSegDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` for semantic segmentation with checked reading.

    Same inputs, outputs and augmentations as ``DatasetMapper``: ``{"image": (3, H, W)
    uint8 tensor, "sem_seg": (H, W) long tensor (training), "height", "width", ...}``.
    Images are read with :func:`read_image_file` and label maps with
    :func:`read_label_file`; a label map whose size differs from its image's is an error.
    Label maps are also read and checked at inference, so that an evaluator never meets a
    bad label.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, num_classes: int, ignore_label: int = 255,
                 **kwargs):
        """
        Args:
            is_train, kwargs: as ``DatasetMapper`` (``augmentations``, ``image_format``, ...).
            num_classes: valid label values are ``0 .. num_classes - 1``
                (``MODEL.SEM_SEG_HEAD.NUM_CLASSES``).
            ignore_label: the label value without loss (``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``).
        """
        super().__init__(is_train, **kwargs)
        if num_classes < 1:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes} is not allowed: it must be >= 1."
            )
        self.num_classes = num_classes
        self.ignore_label = ignore_label

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["num_classes"] = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        ret["ignore_label"] = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        return ret

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        image_file = dataset_dict["file_name"]
        image = read_image_file(image_file, self.image_format)
        utils.check_image_size(dataset_dict, image)  # its error names the image file

        sem_seg_gt = None
        label_file = dataset_dict.pop("sem_seg_file_name", None)
        if label_file is not None:
            sem_seg_gt = read_label_file(label_file, self.num_classes, self.ignore_label)
            if sem_seg_gt.shape != image.shape[:2]:
                (ih, iw), (lh, lw) = image.shape[:2], sem_seg_gt.shape
                raise DatasetFileError(
                    f"size mismatch: image {image_file} is {iw}x{ih} but its label file "
                    f"{label_file} is {lw}x{lh} (width x height); every label map must have "
                    f"its image's size. {_CHECK_TOOL}.",
                    label_file,
                )

        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
