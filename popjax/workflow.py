"""What ``python train.py`` runs: one model, the six Table-1 variants, or the whole demo."""
from __future__ import annotations

import json
import time
from pathlib import Path

from popjax import experiment


def run(config, workdir) -> dict:
    kind = config.get("kind", "train")
    if kind == "train":
        return experiment.train_and_evaluate(config, workdir)
    if kind == "table1":
        return experiment.table1(config, workdir)
    if kind == "demo":
        return demo(config, workdir)
    raise ValueError(f"config.kind = {kind!r}; expected 'train', 'table1' or 'demo'")


def demo(config, workdir) -> dict:
    """SYNTHETIC corpus -> features -> Table 1 -> explanations and their faithfulness, in ``workdir``."""
    from popjax.data.demo import write_corpus
    from popjax.explain import faithfulness
    from popjax.explain.explanation import Explainer, write_explanation
    from popjax.extract import extract
    from popjax.predict import TrainedModel

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
    manifest = stage("corpus", lambda: write_corpus(W / "demo", d.num_videos, d.seed))
    report = stage("features", lambda: extract(manifest, W / "features", weights=d.weights or None,
                                               batch_size=d.batch_size, progress=config.progress))
    with config.unlocked():
        config.data.features = str((W / "features").absolute())
    table = stage("table1", lambda: experiment.table1(config, W))

    def explanations():
        trained = TrainedModel.load(W / "multimodal_attention")
        explainer = Explainer(trained, batch=4)  # one compiled program for every batch
        faith = faithfulness.evaluate(explainer, manifest, W / "demo" / "truth.jsonl")
        experiment.write_json(W / "faithfulness.json", faith)
        truth = faithfulness.read_truth(W / "demo" / "truth.jsonl")
        from popjax.data.manifest import read_manifest

        test = [r for r in read_manifest(manifest).rows if r.split == "test"]
        examples = [r for r in test if truth[r.id]["cues"] and truth[r.id]["cue_words"]][:1]
        examples += [r for r in test if truth[r.id]["cues"] and not truth[r.id]["cue_words"]][:1]
        examples += [r for r in test if not truth[r.id]["cues"]][:max(d.explain_examples - len(examples), 0)]
        written = []
        for r in examples[:d.explain_examples]:
            explanation, frames = explainer.explain_file(r.video, r.headline)
            written.append(write_explanation(explanation, frames, W / "explanations" / r.id)["figure"])
        return faith, written

    faith, figures = stage("explanations", explanations)
    experiment.write_json(W / "timings.json", timings)
    print("\n" + experiment.format_table1(table))
    print(json.dumps({k: faith[k] for k in ("pointing_game", "frame_attention_hit", "word_attention_hit",
                                            "deletion_top", "deletion_random")}, indent=1))
    print(f"\nbackbone: {report.get('backbone')}\n"
          f"corpus (SYNTHETIC): {W / 'demo'}\nfeatures: {W / 'features'}\n"
          f"models: {', '.join(str(W / r['variant']) for r in table['rows'])}\n"
          f"table: {W / 'table1.md'}\nfaithfulness: {W / 'faithfulness.json'}\n"
          f"explanations: {', '.join(figures)}\ntimings (s): {timings}")
    return {"table1": table, "faithfulness": faith, "timings": timings}
