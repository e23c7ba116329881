"""Architectures (a registry keyed by name, one file per family) and the model directory.

    from kd.models import build_model, load_model, save_model

Importing this package registers every built-in family.
"""

from kd.models import conv, mlp, soft_tree, transformer  # noqa: F401  (cnn1d, cnn2d, mlp, ...)
from kd.models.io import (
    SPEC_FILE,
    WEIGHTS_FILE,
    check_fits,
    load_model,
    model_fingerprint,
    save_model,
)
from kd.models.registry import (
    ARCHITECTURES,
    build_model,
    check_arch,
    component_nll,
    count_params,
    knob_defaults,
    output_components,
    register,
    resolve_knobs,
)

__all__ = ["ARCHITECTURES", "SPEC_FILE", "WEIGHTS_FILE", "build_model", "check_arch",
           "check_fits", "component_nll", "count_params", "knob_defaults", "load_model",
           "model_fingerprint", "output_components", "register", "resolve_knobs", "save_model"]
