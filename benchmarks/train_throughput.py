"""Training throughput of the popularity models (popjax vs an equivalent PyTorch implementation), Grad-CAM
latency, and a biLSTM micro-benchmark of ways to run the recurrence. Synthetic data; all sizes as configs/default.py.

1. Headline biLSTM (Table 1 "headline" rows): T = 20 tokens (lengths 3..20), B = 64, frozen 300-d word vectors,
   LSTM hidden 128 per direction, head 128, AdamW + warm-up/cosine, dropout 0.1/0.3, pooling ``last`` and
   ``attention``. popjax: ``popjax.training.Program(...).train_step``, jitted
   - ``fit``:      as ``training.fit`` runs it: ``jax.jit(jax.vmap(step))`` over stacked trials (1 trial; also the
                   default 3 seeds in full runs), parameters replicated and the batch split over the ``data``
                   mesh of all devices (``train.py`` calls ``parallel.use_all_cpu_cores()``: one CPU device per
                   core), the batch already on the devices;
   - ``fit_host``: the same plus a per-step batch gathered on the host and laid out over the mesh (``host_batch``;
                   ``fit`` itself gathers on the devices: ``benchmarks/fit_steps.py``);
   - ``vmap1``:    ``jax.jit(jax.vmap(step))`` of 1 trial on one device;
   - ``plain``:    ``jax.jit(step)`` (no vmap) on one device.
   The popjax variants of a model and its PyTorch peers are timed in the same interleaved rounds (A B C A B C ...),
   so that the drifting load of a shared machine treats them alike. PyTorch: nn.LSTM(bidirectional) over packed
   sequences (exact for variable lengths, as popjax) and over padded ones (not exact for the backward direction);
   the same attention and head; torch.optim.AdamW + LambdaLR warm-up/cosine; torch threads = cores
   (``--torch-threads``); a fresh random batch per step.
2. Multimodal (video attention over 18 x 2048 features + attention headline): encoders frozen as the default
   config trains it (``multimodal.finetune=False`` -> ``freeze=training.ENCODERS``) and fine-tuned; torch the
   same with ``requires_grad=False`` on the encoders. For scale: the head alone on cached [B, 512] encoder
   embeddings (all a frozen-encoder run needs to train), and the video model alone.
3. Grad-CAM: ``popjax.explain.gradcam.make_explainer`` with a random ``Backbone`` (ResNet50) and a multimodal
   ``PopularityModel`` (default sizes, 1000-word vocabulary), ms per 18-frame video, batches of 1 (and 4 in full
   runs) after a warm-up call, interleaved rounds; the Grad-CAM explainer and the forward-only one
   (``gradients=False``), with three placements of the inputs: as ``popjax explain`` passes them (Backbone
   variables replicated over every local device), on one device, and with the frames split over the devices;
   full runs also time ``Backbone.features`` on the same frames.
4. biLSTM micro-benchmark: ``value_and_grad`` of the biLSTM encoder alone (same sizes): flax's
   ``nn.RNN(OptimizedLSTMCell)`` (the input projection inside the scan; with ``unroll``), as popjax runs it
   (``popjax.ops.lstm``: hand-written backward pass; also under ``jax.vmap`` and with half the padded length),
   and plain-JAX restructurings left to autodiff: input projection in the scan, all time steps' input
   projections in one matmul outside the scan, and that plus both directions in one scan; each checked against
   the flax loss and gradients; interleaved rounds; torch nn.LSTM (packed) for reference.

    python benchmarks/train_throughput.py [--quick] [--sections headline multimodal gradcam lstm]
                                          [--out benchmarks/out/train_throughput.json]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from _env import environment, median, rel_err, write_result  # noqa: E402

T_WORDS, BATCH, WORD_DIM, HIDDEN, N_FRAMES, FEAT = 20, 64, 300, 128, 18, 2048
HP = {"learning_rate": 1e-3, "weight_decay": 1e-4, "input_dropout": 0.1, "dropout": 0.3}   # configs/default.py


def static_config(modality: str, headline_pooling: str) -> dict:
    return {"modality": modality, "frame_pooling": "attention", "headline_pooling": headline_pooling,
            "frame_embed_dim": 256, "frame_attention_dim": 128, "lstm_hidden": HIDDEN, "word_attention_dim": 128,
            "head_hidden": 128, "batch_norm": False}


def synthetic_data(args, modality: str, seed: int = 0) -> dict:
    """A pool of 4 batches of host arrays (``training.model_inputs`` layout) and the frozen word table."""
    rng = np.random.default_rng(seed)
    n = 4 * BATCH
    arrays = {"label": rng.integers(0, 2, n).astype(np.int32), "normalized_views": rng.random(n).astype(np.float32)}
    if modality != "video":
        lengths = rng.integers(3, T_WORDS + 1, n).astype(np.int32)   # headlines of 3..20 words
        tokens = rng.integers(1, args.vocab, (n, T_WORDS)).astype(np.int32)
        tokens[np.arange(T_WORDS)[None] >= lengths[:, None]] = 0
        arrays.update(tokens=tokens, lengths=lengths)
    if modality != "headline":
        arrays["features"] = np.abs(rng.standard_normal((n, N_FRAMES, FEAT))).astype(np.float32)
    table = (0.3 * rng.standard_normal((args.vocab, WORD_DIM))).astype(np.float32)
    table[0] = 0
    return {"arrays": arrays, "table": table}


def rate(step, n: int, max_s: float, warmup: int = 2) -> float:
    """steps/s of up to ``n`` calls of ``step()`` (which returns something to block on) after ``warmup`` calls;
    stops early after ``max_s`` seconds (at least 2 timed calls)."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(step())
    t = time.perf_counter()
    done = 0
    while done < n and (done < 2 or time.perf_counter() - t < max_s):
        jax.block_until_ready(step())
        done += 1
    return done / (time.perf_counter() - t)


