"""One model measured: metrics, the evaluation of a Detector on val and extra sets (evaluate),
degradations for robustness (degrade), the plots of one evaluation (plots) and evaluate's gallery
of class activation maps (gallery).

May import inference and the layers below it.
"""
