"""Training and evaluation of the popularity models (paper Sec. 2-3).

Two-class cross-entropy, optax AdamW with warm-up + cosine decay, data-parallel over a ``jax.sharding.Mesh``
of every device of every process (batch split on ``data``, parameters replicated).

The data stays on the devices: each split's arrays (float16 features, tokens, labels) are placed on every
device once per ``fit``, and an epoch is one jitted ``lax.scan`` over its steps that receives only the
epoch's [steps, batch] indices and gathers and casts each batch inside the step, so host work per step does
not grow with the batch (or exist at all). The tables must fit in one device's memory (the paper's 37k videos
x 18 x 2048 float16 features are 2.7 GB).

Several *trials* (hyperparameter settings and seeds that share parameter shapes) train together: their
states are stacked on a leading axis and the steps are ``jax.vmap``-ed over it, so a random search or a
set of seeds costs one compiled program. A single run is one trial.

Runs are deterministic: the data order of epoch e comes from ``(data_seed, e)`` and every random number of a
trial from its own seed. The full state is checkpointed with orbax at the end of an epoch
(``checkpoints/latest``): the first epoch, then the first epoch at least ``checkpoint_every_secs`` after the
previous save when no save is under way, and the last epoch; a killed run resumes exactly from the last one. The
best-by-validation model is kept in ``checkpoints/best``. With a work directory, each trial's curves also go to
TensorBoard event files in ``tensorboard/`` (``popjax.curves``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P

from popjax import metrics, parallel
from popjax.curves import TrialCurves
from popjax.models import build_model
from popjax.ops import lstm as ops_lstm

ENCODERS = ("video_encoder", "headline_encoder")
OPTIMIZER_SETTINGS = ("learning_rate", "weight_decay")   # the config.hparams fields make_optimizer takes


# ---------------------------------------------------------------------------------------------- data
def model_inputs(arrays: Mapping[str, np.ndarray], modality: str) -> dict[str, np.ndarray]:
    """The arrays a model of ``modality`` reads, plus what the loss and metrics need."""
    keys = ["label", "normalized_views"]
    if modality != "headline":
        keys.append("features")
    if modality != "video":
        keys += ["tokens", "length"]
    out = {k: arrays[k] for k in keys}
    if "length" in out:
        out["lengths"] = out.pop("length")
    return out


def batch_indices(n: int, batch_size: int, shuffle_seed: int | None = None, epoch: int = 0):
    """Yield (indices, weights) of static size ``batch_size``; the last batch is padded with weight 0.

    With ``shuffle_seed`` the order is a permutation drawn from ``(shuffle_seed, epoch)``: the same on every
    process and on every rerun.
    """
    order = np.arange(n)
    if shuffle_seed is not None:
        order = np.random.default_rng([shuffle_seed, epoch]).permutation(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        weights = np.zeros(batch_size, np.float32)
        weights[:len(idx)] = 1.0
        yield np.concatenate([idx, np.zeros(batch_size - len(idx), idx.dtype)]), weights


def epoch_indices(n: int, batch_size: int, mesh, shuffle_seed: int | None = None, epoch: int = 0):
    """All of an epoch's ``batch_indices`` as two [steps, batch_size] arrays (int32 indices, float32 weights),
    each step's batch split over the mesh's ``data`` axis: the only data a training epoch sends to the devices."""
    idx, weights = (np.stack(a) for a in zip(*batch_indices(n, batch_size, shuffle_seed, epoch)))
    return parallel.put((idx.astype(np.int32), weights), NamedSharding(mesh, P(None, parallel.DATA)))


def device_tables(arrays: Mapping[str, np.ndarray], mesh, rows: int | None = None) -> dict[str, jax.Array]:
    """A split's arrays (features kept float16) on every device of ``mesh``, once per ``fit``: each step then
    gathers its batch on the devices (``take_batch``), and the host sends nothing but indices. With ``rows``,
    padded to that many rows by repeating the first (splits of one size share their compiled programs; a real
    row, unlike zeros, has a non-empty headline, so padding predictions stay finite before they are dropped)."""
    arrays = dict(arrays)
    if rows is not None:
        arrays = {k: np.concatenate([v, np.repeat(v[:1], rows - len(v), axis=0)]) for k, v in arrays.items()}
    return parallel.put(arrays, parallel.replicated(mesh))


def take_batch(tables: Mapping[str, jax.Array], idx, weights) -> dict[str, jax.Array]:
    """The batch of rows ``idx`` of ``tables`` (features cast to float32) with its ``weight``s; inside a jitted
    step, rows gathered from replicated tables by batch-split indices stay on the device that uses them."""
    batch = {k: jnp.take(v, idx, axis=0) for k, v in tables.items()}
    if "features" in batch:
        batch["features"] = batch["features"].astype(jnp.float32)
    batch["weight"] = weights
    return batch


# ------------------------------------------------------------------------------------------- model
def make_model(static: Mapping[str, Any], vocab_size: int, word_dim: int, hp: Mapping | None = None):
    """The model of ``static`` (``config.model``) with one trial's ``hp`` (``config.hparams`` values, possibly
    traced: dropout rates), the LSTM recurrence with the hand-written backward pass. Without ``hp``: no
    dropout, for inference."""
    return build_model({**static, **(hp or {})}, vocab_size=vocab_size, word_dim=word_dim, recurrence=ops_lstm.lstm)


def _adamw_cosine(learning_rate, weight_decay, *, total_steps: int, warmup_steps: int):
    warmup_steps = max(warmup_steps, 1)
    shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps, max(total_steps, warmup_steps + 1), 0.0)
    return optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(weight_decay),
                       optax.scale_by_schedule(shape), optax.scale(-learning_rate))


def make_optimizer(*, total_steps: int, warmup_steps: int,
                   freeze: Sequence[str] = ()) -> optax.GradientTransformation:
    """AdamW + warm-up/cosine decay, built once per program. ``learning_rate`` and ``weight_decay`` live in the
    optimizer state (``with_hyperparameters``), so each vmapped trial carries its own. Top-level submodules
    named in ``freeze`` get no updates."""
    tx = optax.inject_hyperparams(_adamw_cosine, static_args=("total_steps", "warmup_steps"))(
        learning_rate=0.0, weight_decay=0.0, total_steps=total_steps, warmup_steps=warmup_steps)
    if not freeze:
        return tx
    return optax.multi_transform({"update": tx, "hold": optax.set_to_zero()}, lambda params: {
        k: jax.tree.map(lambda _: "hold" if k in freeze else "update", v) for k, v in params.items()})


def with_hyperparameters(opt_state, **values):
    """``opt_state`` of ``make_optimizer`` with its ``learning_rate`` / ``weight_decay`` set to ``values``."""
    return optax.tree_utils.tree_set(opt_state, **{k: jnp.asarray(v, jnp.float32) for k, v in values.items()})


class TrainState(train_state.TrainState):
    """flax's ``TrainState`` (step, params, the optimizer ``tx`` and its state) plus BatchNorm statistics and
    the trial's random key. ``apply_fn`` is unused: the model depends on the trial's dropout rates
    (``Program.model(hp)``)."""

    batch_stats: Any
    rng: jax.Array  # key data (uint32) of a ``jax.random.key``: plain arrays checkpoint and vmap as they are


def plug_encoders(params: Mapping, encoders: Mapping) -> dict:
    """Functional parameter surgery: replace the encoder subtrees of ``params`` by trained ones."""
    params = dict(params)
    for name, subtree in encoders.items():
        if not jax.tree.leaves(subtree) and not jax.tree.leaves(params.get(name, {})):
            continue  # nothing learned (mean pooling)
        if name not in params:
            raise ValueError(f"this model has no {name!r} to plug trained parameters into")
        if jax.tree.structure(params[name]) != jax.tree.structure(subtree) or any(
                a.shape != b.shape for a, b in zip(jax.tree.leaves(params[name]), jax.tree.leaves(subtree))):
            raise ValueError(f"trained {name!r} parameters do not fit this model (different sizes or pooling)")
        params[name] = subtree
    return params


@dataclasses.dataclass
class Program:
    """The compiled functions of one group of trials sharing ``static`` hyperparameters."""

    static: dict
    vocab_size: int
    word_dim: int
    total_steps: int
    warmup_steps: int
    freeze: tuple = ()
    cpu_opt_level: int | None = None   # XLA:CPU's LLVM optimization level for these programs (None: XLA's)

    def model(self, hp=None):
        return make_model(self.static, self.vocab_size, self.word_dim, hp)

    @functools.cached_property
    def tx(self) -> optax.GradientTransformation:
        return make_optimizer(total_steps=self.total_steps, warmup_steps=self.warmup_steps, freeze=self.freeze)

    def init(self, hp, sample, constants, encoders=None) -> TrainState:
        k_init, k_drop, k_state = jax.random.split(jax.random.key(hp["seed"]), 3)
        variables = self.model(hp).init({"params": k_init, "dropout": k_drop}, sample)
        params = variables["params"]
        if encoders:
            params = plug_encoders(params, encoders)
        state = TrainState.create(apply_fn=None, params=params, tx=self.tx,
                                  batch_stats=variables.get("batch_stats", {}), rng=jax.random.key_data(k_state))
        return state.replace(step=jnp.zeros((), jnp.int32), opt_state=with_hyperparameters(
            state.opt_state, learning_rate=hp["learning_rate"], weight_decay=hp["weight_decay"]))

    def train_step(self, state: TrainState, batch, hp, constants):
        model = self.model(hp)
        rng, k_drop = jax.random.split(jax.random.wrap_key_data(state.rng))

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats, "constants": constants}
            logits, updates = model.apply(variables, batch, train=True, rngs={"dropout": k_drop},
                                          mutable=["batch_stats"])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
            return jnp.sum(ce * batch["weight"]) / jnp.maximum(jnp.sum(batch["weight"]), 1.0), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats),
                                    rng=jax.random.key_data(rng))
        return new, loss

    def predict(self, params, batch_stats, batch, constants):
        """P(popular) for each video of the batch."""
        logits = self.model().apply({"params": params, "batch_stats": batch_stats, "constants": constants}, batch)
        return jax.nn.softmax(logits)[:, 1]


# ----------------------------------------------------------------------------------------- fitting
@dataclasses.dataclass
class FitResult:
    trials: list[dict]            # the hyperparameters of each trial
    val: list[dict]               # best validation metrics per trial
    test: list[dict]              # test metrics of each trial's best-validation parameters
    best_epoch: list[int]         # 1-based epoch of each trial's best validation score
    params: Any                   # stacked best parameters [T, ...]
    batch_stats: Any
    history: list[dict]
    epochs_run: int
    devices: int                  # size of the mesh it trained on
    p_test: np.ndarray | None = None   # P(popular) [T, n_test] of each trial's best-validation parameters

    def select(self) -> int:
        """Index of the trial with the best validation metrics."""
        return max(range(len(self.val)), key=lambda t: metrics.selection_key(self.val[t]))

    def trial_variables(self, t: int) -> dict:
        take = lambda tree: jax.tree.map(lambda x: np.asarray(x[t]), tree)  # noqa: E731
        return {"params": take(self.params), "batch_stats": take(self.batch_stats)}


def predict_split(program: Program, params, batch_stats, tables, n: int, constants, mesh,
                  batch_size: int) -> np.ndarray:
    """P(popular) of the first ``n`` videos of a split (its ``device_tables``) for every stacked trial: [T, n],
    all of the table's batches in one call."""
    num_trials = jax.tree.leaves(params)[0].shape[0]
    if n == 0:
        return np.zeros((num_trials, 0))
    idx, weights = epoch_indices(len(tables["label"]), batch_size, mesh)
    p = _host_copy(_jitted(program, "predict", mesh)(params, batch_stats, tables, idx, weights, constants))  # [S, T, B]
    return np.moveaxis(p, 0, 1).reshape(num_trials, -1)[:, :n]


