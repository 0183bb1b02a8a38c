"""Data tools behind ``contrastive data <tool>``: ``nga`` and ``triplets``, each a module with
``main(argv) -> int``, and the modules they are built from (``fetch``, the one HTTP helper, with
``connections``, its kept-open connections, and ``stream``, a body read as a resumable file;
``nga_catalog``; ``pairs`` and ``describe``).

They fetch and prepare data sets on disk for the data modules to read; none imports torch, so
they start fast and run on machines without it.
"""
