"""Keras callback that computes COCO metrics at the end of epochs."""

import keras

from fpn_keras.evaluation.coco_eval import CocoEvaluator, evaluate_model


class CocoMetricsCallback(keras.callbacks.Callback):
    """Runs `evaluate_model` every `every_n_epochs` epochs (and on the last
    epoch) and writes the metrics into `logs` as `{prefix}AP`, ... so they
    reach `History` and any `TensorBoard` callback listed after this one.

    Args:
        dataset: iterable of `(images, targets)`, see `evaluate_model`.
        class_names: optional list of K class names.
        every_n_epochs: evaluation period in epochs (>= 1).
        max_batches: optional limit on the batches evaluated.
        prefix: prefix for the log keys.
        verbose: 0 silent, 1 one summary line, 2 progress bar + COCO table.
        log_dir: optional folder for TensorBoard pictures at every evaluation
            (`evaluation.tensorboard.EvaluationSummaries`: detections on the first
            `num_images` images of `dataset`, PR curves), at step = epoch.
        num_images: validation images drawn into `log_dir` each time.
        voc_metric: also log Pascal VOC mAP at IoU 0.5 as `{prefix}VOC07_mAP` (11-point)
            and `{prefix}VOC_mAP` (area), -1 without ground truth (`evaluation.voc_eval`).

    Attributes:
        history: list of `(epoch, metrics_dict)`.
    """

    def __init__(
        self,
        dataset,
        class_names=None,
        every_n_epochs=1,
        max_batches=None,
        prefix="val_",
        verbose=1,
        log_dir=None,
        num_images=4,
        voc_metric=False,
    ):
        super().__init__()
        if int(every_n_epochs) < 1:
            raise ValueError(
                f"`every_n_epochs` must be >= 1, received {every_n_epochs}."
            )
        self.dataset = dataset
        self.class_names = class_names
        self.every_n_epochs = int(every_n_epochs)
        self.max_batches = max_batches
        self.prefix = prefix
        self.verbose = verbose
        self.log_dir = log_dir
        self.num_images = num_images
        self.voc_metric = bool(voc_metric)
        self.history = []
        self.summaries = None
        if log_dir is not None:
            from fpn_keras.evaluation.tensorboard import EvaluationSummaries

            self.summaries = EvaluationSummaries(log_dir, dataset, num_images)

    def _should_run(self, epoch):
        last_epoch = (self.params or {}).get("epochs")
        return (epoch + 1) % self.every_n_epochs == 0 or (
            last_epoch is not None and epoch + 1 == last_epoch
        )

    def on_epoch_end(self, epoch, logs=None):
        if not self._should_run(epoch):
            return
        evaluator = CocoEvaluator(class_names=self.class_names,
                                  category_ids=getattr(self.class_names, "category_ids", None))
        metrics = evaluate_model(
            self.model,
            self.dataset,
            class_names=self.class_names,
            max_batches=self.max_batches,
            verbose=self.verbose >= 2,
            evaluator=evaluator,
        )
        if self.voc_metric:
            from fpn_keras.evaluation.report import voc_metrics

            voc = voc_metrics(evaluator)
            metrics["VOC07_mAP"] = -1.0 if voc["mAP07"] is None else voc["mAP07"]
            metrics["VOC_mAP"] = -1.0 if voc["mAP"] is None else voc["mAP"]
        if self.summaries is not None:
            self.summaries.write(self.model, evaluator, epoch)
        self.history.append((epoch, metrics))
        if logs is not None:
            for name, value in metrics.items():
                logs[self.prefix + name] = value
        if self.verbose == 1:
            print(
                f"Epoch {epoch + 1}: "
                f"{self.prefix}AP={metrics['AP']:.4f} "
                f"{self.prefix}AP50={metrics['AP50']:.4f} "
                f"{self.prefix}AP75={metrics['AP75']:.4f}"
            )
