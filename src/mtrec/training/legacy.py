"""Runs written before tasks were open and the multi-task net was composed of named parts:
their checkpoints and configs load as they are (``ckpt_path=``, ``mtrec-eval``,
``mtrec-explore``).

Until then ``MultiTaskNet`` kept every table and head as its own attribute, named after the
three built-in tasks (``user_embeddings``, ``rating_user_embeddings``, ``like_mlp``, ...); now
its tables live in its mixer (``mixer.users.<task>``) and its heads in ``heads.<task>``. Its
config named its tasks (``model.net.tasks: [interaction, rating]``) where it now reads their
declarations, and the fixed weighting listed a weight for every built-in task. This module is
the only place that still knows those names.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from mtrec.models import MultiTaskNet
from mtrec.models.mixers import Tables

# the old attribute of each task's table: (task, side)
OLD_TABLES = {
    "user_embeddings": ("interaction", "user"),
    "item_embeddings": ("interaction", "item"),
    "rating_user_embeddings": ("rating", "user"),
    "rating_item_embeddings": ("rating", "item"),
    "like_user_embeddings": ("like", "user"),
    "like_item_embeddings": ("like", "item"),
}
# the old attribute of each head's part: (task, its name in the head)
OLD_HEADS = {
    "item_biases": ("interaction", "item_biases"),
    "log_inverse_temperature": ("interaction", "log_inverse_temperature"),
    "mlp": ("rating", "mlp"),
    "rating_user_biases": ("rating", "user_biases"),
    "rating_item_biases": ("rating", "item_biases"),
    "mean_rating": ("rating", "mean_rating"),
    "like_mlp": ("like", "mlp"),
}


def is_legacy(state: dict, prefix: str = "net.") -> bool:
    return f"{prefix}user_embeddings.weight" in state and not any(
        key.startswith(f"{prefix}mixer.") for key in state
    )


def renamed(state: dict, net: MultiTaskNet, prefix: str = "net.") -> dict:
    """``state`` with a legacy multi-task net's keys as ``net`` names them; the parts of
    tasks ``net`` does not train (the old net built the interaction and rating heads always)
    are left out."""
    if not isinstance(net.mixer, Tables):
        return state
    found = {}
    for key, value in state.items():
        new = new_key(key, net, prefix)
        if new is not None:
            found[new] = value
    return found


def new_key(key: str, net: MultiTaskNet, prefix: str = "net.") -> str | None:
    """Where ``net`` keeps what a legacy net saved under ``key`` (None: a part of a task
    ``net`` does not train); keys outside the net (``prefix``) stay as they are."""
    if not key.startswith(prefix):
        return key
    name, _, rest = key[len(prefix) :].partition(".")
    new = _new_name(name, rest, net, net.mixer, list(net.mixer.histories or {}))
    return None if new is None else prefix + new


def reordered_optimizer(saved: dict, old_state: dict, module: nn.Module) -> None:
    """The optimizer state ``saved`` (one parameter group, as the module's optimizer has),
    its parameters' order made the module's own: the old net registered its parameters in
    another order (a task's own tables after the item bias), and parts of tasks the module
    does not train are left out. ``old_state``: the checkpoint's state dict as saved."""
    if len(saved.get("param_groups", ())) != 1:
        return
    order = {name: i for i, (name, _) in enumerate(module.named_parameters())}
    seen, targets = set(), []
    for key, value in old_state.items():  # parameters in the order the old module had them
        new = new_key(key, module.net)
        dropped = new is None and not key.endswith("mean_rating")  # a buffer, not a parameter
        storage = value.untyped_storage().data_ptr()
        if not (dropped or new in order) or storage in seen:  # a buffer, or a shared table
            continue
        seen.add(storage)
        targets.append(None if dropped else order[new])
    state = saved["state"]
    saved["state"] = {targets[i]: s for i, s in state.items() if targets[i] is not None}
    saved["param_groups"][0]["params"] = list(range(len(order)))


def _new_name(name: str, rest: str, net: MultiTaskNet, mixer: Tables, histories: list[str]):
    if name in OLD_TABLES:
        task, side = OLD_TABLES[name]
        if task not in net.tasks:
            return None
        owner = (mixer.user_of if side == "user" else mixer.item_of)[task]
        return f"mixer.{side}s.{owner}.{rest}"
    if name in OLD_HEADS:
        task, part = OLD_HEADS[name]
        return f"heads.{task}.{part}" + (f".{rest}" if rest else "") if task in net.tasks else None
    if name == "user_histories":
        index, _, rest = rest.partition(".")
        return f"mixer.histories.{histories[int(index)]}.{rest}"
    if name in ("user_mixer", "item_mixer"):
        return f"mixer.{name}.{rest}"
    return f"{name}.{rest}" if rest else name


def upgraded(cfg: DictConfig) -> DictConfig:
    """A run's saved config as today's code reads it: the net's tasks from the ``tasks``
    group (their declarations), fixed weights for the trained tasks only."""
    net = cfg.get("model", {}).get("net")
    tasks = cfg.get("tasks") or {}
    with open_dict(cfg):
        if isinstance(net, DictConfig) and str(net.get("_target_", "")).endswith("MultiTaskNet"):
            named = OmegaConf.to_container(net, resolve=False).get("tasks")
            if named is None or isinstance(named, list | str):
                net.tasks = "${tasks}"
                net._convert_ = "object"
        weights = OmegaConf.select(cfg, "weighting.weights", default=None)
        if isinstance(weights, DictConfig) and tasks:
            resolved = OmegaConf.to_container(weights, resolve=True)
            cfg.weighting.weights = {k: v for k, v in resolved.items() if k in tasks}
    return cfg
