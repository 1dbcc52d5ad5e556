"""The benchmark scripts' own logic (their measurements live in benchmarks/results, not here)."""

from benchmarks.generalisation_grid import parse_override, parse_variant


def test_variant_overrides_keep_lists_and_the_word_off():
    name, overrides = parse_variant("tta6:predict.tta=[hflip,vflip,rot90],train.amp=off,train.ema=0.999")
    assert name == "tta6"
    assert overrides == {"predict.tta": ["hflip", "vflip", "rot90"], "train.amp": "off", "train.ema": 0.999}
    assert parse_variant("baseline") == ("baseline", {})
    assert parse_override("model.se=true") == ("model.se", True)  # a real boolean stays one
