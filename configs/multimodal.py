"""Table 1, multimodal: ResNet mean + biLSTM (trained encoders, new two-layer head).

python train.py --config configs/multimodal.py --workdir W --config.data.features=FEATURES_DIR
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.modality = 'multimodal'
    config.model.frame_pooling = 'mean'
    config.model.headline_pooling = 'last'
    return config
