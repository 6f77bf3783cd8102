"""The words the gateway records: file states in the ledger, CaiaSoft's verdicts, NCIP's verdicts and outcomes.

They are StrEnums, so a member is its own text in the ledger, in `status --json`
and in log lines, and compares equal to that text.

A file's row moves through (see ledger.py for what each step commits):

    claiming -> claimed -> queued -> uploading -> answered -> archiving -> archived
                   |          ^          |           |   \\-> refusing  -> refused
                   |          \\----------/           \\-> stuck (cannot be placed)
                   \\-> answered (the gateway itself refuses it)
"""

from __future__ import annotations

from enum import StrEnum


class FileState(StrEnum):
    CLAIMING = "claiming"  # about to be moved into work/
    CLAIMED = "claimed"  # in work/, not yet validated
    QUEUED = "queued"  # valid, waiting for an upload worker
    UPLOADING = "uploading"  # on the wire
    ANSWERED = "answered"  # the verdict (CaiaSoft's or the gateway's) is recorded; not yet placed
    ARCHIVING = "archiving"  # accepted; its archive path is reserved and recorded
    REFUSING = "refusing"  # refused; its error-folder path is reserved and recorded
    ARCHIVED = "archived"  # in archive_dir with its sidecar
    REFUSED = "refused"  # in error_dir with its sidecar
    STUCK = "stuck"  # the file itself cannot be placed: it stays in work/, shown by `status`


OPEN_STATES = (
    FileState.CLAIMING,
    FileState.CLAIMED,
    FileState.QUEUED,
    FileState.UPLOADING,
    FileState.ANSWERED,
    FileState.ARCHIVING,
    FileState.REFUSING,
)
PLACING_STATES = (FileState.ANSWERED, FileState.ARCHIVING, FileState.REFUSING)
FINAL_STATES = (FileState.ARCHIVED, FileState.REFUSED)


class Verdict(StrEnum):
    """What an upload came to (caiasoft.Outcome.verdict)."""

    ACCEPTED = "accepted"  # 2xx and success true: the file goes to the archive
    REFUSED = "refused"  # CaiaSoft (or the gateway) refused it: the file goes to the error folder
    TRANSIENT = "transient"  # try again later; nothing is moved
    PAUSED = "paused"  # the key or URL is wrong: every upload waits, nothing is moved
    UNREADABLE = "unreadable"  # a 2xx that is not CaiaSoft's JSON: sent again a bounded number of times
    #                            (caiasoft.settle_unreadable turns it into TRANSIENT or REFUSED)


class NcipVerdict(StrEnum):
    """What an NCIP answer means for a journal entry."""

    DONE = "done"  # the server did it
    ALREADY = "already"  # a Problem that means it was already so (done_problems_*)
    TEMPORARY = "temporary"  # unreachable, or a Problem listed in temporary_problems: retried in order
    UNREADABLE = "unreadable"  # an answer that is not NCIP: retried unreadable_attempts times, then refused
    REFUSED = "refused"  # any other Problem: the entry becomes a dead letter


class NcipOutcome(StrEnum):
    """How a journal entry ended (what metrics count and alerts hear of)."""

    DONE = NcipVerdict.DONE.value  # the server did it
    ALREADY = NcipVerdict.ALREADY.value  # it was already so
    DEAD_LETTER = "dead_letter"  # refused, or not a valid line: kept in error_dir/ncip


# The start of the reason of a file refused because its original changed after it was taken (archive.aftertake):
# such a file is taken again whole, so alerts do not count it as refused and its release leaves no second note.
CHANGED_AFTER_TAKE = "changed after it was taken; taken again whole"
