"""How many training steps per second does ``popjax.training.fit`` itself run?

The path ``train.py`` runs: 3 vmapped trials, data-parallel over every device, for Table-1 variants (default
video_attention and multimodal) at batch 64 and 512, on synthetic data of the default sizes (18 x 2048 float16
features, 20-token headlines of 300-d word vectors, 20k words). ``benchmarks/train_steps.py`` times the train step
alone against PyTorch.

A run of ``--epochs`` epochs of ``--steps`` steps each; steps/s counts the epochs after the first (which
compiles), from the wall-clock times ``fit``'s per-epoch ``log`` callback sees; each epoch also predicts one
validation batch. ``host ms/step`` is the host work the training loop does per step before the steps can
run (placing the epoch's indices on the devices, per step), timed alone.

    python benchmarks/fit_steps.py [--quick] [--batches 64 512] [--cpu-opt-level 2 1] [--markdown]
                                   [--out benchmarks/out/fit_steps.json]

``first epoch s`` includes compiling the epoch and prediction programs (the cost ``--cpu-opt-level`` trades).
"""
from __future__ import annotations

import argparse
import inspect
import time

import numpy as np
from _env import environment, markdown_table, median, per_call, standard_arguments, write_result

N_FRAMES, FEAT, T_WORDS, WORD_DIM, VOCAB = 18, 2048, 20, 300, 20_000
HP = {"learning_rate": 1e-3, "weight_decay": 1e-4, "input_dropout": 0.1, "dropout": 0.3}
VARIANTS = {   # Table 1: (modality, frame pooling, headline pooling)
    "video_mean": ("video", "mean", "last"), "video_attention": ("video", "attention", "attention"),
    "headline_lstm": ("headline", "mean", "last"), "headline_attention": ("headline", "mean", "attention"),
    "multimodal": ("multimodal", "mean", "last"), "multimodal_attention": ("multimodal", "attention", "attention")}


def synthetic_split(n: int, modality: str, seed: int) -> dict:
    from popjax import training

    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, T_WORDS + 1, n).astype(np.int32)
    tokens = rng.integers(1, VOCAB, (n, T_WORDS)).astype(np.int32)
    tokens[np.arange(T_WORDS)[None] >= lengths[:, None]] = 0
    arrays = {"label": rng.integers(0, 2, n).astype(np.int64), "normalized_views": rng.random(n).astype(np.float32),
              "features": np.abs(rng.standard_normal((n, N_FRAMES, FEAT))).astype(np.float16),
              "tokens": tokens, "length": lengths}
    return training.model_inputs(arrays, modality)


def fit_rate(variant: str, batch: int, steps: int, epochs: int, trials: int, cpu_opt_level=None) -> dict:
    from popjax import training

    modality, frame_pooling, headline_pooling = VARIANTS[variant]
    static = {"modality": modality, "frame_pooling": frame_pooling, "headline_pooling": headline_pooling,
              "frame_embed_dim": 256, "frame_attention_dim": 128, "lstm_hidden": 128, "word_attention_dim": 128,
              "head_hidden": 128, "batch_norm": False}
    data = {"train": synthetic_split(steps * batch, modality, 0), "val": synthetic_split(batch, modality, 1),
            "test": synthetic_split(0, modality, 2)}
    # the fit argument of the model's constants ("frozen" in popjax versions before the collection's rename)
    constants_kw = "constants" if "constants" in inspect.signature(training.fit).parameters else "frozen"
    constants = {"feature_norm": {"mean": np.zeros(FEAT, np.float32), "std": np.ones(FEAT, np.float32)}}
    if modality != "video":
        table = (0.3 * np.random.default_rng(3).standard_normal((VOCAB, WORD_DIM))).astype(np.float32)
        constants["headline_encoder"] = {"word_vectors": table}
    times = []
    t0 = time.perf_counter()
    result = training.fit(
        data, static, [{**HP, "seed": s} for s in range(trials)], vocab_size=VOCAB, word_dim=WORD_DIM,
        **{constants_kw: constants}, train_cfg={"batch_size": batch, "num_epochs": epochs, "warmup_epochs": 1, "data_seed": 0,
                                  "cpu_opt_level": cpu_opt_level},
        freeze=training.ENCODERS if modality == "multimodal" else (), log=lambda r: times.append(time.perf_counter()))
    timed = (times[-1] - times[0]) if len(times) > 1 else float("nan")
    rate = steps * (len(times) - 1) / timed
    host = host_ms_per_step(data["train"], batch, result.devices)
    row = {"variant": variant, "batch": batch, "trials": trials, "devices": result.devices, "steps_per_epoch": steps,
           "cpu_opt_level": cpu_opt_level,
           "timed_epochs": len(times) - 1, "first_epoch_s": round(times[0] - t0, 2), "steps_per_s": round(rate, 2),
           "ms_per_step": round(1e3 / rate, 2), "host_ms_per_step": host}
    print(f"  {variant:16s} batch {batch:4d} x{trials} trials, {result.devices} devices: {rate:7.2f} steps/s "
          f"({1e3 / rate:7.1f} ms/step; host {host} ms/step; first epoch {row['first_epoch_s']} s)", flush=True)
    return row


