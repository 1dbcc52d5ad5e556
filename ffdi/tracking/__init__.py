"""MLflow only: the pipeline's MLflow run (mlflow_run: the store, provenance tags, params, epochs,
run references), what an evaluation is logged as (evaluation), and the one logged model of a run: the
servable detector (pyfunc_model, by evaluate), which carries the checkpoint.

May import engine and the layers below it (it uses evaluation's metric names and inference's served
model); imported by the stages, analysis and cli.
"""
