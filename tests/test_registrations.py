import numpy as np
import pytest
import torch

from handlib import registrations as regs
from handlib.model import HandModel
from toy_hand import toy_params


@pytest.fixture(scope="module")
def model():
    return HandModel(toy_params(), side="right")


def test_names_as_in_the_mano_release():
    assert regs.parse_name("handsOnly_REGISTRATIONS_r_lm___POSES/01_03r.ply") == ("01", "03", "r")
    assert regs.parse_name("12_40l_mirrored.obj") == ("12", "40", "l")
    assert regs.parse_name("7_1.ply") == ("7", "1", None)
    with pytest.raises(ValueError, match="scan_a.ply.*subject"):
        regs.parse_name("/x/scan_a.ply")


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_written_registrations_read_back_grouped_by_subject(model, tmp_path, suffix):
    made = regs.synthetic_registrations(model, n_subjects=3, scans_per_subject=2, seed=1)
    order = np.random.default_rng(0).permutation(len(made))  # the reader sorts, whatever the file order
    files = regs.write_registrations(made, tmp_path, model.faces.numpy(), suffix=suffix)
    read = regs.read_registrations([files[i] for i in order], n_vertices=len(model.v_template))
    assert read.names == made.names and read.subjects == ["01", "01", "02", "02", "03", "03"]
    np.testing.assert_allclose(read.vertices, made.vertices, atol=1e-7)
    np.testing.assert_array_equal(read.subject_ids(), [0, 0, 1, 1, 2, 2])
    assert regs.read_registrations(tmp_path, len(model.v_template)).names == made.names


def test_bad_registrations_are_named_in_the_error(model, tmp_path):
    V = len(model.v_template)
    good = regs.synthetic_registrations(model, n_subjects=1, scans_per_subject=1, seed=2)
    (path,) = regs.write_registrations(good, tmp_path, model.faces.numpy())
    with pytest.raises(ValueError, match=rf"01_01r\.ply: {V} vertices, but the model has 778"):
        regs.read_registrations([path], n_vertices=778)
    nan = regs.Registrations(good.vertices.copy(), ["02"], ["02_01r"])
    nan.vertices[0, 5] = np.nan
    (nan_path,) = regs.write_registrations(nan, tmp_path, model.faces.numpy())
    with pytest.raises(ValueError, match=r"02_01r\.ply: 1 vertices have NaN"):
        regs.read_registrations([path, nan_path], n_vertices=V)
    broken = tmp_path / "03_01r.ply"
    broken.write_bytes(b"not a mesh at all")
    with pytest.raises(ValueError, match=r"03_01r\.ply: cannot be read as a mesh"):
        regs.read_registration(broken, V)
    with pytest.raises(FileNotFoundError, match="no .ply or .obj"):
        regs.read_registrations(_empty(tmp_path), V)


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_noise_free_registrations_are_the_models_meshes(model):
    made = regs.synthetic_registrations(model, n_subjects=2, scans_per_subject=3, noise_mm=0, smooth_noise_mm=0,
                                        residual_mm=0, seed=3)
    t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in made.truth.items()}
    with torch.no_grad():
        again = model(betas=t["betas"], hand_pose=t["hand_pose"], global_orient=t["global_orient"],
                      transl=t["transl"]).vertices
    np.testing.assert_allclose(made.vertices, again.numpy(), atol=1e-6)
    # one β per subject
    betas = made.truth["betas"]
    assert np.allclose(betas[:3], betas[0]) and not np.allclose(betas[0], betas[3])


def test_noise_and_residual_have_the_asked_sizes(model):
    made = regs.synthetic_registrations(model, n_subjects=4, scans_per_subject=4, noise_mm=0.5, smooth_noise_mm=1.0,
                                        residual_mm=1.5, seed=4)
    residual = made.truth["residual"]  # (S, V, 3) in the template
    assert np.sqrt((residual ** 2).sum(-1).mean(-1)) == pytest.approx([0.0015] * 4, rel=1e-6)
    # outside the shape space: orthogonal to every shape blend shape
    shapedirs = model.shapedirs.double().numpy().reshape(-1, model.num_betas)
    assert np.abs(residual.reshape(4, -1) @ shapedirs).max() < 1e-9 * np.abs(shapedirs).max()
    noise = made.vertices - made.truth["surface"]
    rms = np.sqrt((noise ** 2).sum(-1).mean())
    assert rms == pytest.approx(np.sqrt(1.0 ** 2 + 3 * 0.5 ** 2) / 1000, rel=0.1)
    assert not np.allclose(made.truth["surface"], made.truth["clean"])
