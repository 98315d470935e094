"""What ``python train.py`` runs: one model, the six Table-1 variants, or the whole demo."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from popjax import experiment
from popjax.backbone import DTYPES, image_size_problem


def run(config, workdir) -> dict:
    kind = config.get("kind", "train")
    if kind == "train":
        return experiment.train_and_evaluate(config, workdir)
    if kind == "table1":
        return experiment.table1(config, workdir)
    if kind == "study":
        return study(config, workdir)
    if kind == "demo":
        return demo(config, workdir)
    raise experiment.ConfigError(f"config.kind = {kind!r}; expected 'train', 'table1', 'study' or 'demo'")


def study(config, workdir) -> dict:
    """Every cell of ``config.study`` trained, then W/study.json, study.md and study.png (``popjax.study``)."""
    import jax

    from popjax import study as study_lib

    try:
        study_lib.check(config)
    except ValueError as e:
        raise experiment.ConfigError(str(e)) from None
    for _, settings in study_lib.cells(config):   # every cell's config checked before the first trains
        experiment.check_config(study_lib.cell_config(config, settings))
    result = study_lib.run(config, workdir, experiment.train_and_evaluate)
    if jax.process_index() == 0:
        paths = study_lib.write(result, workdir, title=f"Study {Path(workdir).name}")
        print(Path(paths["md"]).read_text() + f"\n{', '.join(paths.values())}")
    return result


def demo(config, workdir) -> dict:
    """SYNTHETIC corpus -> features -> Table 1 -> explanations and their faithfulness, in ``workdir``."""
    from popjax.data.demo import write_corpus
    from popjax.explain import faithfulness
    from popjax.explain.explanation import Explainer, write_explanation
    from popjax.trained import TrainedModel

    W = Path(workdir)
    W.mkdir(parents=True, exist_ok=True)
    timings = {}

    def stage(name, fn):
        t = time.time()
        print(f"[popjax demo] {name} ...", flush=True)
        result = fn()
        timings[name] = round(time.time() - t, 1)
        print(f"[popjax demo] {name}: {timings[name]} s", flush=True)
        return result

    d = config.demo
    planned = config.copy_and_resolve_references()   # its training settings checked before any stage runs
    with planned.unlocked():
        planned.data.features = str(W / "features")
    experiment.check_config(planned)
    if d.dtype not in DTYPES:
        raise experiment.ConfigError(f"config.demo.dtype = {d.dtype!r}: expected one of {DTYPES}")
    if image_size_problem(d.image_size):
        raise experiment.ConfigError(f"config.demo.image_size = {d.image_size!r}: {image_size_problem(d.image_size)}")
    manifest = stage("corpus", lambda: write_corpus(W / "demo", d.num_videos, d.seed))
    report = stage("features", lambda: _features(manifest, W / "features", d, config.progress))
    with config.unlocked():
        config.data.features = str((W / "features").absolute())
    table = stage("table1", lambda: experiment.table1(config, W))

    def explanations():
        trained = TrainedModel.load(W / "multimodal_attention")
        # One compiled program for every batch, of one video per device: the videos split over the devices,
        # and the test split's last batches carry the fewest padding copies.
        explainer = Explainer(trained, batch=trained.backbone.mesh.size)
        faith = faithfulness.evaluate(explainer, manifest, W / "demo" / "truth.jsonl")
        experiment.publish(W / "faithfulness.json", faith)
        truth = faithfulness.read_truth(W / "demo" / "truth.jsonl")
        from popjax.data.manifest import read_manifest

        test = [r for r in read_manifest(manifest).rows if r.split == "test"]
        examples = [r for r in test if truth[r.id]["cues"] and truth[r.id]["cue_words"]][:1]
        examples += [r for r in test if truth[r.id]["cues"] and not truth[r.id]["cue_words"]][:1]
        examples += [r for r in test if not truth[r.id]["cues"]][:max(d.explain_examples - len(examples), 0)]
        examples = examples[:d.explain_examples]
        explained = explainer.explain_files([r.video for r in examples], [r.headline for r in examples])
        written = [write_explanation(explanation, frames, W / "explanations" / r.id)["figure"]
                   for r, (explanation, frames) in zip(examples, explained)]
        return faith, written

    faith, figures = stage("explanations", explanations)
    experiment.publish(W / "timings.json", timings)
    print("\n" + experiment.format_table1(table))
    print(json.dumps({k: faith[k] for k in ("pointing_game", "frame_attention_hit", "word_attention_hit",
                                            "deletion_top", "deletion_random")}, indent=1))
    print(f"\nbackbone: {report.get('backbone')}\n"
          f"corpus (SYNTHETIC): {W / 'demo'}\nfeatures: {W / 'features'}\n"
          f"models: {', '.join(str(W / r['variant']) for r in table['rows'])}\n"
          f"table: {W / 'table1.md'}\nfaithfulness: {W / 'faithfulness.json'}\n"
          f"explanations: {', '.join(figures)}\ntimings (s): {timings}")
    return {"table1": table, "faithfulness": faith, "timings": timings}


def _features(manifest: Path, out: Path, d, progress: bool) -> dict:
    """``popjax extract`` of the demo corpus, as its own process (as a user runs it), with the command's process
    settings (freed memory kept: ResNet50's per-call buffers stop page-faulting), which ``train.py``'s
    compile-heavy training stage runs faster without. In a multi-process run, in this process (all join)."""
    import jax

    from popjax.extract import ExtractError, Settings, extract

    if jax.process_count() > 1:
        return extract(manifest, out, weights=d.weights or None, batch_size=d.batch_size, progress=progress,
                       dtype=d.dtype, settings=Settings(image_size=d.image_size))
    cmd = [sys.executable, "-m", "popjax.cli", "extract", "--manifest", str(manifest), "--out", str(out),
           "--batch-size", str(d.batch_size), "--dtype", d.dtype, "--image-size", str(d.image_size),
           *(["--weights", str(d.weights)] if d.weights else []),
           *([] if progress else ["--quiet"])]
    code = subprocess.run(cmd, check=False).returncode
    if code not in (0, 1) or not (out / "report.json").is_file():   # 1: some rows rejected (listed, not lost)
        raise ExtractError(f"popjax extract of the demo corpus failed (exit {code}); its message is above")
    return json.loads((out / "report.json").read_text())
