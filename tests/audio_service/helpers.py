"""Small checks shared by the audio service tests: reading WAV headers and watching ffmpeg processes."""

from __future__ import annotations

import io
import os
import struct
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class WavHeader:
    audio_format: int  # 1 = PCM
    channels: int
    sample_rate: int
    bits_per_sample: int
    data_bytes: int


def parse_wav_header(wav: bytes) -> WavHeader:
    """Read the RIFF chunks by hand, so a header the wave module would tolerate still has to be exact."""
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE", wav[:12]
    assert struct.unpack_from("<I", wav, 4)[0] == len(wav) - 8, "RIFF size must cover the whole file"
    pos, fmt, data_bytes = 12, None, None
    while pos + 8 <= len(wav):
        chunk_id, size = wav[pos:pos + 4], struct.unpack_from("<I", wav, pos + 4)[0]
        if chunk_id == b"fmt ":
            fmt = struct.unpack_from("<HHIIHH", wav, pos + 8)
        elif chunk_id == b"data":
            data_bytes = size
            assert pos + 8 + size == len(wav), "data chunk must end the file"
        pos += 8 + size + (size & 1)
    assert fmt is not None and data_bytes is not None
    audio_format, channels, sample_rate, byte_rate, block_align, bits = fmt
    assert byte_rate == sample_rate * block_align and block_align == channels * bits // 8
    return WavHeader(audio_format, channels, sample_rate, bits, data_bytes)


def wav_samples(wav: bytes) -> tuple[np.ndarray, int]:
    """Mono samples as floats, and the rate."""
    with wave.open(io.BytesIO(wav)) as reader:
        frames = reader.readframes(reader.getnframes())
        rate, channels = reader.getframerate(), reader.getnchannels()
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64)
    return samples.reshape(-1, channels).mean(axis=1), rate


def tone_level_db(samples: np.ndarray, rate: int, freq: float, reference: float) -> float:
    """Level of the strongest bin near ``freq`` relative to the one near ``reference`` (Hann window)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)

    def peak(f: float) -> float:
        return float(spectrum[(freqs > f - 50) & (freqs < f + 50)].max())

    return 20 * np.log10(peak(freq) / peak(reference))


def child_processes(pid: int, name: str) -> list[int]:
    """Living children of ``pid`` whose command name is ``name`` (zombies don't burn CPU, so they don't count)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        state, ppid = text[text.rindex(")") + 2:].split()[:2]
        if int(ppid) == pid and comm == name and state != "Z":
            children.append(int(stat.parent.name))
    return children


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds; for effects that follow an RPC's end on another thread."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def my_ffmpeg_children() -> list[int]:
    return child_processes(os.getpid(), "ffmpeg")
