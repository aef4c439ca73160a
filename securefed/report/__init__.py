"""Study outputs: results.json, report.html and plots."""

from securefed.report.html import write_report

__all__ = ["write_report"]
