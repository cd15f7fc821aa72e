"""Studies: the paper's comparisons as one command each (``fif study NAME``), with seeds, fair tuning,
paired statistics and Pareto fronts.

A study is variants × seeds × (optionally) a tuning grid per variant, at equal budget in MAFs
(:mod:`fif.studies.spec`; the named ones in :mod:`fif.studies.catalog`). It expands into a sweep folder
(:mod:`fif.studies.plan`, through :mod:`fif.runner.sweep`), runs here, under torchrun or as a SLURM array
(:mod:`fif.studies.execute`), chooses each variant's grid point on a validation signal that is not the
reported test scores (:mod:`fif.studies.tuning`), and reports means with t-intervals, differences paired by
seed and a verdict per claim (:mod:`fif.studies.stats`, :mod:`fif.studies.analysis`,
:mod:`fif.studies.report`). Layer: above ``runner``, below ``cli``.
"""

from fif.studies.analysis import StudyAnalysis, analyze, load_records
from fif.studies.catalog import named_study, study_names
from fif.studies.estimate import Estimate, estimate
from fif.studies.execute import Progress, report_study, run_study
from fif.studies.plan import StudyPlan, expand_study, load_study, read_plan, write_study
from fif.studies.spec import Study, parse_study

__all__ = [
    "Estimate", "Progress", "Study", "StudyAnalysis", "StudyPlan", "analyze", "estimate", "expand_study",
    "load_records", "load_study", "named_study", "parse_study", "read_plan", "report_study", "run_study",
    "study_names", "write_study",
]
