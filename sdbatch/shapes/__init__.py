"""The shapes world: a procedural dataset and an automatic judge for the embedded model.

``world`` draws scenes (one coloured shape on a plain background) and captions them;
``judge`` reads colour, shape and background back from pixels; ``plot`` draws loss curves.
All three use numpy and Pillow only, so they import without torch.
"""
