"""Flax linen modules of the paper: ResNet50, frame pooling, headline encoder, popularity model."""
from popjax.models.headline import HEADLINE_POOLINGS, HeadlineEncoder
from popjax.models.pooling import (FRAME_POOLINGS, Attention, AttentionPooling, MeanPooling, Standardize,
                                   masked_softmax)
from popjax.models.popularity import (MODALITIES, Head, PopularityModel, build_model, encoder_settings,
                                      model_settings)
from popjax.models.resnet import ResNet, ResNet50

__all__ = ["Attention", "AttentionPooling", "FRAME_POOLINGS", "HEADLINE_POOLINGS", "Head", "HeadlineEncoder",
           "MODALITIES", "MeanPooling", "PopularityModel", "ResNet", "ResNet50", "Standardize", "build_model",
           "encoder_settings", "masked_softmax", "model_settings"]
