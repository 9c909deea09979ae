"""Every run says why it started: one vocabulary for the trigger and reason tags."""

from unified_assets.run_tags import MAX_REASON, REASON_TAG, TRIGGER_TAG, started_because


def test_a_long_reason_is_cut_not_refused_and_the_trigger_is_always_there():
    tags = started_because("drift", "x" * (MAX_REASON + 50))
    assert tags[TRIGGER_TAG] == "drift" and len(tags[REASON_TAG]) == MAX_REASON
    assert started_because("schedule") == {TRIGGER_TAG: "schedule"}
