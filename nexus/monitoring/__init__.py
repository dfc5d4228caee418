"""Model monitoring: how confident a model's answers are and how far its inputs drift from a reference.

The pure pieces come first and do no I/O: ``confidence`` reads a classifier's outputs, ``sketch``
keeps a reference as bin edges and counts (never raw rows) and measures drift (PSI,
Jensen-Shannon) with size-aware verdicts. Merging counts over workers, storing sketches next to
the model and serving them are built on these.
"""
