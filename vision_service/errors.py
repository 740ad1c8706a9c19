"""Domain errors, one per answer the caller can act on; server.py maps each to one gRPC status code."""

from __future__ import annotations


class VisionError(Exception):
    """Base class; the message is safe to show to the caller."""


class InvalidImage(VisionError):
    """Empty, truncated, not an image, or an image format this service does not accept (INVALID_ARGUMENT)."""


class ImageTooLarge(VisionError):
    """Over the byte or pixel cap (OUT_OF_RANGE); decided before the pixels are decoded."""


class DetectorUnavailable(VisionError):
    """Triton is down, the model is not loaded, or it did not answer in time (UNAVAILABLE: worth retrying)."""


class DetectorTimeout(DetectorUnavailable):
    """Triton did not answer before the deadline given to the call."""


class DetectorRejected(VisionError):
    """Triton refused the request itself (a contract mismatch between this service and the model)."""


class DecoderBusy(VisionError):
    """Other photos hold the decode memory (VISION_DECODE_MEMORY_MB) for longer than this one may wait
    (UNAVAILABLE: worth retrying, the photo itself is fine)."""
