"""A game as a video file (mp4 or gif) and a single frame as PNG.

mp4 is H.264 (libx264), yuv420p, with the index at the front (`+faststart`): what every browser
plays, also from a page that streams it. It needs the ffmpeg binary that the `imageio-ffmpeg`
package ships (the "experiments" extra, in requirements.txt); frames are streamed to it, so a
whole 27,000-step Atari game never sits in memory. gif needs only Pillow (imageio's own
dependency), holds every frame until it is written, and is much larger: for short games.

    with video.VideoWriter("pong.mp4", fps=15, scale=2) as writer:
      for frame in frames:             # [H, W, 3] uint8 RGB
        writer.append(frame)
"""

import importlib.util
import os
import warnings
from typing import Any, List, Optional, Sequence

import imageio
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".gif")


def check_video_path(path: str) -> None:
  """Raises ValueError unless `path` ends in a supported video extension."""
  extension = os.path.splitext(path)[1].lower()
  if extension not in VIDEO_EXTENSIONS:
    raise ValueError(f"Unsupported video file {path!r}: the name must end in "
                     f"{' or '.join(VIDEO_EXTENSIONS)}.")


def upscale(frame: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour upscaling of an `[H, W, C]` frame by an integer `factor`."""
  if factor < 1:
    raise ValueError(f"factor must be >= 1, got {factor}.")
  if factor == 1:
    return frame
  return np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1)


def _rgb(frame: np.ndarray) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.ndim == 2:
    frame = frame[..., None]
  if frame.ndim != 3 or frame.shape[-1] not in (1, 3):
    raise ValueError(f"Frames must be [H, W], [H, W, 1] or [H, W, 3], got {frame.shape}.")
  if frame.shape[-1] == 1:
    frame = np.repeat(frame, 3, axis=-1)
  return frame.astype(np.uint8, copy=False)


def _even(frame: np.ndarray) -> np.ndarray:
  # yuv420p subsamples chroma 2×2: H.264 needs even sides. Repeat the last row/column.
  height, width = frame.shape[:2]
  return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def gif_frame_ms(fps: float) -> int:
  """The GIF delay per frame for `fps`: a multiple of 10 ms (GIF counts centiseconds), at
  least 20 (browsers slow shorter ones down to 100 ms)."""
  return max(20, 10 * round(100 / fps))


class VideoWriter:
  """Appends frames to an mp4 (streamed to ffmpeg) or a gif (written at `close`).

  Raises (at construction):
    ValueError: an unsupported extension.
    ImportError: mp4 without the imageio-ffmpeg package.
  """

  def __init__(self, path: str, fps: float, scale: int = 1):
    check_video_path(path)
    if fps <= 0:
      raise ValueError(f"fps must be > 0, got {fps}.")
    self.path = path
    self._fps = fps
    self._scale = scale
    self._shape: Optional[tuple] = None
    self.frames = 0
    self._gif_frames: List[np.ndarray] = []
    self._mp4: Any = None
    self._mp4_path = path.lower().endswith(".mp4")
    if self._mp4_path and importlib.util.find_spec("imageio_ffmpeg") is None:
      # imageio's ffmpeg plugin runs the binary that imageio-ffmpeg ships, an optional
      # dependency: say so plainly rather than deep inside imageio.
      raise ImportError("Writing mp4 needs the imageio-ffmpeg package (pip install "
                        "imageio-ffmpeg); a .gif path needs only Pillow.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def append(self, frame: np.ndarray) -> None:
    """Adds one `[H, W, 3]` uint8 RGB (or grayscale) frame; all must have one size."""
    frame = _rgb(upscale(_rgb(frame), self._scale))
    if self._shape is None:
      self._shape = frame.shape
    elif frame.shape != self._shape:
      raise ValueError(f"Frames differ in size: {frame.shape} after {self._shape}.")
    if not self._mp4_path:
      self._gif_frames.append(frame)
    else:
      with warnings.catch_warnings():
        # JAX warns at every fork; imageio's are subprocess's fork-then-exec of ffmpeg, which
        # run no Python in the child.
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
        if self._mp4 is None:
          self._mp4 = imageio.v2.get_writer(
              self.path, format="FFMPEG", mode="I", fps=self._fps, codec="libx264",
              pixelformat="yuv420p", quality=8, macro_block_size=1, ffmpeg_log_level="error",
              output_params=["-movflags", "+faststart"])
        self._mp4.append_data(_even(frame))
    self.frames += 1

  def close(self) -> int:
    """Finishes the file; returns the number of frames written."""
    if self.frames == 0:
      raise ValueError(f"No frames to write to {self.path}.")
    if self._mp4 is not None:
      with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
        self._mp4.close()
      self._mp4 = None
    elif self._gif_frames:
      imageio.v3.imwrite(self.path, np.stack(self._gif_frames), extension=".gif",
                         duration=gif_frame_ms(self._fps), loop=0)  # loop=0: forever.
      self._gif_frames = []
    return self.frames

  def __enter__(self) -> "VideoWriter":
    return self

  def __exit__(self, exc_type, exc, traceback) -> None:
    if exc_type is None:
      self.close()
    elif self._mp4 is not None:
      self._mp4.close()


def write_video(path: str, frames: Sequence[np.ndarray], fps: float, scale: int = 1) -> int:
  """Writes `frames` to an mp4 or gif; returns the count (see `VideoWriter`)."""
  with VideoWriter(path, fps, scale) as writer:
    for frame in frames:
      writer.append(frame)
  return writer.frames


class MiddleFrame:
  """Keeps, of a stream of frames of unknown length, one close to the middle.

  At most `2 × capacity` frames are held, evenly spaced: when the buffer is full every other
  one is dropped and the spacing doubles.
  """

  def __init__(self, capacity: int = 32):
    self._capacity = capacity
    self._kept: List[np.ndarray] = []
    self._stride = 1
    self._count = 0

  def add(self, frame: np.ndarray) -> None:
    if self._count % self._stride == 0:
      self._kept.append(np.array(frame))
      if len(self._kept) > 2 * self._capacity:
        self._kept = self._kept[::2]
        self._stride *= 2
    self._count += 1

  def middle(self) -> np.ndarray:
    """The kept frame nearest to frame `count // 2`."""
    if not self._kept:
      raise ValueError("No frames were added.")
    return self._kept[min(len(self._kept) - 1, round((self._count // 2) / self._stride))]


def write_png(path: str, frame: np.ndarray, scale: int = 1) -> None:
  """Writes one `[H, W, 3]` (or grayscale) frame as PNG."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  imageio.v3.imwrite(path, _rgb(upscale(_rgb(frame), scale)), extension=".png")
