"""This year's image families as table rows: Qwen-Image, Qwen-Image-Edit (and Edit-Plus), FLUX.2 ([dev], [klein]),
Z-Image (Turbo) and FLUX.1 Kontext. Each row says which diffusers pipeline serves each task, how its variants are
told apart, and the authors' defaults; `image_runner.py` is the one runner that serves every row. The next family
(FLUX.3-klein, Qwen-Image 2.1, ...) is a row here and a tiny builder in `testing/image_builders.py`.

Defaults and their sources (docs/models.md lists them too):
- Qwen-Image: model card (Qwen/Qwen-Image): 50 steps, true_cfg_scale 4.0, negative prompt " ", 1328x1328.
- Qwen-Image-Edit: model card: 50 steps, true_cfg_scale 4.0, negative prompt " ", one picture.
- Qwen-Image-Edit-2509/2511 (Edit-Plus): model cards: 40 steps, true_cfg_scale 4.0, 1 to 3 pictures.
- FLUX.2 [dev]: Black Forest Labs' model card and diffusers' docs: 50 steps, guidance 4.0 (guidance-distilled),
  up to 10 reference pictures.
- FLUX.2 [klein] 4B/9B (step-distilled): BFL's model cards: 4 steps, guidance 1.0 (none); [klein] base: 50 steps,
  guidance 4.0 (classifier-free); up to 4 reference pictures.
- Z-Image-Turbo: model card (Tongyi-MAI/Z-Image-Turbo): 9 steps (8 transformer calls), guidance 0.0, 1024x1024;
  Z-Image (base): model card: 50 steps, guidance 4.0.
- FLUX.1 Kontext [dev]: BFL's model card: 28 steps, guidance 2.5, one picture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusers import (
    DiffusionPipeline,
    Flux2KleinInpaintPipeline,
    Flux2KleinPipeline,
    Flux2Pipeline,
    FluxKontextInpaintPipeline,
    FluxKontextPipeline,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageImg2ImgPipeline,
    QwenImageInpaintPipeline,
    QwenImagePipeline,
    ZImageImg2ImgPipeline,
    ZImageInpaintPipeline,
    ZImagePipeline,
)

from . import processors


@dataclass(frozen=True)
class Guidance:
    """How a variant is guided, and the defaults of a request that does not say.

    - guidance_scale: its default, or None when the variant has no such input (sending it is a 400);
    - cfg_above_one: guidance_scale > 1 runs classifier-free guidance (two transformer calls a step), and only
      then is a negative prompt read;
    - true_cfg_scale: its default, or None when the variant has no true CFG (Qwen-Image's, FLUX's);
    - negative_prompt: whether the pipeline reads one, and the authors' default when a request sends none.
    """

    guidance_scale: float | None = None
    cfg_above_one: bool = False
    true_cfg_scale: float | None = None
    takes_negative_prompt: bool = False
    default_negative_prompt: str | None = None


@dataclass(frozen=True)
class Variant:
    """One model of a family: its pipelines per task, the authors' defaults, and how many pictures it edits from."""

    title: str
    pipelines: Mapping[str, type[DiffusionPipeline]]  # task -> class; the first is loaded, the rest share it
    steps: int
    guidance: Guidance
    width: int = 1024
    height: int = 1024
    max_pictures: int = 0  # edit: the most pictures; 0 when the variant does not edit
    max_sequence_length: int = 512

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this variant serves."""
        return tuple(self.pipelines)


@dataclass(frozen=True)
class ImageFamily:
    """A registry row: the variants, which model_index.json class names mean each, and the family's needs."""

    name: str
    title: str
    variants: Mapping[str, Variant]
    class_names: Mapping[str, str]  # model_index.json `_class_name` -> the variant it means
    quantized: tuple[str, ...] = ("transformer",)  # what --quantize quantizes (the denoiser; big text encoders)
    lora_family: str | None = None  # whose LoRA adapters fit its transformer (lora_catalog.py), when not its own
    caches: tuple[str, ...] = ("taylorseer", "mag")  # the --cache values diffusers' hooks run on (cache.py)
    # Components this server loads itself (name -> loader); see processors.py for why.
    own_components: Mapping[str, processors.ComponentLoader] = field(default_factory=dict)

    def detect(self, index: Mapping[str, Any], model_id: str) -> tuple[str, str]:
        """(variant, why) from a model_index.json of this family (and the folder name where the index cannot
        tell, as for Z-Image Turbo)."""
        class_name = str(index.get("_class_name"))
        variant = self.class_names[class_name]
        why = f"its model_index.json names {class_name}"
        refine = VARIANT_REFINERS.get(self.name)
        if refine is not None:
            variant, more = refine(variant, index, model_id)
            why += more
        return variant, why

    @property
    def adapters(self) -> str:
        """The adapter family of its LoRA files."""
        return self.lora_family or self.name


def _klein_distilled(variant: str, index: Mapping[str, Any], model_id: str) -> tuple[str, str]:
    if variant != "klein":
        return variant, ""
    if index.get("is_distilled", False):
        return "klein", " with is_distilled true (step-distilled)"
    return "klein_base", " with is_distilled false (the undistilled base)"


def _z_image_turbo(variant: str, index: Mapping[str, Any], model_id: str) -> tuple[str, str]:
    # The Turbo and base folders hold the same classes and configs: only the name tells them apart.
    if "turbo" in Path(model_id.rstrip("/")).name.lower():
        return "turbo", " and its name says Turbo"
    return "base", " and its name does not say Turbo (set --model_variant turbo if it is)"


