"""The training run's Keras callbacks: checkpoints, the NaN/Inf guard, the learning-rate
log and the best model; plus the input check that names a non-finite batch."""

import json
import math
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from fpn_keras import distribute, schedules


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written file


class Checkpointer(keras.callbacks.Callback):
    """Checkpoints (weights + optimizer state, step counter included) every
    `every_n_steps` optimizer steps and at each epoch end; keeps the last `keep`.

    Files: `directory/ckpt-<step>.weights.h5` and `directory/checkpoint.json`
    ({"step", "epoch", "step_in_epoch", "path", "all"}), written atomically (a
    SIGKILL mid-save leaves the previous checkpoint in place). The step is
    the number of batches trained (`schedules.batches_trained`: `optimizer.iterations`
    without gradient accumulation), so resuming continues the data and the LR schedule. A non-finite
    loss stops all further saving: the last checkpoint stays the last finite one.
    Only the chief writes under multi-worker training (the others write to a
    throwaway directory, as tf.distribute expects every worker to save).
    """

    def __init__(self, directory, steps_per_epoch, every_n_steps=0, keep=3, write=True):
        super().__init__()
        self.directory = directory
        self.steps_per_epoch = int(steps_per_epoch)
        self.every_n_steps = int(every_n_steps or 0)
        self.keep = max(1, int(keep))
        self.write = write
        self.poisoned = False
        os.makedirs(directory, exist_ok=True)

    @property
    def state_path(self):
        return os.path.join(self.directory, "checkpoint.json")

    def latest(self):
        """-> the checkpoint.json dict, or None."""
        if not os.path.exists(self.state_path):
            return None
        with open(self.state_path) as f:
            state = json.load(f)
        # Stored relative to the directory (the run folder may move).
        state["path"] = os.path.join(self.directory, os.path.basename(state.get("path", "")))
        state["all"] = [os.path.join(self.directory, os.path.basename(p)) for p in state.get("all", [])]
        return state if os.path.exists(state["path"]) else None

    def restore(self, model):
        """Loads the latest checkpoint into `model` (built, compiled) -> its step, or 0."""
        state = self.latest()
        if state is None:
            return 0
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(state["path"])
        return int(state["step"])

    def _step(self):
        return schedules.batches_trained(self.model.optimizer)

    def save(self):
        """Writes a checkpoint of the current step (unless it exists) -> its path, or None."""
        if self.poisoned:
            return None
        step = self._step()
        state = self.latest() if self.write else None
        if state is not None and state["step"] == step:
            return state["path"]
        path = os.path.join(self.directory, f"ckpt-{step:09d}.weights.h5")
        if not self.write:  # non-chief worker: save (collectives) but throw away
            path = os.path.join(tempfile.mkdtemp(), "ckpt.weights.h5")
        tmp = path[: -len(".weights.h5")] + ".tmp.weights.h5"
        try:
            self.model.save_weights(tmp, overwrite=True)
            if not self.write:
                return None
            os.replace(tmp, path)
            kept = [p for p in (state or {}).get("all", []) if p != path and os.path.exists(p)] + [path]
            # checkpoint.json names the new file before any old one goes: a kill between
            # the two steps leaves an extra file, never a json naming a deleted one.
            write_json(self.state_path, {
                "step": step, "epoch": step // self.steps_per_epoch,
                "step_in_epoch": step % self.steps_per_epoch, "path": os.path.basename(path),
                "all": [os.path.basename(p) for p in kept[-self.keep:]]})
        except OSError as error:  # disk full, read-only or vanished folder
            raise CheckpointWriteError(path, step, state, error) from error
        for old in kept[: -self.keep]:
            os.remove(old)
        return path

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.poisoned = True
            return
        if self.every_n_steps and self._step() % self.every_n_steps == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.poisoned = True
        self.save()


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only folder); the message names
    the file, the OS error and the last complete checkpoint, which is left intact."""

    def __init__(self, path, step, last, error):
        intact = (f"the last complete checkpoint, {last['path']} (step {last['step']}), is intact"
                  if last else "no earlier checkpoint exists")
        super().__init__(getattr(error, "errno", None),
                         f"cannot write the checkpoint of optimizer step {step} to {path}: "
                         f"{getattr(error, 'strerror', None) or error}; {intact}. Free space or make the "
                         "run folder writable, then resume with --resume")

    def __str__(self):
        return self.strerror


class StopOnSignal(keras.callbacks.Callback):
    """SIGINT / SIGTERM (Ctrl-C, cluster schedulers, preemptible VMs) during `fit`:
    the step in progress finishes, a checkpoint of that exact step is written and
    `TrainingInterrupted` is raised out of `fit`. A second signal
    aborts at once, without saving. Used as a context manager around `fit`: it
    installs the handlers (main thread only) and restores the previous ones."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, checkpointer, announce=True):
        super().__init__()
        self.checkpointer = checkpointer
        self.announce = announce
        self.signal_name = None
        self._previous = {}

    def _handle(self, signum, frame):
        import signal

        if self.signal_name is not None:  # the second one: abort now
            self.__exit__()
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        if self.announce:
            print(f"\n{self.signal_name}: stopping after this step and saving a checkpoint "
                  "(send it again to abort without saving)", flush=True)

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}
        return False

    def on_train_batch_end(self, batch, logs=None):
        if self.signal_name is None:
            return
        step = schedules.batches_trained(self.model.optimizer)
        # Raised, not `stop_training`: the epoch-end work (evaluation, best model)
        # would outlast a scheduler's grace period.
        raise TrainingInterrupted(self.signal_name, step, self.checkpointer.save())


