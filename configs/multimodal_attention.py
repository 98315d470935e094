"""Table 1, multimodal: + attention on both.

python train.py --config configs/multimodal_attention.py --workdir W --config.data.features=FEATURES_DIR
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.modality = 'multimodal'
    config.model.frame_pooling = 'attention'
    config.model.headline_pooling = 'attention'
    return config
