import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wsss_zoo  # noqa: E402,F401  (applies compat, registers everything)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
