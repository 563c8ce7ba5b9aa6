"""Convert musicnn's TensorFlow checkpoints into ``stream_server/teachers/musicnn_{msd,mtt}/``.

Run by hand, once, whenever the teachers need regenerating; genrecast itself never imports
TensorFlow. The source is the ``musicnn`` 0.1.0 wheel (ISC licence, Jordi Pons and Xavier Serra,
Music Technology Group, Universitat Pompeu Fabra), which ships its TensorFlow 1 checkpoints in
``musicnn/MSD_musicnn/`` and ``musicnn/MTT_musicnn/``. For each model this writes:

- ``model.safetensors``: the float32 weights and batch-norm statistics, renamed and transposed
  for :class:`stream_server.inference.musicnn.MusicnnNet` (optimizer slots are left out);
- ``config.json``: tags, sample rate, STFT, mel and patch settings, and the source wheel's hash;
- ``LICENSE``: the wheel's ISC licence text (``musicnn-0.1.0.dist-info/LICENSE.md``);
- ``README.md``: origin, contents, citation and these instructions.

Commands (from the repository root; the TensorFlow environment lives outside the repository and
is thrown away afterwards)::

    python3.11 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install "tensorflow-cpu==2.15.1" "numpy<2" safetensors
    /tmp/tfenv/bin/pip download --no-deps -d /tmp/mnn musicnn==0.1.0
    /tmp/tfenv/bin/python tools/convert_musicnn.py /tmp/mnn/musicnn-0.1.0-py3-none-any.whl
    .venv/bin/pytest -q tests/test_musicnn.py

TensorFlow 2.15 reads the TF1 checkpoints through ``tf.compat.v1.train.NewCheckpointReader``
(2.15 is a release with Python 3.11 wheels and numpy 1.x). The wheel is read as a zip file, so
musicnn itself (whose requirements, ``numpy<1.17``, no longer install) need not be installed.

The conversion was checked against musicnn's own TensorFlow code: ``musicnn.extractor.extractor``
(with the wheel installed ``--no-deps`` next to ``librosa==0.10.2.post1`` and librosa's STFT
padding set back to ``reflect``, its default when musicnn was published) on real music clips
and on the synthetic signals of ``tests/test_musicnn.py``, against
``stream_server.inference.musicnn.Musicnn`` on the same 16 kHz samples. The figures are in each
README.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

ROOT = Path(__file__).resolve().parents[1]
TEACHERS_DIR = ROOT / "stream_server" / "teachers"
WHEEL_VERSION = "0.1.0"
LICENSE_MEMBER = f"musicnn-{WHEEL_VERSION}.dist-info/LICENSE.md"
CONFIG_MEMBER = "musicnn/configuration.py"

#: genrecast name -> (checkpoint folder in the wheel, tag list in musicnn/configuration.py,
#: training data in words).
MODELS = {
    "msd": ("MSD_musicnn", "MSD_LABELS", "the Million Song Dataset (Last.fm tags)"),
    "mtt": ("MTT_musicnn", "MTT_LABELS", "MagnaTagATune"),
}

#: Variables of the training run that are not weights.
OPTIMIZER_MARKERS = ("Adam", "beta1_power", "beta2_power")

#: TF1 layer name -> (torch module, kind), in musicnn's graph construction order
#: (``musicnn/models.py``: input batch norm, 2 timbral + 3 temporal front-end convolutions,
#: 3 mid-end convolutions, back-end batch norm, dense, batch norm, dense).
LAYERS = {
    "batch_normalization": ("input_norm", "norm"),
    "conv2d": ("frontend.0.conv", "conv2d"),
    "batch_normalization_1": ("frontend.0.norm", "norm"),
    "conv2d_1": ("frontend.1.conv", "conv2d"),
    "batch_normalization_2": ("frontend.1.norm", "norm"),
    "conv2d_2": ("frontend.2.conv", "conv2d"),
    "batch_normalization_3": ("frontend.2.norm", "norm"),
    "conv2d_3": ("frontend.3.conv", "conv2d"),
    "batch_normalization_4": ("frontend.3.norm", "norm"),
    "conv2d_4": ("frontend.4.conv", "conv2d"),
    "batch_normalization_5": ("frontend.4.norm", "norm"),
    "conv2d_5": ("midend.0.conv", "conv1d"),
    "batch_normalization_6": ("midend.0.norm", "norm"),
    "conv2d_6": ("midend.1.conv", "conv1d"),
    "batch_normalization_7": ("midend.1.norm", "norm"),
    "conv2d_7": ("midend.2.conv", "conv1d"),
    "batch_normalization_8": ("midend.2.norm", "norm"),
    "batch_normalization_9": ("pool_norm", "norm"),
    "dense": ("dense", "dense"),
    "batch_normalization_10": ("dense_norm", "norm"),
    "dense_1": ("classifier", "dense"),
}

#: Batch-norm statistics: buffers, not parameters, in torch.
STATISTICS = ("running_mean", "running_var")

#: TF variable -> torch tensor name, per kind.
NORM_NAMES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def conv2d_kernel(kernel: Array) -> Array:
    """TF ``[frames, bands, in, out]`` -> torch Conv2d ``[out, in, frames, bands]``."""
    return kernel.transpose(3, 2, 0, 1)


def conv1d_kernel(kernel: Array) -> Array:
    """TF ``[frames, channels, 1, out]`` (spanning all channels) -> Conv1d ``[out, ch, frames]``."""
    return kernel[:, :, 0, :].transpose(2, 1, 0)


def dense_kernel(kernel: Array) -> Array:
    """TF ``[in, out]`` -> torch Linear ``[out, in]``."""
    return kernel.T


KERNELS: dict[str, Callable[[Array], Array]] = {
    "conv2d": conv2d_kernel,
    "conv1d": conv1d_kernel,
    "dense": dense_kernel,
}


def torch_name(variable: str) -> tuple[str, Callable[[Array], Array] | None]:
    """The torch state-dict key of a TF variable and how its array changes (None: as is)."""
    layer, _, leaf = variable.rpartition("/")
    if layer not in LAYERS:
        raise KeyError(f"unexpected variable {variable!r}")
    module, kind = LAYERS[layer]
    if kind == "norm":
        return f"{module}.{NORM_NAMES[leaf]}", None
    if leaf == "kernel":
        return f"{module}.weight", KERNELS[kind]
    if leaf == "bias":
        return f"{module}.bias", None
    raise KeyError(f"unexpected variable {variable!r}")


def read_checkpoint(prefix: str) -> dict[str, Array]:
    """The weight variables of a TF1 checkpoint (``prefix`` as given to ``Saver.restore``)."""
    # The throwaway environment's TensorFlow; genrecast does not depend on it.
    import tensorflow as tf  # type: ignore[import-not-found,import-untyped,unused-ignore]

    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    names = sorted(reader.get_variable_to_shape_map())
    weights = [n for n in names if not any(marker in n for marker in OPTIMIZER_MARKERS)]
    return {name: np.asarray(reader.get_tensor(name), dtype=np.float32) for name in weights}


def convert(variables: dict[str, Array]) -> dict[str, Array]:
    """TF variables -> torch state dict (float32, contiguous); every layer must be present."""
    tensors: dict[str, Array] = {}
    for variable, value in variables.items():
        key, change = torch_name(variable)
        array = change(value) if change is not None else value
        tensors[key] = np.ascontiguousarray(array, dtype=np.float32)
    expected = {f"{module}.{leaf}" for module, kind in LAYERS.values() for leaf in _leaves(kind)}
    if set(tensors) != expected:
        raise ValueError(f"missing {sorted(expected - set(tensors))}")
    return tensors


def _leaves(kind: str) -> tuple[str, ...]:
    return tuple(NORM_NAMES.values()) if kind == "norm" else ("weight", "bias")


def wheel_tags(config_source: str, name: str) -> list[str]:
    """The tag list ``name`` assigned in ``musicnn/configuration.py`` (read, not imported)."""
    for node in ast.parse(config_source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return [str(tag) for tag in ast.literal_eval(node.value)]
    raise KeyError(f"{name} not in musicnn/configuration.py")


def model_config(name: str, tags: list[str], wheel_sha256: str) -> dict[str, Any]:
    """``config.json``: what :func:`stream_server.inference.musicnn.load_musicnn` checks, and
    provenance."""
    checkpoint, _, data = MODELS[name]
    return {
        "architecture": "musicnn",
        "name": name,
        "trained_on": data,
        "source": f"musicnn {WHEEL_VERSION} wheel, musicnn/{checkpoint}/",
        "source_sha256": wheel_sha256,
        "licence": "ISC",
        "sample_rate": 16000,
        "n_fft": 512,
        "hop_length": 256,
        "window": "hann (periodic)",
        "center": True,
        "pad_mode": "reflect",
        "power": 2.0,
        "n_mels": 96,
        "f_min": 0.0,
        "f_max": 8000.0,
        "mel_scale": "slaney",
        "mel_norm": "slaney",
        "log_compression": "log10(10000 * float16(mel_power) + 1)",
        "patch_frames": 187,
        "patch_seconds": 3.0,
        "frontend_features": 561,
        "midend_features": 753,
        "penultimate_units": 200,
        "output": "sigmoid (multi-label tag probabilities)",
        "tags": tags,
    }


#: Largest absolute differences between ``stream_server.inference.musicnn.Musicnn`` and musicnn's
#: own ``musicnn.extractor.extractor`` (TensorFlow 2.15, librosa 0.10.2 with reflect padding), fed
#: the same 16 kHz samples: six 12 s music clips (blues, classical, electronic, hip-hop, jazz,
#: metal: 24 patches) and the two synthetic signals of ``tests/test_musicnn.py``. Per model: tag
#: probabilities, penultimate embedding, mean-pooled and max-pooled mid-end features (the
#: largest max-pooled value), then the tag probabilities and penultimate embedding when the
#: network alone is fed musicnn's own log-mel patches.
VERIFICATION = {
    "msd": (5.1e-6, 3.9e-5, 7.0e-5, 5.5e-3, 117.0, 1.5e-6, 1.3e-5),
    "mtt": (6.1e-6, 3.2e-5, 4.7e-5, 1.3e-3, 95.0, 3.1e-6, 9.8e-6),
}

VERIFICATION_TEXT = """
Checked against musicnn's own code (`musicnn.extractor.extractor`, TensorFlow 2.15, librosa
0.10.2 with its STFT padding set to `reflect`, librosa's default when musicnn was published) on
the same 16 kHz samples: six 12 s music clips (blues, classical, electronic, hip-hop, jazz,
metal; 24 patches) and the two synthetic signals of `tests/test_musicnn.py`. Largest absolute
differences:

