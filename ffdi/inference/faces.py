"""Faces in image files: ffdi.data.faces's FaceCropper, which also decodes a file (ffdi.data.transforms)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ffdi.data import faces as _faces
from ffdi.data.faces import MARGIN, MIN_CONFIDENCE, Box, FaceDetectorMissing, NoFace
from ffdi.data.transforms import load_image

__all__ = ["MARGIN", "MIN_CONFIDENCE", "Box", "FaceCropper", "FaceDetectorMissing", "NoFace"]


class FaceCropper(_faces.FaceCropper):
    def crop_file(self, path: str | Path) -> tuple[Image.Image, Box]:
        """Decode at full resolution (small faces need the pixels), then crop."""
        return self.crop(load_image(path), str(path))
