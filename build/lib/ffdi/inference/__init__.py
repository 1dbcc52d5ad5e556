"""Applying a trained detector: the Detector (detector; the only way to score), videos (video),
faces (faces), class activation maps (cams) and the MLflow pyfunc that serves a Detector
(served_model).

May import model, data, sample and the base; never training, evaluation, tracking or the CLI.
"""
