"""``mtrec-eval ckpt_path=<checkpoint> [key=value ...]``: re-evaluate a saved checkpoint.

The config is the one that trained the checkpoint, read from its run folder (the run config,
see :mod:`mtrec.runs.folder`), so the split, the model and the metric code are the same as in
training; ``key=value`` arguments override it (for example ``data.path=...``). The metrics
are printed and written to ``<run folder>/eval_<checkpoint name>.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from mtrec.runs import folder as run_files
from mtrec.runs.naming import register_resolvers
from mtrec.train import build, held_out_metrics
from mtrec.training import legacy


def run_folder(checkpoint: Path) -> Path:
    for folder in checkpoint.resolve().parents:
        if run_files.has_config(folder):
            return folder
    raise SystemExit(
        f"mtrec-eval: no run folder (one with a run config) above {checkpoint}. "
        "Fix: pass a checkpoint written by mtrec-train (its run folder holds the config)."
    )


def run_config(folder: Path, overrides: list[str]) -> DictConfig:
    """The run's config with its paths pinned to where it ran (no Hydra runtime needed)."""
    register_resolvers()
    cfg = legacy.upgraded(run_files.read_config(folder))
    runtime = run_files.read_hydra(folder).runtime
    cfg.paths.root_dir = runtime.cwd
    cfg.paths.output_dir = str(folder)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))


def evaluate_checkpoint(
    checkpoint: Path, overrides: list[str] = ()
) -> tuple[dict[str, float], Path]:
    """The held-out metrics of ``checkpoint``, and the file they were written to."""
    folder = run_folder(checkpoint)
    cfg = run_config(folder, list(overrides))
    datamodule, module = build(cfg)
    trainer = L.Trainer(
        accelerator=cfg.trainer.get("accelerator", "auto"),
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    metrics = {}
    if datamodule.has_validation:
        trainer.validate(module, datamodule=datamodule, ckpt_path=str(checkpoint), verbose=False)
        metrics.update(held_out_metrics(trainer))
    trainer.test(module, datamodule=datamodule, ckpt_path=str(checkpoint), verbose=False)
    metrics.update(held_out_metrics(trainer))
    out = run_files.write_eval(folder, checkpoint, metrics)
    return metrics, out


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    given = dict(arg.split("=", 1) for arg in args if "=" in arg)
    if "ckpt_path" not in given or len(given) != len(args):
        raise SystemExit("usage: mtrec-eval ckpt_path=<checkpoint> [key=value ...]")
    checkpoint = Path(given.pop("ckpt_path"))
    if not checkpoint.is_file():
        raise SystemExit(f"mtrec-eval: ckpt_path={checkpoint} is not a file.")
    metrics, out = evaluate_checkpoint(checkpoint, [f"{k}={v}" for k, v in given.items()])
    width = max(map(len, metrics))
    for name, value in sorted(metrics.items()):
        print(f"{name:<{width}}  {value:.6f}")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
