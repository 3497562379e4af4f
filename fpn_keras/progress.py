"""What long work shows on stdout: progress bars on a terminal, plain lines in a log.

When stdout is not a terminal (a CI job, `fpn-keras train > train.log`, a cluster
scheduler) a `\\r` progress bar turns into one enormous line per epoch. So every
command asks `interactive()` once and, when it is False (or `--quiet` was given):
  - `train` prints one line per epoch (`EpochLog`): the loss terms, the learning
    rate, the time and, after an evaluation, its COCO numbers;
  - `evaluate` / `predict` print a line every 10% of the images (`Progress`).
On a terminal `train` keeps Keras' progress bars and `Progress` draws a one-line bar.
Keras' own `Progbar` cannot tell a file from a terminal (it treats every POSIX process
as interactive), so in line mode `fit` runs with verbose=0 and `EpochLog` writes.
"""

import sys
import time

import keras
import numpy as np


def interactive(stream=None):
    """True when `stream` (default sys.stdout) is a terminal."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _scalar(value):
    """A log value (a Python or numpy number, or a rank-1 array under multi-worker runs)."""
    return float(np.asarray(value).reshape(-1)[0])


def _number(value):
    value = _scalar(value)
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.3e}"


class EpochLog(keras.callbacks.Callback):
    """Prints one line per epoch, e.g.

        epoch 2/12  step 500/3000  41.3s  loss=0.8123 cls_loss=0.5012 box_loss=0.3111 lr=0.002 val_AP=0.1234

    The training terms are every log key that does not start with "val_": `terms`
    first, in that order, then the others; `learning_rate` (logged by
    LearningRateLogger, listed before this callback) as `lr`. `metrics` are the
    evaluation keys shown when present (logged by CocoMetricsCallback, listed before
    this callback, on the epochs it evaluates).

    Args:
        epochs: the run's epochs (for "epoch e/epochs": a resumed run fits in two parts).
        total_steps: the run's optimizer steps (for "step s/total"; None: not shown).
        terms: the loss keys in the order to show them, e.g. ("loss", *head.loss_names).
        metrics: evaluation log keys to show, in order.
        stream: where to write (default sys.stdout at each line).
    """

    METRICS = ("val_AP", "val_AP50", "val_AP75")

    def __init__(self, epochs=None, total_steps=None, terms=("loss",), metrics=METRICS, stream=None):
        super().__init__()
        self.epochs = epochs
        self.total_steps = total_steps
        self.terms = tuple(terms)
        self.metrics = tuple(metrics)
        self.stream = stream
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def format(self, epoch, logs, seconds, step=None):
        """-> the line for `epoch` (0-based) with `logs` (dict name -> value)."""
        epochs = self.epochs or (self.params or {}).get("epochs")
        parts = [f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else "")]
        if step is not None:
            parts.append(f"step {step}" + (f"/{self.total_steps}" if self.total_steps else ""))
        parts.append(f"{seconds:.1f}s")
        names = [name for name in logs if not name.startswith("val_") and name != "learning_rate"]
        names.sort(key=lambda name: self.terms.index(name) if name in self.terms else len(self.terms))
        values = [f"{name}={_number(logs[name])}" for name in names]
        if "learning_rate" in logs:
            values.append(f"lr={_scalar(logs['learning_rate']):.4g}")
        values += [f"{name}={_number(logs[name])}" for name in self.metrics if name in logs]
        return "  ".join(parts + [" ".join(values)])

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.time() - (self._start or time.time())
        step = None
        if self.model is not None and getattr(self.model, "optimizer", None) is not None:
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        print(self.format(epoch, dict(logs or {}), seconds, step), file=self.stream or sys.stdout, flush=True)


class Progress:
    """Progress of `total` items (images, frames): `update(n)` after each n done.

    bar (default: `interactive()`): a one-line bar redrawn with `\\r`; otherwise a
    plain line at every `every_percent`% (every 100 items when `total` is unknown)
    and at `close()`, e.g. "predict: 40/400 images (10%) 12.3s 3.3 images/s".
    `total` may be an estimate (a video's frame count): it grows with what is done.
    `note(text)` prints a line of its own without breaking the bar; `close()` ends it.
    """

    def __init__(self, total, what, unit="images", bar=None, every_percent=10, stream=None):
        self.total = None if total is None or total <= 0 else int(total)
        self.what, self.unit = what, unit
        self.interactive = interactive(stream) if bar is None else bool(bar)
        self.step = max(1, self.total * every_percent // 100) if self.total else 100
        self.stream = stream
        self.done = 0
        self._next = self.step
        self._start = time.time()
        self._drawn = False
        self._printed = 0  # `done` at the last plain line

    def _write(self, text):
        stream = self.stream or sys.stdout
        stream.write(text)
        stream.flush()

    def _status(self):
        seconds = time.time() - self._start
        rate = f" {self.done / seconds:.1f} {self.unit}/s" if seconds > 0 and self.done else ""
        of = f"/{self.total}" if self.total else ""
        percent = f" ({100 * self.done // self.total}%)" if self.total else ""
        return f"{self.what}: {self.done}{of} {self.unit}{percent} {seconds:.1f}s{rate}"

    def update(self, n=1):
        self.done += int(n)
        if self.total and self.done > self.total:
            self.total = self.done
        if self.interactive:
            width = 30
            filled = width * min(self.done, self.total) // self.total if self.total else 0
            bar = f"[{'#' * filled}{'.' * (width - filled)}] " if self.total else ""
            self._write(f"\r{bar}{self._status()}\x1b[K")
            self._drawn = True
        elif self.done >= self._next:
            self._line()
            while self._next <= self.done:
                self._next += self.step

    def _line(self):
        self._write(self._status() + "\n")
        self._printed = self.done

    def note(self, text, stream=None):
        """Prints `text` as a line of its own (to `stream`, default this one's)."""
        if self._drawn:
            self._write("\r\x1b[K")
            self._drawn = False
        stream = stream or self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def close(self):
        if self._drawn:
            self._write("\n")
            self._drawn = False
        elif not self.interactive and self.done != self._printed:
            self._line()


def track(iterable, progress, count=None):
    """Yields the items of `iterable`, advancing `progress` by `count(item)` (default 1)
    once the consumer asks for the next one; closes `progress` at the end."""
    try:
        for item in iterable:
            yield item
            progress.update(1 if count is None else count(item))
    finally:
        progress.close()
