"""Flax linen modules of the paper: ResNet50, frame pooling, headline encoder, popularity model."""
from popjax.models.headline import HeadlineEncoder
from popjax.models.pooling import (Attention, AttentionPooling, MeanPooling, Standardize, frame_pooling,
                                   masked_softmax)
from popjax.models.popularity import MODALITIES, Head, PopularityModel, build_model
from popjax.models.resnet import ResNet, ResNet50

__all__ = ["Attention", "AttentionPooling", "Head", "HeadlineEncoder", "MODALITIES", "MeanPooling",
           "PopularityModel", "ResNet", "ResNet50", "Standardize", "build_model", "frame_pooling", "masked_softmax"]
