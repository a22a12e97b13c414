"""Model builders: the body-part router and the per-part abnormality classifiers.

Every model takes float32 ``(N, size, size, 1)`` pixels in 0..255 (what
:func:`bonexr.imaging.model_input` produces) and does the rest in its own graph: the
grayscale channel is replicated to three and the backbone's own normalisation is applied
by a ``Rescaling`` layer. So no caller (training, evaluation, service, ONNX Runtime) can
forget ``preprocess_input`` -- the classic training/serving skew of this field.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from bonexr.errors import ConfigError
from bonexr.labels import ROUTER
from training.config import BACKBONE_NAMES, SCRATCH_BACKBONES, check_backbone

#: ImageNet normalisation "caffe" style (ResNet50): BGR mean subtraction, no scaling.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: ImageNet normalisation "torch" style (DenseNet): scale to 0..1, then mean/std per channel.
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    """A feature extractor and the input normalisation its weights expect."""

    build: Callable[..., keras.Model]
    scale: tuple[float, ...]  # per RGB channel
    offset: tuple[float, ...]
    imagenet: bool  # whether ImageNet weights exist for it


def _tiny_backbone(input_shape: tuple[int, int, int], weights: str | None = None) -> keras.Model:
    """A four-block CNN (~100k parameters) for tests and the quick synthetic demo."""
    if weights not in (None, "none"):
        raise ConfigError("the 'tiny' backbone has no pretrained weights; use --weights none")
    inputs = keras.Input(input_shape)
    x = inputs
    for block, filters in enumerate((16, 32, 64, 128)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)  # short runs: stats must settle fast
        x = layers.Activation("relu")(x)
        if block < 3:  # no pooling after the last block: a 12x12 map at 96 px, not 6x6
            x = layers.MaxPooling2D()(x)
    # Max pooling finds a small defect anywhere in the image; average pooling sees global shape.
    x = layers.Concatenate()([layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    return keras.Model(inputs, x, name="tiny")


def _residual_stage(x: Any, filters: int, name: str) -> Any:
    """Two 3x3 convolutions with an identity (or 1x1 projected) shortcut."""
    shortcut = x
    if int(x.shape[-1]) != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(x)
        shortcut = layers.BatchNormalization(momentum=0.9, name=f"{name}_project_bn")(shortcut)
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        if i == 1:
            x = layers.Activation("relu")(x)
    return layers.Activation("relu")(layers.Add(name=f"{name}_add")([x, shortcut]))


def _small_backbone(input_shape: tuple[int, int, int], weights: str | None = None) -> keras.Model:
    """A residual CNN (~1.2M parameters) for part models on real radiographs at 256 px and
    up on a CPU: a strided stem, four residual stages (32 to 256 filters) with max pooling
    between them, and the tiny backbone's average-and-max head, so its heat map is the
    same exact attribution (a 16x16 grid at 256 px)."""
    if weights not in (None, "none"):
        raise ConfigError("the 'small' backbone has no pretrained weights; use --weights none")
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(24, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.Activation("relu")(layers.BatchNormalization(momentum=0.9, name="stem_bn")(x))
    for stage, filters in enumerate((32, 64, 128, 256)):
        x = _residual_stage(x, filters, f"stage{stage + 1}")
        if stage < 3:
            x = layers.MaxPooling2D()(x)
    x = layers.Concatenate()([layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    return keras.Model(inputs, x, name="small")


def _keras_app(factory: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    def build(input_shape: tuple[int, int, int], weights: str | None = None) -> keras.Model:
        return factory(include_top=False, weights=weights, input_shape=input_shape, pooling="avg")

    return build


_TORCH_SCALE = tuple(1.0 / (255.0 * s) for s in _TORCH_STD)
_TORCH_OFFSET = tuple(-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD, strict=True))

BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone(
        _keras_app(keras.applications.ResNet50),
        (1.0, 1.0, 1.0),
        tuple(-m for m in _CAFFE_MEAN_BGR),
        imagenet=True,
    ),
    "densenet169": Backbone(
        _keras_app(keras.applications.DenseNet169), _TORCH_SCALE, _TORCH_OFFSET, imagenet=True
    ),
    "tiny": Backbone(_tiny_backbone, (1 / 255.0,) * 3, (0.0,) * 3, imagenet=False),
    "small": Backbone(_small_backbone, (1 / 255.0,) * 3, (0.0,) * 3, imagenet=False),
}

assert tuple(BACKBONES) == BACKBONE_NAMES, "keep training.config.BACKBONE_NAMES in sync"
assert {n for n, b in BACKBONES.items() if not b.imagenet} == set(SCRATCH_BACKBONES)


def resolve_weights(weights: str, backbone: str) -> str | None:
    """Turn the ``--weights`` value into what ``keras.applications`` takes.

    ``imagenet`` needs the weights in Keras' cache or a reachable download host; offline
    without a cache we fail at once with advice instead of hanging on a download.
    """
    spec = BACKBONES[check_backbone(backbone)]
    if weights in ("none", "", None):
        return None
    if weights == "imagenet":
        if not spec.imagenet:
            raise ConfigError(f"backbone {backbone!r} has no ImageNet weights; use --weights none")
        if not _imagenet_cached(backbone) and not _download_host_reachable():
            raise ConfigError(
                "ImageNet weights are not in the Keras cache (~/.keras/models) and the download "
                "host is unreachable (offline?). Use --weights none, or --weights PATH to a local "
                f"{backbone} 'notop' weights file."
            )
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist (expected imagenet, none or a path)")
    return str(path)


def _imagenet_cached(backbone: str) -> bool:
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    stem = {"resnet50": "resnet50", "densenet169": "densenet169"}[backbone]
    return any(cache.glob(f"{stem}*notop*.h5"))


def _download_host_reachable(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def build_model(
    task: str,
    *,
    classes: list[str] | None = None,
    backbone: str = "resnet50",
    input_size: int = 224,
    weights: str = "none",
    dropout: float = 0.2,
    downsample: int = 1,
) -> keras.Model:
    """Build the router (``task="router"``, softmax over ``classes``) or an abnormality model.

    With pretrained weights the backbone runs its BatchNormalization in inference mode, so
    fine-tuning does not wreck the ImageNet statistics (the keras-io transfer-learning
    recipe); from random init the statistics must be learned, so they train normally.
    """
    spec = BACKBONES[check_backbone(backbone)]
    resolved = resolve_weights(weights, backbone)
    if input_size < 32:
        raise ConfigError(f"input size {input_size} is too small (minimum 32)")
    image = keras.Input((input_size, input_size, 1), name="image")
    x = _downsampled(image, downsample)
    x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = layers.Rescaling(scale=list(spec.scale), offset=list(spec.offset), name="normalize")(x)
    side = input_size // downsample
    base = spec.build((side, side, 3), weights=resolved)
    base.name = "backbone"
    x = base(x, training=False) if resolved else base(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    # the output layer computes in float32 under mixed precision (a softmax / sigmoid in
    # float16 saturates); a no-op under the default float32 policy
    if task == ROUTER:
        if not classes or len(classes) < 2:
            raise ConfigError("the router needs at least two body parts")
        out = layers.Dense(
            len(classes), activation="softmax", name="probabilities", dtype="float32"
        )(x)
    else:
        out = layers.Dense(1, activation="sigmoid", name="probabilities", dtype="float32")(x)
    return keras.Model(image, out, name=f"bonexr_{task.lower()}")


#: Name of the pooling layer that gives a model its own, lower resolution.
DOWNSAMPLE = "downsample"


def _downsampled(image: Any, factor: int) -> Any:
    """``image`` average-pooled by ``factor`` (the router's own resolution), else as is."""
    if factor <= 1:
        return image
    return layers.AveragePooling2D(factor, name=DOWNSAMPLE)(image)


def backbone_input(model: keras.Model, image: Any) -> Any:
    """``image`` through ``model``'s own preprocessing layers (downsampling where it has
    one, grey to RGB, normalisation): the backbone's input, for graphs that reuse the
    model's layers (the content score, the router's features, the heat maps)."""
    names = {layer.name for layer in model.layers}
    x = model.get_layer(DOWNSAMPLE)(image) if DOWNSAMPLE in names else image
    x = model.get_layer("gray_to_rgb")([x, x, x])
    return model.get_layer("normalize")(x)


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_all_layers(layer))
    return found


