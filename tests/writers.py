"""Writers that pause mid-file, and what must hold afterwards, for the change-after-take tests."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from conftest import wait_for


def barcode_list(number: int, lines: int = 6) -> bytes:
    return "".join(f"3123400{number:03d}{line:04d}\n" for line in range(lines)).encode()


def write_with_a_pause(path: Path, data: bytes, pause: float, cut: int | None = None, reopen: bool = False) -> None:
    """The writer pattern under test: the file up to cut (default: half, at a line's end), a pause with the
    file open (or, with reopen, closed: the writer opens it again to append), then the rest."""
    middle = data.index(b"\n", len(data) // 2) + 1 if cut is None else cut
    with open(path, "wb") as handle:
        handle.write(data[:middle])
        handle.flush()
        if not reopen:
            time.sleep(pause)  # the writer's own pause, not a synchronisation
            handle.write(data[middle:])
            return
    time.sleep(pause)
    with open(path, "ab") as handle:
        handle.write(data[middle:])


class DeletionWatch(threading.Thread):
    """Notes, for every original that disappears, whether its complete content had reached CaiaSoft by then."""

    def __init__(self, folder: Path, complete: dict[str, bytes], simulator):
        super().__init__(daemon=True)
        self.folder, self.complete, self.simulator = folder, complete, simulator
        self.early: list[str] = []
        self.gone: set[str] = set()
        self.stop_event = threading.Event()

    def run(self) -> None:
        seen: set[str] = set()
        while not self.stop_event.wait(0.005):
            present = {path.name for path in self.folder.iterdir()}
            seen |= present
            for name in (set(self.complete) & seen) - present - self.gone:
                if not any(
                    name == upload.name and upload.data == self.complete[name]
                    for upload in list(self.simulator.received)
                ):
                    self.early.append(name)
                self.gone.add(name)


def check_outcome(site, complete: dict[str, bytes], simulator, watch: DeletionWatch, moved: bool = False) -> None:
    """Every complete version sent and archived; no partial archived as complete; no original removed early
    (moved: the files were moved out whole when taken, so leaving the folder is no removal)."""
    wait_for(
        lambda: all(
            any(u.name == name and u.data == data for u in list(simulator.received)) for name, data in complete.items()
        ),
        timeout=40,
        message="every complete version received by CaiaSoft",
    )
    wait_for(lambda: watch.gone == set(complete), timeout=20, message="every original handled and removed")
    watch.stop_event.set()
    watch.join(5)
    if not moved:
        assert watch.early == [], f"deleted before their complete content reached CaiaSoft: {watch.early}"

    def complete_archived() -> set[str]:
        return {
            site.sidecar(p)["original_name"]
            for p in site.archived()
            if p.read_bytes() == complete[site.sidecar(p)["original_name"]]
        }

    wait_for(lambda: complete_archived() == set(complete), message="every complete version archived")
    for path in site.archived():
        info = site.sidecar(path)
        data = path.read_bytes()
        assert info["size"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest(), (
            f"{path.name}: the sidecar does not describe the archived bytes"
        )
        assert any(u.data == data for u in simulator.received), f"{path.name}: archived but never sent"
        if data != complete[info["original_name"]]:
            assert "changed_after_take" in info, f"{path.name}: a partial version archived as if complete"
