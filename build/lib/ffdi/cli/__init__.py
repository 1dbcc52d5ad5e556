"""The `ffdi` command (main.py) and one module per subcommand: score, explain, serve, compare,
generalisation; detector_kit.py is what score and explain share.

The top layer: it may import every other layer, and nothing imports it (not the stages either, which
run through ffdi.stage).
"""
