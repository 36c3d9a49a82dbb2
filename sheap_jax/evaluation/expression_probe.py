"""Expressiveness probe: a linear classifier reads emotion labels off predicted expressions.

A predictor whose expression parameters carry the emotion on the face lets a linear classifier,
fitted on some identities, name the emotion of other identities' frames; a predictor that
ignores expression (the mean head) leaves it at chance. The classifier is multinomial logistic
regression on standardised features with an L2 penalty on the weights (not the biases), fitted
in float64 by L-BFGS from zero: deterministic, and the objective is convex, so the answer is
the optimiser's, not the starting point's.

Features (`probe_features`): the predicted expression coefficients and the jaw pose
(axis-angle), since the synthetic emotions open the jaw as well as moving the expression modes.
Eyelids are left out: blinks move them independently of the emotion.
"""
import dataclasses

import numpy as np
import scipy.optimize
import scipy.special

DEFAULT_L2 = 1e-2  # penalty on the mean cross-entropy: (l2 / 2) * ||weights||^2
FEATURES = ("expression", "jaw_pose")


def probe_features(params) -> np.ndarray:
  """(B, E + 3) float64 features of a batch of `flame.FlameParams`."""
  return np.concatenate([np.asarray(getattr(params, name), np.float64) for name in FEATURES],
                        axis=-1)


@dataclasses.dataclass(frozen=True)
class LinearProbe:
  """A fitted classifier: standardisation, then softmax(x @ weights + bias) over `classes`."""

  mean: np.ndarray  # (D,) training feature means
  scale: np.ndarray  # (D,) training feature standard deviations (1 where a feature is constant)
  weights: np.ndarray  # (D, K) on standardised features
  bias: np.ndarray  # (K,)
  classes: np.ndarray  # (K,) the labels seen in training, ascending

  def logits(self, features) -> np.ndarray:
    return standardise(features, self.mean, self.scale) @ self.weights + self.bias

  def predict(self, features) -> np.ndarray:
    """(N,) labels; ties go to the smaller label."""
    return self.classes[np.argmax(self.logits(features), axis=-1)]


def standardise(features, mean, scale) -> np.ndarray:
  return (np.asarray(features, np.float64) - mean) / scale


def _objective(flat, x, onehot, l2):
  """Mean cross-entropy + (l2 / 2) ||W||^2 and its gradient, for flat = [W.ravel(), b]."""
  n, d = x.shape
  k = onehot.shape[1]
  weights, bias = flat[:d * k].reshape(d, k), flat[d * k:]
  logits = x @ weights + bias
  log_norm = scipy.special.logsumexp(logits, axis=1, keepdims=True)
  loss = np.sum(onehot * (log_norm - logits)) / n + 0.5 * l2 * np.sum(weights ** 2)
  residual = (np.exp(logits - log_norm) - onehot) / n
  grad = np.concatenate([(x.T @ residual + l2 * weights).ravel(), residual.sum(axis=0)])
  return loss, grad


def fit(features, labels, l2=DEFAULT_L2) -> LinearProbe:
  """Fits the probe on (N, D) features and (N,) integer labels (at least two classes)."""
  features = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(f"expression probe: features (N, D) and labels (N,) expected, got "
                     f"{features.shape} and {labels.shape}")
  classes = np.unique(labels)
  if len(classes) < 2:
    raise ValueError(f"expression probe: the training frames hold {len(classes)} emotion "
                     "class(es); a classifier needs at least two")
  mean = features.mean(axis=0)
  scale = features.std(axis=0)
  scale = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
  x = standardise(features, mean, scale)
  onehot = (labels[:, None] == classes[None, :]).astype(np.float64)
  size = x.shape[1] * len(classes)
  result = scipy.optimize.minimize(_objective, np.zeros(size + len(classes)), args=(x, onehot, l2),
                                   jac=True, method="L-BFGS-B",
                                   options=dict(maxiter=5000, gtol=1e-10, ftol=1e-15))
  weights = result.x[:size].reshape(x.shape[1], len(classes))
  return LinearProbe(mean, scale, weights, result.x[size:], classes)


def confusion_matrix(true, predicted, num_classes) -> np.ndarray:
  """(K, K) counts: row = true label, column = predicted label."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (np.asarray(true), np.asarray(predicted)), 1)
  return matrix


def evaluate(train_features, train_labels, test_features, test_labels, class_names,
             l2=DEFAULT_L2) -> dict:
  """Fits on the training frames, scores the test frames; a JSON-ready dict.

  Chance levels: `chance_majority` is the test accuracy of always answering the most frequent
  training label (what a classifier on constant features does); `chance_uniform` the expected
  test accuracy of guessing uniformly among the labels seen in training.
  """
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  if len(test_labels) == 0:
    raise ValueError("expression probe: no labelled test frames to score")
  probe = fit(train_features, train_labels, l2)
  predicted = probe.predict(test_features)
  train_counts = np.bincount(train_labels, minlength=len(class_names))
  test_counts = np.bincount(test_labels, minlength=len(class_names))
  known = np.isin(test_labels, probe.classes)
  return {
      "accuracy": float(np.mean(predicted == test_labels)),
      "chance_majority": float(np.mean(test_labels == np.argmax(train_counts))),
      "chance_uniform": float(known.mean() / len(probe.classes)),
      "num_train": int(len(train_labels)),
      "num_test": int(len(test_labels)),
      "train_counts": {n: int(c) for n, c in zip(class_names, train_counts)},
      "test_counts": {n: int(c) for n, c in zip(class_names, test_counts)},
      "classes": list(class_names),
      "confusion": confusion_matrix(test_labels, predicted, len(class_names)).tolist(),
      "features": list(FEATURES),
      "num_features": int(np.shape(train_features)[1]),
      "l2": l2,
  }


def plot_confusion(results, path):
  """One row-normalised confusion matrix per predictor ({name: evaluate() dict}), as a PNG."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.4), squeeze=False)
  for ax, (name, result) in zip(axes[0], results.items()):
    counts = np.asarray(result["confusion"])
    rows = counts.sum(axis=1, keepdims=True)
    ax.imshow(counts / np.maximum(rows, 1), cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), count in np.ndenumerate(counts):
      if count:
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > 0.5 * rows[i, 0] else "black")
    ticks = np.arange(len(result["classes"]))
    ax.set_xticks(ticks, result["classes"], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, result["classes"], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{name}: {result['accuracy']:.0%} (majority {result['chance_majority']:.0%})",
                 fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path