class TrainingInterrupted(Exception):
    """Training stopped on a signal after `step` optimizer steps; `checkpoint` holds that
    exact step (None if none could be written, e.g. after a non-finite loss)."""

    def __init__(self, signal_name, step, checkpoint):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        saved = (f"checkpoint {checkpoint} holds step {step}" if checkpoint
                 else "no checkpoint could be written (non-finite loss)")
        super().__init__(f"{signal_name} after optimizer step {step}: {saved}")

    @property
    def exit_code(self):
        """The shell's convention: 128 + the signal's number (SIGINT 130, SIGTERM 143)."""
        import signal

        return 128 + int(getattr(signal, self.signal_name))


class WorkerLost(Exception):
    """Multi-worker training stopped because another worker died (a collective op was
    aborted: TF's coordination service saw it stop sending heartbeats). Every worker
    has to be restarted with --resume; they continue from the chief's last checkpoint
    (Keras BackupAndRestore's semantics). `step`: this worker's optimizer step when it
    failed; `checkpoint`: the checkpoint.json dict (`Checkpointer.latest`) or None."""

    exit_code = 1

    def __init__(self, tasks, step, checkpoint, num_workers):
        self.tasks, self.step, self.checkpoint = tasks, step, checkpoint
        lost = ", ".join(tasks) if tasks else "another worker"
        start = (f"{checkpoint['path']} (step {checkpoint['step']})" if checkpoint
                 else "the first step (no checkpoint written yet)")
        super().__init__(
            f"multi-worker training lost a worker ({lost} stopped) after optimizer step {step}. "
            f"Restart every worker ({num_workers} in TF_CONFIG, each with its own TF_CONFIG) with the "
            f"same command and --resume: they continue from {start}")


NON_FINITE_DATA = "fpn_keras: non-finite values in a training batch"


