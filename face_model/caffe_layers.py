"""PyTorch equivalents of the Caffe layers the face detector uses, computed the way Caffe computes them.

Only the layers without a one-line torch counterpart live here; convolution, ReLU, max pooling
(``ceil_mode=True``, Caffe's rounding) and the reshaping layers are plain torch calls in ssd.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from face_model import caffe_pb2


class CaffeBatchNorm(nn.Module):
    """Caffe's BatchNorm in TEST phase: (x - mean) / sqrt(var + eps), no affine part (a Scale layer follows).

    Caffe stores running sums plus a scale factor; the buffers here hold the already-divided
    mean and variance (see ``load_blobs``).
    """

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, None, False, 0.0, self.eps)

    def load_blobs(self, blobs: list[np.ndarray]) -> None:
        mean, variance, factor = blobs
        # Caffe: scale = factor == 0 ? 0 : 1 / factor, then mean = blob0 * scale, in float32.
        scale = np.float32(0.0) if factor[0] == 0 else np.float32(1.0) / np.float32(factor[0])
        self.running_mean.copy_(torch.from_numpy(mean * scale))
        self.running_var.copy_(torch.from_numpy(variance * scale))


class CaffeScale(nn.Module):
    """Caffe's Scale layer over the channel axis (axis 1, num_axes 1): x * gamma (+ beta)."""

    def __init__(self, channels: int, bias_term: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(channels), requires_grad=False) if bias_term else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.weight.view(1, -1, 1, 1)
        return x if self.bias is None else x + self.bias.view(1, -1, 1, 1)

    def load_blobs(self, blobs: list[np.ndarray]) -> None:
        self.weight.data.copy_(torch.from_numpy(blobs[0]))
        if self.bias is not None:
            self.bias.data.copy_(torch.from_numpy(blobs[1]))


class CaffeNormalize(nn.Module):
    """SSD's Normalize layer, per position across channels: x / sqrt(sum_c x^2 + eps) * scale_c."""

    def __init__(self, channels: int, eps: float, channel_shared: bool) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1 if channel_shared else channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.sqrt(x.pow(2).sum(dim=1, keepdim=True) + self.eps)
        return x / norm * self.weight.view(1, -1, 1, 1)

    def load_blobs(self, blobs: list[np.ndarray]) -> None:
        self.weight.data.copy_(torch.from_numpy(blobs[0].reshape(-1)))


def load_convolution_blobs(conv: nn.Conv2d, blobs: list[np.ndarray]) -> None:
    conv.weight.data.copy_(torch.from_numpy(blobs[0]))
    if conv.bias is not None:
        conv.bias.data.copy_(torch.from_numpy(blobs[1]))


