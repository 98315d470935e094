"""The paper's Table 1: all six variants, each with a random search on validation and several seeds.

python train.py --config configs/table1.py --workdir W --config.data.features=FEATURES_DIR
Writes W/<variant>/ (a train.py work directory each), W/table1.md and W/table1.json.
"""
from configs import default


def get_config():
    config = default.get_config()
    config.kind = "table1"
    config.variants = ("video_mean", "video_attention", "headline_lstm", "headline_attention",
                       "multimodal", "multimodal_attention")
    config.search.num_trials = 16
    config.train.num_seeds = 5
    return config
