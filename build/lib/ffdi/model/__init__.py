"""The network: building ResNet-18 / SE-ResNet-18 from timm with its weights and tuning (networks),
and checkpoints that carry the model, its preprocessing and the config that made it (checkpoint).

May import data, sample and the base (in practice only the base).
"""
