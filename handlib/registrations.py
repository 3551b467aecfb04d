"""Registrations: meshes in the model's topology, one per scan, grouped by subject.

The MANO scan release names its registrations `SS_PPs.ply` (subject SS, scan PP, side r or l, e.g.
`01_03r.ply` in `handsOnly_REGISTRATIONS_r_lm___POSES/`); `read_registrations` reads a folder or a list of such
.ply/.obj files through trimesh. The embedded default, `synthetic_registrations`, makes them from a hand model
with known β and θ, adds a non-model residual per subject and registration noise per scan, and keeps the truth
so that recovery can be measured.
"""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
import trimesh
from scipy.spatial.transform import Rotation

from handlib import anatomy
from handlib.io import atomic_path

NAME_PATTERN = re.compile(r"^(?P<subject>\d+)_(?P<scan>\d+)(?P<side>[rl])?")
SUFFIXES = (".ply", ".obj")


@dataclass
class Registrations:
    """N registrations: vertices (N, V, 3) in metres, subject and name per registration; `truth` holds the
    generating parameters of synthetic ones (betas, hand_pose, global_orient, transl, clean vertices)."""
    vertices: np.ndarray
    subjects: list[str]
    names: list[str]
    truth: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.vertices)

    def subject_ids(self) -> np.ndarray:
        """Index (N,) of each registration's subject in sorted(set(subjects))."""
        return np.unique(np.asarray(self.subjects), return_inverse=True)[1]


def parse_name(path: str | os.PathLike, pattern: re.Pattern = NAME_PATTERN) -> tuple[str, str, str | None]:
    """(subject, scan, side) from a registration's file name, e.g. '01_03r.ply' -> ('01', '03', 'r')."""
    match = pattern.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: the file name does not say its subject; expected SUBJECT_SCAN[r|l].ply "
                         f"as in the MANO release (pattern {pattern.pattern!r})")
    return match["subject"], match["scan"], match.groupdict().get("side")


def read_registration(path: str | os.PathLike, n_vertices: int) -> np.ndarray:
    """Vertices (n_vertices, 3) of one .ply/.obj registration, with vertex order kept."""
    path = Path(path)
    try:
        mesh = trimesh.load(path, process=False, force="mesh", maintain_order=True)
    except Exception as err:  # trimesh raises many types for a file it cannot parse
        raise ValueError(f"{path}: cannot be read as a mesh ({type(err).__name__}: {err})") from err
    vertices = np.asarray(getattr(mesh, "vertices", np.empty((0, 3))), dtype=np.float64)
    if len(vertices) != n_vertices:
        raise ValueError(f"{path}: {len(vertices)} vertices, but the model has {n_vertices}; a registration must "
                         f"be in the model's topology")
    if not np.isfinite(vertices).all():
        bad = np.flatnonzero(~np.isfinite(vertices).all(1))
        raise ValueError(f"{path}: {len(bad)} vertices have NaN or inf coordinates (first: {bad[:5].tolist()})")
    return vertices


def registration_files(folder: str | os.PathLike) -> list[Path]:
    """The .ply/.obj files in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of registrations")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no .ply or .obj registrations in it")
    return files


def read_registrations(source: str | os.PathLike | list, n_vertices: int = 778,
                       pattern: re.Pattern = NAME_PATTERN) -> Registrations:
    """Read a folder (or a list of files) of registrations, sorted by subject then scan."""
    files = registration_files(source) if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    keyed = sorted((parse_name(p, pattern), p) for p in files)
    vertices = np.stack([read_registration(p, n_vertices) for _, p in keyed])
    return Registrations(vertices, [k[0] for k, _ in keyed], [p.stem for _, p in keyed])


def write_registrations(registrations: Registrations, folder: str | os.PathLike, faces: np.ndarray,
                        suffix: str = ".ply") -> list[Path]:
    """Write each registration as `<name><suffix>` (atomically); returns the paths."""
    if suffix not in SUFFIXES:
        raise ValueError(f"suffix must be one of {SUFFIXES}, got {suffix!r}")
    out = []
    for name, verts in zip(registrations.names, registrations.vertices):
        path = Path(folder) / f"{name}{suffix}"
        with atomic_path(path) as tmp:
            trimesh.Trimesh(verts, faces, process=False).export(tmp, file_type=suffix[1:])
        out.append(path)
    return out


def smooth_field(faces: np.ndarray, n_vertices: int, rms: float, rng: np.random.Generator,
                 iterations: int = 10, remove: np.ndarray | None = None) -> np.ndarray:
    """A random smooth displacement field (V, 3) with root-mean-square length `rms`: white noise averaged
    over mesh neighbours `iterations` times, with the span of the columns of `remove` (3V, K) projected out."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adj = scipy.sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), (n_vertices, n_vertices))
    adj = ((adj + adj.T) > 0).astype(np.float64) + scipy.sparse.identity(n_vertices)
    average = scipy.sparse.diags(1 / np.asarray(adj.sum(1)).ravel()) @ adj
    x = rng.normal(size=(n_vertices, 3))
    for _ in range(iterations):
        x = average @ x
    if remove is not None:
        q, _ = np.linalg.qr(remove)
        flat = x.reshape(-1)
        x = (flat - q @ (q.T @ flat)).reshape(n_vertices, 3)
    return x * rms / np.sqrt((x ** 2).sum(1).mean())


