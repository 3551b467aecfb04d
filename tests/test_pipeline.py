import nbformat
import pytest

from handlib import doctor, pipeline


def _notebook(path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "quick"\nrun_dir = "runs/quick"\nvalue = 1')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def project(tmp_path, monkeypatch):
    notebooks, configs = tmp_path / "notebooks", tmp_path / "configs"
    notebooks.mkdir()
    (configs / "demo").mkdir(parents=True)
    monkeypatch.setattr(pipeline, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(pipeline, "CONFIGS", configs)
    return notebooks, configs


def test_profile_parameters_reads_yaml_and_defaults_to_none(project):
    notebooks, configs = project
    (configs / "demo" / "01_b.yaml").write_text("value: 7\nname: x\n")
    assert pipeline.profile_parameters(notebooks / "01_b.ipynb", "demo") == {"value": 7, "name": "x"}
    assert pipeline.profile_parameters(notebooks / "02_c.ipynb", "demo") == {}


def test_unknown_profile_and_bad_yaml_are_named(project):
    notebooks, configs = project
    with pytest.raises(ValueError, match="unknown profile 'nope'.*demo"):
        pipeline.profile_parameters(notebooks / "01_b.ipynb", "nope")
    (configs / "demo" / "01_b.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="01_b.yaml: expected a mapping"):
        pipeline.profile_parameters(notebooks / "01_b.ipynb", "demo")


def test_run_executes_numbered_notebooks_in_order_with_profile(project, tmp_path, capsys):
    notebooks, configs = project
    log = tmp_path / "order.txt"
    for name in ["01_second", "00_first"]:
        _notebook(notebooks / f"{name}.ipynb",
                  f"open({str(log)!r}, 'a').write('{name} ' + profile + ' ' + str(value) + '\\n')")
    _notebook(notebooks / "helper.ipynb", "raise RuntimeError('not numbered: must not run')")
    (configs / "demo" / "01_second.yaml").write_text("value: 5\n")
    run_dir = pipeline.run("demo", run_dir=tmp_path / "run")
    assert log.read_text().splitlines() == ["00_first demo 1", "01_second demo 5"]
    assert sorted(p.name for p in run_dir.glob("*.ipynb")) == ["00_first.ipynb", "01_second.ipynb"]
    out = capsys.readouterr().out
    assert "[1/2] 00_first" in out and "[2/2] 01_second" in out and "summary" in out


def test_run_stops_at_a_failing_notebook_and_names_it(project, tmp_path):
    notebooks, _ = project
    _notebook(notebooks / "00_bad.ipynb", "raise ValueError('broken input')")
    with pytest.raises(SystemExit, match="00_bad.ipynb failed.*broken input"):
        pipeline.run("demo", run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "00_bad.ipynb").exists()


def test_the_kernels_own_stderr_goes_to_the_run_folder_log(project, tmp_path, capfd):
    notebooks, _ = project
    # as a C++ library logs: straight to file descriptor 2, past Python's sys.stderr
    _notebook(notebooks / "00_noisy.ipynb", "import os\nos.write(2, b'W0000 native log line\\n')\nprint('cell output')")
    run_dir = pipeline.run("demo", run_dir=tmp_path / "run")
    out, err = capfd.readouterr()
    assert "native log line" not in out + err and "[1/1] 00_noisy ... done" in out
    assert "W0000 native log line" in (run_dir / pipeline.KERNEL_LOG).read_text()
    assert "cell output" in (run_dir / "00_noisy.ipynb").read_text()  # the notebook's own output is untouched
    with pipeline.kernel_stderr_to(tmp_path / "other.log"):
        pass
    import os
    os.write(2, b"after\n")  # descriptor 2 is the terminal's again
    assert capfd.readouterr().err == "after\n"


def test_doctor_reports_missing_optional_data(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor.paths, "MANO_DIR", tmp_path / "mano")
    monkeypatch.setattr(doctor.paths, "HANDS11K_DIR", tmp_path / "11k")
    text = doctor.report()
    assert "built-in MANO-compatible hand" in text and "generated 11K-style dataset" in text
    (tmp_path / "mano").mkdir()
    (tmp_path / "mano" / "MANO_RIGHT.pkl").write_bytes(b"")
    assert f"real MANO model: {tmp_path / 'mano' / 'MANO_RIGHT.pkl'}" in doctor.report()


def test_doctor_names_the_system_packages_when_opengl_fails(monkeypatch):
    import handlib.gl

    def no_egl(**kwargs):
        raise Exception("libEGL.so.1: cannot open shared object file")

    monkeypatch.setattr(handlib.gl.moderngl, "create_context", no_egl)
    handlib.gl.get_context.cache_clear()
    try:
        line = doctor.opengl_line()
    finally:
        handlib.gl.get_context.cache_clear()
    assert line.startswith("NOT AVAILABLE") and "libEGL.so.1" in line
    assert "apt-get install libegl1 libgl1-mesa-dri libegl-mesa0" in line


def test_rerun_skips_done_stages_until_one_changes(project, tmp_path, monkeypatch, capsys):
    notebooks, configs = project
    monkeypatch.setattr(pipeline, "code_revision", lambda: "abc123")
    log = tmp_path / "order.txt"
    for name in ["00_first", "01_second", "02_third"]:
        _notebook(notebooks / f"{name}.ipynb", f"open({str(log)!r}, 'a').write('{name}\\n')")
    run_dir = tmp_path / "run"
    pipeline.run("demo", run_dir=run_dir)
    pipeline.run("demo", run_dir=run_dir)
    assert log.read_text().split() == ["00_first", "01_second", "02_third"]
    assert capsys.readouterr().out.count("already done, skipped") == 3
    (configs / "demo" / "01_second.yaml").write_text("value: 2\n")
    pipeline.run("demo", run_dir=run_dir)
    assert log.read_text().split()[3:] == ["01_second", "02_third"]
    monkeypatch.setattr(pipeline, "code_revision", lambda: "def456")
    pipeline.run("demo", run_dir=run_dir)
    assert log.read_text().split()[5:] == ["00_first", "01_second", "02_third"]


def test_recorded_figures_appear_in_the_summary(project, tmp_path, capsys):
    notebooks, _ = project
    _notebook(notebooks / "00_fig.ipynb",
              "from handlib.pipeline import record_figures\n"
              "record_figures(run_dir, '00_fig', {'PA-MPJPE (mm)': 7.25, 'model': 'builtin'})")
    pipeline.run("demo", run_dir=tmp_path / "run")
    line = next(l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("00_fig"))
    assert "PA-MPJPE (mm): 7.25" in line and "model: builtin" in line


def test_doctor_finds_a_converted_npz_too(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor.paths, "MANO_DIR", tmp_path)
    (tmp_path / "MANO_LEFT.npz").write_bytes(b"")
    assert f"real MANO model: {tmp_path / 'MANO_LEFT.npz'}" in doctor.mano_line("left")
    assert "built-in" in doctor.mano_line("right")


def test_make_run_continues_only_its_own_timestamped_folders(tmp_path, monkeypatch):
    from handlib import paths

    monkeypatch.setattr(paths, "RUNS", tmp_path)
    assert pipeline.latest_run_dir("demo") is None
    for name in ("20261127-101500-demo", "20261127-090000-demo", "my-own-demo", "zz-demo", "20261128-000000-quick"):
        (tmp_path / name).mkdir()
    assert pipeline.latest_run_dir("demo") == tmp_path / "20261127-101500-demo"
    assert pipeline.latest_run_dir("quick") == tmp_path / "20261128-000000-quick"
