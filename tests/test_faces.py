"""`ffdi score --faces`: the largest face found offline, cropped as the training images are framed."""

import pandas as pd
import pytest
from PIL import Image
from skimage import data

from ffdi.cli import score
from ffdi.inference.detector import Detector
from ffdi.inference.faces import MARGIN, FaceCropper
from tests.test_score import random_checkpoint

# scikit-image's astronaut(): MTCNN's box for her face, in the 512 px photo.
ASTRONAUT_FACE = (181, 62, 268, 172)
OFFSET = (600, 300)  # where the photo goes on a larger, plain canvas


@pytest.fixture(scope="module")
def cropper():
    return FaceCropper()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    canvas = Image.new("RGB", (1200, 900), (120, 120, 120))
    canvas.paste(Image.fromarray(data.astronaut()), OFFSET)
    canvas.save(folder / "astronaut_off_centre.png")
    Image.fromarray(data.coffee()).save(folder / "coffee.png")
    return folder


def test_finds_the_face_where_it_is(cropper, photos):
    box = cropper.largest_face(Image.open(photos / "astronaut_off_centre.png").convert("RGB"))
    expected = (
        ASTRONAUT_FACE[0] + OFFSET[0],
        ASTRONAUT_FACE[1] + OFFSET[1],
        ASTRONAUT_FACE[2] + OFFSET[0],
        ASTRONAUT_FACE[3] + OFFSET[1],
    )
    assert box == pytest.approx(expected, abs=8)


def test_no_face_is_none_not_a_crash(cropper, photos):
    assert cropper.largest_face(Image.open(photos / "coffee.png").convert("RGB")) is None
    assert cropper.largest_face(Image.new("RGB", (8, 8))) is None  # smaller than any face MTCNN looks for


def test_the_crop_is_a_square_around_the_face_inside_the_image(cropper):
    # In the middle: MARGIN x the longer side, centred on the face.
    assert cropper.crop_box((100, 100, 200, 220), (1000, 1000)) == (54, 64, 246, 256)
    side = round(120 * MARGIN)
    assert side == 192
    # At an edge: moved inside, not cut, so the detector's centre crop still holds the face.
    x0, y0, x1, y1 = cropper.crop_box((0, 10, 100, 130), (1000, 1000))
    assert (x0, y0, x1 - x0, y1 - y0) == (0, 0, side, side)
    # Larger than the image: as large as the image allows.
    assert cropper.crop_box((10, 10, 90, 90), (100, 60)) == (20, 0, 80, 60)


def test_score_faces_rows_with_box_or_reason(cropper, photos, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = random_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "faces.csv"
    assert score.main([str(photos), "--faces", "--model", str(model), "--out", str(out)]) == 3
    rows = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert list(rows.columns) == ["p_fake", "label", "error", "face_box"]
    face = rows.loc[str(photos / "astronaut_off_centre.png")]
    x0, y0, x1, y1 = map(int, face.face_box.split())
    assert abs(x0 - (ASTRONAUT_FACE[0] + OFFSET[0])) <= 8 and abs(y1 - (ASTRONAUT_FACE[3] + OFFSET[1])) <= 8
    assert face.error == "" and face.label in ("fake", "real")
    # The score is the detector's, on the crop.
    crop, _ = cropper.crop_file(photos / "astronaut_off_centre.png")
    assert float(face.p_fake) == pytest.approx(Detector.load(model, "cpu").score([crop])[0], abs=1e-7)
    coffee = rows.loc[str(photos / "coffee.png")]
    assert (coffee.error, coffee.p_fake, coffee.face_box) == ("no face found", "", "")
    assert "1 could not be scored" in capsys.readouterr().err
