"""MultiTaskNet: a net composed of named parts, a mixer and one head per task."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
from torch import nn

from mtrec.data.info import DataInfo
from mtrec.errors import ConfigError, shown
from mtrec.models.embeddings import embedding_size
from mtrec.models.encoders import check_encoder, check_graph_layers
from mtrec.models.heads import SCORE_HEADS, RankingHead, build_head
from mtrec.models.mixers import DENSE_MIXERS, Mixer, mixer_factory
from mtrec.models.neighbours import ItemToItem, check_item_to_item
from mtrec.models.protocol import (
    ChecksSettings,
    EmbeddingNorms,
    Gated,
    IndexedTables,
    NamedHead,
    Parts,
    Penalised,
    Ranker,
    Recommender,
    Represents,
    Rows,
    SharesRows,
)

HEAD_KINDS = ("ranking", "score", "logit", "classes")


class MultiTaskNet(
    Recommender,
    Ranker,
    SharesRows,
    EmbeddingNorms,
    Gated,
    Represents,
    IndexedTables,
    ChecksSettings,
    Parts,
    Penalised,
):
    """A mixer (``sharing``: what the tasks share, :mod:`mtrec.models.mixers`) under one
    head per task (:mod:`mtrec.models.heads`), each of the kind its task asks for.

    The reference net: with ``sharing=shared`` one (U, Q) pair of embedding tables of size
    ``embedding_dim`` feeds every head; the ranking head is matrix factorization
    ``u . q + b_j``; the other heads are MLPs over ``[u, q, u * q]`` (``layer_sizes``, the
    first entry 3 * ``embedding_dim``; ``embedding_dim="auto"`` sizes both by the rule of
    thumb), with ``outputs`` logits for a task of classes; ``score_head=dot`` makes a score
    task's head biased matrix factorization instead, ``mu + b_u + b_i + u . q`` (with
    ``encoder=history``, SVD++). ``rating_biases`` adds ``mu + b_u
    + b_i`` to score heads; ``dropout`` drops MLP activations in training; ``cosine`` and
    ``temperature`` make the ranking score a cosine over a learned temperature.

    ``sharing``: a short name (``shared``, ``separate``, ``items``, the table mixtures
    ``mmoe``, ``cgc``, ``ple``, ``stem``, the dense ones ``shared_bottom``, ``mmoe_mlp``,
    ``cgc_mlp``, ``ple_mlp``, ``cross_stitch``; ``experts``, ``task_experts``, ``levels``,
    ``expert_norm``, ``residual`` are their settings), a :class:`Mixer` class path, or a
    factory (a ``_target_`` with ``_partial_: true``); null: from ``embedding_sharing``
    (the reference's name: true shared, false separate, items). ``encoder``: how an id
    becomes a vector before the mixer mixes it (``id``, ``history``: SVD++, ``graph``:
    LightGCN over ``graph_layers`` propagations; :mod:`mtrec.models.encoders`).
    ``item_to_item``: the heads also read the user's training items through an item x item
    matrix started at EASE's closed form (``item_to_item_reg``; each item's
    ``item_to_item_neighbours`` strongest weights, null all; ``item_to_item_penalty`` pulls
    it toward the closed form; ``item_to_item_learned=false`` keeps the closed form as it
    is): the catalogue is ranked by the ranking head's score plus ``item_to_item_scale``
    times the user's EASE score, and every other one-output head adds a learned scale of
    that score (:mod:`mtrec.models.neighbours`).
    """

    head_kinds = HEAD_KINDS

    def __init__(
        self,
        data: DataInfo,
        embedding_dim: int | str = 32,
        layer_sizes: Sequence[int] = (96, 64),
        embedding_sharing: bool | str = True,
        rating_biases: bool = False,
        dropout: float = 0.0,
        sharing: str | Callable[..., Mixer] | None = None,
        experts: int | None = None,
        task_experts: int = 1,
        levels: int = 2,
        expert_norm: bool = False,
        residual: bool = False,
        cosine: bool = False,
        temperature: float = 0.1,
        encoder: str = "id",
        graph_layers: int = 3,
        score_head: str = "mlp",
        item_to_item: bool = False,
        item_to_item_reg: float = 300.0,
        item_to_item_neighbours: int | None = None,
        item_to_item_penalty: float = 0.0,
        item_to_item_learned: bool = True,
        item_to_item_scale: float = 30.0,
        *,
        tasks: Sequence[NamedHead] | Mapping[str, NamedHead],
    ):
        super().__init__()
        tasks = tuple(tasks.values() if isinstance(tasks, Mapping) else tasks)
        if not tasks:
            raise ConfigError("tasks=[] trains nothing: give at least one, e.g. tasks=[rating].")
        self.check_tasks(tasks)
        settings = dict(locals())
        self.check_settings(settings)
        self.num_users, self.num_items = data.num_users, data.num_items
        if embedding_dim == "auto":
            embedding_dim = embedding_size("auto", max(data.num_users, data.num_items))
            layer_sizes = (3 * embedding_dim, *layer_sizes[1:])
        self._tasks = tuple(task.name for task in tasks)
        sharing = sharing_of(sharing, embedding_sharing)
        factory = mixer_factory(sharing, settings)
        self.mixer = factory(
            data, self._tasks, embedding_dim, encoder=encoder, graph_layers=graph_layers
        )
        mean = None
        if rating_biases or score_head == "dot":
            mean = data.train.ratings.mean() if data.train is not None else torch.tensor(0.0)
        self.heads = nn.ModuleDict(
            {
                task.name: build_head(
                    task.head_kind,
                    data.num_users,
                    data.num_items,
                    layer_sizes,
                    dropout,
                    cosine,
                    temperature,
                    mean,
                    score_head,
                )
                for task in tasks
            }
        )
        # the task whose head ranks the catalogue (the first ranking task), if any
        self.ranking = next((t.name for t in tasks if t.head_kind.name == "ranking"), None)
        self.item_to_item = None
        self.item_to_item_scale = float(item_to_item_scale)
        if item_to_item:  # the ranking head's is an ensemble; the others learn a scale of it
            reading = [t.name for t in tasks if t.head_kind.outputs == 1 and t.name != self.ranking]
            self.item_to_item = ItemToItem(
                data.train,
                data.num_users,
                data.num_items,
                reading,
                item_to_item_reg,
                item_to_item_neighbours,
                item_to_item_penalty,
                item_to_item_learned,
            )

    @property
    def tasks(self) -> tuple[str, ...]:
        return self._tasks

    def head(self, task: str):
        return partial(self.output, task)

    def output(
        self,
        task: str,
        user_ids: torch.Tensor,
        item_ids: torch.Tensor,
        rows: Rows | None = None,
        history: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Task ``task``'s head on broadcastable id tensors (e.g. (B, 1) users x (B, K)
        items). ``rows`` may hold the task's copy of what the tasks share (``"user"``,
        ``"item"``, as :meth:`shared` gives it), read instead of the tables: per-task
        gradients land there."""
        users = self.mixer.vector("user", task, user_ids, rows)
        items = self.mixer.vector("item", task, item_ids, rows)
        out = self.heads[task](users, items, user_ids, item_ids)
        if self.item_to_item is not None and task in self.item_to_item.scales:
            out = out + self.item_to_item(task, user_ids, item_ids)
        return out

    @classmethod
    def check_settings(cls, settings: Mapping) -> None:
        """The rules of these settings (``model.net.<name>``), checked once: when the net is
        built, and by config validation before any work (:func:`check_net_settings`)."""
        check_net_settings(settings)

    @classmethod
    def part_names(cls, tasks: Sequence[str]) -> tuple[str, ...]:
        return ("tables", "encoders", "mixer", *tasks)

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """``tables``: the mixer's embedding tables (shared or each task's); ``encoders``:
        the encoders' own parameters (SVD++'s item factors, the item-to-item weights);
        ``mixer``: the mixer's other parameters (gates, dense experts, cross-stitch units);
        ``<task>``: the task's head's (its MLP, its biases) and its scale of the item-to-item
        term."""
        tables = [t.weight for side in ("user", "item") for t in self.mixer.tables(side)]
        encoders = self.mixer.encoder_parameters()
        own = {task: list(head.parameters()) for task, head in self.heads.items()}
        if self.item_to_item is not None:  # the weights are shared; each task's scale its own
            if self.item_to_item.learned:
                encoders = encoders + [self.item_to_item.weights]
            for task, scale in self.item_to_item.scales.items():
                own[task].append(scale)
        placed = {id(p) for p in tables + encoders}
        found = {
            "tables": tables,
            "encoders": encoders,
            "mixer": [p for p in self.mixer.parameters() if id(p) not in placed],
        }
        return found | own

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """``task``'s head (and its scale of the item-to-item term), and the mixer's
        parameters only it reads (its own tables under ``separate``)."""
        return self.parts()[task] + self.mixer.own_parameters(task)

    def penalty(self) -> torch.Tensor | float:
        """The item-to-item weights' pull toward EASE's closed form, if set."""
        if self.item_to_item is None or not self.item_to_item.penalty_strength:
            return 0.0
        return self.item_to_item.penalty()

    def embedding_norms(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor, task: str | None = None
    ) -> torch.Tensor:
        """Squared norms of the embedding and bias rows each (user, item) pair uses: those
        ``task``'s head reads, or (``None``) every table's once."""
        ids = {"user": user_ids, "item": item_ids}
        heads = self.heads.items() if task is None else [(task, self.heads[task])]
        tables = []
        for side in ids:
            read = self.mixer.tables(side) if task is None else self.mixer.task_tables(side, task)
            tables += [(t, ids[side]) for t in read]
        for _, head in heads:
            tables += [(t, ids[side]) for side, ts in head.id_tables().items() for t in ts]
        return sum(table(i).pow(2).sum(-1) for table, i in tables)

    def shared(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> dict:
        """What the tasks share for a batch, where their gradients meet (the mixer's:
        shared tables' rows, a shared layer's output, every task's rows under cross-stitch).
        Per-task gradients taken with respect to these cost what the batch costs."""
        return self.mixer.shared(user_ids, item_ids)

    def tables_read(self) -> dict[str, dict[str, tuple[nn.Embedding, ...]]]:
        """Each head's tables of a side read at that side's ids: the mixer's, then the
        head's own (its biases); none under an encoder, which reads whole tables, or with the
        item-to-item term, which reads each user's training items (a step that sees only the
        batch's rows would read them by position)."""
        read = self.mixer.tables_read()
        if not read or self.item_to_item is not None:
            return {}
        for task, head in self.heads.items():
            for side, tables in head.id_tables().items():
                read[task][side] += tables
        return read

    def gate_use(self) -> dict[str, torch.Tensor]:
        return self.mixer.gate_use()

    def forward(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every head's output, in task order, each of shape ``user_ids.shape`` (plus the
        classes of a head of classes)."""
        return tuple(self.output(task, user_ids, item_ids) for task in self._tasks)

    @property
    def item_biases(self) -> nn.Embedding | None:
        """The ranking head's per-item biases (items ranked by their bias), if it has one."""
        return self.heads[self.ranking].item_biases if self.ranking is not None else None

    def _ranking_head(self) -> RankingHead:
        if self.ranking is None:
            raise ConfigError(
                f"This net's tasks ({', '.join(self._tasks)}) have no ranking head, so it "
                "cannot rank the catalogue: add a ranking task, e.g. tasks=[interaction,...]."
            )
        return self.heads[self.ranking]

    def score_all_items(self, user_ids: torch.Tensor) -> torch.Tensor:
        """Ranking scores of every item for each user: shape (len(user_ids), num_items)."""
        return self.scorer()(user_ids)

    def scorer(self):
        """``score_all_items`` for many calls in a row (evaluation's user chunks): every
        item's vector is computed once."""
        head = self._ranking_head()
        items = head.items(self.item_vectors())
        term = None
        if self.item_to_item is not None:  # the ensemble's other member
            term = self.item_to_item.catalogue(self.item_to_item_scale)

        def score(user_ids: torch.Tensor) -> torch.Tensor:
            scores = head.all_items(self.mixer.vector("user", self.ranking, user_ids), items)
            return scores if term is None else scores + term(user_ids)

        return score

    def item_vectors(self) -> torch.Tensor:
        """Every item's vector as the ranking task (else the first task) reads it."""
        every = torch.arange(self.num_items, device=self._device())
        return self.mixer.vector("item", self.ranking or self._tasks[0], every)

    def _device(self) -> torch.device:
        return next(self.parameters()).device  # every head has parameters

    def vectors(self) -> dict[tuple[str, str], torch.Tensor]:
        """Every user's and every item's vector as each task reads it."""
        found = {}
        device = self._device()
        with torch.no_grad():
            for side, count in (("user", self.num_users), ("item", self.num_items)):
                every = torch.arange(count, device=device)
                for task in self._tasks:
                    found[side, task] = self.mixer.vector(side, task, every)
        return found


def check_net_settings(settings: Mapping) -> None:
    """The rules of MultiTaskNet's settings (``model.net.<name>``), one clear error each."""
    get = settings.get
    check_encoder(get("encoder", "id"))
    check_item_to_item(settings)
    check_graph_layers(get("graph_layers", 3))
    cosine, temperature = get("cosine", False), get("temperature", 0.1)
    if not isinstance(cosine, bool):
        raise ConfigError(f"model.net.cosine={shown(cosine)} is not valid: use true or false.")
    number = isinstance(temperature, int | float) and not isinstance(temperature, bool)
    if not (number and temperature > 0):
        raise ConfigError(
            f"model.net.temperature={shown(temperature)} is not valid: use a number > 0, "
            "e.g. 0.1 (the cosine score's starting temperature)."
        )
    embedding_sharing = get("embedding_sharing", True)
    if not (isinstance(embedding_sharing, bool) or embedding_sharing == "items"):
        raise ConfigError(
            f"model.embedding_sharing={shown(embedding_sharing)} is not valid: "
            "use true, false or items."
        )
    chosen = sharing_of(get("sharing"), embedding_sharing)
    if isinstance(chosen, str):
        mixer_factory(chosen, dict(settings))  # one clear error for an unknown name
    _check_experts(settings)
    for name in ("expert_norm", "residual"):
        value = get(name, False)
        if not isinstance(value, bool):
            raise ConfigError(f"model.net.{name}={shown(value)} is not valid: use true or false.")
        if value and chosen not in DENSE_MIXERS:
            raise ConfigError(
                f"model.net.{name}=true changes dense experts, and "
                f"model.net.sharing={chosen} has none: use it with one of "
                f"{', '.join(DENSE_MIXERS)}, or model.net.{name}=false."
            )
    score_head = get("score_head", "mlp")
    if score_head not in SCORE_HEADS:
        raise ConfigError(
            f"model.net.score_head={shown(score_head)} is not valid: use mlp (an MLP over "
            "[u, q, u * q]) or dot (biased matrix factorization, mu + b_u + b_i + u . q)."
        )
    _check_sizes(get("embedding_dim", 32), get("layer_sizes", (96, 64)))


def sharing_of(sharing, embedding_sharing: bool | str):
    """The architecture: ``sharing``, else the reference's ``embedding_sharing`` (true:
    shared, false: separate, items); one clear error where the two contradict."""
    implied = {True: "shared", False: "separate", "items": "items"}[embedding_sharing]
    if sharing is None:
        return implied
    if embedding_sharing is not True and sharing != implied:
        raise ConfigError(
            f"model.net.sharing={shown(sharing)} contradicts model.embedding_sharing="
            f"{shown(embedding_sharing)} (which means sharing={implied}): set one of the two."
        )
    return sharing


def _check_experts(settings: Mapping) -> None:
    for name in ("experts", "task_experts", "levels"):
        value = settings.get(name, None if name == "experts" else 1)
        if value is None and name == "experts":  # the architecture's default
            continue
        if type(value) is not int or value < 1:
            default = " or null (the architecture's default)" if name == "experts" else ""
            raise ConfigError(
                f"model.net.{name}={shown(value)} is not valid: use a positive integer{default}."
            )


def _check_sizes(embedding_dim, layer_sizes) -> None:
    if embedding_dim == "auto":  # the net sizes the MLP's input itself
        return
    dim = embedding_size(embedding_dim, 1)
    sizes = [] if isinstance(layer_sizes, str) else layer_sizes
    sizes = list(sizes) if isinstance(sizes, Sequence) else []
    if not sizes or not all(type(s) is int and s > 0 for s in sizes):
        raise ConfigError(
            f"model.net.layer_sizes={shown(layer_sizes)} is not valid: use a list of positive "
            "integers, e.g. [96,64]."
        )
    if sizes[0] != 3 * dim:
        fixed = shown([3 * dim, *sizes[1:]])
        raise ConfigError(
            f"model.net.layer_sizes={shown(sizes)} does not fit "
            f"model.net.embedding_dim={dim}: its first entry must be "
            f"3 * model.net.embedding_dim = {3 * dim} (the MLP input is [u, q, u * q]). Use "
            f"model.net.layer_sizes={fixed}, or model.net.embedding_dim=auto, which sizes it "
            "itself."
        )
