"""Fraud-score models: load a trained model file, score feature rows in batches, hot-reload.

A model turns feature rows (see :mod:`streamproc.features`; the names come from the model file)
into fraud probabilities in [0, 1], one per row, scoring a whole batch in one library call.
Two formats load, chosen by the file's extension:

``.txt``  a LightGBM text model (``Booster.save_model``), trained with named features and a
          probability objective (``binary`` or ``cross_entropy``). ``tools/train_fraud_model.py``
          writes one; ``rules/models/fraud_gbt.txt`` ships.
``.onnx`` an ONNX model with one float input ``[N, F]`` and a probability output ``[N]``,
          ``[N, 1]`` or ``[N, 2]`` (positive class last), the feature names in its metadata
          property ``feature_names`` (comma-separated). Needs ``pip install 'streamproc[onnx]'``.

Nothing else loads: no pickles or joblib files (loading one runs arbitrary code).

Why LightGBM and not XGBoost (measured on this machine, the same 80-tree depth-5 model trained
on the same 240,000 demo rows of 7 features, LightGBM 4.7.0 vs XGBoost 3.2.0 (the last release
for Python 3.11), float64 numpy input, best of 7-9 repeats, µs per call)::

    batch rows                          1       10      100     1000
    LightGBM predict, num_threads=1    14.7    24.2     81    685-731
    LightGBM predict, default threads  17.0     -      148    4260     (2 OpenMP threads)
    XGBoost inplace_predict, nthread=1 78-82   88      130    538-551
    XGBoost DMatrix + predict          144      -      212    653
    XGBoost inplace_predict, default   100      -      510    1247

float32 input made no consistent difference (within ~10%) for either. A shard scores its
GetRecords batch, 1 to 1,000 records and mostly small at low latency, on one core. LightGBM's
fixed cost per call is ~14 µs against XGBoost's ~80 µs, so LightGBM is 5x faster for one record
and 1.6x for 100; XGBoost overtakes it only above ~300 rows, by 0.14 µs/record at 1,000. Both
give identical scores for a row alone and in a batch. LightGBM also installs without the CUDA
collective library (nvidia-nccl-cu12, hundreds of MB) that the ``xgboost`` wheel pulls in on
Linux. We score in float64 (split thresholds are doubles; float32 input could flip a split at a
threshold) with ``num_threads=1``: OpenMP threads cost more than they save at these sizes, and
the shard processes already use every core. The shipped 60-tree depth-4 model costs ~15 µs for
one row and ~0.6 µs/row in batches of 1,000 (benchmarks/test_models.py).

:class:`ModelFile` reloads a model whose file changed, if the new one loads, scores and needs
the same features; otherwise the running model stays. Replace the file atomically (write a
temporary file, then rename it over the old one) so a reload never reads half a file.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import lightgbm
import numpy

from streamproc.errors import StreamprocError

log = logging.getLogger(__name__)

# The features of the shipped fraud model, in its order (tools/train_fraud_model.py).
FRAUD_FEATURES: tuple[str, ...] = (
    "amount",
    "out_of_state",
    "tx_count_10m",
    "spend_1h",
    "distinct_merchants_1h",
    "amount_vs_mean_1h",
    "new_merchant",
)

SUFFIXES = {".txt": "LightGBM text model", ".onnx": "ONNX model"}
# LightGBM objectives whose predictions are probabilities.
PROBABILITY_OBJECTIVES = frozenset({"binary", "cross_entropy", "xentropy"})


class ModelError(StreamprocError):
    """A model file cannot be loaded or used. ``path`` names the file."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"model {self.path}: {problem}")


class Model(Protocol):
    """A loaded fraud-score model.

    ``name`` is the file's stem, ``version`` the first 12 hex digits of the SHA-256 of the
    file's bytes (the same file always has the same version), ``feature_names`` the features
    each row carries, in order.
    """

    name: str
    version: str
    feature_names: tuple[str, ...]
    path: str

    def predict(self, rows: Sequence[Sequence[float]]) -> list[float]:
        """Fraud probabilities in [0, 1], one per row, from one library call for the batch.

        Every row has ``len(feature_names)`` numbers; a row of another length is a
        :class:`ModelError` (a caller bug, not bad input). Pure: no I/O, no logging.
        """
        ...


