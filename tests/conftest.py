import os

import pytest

# Keep zoo builds out of the user's home during tests, but share them across the session.
os.environ.setdefault("MIXQ_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "mixq-test"))


@pytest.fixture
def onnx_model_file(tmp_path):
    """Write an ONNX model built with onnx.helper to a file and return its path."""
    import onnx

    def write(model, name="model.onnx"):
        path = tmp_path / name
        onnx.save(model, str(path))
        return str(path)

    return write
