"""Datasets -> per-user client data (leave-one-out split)."""

from mrff_secure.data.client_data import AttributeTable, ClientData
from mrff_secure.data.kuaisar import load_kuaisar_r
from mrff_secure.data.recbole import load_recbole
from mrff_secure.data.synthetic import make_synthetic

__all__ = ["AttributeTable", "ClientData", "load_kuaisar_r", "load_recbole", "make_synthetic"]
