"""Start-up timings ride on the encoder's first output batch and land on the run's timeline."""

from __future__ import annotations

import time

import pyarrow as pa

from clipline.pipelines.startup import EncoderStartup, Stamp, StartupWatch, process_started_at


def report(origin: float, pid: int = 7) -> EncoderStartup:
    return EncoderStartup(
        pid=pid,
        process_started_at=origin + 0.5,
        actor_started=Stamp(origin + 1.0, 0.2),
        init=Stamp(origin + 4.0, 3.0),
        ready=Stamp(origin + 4.5, 3.4),
        model_source="cache",
        first_batch_in=Stamp(origin + 5.0, 3.5),
        first_batch_out=Stamp(origin + 5.25, 3.7),
    )


def test_timings_travel_in_the_batch_metadata_and_leave_the_rows_alone():
    batch = pa.table({"id": ["a", "b"]})
    sent = report(1000.0)
    carried = sent.attach(batch)
    assert carried.equals(batch) and EncoderStartup.read(carried) == sent
    assert EncoderStartup.read(batch) is None


def test_the_watch_puts_each_encoder_on_the_run_timeline():
    origin = time.time() - 10
    record = {"run_started_at": origin}
    watch = StartupWatch(record)
    batches = [
        pa.table({"x": [1]}),
        report(origin).attach(pa.table({"x": [2]})),
        report(origin, pid=8).attach(pa.table({"x": [3]})),
    ]
    assert [b["x"][0].as_py() for b in watch.batches(iter(batches))] == [1, 2, 3]
    assert 9 < record["planned_s"] < 11 and record["first_batch_at_driver_s"] >= record["planned_s"]
    first = record["encoders"][0]
    assert first == {
        "pid": 7,
        "model_source": "cache",
        "process_started_s": 0.5,
        "actor_started_s": 1.0,
        "worker_boot_cpu_s": 0.2,
        "imports_s": 3.0,
        "imports_cpu_s": 2.8,
        "model_build_s": 0.5,
        "model_build_cpu_s": 0.4,
        "waited_for_first_block_s": 0.5,
        "first_batch_s": 0.25,
        "first_batch_cpu_s": 0.2,
        "first_batch_encoded_s": 5.25,
    }
    assert len(record["encoders"]) == 2 and record["first_batch_encoded_s"] == 5.25


def test_process_start_is_before_now_and_after_boot():
    started = process_started_at()
    assert started is not None and time.time() - 3600 < started < time.time()
