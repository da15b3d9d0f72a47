"""Export trained models to deployable formats (TorchScript, ONNX)."""
