"""Data-free merge methods (exact formulas on hand-made state dicts) and
mergekit-style merge configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from weightspace.merge import (
    MERGE_METHODS,
    MergeConfigError,
    average,
    dare,
    interpolate,
    load_merge_config,
    merge,
    task_arithmetic,
    ties,
)


def sd(w, b=None, steps=3, dtype=torch.float32):
    """A tiny state dict: a weight, a bias and an integer buffer."""
    out = {"w": torch.tensor(w, dtype=dtype)}
    if b is not None:
        out["b"] = torch.tensor(b, dtype=dtype)
    out["bn.num_batches_tracked"] = torch.tensor(steps)
    return out


# --------------------------------------------------------------- interpolate / average
def test_interpolate_endpoints_exact_and_midpoint():
    a = sd([[1.0, 2.0], [3.0, 4.0]], [0.5, -1.0], steps=3)
    b = sd([[0.1, -2.0], [7.0, 0.3]], [1.5, 2.0], steps=9)
    for key in ("w", "b"):
        assert torch.equal(interpolate(a, b, 0.0)[key], a[key])
        assert torch.equal(interpolate(a, b, 1.0)[key], b[key])
    mid = interpolate(a, b, 0.25)
    torch.testing.assert_close(mid["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert int(mid["bn.num_batches_tracked"]) == 3  # integer buffers from the first model
    assert list(mid) == list(a)
    assert mid["w"] is not a["w"]


def test_average_weighted_mean_and_dtype():
    states = [sd([1.0, 2.0], dtype=torch.float64), sd([3.0, 6.0], dtype=torch.float64),
              sd([5.0, -4.0], dtype=torch.float64)]
    out = average(states)
    torch.testing.assert_close(out["w"], torch.tensor([3.0, 4.0 / 3], dtype=torch.float64))
    assert out["w"].dtype == torch.float64
    out = average(states, weights=[1.0, 2.0, 1.0])
    torch.testing.assert_close(out["w"], torch.tensor([(1 + 6 + 5) / 4, (2 + 12 - 4) / 4],
                                                      dtype=torch.float64))
    half = [sd([1.0, 2.0], dtype=torch.float16), sd([3.0, 4.0], dtype=torch.float16)]
    assert average(half)["w"].dtype == torch.float16
    with pytest.raises(ValueError, match="sum to zero"):
        average(states[:2], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="3 models"):
        average(states, weights=[1.0, 2.0])


# ------------------------------------------------------------------ task arithmetic
def test_task_arithmetic_formula_and_single_model_identity():
    base = sd([1.0, 1.0, 1.0], [0.0])
    m1 = sd([2.0, 0.0, 1.0], [1.0])
    m2 = sd([1.0, 3.0, -1.0], [-2.0])
    generator = torch.Generator().manual_seed(0)
    rand_base = {"w": torch.randn(4, 3, generator=generator), "n": torch.tensor(1)}
    rand_model = {"w": torch.randn(4, 3, generator=generator), "n": torch.tensor(2)}
    same = task_arithmetic(rand_base, [rand_model])
    torch.testing.assert_close(same["w"], rand_model["w"])
    out = task_arithmetic(base, [m1, m2], scaling=0.5, weights=[1.0, 2.0])
    expected = base["w"] + 0.5 * ((m1["w"] - base["w"]) + 2 * (m2["w"] - base["w"]))
    torch.testing.assert_close(out["w"], expected)
    torch.testing.assert_close(out["b"], torch.tensor([0.5 * (1.0 - 4.0)]))


# ------------------------------------------------------------------------------ TIES
TAUS = [[3.0, -1.0, 0.5, -4.0, 2.0], [-2.0, 1.5, 1.0, -1.0, -3.0], [1.0, -2.0, 0.2, 5.0, 0.1]]


def ties_states():
    base_w = torch.tensor([0.5, -0.5, 1.0, 2.0, 0.0])
    base = {"w": base_w, "m": torch.zeros(2, 2), "n": torch.tensor(7)}
    m_taus = [torch.tensor([[1.0, -2.0], [3.0, 0.0]]), torch.tensor([[3.0, 1.0], [-1.0, 0.0]]),
              torch.zeros(2, 2)]
    states = [{"w": base_w + torch.tensor(t), "m": m, "n": torch.tensor(i)}
              for i, (t, m) in enumerate(zip(TAUS, m_taus, strict=True))]
    return base, states


def test_ties_matches_hand_computation():
    base, states = ties_states()
    # density 0.4 of 5 entries keeps 2 per model:
    #   τ1 -> [3, 0, 0, -4, 0], τ2 -> [-2, 0, 0, 0, -3], τ3 -> [0, -2, 0, 5, 0]
    # elected signs of the sum [1, -2, 0, 1, -3]: [+, -, 0, +, -]
    # disjoint mean of the agreeing entries: [3, -2, 0, 5, -3]
    out = ties(base, states, density=0.4, scaling=0.5)
    torch.testing.assert_close(out["w"], base["w"] + 0.5 * torch.tensor([3.0, -2.0, 0.0, 5.0,
                                                                         -3.0]))
    # 2x2 tensor (density 0.4 keeps 2 of 4): τ1 -> [[0,-2],[3,0]], τ2 -> [[3,0],[0,0]] (ties at
    # |1| broken by topk; both candidates are below 3); τ3 all 0; sum [[3,-2],[3,0]]
    torch.testing.assert_close(out["m"], 0.5 * torch.tensor([[3.0, -2.0], [3.0, 0.0]]))
    assert int(out["n"]) == 7  # integer buffer from the base
    # no trimming: the disjoint mean averages agreeing entries
    full = ties(base, states, density=1.0)
    torch.testing.assert_close(full["m"], torch.tensor([[2.0, -2.0], [3.0, 0.0]]))
    # weights enter the election and the mean: weighted sum [-1, -2, 0, 1, -6]
    weighted = ties(base, states, density=0.4, weights=[1.0, 2.0, 1.0])
    torch.testing.assert_close(weighted["w"], base["w"] + torch.tensor([-2.0, -2.0, 0.0, 5.0,
                                                                        -3.0]))


def test_ties_per_model_density_and_bad_arguments():
    base, states = ties_states()
    out = ties(base, states, density=[0.2, 1.0, 0.2])  # keep 1, 5, 1 entries
    # τ1 -> [0,0,0,-4,0], τ2 full, τ3 -> [0,0,0,5,0]; sum [-2, 1.5, 1, 0, -3]
    expected = torch.tensor([-2.0, 1.5, 1.0, 0.0, -3.0])
    torch.testing.assert_close(out["w"], base["w"] + expected)
    with pytest.raises(ValueError, match="density of model 1"):
        ties(base, states, density=[0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match="positive"):
        ties(base, states, weights=[1.0, -1.0, 1.0])


# ------------------------------------------------------------------------------ DARE
def test_dare_is_seeded_drops_the_right_fraction_and_keeps_the_expectation():
    n = 200_000
    base = {"w": torch.zeros(n), "v": torch.zeros(3)}
    state = {"w": torch.ones(n), "v": torch.ones(3)}
    out = dare(base, [state], density=0.3, seed=5)
    again = dare(base, [state], density=0.3, seed=5)
    other = dare(base, [state], density=0.3, seed=6)
    assert torch.equal(out["w"], again["w"])
    assert not torch.equal(out["w"], other["w"])
    dropped = float((out["w"] == 0).float().mean())
    assert abs(dropped - 0.7) < 0.01
    kept = out["w"][out["w"] != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.3))  # rescaled by 1/density
    assert abs(float(out["w"].mean()) - 1.0) < 0.02  # expectation preserved
    plain = dare(base, [state], density=0.3, seed=5, rescale=False)
    assert torch.equal(plain["w"] != 0, out["w"] != 0)
    assert abs(float(plain["w"].mean()) - 0.3) < 0.01
    # the mask of one key does not depend on the other keys
    alone = dare({"w": base["w"]}, [{"w": state["w"]}], density=0.3, seed=5)
    assert torch.equal(alone["w"], out["w"])


def test_dare_sum_and_ties_combinations():
    base, states = ties_states()
    assert torch.equal(dare(base, states, density=1.0)["w"],
                       task_arithmetic(base, states)["w"])
    assert torch.equal(dare(base, states, density=1.0, ties=True)["w"],
                       ties(base, states, density=1.0)["w"])
    # the weighted sum of the dropped task vectors, scaled
    out = dare(base, states, density=0.5, seed=1, scaling=2.0, weights=[1.0, 0.5, 2.0])
    expected = base["w"].clone()
    for i, w in enumerate([1.0, 0.5, 2.0]):
        one_hot = [float(i == j) for j in range(3)]
        alone = dare(base, states, density=0.5, seed=1, weights=one_hot)["w"] - base["w"]
        kept = alone.abs() > 1e-6  # kept entries are rescaled by 1 / density
        torch.testing.assert_close(alone[kept], 2 * torch.tensor(TAUS[i])[kept])
        expected = expected + 2.0 * w * alone
    torch.testing.assert_close(out["w"], expected)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("method", ["interpolate", "average", "task-arith", "ties", "dare"])
def test_mismatch_and_nan_errors_name_the_key(method):
    def call(a, b):
        if method == "interpolate":
            return interpolate(a, b, 0.5)
        if method == "average":
            return average([a, b])
        return MERGE_METHODS[method](a, [b])

    good = {"layer.weight": torch.ones(2, 3), "layer.bias": torch.zeros(2)}
    missing = {"layer.weight": torch.ones(2, 3)}
    extra = {**good, "layer.extra": torch.ones(1)}
    shape = {"layer.weight": torch.ones(3, 2), "layer.bias": torch.zeros(2)}
    nan = {"layer.weight": torch.ones(2, 3), "layer.bias": torch.tensor([0.0, math.nan])}
    inf = {"layer.weight": torch.full((2, 3), math.inf), "layer.bias": torch.zeros(2)}
    with pytest.raises(ValueError, match="'layer.bias'"):
        call(good, missing)
    with pytest.raises(ValueError, match="'layer.extra'"):
        call(good, extra)
    with pytest.raises(ValueError, match=r"'layer.weight'.*shape \[3, 2\]"):
        call(good, shape)
    second = "model 1" if method in ("interpolate", "average") else "model 0"
    with pytest.raises(ValueError, match=rf"{second}.*'layer.bias'.*NaN"):
        call(good, nan)
    first = "model 0" if method in ("interpolate", "average") else "base model"
    with pytest.raises(ValueError, match=rf"{first}.*'layer.weight'.*infinite"):
        call(inf, good)


def test_merge_dispatcher():
    base, states = ties_states()
    assert set(MERGE_METHODS) == {"average", "task-arith", "ties", "dare"}
    torch.testing.assert_close(merge("ties", states, base=base, density=0.4)["w"],
                               ties(base, states, density=0.4)["w"])
    torch.testing.assert_close(merge("average", states)["w"], average(states)["w"])
    with pytest.raises(ValueError, match="needs a base"):
        merge("ties", states)
    with pytest.raises(ValueError, match="does not use a base"):
        merge("average", states, base=base)
    with pytest.raises(ValueError, match="does not take density"):
        merge("task-arith", states, base=base, density=0.5)
    with pytest.raises(ValueError, match="unknown merge method"):
        merge("slerp", states)


# ------------------------------------------------------------------------------ config
@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "ckpt").mkdir()
    for name in ("a.pt", "b.pt", "base.pt"):
        torch.save({"w": torch.zeros(1)}, tmp_path / "ckpt" / name)
    (tmp_path / "models.py").write_text("from torch import nn\n\ndef net():\n"
                                        "    return nn.Linear(4, 2)\n")
    import numpy as np

    np.savez(tmp_path / "data.npz", x_train=np.zeros((4, 64)), y_train=np.zeros(4),
             x_test=np.zeros((2, 64)), y_test=np.zeros(2))
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "merge.yaml"
    path.write_text(text)
    return path


VALID = """
merge_method: dare_ties
base_model: ckpt/base.pt
models:
  - model: ckpt/base.pt          # the base listed as a model is skipped
  - model: ckpt/a.pt
    parameters: {weight: 2.0, density: 0.3}
  - model: ./ckpt/../ckpt/b.pt
