"""Reading the user's photos into model-ready arrays, with a clear error for every bad file.

Phones produce every kind of image: EXIF-rotated JPEGs, RGBA screenshots, 16-bit PNGs, grayscale
scans, 48-megapixel shots. All are brought to 8-bit RGB, center-cropped to a square and resized to
the training resolution; what cannot be used is named in a one-line error.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import warnings
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from .errors import Given, ZoodipError
from .paths import fsync_folder, temp_path, why_missing, write_failure, write_synced, write_target
from .image_parameters import parameters_option

# GIF: its first frame. .jfif and .jpe are JPEG's other names (browsers save under .jfif); AVIF where Pillow reads it.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".webp", ".avif", ".bmp", ".tif", ".tiff", ".gif")
# Photo formats of phones and cameras that the photo reader does not open (HEIC/HEIF: iPhones; camera raw files).
CAMERA_FORMATS = (".heic", ".heif", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2")
MIN_SIDE = 32  # below this a photo holds too little of the concept to learn from
# Larger than any phone photo (108 MP sensors exist); beyond it decoding alone could exhaust memory.
# This is the one limit: Pillow's own decompression-bomb guard (89 MP by default) is replaced by it
# while a photo is opened, so the limit applied and the limit named in the message are the same.
MAX_PIXELS = 120_000_000
NO_DRAFT = 1 << 16  # a draft side past any photo's that MAX_PIXELS lets through: decoded at full size


def list_images(folder: str | Path) -> list[Path]:
    """The image files of a folder (by extension, sorted; hidden files skipped)."""
    folder = Path(folder)
    if not folder.exists():
        raise ZoodipError(f"image folder {folder} {why_missing(folder)}: pass a folder with 3-10 photos of the concept")
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise ZoodipError(f"{folder} is neither a folder nor a file (a device or a pipe): pass a folder with 3-10 "
                          "photos of the concept")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    _warn_about_skipped(entries)
    _warn_about_copies(files)
    if not files:
        raise ZoodipError(
            f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}): add 3-10 photos of the concept"
        )
    return files


def _warn_about_few_photos(files: Sequence[Path]) -> None:
    """One or two photos are said: textual inversion learns what the photos share, so a single photo's background,
    pose and light become part of the word (it still runs: one photo is sometimes all there is)."""
    if len(files) < 3:
        warnings.warn(f"only {len(files)} photo{'s' if len(files) > 1 else ''} ({_listed([p.name for p in files])}): "
                      "the word learns what the photos share, so one photo's background, pose and light become part "
                      "of it; 3-10 photos of the concept in different settings teach it better", stacklevel=3)


def _warn_about_skipped(entries: Sequence[Path]) -> None:
    """Name what looks like a photo but is not used: otherwise a run learns from fewer photos than the user
    put there without a word (a phone's HEIC shots beside its JPEGs, a broken link, a folder named x.png)."""
    unread = [p.name for p in entries if p.suffix.lower() in CAMERA_FORMATS and p.is_file()]
    if unread:
        warnings.warn(f"skipped {len(unread)} photo(s) in formats zoodip does not read ({_listed(unread)}): "
                      "convert them to JPEG or PNG to use them", stacklevel=3)
    odd = [p.name for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_file()]
    if odd:
        warnings.warn(f"skipped {_listed(odd)}: not a regular file (a folder, a broken link or a device)", stacklevel=3)
    nested = [p.name for p in entries if p.is_dir() and p.suffix.lower() not in IMAGE_EXTENSIONS and _holds_images(p)]
    if nested:
        warnings.warn(f"skipped the photos in the subfolder(s) {_listed(nested)}: only the folder's own files are read; "
                      "move them up to use them", stacklevel=3)


def _warn_about_copies(files: Sequence[Path]) -> None:
    """Name photos that are byte-for-byte copies of another (a photo saved twice counts twice in training). Only
    files of equal size are read."""
    by_size: dict[int, list[Path]] = {}
    for path in files:
        by_size.setdefault(path.stat().st_size, []).append(path)
    seen: dict[str, str] = {}
    copies = []
    for group in (g for g in by_size.values() if len(g) > 1):
        for path in group:
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                continue  # its reader names it
            if digest in seen:
                copies.append(f"{path.name} (= {seen[digest]})")
            seen.setdefault(digest, path.name)
    if copies:
        warnings.warn(f"{_listed(copies)}: the same file twice, which counts twice in training; remove the copy",
                      stacklevel=3)


def _holds_images(folder: Path) -> bool:
    try:
        return any(p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") for p in folder.iterdir())
    except OSError:
        return False


def _listed(names: Sequence[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Alpha is composited on white (transparent cut-outs stay clean)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: the format's range (8, 16 bits, or a 32-bit image's own top) to 8 bits, not clipped at
        # 255; in integers, a block of rows at a time (a 110 MP PNG of a few hundred KB went through float64 copies).
        array = np.asarray(image)
        peak = int(array.max(initial=0))
        top = 65535 if image.mode.startswith("I;16") or 255 < peak <= 65535 else max(peak, 255)
        scaled = np.empty(array.shape, np.uint8)
        for row in range(0, array.shape[0], 1024):
            block = np.clip(array[row:row + 1024], 0, None).astype(np.int64)
            scaled[row:row + 1024] = (block * 255 + top // 2) // top
        image = Image.fromarray(scaled, mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = 1.0 if array.max() <= 1.0 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@contextlib.contextmanager
def _pillow_pixel_limit(limit: int) -> Iterator[None]:
    """Pillow warns above ``Image.MAX_IMAGE_PIXELS`` and refuses above twice that: make its limit ours.

    (A process-wide setting, restored on exit. One thread at a time: two threads' save-and-restore interleaved could
    leave another limit behind for good.)
    """
    with _PIXEL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


_PIXEL_LIMIT_LOCK = threading.RLock()


def load_image(path: str | Path, resolution: int, center_crop: bool = True) -> np.ndarray:
    """One photo -> float32 [3, resolution, resolution] in [-1, 1].

    ``center_crop``: the largest centered square, then resized (default); False resizes the whole
    photo to the square, squashing it, as diffusers' textual_inversion.py does without --center_crop.
    """
    image = open_photo(path, max(resolution, MIN_SIDE) * 2)
    # Center square crop, then resize: the concept is usually centered and SD trains on squares.
    if center_crop:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        with _pillow_pixel_limit(MAX_PIXELS):  # the one limit: Pillow's own would warn of a crop it let through
            image = image.crop((left, top, left + side, top + side))
    return _pixels(image, (resolution, resolution))


def open_photo(path: str | Path, draft_side: int, advice: str = "remove it or replace it with a JPEG/PNG photo",
               check_size: Callable[[tuple[int, int]], None] | None = None) -> Image.Image:
    """A photo file as 8-bit RGB, upright (EXIF), refused in one line if broken, tiny or too large to decode.

    ``draft_side``: JPEGs decode directly at a reduced scale that keeps at least this many pixels a side.
    ``check_size``: given the size it will decode at (a JPEG's after that scale), before it is decoded.
    """
    return _to_rgb8(_open_checked(path, draft_side, advice, check_size=check_size))


def _open_checked(path: str | Path, draft_side: int, advice: str, min_side: int = MIN_SIDE,
                  check_size: Callable[[tuple[int, int]], None] | None = None) -> Image.Image:
    """``open_photo``'s file, decoded and upright in its own mode."""
    if not str(path).strip():
        raise ZoodipError(f"an empty path was given for an image: {advice}")
    path = Path(path)
    if path.is_dir():
        raise ZoodipError(Given(path), f" is a folder, not an image: {advice}")
    if not path.exists():  # (Pillow's words repeated the path: "[Errno 2] No such file or directory: 'x.png'")
        raise ZoodipError(Given(path), f" {why_missing(path)}: {advice}")
    if path.exists() and not path.is_file():  # a pipe would block the read for ever
        raise ZoodipError(Given(path), f" is not a regular file (a pipe or a device): {advice}")
    if path.stat().st_size == 0:  # (Pillow: "cannot identify image file", the path said again)
        raise ZoodipError(Given(path), f" is empty (0 bytes): {advice}")
    too_large = ZoodipError(Given(path), f" is too large to decode safely: downscale it below {MAX_PIXELS / 1e6:g} megapixels")
    try:
        with warnings.catch_warnings(record=True) as seen, _pillow_pixel_limit(MAX_PIXELS):
            warnings.simplefilter("always")  # Pillow's own, said again below: its "Corrupt EXIF data" names no file
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise ZoodipError(
                        Given(path), f" is {width}x{height} px, too large to decode safely: downscale it below "
                        f"{MAX_PIXELS / 1e6:g} megapixels"
                    )
                # JPEG can decode at a reduced scale directly: a 48 MP photo never becomes 48 MP in memory.
                opened.draft("RGB", (draft_side, draft_side))
                if check_size is not None:
                    check_size(opened.size)
                image = ImageOps.exif_transpose(opened)
                image.load()
    except ZoodipError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_large from None
    except Exception as exc:  # PIL raises many types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ZoodipError("cannot read image ", Given(path), f" ({reason}): {advice}") from None
    if min(width, height) < min_side:
        raise ZoodipError(Given(path), f" is only {width}x{height} px: use photos at least {min_side} px on the short side")
    if image.mode == "F" and not np.isfinite(np.asarray(image)).all():  # a float TIFF: NaN would cast to any gray
        raise ZoodipError(Given(path), f" holds pixels that are no numbers (NaN or infinite, in its float data): {advice}")
    for problem in seen:
        text = str(problem.message).strip()
        if "exif" in text.lower():
            warnings.warn(f"{path}: its EXIF data is damaged ({text}); it is used as stored, not turned upright "
                          "(re-save it to drop the EXIF data)", stacklevel=3)
        else:
            warnings.warn(f"{path}: {text}", problem.category, stacklevel=3)
    return image


def _pixels(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An RGB image resized to ``size`` (width, height) -> float32 [3, height, width] in [-1, 1]."""
    if image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def open_init_image(source: str | Path | Image.Image, draft_side: int,
                    check_size: Callable[[tuple[int, int]], None] | None = None) -> Image.Image:
    """An image-to-image start as 8-bit RGB: a file (``open_photo``'s checks) or a PIL image (``check_size``: as
    ``open_photo``'s, given a PIL image's size)."""
    if isinstance(source, Image.Image):
        if min(source.size) < 1:
            raise ZoodipError(f"the start image is {source.width}x{source.height} px, empty: pass a picture")
        if check_size is not None:
            check_size(source.size)
        return _to_rgb8(_loaded(source, "image"))
    if isinstance(source, (str, Path)):
        return open_photo(source, draft_side, advice="pass a JPEG or PNG file", check_size=check_size)
    raise ZoodipError(f"image must be a file path or a PIL image, got {type(source).__name__}")


def open_mask(source: str | Path | Image.Image, draft_side: int) -> Image.Image:
    """An inpainting mask as 8-bit grayscale (white: redraw, black: keep): a file (``open_photo``'s checks) or a
    PIL image. As diffusers reads one, its alpha channel is ignored: a mask is its gray levels, not its opacity."""
    if isinstance(source, (str, Path)):
        # Any size: it is stretched to the image's (a mask drawn on the latent grid is 1/8 of the image's side).
        source = _open_checked(source, draft_side, "pass a black-and-white PNG (white: the part to redraw)", 1)
    elif not isinstance(source, Image.Image):
        raise ZoodipError(f"mask_image must be a file path or a PIL image, got {type(source).__name__}")
    elif min(source.size) < 1:
        raise ZoodipError(f"the mask is {source.width}x{source.height} px, empty: draw it over the image")
    else:
        source = _loaded(source, "mask_image")
    if source.mode in ("RGBA", "LA", "PA") or (source.mode == "P" and "transparency" in source.info):
        source = source.convert("RGBA").convert("RGB")  # the colours under the alpha, as PIL's convert("L") reads
    return _to_rgb8(source).convert("L")


def _loaded(image: Image.Image, name: str) -> Image.Image:
    """A PIL image given by the caller, its pixels read: one that was closed, or whose file is cut short, is one line."""
    try:
        image.load()
    except ValueError as exc:  # Pillow: "Operation on closed image"
        raise ZoodipError(f"{name} cannot be read ({exc}): pass it before closing it, or pass its path") from None
    except OSError as exc:
        raise ZoodipError(f"{name} cannot be read ({exc}): pass an image file that is whole") from None
    return image


def latent_mask(mask: Image.Image, size: tuple[int, int], factor: int) -> np.ndarray:
    """The mask [1, 1, height/factor, width/factor] of 1 (redraw) and 0 (keep) on the latent grid, as diffusers
    makes it: resized to the image's ``size`` (width, height), split at half gray, then every ``factor``-th pixel."""
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.LANCZOS)
    binary = (np.asarray(mask, dtype=np.float32) / 255.0 >= 0.5).astype(np.float32)
    return np.ascontiguousarray(binary[::factor, ::factor])[None, None]


def mask_problems(mask_size: tuple[int, int], image_size: tuple[int, int], mask: np.ndarray) -> list[str]:
    """What may be wrong with a mask, one line each: drawn for an image of another shape (it is stretched to the
    image's), or keeping everything (``mask``, the latent grid's, holds no 1)."""
    (mw, mh), (iw, ih) = mask_size, image_size
    problems = []
    if abs(mw * ih - mh * iw) > 0.01 * mh * iw:
        problems.append(f"the mask is {mw}x{mh} px and the image {iw}x{ih}: the mask is stretched to the image's "
                        "shape; draw it over the image itself")
    if not np.any(mask):
        problems.append("the mask is black everywhere (or its white parts are thinner than a latent cell): nothing is "
                        "redrawn; white marks the part to redraw")
    return problems


def init_image_size(size: tuple[int, int], height: int | None, width: int | None, longest: int,
                    multiple: int) -> tuple[int, int]:
    """The (width, height) an image-to-image start is resized (not cropped) to: as given, or following the image's
    aspect: both missing, scaled down so that its longer side is at most ``longest`` (a phone photo is not denoised
    at 12 megapixels); one missing, scaled as the other. Derived sides are rounded down to ``multiple``, in exact
    arithmetic (in floats 161 * (128 / 161) is 127.99999999999999, a whole step short)."""
    iw, ih = size
    scale = (min(Fraction(1), Fraction(longest, max(iw, ih))) if height is None and width is None
             else (Fraction(width, iw) if height is None else Fraction(height, ih)))  # type: ignore[arg-type]
    derived = [max(multiple, int(side * scale) // multiple * multiple) for side in (iw, ih)]
    return (width if width is not None else derived[0], height if height is not None else derived[1])


def image_pixels(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An RGB image resized to ``size`` (width, height) -> float32 [1, 3, height, width] in [-1, 1]."""
    return _pixels(image, size)[None]


def load_images(paths: str | Path | Sequence[str | Path], resolution: int,
                center_crop: bool = True) -> tuple[list[str], np.ndarray]:
    """A folder (or list) of photos -> (file names, float32 [N, 3, R, R] in [-1, 1])."""
    if isinstance(paths, (str, Path)):
        files = list_images(paths)
    else:
        files = [Path(p) for p in paths]
        if not files:
            raise ZoodipError("no images given: pass 3-10 photos of the concept")
    arrays = [load_image(p, resolution, center_crop) for p in files]
    _warn_about_few_photos(files)  # once they are read: a photo that cannot be is the one line said
    return [p.name for p in files], np.stack(arrays)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """Float images [B, 3, H, W] in [-1, 1] -> PIL RGB images."""
    array = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return [Image.fromarray(a.transpose(1, 2, 0), mode="RGB") for a in array]


# The widest side each output format's encoder writes (Pillow's libwebp; libjpeg's JPEG_MAX_DIMENSION, 65500, not
# the format's 65535); PNG has no such limit.
ENCODER_MAX_SIDE = {".webp": 16383, ".jpg": 65500, ".jpeg": 65500}


def grid_size(columns: int, rows: int, size: tuple[int, int], pad: int = 2) -> tuple[int, int]:
    """The (width, height) of ``image_grid``'s grid of ``rows`` x ``columns`` images of ``size``."""
    return columns * (size[0] + pad) + pad, rows * (size[1] + pad) + pad


def check_encodable(path: str | Path, size: tuple[int, int], flag: str = "the image file") -> None:
    """Refuse an image of ``size`` that the format of ``path``'s suffix cannot hold, before any work (or any file)."""
    limit = ENCODER_MAX_SIDE.get(Path(path).suffix.lower())
    if limit is not None and max(size) > limit:
        raise ZoodipError(f"{flag} {path}: a {Path(path).suffix.lower()} image holds at most {limit} px a side, and "
                          f"this one is {size[0]}x{size[1]}: write a .png, or fewer or smaller images")


def image_grid(rows: Sequence[Sequence[Image.Image]], pad: int = 2) -> Image.Image:
    """Tile images into a grid (rows of equal-size images), white padding between them."""
    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one image")
    w, h = rows[0][0].size
    grid = Image.new("RGB", grid_size(max(len(r) for r in rows), len(rows), (w, h), pad), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image.resize((w, h)), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def save_image(image: Image.Image, path: str | Path, flag: str = "the image file") -> Path:
    """Write ``image`` atomically (temp file beside it, then rename); the suffix picks the format.

    A failed or interrupted write (Ctrl-C mid-save) leaves no temp file and the previous file intact.
    """
    return save_images([(image, path)], flag)[0]


def save_images(pairs: Sequence[tuple[Image.Image, str | Path]], flag: str = "the image file",
                texts: Sequence[str | None] | None = None,
                also: Sequence[tuple[str, Path, Callable[[BinaryIO], None]]] = (),
                then: str = "or choose another file") -> list[Path]:
    """Write each ``(image, path)`` as ``save_image`` does, all or none: every image goes to its temp file first,
    and only when all are written are they renamed over their paths (a full disk at the third image leaves the
    files that were there, not two new images beside an old one, nor none of either). The renames themselves are
    one at a time: one that fails (a folder where a file was checked to be), or a kill between them, leaves the
    earlier ones done. So the last pair's path goes last, after the ``also`` files: where it is new, the whole set
    is (generate's --out; a half-set it is not yet, and the same command again rewrites the set).
    ``texts``: each image's generation parameters (``zoodip.infotext``), written as A1111 writes them.
    ``also``: other files of the same call, ``(flag, path, write(handle))``, written in the same all or none
    (``generate --save-latents``: no latents beside images that could not be written, nor the reverse).
    ``then``: what the user does after a failed write, after its fix (a run's preview: resume)."""
    if texts is not None and len(texts) != len(pairs):  # (zip's strict=True is Python 3.10's)
        raise ValueError(f"save_images: {len(texts)} parameter texts for {len(pairs)} images")
    done: list[tuple[str, Path, Path, Path]] = []  # (flag, temp file, the file it replaces, the path given)
    current = (flag, None)
    try:
        for image, path in pairs:  # (before any file: a grid too wide for a WebP is Pillow's ValueError)
            check_encodable(path, image.size, flag)
        writes = [(flag, path, lambda handle, image=image, text=text, path=path: image.save(
                       handle, format=Image.registered_extensions()[Path(path).suffix.lower()],
                       **(parameters_option(Path(path), text) if text else {})))
                  for (image, path), text in zip(pairs, texts or [None] * len(pairs))]
        for write_flag, path, write in [*also, *writes]:
            current = (write_flag, Path(path))
            target = write_target(Path(path))  # (a link: its target)
            # Beside it, a name no one else uses, with the suffix the user gave: Pillow picks the format by it.
            tmp = Path(f"{temp_path(target)}{Path(path).suffix}")
            done.append((write_flag, tmp, target, Path(path)))
            target.parent.mkdir(parents=True, exist_ok=True)
            write_synced(tmp, write)  # (as every atomic write: a power cut leaves no empty image)
        for write_flag, _, target, given in done:  # a folder put in a file's way: refused before any rename
            current = (write_flag, given)
            if target.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
        for write_flag, tmp, target, given in done:
            current = (write_flag, given)
            tmp.replace(target)
        for folder in {target.parent for _, _, target, _ in done}:
            fsync_folder(folder)
    except BaseException as exc:
        for _, tmp, _, _ in done:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            reason, fix = write_failure(exc)
            raise ZoodipError(f"cannot write {current[0]} {current[1]} ({reason}): {fix} {then}") from None
        raise
    return [Path(path) for _, path in pairs]


def numbered_paths(path: str | Path, count: int) -> list[Path]:
    """``out.png`` -> ``out-1.png`` ... ``out-{count}.png``: one file per image beside the grid."""
    path = Path(path)
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, count + 1)]
