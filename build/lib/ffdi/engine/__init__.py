"""Training: the loop (`fit`, `train_one_epoch`, `validate`), DDP (distributed) and the audit of
host-device syncs per step (sync_audit).

May import evaluation and the layers below it (validation scores through the Detector and measures
with evaluation.metrics); never tracking: the train stage logs what `fit` returns.
"""