_JIT_CACHE: dict = {}


def _jitted(program: Program, name: str, mesh) -> Callable:
    """The compiled functions of a program, cached per program and mesh; outputs replicated over ``mesh``.

    ``init(hp, sample, constants, encoders)``: one trial's ``TrainState`` (called per trial; see ``fit``).
    ``train_epoch(state, tables, idx, weights, hp, constants)``: a ``lax.scan`` of ``jit(vmap(train_step))`` over
    the epoch's [steps, batch] indices, each step gathering its batch from the device-resident tables
    (one dispatch per epoch; the host does no per-step work). ``predict(params, batch_stats, tables, idx,
    weights, constants)``: P(popular) [steps, T, batch] of the stacked trials.
    """
    key = (name, json.dumps(program.static, sort_keys=True), program.vocab_size, program.word_dim,
           program.total_steps, program.warmup_steps, program.freeze, program.cpu_opt_level, mesh)
    if key not in _JIT_CACHE:
        out, split = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        options = None   # only CPU devices take the CPU's level; accelerators keep XLA's defaults
        if program.cpu_opt_level is not None and mesh.devices.flat[0].platform == "cpu":
            options = {"xla_backend_optimization_level": int(program.cpu_opt_level)}
        jit = functools.partial(jax.jit, out_shardings=out, compiler_options=options)
        step = jax.vmap(program.train_step, in_axes=(0, None, 0, None))
        predict = jax.vmap(program.predict, in_axes=(0, 0, None, None))

        def batch_at(tables, idx, weights):
            return jax.lax.with_sharding_constraint(take_batch(tables, idx, weights), split)

        if name == "init":
            fn = jit(program.init)
        elif name == "train_epoch":
            def train_epoch(state, tables, idx, weights, hp, constants):
                return jax.lax.scan(lambda st, xs: step(st, batch_at(tables, *xs), hp, constants), state,
                                    (idx, weights))

            fn = jit(train_epoch, donate_argnums=(0,))
        else:
            def predict_all(params, batch_stats, tables, idx, weights, constants):
                return jax.lax.map(lambda xs: predict(params, batch_stats, batch_at(tables, *xs), constants),
                                   (idx, weights))

            fn = jit(predict_all)
        _JIT_CACHE[key] = fn
    return _JIT_CACHE[key]


