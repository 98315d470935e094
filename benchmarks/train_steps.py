"""How fast is popjax's train step of the popularity models, against an equivalent PyTorch implementation?

Synthetic data; all sizes as configs/default.py: B = 64, headlines of T = 20 tokens (lengths 3..20), frozen 300-d
word vectors (a 20k-word table), LSTM hidden 128 per direction, head 128, AdamW + warm-up/cosine, dropout 0.1/0.3.

* ``headline``: the headline biLSTM models (Table 1 "headline" rows), pooling ``last`` and ``attention``. popjax:
  ``popjax.training.Program(...).train_step``, jitted
  - ``fit``:      as ``training.fit`` runs it: ``jax.jit(jax.vmap(step))`` over stacked trials (1 trial; also 3
                  seeds in full runs), parameters replicated and the batch split over the ``data`` mesh of all
                  devices (``train.py`` calls ``parallel.use_all_cpu_cores()``: one CPU device per core), the
                  batch already on the devices;
  - ``fit_host``: the same plus a per-step batch gathered on the host and laid out over the mesh (``host_batch``;
                  ``fit`` itself gathers on the devices: ``benchmarks/fit_steps.py`` times ``fit`` as a whole);
  - ``vmap1``:    ``jax.jit(jax.vmap(step))`` of 1 trial on one device;
  - ``plain``:    ``jax.jit(step)`` (no vmap) on one device.
  PyTorch: nn.LSTM(bidirectional) over packed sequences (exact for variable lengths, as popjax) and over padded
  ones (not exact for the backward direction); the same attention and head; torch.optim.AdamW + LambdaLR
  warm-up/cosine; torch threads = cores (``--torch-threads``); a fresh random batch per step.
* ``multimodal``: video attention over 18 x 2048 features + attention headline, the encoders frozen as the default
  config trains it (``multimodal.finetune=False`` -> ``freeze=training.ENCODERS``) and fine-tuned; torch the same
  with ``requires_grad=False`` on the encoders. For scale: the head alone on cached [B, 512] encoder embeddings
  (all a frozen-encoder run needs to train), and the video model alone.

The popjax variants of a model and its PyTorch peers are timed in the same interleaved rounds (A B C A B C ...),
so that the drifting load of a shared machine treats them alike; a row is the median of its rounds.

    python benchmarks/train_steps.py [--quick] [--sections headline multimodal] [--markdown]
                                     [--out benchmarks/out/train_steps.json]
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
from _env import environment, interleaved, markdown_table, median, per_call, standard_arguments, write_result

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


def constants_collection(model, batch, table) -> dict:
    """The model's ``constants`` collection, whatever it holds, at its defaults (found with ``jax.eval_shape``, so
    nothing runs: ``std``/``scale`` leaves 1, others 0, e.g. the identity feature standardisation) with the
    word vectors set to ``table``."""
    import jax

    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                               batch)).get("constants", {})

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
    constants = constants_collection(program.model(), sample, data["table"])
    all_hps = [{**HP, "seed": s} for s in range(max(trials))]
    # eagerly, one by one, as fit does; kept on the host and placed afresh for each variant (steps donate it)
    all_states = [jax.device_get(program.init(hp, sample, constants)) for hp in all_hps]
    for variant in variants:
        for n_trials in (trials if variant in ("fit", "fit_host") else (1,)):
            mesh = full if variant in ("fit", "fit_host") else one
            batch = host_batch(arrays, idx, w, mesh)
            constants_d = jax.device_put(constants, parallel.replicated(mesh))
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
            step = make_step(fn, state, batch, hp, constants_d, arrays if variant == "fit_host" else None, mesh)
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
    med = {key: median(times) for key, times in interleaved(
        {key: (lambda f=f: jax.block_until_ready([f() for _ in range(k)][-1])) for key, f in calls.items()},
        args.rounds).items()}
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


def make_step(fn, state, batch, hp, constants, host_arrays, mesh):
    """One train step per call (the state carried along); with ``host_arrays`` each call first gathers a
    random batch on the host and lays it out over ``mesh``."""
    holder = {"state": state}
    order = np.random.default_rng(0)

    def step():
        b = batch
        if host_arrays is not None:
            i = order.integers(0, len(host_arrays["label"]), BATCH)
            b = host_batch(host_arrays, i, np.ones(BATCH, np.float32), mesh)
        holder["state"], loss = fn(holder["state"], b, hp, constants)
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
    tx = training.make_optimizer(total_steps=100_000, warmup_steps=100)

    @jax.jit
    def step(params, opt_state, key):
        key, k = jax.random.split(key)

        def loss_fn(p):
            logits = head.apply({"params": p}, e, train=True, rngs={"dropout": k})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss

    holder = [params, training.with_hyperparameters(tx.init(params), learning_rate=HP["learning_rate"],
                                                    weight_decay=HP["weight_decay"]), jax.random.key(2)]

    def call():
        *holder[:3], loss = step(*holder)
        return loss

    times = per_call(lambda: jax.block_until_ready(call()), args.steps * 5, warmup=2, max_seconds=args.max_seconds)
    r = len(times) / sum(times)
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


# ------------------------------------------------------------------------------------------ report
COLUMNS = {   # (impl, variant, trials) -> column of the markdown table
    ("popjax", "fit", 1): "popjax fit, 1 trial", ("popjax", "fit", 3): "popjax fit, 3 trials (trial-steps/s)",
    ("popjax", "fit_host", 1): "popjax fit + host batch, 1 trial",
    ("popjax", "fit_host", 3): "popjax fit + host batch, 3 trials (trial-steps/s)",
    ("popjax", "vmap1", 1): "popjax vmap, 1 device", ("popjax", "plain", 1): "popjax plain",
    ("torch", "packed", None): "torch packed", ("torch", "padded", None): "torch padded",
    ("torch", "eager", None): "torch (no LSTM)"}


def model_name(r: dict) -> str:
    if r["pooling"] == "head on cached embeddings":
        return "multimodal head alone, cached embeddings"
    if r["modality"] == "multimodal":
        return "multimodal, frozen encoders (paper)" if r["freeze"] else "multimodal, fine-tuned"
    return f"{r['modality']}, {r['pooling']}"


def markdown(rows: list[dict]) -> str:
    """One row per model, one column per implementation and variant (steps/s), as RESULTS.md holds it."""
    cols = [c for c in COLUMNS if any(column_of(r) == c for r in rows)]
    models = list(dict.fromkeys(model_name(r) for r in rows))
    cells = {(model_name(r), column_of(r)): (f"{r['trial_steps_per_s']} ({r['steps_per_s']} x {r['trials']})"
                                             if r.get("trials", 1) > 1 else r["steps_per_s"]) for r in rows}
    return markdown_table(["model (steps/s)"] + [COLUMNS[c] for c in cols],
                          [[m] + [cells.get((m, c)) for c in cols] for m in models])


def column_of(r: dict) -> tuple:
    return (r["impl"], r["variant"], r["trials"] if r["impl"] == "popjax" else None)


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="the head-on-cached-embeddings row times up to 5x this many steps (default 100; quick 20)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds over the variants and peers (default 10; quick 4)")
    parser.add_argument("--steps-per-round", type=int, default=None, help="default 10; quick 5")
    parser.add_argument("--vocab", type=int, default=20_000, help="rows of the frozen word table")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop the head-only row's timed loop after this long (default 30; quick 1.5)")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: one per core (default)")
    parser.add_argument("--sections", nargs="+", default=["headline", "multimodal"], choices=["headline", "multimodal"])
    standard_arguments(parser, "train_steps", devices_like="train.py", quick="fewer steps and variants")
    args = parser.parse_args()
    q = args.quick
    args.steps = args.steps or (20 if q else 100)
    args.max_seconds = args.max_seconds or (1.5 if q else 30.0)
    args.rounds = args.rounds or (4 if q else 10)
    args.steps_per_round = args.steps_per_round or (5 if q else 10)

    from popjax import parallel

    if args.devices == "all":
        parallel.use_all_cpu_cores()   # before JAX starts, as train.py does
    import jax
    import torch

    from popjax import training

    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    doc = {"what": "train steps/s, popjax vs PyTorch; synthetic data", "quick": q, "environment": environment(),
           "sizes": {"T": T_WORDS, "B": BATCH, "word_dim": WORD_DIM, "lstm_hidden": HIDDEN, "head_hidden": 128,
                     "frames": N_FRAMES, "feature_dim": FEAT, "vocab": args.vocab, "hparams": HP}}
    print(f"{jax.device_count()} JAX {jax.default_backend()} devices, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print("  (the machine looks busy: every number is depressed, torch's with threads = cores most: its OpenMP "
              "regions wait for threads that other processes keep off the cores)")
    t_start = time.perf_counter()
    rows = []
    if "headline" in args.sections:
        print("headline biLSTM train step (B=64, T=20, 300-d, hidden 128)")
        for pooling in ("last", "attention"):
            peers = [torch_step(args, "headline", pooling, packed=p)
                     for p in ((True, False) if not q or pooling == "last" else (True,))]
            rows += popjax_rates(args, "headline", pooling, variants=("fit", "vmap1", "plain") if q else
                                 ("fit", "fit_host", "vmap1", "plain"), trials=(1,) if q else (1, 3), peers=peers)
    if "multimodal" in args.sections:
        print("multimodal train step (18 x 2048 features + headline, attention on both)")
        for freeze in (training.ENCODERS, ()):
            rows += popjax_rates(args, "multimodal", "attention", freeze=freeze,
                                 variants=("fit", "fit_host") if q or not freeze else ("fit", "fit_host", "plain"),
                                 peers=[torch_step(args, "multimodal", "attention", packed=True, freeze=bool(freeze))])
        rows.append(head_only_rate(args))
        rows += popjax_rates(args, "video", "attention", variants=("fit",),   # the video half alone
                             peers=[torch_step(args, "video", "attention")])
    doc["rows"] = rows
    doc["seconds_total"] = round(time.perf_counter() - t_start, 1)

    print(f"\ntrain steps/s, B={BATCH} ('fit' = jit(vmap(step)) over the data mesh of all devices, batch on device; "
          "'fit_host' = + a per-step host batch; 'vmap1' = jit(vmap) on 1 device; 'plain' = jit(step) on 1 device)")
    print(f"{'model':26s} {'impl':7s} {'variant':9s} {'trials':>6s} {'dev':>3s} {'steps/s':>8s} {'ms/step':>8s}")
    for r in rows:
        model = f"{r['modality']} {r['pooling']}" + (" frozen-enc" if r["freeze"] else "")
        print(f"{model:26s} {r['impl']:7s} {r['variant']:9s} {r.get('trials', ''):>6} {r.get('devices', ''):>3} "
              f"{r['steps_per_s']:8.1f} {r['ms_per_step']:8.2f}")
    if args.markdown:
        print("\n" + markdown(rows))
    print(f"\n{doc['seconds_total']} s -> {write_result(args.out, doc)}")


if __name__ == "__main__":
    main()
