"""Table 1, headline: biLSTM + attention.

python train.py --config configs/headline_attention.py --workdir W --config.data.features=FEATURES_DIR
"""
from configs import default


def get_config():
    return default.variant("headline_attention")