def is_mixed(model: keras.Model) -> bool:
    """Whether any layer computes in a reduced float (a ``--mixed-precision`` model)."""
    return any(layer.dtype_policy.compute_dtype != "float32" for layer in _all_layers(model))


def as_float32(model: keras.Model, rebuild: Callable[[], keras.Model]) -> keras.Model:
    """``model`` itself, or for a mixed-precision model a float32 copy with its weights.

    Mixed precision keeps the variables in float32, so the copy (built by ``rebuild``
    under the float32 policy) computes what the trained model computes, without the
    reduced-precision rounding: evaluation and the ONNX export then run float32 graphs.
    """
    if not is_mixed(model):
        return model
    keras.mixed_precision.set_global_policy("float32")
    copy = rebuild()
    copy.set_weights(model.get_weights())
    return copy


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer("backbone")


#: Name of the class-activation-map output of an exported part model (its second output).
CAM_OUTPUT = "cam"
#: Layer-name prefix of an ensemble's members.
MEMBER = "member_"


def build_ensemble(members: list[keras.Model], name: str = "bonexr_abnormality") -> keras.Model:
    """One model whose output is the mean of ``members``' probabilities (one input, one
    pass: the service and every runtime serve the ensemble as a single graph)."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    if len(members) == 1:
        return members[0]
    image = keras.Input(members[0].input_shape[1:], name="image")
    outputs = []
    for i, member in enumerate(members):
        member.name = f"{MEMBER}{i}"
        outputs.append(member(image))
    mean = layers.Average(name="probabilities")(outputs)
    return keras.Model(image, mean, name=f"{name}_ensemble{len(members)}")


def members_of(model: keras.Model) -> list[keras.Model]:
    """An ensemble's member models in order (empty for a single model)."""
    return [layer for layer in model.layers if layer.name.startswith(MEMBER)]