VARIANT_REFINERS = {"flux2": _klein_distilled, "z_image": _z_image_turbo}

QWEN_GUIDANCE = Guidance(true_cfg_scale=4.0, takes_negative_prompt=True, default_negative_prompt=" ")
QWEN_IMAGE = ImageFamily(
    "qwen_image",
    "Qwen-Image",
    variants={
        "qwen_image": Variant(
            "Qwen-Image",
            {"text2img": QwenImagePipeline, "img2img": QwenImageImg2ImgPipeline, "inpaint": QwenImageInpaintPipeline},
            steps=50,
            guidance=QWEN_GUIDANCE,
            width=1328,
            height=1328,
        ),
    },
    class_names=dict.fromkeys(
        ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline"), "qwen_image"
    ),
    quantized=("transformer", "text_encoder"),
)
QWEN_IMAGE_EDIT = ImageFamily(
    "qwen_image_edit",
    "Qwen-Image-Edit",
    variants={
        "edit": Variant(
            "Qwen-Image-Edit", {"edit": QwenImageEditPipeline}, steps=50, guidance=QWEN_GUIDANCE, max_pictures=1
        ),
        "edit_plus": Variant(
            "Qwen-Image-Edit-Plus (2509/2511)",
            {"edit": QwenImageEditPlusPipeline},
            steps=40,
            guidance=QWEN_GUIDANCE,
            max_pictures=3,
        ),
    },
    class_names={
        "QwenImageEditPipeline": "edit",
        "QwenImageEditInpaintPipeline": "edit",
        "QwenImageEditPlusPipeline": "edit_plus",
    },
    quantized=("transformer", "text_encoder"),
    lora_family="qwen_image",  # Qwen-Image's transformer: its adapters load, Edit adapters are made the same way
    own_components={"processor": processors.qwen_vl_processor},
)
_KLEIN_TASKS = {"text2img": Flux2KleinPipeline, "edit": Flux2KleinPipeline, "inpaint": Flux2KleinInpaintPipeline}
FLUX2 = ImageFamily(
    "flux2",
    "FLUX.2",
    variants={
        "dev": Variant(
            "FLUX.2 [dev]",
            {"text2img": Flux2Pipeline, "edit": Flux2Pipeline},
            steps=50,
            guidance=Guidance(guidance_scale=4.0),
            max_pictures=10,
        ),
        "klein": Variant("FLUX.2 [klein]", _KLEIN_TASKS, steps=4, guidance=Guidance(), max_pictures=4),
        "klein_base": Variant(
            "FLUX.2 [klein] base",
            _KLEIN_TASKS,
            steps=50,
            guidance=Guidance(guidance_scale=4.0, cfg_above_one=True),
            max_pictures=4,
        ),
    },
    class_names={
        "Flux2Pipeline": "dev",
        "Flux2KleinPipeline": "klein",
        "Flux2KleinInpaintPipeline": "klein",
    },
    quantized=("transformer", "text_encoder"),
    own_components={"tokenizer": processors.flux2_text_tokenizer},
)
_Z_IMAGE_TASKS = {"text2img": ZImagePipeline, "img2img": ZImageImg2ImgPipeline, "inpaint": ZImageInpaintPipeline}
Z_IMAGE = ImageFamily(
    "z_image",
    "Z-Image",
    variants={
        "turbo": Variant(
            "Z-Image-Turbo",
            _Z_IMAGE_TASKS,
            steps=9,
            guidance=Guidance(guidance_scale=0.0, cfg_above_one=True, takes_negative_prompt=True),
        ),
        "base": Variant(
            "Z-Image",
            _Z_IMAGE_TASKS,
            steps=50,
            guidance=Guidance(guidance_scale=4.0, cfg_above_one=True, takes_negative_prompt=True),
        ),
    },
    class_names=dict.fromkeys(("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"), "turbo"),
    caches=(),  # its transformer has no cache hooks in diffusers 0.42
)
FLUX_KONTEXT = ImageFamily(
    "flux_kontext",
    "FLUX.1 Kontext",
    variants={
        "dev": Variant(
            "FLUX.1 Kontext [dev]",
            {"edit": FluxKontextPipeline, "inpaint": FluxKontextInpaintPipeline},
            steps=28,
            # FLUX.1's true CFG: a negative prompt with true_cfg_scale > 1 (off by default).
            guidance=Guidance(guidance_scale=2.5, true_cfg_scale=1.0, takes_negative_prompt=True),
            max_pictures=1,
        ),
    },
    class_names={"FluxKontextPipeline": "dev", "FluxKontextInpaintPipeline": "dev"},
    quantized=("transformer", "text_encoder_2"),
    lora_family="flux",  # a FLUX.1 transformer: FLUX.1 adapters load into it
    caches=("first_block", "taylorseer", "mag"),
)

IMAGE_FAMILIES: dict[str, ImageFamily] = {
    family.name: family for family in (QWEN_IMAGE, QWEN_IMAGE_EDIT, FLUX2, Z_IMAGE, FLUX_KONTEXT)
}
# Every variant name a --model_variant may give, by family.
VARIANT_NAMES = {name: tuple(family.variants) for name, family in IMAGE_FAMILIES.items()}
