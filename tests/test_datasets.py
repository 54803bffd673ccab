"""Dataset readers on folder trees laid out like the official releases (real crops)."""
import os

import pytest

from reidkern.data import Record, build_dataset, dataset_names, parse_pid_cam, read_image_folder
from reidkern.data.paths import shared_data_dir

from _data_trees import link_tree, real_crops


def test_parse_pid_cam_lenient():
    assert parse_pid_cam("0001_c1s1_000002.jpg") == (1, 0)
    assert parse_pid_cam("/a/0001_c6s1_000002_1.jpg") == (1, 5)
    assert parse_pid_cam("-1_c2s1_000002_01.jpg") == (-1, 1)
    assert parse_pid_cam("0012_c12.png") == (12, 11)
    assert parse_pid_cam("0007_whatever.jpg", cameras=False) == (7, -1)
    with pytest.raises(ValueError, match="img_001.jpg"):
        parse_pid_cam("img_001.jpg")
    with pytest.raises(ValueError, match="camera 0"):
        parse_pid_cam("0001_c0s1_000002.jpg")


def test_market_release_layout(tmp_path):
    root = tmp_path / "Market-1501-v15.09.15"
    link_tree(str(root), [
        "bounding_box_train/0002_c1s1_000451_03.jpg", "bounding_box_train/0002_c3s1_000551_01.jpg",
        "bounding_box_train/0007_c2s3_070952_01.jpg",
        "query/0001_c1s1_001051_00.jpg", "query/0003_c6s1_002976_01.jpg",
        "bounding_box_test/-1_c1s1_000401_03.jpg", "bounding_box_test/0000_c1s1_000151_01.jpg",
        "bounding_box_test/0001_c6s1_009601_00.jpg", "bounding_box_test/0003_c2s1_009601_00.jpg",
    ], real_crops(4))
    ds = build_dataset("Market1501", str(tmp_path))
    assert [(os.path.basename(r.path), r.pid, r.camid) for r in ds.train] == [
        ("0002_c1s1_000451_03.jpg", 0, 0), ("0002_c3s1_000551_01.jpg", 0, 2), ("0007_c2s3_070952_01.jpg", 1, 1)]
    assert all(isinstance(r, Record) for r in ds.query)
    assert [(r.pid, r.camid) for r in ds.gallery] == [(0, 0), (1, 5), (3, 1)]
    assert (ds.num_train_pids, ds.num_train_cams) == (2, 3)
    os.remove(root / "query" / "0001_c1s1_001051_00.jpg")
    os.remove(root / "query" / "0003_c6s1_002976_01.jpg")
    with pytest.raises(ValueError, match="query split.*holds no images"):
        build_dataset("market1501", str(tmp_path))
    os.rmdir(root / "query")
    with pytest.raises(FileNotFoundError, match="'query' folder"):
        build_dataset("market1501", str(root))


def test_duke_camera_range(tmp_path):
    root = tmp_path / "DukeMTMC-reID"
    link_tree(str(root), ["bounding_box_train/0001_c8_f0046182.jpg", "query/0005_c2_f0046985.jpg",
                          "bounding_box_test/0005_c5_f0051341.jpg"], real_crops(3))
    ds = build_dataset("duke", str(tmp_path))
    assert ds.train[0].camid == 7 and ds.num_gallery_pids == 1
    os.symlink(ds.train[0].path, root / "query" / "0005_c9_f0046985.jpg")
    with pytest.raises(ValueError, match="camera 9 outside 1..8"):
        build_dataset("dukemtmcreid", str(tmp_path))


def test_folder_camera_free(tmp_path):
    link_tree(str(tmp_path), ["train/0003_a.jpg", "train/0001_b.jpg", "q/0003_c.png", "g/0003_d.jpg",
                              "g/0009_e.jpg"], real_crops(5))
    (tmp_path / "train" / "notes.txt").write_text("not an image")
    ds = build_dataset("folder", str(tmp_path), cameras=False, train_dir="train", query_dir="q",
                       gallery_dir="g")
    assert [(r.pid, r.camid) for r in ds.train] == [(0, -1), (1, -1)]
    assert [(r.pid, r.camid) for r in ds.gallery] == [(3, -1), (9, -1)]
    with pytest.raises(ValueError, match="0001_b.jpg.*cameras=False"):
        read_image_folder(str(tmp_path / "train"))


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="market1501"):
        build_dataset("nope", ".")
    assert "con_reid" in dataset_names()


def test_con_reid_real():
    d = shared_data_dir("con-reid")
    if d is None:
        pytest.skip("../shared/data/con-reid not found")
    ds = build_dataset("con-reid", d)
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (7711, 212, 5207)
    assert (ds.num_train_pids, ds.num_query_pids, ds.num_gallery_pids) == (71, 53, 60)
    assert sorted({r.pid for r in ds.train}) == list(range(71))
    assert ds.num_train_cams == 6 and {r.camid for r in ds.gallery} <= set(range(6))
    assert not {r.pid for r in ds.query} - {r.pid for r in ds.gallery}


def test_msmt17_v1_and_v2_lists(tmp_path):
    crops = real_crops(4)
    for version, (tr, te) in {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}.items():
        root = tmp_path / version.lower() / "msmt17"
        main = root / version
        link_tree(str(main), [f"{tr}/0000/0000_000_01_0303morning_0015_0.jpg",
                              f"{tr}/0005/0005_003_14_0303noon_0101_1.jpg",
                              f"{te}/0000/0000_011_15_0303afternoon_0200_0.jpg",
                              f"{te}/0000/0000_012_02_0303afternoon_0300_1.jpg"], crops)
        (main / "list_train.txt").write_text("0005/0005_003_14_0303noon_0101_1.jpg 5\n")
        (main / "list_val.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n")
        (main / "list_query.txt").write_text("0000/0000_011_15_0303afternoon_0200_0.jpg 0\n")
        (main / "list_gallery.txt").write_text("0000/0000_012_02_0303afternoon_0300_1.jpg 0\n")
        ds = build_dataset("msmt17", str(root.parent))
        assert [(r.pid, r.camid) for r in ds.train] == [(1, 13), (0, 0)]
        assert [(r.pid, r.camid) for r in ds.query] == [(0, 14)] and os.path.isfile(ds.gallery[0].path)
        assert len(build_dataset("msmt17", str(main), use_val=False).train) == 1
    os.remove(main / "list_query.txt")
    with pytest.raises(FileNotFoundError, match="list_query.txt"):
        build_dataset("msmt17", str(root))
    (main / "list_query.txt").write_text("garbage\n")
    with pytest.raises(ValueError, match="list_query.txt.*line 1"):
        build_dataset("msmt17", str(root))


def test_cuhk03_np_variants(tmp_path):
    crops = real_crops(3)
    for variant in ("labeled", "detected"):
        link_tree(str(tmp_path / "cuhk03-np" / variant), [
            "bounding_box_train/0001_c1_1.png", "bounding_box_train/0001_c2_6.png",
            "query/0003_c1_1.png", "bounding_box_test/0003_c2_7.png"], crops)
    ds = build_dataset("cuhk03_np", str(tmp_path), variant="detected")
    assert ds.root.endswith(os.path.join("cuhk03-np", "detected"))
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (0, 1)] and ds.query[0].pid == 3
    with pytest.raises(ValueError, match="variant"):
        build_dataset("cuhk03_np", str(tmp_path), variant="both")
