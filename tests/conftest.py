import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "qemu: runs firmware in qemu-system-arm (needs the ARM toolchain)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "tvm: needs Apache TVM (pip install mcuprune[tvm])")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory):
    """A small CNN trained on scikit-learn digits: (run_dir, dataset). Seeded, a few seconds."""
    from mcuprune.train.datasets import load_digits
    from mcuprune.train.training import train_run

    run_dir = tmp_path_factory.mktemp("digits-run")
    dataset = load_digits()
    train_run(dataset, "digits", "cnn", epochs=40, out=run_dir, seed=0)
    return run_dir, dataset
