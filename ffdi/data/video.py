"""Decoding videos: frames sampled by seeking, turned upright, as RGB PIL images; one verdict per video
from its frames' scores (`aggregate`); writing test clips.

`sample_frames` opens a video (a path or a file object) with PyAV and yields the frames at the
sampling's target times: K uniformly spread over the video (`Sampling(frames=K)`), or F per
second (`Sampling(fps=F)`). It seeks when a keyframe lies between the last decoded frame and the
next target, and decodes forward otherwise, so sparse sampling of a long video decodes a small part
of it. The frame taken for a target time is the first one shown at or after it. Frames come out as
RGB PIL images, rotated upright by the stream's display matrix (phones record portrait video
sideways and say so there).

A video that cannot be used raises BadVideo naming the problem: not a video, truncated, audio
only, no frames, frames too large, an unsupported rotation.

Here in the data layer, not with the Detector (ffdi.inference.video scores videos): the frames stage
turns videos into the images training reads, and must not depend on the model's code (a change
there would decode every video again).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from ffdi.config import parse_aggregate
from ffdi.data.labels import VIDEO_SUFFIXES
from ffdi.errors import DataError

Source = str | Path | IO[bytes]

# Container formats taken as videos (FFmpeg's demuxer names). FFmpeg also opens a JPEG or a text
# file as a one-frame "video" (jpeg_pipe, tty): such a file named .mp4 is not one.
CONTAINERS = ("mov", "mp4", "matroska", "webm", "avi")
# Larger frames are refused before decoding: a small file can declare enormous frames. 8K UHD.
MAX_FRAME_PIXELS = 7680 * 4320
# Without a keyframe index, seek only across gaps longer than this: a seek lands on the keyframe
# before the target and decodes from there, which only pays when that skips frames.
SEEK_GAP_S = 2.0
# The stream ending this much (or 5%) before its declared duration is a truncated file.
TRUNCATION_SLACK_S = 0.5
DEFAULT_FRAMES = 16  # as eval.video_frames' default
EPS = 1e-6  # seconds: a target time equal to a frame's, up to float rounding


class BadVideo(DataError):
    """A video file that cannot be scored; the message says why."""


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def sniff_video(data: bytes) -> bool:
    """Whether encoded bytes start like an MP4/MOV, Matroska/WebM or AVI file (for requests,
    which carry no file name)."""
    return (
        data[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
        or data[:4] == b"\x1aE\xdf\xa3"
        or (data[:4] == b"RIFF" and data[8:12] == b"AVI ")
    )


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video: `frames` uniformly spread (16 where neither is given), or `fps` per second."""

    frames: int | None = None
    fps: float | None = None

    def __post_init__(self):
        if self.frames is not None and self.fps is not None:
            raise DataError("give --frames or --fps, not both")
        if self.frames is None and self.fps is None:
            object.__setattr__(self, "frames", DEFAULT_FRAMES)
        if self.frames is not None and self.frames < 1:
            raise DataError(f"--frames must be at least 1, got {self.frames}")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise DataError(f"--fps must be a positive number, got {self.fps}")

    def describe(self) -> str:
        return f"{self.frames} frames" if self.fps is None else f"{self.fps:g} fps"

    def targets(self, start: float, end: float) -> list[float]:
        """Target times in [start, end): K at the starts of K equal parts, or every 1/fps s."""
        span = max(end - start, 0.0)
        if self.fps is None:
            return [start + span * i / self.frames for i in range(self.frames)]
        return [start + j / self.fps for j in range(max(1, math.ceil(span * self.fps - EPS)))]


@dataclass
class Frame:
    time: float  # seconds, from the stream's timestamps
    image: Image.Image  # RGB, upright


# --- decoding ----------------------------------------------------------------------------------