- tag probabilities: {0:.1e}; penultimate embedding: {1:.1e};
- mid-end features, mean over time: {2:.1e}; max over time: {3:.1e} (values up to {4:.0f});
- the network alone, fed musicnn's own log-mel patches: tag probabilities {5:.1e}, penultimate
  {6:.1e}.

The log-mel inputs differ only where a mel power lands on the other side of a float16 rounding
step (a handful of the 72096 values of a 12 s clip, by at most 4e-4), because the float32 sums
run in a different order. With librosa 0.10's own default (zero padding) the first frame of a
clip changes, and the first patch's tag probabilities by up to 0.02.
"""


README = """# musicnn ({name}): a pretrained music tagger used as a frozen teacher

The `{checkpoint}` model of [musicnn](https://github.com/jordipons/musicnn) {version}, trained
on {data} to predict 50 tags from 3 s of audio.
`stream_server.inference.musicnn.load_musicnn("{name}")` loads it as a frozen teacher and feature
extractor for genre models.

- Files: `model.safetensors` ({size_mb:.2f} MB: {values} float32 values, the {params}
  parameters and the batch-norm statistics, no optimizer state), `config.json` (tags, signal
  settings, provenance), `LICENSE` (the original ISC licence).
- Input: mono 16 kHz audio as log-mel patches of 187 frames (3 s): STFT 512 / hop 256 (centred,
  reflect padding), power, 96 Slaney mel bands from 0 to 8000 Hz, float16,
  `log10(10000 * mel + 1)`.
- Outputs: 50 tag probabilities (sigmoid, multi-label); the 200-unit penultimate embedding; the
  753 mid-end features pooled over time (mean and max).
- Origin: the TensorFlow 1 checkpoint `musicnn/{checkpoint}/` in the PyPI wheel
  `musicnn-{version}-py3-none-any.whl`, converted by `tools/convert_musicnn.py`. The wheel's
  sha256: `{sha256}`.
- Licence: ISC, Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019 (musicnn by
  Jordi Pons and Xavier Serra; code by Jordi Pons). See `LICENSE`.

## Agreement with musicnn

{verification}

## Citation

Jordi Pons and Xavier Serra. *musicnn: pre-trained convolutional neural networks for music audio
tagging.* Late-breaking/demo session, 20th International Society for Music Information Retrieval
Conference (ISMIR), 2019. arXiv:1909.06654.

## Regenerating

See the docstring of `tools/convert_musicnn.py`: a throwaway TensorFlow environment outside the
repository reads the wheel's checkpoint and writes this folder. TensorFlow is not a dependency of
genrecast.
"""


def write_model(
    name: str, wheel: zipfile.ZipFile, wheel_sha256: str, out_dir: Path, work: Path
) -> Path:
    """Convert one model from ``wheel`` into ``out_dir/musicnn_{name}/``; returns the folder."""
    from safetensors.numpy import save_file

    checkpoint, tag_list, data = MODELS[name]
    members = [m for m in wheel.namelist() if m.startswith(f"musicnn/{checkpoint}/")]
    wheel.extractall(work, members)
    tensors = convert(read_checkpoint(str(work / "musicnn" / checkpoint) + "/"))
    tags = wheel_tags(wheel.read(CONFIG_MEMBER).decode("utf-8"), tag_list)
    target = out_dir / f"musicnn_{name}"
    target.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt"}  # one key: safetensors writes several in random order
    save_file(tensors, str(target / "model.safetensors"), metadata=metadata)
    (target / "model.safetensors").chmod(0o644)  # safetensors creates it owner-only
    config = model_config(name, tags, wheel_sha256)
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (target / "LICENSE").write_bytes(wheel.read(LICENSE_MEMBER))
    readme = README.format(
        name=name,
        checkpoint=checkpoint,
        version=WHEEL_VERSION,
        data=data,
        size_mb=(target / "model.safetensors").stat().st_size / 1e6,
        values=sum(int(t.size) for t in tensors.values()),
        params=sum(int(t.size) for k, t in tensors.items() if not k.endswith(STATISTICS)),
        sha256=wheel_sha256,
        verification=VERIFICATION_TEXT.format(*VERIFICATION[name]).strip(),
    )
    (target / "README.md").write_text(readme, encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="musicnn-0.1.0-py3-none-any.whl")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--out", type=Path, default=TEACHERS_DIR, help="default: %(default)s")
    args = parser.parse_args(argv)
    sha256 = hashlib.sha256(args.wheel.read_bytes()).hexdigest()
    with zipfile.ZipFile(args.wheel) as wheel, tempfile.TemporaryDirectory() as work:
        for name in args.models:
            target = write_model(name, wheel, sha256, args.out, Path(work))
            print(f"{name}: wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
