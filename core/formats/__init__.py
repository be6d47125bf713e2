"""File formats of a saved quantized model.

* ``<model>.sima`` (:mod:`core.formats.sima`): versioned, checksummed, pickle-free container
  of the model's arrays (weights, scales, zero points ...) plus JSON metadata.
* ``<model>.sima.json`` (:mod:`core.formats.sima_json`): Netron-viewable companion file in
  Keras-model-JSON form, one layer per quantized node with its quantization parameters,
  ``input_int16`` flag and ``Layer Statistics``.
"""
from core.formats.sima import read_sima, write_sima
from core.formats.sima_json import read_sima_json, update_layer_statistics, write_sima_json

__all__ = ["read_sima", "write_sima", "read_sima_json", "write_sima_json", "update_layer_statistics"]
