"""Any torchvision classification model, by name (``torchvision.models.list_models()``).

The model is built with ``torchvision.models.get_model(name, weights=None, num_classes=...)``; its
module paths are torchvision's own (``layer4``, ``avgpool``, ``fc`` for ResNets; ``features``,
``classifier`` for VGG, MobileNet, EfficientNet, ConvNeXt; see ``print(model)``).

* **Channels.** When the data does not have 3 channels, the input convolution is replaced by one
  with the right number of input channels. Supported: every model whose input convolution is
  ``conv1`` (ResNet, ResNeXt, Wide ResNet), ``conv1.0`` (ShuffleNet), ``features.0`` or
  ``features.0.0`` (VGG, AlexNet, SqueezeNet, MobileNet, EfficientNet, ConvNeXt, Swin),
  ``features.conv0`` (DenseNet), ``stem.0`` / ``stem.0.0`` (RegNet, MaxViT), ``layers.0`` (MNASNet),
  ``conv_proj`` (ViT) and, without pretrained weights, ``conv1.conv`` / ``Conv2d_1a_3x3.conv``
  (GoogLeNet, Inception v3). New random weights have the standard deviation of the replaced ones;
  pretrained RGB weights are averaged over channels and rescaled by ``3 / in_channels``.
* **Auxiliary heads.** GoogLeNet and Inception v3 are built without auxiliary classifiers so that
  the forward pass returns logits in training mode too.
* **Pretrained weights** (``weights``) are loaded through torchvision, which downloads them into the
  torch hub cache (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch``) unless they are
  there already. The file is always read with ``weights_only=True`` (see :func:`weights_only_loads`),
  so a cache file holding anything but tensors is refused and no code in it runs. The classification head is then replaced by a new ``Linear`` when the dataset has a
  different number of classes.
* **Image size.** Most models accept any reasonably large image through adaptive pooling; ViT and
  MaxViT need 224x224, Inception v3 at least 75x75 and AlexNet 63x63. Small images (28x28, 32x32) are downsampled 32x by
  ImageNet models, which works but wastes capacity: prefer ``resnet`` or ``plain_cnn`` there.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
from collections.abc import Iterator
from typing import Any

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from kdframe import ComponentError, DataInfo, ModelSpec, Params, suggest

#: Paths of the input convolution in torchvision's classification models.
INPUT_CONV_PATHS = (
    "conv1",
    "conv1.0",
    "conv1.conv",
    "features.0",
    "features.0.0",
    "features.conv0",
    "stem.0",
    "stem.0.0",
    "layers.0",
    "conv_proj",
    "Conv2d_1a_3x3.conv",
)
#: Models whose forward returns auxiliary outputs in training mode unless built without them.
AUX_LOGIT_MODELS = ("googlenet", "inception_v3")
#: What a failed download or a bad cache file raises (URLError is an OSError; a hash mismatch or a
#: truncated file is a RuntimeError).
DOWNLOAD_ERRORS = (OSError, RuntimeError, EOFError, pickle.UnpicklingError)


@functools.cache
def available_models() -> tuple[str, ...]:
    """Names of torchvision's classification models."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _weights_enum(name: str) -> Any:
    import torchvision

    return torchvision.models.get_model_weights(name)


class TorchvisionParams(Params):
    """Parameters of ``torchvision``."""

    name: str = Field(
        description="torchvision classification model, e.g. 'resnet18', 'mobilenet_v3_small', "
        "'efficientnet_b0' (torchvision.models.list_models() lists them)."
    )
    num_classes: int | None = Field(
        None, ge=1, description="Number of output logits; null takes it from the dataset."
    )
    in_channels: int | None = Field(
        None,
        ge=1,
        description="Input channels; null takes them from the dataset. Other than 3, the input "
        "convolution is replaced.",
    )
    weights: str | None = Field(
        None,
        description="Pretrained weights: 'DEFAULT' or a name of the model's weights enum such as "
        "'IMAGENET1K_V1'; null trains from scratch. They are downloaded into the torch hub cache "
        "($TORCH_HOME) unless already there.",
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        names = available_models()
        if name not in names:
            raise ValueError(
                f"unknown torchvision model '{name}'.{suggest(name, names)} "
                f"torchvision.models.list_models() lists the {len(names)} classification models"
            )
        return name

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, weights: str | None, info: ValidationInfo) -> str | None:
        name = info.data.get("name")
        if weights is None or name is None:  # a bad name is reported by its own validator
            return weights
        enum = _weights_enum(name)
        choices = list(dict.fromkeys(["DEFAULT", *enum.__members__]))
        prefix, _, member = weights.rpartition(".")  # accept 'ResNet18_Weights.IMAGENET1K_V1' too
        if prefix and prefix != enum.__name__:
            raise ValueError(f"weights '{weights}' are not {name}'s; its weights are {enum.__name__}.*")
        if member not in choices:
            raise ValueError(
                f"unknown weights '{weights}' for {name}.{suggest(member, choices)} "
                f"Available: {', '.join(choices)}"
            )
        return weights


