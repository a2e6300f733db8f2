import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

KUAISAR_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "KuaiSAR-R"


@pytest.fixture(scope="session")
def kuaisar_dir() -> Path:
    if not (KUAISAR_DIR / "df.csv").is_file():
        pytest.skip(f"KuaiSAR-R not found at {KUAISAR_DIR} (needs ../shared beside the checkout)")
    return KUAISAR_DIR
