"""``mtrec-eval ckpt_path=<checkpoint> [key=value ...]``: re-evaluate a saved checkpoint.

The config is the one that trained the checkpoint, read from its run folder
(``.hydra/config.yaml``), so the split, the model and the metric code are the same as in
training; ``key=value`` arguments override it (for example ``data.path=...``). The metrics
are printed and written to ``<run folder>/eval_<checkpoint name>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from mtrec.files import atomic_write_text
from mtrec.runs.naming import register_resolvers
from mtrec.train import build, held_out_metrics


def run_folder(checkpoint: Path) -> Path:
    for folder in checkpoint.resolve().parents:
        if (folder / ".hydra" / "config.yaml").exists():
            return folder
    raise SystemExit(
        f"mtrec-eval: no run folder with .hydra/config.yaml above {checkpoint}. "
        "Fix: pass a checkpoint written by mtrec-train (its run folder holds the config)."
    )


def run_config(folder: Path, overrides: list[str]) -> DictConfig:
    """The run's config with its paths pinned to where it ran (no Hydra runtime needed)."""
    register_resolvers()
    cfg = OmegaConf.load(folder / ".hydra" / "config.yaml")
    runtime = OmegaConf.load(folder / ".hydra" / "hydra.yaml").hydra.runtime
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
    out = folder / f"eval_{checkpoint.stem}.json"
    record = {"checkpoint": str(checkpoint), "metrics": metrics}
    atomic_write_text(out, json.dumps(record, indent=2))
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
