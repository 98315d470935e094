"""The paper's Table 1 (six rows) and a gradient-boosted-trees baseline, each with a random search on validation and several seeds.

    python train.py --config configs/table1.py --workdir W --config.data.features=FEATURES_DIR   # every row
    python train.py --config configs/table1.py:video_mean --workdir W --config.data.features=F   # one row
    python train.py --config configs/table1.py:video_mean,runlocal ...                           # small and quick

Every row writes a train.py work directory W/<row>/; the whole table also W/table1.md and W/table1.json.
"""
import ml_collections

from configs import default

# Each row's model settings (over configs/default.py's config.model); a multimodal row concatenates the
# trained encoders of two unimodal rows; the paper's accuracy % and Spearman on its 37k Facebook videos.
ROWS = {
    "video_mean": dict(model=dict(modality="video", frame_pooling="mean"), paper=(68.17, 0.524)),
    "video_attention": dict(model=dict(modality="video", frame_pooling="attention"), paper=(68.87, 0.526)),
    "headline_lstm": dict(model=dict(modality="headline", headline_pooling="last"), paper=(69.47, 0.542)),
    "headline_attention": dict(model=dict(modality="headline", headline_pooling="attention"), paper=(68.70, 0.525)),
    "multimodal": dict(model=dict(modality="multimodal", frame_pooling="mean", headline_pooling="last"),
                       encoders=("video_mean", "headline_lstm"), paper=(71.94, 0.612)),
    "multimodal_attention": dict(model=dict(modality="multimodal", frame_pooling="attention",
                                            headline_pooling="attention"),
                                 encoders=("video_attention", "headline_attention"), paper=(72.72, 0.607)),
    # Not in the paper: gradient-boosted trees on the mean frame feature and the mean word vector (popjax.gbdt).
    "gbdt": dict(model=dict(modality="multimodal"), learner="gbdt"),
}


def get_config(arg: str = ""):
    """``arg``: empty, a row name, ``runlocal`` or ``ROW,runlocal``. Every row (``kind = "table1"``, 16 search
    trials and 5 seeds per row), or that row alone as a ``train`` config; ``runlocal``: at ``default.runlocal``'s
    small size."""
    options = [a for a in arg.split(",") if a]
    local = "runlocal" in options
    row = [a for a in options if a != "runlocal"]
    if len(row) > 1 or (row and row[0] not in ROWS):
        raise ValueError(f"configs/table1.py:{arg}: expected a row of {list(ROWS)} and/or 'runlocal'")
    config = default.get_config()
    if row:   # the row's model settings; the search and seeds of configs/default.py
        config.model.update(ROWS[row[0]]["model"])
        config.learner = ROWS[row[0]].get("learner", "neural")
    else:
        config.search.num_trials = 16
        config.train.num_seeds = 5
        config.kind = "table1"
        config.table1.variants = tuple(ROWS)
        config.table1.rows = ml_collections.ConfigDict(ROWS)
    return default.runlocal(config) if local else config
