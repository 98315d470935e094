"""Table 1, video frames: ResNet50 mean (paper baseline).

python train.py --config configs/video_mean.py --workdir W --config.data.features=FEATURES_DIR
"""
from configs import default


def get_config():
    return default.variant("video_mean")
