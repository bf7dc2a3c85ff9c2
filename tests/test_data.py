import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from training import data
from training.data import DataError, load
from training.fixtures import zip_folder


def annotations(root):
    lines = (root / "val" / "val_annotations.txt").read_text().splitlines()
    return dict(line.split("\t")[:2] for line in lines)


def pil_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_zip_and_folder_give_identical_arrays(tiny_root, tiny_zip):
    a = load(tiny_root, cache=False)
    b = load(tiny_zip, cache=False)
    for split in ("train", "val"):
        sa, sb = getattr(a, split), getattr(b, split)
        np.testing.assert_array_equal(sa.x, sb.x)
        np.testing.assert_array_equal(sa.y, sb.y)
        assert sa.files == sb.files
    assert (a.wnids, a.names, a.full_names, a.mean, a.std) == (
        b.wnids,
        b.names,
        b.full_names,
        b.mean,
        b.std,
    )


def test_shapes_counts_and_names(tiny_zip):
    ds = load(tiny_zip, cache=False)
    assert ds.train.x.shape == (48, 64, 64, 3)
    assert ds.train.x.dtype == np.uint8
    assert ds.val.x.shape == (16, 64, 64, 3)
    assert ds.train.y.dtype == np.int64
    assert ds.wnids[:2] == ("n01443537", "n01629819")
    assert ds.names[:2] == ("goldfish", "European fire salamander")
    assert ds.full_names[0] == "goldfish, Carassius auratus"
    assert np.bincount(ds.train.y).tolist() == [12] * 4


def test_train_labels_come_from_folder_names(tiny_root):
    ds = load(tiny_root, cache=False)
    for f, y in zip(ds.train.files, ds.train.y, strict=True):
        assert f.split("/")[1] == ds.wnids[y]


def test_val_labels_come_from_annotations_not_folders(tiny_root):
    ds = load(tiny_root, cache=False)
    truth = annotations(tiny_root)
    got = {f.rsplit("/", 1)[1]: ds.wnids[y] for f, y in zip(ds.val.files, ds.val.y, strict=True)}
    assert got == truth
    # The classic bug reads val/ as one image folder: every image the same label.
    assert len(set(ds.val.y.tolist())) == 4
    # And the labels really describe the pixels: each val image is nearest its class's train mean.
    means = np.stack([ds.train.x[ds.train.y == c].mean(axis=(0, 1, 2)) for c in range(4)])
    nearest = np.argmin(((ds.val.x.mean(axis=(1, 2))[:, None] - means) ** 2).sum(-1), axis=1)
    assert (nearest == ds.val.y).mean() == 1.0


def test_class_order_is_wnids_order(tiny_copy):
    wnids_file = tiny_copy / "wnids.txt"
    reversed_wnids = wnids_file.read_text().split()[::-1]
    wnids_file.write_text("\n".join(reversed_wnids) + "\n")
    ds = load(tiny_copy, cache=False)
    assert list(ds.wnids) == reversed_wnids
    assert ds.train.files[0].startswith(f"train/{reversed_wnids[0]}/")
    assert ds.train.y[0] == 0


def test_pixels_equal_direct_pil_decode_and_grayscale_becomes_rgb(tiny_root):
    ds = load(tiny_root, cache=False)
    assert ds.info["grayscale"] == {"train": 1, "val": 1}
    for split in (ds.train, ds.val):
        for i in (0, 1, len(split) - 1):
            np.testing.assert_array_equal(split.x[i], pil_rgb(tiny_root / split.files[i]))
    gray = ds.train.files.index("train/n01443537/images/n01443537_1.JPEG")
    assert Image.open(tiny_root / ds.train.files[gray]).mode == "L"
    img = ds.train.x[gray]
    assert img.shape == (64, 64, 3)
    assert (img[..., 0] == img[..., 1]).all()
    assert (img[..., 1] == img[..., 2]).all()


