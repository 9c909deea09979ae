"""Event-driven triggers for the lifecycle."""

# For the sensors that carry a landed batch to its model (landing, drift): Dagster's sensor
# daemon takes its ticks in loops at least 5 s apart, one sensor after another in a shuffled
# order, so an interval of 5 s skipped a whole loop whenever a tick came earlier in its loop
# than the one before (the first training then started 9 s after its evidence, not 5).
# Anything under half a loop has the sensor looked at in every loop: once per 5 s at most.
EVERY_DAEMON_LOOP_S = 2
