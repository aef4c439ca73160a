"""Study outputs: results.json, report.html and plots."""

from securefed.report.html import write_report
from securefed.report.results import jsonable, read_json, write_json_atomic

__all__ = ["jsonable", "read_json", "write_json_atomic", "write_report"]
