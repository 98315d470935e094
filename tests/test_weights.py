"""ResNet50 weight conversion: numerical parity with Keras applications and a torchvision-named torch
reference, both with random weights and non-trivial BatchNorm statistics, plus the error cases."""
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from popjax import Backbone
from popjax.backbone import call_buckets
from popjax.weights import WeightsError, convert, load_backbone

RTOL = 1e-4


def rel_err(a, b, what=""):
    """max |a - b| / max |b|; printed with ``what`` (``pytest -s -k parity`` shows the measured errors)."""
    err = float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))
    if what:
        print(f"parity {what}: rel err {err:.2e}")
    return err


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)


# Per stage: the activations after the stem (conv1, bn1, relu, maxpool), after every block of the four stages and
# the pooled features, for 2 preprocessed images of 64 x 64, keyed by torchvision's names (``layer3.2``).
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "features")
STAGE_IMAGES = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)


def flax_block(name):
    """torchvision's block name -> popjax's (Keras's) module name: ``layer3.2`` -> ``conv4_block3``."""
    stage, block = name.removeprefix("layer").split(".")
    return f"conv{int(stage) + 1}_block{int(block) + 1}"


def popjax_stages(backbone, x):
    """popjax's activations, by intercepting its Bottleneck modules (the stem's output is the first block's input)."""
    from popjax.models.resnet import Bottleneck

    def forward(variables, x):
        acts = {}

        def record(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            if isinstance(context.module, Bottleneck) and context.method_name == "__call__":
                stage, block = context.module.name.removeprefix("conv").split("_block")
                if (stage, block) == ("2", "1"):
                    acts["stem"] = args[0]
                acts[f"layer{int(stage) - 1}.{int(block) - 1}"] = y
            return y

        with nn.intercept_methods(record):
            acts["features"] = backbone.model.apply(variables, x)["features"]
        return acts

    return jax.device_get(jax.jit(forward)(backbone.variables, x))


def assert_stage_parity(ours, ref, stage, what):
    assert ours.keys() == ref.keys() and len(ref) == 2 + sum((3, 4, 6, 3))
    names = [k for k in ref if k == stage or k.startswith(stage + ".")]
    assert names
    for name in names:
        label = f"{name} ({flax_block(name)})" if "." in name else name
        assert ours[name].shape == ref[name].shape, (label, ours[name].shape, ref[name].shape)
        err = rel_err(ours[name], ref[name], f"{what} {label}")
        assert err < RTOL, f"{what} {label}: max rel err {err:.2e} >= {RTOL:.0e}"


# ---------------------------------------------------------------------------------------------- Keras
def write_keras2_h5(model, path, include=lambda layer: True):
    """Save ``model`` in the legacy Keras-2 weights layout of the Keras applications files:
    attrs layer_names / weight_names, datasets '<layer>/<weight>:0'."""
    layers = [l for l in model.layers if include(l)]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [l.name.encode() for l in layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in layers:
            g = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for name, value in zip(names, layer.get_weights()):
                g.create_dataset(name, data=value)


def random_keras_resnet50(**kwargs):
    """Keras applications' ResNet50 with random weights and non-trivial BatchNorm statistics."""
    keras = pytest.importorskip("keras")
    assert keras.backend.backend() == "jax"
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, **kwargs)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.0, n), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.1, n), rng.uniform(0.5, 2.0, n)])
    return keras, model


@pytest.fixture(scope="module")
def keras_case(tmp_path_factory, images):
    keras, model = random_keras_resnet50(classifier_activation=None)
    tmp = tmp_path_factory.mktemp("keras")
    full, notop = tmp / "resnet50_full.h5", tmp / "resnet50_notop.h5"
    write_keras2_h5(model, full)
    write_keras2_h5(model, notop, include=lambda l: l.name != "predictions")
    # The file is in a layout Keras itself loads (by its legacy-h5 reader) to the same function.
    reloaded = keras.applications.ResNet50(weights=None, classifier_activation=None)
    reloaded.load_weights(str(full))
    x = keras.applications.resnet.preprocess_input(images.astype("float32"))
    logits = np.asarray(model.predict(x, verbose=0))
    np.testing.assert_array_equal(np.asarray(reloaded.predict(x, verbose=0)), logits)
    features = np.asarray(keras.Model(model.input, model.get_layer("avg_pool").output).predict(x, verbose=0))
    return {"full": full, "notop": notop, "logits": logits, "features": features, "tmp": tmp}


