"""Any audio file in, a 16 kHz (or as asked) mono signed 16-bit PCM WAV out, in one ffmpeg decode pass.

Why not ``pydub.AudioSegment.from_file(..., parameters=["-ar", "16000", "-ac", "1"])``: pydub builds
``ffmpeg -y -i IN -acodec pcm_s16le -vn -f wav - <parameters>``, so the parameters land after the output name,
where ffmpeg ignores them as trailing options; the audio comes back at its source rate, and resampling it
afterwards with ``set_frame_rate`` uses audioop's rate conversion, which has no anti-aliasing filter. pydub
has no argument that places an output option before the output name (``format``/``codec`` are input
options), and it runs a second process (ffprobe) per call. So ffmpeg is called here the way pydub calls it
(argument list, no shell, PCM on a pipe), with the resampling options where ffmpeg applies them, and pydub
turns the PCM into the WAV file. The PCM is read into one buffer behind room for the 44-byte header, and
pydub's ``export`` writes the WAV into that same buffer (``_WavInPlace``): its header lands in the room left
for it and the PCM, already where the WAV needs it, is not copied (exported to a BytesIO, a 15-minute WAV
would be copied three more times: 80 MB per call).

One ffmpeg process per call does everything: content sniffing (its probe, restricted to the audio demuxers
below), decoding, down-mixing and anti-aliased resampling (libswresample, via ``-ar``/``-ac``). The detected
container and codec are read from the input summary ffmpeg prints, which is the same text ffprobe's names come
from, instead of paying for an ffprobe process on every call.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydub import AudioSegment

from mediabot import limits

# Demuxers ffmpeg may pick (matched against its names, e.g. "mov" covers "mov,mp4,m4a,3gp,3g2,mj2" and
# "matroska" covers webm). Anything else is refused before decoding: besides images and text this keeps out
# playlists (hls, concat) that would make ffmpeg open other files or URLs.
SUPPORTED_DEMUXERS = ("ogg", "mp3", "mov", "aac", "amr", "wav", "flac", "matroska")

# Decoders ffmpeg may open, by name: the audio codecs those containers carry (voice notes are Opus in Ogg;
# then MP3, AAC/ALAC in MP4/M4A/3GP, AMR, PCM and ADPCM in WAV, FLAC, Vorbis, Opus in WebM/Matroska).
# It is enforced on the probe as well as on the decode: without it ffmpeg decodes a frame of every stream
# while probing, so an 830 KB Matroska file with one black 8192x8192 PNG video frame took 306 MiB (55 MiB
# with it); a video, subtitle or attachment stream now fails to open and is ignored.
SUPPORTED_DECODERS = (
    "opus", "libopus", "vorbis", "libvorbis", "flac", "speex", "libspeex",
    "mp3float", "mp3", "mp2float", "mp2", "mp1float", "mp1",
    "aac", "aac_fixed", "aac_latm", "alac", "ac3", "ac3_fixed", "eac3",
    "amrnb", "amrwb", "libopencore_amrnb", "libopencore_amrwb",
    "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le", "pcm_s32be", "pcm_u8", "pcm_s8",
    "pcm_f32le", "pcm_f32be", "pcm_f64le", "pcm_alaw", "pcm_mulaw",
    "adpcm_ms", "adpcm_ima_wav", "g726", "g722", "gsm", "gsm_ms", "libgsm", "libgsm_ms",
)  # fmt: skip

# ffmpeg decodes a little past the duration cap so "longer than the cap" can be told apart from "exactly the cap".
_DURATION_MARGIN_S = 1.0
_READ_CHUNK = 1 << 20
# How often a conversion waiting on ffmpeg looks at its deadline and cancellation flag.
_POLL_S = 0.1
# The input summary is at the start of ffmpeg's log; a corrupt file can make it print one line per bad frame.
_STDERR_HEAD_BYTES = 64 * 1024
_STDERR_TAIL_BYTES = 2 * 1024

_INPUT_RE = re.compile(r"^Input #0, (?P<format>.+?), from '", re.MULTILINE)
_AUDIO_STREAM_RE = re.compile(r"^\s*Stream #0:\d+\S*: Audio: (?P<codec>[\w-]+)", re.MULTILINE)


class AudioError(Exception):
    """A conversion failure whose message is meant for the person who sent the file."""


class InvalidAudio(AudioError):
    """Empty, damaged, or not audio in a supported format."""


class UnsupportedOutput(AudioError):
    """The caller asked for an output shape the service doesn't produce."""


