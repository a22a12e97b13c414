"""bonexr: bone X-ray triage (body-part routing + MURA-style abnormality detection).

The ``bonexr`` package is the single source of truth shared by training and serving:
the label schema (:mod:`bonexr.labels`), image decoding and preprocessing
(:mod:`bonexr.imaging`) and the model-bundle format (:mod:`bonexr.bundle`).
"""

__version__ = "0.7.0"
