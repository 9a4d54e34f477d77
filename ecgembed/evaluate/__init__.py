"""Zero-shot evaluation: AUROC/AUPRC per class of the current scores against a truth source.

See ``docs/evaluation.md``. Entry points: :func:`evaluate` (writes the ``evaluation`` table),
:func:`summary_lines` (what the command prints), :func:`roc_svg` / :func:`pr_svg` (plots from
the table's rows).
"""

from ecgembed.evaluate.evaluation import evaluate, summary_lines
from ecgembed.evaluate.plots import pr_svg, roc_svg
from ecgembed.evaluate.truth import EvaluationError, Truth, read_truth

__all__ = ["EvaluationError", "Truth", "evaluate", "pr_svg", "read_truth", "roc_svg", "summary_lines"]