def test_mean_and_std_are_the_training_sets(tiny_root):
    ds = load(tiny_root, cache=False)
    x = ds.train.x.astype(np.float64)
    np.testing.assert_allclose(ds.mean, x.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(ds.std, x.std(axis=(0, 1, 2)), rtol=1e-9)


def test_subset_keeps_first_classes_and_caps_images(tiny_zip):
    ds = load(tiny_zip, classes=2, per_class=3, cache=False)
    assert ds.wnids == ("n01443537", "n01629819")
    assert np.bincount(ds.train.y).tolist() == [3, 3]
    assert np.bincount(ds.val.y).tolist() == [3, 3]
    assert ds.train.files[:3] == tuple(
        f"train/n01443537/images/n01443537_{i}.JPEG" for i in range(3)
    )


def test_natural_order_of_train_images(tiny_root):
    ds = load(tiny_root, cache=False)
    numbers = [int(f.rsplit("_", 1)[1].split(".")[0]) for f in ds.train.files[:12]]
    assert numbers == list(range(12))  # _10 and _11 after _9, not after _1


def test_cache_is_reused_memory_mapped_and_keyed(tiny_zip, tmp_path):
    cache = tmp_path / "c"
    first = load(tiny_zip, cache_dir=cache)
    assert first.info["cached"] is False
    second = load(tiny_zip, cache_dir=cache)
    assert second.info["cached"] is True
    assert second.cache_dir == first.cache_dir
    assert isinstance(second.train.x, np.memmap)
    np.testing.assert_array_equal(first.train.x, second.train.x)
    assert second.names == first.names
    assert second.mean == first.mean
    subset = load(tiny_zip, cache_dir=cache, classes=2)
    assert subset.cache_dir != first.cache_dir
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [first.cache_dir.name, subset.cache_dir.name]
    )


def test_cache_key_follows_content(tiny_copy, tmp_path):
    cache = tmp_path / "c"
    zip_path = zip_folder(tiny_copy, tmp_path / "a.zip")
    before = load(zip_path, cache_dir=cache)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(
        tiny_copy / "train/n01443537/images/n01443537_0.JPEG", format="JPEG"
    )
    zip_folder(tiny_copy, zip_path)  # same path, new content
    after = load(zip_path, cache_dir=cache)
    assert after.info["cached"] is False
    assert after.cache_dir != before.cache_dir
    assert after.train.x[0].max() < 10


def test_parallel_decode_matches_serial(tiny_zip, monkeypatch):
    serial = load(tiny_zip, cache=False, workers=1)
    monkeypatch.setattr(data, "MIN_IMAGES_FOR_POOL", 0)
    monkeypatch.setattr(data, "CHUNK", 5)  # several chunks per split, finishing out of order
    parallel = load(tiny_zip, cache=False, workers=2)
    np.testing.assert_array_equal(serial.train.x, parallel.train.x)
    np.testing.assert_array_equal(serial.val.x, parallel.val.x)
    assert serial.info["grayscale"] == parallel.info["grayscale"]
    assert serial.mean == parallel.mean


def test_parallel_decode_reports_a_bad_file(tiny_copy, monkeypatch):
    (tiny_copy / "train/n01629819/images/n01629819_3.JPEG").write_bytes(b"not a jpeg")
    monkeypatch.setattr(data, "MIN_IMAGES_FOR_POOL", 0)
    monkeypatch.setattr(data, "CHUNK", 5)
    with pytest.raises(DataError, match=r"n01629819_3\.JPEG: cannot decode"):
        load(tiny_copy, cache=False, workers=2)


# --- bad input: each gets a clear error that names the problem ---------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load(tmp_path / "nope")


def test_folder_that_is_not_tiny_imagenet(tmp_path):
    (tmp_path / "something.txt").write_text("hi")
    with pytest.raises(DataError, match=r"not Tiny ImageNet: no wnids\.txt"):
        load(tmp_path)


def test_file_that_is_not_a_zip(tmp_path):
    path = tmp_path / "data.zip"
    path.write_bytes(b"PK but not really")
    with pytest.raises(DataError, match="not a zip file"):
        load(path)


def test_zip_without_wnids(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("foo/bar.txt", "x")
    with pytest.raises(DataError, match=r"no wnids\.txt in the zip"):
        load(path)


def test_missing_wnids_in_folder(tiny_copy):
    (tiny_copy / "wnids.txt").unlink()
    with pytest.raises(DataError, match=r"no wnids\.txt"):
        load(tiny_copy)


def test_missing_val_annotations(tiny_copy):
    (tiny_copy / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match=r"missing val/val_annotations\.txt"):
        load(tiny_copy)


def test_missing_words(tiny_copy):
    (tiny_copy / "words.txt").unlink()
    with pytest.raises(DataError, match=r"missing words\.txt"):
        load(tiny_copy)


def test_train_class_not_in_wnids(tiny_copy):
    src = tiny_copy / "train" / "n01443537"
    src.rename(tiny_copy / "train" / "n12345678")
    with pytest.raises(DataError, match=r"train/n12345678: class not in wnids\.txt"):
        load(tiny_copy)


def test_val_label_not_in_wnids(tiny_copy):
    ann = tiny_copy / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    lines[2] = lines[2].replace(lines[2].split("\t")[1], "n00000042")
    ann.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=r"val_annotations\.txt line 3: wnid n00000042 not in wnids"
    ):
        load(tiny_copy)


