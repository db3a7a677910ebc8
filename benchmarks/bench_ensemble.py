"""python benchmarks/bench_ensemble.py --model runs/physionet_a/model --stays 2000 --repeats 5

How to evaluate the K networks of an ensemble on CPU: one after another (what ``predict`` does), or as one
batched computation. Four other forms are timed against the members one by one, side by side in one process
on the same inputs (the first ``--stays`` scorable stays of PhysioNet set B, gridded once), each checked to give
the members' mean logit:

* **grouped**: one ``nn.LSTM`` whose hidden state stacks the K members' (hidden K*H, input and recurrent weights
  block-diagonal: with GRU-D decay each member's step inputs differ, so the input is the K members' side by
  side), then the K step heads;
* **bmm**: the K members' input projections in one matrix product, then the recurrence stepped in Python with
  one batched matrix product (``torch.baddbmm``) per step for all K members;
* **hand recurrence**: each member's input product, then its recurrence by ``MaskedLSTM.from_gates`` (the
  SHAP path's hand-written LSTM step, tanh written as a sigmoid), member by member;
* **vmap**: ``torch.func.stack_module_state`` + ``torch.func.vmap`` over ``functional_call`` (PyTorch's ensemble
  pattern), where the LSTM operator supports it.

Prints the median seconds of ``--repeats`` runs of each (interleaved) and the ratio to the members one by one.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from clinical_lstm import load_model

REPO = Path(__file__).resolve().parents[1]


def grouped(networks):
    """One nn.LSTM over the stacked members (single-layer, no attention); returns a function of the step inputs."""
    K, H = len(networks), networks[0].cfg.hidden_size
    D = networks[0].lstm.input_size
    big = torch.nn.LSTM(K * D, K * H, batch_first=True)
    with torch.no_grad():
        w_ih = torch.zeros(4, K, H, K, D)
        w_hh = torch.zeros(4, K, H, K, H)
        b = torch.zeros(4, K, H)
        for k, net in enumerate(networks):
            w_ih[:, k, :, k] = net.lstm.weight_ih_l0.reshape(4, H, D)
            w_hh[:, k, :, k] = net.lstm.weight_hh_l0.reshape(4, H, H)
            b[:, k] = (net.lstm.bias_ih_l0 + net.lstm.bias_hh_l0).reshape(4, H)
        big.weight_ih_l0.copy_(w_ih.reshape(4 * K * H, K * D))
        big.weight_hh_l0.copy_(w_hh.reshape(4 * K * H, K * H))
        big.bias_ih_l0.copy_(b.reshape(-1))
        big.bias_hh_l0.zero_()
    head_w = torch.stack([n.head.weight[0] for n in networks])  # (K, H)
    head_b = torch.stack([n.head.bias[0] for n in networks])
    head_s = torch.stack([n.head_static.weight[0] for n in networks])  # (K, S)

    def run(inputs, statics, last):  # inputs (B, T, K*D): the members' step inputs side by side
        hs, _ = big(inputs)  # (B, T, K*H)
        h = hs[torch.arange(len(last)), last].reshape(len(last), K, H)
        return ((h * head_w).sum(-1) + head_b + statics @ head_s.T).mean(1)

    return run


def bmm(networks):
    K, H = len(networks), networks[0].cfg.hidden_size
    w_ih = torch.stack([n.lstm.weight_ih_l0.T for n in networks])  # (K, D, 4H)
    w_hh = torch.stack([n.lstm.weight_hh_l0.T for n in networks])  # (K, H, 4H)
    bias = torch.stack([n.lstm.bias_ih_l0 + n.lstm.bias_hh_l0 for n in networks])[:, None, :]  # (K, 1, 4H)
    head_w = torch.stack([n.head.weight[0] for n in networks])
    head_b = torch.stack([n.head.bias[0] for n in networks])
    head_s = torch.stack([n.head_static.weight[0] for n in networks])

    def run(inputs, statics, last):  # inputs (K, B, T, D): the members' own step inputs
        B, T = inputs.shape[1:3]
        pre = torch.matmul(inputs.reshape(K, B * T, -1), w_ih).reshape(K, B, T, 4 * H)
        h, c = torch.zeros(K, B, H), torch.zeros(K, B, H)
        out = torch.zeros(K, B, H)
        for t in range(T):
            g = torch.baddbmm(pre[:, :, t] + bias, h, w_hh)
            i, f, gg, o = g.sigmoid().chunk(4, -1)
            c = f * c + i * torch.tanh(g[..., 2 * H:3 * H])
            h = o * torch.tanh(c)
            at = last == t
            out[:, at] = h[:, at]
        return ((out * head_w[:, None]).sum(-1) + head_b[:, None] + (statics @ head_s.T).T).mean(0)

    return run


def vmapped(networks):
    from torch.func import functional_call, stack_module_state, vmap

    params, buffers = stack_module_state(networks)
    base = copy.deepcopy(networks[0]).to("meta")

    def one(p, b, x, mask, delta, statics, lengths):
        return functional_call(base, (p, b), (x, mask, delta, statics, lengths))[0]

    def run(x, mask, delta, statics, lengths):
        return vmap(one, in_dims=(0, 0, None, None, None, None, None))(params, buffers, x, mask, delta, statics,
                                                                      lengths).mean(0)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(REPO.parent / "shared/data/physionet2012/set-b.tar.gz"))
    p.add_argument("--stays", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    nets = [n.eval() for n in model.networks]
    if any(n.cfg.attention or n.cfg.num_layers != 1 for n in nets):
        raise SystemExit("bench_ensemble: single-layer networks without attention only")
    clean, kept, _ = model.clean(a.data)
    t = model.tensors(clean, kept.to_numpy()[: a.stays])
    x, mask, delta, statics, lengths = (torch.from_numpy(v) for v in (t.x, t.mask, t.delta, t.statics, t.lengths))
    last = (lengths - 1).long()
    forms = {"members one by one": lambda: torch.stack([n(x, mask, delta, statics, lengths)[0] for n in nets]).mean(0)}
    g = grouped(nets)
    forms["grouped nn.LSTM"] = lambda: g(torch.cat([n.step_inputs(x, mask, delta, statics) for n in nets], -1),
                                         statics, last)
    b = bmm(nets)
    forms["bmm recurrence"] = lambda: b(torch.stack([n.step_inputs(x, mask, delta, statics) for n in nets]),
                                        statics, last)
    forms["hand recurrence"] = lambda: torch.stack([
        n.from_gates(n.input_gates(n.step_inputs(x, mask, delta, statics)), statics, lengths) for n in nets]).mean(0)
    try:
        v = vmapped(nets)
        with torch.inference_mode():
            v(x[:2], mask[:2], delta[:2], statics[:2], lengths[:2])
        forms["torch.func vmap"] = lambda: v(x, mask, delta, statics, lengths)
        vmap_error = None
    except Exception as exc:  # noqa: BLE001 -- reported, not hidden
        vmap_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    print(f"load average {os.getloadavg()}; {len(t)} stays, {len(nets)} networks, {a.threads} threads")
    if vmap_error:
        print(f"torch.func vmap: not run ({vmap_error})")
    times = {name: [] for name in forms}
    with torch.inference_mode():
        want = forms["members one by one"]().numpy()
        agree = {name: float(np.abs(f().numpy() - want).max()) for name, f in forms.items()}
        for _ in range(a.repeats):
            for name, f in forms.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["members one by one"])
    result = {"stays": len(t), "networks": len(nets), "threads": a.threads, "vmap_error": vmap_error,
              "decay": bool(nets[0].cfg.decay), "forms": {}}
    for name in forms:
        med = statistics.median(times[name])
        result["forms"][name] = {"median_s": med, "ratio_to_members": med / base, "runs_s": times[name],
                                 "max_abs_logit_difference": agree[name]}
        print(f"{name:20s} median {med:.3f} s ({med / base:.2f}x members one by one); "
              f"largest |logit - members'| {agree[name]:.1e}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
