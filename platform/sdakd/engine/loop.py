"""The stage loop: plain PyTorch, driven by the method's stage list. No Ray, no MLflow, no method names.

The engine alone does backward, optimizer steps, EMA, AMP and checkpoints; a method only returns loss terms.
Adapters (Ray Train, MLflow, progress bars) listen through `Callbacks`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sdakd.engine.checkpoint import load_checkpoint, save_checkpoint
from sdakd.engine.interface import StagedMethod, StepOutputs
from sdakd.engine.losses import Diverged, LossBook, divergence  # Diverged: what `run` raises, named here
from sdakd.engine.stage import Stage, stage_offsets
from sdakd.errors import SdakdError
from sdakd.models.taps import drop_forward_hooks


@dataclass(frozen=True)
class Position:
    """Where a run stands: the stage index and the number of steps already done inside it."""

    stage: int = 0
    step: int = 0


class Callbacks:
    """Adapters override what they need; every rank gets every call (Ray's report is a barrier)."""

    def on_log(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None: ...

    def on_stage_end(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None: ...

    def on_checkpoint(self, path: Path | None, position: Position, global_step: int) -> None: ...


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under a DDP (or similar) wrapper."""
    return getattr(module, "module", module)


def _param_groups(nets: Mapping[str, nn.Module], names: Iterable[str]) -> list[dict[str, Any]]:
    """One Adam param group per net, named, so a checkpoint's optimizer state can be matched net by net."""
    groups = []
    for name in names:
        params = [p for p in nets[name].parameters() if p.requires_grad] if name in nets else []
        if params:
            groups.append({"params": params, "net": name})
    return groups


def _load_adam_groups(opt: torch.optim.Optimizer, saved: Mapping[str, Any], nets: set[str]) -> None:
    """Adam state of the named groups only: the other nets keep their fresh (empty) state."""
    groups = {g["net"]: g["params"] for g in opt.param_groups}
    for group in saved["param_groups"]:
        if group["net"] not in nets:
            continue
        params = groups[group["net"]]
        if len(params) != len(group["params"]):
            raise ValueError(f"net {group['net']}: {len(group['params'])} saved params vs {len(params)} here")
        for index, param in zip(group["params"], params):
            if index in saved["state"]:
                # `step` stays a CPU scalar as Adam keeps it; moments follow the parameter
                opt.state[param] = {
                    k: v if k == "step" else v.to(param.device) for k, v in saved["state"][index].items()
                }


def _set_trainable(modules: Iterable[nn.Module], flag: bool) -> None:
    for module in modules:
        module.requires_grad_(flag)


class Engine:
    def __init__(
        self,
        method: StagedMethod,
        batches: Callable[[int], dict[str, torch.Tensor]],
        *,
        device: torch.device,
        lr_g: float,
        lr_d: float,
        betas: tuple[float, float],
        ema_decay: float = 0.0,
        amp: bool = False,
        channels_last: bool = False,
        checkpoint_dir: Path | None = None,
        checkpoint_every: int = 1000,
        log_every: int = 50,
        evaluate: Callable[[], Mapping[str, float]] | None = None,
        callbacks: Iterable[Callbacks] = (),
        writer: bool = True,
        metadata: Mapping[str, Any] | None = None,
        max_d_loss: float | None = None,
    ) -> None:
        self.method, self.batches, self.device = method, batches, device
        self.stages: list[Stage] = method.stages()
        self.offsets = stage_offsets(self.stages)
        self.g_modules = method.modules_for(method.g_nets)
        self.d_modules = method.modules_for(method.d_nets)
        self.opt_g = torch.optim.Adam(_param_groups(method.nets, method.g_nets), lr=lr_g, betas=betas)
        d_groups = _param_groups(method.nets, method.d_nets)
        self.opt_d = torch.optim.Adam(d_groups, lr=lr_d, betas=betas) if d_groups else None
        student = unwrap(method.nets["student_g"])
        self.ema = ModelEmaV3(student, decay=ema_decay, use_warmup=True) if ema_decay > 0 else None
        if self.ema is not None:
            drop_forward_hooks(self.ema.module)  # the copy's forward must not write the student's feature taps
        # DDP nets: ranks that step together (a worker group), so they stop together; not rank 0's teacher pretrain
        self.synced = isinstance(method.nets["student_g"], DistributedDataParallel)
        # bf16 autocast on CUDA only: CPU autocast is slower than fp32 on small convs.
        bf16 = amp and device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        self.input_format = torch.channels_last if channels_last else torch.preserve_format  # as the nets' weights
        self.checkpoint_dir, self.checkpoint_every, self.log_every = checkpoint_dir, checkpoint_every, log_every
        self.evaluate, self.callbacks, self.writer = evaluate, list(callbacks), writer
        self.metadata = dict(metadata or {})  # saved in every checkpoint (e.g. the resolved config)
        self.losses = LossBook(max_d_loss)  # a D loss above max_d_loss stops the run as diverged; None: no bound
        self.last_finite: tuple[int, dict[str, float]] = (0, {})  # the last step whose losses all passed, and them
        self.position = Position()
        # What each stage actually did: the terms it computed and how often each optimizer stepped.
        self.stats: dict[str, dict[str, Any]] = {
            s.name: {"g_terms": set(), "d_terms": set(), "g_steps": 0, "d_steps": 0} for s in self.stages
        }
        self.history: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ public
    @property
    def total_steps(self) -> int:
        return sum(s.iters for s in self.stages)

    def global_step(self, position: Position | None = None) -> int:
        pos = position or self.position
        return self.offsets[pos.stage] + pos.step if pos.stage < len(self.stages) else self.total_steps

    def eval_generator(self) -> nn.Module:
        """The weights that ship: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else unwrap(self.method.nets["student_g"])

    def run(self) -> dict[str, dict[str, float]]:
        while self.position.stage < len(self.stages):
            stage = self.stages[self.position.stage]
            for net in self.method.nets.values():
                net.train()
            for step_in_stage in range(self.position.step, stage.iters):
                global_step = self.offsets[self.position.stage] + step_in_stage
                self.losses.add(global_step + 1, self.train_step(stage, self.batches(global_step)), stage)
                done = step_in_stage + 1
                self.position = Position(self.position.stage, done)
                log = done % self.log_every == 0 or done == stage.iters
                checkpoint = done % self.checkpoint_every == 0 and done < stage.iters
                if log or checkpoint:  # no checkpoint of weights that a diverged step already spoiled
                    self._read_losses(stage)
                if log:
                    self._emit("on_log", stage, global_step + 1, self.losses.mean())
                if checkpoint:
                    self._checkpoint()
            self.position = Position(self.position.stage + 1, 0)
            if stage.iters:
                metrics = dict(self.evaluate()) if self.evaluate else {}
                self.history[stage.name] = metrics
                self._checkpoint(stage_name=stage.name)
                self._emit("on_stage_end", stage, self.global_step(), metrics)
        return self.history

    def train_step(self, stage: Stage, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One step; its detached loss terms stay on the device (`run` reads them at log steps)."""
        batch = {k: self._to_device(v) for k, v in batch.items()}
        step = self.method.step(batch)
        g_losses, d_losses = dict[str, torch.Tensor](), dict[str, torch.Tensor]()
        if stage.trains_g:
            _set_trainable(self.d_modules, False)  # D gets no grads from the G's GAN term
            g_losses = self._descend(stage, "g", self.opt_g, self.method.generator_terms, step, stage.g_loss)
            _set_trainable(self.d_modules, True)
            if self.ema is not None:
                self.ema.update(unwrap(self.method.nets["student_g"]), step=self.global_step())
        if stage.trains_d:
            if not stage.trains_g:
                with torch.no_grad(), self.autocast():
                    step.sr  # a D-only stage still needs the generator's output, without grads
            d_losses = self._descend(stage, "d", self.opt_d, self.method.discriminator_terms, step, stage.d_loss)
        return g_losses | d_losses

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() != 4:
            return tensor.to(self.device, non_blocking=True)
        return tensor.to(self.device, non_blocking=True, memory_format=self.input_format)

    def _read_losses(self, stage: Stage) -> None:
        """Read the losses of the steps since the last read; raise `Diverged` at the first step whose loss is not
        finite or whose D loss passed `max_d_loss`: on every rank of a worker group at the same read and naming the
        same step, so that no rank is left waiting in a collective for the others."""
        steps = self.losses.read()
        failed = next((s.global_step for s in steps if s.bad), None)
        if self.synced:  # one rank's verdict is every rank's: the earliest failed step of any rank
            none = self.total_steps + 1
            earliest = torch.tensor([failed or none], device=self.device)
            dist.all_reduce(earliest, op=dist.ReduceOp.MIN)
            failed = None if (agreed := int(earliest.item())) == none else agreed
        passed = [s for s in steps if failed is None or s.global_step < failed]
        self.losses.accept(passed)
        if passed:
            self.last_finite = (passed[-1].global_step, passed[-1].values)
        if failed is not None:
            step = next(s for s in steps if s.global_step == failed)
            raise divergence(stage, step, failed - self.offsets[self.position.stage], self.global_step(),
                             self.losses.max_d_loss, self.last_finite, self.metadata.get("config_hash"))

    def _descend(self, stage: Stage, side: str, optimizer: Any, terms_of: Callable, step: StepOutputs,
                 weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """One optimizer step on the weighted sum of one side's terms; returns what to log."""
        with self.autocast():
            terms = terms_of(step, stage)
            total = sum(weights[name] * value for name, value in terms.items())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        stats = self.stats[stage.name]
        stats[f"{side}_terms"].update(terms)
        stats[f"{side}_steps"] += 1
        prefix = "loss/" if side == "g" else "loss/d_"
        return {f"{prefix}{name}": value.detach() for name, value in terms.items()} | {
            f"loss/{side}_total": total.detach()
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": {name: unwrap(net).state_dict() for name, net in self.method.nets.items()},
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "position": {"stage": self.position.stage, "step": self.position.step},
            "global_step": self.global_step(),
            "history": self.history,
            "meta": self.metadata,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, net in self.method.nets.items():
            unwrap(net).load_state_dict(state["nets"][name])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.opt_d is not None:
            self.opt_d.load_state_dict(state["opt_d"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.position = Position(**state["position"])
        self.history = dict(state.get("history", {}))

    def restore_partial(self, state: Mapping[str, Any], nets: set[str], next_stage: int) -> None:
        """Continue at the start of stage `next_stage` from a checkpoint of another run whose stages before it
        changed only `nets` (the stage-prefix cache): those nets and their Adam state, the EMA and the history
        are loaded; every other net keeps this run's own initialisation and fresh optimizer state."""
        for name in nets:
            unwrap(self.method.nets[name]).load_state_dict(state["nets"][name])
        for saved, opt in ((state["opt_g"], self.opt_g), (state["opt_d"], self.opt_d)):
            if saved and opt is not None:
                _load_adam_groups(opt, saved, nets)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.history = dict(state["history"])
        self.position = Position(next_stage, 0)

    def resume(self, path: Path) -> int:
        """Continue where the checkpoint stopped; returns the global step it had reached, as it counted it."""
        # on the CPU: the nets copy their weights over, and Adam moves its moments to the params' device while its
        # `step` counters stay CPU scalars (on the GPU, non-capturable Adam would sync on each of them every step)
        state = load_checkpoint(path, map_location="cpu")
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0][:300]
            raise SdakdError(
                f"checkpoint {path} does not fit this config's networks (wrong architecture or method?): {first}"
            ) from None
        return int(state.get("global_step", self.global_step()))

    def _checkpoint(self, stage_name: str | None = None) -> None:
        path = None
        if self.checkpoint_dir is not None and self.writer:
            path = save_checkpoint(self.state_dict(), self.checkpoint_dir, stage_name)
        self._emit("on_checkpoint", path, self.position, self.global_step())

    def _emit(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(*args)
