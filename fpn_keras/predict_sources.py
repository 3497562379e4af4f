"""What `fpn-keras predict` reads: image files, folders, glob patterns and video files.

`expand(arguments)` turns the command line's inputs into `Source`s, in order:
  - a file: a video when its suffix is one of VIDEO_SUFFIXES, else an image (the
    decoder decides from the content, whatever the suffix);
  - a folder: its files with an image or video suffix, sorted by name; other files
    and sub-folders are skipped with a reason (`recursive=True` walks sub-folders);
  - a pattern with `*`, `?` or `[` that names no existing path: expanded by us (so a
    quoted pattern works as well as one the shell expanded), `**` with recursive;
    matched files as in a folder, matched folders as folders.
A path that does not exist, or a pattern that matches nothing, raises SourceError.

Video frames are decoded (and annotated videos written) with OpenCV, the optional
extra `video` (`pip install "fpn_keras[video]"`), imported only when a video is read.
"""

import glob
import os
from dataclasses import dataclass

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
VIDEO_EXTRA = 'reading and writing video needs OpenCV: pip install "fpn_keras[video]" (opencv-python-headless)'


class SourceError(ValueError):
    """An input that names nothing (a usage error)."""


class MissingVideoSupport(ImportError):
    """OpenCV, the `video` extra, is not installed."""


@dataclass(frozen=True)
class Source:
    """One input: `kind` "image" or "video"."""
    path: str
    kind: str


def kind_of(path):
    """"video", "image" or None (neither suffix) for a file name."""
    suffix = os.path.splitext(str(path))[1].lower()
    return "video" if suffix in VIDEO_SUFFIXES else "image" if suffix in IMAGE_SUFFIXES else None


def _folder(path, recursive, sources, skipped):
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isdir(full):
            if recursive:
                _folder(full, recursive, sources, skipped)
            else:
                skipped.append((full, "a folder inside a folder (--recursive reads them)"))
        else:
            _listed_file(full, sources, skipped)


def _listed_file(path, sources, skipped):
    kind = kind_of(path)
    if kind is None:
        skipped.append((path, f"not an image or video file name (suffix {os.path.splitext(path)[1] or 'none'!r}; "
                              f"images: {', '.join(IMAGE_SUFFIXES)}; videos: {', '.join(VIDEO_SUFFIXES)})"))
    else:
        sources.append(Source(path, kind))


def expand(arguments, recursive=False):
    """-> (sources: [Source], skipped: [(path, reason)]), each path once, in the order given."""
    sources, skipped = [], []
    for argument in map(str, arguments):
        if os.path.isdir(argument):
            _folder(argument, recursive, sources, skipped)
        elif os.path.exists(argument):
            sources.append(Source(argument, kind_of(argument) or "image"))
        elif glob.has_magic(argument):
            matches = sorted(glob.glob(argument, recursive=recursive))
            if not matches:
                raise SourceError(f"{argument!r}: no file or folder matches this pattern")
            for match in matches:
                if os.path.isdir(match):
                    _folder(match, recursive, sources, skipped)
                else:
                    _listed_file(match, sources, skipped)
        else:
            raise SourceError(f"image or video {argument!r} does not exist (no such file or folder)")
    seen, unique = set(), []
    for source in sources:
        key = os.path.abspath(source.path)
        if key not in seen:
            seen.add(key)
            unique.append(source)
    return unique, skipped


def read_image(path):
    """-> (uint8 [h, w, 3] RGB, warning or None); ValueError naming the file when it
    cannot be decoded. A JPEG damaged in the middle decodes (PIL says nothing): the
    warning says so in libjpeg's words."""
    from fpn_keras.preprocessing import read_image as decode

    image = decode(path)
    warning = None
    if str(path).lower().endswith((".jpg", ".jpeg")):
        from fpn_keras.data.jpeg_check import jpeg_damage

        damage = jpeg_damage(path)
        if damage:
            warning = (f"{path}: damaged JPEG data (libjpeg: {damage}); detections on the damaged part "
                       "of the image mean nothing")
    return image, warning


def opencv():
    """The cv2 module, or MissingVideoSupport naming the extra to install."""
    try:
        import cv2
    except ImportError:
        raise MissingVideoSupport(VIDEO_EXTRA) from None
    return cv2


class VideoReader:
    """The frames of a video file in order, uint8 [h, w, 3] RGB (OpenCV's FFmpeg reader).

    Attributes: fps (30 when the file does not say), width, height, frame_count (the
    container's count, an estimate; None when unknown). ValueError when OpenCV cannot
    open the file."""

    def __init__(self, path):
        cv2 = opencv()
        self.path = str(path)
        self._capture = cv2.VideoCapture(self.path)
        if not self._capture.isOpened():
            raise ValueError(f"cannot read video {self.path!r} (OpenCV could not open it)")
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0)
        self.fps = fps if np.isfinite(fps) and fps > 0 else 30.0
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 else None
        self._cv2 = cv2

    def __iter__(self):
        while True:
            ok, frame = self._capture.read()
            if not ok:
                return
            yield self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB)

    def close(self):
        self._capture.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def video_output_name(path):
    """The annotated video's file name for input `path`: <stem>.avi for an .avi (Motion
    JPEG), else <stem>.mp4 (MPEG-4 part 2, which OpenCV's wheels always write)."""
    stem, suffix = os.path.splitext(os.path.basename(str(path)))
    return stem + (".avi" if suffix.lower() == ".avi" else ".mp4")


class VideoWriter:
    """Writes uint8 [h, w, 3] RGB frames of one size to `path` (.avi: MJPG, else mp4v)
    at `fps`; RuntimeError when OpenCV cannot open the file for writing."""

    def __init__(self, path, fps, width, height):
        cv2 = opencv()
        self.path = str(path)
        codec = "MJPG" if self.path.lower().endswith(".avi") else "mp4v"
        self._writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*codec), float(fps),
                                       (int(width), int(height)))
        if not self._writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write the video {self.path!r} (codec {codec})")
        self.size = (int(height), int(width))
        self.frames = 0
        self._cv2 = cv2

    def write(self, frame):
        if tuple(frame.shape[:2]) != self.size:
            raise ValueError(f"frame of shape {frame.shape} for a {self.size[0]}x{self.size[1]} video")
        self._writer.write(self._cv2.cvtColor(np.ascontiguousarray(frame, np.uint8), self._cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self):
        self._writer.release()