class LightGBMModel:
    """A LightGBM text model, scored in float64 on one thread."""

    __slots__ = ("_booster", "feature_names", "name", "path", "version")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        data = _read(self.path)
        self.name = Path(self.path).stem
        self.version = _version(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelError(path, f"not a LightGBM text model (not UTF-8 text: {exc})") from None
        # Loaded from the bytes just hashed (not from the path again), so ``version`` always
        # names what is scored even if the file is replaced meanwhile.
        try:
            booster = lightgbm.Booster(model_str=text)
        except Exception as exc:  # LightGBMError, ValueError...: whatever the library refuses
            raise ModelError(
                path, f"LightGBM cannot read it ({exc}); write it with Booster.save_model()"
            ) from None
        if booster.num_model_per_iteration() != 1:
            raise ModelError(
                path,
                f"has {booster.num_model_per_iteration()} outputs per row; a fraud score needs "
                "a binary model (objective='binary')",
            )
        objective = _objective(text)
        if objective not in PROBABILITY_OBJECTIVES:
            raise ModelError(
                path,
                f"objective {objective!r} does not predict probabilities; train with "
                "objective='binary'",
            )
        names = tuple(booster.feature_name())
        if names == tuple(f"Column_{i}" for i in range(len(names))):
            raise ModelError(
                path,
                "was trained without feature names; pass feature_name=[...] (names from "
                "streamproc.features) to lightgbm.Dataset and train again",
            )
        self.feature_names = names
        self._booster = booster

    def predict(self, rows: Sequence[Sequence[float]]) -> list[float]:
        if len(rows) == 0:  # rows may be a numpy array: no truth value
            return []
        matrix = _matrix(self, rows, numpy.float64)
        scores = self._booster.predict(matrix, num_threads=1)
        return list(numpy.asarray(scores, dtype=numpy.float64).tolist())


class OnnxModel:
    """An ONNX model run by onnxruntime on one thread (the ``onnx`` extra)."""

    __slots__ = (
        "_column",
        "_dtype",
        "_input",
        "_output",
        "_session",
        "feature_names",
        "name",
        "path",
        "version",
    )

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        runtime = _onnxruntime(self.path)
        data = _read(self.path)
        self.name = Path(self.path).stem
        self.version = _version(data)
        options = runtime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the exception below carries them
        try:
            session = runtime.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelError(path, f"onnxruntime cannot load it ({exc})") from None
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(path, f"has {len(inputs)} inputs; it needs exactly one [N, F] input")
        feature_input = inputs[0]
        dtypes = {"tensor(float)": numpy.float32, "tensor(double)": numpy.float64}
        if feature_input.type not in dtypes or len(feature_input.shape) != 2:
            raise ModelError(
                path,
                f"input {feature_input.name!r} is {feature_input.type} {feature_input.shape}; "
                "it must be a float or double tensor of shape [N, F]",
            )
        metadata = session.get_modelmeta().custom_metadata_map
        listed = metadata.get("feature_names", "")
        names = tuple(n.strip() for n in listed.split(",") if n.strip())
        if not names:
            raise ModelError(
                path,
                "has no metadata property 'feature_names'; add one with the features in input "
                "order, comma-separated (onnx.helper.set_model_props)",
            )
        width = feature_input.shape[1]
        if isinstance(width, int) and width != len(names):
            raise ModelError(
                path, f"input has {width} columns but 'feature_names' lists {len(names)}"
            )
        outputs = [o for o in session.get_outputs() if o.type in dtypes and len(o.shape) in (1, 2)]
        if not outputs:
            raise ModelError(
                path, "has no float output of shape [N], [N, 1] or [N, 2] with probabilities"
            )
        output = outputs[0]
        for candidate in outputs:  # classifiers converted from scikit-learn name it so
            if "prob" in candidate.name.lower():
                output = candidate
                break
        self.feature_names = names
        self._session = session
        self._input = feature_input.name
        self._output = output.name
        self._dtype = dtypes[feature_input.type]
        self._column = -1  # [N, 2]: the positive class; [N, 1]: the one column

    def predict(self, rows: Sequence[Sequence[float]]) -> list[float]:
        if len(rows) == 0:  # rows may be a numpy array: no truth value
            return []
        matrix = _matrix(self, rows, self._dtype)
        (result,) = self._session.run([self._output], {self._input: matrix})
        scores = numpy.asarray(result, dtype=numpy.float64)
        if scores.ndim == 2 and scores.shape[1] in (1, 2):
            scores = scores[:, self._column]
        if scores.shape != (len(rows),):
            raise ModelError(
                self.path,
                f"output {self._output!r} has shape {list(scores.shape)} for {len(rows)} rows; "
                "expected [N], [N, 1] or [N, 2]",
            )
        return list(scores.tolist())


def load_model(path: str | os.PathLike[str]) -> Model:
    """Load a model by its file's extension and check that it scores.

    Raises :class:`ModelError` (naming the path and what to do) for an unsupported extension, a
    missing or unreadable file, a file the library cannot parse, and a model that does not
    return one probability in [0, 1] for an all-zero row.
    """
    suffix = Path(path).suffix.lower()
    model: Model
    if suffix == ".txt":
        model = LightGBMModel(path)
    elif suffix == ".onnx":
        model = OnnxModel(path)
    else:
        supported = ", ".join(f"{s} ({kind})" for s, kind in SUFFIXES.items())
        hint = ""
        if suffix in (".pkl", ".pickle", ".joblib"):
            hint = "; pickled models are never loaded (loading one runs arbitrary code)"
        elif suffix == ".json":
            hint = "; XGBoost models are not supported: convert to ONNX or retrain with LightGBM"
        what = f"unsupported model file extension {suffix!r}" if suffix else "no file extension"
        raise ModelError(path, f"{what}: use {supported}{hint}")
    _check_scores(model)
    return model


class ModelFile:
    """A model loaded from a file, swapped for the file's new content when it changes.

    Loads at construction (raising :class:`ModelError`). :meth:`maybe_reload` is cheap and
    meant to be called from the runtime loop between batches: at most every
    ``check_interval_s`` it stats the file and, if it changed, loads the new content. The new
    model replaces the running one only if it loads, scores an all-zero row and needs the same
    ``feature_names`` (a rule's feature state is built for those); otherwise the old one keeps
    scoring, the reason is logged at ERROR and ``reload_failures`` counts it. A change that was
    rejected is not retried until the file changes again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        check_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.fspath(path)
        self.check_interval_s = check_interval_s
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: str | None = None
        self._clock = clock
        # Stat before reading: a change between the two is seen at the next check.
        self._signature = _signature(self.path)
        self._model = load_model(self.path)
        self._checked_at = clock()

    @property
    def model(self) -> Model:
        return self._model

    def maybe_reload(self) -> bool:
        """Reload if the interval passed and the file changed; True if the model was swapped.

        Never raises: every failure is logged and counted, and the current model stays.
        """
        now = self._clock()
        if now - self._checked_at < self.check_interval_s:
            return False
        self._checked_at = now
        try:
            return self._reload_if_changed()
        except Exception as exc:  # a bug or an odd OS error must not stop the shard
            self._failed(f"unexpected error: {exc!r}")
            return False

    def _reload_if_changed(self) -> bool:
        signature = _signature(self.path)
        if signature == self._signature:
            return False
        self._signature = signature
        if signature is None:
            self._failed(
                f"model file {self.path} is missing; still scoring with version "
                f"{self._model.version} (put the file back to reload)"
            )
            return False
        try:
            candidate = load_model(self.path)
        except ModelError as exc:
            self._failed(f"{exc}; still scoring with version {self._model.version}")
            return False
        old = self._model
        if candidate.feature_names != old.feature_names:
            self._failed(
                f"model {self.path} version {candidate.version} needs features "
                f"{list(candidate.feature_names)} but the running version {old.version} uses "
                f"{list(old.feature_names)}; a model with other features cannot replace a "
                "running one: restart streamproc to use it"
            )
            return False
        self._model = candidate
        self.reloads += 1
        self.last_error = None
        log.info(
            "model %s reloaded from %s: version %s -> %s",
            candidate.name,
            self.path,
            old.version,
            candidate.version,
        )
        return True

    def _failed(self, reason: str) -> None:
        self.reload_failures += 1
        self.last_error = reason
        log.error("model reload rejected: %s", reason)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelError(path, "no such file; check the rule's model path") from None
    except IsADirectoryError:
        raise ModelError(path, "is a directory; give the model file itself") from None
    except OSError as exc:
        raise ModelError(path, f"cannot read it ({exc.strerror or exc})") from None


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _signature(path: str) -> tuple[int, int, int] | None:
    """What tells that a file changed: inode (an atomic rename), mtime and size."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _objective(text: str) -> str:
    """The objective named in a LightGBM text model's header (before the first tree)."""
    for line in text.splitlines():
        if line.startswith("objective="):
            return line.removeprefix("objective=").split(" ", 1)[0]
        if line.startswith("Tree="):
            break
    return ""


def _matrix(model: Model, rows: Sequence[Sequence[float]], dtype: Any) -> Any:
    """Rows as one C-contiguous 2-D array, checked against the model's feature count."""
    matrix = numpy.asarray(rows, dtype=dtype)
    width = len(model.feature_names)
    if matrix.ndim != 2 or matrix.shape[1] != width:
        raise ModelError(
            model.path,
            f"got rows of shape {list(matrix.shape)}; each row needs {width} numbers "
            f"({', '.join(model.feature_names)})",
        )
    return matrix


def _check_scores(model: Model) -> None:
    try:
        scores = model.predict([[0.0] * len(model.feature_names)])
    except ModelError:
        raise
    except Exception as exc:  # the library failed to run the model
        raise ModelError(model.path, f"cannot score an all-zero row ({exc})") from None
    if len(scores) != 1 or not math.isfinite(scores[0]) or not 0.0 <= scores[0] <= 1.0:
        raise ModelError(
            model.path,
            f"scored an all-zero row as {scores}; a fraud model must return one probability "
            "in [0, 1] per row",
        )


def _onnxruntime(path: str) -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise ModelError(
            path, "ONNX models need onnxruntime: pip install 'streamproc[onnx]'"
        ) from None