def _replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def _input_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first convolution, if it sits at one of the known input paths."""
    first = next(
        ((path, module) for path, module in model.named_modules() if isinstance(module, nn.Conv2d)),
        None,
    )
    if first is None or first[0] not in INPUT_CONV_PATHS:
        return None
    return first  # type: ignore[return-value]


def _adapt_input_channels(model: nn.Module, name: str, in_channels: int, pretrained: bool) -> None:
    found = _input_conv(model)
    if found is None or getattr(model, "transform_input", False):
        raise ComponentError(
            f"torchvision model '{name}' expects 3-channel images and kdframe does not know how to "
            f"change its input layer to {in_channels} channels. Use a dataset with 3 channels (e.g. "
            "repeat the grey channel), or another model (resnet*, vgg*, mobilenet*, efficientnet*, "
            "convnext* and most others are supported)."
        )
    path, old = found
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    with torch.no_grad():
        if pretrained:
            # Keep the response to a grey (or any) image: spread the mean RGB filter over the channels.
            mean = old.weight.mean(dim=1, keepdim=True) * (old.in_channels / in_channels)
            new.weight.copy_(mean.expand_as(new.weight))
        else:
            new.weight.normal_(0.0, float(old.weight.std()))
        if old.bias is not None:
            new.bias.copy_(old.bias)  # type: ignore[union-attr]
    _replace_module(model, path, new)


def _resize_head(model: nn.Module, name: str, num_classes: int) -> None:
    """Swap the last ``Linear`` (the classifier of every torchvision model that has one) for a new
    one with ``num_classes`` outputs."""
    last = None
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (path, module)
    if last is None:
        raise ComponentError(
            f"Pretrained '{name}' has no Linear classification head that kdframe can resize to "
            f"{num_classes} classes. Train it from scratch (weights: null) or pick another model."
        )
    path, old = last
    _replace_module(model, path, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def _drop_aux_heads(model: nn.Module) -> None:
    """Make GoogLeNet / Inception v3 return plain logits in training mode too."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attribute in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, attribute):
                setattr(model, attribute, None)


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within the block every ``torch.load`` runs with ``weights_only=True``, even where a library
    passes ``weights_only=False``: torchvision's builders load the hub cache through
    ``torch.hub.load_state_dict_from_url``, whose default is the unsafe ``False``. This uses PyTorch's
    own switch, the ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` environment variable."""
    names = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    previous = {key: os.environ.get(key) for key in names}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # both set is an error in torch.load
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _pretrained(name: str, weights: str) -> tuple[nn.Module, int]:
    """The model with pretrained weights, and its number of classes."""
    import torchvision

    enum = _weights_enum(name)
    member = weights.rsplit(".", 1)[-1]
    chosen = enum.DEFAULT if member == "DEFAULT" else enum[member]
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(chosen.url))
    try:
        with weights_only_loads():
            model = torchvision.models.get_model(name, weights=chosen, progress=False)
    except pickle.UnpicklingError as error:  # weights_only refused something in the file
        raise ComponentError(
            f"The pretrained-weights file {cached} for torchvision model '{name}' holds Python objects "
            "other than tensors, so kdframe refused to load it (weights files are always read with "
            "weights_only=True, so no code in them runs). The file may be corrupt or malicious: delete "
            f"it and download {chosen.url} again, or set weights to null."
        ) from None
    except DOWNLOAD_ERRORS as error:  # no network, a partial download, a corrupt cache file
        raise ComponentError(
            f"Pretrained weights {chosen} for torchvision model '{name}' could not be downloaded or "
            f"loaded ({type(error).__name__}: {error}). Without internet, pre-populate the torch hub "
            f"cache: download {chosen.url} on a machine that has internet and copy it into "
            f"{os.path.join(torch.hub.get_dir(), 'checkpoints')} (set $TORCH_HOME to use another "
            "cache folder). Or set weights to null and start from a checkpoint (the model's "
            "'checkpoint' in the schedule)."
        ) from error
    return model, len(chosen.meta["categories"])


def build(params: TorchvisionParams, data_info: DataInfo) -> nn.Module:
    """Build the named torchvision model; unset params come from ``data_info``."""
    import torchvision

    num_classes = params.num_classes if params.num_classes is not None else data_info.num_classes
    in_channels = params.in_channels if params.in_channels is not None else data_info.in_channels
    if params.weights is None:
        extra: dict[str, Any] = {}
        if params.name in AUX_LOGIT_MODELS:
            extra = {"aux_logits": False, "init_weights": True}
        model = torchvision.models.get_model(
            params.name, weights=None, num_classes=num_classes, **extra
        )
    else:
        model, pretrained_classes = _pretrained(params.name, params.weights)
        _drop_aux_heads(model)
        if pretrained_classes != num_classes:
            _resize_head(model, params.name, num_classes)
    if in_channels != 3:
        _adapt_input_channels(model, params.name, in_channels, pretrained=params.weights is not None)
    return model


SPEC = ModelSpec(
    name="torchvision",
    summary="Any torchvision classification model by name (resnet18, mobilenet_v3_small, ...).",
    factory=build,
    params=TorchvisionParams,
    family="torchvision",
    label=lambda params: f"torchvision {params.name}",
)
