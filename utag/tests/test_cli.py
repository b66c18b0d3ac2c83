import anndata
import pytest

from utag.cli import main


def test_demo_runs_on_bundled_data_and_saves(tmp_path, capsys):
    out = tmp_path / "demo.h5ad"
    assert main(["demo", "--quiet", "--resolutions", "0.05", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "35,145 cells" in printed and "UTAG Label_leiden_0.05" in printed
    result = anndata.read_h5ad(out)
    assert result.n_obs == 35_145 and result.obs["UTAG Label_leiden_0.05"].nunique() >= 2


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and "utag" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "examples" in capsys.readouterr().out
