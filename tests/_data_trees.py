"""Builds small dataset folders laid out exactly like the official releases, from real crops of
../shared/data (symlinks), for the reader tests."""
import os

import pytest

from reidkern.data.paths import shared_data_dir


def real_crops(n):
    """``n`` real crop paths from ../shared/data/con-reid (skips the test when absent)."""
    d = shared_data_dir("con-reid")
    if d is None:
        pytest.skip("../shared/data/con-reid not found")
    folder = os.path.join(d, "bounding_box_test")
    names = sorted(os.listdir(folder))[:n]
    return [os.path.join(folder, f) for f in names]


def link_tree(root, layout, crops):
    """``layout``: {relative file path: None}; each file becomes a symlink to the next real crop
    (cycling). Returns the list of created paths."""
    out = []
    for i, rel in enumerate(layout):
        dst = os.path.join(root, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.symlink(crops[i % len(crops)], dst)
        out.append(dst)
    return out


def write(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path
