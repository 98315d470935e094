"""Table 1, headline: biLSTM, last states (paper baseline [11]).

python train.py --config configs/headline_lstm.py --workdir W --config.data.features=FEATURES_DIR
"""
from configs import default


def get_config():
    return default.variant("headline_lstm")