def synthetic_registrations(model, n_subjects: int = 8, scans_per_subject: int = 6, noise_mm: float = 0.5,
                            smooth_noise_mm: float = 1.0, residual_mm: float = 1.5, beta_std: float = 1.0,
                            transl_std: float = 0.1, seed: int = 0) -> Registrations:
    """Registrations made by `model` (a HandModel) with known β (one per subject) and θ (anatomically plausible,
    random), a random rigid placement, plus
      - a non-model residual per subject: a smooth field of RMS `residual_mm` added to the template, outside
        the span of the shape blend shapes, so it is posed with the hand and no β explains it;
      - registration noise per scan: a smooth field of RMS `smooth_noise_mm` and white noise of `noise_mm`
        standard deviation per coordinate.
    With all three at 0 the registrations are exactly the model's meshes. truth: betas, hand_pose,
    global_orient, transl (N, ...), 'clean' the model's meshes of them, 'surface' those with the subject's
    residual (the registration before noise), 'residual' (n_subjects, V, 3) in the template."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    dtype = model.v_template.dtype
    N, V = n_subjects * scans_per_subject, model.v_template.shape[0]
    faces = model.faces.cpu().numpy()
    subject_betas = rng.normal(0, beta_std, (n_subjects, model.num_betas))
    subject_of = np.repeat(np.arange(n_subjects), scans_per_subject)
    betas = torch.as_tensor(subject_betas[subject_of], dtype=dtype)
    hand_pose = anatomy.pose_from_angles(anatomy.random_angles(N, gen, dtype=dtype), model).detach()
    orient = torch.as_tensor(Rotation.random(N, random_state=rng).as_rotvec(), dtype=dtype)
    transl = torch.as_tensor(rng.normal(0, transl_std, (N, 3)), dtype=dtype)
    params = model.mano_params()
    shape_span = params["shapedirs"].reshape(V * 3, -1)
    clean, with_residual, residuals = [], [], []
    with torch.no_grad():
        for s in range(n_subjects):
            rows = np.flatnonzero(subject_of == s)
            args = dict(betas=betas[rows], hand_pose=hand_pose[rows], global_orient=orient[rows], transl=transl[rows])
            residual = smooth_field(faces, V, residual_mm / 1000, rng, remove=shape_span) if residual_mm else \
                np.zeros((V, 3))
            own = type(model)({**params, "v_template": params["v_template"] + residual}, side=model.side,
                              flat_hand_mean=model.flat_hand_mean).to(dtype)
            clean.append(model(**args).vertices.double().numpy())
            with_residual.append(own(**args).vertices.double().numpy())
            residuals.append(residual)
    clean, surface = np.concatenate(clean), np.concatenate(with_residual)
    vertices = surface.copy()
    if smooth_noise_mm:
        for i in range(N):
            vertices[i] += smooth_field(faces, V, smooth_noise_mm / 1000, rng)
    vertices += rng.normal(0, noise_mm / 1000, vertices.shape)
    subjects = [f"{s + 1:02d}" for s in subject_of]
    names = [f"{subj}_{k % scans_per_subject + 1:02d}{model.side[0]}" for k, subj in enumerate(subjects)]
    truth = {"betas": betas.double().numpy(), "hand_pose": hand_pose.double().numpy(),
             "global_orient": orient.double().numpy(), "transl": transl.double().numpy(),
             "clean": clean, "surface": surface, "residual": np.stack(residuals)}
    return Registrations(vertices, subjects, names, truth)
