"""`fpn-keras predict` over many inputs: images and video frames through a detector in
batches, drawn images, annotated videos and one COCO-results file.

Files written to the output folder:
  <name>.png       each image with its detections drawn (names made unique: a_1.png, ...)
  <name>.mp4       each video with every frame drawn: the same frame count, fps and
                   size (<name>.avi, Motion JPEG, for an .avi input)
  results.json     COCO results format, [{"image_id", "category_id", "bbox": [x, y, w, h],
                   "score"}] in each image's pixels (pycocotools' `COCO.loadRes` reads it)
  images.json      {"images": [{"id", "file_name", "path", "height", "width"} and, for a
                   video frame, "video" and "frame" (0-based)], "categories": [{"id", "name"}]}:
                   what each image_id of results.json is
  detections.json  {path, or "path#frame" for a video frame: [{"box": [x1, y1, x2, y2],
                   "label", "class", "score"}]}, as earlier versions wrote
Category ids are the model's `category_ids` (a converted COCO model's) or label + 1, as
`fpn-keras evaluate` writes them.
"""

import json
import os
import sys
from dataclasses import dataclass

import numpy as np

from fpn_keras import predict_sources, visualization
from fpn_keras.progress import Progress


@dataclass
class Item:
    """One image to run: a file's image, or frame `frame` of a video at `fps`."""
    source: predict_sources.Source
    image: np.ndarray
    frame: int = None
    fps: float = None


def read_items(sources, skip, warn):
    """Yields the Items of `sources` in order; a file that cannot be read is passed to
    `skip(path, reason)` and the rest go on; `warn(text)` gets a damaged JPEG's warning."""
    for source in sources:
        if source.kind == "image":
            try:
                image, warning = predict_sources.read_image(source.path)
            except ValueError as error:
                skip(source.path, str(error))
                continue
            if warning:
                warn(warning)
            yield Item(source, image)
            continue
        try:
            reader = predict_sources.VideoReader(source.path)
        except ValueError as error:
            skip(source.path, str(error))
            continue
        with reader:
            count = 0
            for count, frame in enumerate(reader, start=1):
                yield Item(source, frame, count - 1, reader.fps)
        if count == 0:
            skip(source.path, "OpenCV decoded no frame from this video")


