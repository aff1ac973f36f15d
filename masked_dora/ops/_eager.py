"""When an op may skip ``torch.library``'s custom-op machinery in eager mode.

Each op is a ``torch.library.custom_op`` (its schema, defined once, is what ``torch.compile``,
``torch.export``, FakeTensor and ``opcheck`` see). Calling one in eager mode costs 30-50 us of
Python per call on top of the kernel (the custom-op wrapper, its autograd shim, the dynamo-disable
guard); a training layer calls three ops (row norm, forward, backward), which made the host, not the
GPU, the bottleneck of a masked-DoRA layer at 1024 tokens on an H100 (bench/results/2026-11-27-h100-run2.md).

So in plain eager mode the public entry points call the ops' bodies directly (the same functions the
custom ops wrap, through the same dispatcher, with the same autograd formula as an
``autograd.Function``); everywhere else the custom op runs. "Plain eager" is checked per call and is
deliberately narrow: not compiling or exporting, no TorchDispatchMode (FakeTensor, FlopCounter, ...)
or TorchFunctionMode active, no functorch transform (vmap, grad, functionalize), and every tensor a
plain ``torch.Tensor`` (or ``nn.Parameter``) on a CPU or CUDA device (no meta tensors, no subclasses
such as DTensor).
"""

from __future__ import annotations

from typing import Callable, Optional, Type

import torch
from torch import Tensor, nn

_PLAIN_TYPES = (Tensor, nn.Parameter)
_DEVICES = ("cpu", "cuda")


def plain_eager(*tensors: Optional[Tensor]) -> bool:
    """True where the ops' bodies may run directly instead of through their custom ops (see above)."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled() or torch._C._are_functorch_transforms_active()):
        return False
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN_TYPES or t.device.type not in _DEVICES):
            return False
    return True


def eager_function(name: str, body: Callable, setup_context: Callable, backward: Callable
                   ) -> Type[torch.autograd.Function]:
    """An ``autograd.Function`` running a custom op's ``body`` with the op's own ``setup_context`` and
    ``backward`` (the ones registered with ``register_autograd``), without the custom-op machinery.

    Its ``forward(ctx, *inputs)`` calls ``setup_context`` itself: a Function with a separate
    ``setup_context`` binds its arguments through ``inspect.signature`` on every ``apply`` (~20 us).
    """

    def forward(ctx, *inputs):
        output = body(*inputs)
        setup_context(ctx, inputs, output)
        return output

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                   "backward": staticmethod(backward),
                                                   "__doc__": f"{body.__qualname__} as an autograd.Function "
                                                              f"(see masked_dora.ops._eager)"})
