"""Kaldi data directories and their audio, checked before anything is decoded.

A data directory holds ``text`` (``utt-id transcript``) and ``wav.scp``
(``recording-id path``, or ``recording-id command |``), and optionally
``segments`` (``utt-id recording-id start end``, in seconds).  Relative paths
in ``wav.scp`` are resolved against the data directory.

Every utterance is checked once, when the evaluator is built: the file must be
a mono 16-bit PCM WAV.  Its sample rate is compared with the rate the model's
features take (``--sample-frequency`` in ``conf/mfcc.conf``, 16000 when
unset):

* equal: decoded as is;
* different, and the feature config allows it (``--allow-downsample`` /
  ``--allow-upsample``, both true in the Vosk models): handed to Vosk at its
  own rate, and Kaldi's ``LinearResample`` inside the feature pipeline
  resamples it, exactly as in deployment;
* higher, but downsampling not allowed: resampled here
  (:func:`resample`, the same windowed-sinc design) before decoding;
* lower, and upsampling not allowed: refused, since the model was built for a
  bandwidth the audio does not have.

The decoder reads each utterance as a byte range of a file: the original WAV
when it can be used as is, otherwise a staging file holding what a command
printed or what was resampled here.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from kprune.errors import EvaluationError

log = logging.getLogger(__name__)

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_ALAW = 0x0006
_WAVE_FORMAT_MULAW = 0x0007
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_FORMAT_NAMES = {
    _WAVE_FORMAT_PCM: "PCM",
    _WAVE_FORMAT_IEEE_FLOAT: "IEEE float",
    _WAVE_FORMAT_ALAW: "A-law",
    _WAVE_FORMAT_MULAW: "mu-law",
}
#: Seconds a ``wav.scp`` command may run before it is given up.
COMMAND_TIMEOUT = 300.0


# --------------------------------------------------------------------------- data dir


@dataclass(frozen=True)
class Segment:
    """Where one utterance's audio is: a recording, and a time range in it."""

    recording: str
    start: float = 0.0
    end: float | None = None  # None: to the end of the recording


@dataclass(frozen=True)
class DataDir:
    """The parsed files of a Kaldi data directory."""

    path: Path
    text: dict[str, str]  # utt-id -> reference transcript, in file order
    wav_scp: dict[str, str]  # recording-id -> path or command, as written
    segments: dict[str, Segment]  # utt-id -> segment, for every utterance of text

    def wav_source(self, recording: str) -> str:
        return self.wav_scp[recording]


def _read_table(
    path: Path, fields: int, expected: str, min_fields: int | None = None
) -> Iterator[tuple[int, list[str]]]:
    """Lines of a Kaldi table file as (line number, fields), skipping blank lines.

    The first ``fields - 1`` whitespace-separated fields are split off and the
    rest of the line is the last field (a transcript, or a command).
    """
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EvaluationError(f"{path}: expected UTF-8 text, found a byte that is not ({e.reason} at byte {e.start})")
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=fields - 1)
        if len(parts) < (fields if min_fields is None else min_fields):
            raise EvaluationError(f"{path}, line {number}: expected '{expected}', found {line!r}")
        yield number, parts