def batches(items, batch_size):
    """Groups consecutive items of the same image shape, at most `batch_size` each."""
    batch = []
    for item in items:
        if batch and (len(batch) == batch_size or item.image.shape != batch[0].image.shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


class OutputWriter:
    """Draws, writes and records each image's detections (see the module docstring)."""

    def __init__(self, out, class_names=None, category_ids=None, note=print):
        self.out = out
        self.class_names = list(class_names or [])
        self.category_ids = None if category_ids is None else [int(c) for c in category_ids]
        self.note = note
        self.results, self.images, self.detections = [], [], {}
        self.num_images = self.num_frames = self.num_detections = 0
        self.videos = []
        self._used, self._video, self._video_source, self._video_detections = set(), None, None, 0

    def _name(self, stem):
        name, i = stem, 1
        while name in self._used:
            name, i = f"{stem}_{i}", i + 1
        self._used.add(name)
        return name

    def category_id(self, label):
        return self.category_ids[label] if self.category_ids is not None else int(label) + 1

    def add(self, item, boxes, labels, scores):
        """boxes [n, 4] xyxy in the item's pixels, labels [n], scores [n]: kept detections."""
        height, width = item.image.shape[:2]
        image_id = len(self.images) + 1
        record = {"id": image_id, "file_name": os.path.basename(item.source.path), "path": item.source.path,
                  "height": int(height), "width": int(width)}
        key = item.source.path
        if item.frame is not None:
            record.update(video=item.source.path, frame=item.frame)
            key = f"{item.source.path}#{item.frame}"
        self.images.append(record)
        rows = []
        for box, label, score in zip(boxes, labels, scores):
            x1, y1, x2, y2 = (float(v) for v in box)
            label = int(label)
            self.results.append({"image_id": image_id, "category_id": self.category_id(label),
                                 "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                 "score": round(float(score), 5)})
            rows.append({"box": [round(v, 2) for v in (x1, y1, x2, y2)], "label": label,
                         "class": self.class_names[label] if 0 <= label < len(self.class_names) else str(label),
                         "score": round(float(score), 4)})
        self.detections[key] = rows
        self.num_detections += len(rows)
        drawn = visualization.draw_detections(item.image, boxes, labels, scores,
                                              class_names=self.class_names or None)
        if item.frame is None:
            self._end_video()
            self.num_images += 1
            stem = os.path.splitext(os.path.basename(item.source.path))[0]
            visualization.save_image(drawn, os.path.join(self.out, self._name(stem) + ".png"))
            return
        if self._video_source != item.source:
            self._end_video()
            name = predict_sources.video_output_name(item.source.path)
            stem, suffix = os.path.splitext(name)
            path = os.path.join(self.out, self._name(stem) + suffix)
            self._video = predict_sources.VideoWriter(path, item.fps, width, height)
            self._video_source, self._video_detections = item.source, 0
        self._video.write(drawn)
        self._video_detections += len(rows)
        self.num_frames += 1

    def _end_video(self):
        if self._video is None:
            return
        self._video.close()
        self.videos.append(self._video.path)
        self.note(f"{self._video_source.path}: {self._video.frames} frames, {self._video_detections} "
                  f"detections -> {self._video.path}")
        self._video, self._video_source = None, None

    def close(self):
        """Ends the open video and writes results.json, images.json, detections.json."""
        self._end_video()
        categories = [{"id": self.category_id(i), "name": name} for i, name in enumerate(self.class_names)]
        for name, data in (("results.json", self.results),
                           ("images.json", {"images": self.images, "categories": categories}),
                           ("detections.json", self.detections)):
            with open(os.path.join(self.out, name), "w") as f:
                json.dump(data, f, indent=None if name == "results.json" else 1)


def _stderr(text):
    print(text, file=sys.stderr, flush=True)


def run(detect, sources, out, class_names=None, category_ids=None, score_threshold=0.3, batch_size=8,
        skipped=(), bar=None, prog="fpn-keras predict"):
    """Runs `detect` over `sources` (predict_sources.Source) and writes the files of the
    module docstring into `out`; prints a progress line every 10% (a bar on a terminal,
    or with `bar`), each skipped file with its reason, and a summary line.

    detect: uint8 [N, h, w, 3] -> (boxes [N, D, 4] xyxy in the images' pixels, scores
        [N, D], labels [N, D] int, -1 padding).
    skipped: (path, reason) found while expanding the inputs (reported here too).
    Returns the summary: {"images", "videos", "frames", "detections", "skipped": [(path, reason)]}.
    """
    os.makedirs(out, exist_ok=True)
    estimate = 0
    for source in sources:
        if source.kind == "image":
            estimate += 1
            continue
        try:
            with predict_sources.VideoReader(source.path) as reader:
                estimate += reader.frame_count or 0
        except ValueError:
            pass
    progress = Progress(estimate, "predict", "images", bar=bar)
    skipped = list(skipped)

    def skip(path, reason):
        skipped.append((path, reason))
        progress.note(f"{prog}: skipping {path}: {reason}", stream=sys.stderr)

    for path, reason in skipped:
        progress.note(f"{prog}: skipping {path}: {reason}", stream=sys.stderr)
    writer = OutputWriter(out, class_names, category_ids, note=progress.note)
    items = read_items(sources, skip, lambda text: progress.note(f"{prog}: warning: {text}", stream=sys.stderr))
    try:
        for batch in batches(items, batch_size):
            boxes, scores, labels = detect(np.stack([item.image for item in batch]))
            for item, b, s, l in zip(batch, boxes, scores, labels):
                keep = (l >= 0) & (s >= score_threshold)
                writer.add(item, b[keep], l[keep], s[keep])
            progress.update(len(batch))
    finally:
        progress.close()
        writer.close()
    return {"images": writer.num_images, "videos": len(writer.videos), "frames": writer.num_frames,
            "detections": writer.num_detections, "skipped": skipped}


def summary_line(summary, out, score_threshold):
    """One line: what was read, found, skipped and written."""
    parts = [f"{summary['images']} image(s)"]
    if summary["videos"]:
        parts.append(f"{summary['videos']} video(s) ({summary['frames']} frames)")
    text = f"predict: {' and '.join(parts)}, {summary['detections']} detections with score >= {score_threshold}"
    if summary["skipped"]:
        names = ", ".join(os.path.basename(path) for path, _ in summary["skipped"][:5])
        more = ", ..." if len(summary["skipped"]) > 5 else ""
        text += f"; skipped {len(summary['skipped'])} input(s) ({names}{more})"
    return text + (f"; wrote {os.path.join(out, 'results.json')} (COCO results), images.json, "
                   f"detections.json and the drawn images/videos in {out}")
