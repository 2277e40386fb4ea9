"""``python -m kprune.sensitivity [overrides]``: prune each layer alone at each level, measure, write the table.

Settings: ``conf/sensitivity.yaml`` (the ``method``, ``calib`` and ``eval``
groups are the pruning app's).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from kprune.cli import CONF_DIR, evaluator_for, to_plain
from kprune.errors import KpruneError
from kprune.plugins import import_plugins
from kprune.session import resolve_model_path
from kprune.sensitivity.run import SensitivitySettings, run_sensitivity


@hydra.main(config_path=CONF_DIR, config_name="sensitivity", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        import_plugins(cfg.get("plugins"))  # before the method is read: a plugin's rule
        model = resolve_model_path(cfg.model, Path(hydra.utils.get_original_cwd()))
        method = to_plain(cfg.method) if OmegaConf.is_config(cfg.method) else {"name": str(cfg.method)}
        settings = SensitivitySettings(model=model, method=method, calib=to_plain(cfg.calib),
                                       levels=to_plain(cfg.levels), layers=to_plain(cfg.layers),
                                       exclude=to_plain(cfg.exclude),
                                       max_seconds=cfg.max_seconds, device=str(cfg.device), signal=str(cfg.signal))
        evaluator = evaluator_for(cfg, model)
        if evaluator is not None:  # the decoded points are scored: never on the audio the curves were measured on
            from kprune.features.pipeline import CalibrationData
            from kprune.runner import check_scored_audio

            check_scored_audio(to_plain(cfg.eval), CalibrationData.from_config(settings.calib))
        run_sensitivity(settings, Path(HydraConfig.get().runtime.output_dir), evaluator=evaluator)
    except KpruneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
