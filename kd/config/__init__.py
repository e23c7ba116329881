"""params.yaml -> one typed, validated `Config` that every stage receives.

    from kd.config import load_config
    cfg = load_config("params.yaml")
    # a mistake raises ConfigError("student.temperature: must be > 0, got -1")

Every `kd` command validates the whole file, not only its own section, so a typo in the
student's settings stops `kd prepare` rather than an hour of teacher training later; the CLI
then checks the architectures with the models (kd/model_checks.py). One module per job:

    sections.py   each section's keys, bounds, defaults and own checks
    student.py    the student section: variants and their recipes
    data.py       the data section
    params.py     the whole file (`Config`): checks across sections, derived specs, warnings
    messages.py   a validation error as one line naming the key
    loading.py    the safe YAML reader: params.yaml -> Config
"""

from kd.config.data import MNIST1D_SEED, DataConfig
from kd.config.loading import load_config, parse_config
from kd.config.params import Config, data_warnings
from kd.config.sections import (
    AugmentConfig,
    BaselineConfig,
    DeployConfig,
    ExportConfig,
    ImportedMember,
    ModelConfig,
    ReportConfig,
    RuntimeConfig,
    TeacherConfig,
    TrackingConfig,
    TrainConfig,
    TransferConfig,
    deep_merge,
)
from kd.config.student import InitConfig, StudentConfig, StudentsConfig

__all__ = [
    "MNIST1D_SEED", "AugmentConfig", "BaselineConfig", "Config", "DataConfig", "DeployConfig",
    "ExportConfig", "ImportedMember", "InitConfig", "ModelConfig", "ReportConfig",
    "RuntimeConfig", "StudentConfig", "StudentsConfig", "TeacherConfig", "TrackingConfig",
    "TrainConfig", "TransferConfig", "data_warnings", "deep_merge", "load_config",
    "parse_config",
]