def read_data_dir(path: Path, *, transcripts: bool = True, key: str = "eval.data") -> DataDir:
    """Read ``text``, ``wav.scp`` and ``segments`` and check that they agree.

    With ``transcripts=False`` (unlabelled audio, such as calibration data)
    ``text`` is not needed: the utterances are those of ``segments``, or else
    the recordings of ``wav.scp``, and their transcripts are empty.  ``key``
    names the setting that gave the path, for the error messages.
    """
    path = Path(path)
    needs = "wav.scp and text" if transcripts else "wav.scp"
    if not path.is_dir():
        what = "it is a file" if path.exists() else "it does not exist"
        raise EvaluationError(f"{key}: expected a Kaldi data directory with {needs} at {path}, but {what}")
    text_path, scp_path = path / "text", path / "wav.scp"
    for needed in (text_path, scp_path) if transcripts else (scp_path,):
        if not needed.is_file():
            raise EvaluationError(f"{needed}: missing; a Kaldi data directory needs {needs}")

    wav_scp: dict[str, str] = {}
    for number, parts in _read_table(scp_path, 2, "recording-id path-or-command"):
        if parts[0] in wav_scp:
            raise EvaluationError(f"{scp_path}, line {number}: recording {parts[0]} appears a second time")
        wav_scp[parts[0]] = parts[1].strip()

    text: dict[str, str] = {}
    if transcripts:
        for number, parts in _read_table(text_path, 2, "utt-id transcript", min_fields=1):
            utt_id, transcript = parts[0], (parts[1] if len(parts) > 1 else "")
            if utt_id in text:
                raise EvaluationError(f"{text_path}, line {number}: utterance {utt_id} appears a second time")
            text[utt_id] = transcript.strip()
        if not text:
            raise EvaluationError(f"{text_path}: empty; expected one 'utt-id transcript' line per utterance")
    if not wav_scp:
        raise EvaluationError(f"{scp_path}: empty; expected one 'recording-id path-or-command' line per recording")

    has_segments = (path / "segments").is_file()
    segments = _read_segments(path / "segments", text if transcripts else None) if has_segments else None
    if segments is None:
        segments = {utt: Segment(utt) for utt in (text if transcripts else wav_scp)}
    if not transcripts:
        text = {utt: "" for utt in segments}
    missing = [utt for utt, seg in segments.items() if seg.recording not in wav_scp]
    if missing:
        listed = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        source = "recordings of segments" if has_segments else "utterances of text"
        raise EvaluationError(f"{scp_path}: {len(missing)} {source} have no entry: {listed}")
    unused = len(set(wav_scp) - {seg.recording for seg in segments.values()})
    if unused:
        log.warning("%s: %d recordings have no transcript in %s and are not decoded", scp_path, unused, text_path)
    return DataDir(path, text, wav_scp, segments)


def _read_segments(path: Path, text: dict[str, str] | None) -> dict[str, Segment]:
    """The segments of the utterances of ``text`` (None: every segment, in file order)."""
    segments: dict[str, Segment] = {}
    for number, parts in _read_table(path, 4, "utt-id recording-id start end"):
        try:
            start, end = float(parts[2]), float(parts[3])
        except ValueError:
            raise EvaluationError(
                f"{path}, line {number}: expected 'utt-id recording-id start end' in seconds, found {' '.join(parts)!r}"
            )
        if not 0 <= start < end and not (start >= 0 and end == -1):
            raise EvaluationError(f"{path}, line {number}: expected 0 <= start < end, found start {start}, end {end}")
        segments[parts[0]] = Segment(parts[1], start, None if end == -1 else end)
    if text is None:
        return segments
    missing = [utt for utt in text if utt not in segments]
    if missing:
        listed = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise EvaluationError(f"{path}: {len(missing)} utterances of text have no segment: {listed}")
    return {utt: segments[utt] for utt in text}


# --------------------------------------------------------------------------- WAV


@dataclass(frozen=True)
class WavInfo:
    """The format of a WAV file and where its samples are."""

    format_tag: int
    channels: int
    rate: int
    bits: int
    data_offset: int  # byte offset of the first sample
    data_bytes: int  # length of the sample data in bytes

    @property
    def num_samples(self) -> int:
        return self.data_bytes // max(1, self.channels * self.bits // 8)

    @property
    def seconds(self) -> float:
        return self.num_samples / self.rate


def read_wav_info(f: BinaryIO, where: str, total_size: int | None = None) -> WavInfo:
    """Parse a RIFF/WAVE header from ``f`` and check it is mono 16-bit PCM.

    ``where`` names the file in error messages.  A ``data`` chunk that claims
    more bytes than there are (as streamed WAVs from ``sox ... - |`` do) is
    read to the end of the file.
    """
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        found = "an empty file" if not head else f"a file starting with {head[:4]!r}"
        raise EvaluationError(f"{where}: expected a 16-bit PCM WAV file (RIFF/WAVE header), found {found}")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            raise EvaluationError(f"{where}: WAV file ends at byte {pos} before its data chunk")
        chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        pos += 8
        if chunk_id == b"fmt ":
            body = f.read(size + (size & 1))
            if len(body) < 16:
                raise EvaluationError(
                    f"{where}: WAV fmt chunk at byte {pos - 8} is {len(body)} bytes, expected at least 16"
                )
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack("<H", body[24:26])[0]  # first two bytes of the SubFormat GUID
            fmt = (tag, channels, rate, bits)
            pos += len(body)
        elif chunk_id == b"data":
            if fmt is None:
                raise EvaluationError(f"{where}: WAV data chunk at byte {pos - 8} comes before any fmt chunk")
            if total_size is not None and (size == 0 or pos + size > total_size):
                size = total_size - pos
            info = WavInfo(fmt[0], fmt[1], fmt[2], fmt[3], pos, size)
            _check_format(info, where)
            return info
        else:
            skipped = f.read(size + (size & 1))
            pos += len(skipped)


