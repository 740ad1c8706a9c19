"""The conversion module on its own: the limits enforced while decoding, and the Ogg framing check."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mediabot import limits
from audio_service.convert import (
    AudioConverter,
    AudioTooLong,
    ConversionCancelled,
    DeadlineExceeded,
    ogg_is_complete,
)
from bench.hostile_media import video_with_huge_frame
from tests.audio_service.helpers import my_ffmpeg_children, wait_until
from tests.fixtures.audio import make_silence_flac


def test_duration_cap_stops_decoding_early(tmp_path: Path) -> None:
    """Two hours of audio against a 5-second cap: decoding stops just past the cap, not at the end."""
    converter = AudioConverter(max_duration_s=5, tmp_dir=str(tmp_path))
    with pytest.raises(AudioTooLong) as info:
        converter.convert(make_silence_flac(tmp_path, 2 * 3600).read_bytes())
    assert 5 < info.value.decoded_s <= 6.5
    assert "5-second" in str(info.value)


def test_exactly_at_the_cap_is_accepted(tmp_path: Path) -> None:
    converter = AudioConverter(max_duration_s=5, tmp_dir=str(tmp_path))
    assert converter.convert(make_silence_flac(tmp_path, 5).read_bytes()).duration_ms == 5000


def test_deadline_kills_ffmpeg(tmp_path: Path) -> None:
    converter = AudioConverter(tmp_dir=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    bomb = make_silence_flac(tmp_path, 2 * 3600).read_bytes()
    with pytest.raises(DeadlineExceeded):
        converter.convert(bomb, deadline=time.monotonic() + 0.05)
    assert my_ffmpeg_children() == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_cancellation_kills_ffmpeg(tmp_path: Path) -> None:
    converter = AudioConverter()
    bomb = make_silence_flac(tmp_path, 2 * 3600).read_bytes()
    cancelled = threading.Event()
    watcher = threading.Thread(target=lambda: wait_until(lambda: bool(my_ffmpeg_children())) and cancelled.set())
    watcher.start()
    with pytest.raises(ConversionCancelled):
        converter.convert(bomb, cancelled=cancelled)
    watcher.join()
    assert my_ffmpeg_children() == []


def ogg_page(payload: bytes, flags: int = 0) -> bytes:
    segments = [255] * (len(payload) // 255) + [len(payload) % 255]
    return b"OggS" + bytes([0, flags]) + bytes(20) + bytes([len(segments)]) + bytes(segments) + payload


def test_ogg_framing_check() -> None:
    whole = ogg_page(b"head", flags=0x02) + ogg_page(b"x" * 600) + ogg_page(b"end", flags=0x04)
    assert ogg_is_complete(whole)
    assert not ogg_is_complete(whole[:-1])  # last page cut short
    assert not ogg_is_complete(whole[: whole.rindex(b"OggS")])  # whole pages, but no end-of-stream page
    assert not ogg_is_complete(whole + b"junk")
    assert not ogg_is_complete(whole[:20])


def test_limits_match_the_documented_sizes() -> None:
    assert limits.wav_bytes(900, 16000, 1) == 44 + 28_800_000
    assert limits.MAX_REQUEST_BYTES == 16 * 1024 * 1024 + limits.MESSAGE_OVERHEAD_BYTES
    assert limits.MAX_RESPONSE_BYTES == limits.wav_bytes(901, 16000, 1) + limits.MESSAGE_OVERHEAD_BYTES
    assert dict(limits.client_channel_options()) == {
        "grpc.max_send_message_length": limits.MAX_REQUEST_BYTES,
        "grpc.max_receive_message_length": limits.MAX_RESPONSE_BYTES,
    }


# ffmpeg's peak memory, from a fresh Python process whose only child is the one ffmpeg the conversion runs.
_PEAK_OF_ONE_CONVERSION = """
import resource, sys
from pathlib import Path
from audio_service.convert import AudioConverter, InvalidAudio
try:
    result = AudioConverter(tmp_dir=sys.argv[2]).convert(Path(sys.argv[1]).read_bytes())
    outcome = f"{result.source_codec} {result.duration_ms}"
except InvalidAudio as error:
    outcome = str(error)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, outcome)
"""


@pytest.mark.parametrize("with_audio", [True, False], ids=["video-and-audio", "video-only"])
def test_a_video_stream_is_never_decoded(tmp_path: Path, with_audio: bool) -> None:
    """One black 8192x8192 PNG frame in Matroska: ffmpeg probing it decoded the frame (240+ MB); only audio
    decoders may run now, so the audio converts, or the file is "no audio", in ffmpeg's usual ~50 MB."""
    path = tmp_path / "video.mkv"
    path.write_bytes(video_with_huge_frame(tmp_path, audio=with_audio))
    assert path.stat().st_size < 1024 * 1024
    run = subprocess.run([sys.executable, "-c", _PEAK_OF_ONE_CONVERSION, str(path), str(tmp_path)],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    peak_mb, outcome = run.stdout.split(" ", 1)
    assert outcome.strip() == ("opus 2000" if with_audio else "The file contains no audio.")
    # A decoded frame alone is 8192 x 8192 x 3 bytes = 201 MB.
    assert int(peak_mb) < 120, run.stdout


def test_pydub_exports_the_wav_into_the_pcm_buffer_without_copying_it() -> None:
    """The WAV container is pydub's (its export through the wave module), written around the PCM in place."""
    import tracemalloc
    import wave
    from io import BytesIO

    from mediabot import limits
    from audio_service.convert import _export_wav_in_place

    pcm = bytes(range(256)) * (64 * 1024)  # 16 MiB of s16le samples
    buffer = bytearray(limits.WAV_HEADER_BYTES) + pcm
    tracemalloc.start()
    try:
        _export_wav_in_place(buffer, 16000, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"the export allocated {peak} bytes: the PCM was copied"
    with wave.open(BytesIO(bytes(buffer))) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        assert wav.getnframes() == len(pcm) // 2 and wav.readframes(wav.getnframes()) == pcm
