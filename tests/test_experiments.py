"""The paper experiments (``conf/experiment/*.yaml``): every sweep point composes, and the offline variants run.

Sweep points are expanded with Hydra's own override parser (as the basic sweeper does); each distinct value
of every swept key is composed once. The offline variants then run one trial per (attack, model) pair in a
reduced size (one image, a few optimisation steps) through the sweep machinery into a temporary directory.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from rgap.harness.sweep import completed_rows, run_sweep_job
from runners.callbacks import split_overrides, with_values

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
#: Offline variants of the paper experiments, and the defense sweeps (offline data already).
OFFLINE = [e for e in EXPERIMENTS if e.endswith("_offline") or e.startswith("defense_")]
#: Optimisation attacks shrunk for the reduced runs (the reference results use the configs' real settings).
SHRINK = {"dlg": ["attack.iterations=2"], "idlg": ["attack.iterations=2"], "ig": ["attack.iterations=2"],
          "hgap": ["attack.iterations=2"]}


def _compose(*overrides: str, hydra_node: bool = False):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="benchmark", overrides=["metrics.lpips=false", *overrides],
                       return_hydra_config=hydra_node)


_STRUCTURES: dict[tuple[str, ...], object] = {}


def _point(experiment: str, *point: str):
    """The config of one sweep point, as the sweep preflight builds it: composed once per config structure
    (``runners.callbacks.split_overrides``), plain values set on a copy (equal to a full composition:
    tests/test_preflight.py). Composing each of hundreds of points costs about 0.1 s each."""
    structure, values = split_overrides([f"+experiment={experiment}", *point])
    key = tuple(structure)
    if key not in _STRUCTURES:
        _STRUCTURES[key] = _compose(*structure)
    cfg = with_values(_STRUCTURES[key], values)
    assert cfg is not None, point
    return cfg


def sweep_points(experiment: str) -> list[list[str]]:
    """Every point of the experiment's sweep, as lists of ``key=value`` overrides."""
    cfg = _compose(f"+experiment={experiment}", hydra_node=True)
    params = cfg.hydra.sweeper.params
    parser = OverridesParser.create()
    axes = []
    for key, value in params.items():
        override = parser.parse_overrides([f"{key}={value}"])[0]
        name = override.get_key_element()
        values = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
        axes.append([f"{name}={v}" for v in values])
    return [list(point) for point in itertools.product(*axes)]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_swept_value_composes(experiment: str) -> None:
    points = sweep_points(experiment)
    assert len(points) >= 2
    seen: set[str] = set()
    for point in points:
        if set(point) <= seen:
            continue
        seen.update(point)
        cfg = _compose(f"+experiment={experiment}", *point)
        presets = {"smoke": "smoke", "grid": "paper"}  # the former conf/sweep/ presets keep their sweep names
        assert cfg.sweep_name == presets.get(experiment, experiment if experiment.startswith("paper_") else "defenses")
        assert cfg.attack.name and cfg.model.name and cfg.dataset.name


def test_each_paper_experiment_has_an_offline_variant() -> None:
    full = [e for e in EXPERIMENTS if e.startswith("paper_") and not e.endswith("_offline")]
    assert {f"{e}_offline" for e in full} == {e for e in OFFLINE if e.startswith("paper_")}
    for experiment in OFFLINE:
        datasets = {_point(experiment, *p).dataset.name for p in sweep_points(experiment)}
        assert datasets <= {"sample", "sample_gray"}, experiment


def test_paired_setups_do_not_cross_models_and_datasets() -> None:
    pairs = set()
    for point in sweep_points("paper_table1")[::30]:
        cfg = _compose("+experiment=paper_table1", *point)
        pairs.add((cfg.model.name, cfg.dataset.name, cfg.batch_size))
    assert pairs <= {("cnn6", "cifar10", 1), ("cnn6d", "cifar10", 1), ("fcn3", "mnist", 1), ("fcn3", "mnist", 5)}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", OFFLINE)
def test_offline_variant_runs_reduced(experiment: str, tmp_path: Path) -> None:
    done: set[tuple[str, ...]] = set()
    for point in sweep_points(experiment):
        cfg = _point(experiment, *point)
        key = (cfg.attack.name, cfg.model.name, cfg.dataset.name, str(cfg.batch_size))
        if key in done:
            continue
        done.add(key)
        cfg = _compose(f"+experiment={experiment}", *point, *SHRINK.get(cfg.attack.name, []), "threads=1")
        row = run_sweep_job(cfg, tmp_path).row
        assert row is not None and row["status"] in ("ok", "unsupported"), row.get("reason")
    assert len(completed_rows(tmp_path)) == len(done)
