"""Privacy-accuracy sweeps (``securefed sweep``): a grid of protocols derived from one, each run
as a whole study, collected into sweep.csv, sweep.json and report.html."""

from securefed.sweep.grid import DEFAULT_GRID, GridSpec, Point, expand, load_grid, point_protocol
from securefed.sweep.runner import run_sweep

__all__ = ["DEFAULT_GRID", "GridSpec", "Point", "expand", "load_grid", "point_protocol",
           "run_sweep"]  # fmt: skip
