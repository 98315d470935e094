"""Which way of running the headline biLSTM's recurrence is fastest, forward + backward?

``jax.value_and_grad`` of the biLSTM encoder alone (B = 64, T = 20 tokens of lengths 3..20, 300-d inputs, hidden 128
per direction, as configs/default.py), a fixed linear loss of its masked outputs and last states: flax's
``nn.RNN(OptimizedLSTMCell)`` (``popjax.testing.references.FlaxBiLSTM``: the input projection inside the scan; with
``unroll``), as popjax's training runs it (``popjax.ops.lstm``: hand-written backward pass; also under
``jax.vmap`` and with half the padded length), and plain-JAX restructurings left to autodiff: input projection in
the scan, all time steps' input projections in one matmul outside the scan, and that plus both directions in one
scan. Each is checked against the flax loss and gradients; all are timed in interleaved rounds of 3 calls on one
JAX device (default placement); torch nn.LSTM (packed) for reference.

    python benchmarks/lstm_recurrence.py [--quick] [--rounds 20] [--unrolls 1 4 20] [--markdown]
                                         [--out benchmarks/out/lstm_recurrence.json]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _env import environment, interleaved, markdown_table, median, per_call, rel_err, standard_arguments, write_result

T_WORDS, BATCH, WORD_DIM, HIDDEN = 20, 64, 300, 128


def joined(result):
    """((h_fwd, out_fwd), (h_bwd, out_bwd)) -> the outputs [B, T, 2H] and the last states [B, 2H]."""
    import jax.numpy as jnp

    (hf, of), (hb, ob) = result
    return jnp.concatenate([of, ob], -1), jnp.concatenate([hf, hb], -1)


def measure(args) -> dict:
    """Forward + backward of the biLSTM alone, every variant; rows with ms per call and the check against flax."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from flax.linen.recurrent import flip_sequences

    H, D, T, B = HIDDEN, WORD_DIM, T_WORDS, BATCH
    rng = np.random.default_rng(0)
    lengths = jnp.asarray(rng.integers(3, T + 1, B), jnp.int32)
    x = jnp.asarray(0.3 * rng.standard_normal((B, T, D)), jnp.float32)
    x = jnp.where((jnp.arange(T)[None] < lengths[:, None])[..., None], x, 0.0)
    cot = jnp.asarray(rng.standard_normal((B, T, 2 * H)), jnp.float32)      # a fixed cotangent for the outputs
    cot_last = jnp.asarray(rng.standard_normal((B, 2 * H)), jnp.float32)
    mask = (jnp.arange(T)[None] < lengths[:, None])[..., None]

    from popjax.models.lstm import LSTM
    from popjax.ops.lstm import lstm as custom_vjp_lstm
    from popjax.testing.references import FlaxBiLSTM

    class PopjaxBiLSTM(nn.Module):   # what training's HeadlineEncoder runs (hand-written backward pass)
        @nn.compact
        def __call__(self, w, lengths):
            return (LSTM(H, recurrence=custom_vjp_lstm, name="forward")(w, lengths),
                    LSTM(H, reverse=True, recurrence=custom_vjp_lstm, name="backward")(w, lengths))

    # flax's own nn.RNN(OptimizedLSTMCell): the same parameter tree
    flax_params = FlaxBiLSTM(H).init(jax.random.key(0), x, lengths)["params"]

    def pack(p):   # flax's per-gate kernels (i, f, g, o) -> one [D, 4H], [H, 4H], [4H] per direction
        cell = p["cell"]
        return {"Wi": jnp.concatenate([cell[f"i{g}"]["kernel"] for g in "ifgo"], -1),
                "Wh": jnp.concatenate([cell[f"h{g}"]["kernel"] for g in "ifgo"], -1),
                "b": jnp.concatenate([cell[f"h{g}"]["bias"] for g in "ifgo"], -1)}

    packed = {"fwd": pack(flax_params["forward"]), "bwd": pack(flax_params["backward"])}

    def cell(c, h, z):
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return c, jax.nn.sigmoid(o) * jnp.tanh(c)

    def last(outputs_tm, lengths):   # outputs [T, B, H] -> the state after each sequence's last word
        return outputs_tm[lengths - 1, jnp.arange(outputs_tm.shape[1])]

    def direction(p, xs_tm, precomputed: bool, unroll: int):
        def step(carry, xt):
            c, h = carry
            z = (xt if precomputed else xt @ p["Wi"]) + h @ p["Wh"] + p["b"]
            c, h = cell(c, h, z)
            return (c, h), h
        zeros = jnp.zeros((xs_tm.shape[1], H), xs_tm.dtype)
        _, hs = jax.lax.scan(step, (zeros, zeros), xs_tm, unroll=unroll)
        return hs

    def plain(params, w, lengths, precomputed: bool, fused: bool, unroll: int = 1):
        wb = flip_sequences(w, lengths, num_batch_dims=1, time_major=False)
        if not precomputed:
            of = direction(params["fwd"], w.swapaxes(0, 1), False, unroll)
            ob = direction(params["bwd"], wb.swapaxes(0, 1), False, unroll)
        elif not fused:
            # all time steps' input projections in one matmul each, outside the scan
            zf = jnp.einsum("btd,dk->tbk", w, params["fwd"]["Wi"])
            zb = jnp.einsum("btd,dk->tbk", wb, params["bwd"]["Wi"])
            of = direction(params["fwd"], zf, True, unroll)
            ob = direction(params["bwd"], zb, True, unroll)
        else:
            # ... and both directions advanced by the same scan step (half the sequential steps)
            Wi = jnp.stack([params["fwd"]["Wi"], params["bwd"]["Wi"]])
            Wh = jnp.stack([params["fwd"]["Wh"], params["bwd"]["Wh"]])
            bias = jnp.stack([params["fwd"]["b"], params["bwd"]["b"]])[:, None]
            z = jnp.einsum("ebtd,edk->tebk", jnp.stack([w, wb]), Wi)        # [T, 2, B, 4H]

            def step(carry, zt):
                c, h = carry
                c, h = cell(c, h, zt + jnp.einsum("ebh,ehk->ebk", h, Wh) + bias)
                return (c, h), h
            zeros = jnp.zeros((2, B, H), w.dtype)
            _, hs = jax.lax.scan(step, (zeros, zeros), z, unroll=unroll)   # [T, 2, B, H]
            of, ob = hs[:, 0], hs[:, 1]
        h_last = jnp.concatenate([last(of, lengths), last(ob, lengths)], -1)
        ob_bt = flip_sequences(ob.swapaxes(0, 1), lengths, num_batch_dims=1, time_major=False)
        return jnp.concatenate([of.swapaxes(0, 1), ob_bt], -1), h_last

    def loss_of(outputs, h_last):
        return jnp.sum(jnp.where(mask, outputs, 0.0) * cot) + jnp.sum(h_last * cot_last)

    # kind: how to compare with the first row ("flax": same params; "plain": packed params; "vmap": leading
    # trial axis of 1; "short": a different input (T/2 steps), not compared)
    variants = {}
    for unroll in args.unrolls:
        variants[f"flax nn.RNN(OptimizedLSTMCell), unroll={unroll}"] = (
            "flax", lambda p, u=unroll: loss_of(*joined(FlaxBiLSTM(H, unroll=u).apply({"params": p}, x, lengths))))
    variants["popjax.ops.lstm (hand-written backward)"] = (
        "flax", lambda p: loss_of(*joined(PopjaxBiLSTM().apply({"params": p}, x, lengths))))
    variants["popjax.ops.lstm, under jax.vmap (1 trial)"] = (
        "vmap", lambda p: jax.vmap(lambda q: loss_of(*joined(PopjaxBiLSTM().apply({"params": q}, x, lengths))))(p).sum())
    variants["flax nn.RNN, under jax.vmap (1 trial)"] = (
        "vmap", lambda p: jax.vmap(lambda q: loss_of(*joined(FlaxBiLSTM(H).apply({"params": q}, x, lengths))))(p).sum())
    half, x_half = T // 2, x[:, :T // 2]
    len_half = jnp.minimum(lengths, half)
    mask_half, cot_half = mask[:, :half], cot[:, :half]

    def short(p):
        o, h = joined(PopjaxBiLSTM().apply({"params": p}, x_half, len_half))
        return jnp.sum(jnp.where(mask_half, o, 0.0) * cot_half) + jnp.sum(h * cot_last)

    variants[f"popjax.ops.lstm, T={half} instead of {T} (cost vs padded length)"] = ("short", short)
    variants["plain JAX, projection in scan"] = ("plain", lambda p: loss_of(*plain(p, x, lengths, False, False)))
    for unroll in args.unrolls:
        variants[f"precomputed projection, unroll={unroll}"] = (
            "plain", lambda p, u=unroll: loss_of(*plain(p, x, lengths, True, False, u)))
        variants[f"precomputed + fused directions, unroll={unroll}"] = (
            "plain", lambda p, u=unroll: loss_of(*plain(p, x, lengths, True, True, u)))

    rows, ref, calls = [], None, {}
    for name, (kind, f) in variants.items():
        params = {"plain": packed, "vmap": jax.tree.map(lambda a: a[None], flax_params)}.get(kind, flax_params)
        g = jax.jit(jax.value_and_grad(f))
        t = time.perf_counter()
        val, grads = g(params)
        jax.block_until_ready(grads)
        compile_s = time.perf_counter() - t
        err = {}
        if kind != "short":
            if kind == "vmap":
                grads = jax.tree.map(lambda a: a[0], grads)
            if kind in ("flax", "vmap"):
                grads = {"fwd": pack(grads["forward"]), "bwd": pack(grads["backward"])}
            flat = np.concatenate([np.ravel(a) for a in jax.tree.leaves(grads)])
            if ref is None:
                ref = (float(val), flat)
            err = {"loss_rel": abs(float(val) - ref[0]) / abs(ref[0]), "grad_rel": rel_err(flat, ref[1])}
        calls[name] = lambda g=g, params=params: jax.block_until_ready(g(params))
        rows.append({"variant": name, "compile_s": round(compile_s, 2), **{k: float(f"{v:.2e}") for k, v in err.items()}})
    med = {k: median(v) for k, v in interleaved(calls, args.rounds, per_round=3).items()}
    for row in rows:
        s = med[row["variant"]]
        row.update(fwd_bwd_per_s=round(1 / s, 1), ms=round(1e3 * s, 2))
        check = f"(loss rel {row['loss_rel']:.1e}, grad rel {row['grad_rel']:.1e})" if "loss_rel" in row else ""
        print(f"  {row['variant']:56s} {row['ms']:7.2f} ms  {check}", flush=True)

    # torch nn.LSTM (packed), the same fwd + bwd, for reference
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lstm = torch.nn.LSTM(D, H, batch_first=True, bidirectional=True)
    xt, lt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(lengths)).long()
    ct, clt, mt = (torch.from_numpy(np.array(a)) for a in (cot, cot_last, mask))

    def torch_step():
        out, (h_n, _) = lstm(pack_padded_sequence(xt, lt, batch_first=True, enforce_sorted=False))
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        loss = (h * mt * ct).sum() + (torch.cat([h_n[0], h_n[1]], -1) * clt).sum()
        lstm.zero_grad(set_to_none=True)
        loss.backward()

    times = per_call(torch_step, 3 * args.rounds, warmup=1, max_seconds=args.max_seconds)
    r = len(times) / sum(times)
    rows.append({"variant": "torch nn.LSTM, packed", "fwd_bwd_per_s": round(r, 1), "ms": round(1e3 / r, 2)})
    print(f"  {'torch nn.LSTM, packed (threads ' + str(torch.get_num_threads()) + ')':56s} {1e3 / r:7.2f} ms", flush=True)
    return {"what": "value_and_grad of a fixed linear loss of the biLSTM outputs (masked) and last states wrt the "
                    "LSTM parameters; B=64, T=20, D=300, H=128, lengths 3..20; one JAX device (default placement)",
            "rows": rows}


