"""python benchmarks/bench_epoch.py --repeats 5 --json epoch_bench.json

(Run from the repository root with the venv active: ``. .venv/bin/activate``.)

Seconds per training epoch of the package's own loop against a bare ``nn.LSTM`` of the same shapes, in one
process, on 2 CPU threads (``torch.set_num_threads(2)``):

* ours: one epoch of :func:`clinical_lstm.model.training.fit_one`'s loop -- a ``torch.randperm`` over the N stays,
  batches of ``TrainConfig().batch_size``, :class:`clinical_lstm.model.network.MaskedLSTM` with ``ModelConfig()``
  defaults (learned input decay, dropout, step head), :func:`clinical_lstm.model.training.loss_fn` with target
  replication and the ``sqrt`` positive weight, backward, gradient clipping, AdamW step. The tensors are the
  real ones: N stays of PhysioNet 2012 set A through ``data.load.load`` -> ``validate.validate`` ->
  ``impute.GridTransformer`` (fitted on those stays) -> ``training.to_torch``.
* bare: ``nn.LSTM(3V + S, hidden)`` forward + backward over random tensors of the same shapes (B, T, 3V + S),
  a ``Linear`` head on the last hidden state, BCE-with-logits, AdamW step; same permutation batching and the
  same number of batches, no clipping, no decay, no step head, no dropout.

"ours" calls ``clinical_lstm.model.training.run_epoch``, the function ``fit_one`` runs every epoch.

Each side runs one untimed warm-up epoch, then ``--repeats`` timed epochs, interleaved (ours, bare, ours,
bare, ...). Prints the median wall seconds per epoch of each and the ratio ours/bare, the same for process
CPU seconds, and the load average before and after; ``--json FILE`` writes them. Run it on an otherwise idle
machine: with more runnable threads than cores, 2-thread torch epochs were seen to slow down 100-fold and
erratically (0.4 s -> 85 s per epoch), so a warning is printed when the 1-minute load average is high before timing starts.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from clinical_lstm.config import Config, ModelConfig, TrainConfig
from clinical_lstm.data.load import load
from clinical_lstm.data.validate import validate
from clinical_lstm.features.impute import GridTransformer
from clinical_lstm.model.network import MaskedLSTM

cl_train = importlib.import_module("clinical_lstm.model.training")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = (REPO / ".." / "shared" / "data" / "physionet2012").resolve()


def run_epoch(model, opt, data, y, cfg: TrainConfig, gen) -> float:
    """The package's own epoch (``clinical_lstm.model.training.run_epoch``), with fit_one's positive weight."""
    return cl_train.run_epoch(model, opt, data, y, cl_train._pos_weight(y.cpu().numpy(), cfg.pos_weight), cfg, gen)


class BareLSTM(nn.Module):
    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        _, (h, _) = self.lstm(x)  # h: (1, B, H), the last state
        return self.head(h[-1]).squeeze(-1)


def bare_epoch(model, opt, x, y, batch_size: int, gen) -> float:
    model.train()
    n = len(y)
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        idx = perm[i:i + batch_size].to(x.device)
        loss = nn.functional.binary_cross_entropy_with_logits(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def real_tensors(data_dir: Path, n: int, seed: int, device: torch.device):
    """``n`` kept stays of set A as model tensors (transformer fitted on them) and their labels."""
    cfg = Config()
    raw = load(data_dir / "set-a.tar.gz")
    clean, kept, _ = validate(raw, GridTransformer().catalogue, cfg.data.window_hours, require_labels=True)
    ids = kept.to_numpy()
    if n > len(ids):
        sys.exit(f"bench_epoch: --n {n} is more than the {len(ids)} kept stays of set A")
    ids = np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))
    tr = GridTransformer(None, cfg.data.window_hours, cfg.data.resolution_hours, cfg.data.imputation)
    t = tr.fit(clean, ids).transform(clean, ids)
    lab = pl.DataFrame({"stay_id": ids}).join(raw.outcomes.select("stay_id", "label"), on="stay_id", how="left")
    y = lab["label"].to_numpy().astype(np.float32)
    return cl_train.to_torch(t, device), torch.from_numpy(y).to(device), tr.n_static_features


def _timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def _check_load(warn: bool) -> list[float]:
    """The 1/5/15-minute load averages; with ``warn``, say so when other work is likely competing for cores."""
    load = list(os.getloadavg())
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    if warn and load[0] > 0.5 * (os.cpu_count() or 1):
        print("warning: the machine is busy; these timings may be far off (see the module docstring)")
    return load


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                    help=f"folder with set-a.tar.gz (default: {DEFAULT_DATA_DIR})")
    ap.add_argument("--n", type=int, default=3200, help="training stays per epoch (default 3200)")
    ap.add_argument("--repeats", type=int, default=5, help="timed epochs of each (default 5)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        sys.exit("bench_epoch: --repeats must be at least 1")
    if not (a.data_dir / "set-a.tar.gz").is_file():
        sys.exit(f"bench_epoch: set-a.tar.gz not found in {a.data_dir}; pass --data-dir")

    torch.set_num_threads(a.threads)
    load_before = _check_load(warn=True)
    device = torch.device(a.device)
    mcfg, tcfg = ModelConfig(), TrainConfig()

    t0 = time.perf_counter()
    data, y, S = real_tensors(a.data_dir, a.n, a.seed, device)
    N, T, V = data["x"].shape
    n_in = 3 * V + S
    n_batches = -(-N // tcfg.batch_size)
    print(f"set A tensors in {time.perf_counter() - t0:.1f} s: N={N} T={T} V={V} S={S} -> LSTM input {n_in}, "
          f"hidden {mcfg.hidden_size}, batch {tcfg.batch_size}, {n_batches} batches/epoch, "
          f"{torch.get_num_threads()} threads, {device}")

    # ours: the package's model and optimizer exactly as fit_one builds them
    gen_ours = cl_train.seed_everything(a.seed)
    ours = MaskedLSTM(mcfg, V, S).to(device)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    # bare: random inputs and labels of the same shapes
    g = torch.Generator().manual_seed(a.seed)
    x_bare = torch.randn(N, T, n_in, generator=g).to(device)
    y_bare = (torch.rand(N, generator=g) < y.float().mean().item()).float().to(device)
    gen_bare = torch.Generator().manual_seed(a.seed)
    bare = BareLSTM(n_in, mcfg.hidden_size).to(device)
    opt_bare = torch.optim.AdamW(bare.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)

    def epoch_ours():
        run_epoch(ours, opt_ours, data, y, tcfg, gen_ours)

    def epoch_bare():
        bare_epoch(bare, opt_bare, x_bare, y_bare, tcfg.batch_size, gen_bare)

    warm = {"ours": _timed(epoch_ours, device)[0], "bare": _timed(epoch_bare, device)[0]}
    print(f"warm-up epoch: ours {warm['ours']:.2f} s, bare {warm['bare']:.2f} s")
    times: dict[str, list[float]] = {"ours": [], "bare": []}
    cpu: dict[str, list[float]] = {"ours": [], "bare": []}
    print(f"\n{'epoch':>5} {'ours s':>9} {'bare s':>9} {'ours/bare':>10} {'ours cpu s':>11} {'bare cpu s':>11}")
    for r in range(a.repeats):  # interleaved: ours, bare, ours, bare, ...
        for name, fn in (("ours", epoch_ours), ("bare", epoch_bare)):
            wall, c = _timed(fn, device)
            times[name].append(wall)
            cpu[name].append(c)
        print(f"{r + 1:>5} {times['ours'][-1]:>9.3f} {times['bare'][-1]:>9.3f} "
              f"{times['ours'][-1] / times['bare'][-1]:>10.2f} {cpu['ours'][-1]:>11.3f} {cpu['bare'][-1]:>11.3f}")
    load_after = _check_load(warn=False)  # includes this benchmark's own load
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratio = med["ours"] / med["bare"]
    print(f"\nmedian s/epoch over {a.repeats}: ours {med['ours']:.3f}, bare {med['bare']:.3f}, "
          f"ours/bare {ratio:.2f}")
    print(f"median CPU s/epoch: ours {med_cpu['ours']:.3f}, bare {med_cpu['bare']:.3f}, "
          f"ours/bare {med_cpu['ours'] / med_cpu['bare']:.2f}")
    if a.json:
        result = {
            "benchmark": "one training epoch, package loop vs bare nn.LSTM",
            "ours_epoch": f"{run_epoch.__module__}.{run_epoch.__qualname__}",
            "shapes": {"N": N, "T": T, "V": V, "S": S, "lstm_input": n_in, "hidden": mcfg.hidden_size,
                       "batch_size": tcfg.batch_size, "batches_per_epoch": n_batches},
            "model_config": mcfg.to_dict(), "threads": torch.get_num_threads(), "device": str(device),
            "repeats": a.repeats, "load_average": {"before": load_before, "after": load_after}, "warmup_seconds": warm, "seconds": times, "median_seconds": med,
            "ratio_ours_over_bare": ratio, "cpu_seconds": cpu, "median_cpu_seconds": med_cpu,
            "ratio_cpu_ours_over_bare": med_cpu["ours"] / med_cpu["bare"],
            "environment": {"python": platform.python_version(), "torch": torch.__version__,
                            "platform": platform.platform(), "cpus": os.cpu_count()},
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
