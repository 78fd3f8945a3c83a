"""What the one epoch loop asks of a training method: the plug-in contract.

:meth:`oocgnn.train.loop.Trainer.train_epoch` is the only epoch loop.  It walks a
list of :class:`~oocgnn.batching.Action` (train or forward-only refresh) that an
*epoch policy* hands it, and calls the policy at a handful of hooks.  Plain GAS
is :class:`GASPolicy`: the action list is the shuffled epoch plan and every hook
does nothing.  The staleness methods (REST, REST-IS, VISAGNN and the staleness
metrics, :class:`oocgnn.staleness.control.StalenessControl`) implement the same
protocol without importing this package, and the trainer never imports them:
:func:`oocgnn.runner.make_trainer` plugs one into the other.

Hook order inside one training step::

    before_train -> model forward -> extra_loss -> backward -> after_backward
    -> (clip, optimizer step) -> before_push -> push -> after_train
"""
from __future__ import annotations

from typing import Any, Protocol

import torch

from oocgnn.batch import SubgraphBatch
from oocgnn.batching import Action, group_ranges


class EpochPolicy(Protocol):
    """The hooks :class:`~oocgnn.train.loop.Trainer` calls (see module docstring)."""

    #: forward-only refreshes run with training semantics (dropout on) when True
    refresh_train_mode: bool

    def build_model(self, name: str, in_channels: int, hidden: int, out_channels: int, layers: int,
                    **kwargs: Any) -> torch.nn.Module | None: ...
    def plan_epoch(self, trainer: Any) -> list[Action]: ...
    def advance(self, state: Any, action: Action) -> None: ...
    def epoch_length(self, num_batches: int, start_step: int) -> int: ...
    def before_train(self, batch: SubgraphBatch, step: int) -> None: ...
    def extra_loss(self, logits: torch.Tensor, batch: SubgraphBatch) -> torch.Tensor | None: ...
    def after_backward(self, batch: SubgraphBatch, num_labelled: int) -> None: ...
    def before_push(self, histories: Any, batch: SubgraphBatch, pushes: list[torch.Tensor]) -> None: ...
    def after_train(self, batch: SubgraphBatch, logits: torch.Tensor) -> None: ...
    def after_refresh(self, batch: SubgraphBatch) -> None: ...
    def epoch_record(self, trainer: Any) -> dict[str, Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, sd: dict[str, Any]) -> None: ...
    def journaled_tables(self) -> list[Any]: ...
    def attach_journal(self, journal: Any, first_index: int, steps: list[Any]) -> None: ...
    def close(self) -> None: ...


class GASPolicy:
    """Plain GAS: every batch of the seeded epoch plan trains once, in plan order; no hooks."""

    refresh_train_mode = False

    def build_model(self, *args: Any, **kwargs: Any) -> None:
        return None  # the trainer builds the plain backbone

    def plan_epoch(self, trainer: Any) -> list[Action]:
        st = trainer.state
        groups = trainer.split.groups(len(trainer.partition_ptr) - 1, trainer.cfg.train.parts_per_batch,
                                      trainer.cfg.train.seed, st.epoch)
        return [Action("train", tuple(int(p) for p in g), group_ranges(trainer.partition_ptr, g))
                for g in groups[st.position:]]

    def advance(self, state: Any, action: Action) -> None:
        state.position += 1

    def epoch_length(self, num_batches: int, start_step: int) -> int:
        return num_batches

    def before_train(self, batch: SubgraphBatch, step: int) -> None:
        pass

    def extra_loss(self, logits: torch.Tensor, batch: SubgraphBatch) -> None:
        return None

    def after_backward(self, batch: SubgraphBatch, num_labelled: int) -> None:
        pass

    def before_push(self, histories: Any, batch: SubgraphBatch, pushes: list[torch.Tensor]) -> None:
        pass

    def after_train(self, batch: SubgraphBatch, logits: torch.Tensor) -> None:
        pass

    def after_refresh(self, batch: SubgraphBatch) -> None:
        pass

    def epoch_record(self, trainer: Any) -> dict[str, Any]:
        return {"method": "gas"}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        pass

    def journaled_tables(self) -> list[Any]:
        return []

    def attach_journal(self, journal: Any, first_index: int, steps: list[Any]) -> None:
        pass

    def close(self) -> None:
        pass