class AudioTooLarge(AudioError):
    """Over a configured limit: the input size or, for AudioTooLong, the decoded duration."""


class AudioTooLong(AudioTooLarge):
    """Decodes to more than the duration cap; ``decoded_s`` is how far decoding went before it was stopped."""

    def __init__(self, message: str, decoded_s: float) -> None:
        super().__init__(message)
        self.decoded_s = decoded_s


class ConversionAborted(AudioError):
    """The caller stopped waiting; ffmpeg was killed so it burns no more CPU."""


class ConversionCancelled(ConversionAborted):
    pass


class DeadlineExceeded(ConversionAborted):
    pass


class ConverterUnavailable(AudioError):
    """ffmpeg is missing or cannot be started: the service's fault, not the sender's."""


@dataclass(frozen=True)
class WavAudio:
    """A converted file and the facts the caller needs to describe it."""

    # The buffer ffmpeg's PCM was read into, header in front: handed on as it is, never copied here.
    wav: bytearray
    sample_rate_hz: int
    channels: int
    bits_per_sample: int
    duration_ms: int
    source_format: str
    source_codec: str


def find_ffmpeg(ffmpeg: str = "ffmpeg") -> str | None:
    """The ffmpeg that will be used, if it exists and runs; health is NOT_SERVING without it."""
    try:
        result = subprocess.run([ffmpeg, "-hide_banner", "-version"], capture_output=True, stdin=subprocess.DEVNULL,
                                timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return ffmpeg if result.returncode == 0 and result.stdout.startswith(b"ffmpeg version") else None


def ogg_is_complete(data: bytes) -> bool:
    """True when ``data`` is a sequence of whole Ogg pages ending with an end-of-stream page.

    ffmpeg decodes a cut-off Ogg file up to its last whole page without any error, which would store a
    silently shortened voice note. Ogg's page framing makes truncation easy to see, so it is checked here
    (a dozen lines; a library such as mutagen would be a dependency for just this).
    """
    pos, end, flags = 0, len(data), 0
    while pos < end:
        if pos + 27 > end or data[pos:pos + 4] != b"OggS":
            return False
        flags = data[pos + 5]
        segments = data[pos + 26]
        table_end = pos + 27 + segments
        if table_end > end:
            return False
        pos = table_end + sum(data[pos + 27:table_end])
    return pos == end and bool(flags & 0x04)


@dataclass(frozen=True)
class AudioConverter:
    """Converts bytes to WAV within the configured limits; holds no state between calls, so it is thread-safe."""

    max_input_bytes: int = limits.DEFAULT_MAX_MEDIA_BYTES
    max_duration_s: float = limits.DEFAULT_MAX_AUDIO_DURATION_S
    ffmpeg: str = "ffmpeg"
    # Parent of the per-call private directories; None means the system's temp directory (TMPDIR).
    tmp_dir: str | None = None

    def convert(
        self,
        data: bytes,
        *,
        sample_rate_hz: int = limits.DEFAULT_SAMPLE_RATE_HZ,
        channels: int = limits.DEFAULT_CHANNELS,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
    ) -> WavAudio:
        """Convert ``data``; ``deadline`` is a time.monotonic() value, ``cancelled`` is set when the caller gives up.

        Raises an AudioError subclass for every way this can fail.
        """
        if not limits.MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= limits.MAX_SAMPLE_RATE_HZ:
            raise UnsupportedOutput(f"The sample rate must be between {limits.MIN_SAMPLE_RATE_HZ} and "
                                    f"{limits.MAX_SAMPLE_RATE_HZ} Hz, not {sample_rate_hz}.")
        if not 1 <= channels <= limits.MAX_CHANNELS:
            raise UnsupportedOutput(f"The channel count must be 1 or {limits.MAX_CHANNELS}, not {channels}.")
        if not data:
            raise InvalidAudio("The file is empty.")
        if len(data) > self.max_input_bytes:
            raise AudioTooLarge(f"The file is {_mib(len(data))}; the limit is {_mib(self.max_input_bytes)}.")
        if data[:4] == b"OggS" and not ogg_is_complete(data):
            raise InvalidAudio("The Ogg audio file is cut off or damaged.")

        # A file, not a pipe: MP4/M4A files with their index (moov) at the end can only be read seekably.
        # mkdtemp makes a fresh directory only this user can enter, so the fixed name inside cannot collide.
        with tempfile.TemporaryDirectory(prefix="audio-", dir=self.tmp_dir) as private_dir:
            source = Path(private_dir) / "input"
            with open(source, "xb") as f:
                f.write(data)
            buffer, log = self._decode(source, sample_rate_hz, channels, deadline, cancelled)

        pcm_bytes = len(buffer) - limits.WAV_HEADER_BYTES
        frame_bytes = channels * limits.BYTES_PER_SAMPLE
        duration_s = pcm_bytes / frame_bytes / sample_rate_hz
        match = _INPUT_RE.search(log)
        source_format = match.group("format") if match else ""
        # Only the input summary: the output stream (pcm_s16le) is listed after "Output #0".
        codec_match = _AUDIO_STREAM_RE.search(log.split("\nOutput #0", 1)[0])
        source_codec = codec_match.group("codec") if codec_match else ""
        if not pcm_bytes:
            raise InvalidAudio("The file contains no audio that could be decoded.")

        _export_wav_in_place(buffer, sample_rate_hz, channels)
        return WavAudio(
            wav=buffer,
            sample_rate_hz=sample_rate_hz,
            channels=channels,
            bits_per_sample=8 * limits.BYTES_PER_SAMPLE,
            duration_ms=round(duration_s * 1000),
            source_format=source_format,
            source_codec=source_codec,
        )

    def _decode(
        self,
        source: Path,
        sample_rate_hz: int,
        channels: int,
        deadline: float | None,
        cancelled: threading.Event | None,
    ) -> tuple[bytearray, str]:
        """Run ffmpeg to raw PCM; returns it behind room for the WAV header, and the useful part of ffmpeg's log."""
        cap_bytes = round(self.max_duration_s * sample_rate_hz) * channels * limits.BYTES_PER_SAMPLE
        command = [
            self.ffmpeg, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info",
            # Input options: the uploaded file is only ever read as a local file by an audio demuxer, and
            # only audio decoders may run, while probing too (video, subtitle and data streams are not
            # decoded at all: no full-size frame of a hostile video is ever held).
            "-protocol_whitelist", "file",
            "-format_whitelist", ",".join(SUPPORTED_DEMUXERS),
            "-codec_whitelist", ",".join(SUPPORTED_DECODERS),
            "-vn", "-sn", "-dn",
            "-i", str(source),
            # Output options, all before the output name so ffmpeg applies them: first audio stream only,
            # resampled and down-mixed by libswresample (low-pass filtered, unlike audioop).
            "-map", "0:a:0",
            "-ac", str(channels),
            "-ar", str(sample_rate_hz),
            "-c:a", "pcm_s16le",
            # The duration cap is enforced by the decoder itself: ffmpeg stops shortly after the cap
            # whatever the container claims, so a tiny file that expands to hours is never decoded to the end.
            "-t", f"{self.max_duration_s + _DURATION_MARGIN_S:.3f}",
            # Write PCM in ffmpeg's 32 KiB I/O blocks instead of flushing every packet (fewer pipe wake-ups).
            "-flush_packets", "0",
            "-f", "s16le", "pipe:1",
        ]
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, bufsize=0)
        except OSError as exc:
            raise ConverterUnavailable(f"The audio converter could not be started ({exc.strerror}).") from exc

        # A 1 MiB pipe instead of 64 KiB: ffmpeg blocks less and this thread wakes up less often. Only a
        # speed-up, so a refusal (the user's pipe memory quota is spent) is fine.
        with contextlib.suppress(OSError):
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, _READ_CHUNK)  # type: ignore[union-attr]
        # One growing buffer rather than a list of chunks joined at the end: one copy of the PCM fewer, and
        # growing a large bytearray is mostly a page remap, not a copy. It starts with room for the header.
        pcm = bytearray(limits.WAV_HEADER_BYTES)
        err_head = bytearray()
        err_tail = b""
        try:
            with selectors.DefaultSelector() as selector:
                assert proc.stdout is not None and proc.stderr is not None
                selector.register(proc.stdout, selectors.EVENT_READ)
                selector.register(proc.stderr, selectors.EVENT_READ)
                while selector.get_map():
                    if cancelled is not None and cancelled.is_set():
                        raise ConversionCancelled("The conversion was cancelled by the caller.")
                    timeout = _POLL_S
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise DeadlineExceeded("The conversion did not finish before the caller's deadline.")
                        timeout = min(timeout, left)
                    for key, _ in selector.select(timeout):
                        chunk = os.read(key.fd, _READ_CHUNK)
                        if not chunk:
                            selector.unregister(key.fileobj)
                        elif key.fileobj is proc.stdout:
                            pcm += chunk
                            decoded = len(pcm) - limits.WAV_HEADER_BYTES
                            if decoded > cap_bytes:
                                raise AudioTooLong(
                                    f"The audio is longer than the {_minutes(self.max_duration_s)} limit.",
                                    decoded_s=decoded / (channels * limits.BYTES_PER_SAMPLE) / sample_rate_hz,
                                )
                        else:
                            if len(err_head) < _STDERR_HEAD_BYTES:
                                err_head += chunk[: _STDERR_HEAD_BYTES - len(err_head)]
                            err_tail = (err_tail + chunk)[-_STDERR_TAIL_BYTES:]
            returncode = proc.wait()
        finally:
            # Every path out, including exceptions, leaves no ffmpeg behind (and its temp file unused).
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]

        log = err_head.decode("utf-8", "replace")
        if returncode != 0:
            raise InvalidAudio(_failure_reason(log + err_tail.decode("utf-8", "replace")))
        return pcm, log


