"""The one image and label reader of dyn_seg.

Training and test loaders (:class:`~dyn_seg.data.robust_mapper.DynSegDatasetMapper`), the
dataset checker (``datasets/check_dataset.py``), the demo and the routing visualiser all read
files with these functions, so that what the checker accepts is exactly what training
accepts. Rules (also tabulated in ``docs/BAD_INPUT.md``):

* every file is decoded completely (a truncated file fails here) and turned upright by its
  EXIF orientation tag, images and label maps alike;
* images: 8-bit RGB as is; grayscale, palette, RGBA and CMYK converted to 3 channels;
  16-bit-per-channel RGB as 8 bits by Pillow (it keeps the high byte, a correct scaling of
  full-range data); single-channel images with more than 8 bits (``I;16``, ``I``) and float
  images (``F``) are refused: their value range is not known, so any scaling to 8 bits
  would be a guess (converting them the way detectron2 does clips them to white);
* label maps: one channel of class ids, 8 or 16 bit; palette and multi-channel label files
  are refused (their colours' luminance is not a class id);
* panoptic label PNGs (COCO panoptic format, segment id ``R + 256 G + 256^2 B``): 8-bit
  RGB only (a palette, grayscale or 16-bit file does not hold these ids).

:func:`check_image_array` applies the same rule to arrays handed to a predictor.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps

__all__ = [
    "DatasetFileError",
    "LABEL_MODES",
    "WIDE_GRAY_MODES",
    "check_image_array",
    "image_to_array",
    "label_to_array",
    "label_values_outside",
    "open_image_file",
    "panoptic_to_array",
    "read_image_file",
    "read_label_file",
    "read_panoptic_file",
]

#: Pillow modes of single-channel images with more than 8 bits or float pixels.
WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
#: Pillow modes a label map may have: one channel of integers.
LABEL_MODES = ("L", "1", "I;16", "I;16B", "I;16L", "I;16N", "I")
_MAX_LISTED_VALUES = 10
_CHECK_TOOL = "datasets/check_dataset.py lists every problem of a dataset at once"
_TO_8_BIT = ("convert it to 8-bit RGB, e.g. (np.asarray(img) >> 8).astype(np.uint8) for "
             "full-range 16-bit data or (np.clip(x, 0, 1) * 255).round().astype(np.uint8) "
             "for float data in [0, 1]")


class DatasetFileError(ValueError):
    """An image or label file that cannot be used; the message names the file.

    ``file_name`` holds the file's path. The constructor accepts the message alone, so
    that a DataLoader worker can re-raise the error in the main process.
    """

    def __init__(self, message: str, file_name: Optional[str] = None):
        super().__init__(message)
        self.file_name = file_name


def open_image_file(file_name: str, kind: str = "Image") -> Image.Image:
    """Open and decode ``file_name`` completely, upright by its EXIF orientation.

    ``kind`` (``"Image"`` or ``"Label"``) names the file in messages. Raises
    :class:`DatasetFileError` when the file is missing or cannot be decoded.
    """
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


def image_to_array(image: Image.Image, format: str = "BGR", file_name: str = "") -> np.ndarray:
    """An opened image as an (H, W, 3) uint8 array in ``format`` (``"BGR"`` or ``"RGB"``);
    refuses wide or float single-channel images (:class:`DatasetFileError`)."""
    if image.mode in WIDE_GRAY_MODES:
        kind = "float" if image.mode == "F" else "16-bit or wider single-channel"
        raise DatasetFileError(
            f"image file {file_name} has {image.mode} pixels ({kind}); dyn_seg reads 8-bit "
            f"images only and will not guess how to scale it: {_TO_8_BIT}. {_CHECK_TOOL}.",
            file_name,
        )
    return utils.convert_PIL_to_numpy(image, format)


def read_image_file(file_name: str, format: str = "BGR") -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 array in ``format`` (``"BGR"`` or ``"RGB"``).

    Grayscale, palette, RGBA and CMYK images are converted to 3 channels. Raises
    :class:`DatasetFileError` naming the file when it is missing, cannot be decoded, or is a
    16-bit (or wider, or float) single-channel image.
    """
    return image_to_array(open_image_file(file_name, "Image"), format, file_name)