def _open(source: Source, name: str):
    import av

    if isinstance(source, (str, Path)):
        if not os.path.exists(source):
            raise BadVideo(f"{name}: file not found")
        if os.path.isdir(source):
            raise BadVideo(f"{name}: is a directory, not a video")
        if os.path.getsize(source) == 0:
            raise BadVideo(f"{name}: empty file")
        with open(source, "rb") as f:
            head = f.read(16)
    else:
        pos = source.tell()
        head = source.read(16)
        source.seek(pos)
        if not head:
            raise BadVideo(f"{name}: empty file")
    try:
        container = av.open(source if isinstance(source, (str, Path)) else source, "r")
    except av.error.EOFError:
        raise BadVideo(f"{name}: truncated or empty: the file ends inside its header") from None
    except av.error.FFmpegError as e:
        if sniff_video(head):  # starts like a video: its index or header is cut or damaged
            raise BadVideo(
                f"{name}: truncated or corrupt video: cannot read its header or index ({e.strerror})"
            ) from None
        raise BadVideo(f"{name}: not a video file ({e.strerror})") from None
    formats = container.format.name.split(",")
    if not any(f in CONTAINERS for f in formats):
        long_name = container.format.long_name
        container.close()
        raise BadVideo(
            f"{name}: not a video file (its content reads as {long_name}); videos: {', '.join(sorted(VIDEO_SUFFIXES))}"
        )
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        raise BadVideo(
            f"{name}: no video stream"
            + (" (audio only)" if kinds == ["audio"] else f" (streams: {', '.join(kinds) or 'none'})")
        )
    stream = container.streams.video[0]
    w, h = stream.codec_context.width, stream.codec_context.height
    if w * h > MAX_FRAME_PIXELS:
        container.close()
        raise BadVideo(f"{name}: frames of {w}x{h} px, over the {MAX_FRAME_PIXELS / 1e6:.0f} Mpx of 8K: refused")
    return container, stream


def _extent(container, stream) -> tuple[float, float | None]:
    """(start, end) of the video stream in seconds; end None when the file does not say."""
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    if stream.duration:
        return start, start + float(stream.duration * tb)
    if container.duration:  # the container's, in AV_TIME_BASE (microseconds); may include audio
        c_start = (container.start_time or 0) / 1e6
        return start, c_start + container.duration / 1e6
    if stream.frames and stream.average_rate:
        return start, start + stream.frames / float(stream.average_rate)
    return start, None


def _scan_end(container, stream) -> float | None:
    """The end of the last packet, read without decoding (for files that declare no duration)."""
    end = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            t = float((packet.pts + (packet.duration or 0)) * stream.time_base)
            end = t if end is None else max(end, t)
    if end is not None:
        container.seek(0)
    return end


def _keyframe_times(stream) -> list[float]:
    """Times of the keyframes the container indexes (MP4 lists every sample, Matroska its cues)."""
    try:
        return sorted(float(e.timestamp * stream.time_base) for e in stream.index_entries if e.is_keyframe)
    except (AttributeError, TypeError):
        return []


def _variable_rate(stream) -> bool:
    """Whether the frames come at a variable rate: their mean rate is not the stream's base rate."""
    mean, base = stream.average_rate, stream.guessed_rate
    return bool(mean and base) and abs(float(mean) / float(base) - 1) > 0.01


def _upright(image: Image.Image, rotation: int, name: str) -> Image.Image:
    """Apply the display matrix's rotation (degrees counterclockwise, as FFmpeg reports it)."""
    turn = round(rotation) % 360
    if turn == 0:
        return image
    if turn % 90:
        raise BadVideo(
            f"{name}: its display matrix rotates frames by {rotation} degrees; only quarter turns are supported"
        )
    return image.transpose(
        {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}[turn]
    )


