"""MultiTaskNet: a factorization head for interactions, MLP heads for ratings and likes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtrec.data.info import DataInfo
from mtrec.errors import ConfigError, shown
from mtrec.models.embedding_experts import EmbeddingExperts
from mtrec.models.embeddings import ScaledEmbedding, ZeroEmbedding, embedding_size
from mtrec.models.encoders import (
    GraphEncoder,
    HistoryEncoder,
    check_encoder,
    check_graph_layers,
    graph_propagation,
    history_weights,
)
from mtrec.models.protocol import (
    EmbeddingNorms,
    Gated,
    IndexedTables,
    Ranker,
    Recommender,
    Represents,
    Rows,
    SharesRows,
    TableRows,
)
from mtrec.models.sharing import (
    DEFAULT_EXPERTS,
    DENSE_MIXERS,
    PLE,
    SHARINGS,
    TABLE_MIXERS,
    CrossStitch,
    MMoE,
    SharedBottom,
)


class MultiTaskNet(
    Recommender, Ranker, SharesRows, EmbeddingNorms, Gated, Represents, IndexedTables
):
    """Heads over user and item embeddings, one per task of ``tasks``.

    - interaction head (matrix factorization): ``p_ij = u_i . q_j + b_j``
    - rating head (MLP): ``[u_i, q_j, u_i * q_j] -> Linear -> ReLU -> ... -> Linear(., 1)``
    - like head (built when ``tasks`` has ``like``): an MLP of the same shape, its own, whose
      output is the logit of a like; it reads embeddings as the rating head does

    With ``embedding_sharing=true`` both heads read one (U, Q) pair; with ``false`` each head
    has its own pair; with ``items`` they share the item table and each has its own user
    table. The item bias always belongs to the interaction head. There is no user bias in it:
    it cannot change a user's ranking. With ``embedding_dim="auto"`` the size follows the rule
    of thumb for the larger vocabulary and the first layer size follows it (3 * size).

    ``sharing`` names the architecture (default: from ``embedding_sharing``, true: ``shared``,
    false: ``separate``, ``items``). ``mmoe`` (``experts`` shared experts), ``cgc``
    (``experts`` shared and ``task_experts`` per task), ``ple`` (``levels`` levels of gates)
    and ``stem`` (as ``cgc``, every gate seeing every table, a task's gradient reaching the
    shared tables and its own) mix embedding tables per id
    (:mod:`mtrec.models.embedding_experts`): a side's table then holds every expert's row side
    by side. ``shared_bottom``, ``mmoe_mlp``, ``cgc_mlp``, ``ple_mlp`` map a side's shared
    embedding through dense experts into each task's vector (:mod:`mtrec.models.sharing`;
    ``expert_norm``: normalised experts with Swish, ``residual``: a gated residual to the
    embedding). ``cross_stitch`` mixes the tasks' own embeddings. The heads read those vectors
    where they read embeddings otherwise, so the interaction score stays ``u . q + b``.

    ``rating_biases`` adds ``mu + b_u + b_i`` (``mu`` the training mean rating, the biases
    the rating head's own) to the MLP's output, so the MLP models only the interaction of
    user and item. ``dropout`` drops MLP activations during training.

    ``encoder`` is how an id becomes a vector before any of that
    (:mod:`mtrec.models.encoders`): ``id``, its row; ``history``, plus SVD++'s term from the
    user's training items (one item table per user table); ``graph``, LightGCN's mean of
    ``graph_layers`` propagations over the training graph, for users and items alike (each
    task's user and item tables propagated together; under a mixture of tables, every column
    of the wide rows).

    ``cosine`` scores interactions by ``cos(u, q) / tau + b``: both vectors L2-normalised, so
    no user or item wins by its norm alone, and a learned temperature ``tau`` (started at
    ``temperature``) sets how peaked the scores are; the item bias stays.
    """

    heads = ("interaction", "rating", "like")

    def __init__(
        self,
        data: DataInfo,
        embedding_dim: int | str = 32,
        layer_sizes: tuple[int, ...] = (96, 64),
        embedding_sharing: bool | str = True,
        rating_biases: bool = False,
        dropout: float = 0.0,
        sharing: str | None = None,
        experts: int | None = None,
        task_experts: int = 1,
        levels: int = 2,
        expert_norm: bool = False,
        residual: bool = False,
        tasks: Sequence[str] = ("interaction", "rating"),
        cosine: bool = False,
        temperature: float = 0.1,
        encoder: str = "id",
        graph_layers: int = 3,
    ):
        super().__init__()
        self.check_tasks(tasks)
        # the interaction and rating heads are always built (the reference net); like on demand
        self._tasks = tuple(t for t in self.heads if t in tasks or t != "like")
        self.check_settings(
            embedding_dim,
            layer_sizes,
            embedding_sharing,
            sharing,
            experts,
            task_experts,
            levels,
            expert_norm,
            residual,
            cosine,
            temperature,
            encoder,
            graph_layers,
        )
        sharing = sharing_of(sharing, embedding_sharing, experts, task_experts, levels)
        experts = DEFAULT_EXPERTS.get(sharing, 1) if experts is None else experts
        num_users, num_items = data.num_users, data.num_items
        if embedding_dim == "auto":
            embedding_dim = embedding_size("auto", max(num_users, num_items))
            layer_sizes = (3 * embedding_dim, *layer_sizes[1:])
        self.num_users, self.num_items = num_users, num_items
        self.sharing = sharing
        settings = {"experts": experts, "task_experts": task_experts, "levels": levels}
        settings |= {"normalised": expert_norm, "residual": residual}
        # under a table mixture a row per id holds every expert's row and every gate's logits;
        # the mixture has no parameters (building it here draws nothing) and serves both sides
        rows = (
            mixer(sharing, embedding_dim, settings, self._tasks)
            if sharing in TABLE_MIXERS
            else None
        )
        width = embedding_dim if rows is None else rows.columns
        self.user_embeddings = ScaledEmbedding(num_users, width)
        self.item_embeddings = ScaledEmbedding(num_items, width)
        if rows is not None:
            for table in (self.user_embeddings, self.item_embeddings):
                rows.reset_rows(table.weight)
        self.item_biases = ZeroEmbedding(num_items, 1)
        own_users = sharing in ("separate", "items", "cross_stitch")  # a user table per task
        own_items = sharing in ("separate", "cross_stitch")
        self.rating_user_embeddings = (
            ScaledEmbedding(num_users, embedding_dim) if own_users else self.user_embeddings
        )
        self.rating_item_embeddings = (
            ScaledEmbedding(num_items, embedding_dim) if own_items else self.item_embeddings
        )
        # each side's mixer (None: the tasks read embeddings as they are)
        self.user_mixer = (
            rows if rows is not None else mixer(sharing, embedding_dim, settings, self._tasks)
        )
        self.item_mixer = (
            rows if rows is not None else mixer(sharing, embedding_dim, settings, self._tasks)
        )
        if self.user_mixer is not None:  # gate use is weighted by each id's training rows
            train = data.train
            self.register_buffer("user_rows", _counts(train, "users", num_users), False)
            self.register_buffer("item_rows", _counts(train, "items", num_items), False)
        self.rating_biases = rating_biases
        if rating_biases:
            mean = data.train.ratings.mean() if data.train is not None else torch.tensor(0.0)
            self.register_buffer("mean_rating", mean)
            self.rating_user_biases = ZeroEmbedding(num_users, 1)
            self.rating_item_biases = ZeroEmbedding(num_items, 1)
        self.mlp = _mlp(layer_sizes, dropout)
        # each task's table of a side (one object where they share it)
        self.user_tables = {"interaction": self.user_embeddings}
        self.user_tables["rating"] = self.rating_user_embeddings
        self.item_tables = {"interaction": self.item_embeddings}
        self.item_tables["rating"] = self.rating_item_embeddings
        if "like" in self._tasks:  # built last: the two reference heads start as they always did
            self.like_user_embeddings = (
                ScaledEmbedding(num_users, embedding_dim) if own_users else self.user_embeddings
            )
            self.like_item_embeddings = (
                ScaledEmbedding(num_items, embedding_dim) if own_items else self.item_embeddings
            )
            self.like_mlp = _mlp(layer_sizes, dropout)
            self.user_tables["like"] = self.like_user_embeddings
            self.item_tables["like"] = self.like_item_embeddings
        self.cosine = cosine
        if cosine:  # log(1 / tau), learned
            self.log_inverse_temperature = nn.Parameter(torch.tensor(-math.log(temperature)))
        self.user_histories = None  # one encoder per distinct user table, in task order
        if encoder == "history":
            weights = history_weights(data.train, num_users, num_items)
            distinct = _distinct(self.user_tables)
            self.user_histories = nn.ModuleList(
                HistoryEncoder(weights, table.embedding_dim) for table in distinct
            )
            # each task's encoder: the one of the table it reads, found once here
            self.history_of = {t: distinct.index(u) for t, u in self.user_tables.items()}
        self.graph = None
        if encoder == "graph":
            propagation = graph_propagation(data.train, num_users, num_items, graph_layers)
            self.graph = GraphEncoder(propagation, num_users)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self._tasks

    def head(self, task: str):
        if task == "interaction":
            return self.interaction_logits
        return self.ratings if task == "rating" else self.like_logits

    @staticmethod
    def check_settings(
        embedding_dim,
        layer_sizes,
        embedding_sharing,
        sharing=None,
        experts=None,
        task_experts=1,
        levels=2,
        expert_norm=False,
        residual=False,
        cosine=False,
        temperature=0.1,
        encoder="id",
        graph_layers=3,
    ) -> None:
        """The rules of these settings, checked once: when the net is built, and by config
        validation before any work (it calls this with the config's values)."""
        check_encoder(encoder)
        check_graph_layers(graph_layers)
        if not isinstance(cosine, bool):
            raise ConfigError(f"model.net.cosine={shown(cosine)} is not valid: use true or false.")
        number = isinstance(temperature, int | float) and not isinstance(temperature, bool)
        if not (number and temperature > 0):
            raise ConfigError(
                f"model.net.temperature={shown(temperature)} is not valid: use a number > 0, "
                "e.g. 0.1 (the cosine score's starting temperature)."
            )
        if not (isinstance(embedding_sharing, bool) or embedding_sharing == "items"):
            raise ConfigError(
                f"model.embedding_sharing={shown(embedding_sharing)} is not valid: "
                "use true, false or items."
            )
        chosen = sharing_of(sharing, embedding_sharing, experts, task_experts, levels)
        for name, value in (("expert_norm", expert_norm), ("residual", residual)):
            if not isinstance(value, bool):
                raise ConfigError(
                    f"model.net.{name}={shown(value)} is not valid: use true or false."
                )
            if value and chosen not in DENSE_MIXERS:
                raise ConfigError(
                    f"model.net.{name}=true changes dense experts, and "
                    f"model.net.sharing={chosen} has none: use it with one of "
                    f"{', '.join(DENSE_MIXERS)}, or model.net.{name}=false."
                )
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

    def interaction_logits(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor, rows: Rows | None = None, history=None
    ) -> torch.Tensor:
        """Logits ``u . q + b`` for broadcastable id tensors, e.g. (B, 1) users x (B, K) items.

        ``rows`` may hold the shared rows of these ids (``"user"``, ``"item"``, as
        :meth:`shared` gathers them), read instead of the tables: per-task gradients land there.
        """
        users = self._scaled(self._vector("user", "interaction", user_ids, rows))
        items = self._unit(self._vector("item", "interaction", item_ids, rows))
        if user_ids.dim() == 2 and user_ids.shape[1] == 1 and item_ids.dim() == 1:
            # every user against the same items (the catalogue): one matrix product
            return torch.addmm(self.item_biases(item_ids).T, users.squeeze(1), items.T)
        return (users * items).sum(-1) + self.item_biases(item_ids).squeeze(-1)

    def _unit(self, vectors: torch.Tensor) -> torch.Tensor:
        """Interaction vectors as the score reads them: unit length under ``cosine``."""
        return F.normalize(vectors, dim=-1) if self.cosine else vectors

    def _scaled(self, vectors: torch.Tensor) -> torch.Tensor:
        """The user side, which also carries the cosine score's 1 / tau."""
        return self._unit(vectors) * self.log_inverse_temperature.exp() if self.cosine else vectors

    def ratings(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor, rows: Rows | None = None, history=None
    ) -> torch.Tensor:
        rating = self._mlp_output("rating", self.mlp, user_ids, item_ids, rows)
        if self.rating_biases:
            biases = self.rating_user_biases(user_ids) + self.rating_item_biases(item_ids)
            rating = rating + self.mean_rating + biases.squeeze(-1)
        return rating

    def like_logits(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor, rows: Rows | None = None, history=None
    ) -> torch.Tensor:
        """The logit that the user likes the item (its own MLP over the like task's vectors)."""
        return self._mlp_output("like", self.like_mlp, user_ids, item_ids, rows)

    def _mlp_output(self, task: str, mlp: nn.Module, user_ids, item_ids, rows) -> torch.Tensor:
        users = self._vector("user", task, user_ids, rows)
        items = self._vector("item", task, item_ids, rows)
        return mlp(torch.cat([users, items, users * items], dim=-1)).squeeze(-1)

    def embedding_norms(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """Squared norms of the embedding and bias rows each (user, item) pair uses."""
        users, items = _distinct(self.user_tables), _distinct(self.item_tables)
        tables = [(users[0], user_ids), (items[0], item_ids), (self.item_biases, item_ids)]
        tables += [(table, user_ids) for table in users[1:]]
        tables += [(table, item_ids) for table in items[1:]]
        if self.rating_biases:
            tables += [(self.rating_user_biases, user_ids), (self.rating_item_biases, item_ids)]
        return sum(table(ids).pow(2).sum(-1) for table, ids in tables)

    def _lookup(self, side: str, task: str, ids: torch.Tensor) -> torch.Tensor:
        """The encoded rows of ``ids`` in the table ``task`` reads on a side."""
        if self.graph is not None:
            users, items = self.user_tables[task].weight, self.item_tables[task].weight
            return self.graph(users, items, side, ids)
        rows = self._side(side)[0][task](ids)
        if side == "user" and self.user_histories is not None:
            rows = self.user_histories[self.history_of[task]](rows, ids)
        return rows

    def _side(self, side: str) -> tuple[dict[str, nn.Embedding], nn.Module | None]:
        """Each task's table of a side (one object where they share it), and its mixer."""
        if side == "user":
            return self.user_tables, self.user_mixer
        return self.item_tables, self.item_mixer

    def _vector(self, side: str, task: str, ids: torch.Tensor, rows: Rows | None) -> torch.Tensor:
        """A task's vector of a side for ``ids``; ``rows`` may hold (a copy of) what the tasks
        share, read instead of computing it (keys as :meth:`shared` names them)."""
        side_mixer = self._side(side)[1]
        if side_mixer is None:
            return self._row(rows, side, task, ids)
        if isinstance(side_mixer, CrossStitch):
            every = {t: self._row(rows, f"{side}/{t}", t, ids) for t in self._tasks}
            return side_mixer.vector(task, every)
        if not self.training and rows is None:  # held-out rows repeat ids: each computed once
            ids, position = ids.unique(return_inverse=True)
        copy = rows[side] if rows is not None and side in rows else None  # a task's own copy
        # under a mixer every task reads the side's one table
        vectors = side_mixer.vector(task, self._lookup(side, task, ids), copy)
        return vectors if self.training or rows is not None else vectors[position]

    def shared(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor
    ) -> dict[str, TableRows | torch.Tensor]:
        """What the tasks share for a batch, where their gradients meet.

        Shared embeddings: the user and the item rows; ``items``: the item rows; separate:
        nothing; cross-stitch: every task's rows (``user/interaction``, ``user/rating``, ...);
        shared-bottom, MMoE, CGC, PLE: each side's shared layer or shared experts' output.
        Per-task gradients taken with respect to these cost what the batch costs, never the
        size of the catalogue.
        """
        shared: dict[str, TableRows | torch.Tensor] = {}
        for side, ids in (("user", user_ids), ("item", item_ids)):
            tables, side_mixer = self._side(side)
            if isinstance(side_mixer, CrossStitch):
                for task in self._tasks:
                    shared[f"{side}/{task}"] = self._shared_rows(side, task, ids)
            elif side_mixer is not None:
                shared[side] = side_mixer.shared(self._lookup(side, "interaction", ids))
            elif len(_distinct(tables)) == 1:
                shared[side] = self._shared_rows(side, "interaction", ids)
        return shared

    def _shared_rows(self, side: str, task: str, ids: torch.Tensor):
        """The shared rows of the table ``task`` reads: gathered apart from autograd where they
        are the table's own rows, with autograd where an encoder makes them (they depend on
        more than these rows)."""
        if self._encoded(side):
            return self._lookup(side, task, ids)
        return TableRows(self._side(side)[0][task], ids)

    def tables_read(self) -> dict[str, dict[str, tuple[nn.Embedding, ...]]]:
        """Each head's tables of a side, read at that side's ids: the task's own (every task's
        under cross-stitch, which mixes them), the biases of its score; none under an
        encoder, which reads whole tables."""
        if self._encoded("user") or self._encoded("item"):
            return {}
        read = {}
        for task in self._tasks:
            sides = {}
            for side, tables in (("user", self.user_tables), ("item", self.item_tables)):
                mixes = isinstance(self._side(side)[1], CrossStitch)
                sides[side] = tuple(_distinct(tables)) if mixes else (tables[task],)
            if task == "interaction":
                sides["item"] += (self.item_biases,)
            if task == "rating" and self.rating_biases:
                sides["user"] += (self.rating_user_biases,)
                sides["item"] += (self.rating_item_biases,)
            read[task] = sides
        return read

    def _encoded(self, side: str) -> bool:
        """Whether an encoder makes a side's rows (else they are the table's own)."""
        return self.graph is not None or (side == "user" and self.user_histories is not None)

    def _row(self, rows: Rows | None, key: str, task: str, ids: torch.Tensor):
        """The given shared rows, else the encoded rows of ``ids`` that ``task`` reads."""
        if rows is not None and key in rows:
            return rows[key]
        return self._lookup(key.split("/")[0], task, ids)

    def gate_use(self) -> dict[str, torch.Tensor]:
        """Each gate's mean share per expert and its mean entropy (nats), over every user (or
        item) weighted by its training rows: ``gate/<side>/<gate>/<expert>``, ``.../entropy``.
        Empty without gates."""
        found = {}
        for side, weights in (("user", "user_rows"), ("item", "item_rows")):
            side_mixer = self._side(side)[1]
            if side_mixer is None or isinstance(side_mixer, CrossStitch):
                continue
            share = getattr(self, weights) / getattr(self, weights).sum()
            every = torch.arange(len(share), device=share.device)
            with torch.no_grad():
                rows = self._lookup(side, "interaction", every)
                for gate, probabilities in side_mixer.gates(rows).items():
                    for expert, value in enumerate(share @ probabilities):
                        found[f"gate/{side}/{gate}/{expert}"] = value
                    entropy = -(probabilities * probabilities.clamp(min=1e-12).log()).sum(-1)
                    found[f"gate/{side}/{gate}/entropy"] = share @ entropy
        return found

    def forward(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every head's output, in ``tasks`` order (interaction logits, predicted ratings,
        like logits), each of shape ``user_ids.shape``."""
        return tuple(self.head(task)(user_ids, item_ids) for task in self._tasks)

    def score_all_items(self, user_ids: torch.Tensor) -> torch.Tensor:
        """Interaction logits of every item for each user: shape (len(user_ids), num_items)."""
        return self.scorer()(user_ids)

    def scorer(self):
        """``score_all_items`` for many calls in a row (evaluation's user chunks): every
        item's vector is computed once."""
        items = self._unit(self.item_vectors()).T

        def score(user_ids: torch.Tensor) -> torch.Tensor:
            users = self._scaled(self._vector("user", "interaction", user_ids, None))
            # one fused multiply-add: no second users x items buffer for the bias
            return torch.addmm(self.item_biases.weight.T, users, items)

        return score

    def item_vectors(self) -> torch.Tensor:
        """Every item's interaction vector (its embedding, unless a mixer or encoder makes it)."""
        if self.item_mixer is None and not self._encoded("item"):
            return self.item_embeddings.weight
        every = torch.arange(self.num_items, device=self.item_biases.weight.device)
        return self._vector("item", "interaction", every, None)

    def vectors(self) -> dict[tuple[str, str], torch.Tensor]:
        """Every user's and every item's vector as each task reads it."""
        found = {}
        with torch.no_grad():
            for side, count in (("user", self.num_users), ("item", self.num_items)):
                every = torch.arange(count, device=self.item_biases.weight.device)
                for task in self._tasks:
                    found[side, task] = self._vector(side, task, every, None)
        return found


def sharing_of(
    sharing: str | None, embedding_sharing: bool | str, experts, task_experts, levels
) -> str:
    """The architecture's name: ``sharing``, else the reference's ``embedding_sharing``
    (true: shared, false: separate, items); one clear error for a bad or contradicting one."""
    implied = {True: "shared", False: "separate", "items": "items"}[embedding_sharing]
    if sharing is None:
        return implied
    if sharing not in SHARINGS:
        raise ConfigError(
            f"model.net.sharing={shown(sharing)} is not an architecture: use one of "
            f"{', '.join(SHARINGS)}."
        )
    if embedding_sharing is not True and sharing != implied:
        raise ConfigError(
            f"model.net.sharing={sharing} contradicts model.embedding_sharing="
            f"{shown(embedding_sharing)} (which means sharing={implied}): set one of the two."
        )
    for name, value in (("experts", experts), ("task_experts", task_experts), ("levels", levels)):
        if value is None and name == "experts":  # the architecture's default
            continue
        if type(value) is not int or value < 1:
            default = " or null (the architecture's default)" if name == "experts" else ""
            raise ConfigError(
                f"model.net.{name}={shown(value)} is not valid: use a positive integer{default}."
            )
    return sharing


def mixer(sharing: str, dim: int, settings: dict, tasks) -> nn.Module | None:
    """A side's mixer for architecture ``sharing`` and these tasks (None: embeddings as
    they are)."""
    shared, own, levels = settings["experts"], settings["task_experts"], settings["levels"]
    dense = {"normalised": settings["normalised"], "residual": settings["residual"]}
    if sharing in TABLE_MIXERS:
        own = 0 if sharing == "mmoe" else own
        levels = levels if sharing == "ple" else 1
        return EmbeddingExperts(dim, shared, own, tasks, levels, stop_gradient=sharing == "stem")
    if sharing == "shared_bottom":
        return SharedBottom(dim, tasks, **dense)
    if sharing == "mmoe_mlp":
        return MMoE(dim, shared, tasks, **dense)
    if sharing in ("cgc_mlp", "ple_mlp"):
        levels = 1 if sharing == "cgc_mlp" else levels
        return PLE(dim, shared, own, levels, tasks, **dense)
    return CrossStitch(dim, tasks) if sharing == "cross_stitch" else None


def _mlp(layer_sizes: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width_in, width_out in zip(layer_sizes[:-1], layer_sizes[1:], strict=False):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers += [nn.Dropout(dropout)] if dropout else []
    layers.append(nn.Linear(layer_sizes[-1], 1))
    return nn.Sequential(*layers)


def _distinct(tables: dict[str, nn.Embedding]) -> list[nn.Embedding]:
    """The side's tables, each once, in task order."""
    return list({id(table): table for table in tables.values()}.values())


def _counts(train, field: str, size: int) -> torch.Tensor:
    """Training rows per id (ones without training data)."""
    if train is None:
        return torch.ones(size)
    return torch.bincount(getattr(train, field).long(), minlength=size).float()
