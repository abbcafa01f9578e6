"""libx264 through PyAV at the seed shape (81 frames of 640x720, crf 19, preset medium): PyAV's default slice
threading against frame threading on this host's CPUs. It is why wan/video_io.py uses frame threads.

    python3 -m wanfp4.bench.mux_threads
"""
import io
import os
import time

import av
import numpy as np


def frames(n: int = 81, height: int = 720, width: int = 640) -> np.ndarray:
    """A horizontal gradient plus noise: smooth like a decoded video, not trivially compressible."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, None, :, None]
    noisy = ramp * 0.7 + rng.random((n, height, width, 3), dtype=np.float32) * 50
    return np.clip(noisy, 0, 255).astype(np.uint8)


def encode(video: np.ndarray, thread_type: str | None) -> tuple[float, int]:
    """(seconds, bytes) of encoding `video` to an in-memory MP4."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "19", "preset": "medium"}
        if thread_type:
            stream.codec_context.thread_type = thread_type
        start = time.perf_counter()
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        seconds = time.perf_counter() - start
    return seconds, len(buf.getvalue())


if __name__ == "__main__":
    video = frames()
    print("cpus", os.cpu_count())
    for thread_type in (None, "FRAME", None, "FRAME"):
        seconds, size = encode(video, thread_type)
        print(f"mux {thread_type or 'default'} {seconds:.2f} s, {size} bytes")
