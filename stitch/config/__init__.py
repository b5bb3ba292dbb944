"""The experiment YAML: schema, loading, and error messages with line numbers.

The rooms of this package (none imports torch):

- :mod:`~stitch.config.base`, ``schema_model``, ``schema_data``, ``schema_train``,
  ``schema_design``, ``schema_sweep`` and :mod:`~stitch.config.schema`: the pydantic models of
  the experiment file, one block per file, :class:`ExperimentCfg` on top;
- :mod:`~stitch.config.source`: line numbers of YAML paths (:class:`SourceMap`);
- :mod:`~stitch.config.validation_errors`: a pydantic error as a YAML path and one line;
- :mod:`~stitch.config.checks`: checks across keys;
- :mod:`~stitch.config.reading`: the YAML text to a mapping with its :class:`SourceMap`;
- :mod:`~stitch.config.inheritance`: ``extends:`` / ``_base_:`` bases merged under a file;
- :mod:`~stitch.config.overrides`: command-line ``key.path=value`` words set in the mapping;
- :mod:`~stitch.config.writing`: the resolved experiment as YAML (``stitch config``);
- :mod:`~stitch.config.loading`: :func:`parse_experiment`, :func:`load_experiment`,
  :func:`with_overrides` and the :class:`Experiment` they return;
- :mod:`~stitch.config.keys`: every key path of the schema (:func:`schema_keys`), for the docs.

Checks that need torch (unknown modules, hook points, channels) happen later, in
:mod:`stitch.validate`, and report through the same :class:`SourceMap`.
"""

from stitch.config.base import NAME_PATTERN, Design, Mode, Strict
from stitch.config.checks import SCALE_UNDONE_FOR_INSTANCES, check_cross_fields
from stitch.config.keys import data_keys_by_dataset, schema_keys
from stitch.config.loading import Experiment, load_experiment, parse_experiment, sweep_of, with_overrides
from stitch.config.schema import ExperimentCfg
from stitch.config.schema_data import (
    AugmentCfg,
    BrainData,
    CocoData,
    DataBase,
    DataCfg,
    FolderData,
    NucleiData,
    ShapesData,
    VOCData,
)
from stitch.config.schema_design import (
    DEFAULT_PRIMARY,
    TASK_METRICS,
    AblationCfg,
    MetricsCfg,
    ProbeCfg,
    ReportCfg,
)
from stitch.config.schema_model import BaselineCfg, InsertionCfg, NestedInsertionCfg
from stitch.config.schema_sweep import ObjectiveCfg, RangeCfg, SearchValue, SlotCfg, SweepCfg
from stitch.config.schema_train import OptimizerCfg, SchedulerCfg, TrainCfg
from stitch.config.source import SourceMap, format_path

__all__ = [
    "DEFAULT_PRIMARY",
    "NAME_PATTERN",
    "SCALE_UNDONE_FOR_INSTANCES",
    "TASK_METRICS",
    "AblationCfg",
    "AugmentCfg",
    "BaselineCfg",
    "BrainData",
    "CocoData",
    "DataBase",
    "DataCfg",
    "Design",
    "Experiment",
    "ExperimentCfg",
    "FolderData",
    "InsertionCfg",
    "MetricsCfg",
    "Mode",
    "NestedInsertionCfg",
    "NucleiData",
    "ObjectiveCfg",
    "OptimizerCfg",
    "ProbeCfg",
    "RangeCfg",
    "ReportCfg",
    "SchedulerCfg",
    "SearchValue",
    "ShapesData",
    "SlotCfg",
    "SourceMap",
    "Strict",
    "SweepCfg",
    "TrainCfg",
    "VOCData",
    "check_cross_fields",
    "data_keys_by_dataset",
    "format_path",
    "load_experiment",
    "parse_experiment",
    "schema_keys",
    "sweep_of",
    "with_overrides",
]