def markdown(rows: list[dict]) -> str:
    return markdown_table(["variant", "ms", "loss rel err", "grad rel err"],
                          [[r["variant"], r["ms"], r.get("loss_rel"), r.get("grad_rel")] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of 3 calls of every variant, interleaved (default 20; quick 7)")
    parser.add_argument("--unrolls", type=int, nargs="+", default=None, help="scan unroll factors (default 1 4 20; quick 1)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop the torch row's timed loop after this long (default 30; quick 1.5)")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: one per core (default)")
    parser.add_argument("--devices", choices=("all", "one"), default="all",
                        help="JAX CPU devices: 'all' = one per core as train.py (default), 'one' = JAX's default; "
                             "the variants run on the default device either way")
    standard_arguments(parser, "lstm_recurrence", quick="7 rounds, unroll 1 only")
    args = parser.parse_args()
    q = args.quick
    args.rounds = args.rounds or (7 if q else 20)
    args.unrolls = args.unrolls or ([1] if q else [1, 4, 20])
    args.max_seconds = args.max_seconds or (1.5 if q else 30.0)

    from popjax import parallel

    if args.devices == "all":
        parallel.use_all_cpu_cores()   # before JAX starts, as train.py does
    import jax
    import torch

    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    doc = {"quick": q, "environment": environment()}
    print(f"{jax.device_count()} JAX {jax.default_backend()} devices, torch threads {torch.get_num_threads()}")
    t = time.perf_counter()
    doc.update(measure(args))
    doc["seconds_total"] = round(time.perf_counter() - t, 1)
    print(f"\nbiLSTM forward+backward (B={BATCH}, T={T_WORDS}, D={WORD_DIM}, H={HIDDEN}), ms per call")
    for r in doc["rows"]:
        extra = f"  grad rel err {r['grad_rel']:.1e}" if "grad_rel" in r else ""
        print(f"  {r['variant']:56s} {r['ms']:7.2f}{extra}")
    if args.markdown:
        print("\n" + markdown(doc["rows"]))
    print(f"\n{doc['seconds_total']} s -> {write_result(args.out, doc)}")


if __name__ == "__main__":
    main()