def test_val_image_without_annotation(tiny_copy):
    ann = tiny_copy / "val" / "val_annotations.txt"
    ann.write_text("".join(ann.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(DataError, match=r"val/images/val_0\.JPEG has no line"):
        load(tiny_copy)


def test_annotation_without_image(tiny_copy):
    (tiny_copy / "val" / "images" / "val_5.JPEG").unlink()
    with pytest.raises(DataError, match=r"val/images/val_5\.JPEG is in val/val_annotations\.txt"):
        load(tiny_copy)


def test_random_bytes_instead_of_jpeg(tiny_copy):
    (tiny_copy / "train/n01641577/images/n01641577_4.JPEG").write_bytes(
        np.random.default_rng(0).bytes(2000)
    )
    with pytest.raises(DataError, match=r"n01641577_4\.JPEG: cannot decode image"):
        load(tiny_copy)


def test_truncated_jpeg_in_zip(tiny_copy, tmp_path):
    path = tiny_copy / "val" / "images" / "val_7.JPEG"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    zip_path = zip_folder(tiny_copy, tmp_path / "t.zip")
    with pytest.raises(DataError, match=r"t\.zip: val/images/val_7\.JPEG: cannot decode image"):
        load(zip_path)


def test_image_of_the_wrong_size(tiny_copy):
    buf = io.BytesIO()
    Image.new("RGB", (32, 48)).save(buf, format="JPEG")
    (tiny_copy / "train/n01443537/images/n01443537_2.JPEG").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=r"n01443537_2\.JPEG: expected a 64×64 image, found 32×48"):
        load(tiny_copy)


def test_failed_decode_leaves_no_cache_behind(tiny_copy, tmp_path):
    (tiny_copy / "val" / "images" / "val_3.JPEG").write_bytes(b"")
    cache = tmp_path / "c"
    with pytest.raises(DataError, match=r"val_3\.JPEG"):
        load(tiny_copy, cache_dir=cache)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"classes": 5}, "lists 4"), ({"per_class": 0}, "positive")]
)
def test_bad_subset(tiny_root, kwargs, message):
    with pytest.raises(DataError, match=message):
        load(tiny_root, cache=False, **kwargs)


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_json(tiny_zip, tmp_path, capsys):
    assert data.main([str(tiny_zip), "--json", "--cache-dir", str(tmp_path / "c")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == 4
    assert report["splits"]["train"] == {"images": 48, "per_class": {"min": 12, "max": 12}}
    assert report["grayscale"] == {"train": 1, "val": 1}
    assert report["cache_dir"].startswith(str(tmp_path / "c"))
    assert "decode_seconds" in report


def test_cli_bad_path_exits_2_with_message(tmp_path, capsys):
    assert data.main([str(tmp_path / "missing.zip")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


# --- the real data, when TINY_IMAGENET points at the zip ---------------------------------------


@pytest.mark.real_data
def test_real_tiny_imagenet(real_zip):
    ds = load(real_zip, cache_dir=None)  # the user's cache: decoding the real set takes ~30 s
    assert ds.num_classes == 200
    assert np.bincount(ds.train.y, minlength=200).tolist() == [500] * 200
    with zipfile.ZipFile(real_zip) as zf:
        prefix = "tiny-imagenet-200/"
        ann = zf.read(prefix + "val/val_annotations.txt").decode().splitlines()
        truth = dict(line.split("\t")[:2] for line in ann)
        got = {
            f.rsplit("/", 1)[1]: ds.wnids[y] for f, y in zip(ds.val.files, ds.val.y, strict=True)
        }
        assert got == truth
        assert 0.01 < ds.info["grayscale"]["train"] / len(ds.train) < 0.03
        rng = np.random.default_rng(0)
        for split in (ds.train, ds.val):
            for i in rng.choice(len(split), 20, replace=False):
                direct = Image.open(io.BytesIO(zf.read(prefix + split.files[i]))).convert("RGB")
                np.testing.assert_array_equal(split.x[i], np.asarray(direct))
