"""Find the largest face in a picture and crop it the way the training images are framed (`ffdi score
--faces`, and the frames stage's face crops of videos).

The detector was trained on face crops: multiFFDI images are aligned crops in which the face
fills roughly the middle 60% of the frame. A whole photo with a small face in it is another
distribution; cropping the face first gives the detector what it was trained on.

Faces are found with facenet-pytorch's MTCNN, whose weights ship inside its wheel (nothing is
downloaded). It is imported only when a FaceCropper is made, so plain scoring never loads it.
Here in the data layer, without torch at import, so that the frames stage depends on no model code;
ffdi.inference.faces adds decoding an image file.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ffdi.errors import BadImage, FfdiError

# The side of the square crop, as a multiple of the longer side of MTCNN's face box.
# multiFFDI's images are aligned crops in which the face fills about the middle 60% of the
# frame: a frame about 1 / 0.6 = 1.67x the face. 1.6x gives that framing (the face plus the band
# of hair, neck and background around it, where blending boundaries lie) while erring slightly
# tight, since MTCNN's box is not the face region the data set was aligned on.
MARGIN = 1.6
MIN_CONFIDENCE = 0.9  # MTCNN's own third-stage threshold is 0.7; keep only clear faces

Box = tuple[int, int, int, int]


class NoFace(BadImage):
    """No face found in an image scored with --faces."""


class FaceDetectorMissing(FfdiError):
    pass


class FaceCropper:
    def __init__(self, device="cpu", margin: float = MARGIN, min_confidence: float = MIN_CONFIDENCE):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as e:
            raise FaceDetectorMissing(
                f"--faces needs facenet-pytorch ({e}); install it with "
                "`pip install --no-deps facenet-pytorch==2.6.0` (make setup does)"
            ) from None
        self.mtcnn = MTCNN(keep_all=True, device=device)
        self.margin, self.min_confidence = margin, min_confidence

    def largest_face(self, img: Image.Image) -> Box | None:
        """The box (x0, y0, x1, y1) of the largest confident face, in pixels; None if there is none."""
        if min(img.size) < self.mtcnn.min_face_size:
            return None  # smaller than the smallest face MTCNN looks for (and it fails on these)
        try:
            boxes, probs = self.mtcnn.detect(img)
        except Exception as e:  # MTCNN fails on some degenerate inputs (a few pixels wide)
            raise BadImage(f"face detection failed ({type(e).__name__}: {e})") from None
        if boxes is None:
            return None
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        probs = np.asarray([0.0 if p is None else p for p in np.ravel(probs)], dtype=np.float64)
        keep = probs >= self.min_confidence
        if not keep.any():
            return None
        boxes = boxes[keep]
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        x0, y0, x1, y1 = boxes[int(areas.argmax())]
        w, h = img.size
        return (max(0, round(x0)), max(0, round(y0)), min(w, round(x1)), min(h, round(y1)))

    def crop_box(self, box: Box, size: tuple[int, int]) -> Box:
        """A square `margin` times the face's longer side, centred on the face, moved (not cut) to
        stay inside the image, and shrunk only where the image is smaller than the square.

        Square, because the detector resizes the shorter side and centre-crops: a non-square crop
        would lose part of the face again."""
        w, h = size
        x0, y0, x1, y1 = box
        side = min(round(max(x1 - x0, y1 - y0) * self.margin), w, h)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left = int(min(max(round(cx - side / 2), 0), w - side))
        top = int(min(max(round(cy - side / 2), 0), h - side))
        return (left, top, left + side, top + side)

    def crop(self, img: Image.Image, name: str = "image") -> tuple[Image.Image, Box]:
        """The crop of the largest face and the face's box; NoFace if there is none."""
        img = img.convert("RGB") if img.mode != "RGB" else img
        box = self.largest_face(img)
        if box is None:
            raise NoFace(f"{name}: no face found")
        return img.crop(self.crop_box(box, img.size)), box


NO_FACE = "no face found"
# Faces are searched for in a copy of the frame no longer than this, then cropped from the frame
# itself: MTCNN's time grows with the pixels (about 0.9 s a 1080p frame on one core here), and a
# face of 40 px in a 1080p frame is still 20 px, MTCNN's smallest, at this size.
FACE_SEARCH_SIDE = 960


def crop_face(faces, image: Image.Image) -> tuple[Image.Image, Box]:
    """FaceCropper.crop, searching a copy at most FACE_SEARCH_SIDE long and cropping the frame itself,
    so the crop keeps the frame's detail. NoFace where there is none."""
    scale = min(1.0, FACE_SEARCH_SIDE / max(image.size))
    if scale == 1.0:
        return faces.crop(image, "frame")
    small = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BILINEAR,
        reducing_gap=2.0,
    )
    box = faces.largest_face(small)
    if box is None:
        raise NoFace("frame: no face found")
    x0, y0, x1, y1 = (round(v / scale) for v in box)
    box = (max(0, x0), max(0, y0), min(image.width, x1), min(image.height, y1))
    return image.crop(faces.crop_box(box, image.size)), box