class SplitPoolingCam(layers.Layer):
    """The exact attribution of an average-and-max pooled head, one value per grid cell.

    The head's logit is ``b + sum_k a_k mean(F_k) + sum_k m_k max(F_k)``. The average
    branch is spread over the grid as CAM does (``a_k F_k[y, x] / (h w)``); the max branch
    is placed where it is taken, at each channel's arg-max (shared equally between tied
    cells). So the map sums to the logit over the grid, and a defect that only the max
    branch sees shows where it is instead of being spread evenly over the map.
    """

    def __init__(
        self, average: np.ndarray, maximum: np.ndarray, bias: float, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.average = np.asarray(average, dtype="float32")
        self.maximum = np.asarray(maximum, dtype="float32")
        self.bias = float(bias)

    def call(self, features: Any) -> Any:
        cells = float(features.shape[1] * features.shape[2])
        average = ops.tensordot(features, ops.convert_to_tensor(self.average), axes=1) / cells
        peak = ops.max(features, axis=(1, 2), keepdims=True)
        at_peak = ops.cast(ops.equal(features, peak), features.dtype)
        share = at_peak / ops.sum(at_peak, axis=(1, 2), keepdims=True)
        maximum = ops.tensordot(features * share, ops.convert_to_tensor(self.maximum), axes=1)
        return average + maximum + self.bias / cells

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "average": self.average.tolist(),
            "maximum": self.maximum.tolist(),
            "bias": self.bias,
        }


def with_cam(model: keras.Model) -> keras.Model:
    """The abnormality ``model`` with a second output: where its evidence lies.

    CAM (Zhou et al. 2016, the maps of the MURA paper): the head is a global pooling of the
    backbone's last feature maps ``F`` followed by one dense unit. For an average-pooled
    head (ResNet50, DenseNet169) ``cam[y, x] = sum_k w_k F_k[y, x] + b`` is exact: its mean
    over the grid is the logit. The tiny backbone pools average *and* max of the same maps;
    adding each channel's two weights (the old map) spread the max branch evenly over the
    grid, which is not what the model uses, so :class:`SplitPoolingCam` splits the two
    branches exactly instead. Same weights, one backbone pass.

    Outputs ``[probabilities (N, 1), cam (N, h, w)]`` at the feature grid (7x7 for
    ResNet50 at 224 px, 12x12 for the tiny backbone at 96 px);
    :func:`bonexr.heatmap.to_image_grid` maps it onto the image.
    """
    members = members_of(model)
    if members:  # the ensemble's map is the mean of its members' maps, as its output is
        image = keras.Input(model.input_shape[1:], name="image")
        pairs = [with_cam(member)(image) for member in members]
        probabilities = layers.Average(name="probabilities")([p for p, _ in pairs])
        cam = layers.Average(name=CAM_OUTPUT)([c for _, c in pairs])
        return keras.Model(image, [probabilities, cam], name=f"{model.name}_cam")
    backbone = backbone_of(model)
    pools = [layer for layer in backbone.layers if isinstance(layer, layers.GlobalAveragePooling2D)]
    if not pools:
        raise ConfigError("the backbone has no global average pooling: no CAM possible")
    features_and_pooled = keras.Model(
        backbone.input, [pools[-1].input, backbone.output], name="features"
    )
    image = keras.Input(model.input_shape[1:], name="image")
    features, pooled = features_and_pooled(backbone_input(model, image))
    head = model.get_layer("probabilities")
    probabilities = head(model.get_layer("dropout")(pooled))
    kernel, bias = (np.asarray(v) for v in head.get_weights())
    channels = int(features.shape[-1])
    weights = kernel[:, 0]
    grid = tuple(int(d) for d in features.shape[1:3])
    if len(weights) == 2 * channels:  # [average; max] pooled features of the same maps
        split = SplitPoolingCam(weights[:channels], weights[channels:], float(bias[0]))
        cam = layers.Reshape(grid, name=CAM_OUTPUT)(split(features))
        return keras.Model(image, [probabilities, cam], name=f"{model.name}_cam")
    if len(weights) != channels:
        raise ConfigError(f"head has {len(weights)} weights for {channels} feature maps")
    conv = layers.Conv2D(1, 1, name="cam_weights")
    cam = conv(features)
    conv.set_weights([weights.reshape(1, 1, channels, 1).astype("float32"), bias.astype("float32")])
    cam = layers.Reshape(grid, name=CAM_OUTPUT)(cam)
    return keras.Model(image, [probabilities, cam], name=f"{model.name}_cam")
