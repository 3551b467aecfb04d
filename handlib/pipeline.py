"""The main job: every numbered notebook executed headless with papermill, in order, under one run folder.

A run folder remembers which notebooks completed, with which parameters and which code revision
(`stages.json`); running into it again skips those and goes on from the first one that is not done.
Notebooks report their key figures with `record_figures`, which the final summary prints.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import papermill
import yaml

from handlib import paths
from handlib.io import atomic_write_text

NOTEBOOKS = paths.REPO / "notebooks"
CONFIGS = paths.REPO / "configs"
REPORT_NOTEBOOK = "05_evaluate"
KERNEL_LOG = "kernels.log"  # the kernels' own stderr, per run folder


def notebooks() -> list[Path]:
    """The numbered notebooks (`NN_name.ipynb`) in pipeline order."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def profile_parameters(notebook: Path, profile: str) -> dict:
    """The parameters of `profile` for `notebook` (configs/<profile>/<name>.yaml); none when absent."""
    if not (CONFIGS / profile).is_dir():
        known = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir())
        raise ValueError(f"unknown profile {profile!r}: configs/ holds {known}")
    path = CONFIGS / profile / f"{notebook.stem}.yaml"
    if not path.exists():
        return {}
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of parameter names to values, got {type(params).__name__}")
    return params


def code_revision() -> str:
    """The git revision of the code, marked dirty when the work tree has changes; 'unknown' outside git."""
    result = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=paths.REPO,
                            capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def latest_run_dir(profile: str) -> Path | None:
    """The newest `<date>-<time>-<profile>` folder under runs/ (folders named otherwise are the user's own)."""
    stamped = re.compile(rf"\d{{8}}-\d{{6}}-{re.escape(profile)}")
    runs = sorted(p for p in paths.RUNS.glob(f"*-{profile}") if stamped.fullmatch(p.name))
    return runs[-1] if runs else None


def new_run_dir(profile: str) -> Path:
    return paths.RUNS / f"{datetime.now():%Y%m%d-%H%M%S}-{profile}"


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it to run every stage again") from err


def record_figures(run_dir: str | Path, stage: str, figures: dict) -> None:
    """Remember a notebook's key figures (name -> number or short text) for the run's summary."""
    path = paths.resolve(run_dir) / "figures.json"
    table = _read_json(path)
    table[stage] = {**table.get(stage, {}), **figures}
    atomic_write_text(path, json.dumps(table, indent=1))


def run(profile: str = "demo", run_dir: Path | None = None, only: list[str] | None = None) -> Path:
    """Execute the notebooks (or those whose names start with one of `only`) into `run_dir`; return it."""
    run_dir = run_dir or new_run_dir(profile)
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ["HANDLIB_HEADLESS"] = "1"  # kernels inherit it: interactive steps (the review) decide by themselves
    selected = [nb for nb in notebooks() if not only or any(nb.stem.startswith(o) for o in only)]
    revision = code_revision()
    stages_path = run_dir / "stages.json"
    stages = _read_json(stages_path)
    print(f"run folder: {run_dir}  ({len(selected)} notebooks, profile {profile!r}, code {revision})", flush=True)
    rerun = False  # once a stage runs, every later stage runs too: it may read what the earlier one wrote
    for i, nb in enumerate(selected, 1):
        params = {**profile_parameters(nb, profile), "profile": profile, "run_dir": str(run_dir)}
        out = run_dir / nb.name
        done = stages.get(nb.stem, {})
        print(f"[{i}/{len(selected)}] {nb.stem} ...", end=" ", flush=True)
        if (not rerun and out.exists() and revision != "unknown" and not revision.endswith("-dirty")
                and done.get("params") == params and done.get("revision") == revision):
            print("already done, skipped", flush=True)
            continue
        rerun = True
        start = time.perf_counter()
        try:
            with kernel_stderr_to(run_dir / KERNEL_LOG):
                papermill.execute_notebook(nb, out, parameters=params, cwd=str(paths.REPO), progress_bar=False)
        except papermill.PapermillExecutionError as err:
            print(f"FAILED after {time.perf_counter() - start:.0f} s")
            raise SystemExit(f"{nb.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                             f"the executed notebook up to the failure is {out}; the kernel's own messages are "
                             f"in {run_dir / KERNEL_LOG}") from err
        except Exception:
            print(f"FAILED after {time.perf_counter() - start:.0f} s; the kernel's own messages are in "
                  f"{run_dir / KERNEL_LOG}")
            raise
        seconds = time.perf_counter() - start
        stages[nb.stem] = {"params": params, "revision": revision, "seconds": round(seconds, 1)}
        atomic_write_text(stages_path, json.dumps(stages, indent=1))
        print(f"done in {seconds:.0f} s -> {out}", flush=True)
    if any(nb.stem == REPORT_NOTEBOOK for nb in selected):
        print(f"report: {write_report(run_dir / f'{REPORT_NOTEBOOK}.ipynb')}")
    print(summary_table(run_dir, [nb.stem for nb in selected], stages))
    return run_dir


@contextlib.contextmanager
def kernel_stderr_to(path: Path):
    """Kernels started inside write their process's stderr to `path` (appended), not to the terminal: the kernel's
    own warnings ("running over TCP without encryption") and C++ libraries' logging (mediapipe's TensorFlow Lite
    and absl lines) would break the progress lines. A kernel inherits file descriptor 2 from this process, so
    that is what is redirected, for the duration. The notebook's own warnings still land in its cells."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def write_report(executed: Path) -> Path:
    """The executed evaluation notebook as `report.html` beside it, code cells hidden."""
    import nbconvert

    exporter = nbconvert.HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    html, _ = exporter.from_filename(str(executed))
    out = executed.parent / "report.html"
    atomic_write_text(out, html)
    return out


def summary_table(run_dir: Path, stems: list[str], stages: dict) -> str:
    figures = _read_json(run_dir / "figures.json")
    rows = []
    for stem in stems:
        seconds = stages.get(stem, {}).get("seconds", float("nan"))
        key = ", ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}"
                        for k, v in figures.get(stem, {}).items())
        rows.append(f"  {stem:<18} {seconds:7.0f} s   {key}")
    total = sum(stages.get(s, {}).get("seconds", 0.0) for s in stems)
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    return "\n".join(["", "summary (stage, time, key figures)", *rows, f"  {'total':<18} {total:7.0f} s",
                      f"  {len(files)} files ({size_mb:.1f} MB) in {run_dir}"])
