"""Test double of `torch_npu`, the Ascend adapter for PyTorch.

It copies the surface llama_hw touches and the library's real failure modes. Behaviour comes from
environment variables so that subprocess tests (the CLI) can use it as well as in-process tests:

- FAKE_TORCH_NPU_FAIL=cann: import fails exactly as torch_npu does when CANN is not sourced.
- FAKE_TORCH_NPU_VERSION: `__version__` (default: torch's own version, i.e. matching).
- FAKE_NPU_COUNT (default 8) and FAKE_NPU_NAME (default Ascend910B3): what `torch.npu` reports.

Importing it does what the real package does to torch: renames the PrivateUse1 device type to "npu"
(so `torch.device("npu", 0)` parses) and sets `torch.npu` to the device module. The fused ops the
patches call (`npu_fusion_attention`, `npu_scaled_masked_softmax`, `npu_rms_norm`, `npu_rotary_mul`,
`npu_swiglu`) are module attributes, as in the real package, computed by pure-PyTorch references.
"""

import os

import torch

if os.environ.get("FAKE_TORCH_NPU_FAIL") == "cann":
    raise ImportError("libhccl.so: cannot open shared object file: No such file or directory")

__version__ = os.environ.get("FAKE_TORCH_NPU_VERSION", torch.__version__.split("+")[0])

from torch_npu import npu  # noqa: E402
from torch_npu.reference_ops import (  # noqa: E402, F401
    npu_fusion_attention,
    npu_rms_norm,
    npu_rotary_mul,
    npu_scaled_masked_softmax,
    npu_swiglu,
)

if torch._C._get_privateuse1_backend_name() != "npu":
    torch.utils.rename_privateuse1_backend("npu")
torch.npu = npu


def _autoload():
    """Entry point torch calls on `import torch` (the `torch.backends` entry-point group)."""
