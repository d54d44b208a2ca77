"""Detection and segmentation scenes built from the world's real digits or garments.

Scene ``i`` of ``SceneSet(num_images, seed)`` is a ``canvas x canvas`` 1-channel uint8 image with
1 to ``max_objects`` real images (from a world dataset's split) pasted at random positions and
scales without overlapping, so every object is fully visible. It depends only on (seed, i).

Targets follow torchvision's detection convention:
``boxes`` float32 (K, 4) as x1, y1, x2, y2 in pixels (x2/y2 exclusive: the tight box of the mask),
``labels`` int64 (K,) 1-based (0 is background), ``masks`` bool (K, H, W) per instance, and
``semantic`` uint8 (H, W) with 0 for background and label for each object pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cvlth.data.classification import ImageSet

# The scene defaults (the registry's world_scenes options take these too).
SCENE_CANVAS = 64
SCENE_MAX_OBJECTS = 4
SCENE_OBJECT_SIZES = (14, 30)  # smallest and largest object side, in pixels
FOREGROUND_THRESHOLD = 64  # uint8 intensity above which a source pixel belongs to the object
_PLACEMENT_TRIES = 20


def _tight_crop(image: torch.Tensor) -> torch.Tensor:
    """The object's foreground bounding box within a (1, h, w) source image."""
    foreground = image[0] > FOREGROUND_THRESHOLD
    if not foreground.any():
        return image
    rows, cols = torch.nonzero(foreground.any(1)).flatten(), torch.nonzero(foreground.any(0)).flatten()
    return image[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _scaled(image: torch.Tensor, longest_side: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    scale = longest_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    resized = F.interpolate(
        image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] and b[0] < x2 and y1 < b[3] and b[1] < y2 for b in placed)


class SceneSet:
    """Deterministic scenes: ``scenes[i] -> (image uint8 [1, H, W], target dict)``."""

    def __init__(
        self,
        num_images: int,
        seed: int = 0,
        *,
        source: ImageSet,
        canvas_size: int = SCENE_CANVAS,
        max_objects: int = SCENE_MAX_OBJECTS,
        object_sizes: tuple[int, int] = SCENE_OBJECT_SIZES,
    ) -> None:
        if source.images.shape[1] != 1:
            raise ValueError(f"scene sources must be 1-channel, got {source.images.shape[1]} channels")
        if not 1 <= object_sizes[0] <= object_sizes[1] <= canvas_size:
            raise ValueError(f"object_sizes {object_sizes} must lie within 1..canvas_size={canvas_size}")
        self.num_images = num_images
        self.seed = seed
        self.source = source
        self.canvas_size = canvas_size
        self.max_objects = max_objects
        self.object_sizes = object_sizes
        # Rendering costs ~2 ms a scene, which every epoch and every evaluation would pay again; a
        # 64x64 scene with its targets is ~25 KB, so 2,000 of them stay in memory.
        self._rendered: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}

    @property
    def classes(self) -> list[str]:
        """Class names by label: index 0 is background."""
        return ["background", *self.source.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scene ``index``, rendered once; callers must not modify the returned tensors in place."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"scene {index} out of range 0..{self.num_images - 1}")
        if index not in self._rendered:
            self._rendered[index] = self._render(index)
        image, target = self._rendered[index]
        return image, dict(target)

    def _render(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % (1 << 63))
        size = self.canvas_size
        image = torch.zeros((1, size, size), dtype=torch.uint8)
        semantic = torch.zeros((size, size), dtype=torch.uint8)
        boxes, labels, masks = [], [], []
        placed: list[tuple[int, int, int, int]] = []
        count = int(torch.randint(1, self.max_objects + 1, (1,), generator=generator))
        for _ in range(count):
            pick = int(torch.randint(len(self.source), (1,), generator=generator))
            side = int(
                torch.randint(self.object_sizes[0], self.object_sizes[1] + 1, (1,), generator=generator)
            )
            patch = _scaled(_tight_crop(self.source.images[pick]), side)
            foreground = patch[0] > FOREGROUND_THRESHOLD
            if not foreground.any():
                continue
            spot = self._place(patch.shape[-2:], placed, generator)
            if spot is None:
                continue
            top, left = spot
            h, w = patch.shape[-2:]
            placed.append((left, top, left + w, top + h))
            label = int(self.source.labels[pick]) + 1
            mask = torch.zeros((size, size), dtype=torch.bool)
            mask[top : top + h, left : left + w] = foreground
            image[0, top : top + h, left : left + w] = torch.where(foreground, patch[0], 0)
            semantic[mask] = label
            rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
            boxes.append([float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)])
            labels.append(label)
            masks.append(mask)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.stack(masks) if masks else torch.zeros((0, size, size), dtype=torch.bool),
            "semantic": semantic,
        }
        return image, target

    def _place(
        self, shape: torch.Size, placed: list[tuple[int, int, int, int]], generator: torch.Generator
    ) -> tuple[int, int] | None:
        """A (top, left) where a patch fits inside the canvas without touching earlier objects."""
        h, w = shape
        for _ in range(_PLACEMENT_TRIES):
            top = int(torch.randint(self.canvas_size - h + 1, (1,), generator=generator))
            left = int(torch.randint(self.canvas_size - w + 1, (1,), generator=generator))
            if not _overlaps((left, top, left + w, top + h), placed):
                return top, left
        return None
