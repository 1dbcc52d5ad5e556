"""The DVC stages, one module each (`python -m stages.<name>`), and the paths they share."""

from pathlib import Path

PREPARED = Path("prepared")
MODEL = Path("models/model.pt")
RUN_REF = Path("reports/mlflow_run.json")
HISTORY = Path("reports/history.csv")
METRICS = Path("metrics.json")
REPORTS = Path("reports")
