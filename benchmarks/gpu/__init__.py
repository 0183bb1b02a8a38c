"""The parts of ``benchmarks/gpu_check.py``, one module each: ``smoke``, ``speed``, ``pipeline``,
``negatives`` and ``fashion``, and what they share (``common``). Imported with ``benchmarks/``
on the path, as the script runs (``python benchmarks/gpu_check.py``)."""
