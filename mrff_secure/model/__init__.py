"""Backbones and baselines, each with its parameter roles declared by module structure."""

from torch import nn

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import AttributeSource
from mrff_secure.errors import ConfigError
from mrff_secure.model.fedpa import PA
from mrff_secure.model.hstu import HSTU
from mrff_secure.model.llama import LLaMA
from mrff_secure.model.ncf import NCF
from mrff_secure.model.sasrec import SASRec

MODELS = {"sasrec": SASRec, "hstu": HSTU, "llama": LLaMA, "ncf": NCF, "pa": PA}


def build_model(config: ModelConfig, data: AttributeSource) -> nn.Module:
    """The model named by `config.backbone`: a sequential backbone with or without MRFF, or a baseline."""
    if config.backbone not in MODELS:
        raise ConfigError(f"unknown backbone {config.backbone!r}")
    return MODELS[config.backbone](config, data)


__all__ = ["build_model", "MODELS", "SASRec", "HSTU", "LLaMA", "NCF", "PA"]