def check_finite_batches(dataset):
    """Fails the input pipeline on NaN / Inf pixels or boxes, naming the batch's
    index in `dataset`: such values do not always show in the loss (ReLU maps NaN
    to 0 on CPU) but poison the BatchNorm statistics."""

    def check(index, batch):
        images, y = batch
        finite = tf.reduce_all(tf.math.is_finite(tf.cast(images, tf.float32)))
        if isinstance(y, dict) and "boxes" in y:
            finite = finite & tf.reduce_all(tf.math.is_finite(tf.cast(y["boxes"], tf.float32)))
        with tf.control_dependencies([tf.debugging.Assert(finite, [NON_FINITE_DATA, "batch index:", index])]):
            return tf.identity(images), y

    return dataset.enumerate().map(check)


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first NaN / Inf loss and remembers where (see `message`);
    `describe` words the same message for a non-finite batch caught in the pipeline."""

    def __init__(self, checkpointer=None, steps_per_epoch=None):
        super().__init__()
        self.checkpointer = checkpointer
        self.steps_per_epoch = steps_per_epoch
        self.message = None
        self._epoch = 0
        self._batch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._batch = batch

    def describe(self, what, step, batch=None):
        last = self.checkpointer.latest() if self.checkpointer is not None else None
        where = (f"{last['path']} (step {last['step']}, epoch {last['epoch'] + 1}, intact)"
                 if last else "none written yet")
        batch = self._batch if batch is None else batch
        return (f"training stopped: {what} at epoch {self._epoch + 1}, batch {batch + 1} of the epoch "
                f"(optimizer step {step}). Last finite checkpoint: {where}. Check the data "
                "(NaN/Inf pixels or boxes), lower train.learning_rate, add warmup or set "
                "train.global_clipnorm; resume with --resume.")

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.message or math.isfinite(float(np.asarray(loss).reshape(-1)[0])):
            return
        step = schedules.batches_trained(self.model.optimizer)
        self.message = self.describe(f"the loss became {float(np.asarray(loss).reshape(-1)[0])}", step, batch)
        self.model.stop_training = True


class EMAWeights(keras.callbacks.SwapEMAWeights):
    """train.use_ema: Keras' SwapEMAWeights(swap_on_epoch=True). Listed after the
    Checkpointer (checkpoints hold the raw weights and the averages) and before the
    evaluation: from each epoch end to the next epoch's start the model holds the
    averaged trainable weights, so the COCO metrics, best.keras and the callbacks after
    it see them (d2go's EMA hook for detectron2 and ultralytics evaluate and save the EMA model);
    `fit` ends with them (Keras' `finalize_variable_values`). Non-trainable variables
    (BatchNorm statistics) are not averaged (Keras averages trainable weights only).

    A `fit` that a second `fit` continues (a resumed run's partial epoch) ends holding
    the averages too, the raw weights lost: `keep_raw_weights()` before that `fit`
    and `restore_raw_weights()` after it put them back (`restore_raw_weights(False)`
    when no `fit` follows: the model keeps the averages)."""

    def __init__(self):
        super().__init__(swap_on_epoch=True)
        self._keep = False
        self._raw = None

    def keep_raw_weights(self):
        self._keep = True

    def on_epoch_end(self, epoch, logs=None):
        if self._keep and epoch == self.params["epochs"] - 1 and not self._ema_weights_in_model:
            self._raw = [keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables]
        super().on_epoch_end(epoch, logs)

    def restore_raw_weights(self, restore=True):
        """Puts the weights kept by `keep_raw_weights` back (restore=False: forgets them)."""
        if restore and self._raw is not None:
            for variable, value in zip(self.model.trainable_variables, self._raw):
                variable.assign(value)
            self._ema_weights_in_model = False  # the next epoch starts without a swap back
        self._keep, self._raw = False, None


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to the epoch logs (so that
    TensorBoard and CSVLogger listed after it record it as `learning_rate`)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class BestModelSaver(keras.callbacks.Callback):
    """Saves the model as `path` whenever the logged COCO metric `monitor` (logged by
    CocoMetricsCallback, listed before this one, e.g. "val_AP"; the model's
    `primary_metric` with the "val_" prefix) improves; `path`.json records it."""

    def __init__(self, path, monitor):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = None
        if os.path.exists(path + ".json"):
            with open(path + ".json") as f:
                self.best = json.load(f)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if self.best is not None and self.best["monitor"] == self.monitor and value <= self.best["value"]:
            return
        self.best = {"monitor": self.monitor, "value": value, "epoch": epoch + 1}
        with distribute.batchnorm_unsynchronized(self.model):  # loadable under any backend
            self.model.save(self.path)
        write_json(self.path + ".json", self.best)
