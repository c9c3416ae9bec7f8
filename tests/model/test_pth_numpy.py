"""Reading torch.save checkpoints without torch: every tensor as torch.load reads it, and nothing else runs."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from docstream.model.pth_numpy import load_pth

BUILTIN = Path(__file__).resolve().parents[2] / "docstream" / "data" / "default_model" / "model.pth"


def _expected(path: Path) -> dict[str, np.ndarray]:
    """torch.load's tensors as numpy: floats widened to float32, ints as they are."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (t.float() if t.is_floating_point() else t).numpy() for k, t in sd.items()}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Same names, dtypes, shapes and values; each array contiguous, writable and sharing no memory."""
    assert list(got) == list(want)
    for name, w in want.items():
        assert got[name].dtype == w.dtype, name
        assert got[name].shape == w.shape, name
        assert got[name].flags.c_contiguous and got[name].flags.writeable, name
        np.testing.assert_array_equal(got[name], w, err_msg=name)
    arrays = list(got.values())
    for i, a in enumerate(arrays):
        assert not any(np.may_share_memory(a, b) for b in arrays[i + 1:]), list(got)[i]


def test_every_dtype_and_layout_reads_as_torch_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 6, 7, generator=g) * 100
    big = torch.randn(40, generator=g)
    sd = {}
    for name, dtype in (("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)):
        t = base.to(dtype)
        sd[f"{name}.contiguous"] = t
        sd[f"{name}.transposed"] = t.transpose(0, 2)  # non-contiguous strides
        sd[f"{name}.offset_slice"] = t[2:, 1:5:2, 3]  # offset, step and a dropped dimension
        sd[f"{name}.scalar"] = t[1, 2, 3]  # 0-d, offset into the storage
        sd[f"{name}.empty"] = t[:, :0]
    sd["i64"] = torch.arange(-20, 20, dtype=torch.int64).reshape(4, 10)[1:, ::3]
    sd["shared_a"], sd["shared_b"] = big[:10], big[30:]  # one storage, two views
    sd["tied_a"] = sd["tied_b"] = torch.randn(4, generator=g)  # one whole storage, twice
    sd["expanded"] = torch.randn(3, 1, generator=g).expand(3, 4)  # stride 0
    sd["bf16.extremes"] = torch.tensor([0.0, -0.0, 1e38, -1e-38, float("inf"), 3.0e-39], dtype=torch.bfloat16)
    path = tmp_path / "mixed.pth"
    torch.save(sd, path)
    _assert_same(load_pth(path), _expected(path))


def test_ordered_dicts_and_parameters_read_as_plain_arrays(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "params.pth"
    torch.save(dict(model.named_parameters()), path)  # nn.Parameter pickles through _rebuild_parameter
    _assert_same(load_pth(path), {k: v.detach().numpy() for k, v in model.named_parameters()})
    torch.save(model.state_dict(), path)  # an OrderedDict
    _assert_same(load_pth(path), _expected(path))


def test_skip_leaves_tensors_out(tmp_path):
    path = tmp_path / "two.pth"
    torch.save({"keep": torch.ones(2), "head.weight": torch.zeros(3)}, path)
    assert list(load_pth(path, skip={"head.weight"})) == ["keep"]


def test_builtin_model_reads_as_torch_load():
    """The shipped bf16 checkpoint, tensor for tensor."""
    got = load_pth(BUILTIN)
    assert all(a.dtype == np.float32 for a in got.values())
    _assert_same(got, _expected(BUILTIN))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "x": _Exploit(marker)}, path)
    with pytest.raises(ValueError, match="system.*refused"):
        load_pth(path)
    assert not marker.exists()


def test_unsupported_dtype_is_named(tmp_path):
    path = tmp_path / "f64.pth"
    torch.save({"w": torch.ones(2, dtype=torch.float64)}, path)
    with pytest.raises(ValueError, match="DoubleStorage.*fp32, fp16, bf16 and int64"):
        load_pth(path)


def test_legacy_format_says_torch_is_needed(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="legacy.*needs torch"):
        load_pth(path)


def test_not_a_state_dict_of_tensors(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.ones(2)], path)
    with pytest.raises(ValueError, match="state dict of tensors"):
        load_pth(path)
    torch.save({"w": torch.ones(2), "step": 3}, path)
    with pytest.raises(ValueError, match="state dict of tensors"):
        load_pth(path)


def _rewrite(src: Path, dest: Path, change) -> None:
    """Copy the zip archive ``src`` to ``dest`` with ``change(name, data)`` giving each entry's new bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))


def test_a_view_past_its_storage_is_refused(tmp_path):
    """A damaged file whose storage is shorter than its tensor's view: never read out of bounds."""
    good = tmp_path / "good.pth"
    torch.save({"w": torch.arange(10, dtype=torch.float32)[4:]}, good)
    bad = tmp_path / "bad.pth"
    _rewrite(good, bad, lambda name, data: data[:16] if name.endswith("data/0") else data)  # 4 of 10 floats
    with pytest.raises(ValueError, match="reaches element 9 of a storage of 4.*damaged"):
        load_pth(bad)


def test_damaged_files_raise_value_error(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(8)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.pth"):
        load_pth(truncated)
    missing = tmp_path / "missing.pth"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(missing, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("data/0"):
                zout.writestr(info.filename, zin.read(info.filename))
    with pytest.raises(ValueError, match="lacks the storage data/0"):
        load_pth(missing)
    with pytest.raises(FileNotFoundError):
        load_pth(tmp_path / "absent.pth")
