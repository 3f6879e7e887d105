"""kdframe's first-party model architectures, registered like any third party's.

Three components of kind ``model``; each factory is ``factory(params, data_info)`` and returns a
classifier mapping ``(N, C, H, W)`` float images to ``(N, num_classes)`` logits. Channels, classes and
image size default to the dataset's (:class:`kdframe.DataInfo`).

* ``plain_cnn`` (family ``cnn``): the plain CNNs of TAKD (Mirzadeh et al. 2019), depth 2 to 10.
  Module paths ``features.<i>``, ``flatten``, ``classifier``. See :mod:`kdframe_models.plain_cnn`.
* ``resnet`` (family ``resnet``): CIFAR ResNet-(6n+2) of He et al. 2016. Module paths ``conv1``,
  ``bn1``, ``relu``, ``layer1``-``layer3``, ``avgpool``, ``flatten``, ``fc``. See
  :mod:`kdframe_models.resnet_cifar`.
* ``torchvision`` (family ``torchvision``): any torchvision classification model by name, with the
  input convolution adapted to the data's channels. See :mod:`kdframe_models.torchvision_models`.

Importing this package registers nothing: the components exist only through the
``kdframe_register_models`` hook of a plugin manager that loads it.
"""

from __future__ import annotations

from kdframe import ModelSpec, hookimpl

from kdframe_models import plain_cnn, resnet_cifar, torchvision_models


@hookimpl
def kdframe_register_models() -> list[ModelSpec]:
    """The model architectures of this plugin."""
    return [plain_cnn.SPEC, resnet_cifar.SPEC, torchvision_models.SPEC]
