"""Table 1, headline: biLSTM + attention.

python train.py --config configs/headline_attention.py --workdir W --config.data.features=FEATURES_DIR
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.modality = 'headline'
    config.model.headline_pooling = 'attention'
    return config