@pytest.mark.slow   # as test_torchvision_parity, and Keras builds its first ResNet50 in ~20 s
def test_keras_full_parity(keras_case, images):
    out = keras_case["tmp"] / "converted_full"
    meta = convert("keras", keras_case["full"], out)
    assert meta["variant"] == "v1" and meta["num_classes"] == 1000
    assert meta["preprocessing"]["name"] == "caffe" and meta["preprocessing"]["channel_order"] == "BGR"
    backbone = Backbone.load(out)
    x = backbone.preprocess(images)
    result = backbone.model.apply(backbone.variables, x)
    assert rel_err(result["features"], keras_case["features"], "keras features") < RTOL
    assert rel_err(result["logits"], keras_case["logits"], "keras logits") < RTOL
    assert rel_err(backbone.features(images), keras_case["features"], "keras Backbone.features") < RTOL


@pytest.fixture(scope="module")
def keras_stages(tmp_path_factory):
    """As ``torch_stages`` for a Keras (v1) no-top ResNet50 of 64 x 64 inputs, written as an h5 weights file and
    converted; its layers ``pool1_pool`` and ``convS_blockB_out`` (a model of its own: no 224 px Keras runs)."""
    keras, model = random_keras_resnet50(include_top=False, input_shape=STAGE_IMAGES.shape[1:])
    names = ["stem"] + [f"layer{i}.{j}" for i, n in enumerate((3, 4, 6, 3), 1) for j in range(n)]
    outputs = [model.get_layer("pool1_pool" if n == "stem" else flax_block(n) + "_out").output for n in names]
    ref = dict(zip(names, map(np.asarray, keras.Model(model.input, outputs).predict(STAGE_IMAGES, verbose=0))))
    ref["features"] = ref["layer4.2"].mean(axis=(1, 2))
    tmp = tmp_path_factory.mktemp("keras_stages")
    write_keras2_h5(model, tmp / "resnet50_notop.h5")
    convert("keras", tmp / "resnet50_notop.h5", tmp / "converted")
    return popjax_stages(Backbone.load(tmp / "converted"), STAGE_IMAGES), ref


@pytest.mark.slow   # Keras builds its first ResNet50 in ~20 s
@pytest.mark.parametrize("stage", STAGES)
def test_keras_parity_per_stage(keras_stages, stage):
    assert_stage_parity(*keras_stages, stage, "keras")


@pytest.mark.slow
def test_keras_notop_via_cli(keras_case, images):
    out = keras_case["tmp"] / "converted_notop"
    proc = subprocess.run([sys.executable, "-m", "popjax.cli", "convert-weights", "--format", "keras",
                           "--input", str(keras_case["notop"]), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    _, meta = load_backbone(out)
    assert meta["num_classes"] == 0 and meta["variant"] == "v1"
    assert rel_err(Backbone.load(out).features(images), keras_case["features"]) < RTOL


# ---------------------------------------------------------------------------------------------- torch
@pytest.fixture(scope="module")
def torch_case(tmp_path_factory, images):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    from popjax.testing.torch_resnet import ResNet50, randomize_batchnorm

    torch.manual_seed(0)
    model = randomize_batchnorm(ResNet50()).eval()
    tmp = tmp_path_factory.mktemp("torch")
    torch.save(model.state_dict(), tmp / "resnet50.pth")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "resnet50.safetensors"))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        features, logits = model((x - mean) / std)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features_bf16, _ = model((x - mean) / std)
    return {"tmp": tmp, "model": model, "state_dict": model.state_dict(), "features": features.numpy(),
            "logits": logits.numpy(), "features_bf16": features_bf16.float().numpy()}


def test_torch_reference_has_torchvision_state_dict_names_order_and_shapes():
    """The reference's state dict is torchvision's resnet50's, recorded from torchvision itself (it does not
    import beside the torch installed here) in tests/data/torchvision_resnet50_state_dict.json."""
    pytest.importorskip("torch")
    from popjax.testing.torch_resnet import ResNet50

    recorded = json.loads((Path(__file__).parent / "data" / "torchvision_resnet50_state_dict.json").read_text())
    want = [(name, list(shape)) for name, shape in recorded["state_dict"]]
    got = [(name, list(t.shape)) for name, t in ResNet50().state_dict().items()]
    assert len(want) == 320 and recorded["torchvision"].startswith("0.")
    assert [n for n, _ in got] == [n for n, _ in want], "names or their order differ from torchvision's"
    assert got == want, [(g, w) for g, w in zip(got, want) if g != w][:5]


