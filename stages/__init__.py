"""The DVC stages, one module each: `python -m stages.<name>`, with the paths dvc.yaml's cmd gives it."""