def host_ms_per_step(arrays, batch: int, devices: int) -> float:
    """Median ms of the host work ``fit`` does per step to give the steps their batches: placing an epoch's
    [steps, batch] indices on the devices (``training.epoch_indices``), divided by the steps."""
    import jax

    from popjax import parallel, training

    mesh = parallel.data_mesh(jax.devices()[:devices])
    n = len(arrays["label"])
    steps = -(-n // batch)
    if hasattr(training, "epoch_indices"):
        fn = lambda: jax.block_until_ready(training.epoch_indices(n, batch, mesh, 0, 0))  # noqa: E731
        return round(1e3 * median(per_call(fn, 20, warmup=3)) / steps, 3)
    # an older popjax whose fit gathers each batch on the host (the "before" column of RESULTS.md's fit table)
    idx, weights = next(training.batch_indices(n, batch, 0, 0))
    fn = lambda: jax.block_until_ready(training.global_batch(arrays, idx, weights, mesh))  # noqa: E731
    return round(1e3 * median(per_call(fn, 20, warmup=3)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--variants", nargs="+", default=["video_attention", "multimodal"], choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default 8; quick 3)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs, the first untimed (default 4; quick 2)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--cpu-opt-level", type=int, nargs="+", default=[None],
                        help="config.train.cpu_opt_level values to compare, interleaved (default: XLA's own level)")
    standard_arguments(parser, "fit_steps", quick="3 steps per epoch, 2 epochs")
    args = parser.parse_args()
    steps = args.steps or (3 if args.quick else 8)
    epochs = args.epochs or (2 if args.quick else 4)

    from popjax import runtime

    runtime.configure()   # as train.py
    import jax

    doc = {"what": "training.fit steps/s, synthetic data", "environment": environment(), "rows": []}
    print(f"{jax.device_count()} JAX {jax.default_backend()} devices")
    for variant in args.variants:
        for batch in args.batches:
            for level in args.cpu_opt_level:
                doc["rows"].append(fit_rate(variant, batch, steps, epochs, args.trials, level))
                write_result(args.out, doc)
    print(f"\n{'variant':16s} {'batch':>5s} {'opt':>4s} {'steps/s':>8s} {'ms/step':>8s} {'host ms/step':>12s} "
          f"{'1st epoch s':>11s}")
    for r in doc["rows"]:
        level = "-" if r["cpu_opt_level"] is None else str(r["cpu_opt_level"])
        print(f"{r['variant']:16s} {r['batch']:5d} {level:>4s} {r['steps_per_s']:8.2f} {r['ms_per_step']:8.1f} "
              f"{r['host_ms_per_step']:12.3f} {r['first_epoch_s']:11.2f}")
    if args.markdown:
        print("\n" + markdown_table(
            ["variant", "batch", "cpu_opt_level", "steps/s", "host ms/step", "first epoch s"],
            [[r["variant"], r["batch"], r["cpu_opt_level"], r["steps_per_s"], r["host_ms_per_step"],
              r["first_epoch_s"]] for r in doc["rows"]]))
    print(f"-> {write_result(args.out, doc)}")


if __name__ == "__main__":
    main()
