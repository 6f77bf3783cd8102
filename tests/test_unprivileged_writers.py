"""A local folder, the gateway as an unprivileged user, ALEPH's writer as another user (root here).

Writers pause mid-file with the file open for 2x, 5x and 20x settle_seconds.
With CAP_LEASE (what the shipped unit grants) the gateway sees the open writer
and never takes a file early. Without it the writer is invisible, partial
versions are taken, and the change-after-take path must still deliver every
complete version and keep every partial from passing as complete.
"""

from __future__ import annotations

import json
import threading

import pytest
from conftest import wait_for
from writers import DeletionWatch, barcode_list, check_outcome, write_with_a_pause

pytestmark = pytest.mark.e2e

SETTLE = 0.2
PAUSES = (2, 5, 20)  # times settle_seconds
KEEP = 30 * SETTLE  # keep_original_seconds: above the longest pause
CAP_LEASE = ["--inh-caps=+lease", "--ambient-caps=+lease"]


def events(site) -> list[dict]:
    log = site.log_dir / "gateway.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("cap_lease", [True, False], ids=["with-CAP_LEASE", "without-CAP_LEASE"])
def test_a_writer_of_another_user_pausing_mid_file_loses_nothing(
    cap_lease, unprivileged_site, gateway_install, simulator, daemon_factory
):
    site = unprivileged_site
    site.write(simulator.url, settle_seconds=SETTLE, extra_source=f"keep_original_seconds = {KEEP}\n")
    prefix = gateway_install.prefix()
    if cap_lease:  # as the shipped unit: AmbientCapabilities=CAP_LEASE, nothing else
        prefix = [part for part in prefix if part != "--inh-caps=-all"]
        prefix[-1:-1] = CAP_LEASE
    daemon = daemon_factory(
        site.config_file,
        command=[*prefix, str(gateway_install.executable)],
        env=gateway_install.environment(),
        clean_env=True,
    )
    wait_for(
        lambda: any(e["event"] == "service.started" for e in events(site)),
        timeout=30,
        message="the unprivileged daemon to start",
    )
    complete = {f"paused{factor}x_barcode": barcode_list(factor) for factor in PAUSES}
    watch = DeletionWatch(site.source, complete, simulator)
    watch.start()
    writers = [
        threading.Thread(target=write_with_a_pause, args=(site.source / name, data, factor * SETTLE))
        for (name, data), factor in zip(complete.items(), PAUSES, strict=True)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    check_outcome(site, complete, simulator, watch, moved=cap_lease)
    logged = events(site)
    changed = [e for e in logged if e["event"] == "file.changed_after_take"]
    if cap_lease:
        assert sorted(u.data for u in simulator.received) == sorted(complete.values()), (
            "each file sent once, whole: the open writer was seen"
        )
        assert changed == [] and not any(e["event"] == "source.writers_unknown" for e in logged)
    else:
        [unknown] = [e for e in logged if e["event"] == "source.writers_unknown"]
        assert "CAP_LEASE" in unknown["reason"]
        assert {e["file"] for e in changed} == set(complete), "each partial version was caught"
        assert all(e["size_now"] > e["taken_size"] for e in changed)
    assert daemon.stop() == 0
