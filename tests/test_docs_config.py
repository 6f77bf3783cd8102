"""Every TOML block of the README and of docs/*.md (the SFTP source, the NCIP relay, alerts, metrics, a second
source...) loads as written into the shipped sample config: pasted at its end, or, for an example of the sample's own
source, in place of that source."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from gateway.config import loader as config_module

SAMPLE = (REPO / "conf" / "gateway.toml").read_text()
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FOUND = [
    (doc.relative_to(REPO), block)
    for doc in DOCS
    for block in re.findall(r"```toml\n(.*?)```", doc.read_text(), flags=re.S)
]
BLOCKS = [block for _, block in FOUND]


def _first_source_removed(sample: str) -> str:
    """The sample without its [[sources]] entry (from its header to the next table header)."""
    start = sample.index("\n[[sources]]\n")
    following = re.search(r"(?m)^\[", sample[start + len("\n[[sources]]\n") :])
    end = start + len("\n[[sources]]\n") + following.start() if following else len(sample)
    return sample[:start] + "\n" + sample[end:]


def with_block(block: str) -> str:
    names = re.findall(r'(?m)^name = "([^"]*)"', block)
    if block.startswith("[[sources]]") and names == ["print"]:  # the sample's own source, shown another way
        return _first_source_removed(SAMPLE) + "\n" + block
    return SAMPLE + "\n" + block


def test_the_docs_have_the_blocks_this_test_is_about():
    firsts = [block.splitlines()[0] for block in BLOCKS]
    assert {"[[sources]]", "[ncip]", "[alerts]", "[metrics]"} <= set(firsts)
    assert any('url = "sftp://' in block for block in BLOCKS)


@pytest.mark.parametrize(
    "block", BLOCKS, ids=[f"{doc}:{block.splitlines()[0]}-{index}" for index, (doc, block) in enumerate(FOUND)]
)
def test_each_toml_block_loads_into_the_shipped_sample(tmp_path, block):
    config = tmp_path / "gateway.toml"
    config.write_text(with_block(block))
    config_module.load_settings(config)  # raises ConfigError naming every problem


def test_the_sftp_block_is_a_second_source_with_a_name_of_its_own(tmp_path):
    [sftp] = [block for block in BLOCKS if 'url = "sftp://' in block]
    config = tmp_path / "gateway.toml"
    config.write_text(SAMPLE + "\n" + sftp)
    settings = config_module.load_settings(config)
    assert [source.name for source in settings.sources] == ["print", "remote-print"]
    assert settings.sources[1].settle_seconds >= 30  # what check advises for a writer it cannot see
