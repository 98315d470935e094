"""Table 1, multimodal: ResNet mean + biLSTM (trained encoders, new two-layer head).

python train.py --config configs/multimodal.py --workdir W --config.data.features=FEATURES_DIR
"""
from configs import default


def get_config():
    return default.variant("multimodal")