def sample_frames(source: Source, sampling: Sampling = Sampling(), name: str | None = None) -> Iterator[Frame]:
    """The frames of `sampling`, upright RGB, in time order; BadVideo names what went wrong.

    Frames already yielded stay valid when a later one fails (a truncated file raises at its cut).
    """
    import av

    name = name or (str(source) if isinstance(source, (str, Path)) else "video")
    container, stream = _open(source, name)
    with container:
        stream.thread_type = "AUTO"  # frame threads: decoding is most of the work on a CPU
        start, end = _extent(container, stream)
        if end is None or _variable_rate(stream):
            # No duration, or one that may be wrong: at a variable frame rate an MP4's duration is
            # the sum of its packets' durations, which encoders may set short. The packets'
            # timestamps say where the video ends (read, not decoded: a pass over the file's bytes).
            end = max(filter(None, (end, _scan_end(container, stream))), default=None)
        keyframes = _keyframe_times(stream)
        if end is None or end <= start:
            raise BadVideo(f"{name}: no video frames")
        targets = sampling.targets(start, end)
        tb = stream.time_base
        last = None  # the last decoded frame: its time tells where decoding stands
        last_taken = None
        frames = None
        yielded = 0
        i = 0
        try:
            while i < len(targets):
                t = targets[i]
                if last_taken is not None and last_taken >= t - EPS:
                    i += 1  # this target falls on the frame already taken: each frame once
                    continue
                if frames is None or _should_seek(last.time if last is not None else None, t, keyframes):
                    container.seek(max(0, math.floor(t / tb)), stream=stream, backward=True)
                    frames = container.decode(stream)
                for frame in frames:
                    if frame.time is None:
                        continue
                    last = frame
                    if frame.time >= t - EPS:
                        last_taken = frame.time
                        yielded += 1
                        yield Frame(frame.time, _upright(frame.to_image(), frame.rotation, name))
                        i += 1
                        break
                else:
                    break  # the stream ended before target i
        except av.error.FFmpegError as e:
            at = f"{last.time:.2f} s" if last is not None else "its start"
            raise BadVideo(
                f"{name}: truncated or corrupt: decoding failed after {at} of {end - start:.2f} s ({e.strerror})"
            ) from None
        if i < len(targets) and last is not None:
            shown_until = last.time + _frame_span(last, stream)
            if end - shown_until > max(TRUNCATION_SLACK_S, 0.05 * (end - start)):
                raise BadVideo(
                    f"{name}: truncated: its frames stop at {shown_until:.2f} s, its header says {end:.2f} s"
                )
            if last_taken != last.time:
                # Target i falls while the last frame is on screen, after it began (K frames from a
                # video of fewer, or a last 1/fps step past the last frame's start): that frame.
                yielded += 1
                yield Frame(last.time, _upright(last.to_image(), last.rotation, name))
        if yielded == 0:
            raise BadVideo(f"{name}: no video frames")


def _frame_span(frame, stream) -> float:
    """How long a frame stays on screen: its own duration, else one frame at the stream's rate."""
    if frame.duration:
        return float(frame.duration * frame.time_base)
    rate = stream.average_rate or stream.guessed_rate
    return 1 / float(rate) if rate else 0.0


def _should_seek(here: float | None, target: float, keyframes: Sequence[float]) -> bool:
    """Seek when it skips decoding: a keyframe lies after the last decoded frame and at or before
    the target (the seek lands there). Without an index, seek across long gaps only."""
    if here is None:
        here = -math.inf
    if len(keyframes) > 1:
        import bisect

        k = bisect.bisect_right(keyframes, target + EPS) - 1
        return k >= 0 and keyframes[k] > here + EPS
    return target - here > SEEK_GAP_S


def aggregate(probs: Sequence[float], how: str = "mean") -> float:
    """A video's P(fake) from its frames': mean, max, or topk:K (the mean of the K highest; all
    of them where there are fewer)."""
    kind, k = parse_aggregate(how)
    p = np.asarray(probs, dtype=np.float64)
    if p.size == 0:
        raise ValueError("no frame scores to aggregate")
    if kind == "mean":
        return float(p.mean())
    if kind == "max":
        return float(p.max())
    return float(np.sort(p)[-k:].mean())


def per_video_scores(
    videos: Sequence[str], probs: Sequence[float], how: str, every: Iterable[str] = (), missing: float = 0.5
) -> dict[str, float]:
    """{video_name: P(fake)}: each video's frames' scores (`videos[i]` is frame i's video) aggregated by `how`,
    in the order of their first frame; then each video of `every` that has no scored frame (a video the
    frames stage left out, frames that could not be read) at `missing`."""
    frames: dict[str, list[float]] = {}
    for v, p in zip(videos, probs):
        frames.setdefault(v, []).append(float(p))
    out = {v: aggregate(p, how) for v, p in frames.items()}
    out.update({v: missing for v in every if v not in out})
    return out


# --- writing (test clips, benchmark clips, labelled sets made from images) -----------------------


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict | None = None,
    rotation: int | None = None,
    times: Sequence[float] | None = None,
) -> Path:
    """Encode uint8 (H, W, 3) RGB frames into a video file; the container follows the suffix.

    codec "ffv1" (pix_fmt "bgr0") or "libx264rgb" (options {"qp": "0"}) are lossless.
    rotation: a display matrix turning the frames this many degrees counterclockwise on playback.
    times: each frame's timestamp in seconds (a variable frame rate), instead of 1/fps apart.
    """
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = dict(options)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for n, rgb in enumerate(frames):
            if n == 0:
                stream.height, stream.width = rgb.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[n] * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
