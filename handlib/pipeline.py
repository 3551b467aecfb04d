"""The main job: every numbered notebook executed headless with papermill, in order, under one run folder."""

import time
from datetime import datetime
from pathlib import Path

import papermill
import yaml

from handlib import paths

NOTEBOOKS = paths.REPO / "notebooks"
CONFIGS = paths.REPO / "configs"


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


def new_run_dir(profile: str) -> Path:
    return paths.RUNS / f"{datetime.now():%Y%m%d-%H%M%S}-{profile}"


def run(profile: str = "demo", run_dir: Path | None = None, only: list[str] | None = None) -> Path:
    """Execute the notebooks (or those whose names start with one of `only`) into `run_dir`; return it."""
    run_dir = run_dir or new_run_dir(profile)
    run_dir.mkdir(parents=True, exist_ok=True)
    selected = [nb for nb in notebooks() if not only or any(nb.stem.startswith(o) for o in only)]
    print(f"run folder: {run_dir}  ({len(selected)} notebooks, profile {profile!r})", flush=True)
    summary = []
    for i, nb in enumerate(selected, 1):
        params = {**profile_parameters(nb, profile), "profile": profile, "run_dir": str(run_dir)}
        out = run_dir / nb.name
        print(f"[{i}/{len(selected)}] {nb.stem} ...", end=" ", flush=True)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(nb, out, parameters=params, cwd=str(paths.REPO), progress_bar=False)
        except papermill.PapermillExecutionError as err:
            print(f"FAILED after {time.perf_counter() - start:.0f} s")
            raise SystemExit(f"{nb.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                             f"the executed notebook up to the failure is {out}") from err
        seconds = time.perf_counter() - start
        print(f"done in {seconds:.0f} s -> {out}", flush=True)
        summary.append((nb.stem, seconds))
    print(summary_table(run_dir, summary))
    return run_dir


def summary_table(run_dir: Path, summary: list[tuple[str, float]]) -> str:
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    rows = [f"  {name:<20} {seconds:8.0f} s" for name, seconds in summary]
    total = sum(s for _, s in summary)
    return "\n".join(["", "summary", *rows, f"  {'total':<20} {total:8.0f} s",
                      f"  {len(files)} files ({size_mb:.1f} MB) in {run_dir}"])
