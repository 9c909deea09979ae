"""Every run says why it started: one vocabulary for the trigger and reason tags."""

from unified_assets.run_tags import MAX_REASON, REASON_TAG, TRIGGER_TAG, started_because


def test_a_long_reason_is_cut_not_refused_and_the_trigger_is_always_there():
    tags = started_because("drift", "x" * (MAX_REASON + 50))
    assert tags[TRIGGER_TAG] == "drift" and len(tags[REASON_TAG]) == MAX_REASON
    assert started_because("schedule") == {TRIGGER_TAG: "schedule"}


def test_a_run_a_person_launches_says_so_and_a_sensors_trigger_wins(settings, instance):
    """Found by a new user: a run launched from the Jobs page had no trigger tag."""

    from unified_assets.definitions import build_definitions

    defs = build_definitions(settings)
    for job in defs.resolve_all_job_defs():
        if not job.name.startswith("__"):
            assert job.tags.get(TRIGGER_TAG) == "manual", job.name
    job = defs.resolve_job_def("rollback_production")
    by_hand = instance.create_run_for_job(job, run_config={}, tags=job.tags)
    assert by_hand.tags[TRIGGER_TAG] == "manual" and by_hand.tags["dagster/priority"] == "10"
