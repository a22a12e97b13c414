"""Inference service of bonexr: FastAPI app over a micro-batched ONNX Runtime engine."""