def _format_values(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:_MAX_LISTED_VALUES])
    if len(values) > _MAX_LISTED_VALUES:
        shown += f", ... ({len(values)} values)"
    return shown


def label_to_array(label: Image.Image, file_name: str = "") -> np.ndarray:
    """An opened label map as an (H, W) integer array; refuses palette and multi-channel
    files (:class:`DatasetFileError`)."""
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
    return values


def label_values_outside(values: np.ndarray, num_classes: int, ignore_label: int) -> np.ndarray:
    """The sorted distinct values of ``values`` that are neither a class id
    (``0 .. num_classes - 1``) nor ``ignore_label``."""
    bad_mask = ((values >= num_classes) & (values != ignore_label)) | (values < 0)
    return np.unique(values[bad_mask])


def read_label_file(file_name: str, num_classes: int, ignore_label: int) -> np.ndarray:
    """Read a label map as an (H, W) integer array and check its values.

    Every value must be a class id ``0 .. num_classes - 1`` or ``ignore_label``. The array
    is uint8 when every allowed value fits into 8 bits, else float32 (exact for these
    integers; detectron2 resizes label maps with PIL for uint8 and with torch's nearest
    interpolation, which has no integer kernels, otherwise). Raises
    :class:`DatasetFileError` naming the file (and the bad values) otherwise.
    """
    values = label_to_array(open_image_file(file_name, "Label"), file_name)
    bad = label_values_outside(values, num_classes, ignore_label)
    if len(bad):
        raise DatasetFileError(
            f"label file {file_name} has values {_format_values(bad)}, which are neither a "
            f"class id (0..{num_classes - 1}, MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes}) "
            f"nor the ignore value {ignore_label} (MODEL.SEM_SEG_HEAD.IGNORE_VALUE); fix the "
            f"labels or these settings. {_CHECK_TOOL}.",
            file_name,
        )
    dtype = np.uint8 if max(num_classes - 1, ignore_label) <= 255 else np.float32
    return values.astype(dtype, copy=False)


def panoptic_to_array(label: Image.Image, file_name: str = "") -> np.ndarray:
    """An opened panoptic label PNG as an (H, W, 3) uint8 RGB array (segment id
    ``R + 256 G + 256^2 B``); refuses files that are not 8-bit RGB (:class:`DatasetFileError`)."""
    if label.mode != "RGB":
        raise DatasetFileError(
            f"panoptic label file {file_name} has mode {label.mode}; a panoptic label PNG holds "
            "each pixel's segment id as 8-bit RGB (R + 256 G + 256^2 B, the COCO panoptic "
            "format): recreate it with datasets/prepare_cityscapes.py (cityscapesscripts' "
            f"createPanopticImgs) or your converter. {_CHECK_TOOL}.",
            file_name,
        )
    return np.asarray(label)


def read_panoptic_file(file_name: str) -> np.ndarray:
    """Read a panoptic label PNG as an (H, W, 3) uint8 RGB array; raises
    :class:`DatasetFileError` naming the file when it is missing, cannot be decoded or is
    not 8-bit RGB."""
    return panoptic_to_array(open_image_file(file_name, "Panoptic label"), file_name)


def check_image_array(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check an array handed to a predictor: an (H, W, 3) uint8 image (BGR or RGB).

    The same rule as for files: 8-bit data only. A uint16, float or other non-uint8 array
    is refused with the conversion to use, instead of being fed to the model as if its
    values were 0..255 (a 16-bit image would saturate every pixel). ``name`` (e.g. the
    file) is quoted in the message. Returns ``image``.
    """
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"{name}: expected an (H, W, 3) image array, got shape {array.shape}; convert "
            "grayscale or RGBA images to 3 channels first (e.g. np.stack([gray] * 3, -1))."
        )
    if array.dtype != np.uint8:
        lo, hi = (array.min(), array.max()) if array.size else (0, 0)
        raise ValueError(
            f"{name}: expected an 8-bit (uint8) image array, got {array.dtype} with values "
            f"{lo}..{hi}; dyn_seg reads 8-bit images only and will not guess how to scale "
            f"it: {_TO_8_BIT.replace('it to 8-bit RGB', 'the array to uint8')}."
        )
    return array