@pytest.mark.slow   # popjax's ResNet50 op by op (not jitted) at 224 px: ~30 s for the first call in a process
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_parity(torch_case, images, suffix):
    out = torch_case["tmp"] / f"converted{suffix}"
    meta = convert("torchvision", torch_case["tmp"] / f"resnet50{suffix}", out)
    assert meta["variant"] == "v1.5" and meta["preprocessing"]["name"] == "torch"
    backbone = Backbone.load(out)
    result = backbone.model.apply(backbone.variables, backbone.preprocess(images))
    assert rel_err(result["features"], torch_case["features"], f"torchvision{suffix} features") < RTOL
    assert rel_err(result["logits"], torch_case["logits"], f"torchvision{suffix} logits") < RTOL


@pytest.fixture(scope="module")
def torch_stages(torch_case):
    import torch

    model, ref = torch_case["model"], {}
    with torch.no_grad():
        y = torch.from_numpy(STAGE_IMAGES).permute(0, 3, 1, 2)                      # NHWC -> NCHW
        y = ref["stem"] = model.maxpool(model.relu(model.bn1(model.conv1(y))))
        for i in range(1, 5):
            for j, block in enumerate(getattr(model, f"layer{i}")):
                y = ref[f"layer{i}.{j}"] = block(y)
        ref["features"] = torch.flatten(model.avgpool(y), 1)
    ref = {k: v.numpy() if v.ndim == 2 else v.permute(0, 2, 3, 1).numpy() for k, v in ref.items()}   # -> NHWC
    out = torch_case["tmp"] / "converted_stages"
    convert("torchvision", torch_case["tmp"] / "resnet50.pth", out)    # (the bf16 test reads the .safetensors)
    return popjax_stages(Backbone.load(out), STAGE_IMAGES), ref


@pytest.mark.parametrize("stage", STAGES)
def test_torchvision_parity_per_stage(torch_stages, stage):
    """Each stage, and each block of it, on its own: a conversion or layer error is named where it arises."""
    assert_stage_parity(*torch_stages, stage, "torchvision")


def test_torchvision_bf16_as_close_as_torch_autocast(torch_case, images):
    """Full-size ResNet50 in bfloat16 (bf16 products, float32 sums): popjax's features are about as close to the
    float32 reference as PyTorch's own bfloat16 autocast on the same weights and images."""
    out = torch_case["tmp"] / "converted_bf16"
    convert("torchvision", torch_case["tmp"] / "resnet50.safetensors", out)
    ours = Backbone.load(out, dtype=jnp.bfloat16).features(images)
    err = rel_err(ours, torch_case["features"], "torchvision bf16 features")
    torch_err = rel_err(torch_case["features_bf16"], torch_case["features"], "torch bf16 autocast features")
    assert err < 2 * torch_err


# --------------------------------------------------------------------------------------------- errors
def _save_safetensors(tensors, path):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v.numpy()) for k, v in tensors.items()}, str(path))


def test_missing_extra_and_misshapen_tensors_are_named(torch_case, tmp_path):
    sd = dict(torch_case["state_dict"])
    del sd["layer3.2.bn2.running_var"]
    _save_safetensors(sd, tmp_path / "missing.safetensors")
    with pytest.raises(WeightsError, match=r"missing tensors: batch_stats/conv4_block3/bn2/var"):
        convert("torchvision", tmp_path / "missing.safetensors", tmp_path / "o1")

    sd = dict(torch_case["state_dict"])
    sd["layer5.0.conv1.weight"] = sd["layer4.0.conv1.weight"]
    _save_safetensors(sd, tmp_path / "extra.safetensors")
    with pytest.raises(WeightsError, match=r"unexpected tensors: layer5\.0\.conv1\.weight"):
        convert("torchvision", tmp_path / "extra.safetensors", tmp_path / "o2")

    sd = dict(torch_case["state_dict"])
    sd["layer1.0.conv2.weight"] = sd["layer1.0.conv2.weight"][:, :, :1, :1]
    _save_safetensors(sd, tmp_path / "shape.safetensors")
    with pytest.raises(WeightsError, match=r"params/conv2_block1/conv2/kernel \(layer1\.0\.conv2\.weight\) has shape \(1, 1, 64, 64\), "
                                           r"expected \(3, 3, 64, 64\)"):
        convert("torchvision", tmp_path / "shape.safetensors", tmp_path / "o3")
    for name in ("o1", "o2", "o3"):
        assert not (tmp_path / name).exists()  # nothing half-written