def _check_format(info: WavInfo, where: str) -> None:
    if info.format_tag != _WAVE_FORMAT_PCM or info.bits != 16:
        name = _FORMAT_NAMES.get(info.format_tag, f"format 0x{info.format_tag:04x}")
        raise EvaluationError(
            f"{where}: expected 16-bit PCM WAV, found {info.bits}-bit {name}; "
            "convert it, e.g. sox IN -b 16 -e signed-integer OUT.wav"
        )
    if info.channels != 1:
        raise EvaluationError(
            f"{where}: expected mono 16-bit PCM WAV, found {info.channels} channels; e.g. sox IN OUT.wav remix 1"
        )
    if info.rate <= 0:
        raise EvaluationError(f"{where}: WAV header gives a sample rate of {info.rate} Hz")


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """Write mono int16 samples as a PCM WAV file (used for staged and test audio)."""
    data = np.asarray(samples, dtype="<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, _WAVE_FORMAT_PCM, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", len(data))
    Path(path).write_bytes(header + data)


# --------------------------------------------------------------------------- resampling


def resample(samples: np.ndarray, rate_in: int, rate_out: int, num_zeros: int = 6) -> np.ndarray:
    """Resample a signal with a Hann-windowed sinc filter (Kaldi's ``LinearResample``).

    The cut-off is 99% of the lower Nyquist frequency and the filter reaches
    ``num_zeros`` zero crossings each side.  The output has
    ``floor(len * rate_out / rate_in)`` samples; float64 in, float64 out.
    """
    if rate_in == rate_out:
        return np.asarray(samples, dtype=np.float64)
    x = np.asarray(samples, dtype=np.float64)
    g = math.gcd(rate_in, rate_out)
    step_in, step_out = rate_in // g, rate_out // g
    cutoff = 0.99 * 0.5 * min(rate_in, rate_out)
    width = num_zeros / (2.0 * cutoff)
    n_out = len(x) * rate_out // rate_in
    out = np.zeros(n_out)
    # Output samples p, p + step_out, ... share one set of filter taps, shifted
    # by step_in input samples each time.
    for phase in range(min(step_out, n_out)):
        t = phase / rate_out
        first, last = math.ceil((t - width) * rate_in), math.floor((t + width) * rate_in)
        taps = np.arange(first, last + 1)
        dt = taps / rate_in - t
        window = np.where(np.abs(dt) < width, 0.5 * (1 + np.cos(2 * np.pi * cutoff / num_zeros * dt)), 0.0)
        safe_dt = np.where(dt == 0, 1.0, dt)
        sinc = np.where(dt == 0, 2 * cutoff, np.sin(2 * np.pi * cutoff * dt) / (np.pi * safe_dt))
        weights = window * sinc / rate_in
        outputs = np.arange(phase, n_out, step_out)
        idx = ((outputs - phase) // step_out * step_in)[:, None] + taps[None, :]
        valid = (idx >= 0) & (idx < len(x))
        out[outputs] = (np.where(valid, x[np.clip(idx, 0, len(x) - 1)], 0.0) * weights).sum(axis=1)
    return out


# --------------------------------------------------------------------------- model's rate


@dataclass(frozen=True)
class FeatureConf:
    """What the model's feature extraction takes: rate and resampling permission."""

    rate: int = 16000
    allow_upsample: bool = False
    allow_downsample: bool = False
    source: str = "Kaldi defaults"


def read_feature_conf(conf_path: Path | None) -> FeatureConf:
    """Read ``--sample-frequency``, ``--allow-upsample``, ``--allow-downsample``.

    Kaldi's defaults apply to what the file does not set (16000, false, false);
    ``None`` or a missing file gives the defaults.
    """
    if conf_path is None or not Path(conf_path).is_file():
        return FeatureConf()
    values: dict[str, str] = {}
    for line in Path(conf_path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("--") and "=" in line:
            key, value = line[2:].split("=", 1)
            values[key.replace("_", "-")] = value.strip()

    def flag(name: str) -> bool:
        return values.get(name, "false").lower() in ("true", "1")

    try:
        rate = int(float(values.get("sample-frequency", "16000")))
    except ValueError:
        raise EvaluationError(f"{conf_path}: --sample-frequency={values['sample-frequency']!r} is not a number")
    return FeatureConf(rate, flag("allow-upsample"), flag("allow-downsample"), str(conf_path))


# --------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class AudioItem:
    """One utterance ready for the decoder: a byte range of 16-bit samples."""

    utt_id: str
    path: Path
    offset: int
    nbytes: int
    rate: int  # the rate handed to the recogniser

    @property
    def seconds(self) -> float:
        return self.nbytes / 2 / self.rate


@dataclass(frozen=True)
class PreparedAudio:
    """All utterances of a data directory, checked, with a digest of their samples."""

    items: tuple[AudioItem, ...]
    digest: str  # hash of every sample and rate, for cache keys
    seconds: float


class _Recording:
    """A recording's samples, read once: from a file in place or from a command."""

    def __init__(self, recording: str, source: str, data_dir: Path, staging: Path, allow_pipes: bool = True):
        self.where = f"{data_dir / 'wav.scp'} ({recording})"
        if source.endswith("|"):
            command = source[:-1].strip()
            if not allow_pipes:
                raise EvaluationError(
                    f"{self.where}: expected a WAV file, found the shell command '{command} |', "
                    "which eval.allow_pipes=false refuses to run"
                )
            data = _run_wav_command(command, data_dir, self.where)
            self.path = staging / f"cmd-{hashlib.sha1(source.encode()).hexdigest()[:16]}.wav"
            self.path.write_bytes(data)
            self.where = f"output of '{command}' ({self.where})"
        else:
            if ".ark:" in source or source.endswith(".ark"):
                raise EvaluationError(
                    f"{self.where}: archive entries ({source}) are not supported; "
                    "list WAV files or commands ending in '|'"
                )
            path = Path(source)
            self.path = path if path.is_absolute() else data_dir / path
            if not self.path.is_file():
                raise EvaluationError(f"{self.where}: audio file {self.path} does not exist")
            self.where = str(self.path)
        with open(self.path, "rb") as f:
            self.info = read_wav_info(f, self.where, self.path.stat().st_size)


def _run_wav_command(command: str, cwd: Path, where: str) -> bytes:
    try:
        result = subprocess.run(
            command, shell=True, cwd=cwd, capture_output=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise EvaluationError(f"{where}: command '{command}' ran past {COMMAND_TIMEOUT:.0f} s")
    if result.returncode != 0:
        detail = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise EvaluationError(
            f"{where}: command '{command}' failed with exit status {result.returncode}"
            + (f": {detail[-1]}" if detail else "")
        )
    return result.stdout


def prepare_audio(data: DataDir, features: FeatureConf, staging: Path, allow_pipes: bool = True) -> PreparedAudio:
    """Check every utterance's audio and give the byte ranges the decoder reads.

    ``staging`` is a directory for audio that cannot be read in place (command
    output, audio resampled here); it must live as long as the items are used.
    A ``wav.scp`` entry ending in ``|`` is a shell command (Kaldi's convention),
    run from the data directory; ``allow_pipes=False`` refuses it instead.
    """
    staging.mkdir(parents=True, exist_ok=True)
    recordings: dict[str, _Recording] = {}
    items: list[AudioItem] = []
    digest = hashlib.blake2b(digest_size=20)
    resampled_store = staging / "resampled.pcm"
    allowed_native: set[int] = set()
    for utt_id, segment in data.segments.items():
        rec = recordings.get(segment.recording)
        if rec is None:
            source = data.wav_source(segment.recording)
            rec = recordings[segment.recording] = _Recording(segment.recording, source, data.path, staging,
                                                             allow_pipes)
        info = rec.info
        first = 0 if segment.start == 0 else int(round(segment.start * info.rate))
        last = info.num_samples if segment.end is None else min(info.num_samples, int(round(segment.end * info.rate)))
        if first >= last:
            span = "" if segment.start == 0 and segment.end is None else f" between {segment.start} and {segment.end} s"
            raise EvaluationError(
                f"{rec.where}: no audio samples for utterance {utt_id}{span}; the file holds {info.seconds:.2f} s"
            )
        item = AudioItem(utt_id, rec.path, info.data_offset + 2 * first, 2 * (last - first), info.rate)
        with open(rec.path, "rb") as f:
            f.seek(item.offset)
            raw = f.read(item.nbytes)
        if len(raw) != item.nbytes:
            raise EvaluationError(
                f"{rec.where}: expected {item.nbytes} bytes of samples for {utt_id} at byte {item.offset}, found {len(raw)}"
            )
        if info.rate != features.rate:
            item, raw = _adapt_rate(item, raw, features, rec.where, resampled_store)
            if item.rate != features.rate:
                allowed_native.add(item.rate)
        digest.update(f"{utt_id}\0{item.rate}\0{len(raw)}\0".encode())
        digest.update(raw)
        items.append(item)
    if allowed_native:
        log.info(
            "audio at %s Hz is passed to Vosk at its own rate; Kaldi resamples it to %d Hz (%s)",
            ", ".join(map(str, sorted(allowed_native))), features.rate, features.source,
        )
    return PreparedAudio(tuple(items), digest.hexdigest(), sum(i.seconds for i in items))


def _adapt_rate(
    item: AudioItem, raw: bytes, features: FeatureConf, where: str, store: Path
) -> tuple[AudioItem, bytes]:
    """Decide how audio at another rate reaches the model (see the module doc)."""
    higher = item.rate > features.rate
    if (features.allow_downsample if higher else features.allow_upsample):
        return item, raw
    if not higher:
        raise EvaluationError(
            f"{where}: sample rate {item.rate} Hz is below the {features.rate} Hz the model takes, "
            f"and its feature config ({features.source}) does not allow upsampling (--allow-upsample)"
        )
    samples = resample(np.frombuffer(raw, dtype="<i2"), item.rate, features.rate)
    out = np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()
    with open(store, "ab") as f:
        offset = f.tell()
        f.write(out)
    log.debug("%s: resampled %d -> %d Hz", where, item.rate, features.rate)
    return AudioItem(item.utt_id, store, offset, len(out), features.rate), out


# --------------------------------------------------------------------------- shared audio


def recording_digests(data: DataDir, allow_pipes: bool = True) -> dict[str, str]:
    """Recording id -> digest of its samples (the WAV data, not the header), for every recording used.

    Two data directories that hold the same audio, under other names, in other
    files or with other headers, give the same digest for it.
    """
    import shutil
    import tempfile

    used = dict.fromkeys(seg.recording for seg in data.segments.values())
    out = {}
    staging = Path(tempfile.mkdtemp(prefix="kprune-digest-"))
    try:
        for recording in used:
            rec = _Recording(recording, data.wav_source(recording), data.path, staging, allow_pipes)
            digest = hashlib.blake2b(digest_size=20)
            left = rec.info.data_bytes
            with open(rec.path, "rb") as f:
                f.seek(rec.info.data_offset)
                while left > 0:
                    block = f.read(min(left, 1 << 20))
                    if not block:
                        break
                    digest.update(block)
                    left -= len(block)
            out[recording] = digest.hexdigest()
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # made here, holds only command output
    return out


def check_no_shared_audio(scored: DataDir, calibration: DataDir, *, allow_pipes: bool = True) -> None:
    """Refuses to score on calibration audio: raises if the two data directories share any recording's samples."""
    calib = {d: r for r, d in recording_digests(calibration, allow_pipes).items()}
    for recording, digest in recording_digests(scored, allow_pipes).items():
        if digest in calib:
            raise EvaluationError(
                f"eval.data {scored.path} and calib.data {calibration.path} share audio: recording {recording} "
                f"of eval.data is {calib[digest]} of calib.data; never score on the calibration audio "
                "(use disjoint data directories)")
