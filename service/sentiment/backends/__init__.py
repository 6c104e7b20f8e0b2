"""Backends turn preprocessed texts into probabilities: `torch` (pysentimiento as is) and `onnx`
(onnxruntime + tokenizers + numpy, no torch in the process)."""
