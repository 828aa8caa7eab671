"""torch.hub entrypoints: smoothmix's pretrained models, from a plain checkout.

    model = torch.hub.load("path/to/smoothmix", "mnist_smoothmix_050", source="local")
    torch.hub.list("path/to/smoothmix", source="local")

One entrypoint per name of ``smoothmix.list_pretrained()`` (``mnist-smoothmix-0.50`` ->
``mnist_smoothmix_050``), generated from the index shipped in the package, so the two cannot
drift. Each returns the model (``Sequential(Normalize, net)``, eval mode, inputs in [0, 1]);
``smoothmix.pretrained_info(name)`` is its model card (sigma, certified figures). The
checkout's ``src/`` goes first on ``sys.path``, so this works where smoothmix is not
installed, and a checkout's weights/ are found without a download.
"""

import os
import sys

dependencies = ["torch"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from smoothmix.pretrained import (  # noqa: E402  (after the sys.path line above)
    hub_name,
    list_pretrained,
    load_pretrained,
    pretrained_info,
)


def _entrypoint(name):
    def load(device=None, source=None):
        model, _ = load_pretrained(name, device, source=source)
        return model

    info = pretrained_info(name)
    load.__name__ = load.__qualname__ = hub_name(name)
    load.__doc__ = (
        f"smoothmix pretrained model {name!r}: {info['arch']} trained on {info['dataset']} "
        f"with {info['method']} at sigma={info['sigma']} ({info['precision']}, seed "
        f"{info['seed']}); CERTIFY ACR {info['certify']['acr']} on "
        f"{info['certify']['images']}. Licence {info['licence']}. Arguments: device, source "
        "(None, 'local' or 'url')."
    )
    return load


for _name in list_pretrained():
    globals()[hub_name(_name)] = _entrypoint(_name)
