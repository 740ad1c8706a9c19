"""SSD's DetectionOutput layer (box decoding + NMS) for a one-class detector, batched, in torch.

Caffe's semantics, kept here: per image and foreground class, candidates are the boxes scoring
strictly above ``confidence_threshold``, sorted by score (stable, so ties keep prior order), cut to
``top_k``; greedy NMS keeps a box when its IoU with every kept box is <= ``nms_threshold``
(``torchvision.ops.nms`` drops IoU > threshold: the same rule); finally the ``keep_top_k`` best
survive, most confident first. NMS runs image by image so that an image's result never depends on
which other images share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import nms

from face_model import caffe_pb2


@dataclass(frozen=True)
class DetectionOutputParams:
    confidence_threshold: float
    nms_threshold: float
    top_k: int
    keep_top_k: int
    foreground_class: int

    @classmethod
    def from_layer(cls, param: caffe_pb2.DetectionOutputParameter) -> DetectionOutputParams:
        """Reads the prototxt settings, refusing the ones this port does not implement."""
        unsupported = []
        if param.num_classes != 2:
            unsupported.append(f"num_classes={param.num_classes} (only background + one class)")
        if param.background_label_id not in (0, 1):
            unsupported.append(f"background_label_id={param.background_label_id}")
        if not param.share_location:
            unsupported.append("share_location=false")
        if param.code_type != caffe_pb2.PriorBoxParameter.CENTER_SIZE:
            unsupported.append("code_type other than CENTER_SIZE")
        if param.variance_encoded_in_target:
            unsupported.append("variance_encoded_in_target=true")
        if param.nms_param.eta != 1.0:
            unsupported.append(f"adaptive NMS (eta={param.nms_param.eta})")
        if unsupported:
            raise NotImplementedError("DetectionOutput settings not supported: " + ", ".join(unsupported))
        top_k = param.nms_param.top_k if param.nms_param.HasField("top_k") else -1
        return cls(
            confidence_threshold=param.confidence_threshold,
            nms_threshold=param.nms_param.nms_threshold,
            top_k=top_k,
            keep_top_k=param.keep_top_k,
            foreground_class=1 - param.background_label_id,
        )


def decode_center_size(loc: torch.Tensor, priors: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
    """(N, P, 4) offsets -> (N, P, 4) corner boxes, as Caffe's DecodeBBox with CENTER_SIZE coding."""
    prior_w = priors[:, 2] - priors[:, 0]
    prior_h = priors[:, 3] - priors[:, 1]
    prior_cx = (priors[:, 0] + priors[:, 2]) / 2
    prior_cy = (priors[:, 1] + priors[:, 3]) / 2
    cx = variances[:, 0] * loc[..., 0] * prior_w + prior_cx
    cy = variances[:, 1] * loc[..., 1] * prior_h + prior_cy
    w = torch.exp(variances[:, 2] * loc[..., 2]) * prior_w
    h = torch.exp(variances[:, 3] * loc[..., 3]) * prior_h
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def detection_output(
    loc: torch.Tensor,
    conf: torch.Tensor,
    priors: torch.Tensor,
    variances: torch.Tensor,
    params: DetectionOutputParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """loc (N, P, 4), softmaxed conf (N, P, 2) -> detections (N, keep_top_k, 5) and counts (N,) int32.

    A detection row is [confidence, xmin, ymin, xmax, ymax], boxes normalized to the input canvas,
    rows sorted by confidence; rows past the count are zeros.
    """
    batch = loc.shape[0]
    boxes = decode_center_size(loc, priors, variances)
    scores = conf[..., params.foreground_class]
    keep_top_k = params.keep_top_k if params.keep_top_k >= 0 else scores.shape[1]
    detections = torch.zeros((batch, keep_top_k, 5), dtype=torch.float32, device=loc.device)
    counts = torch.zeros((batch,), dtype=torch.int32, device=loc.device)

    sorted_scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    if params.top_k >= 0:
        sorted_scores, order = sorted_scores[:, : params.top_k], order[:, : params.top_k]
    for image in range(batch):
        above = sorted_scores[image] > params.confidence_threshold
        candidate_scores = sorted_scores[image][above]
        candidate_boxes = boxes[image][order[image][above]]
        kept = nms(candidate_boxes, candidate_scores, params.nms_threshold)[:keep_top_k]
        count = kept.numel()
        detections[image, :count, 0] = candidate_scores[kept]
        detections[image, :count, 1:] = candidate_boxes[kept]
        counts[image] = count
    return detections, counts