def convolution_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Caffe (and torch) round convolution output sizes down."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def pooling_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe rounds pooling output sizes UP, and drops a last window that would start in the padding."""
    out = math.ceil((size + 2 * pad - kernel) / stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _aspect_ratios(param: caffe_pb2.PriorBoxParameter) -> list[np.float32]:
    """The non-unit aspect ratios in Caffe's order (each ratio, then its flip), duplicates dropped."""
    ratios: list[np.float32] = []
    for value in param.aspect_ratio:
        ratio = np.float32(value)
        if abs(ratio - 1.0) < 1e-6 or any(abs(ratio - seen) < 1e-6 for seen in ratios):
            continue
        ratios.append(ratio)
        if param.flip:
            ratios.append(np.float32(1.0 / float(ratio)))
    return ratios


def prior_box_count(param: caffe_pb2.PriorBoxParameter) -> int:
    per_min_size = 1 + len(_aspect_ratios(param)) + (1 if len(param.max_size) else 0)
    return len(param.min_size) * per_min_size


def prior_boxes(
    param: caffe_pb2.PriorBoxParameter, feature_hw: tuple[int, int], image_hw: tuple[int, int]
) -> np.ndarray:
    """Caffe's PriorBox output, shape (2, H*W*num_priors*4): corner boxes normalized to the image, then variances.

    Arithmetic is float32 in the same order as OpenCV's PriorBox layer (the reference the tests hold
    us to), so the priors come out bit-identical to ``net.forward("mbox_priorbox")``.
    """
    f32 = np.float32
    layer_h, layer_w = feature_hw
    image_h, image_w = image_hw
    if param.HasField("img_size"):
        image_h = image_w = param.img_size
    elif param.HasField("img_h") or param.HasField("img_w"):
        image_h, image_w = param.img_h, param.img_w
    if param.HasField("step"):
        step_h = step_w = f32(param.step)
    elif param.HasField("step_h") or param.HasField("step_w"):
        step_h, step_w = f32(param.step_h), f32(param.step_w)
    else:
        step_h, step_w = f32(image_h) / f32(layer_h), f32(image_w) / f32(layer_w)
    if len(param.max_size) and len(param.max_size) != len(param.min_size):
        raise ValueError("PriorBox needs as many max_size values as min_size values")

    widths: list[np.float32] = []
    heights: list[np.float32] = []
    for index, min_value in enumerate(param.min_size):
        min_size = f32(min_value)
        widths.append(min_size)
        heights.append(min_size)
        if len(param.max_size):
            size = np.sqrt(min_size * f32(param.max_size[index]))
            widths.append(size)
            heights.append(size)
        for ratio in _aspect_ratios(param):
            root = np.sqrt(ratio)
            widths.append(min_size * root)
            heights.append(min_size / root)
    half_w = np.asarray(widths, dtype=f32) * f32(0.5)
    half_h = np.asarray(heights, dtype=f32) * f32(0.5)

    offset = f32(param.offset)
    center_x = (np.arange(layer_w, dtype=f32) + offset) * step_w  # (W,)
    center_y = (np.arange(layer_h, dtype=f32) + offset) * step_h  # (H,)
    cx = np.broadcast_to(center_x[None, :, None], (layer_h, layer_w, len(widths)))
    cy = np.broadcast_to(center_y[:, None, None], (layer_h, layer_w, len(widths)))
    boxes = np.stack(
        [
            (cx - half_w) / f32(image_w),
            (cy - half_h) / f32(image_h),
            (cx + half_w) / f32(image_w),
            (cy + half_h) / f32(image_h),
        ],
        axis=-1,
    ).astype(f32)
    if param.clip:
        boxes = np.clip(boxes, f32(0.0), f32(1.0))
    variances = np.asarray(param.variance, dtype=f32) if len(param.variance) else np.asarray([0.1], dtype=f32)
    if variances.size not in (1, 4):
        raise ValueError("PriorBox needs 1 or 4 variance values")
    variance_rows = np.broadcast_to(np.resize(variances, 4), boxes.shape)
    return np.stack([boxes.reshape(-1), variance_rows.reshape(-1)]).astype(f32)


class ChannelAffine(nn.Module):
    """x * scale_c + shift_c in one pass: a Caffe BatchNorm and the Scale after it, folded together for inference."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())
        self.register_buffer("_zeros", torch.zeros_like(self.scale), persistent=False)
        self.register_buffer("_ones", torch.ones_like(self.scale), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # batch_norm with mean 0, variance 1 and eps 0 is exactly x * weight + bias, as a single fused kernel.
        return F.batch_norm(x, self._zeros, self._ones, self.scale, self.shift, False, 0.0, 0.0)


def batch_norm_scale_as_affine(norm: CaffeBatchNorm, scale: CaffeScale | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel (multiplier, offset) equal to BatchNorm followed by Scale (computed in float64)."""
    inv_std = 1.0 / torch.sqrt(norm.running_var.double() + norm.eps)
    multiplier = inv_std
    offset = -norm.running_mean.double() * inv_std
    if scale is not None:
        gamma = scale.weight.double()
        beta = scale.bias.double() if scale.bias is not None else torch.zeros_like(gamma)
        multiplier, offset = multiplier * gamma, offset * gamma + beta
    return multiplier.float(), offset.float()