def interleaved(calls: dict, rounds: int, per_round: int = 1) -> dict:
    """Median seconds per call of each of ``calls`` (name -> fn that blocks), timed in ``rounds`` rounds that
    visit every fn in turn (A B C A B C ...): on a machine whose load drifts, the comparison stays fair."""
    times = {k: [] for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            t = time.perf_counter()
            for _ in range(per_round):
                fn()
            times[k].append((time.perf_counter() - t) / per_round)
    return {k: median(v) for k, v in times.items()}


def frozen_collection(model, batch, table) -> dict:
    """The model's ``frozen`` collection, whatever it holds, at its defaults (found with ``jax.eval_shape``, so
    nothing runs: ``std``/``scale`` leaves 1, others 0, e.g. the identity feature standardisation) with the
    word vectors set to ``table``."""
    import jax

    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                               batch)).get("frozen", {})

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "word_vectors":
            return table
        return (np.ones if name in ("std", "scale") else np.zeros)(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, dict(shapes))


# ------------------------------------------------------------------------------------------- popjax
def popjax_rates(args, modality: str, pooling: str, freeze=(), variants=("fit", "fit_host", "vmap1", "plain"),
                 trials=(1,), peers=()) -> list[dict]:
    """Rows of steps/s of popjax's train step as ``variants`` run it, and of each of ``peers`` ((row, step) pairs
    from ``torch_step``), all timed in the same interleaved rounds."""
    import jax
    import jax.numpy as jnp

    from popjax import parallel, training

    data = synthetic_data(args, modality)
    arrays = data["arrays"]
    program = training.Program(static_config(modality, pooling), args.vocab, WORD_DIM, total_steps=100_000,
                               warmup_steps=100, freeze=tuple(freeze))
    rows, calls, compiled = [], {}, {}
    one = parallel.data_mesh(jax.devices()[:1])
    full = parallel.data_mesh()
    idx, w = next(training.batch_indices(len(arrays["label"]), BATCH))
    sample = host_batch(arrays, idx, w, one)
    frozen = frozen_collection(program.model(), sample, data["table"])
    all_hps = [{**HP, "seed": s} for s in range(max(trials))]
    # eagerly, one by one, as fit does; kept on the host and placed afresh for each variant (steps donate it)
    all_states = [jax.device_get(program.init(hp, sample, frozen)) for hp in all_hps]
    for variant in variants:
        for n_trials in (trials if variant in ("fit", "fit_host") else (1,)):
            mesh = full if variant in ("fit", "fit_host") else one
            batch = host_batch(arrays, idx, w, mesh)
            frozen_d = jax.device_put(frozen, parallel.replicated(mesh))
            hps, states = all_hps[:n_trials], all_states[:n_trials]
            t0 = time.perf_counter()
            key = ("fit" if variant == "fit_host" else variant, n_trials)
            if variant == "plain":
                state = jax.device_put(states[0], parallel.replicated(mesh))
                hp = {k: jnp.asarray(v) for k, v in hps[0].items()}
                fn = compiled.setdefault(key, jax.jit(program.train_step, donate_argnums=(0,)))
            else:
                state = jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *states), parallel.replicated(mesh))
                hp = {k: np.asarray([h[k] for h in hps]) for k in hps[0]}
                fn = compiled.setdefault(key, jax.jit(jax.vmap(program.train_step, in_axes=(0, None, 0, None)),
                                                      donate_argnums=(0,), out_shardings=parallel.replicated(mesh)))
            step = make_step(fn, state, batch, hp, frozen_d, arrays if variant == "fit_host" else None, mesh)
            jax.block_until_ready(step())
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(step())
            calls[(variant, n_trials)] = step
            rows.append({"impl": "popjax", "modality": modality, "pooling": pooling, "freeze": list(freeze),
                         "variant": variant, "trials": n_trials, "devices": mesh.size,
                         "first_call_s": round(compile_s, 2)})
    for row, step in peers:
        for _ in range(2):   # warm-up
            step()
        calls[(row["impl"], row["variant"])] = step
    # Timed in interleaved rounds (every variant and peer in turn), so that a drifting machine load treats them alike.
    k = args.steps_per_round
    med = interleaved({key: (lambda f=f: jax.block_until_ready([f() for _ in range(k)][-1])) for key, f in calls.items()},
                      args.rounds)
    for row in rows:
        r = k / med[(row["variant"], row["trials"])]
        row.update(steps_per_s=round(r, 1), trial_steps_per_s=round(r * row["trials"], 1), ms_per_step=round(1e3 / r, 2))
        print(f"  popjax {modality:10s} {pooling:9s} {row['variant']:8s} trials={row['trials']} dev={row['devices']} "
              f"freeze={bool(freeze)}: {r:7.1f} steps/s (first call {row['first_call_s']:.1f} s)", flush=True)
    for row, _ in peers:
        r = k / med[(row["impl"], row["variant"])]
        row.update(steps_per_s=round(r, 1), ms_per_step=round(1e3 / r, 2))
        print(f"  {row['impl']:6s} {modality:10s} {pooling:9s} {row['variant']:8s} freeze={row['freeze']}: "
              f"{r:7.1f} steps/s", flush=True)
    return rows + [row for row, _ in peers]


