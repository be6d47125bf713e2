"""Shared helpers for the TFLite / TensorFlow importer tests: TensorFlow loads once per session."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def tf():
    tf = pytest.importorskip("tensorflow")
    tf.get_logger().setLevel("ERROR")
    return tf


def to_tflite(tf, model, quantize=None, representative=None):
    """Convert a Keras model to a TFLite flatbuffer (float, or "int8" / "int8_io" / "16x8")."""
    import warnings

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        if quantize in ("int8", "int8_io"):
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if quantize == "int8_io":
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        if quantize == "16x8":
            conv.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return conv.convert()


def run_interpreter(tf, model_path, feeds):
    """Run tf.lite.Interpreter on ``feeds`` (a list of arrays in input order); outputs in output order."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = tf.lite.Interpreter(model_path=str(model_path))
    ins = it.get_input_details()
    for d, x in zip(ins, feeds):
        if tuple(d["shape"]) != x.shape:
            it.resize_tensor_input(d["index"], x.shape)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), feeds):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()], ins, it.get_output_details()


def max_rel_err(ref, got):
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    assert ref.shape == got.shape, (ref.shape, got.shape)
    return float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-6))
