"""What a generation produced, encoded as files: the result every protocol adapter turns into its answer."""

from __future__ import annotations

from dataclasses import dataclass

from PIL.Image import Image

from .. import media
from ..marks import NO_MARKING, Marking
from .request import GenerationRequest


@dataclass(frozen=True)
class VideoInfo:
    """What a client needs to know about a returned video."""

    num_frames: int
    fps: int
    width: int
    height: int
    duration_seconds: float


@dataclass(frozen=True)
class CacheReport:
    """What --cache skipped of one generation: attention-layer evaluations, of those an uncached run makes."""

    skipped_layers: int
    total_layers: int

    @property
    def skipped_fraction(self) -> float:
        """skipped / total, rounded to 3 places (0 when nothing ran)."""
        return round(self.skipped_layers / self.total_layers, 3) if self.total_layers else 0.0


def cache_fields(report: CacheReport) -> dict[str, float]:
    """The report as an answer shows it (v1, OpenAI): the counts and the fraction."""
    return {
        "skipped_layers": report.skipped_layers,
        "total_layers": report.total_layers,
        "skipped_fraction": report.skipped_fraction,
    }


@dataclass(frozen=True)
class GenerationResult:
    """What one generation produced, encoded: image files, or one video file with its VideoInfo."""

    task_type: str
    seed: int
    files: list[bytes]
    output_format: str
    width: int
    height: int
    video: VideoInfo | None = None
    cache: CacheReport | None = None  # with --cache
    response_format: str = "b64_json"  # how the answer carries the files: inline, or as URLs ("url")
    objects: tuple[str, ...] = ()  # with --output_store: the files' s3:// URIs, once uploaded
    urls: tuple[str, ...] = ()  # response_format url: the files' presigned GET URLs

    def shown_files(self) -> list[str]:
        """The files as an answer shows them: presigned URLs, or data URLs."""
        return list(self.urls) or [media.data_url(data, self.content_type) for data in self.files]

    @property
    def content_type(self) -> str:
        """The MIME type of the files."""
        return media.content_type(self.output_format)


def encode_result(
    request: GenerationRequest,
    seed: int,
    output: list[Image] | media.Video,
    png_compress_level: int = media.DEFAULT_PNG_COMPRESS_LEVEL,
    marking: Marking = NO_MARKING,
) -> GenerationResult:
    """Encode a runner's output as the request asks, with `marking`'s watermark in the pixels and its signed
    credentials in each file (CPU work: call it off the event loop)."""
    assert request.task_type is not None and request.output_format is not None
    encoding = media.Encoding(
        request.output_format,
        request.quality if request.quality is not None else media.DEFAULT_QUALITY,
        png_compress_level,
    )
    task, file_format, answer = request.task_type, request.output_format, request.response_format or "b64_json"
    if isinstance(output, media.Video):
        height, width = output.frames.shape[1:3]
        info = VideoInfo(len(output.frames), output.fps, width, height, round(output.duration_seconds, 3))
        video = media.Video(marking.frames(output.frames), output.fps)
        files = [marking.file(media.encode_video(video, encoding), file_format)]
        return GenerationResult(task, seed, files, file_format, width, height, info, response_format=answer)
    width, height = output[0].size
    pictures = marking.pictures(output)
    files = [
        marking.file(media.encode_image(image, encoding), file_format, index) for index, image in enumerate(pictures)
    ]
    return GenerationResult(task, seed, files, file_format, width, height, response_format=answer)
