"""The model side's one factory: timm models (untrained, or from a local weights file), or a
user's ``package.module:factory``; and how many CPU threads a model gets beside the loader.

Nothing is downloaded: timm models are built with ``pretrained=False`` and a pretrained file is
read from disk (``--pretrained-file``); hub names are refused.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from typing import TYPE_CHECKING, Callable

import torch

from feeding import checks

if TYPE_CHECKING:
    from training.config import FitConfig


def build_model(name: str, num_classes: int) -> torch.nn.Module:
    """An untrained model: a timm name, or ``"package.module:factory"`` called with ``num_classes``.

    A factory is given ``num_classes=`` when its signature accepts it. Nothing is downloaded:
    timm models are created with ``pretrained=False``, and hub names (``hf-hub:...``) are refused.
    """
    if ":" in name:
        return _from_factory(name, num_classes)
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm model {name!r}{hint} (or give 'package.module:factory')")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _from_factory(name: str, num_classes: int) -> torch.nn.Module:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as err:
        raise ValueError(f"model {name!r}: cannot import module {module_name!r} ({err})") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model {name!r}: {module_name} has no callable {attr!r}")
    model = factory(num_classes=num_classes) if _accepts_num_classes(factory) else factory()
    if not isinstance(model, torch.nn.Module):
        kind = type(model).__name__
        raise ValueError(f"model {name!r}: the factory returned {kind}, not a torch.nn.Module")
    return model


def _accepts_num_classes(factory: Callable) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: assume the timm convention
        return True
    return any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in parameters)


def model_threads(cores: int, workers: int) -> int:
    """Intra-op threads for the model when ``workers`` loader processes share ``cores`` CPU cores.

    Each worker keeps a core busy, so the model gets the cores they leave free, and at least one.
    """
    checks.count("cores", cores)
    checks.count("workers", workers, minimum=0)
    return max(1, cores - workers)


ACCELERATOR_THREADS = 1  # as torchrun's OMP_NUM_THREADS=1


def training_threads(device: str, cores: int, workers: int) -> int:
    """torch's intra-op threads in the training process.

    On the CPU the model computes there: all ``cores`` with no workers (loading and training
    take turns), else the cores the workers leave (``model_threads``). On an accelerator (CUDA,
    the simulated ``sim:R``) the process's own CPU work is receiving and copying batches and
    launching kernels: more threads do not speed it up, and their spin-waits take the cores the
    loader's workers need (measured on 2 cores: 2 threads cut a thread pool's feed from 740 to
    360 img/s). One thread, as torchrun sets.
    """
    if str(device) != "cpu":
        return ACCELERATOR_THREADS
    return cores if workers == 0 else model_threads(cores, workers)


def create_model(config: FitConfig, num_classes: int, announce: bool = True) -> torch.nn.Module:
    """The model to train; ``announce``: print what a pretrained file contributed."""
    if config.pretrained_file is None:
        model = build_model(config.model, num_classes)
    else:
        model = pretrained_model(config.model, num_classes, config.pretrained_file, announce)
    if config.freeze_backbone:
        freeze_backbone(model, config.model)
    return model


def read_weights(file: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read by timm's loader: .safetensors, or .pt/.pth through torch's
    safe unpickler, unwrapped from 'state_dict'/'model' (EMA weights first) and DDP's 'module.' prefix."""
    from timm.models import load_state_dict

    try:
        weights = load_state_dict(file)
    except Exception as err:  # torch and safetensors raise many kinds for a file that is not theirs
        if "Unsupported global" in str(err):  # a real PyTorch file, but with pickled Python objects in it
            raise ValueError(f"{file} holds pickled Python objects, not only weights (torch's safe loader "
                             "refuses them); save the model's state_dict() instead") from None
        raise ValueError(f"{file} is not a PyTorch weights file (.pt/.pth or .safetensors)") from None
    tensors = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)} if isinstance(weights, dict) else {}
    if not tensors:
        raise ValueError(f"{file} is not a PyTorch weights file (.pt/.pth or .safetensors): it holds no tensors")
    return tensors


def pretrained_model(name: str, num_classes: int, file: str, announce: bool = True) -> torch.nn.Module:
    """A timm model with the tensors of a local file that fit it by name and shape.

    What does not fit (typically a classifier of another class count) is left out, and said; a
    file of which no weight fits is refused, since the run would silently train from scratch.
    """
    model = build_model(name, num_classes)  # an unknown name raises, naming close matches
    try:
        weights = read_weights(file)
    except ValueError as err:
        raise ValueError(f"--pretrained-file does not load into {name}: {err}") from None
    own = model.state_dict()
    fits = {k: v for k, v in weights.items() if k in own and v.shape == own[k].shape}
    if not any(v.is_floating_point() for v in fits.values()):  # BN's integer num_batches_tracked is no weight
        raise ValueError(f"--pretrained-file {file} does not load into {name}: none of its {len(weights)} "
                         f"tensors fits the model's by name and shape (file: {_few(list(weights))}; "
                         f"model: {_few(list(own))})")
    model.load_state_dict(fits, strict=False)
    if announce:
        print(f"pretrained: loaded {len(fits)} of {len(own)} tensors from {file}"
              f"{_left_out(model, own, weights, fits)}")
    return model


def _few(names: list[str], shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _left_out(model: torch.nn.Module, own: dict, weights: dict, fits: dict) -> str:
    """' (left out: NAMES (why); ...)' for the model's tensors that kept their initial values, or ''."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_prefixes = tuple(f"{n}." for n, m in model.named_modules() if m is head and n)
    reasons: dict[str, list[str]] = {}
    for key in own:
        if key in fits:
            continue
        if key not in weights:
            reason = "not in the file"
        elif key.startswith(head_prefixes):
            reason = "classifier of another class count"
        else:
            reason = "another shape in the file"
        reasons.setdefault(reason, []).append(key)
    unused = sum(1 for key in weights if key not in own)
    parts = [f"{_few(keys)} ({reason})" for reason, keys in reasons.items()]
    if unused:
        parts.append(f"{unused} of the file's tensors are not in the model")
    return f" (left out: {'; '.join(parts)})" if parts else ""


def freeze_backbone(model: torch.nn.Module, name: str) -> None:
    """Only the classifier trains: the backbone gets no gradients, and its norm layers keep their
    running statistics (in train mode they would drift towards this data's batches, changing the
    features the head is fitted to)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Module) or not any(True for _ in head.parameters()):
        raise ValueError(f"--freeze-backbone: model {name!r} has no classifier head (get_classifier())")
    model.requires_grad_(False)
    head.requires_grad_(True)
    in_head = set(head.modules())
    # Every norm layer with running statistics (batch norms, tracking instance norms): what drifts in train mode.
    norms = [m for m in model.modules() if getattr(m, "track_running_stats", False) and m not in in_head]

    def norms_in_eval(module, inputs):  # runs before every forward, after any model.train()
        for norm in norms:
            norm.eval()

    model.register_forward_pre_hook(norms_in_eval)
