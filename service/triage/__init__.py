"""The use cases every door calls: ingest an image, answer a view or a study, record it.

Built on the domain and the adapters; knows no web framework (:mod:`.predictor` runs its
blocking steps in worker threads with ``anyio``).
"""
