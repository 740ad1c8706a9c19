"""When Triton goes away the service says so (UNAVAILABLE, health NOT_SERVING) and recovers when it is back."""

from __future__ import annotations

import grpc
import pytest

from mediabot.v1 import vision_pb2
from bench.photo_set import face_photo
from tests.fixtures.vision import NOT_SERVING, SERVING, wait_for_health


@pytest.mark.slow
def test_triton_stopped_is_unavailable_then_serving_again_after_restart(triton_server, vision_server, vision_stub):
    request = vision_pb2.DetectFacesRequest(image=face_photo(), content_type="image/jpeg")
    assert vision_stub.DetectFaces(request, timeout=30).has_face
    triton_server.stop()
    try:
        with pytest.raises(grpc.RpcError) as raised:
            vision_stub.DetectFaces(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "detector" in raised.value.details()
        wait_for_health(vision_server, NOT_SERVING, timeout=15)
        # Still a clear answer while down, not a hang.
        with pytest.raises(grpc.RpcError) as raised:
            vision_stub.DetectFaces(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        triton_server.restart()
    wait_for_health(vision_server, SERVING, timeout=60)
    assert vision_stub.DetectFaces(request, timeout=30).has_face
