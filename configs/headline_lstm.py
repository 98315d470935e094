"""Table 1, headline: biLSTM, last states (paper baseline [11]).

python train.py --config configs/headline_lstm.py --workdir W --config.data.features=FEATURES_DIR
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.modality = 'headline'
    config.model.headline_pooling = 'last'
    return config