parameters: {density: 0.6, lambda: 0.8, seed: 3}
architecture:
  model: mlp
  model_args: {hidden: [16]}
align: weight
data: data.npz
dtype: float64
"""


def test_valid_config_loads_with_relative_paths(workdir):
    config = load_merge_config(write(workdir, VALID))
    assert config.merge_method == "dare"
    assert [m.model for m in config.models] == [workdir / "ckpt/a.pt", workdir / "ckpt/b.pt"]
    assert config.base_model == workdir / "ckpt/base.pt"
    assert config.weights == (2.0, 1.0)
    assert config.parameters == {"density": 0.6, "scaling": 0.8, "seed": 3, "ties": True}
    kwargs = config.method_kwargs()
    assert kwargs == {"weights": [2.0, 1.0], "scaling": 0.8, "seed": 3, "ties": True,
                      "density": [0.3, 0.6]}
    assert config.architecture.model == "mlp"
    assert config.architecture.input_shape == (1, 64)  # the family's default
    assert config.align == "weight" and config.repair is False
    assert config.data == workdir / "data.npz"
    module, shape = config.architecture.build()
    assert isinstance(module, torch.nn.Module) and shape == (1, 64)
    base, states = ties_states()
    merged = config.merge(states[:2], base)
    expected = dare(base, states[:2], **kwargs)
    torch.testing.assert_close(merged["w"], expected["w"].double())
    assert merged["w"].dtype == torch.float64
    assert load_merge_config(write(workdir, VALID)) == config  # frozen value
    assert config.as_dict()["base_model"] == str(workdir / "ckpt/base.pt")


def test_minimal_average_config_and_user_model_file(workdir):
    config = load_merge_config(write(workdir, """
