"""onnxruntime sessions: load, smoke-test on synthetic inputs, predict.

Sessions are shared per artifact sha256 through a ``SessionPool`` (an InferenceSession is
thread-safe for ``run``), so a simulator with thousands of virtual devices holds one session per
model version, not per device.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class ModelLoadError(Exception):
    """The model could not be loaded or its smoke inference failed."""


class SessionPool:
    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, sha256: str) -> ort.InferenceSession:
        with self._lock:
            sess = self._sessions.get(sha256)
            if sess is None:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self.threads
                opts.inter_op_num_threads = 1
                opts.log_severity_level = 3
                try:
                    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
                except Exception as e:  # onnxruntime raises several unrelated types for a bad file
                    raise ModelLoadError(f"cannot load model: {e}") from e
                self._sessions[sha256] = sess
            return sess

    def __len__(self) -> int:
        return len(self._sessions)


def synthetic_inputs(sess: ort.InferenceSession, batch: int = 1, rng: np.random.Generator | None = None) -> dict:
    """Inputs of the right names, dtypes and shapes; symbolic or unknown dims become ``batch``/1."""
    rng = rng or np.random.default_rng(0)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (batch if j == 0 else 1) for j, d in enumerate(inp.shape)]
        dtype = _DTYPES.get(inp.type)
        if dtype is None:
            raise ModelLoadError(f"input {inp.name!r} has unsupported type {inp.type}")
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[inp.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feeds[inp.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


class Runtime:
    """One loaded model version."""

    def __init__(self, model: str, version: str, sha256: str, session: ort.InferenceSession) -> None:
        self.model = model
        self.version = version
        self.sha256 = sha256
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    @classmethod
    def load(cls, pool: SessionPool, model: str, version: str, sha256: str, path: Path) -> Runtime:
        return cls(model, version, sha256, pool.get(path, sha256))

    def smoke(self) -> None:
        """Run once on synthetic inputs; any exception or a non-finite output refuses the version."""
        try:
            outs = self.session.run(None, synthetic_inputs(self.session, batch=2))
        except Exception as e:
            raise ModelLoadError(f"smoke inference failed: {e}") from e
        for name, out in zip(self.output_names, outs, strict=False):
            arr = np.asarray(out)
            if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
                raise ModelLoadError(f"smoke inference gave non-finite values in {name!r}")

    def feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, dict):
            return {k: np.asarray(v) for k, v in inputs.items()}
        if len(self.input_names) != 1:
            raise ValueError(f"model has inputs {self.input_names}; pass a dict")
        return {self.input_names[0]: np.asarray(inputs)}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(None, feeds)
        return dict(zip(self.output_names, outs, strict=True))