def fit(data: Mapping[str, Mapping[str, np.ndarray]], static: Mapping, trials: Sequence[Mapping], *,
        vocab_size: int, word_dim: int, constants: Mapping, train_cfg: Mapping, workdir=None, mesh=None,
        encoders: Mapping | None = None, freeze: Sequence[str] = (), progress: bool = False,
        log: Callable[[dict], None] | None = None) -> FitResult:
    """Train ``trials`` of one static configuration together: each trial is a dict of ``static`` (the
    ``config.model`` fields, equal in every trial) plus its own numbers (``config.hparams`` and ``seed``).

    ``data`` maps "train"/"val"/"test" to ``model_inputs`` arrays. ``encoders``: trained encoder subtrees
    plugged into every trial (multimodal); ``freeze`` names the submodules the optimizer leaves alone.
    ``constants``: the model's ``constants`` collection (word vectors, feature statistics). ``train_cfg``:
    batch_size, num_epochs, warmup_epochs, patience, data_seed, checkpoint_every_secs. With ``workdir`` the run
    checkpoints (see the module docstring) and resumes from ``workdir/checkpoints``.
    """
    import orbax.checkpoint as ocp

    mesh = mesh or parallel.training_mesh(int(train_cfg.get("devices", 0)))
    bs = int(train_cfg["batch_size"])
    if bs % mesh.size:
        raise ValueError(f"batch_size {bs} must be a multiple of the number of devices ({mesh.size})")
    n_train = len(data["train"]["label"])
    if n_train == 0 or len(data["val"]["label"]) == 0:
        raise ValueError("training needs non-empty train and val splits")
    steps_per_epoch = math.ceil(n_train / bs)
    num_epochs = int(train_cfg["num_epochs"])
    program = Program(dict(static), vocab_size, word_dim, total_steps=steps_per_epoch * num_epochs,
                      warmup_steps=int(train_cfg.get("warmup_epochs", 1) * steps_per_epoch), freeze=tuple(freeze),
                      cpu_opt_level=train_cfg.get("cpu_opt_level"))
    traced = sorted(set(trials[0]) - set(static))   # vmapped over: one compiled program for every trial
    hp = {k: np.asarray([float(t[k]) if k != "seed" else int(t[k]) for t in trials]) for k in traced}
    sample = jax.tree.map(np.asarray, take_batch(data["train"], *next(batch_indices(min(n_train, bs), bs))))
    # Everything the epochs read goes to the devices once: the splits' tables, the model's constants, the trials'
    # hyperparameters (the state too, below).
    constants, hp_d, sample = parallel.put((dict(constants), hp, sample), parallel.replicated(mesh))
    size = {split: len(data[split]["label"]) for split in ("train", "val", "test") if split in data}
    # Validation and test tables padded to one size: one compiled prediction program for both.
    eval_rows = parallel.round_up(max(size.get("val", 0), size.get("test", 0)), bs)
    tables = {split: device_tables(data[split], mesh, rows=None if split == "train" else eval_rows)
              for split in size}

    # Trials are initialised one by one (one compiled init, called per trial): the LSTM's orthogonal init runs
    # LAPACK QR kernels that, batched by vmap, can wait on each other for the threads of XLA's CPU pool and
    # deadlock. Stacked on the host, then placed once.
    init, T = _jitted(program, "init", mesh), len(trials)
    trial_hp = [{k: v[t] for k, v in hp.items()} for t in range(T)]
    with ThreadPoolExecutor(3) as pool:   # the other programs compile meanwhile (XLA: one thread per program)
        ahead = _compile_ahead(pool, program, mesh, jax.eval_shape(init, trial_hp[0], sample, constants, encoders),
                               T, tables, hp_d, constants, bs,
                               epoch_indices(n_train, bs, mesh, train_cfg.get("data_seed", 0)))
        state = [_host_copy(init(h, sample, constants, encoders)) for h in trial_hp]
        for compiled in ahead:
            compiled.result()
    state = jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *state), parallel.replicated(mesh))
    tracker = {"epoch": 0, "best_key": [[-math.inf, -math.inf]] * T, "best_epoch": [0] * T,
               "since_best": 0, "history": [], "val": [None] * T}
    best = jax.tree.map(jnp.copy, {"params": state.params, "batch_stats": state.batch_stats})

    latest = curves = None
    if workdir is not None and jax.process_index() == 0:
        curves = TrialCurves(Path(workdir) / "tensorboard", trials)
    if workdir is not None:
        ckpt_dir = Path(workdir).absolute() / "checkpoints" / "latest"
        # The policy decides on process 0 and broadcasts, so every process saves the same epochs.
        policy = ocp.checkpoint_managers.ContinuousCheckpointingPolicy(
            minimum_interval_secs=int(train_cfg.get("checkpoint_every_secs", 60)))
        latest = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, save_decision_policy=policy))
        if latest.latest_step() is not None:
            target = _host_copy({"state": state, "best": best})
            restored = latest.restore(latest.latest_step(), args=ocp.args.Composite(
                train=ocp.args.StandardRestore(target), tracker=ocp.args.JsonRestore()))
            restored_train = jax.device_put(restored["train"], parallel.replicated(mesh))
            state, best = restored_train["state"], restored_train["best"]
            tracker = dict(restored["tracker"])

    train_epoch = _jitted(program, "train_epoch", mesh)
    patience = int(train_cfg.get("patience", num_epochs))
    bar = _progress(num_epochs, tracker["epoch"], progress)
    try:
        while tracker["epoch"] < num_epochs and tracker["since_best"] < patience:
            epoch = tracker["epoch"]
            idx, weights = epoch_indices(n_train, bs, mesh, train_cfg.get("data_seed", 0), epoch)
            state, losses = train_epoch(state, tables["train"], idx, weights, hp_d, constants)   # losses [steps, T]
            p_val = predict_split(program, state.params, state.batch_stats, tables["val"], size["val"], constants, mesh,
                                  bs)
            val = [metrics.evaluate(p, data["val"]["label"], data["val"]["normalized_views"]) for p in p_val]
            improved = np.array([list(metrics.selection_key(m)) > list(k) for m, k in zip(val, tracker["best_key"])])
            best = keep_best(best, {"params": state.params, "batch_stats": state.batch_stats},
                             parallel.put(improved, parallel.replicated(mesh)))
            for t in np.flatnonzero(improved):
                tracker["best_key"][t], tracker["best_epoch"][t], tracker["val"][t] = (
                    list(metrics.selection_key(val[t])), epoch + 1, val[t])
            tracker["since_best"] = 0 if improved.any() else tracker["since_best"] + 1
            record = {"epoch": epoch + 1, "step": int(state.step[0]),
                      "train_loss": [float(x) for x in np.mean(_host_copy(losses), axis=0)],
                      "val_accuracy": [m["accuracy"] for m in val], "val_spearman": [m["spearman"] for m in val]}
            tracker["history"].append(record)
            tracker["epoch"] = epoch + 1
            if log:
                log(record)
            if curves is not None:
                curves(record)
            last = tracker["epoch"] >= num_epochs or tracker["since_best"] >= patience
            if latest is not None and (last or latest.should_save(tracker["epoch"])):
                # Host copies: the async save must not read buffers that the next (donating) step reuses.
                latest.save(tracker["epoch"], force=True, args=ocp.args.Composite(
                    train=ocp.args.StandardSave(_host_copy({"state": state, "best": best})),
                    tracker=ocp.args.JsonSave(tracker)))
            bar.update(1)
            bar.set_postfix(val_acc=f"{max(m['accuracy'] for m in val):.3f}")
    finally:  # also on an exception: let the last async save finish
        bar.close()
        if curves is not None:
            curves.close()
        if latest is not None:
            latest.wait_until_finished()
            latest.close()

    p_test = predict_split(program, best["params"], best["batch_stats"], tables["test"], size["test"], constants, mesh,
                           bs) if size.get("test") else [None] * T
    test = [metrics.evaluate(p, data["test"]["label"], data["test"]["normalized_views"]) if p is not None else None
            for p in p_test]
    val = [v if v is not None else {"accuracy": math.nan, "spearman": math.nan, "n": 0} for v in tracker["val"]]
    return FitResult(trials=[dict(t) for t in trials], val=val, test=test, best_epoch=tracker["best_epoch"],
                     params=_host_copy(best["params"]), batch_stats=_host_copy(best["batch_stats"]),
                     history=tracker["history"], epochs_run=tracker["epoch"], devices=mesh.size,
                     p_test=np.asarray(p_test) if size.get("test") else None)


