"""Switches of the fast inference path (``MODEL.FAST.*``), validated."""
from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["COMPILE_MODES", "FastOptions"]

# torch.compile modes accepted by MODEL.FAST.COMPILE_MODE ("reduce-overhead" adds CUDA graphs)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class FastOptions:
    """Which optimisations the fast inference path uses (each can be measured alone).

    fold_bn: fold eval-mode batch norms into the convolutions.
    channels_last: run convolutions on NHWC tensors.
    skip_closed_paths: compute neither operations nor transitions that every image of the
        batch has closed (the faithful path computes them and multiplies by 0).
    per_image_routing: inside a batch, compute a cell's operations and each transition only
        on the images that need them (sub-batches), not on the whole batch.
    bf16: run in bfloat16 (the gates' last layer and the logits stay float32).
    compile: torch.compile backend for the stem, cell bodies, transitions and head
        ("" = no compilation; "inductor" for speed, "eager" to check tracing only).
    compile_mode: torch.compile mode (one of :data:`COMPILE_MODES`).
    """

    fold_bn: bool = True
    channels_last: bool = True
    skip_closed_paths: bool = True
    per_image_routing: bool = True
    bf16: bool = False
    compile: str = ""
    compile_mode: str = "default"

    def __post_init__(self):
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"MODEL.FAST.COMPILE_MODE={self.compile_mode!r} is not allowed: use one of "
                f"{list(COMPILE_MODES)}."
            )
        if self.per_image_routing and not self.skip_closed_paths:
            raise ValueError(
                "MODEL.FAST.PER_IMAGE_ROUTING=True needs MODEL.FAST.SKIP_CLOSED_PATHS=True "
                "(per-image routing skips closed paths image by image); set both, or "
                "PER_IMAGE_ROUTING=False."
            )

    @classmethod
    def from_config(cls, cfg) -> FastOptions:
        f = cfg.MODEL.FAST
        return cls(
            fold_bn=f.FOLD_BN,
            channels_last=f.CHANNELS_LAST,
            skip_closed_paths=f.SKIP_CLOSED_PATHS,
            per_image_routing=f.PER_IMAGE_ROUTING,
            bf16=f.BF16,
            compile=f.COMPILE,
            compile_mode=f.COMPILE_MODE,
        )

    def describe(self) -> dict:
        """The switches as a plain dict (for benchmark records)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
