"""Table 1, multimodal: + attention on both.

python train.py --config configs/multimodal_attention.py --workdir W --config.data.features=FEATURES_DIR
"""
from configs import default


def get_config():
    return default.variant("multimodal_attention")