def _compile_ahead(pool, program: Program, mesh, trial_state, T: int, tables, hp, constants, batch_size: int,
                   first_epoch) -> list:
    """Futures compiling ``fit``'s epoch, prediction and best-keeping programs for ``T`` stacked trials of
    state ``trial_state`` (shapes), as its calls will use them: those calls then find them compiled."""
    rep = parallel.replicated(mesh)
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct((T,) + s.shape, s.dtype, sharding=rep), trial_state)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    eval_idx = epoch_indices(len(tables["val"]["label"]), batch_size, mesh)
    improved = jax.ShapeDtypeStruct((T,), np.bool_, sharding=rep)
    jobs = [(_jitted(program, "train_epoch", mesh), (state, tables["train"], *first_epoch, hp, constants)),
            (_jitted(program, "predict", mesh), (state.params, state.batch_stats, tables["val"], *eval_idx, constants)),
            (keep_best, (variables, variables, improved))]
    return [pool.submit(lambda fn=fn, args=args: fn.lower(*args).compile()) for fn, args in jobs]


@functools.partial(jax.jit, donate_argnums=(0,))
def keep_best(best, current, improved):
    """Each stacked trial's best variables so far: ``current`` where ``improved`` [T], else ``best``."""
    return jax.tree.map(lambda b, c: jnp.where(improved.reshape((-1,) + (1,) * (c.ndim - 1)), c, b), best, current)


def _host_copy(tree):
    """Fresh numpy copies of replicated arrays (this process's replica: also works on several hosts)."""
    return jax.tree.map(lambda x: np.array(x.addressable_data(0) if isinstance(x, jax.Array) else x, copy=True),
                        tree)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="epochs", disable=not enabled or jax.process_index() != 0,
                leave=False)
