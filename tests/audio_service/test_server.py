"""The audio service through its real gRPC server: every format, the resampler's quality, and every refusal."""

from __future__ import annotations

import io
import subprocess
import wave
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image

from audio_service.config import Settings
from mediabot.limits import client_channel_options
from audio_service.server import SERVICE_NAME, create_server
from mediabot.v1 import audio_pb2, audio_pb2_grpc
from tests.audio_service.helpers import (
    my_ffmpeg_children,
    parse_wav_header,
    tone_level_db,
    wait_until,
    wav_samples,
)
from tests.fixtures.audio import AUDIO_FORMATS, content_type_of, ffprobe_duration_s, make_silence_flac

TIMEOUT_S = 30


@pytest.fixture(scope="module")
def stub(audio_channel: grpc.Channel) -> audio_pb2_grpc.AudioServiceStub:
    return audio_pb2_grpc.AudioServiceStub(audio_channel)


def convert(stub: audio_pb2_grpc.AudioServiceStub, data: bytes, content_type: str = "audio/ogg", **fields: object,
            ) -> audio_pb2.ConvertToWavResponse:
    request = audio_pb2.ConvertToWavRequest(audio=data, content_type=content_type, request_id="test/0", **fields)
    return stub.ConvertToWav(request, timeout=TIMEOUT_S)


def refusal(stub: audio_pb2_grpc.AudioServiceStub, data: bytes, content_type: str = "audio/ogg") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        convert(stub, data, content_type)
    return info.value


def reference_conversion(path: Path, out_dir: Path) -> bytes:
    """What the plain ffmpeg CLI makes of the file: the service must agree with it."""
    out = out_dir / f"{path.stem}-reference.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(path), "-ar", "16000", "-ac", "1", str(out)],
                   check=True)
    return out.read_bytes()


def ffprobe_reference_duration_s(path: Path) -> float:
    """ffprobe's duration of the playable audio.

    Two corrections keep the comparison honest: raw ADTS AAC has no duration field, and ffprobe then only
    estimates it from the bitrate (counting its packets gives the real length); MP3's start time is the
    encoder delay, which the decoder drops.
    """
    result = subprocess.run(["ffprobe", "-v", "warning", "-show_entries", "format=duration,start_time", "-of",
                             "default=nw=1", str(path)], check=True, capture_output=True, text=True)
    fields = dict(line.split("=", 1) for line in result.stdout.split())
    duration = ffprobe_duration_s(path)
    if "Estimating duration from bitrate" in result.stderr:
        packets = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                                  "packet=duration_time", "-of", "csv=p=0", str(path)],
                                 check=True, capture_output=True, text=True).stdout
        duration = sum(float(value) for value in packets.split())
    start = fields.get("start_time", "N/A")
    return duration - max(float(start), 0.0) if start != "N/A" else duration


@pytest.mark.parametrize("fmt", sorted(AUDIO_FORMATS))
def test_every_supported_format_becomes_16k_mono_pcm_wav(
    fmt: str, stub: audio_pb2_grpc.AudioServiceStub, audio_samples: dict[str, Path], tmp_path: Path
) -> None:
    path = audio_samples[fmt]
    reply = convert(stub, path.read_bytes(), content_type_of(fmt))

    header = parse_wav_header(reply.wav)
    assert (header.audio_format, header.sample_rate, header.channels, header.bits_per_sample) == (1, 16000, 1, 16)
    assert (reply.sample_rate_hz, reply.channels, reply.bits_per_sample) == (16000, 1, 16)

    duration_s = header.data_bytes / 2 / 16000
    assert reply.duration_ms == round(duration_s * 1000)
    assert abs(duration_s - ffprobe_reference_duration_s(path)) <= 0.030

    ours, _ = wav_samples(reply.wav)
    theirs, _ = wav_samples(reference_conversion(path, tmp_path))
    n = min(len(ours), len(theirs))
    assert n > 16000 * 3
    assert np.corrcoef(ours[:n], theirs[:n])[0, 1] >= 0.98


@pytest.mark.parametrize(
    ("fmt", "source_format", "source_codec"),
    [
        ("ogg_opus", "ogg", "opus"),
        ("mp3", "mp3", "mp3"),
        ("m4a", "mov,mp4,m4a,3gp,3g2,mj2", "aac"),
        ("aac_adts", "aac", "aac"),
        ("amr_nb", "amr", "amr_nb"),
        ("3gp", "mov,mp4,m4a,3gp,3g2,mj2", "amr_nb"),
        ("webm_opus", "matroska,webm", "opus"),
    ],
)
def test_source_format_and_codec_are_named_as_ffprobe_names_them(
    fmt: str, source_format: str, source_codec: str, stub: audio_pb2_grpc.AudioServiceStub,
    audio_samples: dict[str, Path],
) -> None:
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                            "format=format_name:stream=codec_name", "-of", "default=nw=1:nk=1",
                            str(audio_samples[fmt])], check=True, capture_output=True, text=True).stdout.split()
    assert sorted(probe) == sorted([source_codec, source_format])

    reply = convert(stub, audio_samples[fmt].read_bytes(), content_type_of(fmt))
    assert (reply.source_format, reply.source_codec) == (source_format, source_codec)


