"""An ablation study: frame pooling x the frames a model sees, 3 seeds per cell, compared with paired
statistics on the same test videos (``popjax.study``).

    python train.py --config configs/study.py --workdir W --config.data.features=FEATURES_DIR
    python train.py --config configs/study.py:runlocal ...              # small and quick

Every cell writes a train.py work directory W/cells/<cell>/; the study W/study.md, W/study.json, W/study.png.
Any config field can be an axis (``config.study.grid``), or name the cells yourself (``config.study.variants``):

    config.study.grid = (("model.headline_pooling", ("last", "attention")),
                         ("data.word_vectors", ("", "/data/glove.840B.300d.txt")))
    config.study.variants = (("frozen", {"multimodal.finetune": False}), ("finetuned", {"multimodal.finetune": True}))
"""
from configs import default


def get_config(arg: str = ""):
    """``arg``: empty or ``runlocal`` (``default.runlocal``'s small size)."""
    if arg not in ("", "runlocal"):
        raise ValueError(f"configs/study.py:{arg}: expected nothing or 'runlocal'")
    config = default.get_config()
    config.kind = "study"
    config.model.modality = "video"
    config.study.grid = (("model.frame_pooling", ("mean", "attention")),
                         ("data.frames", ("first:6", "first:12", "all")))
    config.train.num_seeds = 3
    return default.runlocal(config) if arg == "runlocal" else config
