"""`harness show`: one record rendered as text."""

from __future__ import annotations

from harness.show import format_record, human_bytes
from tests.test_results import make_record


def test_format_record_sections() -> None:
    text = format_record(make_record())
    for needle in (
        "maml[inner_lr=0.01]/sinusoid[shots=10]/cpu/seed=0",
        "Configuration",
        "inner_lr",
        "(grid)",
        "Seeds",
        "Environment",
        "AMD EPYC",
        "0.35 ± 0.02",
        "256.0 MiB",
        "1,761",
        "Learning curve",
        "best: iteration 1000",
        "train loss",
    ):
        assert needle in text, needle
    failed = format_record(make_record(status="timeout", reason="exceeded 1800 s"))
    assert "timeout" in failed and "exceeded 1800 s" in failed and "Learning curve" not in failed
    crashed = {
        **make_record(status="failed", reason="ValueError: x"),
        "traceback": "Traceback ...\nValueError: x\n",
    }
    assert "Traceback\n---------\nTraceback ...\nValueError: x" in format_record(crashed)


def test_human_bytes() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"
    assert human_bytes(None) == "-"


def test_suite_description_is_shown_with_dotted_keys() -> None:
    record = {**make_record(), "suite_info": {"model": {"name": "conv4", "batch_norm": "batch statistics"},
                                              "archives": [{"path": "$HARNESS_DATA/omniglot/a.zip", "sha256": "ab"}],
                                              "alphabets": ["Greek", "Latin"]}}
    text = format_record(record)
    assert "Suite\n-----" in text
    for needle in ("model.batch_norm", "batch statistics", "archives.0.path", "$HARNESS_DATA/omniglot/a.zip",
                   "Greek, Latin"):
        assert needle in text, needle
    assert "Suite\n-----" not in format_record(make_record())
