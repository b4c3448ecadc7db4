"""The one object that decides which weights are "the best": raw, EMA or SWA (timm's CheckpointSaver).

Every epoch the raw and the EMA weights are candidates on the validation split; the best of them is
written to checkpoints/best.pt as soon as it is found. At the end the SWA average (its BN statistics
recomputed) competes too; without a validation split the final weights are the result. The choice
and the candidates are what results.json reports. The test split never takes part.
"""

from __future__ import annotations

from typing import Callable

import torch

from .state import RunState

SOURCES = {"raw": "val_acc", "ema": "ema_val_acc"}     # weights -> the metrics.csv column they are judged by

Save = Callable[[str, dict, str], None]     # save(checkpoint name, model state, source)


class BestWeights:
    def __init__(self, state: RunState, save: Save):
        self.state = state          # the best so far lives in the run state (it is resumed with it)
        self.save = save
        self.swa_acc: float | None = None

    def epoch_end(self, epoch: int, row: dict, modules: dict[str, torch.nn.Module | None]) -> None:
        """Judge this epoch's raw and EMA weights (those with a validation accuracy in `row`)."""
        for source, column in SOURCES.items():
            acc = row.get(column)
            if acc is None:
                continue
            self.state.reached(acc, row["elapsed_seconds"], row.get("train_flops"))
            best = self.state.best["val_acc"]
            if best is None or acc > best:
                self.state.best = {"val_acc": acc, "epoch": epoch, "source": source}
                self.save("best.pt", modules[source].state_dict(), source)

    def finish(self, epochs: int, *, has_val: bool, swa: tuple[float | None, torch.nn.Module] | None,
               final: tuple[str, torch.nn.Module]) -> None:
        """The end of training. swa: (its validation accuracy or None, the averaged model) when SWA ran;
        final: (source, model) of the last weights, the result when there is nothing to choose on."""
        if swa is not None:
            acc, module = swa
            self.swa_acc = acc
            if acc is None or acc > (self.state.best["val_acc"] or -1):
                self.state.best = {"val_acc": acc, "epoch": epochs, "source": "swa"}
                self.save("best.pt", module.state_dict(), "swa")
        elif not has_val:
            source, module = final
            self.state.best = {"val_acc": None, "epoch": epochs, "source": source}
            self.save("best.pt", module.state_dict(), source)

    def candidates(self) -> dict[str, float | None]:
        """The best validation accuracy each kind of weights reached."""
        rows = self.state.history
        out = {s: max((r[c] for r in rows if r.get(c) is not None), default=None) for s, c in SOURCES.items()}
        return {"raw": out["raw"], "swa": self.swa_acc, "ema": out["ema"]}

    def results(self) -> dict:
        best = self.state.best
        return {"best_val_acc": best["val_acc"], "best_epoch": best["epoch"], "selected": best["source"],
                "candidates": self.candidates()}
