"""Data tools behind ``contrastive data <tool>``: each module here has ``main(argv) -> int``.

They fetch and prepare data sets on disk for the data modules to read; none imports torch, so
they start fast and run on machines without it.
"""
