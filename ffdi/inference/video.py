"""Videos scored by the Detector: the sampled frames (ffdi.data.video decodes them), one verdict per video.

`score_video` streams a video's frames through the Detector a batch at a time (memory stays flat in
the video's length), optionally on the crop of each frame's largest face, and aggregates the frames'
P(fake) into the video's with `aggregate` (mean | max | topk:K). A video that cannot be used (BadVideo:
not a video, truncated, audio only, no frames, frames too large, an unsupported rotation) becomes the
error of its result, so one bad file never stops a run.

The decoding names (sample_frames, Sampling, BadVideo, write_video, ...) are re-exported from here for the
callers that score videos.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ffdi.config import parse_aggregate
from ffdi.data.faces import FACE_SEARCH_SIDE, NO_FACE, crop_face
from ffdi.data.video import (
    CONTAINERS,
    DEFAULT_FRAMES,
    MAX_FRAME_PIXELS,
    BadVideo,
    Frame,
    Sampling,
    Source,
    _should_seek,
    aggregate,
    is_video,
    sample_frames,
    sniff_video,
    write_video,
)
from ffdi.errors import BadImage
from ffdi.inference.faces import NoFace

__all__ = [
    "CONTAINERS",
    "DEFAULT_FRAMES",
    "FACE_SEARCH_SIDE",
    "MAX_FRAME_PIXELS",
    "NO_FACE",
    "BadVideo",
    "Frame",
    "FrameScore",
    "Sampling",
    "VideoScore",
    "_should_seek",
    "aggregate",
    "crop_face",
    "is_video",
    "sample_frames",
    "score_video",
    "sniff_video",
    "write_video",
]


@dataclass
class FrameScore:
    time: float
    p_fake: float | None = None
    error: str = ""  # e.g. "no face found": recorded, not fatal
    face_box: tuple[int, int, int, int] | None = None


@dataclass
class VideoScore:
    path: str
    aggregate: str
    frames: list[FrameScore] = field(default_factory=list)
    score: float | None = None
    error: str = ""
    # With keep_top=K: the K highest-scoring frames as (p_fake, time, the uint8 pixels the Detector
    # scored), highest first, for `ffdi explain`.
    top: list = field(default_factory=list)

    @property
    def frames_scored(self) -> int:
        return sum(f.p_fake is not None for f in self.frames)

    @property
    def frames_without_face(self) -> int:
        return sum(f.error == NO_FACE for f in self.frames)

    def probs(self) -> list[float]:
        return [f.p_fake for f in self.frames if f.p_fake is not None]


def score_video(
    detector,
    source: Source,
    sampling: Sampling = Sampling(),  # noqa: B008 (a frozen dataclass, shared safely)
    how: str = "mean",
    *,
    batch_size: int = 64,
    faces=None,
    name: str | None = None,
    keep_top: int = 0,
) -> VideoScore:
    """Score the sampled frames of one video, `batch_size` at a time, and aggregate them.

    detector: a Detector or an Ensemble (its preprocess and prob_batch), so each frame gets the
    number `ffdi score` gives the same picture as an image file. faces: a FaceCropper; each frame is
    then scored on its largest face, and a frame without one is recorded (error "no face found").
    Never raises for a bad video: the result's error says what was wrong; the frames scored before
    a failure keep their scores (for --per-frame), but the video gets no score.
    keep_top: keep the pixels of this many highest-scoring frames (result.top); memory stays that
    of those and one batch.
    """
    import heapq

    name = name or (str(source) if isinstance(source, (str, Path)) else "video")
    parse_aggregate(how)
    result = VideoScore(name, how)
    pending: list[tuple[FrameScore, object]] = []

    heap: list = []  # (p_fake, -time, time, pixels): the lowest of the kept on top

    def flush() -> None:
        if pending:
            for (fs, px), p in zip(pending, detector.prob_batch([px for _, px in pending])):
                fs.p_fake = float(p)
                if keep_top:
                    item = (fs.p_fake, -fs.time, fs.time, px)
                    (heapq.heappush if len(heap) < keep_top else heapq.heappushpop)(heap, item)
            pending.clear()

    try:
        for frame in sample_frames(source, sampling, name):
            fs = FrameScore(frame.time)
            result.frames.append(fs)
            image = frame.image
            if faces is not None:
                try:
                    image, fs.face_box = crop_face(faces, image)
                except NoFace:
                    fs.error = NO_FACE
                    continue
                except BadImage as e:
                    fs.error = str(e).removeprefix("frame: ")
                    continue
            pending.append((fs, detector.preprocess(image)))
            del frame, image
            if len(pending) >= batch_size:
                flush()
        flush()
    except BadVideo as e:
        flush()
        result.error = str(e).removeprefix(f"{name}: ")
        return result
    probs = result.probs()
    if not probs:
        result.error = (
            f"no face in any of the {len(result.frames)} frames sampled"
            if faces is not None
            else "no frame could be scored"
        )
        return result
    result.score = aggregate(probs, how)
    result.top = [(p, t, px) for p, _, t, px in sorted(heap, key=lambda e: (-e[0], e[2]))]
    return result