merge_method: linear
models: [ckpt/a.pt, {model: ckpt/b.pt, parameters: {weight: 3}}]
architecture: {model: "models.py:net", input_shape: [1, 4]}
repair: true
data: digits
"""))
    assert config.merge_method == "average" and config.weights == (1.0, 3.0)
    assert config.architecture.model == f"{workdir / 'models.py'}:net"
    assert config.repair and config.data == "digits"
    module, shape = config.architecture.build()
    assert isinstance(module, torch.nn.Linear) and shape == (1, 4)


BASE = "merge_method: ties\nbase_model: ckpt/base.pt\nmodels: [ckpt/a.pt, ckpt/b.pt]\n"
AVG = "merge_method: average\nmodels: [ckpt/a.pt, ckpt/b.pt]\n"
BAD_CONFIGS = [
    ("models: [ckpt/a.pt]\n", "merge_method"),
    ("merge_method: slerp\nmodels: [ckpt/a.pt]\n", "merge_method"),
    ("merge_method: average\nmodels: ckpt/a.pt\n", "models"),
    ("merge_method: average\nmodels: []\n", "models"),
    ("merge_method: average\nmodels: [ckpt/a.pt, ckpt/missing.pt]\n", "models[1].model"),
    ("merge_method: average\nmodels: [{path: ckpt/a.pt}]\n", "models[0].path"),
    ("merge_method: average\nmodels: [{parameters: {weight: 1}}]\n", "models[0].model"),
    ("merge_method: average\nmodels: [{model: ckpt/a.pt, parameters: {density: 0.5}}]\n",
     "models[0].parameters.density"),
    ("merge_method: average\nmodels: [ckpt/a.pt, {model: ckpt/b.pt, parameters: {weight: x}}]\n",
     "models[1].parameters.weight"),
    ("merge_method: ties\nbase_model: ckpt/base.pt\n"
     "models: [{model: ckpt/a.pt, parameters: {density: 1.5}}]\n", "models[0].parameters.density"),
    ("merge_method: ties\nmodels: [ckpt/a.pt]\n", "base_model"),
    ("merge_method: ties\nbase_model: nowhere.pt\nmodels: [ckpt/a.pt]\n", "base_model"),
    (AVG + "base_model: ckpt/base.pt\n", "base_model"),
    ("merge_method: ties\nbase_model: ckpt/base.pt\nmodels: [ckpt/base.pt]\n", "models"),
    (BASE + "parameters: {normalize: true}\n", "parameters.normalize"),
    (BASE + "parameters: {lambda: [0.5, 1.0]}\n", "parameters.lambda"),
    (BASE + "parameters: {lambda: 0.5, scaling: 1.0}\n", "parameters.lambda"),
    (BASE + "parameters: {density: 0}\n", "parameters.density"),
    (BASE + "parameters: [1, 2]\n", "parameters"),
    ("merge_method: dare\nbase_model: ckpt/base.pt\nmodels: [ckpt/a.pt]\n"
     "parameters: {seed: 1.5}\n", "parameters.seed"),
    ("merge_method: dare_linear\nbase_model: ckpt/base.pt\nmodels: [ckpt/a.pt]\n"
     "parameters: {ties: true}\n", "parameters.ties"),
    ("merge_method: ties\nbase_model: ckpt/base.pt\n"
     "models: [{model: ckpt/a.pt, parameters: {weight: -1}}]\n", "models[0].parameters.weight"),
    (AVG + "align: permutation\n", "align"),
    (AVG + "repair: yes please\n", "repair"),
    (BASE + "repair: true\ndata: digits\narchitecture: {model: mlp}\n", "repair"),
    (AVG + "repair: true\narchitecture: {model: mlp}\n", "data"),
    (AVG + "align: activation\narchitecture: {model: mlp}\n", "data"),
    (AVG + "data: ckpt/a.pt\narchitecture: {model: mlp}\n", "data"),
    (AVG + "data: missing.npz\narchitecture: {model: mlp}\n", "data"),
    (AVG + "align: weight\n", "architecture"),
    (AVG + "align: weight\narchitecture: {model: transformer}\n", "architecture.model"),
    (AVG + "align: weight\narchitecture: {model_args: {}}\n", "architecture.model"),
    (AVG + "align: weight\narchitecture: {model: mlp, model_args: {depth: 3}}\n",
     "architecture.model_args"),
    (AVG + "align: weight\narchitecture: {model: mlp, input_shape: [1, -64]}\n",
     "architecture.input_shape"),
    (AVG + "align: weight\narchitecture: {model: 'models.py:net'}\n", "architecture.input_shape"),
    (AVG + "align: weight\narchitecture: {model: 'nofile.py:net', input_shape: [1, 4]}\n",
     "architecture.model"),
    (AVG + "align: weight\narchitecture: {model: mlp, layers: 3}\n", "architecture.layers"),
    (AVG + "dtype: int8\n", "dtype"),
    (AVG + "slices: []\n", "slices"),
]


@pytest.mark.parametrize(("text", "field"), BAD_CONFIGS)
def test_bad_config_fields_are_named(workdir, text, field):
    path = write(workdir, text)
    with pytest.raises(MergeConfigError) as info:
        load_merge_config(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert f"field {field!r}" in message, message


def test_unreadable_or_malformed_config_names_the_file(workdir):
    missing = workdir / "missing.yaml"
    with pytest.raises(MergeConfigError, match="missing.yaml"):
        load_merge_config(missing)
    path = write(workdir, "merge_method: ties\nmodels: [a.pt\n")
    with pytest.raises(MergeConfigError, match=r"merge.yaml: not valid YAML at line"):
        load_merge_config(path)
    path = write(workdir, "- just\n- a list\n")
    with pytest.raises(MergeConfigError, match=r"merge.yaml: a merge config must be a YAML"):
        load_merge_config(path)
