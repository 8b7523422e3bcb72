"""The sweep preflight composes a config once per structure and sets plain values as Hydra does."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rgap.harness.compose import CONF_DIR
from runners.callbacks import split_overrides, with_values

JOBS = [
    ["attack=dlg", "model=lenet", "index=3", "attack.lr=0.5", "seed=1.5"],
    ["+setup=lenet_sample_gray_dlgweights", "attack=idlg", "attack.early_stop=0", "label=true"],
    ["model=cnn6", "dataset.size=16", "overwrite=flase", "metrics.lpips=false", "sweep_name=x"],
    ["defense=gaussian", "defense.scale=1e-2", "weights.rank_check=true", "index=[1,2]"],
]


@pytest.mark.parametrize("job", JOBS, ids=lambda j: j[0])
def test_values_set_on_a_copy_equal_a_full_composition(job: list[str]) -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        structure, values = split_overrides(job)
        assert all(not o.startswith(("index=", "seed=", "attack.lr=")) for o in structure)
        shortcut = with_values(compose(config_name="benchmark", overrides=structure), values)
        full = compose(config_name="benchmark", overrides=job)
    assert shortcut is not None
    assert OmegaConf.to_container(shortcut) == OmegaConf.to_container(full)


def test_a_value_hydra_would_refuse_is_not_set() -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        structure, values = split_overrides(["model=lenet", "modl=3"])
        assert structure == ["model=lenet"]
        assert with_values(compose(config_name="benchmark", overrides=structure), values) is None
