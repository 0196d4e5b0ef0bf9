"""``weightspace zoo ...`` and ``weightspace convert zoo.h5``: subprocess runs
on real files for the main paths, in-process ``main()`` for the rest."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from tests.zoo.zoo_helpers import make_zoo, mlp_row
from weightspace.cli import main
from weightspace.cli._common import EXIT_BAD_INPUT
from weightspace.graph import load_graphs
from weightspace.zoo import Zoo, ZooWriter


def run(*args: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "weightspace", *args], capture_output=True,
                          text=True, timeout=600, cwd=root)


@pytest.fixture()
def zoo_path(tmp_path):
    return make_zoo(tmp_path / "zoo.h5")


def test_help_on_every_zoo_verb(capsys):
    for verb in ("build", "info", "verify", "merge", "export", "import"):
        with pytest.raises(SystemExit) as exit_info:
            main(["zoo", verb, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: weightspace zoo {verb}" in capsys.readouterr().out


def test_info_verify_convert_as_subprocess(zoo_path, tmp_path):
    out = run("zoo", "info", str(zoo_path), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"] == 18
    with h5py.File(zoo_path, "r+") as handle:
        handle["mlp/params"][2, 1] += 1.0
    out = run("zoo", "verify", str(zoo_path))
    assert out.returncode == 1
    assert "bad row: group 'mlp' row 2 (index 2, key 'run002/epoch0'): checksum mismatch" \
        in out.stdout
    assert out.stderr.strip().splitlines() == [
        f"weightspace zoo verify: error: {zoo_path} has 1 bad row(s) and 0 problem(s)"]
    out = run("convert", str(zoo_path), "--group", "siren", "-o", str(tmp_path / "g.pt"))
    assert out.returncode == 0, out.stderr
    graphs = load_graphs(tmp_path / "g.pt")
    assert graphs.batch.num_graphs == 6
    assert graphs.sources[0] == f"{zoo_path}#inr000/view0"


def test_bad_input_one_line_errors(tmp_path, capsys):
    not_a_zoo = tmp_path / "x.h5"
    not_a_zoo.write_bytes(b"garbage" * 100)
    for argv in (["zoo", "info", str(not_a_zoo)],
                 ["zoo", "info", str(tmp_path / "missing.h5")],
                 ["zoo", "build", "no-such-recipe", "-o", str(tmp_path / "z.h5")],
                 ["zoo", "build", "digits-cnn", "-o", str(tmp_path / "z.h5"), "--shard", "3/2"],
                 ["zoo", "export", str(not_a_zoo), "-o", str(tmp_path / "out")],
                 ["convert", str(not_a_zoo), "-o", str(tmp_path / "g.pt")]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("weightspace "), (argv, err)
    assert not (tmp_path / "z.h5").exists()


def test_merge_export_in_process(tmp_path, capsys):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    with ZooWriter(a) as writer:
        writer.extend(mlp_row(i) for i in range(3))
    with ZooWriter(b) as writer:
        writer.extend(mlp_row(i) for i in range(3, 5))
    merged = tmp_path / "m.h5"
    assert main(["zoo", "merge", str(a), str(b), "-o", str(merged), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 5
    with Zoo(merged) as zoo:
        assert len(zoo) == 5
    assert main(["zoo", "merge", str(a), str(b), "-o", str(merged)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["zoo", "export", str(merged), "-o", str(tmp_path / "out"), "--rows", "1:3",
                 "--format", ".pt"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "mlp").iterdir()) == [
        "run001__epoch0.pt", "run002__epoch0.pt"]


def test_export_pt_warns_once_for_all_files(tmp_path, capsys, caplog):
    zoo_path = tmp_path / "z.h5"
    with ZooWriter(zoo_path) as writer:
        writer.extend(mlp_row(i) for i in range(4))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert main(["zoo", "export", str(zoo_path), "-o", str(out), "--format", ".pt"]) == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(list((out / "mlp").iterdir())) == 4
    assert len(warnings) == 1 and "index.json" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["zoo", "export", str(zoo_path), "-o", str(tmp_path / "st")]) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_import_inr_folder_atomic_and_skip(tmp_path, capsys):
    from tests.zoo import fixtures

    source = tmp_path / "inrs"
    made = fixtures.write_dwsnets_inrs(source)
    output = tmp_path / "inrs.h5"
    assert main(["zoo", "import", "inr-folder", str(source), "-o", str(output), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == len(made)
    with Zoo(output) as zoo:
        assert sorted(zoo.column("key")) == sorted(made)
        assert set(zoo.column("split")) == {"train", "val", "test"}
    before = output.read_bytes()
    broken = source / sorted(made)[0]
    broken.write_bytes(broken.read_bytes()[:100])
    # A broken file stops the import; the existing output is untouched.
    assert main(["zoo", "import", "inr-folder", str(source), "-o", str(output),
                 "--overwrite"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and sorted(made)[0] in err[0]
    assert output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inrs", "inrs.h5"]
    assert main(["zoo", "import", "inr-folder", str(source), "-o", str(output), "--overwrite",
                 "--on-error", "skip"]) == 0
    with Zoo(output) as zoo:
        assert len(zoo) == len(made) - 1


def _write_small_cnn_zoo(root: Path) -> int:
    from tests.zoo import fixtures

    zoo = fixtures.write_small_cnn_zoo(root, [("run-a", "relu"), ("run-b", "tanh")], steps=(0, 86))
    return len(zoo.rows)


def _write_inr_folder(root: Path) -> int:
    from tests.zoo import fixtures

    return len(fixtures.write_dwsnets_inrs(root))


def _write_cnn_wild_park(root: Path) -> int:
    from tests.zoo import fixtures

    return len(fixtures.write_cnn_wild_park(root))


def _write_model_zoos(root: Path) -> int:
    from tests.zoo import fixtures

    return len(fixtures.write_model_zoos(root))


#: A folder writer per import format: returns the number of rows it wrote.
FOLDER_WRITERS = {"small-cnn-zoo": _write_small_cnn_zoo, "inr-folder": _write_inr_folder,
                  "cnn-wild-park": _write_cnn_wild_park, "model-zoos": _write_model_zoos}


def test_every_import_format_has_a_cli_test():
    from weightspace.zoo.importers import IMPORT_FORMATS

    assert sorted(FOLDER_WRITERS) == sorted(IMPORT_FORMATS)


@pytest.mark.parametrize("format", sorted(FOLDER_WRITERS))
def test_import_every_format_as_subprocess(format, tmp_path):
    """The documented ``weightspace zoo import FORMAT DIR -o out.h5`` works for
    every format (the CLI always passes ``--on-error``, a reader without that
    option once made small-cnn-zoo fail every time)."""
    source = tmp_path / "published"
    rows = FOLDER_WRITERS[format](source)
    output = tmp_path / "out.h5"
    done = run("zoo", "import", format, str(source), "-o", str(output), "--json", "-q")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == rows
    with Zoo(output) as zoo:
        assert len(zoo) == rows


def test_import_skip_refused_where_there_is_nothing_to_skip(tmp_path, capsys):
    from weightspace.zoo import ZooError
    from weightspace.zoo.importing import import_zoo

    source = tmp_path / "published"
    rows = _write_small_cnn_zoo(source)
    # The Python call fails the same way the CLI did, before the fix.
    assert import_zoo("small-cnn-zoo", source, tmp_path / "a.h5")["rows"] == rows
    with pytest.raises(ZooError) as caught:
        import_zoo("small-cnn-zoo", source, tmp_path / "b.h5", on_error="skip")
    assert caught.value.parameter == "on_error"
    capsys.readouterr()
    assert main(["zoo", "import", "small-cnn-zoo", str(source), "-o", str(tmp_path / "c.h5"),
                 "--on-error", "skip"]) == EXIT_BAD_INPUT
    assert "--on-error" in capsys.readouterr().err
    assert not (tmp_path / "c.h5").exists()


def test_export_rows_count_within_the_group(zoo_path, tmp_path, capsys):
    """``--group G --rows 0:3`` is G's first three rows (once: "row indices
    must be integers, got float64", the global rows 0:3 being in another group)."""
    out = tmp_path / "out"
    assert main(["zoo", "export", str(zoo_path), "-o", str(out), "--group", "siren",
                 "--rows", "0:3,-1", "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    with Zoo(zoo_path) as zoo:
        siren = zoo.select(group="siren", finite=None)
        keys = list(zoo.column("key", siren[[0, 1, 2, -1]]))
    assert [Path(f).parent.name for f in files] == ["siren"] * 4
    index = json.loads((out / "index.json").read_text())
    assert sorted(str(entry["key"]) for entry in index) == sorted(str(k) for k in keys)
    assert main(["zoo", "export", str(zoo_path), "-o", str(out), "--group", "siren",
                 "--rows", "6"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "--rows" in err and "group 'siren' has 6 row(s)" in err
    assert main(["zoo", "export", str(zoo_path), "-o", str(out), "--group", "siren",
                 "--rows", "10:20"]) == EXIT_BAD_INPUT
    assert "no row matches group 'siren'" in capsys.readouterr().err
