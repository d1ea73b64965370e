"""The DiT4DiT policy: model (model.py), dual flow matching (flow.py), checkpoint (checkpoint.py),
inference API (inference.py), training (train.py, `dit4dit-train`). Everything here needs torch."""
