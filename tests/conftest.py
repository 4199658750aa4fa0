"""Test-wide set-up: 8 fake CPU devices (set before JAX is imported) and local data paths."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def omniglot_dir() -> str:
    """Directory with the original Omniglot zips (../shared/data/omniglot or $MTL_OMNIGLOT_DIR)."""
    path = os.environ.get("MTL_OMNIGLOT_DIR", str(SHARED_DATA / "omniglot"))
    if not pathlib.Path(path).is_dir():
        pytest.fail(f"Omniglot zips not found at {path}; set MTL_OMNIGLOT_DIR.")
    return path


@pytest.fixture(scope="session")
def omniglot_tfds_dir(tmp_path_factory) -> str:
    """One TFDS data dir per test session, so that Omniglot is prepared once."""
    return str(tmp_path_factory.mktemp("omniglot_tfds"))


@pytest.fixture(scope="session")
def omniglot_images(omniglot_dir, omniglot_tfds_dir):
    """The two small Omniglot zips at 28x28, prepared offline (downloads fail loudly)."""
    import tensorflow_datasets as tfds

    from mtl.data.omniglot import load_omniglot

    def no_download(*args, **kwargs):
        raise AssertionError("Tests must not download Omniglot.")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tfds.download.DownloadManager, "download_and_extract", no_download)
        patch.setattr(tfds.download.DownloadManager, "download", no_download)
        return load_omniglot(omniglot_dir, tfds_dir=omniglot_tfds_dir, image_size=28)
