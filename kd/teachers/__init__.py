"""How an ensemble member produces logits, whatever made it: trained here (native: weights +
model.json, kd/models/io.py) or imported (an MLflow model, an ONNX file or a torch.export
file: imported.py, fetched and checked by sources.py, MLflow's part in mlflow_source.py).
members.py loads any of them as one kind of thing: an `nn.Module` on the prepared features
that returns logits in the prepared class order."""
