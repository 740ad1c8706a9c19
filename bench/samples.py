"""Sample media: voice notes in every format WhatsApp and Telegram deliver, made with espeak-ng, sox and
ffmpeg (never committed), for the tests, the benchmarks and anyone trying the bot by hand.

    make samples        # = python -m bench.samples [DIR]: voice.ogg and photo.jpg in DIR (default: here)

``voice.ogg`` is a WhatsApp-style voice note (Opus in Ogg, 16 kHz mono) of espeak-ng speech; ``photo.jpg`` a
portrait with one clear face (Grace Hopper, from matplotlib's sample data: bench/photo_set.py). They are what
the README's simulator lines send. The tests take the formats from here (tests/fixtures/audio.py), so a test
that passes means a real voice note works.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from bench.photo_set import face_photo

# What a sentence of espeak-ng speech says; long enough (about 4 s) to span many codec frames.
SPEECH_TEXT = "Hello from the media bot tests. This voice note checks that every format converts cleanly."

# Format name -> (file suffix, content type that Twilio declares for it).
AUDIO_FORMATS: dict[str, tuple[str, str]] = {
    "ogg_opus": (".ogg", "audio/ogg"),  # WhatsApp voice notes
    "mp3": (".mp3", "audio/mpeg"),
    "m4a": (".m4a", "audio/mp4"),  # AAC, moov index at the end (ffmpeg's default): needs a seekable input
    "m4a_faststart": (".m4a", "audio/x-m4a"),  # AAC, moov index first
    "aac_adts": (".aac", "audio/aac"),
    "amr_nb": (".amr", "audio/amr"),
    "wav": (".wav", "audio/wav"),
    "flac": (".flac", "audio/flac"),
    "webm_opus": (".webm", "audio/webm"),
    "3gp": (".3gp", "audio/3gpp"),  # AMR-NB in a 3GPP container, as older phones send it
}

# Encoder options per format, applied to the espeak-ng speech; sample rates and channel counts vary on
# purpose so the service's resampling and down-mixing are exercised, not only its decoding.
_FFMPEG_ENCODE: dict[str, list[str]] = {
    "ogg_opus": ["-ar", "16000", "-ac", "1", "-c:a", "libopus", "-b:a", "24k", "-application", "voip", "-f", "ogg"],
    "mp3": ["-ar", "44100", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "96k", "-f", "mp3"],
    "m4a": ["-ar", "44100", "-ac", "1", "-c:a", "aac", "-b:a", "64k", "-f", "ipod"],
    "m4a_faststart": ["-ar", "48000", "-ac", "2", "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", "-f", "ipod"],
    "aac_adts": ["-ar", "22050", "-ac", "1", "-c:a", "aac", "-b:a", "48k", "-f", "adts"],
    "wav": ["-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le", "-f", "wav"],
    "flac": ["-ar", "48000", "-ac", "1", "-c:a", "flac", "-f", "flac"],
    "webm_opus": ["-ar", "48000", "-ac", "1", "-c:a", "libopus", "-b:a", "32k", "-f", "webm"],
}


def _run(args: list[str]) -> None:
    subprocess.run(args, check=True, stdin=subprocess.DEVNULL, capture_output=True)


def make_speech_wav(directory: Path, text: str = SPEECH_TEXT, name: str = "speech.wav") -> Path:
    """Speech rather than tones: codecs like Opus and AMR are tuned for it, so it is what they must get right."""
    path = directory / name
    if not path.exists():
        _run(["espeak-ng", "-w", str(path), text])
    return path


def make_sample(fmt: str, directory: Path, *, text: str = SPEECH_TEXT) -> Path:
    """Encode espeak-ng speech as ``fmt`` (a key of AUDIO_FORMATS) in ``directory``; cached by file name."""
    suffix, _ = AUDIO_FORMATS[fmt]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{fmt}{suffix}"
    if path.exists():
        return path
    speech = make_speech_wav(directory, text)
    if fmt in ("amr_nb", "3gp"):
        # ffmpeg here has no AMR encoder; sox does (libopencore). Its encoder always enables DTX, and ffmpeg's
        # native AMR decoder cannot decode DTX comfort-noise frames, so keep a low noise floor under the
        # speech to stop the voice activity detector from ever switching to DTX.
        amr = directory / "amr_nb.amr"
        if not amr.exists():
            noisy = directory / "speech_8k_noise.wav"
            _run(["ffmpeg", "-nostdin", "-y", "-i", str(speech), "-filter_complex",
                  "anoisesrc=color=white:amplitude=0.05:r=22050[n];[0:a][n]amix=inputs=2:duration=first:normalize=0",
                  "-ar", "8000", "-ac", "1", str(noisy)])
            _run(["sox", str(noisy), "-t", "amr-nb", str(amr)])
        if fmt == "3gp":
            _run(["ffmpeg", "-nostdin", "-y", "-i", str(amr), "-c:a", "copy", "-f", "3gp", str(path)])
        return path
    _run(["ffmpeg", "-nostdin", "-y", "-i", str(speech), *_FFMPEG_ENCODE[fmt], str(path)])
    return path


def content_type_of(fmt: str) -> str:
    """The MediaContentType Twilio would declare for a sample of ``fmt``."""
    return AUDIO_FORMATS[fmt][1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.samples", description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=Path("."),
                        help="where to write voice.ogg and photo.jpg (default: the current directory)")
    directory: Path = parser.parse_args(argv).directory
    missing = [tool for tool in ("espeak-ng", "ffmpeg") if shutil.which(tool) is None]
    if missing:
        print(f"samples: {' and '.join(missing)} not found (sudo apt-get install -y {' '.join(missing)})",
              file=sys.stderr)
        return 1
    directory.mkdir(parents=True, exist_ok=True)
    voice = make_sample("ogg_opus", directory / ".speech")
    (directory / "voice.ogg").write_bytes(voice.read_bytes())
    shutil.rmtree(directory / ".speech")
    (directory / "photo.jpg").write_bytes(face_photo())
    print(f"wrote {directory / 'voice.ogg'} and {directory / 'photo.jpg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
