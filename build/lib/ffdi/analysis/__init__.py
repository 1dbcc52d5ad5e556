"""Many runs at once, read back from MLflow: compare (paired bootstrap CIs of AUC differences),
leave-one-manipulation-out generalisation and its report, the knob table, their plots, and the
driver of DVC's experiment queue that runs them.

May import tracking and every layer below it; only ffdi.cli imports it, never a stage.
"""