def test_wrong_declared_type_is_ignored_for_valid_audio(
    stub: audio_pb2_grpc.AudioServiceStub, audio_samples: dict[str, Path]
) -> None:
    reply = convert(stub, audio_samples["mp3"].read_bytes(), content_type="image/jpeg")
    assert reply.source_format == "mp3"
    assert parse_wav_header(reply.wav).sample_rate == 16000


def test_other_output_shapes_on_request(stub: audio_pb2_grpc.AudioServiceStub, audio_samples: dict[str, Path]) -> None:
    reply = convert(stub, audio_samples["wav"].read_bytes(), "audio/wav", sample_rate_hz=8000, channels=2)
    header = parse_wav_header(reply.wav)
    assert (header.sample_rate, header.channels, reply.sample_rate_hz, reply.channels) == (8000, 2, 8000, 2)


def test_unsupported_output_shape_is_invalid_argument(
    stub: audio_pb2_grpc.AudioServiceStub, audio_samples: dict[str, Path]
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        convert(stub, audio_samples["wav"].read_bytes(), "audio/wav", sample_rate_hz=1000)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "sample rate" in info.value.details()


def make_two_tone_wav() -> bytes:
    rate = 48000
    t = np.arange(2 * rate) / rate
    signal = 0.4 * np.sin(2 * np.pi * 1000 * t) + 0.4 * np.sin(2 * np.pi * 12000 * t)
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes((signal * 32767).astype("<i2").tobytes())
    return out.getvalue()


def test_resampling_is_anti_aliased(stub: audio_pb2_grpc.AudioServiceStub) -> None:
    """At 16 kHz a 12 kHz tone must be filtered out, not folded down to 4 kHz."""
    reply = convert(stub, make_two_tone_wav(), "audio/wav")
    samples, rate = wav_samples(reply.wav)
    assert rate == 16000
    assert tone_level_db(samples, rate, 4000, reference=1000) <= -40


def test_the_naive_resampler_would_fail_the_anti_aliasing_check() -> None:
    """The check above can fail: pydub's set_frame_rate (audioop) leaves the 4 kHz alias at full strength."""
    from pydub import AudioSegment

    naive = AudioSegment.from_file(io.BytesIO(make_two_tone_wav()), format="wav").set_frame_rate(16000)
    samples = np.frombuffer(naive.raw_data, dtype="<i2").astype(np.float64)
    assert tone_level_db(samples, 16000, 4000, reference=1000) > -40


def test_pydub_from_file_ignores_output_parameters() -> None:
    """Why convert.py calls ffmpeg itself: pydub appends ``parameters`` after the output name, where ffmpeg
    drops them, so asking for 16 kHz this way silently keeps 48 kHz."""
    from pydub import AudioSegment

    segment = AudioSegment.from_file(io.BytesIO(make_two_tone_wav()), parameters=["-ar", "16000", "-ac", "1"])
    assert segment.frame_rate == 48000


def make_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def make_video_without_audio(directory: Path) -> bytes:
    path = directory / "video.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10",
                    "-t", "1", "-c:v", "mpeg4", str(path)], check=True)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("case", "expected_words"),
    [
        ("empty", "empty"),
        ("ogg_cut_in_half", "cut off"),
        ("ogg_headers_only", "cut off"),
        ("ogg_cut_at_page_boundary", "cut off"),
        ("png_declared_ogg", "not audio"),
        ("text", "not audio"),
        ("random_bytes", "not audio"),
        ("video_without_audio", "no audio"),
        ("m4a_without_index", "index"),
    ],
)
def test_bad_input_is_invalid_argument(
    case: str, expected_words: str, stub: audio_pb2_grpc.AudioServiceStub, audio_samples: dict[str, Path],
    tmp_path: Path,
) -> None:
    ogg = audio_samples["ogg_opus"].read_bytes()
    m4a = audio_samples["m4a"].read_bytes()
    data = {
        "empty": lambda: b"",
        "ogg_cut_in_half": lambda: ogg[: len(ogg) // 2],
        "ogg_headers_only": lambda: ogg[:200],
        # Whole pages but no end-of-stream page: only the Ogg framing check can tell.
        "ogg_cut_at_page_boundary": lambda: ogg[: ogg.rindex(b"OggS")],
        "png_declared_ogg": make_png,
        "text": lambda: ("Hello, this is a text message, not a voice note.\n" * 40).encode(),
        "random_bytes": lambda: np.random.default_rng(7).bytes(100_000),
        "video_without_audio": lambda: make_video_without_audio(tmp_path),
        # moov at the end, cut off: the MP4 index is gone.
        "m4a_without_index": lambda: m4a[: len(m4a) * 3 // 4],
    }[case]()
    error = refusal(stub, data)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected_words in error.details()


def test_input_over_the_size_limit_is_out_of_range(stub: audio_pb2_grpc.AudioServiceStub) -> None:
    """Just over 16 MiB reaches the service, which answers with its limit."""
    error = refusal(stub, b"RIFF" + bytes(16 * 1024 * 1024 - 3), "audio/wav")
    assert error.code() is grpc.StatusCode.OUT_OF_RANGE
    assert "16.0 MiB" in error.details()


def test_17_mib_input_is_resource_exhausted(audio_server: str) -> None:
    """Far over the limit, the server's gRPC message limit refuses it before it is buffered for conversion
    (gRPC's own RESOURCE_EXHAUSTED). The channel here sets no send limit of its own, so it is the server that
    refuses; the gateway's channel has the same limit (mediabot.limits), so it never sends that much."""
    with grpc.insecure_channel(audio_server, options=[("grpc.max_send_message_length", -1)]) as channel:
        error = refusal(audio_pb2_grpc.AudioServiceStub(channel), bytes(17 * 1024 * 1024), "audio/ogg")
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_tiny_file_that_decodes_to_hours_is_out_of_range(
    stub: audio_pb2_grpc.AudioServiceStub, tmp_path: Path
) -> None:
    bomb = make_silence_flac(tmp_path, 2 * 3600).read_bytes()
    assert len(bomb) < 100_000
    error = refusal(stub, bomb, "audio/flac")
    assert error.code() is grpc.StatusCode.OUT_OF_RANGE
    assert "15-minute" in error.details()


def test_a_lying_duration_header_does_not_get_past_the_cap(
    stub: audio_pb2_grpc.AudioServiceStub, tmp_path: Path
) -> None:
    """STREAMINFO rewritten to claim one second: ffprobe believes it, the decoder-side cap doesn't."""
    bomb = bytearray(make_silence_flac(tmp_path, 2 * 3600).read_bytes())
    assert bomb[:4] == b"fLaC" and bomb[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    fields = int.from_bytes(bomb[18:26], "big")
    bomb[18:26] = ((fields & ~((1 << 36) - 1)) | 8000).to_bytes(8, "big")  # total samples: 8000 at 8 kHz
    liar = tmp_path / "liar.flac"
    liar.write_bytes(bomb)
    assert ffprobe_duration_s(liar) == pytest.approx(1.0)

    error = refusal(stub, bytes(bomb), "audio/flac")
    assert error.code() is grpc.StatusCode.OUT_OF_RANGE


def test_largest_allowed_output_crosses_the_wire(
    stub: audio_pb2_grpc.AudioServiceStub, audio_server: str, tmp_path: Path
) -> None:
    """Just under 15 minutes comes back whole (about 29 MB) with the exported client options, and gRPC's
    default 4 MiB client limit would refuse it: the limits are needed and sufficient."""
    nearly_15_min = make_silence_flac(tmp_path, 899).read_bytes()
    reply = convert(stub, nearly_15_min, "audio/flac")
    assert reply.duration_ms == 899_000
    assert parse_wav_header(reply.wav).data_bytes == 899 * 16000 * 2

    with grpc.insecure_channel(audio_server) as default_channel:
        error = refusal(audio_pb2_grpc.AudioServiceStub(default_channel), nearly_15_min, "audio/flac")
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_short_deadline_is_deadline_exceeded_and_ffmpeg_is_stopped(
    stub: audio_pb2_grpc.AudioServiceStub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long_file = make_silence_flac(tmp_path, 2 * 3600).read_bytes()
    request = audio_pb2.ConvertToWavRequest(audio=long_file, content_type="audio/flac", request_id="deadline/0")
    with caplog.at_level("INFO", logger="audio_service.server"):
        with pytest.raises(grpc.RpcError) as info:
            stub.ConvertToWav(request, timeout=0.05)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

        # The server noticed too: it killed ffmpeg and logged the outcome rather than decoding for nobody.
        def server_gave_up() -> bool:
            return any(getattr(r, "request_id", None) == "deadline/0" for r in caplog.records)

        assert wait_until(server_gave_up)
    record = next(r for r in caplog.records if getattr(r, "request_id", None) == "deadline/0")
    assert record.outcome == "DEADLINE_EXCEEDED"
    assert wait_until(lambda: not my_ffmpeg_children())


def test_cancelled_call_stops_ffmpeg(
    stub: audio_pb2_grpc.AudioServiceStub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long_file = make_silence_flac(tmp_path, 2 * 3600).read_bytes()
    request = audio_pb2.ConvertToWavRequest(audio=long_file, content_type="audio/flac", request_id="cancel/0")
    with caplog.at_level("INFO", logger="audio_service.server"):
        call = stub.ConvertToWav.future(request, timeout=TIMEOUT_S)
        assert wait_until(lambda: bool(my_ffmpeg_children()))
        call.cancel()

        def logged() -> bool:
            return any(getattr(r, "request_id", None) == "cancel/0" for r in caplog.records)

        assert wait_until(logged)
    record = next(r for r in caplog.records if getattr(r, "request_id", None) == "cancel/0")
    assert record.outcome == "CANCELLED"
    assert wait_until(lambda: not my_ffmpeg_children())


def test_each_call_is_logged_with_its_facts(
    stub: audio_pb2_grpc.AudioServiceStub, audio_samples: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    request = audio_pb2.ConvertToWavRequest(audio=audio_samples["ogg_opus"].read_bytes(), content_type="audio/ogg",
                                            request_id="SMlog/1")
    with caplog.at_level("INFO", logger="audio_service.server"):
        stub.ConvertToWav(request, timeout=TIMEOUT_S)
        assert wait_until(lambda: any(getattr(r, "request_id", None) == "SMlog/1" for r in caplog.records))
    record = next(r for r in caplog.records if getattr(r, "request_id", None) == "SMlog/1")
    assert (record.outcome, record.source_format, record.source_codec) == ("OK", "ogg", "opus")
    assert record.duration_ms > 3000 and record.elapsed_ms > 0


def test_health_is_serving(audio_server: str) -> None:
    with grpc.insecure_channel(audio_server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(audio_server: str) -> None:
    with grpc.insecure_channel(audio_server) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert SERVICE_NAME in services
    assert "grpc.health.v1.Health" in services


@pytest.fixture
def server_without_ffmpeg(audio_settings: Settings, tmp_path: Path) -> Iterator[str]:
    server = create_server(replace(audio_settings, ffmpeg=str(tmp_path / "no-ffmpeg-here")))
    port = server.port
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


def test_without_ffmpeg_health_is_not_serving_and_calls_are_unavailable(
    server_without_ffmpeg: str, audio_samples: dict[str, Path]
) -> None:
    with grpc.insecure_channel(server_without_ffmpeg, options=client_channel_options()) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        error = refusal(audio_pb2_grpc.AudioServiceStub(channel), audio_samples["ogg_opus"].read_bytes())
    assert error.code() is grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def private_tmp_server(audio_settings: Settings, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A server of its own whose temp root is a fresh directory, so leftovers are attributable."""
    tmp_root = tmp_path / "service-tmp"
    tmp_root.mkdir()
    server = create_server(replace(audio_settings, tmp_dir=str(tmp_root)))
    port = server.port
    server.start()
    try:
        yield f"127.0.0.1:{port}", tmp_root
    finally:
        server.stop(grace=None).wait()


def test_no_temp_files_are_left_after_good_and_bad_calls(
    private_tmp_server: tuple[str, Path], audio_samples: dict[str, Path], tmp_path: Path
) -> None:
    address, tmp_root = private_tmp_server
    ogg = audio_samples["ogg_opus"].read_bytes()
    bomb = make_silence_flac(tmp_path, 2 * 3600).read_bytes()
    with grpc.insecure_channel(address, options=client_channel_options()) as channel:
        stub = audio_pb2_grpc.AudioServiceStub(channel)
        convert(stub, audio_samples["m4a"].read_bytes(), "audio/mp4")
        convert(stub, ogg)
        assert list(tmp_root.iterdir()) == []
        for bad in (ogg[:-50], make_png(), b"not audio at all", bomb):
            refusal(stub, bad)
            assert list(tmp_root.iterdir()) == []
        # A call abandoned mid-conversion: the server cleans up after the client has gone.
        with pytest.raises(grpc.RpcError):
            stub.ConvertToWav(audio_pb2.ConvertToWavRequest(audio=bomb), timeout=0.05)
        assert wait_until(lambda: not list(tmp_root.iterdir()) and not my_ffmpeg_children())
