"""Table 1, video frames: + attention.

python train.py --config configs/video_attention.py --workdir W --config.data.features=FEATURES_DIR
"""
from configs import default


def get_config():
    return default.variant("video_attention")
