"""EdgeFleet device agent: polls, verifies, installs and runs ONNX models, reports noisy aggregates.

Plain Python with numpy, onnxruntime, cryptography and requests; it must never import Django or
the server apps, because it installs on small Linux boards.
"""

__version__ = "0.1.0"