def host_batch(arrays, idx, weights, mesh) -> dict:
    """Rows ``idx`` of the host ``arrays`` (features cast to float32), split over ``mesh``'s ``data`` axis."""
    import jax

    from popjax import parallel, training

    return parallel.put(jax.tree.map(np.asarray, training.take_batch(arrays, idx, weights)),
                        parallel.batch_sharding(mesh))


def make_step(fn, state, batch, hp, frozen, host_arrays, mesh):
    """One train step per call (the state carried along); with ``host_arrays`` each call first gathers a
    random batch on the host and lays it out over ``mesh``."""
    holder = {"state": state}
    order = np.random.default_rng(0)

    def step():
        b = batch
        if host_arrays is not None:
            i = order.integers(0, len(host_arrays["label"]), BATCH)
            b = host_batch(host_arrays, i, np.ones(BATCH, np.float32), mesh)
        holder["state"], loss = fn(holder["state"], b, hp, frozen)
        return loss

    return step


def head_only_rate(args) -> dict:
    """The multimodal head alone on cached [B, 512] encoder embeddings (what a frozen-encoder run needs)."""
    import jax
    import jax.numpy as jnp
    import optax

    from popjax import training
    from popjax.models import Head

    rng = np.random.default_rng(0)
    e = jnp.asarray(rng.standard_normal((BATCH, 512)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 2, BATCH), jnp.int32)
    head = Head(head_hidden=128, input_dropout=HP["input_dropout"], dropout=HP["dropout"])
    params = head.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, e, train=True)["params"]
    tx = training.make_optimizer(params, total_steps=100_000, warmup_steps=100, learning_rate=HP["learning_rate"],
                                 weight_decay=HP["weight_decay"])

    @jax.jit
    def step(params, opt_state, key):
        key, k = jax.random.split(key)

        def loss_fn(p):
            logits = head.apply({"params": p}, e, train=True, rngs={"dropout": k})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss

    holder = [params, tx.init(params), jax.random.key(2)]

    def call():
        *holder[:3], loss = step(*holder)
        return loss

    r = rate(call, args.steps * 5, args.max_seconds)
    print(f"  popjax multimodal head only, cached embeddings, jit(step) 1 device: {r:7.1f} steps/s", flush=True)
    return {"impl": "popjax", "modality": "multimodal", "pooling": "head on cached embeddings", "freeze": [],
            "variant": "plain", "trials": 1, "devices": 1, "steps_per_s": round(r, 1), "ms_per_step": round(1e3 / r, 3)}


