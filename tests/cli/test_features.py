"""`securefed features extract --strict` as a user runs it: a truncated .nii.gz fails the command
(exit 2, naming the case and the file) before anything is extracted."""

from __future__ import annotations

from pathlib import Path

from support.radiomics import write_federation
from typer.testing import CliRunner

from securefed.cli import app

runner = CliRunner()

PROTOCOL = """schema_version = 1
[study]
name = "t"
mode = "simulation"
[privacy]
total_epsilon = 1.0
"""


def test_strict_extract_fails_on_a_truncated_case_naming_case_and_file(tmp_path: Path) -> None:
    root = write_federation(
        tmp_path / "root", {"FeTS2022_00001": 1, "FeTS2022_00002": 2, "FeTS2022_00003": 2}
    )
    t2 = root / "FeTS2022_00002" / "FeTS2022_00002_t2.nii.gz"
    t2.write_bytes(t2.read_bytes()[: t2.stat().st_size // 2])
    proto = tmp_path / "p.toml"
    proto.write_text(PROTOCOL)

    def extract(out: str, *extra: str):
        args = [
            "features",
            "extract",
            str(proto),
            "--data",
            str(root),
            "--out",
            str(tmp_path / out),
        ]
        res = runner.invoke(app, [*args, *extra])
        return res, " ".join(res.output.split())

    strict, said = extract("strict", "--strict")
    assert strict.exit_code == 2, said
    assert "--strict: 1 case(s) excluded or unreadable: FeTS2022_00002" in said
    assert "FeTS2022_00002_t2.nii.gz" in said
    assert "nothing was extracted" in said
    assert not (tmp_path / "strict" / "features.csv").exists()
    # Only the chosen partitions count: partition 1 is whole.
    whole, said = extract("part1", "--strict", "--partition", "1")
    assert whole.exit_code == 0, said
    # Without --strict the case is excluded, listed, and the command succeeds (as before).
    lenient, said = extract("lenient")
    assert lenient.exit_code == 0, said
    assert "excluded 1 case(s)" in said
    assert "FeTS2022_00002_t2.nii.gz" in said
    assert (tmp_path / "lenient" / "features.csv").is_file()
