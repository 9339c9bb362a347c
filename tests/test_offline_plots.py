"""`dvc plots show` needs no network: the committed HTML template carries vega, vega-lite and
vega-embed inline (from vl-convert-python), and .dvc/config names it."""

import configparser
import re
from importlib.metadata import version

import pytest

from conftest import REPO
from tlpipe.use import offline_html

TEMPLATE = REPO / ".dvc" / "plots" / "offline.html"
REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", re.I)


def remote_scripts(html: str) -> list[str]:
    return REMOTE_SCRIPT.findall(html)


def test_dvc_config_names_the_committed_template():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert config["plots"]["html_template"] == "plots/offline.html"  # relative to .dvc/, as DVC reads it
    assert TEMPLATE.is_file()
    assert TEMPLATE.stat().st_size < 2 * 1024 * 1024


def test_template_is_offline_and_has_dvcs_placeholders():
    html = TEMPLATE.read_text(encoding="utf-8")
    assert "{plot_divs}" in html and "{refresh_tag}" in html
    assert "{scripts}" not in html  # where DVC would put its CDN <script src=...> tags
    assert not remote_scripts(html)
    assert remote_scripts('<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>')  # the check can fail
    for library in ("window.vegaEmbed=", "window.vega=", "window.vegaLite="):
        assert library in html
    assert html.count("<script") == 1 and html.count("</script>") == 1


def test_committed_template_is_what_the_installed_package_generates():
    recorded = re.search(r"bundled by vl-convert-python (\S+)\.", TEMPLATE.read_text(encoding="utf-8")).group(1)
    if recorded != version("vl-convert-python"):
        pytest.skip(f"template made with vl-convert-python {recorded}, {version('vl-convert-python')} installed; "
                    "`tlpipe plots-template` remakes it")
    assert offline_html.page() == TEMPLATE.read_text(encoding="utf-8")


def test_plots_template_command_writes_the_page(tmp_path, capsys):
    from tlpipe.cli import main

    out = tmp_path / "t.html"
    assert main(["plots-template", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == offline_html.page()
    assert "vega-embed" in capsys.readouterr().out


def test_normalized_confusion_template_imputes_empty_cells_per_file():
    import json

    template = json.loads((REPO / ".dvc" / "plots" / "confusion_normalized_by_file.json").read_text())
    imputes = [t for t in template["spec"]["transform"] if "impute" in t]
    # DVC fills <DVC_METRIC_GROUP_BY_Y> with [rev, filename, y]: an imputed cell keeps its file's name.
    assert [t["groupby"] for t in imputes] == ["<DVC_METRIC_GROUP_BY_Y>", "<DVC_METRIC_GROUP_BY_X>"]