class _WavInPlace(io.RawIOBase):
    """A file for pydub to export a WAV into: ``buffer`` itself, which holds the PCM behind room for the header.

    pydub (through the ``wave`` module) writes the header, then the PCM it was given, which is a view of this
    same buffer at the offset it is written to: that write is recognised and skipped instead of copied. Any
    other write (the header, a patch of it) is copied in; nothing may grow the buffer.
    """

    def __init__(self, buffer: bytearray) -> None:
        super().__init__()
        self._buffer = buffer
        self._pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._buffer)}[whence]
        self._pos = base + offset
        return self._pos

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        end = self._pos + len(view)
        if end > len(self._buffer):
            raise ValueError("the WAV would not fit the buffer it is exported into")
        already_there = view.obj is self._buffer and self._pos == limits.WAV_HEADER_BYTES
        if not already_there:
            self._buffer[self._pos:end] = view
        self._pos = end
        return len(view)


def _export_wav_in_place(buffer: bytearray, sample_rate_hz: int, channels: int) -> None:
    """Turn ``buffer`` (header room + s16le PCM) into a WAV file with pydub, without copying the PCM."""
    pcm = memoryview(buffer)[limits.WAV_HEADER_BYTES:]
    try:
        segment = AudioSegment(data=pcm, sample_width=limits.BYTES_PER_SAMPLE, frame_rate=sample_rate_hz,
                               channels=channels)
        segment.export(_WavInPlace(buffer), format="wav")
    finally:
        pcm.release()  # the buffer is handed on (and may be resized by nobody) only without views on it


def _failure_reason(log: str) -> str:
    """A human reason for an ffmpeg failure, from the few messages that matter to a sender."""
    if "matches no streams" in log:
        return "The file contains no audio."
    if "moov atom not found" in log:
        return "The MP4/M4A file is incomplete (its index is missing)."
    if _INPUT_RE.search(log):
        return "The audio in the file could not be decoded."
    return "The file is not audio in a supported format."


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g}-minute" if seconds >= 60 else f"{seconds:g}-second"
