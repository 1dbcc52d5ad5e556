"""ffdi: experiment-tracked deepfake face-image detection.

The package is in layers; a module imports only from its own layer and the layers below it
(checked by import-linter: `lint-imports`, the contracts in pyproject.toml), high to low:

    cli         the `ffdi` command and its subcommands
    analysis    many runs read back from MLflow: compare, generalisation, the knob table, the DVC queue
    tracking    MLflow only: the run, its provenance and logging, the logged models
    engine      the training loop, DDP, the host-device sync audit
    evaluation  metrics, the evaluation of one model, degradations, its plots and gallery
    inference   the Detector, videos, faces, class activation maps, the served (pyfunc) model
    model       building the network, checkpoints
    data        labels and manifests, the dataset and loader, transforms
    sample      the built-in sample data set: photographs, manipulations, generation
    the base    stage (stage_main), hardware, files, config, errors: top-level modules

Import from the module that defines a thing (`from ffdi.inference.detector import Detector`): the
packages' __init__ modules import nothing, so that a DVC stage's deps (tests/test_dvc_deps.py) stay
the modules it uses.
"""