@pytest.mark.slow
def test_wrong_format_and_corrupt_files(torch_case, keras_case, tmp_path):
    with pytest.raises(WeightsError, match="not a readable HDF5"):
        convert("keras", torch_case["tmp"] / "resnet50.pth", tmp_path / "a")
    with pytest.raises(WeightsError, match="not a ResNet50 v1.5"):
        convert("torchvision", _as_safetensors_of_keras(keras_case, tmp_path), tmp_path / "b")
    (tmp_path / "junk.pth").write_bytes(b"\x00not a torch file")
    with pytest.raises(WeightsError, match="not a loadable torch state dict"):
        convert("torchvision", tmp_path / "junk.pth", tmp_path / "c")
    with pytest.raises(WeightsError, match="no such file"):
        convert("keras", tmp_path / "absent.h5", tmp_path / "d")
    proc = subprocess.run([sys.executable, "-m", "popjax.cli", "convert-weights", "--format", "keras",
                           "--input", str(tmp_path / "absent.h5"), "--out", str(tmp_path / "e")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file" in proc.stderr


def _as_safetensors_of_keras(keras_case, tmp_path):
    from safetensors.numpy import save_file
    from popjax.weights import read_keras_h5

    path = tmp_path / "keras_names.safetensors"
    save_file({k.replace("/", "."): np.ascontiguousarray(v) for k, v in read_keras_h5(keras_case["full"]).items()},
              str(path))
    return path


def test_pth_is_loaded_without_pickle(tmp_path):
    torch = pytest.importorskip("torch")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"conv1.weight": torch.zeros(1), "x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="not a loadable torch state dict"):
        convert("torchvision", tmp_path / "evil.pth", tmp_path / "out")


@pytest.mark.slow
def test_random_backbone_says_so():
    b = Backbone.random(3)
    assert "NOT ImageNet-pretrained" in b.description and b.metadata["pretrained"] is False
    assert jax.tree.leaves(b.variables)[0].dtype == np.float32


@pytest.mark.slow
def test_small_calls_are_padded_to_a_bucket_not_to_the_batch():
    b = Backbone.random(3, batch_size=8)
    default = Backbone(jax.device_get(b.variables), b.metadata)   # the default constructor: a batch of 32 ...
    assert default.batch_size == 32 and default.buckets == call_buckets(32, b.mesh.size)
    assert len(default.buckets) > 2 and default.buckets[0] == b.mesh.size   # ... and smaller buckets below it
    assert Backbone(jax.device_get(b.variables), b.metadata, buckets=()).buckets == (32,)   # () = always padded
    assert b.buckets[-1] == b.batch_size and all(s % b.mesh.size == 0 for s in b.buckets)
    sizes = []
    compiled = b._features
    b._features = lambda variables, x: sizes.append(x.shape[0]) or compiled(variables, x)
    rng = np.random.default_rng(0)
    for n in (1, b.batch_size + 3):
        frames = rng.integers(0, 256, (n, 64, 48, 3), np.uint8)
        sizes.clear()
        got = b.features(frames)
        tail = n % b.batch_size or b.batch_size
        want_sizes = [b.batch_size] * (n // b.batch_size if tail != b.batch_size else n // b.batch_size - 1)
        assert sizes == want_sizes + [min(s for s in b.buckets if s >= tail)], n
        assert got.shape == (n, 2048) and got.dtype == np.float32
        # The same frames in full batches only (padded by hand): padding to a bucket changes nothing.
        padded = np.concatenate([frames, np.zeros((-n % b.batch_size,) + frames.shape[1:], np.uint8)])
        np.testing.assert_allclose(got, b.features(padded)[:n], rtol=1e-5, atol=1e-5 * np.abs(got).max())


@pytest.mark.slow
@pytest.mark.parametrize("case", ["keras_case", "torch_case"])
def test_accelerator_code_path_equals_the_cpu_path(case, images, request):
    """The convolutions a GPU or TPU runs (``kernels="xla"``: XLA's own, no CPU rewrites) give the CPU path's
    features in float32, for both variants (Keras v1, torchvision v1.5), and both match the reference."""
    c = request.getfixturevalue(case)
    fmt, src = ("keras", c["full"]) if case == "keras_case" else ("torchvision", c["tmp"] / "resnet50.safetensors")
    out = c["tmp"] / "converted_kernels"
    convert(fmt, src, out)
    backbones = {k: Backbone.load(out, kernels=k, batch_size=2) for k in ("cpu", "xla")}
    convs = {k: str(jax.make_jaxpr(b._features)(b.inference_variables, images[:1])).count("conv_general_dilated")
             for k, b in backbones.items()}
    assert convs["xla"] == 53 > convs["cpu"], convs       # every ResNet50 layer is XLA's own convolution
    cpu, xla = (backbones[k].features(images) for k in ("cpu", "xla"))
    assert rel_err(xla, cpu, f"{fmt} kernels xla vs cpu") < 1e-5
    assert rel_err(xla, c["features"], f"{fmt} kernels xla vs reference") < RTOL


@pytest.mark.slow
def test_unknown_kernels_fail_at_construction():
    b = Backbone.random(0)
    with pytest.raises(ValueError, match="kernels = 'gpu'"):
        Backbone(jax.device_get(b.variables), b.metadata, kernels="gpu")


@pytest.mark.slow
def test_dtype_auto_is_bfloat16_where_the_hardware_computes_it():
    from popjax import runtime
    from popjax.backbone import resolve_dtype

    assert resolve_dtype("auto") == (jnp.bfloat16 if runtime.native_bfloat16() else jnp.float32)
    assert resolve_dtype("float32") == jnp.float32 and resolve_dtype(jnp.bfloat16) == jnp.bfloat16
    for bad in ("float16", jnp.float16):
        with pytest.raises(ValueError, match="dtype = "):
            resolve_dtype(bad)
    b = Backbone.random(0, dtype="auto")
    assert b.dtype == resolve_dtype("auto")


CALIBRATION = """
import jax, numpy as np
from popjax import Backbone
b = Backbone.random(0, residual_scale_init=0.2, batch_size=2)
frames = np.random.default_rng(0).integers(0, 256, (4, 64, 48, 3), np.uint8)
got = jax.device_get(b.calibrate(frames).variables["batch_stats"])
model, variables = b.model.clone(bn_momentum=0.0), jax.device_get(b.variables)
x = jax.device_put(b.preprocess(frames), jax.devices()[0])
want = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[1])(variables, x)["batch_stats"]
errors = [float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))]
print(b.mesh.size, len(errors), max(errors))
"""


@pytest.mark.slow
def test_calibration_split_over_devices_has_the_statistics_of_all_frames():
    """``calibrate`` splits its train-mode pass over the devices (here 2); its BatchNorm statistics are those of
    one unsplit pass over all the frames on one device (flax's BatchNorm), layer by layer."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", CALIBRATION], env=env, capture_output=True, text=True,
                          check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    devices, layers, error = proc.stdout.split()
    assert (int(devices), int(layers)) == (2, 2 * 53) and float(error) < 1e-4, proc.stdout


@pytest.mark.slow
def test_a_compiled_backbone_runs_its_first_call_without_compiling():
    """``compile`` builds the full-batch program that every backbone of the same model, batch and devices
    then calls (as ``popjax extract`` does: compiled while calibrating, called by the backbone it saved)."""
    events = []

    def listen(name, secs, **kwargs):
        events.append(name)

    b = Backbone.random(3, batch_size=2, buckets=()).compile()
    loaded = Backbone(jax.device_get(b.variables), b.metadata, batch_size=2, buckets=())
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        loaded.features(np.zeros((2, 224, 224, 3), np.uint8))
        assert not [e for e in events if e.startswith("/jax/core/compile/")], events
        other = Backbone(jax.device_get(b.variables), b.metadata, batch_size=4, buckets=())   # not compiled: it does
        other.features(np.zeros((4, 224, 224, 3), np.uint8))
        assert [e for e in events if e.startswith("/jax/core/compile/")], events
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
