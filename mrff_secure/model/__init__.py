"""Backbones and the MRFF block."""

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.errors import ConfigError
from mrff_secure.model.sasrec import SASRec


def build_model(config: ModelConfig, data: ClientData) -> SASRec:
    """The backbone named by `config.backbone`, with or without MRFF."""
    if config.backbone == "sasrec":
        return SASRec(config, data)
    raise ConfigError(f"unknown backbone {config.backbone!r}")


__all__ = ["build_model", "SASRec"]
