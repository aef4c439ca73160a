"""Study protocol v1: strictness, canonical hash, cross-field checks and the CLI."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from securefed.cli import app
from securefed.errors import ProtocolError
from securefed.protocol import canonical_bytes, load_protocol, parse_protocol, protocol_hash

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "protocols" / "demo.toml"
PAPER = ROOT / "protocols" / "fets2022-cffl.toml"
ALL_METHODS = ROOT / "protocols" / "demo-all-methods.toml"
FP = "sha256:" + "ab" * 32


def demo_dict() -> dict:
    return tomllib.loads(DEMO.read_text())


def test_shipped_protocols_load() -> None:
    for path in (DEMO, PAPER, ALL_METHODS):
        loaded = load_protocol(path)
        assert loaded.sha256.startswith("sha256:")
        assert len(loaded.sha256) == 71


def test_all_methods_demo_differs_from_the_demo_only_in_its_methods() -> None:
    demo = load_protocol(DEMO).protocol.model_dump()
    full = load_protocol(ALL_METHODS).protocol.model_dump()
    assert set(full["training"].pop("baselines")) == {
        "local", "local-finetune", "fedavg", "cffl", "cffl-ideal", "centralized"
    }  # fmt: skip
    demo["training"].pop("baselines")
    demo.pop("study"), full.pop("study")
    assert full == demo, "keep protocols/demo-all-methods.toml in step with protocols/demo.toml"


def test_paper_protocol_has_paper_settings() -> None:
    p = load_protocol(PAPER).protocol
    assert p.radiomics.bin_width == 0.09
    assert p.clustering.k == 10
    assert p.clustering.k_selection == "fixed"
    assert p.clustering.pca_components == 30
    assert p.clustering.covariance_type == "tied"
    assert p.clustering.n_init == 20
    assert p.clustering.seed == 6
    assert p.training.lr == 0.05
    assert p.training.optimizer == "sgd"
    assert p.training.momentum == 0
    assert p.training.global_rounds == 300
    assert p.training.finetune_rounds == 50
    assert p.training.crop_size == (128, 128, 128)
    assert p.release.mode == "plain"


def test_unknown_key_rejected_with_field_name() -> None:
    data = demo_dict()
    data["release"]["epsilonn"] = 1.0
    with pytest.raises(ProtocolError, match=r"release\.epsilonn: unknown field"):
        parse_protocol(data)


@pytest.mark.parametrize(
    ("table", "typo", "suggested", "where"),
    [
        (None, "trainig", "`training`", "the top level"),
        ("training", "global_round", "`global_rounds`", "[training]"),
        ("privacy", "total_epsilom", "`total_epsilon`", "[privacy]"),
        ("release", "epsilonn", "`epsilon`", "[release]"),
        ("training.dp_sgd", "max_grad_nrom", "`max_grad_norm`", "[training.dp_sgd]"),
        ("sites", "nodekey", "`node_key`", "[[sites]]"),
    ],
)  # fmt: skip
def test_an_unknown_key_gets_the_closest_field_names_of_its_table(
    table: str | None, typo: str, suggested: str, where: str
) -> None:
    """A typo gets "did you mean `global_rounds`?" in every table (difflib over the fields of
    the table the key sits in, arrays of tables included); a key like no field gets none."""
    data = demo_dict()
    if table == "sites":
        data["sites"] = [{"id": "site-1", "partition_id": 1, typo: "x"}]
        loc = f"sites.0.{typo}"
    elif table is None:
        data[typo] = {}
        loc = typo
    else:
        node = data
        for part in table.split("."):
            node = node.setdefault(part, {})
        node[typo] = 1
        loc = f"{table}.{typo}"
    with pytest.raises(ProtocolError) as caught:
        parse_protocol(data)
    line = next(x for x in str(caught.value).splitlines() if f"- {loc}:" in x)
    assert f"unknown field; did you mean {suggested}?" in line, line
    assert f"lists the fields of {where}" in line, line
    data = demo_dict()
    data["training"]["zzzzqq"] = 1
    with pytest.raises(ProtocolError, match=r"training\.zzzzqq: unknown field \(not in schema"):
        parse_protocol(data)


def test_check_suggests_the_field_on_the_command_line(tmp_path: Path) -> None:
    bad = tmp_path / "typo.toml"
    bad.write_text(DEMO.read_text().replace("global_rounds", "global_round"))
    result = CliRunner().invoke(app, ["protocol", "check", str(bad)])
    assert result.exit_code == 2
    assert "did you mean `global_rounds`?" in " ".join(result.output.split())


def test_closed_algorithm_lists() -> None:
    data = demo_dict()
    data["clustering"]["algorithm"] = "dbscan"
    with pytest.raises(ProtocolError, match=r"clustering\.algorithm"):
        parse_protocol(data)


def test_frozen() -> None:
    p = load_protocol(DEMO).protocol
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        p.study.name = "x"  # type: ignore[misc]


def test_hash_ignores_formatting_and_explicit_defaults() -> None:
    data = demo_dict()
    h = protocol_hash(parse_protocol(data))
    data["radiomics"]["feature_classes"] = ["firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"]
    data["secure_aggregation"]["clipping_range"] = 8.0  # the default, written out
    assert protocol_hash(parse_protocol(data)) == h
    assert protocol_hash(load_protocol(DEMO).protocol) == h


def test_hash_changes_with_any_value() -> None:
    data = demo_dict()
    h = protocol_hash(parse_protocol(data))
    data["training"]["lr"] = 0.004
    assert protocol_hash(parse_protocol(data)) != h


def test_canonical_form_is_compact_sorted_json() -> None:
    raw = canonical_bytes(load_protocol(PAPER).protocol)
    parsed = json.loads(raw)
    assert raw == json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
    assert parsed["privacy"]["total_epsilon"] == "inf"
    assert parsed["schema_version"] == 1


def test_epsilon_allocations_must_fit_total() -> None:
    data = demo_dict()
    data["privacy"]["total_epsilon"] = 1.0
    data["release"] = {
        "mode": "local-dp",
        "epsilon": 2.0,
        "delta": 1e-6,
        "bounds": {"file": "b.json", "sha256": FP},
    }
    data["clustering"]["scaling"] = "declared-bounds"
    with pytest.raises(ProtocolError, match=r"total_epsilon \(1.0\) is below"):
        parse_protocol(data)
    data["privacy"]["total_epsilon"] = 2.0
    assert parse_protocol(data).allocated_budget() == (2.0, 1e-6)


def test_threshold_le_shares_le_sites() -> None:
    data = demo_dict()
    data["secure_aggregation"]["reconstruction_threshold"] = 3
    with pytest.raises(ProtocolError, match="reconstruction_threshold"):
        parse_protocol(data)
    data["secure_aggregation"].update({"num_shares": 2, "reconstruction_threshold": 2})
    with pytest.raises(ProtocolError, match=r"num_shares \(2\) must be >= 3"):
        parse_protocol(data)
    data["training"]["aggregation"] = "fedavg"  # SecAgg+ parameters unused: not checked
    assert parse_protocol(data).training.aggregation == "fedavg"
    data = demo_dict()
    data["sites"] = [{"id": "a", "partition_id": 1}, {"id": "b", "partition_id": 2}]
    with pytest.raises(ProtocolError, match=r"num_shares \(3\) must be <= the number of sites"):
        parse_protocol(data)


def test_deployment_requires_keys_and_forbids_unsafe() -> None:
    data = demo_dict()
    data["study"]["mode"] = "deployment"
    with pytest.raises(ProtocolError, match="must list its sites"):
        parse_protocol(data)
    data["sites"] = [
        {"id": f"h{i}", "partition_id": i, "signing_key": FP, "encryption_key": FP}
        for i in range(1, 4)
    ]
    data["server"] = {"id": "server", "signing_key": FP, "encryption_key": FP}
    data["governance"] = {"signing_key": FP}
    assert parse_protocol(data).study.mode == "deployment"
    data["privacy"]["unsafe_seeded_noise"] = True
    with pytest.raises(ProtocolError, match="only allowed in a 'simulation'"):
        parse_protocol(data)


def test_simulation_sites_from_partitions() -> None:
    p = load_protocol(DEMO).protocol
    sites = p.resolve_sites([3, 1, 2, 3])
    assert [s.id for s in sites] == ["site-1", "site-2", "site-3"]


def test_local_dp_needs_epsilon_and_bounds() -> None:
    data = demo_dict()
    data["release"] = {"mode": "local-dp"}
    with pytest.raises(ProtocolError, match="needs release.epsilon"):
        parse_protocol(data)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("schema_version = 1\n[study\n")
    with pytest.raises(ProtocolError, match="bad.toml: not valid TOML"):
        load_protocol(bad)
    with pytest.raises(ProtocolError, match="not found"):
        load_protocol(tmp_path / "missing.toml")


runner = CliRunner()


def test_cli_check_prints_hash() -> None:
    result = runner.invoke(app, ["protocol", "check", str(DEMO)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == load_protocol(DEMO).sha256


def test_cli_check_invalid_exits_2_and_names_field(tmp_path: Path) -> None:
    text = DEMO.read_text().replace('mode = "plain"', 'mode = "clear"')
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    result = runner.invoke(app, ["protocol", "check", str(bad)])
    assert result.exit_code == 2
    assert "release.mode" in result.output


def test_cli_version_and_help() -> None:
    assert runner.invoke(app, ["version"]).exit_code == 0
    assert runner.invoke(app, ["--help"]).exit_code == 0
    assert runner.invoke(app, ["protocol", "--help"]).exit_code == 0


def test_every_field_is_documented_and_reference_is_current() -> None:
    from securefed.protocol.reference import (
        BEGIN_MARK,
        END_MARK,
        all_field_paths,
        describe,
        json_schema,
        reference_markdown,
    )

    missing = [p for p in all_field_paths() if not describe(p)]
    assert not missing, f"undocumented protocol fields: {missing}"
    # The schema's field docstrings are the one source of the reference and the JSON Schema.
    exported = json.loads((ROOT / "protocols" / "schema.json").read_text())
    assert exported == json.loads(json_schema()), (
        "protocols/schema.json is stale: regenerate it (python -m securefed.protocol.reference)"
    )
    epsilon = exported["$defs"]["ReleaseSpec"]["properties"]["epsilon"]
    assert epsilon["description"] == describe("release.epsilon") != ""
    text = (ROOT / "protocols" / "README.md").read_text()
    embedded = text.split(BEGIN_MARK, 1)[1].split(END_MARK, 1)[0].strip()
    assert embedded == reference_markdown().strip(), (
        "protocols/README.md is stale: regenerate it with `python -m securefed.protocol.reference`"
    )


def test_protocol_schema_command_prints_the_exported_schema() -> None:
    from typer.testing import CliRunner

    from securefed.cli import app

    res = CliRunner().invoke(app, ["protocol", "schema"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == json.loads((ROOT / "protocols" / "schema.json").read_text())


def test_check_shows_the_epsilon_under_collusion(tmp_path: Path) -> None:
    """`securefed protocol check` states what the distributed noise holds against: the claim with
    up to max_colluding_sites colluding, and the epsilon with one more."""
    import hashlib
    import tomllib

    import tomli_w
    from typer.testing import CliRunner

    from securefed.cli import app

    (tmp_path / "b.json").write_text("{}")  # `protocol check` opens every pinned file
    digest = "sha256:" + hashlib.sha256(b"{}").hexdigest()
    data = tomllib.loads(DEMO.read_text())
    data["release"] = {
        "mode": "secure-aggregate", "projection": "random", "dimension": 2,
        "bounds": {"file": "b.json", "sha256": digest},
    }  # fmt: skip
    data["clustering"]["scaling"] = "declared-bounds"
    data["clustering"]["secure"] = {"epsilon": 1.0, "min_sites_per_aggregate": 3,
                                    "max_colluding_sites": 1}  # fmt: skip
    path = tmp_path / "secure.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    res = CliRunner().invoke(app, ["protocol", "check", str(path)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "sigma^2/(n - 1)" in text
    assert "up to 1 colluding site(s)" in text
    assert "with 2 colluding in an aggregate of 3 sites: epsilon" in text


def test_add_remove_one_is_not_offered_with_per_case_releases() -> None:
    """Under add/remove-one, the subject id that travels with each local-dp row discloses
    membership, so the protocol refuses that relation there (privacy-claims issue, finding 8)."""
    import tomllib

    from securefed.protocol import parse_protocol

    data = tomllib.loads(DEMO.read_text())
    data["release"] = {
        "mode": "local-dp", "epsilon": 4.0, "delta": 1e-6,
        "bounds": {"file": "b.json", "sha256": "sha256:" + "0" * 64},
    }  # fmt: skip
    data["clustering"]["scaling"] = "declared-bounds"
    data["privacy"]["neighbouring"] = "replace-one"
    assert parse_protocol(data).privacy.neighbouring == "replace-one"
    data["privacy"]["neighbouring"] = "add-remove-one"
    with pytest.raises(ProtocolError, match="subject id"):
        parse_protocol(data)


@pytest.mark.parametrize(
    ("table", "field", "value", "message"),
    [
        ("training", "lr", float("inf"), "finite"),
        ("secure_aggregation", "timeout_s", float("nan"), "finite"),
        ("secure_aggregation", "clipping_range", float("inf"), "finite"),
        ("training", "lr", "0.05", "valid number"),
        ("training", "global_rounds", True, "valid integer"),
        ("training", "global_rounds", 8.0, "valid integer"),
        ("clustering", "k", "5", "valid integer"),
    ],
)
def test_protocol_numbers_are_finite_and_never_coerced(table, field, value, message) -> None:
    """A protocol file is validated strictly (issue: governance, protocol check findings): no
    inf/nan outside privacy.total_epsilon, no string or boolean for a number, no float for an
    integer."""
    import tomllib

    from securefed.protocol import parse_protocol

    data = tomllib.loads(DEMO.read_text())
    parse_protocol(data)  # the shipped file itself passes
    data.setdefault(table, {})[field] = value
    with pytest.raises(ProtocolError, match=message):
        parse_protocol(data)


def test_total_epsilon_may_be_inf_and_arrays_still_parse() -> None:
    import tomllib

    from securefed.protocol import parse_protocol

    data = tomllib.loads(PAPER.read_text())
    assert math.isinf(parse_protocol(data).privacy.total_epsilon)
    assert parse_protocol(data).training.crop_size == tuple(data["training"]["crop_size"])


def test_check_opens_pinned_files_and_bounds_integers(tmp_path: Path) -> None:
    """`protocol check` reads every pinned file (a missing, NUL-named or changed one is exit 2),
    integers have upper bounds, a secure aggregate needs 2 sites, and deep nesting is a clear
    error (governance issue, protocol-check findings)."""
    import tomllib

    import tomli_w
    from typer.testing import CliRunner

    from securefed.cli import app
    from securefed.protocol import parse_protocol

    runner = CliRunner()
    data = tomllib.loads(DEMO.read_text())
    data["release"] = {
        "mode": "plain",
        "bounds": {"file": "b.json", "sha256": "sha256:" + "0" * 64},
    }
    path = tmp_path / "p.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    missing = runner.invoke(app, ["protocol", "check", str(path)])
    assert missing.exit_code == 2
    assert "release.bounds.file" in missing.output
    (tmp_path / "b.json").write_text("{}")
    changed = runner.invoke(app, ["protocol", "check", str(path)])
    assert changed.exit_code == 2
    assert "release.bounds.sha256" in changed.output
    data["release"]["bounds"]["file"] = "b\x00.json"
    path.write_bytes(tomli_w.dumps(data).encode())
    nul = runner.invoke(app, ["protocol", "check", str(path)])
    assert nul.exit_code == 2, nul.output
    base = tomllib.loads(DEMO.read_text())
    for table, field, value in (
        ("training", "global_rounds", 2**63 - 1),
        ("training", "crop_size", [100_000, 100_000, 100_000]),
        ("clustering", "k", 10**9),
        ("secure_aggregation", "num_shares", 10**6),
    ):
        bad = tomllib.loads(DEMO.read_text())
        bad[table][field] = value
        with pytest.raises(ProtocolError, match=field):
            parse_protocol(bad)
    one = dict(base, training={**base["training"], "min_sites_per_aggregate": 1})
    with pytest.raises(ProtocolError, match="secure aggregate of one site"):
        parse_protocol(one)
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    nested = runner.invoke(app, ["protocol", "check", str(deep)])
    assert nested.exit_code == 2
    assert "nested too deeply" in nested.output


def test_a_deployment_protocol_reports_every_missing_requirement_at_once(tmp_path) -> None:
    """Onboarding: one `protocol check` names every missing key, not one per edit-check round."""
    import tomllib

    import tomli_w
    from support.flower import write_protocol

    from securefed.errors import ProtocolError
    from securefed.protocol import load_protocol

    proto = write_protocol(tmp_path)
    data = tomllib.loads(proto.read_text())
    data["study"]["mode"] = "deployment"
    data["sites"] = [{"id": f"site-{p}", "partition_id": p} for p in (1, 2, 3)]
    proto.write_text(tomli_w.dumps(data))
    with pytest.raises(ProtocolError) as err:
        load_protocol(proto)
    text = " ".join(str(err.value).split())
    for part in ("sites.site-1: needs signing_key and encryption_key", "sites.site-3",
                 "server: needs", "governance.signing_key"):  # fmt: skip
        assert part in text, text