# -------------------------------------------------------------------------------------------- torch
def torch_model(table, modality: str, pooling: str, packed: bool):
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class Attention(nn.Module):
        def __init__(self, dim, att):
            super().__init__()
            self.W_u, self.W_a = nn.Linear(dim, att), nn.Linear(att, 1)

        def forward(self, q, mask=None):
            a = self.W_a(torch.tanh(self.W_u(q))).squeeze(-1)
            if mask is not None:
                a = a.masked_fill(~mask, float("-inf"))
            return torch.einsum("bn,bnd->bd", torch.softmax(a, -1), q)

    class Headline(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding.from_pretrained(torch.from_numpy(table), freeze=True, padding_idx=0)
            self.lstm = nn.LSTM(WORD_DIM, HIDDEN, batch_first=True, bidirectional=True)
            self.attention = Attention(2 * HIDDEN, 128) if pooling == "attention" else None

        def forward(self, tokens, lengths, lengths_cpu):
            w = self.emb(tokens)
            T = tokens.shape[1]
            if packed:
                p = pack_padded_sequence(w, lengths_cpu, batch_first=True, enforce_sorted=False)
                out, (h_n, _) = self.lstm(p)
                if self.attention is None:
                    return torch.cat([h_n[0], h_n[1]], -1)
                h, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
            else:   # padded: the backward direction reads the padding first (not exact; cheaper)
                h, _ = self.lstm(w)
                if self.attention is None:
                    b = torch.arange(len(tokens))
                    return torch.cat([h[b, lengths - 1, :HIDDEN], h[:, 0, HIDDEN:]], -1)
            mask = torch.arange(T)[None] < lengths[:, None]
            return self.attention(h, mask)

    class Video(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(FEAT, 256)
            self.attention = Attention(256, 128)

        def forward(self, x):
            return self.attention(torch.relu(self.embed(x)))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.video = Video() if modality != "headline" else None
            self.headline = Headline() if modality != "video" else None
            dim = (256 if self.video else 0) + (2 * HIDDEN if self.headline else 0)
            self.hidden, self.logits = nn.Linear(dim, 128), nn.Linear(128, 2)

        def forward(self, b):
            e = []
            if self.video is not None:
                e.append(self.video(b["features"]))
            if self.headline is not None:
                e.append(self.headline(b["tokens"], b["lengths"], b["lengths_cpu"]))
            e = nn.functional.dropout(torch.cat(e, -1), HP["input_dropout"], self.training)
            z = nn.functional.dropout(torch.relu(self.hidden(e)), HP["dropout"], self.training)
            return self.logits(z)

    return Model()


def torch_step(args, modality: str, pooling: str, packed: bool = True, freeze: bool = False):
    """(row, step): the equivalent PyTorch train step on a random batch per call, and its row (without rates)."""
    import torch

    data = synthetic_data(args, modality)
    torch.manual_seed(0)
    model = torch_model(data["table"], modality, pooling, packed).train()
    if freeze:
        for m in (model.video, model.headline):
            for p in m.parameters():
                p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=HP["learning_rate"], weight_decay=HP["weight_decay"])
    warm, total = 100, 100_000
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    a = data["arrays"]
    rng = np.random.default_rng(0)

    def batch():
        i = rng.integers(0, len(a["label"]), BATCH)
        b = {"label": torch.from_numpy(a["label"][i]).long()}
        if "tokens" in a:
            b.update(tokens=torch.from_numpy(a["tokens"][i]).long(), lengths=torch.from_numpy(a["lengths"][i]).long())
            b["lengths_cpu"] = b["lengths"]
        if "features" in a:
            b["features"] = torch.from_numpy(a["features"][i])
        return b

    def step():
        b = batch()
        loss = torch.nn.functional.cross_entropy(model(b), b["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss.detach()

    row = {"impl": "torch", "modality": modality, "pooling": pooling, "freeze": freeze,
           "variant": ("packed" if packed else "padded") if modality != "video" else "eager",
           "threads": torch.get_num_threads()}
    return row, step


# ------------------------------------------------------------------------------------------ Grad-CAM
def gradcam(args) -> dict:
    import jax
    import jax.numpy as jnp

    from popjax import Backbone, parallel
    from popjax.explain.gradcam import make_explainer
    from popjax.models import build_model

    t = time.perf_counter()
    bb = Backbone.random(0, batch_size=N_FRAMES)
    vocab, dim = 1000, 50
    model = build_model(dict(modality="multimodal", frame_pooling="attention", headline_pooling="attention"),
                        vocab_size=vocab, word_dim=dim)
    rng = np.random.default_rng(0)
    table = (0.3 * rng.standard_normal((vocab, dim))).astype(np.float32)
    init_batch = {"features": jnp.zeros((1, N_FRAMES, FEAT)), "tokens": jnp.ones((1, T_WORDS), jnp.int32),
                  "lengths": jnp.full((1,), T_WORDS, jnp.int32)}
    mvars = model.init(jax.random.key(1), init_batch)
    mvars = {"params": mvars["params"], "frozen": frozen_collection(model, init_batch, table)}
    setup_s = time.perf_counter() - t
    fns = {g: make_explainer(bb.model, bb.preprocess, model, gradients=g) for g in (True, False)}
    mesh = bb.mesh
    # How the backbone variables and the frames reach the jitted explainer:
    #   explain: as ``popjax explain`` (popjax.explain.explanation.Explainer) passes them: the Backbone's variables,
    #            replicated over its mesh of every local device, and host frames -> XLA runs the whole
    #            computation once per device (replicated);
    #   1 device: the variables on one device;
    #   frames split: variables replicated, frames [B, N, ...] split over the devices on the frame axis N.
    placements = {"replicated": (bb.variables, None),
                  "1 device": (jax.device_put(bb.variables, jax.devices()[0]), None)}
    if mesh.size > 1:
        placements["explain (split)"] = (bb.variables, "split")
    if getattr(args, "gradcam_explain_only", False):   # only the placement popjax explain uses
        placements = dict([list(placements.items())[-1]])
    out = {"setup_s": round(setup_s, 1), "backbone": bb.description, "local_devices": mesh.size,
           "placements": {"replicated": "Backbone variables replicated over all local devices, host frames: the "
                                        "whole computation runs on every device",
                          "1 device": "the variables on one device",
                          "explain (split)": "as popjax explain: variables replicated, the frames split over the "
                                             "devices (videos if they divide evenly, else the frames of each video; "
                                             "parallel.split_sharding)"},
           "rows": []}
    for b in args.gradcam_batches:
        frames = rng.integers(0, 256, (b, N_FRAMES, 224, 224, 3), np.uint8)
        tokens = rng.integers(1, vocab, (b, T_WORDS)).astype(np.int32)
        lengths = np.full((b,), 12, np.int32)
        calls, info = {}, {}
        for name, (variables, frame_sharding) in placements.items():
            x = frames if frame_sharding is None else jax.device_put(
                frames, parallel.split_sharding(mesh, frames.shape, (0, 1)))
            for g in (True, False):
                if not g and args.quick and name != "explain (split)":
                    continue
                fn = fns[g]
                call = lambda fn=fn, v=variables, x=x, t=tokens, n=lengths: jax.block_until_ready(  # noqa: E731
                    fn(v, mvars, x, t, n))
                t = time.perf_counter()
                result = call()
                info[(name, g)] = (time.perf_counter() - t, len(result["score"].sharding.device_set))
                calls[(name, g)] = call
        if not args.quick:
            flat = frames.reshape(-1, 224, 224, 3)
            bb.features(flat)
            calls[("features", None)] = lambda flat=flat: bb.features(flat)
        med = interleaved(calls, args.gradcam_calls)
        for (name, g), s in med.items():
            if name == "features":
                continue
            what = "Grad-CAM" if g else "forward only (gradients=False)"
            first, ndev = info[(name, g)]
            out["rows"].append({"what": what, "placement": name, "videos": b, "devices_computing": ndev,
                                "first_call_s": round(first, 1), "ms_per_call": round(1e3 * s),
                                "ms_per_video": round(1e3 * s / b), "calls": args.gradcam_calls})
            print(f"  {what:31s} {name:15s} {b} video(s): {1e3 * s / b:7.0f} ms/video "
                  f"(first call {first:.1f} s)", flush=True)
        if ("features", None) in med:
            s = med[("features", None)]
            out["rows"].append({"what": "Backbone.features", "placement": f"batch split over {mesh.size} devices",
                                "videos": b, "devices_computing": mesh.size, "ms_per_call": round(1e3 * s),
                                "ms_per_video": round(1e3 * s / b), "calls": args.gradcam_calls})
            print(f"  {'Backbone.features':31s} {'split':12s} {b} video(s): {1e3 * s / b:7.0f} ms/video", flush=True)
    return out


# ------------------------------------------------------------------------------- biLSTM micro-benchmark
def lstm_micro(args) -> dict:
    """Forward + backward of the biLSTM alone: flax as popjax runs it vs plain-JAX restructurings."""
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

    class PopjaxBiLSTM(nn.Module):   # what training's HeadlineEncoder runs (hand-written backward pass)
        @nn.compact
        def __call__(self, w, lengths):
            (hf, of), (hb, ob) = (LSTM(H, recurrence=custom_vjp_lstm, name="forward")(w, lengths),
                                  LSTM(H, reverse=True, recurrence=custom_vjp_lstm, name="backward")(w, lengths))
            return jnp.concatenate([of, ob], -1), jnp.concatenate([hf, hb], -1)

    class FlaxBiLSTM(nn.Module):   # flax's own RNN; the same parameter tree
        unroll: int = 1

        @nn.compact
        def __call__(self, w, lengths):
            fwd = nn.RNN(nn.OptimizedLSTMCell(H, parent=None), unroll=self.unroll, name="forward")
            bwd = nn.RNN(nn.OptimizedLSTMCell(H, parent=None), reverse=True, keep_order=True, unroll=self.unroll,
                         name="backward")
            (_, hf), of = fwd(w, seq_lengths=lengths, return_carry=True)
            (_, hb), ob = bwd(w, seq_lengths=lengths, return_carry=True)
            return jnp.concatenate([of, ob], -1), jnp.concatenate([hf, hb], -1)

    flax_params = FlaxBiLSTM().init(jax.random.key(0), x, lengths)["params"]

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
    for unroll in args.lstm_unrolls:
        variants[f"flax nn.RNN(OptimizedLSTMCell), unroll={unroll}"] = (
            "flax", lambda p, u=unroll: loss_of(*FlaxBiLSTM(unroll=u).apply({"params": p}, x, lengths)))
    variants["popjax.ops.lstm (hand-written backward)"] = (
        "flax", lambda p: loss_of(*PopjaxBiLSTM().apply({"params": p}, x, lengths)))
    variants["popjax.ops.lstm, under jax.vmap (1 trial)"] = (
        "vmap", lambda p: jax.vmap(lambda q: loss_of(*PopjaxBiLSTM().apply({"params": q}, x, lengths)))(p).sum())
    variants["flax nn.RNN, under jax.vmap (1 trial)"] = (
        "vmap", lambda p: jax.vmap(lambda q: loss_of(*FlaxBiLSTM().apply({"params": q}, x, lengths)))(p).sum())
    half, x_half = T // 2, x[:, :T // 2]
    len_half = jnp.minimum(lengths, half)
    mask_half, cot_half = mask[:, :half], cot[:, :half]

    def short(p):
        o, h = PopjaxBiLSTM().apply({"params": p}, x_half, len_half)
        return jnp.sum(jnp.where(mask_half, o, 0.0) * cot_half) + jnp.sum(h * cot_last)

    variants[f"popjax.ops.lstm, T={half} instead of {T} (cost vs padded length)"] = ("short", short)
    variants["plain JAX, projection in scan"] = ("plain", lambda p: loss_of(*plain(p, x, lengths, False, False)))
    for unroll in args.lstm_unrolls:
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
    med = interleaved(calls, args.lstm_rounds, per_round=3)
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

    r = rate(torch_step, 3 * args.lstm_rounds, args.max_seconds, warmup=1)
    rows.append({"variant": "torch nn.LSTM, packed", "fwd_bwd_per_s": round(r, 1), "ms": round(1e3 / r, 2)})
    print(f"  {'torch nn.LSTM, packed (threads ' + str(torch.get_num_threads()) + ')':56s} {1e3 / r:7.2f} ms", flush=True)
    return {"what": "value_and_grad of a fixed linear loss of the biLSTM outputs (masked) and last states wrt the "
                    "LSTM parameters; B=64, T=20, D=300, H=128, lengths 3..20; one JAX device (default placement)",
            "rows": rows}


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="the head-on-cached-embeddings row times 5x this many steps (default 100; quick 20)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="popjax train steps: interleaved rounds over the variants (default 10; quick 4)")
    parser.add_argument("--steps-per-round", type=int, default=None, help="default 10; quick 5")
    parser.add_argument("--vocab", type=int, default=20_000, help="rows of the frozen word table")
    parser.add_argument("--gradcam-batches", type=int, nargs="+", default=None, help="videos per call (default 1 4; quick 1)")
    parser.add_argument("--gradcam-calls", type=int, default=None,
                        help="timed rounds after the first call, every placement in turn (default 3; quick 2)")
    parser.add_argument("--lstm-rounds", type=int, default=None,
                        help="micro-benchmark rounds of 3 calls of every variant, interleaved (default 20; quick 7)")
    parser.add_argument("--lstm-unrolls", type=int, nargs="+", default=None, help="scan unroll factors (default 1 4 20; quick 1)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop a row's timed loop after this long (default 30; quick 2.5)")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: one per core (default)")
    parser.add_argument("--devices", choices=("all", "one"), default="all",
                        help="JAX CPU devices: 'all' = one per core as train.py (default), 'one' = JAX's default")
    parser.add_argument("--sections", nargs="+", default=["headline", "multimodal", "gradcam", "lstm"],
                        choices=["headline", "multimodal", "gradcam", "lstm"])
    parser.add_argument("--quick", action="store_true", help="fewer steps and variants: < 3 min on 2 cores")
    parser.add_argument("--out", default="benchmarks/out/train_throughput.json")
    args = parser.parse_args()
    q = args.quick
    args.steps = args.steps or (20 if q else 100)
    args.max_seconds = args.max_seconds or (1.5 if q else 30.0)
    args.rounds = args.rounds or (4 if q else 10)
    args.steps_per_round = args.steps_per_round or (5 if q else 10)
    args.gradcam_batches = args.gradcam_batches or ([1] if q else [1, 4])
    args.gradcam_calls = args.gradcam_calls or (2 if q else 3)
    args.lstm_rounds = args.lstm_rounds or (7 if q else 20)
    args.lstm_unrolls = args.lstm_unrolls or ([1] if q else [1, 4, 20])

    from popjax import parallel

    if args.devices == "all":
        parallel.use_all_cpu_cores()   # before JAX starts, as train.py does
    import jax
    import torch

    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    doc = {"what": "train steps/s (popjax vs PyTorch), Grad-CAM latency, biLSTM variants; synthetic data",
           "quick": q, "environment": environment(),
           "sizes": {"T": T_WORDS, "B": BATCH, "word_dim": WORD_DIM, "lstm_hidden": HIDDEN, "head_hidden": 128,
                     "frames": N_FRAMES, "feature_dim": FEAT, "vocab": args.vocab, "hparams": HP}}
    print(f"{jax.device_count()} JAX {jax.default_backend()} devices, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print("  (the machine looks busy: every number is depressed, torch's with threads = cores most: its OpenMP "
              "regions wait for threads that other processes keep off the cores)")
    t_start = time.perf_counter()
    rows = []
    sections_s = doc["sections_s"] = {}
    tick = time.perf_counter()

    def lap(name):
        nonlocal tick
        sections_s[name] = round(time.perf_counter() - tick, 1)
        tick = time.perf_counter()

    if "headline" in args.sections:
        print("headline biLSTM train step (B=64, T=20, 300-d, hidden 128)")
        for pooling in ("last", "attention"):
            peers = [torch_step(args, "headline", pooling, packed=p) for p in ((True, False) if not q or pooling == "last"
                                                                               else (True,))]
            rows += popjax_rates(args, "headline", pooling, variants=("fit", "vmap1", "plain") if q else
                                 ("fit", "fit_host", "vmap1", "plain"), trials=(1,) if q else (1, 3), peers=peers)
        lap("headline")
    if "multimodal" in args.sections:
        from popjax import training

        print("multimodal train step (18 x 2048 features + headline, attention on both)")
        for freeze in (training.ENCODERS, ()):
            rows += popjax_rates(args, "multimodal", "attention", freeze=freeze,
                                 variants=("fit", "fit_host") if q or not freeze else ("fit", "fit_host", "plain"),
                                 peers=[torch_step(args, "multimodal", "attention", packed=True, freeze=bool(freeze))])
        rows.append(head_only_rate(args))
        rows += popjax_rates(args, "video", "attention", variants=("fit",),   # the video half alone
                             peers=[torch_step(args, "video", "attention")])
        lap("multimodal")
    doc["train_steps"] = rows
    if "gradcam" in args.sections:
        print("Grad-CAM, random ResNet50 + multimodal model, 18 frames/video")
        doc["gradcam"] = gradcam(args)
        lap("gradcam")
    if "lstm" in args.sections:
        print("biLSTM fwd+bwd micro-benchmark")
        doc["lstm_micro"] = lstm_micro(args)
        lap("lstm")
    doc["seconds_total"] = round(time.perf_counter() - t_start, 1)

    # ------------------------------------------------------------------------------------------ report
    if rows:
        print(f"\ntrain steps/s, B={BATCH} ('fit' = jit(vmap(step)) over the data mesh of all devices, batch on device; "
              "'fit_host' = + fit's per-step host batch assembly; 'vmap1' = jit(vmap) on 1 device; "
              "'plain' = jit(step) on 1 device)")
        print(f"{'model':26s} {'impl':7s} {'variant':9s} {'trials':>6s} {'dev':>3s} {'steps/s':>8s} {'ms/step':>8s}")
        for r in rows:
            model = f"{r['modality']} {r['pooling']}" + (" frozen-enc" if r["freeze"] else "")
            print(f"{model:26s} {r['impl']:7s} {r['variant']:9s} {r.get('trials', ''):>6} {r.get('devices', ''):>3} "
                  f"{r['steps_per_s']:8.1f} {r['ms_per_step']:8.2f}")
    if "gradcam" in doc:
        print(f"\nGrad-CAM per 18-frame video, {doc['gradcam']['backbone']}")
        for k, v in doc["gradcam"]["placements"].items():
            print(f"  placement {k!r}: {v}")
        print(f"  {'':31s} {'placement':28s} {'videos':>6s} {'devices':>7s} {'ms/video':>9s}")
        for r in doc["gradcam"]["rows"]:
            print(f"  {r['what']:31s} {r['placement']:28s} {r['videos']:6d} {r['devices_computing']:7d} "
                  f"{r['ms_per_video']:9.0f}")
    if "lstm_micro" in doc:
        print("\nbiLSTM forward+backward (B=64, T=20, D=300, H=128), ms per call")
        for r in doc["lstm_micro"]["rows"]:
            extra = f"  grad rel err {r['grad_rel']:.1e}" if "grad_rel" in r else ""
            print(f"  {r['variant']:56s} {r['ms']:7.2f}{extra}")
    out = write_result(args.out, doc)
    print(f"\n{doc['seconds_total']} s ({', '.join(f'{k} {v} s' for k, v in sections_s.items())}) -> {out}")


if __name__ == "__main__":
    main()
