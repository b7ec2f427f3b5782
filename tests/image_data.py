"""Generated image data sets for tests: pattern classes in a folder or mini-ImageNet's layout."""

import numpy as np
from PIL import Image


def pattern(class_index: int, image_index: int, size: int, mode: str = "RGB") -> Image.Image:
    """One image of a "pattern" class: stripes of the class's angle, period and colours.

    The class fixes the stripes' orientation, spatial period and two colours; each image
    has its own phase, a small change of angle and pixel noise, so images of a class look
    alike and classes differ, yet no two images are the same.
    """
    rng = np.random.default_rng([class_index])
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(0.15, 0.5) * size
    colours = rng.integers(0, 256, (2, 3))
    own = np.random.default_rng([class_index, image_index, 7])
    y, x = np.mgrid[0:size, 0:size]
    theta = angle + own.normal(0, 0.08)
    wave = np.cos(
        2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period + own.uniform(0, 2 * np.pi)
    )
    mix = (wave[..., None] + 1) / 2
    pixels = mix * colours[0] + (1 - mix) * colours[1] + own.normal(0, 20, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image.convert(mode)


def make_pattern_folder(
    root, num_classes=40, per_class=12, size=32, mode="RGB", suffix=".png", prefix="pattern"
):
    """Writes ROOT/<prefix>NN/imgMM<suffix>: `num_classes` pattern classes.

    Returns:
        root.
    """
    for c in range(num_classes):
        folder = root / f"{prefix}{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pattern(c, i, size, mode).save(folder / f"img{i:02d}{suffix}")
    return root


def make_miniimagenet(root, classes=(4, 3, 3), per_class=6, size=84):
    """Writes mini-ImageNet's layout: ROOT/images/<wnid><NNNNNNNN>.jpg and the three CSVs.

    Args:
        root: the folder to write.
        classes: classes of train.csv, val.csv and test.csv.
        per_class: images per class.
        size: image side (the real set's is 84).

    Returns:
        (root, {csv name: [(file name, wnid), ...]}).
    """
    (root / "images").mkdir(parents=True)
    listed, c = {}, 0
    for name, count in zip(("train.csv", "val.csv", "test.csv"), classes, strict=True):
        rows = []
        for _ in range(count):
            wnid = f"n{1000000 + c:08d}"
            for i in range(per_class):
                filename = f"{wnid}{i + 1:08d}.jpg"
                pattern(c, i, size).save(root / "images" / filename, quality=95)
                rows.append((filename, wnid))
            c += 1
        (root / name).write_text("filename,label\n" + "".join(f"{f},{w}\n" for f, w in rows))
        listed[name] = rows
    return root, listed
