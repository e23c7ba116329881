"""The deployable student: ONNX export, int8 quantization, checks and ONNX Runtime inference.

    from kd.deploy.export import export_onnx
    from kd.deploy.quantize import quantize
    from kd.deploy.runtime import Predictor

Free of tracking: the deploy stage (stages/deploy.py) logs to MLflow through kd.tracking.
"""
